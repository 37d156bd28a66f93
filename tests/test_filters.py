"""Tests for glow, denoise and background filters (mps_core.preprocess.filters)."""

import cv2
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import disk, white_tophat

from mps_core.preprocess.filters import (
    denoise,
    glow_minimum,
    preprocess_frames,
    preprocess_movie,
    remove_background,
    remove_glow,
)


def raw_frames(n=3, shape=(40, 52), seed=0):
    """uint8-range integer-valued float32 frames: glow + blobs + noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    glow = 60 * np.exp(-(((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2) * 2)
    frames = []
    for _ in range(n):
        blobs = np.zeros(shape)
        for cy, cx in rng.uniform([0, 0], [h, w], size=(6, 2)):
            blobs += rng.uniform(20, 60) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        frames.append(30 + glow + blobs + rng.normal(0, 5, shape))
    return np.clip(np.rint(frames), 0, 255).astype(np.float32)


def float_frame(shape=(40, 52), seed=1):
    """Non-integer float data (forces the exact float paths)."""
    return (np.random.default_rng(seed).random(shape) * 100).astype(np.float32)


# ------------------------------------------------------------------ denoise


@pytest.mark.parametrize("ksize", [3, 5, 7, 9])
def test_median_equals_scipy_on_float_data(ksize):
    frame = float_frame()
    expected = ndimage.median_filter(frame, size=ksize, mode="nearest")
    np.testing.assert_array_equal(denoise(frame, "median", ksize=ksize), expected)


@pytest.mark.parametrize("offset", [0.0, -37.0, 1000.0])
def test_median_large_kernel_integer_path_exact(offset):
    frames = raw_frames() + np.float32(offset)  # integer values, span <= 256
    out = denoise(frames, "median", ksize=7)
    assert out.dtype == np.float32 and out.shape == frames.shape
    for t in range(len(frames)):
        np.testing.assert_array_equal(out[t], ndimage.median_filter(frames[t], size=7, mode="nearest"))


@pytest.mark.parametrize("sigma", [0.8, 1.0, 2.5])
def test_gaussian_equals_scipy(sigma):
    frame = float_frame()
    expected = ndimage.gaussian_filter(frame, sigma, mode="mirror", truncate=4.0)
    np.testing.assert_allclose(denoise(frame, "gaussian", sigma=sigma), expected, atol=1e-4)


def test_gaussian_ksize_equals_opencv():
    frame = float_frame()
    expected = cv2.GaussianBlur(frame, (7, 7), 0, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(denoise(frame, "gaussian", sigma=None, ksize=7), expected, atol=1e-6)


def naive_bilateral(img, d, sigma_color, sigma_space):
    """Textbook bilateral filter: disk of radius d // 2, mirrored borders."""
    r = d // 2
    h, w = img.shape
    padded = np.pad(img.astype(np.float64), r, mode="reflect")
    num = np.zeros((h, w))
    den = np.zeros((h, w))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx > r * r:
                continue
            q = padded[r + dy : r + dy + h, r + dx : r + dx + w]
            wgt = np.exp(-(dx * dx + dy * dy) / (2 * sigma_space**2) - (q - img) ** 2 / (2 * sigma_color**2))
            num += wgt * q
            den += wgt
    return num / den


def test_bilateral_equals_naive_reference():
    frame = float_frame()
    out = denoise(frame, "bilateral", d=5, sigma_color=20.0, sigma_space=3.0)
    np.testing.assert_allclose(out, naive_bilateral(frame, 5, 20.0, 3.0), atol=1e-3)


def step_image(seed=2, noise=4.0):
    rng = np.random.default_rng(seed)
    clean = np.zeros((48, 48), np.float32)
    clean[:, 24:] = 100.0
    return clean, clean + rng.normal(0, noise, clean.shape).astype(np.float32)


def test_anisotropic_smooths_noise_keeps_edge():
    clean, noisy = step_image()
    out = denoise(noisy, "anisotropic", iterations=10, gamma=0.2)
    flat_left, flat_right = np.s_[:, 2:20], np.s_[:, 28:46]
    for region in (flat_left, flat_right):
        assert out[region].var() < 0.3 * noisy[region].var()
    # The step stays sharp: the jump across the edge keeps > 90 % of its height,
    # whereas a Gaussian of comparable smoothing spreads it.
    jump = (out[:, 24] - out[:, 23]).mean()
    assert jump > 90.0
    blurred = denoise(noisy, "gaussian", sigma=1.5)
    assert (blurred[:, 24] - blurred[:, 23]).mean() < 50.0
    # Flat frame: nothing changes (kappa estimate is 0).
    flat = np.full((10, 10), 7.0, np.float32)
    np.testing.assert_array_equal(denoise(flat, "anisotropic"), flat)


