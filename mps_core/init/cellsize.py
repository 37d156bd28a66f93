"""Expected cell diameter from the data, and the summary images it is measured on.

:func:`estimate_cell_diameter` runs a multi-scale, scale-normalised Laplacian-of-Gaussian
(LoG) blob detector on a summary image (the max projection is preferred; see below):

1. ``R_s = -s^2 * LoG_s(image)`` for scales ``s`` on a geometric grid (ratio ``scale_step``)
   spanning ``min_d / 4 .. max_d / 4`` plus one scale beyond each end;
2. blobs are the local maxima of ``R`` in (scale, y, x) over 3x3x3 neighbourhoods at interior
   scales; the scale is refined by a parabola through the three responses around the maximum
   (in log scale);
3. *strong* blobs have ``R >= threshold_rel * (median of the 10 largest responses)`` and
   ``R >= 5 * the robust noise sd of R_s`` (MAD of the response map at that scale) and lie at
   least ``2 s + 1`` px inside the frame (and the ``mask`` if given): blobs cut by an edge have
   biased scales, and a masked (zero) outside makes an edge that looks like blobs;
4. diameter ``= 4 * median(s)`` over strong blobs, clipped to ``[min_d, max_d]``.

Scale-to-diameter conversion. For a Gaussian blob of sd ``sigma`` the normalised LoG response
at its centre, ``2 A sigma^2 s^2 / (sigma^2 + s^2)^2``, peaks exactly at ``s = sigma``.
Blurred one-photon somata look Gaussian, and their visible edge is where the profile has
fallen to ``exp(-2)`` of the peak, i.e. at ``2 sigma``: diameter ``4 s``. This is the
convention of ``mps_core.synth`` (footprint sd = ``cell_diameter / 4``), on which the
estimator is checked. (The usual ``2 sqrt(2) s`` is the diameter of a flat *disk* whose LoG
peaks at ``s``; on Gaussian-like cells it would read 29 % small.)

Which image: the max projection of the background-removed movie shows each cell at its
brightest with its footprint shape, so its blob scale is the footprint's. Camera noise
lifts the faint rim more than the bright centre (the maximum over frames of noise), which
narrows the blobs a little: measured on ``synth`` movies (top-hat filtered, 200 frames,
cell brightness 60) the estimate is 0.99 x the true diameter without noise and 0.90-0.94 x
at noise sd 3 (0.85 x at sd 6), for d = 6, 10, 16. Underestimating is the safe side (it
over-seeds rather than merges). The local correlation image saturates near 1 over the part
of a bright cell well above the noise, so its blobs look larger: 1.2-1.3 x on the same
movies; and on a field-wide correlated movie (neuropil, motion) it may hold no blob at all.

:func:`max_projection` and :func:`correlation_image` stream over frame chunks (one pass each).
The correlation image is, per pixel, the mean Pearson correlation over time with its 8
neighbours; each chunk task accumulates in float64 the sums, sums of squares and the four
neighbour cross-products (right, down, down-right, down-left) of the frames minus a reference
(the mean of the first chunk: correlation ignores per-pixel offsets, and removing them avoids
cancellation in ``E[xy] - E[x]E[y]``); partial sums are added in a task tree.
"""

from __future__ import annotations

from typing import Any, Callable

import dask
import numpy as np
from scipy import ndimage as ndi

from .svd import _add_inplace, _as_frames, _blocks, _tree, _unwrap

__all__ = ["estimate_cell_diameter", "max_projection", "correlation_image", "DIAMETER_PER_SCALE"]

DIAMETER_PER_SCALE = 4.0  # diameter = 4 x LoG scale (exp(-2) width of a Gaussian profile)
_NOISE_SDS = 5.0  # a blob's response must exceed this many robust sds of the response map
_TOP_N = 10  # reference response = median of the TOP_N strongest blobs (robust to one outlier)
_EDGE_SCALES = 2.0  # blobs closer than this many scales (+1 px) to the edge are ignored
_SUB = 32  # frames converted to float64 at a time in the correlation sums

ComputeFn = Callable[..., tuple]


# ----------------------------------------------------------------------------- diameter


