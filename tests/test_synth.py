"""Tests of the synthetic recording generator: its ground truth must be exact."""

import dataclasses
import json

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi

from mps_core.synth import Recording, simulate, write_miniscope

ARRAYS = ("movie", "footprints", "calcium", "spikes", "g", "shifts", "background", "centers",
          "glow_image", "bleach_curve")


@pytest.fixture(scope="module")
def rec() -> Recording:
    return simulate(n_frames=60, height=96, width=112, n_cells=8, seed=3, bleach=0.2)


def _read_avi(path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) if f.ndim == 3 else f)
    cap.release()
    return np.array(frames)


def test_same_seed_identical_different_seed_differs():
    a, b = simulate(n_frames=30, seed=7), simulate(n_frames=30, seed=7)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    c = simulate(n_frames=30, seed=8)
    assert not np.array_equal(a.movie, c.movie)
    assert not np.array_equal(a.centers, c.centers)


def test_shapes_and_dtypes(rec):
    t, h, w, u = 60, 96, 112, 8
    assert rec.movie.shape == (t, h, w) and rec.movie.dtype == np.uint8
    assert rec.footprints.shape == (u, h, w) and rec.footprints.dtype == np.float32
    assert rec.calcium.shape == (u, t) and rec.calcium.dtype == np.float32
    assert rec.spikes.shape == (u, t) and rec.spikes.dtype == np.float32
    assert rec.g.shape == (u, 1)
    assert rec.shifts.shape == (t, 2) and rec.shifts.dtype == np.float32
    assert rec.background.shape == (h, w) and rec.background.dtype == np.float32
    assert rec.centroids().shape == (u, 2)
    assert rec.fps == 20.0 and rec.cell_diameter == 10.0
    assert simulate(n_frames=5, ar_order=2).g.shape == (12, 2)


def test_footprints_peak_one_and_centroids_at_planted_centres(rec):
    np.testing.assert_allclose(rec.footprints.max(axis=(1, 2)), 1.0, rtol=0, atol=1e-6)
    assert rec.footprints.min() >= 0
    np.testing.assert_allclose(rec.centroids(), rec.centers, atol=0.01)
    # placement rules: separation and edge margin
    d = np.linalg.norm(rec.centers[:, None] - rec.centers[None], axis=-1)
    assert d[~np.eye(len(d), dtype=bool)].min() >= 1.2 * rec.cell_diameter
    assert rec.centers.min() >= rec.cell_diameter
    assert (rec.centers[:, 0] <= 96 - 1 - rec.cell_diameter).all()
    assert (rec.centers[:, 1] <= 112 - 1 - rec.cell_diameter).all()
    # footprints vanish at the frame border, so shifted cells stay in the frame
    assert rec.footprints[:, [0, -1], :].max() == 0 and rec.footprints[:, :, [0, -1]].max() == 0


def _ar_reference(s: np.ndarray, g: np.ndarray) -> np.ndarray:
    c = np.zeros(len(s))
    for t in range(len(s)):
        c[t] = s[t] + sum(g[i] * c[t - 1 - i] for i in range(len(g)) if t - 1 - i >= 0)
    return c


@pytest.mark.parametrize("order", [1, 2])
def test_calcium_follows_ar_recursion(order):
    r = simulate(n_frames=150, n_cells=4, ar_order=order, spike_rate=1.0, seed=11)
    d = np.exp(-1 / (0.4 * 20.0))
    expected_g = [d] if order == 1 else [d + np.exp(-1 / (0.08 * 20.0)), -d * np.exp(-1 / (0.08 * 20.0))]
    np.testing.assert_allclose(r.g, np.tile(expected_g, (4, 1)), rtol=1e-12)
    assert (r.spikes >= 0).all() and 0 < (r.spikes > 0).mean() < 0.2
    for k in range(4):
        ref = _ar_reference(r.spikes[k].astype(np.float64), r.g[k])
        np.testing.assert_allclose(r.calcium[k], ref, rtol=1e-6, atol=1e-6)


def test_movie_is_render_plus_quantised_noise(rec):
    clean = rec.render()
    assert clean.shape == rec.movie.shape and clean.dtype == np.float32
    unclipped = (clean > 15) & (clean < 240)
    resid = rec.movie.astype(np.float32)[unclipped] - clean[unclipped]
    assert abs(resid.mean()) < 0.1
    assert abs(resid.std() - np.sqrt(rec.noise_sd**2 + 1 / 12)) < 0.1  # noise + rounding
    # bleaching lowers the background only; the scene model adds up
    assert rec.bleach_curve[0] == 1 and rec.bleach_curve[-1] == pytest.approx(0.8)
    s = rec.scene(5)
    cells = np.tensordot(rec.calcium[:, 5] * rec.cell_brightness, rec.footprints, 1)
    np.testing.assert_allclose(s, rec.background * rec.bleach_curve[5] + rec.glow_image + cells, atol=1e-3)


