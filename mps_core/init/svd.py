"""Step 3b numerics: out-of-core truncated SVD of a movie (frames x pixels).

Algorithm: randomised subspace iteration (Halko, Martinsson & Tropp 2011, SIAM Review 53(2),
algorithms 4.4 + 5.1) on the *uncentred* matrix ``X`` (T frames x P pixels), with
``l = k + n_oversample`` directions:

1. ``Q = qr(X @ Omega)`` with ``Omega`` a seeded standard-normal (P x l) matrix;
2. ``n_iter`` times: ``Z = qr(X.T @ Q)``, ``Q = qr(X @ Z)`` (QR re-orthonormalisation after
   every product, so the small singular directions are not swamped by the large ones);
3. ``B = Q.T @ X`` (l x P), ``B = Ub S Vt`` (SVD of the small factor, through its l x l
   Gram matrix), ``U = Q Ub``; the top ``k`` triplets are returned.

Every product with ``X`` is one streaming pass over frame chunks, ``2 n_iter + 2`` passes in
all. ``X @ M`` is computed chunk by chunk (rows of the result). ``X.T @ Q`` is a sum of
per-chunk products ``X_c.T @ Q_c``: chunks are dealt to a few chains (one per core, at most
4), each adding its products into one accumulator in place (BLAS ``beta=1``), so only a few
(l x P) arrays exist at a time (a tree of per-chunk products held many more). Peak memory is therefore about ``chunks in flight * P +
~6 * P * l + T * l`` floats, whatever the length of the movie. Products and the QR of the
(P x l) bases run in float32 (the movie's precision; Householder QR is backward stable and
the re-orthonormalisation after every product keeps the iteration well conditioned); the
(T x l) QR and the final small SVD (via the l x l Gram matrix of ``B``, accumulated in
float64 over pixel blocks) run in float64.

``frame_subsample = s > 1`` fits the spatial subspace on every s-th frame (``X[::s]``), then
one more pass over *all* frames computes ``Y = X @ Vt.T`` and a Rayleigh-Ritz step
(``Y = U' S' R^T``, ``U = U'``, ``S = S'``, ``Vt = R^T Vt``), so the temporal components
cover every frame and ``S`` refers to the whole movie.

With ``fit_store`` the subsample is first written somewhere compact and read back from there
(:func:`store_fit_rows` to a scratch zarr): every pass otherwise decompresses the whole movie
to use one frame in ``s`` (on a 10-minute recording, 3b read 12,000 frames 13 times).

``total_variance`` is the total sum of squares of the uncentred movie, ``||X||_F^2 =
sum of all squared singular values`` (over all frames), computed during a pass. Component i
therefore explains ``S[i]**2 / total_variance`` of the movie (the uncentred convention
matches the SVD: component 0 carries the mean/background).

Signs are fixed so the entry of largest magnitude of each row of ``Vt`` is positive.
"""

from __future__ import annotations

from typing import Any, Callable

import dask
import dask.array as da
import numpy as np
import scipy.linalg
from scipy.linalg import blas

from ..execution import accumulator_chains

__all__ = ["randomized_svd", "store_fit_rows"]

ComputeFn = Callable[..., tuple]
ProgressFn = Callable[[float, str], None]

_PIX_BLOCK = 1 << 13  # pixels per block when forming the small Gram matrix in float64


