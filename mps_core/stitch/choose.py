"""Score the copies of a frame and choose the best one.

Each candidate copy gets, in order of priority:

``buffers``
    Distinct radio buffers of the frame the receiver got (from the metadata CSV): more is
    better. A missing buffer is a band of the image that was never received.
``black_rows`` + ``noisy_rows`` (the *corrupted rows*)
    Step 2a's frame-QC scores (:func:`mps_core.preprocess.frame_qc.frame_scores`): rows of
    black padding, and rows of garbled along-row noise. Fewer is better. They are added, so
    three padded rows beat thirty noisy ones and vice versa.
``edge_energy``
    Mean absolute Sobel gradient of the frame: lower is better. Corruption the row scores
    miss (a few shifted or garbled pixels) adds edges; two clean copies score the same.

The first component that differs between the best copy and the runner-up is the
``reason`` of the choice; ``identical`` marks copies whose pixels are equal, ``tie`` copies
that score the same but differ, and ``only_copy`` a frame one stream alone has. Remaining
ties go to the stream listed first.
"""

from __future__ import annotations

import cv2
import numpy as np

from mps_core.preprocess.frame_qc import frame_scores

__all__ = ["SCORES", "REASONS", "edge_energy", "frame_quality", "rank", "reason"]

#: Per-candidate scores, in the order they are compared.
SCORES = ("buffers", "black_rows", "noisy_rows", "edge_energy")
REASONS = ("only_copy", "buffers", "corrupted_rows", "edge_energy", "identical", "tie")


def edge_energy(frames: np.ndarray) -> np.ndarray:
    """Mean L1 Sobel gradient (``|gx| + |gy|``) of each frame, (T,) float64.

    For 8- and 16-bit frames every gradient is an integer and the sums stay far below 2**53,
    so the result is exact: two identical copies score exactly the same wherever they sit in
    memory (float sums depend on SIMD alignment, which would break ties arbitrarily). Float
    frames are rounded to 12 significant digits for the same reason.
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    out = np.empty(frames.shape[0], np.float64)
    for t, frame in enumerate(frames):
        if frame.dtype == np.uint8:
            f, depth = frame, cv2.CV_16S  # |gradient| <= 1020: exact in int16
        elif frame.dtype in (np.uint16, np.int16, np.int8):
            f, depth = frame.astype(np.float32), cv2.CV_32F  # |gradient| < 2**20: exact
        else:
            f, depth = frame.astype(np.float64), cv2.CV_64F
        total = sum(cv2.norm(cv2.Sobel(f, depth, dx, dy, ksize=3), cv2.NORM_L1)
                    for dx, dy in ((1, 0), (0, 1)))
        value = total / frame.size
        out[t] = value if depth != cv2.CV_64F else float(f"{value:.12g}")
    return out


def frame_quality(frames: np.ndarray) -> dict[str, np.ndarray]:
    """``black_rows``, ``noisy_rows`` (frame QC of step 2a) and ``edge_energy`` per frame."""
    qc = frame_scores(frames)
    return {"black_rows": qc["black_rows"].astype(np.int64),
            "noisy_rows": qc["noisy_rows"].astype(np.int64),
            "edge_energy": edge_energy(frames)}


def _keys(buffers: np.ndarray, bad_rows: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Sort order of candidates, best first (stable: earlier candidates win ties)."""
    return np.lexsort((edge, bad_rows, -np.asarray(buffers)))


def rank(buffers: np.ndarray, black_rows: np.ndarray, noisy_rows: np.ndarray,
         edge: np.ndarray) -> np.ndarray:
    """Indices of the candidates of one frame, best first (see the module docstring)."""
    buffers, edge = np.asarray(buffers), np.asarray(edge, np.float64)
    bad = np.asarray(black_rows, np.int64) + np.asarray(noisy_rows, np.int64)
    if not buffers.size == bad.size == edge.size:
        raise ValueError("stitch: score arrays of one frame must have equal lengths")
    return _keys(buffers, bad, edge)


def reason(best: int, runner_up: int | None, buffers: np.ndarray, black_rows: np.ndarray,
           noisy_rows: np.ndarray, edge: np.ndarray, same_pixels: bool = False) -> str:
    """Which score decided between the best candidate and the runner-up."""
    if runner_up is None:
        return "only_copy"
    if buffers[best] != buffers[runner_up]:
        return "buffers"
    if black_rows[best] + noisy_rows[best] != black_rows[runner_up] + noisy_rows[runner_up]:
        return "corrupted_rows"
    if same_pixels:
        return "identical"
    if edge[best] != edge[runner_up]:
        return "edge_energy"
    return "tie"
