"""Steps 5a-5b: the per-pixel noise map and the checks before CNMF.

The noise map (5a) tells the temporal and spatial updates how much of each pixel's signal to
trust; 5b stops bad values and implausible component sizes before the expensive updates run.

5a streams the movie once through :func:`mps_core.cnmf.noise.pixel_noise`. 5b reads the
footprints and traces once for all per-component statistics (size, peak, footprint sum, trace
std and, with ``full_stats``, more), then keeps the components whose size (pixels > 0) lies in
[min_size, max_size]; unit ids are kept. Its report (``prep_report``) lists every component's
statistics, the resolved size limits and why each dropped component went.

Parameters with a ``None`` default are derived from the expected cell diameter d (step 3a's
``cell_size``); "a cell's area" means pi * (d / 2) ** 2 pixels.
"""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr
from pydantic import field_validator, model_validator

from ..cnmf.noise import SEGMENT_FRAMES, pixel_noise
from ..figures import Figure, HistPanel, ImagePanel, TextPanel
from ..paramtypes import P, StepParams
from ..registry import Preview, Step, StepError
from ..store import pixel_tiles
from . import sizes

STAGE = "CNMF preparation"


class NoiseParams(StepParams):
    noise_band: list[float] = P(
        [0.25, 0.5], "Frequency band, as fractions of the sampling rate (0.5 = Nyquist), over "
        "which each pixel's power spectral density is averaged; keep it above the calcium "
        "signal's frequencies.")
    smoothing_sigma: float = P(1.0, "Gaussian sigma for spatially smoothing the noise map; 0 "
                               "disables it, raise it if the map is speckled.",
                               ge=0, le=100, unit="px")
    scaling_factor: float = P(1.5, "Noise in active (bright) regions is multiplied by this to "
                              "account for the indicator's shot noise; 1 disables the scaling.",
                              ge=1, le=100)
    background_threshold: Literal["mean", "median", "custom"] = P(
        "mean", "Level of the mean image above which pixels count as active: its mean, its "
        "median (robust to bright outliers) or custom_threshold.")
    custom_threshold: float | None = P(
        None, "Activity level used when background_threshold is 'custom', in the movie's "
        "intensity units; raise it to scale fewer pixels.")
    max_frames: int = P(4000, "The noise is estimated from at most this many frames (contiguous "
                        "blocks spread over the recording); 0 uses every frame.",
                        ge=0, le=10000000, advanced=True, unit="frames")

    @field_validator("noise_band")
    @classmethod
    def _band(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not 0.0 <= v[0] < v[1] <= 0.5:
            raise ValueError(f"noise_band must be [low, high] with 0 <= low < high <= 0.5, "
                             f"got {v}")
        return v

    @model_validator(mode="after")
    def _custom(self) -> "NoiseParams":
        if self.background_threshold == "custom" and self.custom_threshold is None:
            raise ValueError("background_threshold 'custom' needs custom_threshold (a number); "
                             "or choose 'mean' or 'median'")
        return self


class PrepParams(StepParams):
    check_nan: bool = P(True, "Stop with a clear error if a footprint, trace or noise value is "
                        "NaN or Inf (slow on huge data, but these break CNMF).")
    full_stats: bool = P(False, "Compute detailed per-component statistics for troubleshooting "
                         "(slower).")
    min_size: int | None = P(
        None, "Components with fewer pixels are dropped; null: a tenth of a cell's area. Raise "
        "it to drop more small fragments.", ge=1, le=1000000, unit="px²")
    max_size: int | None = P(
        None, "Components with more pixels are dropped (likely merged cells or artifacts); "
        "null: 10 x a cell's area.", ge=1, le=10000000, unit="px²")

    @model_validator(mode="after")
    def _size_range(self) -> "PrepParams":
        if self.min_size is not None and self.max_size is not None \
                and self.min_size >= self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must be smaller than max_size "
                             f"({self.max_size})")
        return self


UNIT_CHUNK = 64  # footprints are stored 64 units per chunk (the artifact contract)


# -- 5a -----------------------------------------------------------------------------------

def estimate_noise(p: NoiseParams, ctx, movie_cropped: xr.DataArray) -> dict:
    """Step 5a: the (height, width) noise map of the cropped movie."""
    threshold = p.custom_threshold if p.background_threshold == "custom" \
        else p.background_threshold
    try:
        # read tile by tile from the store: rechunking whole frames held 500 at once
        sn = pixel_noise(pixel_tiles(movie_cropped, SEGMENT_FRAMES),
                         band=(p.noise_band[0], p.noise_band[1]), max_frames=p.max_frames,
                         smoothing_sigma=p.smoothing_sigma, active_scale=p.scaling_factor,
                         active_threshold=threshold,
                         compute=lambda *c: ctx.compute(*c, message="noise spectrum"))
    except ValueError as e:  # too few frames for the band, ...
        raise StepError(f"noise estimation: {e}") from None
    if not np.isfinite(sn).all():
        raise StepError("the noise map holds NaN or Inf values: the cropped movie has "
                        "non-finite pixels; check step 2e's fill_value and step 3a")
    coords = {k: movie_cropped.coords[k].values for k in ("height", "width")
              if k in movie_cropped.coords}
    noise = xr.DataArray(sn, dims=("height", "width"), coords=coords, name="noise",
                         attrs={"noise_band": list(p.noise_band),
                                "smoothing_sigma": p.smoothing_sigma,
                                "scaling_factor": p.scaling_factor,
                                "background_threshold": str(threshold)})
    return {"noise": noise}


