"""Sparse non-negative deconvolution of calcium traces: the CNMF temporal update (steps 6d, 8b).

Objective (one unit; both solvers minimise exactly this, and ``Result.objective`` is it
evaluated on the returned solution by :func:`objective`)::

    minimise_{c, b0, c0}   0.5 * || y - c - b0 - c0 * d ||^2  +  lam * sum_t s_t
    subject to             s = G c >= 0

* ``y`` (T,) the unit's trace (YrA); ``c`` (T,) spike-driven calcium; ``s`` the spikes.
* ``G`` is the AR(p) operator ``s_t = c_t - g_1 c_{t-1} - g_2 c_{t-2}`` with ``c_{-1} = c_{-2}
  = 0``, so ``c = K s`` (``K`` = convolution with the impulse response) and, because the
  impulse response of a valid ``g`` is non-negative (:func:`mps_core.cnmf.ar.check_g`),
  ``c >= 0`` is implied and not imposed separately. ``s_0`` is a (penalised) spike at t = 0.
* ``b0`` is a free (unconstrained, may be negative) scalar baseline, optimised jointly when
  ``b0=None``, otherwise held at the value given.
* ``c0 >= 0`` scales ``d``, the AR impulse response (``d_t = g^t`` for AR(1)): the decay of
  calcium from before the recording. It is not penalised; ``c0=False`` fixes it to 0.
* ``lam >= 0`` is the L1 weight. :func:`deconvolve_batch` sets ``lam = sparse_penalty * sn``
  (or ``sparse_penalty`` alone when ``noise_scaled_penalty=False``).

Since ``c0 * d`` is exactly the calcium of a spike at t = 0, an unpenalised ``c0`` makes
``s_0 = 0`` at the optimum (any ``s_0`` is better spent as ``c0``); with ``c0=False`` the
spike at t = 0 is penalised like any other.

Zero threshold (post-processing, after the optimum is found): spikes ``s_t < zero_threshold
* sn`` are set to 0 and ``c`` is recomputed as ``K s``, so ``s = G c`` stays exact. ``b0``
and ``c0`` are kept as fitted. The returned objective is that of the thresholded solution.

Fast solver (:func:`deconvolve_fast`, exact for the objective above):

* With ``b0`` fixed, the problem in the full calcium ``u = c + c0 d`` is the Euclidean
  projection of ``y - b0 - lam * w`` onto the cone ``{u : G u >= 0}``, where ``w`` is the
  penalty's linear weight on ``u`` (``w = G^T 1`` without the t = 0 row when ``c0`` is free).
* AR(1): the projection is computed exactly in O(T) by pool-adjacent-violators (OASIS,
  Friedrich et al. 2017, written from the paper), with ``u_0 >= 0`` handled as a merge into
  a virtual zero pool. A free ``b0`` is found by Newton's method on ``f(b0) = min_u F(u,
  b0)``: ``f`` is convex with ``f'(b0) = -sum(y - b0 - u*)``, piecewise linear, and its
  slope on the current pools is exact, so a bracketed Newton iteration ends in a few O(T)
  projections at machine precision.
* AR(2) (OASIS's AR(2) variant is greedy and only approximate, so it is not used): the
  Lagrange dual of the problem, with multipliers ``nu >= 0`` of ``G u >= 0`` and the
  baseline as multiplier of one equality, gives the linear complementarity system
  ``s = Q nu + G y~ - b0 G 1 >= 0, nu >= 0, nu * s = 0`` (and ``(G 1)' nu = lam 1'w`` when
  ``b0`` is free), with ``Q = G G^T`` pentadiagonal and ``s`` the spikes. It is solved exactly
  by a primal-dual active-set method (semismooth Newton; each step one banded LDL^T solve,
  O(T); typically 8-20 steps). As ``Q`` is not an M-matrix that method can cycle (seen
  for near-double AR roots); then a Mehrotra interior point (also banded, O(T) per step)
  solves the same system and the active set it identifies is re-solved exactly.
  ``u = y~ - b0 + G^T nu``.

Reference solver (:func:`deconvolve_cvxpy`): the same objective in cvxpy, ECOS first, then
SCS when ECOS raises or reports any status other than "optimal".

Long traces (:func:`deconvolve_long`): solved whole when ``T <= chunk`` (or ``chunk == 0``),
else in overlapping chunks with one shared baseline; see that function. Traces are never
rescaled per chunk.

numba is required for speed (the kernels run as slow pure Python if it is missing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from .ar import check_g, estimate_ar, impulse_response, linear_filter, noise_psd

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the code importable
    def njit(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f

SolverName = Literal["auto", "fast", "cvxpy"]

#: Newton steps allowed for the baseline (each one O(T)); it usually stops after 2-6.
_MAX_BASELINE_STEPS = 100
#: cap of the AR(2) active-set iterations (usually 8-20) before the interior-point fallback.
_PDAS_MAX_ITER = 100


class FastSolverError(RuntimeError):
    """The fast solver did not reach the optimum (the caller may fall back to cvxpy)."""


class CvxpySolverError(RuntimeError):
    """No cvxpy solver in the order given produced a solution."""


@dataclass
class Result:
    """One unit's deconvolution. The model of ``y`` is ``b0 + c0 * d + c`` (see ``model``)."""

    c: np.ndarray            # (T,) spike-driven calcium, s = G c; excludes b0 and c0 * d
    s: np.ndarray            # (T,) spikes >= 0
    b0: float                # baseline
    c0: float                # amplitude of the initial decay d (impulse response)
    g: np.ndarray            # (p,) AR coefficients used
    sn: float                # noise level (zero_threshold is in these units)
    lam: float               # L1 weight used
    solver: str              # "fast", "ECOS", "SCS" (chunked: distinct solvers joined by "+")
    objective: float         # the module objective evaluated on (c, b0, c0)
    status: str = "optimal"  # "optimal" or "optimal_inaccurate"
    message: str = ""        # why a fallback happened, iterations, ...

    def model(self) -> np.ndarray:
        """Fitted trace ``b0 + c0 * d + c``."""
        return self.c + self.b0 + self.c0 * impulse_response(self.g, self.c.shape[0])


