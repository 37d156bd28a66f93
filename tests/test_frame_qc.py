"""Tests for per-frame QC: transmission corruption (mps_core.preprocess.frame_qc)
and line splitting (mps_core.preprocess.line_split)."""

from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from mps_core.preprocess.frame_qc import flag_corrupted, frame_scores, frame_scores_dask
from mps_core.preprocess.line_split import (
    advanced_scores,
    flag_advanced,
    flag_basic,
    left_edge_means,
    reference_profile,
    row_profiles,
)

DATA = Path("/work/shared/data/mio")
AVI = DATA / "wireless_corrupted.avi"
LABELS = DATA / "wireless_corrupted.yaml"


def clean_movie(n_frames=12, shape=(96, 128), seed=0, scale=1.0, dtype=np.uint8):
    """Smooth blobs + Gaussian noise + vignette, like a raw 1p miniscope movie."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    vignette = np.exp(-(((yy - h / 2) / (0.7 * h)) ** 2 + ((xx - w / 2) / (0.7 * w)) ** 2))
    centres = rng.uniform([0, 0], [h, w], size=(15, 2))
    frames = []
    for _ in range(n_frames):
        amps = rng.uniform(10, 40, size=len(centres))
        blobs = sum(
            a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2)) for a, (cy, cx) in zip(amps, centres)
        )
        frame = 20 + vignette * (90 + blobs) + rng.normal(0, 3, size=shape)
        frames.append(frame)
    movie = np.clip(np.stack(frames) * scale, 0, np.iinfo(dtype).max)
    return np.rint(movie).astype(dtype)


def plant_corruption(movie, seed=1):
    """Noise bands in frames 2 and 7, black blocks in 4 (full width) and 9 (partial)."""
    rng = np.random.default_rng(seed)
    out = movie.copy()
    top = np.iinfo(movie.dtype).max if movie.dtype.kind == "u" else 255
    out[2, 30:34] = rng.integers(0, top, size=out[2, 30:34].shape)
    out[7, 90:96] = rng.integers(0, top, size=out[7, 90:96].shape)  # at the bottom edge
    out[4, 40:50] = 0
    out[9, 60:66, :80] = 0  # 80 of 128 columns
    return out, {2, 4, 7, 9}


def flagged_set(movie, **kw):
    return set(np.flatnonzero(flag_corrupted(frame_scores(movie), **kw)).tolist())


def test_clean_synthetic_not_flagged():
    scores = frame_scores(clean_movie())
    assert not flag_corrupted(scores).any()
    assert scores["row_noise"].max() < 2.0
    assert (scores["black_rows"] == 0).all()


def test_planted_corruption_flagged_exactly():
    movie, truth = plant_corruption(clean_movie())
    assert flagged_set(movie) == truth
    scores = frame_scores(movie)
    assert scores["black_rows"][4] == 10 and scores["black_rows"][9] == 6
    assert scores["noisy_rows"][2] >= 3 and scores["noisy_rows"][7] >= 5


def test_scores_independent_of_intensity_scale():
    """uint16 data with 100x the values give the same flags (robust normalisation)."""
    movie16, truth = plant_corruption(clean_movie(scale=100.0, dtype=np.uint16))
    assert flagged_set(movie16) == truth
    assert flagged_set(movie16.astype(np.float32) / 7.0) == truth


def test_single_noisy_row_needs_min_rows_one():
    movie = clean_movie(n_frames=4)
    rng = np.random.default_rng(3)
    movie[1, 50] = rng.integers(0, 255, size=movie.shape[2])
    assert not flag_corrupted(frame_scores(movie)).any()
    assert np.flatnonzero(flag_corrupted(frame_scores(movie, min_rows=1))).tolist() == [1]


@pytest.mark.parametrize("radius", [0.45, 0.3])
def test_static_dark_border_is_not_corruption(radius):
    """A circular field of view, black outside: black rows in every frame, and
    (for the small one) most rows partly black; neither is corruption."""
    movie = clean_movie(n_frames=10)
    h, w = movie.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    outside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 > (radius * h) ** 2
    movie[:, outside] = 0
    assert frame_scores(movie)["black_rows"].min() > 0
    assert not flag_corrupted(frame_scores(movie)).any()
    movie[6, 44:50] = 0
    rng = np.random.default_rng(5)
    movie[8, 40:43] = rng.integers(0, 255, size=(3, w))
    assert np.flatnonzero(flag_corrupted(frame_scores(movie))).tolist() == [6, 8]


def test_all_black_frame_flagged():
    movie = clean_movie(n_frames=5)
    movie[3] = 0
    assert np.flatnonzero(flag_corrupted(frame_scores(movie))).tolist() == [3]


def test_dask_scores_match_numpy():
    movie, _ = plant_corruption(clean_movie())
    expected = frame_scores(movie)
    got = frame_scores_dask(da.from_array(movie, chunks=(5, 48, 128)))
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-6)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="frames"):
        frame_scores(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="min_rows"):
        frame_scores(np.zeros((2, 8, 8)), min_rows=0)
    with pytest.raises(ValueError, match="noise_threshold"):
        flag_corrupted(frame_scores(np.zeros((2, 8, 8))), noise_threshold=0.5)
    with pytest.raises(ValueError, match="row_noise"):
        flag_corrupted({"black_rows": np.zeros(3)})


def read_gray_avi(path):
    cv2 = pytest.importorskip("cv2")
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[..., 0] if frame.ndim == 3 else frame)
    cap.release()
    return np.stack(frames)


@pytest.mark.skipif(not (AVI.exists() and LABELS.exists()), reason="mio test recording not available")
def test_real_wireless_recording():
    yaml = pytest.importorskip("yaml")
    labels = yaml.safe_load(LABELS.read_text())["frames"]["check_pattern"]
    truth = {int(i) for kind in labels.values() for i in kind}
    movie = read_gray_avi(AVI)
    assert movie.shape == (60, 200, 200)
    scores = frame_scores(movie)
    flags = flag_corrupted(scores)
    assert set(np.flatnonzero(flags).tolist()) == truth  # precision 1, recall 1
    bad = np.zeros(len(movie), bool)
    bad[sorted(truth)] = True
    # Margins: clean frames well below the default threshold 4, corrupted well above.
    assert scores["row_noise"][~bad].max() < 2.0
    assert scores["row_noise"][bad].min() > 10.0


# ---------------------------------------------------------------- line splitting

SPLIT = [40, 41, 130, 222]


def ls_movie(n_frames=300, shape=(48, 64), seed=0, drift=True, flash=None):
    """Vignetted frames with noise, a slow brightness drift and optional flash frames."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    vignette = 60 * np.exp(-(((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2) * 3)
    level = 40 + (np.linspace(0, 15, n_frames) if drift else np.zeros(n_frames))
    frames = level[:, None, None] + vignette + rng.normal(0, 4, size=(n_frames, h, w))
    for t in flash or []:
        frames[t] += 30  # whole-frame brightness jump: not line splitting
    return frames.astype(np.float32)


