"""Steps 7e / 7f: re-estimate every footprint from statistics streamed over ALL frames.

Model of pixel p over the frames (Y_p the pixel's time series, c_u the traces, f the optional
background trace with spatial part b):  ``Y_p ~ sum_u a_{u,p} c_u + b_p f``.  With the
traces fixed, each pixel's footprint values solve a small non-negative LASSO

    min_a  0.5 ||Y_p - sum_u a_u c_u - b_p f||^2 + sum_u lam_{p,u} a_u,   a >= 0,

which only depends on the movie through the sufficient statistics ``YC_p = Y_p C^T`` and the
Gram matrix ``CC = C C^T`` (f appended to C as one extra row, last). Expanding the square,
the objective is ``0.5 a^T CC a - a^T (YC_p - ...) + lam . a`` (constant dropped).

1. `plan_boxes` (cheap): for each cluster (7b) and its box (7c), the pixels of the box where
   at least one of the cluster's dilated footprints (7a) is positive, and for each of them which
   cluster units may be non-zero there. Only these (pixel, unit) pairs are unknowns, so the
   padding of a box costs nothing.
2. `sufficient_statistics`: ONE streamed pass over the movie. Every frame chunk's task crops
   each plan's bounding box and multiplies it with the chunk of the cluster's traces (a small
   GEMM: crop pixels x cluster units, keeping the plan's pixels), plus per-pixel sums for the
   mean and std, in float64. The chunks are dealt round-robin to a few chains (one per core,
   at most 4), each adding its chunks' products into one accumulator in place; the chains are
   summed at the end. Memory: the products are ``sum_plans pixels_in_plan * (units_in_cluster
   + 1) * 8`` bytes per accumulator (tens of MB at 1000 units), plus one frame chunk per
   running task; a tree of per-chunk partial sums held several times more (7e on a 10-minute
   recording: 2.2 GB). Without plans, one plan covers the whole frame and every unit:
   ``H * W * (n + 1) * 8`` bytes per accumulator (600 x 600 at n = 1000: 2.9 GB), so use it
   only for small data. Cost: ``T * sum_plans pixels * units`` multiply-adds instead of
   ``T * H * W * n``.
3. `update_footprints`: per plan, the LASSO of all its pixels at once (vectorised cyclic
   coordinate descent over the cluster's units, from the current footprints). Units outside
   the cluster are held fixed: their contribution ``CC[cluster, fixed] a_fixed,p`` (from the
   current footprints) is subtracted from ``YC_p``; so is the background ``b_p CC[cluster, f]``
   when ``b`` is given; when ``b`` is None and f was included, ``b_p`` is re-estimated at the
   same time as an unpenalised non-negative unknown. Penalty, exactly::

       lam_{p,u} = clip(penalty_scale * sn_p, min_penalty * m, max_penalty * m) * ||c_u||_2

   with sn the noise map (5a) and m its median. ``sn_p ||c_u||`` is the standard deviation of
   the noise's projection on c_u, so penalty_scale is a threshold in noise standard deviations,
   independent of the scale of C and of the number of frames; the clip stops very quiet or very
   noisy pixels from getting extreme penalties. Pixels whose temporal std is under ``min_std``
   get 0 for every unit. ``n_sweeps > 1`` repeats the pass over clusters using the previous
   sweep's footprints for the fixed units (Jacobi sweeps; no extra read of the movie). They
   converge slowly between strongly correlated overlapping units: those belong in one cluster.
4. `results_csr` (7e) assembles the per-plan results into a sparse (unit, pixel) matrix (7e-8c
   never hold a dense footprint stack, see :mod:`mps_core.cnmf.sparse_footprints`).
   `merge_boxes`: assembles dense (n, H, W) footprints. Each unit normally comes from
   exactly one box (its cluster's); when a unit was solved in several boxes, each pixel takes
   the value from the box whose centre is nearest to the pixel (ties: the earlier box).
   Optional Gaussian smoothing (``sigma`` px) gives a second, smoothed copy; units whose raw
   footprint is empty are dropped (the kept unit indices are returned).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import dask
import numpy as np
import scipy.sparse as sp
from numba import njit
from scipy import ndimage as ndi

from ..execution import accumulator_chains
from .clusters import check_labels
from .sparse_footprints import as_csr, dense_unit, scatter_csr
from .yra import footprints_csr, frame_chunked

__all__ = ["BoxPlan", "BoxProducts", "BoxFootprints", "MergedFootprints", "plan_boxes",
           "sufficient_statistics", "update_footprints", "merge_boxes", "unit_windows",
           "covariance_maps", "smoothing_scores", "select_smoothing", "measure_smoothness",
           "unit_smoothing", "results_csr", "SMOOTHING_D", "WINDOW_PAD_D"]

Box = tuple[int, int, int, int]
Compute = Callable[..., tuple]
_SUB_FRAMES = 32  # frames per small GEMM in _chunk_products
# One of these skinny float32 GEMMs at a time per process: numpy's OpenBLAS (0.3.31, SkylakeX
# kernels) corrupted the heap when two dask threads ran them at once ("malloc(): invalid size",
# about one 7e run in three on a 608 x 608 recording, and results that differed run to run).
# With the lock: none in repeated runs; 7e's statistics pass takes ~5 % longer.
_GEMM_LOCK = threading.Lock()


@dataclass(frozen=True)
class BoxPlan:
    """The unknowns of one cluster: its box, units, pixels and which unit may be where."""

    box: Box  # half-open (y0, y1, x0, x1)
    units: np.ndarray  # (k,) int64 unit indices (rows of A and C)
    pixels: np.ndarray  # (P,) int64 flat pixel indices (y * W + x), sorted
    support: np.ndarray  # (P, k) bool, True where unit k may be non-zero


@dataclass(frozen=True)
class BoxProducts:
    """Streamed statistics: per plan ``Y_p [C_units; f]^T`` and per-pixel mean / std."""

    plans: list[BoxPlan]
    products: list[np.ndarray]  # per plan (P, k [+ 1 for f]) float64
    pixel_mean: np.ndarray  # (H, W) float32
    pixel_std: np.ndarray  # (H, W) float32, over all frames (population std)
    n_units: int
    n_frames: int
    has_background: bool  # products and CC carry f as their last column / row


@dataclass(frozen=True)
class BoxFootprints:
    """Result of one plan: the new values of its units at its pixels (7e output)."""

    box: Box
    units: np.ndarray  # (k,)
    pixels: np.ndarray  # (P,) flat indices
    values: np.ndarray  # (k, P) float32
    background: np.ndarray | None  # (P,) float32 re-estimated b at the pixels, or None


@dataclass(frozen=True)
class MergedFootprints:
    """7f output: footprints of the kept units, raw and (optionally) smoothed."""

    raw: np.ndarray  # (m, H, W) float32
    smoothed: np.ndarray | None  # (m, H, W) float32 or None without smoothing
    units: np.ndarray  # (m,) int64 original indices of the kept (non-empty) units


# ----------------------------------------------------------------------------- plans


def plan_boxes(A_dilated: np.ndarray | sp.spmatrix, labels: np.ndarray, boxes: list[Box],
               shape: tuple[int, int] | None = None) -> list[BoxPlan]:
    """One `BoxPlan` per cluster: pixels of its box where a member's dilated footprint is > 0.

    ``A_dilated`` dense (n, H, W), or sparse (n, H*W) with ``shape`` = (H, W)."""
    if not sp.issparse(A_dilated) and np.ndim(A_dilated) != 3:
        raise ValueError(f"plan_boxes: A_dilated must be (unit, height, width), got "
                         f"{np.shape(A_dilated)}")
    A, (H, W) = as_csr(A_dilated, shape, "plan_boxes")
    n = A.shape[0]
    labels = check_labels(labels, n, "plan_boxes")
    K = int(labels.max()) + 1 if n else 0
    if len(boxes) != K:
        raise ValueError(f"plan_boxes: got {len(boxes)} boxes for {K} clusters (one box per label)")
    plans = []
    for k, box in enumerate(boxes):
        y0, y1, x0, x1 = (int(v) for v in box)
        if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
            raise ValueError(f"plan_boxes: box {k} = {tuple(box)} is empty or outside the "
                             f"{H}x{W} frame")
        units = np.flatnonzero(labels == k)
        crop = _support_crop(A, units, (y0, y1, x0, x1), W)  # (k, h, w) bool
        inside = crop.any(axis=0)
        yy, xx = np.nonzero(inside)
        pixels = ((yy + y0) * W + (xx + x0)).astype(np.int64)
        support = crop[:, yy, xx].T.copy()
        plans.append(BoxPlan((y0, y1, x0, x1), units.astype(np.int64), pixels, support))
    return plans


def _support_crop(A: sp.csr_matrix, units: np.ndarray, box: Box, W: int) -> np.ndarray:
    """(k, h, w) bool: where each of ``units`` is > 0 inside ``box`` (``A[units, box] > 0``)."""
    y0, y1, x0, x1 = box
    crop = np.zeros((units.size, y1 - y0, x1 - x0), bool)
    for i, u in enumerate(units):
        lo, hi = A.indptr[u], A.indptr[u + 1]
        ys, xs = np.divmod(A.indices[lo:hi][A.data[lo:hi] > 0], W)
        ok = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        crop[i, ys[ok] - y0, xs[ok] - x0] = True
    return crop


def _whole_frame_plan(n: int, H: int, W: int) -> BoxPlan:
    return BoxPlan((0, H, 0, W), np.arange(n, dtype=np.int64), np.arange(H * W, dtype=np.int64),
                   np.ones((H * W, n), bool))


# ----------------------------------------------------------------------------- 7e statistics


def sufficient_statistics(Y: Any, C: np.ndarray, *, f: np.ndarray | None = None,
                          plans: list[BoxPlan] | None = None, compute: Compute | None = None,
                          chunk_frames: int | None = None) -> tuple[BoxProducts, np.ndarray]:
    """``(YC, CC)`` from one streamed pass over ``Y`` (see the module docstring).

    ``Y`` (T, H, W) movie; ``C`` (n, T) traces; ``f`` (T,) optional background trace, appended
    to C as its last row; ``plans`` from `plan_boxes` (None: the whole frame and every unit).
    ``CC`` is the (n [+1], n [+1]) float64 Gram matrix of [C; f]. The background's spatial part
    b is not needed here: it enters the update through CC.
    """
    compute = compute or dask.compute
    Yd = frame_chunked(Y, chunk_frames, "sufficient_statistics")
    T, H, W = Yd.shape
    C = np.asarray(C, np.float32)
    if C.ndim != 2 or C.shape[1] != T:
        raise ValueError(f"sufficient_statistics: C must be (unit, frame) with {T} frames, got {C.shape}")
    rows = [C]
    if f is not None:
        f = np.asarray(f, np.float32).ravel()
        if f.shape != (T,):
            raise ValueError(f"sufficient_statistics: f must have shape ({T},), got {f.shape}")
        rows.append(f[None, :])
    Cext = np.concatenate(rows, axis=0)
    if not np.all(np.isfinite(Cext)):
        raise ValueError("sufficient_statistics: C or f holds NaN or Inf values")
    n = C.shape[0]
    if plans is None:
        plans = [_whole_frame_plan(n, H, W)]
    cols = [_plan_columns(p, n, f is not None) for p in plans]
    flat = _stream_products(Yd, Cext, plans, cols, compute)
    products, s1, s2 = _unpack(flat, plans, cols, H * W)
    mean = s1 / T
    std = np.sqrt(np.maximum(s2 / T - mean**2, 0.0))
    CC = Cext.astype(np.float64) @ Cext.T.astype(np.float64)
    stats = BoxProducts(list(plans), products, mean.reshape(H, W).astype(np.float32),
                        std.reshape(H, W).astype(np.float32), n, T, f is not None)
    return stats, CC


def _plan_columns(plan: BoxPlan, n: int, with_f: bool) -> np.ndarray:
    """Rows of [C; f] a plan needs: its units, then f (index n) when present."""
    if plan.units.size and (plan.units.min() < 0 or plan.units.max() >= n):
        raise ValueError(f"sufficient_statistics: a plan refers to units outside 0..{n - 1}")
    return np.concatenate([plan.units, [n]]) if with_f else plan.units


def _stream_products(Yd, Cext, plans, cols, compute) -> np.ndarray:
    """One streamed pass: frame chunks dealt round-robin to a few chains, each adding its
    chunks' flat float64 products into one accumulator in place; the chains summed last."""
    W = Yd.shape[2]
    sizes = [p.pixels.size * c.size for p, c in zip(plans, cols)]
    shared = dask.delayed((Cext, [_crop_of(p.pixels, W) for p in plans], cols,
                           np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)),
                          traverse=False)
    starts = np.concatenate([[0], np.cumsum(Yd.chunks[0])])
    n_blocks = Yd.numblocks[0]
    chains: list = [None] * min(n_blocks, accumulator_chains())
    for i in range(n_blocks):
        j = i % len(chains)
        # each chain task reads its own chunk: as separate tasks the reads, ready at once,
        # ran far ahead of the chains and held hundreds of chunks (7e: +3 GB, measured)
        chains[j] = dask.delayed(_chunk_products, pure=False)(
            chains[j], _BlockReader(Yd.blocks[i]), shared, int(starts[i]))
    (flat,) = compute(_tree_sum(chains))
    return flat


