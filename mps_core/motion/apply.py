"""Apply per-frame shifts (step 2e): sub-pixel translation or a piecewise-rigid field.

Convention: ``shifts[t] = (dy, dx)`` moves the content of frame t by +dy rows and +dx
columns (as ``scipy.ndimage.shift``), i.e. ``out[y, x] = frame[y - dy, x - dx]``.

Rigid shifts use ``cv2.warpAffine``; mesh shifts ``(T, my, mx, 2)`` hold one (dy, dx) per
patch of an ``my x mx`` grid whose patch centres sit at ``((i + 0.5) * H / my - 0.5,
(j + 0.5) * W / mx - 0.5)`` in pixel coordinates. That is exactly the sample grid of
``cv2.resize`` (half-pixel centres), so the dense field is the ``cv2.resize`` of the patch
grid (bilinear, so no overshoot; held constant beyond the outer patch centres) and the frame is
resampled with ``cv2.remap``.

Uncovered pixels - whose source position ``(y - dy, x - dx)`` falls outside
``[0, H-1] x [0, W-1]`` (tolerance ``COVER_TOL`` px) - are set to exactly ``fill_value``.
The mask is computed from the geometry, not from interpolated NaNs, so it does not depend
on OpenCV's border handling; the warp itself replicates the border so covered pixels next
to the edge are never blended with the fill value.
"""

from __future__ import annotations

import cv2
import dask
import dask.array as da
import numpy as np

__all__ = ["apply_shifts", "apply_shifts_dask", "dense_field", "covered_mask", "COVER_TOL"]

COVER_TOL = 1e-3  # px: source positions this far outside the frame still count as inside
_INTERP = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def _check_interp(interpolation: str) -> int:
    if interpolation not in _INTERP:
        raise ValueError(f"apply: interpolation must be one of {sorted(_INTERP)}, got {interpolation!r}")
    return _INTERP[interpolation]


def _as_frames(frames: np.ndarray) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 3:
        raise ValueError(f"apply: frames must be (frame, height, width), got shape {arr.shape}")
    return arr