def test_shift_convention_registers_frames():
    # constant calcium and no bleaching: every frame shows the same scene, only displaced
    r = simulate(n_frames=40, max_shift=3.0, seed=5)
    r = dataclasses.replace(r, calcium=np.ones_like(r.calcium))
    clean = r.render()
    inner = (slice(6, -6), slice(6, -6))
    ref = ndi.shift(clean[0], r.shifts[0], order=3, mode="reflect")[inner]
    assert np.abs(r.shifts).max() <= 3.0 and np.abs(r.shifts).max() > 1.0
    moved = 0
    for t in range(1, 40):
        reg = ndi.shift(clean[t], r.shifts[t], order=3, mode="reflect")[inner]
        assert np.abs(reg - ref).max() < 1.0, t
        np.testing.assert_allclose(reg, r.scene(t)[inner], atol=1.0)
        if np.abs(r.shifts[t]).max() > 0.5:  # the opposite sign displaces the scene by 2 * shifts[t]
            moved += 1
            wrong = ndi.shift(clean[t], -r.shifts[t], order=3, mode="reflect")[inner]
            assert np.abs(wrong - ref).max() > 5.0
    assert moved > 5


def test_shift_convention_with_active_cells(rec):
    clean = rec.render()
    inner = (slice(8, -8), slice(8, -8))
    for t in (0, 17, 59):
        reg = ndi.shift(clean[t], rec.shifts[t], order=3, mode="reflect")
        np.testing.assert_allclose(reg[inner], rec.scene(t)[inner], atol=1.0)


def test_no_motion_when_max_shift_zero():
    r = simulate(n_frames=20, max_shift=0.0, noise_sd=0.0, seed=2)
    assert not r.shifts.any()
    np.testing.assert_array_equal(r.render()[3], r.scene(3))


def test_too_many_cells_raises():
    with pytest.raises(ValueError, match="cannot fit"):
        simulate(n_frames=5, height=64, width=64, n_cells=40)
    with pytest.raises(ValueError, match="cannot fit"):
        simulate(n_frames=5, height=20, width=20, n_cells=1)


@pytest.mark.parametrize("kw", [dict(ar_order=3), dict(bleach=1.0), dict(n_frames=0), dict(noise_sd=-1.0),
                                dict(ar_order=2, rise_time=0.5)])
def test_bad_parameters_raise(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        simulate(**kw)


def test_write_v4_roundtrip(rec, tmp_path):
    folder = tmp_path / "new" / "Miniscope"
    paths = write_miniscope(rec, folder, layout="v4", frames_per_file=25)
    assert [p.name for p in paths] == ["0.avi", "1.avi", "2.avi"]
    decoded = [_read_avi(p) for p in paths]
    assert [len(d) for d in decoded] == [25, 25, 10]
    np.testing.assert_array_equal(np.concatenate(decoded), rec.movie)

    meta = json.loads((folder / "metaData.json").read_text())
    assert meta["deviceType"] == "Miniscope_V4_BNO" and meta["frameRate"] == "20FPS"
    assert meta["ROI"] == {"height": 96, "leftEdge": 0, "topEdge": 0, "width": 112}
    assert meta["framesPerFile"] == 25

    lines = (folder / "timeStamps.csv").read_text().splitlines()
    assert lines[0] == "Frame Number,Time Stamp (ms),Buffer Index"
    table = np.array([[int(v) for v in line.split(",")] for line in lines[1:]])
    assert table.shape == (60, 3)
    np.testing.assert_array_equal(table[:, 0], np.arange(60))
    assert table[0, 1] == 0 and (np.diff(table[:, 1]) > 0).all()
    assert np.abs(table[:, 1] - np.arange(60) * 50).max() <= 1


def test_write_v3_roundtrip(rec, tmp_path):
    paths = write_miniscope(rec, tmp_path, layout="v3", frames_per_file=40)
    assert [p.name for p in paths] == ["msCam1.avi", "msCam2.avi"]
    np.testing.assert_array_equal(np.concatenate([_read_avi(p) for p in paths]), rec.movie)
    lines = (tmp_path / "timestamp.dat").read_text().splitlines()
    assert lines[0].split("\t") == ["camNum", "frameNum", "sysClock", "buffer"]
    table = np.array([[int(v) for v in line.split("\t")] for line in lines[1:]])
    assert table.shape == (60, 4)
    np.testing.assert_array_equal(table[:, 1], np.arange(1, 61))
    assert (np.diff(table[:, 2]) > 0).all()


def test_write_is_deterministic_and_refuses_existing_avis(rec, tmp_path):
    write_miniscope(rec, tmp_path / "a")
    write_miniscope(rec, tmp_path / "b")
    assert (tmp_path / "a" / "timeStamps.csv").read_text() == (tmp_path / "b" / "timeStamps.csv").read_text()
    with pytest.raises(ValueError, match="already holds .avi"):
        write_miniscope(rec, tmp_path / "a")
    with pytest.raises(ValueError, match="layout"):
        write_miniscope(rec, tmp_path / "c", layout="v5")