class _BlockReader:
    """One frame chunk of a dask movie, read when called (inside the task that uses it).
    Opaque to dask on purpose: it does not become a task of its own."""

    def __init__(self, block: Any):
        self.block = block

    def __call__(self) -> np.ndarray:
        return np.asarray(self.block.compute(scheduler="sync"))


def _crop_of(pixels: np.ndarray, W: int) -> tuple[int, int, int, int, np.ndarray | None]:
    """Tight bounding box of flat pixel indices and their positions inside it (None: all)."""
    if pixels.size == 0:
        return 0, 0, 0, 0, pixels
    ys, xs = np.divmod(pixels, W)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    local = (ys - y0) * (x1 - x0) + (xs - x0)
    return y0, y1, x0, x1, (None if local.size == (y1 - y0) * (x1 - x0) else local)


def _chunk_products(acc: np.ndarray | None, block: np.ndarray, shared, t0: int) -> np.ndarray:
    """``acc`` plus one chunk's flat [products of every plan..., pixel sums, pixel sums of
    squares], added in place (``acc`` None: a new accumulator).

    A plan's pixels are taken as the tight bounding-box crop of the frames (copying contiguous
    rows is much cheaper than gathering scattered pixels); the GEMM runs on the whole crop and
    the plan's rows are picked from its small result."""
    Cext, crops, cols, offsets = shared
    block = np.asarray(block() if callable(block) else block, np.float32)
    t = block.shape[0]
    P = block.shape[1] * block.shape[2]
    if acc is None:
        acc = np.zeros(int(offsets[-1]) + 2 * P, np.float64)
    ct = np.ascontiguousarray(Cext[:, t0:t0 + t].T)  # (t, n [+1])
    for (y0, y1, x0, x1, local), c, off, end in zip(crops, cols, offsets[:-1], offsets[1:]):
        crop = block[:, y0:y1, x0:x1].reshape(t, -1)
        cc = ct[:, c]
        prod = np.zeros((crop.shape[1], c.size), np.float64)
        # a few frames per GEMM: OpenBLAS then runs these skinny products on one thread, ~5x
        # faster than its multi-threaded path here (thread start-up per call, and dask's
        # threads already use the cores)
        for s in range(0, t, _SUB_FRAMES):
            with _GEMM_LOCK:
                part = crop[s:s + _SUB_FRAMES].T @ cc[s:s + _SUB_FRAMES]
            prod += part
        acc[off:end] += (prod if local is None else prod[local]).ravel()
    s1, s2 = _pixel_sums(block.reshape(t, -1))
    tail = int(offsets[-1])
    acc[tail:tail + P] += s1
    acc[tail + P:] += s2
    return acc


