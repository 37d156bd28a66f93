"""Step 5a: per-pixel noise level from the high-frequency power of each pixel's time series.

Calcium signals are slow (rise and decay over many frames) while camera noise is white, so the
power spectral density (PSD) of a pixel's time series at high frequencies is mostly noise. The
CNMF estimate is ``sn = sqrt(mean PSD over the band)``, with the PSD scaled so white noise of
standard deviation s gives exactly s (``E|X_k|^2 = s^2 sum(w^2)`` for a windowed DFT X).

How it is computed here:

* Frames: at most ``max_frames`` (0: all), taken as ``n_seg`` contiguous segments of
  ``segment_frames`` frames (fewer if the movie is shorter) spread evenly from the first to the
  last frame. With ``max_frames=0`` the segments tile the movie (up to ``segment_frames - 1``
  trailing frames are unused). Spreading the segments keeps the estimate representative of the
  whole recording, not only its start.
* Each segment is de-meaned, multiplied by a periodic Hann window (suppresses the leakage of
  slow drifts such as bleaching into the high band) and Fourier transformed along time; the
  PSD ``|X_k|^2 / sum(w^2)`` is averaged over the frequencies ``low < k / L <= high`` (in
  fractions of the sampling rate, 0.5 = Nyquist) and then over segments (Welch's method).
* The PSD needs pixel-major access: each task holds one spatial tile of a whole segment. A
  movie already chunked in space (``store.pixel_tiles``: read tile by tile from the store)
  keeps its tiles, about ``segment_frames * 128 * 128 * 4`` bytes per running task. A movie
  of whole frames is rechunked into tiles of about 64 MB, which holds every frame chunk of a
  segment at once: ``segment_frames * H * W * 4`` bytes (500 frames of 600 x 600: 720 MB).
* Optional Gaussian smoothing of the map (``smoothing_sigma`` px, reflected border), then the
  noise of active pixels, those whose mean (over the frames used) is above
  ``active_threshold`` (the mean or median of the mean image, or a number in movie units), is
  multiplied by ``active_scale`` (indicator shot noise is higher where the tissue is bright).
"""

from __future__ import annotations

from typing import Any, Callable

import dask
import dask.array as da
import numpy as np
import scipy.fft
from scipy import ndimage as ndi

from .ar import hann
from .yra import frame_chunked

__all__ = ["pixel_noise", "SEGMENT_FRAMES"]

_TILE_BYTES = 64 * 2**20  # target size of one spatial tile of one segment
SEGMENT_FRAMES = 500  # frames per Welch segment


def pixel_noise(Y: Any, *, band: tuple[float, float] = (0.25, 0.5), max_frames: int = 4000,
                segment_frames: int = SEGMENT_FRAMES, smoothing_sigma: float = 1.0,
                active_scale: float = 1.5, active_threshold: str | float = "mean",
                compute: Callable[..., tuple] | None = None) -> np.ndarray:
    """(H, W) float32 noise standard deviation of every pixel (see the module docstring)."""
    compute = compute or dask.compute
    _check(band, max_frames, segment_frames, smoothing_sigma, active_scale, active_threshold)
    Yd = _as_movie(Y)
    T, H, W = Yd.shape
    starts, L = _segments(T, int(max_frames), int(segment_frames))
    bins = np.flatnonzero((np.fft.rfftfreq(L) > band[0]) & (np.fft.rfftfreq(L) <= band[1]))
    if bins.size == 0:
        raise ValueError(f"pixel_noise: no frequency of a {L}-frame segment falls in band {band}; "
                         f"widen the band or use more frames")
    parts = [_segment_stats(Yd[s:s + L], slice(bins[0], bins[-1] + 1)) for s in starts]
    (total,) = compute(da.stack(parts).mean(axis=0))
    power, mean_image = total[0], total[1]
    sn = np.sqrt(np.maximum(power, 0.0))
    if smoothing_sigma > 0:
        sn = ndi.gaussian_filter(sn, float(smoothing_sigma), mode="reflect")
    if active_scale != 1:
        sn = np.where(mean_image > _level(mean_image, active_threshold), sn * active_scale, sn)
    return sn.astype(np.float32)


