"""Steps 3a-3c: crop the field, decide the cell size, remove a static background, and seed
components with NNDSVD.

Pixel sizes follow the data: a parameter declared with a ``None`` default is derived from the
expected cell diameter d (step 1's ``cell_diameter_px``, estimated here from the data when that
is null and stored as the ``cell_size`` output). The derivation rule is stated in each
description and the resolved values are recorded in the outputs.

Artifacts written here (the contract with later steps):

* ``crop`` (JSON): the crop box in the input video's grid (``y0, x0, height, width,
  full_height, full_width, shape, size_fraction, offset_y, offset_x, full_frame``) plus the
  fields of :meth:`mps_core.init.crop.Crop.to_dict`, so ``Crop.from_dict(crop)`` rebuilds it.
* ``cell_size`` (JSON): ``diameter_px``, ``source`` ("parameter" | "estimated"), the blob
  estimate (``estimated_px``, the strong blobs' positions and diameters in crop pixels).
* ``mean_frame`` / ``max_projection``: mean and maximum over frames of the motion-corrected
  movie, FULL frame (the input video's grid, for export and for drawing the crop); attrs
  ``y0, x0`` of the crop.
* ``static_background`` (height, width) of the crop; ``movie_cropped`` (frame, height, width)
  float32, lazily cropped, background-subtracted and masked (0 outside a circular crop).
* ``nndsvd_spatial`` (component, height, width), ``nndsvd_temporal`` (component, frame),
  ``singular_values`` (component,) with the movie's total variance in its attrs; component 0
  is the background. ``nndsvd_spatial.attrs["fingerprint"]`` identifies one 3b result (4b
  uses it to refuse a watershed suggestion made for other components).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from ..figures import Figure, HistPanel, ImagePanel, LinePanel, TextPanel
from ..init.cellsize import estimate_cell_diameter
from ..init.crop import Crop, crop_box, lowrank_background, static_background, subtract_background
from ..init.nndsvd import nndsvd
from ..init.svd import randomized_svd, store_fit_rows
from ..paramtypes import P, StepParams
from ..registry import Preview, Step, StepError
from ..store import same_data
from . import sizes

STAGE = "Crop and initialisation"

# memory for the 'lowrank' frame sample: the sample, its smoothed copy and float64 work arrays
_LOWRANK_SAMPLE_BYTES = 1 << 30
_LOWRANK_COPIES = 5
_MAX_BLOBS_STORED = 2000  # blob positions kept in cell_size for the preview
_SPATIAL_CHUNK = 16  # components per zarr chunk of nndsvd_spatial


class CropParams(StepParams):
    use_full_frame: bool = P(False, "Keep the whole frame instead of cropping (background "
                             "removal below still applies); turn on when cells fill the frame.")
    shape: Literal["square", "circle"] = P(
        "circle", "Shape of the crop: 'circle' matches the round field of a GRIN lens "
        "(pixels outside it are set to 0), 'square' keeps the corners.")
    size_fraction: float = P(0.75, "Crop size (square side or circle diameter) as a fraction of "
                             "the frame's smaller side; lower it for a tighter, faster crop.",
                             gt=0, le=1)
    offset_x: int = P(0, "Horizontal shift of the crop centre from the frame centre; positive "
                      "moves the crop right.", ge=-10000, le=10000, unit="px")
    offset_y: int = P(0, "Vertical shift of the crop centre from the frame centre; positive "
                      "moves the crop down.", ge=-10000, le=10000, unit="px")
    background: Literal["none", "ring", "lowrank"] = P(
        "none", "Static background removed from every frame: 'none', 'ring' (the mean image "
        "convolved with an annulus) or 'lowrank' (mean plus the top spatial modes of a frame "
        "sample).")
    ring_radius: float | None = P(
        None, "Radius of the ring (annulus) for 'ring' background; null: 1.5 x cell diameter. "
        "Raise it if cells leave dark halos.", gt=0, le=1000, unit="px")
    ring_width: float | None = P(
        None, "Width of the annulus for 'ring' background; null: 0.25 x cell diameter (at least "
        "1 px). Wider rings give a smoother background.", gt=0, le=1000, unit="px")
    lowrank_rank: int = P(1, "Number of spatial modes (besides the mean) in the 'lowrank' "
                          "background; raise it when the background has several independent "
                          "patterns (e.g. vessels).", ge=1, le=50)
    lowrank_frames: int = P(1000, "Frames (evenly spaced) used to estimate the 'lowrank' "
                            "modes; more is steadier but slower.", ge=10, le=100000,
                            advanced=True, unit="frames")
    smoothing_sigma: float | None = P(
        None, "Gaussian sigma applied to the background estimate so it holds only structure "
        "larger than cells; null: 1 x cell diameter, 0 disables smoothing.",
        ge=0, le=1000, unit="px")
    clip_negatives: bool = P(False, "Set values that are negative after background removal to "
                             "0; leave off to keep the noise floor unbiased.")
    save_mean_image: bool = P(True, "Also write the cropped field's mean frame as a PNG image "
                              "in the session folder (for figures and presentations).")


AUTO_FIT_FRAMES = 4000  # frames 3b fits on when frame_subsample is 0 (auto)


def fit_subsample(frame_subsample: int, n_frames: int) -> int:
    """3b's frame step: the user's, or for 0 (auto) the smallest giving <= AUTO_FIT_FRAMES."""
    return int(frame_subsample) or max(1, -(-int(n_frames) // AUTO_FIT_FRAMES))


class NNDSVDParams(StepParams):
    n_components: int = P(100, "Components computed, background (component 0) included; raise "
                          "it for dense fields (cost grows about linearly).", ge=2, le=5000)
    power_iterations: int = P(5, "Power iterations of the randomised SVD; more refine the "
                              "singular vectors at the cost of one movie pass each.",
                              ge=0, le=50, advanced=True)
    oversampling: int = P(10, "Extra random directions of the randomised range finder beyond "
                          "n_components; more gives a more accurate truncated SVD.",
                          ge=0, le=1000, advanced=True)
    sparsity_threshold: float = P(0.05, "Values under this fraction of a component's maximum are "
                                  "set to 0; lower it for sparse, dim fields, raise it in dense "
                                  "fields to drop noise.", ge=0, lt=1)
    spatial_regularisation: bool = P(True, "Pull components toward compact, blob-like shapes "
                                     "(Gaussian smoothing of each spatial component).")
    regularisation_sigma: float | None = P(
        None, "Width of the spatial regularisation; null: 0.2 x cell diameter. Raise it for "
        "large, spread-out cells, lower it for small compact ones.", gt=0, le=100, unit="px")
    chunk_frames: int = P(0, "Frames per chunk read from the movie; 0 derives it from the memory "
                          "limit. Lower uses less memory but runs slower.",
                          ge=0, le=100000, advanced=True, unit="frames")
    frame_subsample: int = P(0, "Fit the spatial components on every k-th frame (1 = all "
                             f"frames). 0 (auto) uses every frame up to {AUTO_FIT_FRAMES} frames "
                             f"and every k-th beyond, so that about {AUTO_FIT_FRAMES} are used: "
                             "the fit then costs the same for a 10-minute and a 2-hour "
                             "recording. Temporal components still cover every frame.",
                             ge=0, le=1000)
    seed: int = P(0, "Seed of the randomised SVD, so a rerun gives the same components.",
                  ge=0, le=2**32 - 1, advanced=True)


class InitAnalysisParams(StepParams):
    gallery_size: int = P(16, "Number of components shown in the gallery (the strongest "
                          "first).", ge=1, le=500)
    save_stats_csv: bool = P(True, "Write the per-component statistics (variance explained, "
                             "size, peak) as a CSV file in the session folder.")


# ============================================================================== helpers


def frame_coords(arr: xr.DataArray) -> dict[str, Any]:
    """The frame-index coordinates of ``arr`` as numpy (frame, movie_number, time_s, ...)."""
    return {k: ("frame", np.asarray(v.values)) for k, v in arr.coords.items() if v.dims == ("frame",)}


def _whole_frames(movie: xr.DataArray):
    """The dask array of a (frame, height, width) movie with whole frames per chunk."""
    data = movie.data
    if not hasattr(data, "chunks"):  # numpy-backed (direct calls in notebooks / tests)
        import dask.array as da

        data = da.from_array(data, chunks=(max(1, min(len(data), 256)), -1, -1))
    if len(data.chunks[1]) > 1 or len(data.chunks[2]) > 1:
        data = data.rechunk({1: -1, 2: -1})
    return data


def _image(arr: np.ndarray, name: str, attrs: dict | None = None) -> xr.DataArray:
    h, w = arr.shape
    return xr.DataArray(np.asarray(arr, np.float32), dims=("height", "width"),
                        coords={"height": np.arange(h), "width": np.arange(w)}, name=name,
                        attrs=attrs or {})


def _to_uint8(img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Percentile-stretched 8-bit image (0.5-99.5 % inside the mask), 0 outside the mask."""
    img = np.asarray(img, np.float64)
    inside = np.ones(img.shape, bool) if mask is None else np.asarray(mask, bool)
    vals = img[inside & np.isfinite(img)]
    lo, hi = np.percentile(vals, [0.5, 99.5]) if vals.size else (0.0, 1.0)
    out = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1) * 255
    return np.where(inside, np.nan_to_num(out), 0).astype(np.uint8)


