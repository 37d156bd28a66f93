"""Tests of motion estimation (2c), erroneous-frame flags (2d) and shift application (2e).

Small synthetic scenes (smoothed noise + Gaussian blobs ~ cells) are moved by known
sub-pixel shifts (exact Fourier shifts of a larger canvas, so content really enters and
leaves the field of view) and the recovered shifts are compared with the truth.
Convention: a registration shift is the negation of the applied content motion.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.fft as sfft
import scipy.ndimage as ndi
from skimage.registration import phase_cross_correlation

from mps_core.motion import phasecorr as pc
from mps_core.motion.apply import apply_shifts, apply_shifts_dask, covered_mask, dense_field
from mps_core.motion.estimate import estimate_shifts, patch_windows
from mps_core.motion.outliers import flag_erroneous

# ----------------------------------------------------------------------------- data


def make_scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smoothed noise plus ~10 px Gaussian blobs (cell-like texture), float64."""
    rng = np.random.default_rng(seed)
    base = ndi.gaussian_filter(rng.standard_normal((h, w)), 2.0)
    base *= 0.3 / base.std()
    spots = np.zeros((h, w))
    n = h * w // 150
    np.add.at(spots, (rng.integers(0, h, n), rng.integers(0, w, n)), rng.uniform(0.5, 2.0, n))
    return base + ndi.gaussian_filter(spots, 2.5) * 2 * np.pi * 2.5**2


