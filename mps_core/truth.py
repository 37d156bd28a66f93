"""Scoring a result against a synthetic recording's truth (for the demo and the tests).

Footprints are matched one to one by the IoU of their supports (Hungarian assignment); a
match needs IoU >= 0.5. Registration aligns frames to a template whose position is arbitrary,
so the true footprints are first moved by the constant offset between the estimated and the
true shifts (as the benchmark's scorer does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment


@dataclass
class Score:
    n_true: int
    n_est: int
    n_matched: int
    recall: float
    precision: float
    f1: float
    mean_iou: float
    trace_r: float

    def line(self) -> str:
        return (f"{self.n_matched}/{self.n_true} planted cells found, {self.n_est} units "
                f"(recall {self.recall:.2f}, precision {self.precision:.2f}, F1 {self.f1:.2f}), "
                f"footprint IoU {self.mean_iou:.2f}, trace r {self.trace_r:.3f}")


def support(A: np.ndarray, rel: float = 0.2) -> np.ndarray:
    """Boolean supports: pixels above `rel` x each footprint's maximum."""
    A = np.asarray(A, np.float32)
    peak = A.reshape(len(A), -1).max(axis=1).reshape(-1, 1, 1)
    return A > rel * np.maximum(peak, 1e-12)


def iou_matrix(est: np.ndarray, true: np.ndarray) -> np.ndarray:
    e = est.reshape(len(est), -1).astype(np.float32)
    t = true.reshape(len(true), -1).astype(np.float32)
    inter = e @ t.T
    union = e.sum(1)[:, None] + t.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1)


def score(A: np.ndarray, C: np.ndarray, true_A: np.ndarray, true_C: np.ndarray,
          offset: tuple[float, float] = (0.0, 0.0)) -> Score:
    """Match estimated units (A (n,H,W), C (n,T)) to the truth; C columns aligned with truth's."""
    moved = np.stack([ndimage.shift(a, offset, order=1) for a in np.asarray(true_A, np.float32)])
    n_true, n_est = len(moved), len(A)
    if n_est == 0:
        return Score(n_true, 0, 0, 0.0, 0.0, 0.0, 0.0, float("nan"))
    iou = iou_matrix(support(A), support(moved))
    rows, cols = linear_sum_assignment(-iou)
    ok = iou[rows, cols] >= 0.5
    rows, cols = rows[ok], cols[ok]
    m = len(rows)
    recall, precision = m / max(n_true, 1), m / max(n_est, 1)
    f1 = 2 * recall * precision / max(recall + precision, 1e-12)
    rs = [np.corrcoef(C[i], true_C[j])[0, 1] for i, j in zip(rows, cols)
          if np.std(C[i]) > 0 and np.std(true_C[j]) > 0]
    return Score(n_true, n_est, m, recall, precision, f1,
                 float(iou[rows, cols].mean()) if m else 0.0,
                 float(np.median(rs)) if rs else float("nan"))


def motion_offset(est_shifts: np.ndarray, true_shifts: np.ndarray) -> tuple[float, float]:
    """Where the registration template sits relative to the truth's scene (dy, dx)."""
    d = np.asarray(est_shifts, float) - np.asarray(true_shifts, float)
    return tuple(float(v) for v in d.mean(axis=0))
