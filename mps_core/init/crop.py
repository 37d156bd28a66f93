"""Step 3a numerics: crop the imaging field and estimate a static background.

Crop geometry (:func:`crop_box`)
    Pixel ``(i, j)`` has its centre at ``y = i, x = j``. The crop centre is the frame centre
    ``((H - 1) / 2 + offset_y, (W - 1) / 2 + offset_x)`` and its size is
    ``D = size_fraction * min(H, W)`` px.

    ``circle``
        The mask holds the pixels whose centre lies within ``D / 2`` of the crop centre; the
        box is the bounding box of those pixels.
    ``square``
        The box is ``round(D)`` pixels on a side, starting at
        ``floor(centre - round(D) / 2 + 0.5)``; the mask is all True.

    The box is clipped to the frame (a crop partly outside the frame keeps its inside part);
    a crop with no pixel inside the frame raises ValueError naming the offsets. ``full_frame``
    keeps the whole frame with an all-True mask. :class:`Crop` keeps the box offsets so any
    result on the crop can be placed back in the original pixel grid (:meth:`Crop.to_full`).

Static background (:func:`static_background`), all on the cropped mean frame ``m``:
    ``none``
        Zeros.
    ``ring``
        ``B = (m * K) / (mask * K)`` with ``K`` the annulus of pixels whose distance ``rho``
        from the kernel centre satisfies ``|rho - ring_radius| <= max(ring_width / 2, 0.5)``
        (``cv2.filter2D``, zero outside the frame and the mask). Dividing by the filtered mask
        (normalised convolution) makes ``K`` a normalised average of the *valid* pixels, so
        the zeros outside a circular crop or the frame do not darken the background near the
        edge. A ring average reproduces a constant and a linear gradient exactly wherever the
        whole ring is valid; nearer the edge it is a one-sided average (small bias for
        gradients). The centre of the ring (the cell itself) is excluded, so cells do not
        subtract themselves.
    ``lowrank``
        With ``G`` the Gaussian smoothing of sigma ``smoothing_sigma`` (identity if 0) and
        ``x_1..x_n`` the ``sample`` frames: ``mu = mean_j G x_j``; the spatial modes
        ``v_1..v_r`` are the top ``rank`` right singular vectors of the centred matrix
        ``[G x_j - mu]_j`` (n x pixels). The background of any frame ``x`` is
        ``B(x) = mu + V^T V (G x - mu)`` (:class:`LowRankBackground`, usable per frame). The
        static image returned is ``B(m)``: the smoothed mean projected onto the modes. When
        ``m`` is the mean of the same frames this is ``~mu`` (the modes only matter per frame).

    After ``ring`` the result is further smoothed with ``smoothing_sigma`` (normalised
    Gaussian, so it holds only structure larger than cells). Outside the mask the background
    is 0. :func:`subtract_background` removes it from frames, optionally clipping negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

__all__ = ["Crop", "crop_box", "static_background", "subtract_background", "LowRankBackground",
           "lowrank_background", "ring_kernel", "BACKGROUND_METHODS", "SHAPES"]

SHAPES = ("circle", "square")
BACKGROUND_METHODS = ("none", "ring", "lowrank")


# ----------------------------------------------------------------------------- crop


@dataclass(frozen=True, eq=False)
class Crop:
    """A crop box ``[y0:y0+h, x0:x0+w]`` of a ``full_shape`` frame and its (h, w) mask."""

    y0: int
    x0: int
    h: int
    w: int
    full_shape: tuple[int, int]
    mask: np.ndarray = field(repr=False)  # (h, w) bool, True inside the imaging field
    shape: str = "square"
    center: tuple[float, float] = (0.0, 0.0)  # (y, x) in full-frame pixels
    radius: float | None = None  # circle radius in px; None for a square / full frame

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, cols) slices of the box in the full frame."""
        return slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)

    def from_full(self, arr: Any) -> Any:
        """Cut the box out of ``arr (..., H, W)`` (numpy or dask); no masking."""
        _check_trailing(arr, self.full_shape, "from_full")
        rows, cols = self.slices
        return arr[..., rows, cols]

    def apply(self, arr: Any, fill: float = 0) -> Any:
        """``from_full`` then set pixels outside the mask to ``fill`` (numpy or dask)."""
        box = self.from_full(arr)
        if self.mask.all():
            return box
        return np.where(self.mask, box, np.asarray(fill, dtype=box.dtype))

    def to_full(self, arr: Any, full_shape: tuple[int, int] | None = None, fill: float = 0) -> Any:
        """Place ``arr (..., h, w)`` back in a ``full_shape`` frame (default: the original
        frame), ``fill`` elsewhere. Works on numpy and dask arrays."""
        full = tuple(full_shape) if full_shape is not None else self.full_shape
        if full != tuple(self.full_shape):
            raise ValueError(f"crop.to_full: full_shape {full} differs from the frame the crop was "
                             f"made for {tuple(self.full_shape)}")
        _check_trailing(arr, (self.h, self.w), "to_full")
        H, W = full
        pad = [(0, 0)] * (arr.ndim - 2) + [(self.y0, H - self.y0 - self.h), (self.x0, W - self.x0 - self.w)]
        return np.pad(arr, pad, mode="constant", constant_values=fill)

    def to_dict(self) -> dict:
        """JSON-friendly description (the mask is rebuilt by :meth:`from_dict`)."""
        return {"y0": self.y0, "x0": self.x0, "h": self.h, "w": self.w,
                "full_shape": list(self.full_shape), "shape": self.shape,
                "center": list(self.center), "radius": self.radius}

    @classmethod
    def from_dict(cls, d: dict) -> "Crop":
        """Inverse of :meth:`to_dict`."""
        mask = _box_mask(d["y0"], d["x0"], d["h"], d["w"], d["center"], d["radius"])
        return cls(int(d["y0"]), int(d["x0"]), int(d["h"]), int(d["w"]), tuple(d["full_shape"]), mask,
                   d["shape"], tuple(d["center"]), d["radius"])