def _preview_noise(outputs, inputs, params) -> Figure:
    sn = np.asarray(outputs["noise"].values)
    text = (f"median {np.median(sn):.4g}\nmean {sn.mean():.4g}\nmin {sn.min():.4g}\n"
            f"max {sn.max():.4g}\nband {params.noise_band} of the sampling rate\n"
            f"smoothing sigma {params.smoothing_sigma} px\n"
            f"active-region factor {params.scaling_factor}")
    return Figure("5a Noise estimation", [
        ImagePanel("noise map (sd per pixel)", sn, cmap="viridis"),
        HistPanel("noise histogram", {"noise sd": sn.ravel()}, xlabel="noise sd"),
        TextPanel("summary", text),
    ])


# -- 5b -----------------------------------------------------------------------------------

def _lazy(arr: xr.DataArray) -> da.Array:
    """The dask array under `arr` (store inputs are lazy; direct calls may pass numpy)."""
    return arr.data if isinstance(arr.data, da.Array) else da.from_array(arr.values)


def _lazy_stats(A: xr.DataArray, C: xr.DataArray, full: bool, check: bool) -> dict[str, da.Array]:
    """Per-component statistics as lazy (n,) arrays, read in one pass."""
    a, c = _lazy(A), _lazy(C)
    out = {"size_px": (a > 0).sum(axis=(1, 2)), "peak": a.max(axis=(1, 2)),
           "footprint_sum": a.sum(axis=(1, 2)), "trace_std": c.std(axis=1)}
    if check:
        out["nonfinite_A"] = (~da.isfinite(a)).sum(axis=(1, 2))
        out["nonfinite_C"] = (~da.isfinite(c)).sum(axis=1)
    if full:
        h, w = A.sizes["height"], A.sizes["width"]
        yy = da.arange(h, dtype=np.float64)[:, None]
        xx = da.arange(w, dtype=np.float64)[None, :]
        total = a.sum(axis=(1, 2), dtype=np.float64)
        out |= {"centroid_y": (a * yy).sum(axis=(1, 2)) / total,
                "centroid_x": (a * xx).sum(axis=(1, 2)) / total,
                "footprint_energy": (a.astype(np.float64) ** 2).sum(axis=(1, 2)),
                "trace_mean": c.mean(axis=1), "trace_min": c.min(axis=1),
                "trace_max": c.max(axis=1)}
    return out


def _check_units(A: xr.DataArray, C: xr.DataArray) -> None:
    if A.dims != ("unit_id", "height", "width") or C.dims != ("unit_id", "frame"):
        raise StepError(f"A_seed must be (unit_id, height, width) and C_seed (unit_id, frame); "
                        f"got {A.dims} and {C.dims}")
    if not np.array_equal(A.unit_id.values, C.unit_id.values):
        raise StepError("A_seed and C_seed list different unit ids; rerun step 4h")
    if A.sizes["unit_id"] == 0:
        raise StepError("there are no components to check (A_seed is empty); revisit steps "
                        "4a-4h")


def _nonfinite_error(stats: dict, unit_ids: np.ndarray, noise_bad: int) -> str | None:
    bad_a = unit_ids[stats["nonfinite_A"] > 0]
    bad_c = unit_ids[stats["nonfinite_C"] > 0]
    if not (bad_a.size or bad_c.size or noise_bad):
        return None
    parts = []
    if bad_a.size:
        parts.append(f"footprints of units {bad_a[:10].tolist()}")
    if bad_c.size:
        parts.append(f"traces of units {bad_c[:10].tolist()}")
    if noise_bad:
        parts.append(f"{noise_bad} pixels of the noise map")
    return ("NaN or Inf values in " + ", ".join(parts) + "; they break CNMF: rerun the step "
            "that made them (4e-4h or 5a), or turn check_nan off to go on anyway")


def _size_limits(p: PrepParams, cell_size: dict) -> tuple[float, float, float]:
    d = sizes.diameter(cell_size)
    lo = sizes.area(p.min_size, d, 0.1)
    hi = sizes.area(p.max_size, d, 10.0)
    if lo >= hi:
        raise StepError(f"min_size ({lo:.1f} px) must be smaller than max_size ({hi:.1f} px); "
                        f"set both explicitly")
    return d, lo, hi