def randomized_svd(movie: Any, k: int, *, n_oversample: int = 10, n_iter: int = 5, frame_subsample: int = 1,
                   seed: int = 0, compute: ComputeFn | None = None, progress: ProgressFn | None = None,
                   fit_store: Callable[[da.Array], da.Array] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Top-``k`` SVD of ``movie`` (T, H, W) or (T, P), streamed over frame chunks.

    Returns ``U`` (T, k) float32, ``S`` (k,) float64, ``Vt`` (k, P) float32 with ``P = H * W``
    and the movie's total sum of squares (module docstring). ``compute(*dask_objs) -> tuple``
    materialises each pass (default ``dask.compute``); ``progress(fraction, message)`` is
    called after each pass. ``fit_store(rows) -> rows`` materialises the subsampled rows once
    (one more pass) when ``frame_subsample > 1``.
    """
    X = _as_frames(movie)
    _validate(k, n_oversample, n_iter, frame_subsample, seed, X.shape)
    compute = compute or dask.compute
    s = int(frame_subsample)
    fit = X if s == 1 else X[::s].rechunk({0: max(X.chunks[0])})
    cached = fit_store is not None and s > 1
    n_passes = 2 * int(n_iter) + 2 + (s > 1) + cached
    tracker = _Passes(progress, n_passes)
    if cached:
        fit = fit_store(fit)
        tracker.done("subsample stored")

    T_fit, P = fit.shape[0], int(np.prod(fit.shape[1:]))
    l = min(int(k) + int(n_oversample), T_fit, P)
    rng = np.random.default_rng(seed)
    omega_t = rng.standard_normal((l, P), dtype=np.float32)  # Omega.T, (l, P) for fast BLAS

    y, ss = _rows_times(fit, omega_t, compute, want_ss=True)
    del omega_t  # each (l, P) array is 160 MB at 608 x 608 px: none is kept past its use
    tracker.done("range finder")
    q = _orth(y)
    for i in range(int(n_iter)):
        z_t = _orth(_tmul(fit, q, compute).T).T  # (l, P)
        tracker.done(f"power iteration {i + 1}/{n_iter}")
        q = _orth(_rows_times(fit, z_t, compute)[0])
        del z_t
        tracker.done(f"power iteration {i + 1}/{n_iter}")
    b = _tmul(fit, q, compute)  # (l, P) = Q.T X
    tracker.done("projection")
    ub, S, Vt = _small_svd(b)
    del b
    U = q.astype(np.float64) @ ub
    U, S, Vt = U[:, :k], S[:k], Vt[:k]

    if s > 1:  # Rayleigh-Ritz on all frames with the subspace fitted on the subsample
        y_all, ss = _rows_times(X, Vt.astype(np.float32), compute, want_ss=True)
        ur, S, rt = np.linalg.svd(y_all.astype(np.float64), full_matrices=False)
        U, Vt = ur, rt @ Vt
        tracker.done("temporal components on all frames")
    U, Vt = _fix_signs(U, Vt)
    return U.astype(np.float32), S.astype(np.float64), Vt.astype(np.float32), float(ss)


def store_fit_rows(rows: da.Array, folder, compute: ComputeFn | None = None) -> da.Array:
    """Write ``rows`` (T, ...) float32 to a zarr array in ``folder`` (fast lz4 compression,
    one chunk per frame chunk) and return a dask array reading it."""
    import zarr
    from zarr.codecs import BloscCodec

    rows = rows.astype(np.float32)
    t = max(rows.chunks[0])
    z = zarr.create_array(str(folder), shape=rows.shape, dtype=np.float32,
                          chunks=(t, *rows.shape[1:]),
                          compressors=[BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")])
    (compute or dask.compute)(da.store(rows.rechunk({0: t}), z, lock=False, compute=False))
    return da.from_zarr(z)


# ----------------------------------------------------------------------------- input


def _as_frames(movie: Any, where: str = "randomized_svd") -> da.Array:
    """Dask (T, ...) array with whole frames per chunk."""
    data = getattr(movie, "data", movie) if hasattr(movie, "dims") else movie  # xarray -> dask
    if isinstance(data, np.ndarray):
        data = da.from_array(data, chunks=(max(1, min(len(data), 256)),) + data.shape[1:])
    if not isinstance(data, da.Array) or data.ndim not in (2, 3):
        raise ValueError(f"{where}: movie must be a (frame, height, width) or (frame, pixel) "
                         f"dask array, got {type(movie).__name__} of shape {getattr(movie, 'shape', None)}")
    return data.rechunk({i: -1 for i in range(1, data.ndim)})


def _validate(k, n_oversample, n_iter, frame_subsample, seed, shape) -> None:
    T, P = shape[0], int(np.prod(shape[1:]))
    for name, val, lo in (("n_oversample", n_oversample, 0), ("n_iter", n_iter, 0),
                          ("frame_subsample", frame_subsample, 1), ("seed", seed, 0)):
        if int(val) != val or val < lo:
            raise ValueError(f"randomized_svd: {name} must be an integer >= {lo}, got {val!r}")
    t_fit = -(-T // int(frame_subsample))
    if int(k) != k or not 1 <= k <= min(t_fit, P):
        raise ValueError(f"randomized_svd: k must be an integer in [1, {min(t_fit, P)}] (frames used "
                         f"{t_fit}, pixels {P}), got {k!r}")


class _Passes:
    """Reports pass i/n to the caller's progress callback."""

    def __init__(self, progress: ProgressFn | None, total: int):
        self.progress, self.total, self.count = progress, total, 0

    def done(self, what: str) -> None:
        self.count += 1
        if self.progress is not None:
            self.progress(self.count / self.total, f"randomised SVD: pass {self.count}/{self.total} ({what})")


# ----------------------------------------------------------------------------- streamed products


def _block2d(block: np.ndarray) -> np.ndarray:
    """A chunk of frames as a C-contiguous float32 (frames, pixels) matrix."""
    return np.ascontiguousarray(block.reshape(block.shape[0], -1), dtype=np.float32)


def _rows_block(block: np.ndarray, m_t: np.ndarray, want_ss: bool) -> tuple[np.ndarray, float]:
    x = _block2d(block)
    # (l, P) @ (P, c): the fast BLAS layout for a long inner dimension
    y = (m_t @ x.T).T.astype(np.float64)
    ss = float(np.einsum("ij,ij->", x, x, dtype=np.float64)) if want_ss else 0.0
    return y, ss


def _rows_times(X: da.Array, m_t: np.ndarray, compute: ComputeFn,
                want_ss: bool = False) -> tuple[np.ndarray, float]:
    """``X @ m_t.T`` (T, l) float64 in one pass, and optionally ``sum(X**2)``."""
    m_key = dask.delayed(m_t, pure=True)  # one graph key shared by every chunk task
    parts = [dask.delayed(_rows_block, pure=True)(b, m_key, want_ss) for b in _blocks(X)]
    out = _unwrap(compute(parts))
    y = np.concatenate([p[0] for p in out], axis=0)
    return y, sum(p[1] for p in out)


def _chain_start(block: np.ndarray, q_c: np.ndarray) -> np.ndarray:
    return q_c.T @ _block2d(block)  # (l, c) @ (c, P) -> (l, P)


def _chain_step(acc: np.ndarray, block: np.ndarray, q_c: np.ndarray) -> np.ndarray:
    """``acc += q_c.T @ block`` in place (BLAS beta=1: no (l, P) temporary)."""
    x = _block2d(block)
    # Fortran view: acc.T (P, l) += x.T (P, c) @ q_c (c, l)
    out = blas.sgemm(1.0, x.T, q_c, beta=1.0, c=acc.T, overwrite_c=True)
    if not np.shares_memory(out, acc):  # BLAS had to copy (unexpected layout): keep the result
        acc[...] = out.T
    return acc


def _add_inplace(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a += b  # each partial sum is used once, so it can be reused for the total
    return a


def _tmul(X: da.Array, q: np.ndarray, compute: ComputeFn) -> np.ndarray:
    """``(X.T @ q).T`` (l, P) float32 in one pass.

    Chunks are dealt round-robin to a few chains; each chain task adds its chunk's product
    to the chain's accumulator in place, so at most ``n_chains`` (l, P) arrays exist at a time
    (a tree of per-chunk products would hold many more); the chains are summed at the end.
    """
    q32 = np.asarray(q, np.float32)
    bounds = np.cumsum((0,) + X.chunks[0])
    blocks = _blocks(X)
    n_chains = min(len(blocks), accumulator_chains())
    chains: list = [None] * n_chains
    for i, b in enumerate(blocks):
        q_c = np.ascontiguousarray(q32[bounds[i]:bounds[i + 1]])
        j = i % n_chains
        chains[j] = (dask.delayed(_chain_start, pure=True)(b, q_c) if chains[j] is None
                     else dask.delayed(_chain_step, pure=True)(chains[j], b, q_c))
    total = _tree(chains, _add_inplace)
    return np.asarray(_unwrap(compute(total)), np.float32)


def _tree(parts: list, add: Callable) -> Any:
    """Pairwise delayed reduction of a list of delayed objects."""
    while len(parts) > 1:
        pairs = [dask.delayed(add)(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def _blocks(X: da.Array) -> list:
    """One delayed numpy block per frame chunk (chunks hold whole frames)."""
    return list(X.to_delayed().reshape(-1))


def _unwrap(out: Any) -> Any:
    """Undo the 1-tuple that ``compute(obj)`` returns."""
    return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out


# ----------------------------------------------------------------------------- small factorisations


def _orth(a: np.ndarray) -> np.ndarray:
    """Orthonormal basis (same shape) of the columns of a tall matrix, float32.

    Householder QR is backward stable, so float32 is enough for the big (P, l) bases (the
    basis only has to span the right subspace); float64 inputs stay float64 inside."""
    dtype = np.float32 if np.asarray(a).dtype == np.float32 else np.float64
    # callers pass temporaries, so LAPACK may work in their memory (no extra (P, l) copy)
    q, _ = scipy.linalg.qr(np.asarray(a, dtype, order="F"), mode="economic", overwrite_a=True,
                           check_finite=False)
    return q.astype(np.float32, copy=False)


def _small_svd(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD ``b = Ub S Vt`` of the wide (l, P) float32 matrix via its float64 Gram matrix.

    ``b b^T = Ub S^2 Ub^T`` (eigh), ``Vt = S^-1 Ub^T b``. The Gram matrix is accumulated in
    float64 over pixel blocks, so only (l, block) float64 copies are made; relative errors of
    small singular values are ~1e-16 (s_0 / s_i)^2, far below the float32 of the data."""
    l, P = b.shape
    gram = np.zeros((l, l))
    for j in range(0, P, _PIX_BLOCK):
        blk = np.asarray(b[:, j:j + _PIX_BLOCK], np.float64)
        gram += blk @ blk.T
    evals, ub = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1]
    evals, ub = np.maximum(evals[order], 0), ub[:, order]
    S = np.sqrt(evals)
    inv = np.divide(1.0, S, out=np.zeros_like(S), where=S > S[0] * 1e-12)
    vt = np.empty((l, P), np.float32)
    proj = (ub * inv).T  # (l, l)
    for j in range(0, P, _PIX_BLOCK):
        vt[:, j:j + _PIX_BLOCK] = proj @ np.asarray(b[:, j:j + _PIX_BLOCK], np.float64)
    return ub, S, vt


def _fix_signs(U: np.ndarray, Vt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic signs: the largest-|value| entry of each Vt row is positive."""
    idx = np.argmax(np.abs(Vt), axis=1)
    sign = np.sign(Vt[np.arange(len(Vt)), idx])
    sign[sign == 0] = 1
    return U * sign, Vt * sign[:, None]