def fourier_shift(img: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """Exact (band-limited, circular) shifts of one image: (T, H, W) for motion (T, 2)."""
    f = sfft.fft2(img)
    fy = sfft.fftfreq(img.shape[0])[None, :, None]
    fx = sfft.fftfreq(img.shape[1])[None, None, :]
    ramp = np.exp(-2j * np.pi * (motion[:, 0, None, None] * fy + motion[:, 1, None, None] * fx))
    return sfft.ifft2(f[None] * ramp).real


def make_movie(n: int, size: int = 96, pad: int = 24, noise: float = 0.2, seed: int = 0):
    """Frames with slow drift of several px plus jitter; returns (frames, registration shifts)."""
    rng = np.random.default_rng(seed + 100)
    t = np.linspace(0, 1, n)
    motion = np.stack([5.0 * t + 0.6 * np.sin(2 * np.pi * 1.5 * t), -6.0 * t + 0.4 * np.cos(2 * np.pi * t)], 1)
    motion += rng.normal(0, 0.8, motion.shape)
    canvas = make_scene(size + 2 * pad, size + 2 * pad, seed)
    frames = fourier_shift(canvas, motion)[:, pad : pad + size, pad : pad + size]
    frames += rng.normal(0, noise, frames.shape)
    return frames.astype(np.float32), -motion


def offset_free_error(est: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Error after removing the best constant offset (the template's position is arbitrary)."""
    d = np.asarray(est, np.float64) - true
    return d - d.reshape(-1, 2).mean(axis=0)


@pytest.fixture(scope="module")
def drift_movie():
    frames, true = make_movie(360)
    return da.from_array(frames, chunks=(90, -1, -1)), frames, true


# ----------------------------------------------------------------------------- phasecorr


def test_estimate_batch_matches_skimage_and_truth():
    # A periodic textured scene moved by exact circular (Fourier) shifts: plain
    # cross-correlation (skimage, normalization=None) is then exact too.
    rng = np.random.default_rng(1)
    img = make_scene(160, 160, seed=1)
    true = rng.uniform(-5, 5, (12, 2))  # registration shifts
    frames = fourier_shift(img, -true) + rng.normal(0, 0.02 * img.std(), (12, 160, 160))
    ours = pc.estimate_batch(img.astype(np.float32), frames.astype(np.float32), max_shift=10, upsample=50)
    ref = np.array([phase_cross_correlation(img, f, upsample_factor=50, normalization=None)[0] for f in frames])
    assert ours.shape == (12, 2) and ours.dtype == np.float32
    assert np.abs(ref - true).max() <= 0.05
    assert np.abs(ours - ref).max() <= 0.05
    assert np.abs(ours - true).max() <= 0.05


def test_estimate_batch_textured_scene_subpixel():
    canvas = make_scene(160, 160, seed=2)
    rng = np.random.default_rng(2)
    motion = rng.uniform(-8, 8, (30, 2))
    frames = fourier_shift(canvas, motion)[:, 32:128, 32:128]
    frames += rng.normal(0, 0.2, frames.shape)
    est = pc.estimate_batch(canvas[32:128, 32:128], frames, max_shift=12, upsample=50)
    err = est - (-motion)
    assert np.sqrt(np.mean(err**2)) <= 0.08
    assert np.abs(err).max() <= 0.2


def test_estimate_batch_respects_max_shift():
    canvas = make_scene(140, 140, seed=3)
    motion = np.array([[-8.3, 2.0], [1.0, 9.6], [0.5, -0.5]])
    frames = fourier_shift(canvas, motion)[:, 22:118, 22:118]
    est = pc.estimate_batch(canvas[22:118, 22:118], frames, max_shift=5.0)
    assert np.abs(est).max() <= 5.0
    assert np.allclose(est[2], [-0.5, 0.5], atol=0.1)  # in-range frame unaffected


def test_estimate_batch_blank_frame_and_validation():
    tmpl = make_scene(64, 64).astype(np.float32)
    est = pc.estimate_batch(tmpl, np.zeros((2, 64, 64), np.float32), max_shift=5)
    assert np.array_equal(est, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="upsample"):
        pc.estimate_batch(tmpl, tmpl[None], max_shift=5, upsample=0)
    with pytest.raises(ValueError, match="frames"):
        pc.estimate_batch(tmpl, np.zeros((2, 60, 64)), max_shift=5)
    with pytest.raises(ValueError, match="max_shift"):
        pc.estimate_batch(tmpl, tmpl[None], max_shift=-1)


# ----------------------------------------------------------------------------- estimate


def test_estimate_shifts_follows_drift_and_jitter(drift_movie):
    movie, _, true = drift_movie
    assert len(movie.chunks[0]) > 1
    est = estimate_shifts(movie, max_shift=15, group_size=32)
    assert est.shape == (360, 2) and est.dtype == np.float32
    err = offset_free_error(est, true)
    rmse = np.sqrt(np.mean(err**2))
    assert rmse <= 0.1, rmse
    assert np.abs(err).max() <= 0.25
    # Median-referenced output.
    assert np.allclose(np.median(est, axis=0), 0, atol=1e-4)


@pytest.mark.parametrize("kw", [{"refine": True}, {"spatial_downsample": 2}])
def test_estimate_shifts_options(drift_movie, kw):
    movie, _, true = drift_movie
    err = offset_free_error(estimate_shifts(movie, max_shift=15, group_size=32, **kw), true)
    assert np.sqrt(np.mean(err**2)) <= (0.1 if "refine" in kw else 0.15)


def test_estimate_shifts_numpy_uint8_and_hooks():
    frames, true = make_movie(120, size=80, seed=4)
    lo, hi = frames.min(), frames.max()
    u8 = np.round((frames - lo) / (hi - lo) * 255).astype(np.uint8)
    calls, fractions = [], []

    def compute(obj):
        calls.append(obj)
        return dask.compute(obj, scheduler="sync")

    est = estimate_shifts(
        da.from_array(u8, chunks=(40, -1, -1)),
        group_size=20,
        refine=True,
        compute=compute,
        progress=lambda f, m: fractions.append(f),
    )
    assert len(calls) == 2  # first pass and refinement
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert np.sqrt(np.mean(offset_free_error(est, true) ** 2)) <= 0.1


def test_uint8_frames_give_the_same_shifts_as_their_float_copy():
    # 8-bit frames are converted inside the registration, a group at a time.
    frames, _ = make_movie(64, size=64, seed=6)
    lo, hi = frames.min(), frames.max()
    u8 = np.round((frames - lo) / (hi - lo) * 255).astype(np.uint8)
    a = estimate_shifts(da.from_array(u8, chunks=(32, -1, -1)), group_size=16, max_shift=10)
    b = estimate_shifts(da.from_array(u8.astype(np.float32), chunks=(32, -1, -1)), group_size=16,
                        max_shift=10)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("factor", [2, 3])
def test_bin_is_the_block_mean(dtype, factor):
    from mps_core.motion.estimate import _bin

    rng = np.random.default_rng(factor)
    x = (rng.uniform(0, 255, (3, 31, 20))).astype(dtype)
    h, w = 31 // factor * factor, 20 // factor * factor
    ref = x[:, :h, :w].astype(np.float64).reshape(3, h // factor, factor, w // factor, factor).mean(axis=(2, 4))
    out = _bin(x, factor)
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-4)


def test_flatten_undoes_a_fixed_gain_pattern():
    from mps_core.motion.estimate import _flatten

    yy, xx = np.mgrid[:96, :96]
    vignette = 1 - 0.6 * ((yy - 48) ** 2 + (xx - 48) ** 2) / 48**2
    flat = _flatten((5.0 * vignette)[None].astype(np.float32), 10.0)[0]
    assert flat.dtype == np.float32
    inner = flat[20:76, 20:76]  # the pattern varies by 35 % here; its ratio to a blur of it, barely
    assert 0.95 <= inner.min() and inner.max() <= 1.1 and np.ptp(inner) <= 0.03, np.ptp(inner)
    # A frame of mean <= 0 is rescaled, not blown up by a near-zero local mean.
    neg = _flatten(-np.ones((1, 64, 64), np.float32), 10.0)
    assert np.isfinite(neg).all() and np.abs(neg).max() <= 10.0


def test_flatten_removes_the_pull_of_vignetting():
    # Illumination fall-off fixed to the sensor multiplies the moving tissue, and the
    # tissue's overall brightness changes from frame to frame (population activity): the
    # pattern's imprint does not move and pulls shifts towards zero. Dividing by the local
    # mean removes it.
    rng = np.random.default_rng(0)
    n, size, pad = 120, 96, 24
    motion = rng.normal(0, 2.0, (n, 2))
    canvas = make_scene(size + 2 * pad, size + 2 * pad, 0) + 3.0
    frames = fourier_shift(canvas, motion)[:, pad : pad + size, pad : pad + size]
    yy, xx = np.mgrid[:size, :size]
    vignette = 1 - 0.6 * ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 2) ** 2
    gain = 1 + 0.4 * rng.uniform(-1, 1, n)[:, None, None]
    frames = (frames * vignette * gain + rng.normal(0, 0.3, frames.shape)).astype(np.float32)
    movie = da.from_array(frames, chunks=(60, -1, -1))
    kw = dict(max_shift=10, group_size=30, lowpass=2, highpass=10, whiten=0.25)

    def rmse(flatten):
        err = offset_free_error(estimate_shifts(movie, flatten=flatten, **kw), -motion)
        return float(np.sqrt(np.mean(err**2)))

    flat, plain = rmse(10.0), rmse(0.0)
    assert flat <= 0.07, flat
    assert plain >= 1.5 * flat, (plain, flat)


def _striped(frames: np.ndarray, amplitude: float, seed: int = 3) -> np.ndarray:
    """Frames plus a random offset on every row of every frame (a wireless read-out)."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((len(frames), frames.shape[1], 1)).astype(np.float32)
    return frames + amplitude * float(frames.std()) * rows


def test_row_stripe_ratio_tells_row_offsets_from_noise():
    from mps_core.motion.estimate import STRIPE_RATIO, row_stripe_ratio

    frames, _ = make_movie(64, size=96, seed=3)
    assert row_stripe_ratio(frames) < 2
    assert row_stripe_ratio(_striped(frames, 0.5)) > STRIPE_RATIO
    with pytest.raises(ValueError, match="T >= 2"):
        row_stripe_ratio(frames[:1])


def test_destripe_keeps_row_offsets_from_driving_the_shifts():
    frames, true = make_movie(120, size=96, seed=3)
    movie = da.from_array(_striped(frames, 2.0), chunks=(60, -1, -1))
    kw = dict(max_shift=10, group_size=30, lowpass=2, highpass=10, whiten=0.25)

    def rmse(destripe):
        err = offset_free_error(estimate_shifts(movie, destripe=destripe, **kw), true)
        return float(np.sqrt(np.mean(err**2)))

    on, off = rmse(True), rmse(False)
    assert on <= 0.05 and off >= 2 * on, (on, off)


def test_estimate_shifts_clips_to_max_shift():
    canvas = make_scene(150, 150, seed=5)
    rng = np.random.default_rng(5)
    motion = rng.normal(0, 0.3, (80, 2))
    motion[[20, 61]] = [[9.0, -1.0], [0.5, -9.5]]  # beyond max_shift
    frames = fourier_shift(canvas, motion)[:, 27:123, 27:123].astype(np.float32)
    est = estimate_shifts(da.from_array(frames, chunks=(40, -1, -1)), max_shift=4, group_size=20)
    assert np.abs(est).max() <= 4.0
    ok = np.setdiff1d(np.arange(80), [20, 61])
    assert np.sqrt(np.mean(offset_free_error(est[ok], -motion[ok]) ** 2)) <= 0.1


def test_estimate_shifts_validation(drift_movie):
    movie = drift_movie[0]
    for kw, word in [
        ({"max_shift": 0}, "max_shift"),
        ({"upsample": 0}, "upsample"),
        ({"group_size": 1}, "group_size"),
        ({"mesh": (0, 2)}, "mesh"),
        ({"spatial_downsample": 0}, "spatial_downsample"),
        ({"flatten": -1}, "flatten"),
    ]:
        with pytest.raises(ValueError, match=word):
            estimate_shifts(movie, **kw)
    with pytest.raises(ValueError, match="3-D"):
        estimate_shifts(movie[0])


def test_mesh_recovers_linear_field_better_than_rigid():
    # dy varies linearly across the width (a shear of up to +-3 px that changes from frame
    # to frame), plus rigid jitter. The template's own shape is arbitrary (it absorbs the
    # mean deformation), so errors are compared after removing each pixel's mean offset.
    size, pad, n = 112, 16, 48
    rng = np.random.default_rng(6)
    canvas = make_scene(size + 2 * pad, size + 2 * pad, seed=6).astype(np.float32)
    xs = (np.arange(size) - (size - 1) / 2) / (size - 1)  # -0.5 .. 0.5
    jitter = rng.normal(0, 0.7, (n, 2))
    gain = rng.uniform(-3.0, 3.0, n)  # per-frame shear: dy difference across the image, px
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    frames, field_true = [], []
    for t in range(n):
        u = (jitter[t, 0] + gain[t] * xs)[None, :] * np.ones((size, 1))  # content motion dy
        v = np.full((size, size), jitter[t, 1])
        frames.append(ndi.map_coordinates(canvas, [yy + pad - u, xx + pad - v], order=3))
        field_true.append(np.stack([-u, -v], -1))
    frames = np.stack(frames) + rng.normal(0, 0.1, (n, size, size)).astype(np.float32)
    field_true = np.stack(field_true)
    movie = da.from_array(frames, chunks=(24, -1, -1))
    mesh = estimate_shifts(movie, max_shift=8, group_size=24, mesh=(3, 3))
    rigid = estimate_shifts(movie, max_shift=8, group_size=24)
    assert mesh.shape == (n, 3, 3, 2) and mesh.dtype == np.float32
    inner = (slice(None), slice(18, -18), slice(18, -18))  # between the outer patch centres
    dense = np.stack([dense_field((size, size), m) for m in mesh])[inner]
    truth = field_true[inner]

    def rmse(est):
        err = est - truth
        return float(np.sqrt(np.mean((err - err.mean(axis=0)) ** 2)))

    rmse_mesh = rmse(dense)
    rmse_rigid = rmse(np.broadcast_to(rigid[:, None, None, :], truth.shape))
    assert rmse_mesh < 0.5 * rmse_rigid, (rmse_mesh, rmse_rigid)
    assert rmse_mesh <= 0.2, rmse_mesh


def test_patch_windows_cover_image():
    ys, xs, ph, pw = patch_windows((100, 60), (3, 2), 0.5)
    assert len(ys) == 3 and len(xs) == 2
    assert ys[0] == 0 and ys[-1] + ph == 100 and xs[-1] + pw == 60


# ----------------------------------------------------------------------------- apply


def test_apply_then_estimate_gives_zero(drift_movie):
    _, frames, true = drift_movie
    registered = apply_shifts(frames[:60], true[:60], fill_value=0.0)
    template = registered.mean(axis=0)
    residual = pc.estimate_batch(template, registered, max_shift=5)
    residual -= residual.mean(axis=0)
    assert np.sqrt(np.mean(residual**2)) <= 0.05
    assert np.abs(residual).max() <= 0.15


def test_apply_matches_scipy_shift_inside():
    img = make_scene(64, 64, seed=7).astype(np.float32)
    shifts = np.array([[1.25, -2.5], [0.0, 0.0], [-3.5, 0.75]])
    out = apply_shifts(np.stack([img] * 3), shifts, interpolation="cubic")
    for o, s in zip(out, shifts):
        ref = ndi.shift(img.astype(np.float64), s, order=3)
        # OpenCV's cubic kernel (Keys) differs slightly from scipy's cubic B-spline.
        assert np.abs(o[6:-6, 6:-6] - ref[6:-6, 6:-6]).max() < 0.1 * img.std()
    assert np.array_equal(out[1], img)


@pytest.mark.parametrize("fill", [0.0, -7.5, np.nan])
def test_fill_value_exact(fill):
    img = np.random.default_rng(8).uniform(1, 2, (40, 50)).astype(np.float32)
    shifts = np.array([[2.5, -1.25], [-3.0, 4.0]])
    out = apply_shifts(np.stack([img, img]), shifts, fill_value=fill, interpolation="linear")
    # dy = 2.5: rows 0..2 have no source; dx = -1.25: the last 2 columns have none.
    expected = np.zeros((40, 50), bool)
    expected[:3] = True
    expected[:, -2:] = True
    for o, s, exp in zip(out, shifts, [expected, None]):
        uncovered = ~covered_mask((40, 50), s)
        if exp is not None:
            assert np.array_equal(uncovered, exp)
        if np.isnan(fill):
            assert np.array_equal(np.isnan(o), uncovered)
        else:
            assert np.all(o[uncovered] == np.float32(fill))
            assert np.all(o[~uncovered] >= 1.0) and np.all(o[~uncovered] <= 2.0)
    # Mesh shifts with a constant field fill exactly the same pixels.
    mesh = np.broadcast_to(shifts[:, None, None, :], (2, 2, 3, 2))
    out_mesh = apply_shifts(np.stack([img, img]), mesh, fill_value=-1.0, interpolation="linear")
    for o, s in zip(out_mesh, shifts):
        assert np.array_equal(o == -1.0, ~covered_mask((40, 50), s))


def test_apply_mesh_constant_field_equals_rigid():
    img = make_scene(48, 56, seed=9).astype(np.float32)
    frames = np.stack([img, img * 2])
    rigid = np.array([[0.4, -1.7], [-2.2, 0.9]])
    mesh = np.broadcast_to(rigid[:, None, None, :], (2, 4, 3, 2))
    a = apply_shifts(frames, rigid, np.nan, interpolation="linear")
    b = apply_shifts(frames, mesh, np.nan, interpolation="linear")
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) < 1e-3


def test_dense_field_interpolates_patch_centres():
    grid = np.zeros((3, 3, 2), np.float32)
    grid[..., 0] = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    grid[..., 1] = -grid[..., 0]
    field = dense_field((60, 60), grid)
    # Patch centres at (i + 0.5) * 60 / 3 - 0.5 = 9.5, 29.5, 49.5 (half-pixel convention).
    assert np.allclose(field[29:31, 29:31].mean(axis=(0, 1)), [4, -4], atol=1e-4)
    assert np.allclose(field[19:21, 29:31, 0].mean(), (1 + 4) / 2, atol=1e-4)  # midway
    assert np.allclose(field[0, 0], [0, 0]) and np.allclose(field[-1, -1], [8, -8])  # held


def test_apply_shifts_dask_matches_numpy():
    frames = np.random.default_rng(10).normal(size=(25, 30, 32)).astype(np.float32)
    shifts = np.random.default_rng(11).uniform(-3, 3, (25, 2))
    movie = da.from_array(frames, chunks=(7, 15, 32))
    lazy = apply_shifts_dask(movie, shifts, fill_value=-2.0)
    assert lazy.dtype == np.float32 and lazy.chunks[0] == movie.chunks[0]
    assert np.array_equal(lazy.compute(), apply_shifts(frames, shifts, -2.0))
    with pytest.raises(ValueError, match="shifts"):
        apply_shifts_dask(movie, shifts[:5])


def test_apply_validation():
    with pytest.raises(ValueError, match="interpolation"):
        apply_shifts(np.zeros((1, 8, 8)), np.zeros((1, 2)), interpolation="nearest-ish")
    with pytest.raises(ValueError, match="shifts"):
        apply_shifts(np.zeros((2, 8, 8)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="frames"):
        apply_shifts(np.zeros((8, 8)), np.zeros((1, 2)))


# ----------------------------------------------------------------------------- outliers


def test_flag_erroneous_exact_both_sides():
    rng = np.random.default_rng(12)
    shifts = rng.normal(0, 0.3, (500, 2)) + [2.0, -1.0]
    planted = [17, 120, 121, 333, 480]
    shifts[17, 0] += 4.0
    shifts[120, 0] -= 4.0
    shifts[121, 1] += 3.5
    shifts[333, 1] -= 3.5
    shifts[480] += [-5.0, 5.0]
    flagged = flag_erroneous(shifts, threshold_factor=6.0)
    assert flagged.dtype == bool and flagged.shape == (500,)
    assert np.array_equal(np.nonzero(flagged)[0], planted)


def test_flag_erroneous_mad_zero_falls_back_to_std():
    shifts = np.zeros((100, 2))
    shifts[10, 0] = 3.0
    shifts[90, 1] = -3.0
    assert np.array_equal(np.nonzero(flag_erroneous(shifts))[0], [10, 90])
    assert not flag_erroneous(np.ones((50, 2))).any()  # all equal: nothing to flag


def test_flag_erroneous_abs_max_and_mesh():
    shifts = np.random.default_rng(13).normal(0, 0.2, (60, 2))
    shifts[5] = [2.9, 0.0]  # beyond the dy limit; the huge threshold_factor flags nothing else
    flagged = flag_erroneous(shifts, threshold_factor=100.0, abs_max=(2.5, 10.0))
    assert np.array_equal(np.nonzero(flagged)[0], [5])
    mesh = np.broadcast_to(shifts[:, None, None, :], (60, 2, 2, 2))
    assert np.array_equal(flag_erroneous(mesh, threshold_factor=100.0, abs_max=(2.5, 10.0)), flagged)
    nan = shifts.copy()
    nan[7, 1] = np.nan
    assert flag_erroneous(nan, threshold_factor=100.0)[7]
    with pytest.raises(ValueError, match="threshold_factor"):
        flag_erroneous(shifts, threshold_factor=0)
    with pytest.raises(ValueError, match="abs_max"):
        flag_erroneous(shifts, abs_max=(1.0,))
    with pytest.raises(ValueError, match="shifts"):
        flag_erroneous(np.zeros((5, 3)))


# ----------------------------------------------------------------------------- step 2c


def test_step_2c_estimates_on_the_chosen_source(drift_movie):
    """source='raw' reads 2a's frames (minus 2a's removals), 'filtered' reads 2b's movie."""
    import xarray as xr

    from mps_core.registry import SimpleContext
    from mps_core.steps.motion import STEP_2C, MotionParams

    _, frames, true = drift_movie
    n = len(frames)
    removed = np.zeros(n + 1, np.int8)
    removed[-1] = 1  # one extra raw frame that 2a removed: it must not reach the estimator
    raw = np.concatenate([frames, frames[:1] * 0 + 255], axis=0)
    dims = ("frame", "height", "width")
    movie_raw = xr.DataArray(da.from_array(raw, chunks=(90, -1, -1)), dims=dims,
                             coords={"frame": np.arange(n + 1)})
    frame_index = xr.Dataset({"removed": ("frame", removed)}, coords={"frame": np.arange(n + 1)})
    # 2b's movie here is the first frame repeated: no motion in it at all.
    still = np.broadcast_to(frames[:1], frames.shape).copy()
    movie_filtered = xr.DataArray(da.from_array(still, chunks=(90, -1, -1)), dims=dims,
                                  coords={"frame": np.arange(n)})
    kw = dict(movie_filtered=movie_filtered, movie_raw=movie_raw, frame_index=frame_index)
    raw_s = STEP_2C(MotionParams(source="raw"), SimpleContext(), **kw)["shifts"]
    assert raw_s.sizes["frame"] == n and list(raw_s.frame.values) == list(range(n))
    err = offset_free_error(raw_s.values, true)
    assert np.sqrt((err**2).mean()) < 0.1
    still_s = STEP_2C(MotionParams(source="filtered"), SimpleContext(), **kw)["shifts"]
    assert np.abs(still_s.values).max() < 0.05


def test_step_2c_destripes_only_striped_movies(drift_movie):
    import xarray as xr

    from mps_core.registry import SimpleContext
    from mps_core.steps.motion import STEP_2C, MotionParams

    _, frames, true = drift_movie
    frames = frames + 3.0  # a fluorescence baseline, for 2c's division by the local mean
    n = len(frames)
    dims = ("frame", "height", "width")
    index = xr.Dataset({"removed": ("frame", np.zeros(n, np.int8))}, coords={"frame": np.arange(n)})
    for movie, striped in ((frames, False), (_striped(frames, 2.0), True)):
        arr = xr.DataArray(da.from_array(movie, chunks=(90, -1, -1)), dims=dims,
                           coords={"frame": np.arange(n)})
        out = STEP_2C(MotionParams(), SimpleContext(), movie_filtered=arr, movie_raw=arr,
                      frame_index=index)["shifts"]
        assert out.attrs["destripe"] is striped
        err = offset_free_error(out.values, true)
        assert np.sqrt((err**2).mean()) < 0.1
    forced = STEP_2C(MotionParams(destripe="off"), SimpleContext(), movie_filtered=arr,
                     movie_raw=arr, frame_index=index)["shifts"]
    assert forced.attrs["destripe"] is False and forced.attrs["row_stripe_ratio"] is None