def test_anisotropic_quadratic_and_fixed_kappa():
    _, noisy = step_image()
    out = denoise(noisy, "anisotropic", iterations=5, kappa=15.0, option="quadratic")
    assert out[:, 2:20].var() < noisy[:, 2:20].var()
    np.testing.assert_allclose(out.mean(), noisy.mean(), rtol=1e-4)  # zero-flux: mass conserved


def test_none_is_float32_copy():
    frames = raw_frames().astype(np.uint8)
    out = denoise(frames, "none")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, frames)
    np.testing.assert_array_equal(remove_background(frames, "none"), frames)


# --------------------------------------------------------------- background


@pytest.mark.parametrize("radius", [2, 5, 9])
@pytest.mark.parametrize("integral", [True, False])
def test_tophat_equals_skimage(radius, integral):
    frame = raw_frames(n=1)[0] if integral else float_frame()
    expected = white_tophat(frame, disk(radius), mode="ignore")
    np.testing.assert_array_equal(remove_background(frame, "tophat", radius=radius), expected)


def test_tophat_ellipse_uses_opencv_kernel():
    frame = float_frame()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))
    expected = white_tophat(frame, kernel.astype(bool), mode="ignore")
    np.testing.assert_array_equal(remove_background(frame, "tophat", radius=5, shape="ellipse"), expected)


def test_tophat_uint16_range_integers():
    frame = np.rint(float_frame() * 300).astype(np.float32)  # span up to 30000
    expected = white_tophat(frame, disk(4), mode="ignore")
    np.testing.assert_array_equal(remove_background(frame, "tophat", radius=4), expected)


@pytest.mark.parametrize("window", [3, 9, 15])
def test_uniform_equals_scipy(window):
    frame = float_frame()
    expected = frame - ndimage.uniform_filter(frame, size=window, mode="mirror")
    np.testing.assert_allclose(remove_background(frame, "uniform", window=window), expected, atol=1e-4)


# ------------------------------------------------------------ glow and chain


def test_glow_minimum_dask_and_removal():
    frames = raw_frames(n=10)
    movie = da.from_array(frames, chunks=(3, 20, 52))
    glow = glow_minimum(movie)
    assert glow.dtype == np.float32 and glow.shape == frames.shape[1:]
    np.testing.assert_array_equal(glow, frames.min(axis=0))
    np.testing.assert_array_equal(glow_minimum(frames), glow)
    clean = remove_glow(frames, glow)
    np.testing.assert_array_equal(clean.min(axis=0), np.zeros(frames.shape[1:]))


@pytest.mark.parametrize("dmethod, dkw", [("median", {"ksize": 5}), ("gaussian", {"sigma": 1.0})])
def test_order_option(dmethod, dkw):
    frames = raw_frames()
    glow = frames.min(axis=0)
    base = frames - glow
    bkw = {"radius": 4}
    common = dict(
        glow=glow, denoise_method=dmethod, denoise_kw=dkw, background_method="tophat", background_kw=bkw
    )
    bg_first = preprocess_frames(frames, order="background_first", **common)
    dn_first = preprocess_frames(frames, order="denoise_first", **common)
    np.testing.assert_array_equal(bg_first, denoise(remove_background(base, "tophat", **bkw), dmethod, **dkw))
    np.testing.assert_array_equal(dn_first, remove_background(denoise(base, dmethod, **dkw), "tophat", **bkw))
    assert bg_first.dtype == np.float32
    assert np.abs(bg_first - dn_first).max() > 1.0  # non-linear steps: order matters


def test_preprocess_movie_matches_frames():
    frames = raw_frames(n=8)
    glow = frames.min(axis=0)
    kw = dict(glow=glow, denoise_method="median", denoise_kw={"ksize": 3}, background_method="uniform",
              background_kw={"window": 9})
    lazy = preprocess_movie(da.from_array(frames, chunks=(3, 20, 26)), **kw)
    assert lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.compute(), preprocess_frames(frames, **kw))
    single = preprocess_frames(frames[0], **kw)
    np.testing.assert_array_equal(single, preprocess_frames(frames, **kw)[0])