def estimate_cell_diameter(image: np.ndarray, *, min_d: float = 4, max_d: float = 60, threshold_rel: float = 0.2,
                           scale_step: float = 1.1, mask: np.ndarray | None = None) -> tuple[float, dict]:
    """Cell diameter (px) of the blobs in ``image`` (H, W), and details for a preview.

    ``details``: ``positions`` (n, 2) (y, x), ``scales`` (n,), ``diameters`` (n,) and
    ``responses`` (n,) of all blobs found, ``strong`` (n,) bool (the ones used), ``n_strong``,
    ``diameter_per_scale``. Raises ValueError for bad parameters or when no strong blob is
    found (set the diameter by hand then).
    """
    img = _check_image(image, min_d, max_d, threshold_rel, scale_step, mask)
    scales = _scale_grid(min_d / DIAMETER_PER_SCALE, max_d / DIAMETER_PER_SCALE, scale_step)
    resp = np.stack([-(s**2) * ndi.gaussian_laplace(img, s, mode="reflect") for s in scales])
    blobs = _blob_peaks(resp, scales, scale_step)
    strong = _strong(blobs, resp, threshold_rel, mask, img.shape)
    details = {**blobs, "strong": strong, "n_strong": int(strong.sum()),
               "diameter_per_scale": DIAMETER_PER_SCALE, "diameters": DIAMETER_PER_SCALE * blobs["scales"]}
    if not strong.any():
        raise ValueError(f"estimate_cell_diameter: no clear blob between min_d={min_d} and max_d={max_d} px "
                         f"in the image; check the image or set the cell diameter by hand")
    d = float(np.clip(DIAMETER_PER_SCALE * np.median(blobs["scales"][strong]), min_d, max_d))
    return d, details


def _check_image(image, min_d, max_d, threshold_rel, scale_step, mask) -> np.ndarray:
    img = np.asarray(image, np.float64)
    if img.ndim != 2 or min(img.shape) < 3:
        raise ValueError(f"estimate_cell_diameter: image must be 2-D (height, width), got shape {img.shape}")
    if not (np.isfinite(min_d) and np.isfinite(max_d) and 0 < min_d < max_d):
        raise ValueError(f"estimate_cell_diameter: need 0 < min_d < max_d (px), got min_d={min_d!r}, max_d={max_d!r}")
    if not 0 < threshold_rel < 1:
        raise ValueError(f"estimate_cell_diameter: threshold_rel must be in (0, 1), got {threshold_rel!r}")
    if not 1 < scale_step <= 2:
        raise ValueError(f"estimate_cell_diameter: scale_step must be in (1, 2], got {scale_step!r}")
    if mask is not None and np.shape(mask) != img.shape:
        raise ValueError(f"estimate_cell_diameter: mask shape {np.shape(mask)} differs from image {img.shape}")
    return np.nan_to_num(img - np.nanmedian(img))


def _scale_grid(s_min: float, s_max: float, step: float) -> np.ndarray:
    """Geometric grid covering [s_min, s_max] with one extra scale on each side."""
    n = int(np.ceil(np.log(s_max / s_min) / np.log(step))) + 1
    return s_min * step ** np.arange(-1, n + 1)


def _blob_peaks(resp: np.ndarray, scales: np.ndarray, step: float) -> dict:
    """Local maxima of R in (scale, y, x) at interior scales, with refined scales."""
    peak = (resp == ndi.maximum_filter(resp, size=3, mode="nearest")) & (resp > 0)
    peak[0] = peak[-1] = False
    si, yi, xi = np.nonzero(peak)
    r0, rm, rp = resp[si, yi, xi], resp[si - 1, yi, xi], resp[si + 1, yi, xi]
    curv = rm - 2 * r0 + rp
    shift = np.where(curv < 0, 0.5 * (rm - rp) / np.where(curv < 0, curv, -1), 0.0)
    return {"positions": np.column_stack([yi, xi]).astype(float),
            "scales": scales[si] * step ** np.clip(shift, -0.5, 0.5),
            "responses": r0, "scale_index": si}


