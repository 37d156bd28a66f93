"""Detection of "line-splitting" frames.

Some miniscope sensors occasionally read a frame out with part of each line
wrapped around, which puts extra signal into the left-most columns of that frame.
Two detectors, both out-of-core: a per-chunk function reduces every frame to one
number, and a movie-level function flags frames from those (T,) numbers.

``basic``
    Mean of the ``n_cols`` left-most columns per frame (:func:`left_edge_means`),
    flagged above ``mean + k * std`` over all frames (:func:`flag_basic`). Simple,
    but a global brightness change (a flash, bleaching) moves it too, and one
    strong outlier inflates the std.
``advanced``
    Per frame and row, the left-columns mean minus the rest-of-row mean, which
    cancels the row's own brightness (and so additive global changes); an
    optional reference profile (the movie's typical per-row value, from
    :func:`reference_profile` on a frame sample) removes static vignetting; the
    median over rows ignores a cell firing near the left edge
    (:func:`advanced_scores`). :func:`flag_advanced` detrends these scores over
    time with a running median, then cuts at the largest (optionally: the lowest
    significant) gap of the sorted residuals above their median, but only when
    the largest gap is large relative to the residuals' robust spread; otherwise
    nothing is flagged.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "left_edge_means",
    "flag_basic",
    "row_profiles",
    "reference_profile",
    "advanced_scores",
    "flag_advanced",
]


def _check_frames(frames: np.ndarray, n_cols: int) -> np.ndarray:
    """Return ``frames`` as (T, H, W); check that ``n_cols`` leaves a rest of row."""
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"line_split: frames must have shape (T, H, W) or (H, W), got {arr.shape}")
    if not 1 <= int(n_cols) < arr.shape[2]:
        raise ValueError(f"line_split: n_cols must be in [1, W-1] = [1, {arr.shape[2] - 1}], got {n_cols}")
    return arr


def _check_scores(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D float64 array."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"line_split: {name} must be 1-D (T,), got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------- basic


def left_edge_means(frames: np.ndarray, n_cols: int = 20) -> np.ndarray:
    """Mean of the ``n_cols`` left-most columns of each frame, shape (T,) float64.

    Runs per chunk; concatenate the results over time for :func:`flag_basic`.
    """
    arr = _check_frames(frames, n_cols)
    return arr[:, :, : int(n_cols)].mean(axis=(1, 2), dtype=np.float64)


def flag_basic(means: np.ndarray, k: float = 2.0) -> np.ndarray:
    """Flag frames whose left-edge mean exceeds ``mean + k * std`` over all frames."""
    values = _check_scores(means, "means")
    if not k > 0:
        raise ValueError(f"line_split: k must be > 0, got {k}")
    if values.size == 0:
        return np.zeros(0, dtype=bool)
    return values > values.mean() + k * values.std()


# ------------------------------------------------------------------ advanced


def row_profiles(frames: np.ndarray, n_cols: int = 20) -> np.ndarray:
    """Per frame and row: left ``n_cols`` mean minus rest-of-row mean, (T, H) float64."""
    arr = _check_frames(frames, n_cols)
    n = int(n_cols)
    left = arr[:, :, :n].mean(axis=2, dtype=np.float64)
    rest = arr[:, :, n:].mean(axis=2, dtype=np.float64)
    return left - rest


def reference_profile(frames: np.ndarray, n_cols: int = 20) -> np.ndarray:
    """The movie's typical row profile (H,): per-row median over the given frames.

    Pass a sample of frames (e.g. a few hundred evenly spaced ones) so the
    movie-level reduction stays small; the median ignores the split frames.
    """
    return np.median(row_profiles(frames, n_cols), axis=0)


def advanced_scores(
    frames: np.ndarray,
    n_cols: int = 20,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Per-frame line-splitting score (T,), float64; runs per chunk.

    The score is the median over rows of (left-columns mean - rest-of-row mean),
    minus ``reference`` (the typical value of each row, from
    :func:`reference_profile`) when given.
    """
    profiles = row_profiles(frames, n_cols)
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.shape != (profiles.shape[1],):
            raise ValueError(
                f"line_split: reference must have shape (H,) = ({profiles.shape[1]},), got {ref.shape}"
            )
        profiles = profiles - ref
    return np.median(profiles, axis=1)


def _detrend(scores: np.ndarray, window: int) -> np.ndarray:
    """Scores minus their running median over ``window`` frames (slow drifts out)."""
    size = min(int(window), scores.size)
    size = size if size % 2 == 1 else size - 1  # odd: centred window
    trend = ndimage.median_filter(scores, size=max(size, 1), mode="nearest")
    return scores - trend


def _robust_sigma(values: np.ndarray) -> float:
    """Normal-consistent median absolute deviation."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def flag_advanced(
    scores: np.ndarray,
    *,
    window: int = 201,
    min_gap: float = 6.0,
    cut: str = "largest",
) -> np.ndarray:
    """Flag line-splitting frames from :func:`advanced_scores` of the whole movie.

    Parameters
    ----------
    scores : np.ndarray, shape (T,)
        Per-frame scores of the movie, in time order.
    window : int
        Running-median window in frames for the detrending (>= 3). Runs of split
        frames longer than half of it become part of the trend and are missed.
    min_gap : float
        The largest gap of the sorted residuals above their median must be at
        least ``min_gap`` robust standard deviations (1.4826 * MAD) for any frame
        to be flagged.
    cut : {"largest", "lowest"}
        Where to threshold once the largest gap is significant: at the largest
        gap, or at the lowest significant gap (also flags weaker split frames
        when their strengths vary a lot, e.g. residuals 30, 35 and 100 sigma).

    Returns
    -------
    np.ndarray of bool, shape (T,)
    """
    values = _check_scores(scores, "scores")
    if int(window) < 3:
        raise ValueError(f"line_split: window must be >= 3, got {window}")
    if cut not in ("largest", "lowest"):
        raise ValueError(f"line_split: cut must be 'largest' or 'lowest', got {cut!r}")
    if not min_gap > 0:
        raise ValueError(f"line_split: min_gap must be > 0, got {min_gap}")
    flags = np.zeros(values.size, dtype=bool)
    if values.size < 3:
        return flags
    resid = _detrend(values, window)
    ordered = np.sort(resid)
    gaps = np.diff(ordered)
    # Only gaps whose upper side lies above the median: split frames are a minority.
    upper = ordered[1:] > np.median(resid)
    if not upper.any():
        return flags
    gaps = np.where(upper, gaps, -np.inf)
    i = int(np.argmax(gaps))
    # Tiny floor: a perfectly constant movie has MAD 0 and no gap either.
    sigma = max(_robust_sigma(resid), 1e-12 * max(1.0, float(np.abs(ordered).max())))
    if gaps[i] < min_gap * sigma:
        return flags
    if cut == "lowest":
        i = int(np.flatnonzero(gaps >= min_gap * sigma)[0])
    threshold = 0.5 * (ordered[i] + ordered[i + 1])
    return resid > threshold