def test_bad_parameters_raise():
    frame = float_frame()
    with pytest.raises(ValueError, match="method"):
        denoise(frame, "wiener")
    with pytest.raises(ValueError, match="ksize"):
        denoise(frame, "median", ksize=4)
    with pytest.raises(ValueError, match="unknown parameter"):
        denoise(frame, "gaussian", size=3)
    with pytest.raises(ValueError, match="gamma"):
        denoise(frame, "anisotropic", gamma=0.5)
    with pytest.raises(ValueError, match="method"):
        remove_background(frame, "rolling_ball")
    with pytest.raises(ValueError, match="window"):
        remove_background(frame, "uniform", window=8)
    with pytest.raises(ValueError, match="min_frame"):
        remove_glow(frame[None], np.zeros((3, 3)))
    with pytest.raises(ValueError, match="order"):
        preprocess_frames(frame, order="sideways")


# ------------------------------------------- fast exact paths (rank filters)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("radius, shape", [(1, "disk"), (4, "disk"), (15, "disk"), (5, "ellipse")])
def test_row_convex_morphology_equals_opencv(dtype, radius, shape):
    from mps_core.preprocess.filters import _footprint, _morph_workspace

    rng = np.random.default_rng(radius)
    top = 255 if dtype == np.uint8 else 60000
    frame = rng.integers(0, top, size=(37, 45)).astype(dtype)
    if dtype == np.float32:
        frame += rng.random(frame.shape).astype(np.float32)
    kernel = _footprint(radius, shape)
    ws = _morph_workspace(radius, shape, frame.shape, frame.dtype)
    assert ws is not None
    np.testing.assert_array_equal(ws.apply(frame, erode=True), cv2.erode(frame, kernel))
    np.testing.assert_array_equal(ws.apply(frame, erode=False), cv2.dilate(frame, kernel))


def _reference_chain(frames, glow, ksize, radius, order):
    """scipy / skimage reference of glow removal + top-hat + median in float64."""
    out = []
    for f in np.asarray(frames, np.float64):
        x = f - (0 if glow is None else glow)
        steps = [lambda y: white_tophat(y, disk(radius), mode="ignore"),
                 lambda y: ndimage.median_filter(y, size=ksize, mode="nearest")]
        for step in (steps if order == "background_first" else steps[::-1]):
            x = step(x)
        out.append(x)
    return np.array(out, np.float32)


@pytest.mark.parametrize("order", ["background_first", "denoise_first"])
@pytest.mark.parametrize("case", ["uint8", "float_glow", "uint16_range", "median7_uint16_range"])
def test_rank_chain_equals_reference(order, case):
    frames = raw_frames(n=3)
    glow, ksize = None, 5
    if case == "uint8":
        frames = frames.astype(np.uint8)
    elif case == "float_glow":
        glow = frames.min(axis=0)
    else:  # integers spanning > 256 levels: the uint16 path (and its median-7 fallback)
        frames = frames * 40
        ksize = 7 if case.startswith("median7") else 5
    out = preprocess_frames(frames, glow=glow, denoise_method="median", denoise_kw={"ksize": ksize},
                            background_method="tophat", background_kw={"radius": 4}, order=order)
    assert out.dtype == np.float32 and out.shape == frames.shape
    np.testing.assert_array_equal(out, _reference_chain(frames, glow, ksize, 4, order))
    one = preprocess_frames(frames[0], glow=glow, denoise_method="median", denoise_kw={"ksize": ksize},
                            background_method="tophat", background_kw={"radius": 4}, order=order)
    np.testing.assert_array_equal(one, out[0])


def test_rank_chain_non_integer_data_uses_float_path():
    frames = np.stack([float_frame(seed=s) for s in range(2)])
    out = preprocess_frames(frames, denoise_method="median", denoise_kw={"ksize": 3},
                            background_method="tophat", background_kw={"radius": 3})
    np.testing.assert_allclose(out, _reference_chain(frames, None, 3, 3, "background_first"),
                               rtol=0, atol=1e-4)


def test_rank_chain_bad_parameters_still_raise():
    frames = raw_frames(n=1)
    with pytest.raises(ValueError, match="ksize"):
        preprocess_frames(frames, denoise_method="median", denoise_kw={"ksize": 4})
    with pytest.raises(ValueError, match="radius"):
        preprocess_frames(frames, background_method="tophat", background_kw={"radius": 0})


def test_tophat_threads_do_not_share_workspaces():
    """Chunks run in parallel dask threads; each must get its own buffers."""
    from concurrent.futures import ThreadPoolExecutor

    frames = [raw_frames(n=4, shape=(60, 70), seed=s).astype(np.uint8) for s in range(8)]
    kw = dict(denoise_method="median", denoise_kw={"ksize": 5}, background_method="tophat",
              background_kw={"radius": 6})
    expected = [preprocess_frames(f, **kw) for f in frames]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda f: preprocess_frames(f, **kw), frames))
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)