def _pixel_sums(flat: np.ndarray) -> list[np.ndarray]:
    """Per-pixel sum and sum of squares (float64) of (t, P) float32 frames.

    Float32 partial sums over a few frames (relative error ~1e-6) added in float64: about 3x
    faster than casting every frame to float64."""
    s1 = np.zeros(flat.shape[1], np.float64)
    s2 = np.zeros(flat.shape[1], np.float64)
    for s in range(0, flat.shape[0], _SUB_FRAMES):
        part = flat[s:s + _SUB_FRAMES]
        s1 += part.sum(axis=0)
        s2 += np.einsum("tp,tp->p", part, part)
    return [s1, s2]


def _tree_sum(parts: list, fan_in: int = 8):
    """Delayed sum of delayed arrays, fan_in at a time."""
    if not parts:
        raise ValueError("sufficient_statistics: the movie has no frames")
    while len(parts) > 1:
        parts = [dask.delayed(_add)(*parts[i:i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts[0]


def _add(*arrays: np.ndarray) -> np.ndarray:
    total = arrays[0].copy()
    for a in arrays[1:]:
        total += a
    return total


def _unpack(flat, plans, cols, n_pix):
    products, pos = [], 0
    for plan, c in zip(plans, cols):
        size = plan.pixels.size * c.size
        products.append(flat[pos:pos + size].reshape(plan.pixels.size, c.size))
        pos += size
    return products, flat[pos:pos + n_pix], flat[pos + n_pix:pos + 2 * n_pix]


# ----------------------------------------------------------------------------- 7e update


def update_footprints(YC: BoxProducts, CC: np.ndarray, A_init: np.ndarray, noise: np.ndarray, *,
                      b: np.ndarray | None = None, penalty_scale: float = 1.0,
                      min_penalty: float = 0.1, max_penalty: float = 10.0, min_std: float = 0.0,
                      pixel_std: np.ndarray | None = None, max_iter: int = 500,
                      tol: float = 1e-4, n_sweeps: int = 1,
                      on_plan: Callable[[int, int], None] | None = None) -> list[BoxFootprints]:
    """New footprints of every plan's units (see the module docstring), one result per plan.

    ``A_init`` (n, H, W) current footprints (or a sparse (n, H*W) matrix): warm start, and the fixed values of units outside
    a cluster; ``noise`` (H, W) the 5a map; ``b`` (H, W) the fixed background (only with f in
    the statistics; None re-estimates it); ``pixel_std`` (H, W) defaults to the std from the
    statistics' pass. ``tol``: coordinate descent stops when no unit's change, in units of its
    fitted signal (``|da| ||c_u||``), exceeds ``tol`` times the largest fitted signal.
    ``on_plan(done, total)`` is called after every solved plan (progress, and a place for the
    caller to cancel by raising).
    """
    n, H, W = _check_update(YC, CC, A_init, noise, b, penalty_scale, min_penalty, max_penalty,
                            min_std, pixel_std, max_iter, tol, n_sweeps)
    std = YC.pixel_std if pixel_std is None else np.asarray(pixel_std, np.float32)
    sn = np.asarray(noise, np.float64).ravel()
    m = float(np.median(sn))
    pen = np.clip(penalty_scale * sn, min_penalty * m, max_penalty * m)
    ok_pixel = std.ravel() >= min_std
    bflat = None if b is None else np.asarray(b, np.float64).ravel()
    current = footprints_csr(A_init, (H, W), "update_footprints").tocsc()
    for sweep in range(int(n_sweeps)):
        if sweep:  # fixed units now take the previous sweep's values
            current = _results_csr(results, current).tocsc()
        results = []
        total = len(YC.plans) * int(n_sweeps)
        for plan, prod in zip(YC.plans, YC.products):
            results.append(_solve_plan(plan, prod, CC, current, pen, ok_pixel, bflat, YC,
                                       max_iter, tol))
            if on_plan is not None:
                on_plan(sweep * len(YC.plans) + len(results), total)
    return results


def _check_update(YC, CC, A_init, noise, b, penalty_scale, min_penalty, max_penalty, min_std,
                  pixel_std, max_iter, tol, n_sweeps) -> tuple[int, int, int]:
    H, W = YC.pixel_std.shape
    n = YC.n_units
    m = n + int(YC.has_background)
    if np.shape(CC) != (m, m):
        raise ValueError(f"update_footprints: CC must be ({m}, {m}) to match the statistics, got "
                         f"{np.shape(CC)}")
    if sp.issparse(A_init):
        if A_init.shape != (n, H * W):
            raise ValueError(f"update_footprints: sparse A_init must be {(n, H * W)}, got "
                             f"{A_init.shape}")
    elif np.shape(A_init) != (n, H, W):
        raise ValueError(f"update_footprints: A_init must be {(n, H, W)}, got {np.shape(A_init)}")
    for name, arr in (("noise", noise), ("pixel_std", pixel_std), ("b", b)):
        if arr is not None and np.shape(arr) != (H, W):
            raise ValueError(f"update_footprints: {name} must be ({H}, {W}), got {np.shape(arr)}")
    if b is not None and not YC.has_background:
        raise ValueError("update_footprints: b was given but the statistics have no background "
                         "trace f; pass f to sufficient_statistics")
    if not np.all(np.isfinite(noise)) or np.min(noise) < 0:
        raise ValueError("update_footprints: noise must be finite and >= 0")
    for name, v in (("penalty_scale", penalty_scale), ("min_penalty", min_penalty),
                    ("max_penalty", max_penalty), ("min_std", min_std)):
        if not v >= 0:
            raise ValueError(f"update_footprints: {name} must be >= 0, got {v!r}")
    if min_penalty > max_penalty:
        raise ValueError(f"update_footprints: min_penalty ({min_penalty}) must not exceed "
                         f"max_penalty ({max_penalty})")
    for name, v in (("max_iter", max_iter), ("n_sweeps", n_sweeps)):
        if int(v) != v or v < 1:
            raise ValueError(f"update_footprints: {name} must be an integer >= 1, got {v!r}")
    if not tol > 0:
        raise ValueError(f"update_footprints: tol must be > 0, got {tol!r}")
    return n, H, W


def _solve_plan(plan, prod, CC, current, pen, ok_pixel, bflat, YC, max_iter, tol) -> BoxFootprints:
    """Build and solve the LASSO of one plan's pixels."""
    n, k, P = YC.n_units, plan.units.size, plan.pixels.size
    units = plan.units
    refit_bg = YC.has_background and bflat is None
    # current footprints on these pixels; units outside the cluster are fixed at these values
    sub = current[:, plan.pixels].tocsr()  # (n, P); `current` is CSC: cheap column slicing
    a0 = sub[units].toarray().T.astype(np.float64)
    keep = np.ones(n, np.float32)
    keep[units] = 0.0
    fixed = sp.diags(keep) @ sub
    R = np.array(prod[:, :k], np.float64)
    if fixed.nnz:
        R -= np.asarray(fixed.T @ CC[:n, units])
    if YC.has_background and not refit_bg:
        R -= bflat[plan.pixels][:, None] * CC[n, units][None, :]
    mask = plan.support & ok_pixel[plan.pixels][:, None]
    G = CC[np.ix_(units, units)]
    lam = pen[plan.pixels][:, None] * np.sqrt(np.maximum(np.diag(G), 0.0))[None, :]
    if refit_bg:  # b_p as one more unknown: unpenalised, non-negative, at every plan pixel
        idx = np.concatenate([units, [n]])
        G = CC[np.ix_(idx, idx)]
        R = np.column_stack([R, prod[:, k]])
        lam = np.column_stack([lam, np.zeros(P)])
        mask = np.column_stack([mask, np.ones(P, bool)])
        a0 = np.column_stack([a0, np.zeros(P)])
    a = nonneg_lasso_cd(G, R, lam, mask, a0, max_iter=max_iter, tol=tol)
    bg = a[:, k].astype(np.float32) if refit_bg else None
    return BoxFootprints(plan.box, units, plan.pixels, a[:, :k].T.astype(np.float32), bg)


def nonneg_lasso_cd(G: np.ndarray, R: np.ndarray, lam: np.ndarray, mask: np.ndarray,
                    a0: np.ndarray, *, max_iter: int = 500, tol: float = 1e-4) -> np.ndarray:
    """Solve, for every row p at once, ``min 0.5 a^T G a - a^T R_p + lam_p . a``, ``a >= 0``,
    ``a_j = 0`` where ``mask[p, j]`` is False. Cyclic coordinate descent (exact per coordinate,
    monotone); ``G`` (k, k) positive semi-definite, others (P, k). Returns (P, k) float64.

    All rows sweep together and stop together: after the first sweep in which no coordinate
    moved by more than ``tol`` times the largest scaled value (``|a_pj| sqrt(G_jj)``)."""
    a = np.where(mask, np.maximum(a0, 0.0), 0.0)
    P, k = a.shape
    if P == 0 or k == 0:
        return a
    G = np.ascontiguousarray(G, np.float64)
    d = np.diag(G).copy()
    scale = np.sqrt(np.maximum(d, 0.0))
    grad = a @ G  # (P, k) = G a_p for every pixel, kept up to date
    _lasso_sweeps(G, d, scale, np.ascontiguousarray(R, np.float64),
                  np.ascontiguousarray(lam, np.float64), np.ascontiguousarray(mask, np.bool_),
                  a, grad, int(max_iter), float(tol))
    return a


@njit(cache=True, nogil=True)
def _lasso_sweeps(G, d, scale, R, lam, mask, a, grad, max_iter, tol):  # pragma: no cover - numba
    # Compiled loops; the rows are independent within a sweep, so visiting them row by row
    # gives the same values, bit for bit, as updating one coordinate of all rows at a time
    # (the vectorised form spent 70 % of step 7e in numpy's indexing).
    P, k = a.shape
    for _ in range(max_iter):
        biggest = 0.0
        for p in range(P):
            for j in range(k):
                if d[j] <= 0:
                    continue
                old = a[p, j]
                new = 0.0
                if mask[p, j]:
                    new = max((R[p, j] - lam[p, j] - grad[p, j] + d[j] * old) / d[j], 0.0)
                delta = new - old
                if delta != 0.0:
                    a[p, j] = new
                    for i in range(k):
                        grad[p, i] += delta * G[j, i]
                    step = abs(delta) * scale[j]
                    if step > biggest:
                        biggest = step
        size = 0.0
        for p in range(P):
            for j in range(k):
                v = abs(a[p, j]) * scale[j]
                if v > size:
                    size = v
        if biggest <= tol * max(size, 1e-300):
            break


def _results_csr(results: list[BoxFootprints], previous: sp.csr_matrix) -> sp.csr_matrix:
    """(n, H*W) CSR of the new footprints; units no plan covers keep their previous values."""
    n, npix = previous.shape
    rows, cols, vals = [], [], []
    solved = np.zeros(n, bool)
    for r in results:
        solved[r.units] = True
        uu, pp = np.nonzero(r.values)
        rows.append(r.units[uu])
        cols.append(r.pixels[pp])
        vals.append(r.values[uu, pp])
    keep = previous.tocsr()[np.flatnonzero(~solved)].tocoo()
    rows.append(np.flatnonzero(~solved)[keep.row])
    cols.append(keep.col)
    vals.append(keep.data)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, npix), dtype=np.float32)


def results_csr(results: list[BoxFootprints], n_units: int, shape: tuple[int, int]) -> sp.csr_matrix:
    """(n_units, H*W) float32 CSR of every plan's new values (units no plan covers: empty
    rows); where plans overlap, the later plan's values win, as successive dense assignments
    ``out[r.units[:, None], r.pixels] = r.values`` would give."""
    for r in results:
        if r.units.size and (r.units.min() < 0 or r.units.max() >= n_units):
            raise ValueError(f"results_csr: a result refers to units outside 0..{n_units - 1}")
    return scatter_csr([r.units for r in results], [r.pixels for r in results],
                       [r.values for r in results], (int(n_units), int(shape[0] * shape[1])))


# ----------------------------------------------------------------------------- 7e smoothness


def unit_windows(A: np.ndarray | sp.spmatrix, pad: int,
                 shape: tuple[int, int] | None = None) -> list[BoxPlan]:
    """One single-unit `BoxPlan` per unit: the bounding box of its support (``A > 0``) grown by
    ``pad`` px and clipped to the frame, every pixel of the box (an empty footprint gets an
    empty plan). Streamed with the 7e statistics, they give each unit's covariance map.
    ``A`` dense (n, H, W), or sparse (n, H*W) with ``shape`` = (H, W)."""
    if not sp.issparse(A) and np.ndim(A) != 3:
        raise ValueError(f"unit_windows: A must be (unit, height, width), got {np.shape(A)}")
    if int(pad) != pad or pad < 0:
        raise ValueError(f"unit_windows: pad must be an integer >= 0 (pixels), got {pad!r}")
    A, (H, W) = as_csr(A, shape, "unit_windows")
    out = []
    for u in range(A.shape[0]):
        lo, hi = A.indptr[u], A.indptr[u + 1]
        ys, xs = np.divmod(A.indices[lo:hi][A.data[lo:hi] > 0], W)
        if ys.size == 0:
            out.append(BoxPlan((0, 0, 0, 0), np.array([u], np.int64), np.zeros(0, np.int64),
                               np.zeros((0, 1), bool)))
            continue
        y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, H)
        x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, W)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        pixels = (yy * W + xx).ravel().astype(np.int64)
        out.append(BoxPlan((y0, y1, x0, x1), np.array([u], np.int64), pixels,
                           np.ones((pixels.size, 1), bool)))
    return out


