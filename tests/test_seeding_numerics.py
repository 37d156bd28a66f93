"""Tests for steps 4a-4h numerics (mps_core.seeding): watershed seeding, merges, traces, A/C,
invalid drop and artifact quarantine, on the project's seeded synthetic recordings."""

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from scipy import ndimage

from mps_core.seeding.extract import drop_invalid, extract_traces, init_AC, make_recompute
from mps_core.seeding.merge import demixed_traces, spatial_merge, temporal_merge
from mps_core.seeding.quarantine import quarantine, score_components
from mps_core.seeding.watershed import Regions, search_parameters, segment_all, segment_component
from mps_core.synth import simulate

D = 10.0  # cell diameter, px
CELL_AREA = np.pi * (D / 2) ** 2


@pytest.fixture(scope="module")
def rec():
    return simulate(n_frames=300, height=80, width=80, n_cells=10, cell_diameter=D,
                    max_shift=0, noise_sd=2.0, seed=3)


def nndsvd_standin(footprints, seed=0, noise=0.1, copies=2):
    """(k, H, W) non-negative components: every cell in `copies` different components (as
    NNDSVD does), groups of ~3 cells with random gains, multiplicative noise, a small extra
    non-cell blob per component, then a sparsity threshold at 5 % of the maximum."""
    rng = np.random.default_rng(seed)
    n, h, w = footprints.shape
    yy, xx = np.mgrid[:h, :w]
    comps = []
    for _ in range(copies):
        for group in np.array_split(rng.permutation(n), max(n // 3, 1)):
            c = (footprints[group] * rng.uniform(0.6, 1.4, (len(group), 1, 1))).sum(0)
            by, bx = rng.uniform(5, [h - 5, w - 5])
            c = c + 0.3 * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / 2.0)  # speck, ~5 px
            c = c * (1 + noise * rng.standard_normal(c.shape))
            c[c < 0.05 * c.max()] = 0
            comps.append(c)
    return np.array(comps, np.float32)


def seg_params():
    return dict(min_distance=0.75 * D, threshold_rel=0.15, sigma=1.0, min_region_size=0.1 * CELL_AREA)


def nearest(points, centres):
    """Distance from each point to its nearest centre, and how many centres lie within 2 px."""
    d = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=-1)
    return d.min(1), (d < 2.0).sum(1)


# ----------------------------------------------------------------------------- watershed


def test_segment_component_splits_two_cells_and_keeps_dim_neighbour():
    yy, xx = np.mgrid[:40, :60]
    blob = lambda cy, cx, a=1.0: a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5**2))
    img = (blob(20, 15) + blob(20, 30) + blob(20, 43, 0.4)).astype(np.float32)
    img[:, 38:40] = 0  # a gap: the dim blob is an island whose peak min_distance suppresses
    regs = segment_component(img, min_distance=15, threshold_rel=0.1, sigma=1.0, min_region_size=5)
    cents = np.array([Regions.build(img.shape, [0], [r]).centroid[0] for r in regs])
    assert len(regs) == 3
    assert np.sort(cents[:, 1]) == pytest.approx([15, 30, 43.5], abs=0.8)
    for r in regs:  # weights are the component's own values inside the mask
        y0, x0, y1, x1 = r.bbox
        assert np.array_equal(r.weights[r.mask], img[y0:y1, x0:x1][r.mask])
        assert np.all(r.weights[~r.mask] == 0)
    assert segment_component(np.zeros((10, 10)), min_distance=3, threshold_rel=0.1, sigma=1,
                             min_region_size=1) == []
    with pytest.raises(ValueError, match="threshold_rel"):
        segment_component(img, min_distance=3, threshold_rel=1.5, sigma=1, min_region_size=1)


def test_regions_storage_round_trip(rec):
    regs = segment_all(nndsvd_standin(rec.footprints), **seg_params())
    back = Regions.from_arrays(regs.to_arrays())
    assert len(back) == len(regs) > 0
    assert np.array_equal(back.to_dense(), regs.to_dense())
    assert np.array_equal(back.component, regs.component)
    assert np.allclose(back.centroid, regs.centroid)
    assert np.allclose(regs.to_sparse().toarray(), regs.to_dense().reshape(len(regs), -1))