def plant_split(frames, idx=SPLIT, amp=12.0, n_cols=20):
    out = frames.copy()
    out[idx, :, :n_cols] += amp
    return out


def flags_of(mask):
    return np.flatnonzero(mask).tolist()


def test_basic_finds_planted():
    frames = plant_split(ls_movie(drift=False))
    assert flags_of(flag_basic(left_edge_means(frames), k=2.0)) == SPLIT


def test_basic_threshold_is_mean_plus_k_std():
    means = np.array([0, 0, 0, 0, 0, 0, 0, 0, 4.0, 2.0])
    for k in (0.5, 1.0, 2.0):
        expected = means > means.mean() + k * means.std()
        np.testing.assert_array_equal(flag_basic(means, k=k), expected)
    assert flags_of(flag_basic(means, k=0.5)) == [8, 9]
    assert flags_of(flag_basic(means, k=2.0)) == [8]


def test_basic_per_chunk_equals_whole():
    frames = plant_split(ls_movie())
    whole = left_edge_means(frames)
    chunked = np.concatenate([left_edge_means(frames[i : i + 64]) for i in range(0, len(frames), 64)])
    np.testing.assert_allclose(chunked, whole)
    np.testing.assert_allclose(whole[0], frames[0, :, :20].mean())


def test_advanced_finds_planted_despite_drift_and_flashes():
    frames = plant_split(ls_movie(flash=[100, 101, 250]))
    scores = advanced_scores(frames)
    assert flags_of(flag_advanced(scores)) == SPLIT
    # The basic detector takes the flashes for line splitting.
    assert {100, 101, 250} <= set(flags_of(flag_basic(left_edge_means(frames))))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_advanced_no_flags_on_clean_movies(seed):
    frames = ls_movie(seed=seed, flash=[77])
    assert not flag_advanced(advanced_scores(frames)).any()