def covariance_maps(products: list[np.ndarray], windows: list[BoxPlan], pixel_mean: np.ndarray,
                    C: np.ndarray, n_frames: int) -> list[np.ndarray]:
    """Per window, the (h, w) covariance over the frames of each pixel with the unit's trace,
    ``mean_t(Y_pt c_t) - mean_t(Y_pt) mean_t(c_t)``: what the data look like under the unit
    while it is active, tails included, from the streamed products (first column)."""
    mean = np.asarray(pixel_mean, np.float64).ravel()
    cmean = np.asarray(C, np.float64).mean(axis=1)
    out = []
    for prod, w in zip(products, windows):
        y0, y1, x0, x1 = w.box
        u = int(w.units[0])
        cov = prod[:, 0] / n_frames - mean[w.pixels] * cmean[u]
        out.append(cov.reshape(y1 - y0, x1 - x0))
    return out


def smoothing_scores(A: np.ndarray | sp.spmatrix, windows: list[BoxPlan],
                     cov_maps: list[np.ndarray], sigmas: list[float],
                     shape: tuple[int, int] | None = None) -> np.ndarray:
    """(n_units, n_sigmas) Pearson correlation, over each unit's window, between its footprint
    smoothed with a Gaussian of each sigma (0: unsmoothed) and its covariance map (NaN for an
    empty footprint or a flat map). The footprint is smoothed on a crop padded by 4 sigma, so
    the window sees the same values as a smoothing of the whole frame. ``A`` dense (n, H, W),
    or sparse (n, H*W) with ``shape`` = (H, W) (one unit is made dense at a time)."""
    if sp.issparse(A):
        A, shp = as_csr(A, shape, "smoothing_scores")
        n = A.shape[0]
        unit = lambda u: dense_unit(A, u, shp)  # noqa: E731
    else:
        A = np.asarray(A, np.float32)
        n = A.shape[0]
        unit = A.__getitem__
    if len(windows) != n or len(cov_maps) != n:
        raise ValueError(f"smoothing_scores: {len(windows)} windows and {len(cov_maps)} maps "
                         f"for {n} units")
    if any(not s >= 0 for s in sigmas):
        raise ValueError(f"smoothing_scores: sigmas must be >= 0, got {list(sigmas)}")
    out = np.full((n, len(sigmas)), np.nan)
    for u, (w, cov) in enumerate(zip(windows, cov_maps)):
        if w.pixels.size == 0:
            continue
        a = unit(u)
        if not a.max() > 0:
            continue
        for k, s in enumerate(sigmas):
            out[u, k] = _pearson(_smoothed_window(a, w.box, float(s)).ravel(), cov.ravel())
    return out


