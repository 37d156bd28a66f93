"""Step 2f: check the corrected movie on a sample of frames before the expensive steps."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from ..framewise import sample_indices
from ..figures import Figure, HistPanel, ImagePanel, TextPanel
from ..paramtypes import P, StepParams
from ..registry import Preview, Step, StepError


class ValidationParams(StepParams):
    sample_frames: int = P(500, "Frames sampled evenly over the recording for the statistics.",
                           ge=10, le=100000, unit="frames")
    fail_on_nonfinite: bool = P(True, "Stop with an error when NaN or Inf values are found.")


def validate(p: ValidationParams, ctx, movie: xr.DataArray, movie_filtered: xr.DataArray) -> dict:
    n = movie.sizes["frame"]
    idx = sample_indices(movie.data.chunks[0], min(p.sample_frames, n))
    frames = movie.frame.values[idx]
    after = movie.data[idx].astype(np.float32)
    before = movie_filtered.sel(frame=frames).data.astype(np.float32)
    finite = da.isfinite(after)
    clean = da.where(finite, after, np.float32(np.nan))
    # reductions, not the sample itself: memory stays at a few frames whatever the frame size
    (mean, std, lo, hi, n_nan, n_inf, mean_before, mean_after) = ctx.compute(
        da.nanmean(clean), da.nanstd(clean), da.nanmin(clean), da.nanmax(clean),
        da.isnan(after).sum(), da.isinf(after).sum(), before.mean(axis=0),
        da.where(finite, after, 0).mean(axis=0), message="statistics on a sample of frames")
    stats = {
        "frames_total": int(n), "frames_sampled": int(len(idx)),
        "mean": float(mean), "std": float(std), "min": float(lo), "max": float(hi),
        "nan": int(n_nan), "inf": int(n_inf),
        "shape": [int(n), int(movie.sizes["height"]), int(movie.sizes["width"])],
    }
    if p.fail_on_nonfinite and (stats["nan"] or stats["inf"]):
        raise StepError(f"the corrected movie holds {stats['nan']} NaN and {stats['inf']} Inf "
                        f"values in {len(idx)} sampled frames; check 2b/2e (fill_value)")
    proj = xr.Dataset({"mean_before": (("height", "width"), np.asarray(mean_before, np.float32)),
                       "mean_after": (("height", "width"), np.asarray(mean_after, np.float32))})
    return {"validation": stats, "projections": proj}


def _preview(outputs, inputs, params) -> Figure:
    v, proj = outputs["validation"], outputs["projections"]
    text = "\n".join(f"{k}: {v[k]}" for k in ("frames_total", "frames_sampled", "mean", "std",
                                               "min", "max", "nan", "inf"))
    m = inputs["movie"]
    sample = np.asarray(m.data[sample_indices(m.data.chunks[0], 20)])
    return Figure("2f Validation", [
        ImagePanel("mean before motion correction", proj["mean_before"].values),
        ImagePanel("mean after motion correction", proj["mean_after"].values),
        HistPanel("pixel values (sample)", {"corrected": sample.ravel()[::7]}),
        TextPanel("statistics", text),
    ])


STEP_2F = Step(
    id="2f", title="Validation and preview", stage="Preprocessing",
    summary="Statistics on a sample of frames (mean, std, min, max), a NaN/Inf check, and mean "
            "projections before and after motion correction: a sharper mean means it worked.",
    params=ValidationParams, inputs=("movie", "movie_filtered"),
    outputs=("validation", "projections"),
    run=validate, previews=(Preview("summary", "Before / after", _preview),),
)
