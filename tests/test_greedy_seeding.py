"""Tests for mps_core.seeding.greedy: greedy seeding with residual subtraction, binning, tiling.

Small generated movies: Gaussian cells with sparse exponential transients, white noise and a
smooth, slowly varying background (seeded RNG)."""

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from scipy import ndimage
from scipy.spatial import cKDTree

from mps_core.seeding.greedy import (GreedyResult, binned_movie, greedy_seeds, greedy_seeds_tiled,
                                     local_correlation, smooth_frames_for_bin, tile_grid)

D = 8.0  # cell diameter, px


def make_movie(centres, size=(64, 64), T=300, seed=0, noise=1.0, amp=6.0):
    """(T, H, W) float32 movie with one Gaussian cell (sigma d/4) per centre."""
    rng = np.random.default_rng(seed)
    H, W = size
    yy, xx = np.mgrid[:H, :W]
    A = np.stack([np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * (D / 4) ** 2)) for y, x in centres])
    C = np.zeros((len(centres), T))
    for k in range(len(centres)):  # sparse spikes, exponential decay (tau 8 frames)
        s = (rng.random(T) < 0.02) * rng.uniform(0.6, 1.4, T)
        s[rng.integers(10, T - 20)] = 1.0  # at least one event
        c = np.zeros(T)
        for t in range(T):
            c[t] = (c[t - 1] * np.exp(-1 / 8) if t else 0) + s[t]
        C[k] = amp * c
    bg = 20 + 4 * np.sin(yy / 25.0) + 3 * np.cos(xx / 30.0)
    drift = 1 + 0.05 * np.sin(np.arange(T) / 40.0)
    Y = drift[:, None, None] * bg[None] + np.tensordot(C, A, axes=(0, 0))
    Y += noise * rng.standard_normal(Y.shape)
    return Y.astype(np.float32)


CELLS = [(12, 12), (12, 40), (30, 25), (45, 10), (50, 50), (28, 52)]


@pytest.fixture(scope="module")
def movie():
    return make_movie(CELLS)


def nearest(a, b):
    """Distance from each point of a to its nearest point of b."""
    if len(b) == 0:
        return np.full(len(a), np.inf)
    return cKDTree(np.asarray(b, float)).query(np.asarray(a, float))[0]


def test_finds_every_planted_cell(movie):
    r = greedy_seeds(movie, D)
    assert isinstance(r, GreedyResult)
    n = len(r)
    assert r.footprints.shape == (n, 64, 64) and r.footprints.dtype == np.float32
    assert r.traces.shape == (n, 300) and r.centres.shape == (n, 2)
    assert r.pnr.shape == r.corr.shape == (n,)
    assert (nearest(CELLS, r.centres) <= 2).all()  # every cell found
    assert n == len(CELLS)  # each once: a found cell is subtracted, not picked again
    assert (nearest(r.centres, CELLS) <= D / 2).all()  # no seed away from a cell
    assert (r.pnr >= 8).all() and (r.corr >= 0.5).all()


def test_footprints_non_negative_in_disk_and_connected(movie):
    r = greedy_seeds(movie, D)
    yy, xx = np.mgrid[:64, :64]
    for a, (y, x) in zip(r.footprints, r.centres):
        assert (a >= 0).all() and a.max() > 0
        assert not (a[(yy - y) ** 2 + (xx - x) ** 2 > (1.5 * D) ** 2] > 0).any()
        assert ndimage.label(a > 0)[1] == 1


def test_trace_follows_cell_activity(movie):
    r = greedy_seeds(movie, D)
    # the seed nearest to cell 2 carries a trace correlated with that cell's activity
    clean = make_movie(CELLS, noise=0.0)
    truth = clean[:, 30, 25] - clean[:, 30, 25].min()
    k = int(np.argmin(nearest(r.centres, [(30, 25)])))
    assert np.corrcoef(r.traces[k], truth)[0, 1] > 0.8


def test_two_close_cells_with_different_activity():
    cells = [(30, 28), (30, 34)]  # 6 px apart (0.75 d)
    Y = make_movie(cells, seed=4)
    r = greedy_seeds(Y, D)
    assert len(r) == 2 and (nearest(cells, r.centres) <= 2).all()
    # one seed each, not the same seed twice
    assert len({int(np.argmin(nearest(r.centres, [c]))) for c in cells}) == 2


def test_pick_thresholds_matter(movie):
    r = greedy_seeds(movie, D, min_pnr=1e6)
    assert len(r) == 0 and r.footprints.shape == (0, 64, 64) and r.traces.shape == (0, 300)
    assert len(greedy_seeds(movie, D, max_seeds=2)) == 2


def test_exclude_mask_respected(movie):
    ex = np.zeros((64, 64), bool)
    ex[22:39, 17:34] = True  # around cell (30, 25)
    r = greedy_seeds(movie, D, exclude=ex)
    cy, cx = r.centres.round().astype(int).T
    assert not ex[cy, cx].any()
    others = [c for c in CELLS if c != (30, 25)]
    assert (nearest(others, r.centres) <= 2).all()


