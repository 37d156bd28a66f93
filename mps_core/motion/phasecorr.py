"""Batched sub-pixel phase correlation between one template and many frames.

Convention (the benchmark's): the returned ``(dy, dx)`` of a frame is the shift that
*registers* it, i.e. ``scipy.ndimage.shift(frame, (dy, dx))`` (positive dy moves the
content down) lines it up with the template.

Method (Kuglin & Hines 1975; Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 33:156, 2008):

1. Images (template and frames) have their mean removed and are multiplied by a separable
   Tukey taper, so the DFT's implicit periodic boundary (the jump between opposite edges)
   does not produce a spurious peak at zero shift. The product of the two tapers, seen
   at lag d, shrinks with |d| (their overlap o(d)), which pulls large shifts towards zero
   (~0.5 % of the shift on textured scenes); the sub-pixel surface is therefore divided
   by o(d) (exact for texture that fills the frame, as one-photon data does; it over-
   corrects slightly for content confined to the centre of an otherwise empty frame).
   The integer search is not normalised: the fall-off is a mild prior for small shifts
   that keeps periodic textures (regular cell lattices) from locking onto a neighbouring
   period. (Tapering only the frames removes the bias too, but was clearly less accurate
   on the bench recordings: the untapered template's edges then dominate.)
2. float32 ``rfft2`` (half spectrum; scipy.fft keeps single precision).
3. Cross-power spectrum ``T * conj(F)`` partially whitened (divided by
   ``|T * conj(F)|**whiten``; 1 = classic phase correlation, 0 = plain correlation) and
   multiplied by a Gaussian band-pass weight: the high-pass removes what is left of the
   smooth background, the low-pass removes the pixel-scale frequencies that hold mostly
   noise once cells (~10 px) are the only texture. Full whitening amplifies those noisy
   bins; plain correlation leans on whichever cells are bright in a frame. On the bench
   recordings (raw frames flattened as in step 2c, band 2-10 px) 0.25 was best or close to
   it on all three: motion RMSE 0.09 / 0.25 / 0.35 px on quick / CA1 / cortex, against
   0.13 / 0.28 / 0.41 at 0.5 and 0.07 / 0.26 / 0.37 at 0. This module's default stays 0.5
   (2c passes its own). The band also lets the spectrum be cropped to the columns where
   the weight is not negligible (less work below).
4. Integer peak of the correlation surface, searched only within ``+-max_shift`` (or
   within a radius of a prior estimate). Only the rows needed are inverse transformed
   along the second axis.
5. Sub-pixel refinement with the matrix-multiply DFT of a small neighbourhood around the
   peak, in two stages (1/8 px over +-1 px, then 1/upsample px over about +-1/8 px). The
   upsampled DFT is exact band-limited interpolation of the correlation surface, so the
   accuracy is the grid step; two stages cost ~40 instead of 1.5*upsample output points
   per axis.

Everything is vectorised over the frame axis; the template spectrum is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

__all__ = [
    "Plan",
    "make_plan",
    "spectra",
    "template_spectrum",
    "estimate_spectra",
    "fourier_shift",
    "estimate_batch",
]

# Defaults tuned on synthetic blob scenes and the minisim bench recordings (cells ~10 px).
DEFAULT_TAPER = 0.25  # Tukey alpha: fraction of each axis inside the cosine ramps
DEFAULT_LOWPASS = 1.0  # px, Gaussian sigma of the low-pass (removes pixel noise)
DEFAULT_HIGHPASS = 15.0  # px, Gaussian sigma of the high-pass (removes smooth background)
DEFAULT_WHITEN = 0.5  # exponent of |cross| in the normalisation (1 = phase only); 2c uses 0.25
_COARSE_UPSAMPLE = 8  # first refinement stage: 1/8 px over +-1 px
_WEIGHT_FLOOR = 1e-3  # band weights below this (relative) are cropped away


@dataclass(frozen=True)
class Plan:
    """Precomputed, read-only arrays for one image shape and band (cached by `make_plan`)."""

    shape: tuple[int, int]
    window: np.ndarray  # (H, W) float32 Tukey taper
    weight: np.ndarray  # (H, Wc) float32 band weight on the cropped half spectrum
    n_cols: int  # Wc: number of rfft columns kept (weight negligible beyond)
    rows: np.ndarray  # (Hk,) int indices of rfft rows with non-negligible weight
    ky: np.ndarray  # (Hk,) float64 signed frequency index of those rows (cycles / H)
    kx: np.ndarray  # (Wc,) float64 frequency index of the kept columns (cycles / W)
    hermitian: np.ndarray  # (Wc,) float32 weight 1 for kx=0 / Nyquist, 2 otherwise
    overlap_y: np.ndarray  # window autocorrelation along y on a fine lag grid (_overlap_table)
    overlap_x: np.ndarray


def _tukey(n: int, alpha: float) -> np.ndarray:
    """1-D Tukey window (flat top, cosine ramps over alpha*n samples in total)."""
    if alpha <= 0 or n < 3:
        return np.ones(n)
    x = np.arange(n) / (n - 1)
    w = np.ones(n)
    edge = alpha / 2
    lo = x < edge
    hi = x > 1 - edge
    w[lo] = 0.5 * (1 + np.cos(np.pi * (x[lo] / edge - 1)))
    w[hi] = 0.5 * (1 + np.cos(np.pi * ((x[hi] - 1) / edge + 1)))
    return w


def _band_weight(shape: tuple[int, int], lowpass: float, highpass: float) -> np.ndarray:
    """Gaussian band-pass weight on the rfft half spectrum, (H, W//2+1) float64."""
    h, w = shape
    fy = sfft.fftfreq(h)[:, None]
    fx = sfft.rfftfreq(w)[None, :]
    k2 = fy**2 + fx**2
    weight = np.ones_like(k2)
    if lowpass > 0:
        weight *= np.exp(-2 * np.pi**2 * lowpass**2 * k2)
    if highpass > 0:
        weight *= 1 - np.exp(-2 * np.pi**2 * highpass**2 * k2)
    else:
        weight[0, 0] = 0.0  # the mean never carries shift information
    return weight


@lru_cache(maxsize=32)
def make_plan(
    shape: tuple[int, int],
    taper: float = DEFAULT_TAPER,
    lowpass: float = DEFAULT_LOWPASS,
    highpass: float = DEFAULT_HIGHPASS,
) -> Plan:
    """Window, band weight and frequency tables for images of `shape` (cached).

    taper: Tukey alpha in [0, 1]; lowpass / highpass: Gaussian sigmas in px (0 = off).
    """
    h, w = (int(shape[0]), int(shape[1]))
    if h < 4 or w < 4:
        raise ValueError(f"phasecorr: image shape {shape} too small (need >= 4x4 px)")
    if not 0 <= taper <= 1:
        raise ValueError(f"phasecorr: taper must be in [0, 1], got {taper}")
    if lowpass < 0 or highpass < 0:
        raise ValueError(f"phasecorr: lowpass/highpass sigmas must be >= 0 px, got {lowpass}, {highpass}")
    window = np.outer(_tukey(h, taper), _tukey(w, taper)).astype(np.float32)
    full = _band_weight((h, w), lowpass, highpass)
    # Hermitian weight: every column but kx=0 (and Nyquist for even w) stands for two bins.
    herm_full = np.full(w // 2 + 1, 2.0)
    herm_full[0] = 1.0
    if w % 2 == 0:
        herm_full[-1] = 1.0
    rel = full / full.max()
    keep_cols = np.nonzero(rel.max(axis=0) > _WEIGHT_FLOOR)[0]
    n_cols = int(keep_cols[-1]) + 1 if keep_cols.size else 1
    rows = np.nonzero(rel[:, :n_cols].max(axis=1) > _WEIGHT_FLOOR)[0]
    for arr in (window,):
        arr.setflags(write=False)
    weight = full[:, :n_cols].astype(np.float32)
    weight.setflags(write=False)
    ky = (sfft.fftfreq(h) * h)[rows]
    kx = np.arange(n_cols, dtype=np.float64)
    herm = herm_full[:n_cols].astype(np.float32)
    oy = _overlap_table(_tukey(h, taper))
    ox = _overlap_table(_tukey(w, taper))
    return Plan((h, w), window, weight, n_cols, rows, ky, kx, herm, oy, ox)


_OVERLAP_STEP = 32  # lag samples per px in the window-overlap tables


def _overlap_table(w1d: np.ndarray) -> np.ndarray:
    """Autocorrelation of a 1-D window at lags -n..n in steps of 1/_OVERLAP_STEP px, 1 at 0."""
    n = len(w1d)
    power = np.abs(np.fft.rfft(w1d, 2 * n)) ** 2  # zero padding: linear, not circular, lags
    fine = np.fft.fftshift(np.fft.irfft(power, 2 * n * _OVERLAP_STEP))
    mid = n * _OVERLAP_STEP
    table = fine[mid - n * _OVERLAP_STEP : mid + n * _OVERLAP_STEP + 1]
    table = np.maximum(table / table[n * _OVERLAP_STEP], 1e-6)
    table.setflags(write=False)
    return table


def _overlap(table: np.ndarray, lag: np.ndarray) -> np.ndarray:
    """Window overlap (relative to zero lag) at fractional lags, by linear interpolation."""
    n = (len(table) - 1) // (2 * _OVERLAP_STEP)
    pos = (np.asarray(lag, dtype=np.float64) + n) * _OVERLAP_STEP
    return np.interp(pos, np.arange(len(table)), table)


def spectra(images: np.ndarray, plan: Plan, workers: int = 1, window: bool = True) -> np.ndarray:
    """Cropped half spectra (N, H, Wc) complex64 of mean-removed, tapered images (N, H, W)."""
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.shape[1:] != plan.shape:
        raise ValueError(f"phasecorr: image shape {x.shape[1:]} does not match plan {plan.shape}")
    mean = x.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
    x = np.subtract(x, mean, dtype=np.float32)  # 8-bit frames are converted here, once
    if window:
        x *= plan.window
    spec = sfft.rfft2(x, workers=workers)
    return np.ascontiguousarray(spec[:, :, : plan.n_cols])


def template_spectrum(template: np.ndarray, plan: Plan, workers: int = 1) -> np.ndarray:
    """(H, Wc) spectrum of one template image (same preparation as the frames)."""
    return spectra(template, plan, workers)[0]


def _normalised_cross_power(
    f_template: np.ndarray, f_frames: np.ndarray, plan: Plan, whiten: float
) -> tuple[np.ndarray, np.ndarray]:
    """Band-weighted, partially whitened cross-power spectrum T*conj(F)/|T*conj(F)|^whiten.

    f_template: (H, Wc) shared or (N, H, Wc) one template spectrum per frame.

    Returns (cross (N, H, Wc) complex64, scale (N,)): `scale` = sum of |cross| over the full
    spectrum, the value the correlation peak reaches when the frame is an exact shift of
    the template (so peak / scale is a confidence in [0, 1]).
    """
    if f_template.ndim == 2:
        f_template = f_template[None]
    cross = np.conj(f_frames)
    cross *= f_template
    if whiten > 0:
        mag = np.abs(cross)
        # A tiny floor keeps empty bins (constant frames) at zero instead of NaN.
        floor = np.maximum(np.float32(1e-20) * mag.max(axis=(1, 2), keepdims=True), np.float32(1e-30))
        # |cross| * weight / |cross|**p = weight * |cross|**(1-p): also the scale below.
        if whiten == 0.5:  # square roots: ~5x faster than a power
            kept = np.sqrt(mag)
        elif whiten == 0.25:
            kept = np.sqrt(mag)
            kept *= np.sqrt(kept)
        else:
            kept = mag ** np.float32(1 - whiten)
        kept *= plan.weight
        scale = (kept * plan.hermitian).sum(axis=(1, 2), dtype=np.float64)
        mag += floor
        cross *= np.divide(kept, mag, out=kept)  # in place: one temporary less per batch
        return cross, scale
    kept = np.abs(cross)
    kept *= plan.weight
    cross *= plan.weight
    scale = (kept * plan.hermitian).sum(axis=(1, 2), dtype=np.float64)
    return cross, scale


def _integer_peak(
    cross: np.ndarray, plan: Plan, max_shift: float, centre: np.ndarray | None = None, radius: float | None = None
) -> np.ndarray:
    """Integer (dy, dx) of the correlation maximum, (N, 2) float64.

    Searched within +-max_shift of zero and, when `centre` (N, 2) is given, also within
    +-radius of the rounded centre (a prior from an earlier estimate).
    """
    h, w = plan.shape
    n = cross.shape[0]
    lim_y, lim_x = min(int(np.floor(max_shift)), (h - 1) // 2), min(int(np.floor(max_shift)), (w - 1) // 2)
    if centre is None:
        c = np.zeros((n, 2), int)
        ry, rx = lim_y, lim_x
    else:
        c = np.round(np.asarray(centre, dtype=np.float64)).astype(int)
        ry = rx = max(0, int(np.floor(radius)))
        c[:, 0] = np.clip(c[:, 0], -lim_y, lim_y)
        c[:, 1] = np.clip(c[:, 1], -lim_x, lim_x)
    lag_y = c[:, 0:1] + np.arange(-ry, ry + 1)[None, :]  # (N, 2ry+1)
    lag_x = c[:, 1:2] + np.arange(-rx, rx + 1)[None, :]
    g = sfft.ifft(cross, axis=1, workers=1)  # (N, H, Wc): first inverse axis in full
    rows = g[np.arange(n)[:, None], lag_y % h]  # only the rows in the window
    surf = sfft.irfft(rows, n=w, axis=2, workers=1)  # (N, 2ry+1, W)
    surf = np.take_along_axis(surf, (lag_x % w)[:, None, :], axis=2)  # (N, 2ry+1, 2rx+1)
    outside = (np.abs(lag_y) > lim_y)[:, :, None] | (np.abs(lag_x) > lim_x)[:, None, :]
    surf[outside] = -np.inf
    flat = surf.reshape(n, -1)
    best = flat.argmax(axis=1)
    iy, ix = np.unravel_index(best, surf.shape[1:])
    peak = np.stack([lag_y[np.arange(n), iy], lag_x[np.arange(n), ix]], axis=1).astype(np.float64)
    finite = np.where(np.isfinite(flat), flat, np.nan)
    # A flat surface (blank frame) carries no information: report no shift.
    flat_rows = ~(np.nanmax(finite, axis=1) > np.nanmin(finite, axis=1))
    peak[flat_rows] = 0.0
    return peak


def _dft_neighbourhood(cross: np.ndarray, plan: Plan, centre: np.ndarray, step: float, half: int) -> np.ndarray:
    """Correlation surface on a (2*half+1)^2 grid of spacing `step` px around `centre`.

    Matrix-multiply DFT (Guizar-Sicairos et al. 2008) restricted to the band's rows and
    the cropped columns, using Hermitian symmetry: value = Re(sum w_kx R e^{+i2pi k.d}).
    """
    h, w = plan.shape
    offs = np.arange(-half, half + 1) * step
    ys = centre[:, 0:1] + offs[None, :]  # (N, n)
    xs = centre[:, 1:2] + offs[None, :]
    # Kernels in float64 phase, stored complex64 for the matmul.
    ey = np.exp(2j * np.pi * ys[:, :, None] * (plan.ky[None, None, :] / h)).astype(np.complex64)  # (N, n, Hk)
    ex = np.exp(2j * np.pi * (plan.kx[None, :, None] / w) * xs[:, None, :]).astype(np.complex64)  # (N, Wc, n)
    ex *= plan.hermitian[None, :, None]
    sub = cross if len(plan.rows) == h else cross[:, plan.rows, :]  # (N, Hk, Wc)
    surf = np.matmul(ey, np.matmul(sub, ex)).real  # (N, n, n)
    # Undo the pull of the two tapers towards zero shift (see the module docstring).
    return surf / (_overlap(plan.overlap_y, ys)[:, :, None] * _overlap(plan.overlap_x, xs)[:, None, :])


def _refine(cross: np.ndarray, plan: Plan, peak: np.ndarray, upsample: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-stage upsampled-DFT refinement; returns (shifts (N,2), peak value (N,))."""
    coarse = min(_COARSE_UPSAMPLE, upsample)
    centre = peak
    stages = [(1.0 / coarse, coarse)]  # +-1 px at 1/coarse
    if upsample > coarse:
        fine_half = int(np.ceil(upsample / coarse)) + 1  # covers +-1 coarse step
        stages.append((1.0 / upsample, fine_half))
    height = np.zeros(len(peak))
    for step, half in stages:
        centre = np.round(centre / step) * step  # final grid = multiples of 1/upsample
        surf = _dft_neighbourhood(cross, plan, centre, step, half)
        n = 2 * half + 1
        best = surf.reshape(len(peak), -1).argmax(axis=1)
        iy, ix = np.unravel_index(best, (n, n))
        centre = centre + np.stack([iy - half, ix - half], axis=1) * step
        height = surf.reshape(len(peak), -1)[np.arange(len(peak)), best]
    # Report the peak *before* the overlap normalisation, so confidences of peaks at
    # different shifts compare fairly (the normalisation inflates far peaks).
    height = height * _overlap(plan.overlap_y, centre[:, 0]) * _overlap(plan.overlap_x, centre[:, 1])
    return centre, height


def fourier_shift(spec: np.ndarray, shifts: np.ndarray, plan: Plan) -> np.ndarray:
    """Spectra (N, H, Wc) of the images shifted by (dy, dx) (circular, exact in Fourier)."""
    h, w = plan.shape
    s = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    fy = sfft.fftfreq(h)  # cycles / px of every row
    fx = np.arange(plan.n_cols) / w
    ry = np.exp(-2j * np.pi * s[:, 0:1] * fy[None, :]).astype(np.complex64)  # (N, H)
    rx = np.exp(-2j * np.pi * s[:, 1:2] * fx[None, :]).astype(np.complex64)  # (N, Wc)
    out = spec * ry[:, :, None]
    out *= rx[:, None, :]
    return out


def estimate_spectra(
    f_template: np.ndarray,
    f_frames: np.ndarray,
    plan: Plan,
    max_shift: float,
    upsample: int = 50,
    whiten: float = DEFAULT_WHITEN,
    centre: np.ndarray | None = None,
    radius: float = 3.0,
    confidence: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Shifts registering each frame spectrum to the template spectrum (from `spectra`).

    f_template: (H, Wc) shared, or (N, H, Wc) one template per frame (e.g. leave-one-out).

    Returns (shifts (N, 2) float64 clipped to +-max_shift, confidence (N,) float64): the
    correlation peak divided by the value it reaches for an exact shifted copy, in [0, 1].
    `upsample` <= 1 returns integer shifts. `centre` (N, 2), optional: prior shifts; the
    peak is then searched within +-radius px of them (and still within +-max_shift).
    confidence=False skips the peak value of integer-only estimates (returned as 0).
    """
    if f_frames.ndim == 2:
        f_frames = f_frames[None]
    cross, scale = _normalised_cross_power(f_template, f_frames, plan, whiten)
    peak = _integer_peak(cross, plan, max_shift, centre, radius)
    if upsample > 1:
        shifts, height = _refine(cross, plan, peak, int(upsample))
    else:
        shifts = peak
        height = _dft_neighbourhood(cross, plan, peak, 1.0, 0)[:, 0, 0] if confidence else np.zeros(len(peak))
    blank = scale <= 0
    shifts[blank] = 0.0
    conf = np.where(blank, 0.0, height / np.where(blank, 1.0, scale))
    return np.clip(shifts, -max_shift, max_shift), conf


def _check_upsample(upsample: int) -> int:
    if int(upsample) != upsample or upsample < 1:
        raise ValueError(f"phasecorr: upsample must be an integer >= 1 (1 = integer px), got {upsample}")
    return int(upsample)


def estimate_batch(
    template: np.ndarray,
    frames: np.ndarray,
    max_shift: float,
    upsample: int = 50,
    *,
    taper: float = DEFAULT_TAPER,
    lowpass: float = DEFAULT_LOWPASS,
    highpass: float = DEFAULT_HIGHPASS,
    whiten: float = DEFAULT_WHITEN,
    workers: int = 1,
) -> np.ndarray:
    """(dy, dx) per frame, (T, 2) float32, registering each frame to `template`.

    template: (H, W); frames: (T, H, W) or (H, W), any real dtype. Shifts are searched
    within +-max_shift px on each axis and reported to 1/upsample px. taper: Tukey alpha;
    lowpass / highpass: band-pass Gaussian sigmas in px (0 disables one side); whiten:
    spectral whitening exponent (1 = pure phase correlation, 0 = plain cross-correlation);
    workers: threads for the forward FFTs.
    """
    template = np.asarray(template)
    frames = np.asarray(frames)
    if template.ndim != 2:
        raise ValueError(f"phasecorr: template must be 2-D (H, W), got shape {template.shape}")
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[1:] != template.shape:
        raise ValueError(f"phasecorr: frames must be (T, H, W) with (H, W) = {template.shape}, got {frames.shape}")
    if not np.isfinite(max_shift) or max_shift < 0:
        raise ValueError(f"phasecorr: max_shift must be a finite number >= 0 px, got {max_shift}")
    if not 0 <= whiten <= 1:
        raise ValueError(f"phasecorr: whiten must be in [0, 1], got {whiten}")
    upsample = _check_upsample(upsample)
    plan = make_plan(template.shape, float(taper), float(lowpass), float(highpass))
    f_t = template_spectrum(template, plan, workers)
    out = np.empty((frames.shape[0], 2), np.float32)
    batch = 32  # bounds the temporary complex arrays (~N * H * W * 8 bytes each)
    for i in range(0, frames.shape[0], batch):
        f_f = spectra(frames[i : i + batch], plan, workers)
        out[i : i + batch] = estimate_spectra(f_t, f_f, plan, max_shift, upsample, whiten)[0]
    return out
