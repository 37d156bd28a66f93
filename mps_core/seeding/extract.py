"""Steps 4d-4f: region traces from the movie, first A and C, and removal of invalid components.

Trace extraction (4d, :func:`extract_traces`)
    A footprint ``a`` (non-negative weights over pixels) gives the weighted mean trace

        y_a(t) = sum_p a(p) Y(p, t) / sum_p a(p)

    i.e. the footprint-weighted mean fluorescence (grey levels, independent of the scale of
    ``a``; NaN for an empty footprint).  Footprints are held as one scipy CSR matrix
    (n, height*width) and cut into batches of ``batch_size`` rows; the movie is read in its
    frame chunks (whole frames).  For each (batch, chunk) one task gathers only the pixels the
    batch uses and does one sparse @ dense product, so memory is bounded by one chunk plus
    ``batch_size`` x chunk frames of output, whatever the movie's length.  Everything runs in one
    ``compute(...)`` call, so each chunk is read once for all batches.

A/C initialisation (4e, :func:`init_AC`)
    The pair ``A0 = w / max(w)`` (the region's weights scaled to peak 1) and ``C0 = y_w`` (its
    weighted mean trace) defines the product ``A0 * C0``.  The normalisation only moves scale
    between A and C, keeping ``A * C = A0 * C0``: ``A = w / k`` and ``C = C0 * k / max(w)``
    with ``k = max(w)`` ("max": peak 1, C is the weighted mean trace), ``sum(w)`` ("l1"),
    ``||w||_2`` ("l2") or 1 ("none": the raw weights).  Equivalently, for ANY footprint scale
    the matching trace is ``y_a / max(a)``; :func:`make_recompute` uses that same convention,
    so traces recomputed in 4g are consistent with 4e.

Invalid components (4f, :func:`drop_invalid`)
    "nan": a NaN/Inf value in the footprint or the trace; "empty": no positive footprint pixel;
    "flat": the trace's standard deviation is at most ``flat_tol`` x its largest absolute value.
"""

from __future__ import annotations

from typing import Callable

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp

__all__ = ["footprints_to_csr", "normalise_rows", "extract_traces", "make_recompute",
           "init_AC", "drop_invalid", "NORMALISATIONS"]

NORMALISATIONS = ("max", "l1", "l2", "none")


# ----------------------------------------------------------------------------- footprints


def footprints_to_csr(footprints) -> sp.csr_array:
    """(n, pixels) float32 CSR from (n, height, width) dense, a scipy sparse (n, pixels)
    matrix or a :class:`~mps_core.seeding.watershed.Regions`; ValueError on negative values."""
    if hasattr(footprints, "to_sparse") and hasattr(footprints, "masks"):
        M = footprints.to_sparse()
    elif sp.issparse(footprints):
        M = sp.csr_array(footprints, dtype=np.float32)
        M.sum_duplicates()
    else:
        arr = np.asarray(footprints)
        if arr.ndim != 3:
            raise ValueError(f"footprints must be (n, height, width) or sparse (n, pixels), got shape {arr.shape}")
        M = sp.csr_array(_flat(arr).astype(np.float32, copy=False))
    M.eliminate_zeros()
    if np.any(M.data < 0):
        raise ValueError("footprints must be non-negative; found negative weights")
    return M


def _flat(arr: np.ndarray) -> np.ndarray:
    """(n, ...) -> (n, pixels), also for n = 0."""
    return arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:])))