def test_advanced_per_chunk_with_reference():
    frames = plant_split(ls_movie())
    ref = reference_profile(frames[::10])
    assert ref.shape == (frames.shape[1],)
    whole = advanced_scores(frames, reference=ref)
    chunked = np.concatenate([advanced_scores(frames[i : i + 50], reference=ref) for i in range(0, 300, 50)])
    np.testing.assert_allclose(chunked, whole)
    # The reference removes the static (vignetting) part: clean frames score ~0.
    clean = np.setdiff1d(np.arange(300), SPLIT)
    assert abs(np.median(whole[clean])) < 1.0
    assert flags_of(flag_advanced(whole)) == SPLIT


def test_row_profile_definition():
    frames = np.zeros((1, 2, 5), np.float32)
    frames[0, 0] = [4, 4, 1, 1, 1]
    frames[0, 1] = [2, 2, 2, 2, 2]
    np.testing.assert_allclose(row_profiles(frames, n_cols=2), [[3.0, 0.0]])
    np.testing.assert_allclose(advanced_scores(frames, n_cols=2), [1.5])


def test_cut_lowest_catches_weaker_split_frames():
    frames = ls_movie()
    frames[[50, 51], :, :20] += 8.0
    frames[200, :, :20] += 60.0
    scores = advanced_scores(frames)
    assert flags_of(flag_advanced(scores)) == [200]
    assert flags_of(flag_advanced(scores, cut="lowest")) == [50, 51, 200]


def test_constant_scores_flag_nothing():
    assert not flag_advanced(np.zeros(50)).any()
    assert not flag_advanced(np.ones(2)).any()


def test_line_split_bad_input_raises():
    with pytest.raises(ValueError, match="n_cols"):
        left_edge_means(np.zeros((3, 4, 10)), n_cols=10)
    with pytest.raises(ValueError, match="k must"):
        flag_basic(np.zeros(5), k=0)
    with pytest.raises(ValueError, match="reference"):
        advanced_scores(np.zeros((3, 4, 30)), reference=np.zeros(5))
    with pytest.raises(ValueError, match="cut"):
        flag_advanced(np.zeros(5), cut="middle")
    with pytest.raises(ValueError, match="window"):
        flag_advanced(np.zeros(5), window=1)


def test_uint8_scores_equal_float32_scores():
    """8-bit frames take an integer path; it must give the float32 path's scores exactly."""
    movie, _ = plant_corruption(clean_movie(n_frames=12))
    movie[5, :, :20] = 0  # dark border columns: pairs touching them are left out
    movie[6, :, -15:] = 1
    movie[8] //= 30  # a dim frame (mostly "dark")
    fast = frame_scores(movie)
    slow = frame_scores(movie.astype(np.float32))
    assert set(fast) == set(slow)
    for key in fast:
        assert fast[key].dtype == slow[key].dtype
        np.testing.assert_array_equal(fast[key], slow[key], err_msg=key)
