"""Steps 6a / 8a: YrA, each unit's trace read from the movie through its own footprint.

For unit i with footprint a_i and trace c_i (movie Y, background b f, all units A C)::

    YrA_i = a_i^T (Y - b f - sum_{j != i} a_j c_j) / (a_i^T a_i)
          = (A^T Y - (A^T b) f - (A^T A) C)_i / ||a_i||^2 + c_i

i.e. the residual of the current model projected on the unit's footprint, plus the unit's own
trace: what the temporal update (6d / 8b) denoises and deconvolves.

Only ``A^T Y`` touches the movie. It is accumulated in ONE streamed pass: every frame chunk
(t, H, W) gives its (n, t) block ``A^T chunk`` in its own dask task (per unit, the frames'
crop of its bounding box times its footprint), so memory is
O(n T) for the result plus O(chunk H W) per running task; the movie is never held whole. The
rest uses the small sparse (n, n) Gram matrix ``A^T A`` (most pairs of units do not overlap).
Everything is float32 except the Gram matrix and the footprint energies (float64 then cast).
"""

from __future__ import annotations

from typing import Any, Callable

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp

from .sparse_footprints import as_csr

__all__ = ["compute_yra", "frame_chunked", "footprints_csr", "unit_crops"]

Compute = Callable[..., tuple]


def frame_chunked(Y: Any, chunk_frames: int | None, where: str) -> da.Array:
    """``Y`` as a float32 (frame, height, width) dask array chunked along frames only.

    Accepts a dask array, a numpy array or an xarray DataArray (its ``.data``). Whole frames per
    chunk is what makes every task self-contained (one frame range, all pixels).
    """
    data = Y.data if hasattr(Y, "dims") else Y  # xarray.DataArray -> its (dask) array
    if isinstance(data, np.ndarray):
        data = da.from_array(data, chunks=(chunk_frames or min(len(data), 500), -1, -1))
    if not isinstance(data, da.Array) or data.ndim != 3:
        raise ValueError(f"{where}: Y must be a (frame, height, width) array, got "
                         f"{type(Y).__name__} with shape {getattr(Y, 'shape', None)}")
    if chunk_frames is not None:
        if int(chunk_frames) != chunk_frames or chunk_frames < 1:
            raise ValueError(f"{where}: chunk_frames must be a positive integer or None, got "
                             f"{chunk_frames!r}")
        data = data.rechunk({0: int(chunk_frames), 1: -1, 2: -1})
    elif len(data.chunks[1]) > 1 or len(data.chunks[2]) > 1:
        data = data.rechunk({1: -1, 2: -1})
    if data.dtype != np.float32:
        data = data.astype(np.float32)
    return data


def footprints_csr(A: np.ndarray | sp.spmatrix, shape: tuple[int, int],
                   where: str) -> sp.csr_matrix:
    """(n, H*W) float32 CSR of dense (n, H, W) footprints, checking the frame shape.

    A scipy sparse (n, H*W) matrix is accepted as well (no dense copy of all footprints is
    then ever made, which matters for many units on large frames).
    """
    return as_csr(A, shape, where)[0]


def compute_yra(Y: Any, A: np.ndarray | sp.spmatrix, C: np.ndarray, *,
                b: np.ndarray | None = None, f: np.ndarray | None = None,
                compute: Compute | None = None, chunk_frames: int | None = None,
                A_model: np.ndarray | sp.spmatrix | None = None) -> np.ndarray:
    """(n, T) float32 YrA of every unit (see the module docstring), one pass over ``Y``.

    ``Y`` (T, H, W) movie (dask, streamed by frame chunks; ``chunk_frames`` rechunks it);
    ``A`` (n, H, W) footprints (or a scipy sparse (n, H*W) matrix), none empty; ``C`` (n, T)
    traces; ``b`` (H, W) and ``f`` (T,) the optional rank-1 background, both or neither.
    ``compute(*dask_objs) -> tuple`` runs the pass (default ``dask.compute``), e.g. with
    progress and cancel. ``A_model`` (same units and layout as ``A``), optional: the footprints
    that describe the movie, when they differ from the weights ``A`` it is read through; the
    model's overlaps then give the neighbours' light to remove (see `_combine`).
    """
    compute = compute or dask.compute
    Yd = frame_chunked(Y, chunk_frames, "compute_yra")
    T, H, W = Yd.shape
    Acsr = footprints_csr(A, (H, W), "compute_yra")
    n = Acsr.shape[0]
    C = _check_traces(C, n, T)
    bf = _check_background(b, f, (H, W), T)
    model = Acsr if A_model is None else footprints_csr(A_model, (H, W), "compute_yra")
    if model.shape != Acsr.shape:
        raise ValueError(f"compute_yra: A_model must hold the same {n} units as A, got "
                         f"{model.shape[0]}")
    energy = np.asarray(Acsr.multiply(model).sum(axis=1), np.float64).ravel()
    empty = np.flatnonzero(energy <= 0)
    if empty.size:
        raise ValueError(f"compute_yra: units {empty[:10].tolist()} have empty (all-zero) footprints; "
                         f"drop them first (step 5b / 6e)")
    AY = _project_movie(Yd, Acsr, compute)
    return _combine(AY, Acsr, C, bf, energy, model)