def _check(band, max_frames, segment_frames, sigma, scale, threshold) -> None:
    if len(band) != 2 or not 0 <= band[0] < band[1] <= 0.5:
        raise ValueError(f"pixel_noise: band must be (low, high) with 0 <= low < high <= 0.5 "
                         f"(fractions of the sampling rate), got {band!r}")
    if int(max_frames) != max_frames or max_frames < 0:
        raise ValueError(f"pixel_noise: max_frames must be an integer >= 0 (0: all), got {max_frames!r}")
    if int(segment_frames) != segment_frames or segment_frames < 4:
        raise ValueError(f"pixel_noise: segment_frames must be an integer >= 4, got {segment_frames!r}")
    if not sigma >= 0:
        raise ValueError(f"pixel_noise: smoothing_sigma must be >= 0, got {sigma!r}")
    if not scale > 0:
        raise ValueError(f"pixel_noise: active_scale must be > 0, got {scale!r}")
    if isinstance(threshold, str) and threshold not in ("mean", "median"):
        raise ValueError(f"pixel_noise: active_threshold must be 'mean', 'median' or a number, "
                         f"got {threshold!r}")


def _segments(T: int, max_frames: int, segment_frames: int) -> tuple[list[int], int]:
    """Start frames of the segments and their common length."""
    use = T if max_frames == 0 else min(T, max_frames)
    L = min(segment_frames, use)
    if L < 4:
        raise ValueError(f"pixel_noise: need at least 4 frames, the movie has {T} "
                         f"(max_frames={max_frames})")
    n_seg = max(use // L, 1)
    starts = np.rint(np.linspace(0, T - L, n_seg)).astype(int) if n_seg > 1 else np.array([0])
    if n_seg == 1 and max_frames and T > L:  # one segment: take it from the middle
        starts = np.array([(T - L) // 2])
    return [int(s) for s in starts], L


def _as_movie(Y: Any) -> da.Array:
    """``Y`` as a float32 (frame, height, width) dask array, its chunks as they are."""
    data = Y.data if hasattr(Y, "dims") else Y
    if isinstance(data, np.ndarray):
        return frame_chunked(data, None, "pixel_noise")
    if not isinstance(data, da.Array) or data.ndim != 3:
        raise ValueError(f"pixel_noise: Y must be a (frame, height, width) array, got "
                         f"{type(Y).__name__} with shape {getattr(Y, 'shape', None)}")
    return data if data.dtype == np.float32 else data.astype(np.float32)


def _segment_stats(seg: da.Array, band: slice) -> da.Array:
    """Lazy (2, H, W): band-averaged PSD and mean of one (L, H, W) segment."""
    L, H, W = seg.shape
    if len(seg.chunks[1]) > 1 or len(seg.chunks[2]) > 1:  # already tiles: join their frames
        tiles = seg.rechunk({0: -1})
    else:
        side = max(int(np.sqrt(_TILE_BYTES / (4 * L))), 16)
        tiles = seg.rechunk({0: -1, 1: min(side, H), 2: min(side, W)})
    return tiles.map_blocks(_tile_stats, band, dtype=np.float64,
                            chunks=((2,),) + tiles.chunks[1:])


def _tile_stats(x: np.ndarray, band: slice) -> np.ndarray:
    """(2, th, tw): mean PSD over the band's rfft bins (white noise sd s -> s^2), and mean."""
    xf = np.array(x, np.float32)  # own copy: modified in place below
    mean = xf.mean(axis=0, dtype=np.float64)
    xf -= mean.astype(np.float32)
    w = hann(xf.shape[0])
    xf *= w.astype(np.float32)[:, None, None]
    spec = scipy.fft.rfft(xf, axis=0)[band]
    power = (spec.real**2 + spec.imag**2).mean(axis=0, dtype=np.float64)
    return np.stack([power / float(np.sum(w**2)), mean])


def _level(mean_image: np.ndarray, threshold: str | float) -> float:
    if threshold == "mean":
        return float(mean_image.mean())
    if threshold == "median":
        return float(np.median(mean_image))
    return float(threshold)