@dataclass
class BatchResult:
    """Deconvolution of N units; row i of every array belongs to unit i."""

    C: np.ndarray             # (N, T) calcium
    S: np.ndarray             # (N, T) spikes
    b0: np.ndarray            # (N,)
    c0: np.ndarray            # (N,)
    g: np.ndarray             # (N, p)
    sn: np.ndarray            # (N,)
    lam: np.ndarray           # (N,)
    solver: list[str]         # per unit; "failed" when every solver failed (C, S zero)
    objective: np.ndarray     # (N,), NaN for failed units
    status: list[str] = field(default_factory=list)
    message: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- shared helpers

def apply_g(c: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``s = G c``: s_t = c_t - g_1 c_{t-1} - g_2 c_{t-2}, zeros before t = 0."""
    return linear_filter(np.concatenate([[1.0], -g]), [1.0], c)


def convolve_ar(s: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``c = K s``: the AR recursion c_t = s_t + g_1 c_{t-1} + g_2 c_{t-2}."""
    return linear_filter([1.0], np.concatenate([[1.0], -g]), s)


def objective(y: np.ndarray, c: np.ndarray, b0: float, c0: float, g: np.ndarray,
              lam: float) -> float:
    """The module objective ``0.5 ||y - c - b0 - c0 d||^2 + lam * sum(G c)``."""
    y = np.asarray(y, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    r = y - c - b0 - c0 * impulse_response(g, y.shape[0])
    # sum of products, not BLAS: 1-D BLAS calls were erratic (up to ms) on a busy machine
    return float(0.5 * np.sum(r * r) + lam * apply_g(c, g).sum())


def penalty_weights(g: np.ndarray, T: int, free_c0: bool) -> np.ndarray:
    """``w`` with ``sum_{t >= t0} (G u)_t = w . u``; t0 = 1 when c0 is free (s_0 unpenalised)."""
    rows = np.ones(T)
    if free_c0:
        rows[0] = 0.0
    # w = G^T rows: w_j = rows_j - g_1 rows_{j+1} - g_2 rows_{j+2}
    w = rows.copy()
    for k, gk in enumerate(g, start=1):
        w[: T - k] -= gk * rows[k:]
    return w


def _validate(y, g, lam, zero_threshold, sn, where: str):
    """Checked float64 trace, AR coefficients, penalty, threshold and noise level."""
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 3:
        raise ValueError(f"{where}: y must be a (T,) trace with T >= 3, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: y contains NaN or Inf")
    gg = check_g(g, where=f"{where}: g")
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"{where}: lam must be a finite number >= 0, got {lam!r}")
    if not (np.isfinite(zero_threshold) and zero_threshold >= 0):
        raise ValueError(f"{where}: zero_threshold must be >= 0, got {zero_threshold!r}")
    if sn is None:
        sn = noise_psd(arr) if arr.shape[0] >= 4 else 0.0
    if not (np.isfinite(sn) and sn >= 0):
        raise ValueError(f"{where}: sn must be a finite number >= 0, got {sn!r}")
    return arr, gg, float(lam), float(zero_threshold), float(sn)


def _finish(y, u, g, lam, b0, free_c0, zero_threshold, sn, solver, status, message) -> Result:
    """Result from the full calcium ``u = c + c0 d``: split off c0, threshold, make s = G c."""
    s = np.maximum(apply_g(u, g), 0.0)  # clears round-off negatives of the solvers
    c0 = float(s[0]) if free_c0 else 0.0
    if free_c0:
        s[0] = 0.0
    if zero_threshold > 0:
        s[s < zero_threshold * sn] = 0.0
    c = convolve_ar(s, g)
    obj = objective(y, c, b0, c0, g, lam)
    if not (np.isfinite(obj) and np.isfinite(c).all()):
        raise FastSolverError(f"{solver}: non-finite solution")
    return Result(c=c, s=s, b0=float(b0), c0=c0, g=g.copy(), sn=sn, lam=lam, solver=solver,
                  objective=obj, status=status, message=message)


# --------------------------------------------------------------------------- numba kernels

@njit(cache=True, nogil=True)
def _oasis_ar1(yt, g):
    """Exact projection of ``yt`` onto {u : u_0 >= 0, u_t - g u_{t-1} >= 0} (OASIS, AR(1)).

    Pools are runs ``u_{t+k} = v g^k``; each new frame opens a pool, and while the spike at a
    pool's start would be negative it is merged into the previous pool (weighted mean along
    the decay). A first pool with v < 0 is clamped to 0 (merged into a virtual zero pool).
    Returns ``u`` and ``1' P 1`` (P: projection onto the final pools' span), used for the
    baseline's curvature.
    """
    T = yt.shape[0]
    v = np.empty(T)
    w = np.empty(T)
    start = np.empty(T, np.int64)
    ln = np.empty(T, np.int64)
    n = 0
    clamped = False
    for t in range(T):
        v[n] = yt[t]
        w[n] = 1.0
        start[n] = t
        ln[n] = 1
        n += 1
        while n > 1:
            i = n - 1
            gl = g ** ln[i - 1]
            prev_zero = i - 1 == 0 and clamped
            prev = 0.0 if prev_zero else v[i - 1]
            if v[i] >= gl * prev:
                break
            if not prev_zero:
                den = w[i - 1] + gl * gl * w[i]
                v[i - 1] = (w[i - 1] * v[i - 1] + gl * w[i] * v[i]) / den
                w[i - 1] = den
            ln[i - 1] += ln[i]
            n -= 1
        if n == 1 and not clamped and v[0] < 0.0:
            clamped = True
            v[0] = 0.0
    u = np.empty(T)
    one_p_one = 0.0
    for i in range(n):
        zero = i == 0 and clamped
        val = 0.0 if zero else v[i]
        x = 1.0
        total = 0.0
        for k in range(ln[i]):
            u[start[i] + k] = val * x
            total += x
            x *= g
        if not zero:
            one_p_one += total * total / w[i]
    return u, one_p_one


@njit(cache=True, nogil=True)
def _q_bands(g1, g2, T):
    """Bands of Q = G G^T: diagonal, first and second super-diagonals."""
    d0 = np.empty(T)
    d1 = np.zeros(max(T - 1, 0))
    d2 = np.zeros(max(T - 2, 0))
    for t in range(T):
        d0[t] = 1.0 + (g1 * g1 if t >= 1 else 0.0) + (g2 * g2 if t >= 2 else 0.0)
    for t in range(T - 1):
        d1[t] = -g1 + (g1 * g2 if t >= 1 else 0.0)
    for t in range(T - 2):
        d2[t] = -g2
    return d0, d1, d2


@njit(cache=True, nogil=True)
def _q_mul(d0, d1, d2, x):
    """Q x for the banded symmetric Q."""
    T = x.shape[0]
    out = d0 * x
    for t in range(T - 1):
        out[t] += d1[t] * x[t + 1]
        out[t + 1] += d1[t] * x[t]
    for t in range(T - 2):
        out[t] += d2[t] * x[t + 2]
        out[t + 2] += d2[t] * x[t]
    return out


@njit(cache=True, nogil=True)
def _ldl_factor(d0, d1, d2, idx, m):
    """Banded LDL^T of Q[idx, idx] (first m entries of idx, sorted): (D, l1, l2).

    A principal submatrix of a pentadiagonal matrix is pentadiagonal in compressed indices,
    so this is O(m).
    """
    D = np.empty(m)
    l1 = np.zeros(m)
    l2 = np.zeros(m)
    for i in range(m):
        a = idx[i]
        a1 = 0.0
        a2 = 0.0
        if i >= 1:
            gap = a - idx[i - 1]
            if gap == 1:
                a1 = d1[idx[i - 1]]
            elif gap == 2:
                a1 = d2[idx[i - 1]]
        if i >= 2 and a - idx[i - 2] == 2:
            a2 = d2[idx[i - 2]]
        diag = d0[a]
        if i >= 2:
            l2[i] = a2 / D[i - 2]
            diag -= l2[i] * l2[i] * D[i - 2]
        if i >= 1:
            num = a1 - (l2[i] * l1[i - 1] * D[i - 2] if i >= 2 else 0.0)
            l1[i] = num / D[i - 1]
            diag -= l1[i] * l1[i] * D[i - 1]
        D[i] = diag
    return D, l1, l2


@njit(cache=True, nogil=True)
def _ldl_solve(D, l1, l2, m, rhs):
    """Solve (L D L^T) z = rhs[:m] with the factors of :func:`_ldl_factor`."""
    z = np.empty(m)
    for i in range(m):
        acc = rhs[i]
        if i >= 1:
            acc -= l1[i] * z[i - 1]
        if i >= 2:
            acc -= l2[i] * z[i - 2]
        z[i] = acc
    for i in range(m):
        z[i] /= D[i]
    for i in range(m - 1, -1, -1):
        acc = z[i]
        if i + 1 < m:
            acc -= l1[i + 1] * z[i + 1]
        if i + 2 < m:
            acc -= l2[i + 2] * z[i + 2]
        z[i] = acc
    return z


@njit(cache=True, nogil=True)
def _pdas(r, a, beta, g1, g2, b, free_b, max_iter, start):
    """Primal-dual active-set (semismooth Newton) solution of the joint KKT system.

    KKT of the problem with the baseline: s = Q nu + r - b a >= 0, nu >= 0, nu * s = 0 and,
    when b is free, a' nu = beta (a = G 1). Each step guesses the set P where s = 0 (nu free)
    from min(nu, s) = 0, and solves Q_PP nu_P = b a_P - r_P (with b from the equality: two
    solves with one banded factorisation). When P repeats, the KKT conditions hold exactly.
    Not globally convergent for non-M-matrix Q, hence the cycle check, the iteration cap
    and the caller's fallback. Returns (nu, b, converged, iterations).
    """
    T = r.shape[0]
    d0, d1, d2 = _q_bands(g1, g2, T)
    nu = np.zeros(T)
    inP = start.copy()  # the initial guess of P
    idx = np.empty(T, np.int64)
    ra = np.empty(T)
    rr = np.empty(T)
    fewest = T + 1
    stall = 0
    for it in range(1, max_iter + 1):
        m = 0
        for t in range(T):
            if inP[t]:
                idx[m] = t
                ra[m] = a[t]
                rr[m] = r[t]
                m += 1
        D, l1, l2 = _ldl_factor(d0, d1, d2, idx, m)
        z1 = _ldl_solve(D, l1, l2, m, ra)
        z2 = _ldl_solve(D, l1, l2, m, rr)
        if free_b:  # b from the equality a_P' nu_P = beta
            den = 0.0
            num = beta
            for k in range(m):
                den += ra[k] * z1[k]
                num += ra[k] * z2[k]
            if not den > 0.0:
                return nu, b, False, it
            b = num / den
        nu[:] = 0.0
        for k in range(m):
            nu[idx[k]] = b * z1[k] - z2[k]
        s = _q_mul(d0, d1, d2, nu)
        changed = 0
        for t in range(T):
            st = 0.0 if inP[t] else s[t] + r[t] - b * a[t]
            new = nu[t] > st
            if new != inP[t]:
                changed += 1
                inP[t] = new
        if changed == 0:
            return nu, b, True, it
        # cycling (possible as Q is not an M-matrix): stop once the number of changes has
        # not reached a new low for 10 iterations
        if changed < fewest:
            fewest = changed
            stall = 0
        else:
            stall += 1
            if stall >= 10:
                return nu, b, False, it
    return nu, b, False, max_iter


@njit(cache=True, nogil=True)
def _solve_kkt(D, l1, l2, T, h, za, aza, re, free_b):
    """Newton step of the bordered system [M, -a; a', 0] [dnu; db] = [h; -re] (M factored).

    ``za = M^{-1} a`` and ``aza = a' za`` are precomputed; with b fixed, ``dnu = M^{-1} h``.
    """
    zh = _ldl_solve(D, l1, l2, T, h)
    if not free_b:
        return zh, 0.0
    azh = 0.0
    for t in range(T):
        azh += za[t] * h[t]  # a' M^{-1} h = (M^{-1} a)' h, M symmetric
    db = (-re - azh) / aza
    for t in range(T):
        zh[t] += db * za[t]
    return zh, db


@njit(cache=True, nogil=True)
def _max_step(x, dx):
    """Largest alpha in (0, 1] with x + alpha dx >= 0 (x > 0)."""
    alpha = 1.0
    for t in range(x.shape[0]):
        if dx[t] < 0.0:
            alpha = min(alpha, -x[t] / dx[t])
    return alpha


@njit(cache=True, nogil=True)
def _interior_point(r, a, beta, g1, g2, b, free_b, max_iter, tol):
    """The KKT system of :func:`_pdas` by a Mehrotra predictor-corrector interior point.

    Robust where the active-set method cycles: each step solves (Q + diag(s / nu)) with one
    banded factorisation (bordered by ``a`` when b is free); 20-40 steps regardless of
    conditioning. Returns (nu, s, b, converged, iterations); the caller polishes the result
    to the exact active-set solution.
    """
    T = r.shape[0]
    d0, d1, d2 = _q_bands(g1, g2, T)
    idx = np.arange(T)
    scale = 1e-300
    for t in range(T):
        scale = max(scale, abs(r[t] - b * a[t]))
    nu = np.full(T, scale)
    s = np.full(T, scale)
    dm = np.empty(T)
    h = np.empty(T)
    for it in range(1, max_iter + 1):
        rd = _q_mul(d0, d1, d2, nu) + r - b * a - s
        re = 0.0
        if free_b:
            re = -beta
            for t in range(T):
                re += a[t] * nu[t]
        mu = 0.0
        for t in range(T):
            mu += nu[t] * s[t]
        mu /= T
        if (np.abs(rd).max() <= tol * scale and abs(re) <= tol * scale * T
                and mu <= tol * tol * scale * scale):
            return nu, s, b, True, it
        for t in range(T):
            dm[t] = d0[t] + s[t] / nu[t]
        D, l1, l2 = _ldl_factor(dm, d1, d2, idx, T)
        za = _ldl_solve(D, l1, l2, T, a)
        aza = 0.0
        for t in range(T):
            aza += a[t] * za[t]
        # predictor (affine scaling) step
        for t in range(T):
            h[t] = -rd[t] - s[t]
        dnu_a, db_a = _solve_kkt(D, l1, l2, T, h, za, aza, re, free_b)
        ds_a = -s - (s / nu) * dnu_a
        alpha = min(_max_step(nu, dnu_a), _max_step(s, ds_a))
        mu_a = 0.0
        for t in range(T):
            mu_a += (nu[t] + alpha * dnu_a[t]) * (s[t] + alpha * ds_a[t])
        sigma = (mu_a / T / mu) ** 3
        # corrector: centring plus the second-order term of the complementarity products
        for t in range(T):
            h[t] = -rd[t] - s[t] + (sigma * mu - dnu_a[t] * ds_a[t]) / nu[t]
        dnu, db = _solve_kkt(D, l1, l2, T, h, za, aza, re, free_b)
        ds = (sigma * mu - dnu_a * ds_a - s * dnu) / nu - s
        alpha = min(1.0, 0.995 * min(_max_step(nu, dnu), _max_step(s, ds)))
        nu = nu + alpha * dnu
        s = s + alpha * ds
        b = b + alpha * db
    return nu, s, b, False, max_iter


# --------------------------------------------------------------------------- fast solver

class _Projector:
    """AR(1) projection onto {u : G u >= 0} (OASIS) and the baseline curvature f''."""

    def __init__(self, g: float, T: int):
        self.g, self.T = g, T

    def __call__(self, yt: np.ndarray) -> tuple[np.ndarray, float]:
        """(u, f'') for the target ``yt``."""
        u, one_p_one = _oasis_ar1(yt, self.g)
        return u, max(self.T - one_p_one, 0.0)


def _fit_baseline(y: np.ndarray, target: np.ndarray, project: _Projector,
                  b_start: float) -> tuple[float, np.ndarray, int]:
    """Bracketed Newton on f'(b0) = sum(u*(b0) + b0 - y) = 0; returns (b0, u, steps)."""
    T = y.shape[0]
    scale = max(float(np.std(y)), 1e-12 * max(1.0, float(np.abs(y).max())), 1e-300)
    total = float(y.sum())
    lo, hi = -math.inf, math.inf
    b = b_start
    for step in range(1, _MAX_BASELINE_STEPS + 1):
        u, curv = project(target - b)
        fp = float(u.sum()) + T * b - total
        if abs(fp) <= 1e-10 * T * scale:
            return b, u, step
        if fp > 0:
            hi = b
        else:
            lo = b
        nb = b - fp / curv if curv > 1e-12 * T else math.nan
        if not lo < nb < hi:  # outside the bracket (or flat): bisect, or expand outwards
            if math.isfinite(lo) and math.isfinite(hi):
                nb = 0.5 * (lo + hi)
            else:
                nb = b - math.copysign(scale * 2.0 ** step, fp)
        if abs(nb - b) <= 1e-13 * (abs(b) + scale):
            u, _ = project(target - nb)
            return nb, u, step + 1
        b = nb
    raise FastSolverError(f"fast: baseline did not converge in {_MAX_BASELINE_STEPS} steps")


def deconvolve_fast(y: np.ndarray, g: np.ndarray, lam: float, *, b0: float | None = None,
                    c0: bool = True, zero_threshold: float = 0.0, sn: float | None = None,
                    max_iter: int = 500) -> Result:
    """Exact minimiser of the module objective (see the module docstring for the methods).

    AR(1): OASIS projections inside a Newton iteration on the baseline. AR(2): the joint KKT
    system by primal-dual active sets, or, if that cycles, by an interior point polished to
    the exact active set. ``b0=None`` fits the baseline; ``c0`` frees the initial decay;
    ``max_iter`` bounds the interior-point steps. Raises :class:`FastSolverError` when it
    does not converge.
    """
    y, g, lam, zero_threshold, sn = _validate(y, g, lam, zero_threshold, sn, "deconvolve_fast")
    if max_iter < 1:
        raise ValueError(f"deconvolve_fast: max_iter must be >= 1, got {max_iter}")
    T = y.shape[0]
    w = penalty_weights(g, T, c0)
    target = y - lam * w
    # start near the baseline: sparse positive transients sit above the lower quantiles
    b_start = float(np.percentile(y, 20)) if b0 is None else float(b0)
    if g.shape[0] == 1:
        b, u, msg = _solve_ar1(y, target, float(g[0]), b_start, b0 is None)
    else:
        b, u, msg = _solve_ar2(target, g, lam * float(w.sum()), b_start, b0 is None, max_iter)
    return _finish(y, u, g, lam, b, c0, zero_threshold, sn, "fast", "optimal", msg)


def _solve_ar1(y, target, g, b_start, free_b) -> tuple[float, np.ndarray, str]:
    """(b0, u, note): OASIS, inside the baseline Newton iteration when b0 is free."""
    project = _Projector(g, y.shape[0])
    if not free_b:
        return b_start, project(target - b_start)[0], ""
    b, u, steps = _fit_baseline(y, target, project, b_start)
    return b, u, f"baseline Newton steps {steps}"


def _solve_ar2(target, g, beta, b_start, free_b, max_iter) -> tuple[float, np.ndarray, str]:
    """(b0, u, note): active set, else interior point + active-set polish; u = t - b + G'nu."""
    g1, g2 = float(g[0]), float(g[1])
    r = apply_g(target, g)
    a = apply_g(np.ones(target.shape[0]), g)
    nu, b, ok, it = _pdas(r, a, beta, g1, g2, b_start, free_b, _PDAS_MAX_ITER,
                          r - b_start * a <= 0.0)  # start: no spikes where raw spikes < 0
    msg = f"active-set iterations {it}"
    if not ok:
        tol = 1e-11
        nu, s, b, ok, it_ip = _interior_point(r, a, beta, g1, g2, b_start, free_b,
                                              max_iter, tol)
        if not (ok and np.isfinite(nu).all() and np.isfinite(b)):
            raise FastSolverError(f"fast: interior point did not converge in {max_iter} steps")
        nu_x, b_x, ok, it_x = _pdas(r, a, beta, g1, g2, b, free_b, 20, nu > s)
        msg += (f" (cycled); interior-point steps {it_ip}; polish "
                + (f"exact in {it_x} active-set steps" if ok else f"skipped (tolerance {tol})"))
        if ok:
            nu, b = nu_x, b_x
        else:
            nu = np.maximum(nu, 0.0)
    if not (np.isfinite(nu).all() and np.isfinite(b)):
        raise FastSolverError("fast: non-finite AR(2) solution")
    return b, target - b + apply_g(nu[::-1], g)[::-1], msg


# --------------------------------------------------------------------------- cvxpy reference

def _cvxpy_options(name: str, max_iter: int) -> dict:
    """Solver options: ECOS at its (tight) defaults; SCS at high accuracy."""
    if name == "ECOS":
        return {"max_iters": int(max_iter)}
    if name == "SCS":
        # SCS is first-order: many cheap iterations are needed for a reference-grade answer
        return {"max_iters": int(100 * max_iter), "eps_abs": 1e-7, "eps_rel": 1e-7}
    return {}


def deconvolve_cvxpy(y: np.ndarray, g: np.ndarray, lam: float, *, b0: float | None = None,
                     c0: bool = True, zero_threshold: float = 0.0, sn: float | None = None,
                     solver_order: Sequence[str] = ("ECOS", "SCS"),
                     max_iter: int = 500) -> Result:
    """The module objective solved by cvxpy: the reference.

    Solvers are tried in ``solver_order``; the first that returns status "optimal" is used
    and recorded in ``Result.solver``. If none does, the first "optimal_inaccurate" answer is
    returned with that status; if there is none, :class:`CvxpySolverError` is raised.
    ``max_iter`` is ECOS's iteration limit; SCS gets 100 times as many.
    """
    import cvxpy as cp
    import scipy.sparse as sparse

    y, g, lam, zero_threshold, sn = _validate(y, g, lam, zero_threshold, sn,
                                              "deconvolve_cvxpy")
    installed = set(cp.installed_solvers())
    for name in solver_order:
        if name not in installed:
            raise ValueError(f"deconvolve_cvxpy: solver_order entry {name!r} is not an "
                             f"installed cvxpy solver ({sorted(installed)})")
    T = y.shape[0]
    G = sparse.diags([np.ones(T)] + [np.full(T - k, -gk) for k, gk in enumerate(g, 1)],
                     list(range(0, -g.shape[0] - 1, -1)), shape=(T, T), format="csc")
    c = cp.Variable(T)
    b = cp.Variable() if b0 is None else float(b0)
    c0v = cp.Variable(nonneg=True) if c0 else 0.0
    s = G @ c
    resid = y - c - b - c0v * impulse_response(g, T)
    # sum of elementwise squares (T small cones) rather than sum_squares (one T-dim cone):
    # ECOS stalls on the single large cone for T ~ 20,000; the objective is the same
    fit = cp.sum(cp.square(resid))
    problem = cp.Problem(cp.Minimize(0.5 * fit + lam * cp.sum(s)), [s >= 0])

    notes: list[str] = []
    fallback = None
    for name in solver_order:
        try:
            problem.solve(solver=name, **_cvxpy_options(name, max_iter))
        except Exception as exc:  # solver crash or SolverError: try the next one
            notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
            continue
        if c.value is None:
            notes.append(f"{name} status {problem.status}")
            continue
        sol = (name, np.array(c.value, dtype=np.float64), _value(b), _value(c0v))
        if problem.status == "optimal":
            return _cvxpy_result(y, sol, g, lam, c0, zero_threshold, sn, "optimal", notes)
        notes.append(f"{name} status {problem.status}")
        if fallback is None and problem.status == "optimal_inaccurate":
            fallback = sol
    if fallback is not None:
        return _cvxpy_result(y, fallback, g, lam, c0, zero_threshold, sn,
                             "optimal_inaccurate", notes)
    raise CvxpySolverError("deconvolve_cvxpy: no solver succeeded: " + "; ".join(notes))


def _value(x) -> float:
    """A cvxpy variable's value or a constant, as float."""
    return float(x.value) if hasattr(x, "value") else float(x)


def _cvxpy_result(y, sol, g, lam, free_c0, zero_threshold, sn, status, notes) -> Result:
    """Result from a cvxpy solution (spike-driven c, b0, c0), made consistent like fast's."""
    name, c, b, c0 = sol
    s = np.maximum(apply_g(c, g), 0.0)  # clears round-off negatives of the solver
    if zero_threshold > 0:
        s[s < zero_threshold * sn] = 0.0
    c = convolve_ar(s, g)
    c0 = max(c0, 0.0) if free_c0 else 0.0
    return Result(c=c, s=s, b0=b, c0=c0, g=g.copy(), sn=sn, lam=lam, solver=name,
                  objective=objective(y, c, b, c0, g, lam), status=status,
                  message="; ".join(notes))


# --------------------------------------------------------------------------- dispatch

def deconvolve(y: np.ndarray, g: np.ndarray, lam: float, solver: SolverName = "auto",
               **kw) -> Result:
    """Solve one trace with ``solver``: "fast", "cvxpy", or "auto" (fast, cvxpy if it fails).

    ``kw``: ``b0``, ``c0``, ``zero_threshold``, ``sn``, ``max_iter`` and (cvxpy only)
    ``solver_order``. Bad input raises ValueError under every solver.
    """
    order = kw.pop("solver_order", ("ECOS", "SCS"))
    if solver == "fast":
        return deconvolve_fast(y, g, lam, **kw)
    if solver == "cvxpy":
        return deconvolve_cvxpy(y, g, lam, solver_order=order, **kw)
    if solver != "auto":
        raise ValueError(f"deconvolve: solver must be 'auto', 'fast' or 'cvxpy', got {solver!r}")
    try:
        return deconvolve_fast(y, g, lam, **kw)
    except (FastSolverError, FloatingPointError, ZeroDivisionError,
            np.linalg.LinAlgError) as exc:
        res = deconvolve_cvxpy(y, g, lam, solver_order=order, **kw)
        res.message = f"fast failed ({exc}); " + res.message
        return res


def chunk_bounds(T: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """Near-equal [start, end) chunks of at most ``chunk`` frames sharing ``overlap`` frames."""
    n = math.ceil((T - overlap) / (chunk - overlap))
    step = (T - overlap) / n
    bounds = [(round(k * step), round((k + 1) * step) + overlap) for k in range(n)]
    bounds[-1] = (bounds[-1][0], T)
    return bounds


def _blend(pieces: list[np.ndarray], bounds: list[tuple[int, int]], T: int) -> np.ndarray:
    """Concatenate chunk arrays, crossfading linearly across each overlap."""
    out = np.zeros(T)
    weight = np.zeros(T)
    for k, (piece, (a, e)) in enumerate(zip(pieces, bounds)):
        w = np.ones(e - a)
        if k > 0:  # ramp up over the overlap with the previous chunk
            L = bounds[k - 1][1] - a
            w[:L] = np.arange(1, L + 1) / (L + 1)
        if k < len(bounds) - 1:  # ramp down over the overlap with the next chunk
            L = e - bounds[k + 1][0]
            w[e - a - L:] = 1.0 - np.arange(1, L + 1) / (L + 1)
        out[a:e] += w * piece
        weight[a:e] += w
    return out / weight


def deconvolve_long(y: np.ndarray, g: np.ndarray, lam: float, *, chunk: int = 5000,
                    overlap: int = 100, solver: SolverName = "auto", b0: float | None = None,
                    c0: bool = True, zero_threshold: float = 0.0, sn: float | None = None,
                    **kw) -> Result:
    """Solve a trace whole (``T <= chunk`` or ``chunk == 0``) or in overlapping chunks.

    Chunked: (1) with ``b0=None``, every chunk is fitted with its own baseline and the shared
    ``b0`` is their length-weighted mean; (2) every chunk is solved with that ``b0`` fixed and
    a free initial decay (which absorbs calcium from spikes before the chunk); (3) the chunks'
    full calcium ``c + c0 d`` is crossfaded linearly over each overlap; (4) spikes are
    recomputed as ``G`` of the blend (clipped at 0), the first frame's spike becomes ``c0``
    (when free), the zero threshold is applied and ``c = K s``; (5) with ``b0=None``, ``b0``
    is reset to the mean residual ``mean(y - c - c0 d)`` (its optimum for the final ``c``).
    The objective is evaluated on the whole trace. Nothing is rescaled per chunk. The result
    is close to, not exactly, the whole-trace optimum; the fast solver is O(T), so
    ``chunk=0`` (whole) is affordable for it and exact.
    """
    y, g, lam, zero_threshold, sn = _validate(y, g, lam, zero_threshold, sn, "deconvolve_long")
    T = y.shape[0]
    common = dict(solver=solver, c0=c0, zero_threshold=zero_threshold, sn=sn, **kw)
    if chunk == 0 or T <= chunk:
        return deconvolve(y, g, lam, b0=b0, **common)
    if chunk < 3 or not 0 <= overlap or 2 * overlap >= chunk:
        raise ValueError(f"deconvolve_long: need chunk >= 3 and 0 <= 2 * overlap < chunk, got "
                         f"chunk={chunk}, overlap={overlap}")
    bounds = chunk_bounds(T, chunk, overlap)
    common.update(zero_threshold=0.0)
    notes = []
    free_b = b0 is None
    if free_b:
        first = [deconvolve(y[a:e], g, lam, b0=None, **{**common, "c0": k > 0 or c0})
                 for k, (a, e) in enumerate(bounds)]
        sizes = np.array([e - a for a, e in bounds], dtype=np.float64)
        b0 = float(np.sum(sizes * np.array([r.b0 for r in first])) / sizes.sum())
        notes.append("baseline from chunk fits")
    parts = [deconvolve(y[a:e], g, lam, b0=b0, **{**common, "c0": k > 0 or c0})
             for k, (a, e) in enumerate(bounds)]
    full = [r.c + r.c0 * impulse_response(g, r.c.shape[0]) for r in parts]
    u = _blend(full, bounds, T)
    solvers = list(dict.fromkeys(r.solver for r in parts))
    status = "optimal" if all(r.status == "optimal" for r in parts) else "optimal_inaccurate"
    # only the notable chunk messages (fallbacks), not every chunk's iteration count
    notes += [f"chunk {k}: {r.message}" for k, r in enumerate(parts)
              if r.solver != "fast" or "cycled" in r.message]
    res = _finish(y, u, g, lam, b0, c0, zero_threshold, sn, "+".join(solvers), status,
                  "; ".join(notes))
    if free_b:  # the best baseline for the blended trace (closed form; lowers the objective)
        res.b0 = float(np.mean(y - res.c - res.c0 * impulse_response(g, T)))
        res.objective = objective(y, res.c, res.b0, res.c0, g, lam)
    return res


def deconvolve_batch(Y: np.ndarray, *, p: int = 1, sparse_penalty: float = 1.0,
                     noise_scaled_penalty: bool = True, zero_threshold: float = 0.0,
                     solver: SolverName = "auto", chunk: int = 5000, overlap: int = 100,
                     g: np.ndarray | None = None, sn: float | np.ndarray | None = None,
                     max_iter: int = 500) -> BatchResult:
    """Deconvolve every row of ``Y`` (N, T): noise, AR fit, then :func:`deconvolve_long`.

    Per unit: ``sn`` from :func:`noise_psd` unless given (scalar or (N,)); ``g`` from
    :func:`estimate_ar` with order ``p`` unless given ((p,) for all units or (N, p));
    ``lam = sparse_penalty * sn`` (``sparse_penalty`` when ``noise_scaled_penalty`` is False).
    A unit on which every solver fails gets zero C and S, solver "failed" and NaN objective.
    C and S have Y's float dtype (at least float32). Units are solved one after another; the
    numba kernels release the GIL, so batches can run in parallel dask tasks.
    """
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[1] < 3:
        raise ValueError(f"deconvolve_batch: Y must be (N, T) with T >= 3, got shape {Y.shape}")
    if p not in (1, 2):
        raise ValueError(f"deconvolve_batch: p must be 1 or 2, got {p!r}")
    if not (np.isfinite(sparse_penalty) and sparse_penalty >= 0):
        raise ValueError(f"deconvolve_batch: sparse_penalty must be >= 0, got {sparse_penalty}")
    N, T = Y.shape
    G_all = _batch_g(g, N, p)
    sn_all = _batch_sn(sn, N)
    dtype = np.result_type(Y.dtype, np.float32) if Y.dtype.kind == "f" else np.float64
    out = BatchResult(C=np.zeros((N, T), dtype), S=np.zeros((N, T), dtype), b0=np.zeros(N),
                      c0=np.zeros(N), g=np.zeros((N, p)), sn=np.zeros(N), lam=np.zeros(N),
                      solver=[], objective=np.full(N, np.nan), status=[], message=[])
    for i in range(N):
        y = np.asarray(Y[i], dtype=np.float64)
        if not np.isfinite(y).all():
            raise ValueError(f"deconvolve_batch: row {i} of Y contains NaN or Inf")
        s_i = float(noise_psd(y)) if sn_all is None else float(sn_all[i])
        g_i = estimate_ar(y, p, s_i) if G_all is None else G_all[i]
        lam_i = sparse_penalty * s_i if noise_scaled_penalty else float(sparse_penalty)
        out.g[i], out.sn[i], out.lam[i] = g_i, s_i, lam_i
        try:
            r = deconvolve_long(y, g_i, lam_i, chunk=chunk, overlap=overlap, solver=solver,
                                zero_threshold=zero_threshold, sn=s_i, max_iter=max_iter)
        except (FastSolverError, CvxpySolverError, FloatingPointError, ZeroDivisionError,
                np.linalg.LinAlgError) as exc:
            # with solver="fast" these numeric failures are not caught by deconvolve(); one
            # bad unit must not lose the whole batch
            out.b0[i] = float(y.mean())
            out.solver.append("failed")
            out.status.append("failed")
            out.message.append(str(exc))
            continue
        out.C[i], out.S[i], out.b0[i], out.c0[i] = r.c, r.s, r.b0, r.c0
        out.objective[i] = r.objective
        out.solver.append(r.solver)
        out.status.append(r.status)
        out.message.append(r.message)
    return out


def _batch_g(g, N: int, p: int) -> np.ndarray | None:
    """Per-unit AR coefficients (N, p) from None, (p,) or (N, p)."""
    if g is None:
        return None
    arr = np.asarray(g, dtype=np.float64)
    if arr.shape == (p,):
        arr = np.broadcast_to(arr, (N, p))
    if arr.shape != (N, p):
        raise ValueError(f"deconvolve_batch: g must have shape ({p},) or ({N}, {p}) for p={p}, "
                         f"got {arr.shape}")
    for i in range(N):
        check_g(arr[i], where=f"deconvolve_batch: g[{i}]")
    return arr


def _batch_sn(sn, N: int) -> np.ndarray | None:
    """Per-unit noise (N,) from None, a scalar or (N,)."""
    if sn is None:
        return None
    arr = np.broadcast_to(np.asarray(sn, dtype=np.float64), (N,)) if np.ndim(sn) == 0 \
        else np.asarray(sn, dtype=np.float64)
    if arr.shape != (N,) or not (np.isfinite(arr).all() and (arr >= 0).all()):
        raise ValueError(f"deconvolve_batch: sn must be a scalar or ({N},) array of finite "
                         f"values >= 0, got shape {arr.shape}")
    return arr