def select_smoothing(scores: np.ndarray, sigmas: list[float]) -> tuple[float, np.ndarray, int]:
    """The sigma with the highest median correlation over the clearest units (ties: the
    smallest sigma), those medians and the number of units they are taken over.

    The clearest units are those whose footprint, as given (``sigmas[0]`` must be 0),
    correlates with their covariance map at least as well as the median unit does: the
    smoothness is a property of the cells, and noise units and fragments, whose maps are
    mostly noise, would otherwise pull it towards whatever smooths noise best. Returns 0 when
    no unit could be scored."""
    scores = np.asarray(scores, np.float64)
    if len(sigmas) == 0 or sigmas[0] != 0:
        raise ValueError(f"select_smoothing: the first candidate must be 0 (no smoothing), got "
                         f"{list(sigmas)}")
    ok = np.isfinite(scores).all(axis=1)
    if not ok.any():
        return 0.0, np.full(len(sigmas), np.nan), 0
    clear = ok & (np.nan_to_num(scores[:, 0], nan=-np.inf) >= np.median(scores[ok, 0]))
    med = np.median(scores[clear], axis=0)
    return float(sigmas[int(np.argmax(med))]), med, int(clear.sum())


# candidate smoothing widths, in cell diameters (0: none), and each unit's window margin
SMOOTHING_D = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.3, 0.35, 0.4)
WINDOW_PAD_D = 0.5