def test_no_refinement_still_disk_limited(movie):
    r = greedy_seeds(movie, D, refine_iterations=0)
    assert (nearest(CELLS, r.centres) <= 2).all()
    yy, xx = np.mgrid[:64, :64]
    for a, (y, x) in zip(r.footprints, r.centres):
        assert not (a[(yy - y) ** 2 + (xx - x) ** 2 > (1.5 * D) ** 2] > 0).any()


def test_local_correlation_matches_direct_formula():
    rng = np.random.default_rng(1)
    F = rng.standard_normal((40, 9, 11)).astype(np.float32)
    F[:, 2:6, 3:8] += 3 * rng.standard_normal((40, 1, 1)).astype(np.float32)
    sn = np.full((9, 11), 0.5, np.float32)
    X = np.where(F > 1.5, F, 0.0)
    X = X - X.mean(0)
    X /= np.sqrt((X ** 2).sum(0)) + 1e-9
    ref = np.zeros((9, 11))
    for i in range(9):
        for j in range(11):
            nb = [(X[:, i, j] * X[:, i + dy, j + dx]).sum() for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                  if (dy or dx) and 0 <= i + dy < 9 and 0 <= j + dx < 11]
            ref[i, j] = np.mean(nb)
    np.testing.assert_allclose(local_correlation(F, sn), ref, atol=1e-5)


# ------------------------------------------------------------------------------------ binning
def test_binned_movie_block_means_streamed():
    rng = np.random.default_rng(2)
    Y = rng.integers(0, 255, (23, 5, 6)).astype(np.uint8)
    dY = da.from_array(Y, chunks=(4, 5, 6))  # chunks not aligned with the bins
    seen, prog = [], []

    def compute(x):
        seen.append(x.shape[0])  # bins per batch
        return x.compute()

    B, k = binned_movie(dY, max_frames=5, compute=compute, progress=lambda d, t: prog.append((d, t)))
    assert k == 5 and B.shape == (5, 5, 6) and B.dtype == np.float32
    ref = np.stack([Y[i:i + 5].astype(np.float64).mean(0) for i in range(0, 23, 5)])  # last bin: 3 frames
    np.testing.assert_allclose(B, ref, rtol=1e-6)
    assert sum(seen) == 5 and prog[-1] == (23, 23)  # every bin once


def test_binned_movie_in_many_batches(monkeypatch):
    from mps_core.seeding import greedy

    monkeypatch.setattr(greedy, "BIN_BATCH_BYTES", 7 * 5 * 6 * 4)  # 7 frames per batch
    rng = np.random.default_rng(3)
    Y = rng.normal(size=(50, 5, 6)).astype(np.float32)
    batches = []
    B, k = binned_movie(da.from_array(Y, chunks=(6, 5, 6)), max_frames=17,
                        compute=lambda x: batches.append(x.shape[0]) or x.compute())
    assert k == 3 and len(batches) > 3 and sum(batches) == 17
    ref = np.stack([Y[i:i + 3].astype(np.float64).mean(0) for i in range(0, 50, 3)])
    np.testing.assert_allclose(B, ref, rtol=1e-5, atol=1e-6)


def test_binned_movie_k1_is_float32_copy():
    Y = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    B, k = binned_movie(da.from_array(Y, chunks=(1, 3, 4)), max_frames=1000)
    assert k == 1 and B.dtype == np.float32
    np.testing.assert_array_equal(B, Y)


def test_smooth_frames_for_bin():
    assert [smooth_frames_for_bin(k) for k in (1, 2, 5, 12)] == [5, 2, 1, 1]


# ------------------------------------------------------------------------------------- tiling
def test_tile_grid_covers_frame_once():
    grid = tile_grid(100, 70, 32, 10)
    cover = np.zeros((100, 70), int)
    for core, ext in grid:
        cover[core] += 1
        assert ext[0].start == max(core[0].start - 10, 0) and ext[1].stop == min(core[1].stop + 10, 70)
    assert (cover == 1).all()


def test_tiled_finds_same_cells_as_untiled():
    cells = [(10, 10), (10, 45), (30, 30), (33, 62), (48, 20), (62, 47), (80, 12), (78, 78),
             (50, 85), (85, 50), (15, 80)]
    Y = make_movie(cells, size=(96, 96), T=200, seed=7)
    full = greedy_seeds(Y, D)
    tiled = greedy_seeds_tiled(Y, D, tile=32, margin=24)  # 3 x 3 tiles; cells cross core edges
    assert sp.issparse(tiled.footprints) and tiled.footprints.shape == (len(tiled), 96 * 96)
    assert tiled.traces.shape == (len(tiled), 200)
    for r in (full, tiled):
        assert (nearest(cells, r.centres) <= 2).all()
        assert (nearest(r.centres, cells) <= D / 2).all()
    # no cell counted twice at a tile border: one tiled seed per untiled seed, same place
    assert len(tiled) == len(full)
    assert (nearest(tiled.centres, full.centres) <= 1).all()
    A = tiled.footprints.toarray().reshape(-1, 96, 96)
    assert (A >= 0).all()
    for a in A:
        assert ndimage.label(a > 0)[1] == 1


