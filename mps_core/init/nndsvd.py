"""Step 3b numerics: non-negative double SVD (NNDSVD) of a truncated movie SVD.

Boutsidis & Gallopoulos (2008), "SVD based initialization: a head start for nonnegative
matrix factorization", Pattern Recognition 41(4). With the movie ``X ~ sum_i s_i u_i v_i^T``
(``u_i`` temporal, length T; ``v_i`` spatial, length P):

* component 0 (the background): ``sqrt(s_0) |v_0|`` and ``sqrt(s_0) |u_0|``. The leading
  singular pair of a non-negative matrix has entries of one sign (Perron-Frobenius), so the
  absolute value is exact for it;
* component i >= 1: split ``u_i = u+ - u-`` and ``v_i = v+ - v-`` into non-negative parts,
  ``m+ = ||u+|| ||v+||``, ``m- = ||u-|| ||v-||``; keep the dominant pair (``+`` if
  ``m+ >= m-``), ``h = sqrt(s_i m) u/||u||``, ``w = sqrt(s_i m) v/||v||``. Both factors of a
  rank-one term with mixed signs are replaced by the half that carries most of its energy.
  A component whose dominant pair is empty (m = 0) is all zeros (kept, so indices match the
  singular values).

Then, on the spatial components (each a (H, W) image):

* sparsity: values below ``sparsity_threshold * max`` of that component are set to 0;
* optional regularisation toward compact blobs, components 1.. only (the background is not a
  blob): Gaussian smoothing with ``regularisation_sigma`` px (``cv2.GaussianBlur``, borders
  reflected), then the same sparsity threshold again. Smoothing spreads isolated noise
  pixels below the threshold while a cell-sized blob survives, and it pulls the peak onto
  the blob's centre.

The temporal components are left as NNDSVD gives them (the later steps re-estimate them).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["nndsvd", "sparsify"]


def nndsvd(U: np.ndarray, S: np.ndarray, Vt: np.ndarray, *, sparsity_threshold: float = 0.05,
           spatial_shape: tuple[int, int] | None = None, regularisation_sigma: float | None = None,
           ) -> tuple[np.ndarray, np.ndarray]:
    """NNDSVD of ``U (T, k), S (k,), Vt (k, P)``: spatial ``W (k, H, W)`` and temporal
    ``Hm (k, T)``, both float32 and >= 0, component 0 the background (module docstring)."""
    U, S, Vt = _check(U, S, Vt)
    shape = _spatial_shape(spatial_shape, Vt.shape[1])
    if not (np.isfinite(sparsity_threshold) and 0 <= sparsity_threshold < 1):
        raise ValueError(f"nndsvd: sparsity_threshold must be in [0, 1), got {sparsity_threshold!r}")
    if regularisation_sigma is not None and not (np.isfinite(regularisation_sigma) and regularisation_sigma > 0):
        raise ValueError(f"nndsvd: regularisation_sigma must be None (off) or > 0 px, got {regularisation_sigma!r}")
    if regularisation_sigma is not None and len(shape) != 2:
        raise ValueError("nndsvd: regularisation_sigma needs spatial_shape=(H, W) to smooth the components")

    k = len(S)
    W = np.zeros((k, Vt.shape[1]), np.float32)
    Hm = np.zeros((k, U.shape[0]), np.float32)
    for i in range(k):  # float64 one row at a time: a float64 copy of Vt is 300 MB at 608 px
        Hm[i], W[i] = _pair(U[:, i], S[i], np.asarray(Vt[i], np.float64), background=(i == 0))
    W = W.reshape((k,) + shape)
    sparsify(W, sparsity_threshold)
    if regularisation_sigma is not None and k > 1:
        _regularise(W[1:], regularisation_sigma, sparsity_threshold)
    return W, Hm


def _check(U, S, Vt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    U, S, Vt = np.asarray(U, np.float64), np.asarray(S, np.float64), np.asarray(Vt)
    if U.ndim != 2 or Vt.ndim != 2 or S.ndim != 1 or not (U.shape[1] == len(S) == Vt.shape[0]):
        raise ValueError(f"nndsvd: need U (T, k), S (k,), Vt (k, P); got {U.shape}, {S.shape}, {Vt.shape}")
    if len(S) == 0 or np.any(S < 0) or not np.all(np.isfinite(S)):
        raise ValueError("nndsvd: S must hold k >= 1 finite non-negative singular values")
    return U, S, Vt


def _spatial_shape(spatial_shape, n_pixels: int) -> tuple[int, ...]:
    if spatial_shape is None:
        return (n_pixels,)
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 2 or shape[0] * shape[1] != n_pixels:
        raise ValueError(f"nndsvd: spatial_shape {spatial_shape} must be (H, W) with H*W = {n_pixels} pixels")
    return shape


def _pair(u: np.ndarray, s: float, v: np.ndarray, background: bool) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative (temporal, spatial) factors of the rank-one term ``s u v^T``."""
    if background:
        return np.sqrt(s) * np.abs(u), np.sqrt(s) * np.abs(v)
    up, un, vp, vn = np.maximum(u, 0), np.maximum(-u, 0), np.maximum(v, 0), np.maximum(-v, 0)
    nup, nun, nvp, nvn = (np.linalg.norm(a) for a in (up, un, vp, vn))
    mp, mn = nup * nvp, nun * nvn
    x, y, nx, ny, m = (up, vp, nup, nvp, mp) if mp >= mn else (un, vn, nun, nvn, mn)
    if m <= 0:
        return np.zeros_like(u), np.zeros_like(v)
    scale = np.sqrt(s * m)
    return scale * x / nx, scale * y / ny


def sparsify(W: np.ndarray, threshold: float) -> np.ndarray:
    """In place: zero the values of each component (axis 0) below ``threshold * its max``."""
    if threshold <= 0:
        return W
    cut = threshold * W.max(axis=tuple(range(1, W.ndim)), keepdims=True)
    W[W < cut] = 0
    return W


def _regularise(W: np.ndarray, sigma: float, threshold: float) -> np.ndarray:
    """In place: Gaussian-smooth each (H, W) component, then re-apply the sparsity threshold."""
    for i, w in enumerate(W):
        W[i] = cv2.GaussianBlur(w, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT_101)
    np.maximum(W, 0, out=W)
    return sparsify(W, threshold)
