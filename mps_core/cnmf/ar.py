"""Noise level and autoregressive (AR) calcium-decay estimates for single traces.

Model (the CNMF convention): a unit's trace is ``y_t = b0 + c_t + e_t`` with white noise
``e ~ N(0, sn^2)`` and calcium following an AR(p) recursion driven by non-negative spikes

    c_t = g_1 c_{t-1} + ... + g_p c_{t-p} + s_t,     p in {1, 2}.

* :func:`noise_psd` -- ``sn`` from the power spectral density (PSD) averaged over a
  high-frequency band (default 0.25-0.5 of the sampling rate), where calcium transients carry
  little power. The PSD is normalised two-sided (white noise of variance ``sn^2`` has a flat
  PSD equal to ``sn^2`` at unit sampling rate), so ``sn = sqrt(mean(PSD in band))``.
* :func:`estimate_ar` -- ``g`` by Yule-Walker equations on the autocovariance at lags
  1..``lags``, with the noise variance removed from lag 0 (white noise only adds to lag 0).
  The roots of the AR polynomial are then made real, non-negative and stable (so the impulse
  response is non-negative and decays), and multiplied by ``fudge`` (< 1 shortens the decay
  slightly, which counters the upward bias of noisy estimates). The PSD noise estimate also
  contains the calcium's own power in the band, which is not small for fast decays and
  high event rates; it then overstates ``sn`` and biases ``g`` upwards (pass ``sn`` if a
  better estimate is at hand).
* :func:`impulse_response`, :func:`check_g` -- shared with the deconvolution module.

Written from the CNMF / OASIS papers' descriptions (Pnevmatikakis et al. 2016; Friedrich et
al. 2017); no third-party code was used.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numba import njit

#: largest AR root kept: a decay time of ~1000 frames; beyond that the model is a step.
MAX_ROOT = 0.999


def noise_psd(y: np.ndarray, band: tuple[float, float] = (0.25, 0.5),
              method: Literal["welch", "fft"] = "welch") -> float | np.ndarray:
    """Noise standard deviation of ``y`` ((T,) or (N, T), time last) from its PSD in ``band``.

    ``band`` is in cycles per frame (fractions of the sampling rate, within [0, 0.5]).
    ``method="welch"`` averages periodograms of 256-frame Hann windows (low variance);
    ``"fft"`` uses the periodogram of the whole trace. Returns a float for (T,) input and an
    (N,) array for (N, T) input.
    """
    arr = np.asarray(y)  # converted to float64 block by block: (N, T) input may be large
    if arr.ndim not in (1, 2) or arr.shape[-1] < 4 or arr.dtype.kind not in "biuf":
        raise ValueError(f"noise_psd: y must be (T,) or (N, T) with T >= 4, got shape {arr.shape}")
    lo, hi = float(band[0]), float(band[1])
    if not 0.0 <= lo < hi <= 0.5:
        raise ValueError(f"noise_psd: band must satisfy 0 <= low < high <= 0.5, got {band}")
    if method not in ("welch", "fft"):
        raise ValueError(f"noise_psd: method must be 'welch' or 'fft', got {method!r}")
    rows = arr.reshape(-1, arr.shape[-1])
    # row blocks of ~4M samples bound the temporary spectra for (N, T) input
    step = max(1, 4_000_000 // rows.shape[1])
    sn = np.concatenate([_band_mean_psd(rows[i:i + step], lo, hi, method)
                         for i in range(0, rows.shape[0], step)])
    sn = np.sqrt(sn)
    return float(sn[0]) if arr.ndim == 1 else sn


def _band_mean_psd(rows: np.ndarray, lo: float, hi: float, method: str) -> np.ndarray:
    """Mean two-sided PSD (unit sampling rate) of each row over frequency bins in [lo, hi].

    Welch: 256-frame Hann windows, 50 % overlap, each segment's mean removed. FFT: the
    periodogram of the whole mean-removed row. Each positive-frequency bin of the rfft
    holds the (equal) density of f and -f, so no doubling is applied.
    """
    rows = rows.astype(np.float64)
    T = rows.shape[1]
    if method == "welch":
        nperseg = min(256, T)
        segs = np.lib.stride_tricks.sliding_window_view(rows, nperseg, axis=1)[:, ::nperseg // 2]
        win = hann(nperseg)
        spec = np.fft.rfft((segs - segs.mean(axis=2, keepdims=True)) * win, axis=2)
        psd = (np.abs(spec) ** 2).mean(axis=1) / np.sum(win * win)
        freqs = np.fft.rfftfreq(nperseg)
    else:
        spec = np.fft.rfft(rows - rows.mean(axis=1, keepdims=True), axis=1)
        psd = np.abs(spec) ** 2 / T
        freqs = np.fft.rfftfreq(T)
    sel = (freqs >= lo) & (freqs <= hi)
    if not sel.any():
        raise ValueError(f"noise_psd: no frequency bin inside band ({lo}, {hi}) for T={T}")
    return psd[:, sel].mean(axis=1)


def autocovariance(y: np.ndarray, max_lag: int) -> np.ndarray:
    """Biased autocovariance of a (T,) trace at lags 0..max_lag (mean removed, divided by T)."""
    x = np.asarray(y, dtype=np.float64)
    x = x - x.mean()
    T = x.shape[0]
    # sums of products, not BLAS: 1-D BLAS calls were erratic (up to ms) on a busy machine
    return np.array([np.sum(x[: T - k] * x[k:]) / T for k in range(max_lag + 1)])


def estimate_ar(y: np.ndarray, p: int, sn: float | None = None, lags: int = 5,
                fudge: float = 0.98) -> np.ndarray:
    """AR(p) coefficients ``g`` (shape (p,)) of a (T,) trace, from its autocovariance.

    Solves the Yule-Walker equations ``gamma(k) = sum_i g_i gamma_c(k - i)``, k = 1..lags, in
    the least-squares sense, where ``gamma_c`` is the trace's autocovariance with ``sn^2``
    removed at lag 0 (``sn`` from :func:`noise_psd` when None). The AR roots are then made
    real (a complex pair becomes a double root at their modulus), clipped to [0, MAX_ROOT]
    and multiplied by ``fudge``. A flat trace gives zeros.
    """
    if p not in (1, 2):
        raise ValueError(f"estimate_ar: p must be 1 or 2, got {p!r}")
    if lags < p:
        raise ValueError(f"estimate_ar: lags must be >= p ({p}), got {lags}")
    if not 0.0 < fudge <= 1.0:
        raise ValueError(f"estimate_ar: fudge must be in (0, 1], got {fudge}")
    x = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] < lags + p + 2:
        raise ValueError(f"estimate_ar: y must be (T,) with T >= {lags + p + 2}, "
                         f"got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("estimate_ar: y contains NaN or Inf")
    gam = autocovariance(x, lags + p)
    if gam[0] <= 1e-12 * max(1.0, float(np.abs(x).max())) ** 2:
        return np.zeros(p)  # flat trace: nothing to model
    if sn is None:
        sn = noise_psd(x)
    gam_c = gam.copy()
    # keep lag 0 positive when the noise estimate swallows the signal (very low SNR)
    gam_c[0] = max(gam[0] - float(sn) ** 2, 1e-3 * gam[0])
    rows = np.arange(1, lags + 1)
    A = np.array([[gam_c[abs(k - i)] for i in range(1, p + 1)] for k in rows])
    g, *_ = np.linalg.lstsq(A, gam[rows], rcond=None)
    return stable_g(g, fudge)


def stable_g(g: np.ndarray, fudge: float = 1.0) -> np.ndarray:
    """Coefficients with real roots in [0, MAX_ROOT], each root multiplied by ``fudge``."""
    g = np.asarray(g, dtype=np.float64)
    if g.shape == (1,):
        return np.array([np.clip(g[0], 0.0, MAX_ROOT) * fudge])
    g1, g2 = g
    disc = g1 * g1 + 4.0 * g2
    if disc < 0:  # complex pair: oscillating response; keep the decay rate (modulus) only
        r1 = r2 = np.sqrt(-g2)
    else:
        r1, r2 = (g1 + np.sqrt(disc)) / 2.0, (g1 - np.sqrt(disc)) / 2.0
    r1, r2 = (float(np.clip(r, 0.0, MAX_ROOT)) * fudge for r in (r1, r2))
    return np.array([r1 + r2, -r1 * r2])


def ar_roots(g: np.ndarray) -> np.ndarray:
    """Roots of z^p - g_1 z^(p-1) - ... - g_p (the per-frame decay factors)."""
    g = np.asarray(g, dtype=np.float64)
    return np.roots(np.concatenate([[1.0], -g]))


def check_g(g, where: str = "g") -> np.ndarray:
    """Validate AR coefficients: shape (1,) or (2,), finite, stable, non-negative response.

    The non-negative impulse response is what makes ``c >= 0`` follow from ``s >= 0``; it
    holds iff the roots are real, the larger one positive and both below 1 in modulus.
    """
    arr = np.atleast_1d(np.asarray(g, dtype=np.float64))
    if arr.shape not in ((1,), (2,)) or not np.isfinite(arr).all():
        raise ValueError(f"{where}: AR coefficients must be a finite array of length 1 or 2, "
                         f"got {g!r}")
    if arr.shape == (1,):
        if not 0.0 <= arr[0] < 1.0:
            raise ValueError(f"{where}: AR(1) coefficient must be in [0, 1), got {arr[0]}")
        return arr
    g1, g2 = arr
    disc = g1 * g1 + 4.0 * g2
    roots = ar_roots(arr)
    # a double root (e.g. from stable_g) may round to a tiny negative discriminant
    if disc < -1e-10 * max(1.0, g1 * g1) or g1 < 0 or np.max(np.abs(roots)) >= 1.0:
        raise ValueError(f"{where}: AR(2) coefficients {arr.tolist()} must have real roots, "
                         f"the larger positive, both of modulus < 1 (roots {roots.tolist()})")
    return arr


def impulse_response(g: np.ndarray, T: int) -> np.ndarray:
    """First ``T`` samples of the AR filter's impulse response (h_0 = 1)."""
    g = np.asarray(g, dtype=np.float64)
    a = np.concatenate([[1.0], -g])
    impulse = np.zeros(T)
    if T:
        impulse[0] = 1.0
    return linear_filter([1.0], a, impulse)