def _strong(blobs: dict, resp: np.ndarray, threshold_rel: float, mask: np.ndarray | None,
            shape: tuple[int, int]) -> np.ndarray:
    """Blobs strong relative to the best ones and to the noise, away from the edges."""
    r, si = blobs["responses"], blobs["scale_index"]
    if len(r) == 0:
        return np.zeros(0, bool)
    ref = np.median(np.sort(r)[::-1][:_TOP_N])
    noise = np.array([1.4826 * np.median(np.abs(m - np.median(m))) for m in resp])
    ok = (r >= threshold_rel * ref) & (r >= _NOISE_SDS * noise[si])
    inside = np.pad(np.ones(shape, bool) if mask is None else np.asarray(mask, bool), 1)
    dist = ndi.distance_transform_edt(inside)[1:-1, 1:-1]
    y, x = blobs["positions"].astype(int).T
    # +1 px: the staircase of a pixelated circular edge makes small blobs just inside it
    return ok & (dist[y, x] >= _EDGE_SCALES * blobs["scales"] + 1)


# ----------------------------------------------------------------------------- summary images


def max_projection(movie: Any, compute: ComputeFn | None = None) -> np.ndarray:
    """Maximum over frames (H, W) float32 of a (T, H, W) dask movie, in one pass."""
    X = _as_frames(movie, "max_projection")
    return np.asarray(_unwrap((compute or dask.compute)(X.max(axis=0))), np.float32)


def correlation_image(movie: Any, compute: ComputeFn | None = None) -> np.ndarray:
    """Mean temporal correlation of each pixel with its 8 neighbours, (H, W) float32, one
    streamed pass. Pixels without variance (and their pairs) count as correlation 0."""
    X = _as_frames(movie, "correlation_image")
    if X.ndim != 3 or X.shape[0] < 2:
        raise ValueError(f"correlation_image: movie must be (frames >= 2, height, width), got shape {X.shape}")
    blocks = _blocks(X)
    ref = dask.delayed(_mean_frame)(blocks[0])
    parts = [dask.delayed(_corr_sums)(b, ref) for b in blocks]
    sums = _unwrap((compute or dask.compute)(_tree(parts, _add_inplace)))
    return _corr_from_sums(sums, X.shape[0])


def _mean_frame(block: np.ndarray) -> np.ndarray:
    return np.asarray(block, np.float64).mean(axis=0)


# neighbour offsets (dy, dx) whose pairs are accumulated; the other 4 are their mirrors
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _pair_views(a: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of ``a (..., H, W)`` at p and p + (dy, dx) over the pixels p where both exist."""
    H, W = a.shape[-2:]
    ys, yt = slice(0, H - dy), slice(dy, H)
    xs, xt = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    return a[..., ys, xs], a[..., yt, xt]


def _corr_sums(block: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(6, H, W) float64: sum x, sum x^2 and the 4 neighbour cross-products (stored at the
    first pixel of each pair), x = frames - ref."""
    H, W = block.shape[1:]
    out = np.zeros((6, H, W))
    for start in range(0, len(block), _SUB):
        x = np.asarray(block[start:start + _SUB], np.float64) - ref
        out[0] += x.sum(0)
        out[1] += np.einsum("tij,tij->ij", x, x)
        for j, (dy, dx) in enumerate(_OFFSETS):
            a, b = _pair_views(x, dy, dx)
            _pair_views(out[2 + j], dy, dx)[0][...] += np.einsum("tij,tij->ij", a, b)
    return out


def _corr_from_sums(sums: np.ndarray, n: int) -> np.ndarray:
    mean = sums[0] / n
    var = np.maximum(sums[1] / n - mean**2, 0)
    sd = np.sqrt(var)
    total, count = np.zeros_like(mean), np.zeros_like(mean)
    for j, (dy, dx) in enumerate(_OFFSETS):
        ma, mb = _pair_views(mean, dy, dx)
        sa, sb = _pair_views(sd, dy, dx)
        cross = _pair_views(sums[2 + j], dy, dx)[0]
        den = sa * sb
        r = np.where(den > 0, (cross / n - ma * mb) / np.where(den > 0, den, 1), 0.0)
        for view in _pair_views(total, dy, dx):
            view += r
        for view in _pair_views(count, dy, dx):
            view += 1
    return (total / np.maximum(count, 1)).astype(np.float32)