def test_every_planted_cell_found_after_segmentation_and_spatial_merge(rec):
    W = nndsvd_standin(rec.footprints)
    regs = segment_all(W, **seg_params(), component_ids=np.arange(1, len(W) + 1))
    assert set(regs.component) <= set(range(1, len(W) + 1))
    merged = spatial_merge(regs, distance=0.5 * D, size_ratio=5.0, min_size=0.1 * CELL_AREA)
    truth = rec.centroids()
    dist, _ = nearest(truth, merged.centroid)
    assert np.all(dist < 2.0), dist
    # each cell was seeded twice (two components); after the merge it is one region
    _, n_before = nearest(truth, regs.centroid)
    _, n_after = nearest(truth, merged.centroid)
    assert np.all(n_before >= 2) and np.all(n_after == 1)
    assert np.all(merged.area >= 0.1 * CELL_AREA)


def test_spatial_merge_is_order_independent(rec):
    regs = segment_all(nndsvd_standin(rec.footprints, seed=5), **seg_params())
    ref = spatial_merge(regs, distance=0.5 * D, min_size=0.1 * CELL_AREA)
    assert len(ref) < len(regs)  # merges happened
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(regs))
        out = spatial_merge(regs.subset(perm), distance=0.5 * D, min_size=0.1 * CELL_AREA)
        a, b = ref.to_arrays(), out.to_arrays()
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_spatial_merge_size_ratio_and_min_size():
    yy, xx = np.mgrid[:30, :30]
    big = ((yy - 15) ** 2 + (xx - 15) ** 2 <= 36).astype(np.float32)  # 113 px
    small = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 2).astype(np.float32)  # 9 px, 1.4 px away
    same = ((yy - 16) ** 2 + (xx - 15) ** 2 <= 36).astype(np.float32)
    regs = segment_all(np.stack([big, small, same]), min_distance=20, threshold_rel=0.5, sigma=0,
                       min_region_size=1)
    assert len(regs) == 3
    union = int(np.sum((big > 0) | (same > 0)))
    out = spatial_merge(regs, distance=5, size_ratio=5.0, min_size=1)
    assert sorted(out.area) == [9, union]  # big+same merged (mask union), small kept apart
    merged = out.subset(np.flatnonzero(out.area == union)).to_dense()[0]
    np.testing.assert_array_equal(merged, np.maximum(big, same))  # pixelwise max
    out = spatial_merge(regs, distance=5, size_ratio=20.0, min_size=1)
    assert len(out) == 1
    out = spatial_merge(regs, distance=5, size_ratio=5.0, min_size=10)
    assert list(out.area) == [union]
    with pytest.raises(ValueError, match="size_ratio"):
        spatial_merge(regs, distance=5, size_ratio=0.5)


def test_search_prefers_cell_sized_peak_distance():
    """Donut-shaped cells (bright cytoplasm, dark nucleus) have several maxima along the
    ring: a 1 px peak distance cuts each cell into pieces, ~d keeps it whole."""
    rec = simulate(n_frames=10, height=80, width=80, n_cells=10, cell_diameter=D, max_shift=0, seed=4)
    yy, xx = np.mgrid[:80, :80]
    donuts = []
    for cy, cx in rec.centers:
        r = np.hypot(yy - cy, xx - cx)
        donuts.append(np.exp(-(r - 0.3 * D) ** 2 / (2 * (0.12 * D) ** 2)) * (r < 0.6 * D))
    W = nndsvd_standin(np.array(donuts), seed=1, copies=1)
    kw = dict(min_distances=[1.0, D], thresholds=[0.2], sigmas=[1.0],
              expected_area=(0.3 * CELL_AREA, 3 * CELL_AREA), sample_size=20, seed=0,
              min_region_size=0.1 * CELL_AREA)
    best, table = search_parameters(W, **kw)
    assert best == {"min_distance": D, "threshold": 0.2, "sigma": 1.0}
    tiny, cell = table
    assert tiny["regions_per_component"] > 2 * cell["regions_per_component"]
    assert tiny["shallow_split_fraction"] > 0.5 and cell["shallow_split_fraction"] == 0
    assert search_parameters(W, **kw) == (best, table)  # deterministic


def test_label_maxima_match_scipy():
    from mps_core.seeding.watershed import _label_argmax, _label_max
    rng = np.random.default_rng(5)
    for _ in range(20):
        v = rng.random((40, 50)).astype(np.float32)
        v[:5, :5] = 0.9  # a plateau: the first pixel in raster order wins, as in scipy
        lab, n = ndimage.label(v > 0.6)
        idx = np.arange(1, n + 1)
        np.testing.assert_array_equal(_label_max(v, lab, n)[1:], ndimage.maximum(v, lab, idx))
        pos = [np.unravel_index(f, v.shape) for f in _label_argmax(v, lab, n)[1:]]
        assert pos == [tuple(p) for p in ndimage.maximum_position(v, lab, idx)]
    assert _label_argmax(np.zeros((3, 3)), np.zeros((3, 3), int), 2)[1:].tolist() == [-1, -1]