def _check_trailing(arr: Any, shape: tuple[int, int], where: str) -> None:
    if getattr(arr, "ndim", 0) < 2 or tuple(arr.shape[-2:]) != tuple(shape):
        raise ValueError(f"crop.{where}: array must end with {tuple(shape)} (height, width), "
                         f"got shape {getattr(arr, 'shape', None)}")


def _box_mask(y0: int, x0: int, h: int, w: int, center, radius: float | None) -> np.ndarray:
    if radius is None:
        return np.ones((h, w), bool)
    yy = np.arange(y0, y0 + h)[:, None] - center[0]
    xx = np.arange(x0, x0 + w)[None, :] - center[1]
    return yy**2 + xx**2 <= radius**2


def crop_box(height: int, width: int, *, shape: str = "circle", size_fraction: float = 0.75,
             offset_y: float = 0, offset_x: float = 0, full_frame: bool = False) -> Crop:
    """The crop of a ``height x width`` frame (see the module docstring for the geometry)."""
    for name, val in (("height", height), ("width", width)):
        if int(val) != val or val < 1:
            raise ValueError(f"crop_box: {name} must be a positive integer, got {val!r}")
    height, width = int(height), int(width)
    if shape not in SHAPES:
        raise ValueError(f"crop_box: shape must be one of {list(SHAPES)}, got {shape!r}")
    if not (np.isfinite(size_fraction) and 0 < size_fraction <= 1):
        raise ValueError(f"crop_box: size_fraction must be in (0, 1], got {size_fraction!r}")
    for name, val in (("offset_y", offset_y), ("offset_x", offset_x)):
        if not np.isfinite(val):
            raise ValueError(f"crop_box: {name} must be a finite number of pixels, got {val!r}")
    if full_frame:
        c = ((height - 1) / 2.0, (width - 1) / 2.0)
        return Crop(0, 0, height, width, (height, width), np.ones((height, width), bool), "full", c, None)

    cy, cx = (height - 1) / 2.0 + offset_y, (width - 1) / 2.0 + offset_x
    size = size_fraction * min(height, width)
    if shape == "circle":
        r = size / 2.0
        (y0, y1), (x0, x1) = _circle_range(cy, r), _circle_range(cx, r)
    else:
        r = None
        n = max(1, int(round(size)))
        y0, x0 = int(np.floor(cy - n / 2 + 0.5)), int(np.floor(cx - n / 2 + 0.5))
        y1, x1 = y0 + n, x0 + n
    y0, y1 = _clip_range(y0, y1, height, "offset_y", offset_y)
    x0, x1 = _clip_range(x0, x1, width, "offset_x", offset_x)
    mask = _box_mask(y0, x0, y1 - y0, x1 - x0, (cy, cx), r)
    if not mask.any() and r is not None and r < 1:
        raise ValueError(f"crop_box: size_fraction={size_fraction!r} gives a circle of {size:.2g} px "
                         f"holding no pixel; use a larger size_fraction")
    if not mask.any():  # a circle whose inside pixels all fall outside the frame
        raise ValueError(f"crop_box: the circle centred at ({cy:g}, {cx:g}) has no pixel inside the "
                         f"{height}x{width} frame; reduce offset_y={offset_y!r} / offset_x={offset_x!r}")
    return Crop(y0, x0, y1 - y0, x1 - x0, (height, width), mask, shape, (cy, cx), r)