# ------------------------------------------------------------------ filters without scipy.signal
# scipy.signal takes 1.4 s to import (it loads scipy.stats), a tenth of a small recording's run;
# the pipeline needs only a Hann window and the AR filter. Both below compute what
# scipy.signal's get_window("hann", n) and lfilter(b, a, x) compute, in the same order of
# operations, so the values are the same bit for bit (tested against scipy).


def hann(n: int) -> np.ndarray:
    """Periodic (DFT-even) Hann window of length n, as ``scipy.signal.get_window("hann", n)``."""
    if n <= 1:
        return np.ones(max(int(n), 0))
    fac = np.linspace(-np.pi, np.pi, int(n) + 1)
    w = np.zeros(int(n) + 1)
    for k, coef in enumerate((0.5, 0.5)):
        w += coef * np.cos(k * fac)
    return w[:-1]


def linear_filter(b, a, x) -> np.ndarray:
    """``scipy.signal.lfilter(b, a, x)`` for a 1-D ``x`` with ``a[0] == 1``, in float64:
    direct form II transposed, ``y_t = b_0 x_t + z_0``, ``z_k = z_{k+1} + b_{k+1} x_t -
    a_{k+1} y_t``."""
    b = np.asarray(b, np.float64).ravel()
    a = np.asarray(a, np.float64).ravel()
    if a.size == 0 or a[0] != 1.0:
        raise ValueError(f"linear_filter: a[0] must be 1, got {a[:1].tolist()}")
    k = max(a.size, b.size)
    b = np.concatenate([b, np.zeros(k - b.size)])
    a = np.concatenate([a, np.zeros(k - a.size)])
    return _df2t(b, a, np.ascontiguousarray(np.asarray(x, np.float64).ravel()))


@njit(cache=True, nogil=True)
def _df2t(b, a, x):  # pragma: no cover - compiled
    K = b.size
    y = np.empty(x.size)
    z = np.zeros(max(K - 1, 1))
    for t in range(x.size):
        xt = x[t]
        if K > 1:
            yt = z[0] + b[0] * xt
            for k in range(K - 2):
                z[k] = z[k + 1] + xt * b[k + 1] - yt * a[k + 1]
            z[K - 2] = xt * b[K - 1] - yt * a[K - 1]
        else:
            yt = xt * b[0]
        y[t] = yt
    return y