# ----------------------------------------------------------------------------- traces, A/C


def test_extract_traces_matches_dense_reference(rec):
    movie = rec.movie.astype(np.float32)
    dmovie = da.from_array(movie, chunks=(37, 40, -1))  # irregular frame chunks, split rows
    A = rec.footprints.copy()
    A[3] = 0  # empty footprint -> NaN trace
    ref = movie.reshape(len(movie), -1).astype(np.float64) @ A.reshape(len(A), -1).T.astype(np.float64)
    with np.errstate(invalid="ignore"):
        ref = (ref / A.reshape(len(A), -1).sum(1)).T
    calls = []

    def compute(*objs):
        calls.append(len(objs))
        return dask.compute(*objs)

    for fp in (A, sp.csr_array(A.reshape(len(A), -1))):
        out = extract_traces(dmovie, fp, batch_size=3, compute=compute)
        assert out.shape == (len(A), len(movie)) and out.dtype == np.float32
        assert np.all(np.isnan(out[3]))
        keep = np.arange(len(A)) != 3
        np.testing.assert_allclose(out[keep], ref[keep], rtol=1e-5)
    assert calls == [1, 1]  # one materialisation per call
    with pytest.raises(ValueError, match="pixels"):
        extract_traces(dmovie, A[:, :40], batch_size=3)


@pytest.mark.parametrize("normalisation", ["max", "l1", "l2", "none"])
def test_init_ac_normalisations_keep_product(rec, normalisation):
    regs = segment_all(nndsvd_standin(rec.footprints), **seg_params())
    traces = extract_traces(rec.movie.astype(np.float32), regs, batch_size=8)
    A_ref, C_ref = init_AC(regs, traces, "max")
    A, C = init_AC(regs, traces, normalisation)
    flat = A.reshape(len(A), -1)
    norm = {"max": flat.max(1), "l1": flat.sum(1), "l2": np.linalg.norm(flat, axis=1),
            "none": None}[normalisation]
    if norm is not None:
        np.testing.assert_allclose(norm, 1.0, rtol=1e-5)
    else:
        np.testing.assert_allclose(A, regs.to_dense(), rtol=1e-6)
    np.testing.assert_allclose(C_ref, traces, rtol=1e-6)  # max: C is the weighted mean trace
    for t in (0, 150, 299):  # A * C is the same for every normalisation
        np.testing.assert_allclose(A * C[:, t, None, None], A_ref * C_ref[:, t, None, None],
                                   rtol=1e-4, atol=1e-4)
    # 4g's recompute follows the same convention
    again = make_recompute(rec.movie.astype(np.float32), batch_size=5)(A)
    np.testing.assert_allclose(again, C, rtol=1e-4)
    A_sp, C_sp = init_AC(regs, traces, normalisation, sparse=True)
    np.testing.assert_allclose(A_sp.toarray(), flat, rtol=1e-6)


def test_drop_invalid_reasons():
    A = np.zeros((5, 6, 6), np.float32)
    A[:, 2:4, 2:4] = 1
    A[1, 2, 2] = np.nan
    A[2] = 0
    C = np.random.default_rng(0).random((5, 50)).astype(np.float32)
    C[3] = 7.0
    C[4, 10] = np.inf
    keep, reasons = drop_invalid(A, C, flat_tol=1e-6)
    assert keep.tolist() == [True, False, False, False, False]
    assert reasons == ["", "nan", "empty", "flat", "nan"]
    keep, reasons = drop_invalid(sp.csr_array(A.reshape(5, -1)), C, check_flat=False)
    assert reasons[3] == "" and keep[3]
    with pytest.raises(ValueError, match="flat_tol"):
        drop_invalid(A, C, flat_tol=2)


# ----------------------------------------------------------------------------- temporal merge


