"""Steps 8a-8c: the final pass (YrA and temporal update from the refined footprints) and export.

8a and 8b reuse the parameter models of 6a and 6d, and their step functions' helpers
(:func:`mps_core.steps.temporal.yra_traces`, :func:`~mps_core.steps.temporal.deconvolve_units`),
so both passes are tuned with the same names and computed the same way; using the same step-8
values across sessions keeps traces comparable between recordings.

8b's ``include_background``: after a first solve, each unit's residual ``YrA - C - b0`` is
regressed on the (mean-removed) background trace f; that share of f is taken out of YrA and the
unit is solved again (one alternating step of the joint model ``YrA = C + b0 + beta f``). The
weights beta are in the solver report.

8c applies the last quality filter (all three checks are computed and reported for every unit,
whichever removes it), then writes the results with :mod:`mps_core.export` into
``ctx.output_dir / "export"``: footprints placed back in the input video's pixel grid (the crop
offsets of 3a re-applied, zeros outside), traces, spikes, motion and frame indices aligned with
C's columns. Checks:

* size: pixels where the footprint is > 0;
* SNR: the peak of C over the unit's noise level (8b's ``sn``, the noise of its YrA);
* correlation: Pearson correlation, over the footprint's bounding box padded by 2 px, between
  the footprint and the covariance of the movie with the unit's trace C (the movie weighted by
  the unit's activity, minus its mean: what the data look like under the unit while it is
  active). One streamed pass over the movie (:func:`mps_core.cnmf.spatial.sufficient_statistics`
  with one box per unit); skipped when ``min_correlation`` is -1.

Curation: the explorer keeps its labels in ``SESSION/curation.json`` (:mod:`mps_core.curation`;
the session folder is step 1's ``output_dir``). 8c reads that file at every run: with
``exclude_rejected`` on, units labelled "rejected" are left out of every export file and listed
in the JSON (``curation.excluded``); off, they are exported with their label (the units'
``curation`` column). The file is not a step output, so the runner does not mark 8c stale when
labels change: re-run 8c (seconds) to apply them. Merges, accepted units that the final filter
removed and restored quarantined units are applied by the explorer's curated export only.

NWB (``export_nwb``, :mod:`mps_core.nwb_export`): the session facts come from step 1 (animal
and session ids), 2a (orientation settings, recorded in the imaging plane's description) and
the recording folder (start time, see :func:`mps_core.nwb_export.recording_info`).

Parameters with a ``None`` default are derived from the expected cell diameter d (the
``cell_size`` output of 3a); "a cell's area" means pi * (d / 2) ** 2 pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import scipy.sparse as sp
import xarray as xr

from .. import export as ex
from ..cnmf import sparse_footprints as sf
from ..cnmf.spatial import BoxPlan, sufficient_statistics
from ..curation import CURATION_FILE, CurationError, load_curation
from ..figures import Figure, HistPanel, LinePanel, TextPanel
from ..nwb_export import recording_info
from ..paramtypes import P, StepParams
from ..registry import Preview, Step, StepError
from ..store import library_versions, now_iso
from . import sizes
from .motion import rigid_part
from .spatial import (aligned_traces, check_frames, diameter, read_footprints, require_units,
                      values)
from .temporal import (SolverSettings, TemporalSolverParams, YrAParams, deconvolve_units,
                       frame_coords, yra_traces)

STAGE = "Final pass and export"


class FinalYrAParams(YrAParams):
    """Step 6a's parameters, applied to the refined footprints of step 7f, and the model."""

    model_footprints: Literal["smoothed", "refined"] = P(
        "smoothed", "Footprints that describe the movie when the neighbours' light is removed "
        "from a unit's trace: 'smoothed' (7f's copy at the data's own smoothness, tails "
        "included, as the light really spreads) or 'refined' (the sharper footprints the "
        "traces are read through, as in 6a). Each trace is read through its refined footprint "
        "either way. On the simulated benchmark recordings 'smoothed' raised activity r by "
        "0.01-0.02 (dense CA1 0.597 -> 0.619) and left trace r and F1 within noise. Falls "
        "back to 'refined' when 7f stored no smoothed copy.", advanced=True)


