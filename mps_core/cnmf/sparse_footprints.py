"""Footprints as sparse (unit, pixel) matrices, so steps 7b-8c never hold dense copies.

A footprint stack is stored as a dense (unit, height, width) float32 array, but each unit is
non-zero on a few hundred pixels of a frame of a few hundred thousand: ~435 units on 608 x 608
px are 640 MB dense and a few MB as CSR. The steps read the stored stack one unit chunk at a
time into a CSR (:func:`read_csr`), do all their footprint algebra on it, and hand the store a
lazy dense array that is filled one unit chunk at a time while it is written
(:func:`lazy_dense`). So at most one chunk of dense footprints is in memory at once.

Conventions: a CSR here is (n, H*W) float32 with sorted indices and no explicit zeros; the
frame shape (H, W) travels next to it. Every function gives exactly what its dense
counterpart gives on ``csr.toarray().reshape(n, H, W)`` (float32 sums in float64 aside).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from scipy import ndimage as ndi

__all__ = ["as_csr", "read_csr", "iter_slabs", "dense_rows", "dense_unit", "row_max",
           "positive_counts", "support_box", "centroids_csr", "lazy_dense", "smooth_csr",
           "scatter_csr", "in_frame", "FramedFootprints"]

Shape = tuple[int, int]
Compute = Callable[..., tuple]
CHUNK_UNITS = 64  # units per dense slab: the store's chunk of a footprint stack


def as_csr(A: Any, shape: Shape | None = None, where: str = "footprints") -> tuple[sp.csr_matrix, Shape]:
    """``(csr, (H, W))`` of dense (n, H, W) footprints or a sparse (n, H*W) matrix.

    A sparse input needs ``shape``; a dense one gives it (and must match ``shape`` if given).
    ValueError for other layouts or non-finite values."""
    if sp.issparse(A):
        if shape is None:
            raise ValueError(f"{where}: sparse footprints need the frame shape (height, width)")
        H, W = (int(v) for v in shape)
        if A.ndim != 2 or A.shape[1] != H * W:
            raise ValueError(f"{where}: sparse footprints must be (unit, {H}*{W}), got {A.shape}")
        out = sp.csr_matrix(A, dtype=np.float32, copy=True)
    else:
        A = np.asarray(A)
        if A.ndim != 3:
            raise ValueError(f"{where}: A must be (unit, height, width), got shape {A.shape}")
        if shape is not None and tuple(shape) != A.shape[1:]:
            raise ValueError(f"{where}: A's frame {A.shape[1:]} does not match {tuple(shape)}")
        H, W = A.shape[1:]
        out = sp.csr_matrix(A.reshape(A.shape[0], -1).astype(np.float32, copy=False))
    if not np.all(np.isfinite(out.data)):
        raise ValueError(f"{where}: A holds NaN or Inf values")
    out.eliminate_zeros()
    out.sort_indices()
    return out, (int(H), int(W))


def read_csr(data: Any, compute: Compute | None = None, chunk: int = CHUNK_UNITS) -> sp.csr_matrix:
    """(n, H*W) CSR of a (n, H, W) stack (numpy, dask or xarray), read ``chunk`` units at a
    time so only one dense slab is ever in memory. ``compute`` runs a dask slice (default
    ``dask.compute``)."""
    parts = [sp.csr_matrix(s.reshape(s.shape[0], -1).astype(np.float32, copy=False))
             for s in iter_slabs(data, compute, chunk)]
    H, W = getattr(data, "shape", (0, 0, 0))[1:]
    out = sp.vstack(parts, format="csr", dtype=np.float32) if parts else \
        sp.csr_matrix((0, H * W), dtype=np.float32)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def iter_slabs(data: Any, compute: Compute | None = None,
               chunk: int = CHUNK_UNITS) -> Iterator[np.ndarray]:
    """Dense (k, H, W) slabs of a footprint stack, in unit order, one at a time.

    A dask stack is sliced along its own unit chunks (a slab never spans two stored chunks,
    so none is decoded twice)."""
    data = getattr(data, "data", data)
    n = data.shape[0]
    if isinstance(data, da.Array):
        compute = compute or dask.compute
        bounds = np.cumsum((0,) + data.chunks[0])
        edges = sorted({int(b) for b in bounds} | set(range(0, n, chunk)) | {n})
        for a, b in zip(edges[:-1], edges[1:]):
            (slab,) = compute(data[a:b])
            yield np.asarray(slab)
        return
    data = np.asarray(data)
    for a in range(0, n, chunk):
        yield data[a:a + chunk]


def dense_rows(csr: sp.csr_matrix, rows: Any, shape: Shape) -> np.ndarray:
    """(k, H, W) float32 dense footprints of the given rows."""
    rows = np.asarray(rows, np.int64).ravel()
    out = np.zeros((rows.size, shape[0] * shape[1]), np.float32)
    if rows.size:
        sub = csr[rows]
        r = np.repeat(np.arange(rows.size), np.diff(sub.indptr))
        out[r, sub.indices] = sub.data
    return out.reshape(rows.size, *shape)


def dense_unit(csr: sp.csr_matrix, u: int, shape: Shape) -> np.ndarray:
    """(H, W) float32 dense footprint of row ``u``."""
    out = np.zeros(shape[0] * shape[1], np.float32)
    lo, hi = csr.indptr[u], csr.indptr[u + 1]
    out[csr.indices[lo:hi]] = csr.data[lo:hi]
    return out.reshape(shape)


def row_max(csr: sp.csr_matrix) -> np.ndarray:
    """(n,) maximum of every row over ALL its pixels (implicit zeros included), as
    ``dense.reshape(n, -1).max(axis=1)`` (the matrix's dtype)."""
    n, npix = csr.shape
    out = np.zeros(n, csr.dtype)
    counts = np.diff(csr.indptr)
    has = counts > 0
    if has.any():
        out[has] = np.maximum.reduceat(csr.data, csr.indptr[:-1][has])
    full = counts >= npix  # no implicit zero in the row: the max of its values only
    out[~full] = np.maximum(out[~full], 0)
    return out


def positive_counts(csr: sp.csr_matrix) -> np.ndarray:
    """(n,) number of pixels > 0 per row."""
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    return np.bincount(rows[csr.data > 0], minlength=csr.shape[0]).astype(np.int64)


def support_box(csr: sp.csr_matrix, u: int, W: int,
                threshold: float | None = None) -> tuple[int, int, int, int] | None:
    """Half-open bounding box (y0, y1, x0, x1) of row ``u``'s pixels > 0 (and > ``threshold``
    when given); None when there are none."""
    lo, hi = csr.indptr[u], csr.indptr[u + 1]
    vals = csr.data[lo:hi]
    keep = vals > 0 if threshold is None else (vals > threshold) & (vals > 0)
    idx = csr.indices[lo:hi][keep]
    if idx.size == 0:
        return None
    ys, xs = np.divmod(idx, W)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def centroids_csr(csr: sp.csr_matrix, shape: Shape) -> np.ndarray:
    """(n, 2) intensity-weighted (y, x) centres of mass in float64; NaN for empty rows."""
    n = csr.shape[0]
    rows = np.repeat(np.arange(n), np.diff(csr.indptr))
    ys, xs = np.divmod(csr.indices.astype(np.int64), shape[1])
    w = csr.data.astype(np.float64)
    mass = np.bincount(rows, weights=w, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(rows, weights=w * ys, minlength=n) / mass
        cx = np.bincount(rows, weights=w * xs, minlength=n) / mass
    empty = mass == 0
    cy[empty] = np.nan
    cx[empty] = np.nan
    return np.column_stack([cy, cx])


def _densify(csr: sp.csr_matrix, a: int, b: int, shape: Shape) -> np.ndarray:
    return dense_rows(csr, np.arange(a, b), shape)


def lazy_dense(csr: sp.csr_matrix, shape: Shape, chunk: int = CHUNK_UNITS) -> da.Array:
    """(n, H, W) float32 dask array of the footprints, ``chunk`` units per block, each block
    made dense only when it is computed (e.g. while the store writes it)."""
    n = csr.shape[0]
    H, W = shape
    if n == 0:
        return da.zeros((0, H, W), np.float32, chunks=(1, H, W))
    shared = dask.delayed(csr, traverse=False)  # one graph node, shared by every block
    blocks = [da.from_delayed(dask.delayed(_densify)(shared, a, min(a + chunk, n), (H, W)),
                              (min(a + chunk, n) - a, H, W), np.float32)
              for a in range(0, n, chunk)]
    return da.concatenate(blocks, axis=0)


def smooth_csr(csr: sp.csr_matrix, shape: Shape, sigma: float | np.ndarray) -> sp.csr_matrix:
    """Gaussian smoothing (``mode='constant'``) of every footprint on its support's bounding
    box padded by 4 sigma, as a CSR (empty rows stay empty). Each unit's crop is smoothed in
    float32 exactly as a dense crop would be. ``sigma`` is one width > 0 for all units, or one
    per unit (>= 0; a unit with 0 is copied unchanged)."""
    per_unit = np.ndim(sigma) > 0
    if per_unit:
        sigma = np.asarray(sigma, np.float64)
        if sigma.shape != (csr.shape[0],) or not np.all(sigma >= 0):
            raise ValueError(f"smooth_csr: per-unit sigmas must be {csr.shape[0]} values >= 0")
    elif not sigma > 0:
        raise ValueError(f"smooth_csr: sigma must be > 0, got {sigma!r}")
    H, W = shape
    rows, cols, vals = [], [], []
    for u in range(csr.shape[0]):
        lo, hi = csr.indptr[u], csr.indptr[u + 1]
        if hi == lo:
            continue
        s_u = float(sigma[u]) if per_unit else sigma
        if s_u == 0:
            rows.append(np.full(hi - lo, u, np.int64))
            cols.append(csr.indices[lo:hi].astype(np.int64))
            vals.append(csr.data[lo:hi])
            continue
        pad = int(np.ceil(4 * s_u))
        ys, xs = np.divmod(csr.indices[lo:hi], W)
        y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, H)
        x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, W)
        crop = np.zeros((y1 - y0, x1 - x0), np.float32)
        crop[ys - y0, xs - x0] = csr.data[lo:hi]
        sm = ndi.gaussian_filter(crop, s_u, mode="constant")
        yy, xx = np.nonzero(sm)
        rows.append(np.full(yy.size, u, np.int64))
        cols.append((yy + y0) * W + (xx + x0))
        vals.append(sm[yy, xx])
    return _coo_csr(rows, cols, vals, csr.shape)