def mosaic(images: np.ndarray, gap: int = 1) -> np.ndarray:
    """Tile (n, h, w) images (each scaled to its own maximum) into one grid image."""
    n, h, w = images.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        top = float(np.nanmax(img)) if img.size else 0.0
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = \
            img / top if top > 0 else img
    return out


def circle_outline(cy: float, cx: float, r: float, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, n)
    return cy + r * np.sin(t), cx + r * np.cos(t)


def box_outline(y0: float, x0: float, y1: float, x1: float) -> tuple[np.ndarray, np.ndarray]:
    """Rectangle through pixel edges of rows y0..y1-1 and columns x0..x1-1."""
    ys = np.array([y0, y0, y1, y1, y0], float) - 0.5
    xs = np.array([x0, x1, x1, x0, x0], float) - 0.5
    return ys, xs


# ============================================================================== 3a


def _make_crop(p: CropParams, H: int, W: int) -> Crop:
    try:
        return crop_box(H, W, shape=p.shape, size_fraction=p.size_fraction, offset_y=p.offset_y,
                        offset_x=p.offset_x, full_frame=p.use_full_frame)
    except ValueError as e:
        raise StepError(f"{e} (step 3a parameters shape / size_fraction / offset_x / offset_y)") \
            from None


def crop_dict(crop: Crop, p: CropParams) -> dict:
    """The ``crop`` artifact: the contract fields plus Crop.to_dict() (mask rebuilt from it)."""
    H, W = crop.full_shape
    return {**crop.to_dict(), "y0": int(crop.y0), "x0": int(crop.x0), "height": int(crop.h),
            "width": int(crop.w), "full_height": int(H), "full_width": int(W),
            "shape": crop.shape, "size_fraction": float(p.size_fraction),
            "offset_y": int(p.offset_y), "offset_x": int(p.offset_x),
            "full_frame": bool(p.use_full_frame)}


