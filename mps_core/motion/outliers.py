"""Erroneous-frame detection from motion shifts (step 2d).

A frame whose estimated shift is far from the typical shift is usually a corrupted frame
(dropped lines, a flash, a frame from the wrong stream) or a registration failure; either
way it should be flagged so it can be dropped or inspected.

Rule, per axis (dy and dx separately), symmetric on both sides of the median:

    flagged  if  |shift - median(shift)| > threshold_factor * sigma

with the robust spread ``sigma = 1.4826 * MAD`` (the MAD scaled to equal the standard
deviation for Gaussian data), so the outliers themselves do not inflate it. When more than
half of the frames share one value the MAD is 0; then ``sigma`` falls back to the ordinary
standard deviation, and if that is 0 too (all shifts equal) nothing is flagged by this rule.
Optionally a frame is also flagged when ``|shift|`` exceeds an absolute per-axis limit.
Mesh shifts ``(T, my, mx, 2)`` are reduced to the per-frame mean over patches first.
"""

from __future__ import annotations

import numpy as np

__all__ = ["flag_erroneous", "robust_sigma"]

MAD_TO_SIGMA = 1.4826


def robust_sigma(values: np.ndarray) -> np.ndarray:
    """Per-column robust spread: 1.4826 * MAD, or the standard deviation where MAD is 0."""
    v = np.asarray(values, dtype=np.float64)
    med = np.median(v, axis=0)
    mad = np.median(np.abs(v - med), axis=0) * MAD_TO_SIGMA
    return np.where(mad > 0, mad, v.std(axis=0))


def _per_frame(shifts: np.ndarray) -> np.ndarray:
    s = np.asarray(shifts, dtype=np.float64)
    if s.ndim == 4 and s.shape[-1] == 2:
        return s.mean(axis=(1, 2))
    if s.ndim == 2 and s.shape[1] == 2:
        return s
    raise ValueError(f"outliers: shifts must be (frame, 2) or (frame, my, mx, 2), got shape {s.shape}")


def flag_erroneous(
    shifts: np.ndarray,
    threshold_factor: float = 3.0,
    abs_max: tuple[float, float] | None = None,
) -> np.ndarray:
    """Boolean (T,) mask of frames whose shift is an outlier on either axis.

    shifts: (T, 2) or (T, my, mx, 2) (dy, dx); threshold_factor: > 0, in robust sigmas;
    abs_max: optional (max_dy, max_dx) >= 0, flags frames with |dy| > max_dy or |dx| > max_dx.
    Non-finite shifts are always flagged.
    """
    if not np.isfinite(threshold_factor) or threshold_factor <= 0:
        raise ValueError(f"outliers: threshold_factor must be a finite number > 0, got {threshold_factor}")
    s = _per_frame(shifts)
    finite = np.all(np.isfinite(s), axis=1)
    flagged = ~finite
    if finite.sum() == 0:
        return flagged
    good = s[finite]
    med = np.median(good, axis=0)
    sigma = robust_sigma(good)
    dev = np.abs(np.where(finite[:, None], s, med) - med)
    with np.errstate(invalid="ignore"):
        flagged |= np.any((sigma > 0) & (dev > threshold_factor * sigma), axis=1)
    if abs_max is not None:
        lim = np.asarray(abs_max, dtype=np.float64)
        if lim.shape != (2,) or np.any(~np.isfinite(lim)) or np.any(lim < 0):
            raise ValueError(f"outliers: abs_max must be None or (max_dy, max_dx) with values >= 0, got {abs_max}")
        flagged |= np.any(np.abs(np.where(finite[:, None], s, 0.0)) > lim, axis=1)
    return flagged