def measure_smoothness(A: np.ndarray | sp.spmatrix, windows: list[BoxPlan],
                       products: list[np.ndarray], pixel_mean: np.ndarray, C: np.ndarray,
                       n_frames: int, d: float, shape: tuple[int, int] | None = None,
                       per_unit: bool = False) -> dict:
    """The smoothing scale that makes footprints agree best with the data, as a report.

    Footprints from a per-pixel update or a segmentation are cut where their support or a
    neighbour ends, while in one-photon data a footprint is as smooth as the optics blur it.
    Each unit's covariance map (`covariance_maps` of the streamed ``products`` of its
    ``windows``, from `unit_windows` with a margin of ``WINDOW_PAD_D`` x d) is compared with
    its footprint smoothed by Gaussians of ``SMOOTHING_D`` x d; the sigma with the highest
    median correlation over the clearest units (`select_smoothing`) is the data's smoothness
    scale (0 when smoothing does not help, as for sharp, well-sampled cells). ``per_unit``
    adds ``unit_sigma_px``, each unit's own scale (`unit_smoothing`)."""
    sigmas = [round(f * d, 2) for f in SMOOTHING_D]
    maps = covariance_maps(products, windows, pixel_mean, C, n_frames)
    scores = smoothing_scores(A, windows, maps, sigmas, shape=shape)
    sigma, medians, n_used = select_smoothing(scores, sigmas)
    out = {"sigma_px": sigma, "sigma_diameters": round(sigma / d, 3) if d > 0 else None,
           "candidates_px": sigmas,
           "median_correlation": [None if not np.isfinite(v) else round(float(v), 4)
                                  for v in medians],
           "units_scored": int(np.isfinite(scores).all(axis=1).sum()),
           "units_used": n_used,
           "window_pad_px": int(round(WINDOW_PAD_D * d))}
    if per_unit:
        out["unit_sigma_px"] = unit_smoothing(scores, sigmas, sigma).tolist()
    return out