def _circle_range(c: float, r: float) -> tuple[int, int]:
    """[lo, hi) of the integer positions i with |i - c| <= r (at least the nearest pixel)."""
    lo, hi = int(np.ceil(c - r - 1e-9)), int(np.floor(c + r + 1e-9)) + 1
    if hi <= lo:  # circle thinner than a pixel: keep the nearest one
        lo = int(np.floor(c + 0.5))
        hi = lo + 1
    return lo, hi


def _clip_range(lo: int, hi: int, n: int, name: str, value: float) -> tuple[int, int]:
    lo_c, hi_c = max(lo, 0), min(hi, n)
    if hi_c <= lo_c:
        raise ValueError(f"crop_box: {name}={value!r} moves the crop entirely outside the frame "
                         f"(rows/cols {lo}..{hi - 1} of 0..{n - 1}); use a smaller offset")
    return lo_c, hi_c


# ----------------------------------------------------------------------------- background


def ring_kernel(radius: float, width: float) -> np.ndarray:
    """Normalised annulus kernel: 1 where ``|rho - radius| <= max(width/2, 0.5)``, sum 1."""
    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"static_background: ring_radius must be a number > 0 px, got {radius!r}")
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"static_background: ring_width must be a number > 0 px, got {width!r}")
    half = max(width / 2.0, 0.5)  # at least one pixel thick, so the ring is never empty
    n = int(np.ceil(radius + half))
    yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
    k = (np.abs(np.hypot(yy, xx) - radius) <= half).astype(np.float32)
    return k / k.sum()