class FinalTemporalParams(TemporalSolverParams):
    # the final YrA keeps some cross-talk of neighbouring cells, slow and not counted in the
    # high-frequency noise level: twice 6d's weight keeps it out of C and S (benchmark, dense
    # recordings: trace r 0.91 -> 0.94, activity r up; sparse, clean cells: unchanged)
    sparse_penalty: float = P(2.0, "Weight of the L1 penalty on spikes, in units of each unit's "
                              "noise level; higher gives fewer but surer spikes, lower finds "
                              "more events but more noise. Twice 6d's default, as the final "
                              "traces carry slow cross-talk the noise level does not count.",
                              ge=0, le=10000)
    include_background: bool = P(False, "Also fit the background trace (f) with the units, so "
                                 "that background fluctuations are not absorbed by the traces.")


class ExportParams(StepParams):
    min_size: int | None = P(
        None, "Units whose footprint has fewer pixels are left out; null: a quarter of a cell's "
        "area.", ge=0, le=1000000, unit="px²")
    # defaults from the benchmark and the synthetic truth: real cells peak at >= 13 noise
    # sds with footprint correlation >= 0.94, leftover noise units mostly under 6 and 0.5
    min_snr: float = P(5.0, "Units whose trace peak is under this many noise standard deviations "
                       "are left out; 0 keeps all.", ge=0, le=1000)
    min_correlation: float = P(0.6, "Units whose footprint correlates less than this with the "
                               "movie under it (while the unit is active) are left out; -1 keeps "
                               "all.", ge=-1, le=1)
    exclude_rejected: bool = P(True, "Leave out units rejected during curation; off exports them "
                               "too, labelled as rejected.")
    footprints: Literal["smoothed", "refined"] = P(
        "smoothed", "Footprints exported and checked: 'smoothed' (7f's copy smoothed to the "
        "smoothness the data show: the cells' spatial extent, tails included) or 'refined' "
        "(those step 8 read the traces through). 'smoothed' falls back to 'refined' when 7f "
        "stored no smoothed copy.")
    export_numpy: bool = P(True, "Write NumPy arrays (A, C, S, motion, frames, b, f, unit ids) "
                           "with footprints in the input video's pixel grid.")
    export_zarr: bool = P(True, "Write every final array with its coordinates as chunked zarr "
                          "(for large, out-of-memory analysis).")
    export_json: bool = P(True, "Write a JSON summary: units, centroids, sizes, SNR, labels, "
                          "every step's parameters and the software versions.")
    export_pickle: bool = P(False, "Write everything as one Python pickle (for Python users; MPS "
                            "never loads pickles).")
    export_nwb: bool = P(False, "Write an NWB file (Neurodata Without Borders) with footprints, "
                         "C and S, and frame timestamps.")
    export_table: bool = P(False, "Write per-frame tables (frame, movie, time, one column per "
                           "unit), one for C and one for S.")
    table_format: Literal["csv", "parquet"] = P(
        "csv", "File format of the per-frame tables: 'csv' (opens anywhere) or 'parquet' "
        "(smaller, faster).")
    figures: bool = P(True, "Write summary figures (PNG): footprints over the mean image, the "
                      "strongest traces, size and SNR histograms, units after each step.")
    figure_units: int = P(20, "Number of strongest units whose traces are drawn in the summary "
                          "figure.", ge=1, le=1000, advanced=True)


# ----------------------------------------------------------------------------- 8a


def final_yra(p: FinalYrAParams, ctx, A_refined: xr.DataArray, C_refined: xr.DataArray,
              b_init: xr.DataArray, f_init: xr.DataArray, movie_cropped: xr.DataArray,
              A_refined_smoothed: xr.DataArray | None = None) -> dict:
    """Step 8a: as 6a, from the refined footprints and traces of 7f (the neighbours' light
    removed as 7f's smoothed copy describes it, when asked and stored)."""
    require_units(A_refined.sizes["unit_id"], "A_refined", "8a")
    model = None
    if (p.model_footprints == "smoothed" and A_refined_smoothed is not None
            and np.array_equal(A_refined_smoothed.unit_id.values, A_refined.unit_id.values)):
        model = A_refined_smoothed
    yra = yra_traces(p, ctx, A_refined, C_refined, b_init, f_init, movie_cropped,
                     name="YrA_final", A_model=model)
    yra.attrs["model_footprints"] = "refined" if model is None else "smoothed"
    return {"YrA_final": yra}


def _sample_rows(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int)) if n else \
        np.zeros(0, int)


def _preview_yra(outputs, inputs, params) -> Figure:
    y, c = outputs["YrA_final"], inputs["C_refined"]
    n, T = y.sizes["unit_id"], y.sizes["frame"]
    pos = _sample_rows(n, 4)
    L = min(T, 2000)
    x = np.asarray(y.frame.values[:L])
    yv, cv = np.asarray(y.data[pos, :L]), np.asarray(c.data[pos, :L])
    return Figure("8a Final YrA", [
        LinePanel(f"unit {int(y.unit_id.values[i])}", x, {"YrA_final": yv[k], "C_refined": cv[k]},
                  xlabel="frame") for k, i in enumerate(pos)])