def test_tiled_threads_give_the_serial_result():
    cells = [(10, 10), (10, 45), (30, 30), (33, 62), (48, 20), (62, 47), (80, 12), (78, 78)]
    Y = make_movie(cells, size=(96, 96), T=120, seed=3)
    one = greedy_seeds_tiled(Y, D, tile=32, margin=24, workers=1)
    two = greedy_seeds_tiled(Y, D, tile=32, margin=24, workers=2)
    assert len(one) == len(two) >= len(cells)
    assert (one.footprints != two.footprints).nnz == 0
    np.testing.assert_array_equal(one.traces, two.traces)
    np.testing.assert_array_equal(one.centres, two.centres)


def test_one_tile_with_spare_workers_prepares_in_threads_to_the_same_result():
    """A frame that fits one tile gives the idle workers to its preparation (blurs, medians)."""
    cells = [(10, 10), (10, 45), (30, 30), (48, 20), (52, 52)]
    Y = make_movie(cells, size=(64, 64), T=120, seed=5)
    one = greedy_seeds_tiled(Y, D, tile=64, margin=8, workers=1)
    three = greedy_seeds_tiled(Y, D, tile=64, margin=8, workers=3)
    assert len(one) == len(three) >= len(cells)
    assert (one.footprints != three.footprints).nnz == 0
    np.testing.assert_array_equal(one.traces, three.traces)
    np.testing.assert_array_equal(greedy_seeds(Y, D, threads=1).traces,
                                  greedy_seeds(Y, D, threads=4).traces)


def test_tiled_stops_when_progress_raises():
    Y = make_movie([(10, 10), (50, 50)], size=(96, 96), T=60, seed=4)
    seen = []

    def progress(i, n):
        seen.append(i)
        if i == 2:
            raise KeyboardInterrupt("cancel")
    with pytest.raises(KeyboardInterrupt):
        greedy_seeds_tiled(Y, D, tile=32, margin=24, workers=2, progress=progress)
    assert seen == [1, 2]
    with pytest.raises(ValueError, match="workers"):
        greedy_seeds_tiled(Y, D, workers=0)


def test_tiled_on_binned_movie(movie):
    B, k = binned_movie(da.from_array(movie, chunks=(64, 64, 64)), max_frames=150)
    assert k == 2 and B.shape == (150, 64, 64)
    r = greedy_seeds_tiled(B, D, smooth_frames=smooth_frames_for_bin(k))
    assert r.traces.shape == (len(r), 150)
    assert (nearest(CELLS, r.centres) <= 2).all()


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw, match", [
    (dict(cell_diameter=0), "cell_diameter"),
    (dict(cell_diameter=-3), "cell_diameter"),
    (dict(min_pnr=0), "min_pnr"),
    (dict(min_corr=1.5), "min_corr"),
    (dict(min_corr=-2), "min_corr"),
    (dict(max_seeds=-1), "max_seeds"),
    (dict(smooth_frames=0), "smooth_frames"),
    (dict(refine_iterations=-1), "refine_iterations"),
    (dict(exclude=np.zeros((5, 5), bool)), "exclude"),
    (dict(exclude=np.zeros((16, 16), int)), "exclude"),
])
def test_greedy_seeds_validation(kw, match):
    Y = np.zeros((10, 16, 16), np.float32)
    args = dict(cell_diameter=D)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        greedy_seeds(Y, args.pop("cell_diameter"), **args)


def test_movie_shape_validation():
    with pytest.raises(ValueError, match="3-D"):
        greedy_seeds(np.zeros((16, 16), np.float32), D)
    with pytest.raises(ValueError, match="2 frames"):
        greedy_seeds(np.zeros((1, 16, 16), np.float32), D)
    with pytest.raises(ValueError, match="3-D"):
        greedy_seeds_tiled(np.zeros((16, 16), np.float32), D)
    with pytest.raises(ValueError, match="margin"):
        greedy_seeds_tiled(np.zeros((5, 16, 16), np.float32), D, margin=-1)
    with pytest.raises(ValueError, match="cell_diameter"):
        greedy_seeds_tiled(np.zeros((5, 16, 16), np.float32), 0.0)
    with pytest.raises(ValueError, match="max_frames"):
        binned_movie(da.zeros((4, 3, 3), chunks=2), max_frames=0)
    with pytest.raises(ValueError, match="3-D"):
        binned_movie(da.zeros((4, 3), chunks=2))
