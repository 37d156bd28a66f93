"""Step 4h: score every component and flag likely artifacts for a reviewable quarantine list.

Scores (:func:`score_components`, one value per component)
    size          pixels of the footprint's support (weights > ``support_fraction`` x its max).
    solidity      support area / convex-hull area (skimage regionprops on the whole support,
                  so a footprint in several pieces scores low).
    elongation    major / minor axis length of the support's second moments, the minor axis
                  floored at 1 px (a 1-px-wide line would otherwise give infinity).
    skewness      of the trace (biased moment estimator); calcium activity is a baseline with
                  rare positive transients, hence positively skewed; NaN for a flat trace.
    noise         robust sd of the trace's white-noise part: the MAD of its first differences
                  x 1.4826 / sqrt(2) (slow signal barely changes from frame to frame, so the
                  differences are dominated by noise).
    snr           (max - median) / noise: the largest transient in noise units.
    drift         variance of the slow trend / variance of the trace.  The trend is a running
                  median over ``drift_window`` frames (capped at a quarter of the recording so
                  short recordings still have one), evaluated every half window and linearly
                  interpolated: bleaching, glow and slow vessel fluctuations follow the trend,
                  sparse calcium transients do not move a median.
    touches_edge  the support reaches the frame border.
    mean_intensity, contrast
                  with ``movie_mean``: footprint-weighted mean of the mean image, and the mean
                  over the support minus the mean over a 3-px ring around it (NaN without it).

Flags (:func:`quarantine`)
    A component fails up to six checks: size outside [min_size, max_size], solidity below
    min_solidity, elongation above max_elongation, skewness below min_skewness, snr below
    min_snr, drift above max_drift (plus the edge check when ``check_edge``).  A NaN score
    fails its check.  It is quarantined when at least ``min_failed`` checks fail (default 2):
    one odd measurement is not enough, a long thin footprint with a drifting trace is.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from skimage.measure import regionprops

__all__ = ["score_components", "quarantine", "SCORE_COLUMNS"]

SCORE_COLUMNS = ("size", "solidity", "elongation", "skewness", "noise", "snr", "drift",
                 "touches_edge", "mean_intensity", "contrast")
_MAD_TO_SD = 1.4826
_RING_PX = 3
_ROW_BATCH = 256  # traces processed together: bounds the float64 temporaries


def _rows(A, shape):
    """Iterate (ys, xs, vals) of each footprint's non-zero pixels."""
    if sp.issparse(A):
        M = sp.csr_array(A)
        w = shape[1]
        for i in range(M.shape[0]):
            idx = M.indices[M.indptr[i]:M.indptr[i + 1]]
            yield idx // w, idx % w, M.data[M.indptr[i]:M.indptr[i + 1]]
    else:
        for a in A:
            ys, xs = np.nonzero(a)
            yield ys, xs, a[ys, xs]


def _shape_scores(ys, xs, vals, shape, support_fraction, movie_mean):
    """size, solidity, elongation, touches_edge, mean_intensity, contrast of one footprint."""
    nan = float("nan")
    ok = np.isfinite(vals)
    top = vals[ok].max() if ok.any() else 0.0
    sel = ok & (vals > support_fraction * top) & (vals > 0)
    ys, xs, vals = ys[sel], xs[sel], vals[sel]
    if ys.size == 0:
        return 0, nan, nan, False, nan, nan
    y0, x0 = ys.min(), xs.min()
    mask = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), np.uint8)
    mask[ys - y0, xs - x0] = 1
    p = regionprops(mask)[0]
    elong = p.axis_major_length / max(p.axis_minor_length, 1.0)
    edge = bool(ys.min() == 0 or xs.min() == 0 or ys.max() == shape[0] - 1 or xs.max() == shape[1] - 1)
    mean_int, contrast = nan, nan
    if movie_mean is not None:
        mean_int = float(np.sum(vals * movie_mean[ys, xs]) / np.sum(vals))
        contrast = _contrast(movie_mean, ys, xs)
    return int(ys.size), float(p.solidity), float(elong), edge, mean_int, contrast