def test_temporal_merge_split_cell_merged_correlated_neighbours_kept(rec):
    fp, rng = rec.footprints, np.random.default_rng(0)
    calcium = rec.calcium.astype(np.float64).copy()
    calcium[2] = calcium[1] + 0.05 * rng.standard_normal(calcium.shape[1])  # correlated, apart
    T = calcium.shape[1]
    movie = np.einsum("nhw,nt->thw", fp.astype(np.float64), 60 * calcium)
    movie = (movie + 20 + 2 * rng.standard_normal(movie.shape)).astype(np.float32)
    dmovie = da.from_array(movie, chunks=(64, -1, -1))

    cx = rec.centers[0, 1]
    xx = np.arange(fp.shape[2])[None, :]
    left, right = fp[0] * (xx < cx + 2), fp[0] * (xx >= cx - 2)  # halves overlapping by 4 px
    A0 = np.concatenate([[left, right], fp[1:]]).astype(np.float32)
    A, C = init_AC(A0, extract_traces(dmovie, A0, batch_size=4), "max")
    assert np.corrcoef(C[2], C[3])[0, 1] > 0.9  # cells 1 and 2 correlate but do not overlap
    recompute = make_recompute(dmovie, batch_size=4)
    A2, C2, groups = temporal_merge(A, C, corr_threshold=0.75, overlap_threshold=0.3,
                                    recompute=recompute)
    assert [g.tolist() for g in groups][:4] == [[0, 1], [2], [3], [4]]
    assert len(groups) == len(A) - 1
    assert A2.shape == (len(A) - 1, *A.shape[1:]) and C2.shape == (len(A) - 1, T)
    assert A2[0].max() == pytest.approx(1.0)
    centre = np.array(np.unravel_index(np.argmax(A2[0]), A2[0].shape))
    assert np.linalg.norm(centre - rec.centers[0]) < 1.5
    # recomputed from the movie, not copied from a member
    np.testing.assert_allclose(C2[0], recompute(A2[:1])[0], rtol=1e-5)
    assert not np.allclose(C2[0], C[0]) and not np.allclose(C2[0], C[1])
    assert np.corrcoef(C2[0], rec.calcium[0])[0, 1] > 0.99
    np.testing.assert_array_equal(C2[1:], C[2:])  # the others pass through
    np.testing.assert_array_equal(A2[1:], A[2:])


def test_temporal_merge_demixed_keeps_overlapping_cells_apart_and_merges_a_split_cell():
    """Dense field: two distinct cells half a diameter apart with independent activity. Their
    weighted-mean traces share each other's light (and a bright neighbour dominates both), so
    the raw comparison merges them; the demixed one keeps them apart, and still merges the two
    overlapping halves of one cell."""
    rng = np.random.default_rng(4)
    h, w, T = 40, 60, 600
    yy, xx = np.mgrid[:h, :w]

    def cell(y, x, r=5.0):
        g = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * (r / 1.6) ** 2))
        return np.where(g > 0.05, g, 0).astype(np.float32)

    def spikes(p):
        s = (rng.random(T) < p).astype(float)
        return np.convolve(s, 0.9 ** np.arange(60))[:T]

    bright, dim, lone = cell(20, 15), cell(20, 20), cell(20, 45)
    c = np.stack([4 * spikes(0.03), spikes(0.03), spikes(0.03)])
    movie = np.einsum("nhw,nt->thw", np.stack([bright, dim, lone]), 50 * c)
    movie = (movie + 10 + rng.standard_normal(movie.shape)).astype(np.float32)
    dmovie = da.from_array(movie, chunks=(100, -1, -1))
    disk = lambda y, x: ((yy - y) ** 2 + (xx - x) ** 2 <= 25).astype(np.float32)  # noqa: E731
    half_l, half_r = lone * (xx < 47), lone * (xx >= 43)
    A0 = np.stack([disk(20, 15), disk(20, 20), half_l, half_r])
    A, C = init_AC(A0, extract_traces(dmovie, A0, batch_size=4), "max")
    assert np.corrcoef(C[0], C[1])[0, 1] > 0.75  # the raw traces of the distinct cells
    recompute = make_recompute(dmovie, batch_size=4)
    _, _, raw = temporal_merge(A, C, recompute=recompute)
    assert [g.tolist() for g in raw] == [[0, 1], [2, 3]]
    _, C2, demixed = temporal_merge(A, C, recompute=recompute, demix=True)
    assert [g.tolist() for g in demixed] == [[0], [1], [2, 3]]
    np.testing.assert_array_equal(C2[:2], C[:2])  # unmerged traces are passed through as given
    D_ = demixed_traces(sp.csr_array(A.reshape(4, -1)), C)
    assert np.corrcoef(D_[1], c[1])[0, 1] > 0.9  # the dim cell's own activity, recovered


