"""Steps 2c-2e: estimate brain motion, drop frames with implausible shifts, register."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import xarray as xr

from ..figures import Figure, HistPanel, LinePanel
from ..framewise import kept_frames, sample_indices
from ..motion.apply import apply_shifts_dask
from ..motion.estimate import STRIPE_RATIO, estimate_shifts, row_stripe_ratio
from ..motion.outliers import flag_erroneous
from ..paramtypes import P, StepParams
from ..registry import Preview, Step, StepError

MOTION_OUTLIER = 3  # removal code (1 and 2 are 2a's)


# -- 2c -----------------------------------------------------------------------------------

class MotionParams(StepParams):
    max_shift: float = P(20.0, "Largest shift searched for, in pixels; raise it for recordings "
                         "that move a lot.", gt=0, le=500, unit="px")
    upsample: int = P(50, "Sub-pixel precision: shifts are resolved to 1/upsample pixel.",
                      ge=1, le=1000, advanced=True)
    group_size: int = P(64, "Frames per template group; templates are built recursively from "
                        "groups so that slow drift over hours is followed.", ge=4, le=10000,
                        advanced=True, unit="frames")
    refine: bool = P(False, "Second pass against the final template (more accurate, costs one "
                     "more FFT per frame).", advanced=True)
    spatial_downsample: int = P(1, "Estimate on frames binned by this factor (faster on large "
                                "frames); shifts are scaled back.", ge=1, le=8, advanced=True)
    mesh: list[int] | None = P(None, "Piecewise-rigid (non-rigid) correction on a grid of "
                               "patches, e.g. [5, 5]; null for rigid.", advanced=True)
    source: Literal["raw", "filtered"] = P(
        "raw", "Frames the shifts are estimated on: 'raw' (2a's frames, flattened and "
        "band-passed inside the estimator) or 'filtered' (2b's output). On the simulated "
        "benchmark recordings 'raw' follows the true motion more closely (motion error with the "
        "other defaults: dense CA1 0.25 instead of 0.36 px, cortex 0.36 instead of 0.58 px).", advanced=True)
    flatten: float = P(10.0, "Each frame is divided by its local mean (Gaussian of this sigma) "
                       "before estimating, so illumination fall-off and vignetting, which do "
                       "not move with the brain, do not pull the shifts towards zero. 0 turns "
                       "it off.", ge=0, le=200, advanced=True, unit="px")
    lowpass: float = P(2.0, "Gaussian low-pass applied inside the estimator (sigma); removes "
                       "pixel noise. 0 turns it off.", ge=0, le=20, advanced=True, unit="px")
    highpass: float = P(10.0, "Gaussian high-pass applied inside the estimator (sigma); removes "
                        "the smooth background that does not move with the brain. 0 turns it "
                        "off.", ge=0, le=200, advanced=True, unit="px")
    destripe: Literal["auto", "on", "off"] = P(
        "auto", "Wireless sensors can add an offset to every row they read out, different in "
        "each frame; those stripes then drive the shifts. 'on' removes each row's offset "
        "before estimating, 'auto' does so when the first frames show such offsets (their row "
        "means change about 5 times more than noise explains), 'off' never.", advanced=True)
    whiten: float = P(0.25, "Spectral whitening of the correlation: 1 is pure phase "
                      "correlation (every spatial frequency counts the same, noise included), "
                      "0 plain cross-correlation (bright cells dominate).", ge=0, le=1,
                      advanced=True)


def estimate(p: MotionParams, ctx, movie_filtered: xr.DataArray, movie_raw: xr.DataArray,
             frame_index: xr.Dataset) -> dict:
    if p.mesh is not None and (len(p.mesh) != 2 or min(p.mesh) < 1):
        raise StepError(f"mesh must be two positive integers like [5, 5], got {p.mesh}")
    # The raw frames keep 2a's removals out exactly as 2b does, so both sources have the
    # same frames in the same order.
    movie = kept_frames(movie_raw, frame_index) if p.source == "raw" else movie_filtered
    ratio = _stripe_ratio(movie) if p.destripe == "auto" else None
    destripe = p.destripe == "on" or (ratio is not None and ratio > STRIPE_RATIO)
    shifts = estimate_shifts(
        movie.data, max_shift=p.max_shift, destripe=destripe, group_size=p.group_size,
        upsample=p.upsample, mesh=tuple(p.mesh) if p.mesh else None,
        spatial_downsample=p.spatial_downsample, refine=p.refine,
        flatten=p.flatten, lowpass=p.lowpass, highpass=p.highpass, whiten=p.whiten,
        compute=lambda *c: ctx.compute(*c, message="registering"), progress=ctx.progress)
    coords = {k: v for k, v in movie_filtered.coords.items() if v.dims == ("frame",)}
    if shifts.ndim == 2:
        arr = xr.DataArray(shifts.astype(np.float32), dims=("frame", "axis"),
                           coords=coords, name="shifts", attrs={"axis": "dy, dx"})
    else:
        arr = xr.DataArray(shifts.astype(np.float32),
                           dims=("frame", "mesh_y", "mesh_x", "axis"),
                           coords=coords, name="shifts", attrs={"axis": "dy, dx"})
    arr.attrs.update(destripe=bool(destripe),
                     row_stripe_ratio=None if ratio is None else round(ratio, 2))
    return {"shifts": arr}


def _stripe_ratio(movie: xr.DataArray) -> float | None:
    """`row_stripe_ratio` of the first 64 frames (a quick read; None when fewer than 2)."""
    n = min(64, movie.sizes["frame"])
    return row_stripe_ratio(np.asarray(movie.data[:n])) if n >= 2 else None


def rigid_part(shifts: xr.DataArray) -> np.ndarray:
    """(frame, 2) shifts; the mean over patches for piecewise-rigid ones."""
    s = np.asarray(shifts.values)
    return s if s.ndim == 2 else s.mean(axis=(1, 2))


def _preview_shifts(outputs, inputs, params) -> Figure:
    s = outputs["shifts"]
    r = rigid_part(s)
    title = "2c Motion estimation"
    if s.attrs.get("destripe"):
        title += " (row offsets removed before estimating)"
    return Figure(title, [
        LinePanel("shift over time", s.frame.values, {"dy": r[:, 0], "dx": r[:, 1]},
                  xlabel="original frame", ylabel="px"),
        HistPanel("shift distribution", {"dy": r[:, 0], "dx": r[:, 1]}, xlabel="px"),
    ])


STEP_2C = Step(
    id="2c", title="Motion estimation", stage="Preprocessing",
    summary="Estimates each frame's shift against a template built recursively from groups of "
            "frames (sub-pixel phase correlation), rigid or piecewise-rigid on a mesh.",
    params=MotionParams, inputs=("movie_filtered", "movie_raw", "frame_index"),
    outputs=("shifts",), run=estimate,
    previews=(Preview("shifts", "Shifts", _preview_shifts),),
)


# -- 2d -----------------------------------------------------------------------------------

class OutlierParams(StepParams):
    threshold_factor: float = P(5.0, "Frames whose shift lies more than this many (robust) "
                                "standard deviations from the median, on either axis, are "
                                "flagged.", gt=0, le=1000)
    max_abs_shift: float | None = P(None, "Optional absolute limit in pixels on |dy| and |dx|; "
                                    "null for none.", gt=0, le=1000, unit="px")
    drop_frames: bool = P(True, "Remove the flagged frames (otherwise only report them).")


def check_motion(p: OutlierParams, ctx, shifts: xr.DataArray) -> dict:
    s = np.asarray(shifts.values)
    limits = None if p.max_abs_shift is None else (p.max_abs_shift, p.max_abs_shift)
    flagged = flag_erroneous(s, threshold_factor=p.threshold_factor, abs_max=limits)
    if flagged.all():
        raise StepError(f"every frame is flagged as a motion outlier with threshold_factor="
                        f"{p.threshold_factor}; raise it or the absolute limit")
    r = rigid_part(shifts)
    coords = {k: v for k, v in shifts.coords.items() if v.dims == ("frame",)}
    removed = np.where(flagged & p.drop_frames, MOTION_OUTLIER, 0).astype(np.int8)
    ds = xr.Dataset({"dy": ("frame", r[:, 0]), "dx": ("frame", r[:, 1]),
                     "flagged": ("frame", flagged), "removed": ("frame", removed)},
                    coords=coords)
    ds["removed"].attrs["removal_codes"] = json.dumps({str(MOTION_OUTLIER): "motion outlier"})
    ds.attrs.update(threshold_factor=p.threshold_factor, n_flagged=int(flagged.sum()))
    return {"motion_qc": ds}


def _preview_outliers(outputs, inputs, params) -> Figure:
    q = outputs["motion_qc"]
    f = q.frame.values
    marks = f[q["flagged"].values]
    panels = []
    for axis in ("dy", "dx"):
        v = q[axis].values
        med = float(np.median(v))
        hl = {"median": med}
        if params.max_abs_shift:
            hl |= {"limit": params.max_abs_shift, "-limit": -params.max_abs_shift}
        panels.append(LinePanel(f"{axis} with flagged frames ({len(marks)})", f, {axis: v},
                                xlabel="original frame", ylabel="px", hlines=hl, marks=marks))
    return Figure("2d Erroneous frames", panels)


STEP_2D = Step(
    id="2d", title="Erroneous frames", stage="Preprocessing",
    summary="Flags frames whose shift is implausible (far from the median, or beyond an "
            "absolute limit) and removes them if asked; the removal is kept in the store.",
    params=OutlierParams, inputs=("shifts",), outputs=("motion_qc",), run=check_motion,
    previews=(Preview("outliers", "Flagged frames", _preview_outliers),),
)


# -- 2e -----------------------------------------------------------------------------------

class ApplyParams(StepParams):
    fill_value: float = P(0.0, "Value for pixels that the shift uncovers at the borders.",
                          ge=-1e6, le=1e6)


def apply(p: ApplyParams, ctx, movie_filtered: xr.DataArray, shifts: xr.DataArray,
          motion_qc: xr.Dataset) -> dict:
    movie = kept_frames(movie_filtered, motion_qc)
    s = shifts.sel(frame=movie.frame.values).values
    data = apply_shifts_dask(movie.data, s, fill_value=p.fill_value)
    out = movie.copy(data=data)
    out.name = "movie"
    out.attrs["registered"] = True
    return {"movie": out}


def _preview_applied(outputs, inputs, params) -> Figure:
    from ..figures import ImagePanel

    done, before = outputs["movie"], inputs["movie_filtered"]
    idx = sample_indices(done.data.chunks[0], 200)
    frames = done.frame.values[idx]
    after = np.asarray(done.data[idx]).mean(axis=0)
    raw = np.asarray(before.sel(frame=frames).data).mean(axis=0)
    return Figure("2e Apply transformation: mean of 200 frames (sharper = aligned)", [
        ImagePanel("before correction", raw), ImagePanel("after correction", after)])


STEP_2E = Step(
    id="2e", title="Apply transformation", stage="Preprocessing",
    summary="Applies the sub-pixel shifts to every kept frame and writes the motion-corrected "
            "movie (float32) once.",
    params=ApplyParams, inputs=("movie_filtered", "shifts", "motion_qc"), outputs=("movie",),
    run=apply, previews=(Preview("std", "Before / after", _preview_applied),),
    intermediate=("movie",),
)