def _lowrank_sample_index(p: CropParams, n_frames: int, frame_bytes: int, ctx) -> np.ndarray:
    """Evenly spaced frame indices for the 'lowrank' fit, capped so the sample fits in memory."""
    cap = max(p.lowrank_rank + 2, int(_LOWRANK_SAMPLE_BYTES // (frame_bytes * _LOWRANK_COPIES)))
    n = min(p.lowrank_frames, n_frames, cap)
    if n < p.lowrank_frames and n < n_frames:
        ctx.warn(f"lowrank background: {n} sample frames instead of lowrank_frames="
                 f"{p.lowrank_frames}, so the sample fits in memory")
    if n <= p.lowrank_rank:
        raise StepError(f"lowrank background needs more than lowrank_rank={p.lowrank_rank} "
                        f"frames; the movie has {n_frames}: lower lowrank_rank")
    return np.unique(np.linspace(0, n_frames - 1, n).round().astype(np.int64))


def _cell_size(config: dict, max_crop: np.ndarray, mask: np.ndarray) -> dict:
    """The diameter from step 1 if set, else the blob estimate on the max projection."""
    h, w = max_crop.shape
    max_d = float(min(60.0, max(8.0, min(h, w) / 2.0)))
    try:
        est, det = estimate_cell_diameter(max_crop, mask=mask, min_d=4.0, max_d=max_d)
        strong = det["strong"]
        idx = np.flatnonzero(strong)[:_MAX_BLOBS_STORED]
        blobs = {"y": det["positions"][idx, 0], "x": det["positions"][idx, 1],
                 "diameter": det["diameters"][idx]}
        estimate = {"estimated_px": float(est), "n_blobs": int(len(strong)),
                    "n_strong_blobs": int(strong.sum()), "blobs": blobs, "estimate_error": ""}
    except ValueError as e:
        estimate = {"estimated_px": None, "n_blobs": 0, "n_strong_blobs": 0,
                    "blobs": {"y": [], "x": [], "diameter": []}, "estimate_error": str(e)}
    given = config.get("cell_diameter_px")
    if given:
        d, source = float(given), "parameter"
    elif estimate["estimated_px"] is not None:
        d, source = estimate["estimated_px"], "estimated"
    else:
        raise StepError(f"the cell diameter could not be estimated from the data "
                        f"({estimate['estimate_error']}); set cell_diameter_px in step 1")
    return {"diameter_px": d, "source": source, "image": "max projection of the cropped movie",
            "min_d_px": 4.0, "max_d_px": max_d, **estimate}


def _clean_block(block: np.ndarray, background: Any, clip: bool, mask: np.ndarray) -> np.ndarray:
    """One chunk of cropped frames minus its background (static image or per-frame model)."""
    bg = background(block) if callable(background) else background
    return subtract_background(block, bg, clip_negative=clip, mask=mask)


def _background(p: CropParams, d: float, mean_crop: np.ndarray, sample: np.ndarray | None,
                mask: np.ndarray) -> tuple[np.ndarray, Any, dict]:
    """(static image, what to subtract per chunk, resolved sizes) of the chosen method."""
    sigma = sizes.length(p.smoothing_sigma, d, 1.0, minimum=0.0)
    if p.background == "none":
        zero = np.zeros(mean_crop.shape, np.float32)
        return zero, zero, {}
    if p.background == "ring":
        radius = sizes.length(p.ring_radius, d, 1.5)
        width = sizes.length(p.ring_width, d, 0.25)
        bg = static_background(mean_crop, "ring", ring_radius=radius, ring_width=width,
                               smoothing_sigma=sigma, mask=mask)
        return bg, bg, {"ring_radius_px": radius, "ring_width_px": width,
                        "smoothing_sigma_px": sigma}
    # lowrank: the modes only matter per frame, so every frame gets its own B(x)
    model = lowrank_background(sample, p.lowrank_rank, sigma, mask)
    return model(mean_crop), model, {"smoothing_sigma_px": sigma, "lowrank_rank": p.lowrank_rank,
                                     "lowrank_sample_frames": int(len(sample))}


def _save_png(ctx, crop: Crop, mean_crop: np.ndarray) -> None:
    if ctx.output_dir is None:
        return
    import cv2

    # not "mean_frame.*": the runner finds an output by that prefix
    path = Path(ctx.output_dir) / "cropped_mean_frame.png"
    if not cv2.imwrite(str(path), _to_uint8(mean_crop, crop.mask)):
        ctx.warn(f"could not write {path}")


def crop_and_background(p: CropParams, ctx, config: dict, movie: xr.DataArray) -> dict:
    """Step 3a: crop, cell diameter, static background, lazily cleaned cropped movie."""
    H, W = int(movie.sizes["height"]), int(movie.sizes["width"])
    T = int(movie.sizes["frame"])
    crop = _make_crop(p, H, W)
    data = _whole_frames(movie)
    rows, cols = crop.slices
    lazy = [data.mean(axis=0, dtype=np.float64), data.max(axis=0), data.min()]
    if p.background == "lowrank":
        idx = _lowrank_sample_index(p, T, crop.h * crop.w * 4, ctx)
        lazy.append(data[idx][:, rows, cols])
    got = ctx.compute(*lazy, message="mean and max projections")
    mean_full, max_full = np.asarray(got[0], np.float32), np.asarray(got[1], np.float32)
    lowest = float(got[2])
    sample = np.asarray(got[3], np.float32) if len(got) > 3 else None
    mean_crop, max_crop = crop.apply(mean_full), crop.apply(max_full)

    cell_size = _cell_size(config, max_crop, crop.mask)
    d = cell_size["diameter_px"]
    try:
        static, per_chunk, resolved = _background(p, d, mean_crop, sample, crop.mask)
    except ValueError as e:
        raise StepError(f"static background: {e}") from None

    cleaned = data[:, rows, cols].map_blocks(_clean_block, per_chunk, p.clip_negatives, crop.mask,
                                            dtype=np.float32)
    movie_cropped = xr.DataArray(
        cleaned, dims=("frame", "height", "width"),
        coords={**frame_coords(movie), "height": np.arange(crop.h), "width": np.arange(crop.w)},
        name="movie_cropped",
        attrs={**{k: v for k, v in movie.attrs.items() if isinstance(v, (str, int, float, bool))},
               "y0": int(crop.y0), "x0": int(crop.x0), "background": p.background,
               "clip_negatives": bool(p.clip_negatives)})
    unchanged = (p.background == "none" and (crop.h, crop.w) == (H, W) and crop.mask.all()
                 and movie.dtype == np.float32 and not (p.clip_negatives and lowest < 0))
    if unchanged:  # the corrected movie as it is: stored by linking its files, not rewritten
        movie_cropped = same_data(movie_cropped, movie)
    where = {"y0": int(crop.y0), "x0": int(crop.x0), "crop_height": int(crop.h),
             "crop_width": int(crop.w)}
    if p.save_mean_image:
        _save_png(ctx, crop, mean_crop)
    return {
        "crop": crop_dict(crop, p),
        "cell_size": {**cell_size, "background": p.background, **resolved},
        "mean_frame": _image(mean_full, "mean_frame", {**where, "frames": T}),
        "max_projection": _image(max_full, "max_projection", {**where, "frames": T}),
        "static_background": _image(static, "static_background",
                                    {"method": p.background, "clip_negatives": bool(p.clip_negatives),
                                     **{k: float(v) for k, v in resolved.items()}}),
        "movie_cropped": movie_cropped,
    }


def crop_outline(crop: dict) -> tuple[np.ndarray, np.ndarray]:
    """The crop's border in full-frame pixels (circle or box)."""
    if crop.get("radius") is not None:
        cy, cx = crop["center"]
        return circle_outline(cy, cx, crop["radius"], 120)
    return box_outline(crop["y0"], crop["x0"], crop["y0"] + crop["height"],
                       crop["x0"] + crop["width"])


def _preview_crop(outputs, inputs, params) -> Figure:
    crop, cs = outputs["crop"], outputs["cell_size"]
    ys, xs = crop_outline(crop)
    text = (f"crop: {crop['shape']}, rows {crop['y0']}..{crop['y0'] + crop['height'] - 1}, "
            f"columns {crop['x0']}..{crop['x0'] + crop['width'] - 1}\n"
            f"of a {crop['full_height']} x {crop['full_width']} frame\n"
            f"cell diameter {cs['diameter_px']:.1f} px ({cs['source']})\n"
            f"background: {cs['background']}")
    return Figure("3a Crop", [
        ImagePanel("mean frame (full) with the crop", outputs["mean_frame"].values,
                   outlines=[(ys, xs, "crop")]),
        TextPanel("crop", text)])


def _preview_background(outputs, inputs, params) -> Figure:
    crop = Crop.from_dict(outputs["crop"])
    mean_crop = crop.apply(outputs["mean_frame"].values)
    bg = outputs["static_background"].values
    after = subtract_background(mean_crop, bg, clip_negative=params.clip_negatives, mask=crop.mask)
    mc = outputs["movie_cropped"]
    t = mc.sizes["frame"] // 2
    f = int(mc.frame.values[t])
    before_frame = crop.apply(np.asarray(inputs["movie"].sel(frame=f).values, np.float32))
    return Figure(f"3a Background removal ({params.background})", [
        ImagePanel("cropped mean, before", mean_crop),
        ImagePanel("static background", bg),
        ImagePanel("cropped mean, after", after),
        ImagePanel(f"frame {f}, before", before_frame),
        ImagePanel(f"frame {f}, after", np.asarray(mc.isel(frame=t).values)),
    ])


def _preview_cell_size(outputs, inputs, params) -> Figure:
    crop, cs = Crop.from_dict(outputs["crop"]), outputs["cell_size"]
    img = crop.apply(outputs["max_projection"].values)
    b = cs.get("blobs", {})
    outlines = [(*circle_outline(y, x, dd / 2.0), "") for y, x, dd in
                list(zip(b.get("y", []), b.get("x", []), b.get("diameter", [])))[:300]]
    est = cs.get("estimated_px")
    text = (f"diameter used: {cs['diameter_px']:.2f} px ({cs['source']})\n"
            f"blob estimate: {'-' if est is None else f'{est:.2f} px'} from "
            f"{cs.get('n_strong_blobs', 0)} strong of {cs.get('n_blobs', 0)} blobs\n"
            f"circles: each strong blob at its own diameter\n"
            + (f"note: {cs['estimate_error']}" if cs.get("estimate_error") else ""))
    panels = [ImagePanel("max projection with blob diameters", img, cmap="gray", outlines=outlines),
              TextPanel("cell size", text)]
    if len(b.get("diameter", [])):
        panels.append(HistPanel("blob diameters (px)", {"strong blobs": np.asarray(b["diameter"])},
                                bins=30, xlabel="px"))
    return Figure("3a Cell size", panels)


# ============================================================================== 3b


def _fingerprint(S: np.ndarray, shape: tuple, *extra: Any) -> str:
    h = hashlib.sha1(np.asarray(S, np.float64).tobytes())
    h.update(repr((tuple(shape),) + extra).encode())
    return h.hexdigest()[:16]


def nndsvd_init(p: NNDSVDParams, ctx, movie_cropped: xr.DataArray, cell_size: dict) -> dict:
    """Step 3b: out-of-core randomised SVD, then NNDSVD (component 0 = background)."""
    d = sizes.diameter(cell_size)
    data = _whole_frames(movie_cropped)
    if p.chunk_frames:
        data = data.rechunk({0: p.chunk_frames})
    T, h, w = data.shape
    step = fit_subsample(p.frame_subsample, T)
    t_fit = -(-T // step)
    k = min(p.n_components, t_fit, h * w)
    if k < 2:
        raise StepError(f"the movie has {T} frames (every {step}-th used): too few "
                        f"for NNDSVD; lower frame_subsample")
    if k < p.n_components:
        ctx.warn(f"n_components={p.n_components} reduced to {k}: only {t_fit} frames are used")
    if step == 1:  # every pass reads every frame: a small movie is read from the store once
        data = ctx.hold(data)
    n_passes = 2 * p.power_iterations + 2 + (step > 1)
    done = [0]

    def compute(*collections):  # task progress within each pass, the pass in the message
        done[0] += 1
        return ctx.compute(*collections, message=f"randomised SVD, pass {done[0]}/{n_passes}")

    n_passes += step > 1 and ctx.output_dir is not None
    scratch = Path(tempfile.mkdtemp(prefix=".fit-rows-", dir=ctx.output_dir)) \
        if step > 1 and ctx.output_dir is not None else None
    try:  # the subsample goes to a scratch folder of the run, removed before the commit
        U, S, Vt, total = randomized_svd(
            data, k, n_oversample=p.oversampling, n_iter=p.power_iterations,
            frame_subsample=step, seed=p.seed, compute=compute,
            fit_store=(lambda rows: store_fit_rows(rows, scratch / "rows.zarr", compute))
            if scratch else None)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    ctx.check_cancel()
    sigma = sizes.length(p.regularisation_sigma, d, 0.2, minimum=0.1) \
        if p.spatial_regularisation else None
    Wsp, Ht = nndsvd(U, S, Vt, sparsity_threshold=p.sparsity_threshold, spatial_shape=(h, w),
                     regularisation_sigma=sigma)
    del U, Vt  # (k, pixels) each: not needed past the NNDSVD
    comp = np.arange(k)
    attrs = {"cell_diameter_px": d, "sparsity_threshold": p.sparsity_threshold,
             "regularisation_sigma_px": float(sigma) if sigma else 0.0,
             "fingerprint": _fingerprint(S, Wsp.shape, p.sparsity_threshold, sigma),
             "background_component": 0}
    spatial = xr.DataArray(Wsp, dims=("component", "height", "width"),
                           coords={"component": comp, "height": movie_cropped["height"].values,
                                   "width": movie_cropped["width"].values},
                           name="nndsvd_spatial", attrs=attrs
                           ).chunk({"component": _SPATIAL_CHUNK, "height": -1, "width": -1})
    temporal = xr.DataArray(Ht, dims=("component", "frame"),
                            coords={"component": comp, **frame_coords(movie_cropped)},
                            name="nndsvd_temporal", attrs={"fingerprint": attrs["fingerprint"]})
    sv = xr.DataArray(S.astype(np.float64), dims=("component",), coords={"component": comp},
                      name="singular_values",
                      attrs={"total_variance": float(total), "n_frames": int(T),
                             "n_pixels": int(h * w), "frame_subsample": step,
                             "convention": "uncentred: total_variance = sum of squares of the "
                                           "movie; component i explains S[i]^2 / total"})
    return {"nndsvd_spatial": spatial, "nndsvd_temporal": temporal, "singular_values": sv}


def _preview_nndsvd(outputs, inputs, params) -> Figure:
    W, Ht, S = outputs["nndsvd_spatial"], outputs["nndsvd_temporal"], outputs["singular_values"]
    top = np.asarray(W.isel(component=slice(1, 1 + min(48, W.sizes["component"] - 1)))
                     .max("component").values)
    return Figure("3b NNDSVD", [
        LinePanel("singular values", np.arange(S.sizes["component"]),
                  {"S": np.log10(np.maximum(S.values, 1e-30))}, xlabel="component",
                  ylabel="log10"),
        ImagePanel("component 0 (background)", W.isel(component=0).values),
        ImagePanel("max over components 1..48", top, cmap="viridis"),
        LinePanel("component 0 time course", Ht.frame.values, {"f": Ht.isel(component=0).values},
                  xlabel="original frame"),
    ])


# ============================================================================== 3c


def _component_stats(W: xr.DataArray, ctx) -> dict[str, np.ndarray]:
    """Per-component spatial statistics, reading the components in chunks."""
    k = W.sizes["component"]
    out = {key: np.zeros(k) for key in ("spatial_pixels", "spatial_peak", "spatial_sum",
                                       "centroid_y", "centroid_x")}
    yy = np.arange(W.sizes["height"])[:, None]
    xx = np.arange(W.sizes["width"])[None, :]
    for s in range(0, k, 64):
        ctx.check_cancel()
        (blk,) = ctx.compute(W.data[s:s + 64], message="component statistics")
        blk = np.asarray(blk, np.float64)
        tot = blk.sum(axis=(1, 2))
        sl = slice(s, s + len(blk))
        out["spatial_pixels"][sl] = (blk > 0).sum(axis=(1, 2))
        out["spatial_peak"][sl] = blk.max(axis=(1, 2))
        out["spatial_sum"][sl] = tot
        with np.errstate(invalid="ignore", divide="ignore"):
            out["centroid_y"][sl] = (blk * yy).sum(axis=(1, 2)) / tot
            out["centroid_x"][sl] = (blk * xx).sum(axis=(1, 2)) / tot
    return out


def init_analysis(p: InitAnalysisParams, ctx, nndsvd_spatial: xr.DataArray,
                  nndsvd_temporal: xr.DataArray, singular_values: xr.DataArray) -> dict:
    """Step 3c: per-component statistics (variance as a fraction of the movie's total)."""
    S = np.asarray(singular_values.values, np.float64)
    total = float(singular_values.attrs.get("total_variance", 0.0))
    if not total > 0:
        raise StepError("singular_values has no total_variance (or it is 0); rerun step 3b")
    frac = S**2 / total
    Ht = np.asarray(nndsvd_temporal.values, np.float64)
    stats = _component_stats(nndsvd_spatial, ctx)
    table = {"component": np.arange(len(S)), "is_background": np.arange(len(S)) == 0,
             "singular_value": S, "variance_fraction": frac,
             "cumulative_variance_fraction": np.cumsum(frac), **stats,
             "temporal_mean": Ht.mean(axis=1), "temporal_sd": Ht.std(axis=1),
             "temporal_max": Ht.max(axis=1)}
    table = {key: np.asarray(v).tolist() for key, v in table.items()}
    if p.save_stats_csv and ctx.output_dir is not None:
        write_csv(Path(ctx.output_dir) / "init_stats_table.csv", table)
    return {"init_stats": table}


def write_csv(path: Path, table: dict[str, list]) -> None:
    """A dict of equally long columns as a CSV file (numbers with full precision)."""
    cols = list(table)
    n = len(table[cols[0]]) if cols else 0
    fmt = lambda v: "" if v is None else (f"{v:.9g}" if isinstance(v, float) else str(v))
    lines = [",".join(cols)] + [",".join(fmt(table[c][i]) for c in cols) for i in range(n)]
    Path(path).write_text("\n".join(lines) + "\n")


def _preview_analysis(outputs, inputs, params) -> Figure:
    t = outputs["init_stats"]
    comp = np.asarray(t["component"])
    frac = np.asarray(t["variance_fraction"])
    W, Ht = inputs["nndsvd_spatial"], inputs["nndsvd_temporal"]
    n = min(params.gallery_size, W.sizes["component"] - 1)
    gallery = mosaic(np.asarray(W.isel(component=slice(1, 1 + n)).values)) if n > 0 else \
        np.zeros((2, 2))
    text = (f"components: {len(comp)} (0 = background)\n"
            f"background explains {100 * frac[0]:.2f} % of the total\n"
            f"components 1..{len(comp) - 1} explain {100 * frac[1:].sum():.3f} %\n"
            f"all: {100 * frac.sum():.2f} % of the movie's total sum of squares")
    return Figure("3c Initialisation analysis", [
        LinePanel("singular values", comp, {"S": np.log10(np.maximum(t["singular_value"], 1e-30))},
                  xlabel="component", ylabel="log10"),
        LinePanel("variance explained (fraction of the movie's total)", comp[1:],
                  {"per component": frac[1:],
                   "cumulative (1..i)": np.cumsum(frac[1:])}, xlabel="component"),
        ImagePanel("background: spatial map", W.isel(component=0).values),
        LinePanel("background: time course", Ht.frame.values, {"f": Ht.isel(component=0).values},
                  xlabel="original frame"),
        ImagePanel(f"components 1..{n} (each scaled to its max)", gallery, cmap="viridis"),
        TextPanel("summary", text),
    ])


# ============================================================================== declarations


STEP_3A = Step(
    id="3a", title="Crop and static background", stage=STAGE,
    summary="Crops the movie to the imaging field (square or circle, or the full frame) and "
            "optionally removes a static background. The crop offsets are kept so footprints can "
            "be placed back in the original video's pixel grid.",
    params=CropParams, inputs=("config", "movie"),
    outputs=("crop", "cell_size", "mean_frame", "max_projection", "static_background",
             "movie_cropped"),
    run=crop_and_background,
    previews=(Preview("crop", "Mean frame and crop", _preview_crop),
              Preview("background", "Before / after background removal", _preview_background),
              Preview("cell_size", "Cell size estimate", _preview_cell_size)),
)

STEP_3B = Step(
    id="3b", title="NNDSVD initialisation", stage=STAGE,
    summary="Computes a truncated SVD of the cropped movie out of core and turns it into "
            "non-negative components (NNDSVD). Component 0 is the background; the others are "
            "candidate cells.",
    params=NNDSVDParams, inputs=("movie_cropped", "cell_size"),
    outputs=("nndsvd_spatial", "nndsvd_temporal", "singular_values"),
    run=nndsvd_init, previews=(Preview("components", "NNDSVD components", _preview_nndsvd),),
)

STEP_3C = Step(
    id="3c", title="Initialisation analysis", stage=STAGE,
    summary="Shows the singular value spectrum, the variance explained as a fraction of the "
            "movie's total variance, the background component and a gallery of components, and "
            "saves per-component statistics.",
    params=InitAnalysisParams,
    inputs=("nndsvd_spatial", "nndsvd_temporal", "singular_values"),
    outputs=("init_stats",),
    run=init_analysis, previews=(Preview("analysis", "Spectrum and components", _preview_analysis),),
)