def scatter_csr(units: list[np.ndarray], pixels: list[np.ndarray], values: list[np.ndarray],
                shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR of blocks ``values[i]`` (k_i, P_i) placed at rows ``units[i]`` and columns
    ``pixels[i]``; where blocks overlap the later one wins (as successive dense
    assignments ``out[units[:, None], pixels] = values`` would)."""
    r, c, v = [], [], []
    for uu, pp, vv in zip(units, pixels, values):
        vv = np.asarray(vv, np.float32).reshape(len(uu), len(pp))
        r.append(np.repeat(np.asarray(uu, np.int64), len(pp)))
        c.append(np.tile(np.asarray(pp, np.int64), len(uu)))
        v.append(vv.ravel())
    if not r:
        return sp.csr_matrix(shape, dtype=np.float32)
    r, c, v = np.concatenate(r), np.concatenate(c), np.concatenate(v)
    key = r * shape[1] + c
    _, last = np.unique(key[::-1], return_index=True)  # the last write of each (unit, pixel)
    pick = key.size - 1 - last
    return _coo_csr([r[pick]], [c[pick]], [v[pick]], shape)


def _coo_csr(rows, cols, vals, shape) -> sp.csr_matrix:
    if not rows:
        return sp.csr_matrix(shape, dtype=np.float32)
    out = sp.csr_matrix((np.concatenate(vals).astype(np.float32),
                         (np.concatenate(rows), np.concatenate(cols))), shape=shape,
                        dtype=np.float32)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def in_frame(csr: sp.csr_matrix, rows: np.ndarray, shape: Shape, y0: int, x0: int,
             full: Shape) -> np.ndarray:
    """(k, *full) float32 dense footprints of ``rows``, each (H, W) footprint placed at
    (y0, x0) of a zero frame of shape ``full`` (a crop undone), filled straight from the CSR
    (:class:`FramedFootprints` gives the same stack block by block)."""
    return np.asarray(FramedFootprints(csr, rows, shape, y0, x0, full))


class FramedFootprints:
    """A read-only (k, *full) float32 stack of footprints placed in the full frame, filled from
    the CSR only where it is read: an export writes it one block of units at a time instead of
    holding the dense stack (828 units of 608 x 608 px are 1.2 GB dense, a few MB as CSR).

    Indexing takes units first (an int, slice or index array), then optional pixel slices, and
    returns dense numpy; ``np.asarray`` gives the whole dense stack (for the writers that need
    it at once)."""

    dtype = np.dtype(np.float32)
    ndim = 3

    def __init__(self, csr: sp.csr_matrix, rows: np.ndarray, shape: Shape, y0: int, x0: int,
                 full: Shape):
        H, W = shape
        FH, FW = (int(v) for v in full)
        if y0 < 0 or x0 < 0 or y0 + H > FH or x0 + W > FW:
            raise ValueError(f"footprints: a {H}x{W} crop at ({y0}, {x0}) does not fit in the "
                             f"{FH}x{FW} frame")
        rows = np.asarray(rows, np.int64).ravel()
        self._csr = sp.csr_matrix(csr[rows], dtype=np.float32) if rows.size else \
            sp.csr_matrix((0, H * W), dtype=np.float32)
        self._crop = (int(H), int(W), int(y0), int(x0))
        self.shape = (int(rows.size), FH, FW)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def _dense(self, rows: np.ndarray) -> np.ndarray:
        H, W, y0, x0 = self._crop
        out = np.zeros((rows.size, *self.shape[1:]), np.float32)
        if rows.size:
            sub = self._csr[rows]
            r = np.repeat(np.arange(rows.size), np.diff(sub.indptr))
            ys, xs = np.divmod(sub.indices.astype(np.int64), W)
            out[r, ys + y0, xs + x0] = sub.data
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = (key[0] if key else slice(None)), key[1:]
        if any(k is Ellipsis or k is None for k in key):
            raise IndexError("FramedFootprints: index with units, then height and width")
        n = self.shape[0]
        if isinstance(first, (int, np.integer)):
            i = int(first) + (n if first < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"unit index {first} out of range for {n} units")
            return self._dense(np.array([i]))[(0, *rest)]
        rows = np.arange(n)[first]
        return self._dense(np.atleast_1d(rows))[(slice(None), *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._dense(np.arange(self.shape[0]))
        return out if dtype is None else out.astype(dtype, copy=False)

    def blocks(self, units: int = CHUNK_UNITS) -> Iterator[tuple[int, np.ndarray]]:
        """(first unit, dense block of up to ``units`` units) in unit order."""
        for i in range(0, self.shape[0], max(1, int(units))):
            yield i, self[i:i + units]