# ----------------------------------------------------------------------------- 8b

_FINAL_NAMES = {"C": "C_final", "S": "S_final", "b0": "b0_final", "c0": "c0_final",
                "g": "g_final", "report": "solver_report_final"}


def final_temporal(p: FinalTemporalParams, ctx, YrA_final: xr.DataArray,
                   A_refined: xr.DataArray, b_init: xr.DataArray | None = None,
                   f_init: xr.DataArray | None = None) -> dict:
    """Step 8b: as 6d with its own parameters; optionally with the background trace."""
    if not np.array_equal(YrA_final.unit_id.values, A_refined.unit_id.values):
        raise StepError("YrA_final and A_refined list different units; rerun step 8a")
    require_units(YrA_final.sizes["unit_id"], "YrA_final", "8b")
    s = SolverSettings.from_params(p)
    if not p.include_background:
        return deconvolve_units(YrA_final, s, ctx, _FINAL_NAMES)
    if f_init is None:
        raise StepError("include_background is on but there is no background trace f_init "
                        "(step 4e); run 4e or turn include_background off")
    if not np.array_equal(np.asarray(f_init.frame.values), np.asarray(YrA_final.frame.values)):
        raise StepError("f_init and YrA_final cover different frames; rerun steps 4e-8a")
    first = deconvolve_units(YrA_final, s, ctx, _FINAL_NAMES)
    y = values(ctx, YrA_final, "reading YrA").astype(np.float64)
    c = values(ctx, first["C_final"], "first solve").astype(np.float64)
    b0 = np.asarray(first["b0_final"].values, np.float64)
    beta = background_weights(y, c, b0, values(ctx, f_init, "reading f"))
    ft = np.asarray(f_init.values, np.float64) - float(np.mean(f_init.values))
    y2 = (y - beta[:, None] * ft[None, :]).astype(np.float32)
    out = deconvolve_units(YrA_final.copy(data=y2), s, ctx, _FINAL_NAMES)
    out["solver_report_final"]["background_weight"] = beta.tolist()
    out["solver_report_final"]["settings"]["include_background"] = True
    return out