def _normalised_filter(img: np.ndarray, valid: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Average of ``img`` over ``kernel`` using only ``valid`` pixels (0 where none)."""
    num = cv2.filter2D(np.where(valid, img, 0).astype(np.float32), -1, kernel,
                       borderType=cv2.BORDER_CONSTANT)
    den = cv2.filter2D(valid.astype(np.float32), -1, kernel, borderType=cv2.BORDER_CONSTANT)
    out = np.zeros_like(num)
    ok = den > 1e-6
    out[ok] = num[ok] / den[ok]
    return out


def _gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(4 * sigma + 0.5))
    g = cv2.getGaussianKernel(2 * r + 1, sigma, cv2.CV_32F)
    return (g @ g.T).astype(np.float32)


def _smooth(img: np.ndarray, sigma: float, valid: np.ndarray) -> np.ndarray:
    """Normalised Gaussian smoothing inside ``valid`` (identity for sigma 0)."""
    if sigma <= 0:
        return np.where(valid, img, 0).astype(np.float32)
    return _normalised_filter(img, valid, _gaussian_kernel(sigma))


@dataclass(frozen=True, eq=False)
class LowRankBackground:
    """Per-frame background ``B(x) = mean + modes^T modes (G x - mean)`` (module docstring)."""

    mean: np.ndarray  # (h, w) float32, mean of the smoothed sample
    modes: np.ndarray  # (rank, h, w) float32, orthonormal spatial modes
    sigma: float  # Gaussian smoothing applied to frames first
    mask: np.ndarray  # (h, w) bool

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Background of ``frames`` (n, h, w) or one (h, w) frame, float32."""
        arr = np.asarray(frames, np.float32)
        single = arr.ndim == 2
        arr = arr[None] if single else arr
        sm = np.stack([_smooth(f, self.sigma, self.mask) for f in arr]).reshape(len(arr), -1)
        m, V = self.mean.reshape(-1), self.modes.reshape(len(self.modes), -1)
        out = m + ((sm - m) @ V.T) @ V
        out = (out.reshape(arr.shape) * self.mask).astype(np.float32)
        return out[0] if single else out


def lowrank_background(sample: np.ndarray, rank: int, smoothing_sigma: float = 0.0,
                       mask: np.ndarray | None = None) -> LowRankBackground:
    """Fit the low-rank background model on ``sample`` frames (n, h, w)."""
    sample = np.asarray(sample, np.float32)
    if sample.ndim != 3 or sample.shape[0] < 2:
        raise ValueError(f"static_background: sample must be (frames >= 2, height, width) for "
                         f"'lowrank', got shape {sample.shape}")
    if int(rank) != rank or not 1 <= rank < sample.shape[0]:
        raise ValueError(f"static_background: rank must be an integer in [1, {sample.shape[0] - 1}] "
                         f"(fewer than the sample frames), got {rank!r}")
    valid = np.ones(sample.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    sm = np.stack([_smooth(f, smoothing_sigma, valid) for f in sample]).reshape(len(sample), -1)
    mu = sm.mean(0)
    # Spatial modes from the small (n x n) Gram matrix: cheap for n << pixels.
    xc = (sm - mu).astype(np.float64)
    evals, evecs = np.linalg.eigh(xc @ xc.T)
    order = np.argsort(evals)[::-1][:int(rank)]
    modes = (evecs[:, order].T @ xc)
    norms = np.linalg.norm(modes, axis=1, keepdims=True)
    modes = np.divide(modes, norms, out=np.zeros_like(modes), where=norms > 0)
    return LowRankBackground(mu.reshape(valid.shape).astype(np.float32),
                             modes.reshape((-1,) + valid.shape).astype(np.float32),
                             float(smoothing_sigma), valid)


def static_background(mean_frame: np.ndarray, method: str = "none", *, ring_radius: float | None = None,
                      ring_width: float | None = None, rank: int = 3, smoothing_sigma: float = 0.0,
                      sample: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Static background (h, w) float32 of the cropped field (methods: module docstring).

    ``mask`` (h, w) bool restricts the estimate to the imaging field (e.g. ``Crop.mask``).
    """
    m = np.asarray(mean_frame, np.float32)
    if m.ndim != 2:
        raise ValueError(f"static_background: mean_frame must be 2-D (height, width), got shape {m.shape}")
    if method not in BACKGROUND_METHODS:
        raise ValueError(f"static_background: method must be one of {list(BACKGROUND_METHODS)}, got {method!r}")
    if not (np.isfinite(smoothing_sigma) and smoothing_sigma >= 0):
        raise ValueError(f"static_background: smoothing_sigma must be >= 0 px, got {smoothing_sigma!r}")
    valid = np.ones(m.shape, bool) if mask is None else np.asarray(mask, bool)
    if valid.shape != m.shape:
        raise ValueError(f"static_background: mask shape {valid.shape} differs from mean_frame {m.shape}")
    if method == "none":
        return np.zeros(m.shape, np.float32)
    if method == "ring":
        if ring_radius is None or ring_width is None:
            raise ValueError("static_background: method 'ring' needs ring_radius and ring_width (px)")
        bg = _normalised_filter(m, valid, ring_kernel(ring_radius, ring_width))
        return (_smooth(bg, smoothing_sigma, valid) * valid).astype(np.float32)
    if sample is None:
        raise ValueError("static_background: method 'lowrank' needs sample frames (n, height, width)")
    if np.shape(sample)[1:] != m.shape:
        raise ValueError(f"static_background: sample frames {np.shape(sample)[1:]} differ from mean_frame {m.shape}")
    return lowrank_background(sample, rank, smoothing_sigma, valid)(m)


def subtract_background(frames: np.ndarray, background: np.ndarray, *, clip_negative: bool = False,
                        mask: np.ndarray | None = None) -> np.ndarray:
    """``frames - background`` (float32), negatives set to 0 if asked, 0 outside ``mask``.

    Works frame-chunk-wise, so it can be mapped over a dask movie with ``map_blocks``.
    """
    out = np.asarray(frames, np.float32) - np.asarray(background, np.float32)
    if clip_negative:
        np.maximum(out, 0, out=out)
    if mask is not None:
        out *= np.asarray(mask, bool)
    return out