def test_temporal_merge_chains_and_is_order_independent():
    rng = np.random.default_rng(1)
    h, w, T = 12, 40, 80
    A = np.zeros((5, h, w), np.float32)
    A[0, 2:8, 2:10] = 1   # 0-1 overlap, 1-2 overlap, 0-2 do not: a chain
    A[1, 2:8, 7:15] = 1
    A[2, 2:8, 12:20] = 1
    A[3, 2:8, 25:32] = 1  # same activity, no overlap
    A[4, 2:8, 28:36] = 1  # overlaps 3 (4 of 7 columns) but independent activity
    base = np.cumsum(rng.standard_normal(T))
    C = np.stack([base + 0.1 * rng.standard_normal(T) for _ in range(4)] + [rng.standard_normal(T)])

    def fake_recompute(sub):
        return np.tile(np.arange(T, dtype=np.float32), (sub.shape[0], 1))

    _, C2, groups = temporal_merge(A, C, recompute=fake_recompute)
    assert [g.tolist() for g in groups] == [[0, 1, 2], [3], [4]]
    assert np.array_equal(C2[0], np.arange(T))
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(5)
        As, Cs, gs = temporal_merge(sp.csr_array(A[perm].reshape(5, -1)), C[perm],
                                    recompute=fake_recompute)
        assert sorted(sorted(perm[g].tolist()) for g in gs) == [[0, 1, 2], [3], [4]]
        assert sp.issparse(As) and As.shape == (3, h * w)


# ----------------------------------------------------------------------------- quarantine


def test_quarantine_catches_vessel_streak_keeps_cells():
    rec = simulate(n_frames=600, height=80, width=80, n_cells=8, cell_diameter=D, max_shift=0, seed=7)
    rng = np.random.default_rng(2)
    T = rec.calcium.shape[1]
    yy, xx = np.mgrid[:80, :80]
    # a vessel: a long thin bright line (distance to the segment (8, 5)-(20, 74), sd 1 px)
    p, q = np.array([8.0, 5.0]), np.array([20.0, 74.0])
    u = np.clip(((yy - p[0]) * (q - p)[0] + (xx - p[1]) * (q - p)[1]) / np.sum((q - p) ** 2), 0, 1)
    dist = np.hypot(yy - (p[0] + u * (q - p)[0]), xx - (p[1] + u * (q - p)[1]))
    streak = np.exp(-dist**2 / 2.0) * (dist < 2.5)
    A = np.concatenate([rec.footprints, streak[None]]).astype(np.float32)
    t = np.arange(T)
    drift = 20 * np.sin(2 * np.pi * t / T) + 5 * np.cumsum(rng.standard_normal(T)) / np.sqrt(T)
    C = np.concatenate([60 * rec.calcium, drift[None] + 50]) + 2 * rng.standard_normal((len(A), T))
    table = score_components(A, C, movie_mean=rec.background)
    assert table["elongation"][-1] > 10 and np.all(table["elongation"][:-1] < 2)
    assert table["drift"][-1] > 0.5 and np.all(table["drift"][:-1] < 0.5)
    flags, reasons = quarantine(table, min_size=0.2 * CELL_AREA, max_size=6 * CELL_AREA)
    assert flags.tolist() == [False] * rec.footprints.shape[0] + [True]
    assert "elongation" in reasons[-1] and "drift" in reasons[-1]
    # the sparse form scores identically
    table_sp = score_components(sp.csr_array(A.reshape(len(A), -1)), C, shape=(80, 80))
    for k in ("size", "solidity", "elongation", "snr", "drift"):
        np.testing.assert_allclose(table_sp[k], table[k])
    assert np.all(np.isnan(table_sp["contrast"]))


def test_pair_correlation_in_batches_bounded_by_memory(monkeypatch):
    """The pair correlations of 4g come in batches sized from the trace length (a fixed 4096
    pairs of a 30-minute recording were two 1.2 GB slices); any batch gives the same values."""
    from mps_core.seeding import merge

    rng = np.random.default_rng(2)
    C = rng.normal(size=(40, 500))
    C[7] = 3.0  # flat: NaN
    i, j = np.triu_indices(40, 1)
    ref = np.array([np.corrcoef(C[a], C[b])[0, 1] if 7 not in (a, b) else np.nan
                    for a, b in zip(i, j)])
    for batch in (None, 1, 7, 10_000):
        np.testing.assert_allclose(merge._pair_correlation(C, i, j, batch), ref, rtol=1e-12,
                                   atol=1e-12)
    # the default batch follows the trace length: 64 MB hold 116 pairs of 36,000 frames
    seen = []
    real = np.einsum
    monkeypatch.setattr(np, "einsum", lambda spec, a, b: seen.append(len(a)) or real(spec, a, b))
    merge._pair_correlation(np.zeros((100, 36_000)), *np.triu_indices(100, 1))
    assert max(seen) == 116