def unit_smoothing(scores: np.ndarray, sigmas: list[float], cap: float) -> np.ndarray:
    """Each unit's own smoothing scale: the candidate its covariance map prefers, at most
    ``cap`` (the population's scale from `select_smoothing`); ``cap`` for a unit that could
    not be scored.

    One scale for all fits a population of cells; a set of seeds also holds fragments and
    background patches whose maps are broad, and where those are many they pull the common
    scale past what the cells want. The cap keeps a noisy map from blowing a footprint up."""
    scores = np.asarray(scores, np.float64)
    sig = np.asarray(sigmas, np.float64)
    out = np.full(scores.shape[0], float(cap))
    ok = np.isfinite(scores).all(axis=1)
    if ok.any():
        out[ok] = np.minimum(sig[np.argmax(scores[ok], axis=1)], cap)
    return out


def _smoothed_window(a: np.ndarray, box: Box, sigma: float) -> np.ndarray:
    y0, y1, x0, x1 = box
    if sigma <= 0:
        return a[y0:y1, x0:x1].astype(np.float64)
    H, W = a.shape
    pad = int(np.ceil(4 * sigma))
    Y0, Y1, X0, X1 = max(y0 - pad, 0), min(y1 + pad, H), max(x0 - pad, 0), min(x1 + pad, W)
    sm = ndi.gaussian_filter(a[Y0:Y1, X0:X1].astype(np.float64), sigma, mode="constant")
    return sm[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / den) if den > 0 else float("nan")