def _row_scale(M: sp.csr_array, normalisation: str) -> np.ndarray:
    """Per-row k of the normalisation (max, sum, l2 norm, 1), float64."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    n = M.shape[0]
    if normalisation == "none":
        return np.ones(n)
    if normalisation == "max":
        return M.max(axis=1).toarray().ravel().astype(np.float64) if n else np.zeros(0)
    if normalisation == "l1":
        return np.asarray(M.sum(axis=1), np.float64).ravel()
    return np.sqrt(np.asarray(M.multiply(M).sum(axis=1), np.float64).ravel())


def _row_max(M: sp.csr_array) -> np.ndarray:
    return _row_scale(M, "max")


def normalise_rows(M: sp.csr_array, normalisation: str) -> sp.csr_array:
    """Rows divided by their max / sum / l2 norm ("none": unchanged); all-zero rows stay 0."""
    k = _row_scale(M, normalisation)
    inv = np.divide(1.0, k, out=np.zeros_like(k), where=k > 0)
    return sp.csr_array(sp.diags_array(inv) @ M, dtype=np.float32)


# ----------------------------------------------------------------------------- 4d


def _as_dask_movie(movie, chunk_frames: int | None) -> da.Array:
    """(frame, height, width) dask array with whole-frame chunks (rechunked if needed)."""
    data = getattr(movie, "data", movie) if not isinstance(movie, (np.ndarray, da.Array)) else movie
    if isinstance(data, np.ndarray):
        data = da.from_array(data, chunks=(chunk_frames or max(1, min(len(data), 500)), -1, -1))
    if not isinstance(data, da.Array) or data.ndim != 3:
        raise ValueError(f"movie must be a (frame, height, width) dask or numpy array, got {type(movie).__name__} "
                         f"with shape {getattr(data, 'shape', None)}")
    if chunk_frames:
        data = data.rechunk({0: int(chunk_frames), 1: -1, 2: -1})
    elif len(data.chunks[1]) > 1 or len(data.chunks[2]) > 1:
        data = data.rechunk({1: -1, 2: -1})
    return data


def _project(block: np.ndarray, local: sp.csr_array, pix: np.ndarray) -> np.ndarray:
    """(batch, t) float32: the batch's footprints (restricted to ``pix``) times the frames."""
    flat = block.reshape(block.shape[0], -1)
    X = np.ascontiguousarray(flat[:, pix].astype(np.float32, copy=False).T)  # (pix, t)
    return np.asarray(local @ X, np.float32)


def _projection_graph(movie: da.Array, M: sp.csr_array, batch_size: int) -> da.Array:
    """Lazy (n, frames) float32 of M @ movie (unnormalised), one task per (batch, chunk)."""
    blocks = movie.to_delayed().ravel()
    t_chunks = movie.chunks[0]
    rows = []
    for b0 in range(0, M.shape[0], batch_size):
        sub = M[b0:b0 + batch_size]
        pix = np.unique(sub.indices)
        local = sp.csr_array(sub[:, pix])
        d_local, d_pix = dask.delayed(local), dask.delayed(pix)
        parts = [da.from_delayed(dask.delayed(_project)(blk, d_local, d_pix),
                                 shape=(sub.shape[0], t), dtype=np.float32)
                 for blk, t in zip(blocks, t_chunks)]
        rows.append(da.concatenate(parts, axis=1))
    return da.concatenate(rows, axis=0)


def extract_traces(movie, footprints, *, batch_size: int = 100, chunk_frames: int | None = None,
                   compute: Callable | None = None) -> np.ndarray:
    """(n, frames) float32 footprint-weighted mean traces (module docstring), streamed.

    ``movie``: (frame, height, width) dask array (numpy and xarray are accepted too);
    ``footprints``: (n, height, width) dense, scipy sparse (n, height*width) or Regions;
    ``chunk_frames`` rechunks the movie along frames (None keeps its chunks);
    ``compute(*dask_objs) -> tuple`` materialises (default ``dask.compute``).
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"extract_traces: batch_size must be a positive integer, got {batch_size!r}")
    if chunk_frames is not None and (int(chunk_frames) != chunk_frames or chunk_frames < 0):
        raise ValueError(f"extract_traces: chunk_frames must be a non-negative integer or None, got {chunk_frames!r}")
    mov = _as_dask_movie(movie, chunk_frames)
    M = footprints_to_csr(footprints)
    n_pix = mov.shape[1] * mov.shape[2]
    if M.shape[1] != n_pix:
        raise ValueError(f"extract_traces: footprints cover {M.shape[1]} pixels but movie frames have "
                         f"{mov.shape[1]}x{mov.shape[2]}={n_pix}")
    if M.shape[0] == 0:
        return np.zeros((0, mov.shape[0]), np.float32)
    (raw,) = (compute or dask.compute)(_projection_graph(mov, M, int(batch_size)))
    total = np.asarray(M.sum(axis=1), np.float64).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.asarray(raw, np.float64) / total[:, None]
    out[total <= 0] = np.nan
    return out.astype(np.float32)


def make_recompute(movie, *, batch_size: int = 100, chunk_frames: int | None = None,
                   compute: Callable | None = None) -> Callable:
    """``recompute(A) -> C`` for :func:`~mps_core.seeding.merge.temporal_merge`: the weighted
    mean traces of ``A`` divided by each footprint's maximum, i.e. the trace that matches
    ``A``'s scale under the 4e convention (``A * C`` = peak-1 footprint x weighted mean)."""
    def recompute(A):
        M = footprints_to_csr(A)
        y = extract_traces(movie, M, batch_size=batch_size, chunk_frames=chunk_frames, compute=compute)
        return _rescale_traces(y, _row_max(M))
    return recompute


