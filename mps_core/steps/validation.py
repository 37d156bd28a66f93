"""Step 2f: check the corrected movie on a sample of frames before the expensive steps."""

from __future__ import annotations

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
    after = movie.data[idx]
    before = movie_filtered.sel(frame=frames).data
    (a, b) = ctx.compute(after, before, message="sampling frames")
    a = np.asarray(a, np.float32)
    finite = np.isfinite(a)
    stats = {
        "frames_total": int(n), "frames_sampled": int(len(idx)),
        "mean": float(np.nanmean(a)), "std": float(np.nanstd(a)),
        "min": float(np.nanmin(a)), "max": float(np.nanmax(a)),
        "nan": int(np.isnan(a).sum()), "inf": int(np.isinf(a).sum()),
        "shape": [int(n), int(movie.sizes["height"]), int(movie.sizes["width"])],
        "mean_before": np.asarray(b, np.float32).mean(0).tolist(),
        "mean_after": np.where(finite, a, 0).mean(0).tolist(),
    }
    if p.fail_on_nonfinite and (stats["nan"] or stats["inf"]):
        raise StepError(f"the corrected movie holds {stats['nan']} NaN and {stats['inf']} Inf "
                        f"values in {len(idx)} sampled frames; check 2b/2e (fill_value)")
    return {"validation": stats}


def _preview(outputs, inputs, params) -> Figure:
    v = outputs["validation"]
    before, after = np.asarray(v["mean_before"]), np.asarray(v["mean_after"])
    text = "\n".join(f"{k}: {v[k]}" for k in ("frames_total", "frames_sampled", "mean", "std",
                                               "min", "max", "nan", "inf"))
    m = inputs["movie"]
    sample = m.data[sample_indices(m.data.chunks[0], 20)]
    return Figure("2f Validation", [
        ImagePanel("mean before motion correction", before),
        ImagePanel("mean after motion correction", after),
        HistPanel("pixel values (sample)", {"corrected": np.asarray(sample).ravel()[::7]}),
        TextPanel("statistics", text),
    ])


STEP_2F = Step(
    id="2f", title="Validation and preview", stage="Preprocessing",
    summary="Statistics on a sample of frames (mean, std, min, max), a NaN/Inf check, and mean "
            "projections before and after motion correction: a sharper mean means it worked.",
    params=ValidationParams, inputs=("movie", "movie_filtered"), outputs=("validation",),
    run=validate, previews=(Preview("summary", "Before / after", _preview),),
)