def prepare(p: PrepParams, ctx, A_seed: xr.DataArray, C_seed: xr.DataArray,
            noise: xr.DataArray, cell_size: dict) -> dict:
    """Step 5b: NaN/Inf check, per-component statistics, size filter."""
    _check_units(A_seed, C_seed)
    if noise.shape != (A_seed.sizes["height"], A_seed.sizes["width"]):
        raise StepError(f"the noise map is {noise.shape[0]}x{noise.shape[1]} px but the "
                        f"footprints are {A_seed.sizes['height']}x{A_seed.sizes['width']}; "
                        f"rerun step 5a on the current cropped movie")
    d, lo, hi = _size_limits(p, cell_size)
    lazy = _lazy_stats(A_seed, C_seed, p.full_stats, p.check_nan)
    names = list(lazy)
    extra = [(~da.isfinite(_lazy(noise))).sum()] if p.check_nan else []
    values = ctx.compute(*lazy.values(), *extra, message="component statistics")
    stats = {n: np.asarray(v) for n, v in zip(names, values)}
    ids = A_seed.unit_id.values.astype(np.int64)
    if p.check_nan:
        msg = _nonfinite_error(stats, ids, int(values[-1]))
        if msg:
            raise StepError(msg)
    size = stats["size_px"]
    reason = np.where(size < lo, "too small", np.where(size > hi, "too large", ""))
    keep = np.flatnonzero(reason == "")
    if keep.size == 0:
        raise StepError(f"every component is outside the size range [{lo:.1f}, {hi:.1f}] px "
                        f"(sizes {int(size.min())}-{int(size.max())} px); adjust min_size / "
                        f"max_size or the cell diameter")
    A_prep = A_seed.isel(unit_id=keep).chunk({"unit_id": UNIT_CHUNK, "height": -1, "width": -1})
    C_prep = C_seed.isel(unit_id=keep)
    A_prep.name, C_prep.name = "A_prep", "C_prep"
    report = _prep_report(stats, ids, reason, d, lo, hi, cell_size)
    return {"A_prep": A_prep, "C_prep": C_prep, "prep_report": report}


def _prep_report(stats: dict, ids: np.ndarray, reason: np.ndarray, d: float, lo: float,
                 hi: float, cell_size: dict) -> dict:
    """JSON report: the resolved limits, counts, and a per-component table."""
    units = {"unit_id": ids.tolist(), "kept": (reason == "").tolist(),
             "reason": reason.tolist()}
    for n, v in stats.items():  # NaN / Inf (only with check_nan off) become null in JSON
        v = np.asarray(v)
        units[n] = v.tolist() if v.dtype.kind in "iub" else \
            [float(x) if np.isfinite(x) else None for x in v]
    dropped = reason != ""
    return {
        "cell_diameter_px": d, "cell_size_source": cell_size.get("source", ""),
        "min_size_px": lo, "max_size_px": hi,
        "n_components": int(ids.size), "n_kept": int((~dropped).sum()),
        "n_too_small": int((reason == "too small").sum()),
        "n_too_large": int((reason == "too large").sum()),
        "dropped_unit_ids": ids[dropped].tolist(),
        "units": units,
    }


def _preview_prep(outputs, inputs, params) -> Figure:
    r = outputs["prep_report"]
    u = r["units"]
    size = np.asarray(u["size_px"], float)
    kept = np.asarray(u["kept"], bool)
    num = lambda k: np.array([np.nan if x is None else x for x in u[k]], float)  # noqa: E731
    dropped = [f"{i} ({why})" for i, why in zip(u["unit_id"], u["reason"]) if why][:20]
    text = (f"cell diameter {r['cell_diameter_px']:.1f} px ({r['cell_size_source']})\n"
            f"size range [{r['min_size_px']:.1f}, {r['max_size_px']:.1f}] px\n"
            f"components {r['n_components']}, kept {r['n_kept']}\n"
            f"too small {r['n_too_small']}, too large {r['n_too_large']}\n"
            f"dropped: {', '.join(dropped) or 'none'}"
            + (" ..." if len(dropped) < r["n_components"] - r["n_kept"] else ""))
    return Figure("5b Validation and setup", [
        HistPanel("component size", {"kept": size[kept], "dropped": size[~kept]},
                  xlabel="pixels"),
        HistPanel("footprint peak", {"kept": num("peak")[kept]}),
        HistPanel("trace std", {"kept": num("trace_std")[kept]}),
        TextPanel("summary", text),
    ])


STEP_5A = Step(
    id="5a", title="Noise estimation", stage=STAGE,
    summary="Estimates each pixel's noise level from the high-frequency part of its power "
            "spectrum, optionally smoothed and scaled up in active regions. The temporal and "
            "spatial updates use this map.",
    params=NoiseParams, inputs=("movie_cropped",), outputs=("noise",), run=estimate_noise,
    previews=(Preview("noise", "Noise map", _preview_noise),),
)

STEP_5B = Step(
    id="5b", title="Validation and setup", stage=STAGE,
    summary="Checks footprints, traces and the noise map for NaN or Inf values and drops "
            "components whose size is outside the plausible range before CNMF starts.",
    params=PrepParams, inputs=("A_seed", "C_seed", "noise", "cell_size"),
    outputs=("A_prep", "C_prep", "prep_report"), run=prepare,
    previews=(Preview("components", "Component statistics", _preview_prep),),
)