def _rescale_traces(y: np.ndarray, peak: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        out = y.astype(np.float64) / peak[:, None]
    out[~(peak > 0)] = np.nan
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- 4e


def init_AC(regions, traces: np.ndarray, normalisation: str = "max", *, sparse: bool = False):
    """First footprints and traces (step 4e) from regions and their weighted mean traces.

    ``regions``: Regions, (n, height, width) dense or sparse (n, pixels) weights;
    ``traces``: (n, frames) from :func:`extract_traces`.  Returns ``(A, C)``: A float32
    (n, height, width) (or CSR (n, pixels) when ``sparse``), C float32 (n, frames), scaled so
    that ``A * C`` is the same for every normalisation (module docstring).  A region with no
    positive weight gets a zero footprint and a NaN trace (4f drops it).
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"init_AC: normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    if hasattr(regions, "masks"):
        shape = tuple(regions.shape)
    elif sp.issparse(regions):
        shape = None
    else:
        shape = np.shape(regions)[1:]
    M = footprints_to_csr(regions)
    traces = np.asarray(traces)
    if traces.ndim != 2 or traces.shape[0] != M.shape[0]:
        raise ValueError(f"init_AC: traces must be (n, frames) with n={M.shape[0]}, got {traces.shape}")
    A = normalise_rows(M, normalisation)
    C = _rescale_traces(traces, _row_max(A))
    if sparse:
        return A, C
    if shape is None:
        raise ValueError("init_AC: dense output needs the frame shape; pass Regions or dense footprints, "
                         "or use sparse=True")
    return A.toarray().reshape(-1, *shape).astype(np.float32), C


# ----------------------------------------------------------------------------- 4f


def _row_flags(M: sp.csr_array) -> tuple[np.ndarray, np.ndarray]:
    """(has non-finite value, has a positive value) per row of a CSR matrix."""
    n = M.shape[0]
    rows = np.repeat(np.arange(n), np.diff(M.indptr))
    bad = np.zeros(n, bool)
    bad[rows[~np.isfinite(M.data)]] = True
    pos = np.zeros(n, bool)
    pos[rows[M.data > 0]] = True
    return bad, pos


def drop_invalid(A, C: np.ndarray, *, flat_tol: float = 1e-6, check_nan: bool = True,
                 check_empty: bool = True, check_flat: bool = True) -> tuple[np.ndarray, list[str]]:
    """Which components to keep (step 4f) and why the others go.

    Returns ``(keep, reasons)``: keep (n,) bool; reasons[i] is "" for a kept component, else
    the failed checks joined by "," among "nan", "empty", "flat" (module docstring).
    """
    if not 0 <= flat_tol < 1:
        raise ValueError(f"drop_invalid: flat_tol must be in [0, 1), got {flat_tol!r}")
    M = sp.csr_array(A, dtype=np.float32) if sp.issparse(A) else sp.csr_array(_flat(np.asarray(A, np.float32)))
    C = np.asarray(C, np.float64)
    if C.ndim != 2 or C.shape[0] != M.shape[0]:
        raise ValueError(f"drop_invalid: C must be (n, frames) with n={M.shape[0]}, got {C.shape}")
    a_bad, a_pos = _row_flags(M)
    c_bad = ~np.all(np.isfinite(C), axis=1)
    nan = a_bad | c_bad
    with np.errstate(invalid="ignore"):
        flat = ~c_bad & (np.std(C, axis=1) <= flat_tol * np.max(np.abs(C), axis=1, initial=0.0))
    checks = [("nan", nan if check_nan else None), ("empty", ~a_pos if check_empty else None),
              ("flat", flat if check_flat else None)]
    reasons = [",".join(name for name, f in checks if f is not None and f[i]) for i in range(M.shape[0])]
    keep = np.array([r == "" for r in reasons], bool)
    return keep, reasons