def _contrast(img, ys, xs):
    """Mean of img over the support minus its mean over a ring of _RING_PX px around it."""
    h, w = img.shape
    y0, y1 = max(ys.min() - _RING_PX, 0), min(ys.max() + _RING_PX + 1, h)
    x0, x1 = max(xs.min() - _RING_PX, 0), min(xs.max() + _RING_PX + 1, w)
    inside = np.zeros((y1 - y0, x1 - x0), bool)
    inside[ys - y0, xs - x0] = True
    ring = ndimage.binary_dilation(inside, iterations=_RING_PX) & ~inside
    crop = img[y0:y1, x0:x1]
    if not ring.any():
        return float("nan")
    return float(crop[inside].mean() - crop[ring].mean())


def _trend(C: np.ndarray, window: int) -> np.ndarray:
    """Running median over ``window`` frames, sampled every window//2 and interpolated."""
    T = C.shape[1]
    hop = max(1, window // 2)
    centres = np.arange(hop / 2.0, T, hop)
    meds = np.empty((C.shape[0], centres.size))
    for k, c in enumerate(centres):
        lo, hi = max(int(round(c - window / 2)), 0), min(int(round(c + window / 2)), T)
        meds[:, k] = np.median(C[:, lo:max(hi, lo + 1)], axis=1)
    if centres.size == 1:
        return np.repeat(meds, T, axis=1)
    t = np.arange(T, dtype=np.float64)
    k = np.clip(np.searchsorted(centres, t) - 1, 0, centres.size - 2)
    frac = np.clip((t - centres[k]) / (centres[k + 1] - centres[k]), 0.0, 1.0)
    return meds[:, k] * (1 - frac) + meds[:, k + 1] * frac


def skewness(C: np.ndarray) -> np.ndarray:
    """(n,) biased sample skewness of each row of (n, T) traces; NaN for a flat row."""
    C = np.asarray(C, np.float64)
    dev = C - C.mean(axis=1, keepdims=True)
    m2 = np.mean(dev**2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = np.mean(dev**3, axis=1) / m2**1.5
    skew[m2 == 0] = np.nan
    return skew


def _trace_scores(C: np.ndarray, drift_window: int) -> dict[str, np.ndarray]:
    """skewness, noise, snr, drift for a (n, T) batch of traces (float64 inside)."""
    C = C.astype(np.float64)
    T = C.shape[1]
    dev = C - C.mean(axis=1, keepdims=True)
    m2 = np.mean(dev**2, axis=1)
    skew = skewness(C)
    with np.errstate(invalid="ignore", divide="ignore"):
        if T > 1:
            d = np.diff(C, axis=1)
            noise = _MAD_TO_SD * np.median(np.abs(d - np.median(d, axis=1, keepdims=True)), axis=1) / np.sqrt(2)
        else:
            noise = np.full(C.shape[0], np.nan)
        snr = (C.max(axis=1) - np.median(C, axis=1)) / noise
        window = int(max(3, min(drift_window, T // 4))) if T >= 12 else T
        trend = _trend(C, window)
        drift = np.var(trend, axis=1) / m2
    drift[m2 == 0] = np.nan
    return {"skewness": skew, "noise": noise, "snr": snr, "drift": drift}


def score_components(A, C: np.ndarray, movie_mean: np.ndarray | None = None, *,
                     shape: tuple[int, int] | None = None, drift_window: int = 300,
                     support_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """Per-component scores (module docstring) as a dict of (n,) arrays, keys SCORE_COLUMNS.

    ``A``: (n, height, width) dense, or scipy sparse (n, pixels) with ``shape=(height,
    width)``; ``C``: (n, frames); ``movie_mean``: (height, width) mean image or None.
    """
    if sp.issparse(A):
        if shape is None:
            raise ValueError("score_components: sparse A needs shape=(height, width)")
        n = A.shape[0]
    else:
        A = np.asarray(A)
        if A.ndim != 3:
            raise ValueError(f"score_components: A must be (n, height, width), got shape {A.shape}")
        n, shape = A.shape[0], A.shape[1:]
    C = np.asarray(C)
    if C.ndim != 2 or C.shape[0] != n:
        raise ValueError(f"score_components: C must be (n, frames) with n={n}, got {C.shape}")
    if int(drift_window) != drift_window or drift_window < 3:
        raise ValueError(f"score_components: drift_window must be an integer >= 3 frames, got {drift_window!r}")
    if not 0 <= support_fraction < 1:
        raise ValueError(f"score_components: support_fraction must be in [0, 1), got {support_fraction!r}")
    if movie_mean is not None:
        movie_mean = np.asarray(movie_mean, np.float64)
        if movie_mean.shape != tuple(shape):
            raise ValueError(f"score_components: movie_mean must be {tuple(shape)}, got {movie_mean.shape}")
    spatial = [_shape_scores(ys, xs, v, shape, support_fraction, movie_mean) for ys, xs, v in _rows(A, shape)]
    cols = list(zip(*spatial)) if spatial else [()] * 6
    table = {"size": np.array(cols[0], np.int64), "solidity": np.array(cols[1], np.float64),
             "elongation": np.array(cols[2], np.float64), "touches_edge": np.array(cols[3], bool),
             "mean_intensity": np.array(cols[4], np.float64), "contrast": np.array(cols[5], np.float64)}
    parts = [_trace_scores(C[s:s + _ROW_BATCH], int(drift_window)) for s in range(0, n, _ROW_BATCH)]
    for key in ("skewness", "noise", "snr", "drift"):
        table[key] = np.concatenate([p[key] for p in parts]) if parts else np.zeros(0)
    return {k: table[k] for k in SCORE_COLUMNS}


def quarantine(table: dict[str, np.ndarray], *, min_size: float = 0, max_size: float = np.inf,
               min_solidity: float = 0.5, max_elongation: float = 3.0, min_skewness: float = 0.2,
               min_snr: float = 2.0, max_drift: float = 0.5, min_failed: int = 2,
               check_edge: bool = False) -> tuple[np.ndarray, list[str]]:
    """Flag components failing at least ``min_failed`` checks (module docstring).

    Returns ``(flags, reasons)``: flags (n,) bool (True = quarantine); reasons[i] lists the
    checks component i failed, joined by "," ("" if none), for flagged and kept ones alike.
    """
    if int(min_failed) != min_failed or min_failed < 1:
        raise ValueError(f"quarantine: min_failed must be a positive integer, got {min_failed!r}")
    if not min_size <= max_size:
        raise ValueError(f"quarantine: min_size ({min_size}) must not exceed max_size ({max_size})")
    missing = [k for k in ("size", "solidity", "elongation", "skewness", "snr", "drift", "touches_edge")
               if k not in table]
    if missing:
        raise ValueError(f"quarantine: table lacks {missing}; build it with score_components")
    with np.errstate(invalid="ignore"):
        size = np.asarray(table["size"], np.float64)
        checks = {
            "size": ~((size >= min_size) & (size <= max_size)),
            "solidity": ~(np.asarray(table["solidity"]) >= min_solidity),
            "elongation": ~(np.asarray(table["elongation"]) <= max_elongation),
            "skewness": ~(np.asarray(table["skewness"]) >= min_skewness),
            "snr": ~(np.asarray(table["snr"]) >= min_snr),
            "drift": ~(np.asarray(table["drift"]) <= max_drift),
        }
    if check_edge:
        checks["edge"] = np.asarray(table["touches_edge"], bool)
    n = size.size
    failed = np.zeros(n, np.int64)
    for f in checks.values():
        failed += f
    reasons = [",".join(k for k, f in checks.items() if f[i]) for i in range(n)]
    return failed >= min_failed, reasons