def _check_shifts(shifts: np.ndarray, n_frames: int) -> np.ndarray:
    s = np.asarray(shifts, dtype=np.float64)
    if s.ndim not in (2, 4) or s.shape[-1] != 2 or s.shape[0] != n_frames:
        raise ValueError(
            f"apply: shifts must be (frame, 2) or (frame, my, mx, 2) with {n_frames} frames, got shape {s.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("apply: shifts contain NaN or inf")
    return s


def _rigid_valid_range(n: int, d: float) -> tuple[int, int]:
    """Rows (or columns) [lo, hi) whose source index i - d lies within [0, n-1] (+- tol)."""
    lo = int(np.ceil(d - COVER_TOL))
    hi = int(np.floor(n - 1 + d + COVER_TOL)) + 1
    return max(lo, 0), min(max(hi, 0), n)


def covered_mask(shape: tuple[int, int], shift: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of pixels whose source lies inside the frame, for one shift.

    shift: (2,) rigid (dy, dx) or (my, mx, 2) mesh shifts.
    """
    h, w = shape
    s = np.asarray(shift, dtype=np.float64)
    if s.ndim == 1:
        mask = np.zeros((h, w), bool)
        y0, y1 = _rigid_valid_range(h, s[0])
        x0, x1 = _rigid_valid_range(w, s[1])
        mask[y0:y1, x0:x1] = True
        return mask
    map_y, map_x = _source_maps((h, w), s)
    return _maps_inside(map_y, map_x, h, w)


def _maps_inside(map_y: np.ndarray, map_x: np.ndarray, h: int, w: int) -> np.ndarray:
    return (
        (map_y >= -COVER_TOL) & (map_y <= h - 1 + COVER_TOL) & (map_x >= -COVER_TOL) & (map_x <= w - 1 + COVER_TOL)
    )


def dense_field(shape: tuple[int, int], mesh_shift: np.ndarray, interpolation: str = "linear") -> np.ndarray:
    """Per-pixel (H, W, 2) float32 displacement interpolated from a (my, mx, 2) patch grid."""
    flag = _check_interp(interpolation)
    h, w = shape
    grid = np.ascontiguousarray(mesh_shift, dtype=np.float32)
    if grid.ndim != 3 or grid.shape[-1] != 2:
        raise ValueError(f"apply: mesh shift must be (my, mx, 2), got shape {grid.shape}")
    if grid.shape[0] == 1 and grid.shape[1] == 1:
        return np.broadcast_to(grid[0, 0], (h, w, 2)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=flag)


def _source_maps(shape: tuple[int, int], mesh_shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps: source row / column of every output pixel for a mesh shift."""
    h, w = shape
    field = dense_field(shape, mesh_shift, "linear")  # linear: no overshoot between patches
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy - field[..., 0], xx - field[..., 1]


def _warp_rigid(frame: np.ndarray, shift: np.ndarray, flag: int, fill: float,
                out: np.ndarray | None = None) -> np.ndarray:
    """One frame shifted; written into `out` (float32, frame's shape) when given."""
    h, w = frame.shape
    dy, dx = float(shift[0]), float(shift[1])
    if dy == 0.0 and dx == 0.0:
        if out is None:
            return frame.copy()
        out[...] = frame
        return out
    # Inverse map: out(x, y) = src(x - dx, y - dy).
    m = np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy]], dtype=np.float64)
    # straight into the caller's array: no per-frame temporary and copy
    out = cv2.warpAffine(frame, m, (w, h), dst=out, flags=flag | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    y0, y1 = _rigid_valid_range(h, dy)
    x0, x1 = _rigid_valid_range(w, dx)
    out[:y0] = fill
    out[y1:] = fill
    out[:, :x0] = fill
    out[:, x1:] = fill
    return out


def _warp_mesh(frame: np.ndarray, mesh_shift: np.ndarray, flag: int, fill: float) -> np.ndarray:
    h, w = frame.shape
    map_y, map_x = _source_maps((h, w), mesh_shift)
    out = cv2.remap(frame, map_x, map_y, flag, borderMode=cv2.BORDER_REPLICATE)
    out[~_maps_inside(map_y, map_x, h, w)] = fill
    return out


def apply_shifts(
    frames: np.ndarray,
    shifts: np.ndarray,
    fill_value: float = 0.0,
    *,
    interpolation: str = "cubic",
) -> np.ndarray:
    """Shift every frame by its (dy, dx); returns a new (T, H, W) float32 array.

    frames: (T, H, W) any real dtype; shifts: (T, 2) rigid or (T, my, mx, 2) mesh;
    fill_value: value of uncovered pixels (NaN allowed); interpolation: "linear" | "cubic".
    """
    flag = _check_interp(interpolation)
    arr = _as_frames(frames)
    s = _check_shifts(shifts, arr.shape[0])
    fill = np.float32(fill_value)
    out = np.empty(arr.shape, np.float32)
    for t in range(arr.shape[0]):
        frame = np.ascontiguousarray(arr[t], dtype=np.float32)
        if s.ndim == 2:
            _warp_rigid(frame, s[t], flag, fill, out=out[t])
        else:
            out[t] = _warp_mesh(frame, s[t], flag, fill)
    return out


def _apply_block(block: np.ndarray, shifts: np.ndarray, fill_value: float, interpolation: str) -> np.ndarray:
    return apply_shifts(block, shifts, fill_value, interpolation=interpolation)


def apply_shifts_dask(
    movie: da.Array,
    shifts: np.ndarray,
    fill_value: float = 0.0,
    *,
    interpolation: str = "cubic",
) -> da.Array:
    """Lazy `apply_shifts` over a (frame, height, width) dask array, chunked along frames only.

    Each task receives only its own slice of `shifts`. Returns a float32 dask array with the
    same frame chunks as `movie` (height and width become single chunks).
    """
    _check_interp(interpolation)
    if not isinstance(movie, da.Array) or movie.ndim != 3:
        raise ValueError(f"apply: movie must be a 3-D dask array (frame, height, width), got {type(movie).__name__}")
    s = _check_shifts(shifts, movie.shape[0])
    movie = movie.rechunk({1: -1, 2: -1})
    _, h, w = movie.shape
    parts = []
    start = 0
    for block, n in zip(movie.to_delayed().ravel(), movie.chunks[0]):
        part = dask.delayed(_apply_block, pure=True)(block, s[start : start + n], fill_value, interpolation)
        parts.append(da.from_delayed(part, shape=(n, h, w), dtype=np.float32))
        start += n
    if not parts:
        return da.zeros((0, h, w), dtype=np.float32)
    return da.concatenate(parts, axis=0)