def _check_traces(C: np.ndarray, n: int, T: int) -> np.ndarray:
    C = np.asarray(C, np.float32)
    if C.shape != (n, T):
        raise ValueError(f"compute_yra: C must have shape (unit, frame) = {(n, T)}, got {C.shape}")
    if not np.all(np.isfinite(C)):
        raise ValueError("compute_yra: C holds NaN or Inf values")
    return C


def _check_background(b, f, shape, T) -> tuple[np.ndarray, np.ndarray] | None:
    if b is None and f is None:
        return None
    if b is None or f is None:
        raise ValueError("compute_yra: give both b (height, width) and f (frame,) or neither")
    b = np.asarray(b, np.float32)
    f = np.asarray(f, np.float32).ravel()
    if b.shape != tuple(shape) or f.shape != (T,):
        raise ValueError(f"compute_yra: b must have shape {tuple(shape)} and f ({T},), got {b.shape} "
                         f"and {f.shape}")
    return b, f


def _project_movie(Yd: da.Array, Acsr: sp.csr_matrix, compute: Compute) -> np.ndarray:
    """A^T Y as (n, T) float32: one task per frame chunk, footprints shared by all tasks."""
    W = Yd.shape[2]
    crops = dask.delayed(unit_crops(Acsr, W), traverse=False)  # one graph node, not one per task
    parts = [dask.delayed(_chunk_projection)(blk, crops) for blk in Yd.to_delayed().ravel()]
    blocks = compute(*parts)
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((Acsr.shape[0], 0), np.float32)


def unit_crops(Acsr: sp.csr_matrix, width: int) -> list[tuple[int, int, int, int, np.ndarray]]:
    """Per unit its bounding box (y0, y1, x0, x1) and the flattened footprint values inside."""
    out = []
    for u in range(Acsr.shape[0]):
        idx = Acsr.indices[Acsr.indptr[u]:Acsr.indptr[u + 1]]
        if idx.size == 0:
            out.append((0, 0, 0, 0, np.zeros(0, np.float32)))
            continue
        ys, xs = np.divmod(idx, width)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        crop = np.zeros((y1 - y0, x1 - x0), np.float32)
        crop[ys - y0, xs - x0] = Acsr.data[Acsr.indptr[u]:Acsr.indptr[u + 1]]
        out.append((y0, y1, x0, x1, crop.ravel()))
    return out


def _chunk_projection(block: np.ndarray, crops) -> np.ndarray:
    """(n, t): each unit's footprint dotted with its bounding-box crop of every frame.

    Cropping copies contiguous rows, far cheaper than a pixel gather or a transpose of the
    whole chunk; the crops' pixels are then one small GEMV per unit."""
    block = np.asarray(block, np.float32)
    t = block.shape[0]
    out = np.zeros((len(crops), t), np.float32)
    for u, (y0, y1, x0, x1, vals) in enumerate(crops):
        if vals.size:
            out[u] = block[:, y0:y1, x0:x1].reshape(t, -1) @ vals
    return out


def _combine(AY: np.ndarray, Acsr: sp.csr_matrix, C: np.ndarray,
             bf: tuple[np.ndarray, np.ndarray] | None, energy: np.ndarray,
             model: sp.csr_matrix | None = None) -> np.ndarray:
    """(A^T Y - (A^T b) f - (A^T M) C) / diag(A^T M) + C, in float32, in place on AY.

    M, the model's footprints, is A itself unless given: with Y = M C + b f the result is C
    exactly, whichever weights A the movie is read through.
    """
    model = Acsr if model is None else model
    gram = (Acsr @ model.T).tocsr().astype(np.float32)  # sparse: only overlapping pairs
    AY -= gram @ C
    if bf is not None:
        b, f = bf
        Ab = np.asarray(Acsr @ b.ravel().astype(np.float64), np.float32)
        AY -= np.outer(Ab, f)
    AY *= (1.0 / energy).astype(np.float32)[:, None]
    AY += C
    return AY