# ----------------------------------------------------------------------------- 7f merge


def merge_boxes(results: list[BoxFootprints], shape: tuple[int, int], n_units: int, *,
                sigma: float | None = None) -> MergedFootprints:
    """Assemble per-box results into (m, H, W) footprints of the non-empty units.

    A unit solved in several boxes takes, per pixel, the value from the box whose centre is
    nearest (module docstring). ``sigma`` > 0 also returns a Gaussian-smoothed copy.
    """
    H, W = (int(v) for v in shape)
    if sigma is not None and not sigma > 0:
        raise ValueError(f"merge_boxes: sigma must be > 0 or None, got {sigma!r}")
    A = np.zeros((int(n_units), H * W), np.float32)
    best: dict[int, np.ndarray] = {}  # per repeated unit: distance to the box that set each pixel
    repeated = _repeated_units(results)
    for r in results:
        if r.units.size and (r.units.min() < 0 or r.units.max() >= n_units):
            raise ValueError(f"merge_boxes: a result refers to units outside 0..{n_units - 1}")
        dist = _centre_distance(r, W) if repeated.size else None
        for row, u in enumerate(r.units):
            if u not in repeated:
                A[u, r.pixels] = r.values[row]
                continue
            seen = best.setdefault(int(u), np.full(H * W, np.inf, np.float32))
            closer = dist < seen[r.pixels]
            A[u, r.pixels[closer]] = r.values[row, closer]
            seen[r.pixels[closer]] = dist[closer]
    kept = np.flatnonzero(A.max(axis=1) > 0) if n_units else np.zeros(0, np.int64)
    # all kept (the usual case): a view, not a second dense copy
    raw = (A if kept.size == A.shape[0] else A[kept]).reshape(kept.size, H, W)
    smoothed = None if sigma is None else _smooth(raw, float(sigma))
    return MergedFootprints(raw, smoothed, kept.astype(np.int64))


def _repeated_units(results: list[BoxFootprints]) -> np.ndarray:
    """Units that appear in more than one result."""
    units = np.concatenate([r.units for r in results]) if results else np.zeros(0, np.int64)
    values, counts = np.unique(units, return_counts=True)
    return values[counts > 1]


def _centre_distance(r: BoxFootprints, W: int) -> np.ndarray:
    """Distance of each of the result's pixels to the centre of its box."""
    y0, y1, x0, x1 = r.box
    yy, xx = np.divmod(r.pixels, W)
    return np.hypot(yy - (y0 + y1 - 1) / 2, xx - (x0 + x1 - 1) / 2).astype(np.float32)


def _smooth(A: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each footprint on its padded bounding box only (fast)."""
    out = np.zeros_like(A)
    pad = int(np.ceil(4 * sigma))
    H, W = A.shape[1:]
    for u, a in enumerate(A):
        ys, xs = np.nonzero(a)
        y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, H)
        x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, W)
        out[u, y0:y1, x0:x1] = ndi.gaussian_filter(a[y0:y1, x0:x1], sigma, mode="constant")
    return out
