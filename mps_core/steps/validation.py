"""Step 2f: check the corrected movie on a sample of frames before the expensive steps."""

from __future__ import annotations

import dask
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
    before = movie_filtered.sel(frame=frames).data.rechunk((after.chunks[0], -1, -1))
    # one task per sampled piece returns its partial sums: reductions sharing the sample held
    # all of it (500 frames, 740 MB at 608 x 608 px) until the last of them had run
    parts = ctx.compute([dask.delayed(_piece_sums)(a, b) for a, b in
                         zip(after.to_delayed().ravel(), before.to_delayed().ravel())],
                        message="statistics on a sample of frames")[0]
    cols = list(zip(*parts))
    n_val, total, squares, n_nan, n_inf = (sum(cols[i]) for i in (0, 1, 2, 5, 6))
    lo, hi = min(cols[3]), max(cols[4])
    mean_before, mean_after = sum(cols[7]) / len(idx), sum(cols[8]) / len(idx)
    mean = total / n_val if n_val else float("nan")
    std = np.sqrt(max(squares / n_val - mean**2, 0.0)) if n_val else float("nan")
    stats = {
        "frames_total": int(n), "frames_sampled": int(len(idx)),
        "mean": float(mean), "std": float(std),
        "min": float(lo) if n_val else float("nan"), "max": float(hi) if n_val else float("nan"),
        "nan": int(n_nan), "inf": int(n_inf),
        "shape": [int(n), int(movie.sizes["height"]), int(movie.sizes["width"])],
    }
    if p.fail_on_nonfinite and (stats["nan"] or stats["inf"]):
        raise StepError(f"the corrected movie holds {stats['nan']} NaN and {stats['inf']} Inf "
                        f"values in {len(idx)} sampled frames; check 2b/2e (fill_value)")
    proj = xr.Dataset({"mean_before": (("height", "width"), np.asarray(mean_before, np.float32)),
                       "mean_after": (("height", "width"), np.asarray(mean_after, np.float32))})
    return {"validation": stats, "projections": proj}


def _piece_sums(after: np.ndarray, before: np.ndarray) -> tuple:
    """Partial sums of one sampled piece: finite values (count, sum, sum of squares, min,
    max), NaN and Inf counts, and the per-pixel sums before / after (non-finite as 0)."""
    a = np.asarray(after, np.float32)
    finite = np.isfinite(a)
    if finite.all():
        z, vals = a, a
    else:
        z, vals = np.where(finite, a, np.float32(0)), a[finite]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (np.inf, -np.inf)
    return (int(vals.size), float(z.sum(dtype=np.float64)),
            float(np.einsum("tyx,tyx->", z, z, dtype=np.float64)), lo, hi,
            int(np.isnan(a).sum()), int(np.isinf(a).sum()),
            np.asarray(before, np.float32).sum(axis=0, dtype=np.float64),
            z.sum(axis=0, dtype=np.float64))


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