def background_weights(y: np.ndarray, c: np.ndarray, b0: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Per unit, the least-squares weight of the mean-removed f in ``y - c - b0``."""
    ft = np.asarray(f, np.float64) - float(np.mean(f))
    den = float(ft @ ft)
    if den <= 0:
        return np.zeros(y.shape[0])
    return ((y - c - b0[:, None]) @ ft) / den


def _preview_temporal(outputs, inputs, params) -> Figure:
    C, S, y = outputs["C_final"], outputs["S_final"], inputs["YrA_final"]
    rep = outputs["solver_report_final"]
    n, T = C.sizes["unit_id"], C.sizes["frame"]
    pos = _sample_rows(n, 4)
    L = min(T, 2000)
    x = np.asarray(C.frame.values[:L])
    yv, cv, sv = (np.asarray(a.data[pos, :L]) for a in (y, C, S))
    b0 = np.asarray(outputs["b0_final"].values)[pos]
    panels = []
    for k, i in enumerate(pos):
        low = float(np.min(yv[k]))
        panels.append(LinePanel(f"unit {int(C.unit_id.values[i])}", x,
                                {"YrA": yv[k], "C + b0": cv[k] + b0[k], "S": low - sv[k]},
                                xlabel="frame"))
    st = rep["settings"]
    text = (f"{n} units; solvers {rep['solver_counts']}\nAR({st['ar_order']}), penalty "
            f"{st['sparse_penalty']}, zero threshold {st['zero_threshold']}\n"
            f"background fitted: {bool(st.get('include_background'))}\n"
            f"failures: {len(rep['failed_unit_ids'])}")
    panels.append(HistPanel("noise level sn", {"units": np.asarray(rep["units"]["sn"])}))
    return Figure("8b Final temporal update", panels + [TextPanel("solver report", text)])


# ----------------------------------------------------------------------------- 8c checks


def footprint_correlation(movie: Any, A: np.ndarray | sp.spmatrix, C: np.ndarray, *,
                          compute=None, chunk_frames: int | None = None, pad: int = 2,
                          shape: tuple[int, int] | None = None) -> np.ndarray:
    """(n,) correlation between each footprint and the movie's covariance with its trace.

    Over the footprint's bounding box padded by ``pad`` px: ``cov_p = mean_t(Y_pt c_t) -
    mean_t(Y_pt) mean_t(c_t)``; the result is Pearson's r between ``a_p`` and ``cov_p``. NaN
    for an empty footprint or a flat trace. One streamed pass over the movie. ``A`` dense
    (n, H, W), or sparse (n, H*W) with ``shape`` = (H, W).
    """
    A, (H, W) = sf.as_csr(A, shape, "footprint_correlation")
    C = np.asarray(C, np.float32)
    n = A.shape[0]
    plans, rows = [], []
    for u in range(n):
        box = sf.support_box(A, u, W)
        if box is None:
            continue
        y0, y1 = max(box[0] - pad, 0), min(box[1] - 1 + pad + 1, H)
        x0, x1 = max(box[2] - pad, 0), min(box[3] - 1 + pad + 1, W)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        pixels = (yy * W + xx).ravel().astype(np.int64)
        plans.append(BoxPlan((y0, y1, x0, x1), np.array([u], np.int64), pixels,
                             np.ones((pixels.size, 1), bool)))
        rows.append(u)
    out = np.full(n, np.nan)
    if not plans:
        return out
    YC, _ = sufficient_statistics(movie, C, plans=plans, compute=compute,
                                  chunk_frames=chunk_frames)
    mean = YC.pixel_mean.ravel().astype(np.float64)
    cmean = C.astype(np.float64).mean(axis=1)
    for u, plan, prod in zip(rows, plans, YC.products):
        cov = prod[:, 0] / YC.n_frames - mean[plan.pixels] * cmean[u]
        a = sf.dense_unit(A, u, (H, W)).ravel()[plan.pixels].astype(np.float64)
        out[u] = _pearson(a, cov)
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / den) if den > 0 else float("nan")


def unit_snr(C: np.ndarray, unit_ids: np.ndarray, report: dict) -> np.ndarray:
    """Peak of C over each unit's noise level from 8b's solver report (NaN if unknown)."""
    try:
        rid = np.asarray(report["units"]["unit_id"], np.int64)
        rsn = np.asarray(report["units"]["sn"], np.float64)
    except (KeyError, TypeError):
        raise StepError("the solver report of step 8b has no per-unit noise levels; rerun "
                        "8b") from None
    lookup = dict(zip(rid.tolist(), rsn.tolist()))
    sn = np.array([lookup.get(int(u), np.nan) for u in unit_ids])
    peak = np.asarray(C, np.float64).max(axis=1) if C.size else np.zeros(len(unit_ids))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sn > 0, peak / sn, np.nan)


def final_checks(sizes_px: np.ndarray, snr: np.ndarray, corr: np.ndarray, *, min_size: float,
                 min_snr: float, min_correlation: float) -> dict[str, np.ndarray]:
    """Per check, which units fail it (bool arrays). NaN fails SNR / correlation checks
    except when the threshold keeps everything (min_snr 0, min_correlation -1)."""
    return {
        "min_size": sizes_px < min_size,
        "min_snr": (min_snr > 0) & ~(np.nan_to_num(snr, nan=-np.inf) >= min_snr),
        "min_correlation": (min_correlation > -1)
        & ~(np.nan_to_num(corr, nan=-np.inf) >= min_correlation),
    }


# ----------------------------------------------------------------------------- 8c export


def _quarantine_labels(quarantine: Any, unit_ids: np.ndarray) -> list[str] | None:
    """Per exported unit, its quarantine label ('' when none), if 4h's table names units."""
    if not isinstance(quarantine, dict) or "unit_id" not in quarantine:
        return None
    ids = list(quarantine.get("unit_id") or [])
    key = next((k for k in ("label", "labels", "reason", "reasons", "status")
                if isinstance(quarantine.get(k), list) and len(quarantine[k]) == len(ids)), None)
    lookup = {}
    for i, u in enumerate(ids):
        v = quarantine[key][i] if key else "quarantined"
        lookup[int(u)] = "; ".join(map(str, v)) if isinstance(v, list) else str(v)
    return [lookup.get(int(u), "") for u in unit_ids]


def _removal_counts(table: Any) -> dict[str, int]:
    """Frames removed by reason, from a stored table with `removed` codes and their legend."""
    if table is None or "removed" not in getattr(table, "data_vars", {}):
        return {}
    codes = np.asarray(table["removed"].values)
    try:
        legend = json.loads(table["removed"].attrs.get("removal_codes", "{}"))
    except (TypeError, ValueError):
        legend = {}
    vals, counts = np.unique(codes[codes > 0], return_counts=True)
    return {legend.get(str(int(v)), f"code {int(v)}"): int(c) for v, c in zip(vals, counts)}


def frame_summary(frames: np.ndarray, table: dict[str, np.ndarray], frame_index: Any,
                  motion_qc: Any) -> dict:
    """Counts, removals by reason, first / last frame, duration and rate of the kept frames."""
    out: dict[str, Any] = {
        "frames_kept": int(frames.size),
        "first_frame": int(frames[0]) if frames.size else None,
        "last_frame": int(frames[-1]) if frames.size else None,
        "frames_in_index": int(frame_index.sizes["frame"]) if frame_index is not None else None,
        "frames_in_files": (int(frame_index.attrs["frames_in_files"])
                            if frame_index is not None and "frames_in_files" in frame_index.attrs
                            else None),
        "removed": {**_removal_counts(frame_index), **_removal_counts(motion_qc)},
    }
    if "movie_number" in table:
        out["movies"] = sorted({int(v) for v in table["movie_number"]})
    t = table.get("time_s")
    if t is not None and t.size > 1 and np.all(np.isfinite(t)):
        dt = np.diff(t)
        out["duration_s"] = float(t[-1] - t[0])
        out["median_frame_interval_s"] = float(np.median(dt))
    out["frames_removed_or_skipped"] = (out["frames_in_index"] - out["frames_kept"]
                                        if out["frames_in_index"] is not None else None)
    return out


def _grid_note(crop: dict, file_health: Any) -> dict:
    """Which pixel grid A is in: the input video's, or its spatially downsampled version."""
    H, W = int(crop["full_height"]), int(crop["full_width"])
    note = {"height": H, "width": W, "crop_y0": int(crop["y0"]), "crop_x0": int(crop["x0"]),
            "grid": "input video"}
    files = (file_health or {}).get("files") if isinstance(file_health, dict) else None
    sizes_ = [(f.get("height"), f.get("width")) for f in files or [] if f.get("height")]
    if sizes_:
        vh, vw = sizes_[0]
        note["video_height"], note["video_width"] = int(vh), int(vw)
        if (int(vh), int(vw)) != (H, W):
            note["grid"] = "downsampled"
            note["downsample_factor"] = round(vh / H, 4)
            note["warning"] = (f"A, b and motion are in the spatially downsampled grid "
                               f"({H}x{W}) of the {vh}x{vw} video (step 2a downsample_space)")
    return note


def run_export(p: ExportParams, ctx, A_refined: xr.DataArray, C_final: xr.DataArray,
               S_final: xr.DataArray, crop: dict, frame_index: xr.Dataset,
               motion_qc: xr.Dataset, shifts: xr.DataArray, mean_frame: xr.DataArray,
               config: dict, cell_size: dict, movie_cropped: xr.DataArray,
               solver_report_final: dict, b_init: xr.DataArray | None = None,
               f_init: xr.DataArray | None = None, quarantine: Any = None,
               file_health: Any = None, A_refined_smoothed: xr.DataArray | None = None) -> dict:
    """Step 8c: the final filter, then the exports (module docstring)."""
    if ctx.output_dir is None:
        raise StepError("step 8c has no output folder to export into (ctx.output_dir)")
    ids = np.asarray(A_refined.unit_id.values, np.int64)
    require_units(ids.size, "A_refined", "8c")
    check_frames("8c", movie_cropped, ("C_final", C_final), ("S_final", S_final))
    source, A_out = exported_footprints(p.footprints, A_refined, A_refined_smoothed)
    # footprints as a sparse (unit, pixel) matrix: the only dense copy is the exported one
    A, shape = read_footprints(ctx, A_out, "reading footprints")
    C = aligned_traces(ctx, C_final, ids, "C_final", "8c")
    S = aligned_traces(ctx, S_final, ids, "S_final", "8c")
    d = diameter(cell_size)
    min_size = sizes.area(p.min_size, d, 0.25, minimum=0)
    y0, x0, full = _crop_geometry(crop, shape)

    # -- the three checks, for every unit
    size_px = sf.positive_counts(A)
    snr = unit_snr(C, ids, solver_report_final)
    corr = np.full(ids.size, np.nan)
    if p.min_correlation > -1:
        corr = footprint_correlation(
            movie_cropped, A, C, shape=shape,
            compute=lambda *c: ctx.compute(*c, message="8c: footprint correlation"))
    fails = final_checks(size_px, snr, corr, min_size=min_size, min_snr=p.min_snr,
                         min_correlation=p.min_correlation)
    keep = ~np.any(np.stack(list(fails.values())), axis=0)
    removed_by = [",".join(k for k, bad in fails.items() if bad[i]) for i in range(ids.size)]
    if not keep.any():
        ctx.warn("the final filter removed every unit; the export holds no units")
    exported_at = now_iso()

    # -- what is exported
    cent = sf.centroids_csr(A, shape) + np.array([y0, x0])
    frames = np.asarray(C_final.frame.values, np.int64)
    coords = frame_coords(C_final)
    table = {k: np.asarray(v.values) for k, v in coords.items() if k in ex.FRAME_COLUMNS}
    motion = _motion_at(shifts, frames)
    b = (ex.place_in_frame(values(ctx, b_init, "reading b"), y0, x0, full)
         if b_init is not None else None)
    f = None
    if f_init is not None:
        f_sel = f_init.sel(frame=frames) if "frame" in f_init.coords else f_init
        f = values(ctx, f_sel, "reading f")
    mean_full = _mean_full(mean_frame, y0, x0, full)
    # -- the curation labels of the explorer (SESSION/curation.json), read at every run
    cur, cur_note = _session_curation(config)
    status = [cur.status(int(u)) if cur is not None else "unlabelled" for u in ids]
    rejected = np.array([st == "rejected" for st in status], bool)
    excluded = ids[keep & rejected] if p.exclude_rejected else ids[:0]
    export_keep = keep & ~rejected if p.exclude_rejected else keep
    k = np.flatnonzero(export_keep)
    labels = _quarantine_labels(quarantine, ids)
    units = {"centroid_y": np.round(cent[k, 0], 3), "centroid_x": np.round(cent[k, 1], 3),
             "size_px": size_px[k], "snr": np.round(snr[k], 4),
             "footprint_correlation": np.round(corr[k], 4)}
    if labels is not None:
        units["quarantine"] = [labels[i] for i in k]
    if cur is not None and not cur.is_empty():
        units["curation"] = [status[i] for i in k]
        units["curation_note"] = [cur.note(int(ids[i])) for i in k]
    counts = {"from 7f": int(ids.size)}
    gone = np.zeros(ids.size, bool)
    for name, bad in fails.items():
        gone |= bad
        counts[f"after {name}"] = int((~gone).sum())
    if p.exclude_rejected and excluded.size:
        counts["after curation"] = int(k.size)
    curation_meta = {
        "file": CURATION_FILE, "source": cur_note, "exclude_rejected": bool(p.exclude_rejected),
        "rejected": ids[rejected].tolist(), "excluded": excluded.tolist(),
        "accepted": [int(u) for u, st in zip(ids, status) if st == "accepted"],
        "labels_modified": cur.modified if cur is not None else None,
        "made_for": cur.made_for if cur is not None else None,
        "note": ("step 8c applies rejections only; accepted units the final filter removed, "
                 "merges and restored quarantined units are applied by the explorer's "
                 "curated export")}
    rec = recording_info(config, frame_index, file_health)
    if rec.device and rec.device.get("problem"):
        ctx.warn(f"Miniscope settings only partly written to the NWB file: {rec.device['problem']}")
    metadata = {
        "mps_export_version": 1,
        "recording": rec.to_dict(),
        "pixel_grid": _grid_note(crop, file_health),
        "frames": frame_summary(frames, table, frame_index, motion_qc),
        "final_filter": {
            "min_size_px": min_size, "min_snr": p.min_snr, "min_correlation": p.min_correlation,
            "removed": {name: ids[bad].tolist() for name, bad in fails.items()},
            "units_after_each_check": counts},
        "curation": curation_meta,
        "quarantine": quarantine,
        "footprints": source,
        "parameters": {"8c": p.model_dump(mode="json"), "config": config, "crop": crop,
                       "cell_size": cell_size,
                       "solver_8b": (solver_report_final or {}).get("settings")},
        "versions": library_versions(),
        "motion": "(dy, dx) shift that registered each kept frame, in pixels of the grid "
                  "above; the mean over patches when piecewise-rigid",
    }
    # only the exported rows of the traces from here on: on long recordings the full (units,
    # frames) C and S beside their exported copies set 8c's peak (long:30: +0.5 GB over long:10)
    C, S = C[k], S[k]
    # the exported footprints in the input video's grid, filled from the CSR a block of units
    # at a time as each writer reads them (828 units of 608 x 608 px are 1.2 GB dense)
    A_full = sf.FramedFootprints(A, k, shape, y0, x0, full)
    del A
    data = ex.ExportData(
        A=A_full, C=C, S=S, unit_ids=ids[k],
        frames=frames, motion=motion, frame_table=table, units=units, metadata=metadata,
        b=b, f=f, mean_frame=mean_full, exported_at=exported_at)
    formats = {name for name, on in (("numpy", p.export_numpy), ("zarr", p.export_zarr),
                                     ("json", p.export_json), ("pickle", p.export_pickle),
                                     ("nwb", p.export_nwb), ("table", p.export_table),
                                     ("figures", p.figures)) if on}
    folder = ctx.output_dir / "export"
    ctx.progress(0.9, "writing the export files")
    # the writers run in this process, one chunk at a time: the zarr writer otherwise encodes
    # several 64-unit footprint chunks at once (hundreds of MB on top of the dense A), or
    # ships the in-memory A to a cluster's workers
    with dask.config.set(scheduler="synchronous"):
        files = ex.write_formats(folder, data, formats, table_format=p.table_format,
                                 figure_units=p.figure_units, counts=counts)
    final_units = {
        "unit_id": ids.tolist(), "kept": keep.tolist(), "removed_by": removed_by,
        "curation": status, "exported": export_keep.tolist(),
        "size_px": size_px.tolist(), "snr": _nan_none(snr), "footprint_correlation":
        _nan_none(corr), "centroid_y": np.round(cent[:, 0], 3).tolist(),
        "centroid_x": np.round(cent[:, 1], 3).tolist()}
    manifest = {"folder": "export", "files": files,
                "n_units": int(k.size), "n_frames": int(frames.size),
                "excluded_by_curation": excluded.tolist(), "curation": cur_note,
                "units_after_each_check": counts,
                "thresholds": {"min_size_px": min_size, "min_snr": p.min_snr,
                               "min_correlation": p.min_correlation}}
    return {"final_units": final_units, "export_manifest": manifest}


def exported_footprints(choice: str, A_refined: xr.DataArray,
                        A_smoothed: xr.DataArray | None) -> tuple[str, xr.DataArray]:
    """(what was chosen, the footprints): 7f's smoothed copy when asked for and stored for the
    same units, else A_refined (step 8's)."""
    if choice == "smoothed" and A_smoothed is not None and A_smoothed.sizes["unit_id"] and \
            np.array_equal(A_smoothed.unit_id.values, A_refined.unit_id.values):
        return "A_refined_smoothed (7f's smoothed copy)", A_smoothed
    if choice == "smoothed":
        return "A_refined (7f stored no smoothed copy)", A_refined
    return "A_refined", A_refined


def _session_curation(config: dict | None) -> tuple[Any, str]:
    """(the session's curation labels or None, where they came from).

    The labels live in ``SESSION/curation.json``, the session folder being step 1's
    ``output_dir``. They are not a stored step output, so the runner does not fingerprint
    them: 8c reads the file afresh at every run, and records its modification time.
    """
    root = (config or {}).get("output_dir")
    if not root:
        return None, "no session folder in step 1's config: curation labels not read"
    path = Path(root) / CURATION_FILE
    if not path.exists():
        return None, f"no {CURATION_FILE} in the session folder: no curation labels"
    try:
        cur = load_curation(root)
    except CurationError as e:
        raise StepError(f"{e} (exclude_rejected reads it; fix the file, or move it away to "
                        f"export without curation)") from None
    return cur, f"{path}"


def _nan_none(x: np.ndarray) -> list:
    return [None if not np.isfinite(v) else round(float(v), 4) for v in np.asarray(x, float)]


def _crop_geometry(crop: dict, shape: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
    try:
        y0, x0 = int(crop["y0"]), int(crop["x0"])
        full = (int(crop["full_height"]), int(crop["full_width"]))
    except (KeyError, TypeError, ValueError):
        raise StepError("the crop of step 3a has no y0 / x0 / full_height / full_width; rerun "
                        "step 3a") from None
    h, w = shape
    if y0 < 0 or x0 < 0 or y0 + h > full[0] or x0 + w > full[1]:
        raise StepError(f"the footprints ({h}x{w}) at the crop offset ({y0}, {x0}) do not fit "
                        f"the {full[0]}x{full[1]} frame of step 3a; rerun the steps after 3a")
    return y0, x0, full


def _motion_at(shifts: xr.DataArray, frames: np.ndarray) -> np.ndarray:
    """(frame, 2) rigid (dy, dx) registration shift at each of ``frames`` (original indices)."""
    have = np.asarray(shifts.frame.values)
    missing = np.setdiff1d(frames, have)
    if missing.size:
        raise StepError(f"the shifts of step 2c do not cover frames {missing[:10].tolist()} of "
                        f"the traces; rerun the steps after 2c")
    return rigid_part(shifts.sel(frame=frames)).astype(np.float32)


def _mean_full(mean_frame: Any, y0: int, x0: int, full: tuple[int, int]) -> np.ndarray | None:
    if mean_frame is None:
        return None
    m = np.asarray(getattr(mean_frame, "values", mean_frame), np.float32)
    if m.shape == full:
        return m
    try:
        return ex.place_in_frame(m, y0, x0, full)
    except ValueError:
        return None


def _preview_export(outputs, inputs, params) -> Figure:
    u = outputs["final_units"]
    man = outputs["export_manifest"]
    counts = man["units_after_each_check"]
    kept = np.asarray(u["kept"], bool)
    size = np.asarray(u["size_px"], float)
    snr = np.array([np.nan if v is None else v for v in u["snr"]], float)
    corr = np.array([np.nan if v is None else v for v in u["footprint_correlation"]], float)
    removed = {}
    for r in u["removed_by"]:
        for name in filter(None, r.split(",")):
            removed[name] = removed.get(name, 0) + 1
    th = man["thresholds"]
    text = "\n".join([f"units from 7f: {len(kept)}, exported: {int(kept.sum())}"]
                     + [f"{k}: {v}" for k, v in counts.items()]
                     + [f"failing {name} ({th.get(name + '_px', th.get(name))}): {n}"
                        for name, n in removed.items()]
                     + [f"files: {len(man['files'])} in {man['folder']}/"]
                     + ([f"left out as rejected in curation: {man['excluded_by_curation']}"]
                        if man.get("excluded_by_curation") else []))
    return Figure("8c Final filter and export", [
        HistPanel("footprint size (px)", {"kept": size[kept], "removed": size[~kept]}),
        HistPanel("SNR", {"kept": snr[kept], "removed": snr[~kept]}),
        HistPanel("footprint / data correlation", {"kept": corr[kept], "removed": corr[~kept]}),
        TextPanel("what each check removed", text),
    ])


# ----------------------------------------------------------------------------- declarations

STEP_8A = Step(
    id="8a", title="Final YrA", stage=STAGE,
    summary="Recomputes each unit's raw trace (YrA) from the refined footprints of step 7f, as "
            "in step 6a, removing the neighbours' light as 7f's smoothed footprints spread it.",
    params=FinalYrAParams, inputs=("A_refined", "C_refined", "b_init", "f_init", "movie_cropped"),
    optional_inputs=("A_refined_smoothed",),
    outputs=("YrA_final",), run=final_yra,
    previews=(Preview("yra", "YrA vs refined traces", _preview_yra),),
)

STEP_8B = Step(
    id="8b", title="Final temporal update", stage=STAGE,
    summary="Reruns the temporal update (as in step 6d) on the final YrA, giving the final "
            "calcium traces C, spikes S, baselines and AR coefficients.",
    params=FinalTemporalParams, inputs=("YrA_final", "A_refined"),
    # the background is needed only when include_background is on
    optional_inputs=("b_init", "f_init"),
    outputs=("C_final", "S_final", "b0_final", "c0_final", "g_final", "solver_report_final"),
    run=final_temporal, previews=(Preview("traces", "Final traces", _preview_temporal),),
)

STEP_8C = Step(
    id="8c", title="Final filter and export", stage=STAGE,
    summary="Leaves out units that fail the final size, SNR and footprint-correlation checks, "
            "then exports footprints, traces, spikes and metadata in the chosen formats, placed "
            "back in the input video's pixel grid. Re-runs in seconds.",
    params=ExportParams,
    inputs=("A_refined", "C_final", "S_final", "crop", "frame_index", "motion_qc", "shifts",
            "mean_frame", "config", "cell_size", "movie_cropped", "solver_report_final"),
    # exported when present: background, quarantine labels; file_health tells the video's grid
    optional_inputs=("b_init", "f_init", "quarantine", "file_health", "A_refined_smoothed"),
    outputs=("final_units", "export_manifest"), run=run_export,
    previews=(Preview("filter", "Final filter", _preview_export),),
)
