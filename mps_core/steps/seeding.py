"""Steps 4a-4h: split the NNDSVD components into candidate cells and clean the candidate set.

Watershed regions (4a-4b) are merged by distance (4c), given traces (4d), turned into the first
footprints A and traces C (4e, which adds the cells a greedy search of the movie finds where no
region is: `mps_core.seeding.supplement`), and cleaned: invalid components dropped (4f), split cells merged
by correlation (4g), likely artifacts moved to a quarantine list the user can review (4h).
Over-seeding is acceptable here (CNMF prunes later); missing a cell is not, so the defaults lean
permissive.

Parameters with a ``None`` default are derived from the expected cell diameter d (the
``cell_size`` output of step 3a); "a cell's area" means pi * (d / 2) ** 2 pixels. Every step
records the values it used (and where each came from) in its output's attrs or JSON.

Artifacts written here:

* ``regions`` / ``regions_merged``: a Dataset holding
  :meth:`mps_core.seeding.watershed.Regions.to_arrays` (variables ``shape``, ``component``,
  ``bbox``, ``offsets``, ``masks``, ``weights``) plus per-region ``centroid_y``, ``centroid_x``
  and ``area`` for previews; :func:`dataset_to_regions` reads it back.
* ``region_traces`` (unit_id, frame): the weighted mean trace of region i (unit id i).
* A_* (unit_id, height, width) float32 chunked 64 units; C_* (unit_id, frame) float32 with
  the frame coordinates. Unit ids are 0..n-1 from 4e on and are kept (a merge keeps the smallest
  id of its group). ``b_init`` (height, width), ``f_init`` (frame,) from NNDSVD component 0.
* ``quarantine`` (JSON): ids and reasons of the quarantined units; their footprints and traces
  stay in A_merged / C_merged (step 4g), from where they can be restored. Its ``smoothness``
  is the kept footprints' smoothing scale measured from the movie (as step 7e measures it).
* ``A_seed_smoothed``: each unit of A_seed smoothed to its own measured scale, at most the
  common one (coordinate ``smoothing_sigma_px``; no units when ``smoothed_copy`` is off): a
  watershed footprint stops where its region ends, a cell's light does not. Later steps use
  A_seed; ``mps export --step 4h`` exports this copy, the seeds' extent as the data shows it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import xarray as xr
import zarr
from pydantic import field_validator, model_validator

from ..cnmf import sparse_footprints as sf
from ..cnmf.spatial import WINDOW_PAD_D, measure_smoothness, sufficient_statistics, unit_windows
from ..figures import Figure, HistPanel, ImagePanel, LinePanel, TextPanel
from ..framewise import sample_indices
from ..init.crop import Crop, subtract_background
from ..paramtypes import P, StepParams
from ..registry import Preview, Step, StepError
from ..seeding.extract import drop_invalid, extract_traces, init_AC, make_recompute, normalise_rows
from ..seeding import greedy
from ..seeding.merge import spatial_merge, temporal_merge
from ..seeding.supplement import supplement_seeds
from ..seeding.quarantine import SCORE_COLUMNS, quarantine, score_components
from ..seeding.watershed import Regions, TopTwo, dominant_parts, search_parameters, segment_all
from . import sizes
from .initialisation import frame_coords, write_csv

STAGE = "Component detection"
UNIT_CHUNK = 64  # units per zarr chunk of every A
_COMPONENT_BATCH = 64  # NNDSVD components segmented per read
# 4a: a region of a plausible single cell has between these multiples of a cell's area
EXPECTED_AREA = (0.25, 2.5)
# defaults of 4b when neither a value nor a (fresh) 4a suggestion is there
DEFAULT_MIN_DISTANCE_D = 0.5
DEFAULT_THRESHOLD = 0.1
DEFAULT_SIGMA = 1.0
_MAX_OUTLINES = 300  # outlines drawn per preview panel
# 4e: the greedy search's cell scale, as a fraction of the cell diameter d. d (3a) measures a
# cell's blurred extent; the search's band-pass wants the soma (0.6 d: ~10 px on the simulated
# CA1 recording where d is 17 px)
GREEDY_SCALE = 0.6
SEARCH_SHARE = 0.75  # of the memory limit, for 4e's binned movie and tile searches
SCRATCH_TILE = 128  # px: spatial chunk of the binned movie on disk (tiles read from it)
_STACK_UNITS = 8  # traces in a preview trace stack
# 4h's smoothness measurement reads at most this many frames, spread over the recording in
# runs of whole chunks: its copy is for viewing and export, and a full read cost 100 s on a
# 10-minute 608 x 608 recording, while a few thousand frames hold enough activity
SMOOTHNESS_FRAMES = 4000


def _check_list(name: str, values: list[float], lo: float, hi: float,
                lo_open: bool = True) -> list[float]:
    """A candidate list must be non-empty, within (lo, hi], without repeats."""
    if not values:
        raise ValueError(f"{name} must list at least one value")
    for v in values:
        below = v <= lo if lo_open else v < lo
        if below or v > hi:
            side = "(" if lo_open else "["
            raise ValueError(f"{name}: {v} is outside {side}{lo}, {hi}]")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} lists a value twice: {values}")
    return values


class WatershedSearchParams(StepParams):
    min_distance_diameters: list[float] = P(
        [0.5, 0.75, 1.0], "Candidate minimum distances between region peaks, in cell diameters; "
        "add smaller values if touching cells come out merged.")
    thresholds: list[float] = P(
        [0.1, 0.2], "Candidate relative thresholds (fraction of a component's maximum a peak must "
        "exceed); lower values find more, dimmer regions.")
    sigmas: list[float] = P(
        [1.0, 2.0], "Candidate Gaussian smoothing widths applied before peak finding, in pixels; "
        "larger values merge nearby peaks.")
    sample_size: int = P(20, "Number of components (a seeded random sample) the combinations are "
                         "tried on; more is steadier but slower.", ge=1, le=5000)
    seed: int = P(0, "Seed of the component sample, so a rerun suggests the same parameters.",
                  ge=0, le=2**32 - 1, advanced=True)

    @field_validator("min_distance_diameters")
    @classmethod
    def _distances(cls, v: list[float]) -> list[float]:
        return _check_list("min_distance_diameters", v, 0.0, 10.0)

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: list[float]) -> list[float]:
        return _check_list("thresholds", v, 0.0, 1.0)

    @field_validator("sigmas")
    @classmethod
    def _sigmas(cls, v: list[float]) -> list[float]:
        return _check_list("sigmas", v, 0.0, 100.0, lo_open=False)


class WatershedParams(StepParams):
    apply_suggestion: bool = P(True, "Take 4a's suggestion for min_distance, threshold and sigma "
                               "when they are null here; a value set here always wins.")
    min_distance: float | None = P(
        None, "Minimum distance between two region peaks; null: 4a's suggestion when applied, "
        "else 0.5 x cell diameter. Lower it to split touching cells.", gt=0, le=1000, unit="px")
    threshold: float | None = P(
        None, "Relative threshold: a peak must exceed this fraction of the component's maximum; "
        "null: 4a's suggestion when applied, else 0.1. Lower finds dimmer regions.", gt=0, lt=1)
    sigma: float | None = P(
        None, "Gaussian smoothing width before peak finding; null: 4a's suggestion when applied, "
        "else 1.0 px. Raise it if single cells split into several regions.",
        ge=0, le=100, unit="px")
    min_region_size: int | None = P(
        None, "Regions with fewer pixels are dropped; null: a tenth of a cell's area. Keep it "
        "permissive: small regions are filtered later.", ge=1, le=1000000, unit="px²")
    min_dominance: float = P(
        1.0, "A region keeps only its connected part where its component reaches this fraction "
        "of the largest value another component takes there (dropped if none is left): this "
        "removes residuals of cells that another component already holds, which would otherwise "
        "chain neighbouring cells together when merging. Lower it to keep more overlap between "
        "touching cells; 0 keeps every region whole.",
        ge=0, le=100)


class SpatialMergeParams(StepParams):
    distance: float | None = P(
        None, "Regions whose centres are closer than this are merged; null: 0.5 x cell diameter. "
        "Raise it to merge more.", gt=0, le=1000, unit="px")
    size_ratio: float = P(5.0, "Two close regions are not merged when one is more than this many "
                          "times larger than the other; raise it to merge more freely.",
                          ge=1, le=1000)
    min_size: int | None = P(
        None, "Regions with fewer pixels are dropped after merging; null: a tenth of a cell's "
        "area.", ge=1, le=1000000, unit="px²")


class TemporalExtractionParams(StepParams):
    batch_size: int = P(10, "Regions whose traces are extracted together; larger batches are "
                        "faster but use more memory.", ge=1, le=10000, advanced=True)
    chunk_frames: int = P(0, "Frames read at a time; 0 derives it from the memory limit. Lower "
                          "uses less memory.", ge=0, le=100000, advanced=True, unit="frames")
    component_limit: int = P(0, "Process only the first N regions (for a quick test run); 0 "
                             "processes all.", ge=0, le=1000000)


class ACInitParams(StepParams):
    normalisation: Literal["max", "l1", "l2", "none"] = P(
        "max", "Scaling of each footprint: 'max' (peak 1, the usual choice), 'l1' (sum 1, when "
        "sizes vary a lot), 'l2' (unit energy) or 'none' (raw values); traces are scaled "
        "inversely.")
    skip_background: bool = P(True, "Keep NNDSVD component 0 out of A and C as the background "
                              "(b, f); turn off only to inspect it as an ordinary unit.")
    supplement: bool = P(True, "Also search the movie itself for cells (a greedy search by "
                         "peak-to-noise ratio with each found cell subtracted) and add those "
                         "that no region covers: in dense fields the regions give one seed per "
                         "bright spot and miss cells beside or under a brighter neighbour. "
                         "Costs one pass over the movie, plus the search.")
    supplement_min_pnr: float = P(8.0, "Peak-to-noise ratio a pixel needs (on the temporally "
                                  "smoothed movie) to start a supplementary seed; lower finds "
                                  "dimmer cells and more false ones.", gt=0, le=1000)
    supplement_min_distance: float = P(0.3, "A supplementary seed is added only when no region "
                                       "seed lies within this many cell diameters of it. Lower "
                                       "values add second seeds on cells a region already holds, "
                                       "and the two then share the cell's light: on the "
                                       "simulated CA1 benchmark 0.1 lowered F1 from 0.77 to 0.69.",
                                       ge=0, le=5, unit="x diameter")
    supplement_min_skewness: float = P(0.2, "A supplementary seed is added only when its trace "
                                       "is at least this skewed (calcium transients are, slow "
                                       "drifts of vessels and glow less so). On the simulated "
                                       "benchmark recordings 0.5 lost more cells than artifacts; "
                                       "0.2 is 4h's own skewness threshold.",
                                       ge=-10, le=100, advanced=True)
    supplement_max_frames: int = P(500, "The search runs on the movie averaged in bins of "
                                   "consecutive frames, at most this many bins; more costs "
                                   "time and memory (bins x frame size x 4 bytes).", ge=50,
                                   le=100000, advanced=True, unit="frames")


class DropInvalidParams(StepParams):
    check_nan: bool = P(True, "Drop components whose footprint or trace holds NaN or Inf values "
                        "(they break every later step).")
    check_empty: bool = P(True, "Drop components whose footprint has no positive pixel.")
    check_flat: bool = P(True, "Drop components whose trace is flat (carries no activity).")
    flat_tolerance: float = P(1e-6, "A trace counts as flat when its standard deviation is at "
                              "most this fraction of its largest absolute value; raise it to "
                              "drop nearly flat traces too.", ge=0, lt=1, advanced=True)


class TemporalMergeParams(StepParams):
    correlation_threshold: float = P(0.75, "Merge two components only when their traces "
                                     "correlate above this; lower it to merge more.", ge=0, le=1)
    overlap_threshold: float = P(0.3, "Merge two components only when their footprints also "
                                 "share more than this fraction of the smaller footprint's "
                                 "pixels; lower it to merge more.",
                                 ge=0, le=1)
    demix: bool = P(True, "Compare the traces after separating overlapping components by least "
                    "squares: the raw traces of neighbouring cells share each other's light and "
                    "would merge distinct cells in dense fields. Off compares the raw traces.")


class QuarantineParams(StepParams):
    enabled: bool = P(True, "Move likely artifacts to the quarantine list; off keeps every "
                      "component (scores are still computed and saved).")
    min_failed: int = P(2, "A component is quarantined when at least this many of the checks "
                        "below fail; 1 is the strictest.", ge=1, le=6)
    min_size: int | None = P(
        None, "Footprints with fewer pixels fail the size check; null: 0.2 x a cell's area.",
        ge=1, le=1000000, unit="px²")
    max_size: int | None = P(
        None, "Footprints with more pixels fail the size check (vessel fragments, edge glow); "
        "null: 6 x a cell's area.", ge=1, le=10000000, unit="px²")
    min_solidity: float = P(0.5, "Footprints whose area is under this fraction of their convex "
                            "hull's fail the shape check; lower it to quarantine fewer.",
                            ge=0, le=1)
    max_elongation: float = P(3.0, "Footprints whose long axis is more than this many times "
                              "their short axis fail the shape check (streaks); raise it to "
                              "quarantine fewer.", ge=1, le=1000)
    min_skewness: float = P(0.2, "Traces less skewed than this fail (calcium activity is "
                            "positively skewed, glow and drift are not); lower it to quarantine "
                            "fewer.", ge=-100, le=100)
    min_snr: float = P(2.0, "Traces whose peak signal is under this many noise standard "
                       "deviations fail; lower it to keep dimmer cells.", ge=0, le=1000)
    max_drift: float = P(0.5, "Traces whose slow trend carries more than this fraction of their "
                         "variance fail (bleaching, glow); raise it to quarantine fewer.",
                         ge=0, le=1)
    drift_window_frames: int = P(300, "Width of the running median that defines a trace's slow "
                                 "trend; keep it well above a calcium transient's length.",
                                 ge=3, le=1000000, advanced=True, unit="frames")
    smoothed_copy: bool = P(
        True, f"Also measure, in one read of the movie (at most {SMOOTHNESS_FRAMES:,} frames, "
        "spread over the recording), how smooth the kept footprints are in the "
        "data, and store a copy with each unit smoothed to its own scale, at most the common "
        "one (A_seed_smoothed). Watershed footprints stop where their region ends, while a "
        "cell's light spreads as far as the optics blur it; the copy shows that extent and is "
        "what `mps export --step 4h` exports. Later steps use A_seed either way; off saves the "
        "read.", advanced=True)

    @model_validator(mode="after")
    def _size_range(self) -> "QuarantineParams":
        if self.min_size is not None and self.max_size is not None \
                and self.min_size >= self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must be smaller than max_size "
                             f"({self.max_size})")
        return self


# ============================================================================== storage helpers


def regions_to_dataset(R: Regions, name: str, attrs: dict) -> xr.Dataset:
    """The ``regions`` artifact: Regions.to_arrays() plus per-region centroids and areas."""
    arr = R.to_arrays()
    return xr.Dataset(
        {"shape": ("axis", arr["shape"]), "component": ("region", arr["component"]),
         "bbox": (("region", "corner"), arr["bbox"].reshape(-1, 4)),
         "offsets": ("offset", arr["offsets"]), "masks": ("pixel", arr["masks"]),
         "weights": ("pixel", arr["weights"]),
         "centroid_y": ("region", R.centroid[:, 0]), "centroid_x": ("region", R.centroid[:, 1]),
         "area": ("region", R.area)},
        coords={"region": np.arange(len(R))}, attrs={"artifact": name, **attrs})


def dataset_to_regions(ds: xr.Dataset, name: str = "regions") -> Regions:
    """Inverse of :func:`regions_to_dataset`."""
    try:
        return Regions.from_arrays({k: np.asarray(ds[k].values) for k in
                                    ("shape", "component", "bbox", "offsets", "masks", "weights")})
    except (KeyError, ValueError, IndexError) as e:
        raise StepError(f"the stored {name} are not readable ({e}); rerun the step that made "
                        f"them") from None


def _dense_rows(M: sp.csr_array, shape: tuple[int, int]) -> np.ndarray:
    return M.toarray().reshape(-1, *shape).astype(np.float32, copy=False)


def footprints_da(M: sp.csr_array, shape: tuple[int, int], unit_ids, name: str,
                  attrs: dict | None = None) -> xr.DataArray:
    """(unit_id, height, width) float32 DataArray built lazily from a (n, pixels) CSR matrix,
    one dense block of UNIT_CHUNK units at a time (the whole dense A is never in memory)."""
    h, w = shape
    M = sp.csr_array(M)
    blocks = [da.from_delayed(dask.delayed(_dense_rows)(M[s:s + UNIT_CHUNK], shape),
                              shape=(min(UNIT_CHUNK, M.shape[0] - s), h, w), dtype=np.float32)
              for s in range(0, M.shape[0], UNIT_CHUNK)]
    data = da.concatenate(blocks, axis=0) if blocks else \
        da.zeros((0, h, w), np.float32, chunks=(UNIT_CHUNK, h, w))
    return xr.DataArray(data, dims=("unit_id", "height", "width"),
                        coords={"unit_id": np.asarray(unit_ids, np.int64),
                                "height": np.arange(h), "width": np.arange(w)},
                        name=name, attrs=attrs or {})


def _block_csr(block: np.ndarray) -> sp.csr_array:
    return sp.csr_array(np.asarray(block, np.float32).reshape(block.shape[0], -1))


def load_csr(A: xr.DataArray, ctx, message: str = "reading footprints") -> sp.csr_array:
    """(n, pixels) float32 CSR of a stored (unit_id, height, width) A, read block by block."""
    data = A.data if isinstance(A.data, da.Array) else da.from_array(A.data)
    data = data.rechunk({0: UNIT_CHUNK, 1: -1, 2: -1})
    parts = ctx.compute(*[dask.delayed(_block_csr)(b) for b in data.to_delayed().ravel()],
                        message=message)
    if not parts:
        return sp.csr_array((0, A.sizes["height"] * A.sizes["width"]), dtype=np.float32)
    return sp.csr_array(sp.vstack(list(parts), format="csr"), dtype=np.float32)


def traces_da(C: np.ndarray, unit_ids, coords: dict, name: str,
              attrs: dict | None = None) -> xr.DataArray:
    return xr.DataArray(np.asarray(C, np.float32), dims=("unit_id", "frame"),
                        coords={"unit_id": np.asarray(unit_ids, np.int64), **coords},
                        name=name, attrs=attrs or {})


def _shape_of(A: xr.DataArray) -> tuple[int, int]:
    return int(A.sizes["height"]), int(A.sizes["width"])


def _check_units(A: xr.DataArray, C: xr.DataArray, step: str) -> np.ndarray:
    ids = np.asarray(A.unit_id.values, np.int64)
    if not np.array_equal(ids, np.asarray(C.unit_id.values, np.int64)):
        raise StepError(f"step {step}: the footprints and traces list different unit ids; rerun "
                        f"the previous step")
    return ids


def _resolved(attrs: dict) -> dict:
    """Attrs safe for zarr: numbers, strings and booleans only."""
    return {k: (float(v) if isinstance(v, (np.floating, float)) else
                int(v) if isinstance(v, (np.integer, int)) and not isinstance(v, bool) else v)
            for k, v in attrs.items()}


# ============================================================================== preview helpers


def _contour(mask: np.ndarray, y0: int = 0, x0: int = 0):
    """Outer contour of a boolean mask as (ys, xs, "") in the frame, or None if empty."""
    import cv2

    if not mask.any():
        return None
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    c = max(contours, key=len)[:, 0, :]
    c = np.vstack([c, c[:1]])
    return c[:, 1].astype(float) + y0, c[:, 0].astype(float) + x0, ""


def _regions_image(R: Regions) -> tuple[np.ndarray, list]:
    """Max over regions of their weights (each scaled to peak 1) and region outlines."""
    img = np.zeros(R.shape, np.float32)
    outlines = []
    for i in range(len(R)):
        y0, x0, y1, x1 = (int(v) for v in R.bbox[i])
        wt = R.weights[i]
        top = float(wt.max()) if wt.size else 0.0
        if top > 0:
            np.maximum(img[y0:y1, x0:x1], wt / top, out=img[y0:y1, x0:x1])
        if i < _MAX_OUTLINES:
            o = _contour(R.masks[i], y0, x0)
            if o is not None:
                outlines.append(o)
    return img, outlines


def unit_map(A: xr.DataArray, max_outlines: int = _MAX_OUTLINES) -> tuple[np.ndarray, list]:
    """Max over units of A and the outline of the pixels where each unit is the largest."""
    if A.sizes["unit_id"] == 0:
        return np.zeros(_shape_of(A), np.float32), []
    mx, am = dask.compute(A.data.max(axis=0), A.data.argmax(axis=0))
    mx, am = np.asarray(mx), np.asarray(am)
    labels = np.where(mx > 0, am + 1, 0)
    from scipy import ndimage

    outlines = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        o = _contour(labels[sl] == lab, sl[0].start, sl[1].start)
        if o is not None:
            outlines.append(o)
        if len(outlines) >= max_outlines:
            break
    return mx, outlines


def trace_stack(C: xr.DataArray, title: str, n: int = _STACK_UNITS) -> LinePanel:
    """A few traces (evenly spaced over the units), each scaled to [0, 1] and offset."""
    m = C.sizes["unit_id"]
    pick = np.unique(np.linspace(0, m - 1, min(n, m)).round().astype(int)) if m else []
    lines = {}
    for k, i in enumerate(pick):
        c = np.asarray(C.isel(unit_id=int(i)).values, np.float64)
        lo, hi = np.nanmin(c), np.nanmax(c)
        lines[f"unit {int(C.unit_id.values[i])}"] = (c - lo) / (hi - lo if hi > lo else 1) + k
    return LinePanel(title, C.frame.values, lines, xlabel="original frame",
                     ylabel="scaled trace + offset")


def _text(title: str, d: dict) -> TextPanel:
    return TextPanel(title, "\n".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                                      for k, v in d.items()))


# ============================================================================== 4a


def _sample_components(nndsvd_spatial: xr.DataArray, size: int, seed: int, ctx) -> np.ndarray:
    """Seeded sample of the non-empty components 1.. (component 0 is the background)."""
    if nndsvd_spatial.sizes["component"] < 2:
        raise StepError("nndsvd_spatial has no component besides the background; rerun 3b "
                        "with more n_components")
    (peaks,) = ctx.compute(nndsvd_spatial.data[1:].max(axis=(1, 2)), message="component peaks")
    nonempty = np.flatnonzero(np.asarray(peaks) > 0) + 1
    if nonempty.size == 0:
        raise StepError("every NNDSVD component is empty; lower sparsity_threshold in step 3b")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(nonempty, min(size, nonempty.size), replace=False))


def watershed_search(p: WatershedSearchParams, ctx, nndsvd_spatial: xr.DataArray,
                     cell_size: dict) -> dict:
    """Step 4a: score parameter combinations on a seeded sample of components."""
    d = sizes.diameter(cell_size)
    area = sizes.cell_area(d)
    sample = _sample_components(nndsvd_spatial, p.sample_size, p.seed, ctx)
    (W,) = ctx.compute(nndsvd_spatial.data[sample], message="reading the sample")
    expected = (EXPECTED_AREA[0] * area, EXPECTED_AREA[1] * area)
    min_region = sizes.area(None, d, 0.1)
    try:
        best, table = search_parameters(
            np.asarray(W, np.float32), min_distances=[f * d for f in p.min_distance_diameters],
            thresholds=p.thresholds, sigmas=p.sigmas, expected_area=expected,
            sample_size=len(sample), seed=p.seed, min_region_size=min_region)
    except ValueError as e:
        raise StepError(f"watershed search: {e}") from None
    for row in table:
        row["min_distance_diameters"] = row["min_distance"] / d
    columns = {k: [row[k] for row in table] for k in table[0]}
    return {"watershed_suggestion": {
        "best": {**best, "min_distance_diameters": best["min_distance"] / d},
        "table": columns, "cell_diameter_px": d, "expected_area_px": list(expected),
        "min_region_size_px": min_region, "sample_components": sample.tolist(),
        "nndsvd_fingerprint": str(nndsvd_spatial.attrs.get("fingerprint", "")),
    }}


def _preview_search(outputs, inputs, params) -> Figure:
    s = outputs["watershed_suggestion"]
    t, best = s["table"], s["best"]
    order = np.argsort(t["score"])[::-1][:12]
    rows = [f"{t['min_distance_diameters'][i]:5.2f} d {t['threshold'][i]:5.2f} "
            f"{t['sigma'][i]:4.1f} {t['score'][i]:7.3f} {t['n_regions'][i]:5d}" for i in order]
    text = ("min_dist  thr  sigma  score  regions\n" + "\n".join(rows) +
            f"\n\nsuggested: min_distance {best['min_distance']:.1f} px "
            f"({best['min_distance_diameters']:.2f} d), threshold {best['threshold']}, "
            f"sigma {best['sigma']}")
    panels = [LinePanel("score per combination", np.arange(len(t["score"])),
                        {"score": np.asarray(t["score"]),
                         "cell-sized fraction": np.asarray(t["in_range_fraction"])},
                        xlabel="combination"), TextPanel("ranking", text)]
    W = inputs["nndsvd_spatial"]
    for c in s["sample_components"][:2]:
        img = np.asarray(W.sel(component=c).values, np.float32)
        R = segment_all(img[None], min_distance=best["min_distance"],
                        threshold_rel=best["threshold"], sigma=best["sigma"],
                        min_region_size=s["min_region_size_px"])
        _, outlines = _regions_image(R)
        panels.append(ImagePanel(f"component {c}: suggested regions", img, cmap="viridis",
                                 outlines=outlines))
    return Figure("4a Watershed parameter search", panels)


# ============================================================================== 4b


def resolve_watershed(p: WatershedParams, d: float, suggestion: dict | None,
                      fingerprint: str) -> tuple[dict, dict, str]:
    """(values, sources, note): each value is the parameter when set, else 4a's suggestion when
    applied and made for these components and this diameter, else the default."""
    usable, note = None, "no 4a suggestion"
    if suggestion is not None:
        if not p.apply_suggestion:
            note = "4a suggestion present, not applied (apply_suggestion is off)"
        elif suggestion.get("nndsvd_fingerprint") != fingerprint or \
                not np.isclose(float(suggestion.get("cell_diameter_px", -1)), d):
            note = ("4a suggestion ignored: it was made for other NNDSVD components or another "
                    "cell diameter; rerun 4a")
        else:
            usable, note = suggestion["best"], "4a suggestion applied to null values"
    defaults = {"min_distance": (DEFAULT_MIN_DISTANCE_D * d,
                                 f"default: {DEFAULT_MIN_DISTANCE_D} x cell diameter"),
                "threshold": (DEFAULT_THRESHOLD, "default"), "sigma": (DEFAULT_SIGMA, "default")}
    values, sources = {}, {}
    for key, (default, why) in defaults.items():
        given = getattr(p, key)
        if given is not None:
            values[key], sources[key] = float(given), "parameter"
        elif usable is not None:
            values[key], sources[key] = float(usable[key]), "4a suggestion"
        else:
            values[key], sources[key] = float(default), why
    values["min_region_size"] = sizes.area(p.min_region_size, d, 0.1)
    sources["min_region_size"] = "parameter" if p.min_region_size is not None else \
        "default: 0.1 x a cell's area"
    return values, sources, note


def watershed_segment(p: WatershedParams, ctx, nndsvd_spatial: xr.DataArray, cell_size: dict,
                      watershed_suggestion: dict | None = None) -> dict:
    """Step 4b: split every component 1.. into watershed regions."""
    d = sizes.diameter(cell_size)
    values, sources, note = resolve_watershed(p, d, watershed_suggestion,
                                              str(nndsvd_spatial.attrs.get("fingerprint", "")))
    if note.startswith("4a suggestion ignored"):
        ctx.warn(note)
    k = nndsvd_spatial.sizes["component"]
    shape = _shape_of(nndsvd_spatial)
    comps, regs = [], []
    top = TopTwo(shape)
    for s in range(1, k, _COMPONENT_BATCH):
        ctx.progress((s - 1) / max(k - 1, 1), f"segmenting components {s}..{k - 1}")
        (blk,) = ctx.compute(nndsvd_spatial.data[s:s + _COMPONENT_BATCH], message="reading components")
        blk = np.asarray(blk, np.float32)
        ids = np.arange(s, s + len(blk))
        R = segment_all(blk, min_distance=values["min_distance"], threshold_rel=values["threshold"],
                        sigma=values["sigma"], min_region_size=values["min_region_size"],
                        component_ids=ids)
        top.update(blk, ids)
        comps.extend(R.component.tolist())
        regs.extend(R.region(i) for i in range(len(R)))
        ctx.check_cancel()
    R = Regions.build(shape, comps, regs)
    n_found = len(R)
    R, _ = dominant_parts(R, top, p.min_dominance, values["min_region_size"])
    if len(R) == 0:
        raise StepError(f"no region found in {k - 1} components with threshold "
                        f"{values['threshold']:.3g}, min_region_size "
                        f"{values['min_region_size']:.0f} px² and min_dominance "
                        f"{p.min_dominance}; lower them")
    attrs = {"cell_diameter_px": d, "min_distance_px": values["min_distance"],
             "threshold": values["threshold"], "sigma_px": values["sigma"],
             "min_region_size_px": values["min_region_size"], "suggestion": note,
             **{f"{key}_source": src for key, src in sources.items()},
             "n_components_segmented": k - 1, "min_dominance": p.min_dominance,
             "n_regions_found": n_found, "n_regions_dominated": n_found - len(R)}
    return {"regions": regions_to_dataset(R, "regions", _resolved(attrs))}


def _preview_regions(outputs, inputs, params, name="regions", title="4b Watershed segmentation"):
    ds = outputs[name]
    R = dataset_to_regions(ds, name)
    img, outlines = _regions_image(R)
    info = {k: v for k, v in ds.attrs.items() if k != "artifact"}
    return Figure(title, [
        ImagePanel(f"{len(R)} regions (max of weights, outlines of the first {_MAX_OUTLINES})",
                   img, cmap="viridis", outlines=outlines),
        HistPanel("region area", {"regions": R.area}, xlabel="pixels"),
        _text("values used", info),
    ])


# ============================================================================== 4c


def merge_regions(p: SpatialMergeParams, ctx, regions: xr.Dataset, cell_size: dict) -> dict:
    """Step 4c: merge near-duplicate regions (order independent), drop small ones."""
    d = sizes.diameter(cell_size)
    R = dataset_to_regions(regions)
    distance = sizes.length(p.distance, d, 0.5)
    min_size = sizes.area(p.min_size, d, 0.1)
    merged = spatial_merge(R, distance=distance, size_ratio=p.size_ratio, min_size=min_size)
    if len(merged) == 0:
        raise StepError(f"all {len(R)} regions are smaller than min_size={min_size:.0f} px² after "
                        f"merging; lower min_size")
    attrs = {"cell_diameter_px": d, "distance_px": distance,
             "distance_source": "parameter" if p.distance is not None else
             "default: 0.5 x cell diameter", "size_ratio": p.size_ratio,
             "min_size_px": min_size, "min_size_source": "parameter" if p.min_size is not None
             else "default: 0.1 x a cell's area", "n_regions_in": len(R)}
    return {"regions_merged": regions_to_dataset(merged, "regions_merged", _resolved(attrs))}


def _preview_merged(outputs, inputs, params) -> Figure:
    return _preview_regions(outputs, inputs, params, "regions_merged", "4c Spatial merge")


# ============================================================================== 4d


def extract_region_traces(p: TemporalExtractionParams, ctx, regions_merged: xr.Dataset,
                          movie_cropped: xr.DataArray) -> dict:
    """Step 4d: each region's weighted mean trace, streamed over frame chunks."""
    R = dataset_to_regions(regions_merged, "regions_merged")
    n_all = len(R)
    if p.component_limit:
        R = R.subset(np.arange(min(n_all, p.component_limit)))
    if tuple(R.shape) != _shape_of(movie_cropped):
        raise StepError(f"regions are {R.shape} but movie_cropped is {_shape_of(movie_cropped)}; "
                        f"rerun steps 3b-4c after changing the crop")
    traces = extract_traces(movie_cropped.data, R, batch_size=p.batch_size,
                            chunk_frames=p.chunk_frames or None,
                            compute=lambda *c: ctx.compute(*c, message="extracting traces"))
    return {"region_traces": traces_da(traces, np.arange(len(R)), frame_coords(movie_cropped),
                                       "region_traces",
                                       {"n_regions": n_all, "component_limit": p.component_limit})}


def _preview_traces(outputs, inputs, params) -> Figure:
    C = outputs["region_traces"]
    return Figure("4d Temporal extraction", [
        trace_stack(C, f"region traces ({C.sizes['unit_id']} regions)"),
        HistPanel("trace standard deviation", {"regions": np.nanstd(C.values, axis=1)})])


# ============================================================================== 4e


def _background(W0: np.ndarray, H0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """b (peak 1) and f with b f^T = the NNDSVD background pair W0 H0^T."""
    peak = float(W0.max())
    if not peak > 0:
        return np.zeros_like(W0, np.float32), np.zeros_like(H0, np.float32)
    return (W0 / peak).astype(np.float32), (H0 * peak).astype(np.float32)


def _local_threads(ctx) -> int:
    """Threads for in-process work: the run's workers, but never more than this machine's cores
    (with a cluster the workers are elsewhere)."""
    return max(1, min(int(ctx.n_workers), os.cpu_count() or 1))


def _supplement(p: ACInitParams, ctx, A: sp.csr_array, C: np.ndarray, shape: tuple[int, int],
                movie_cropped: xr.DataArray, cell_size: dict) -> tuple[sp.csr_array, np.ndarray, dict]:
    """The region seeds plus the greedy seeds no region covers (`seeding.supplement`)."""
    d = sizes.diameter(cell_size)
    ctx.progress(0.0, "supplementary seeds: averaging the movie in bins")
    def chunk(x):  # one batch of bins at a time: cancel between batches
        ctx.check_cancel()
        return x.compute()

    # Memory: the binned movie, plus the tiles searched at once. Both fit in the search's share
    # of the memory limit, or the binned movie goes to a scratch zarr of the session (tiles
    # are read from it) and the tiles are searched one at a time, smaller if need be.
    _, n_bins = greedy.bin_shape(movie_cropped.sizes["frame"], p.supplement_max_frames)
    binned_bytes = n_bins * shape[0] * shape[1] * 4
    budget = SEARCH_SHARE * ctx.memory_limit_bytes
    _, _, one_tile = greedy.tile_plan(n_bins, shape, GREEDY_SCALE * d, budget, 1)
    scratch = (Path(tempfile.mkdtemp(prefix=".binned-", dir=ctx.output_dir))
               if ctx.output_dir is not None and binned_bytes + one_tile > budget else None)
    tile, workers, _ = greedy.tile_plan(n_bins, shape, GREEDY_SCALE * d,
                                        budget - (0 if scratch else binned_bytes),
                                        _local_threads(ctx))
    try:
        Y, k = greedy.binned_movie(
            movie_cropped.data, p.supplement_max_frames, compute=chunk,
            progress=lambda done, total: ctx.progress(
                0.2 * done / max(total, 1), "supplementary seeds: averaging the movie in bins"),
            allocate=(lambda shp, rows: zarr.create_array(
                scratch / "binned.zarr", shape=shp, dtype=np.float32, compressors=None,
                chunks=(rows, SCRATCH_TILE, SCRATCH_TILE))) if scratch else None)
        ctx.check_cancel()
        # no picks within a cell diameter of the edges: motion correction fills the pixels it
        # uncovers there, and those jumps look like activity to the search (the regions still
        # seed edge cells)
        edge = max(1, int(np.ceil(d)))
        exclude = np.ones(shape, bool)
        exclude[edge:-edge, edge:-edge] = False
        found = greedy.greedy_seeds_tiled(
            Y, GREEDY_SCALE * d, tile=tile, min_pnr=p.supplement_min_pnr, exclude=exclude,
            smooth_frames=greedy.smooth_frames_for_bin(k), workers=workers,
            progress=lambda i, n: (ctx.check_cancel(), ctx.progress(
                0.2 + 0.6 * i / max(n, 1), f"supplementary seeds: searching tile {i}/{n}")))
        del Y
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    ctx.progress(0.8, "supplementary seeds: traces")
    recompute = make_recompute(movie_cropped.data,
                               compute=lambda *c: ctx.compute(*c, message="extracting traces"))
    A_all, C_all, added = supplement_seeds(A, C, shape, found.footprints, found.centres,
                                           p.supplement_min_distance * d, recompute,
                                           p.normalisation, p.supplement_min_skewness)
    info = {"supplement_found": len(found), "supplement_added": int(added.size),
            "supplement_bin_frames": int(k), "supplement_cell_scale_px": GREEDY_SCALE * d,
            "supplement_tile_px": int(tile), "supplement_tiles_at_once": int(workers),
            "supplement_binned_on_disk": scratch is not None,
            "n_from_regions": int(A.shape[0])}
    return A_all, C_all, info


def initialise_AC(p: ACInitParams, ctx, regions_merged: xr.DataArray, region_traces: xr.DataArray,
                  nndsvd_spatial: xr.DataArray, nndsvd_temporal: xr.DataArray,
                  movie_cropped: xr.DataArray, cell_size: dict) -> dict:
    """Step 4e: A (peak-normalised etc.), C, supplementary seeds, and the background b, f
    from component 0."""
    R = dataset_to_regions(regions_merged, "regions_merged")
    n = region_traces.sizes["unit_id"]
    if n > len(R):
        raise StepError(f"region_traces has {n} traces for {len(R)} regions; rerun step 4d")
    R = R.subset(np.arange(n))
    W0 = np.asarray(nndsvd_spatial.isel(component=0).values, np.float32)
    H0 = np.asarray(nndsvd_temporal.isel(component=0).values, np.float32)
    if W0.shape != tuple(R.shape) or H0.shape[0] != region_traces.sizes["frame"]:
        raise StepError("the NNDSVD background does not match the regions / traces (other crop or "
                        "frames); rerun steps 3b-4d")
    A, C = init_AC(R, np.asarray(region_traces.values), p.normalisation, sparse=True)
    info = {"n_from_regions": int(A.shape[0]), "supplement_added": 0}
    if p.supplement:
        if tuple(R.shape) != _shape_of(movie_cropped):
            raise StepError(f"regions are {R.shape} but movie_cropped is {_shape_of(movie_cropped)}; "
                            "rerun steps 3b-4d after changing the crop")
        A, C, info = _supplement(p, ctx, A, C, tuple(R.shape), movie_cropped, cell_size)
    b, f = _background(W0, H0)
    if not p.skip_background:  # the background becomes unit 0, b and f are zero
        Ab = normalise_rows(sp.csr_array(W0.reshape(1, -1)), p.normalisation)
        kb = float(W0.max()) / float(Ab.max()) if Ab.max() > 0 else 0.0
        A = sp.vstack([Ab, A], format="csr")
        C = np.vstack([H0[None] * kb, C])
        b, f = np.zeros_like(b), np.zeros_like(f)
    if A.shape[0] == 0:
        raise StepError("no regions to initialise; revisit steps 4b-4c")
    ids = np.arange(A.shape[0])
    attrs = {"normalisation": p.normalisation, "background_is_unit_0": not p.skip_background,
             **info}
    coords = frame_coords(region_traces)
    return {
        "A_init": footprints_da(A, tuple(R.shape), ids, "A_init", attrs),
        "C_init": traces_da(C, ids, coords, "C_init", attrs),
        "b_init": xr.DataArray(b, dims=("height", "width"),
                               coords={"height": np.arange(b.shape[0]),
                                       "width": np.arange(b.shape[1])}, name="b_init",
                               attrs={"source": "NNDSVD component 0, scaled to peak 1"}),
        "f_init": xr.DataArray(f, dims=("frame",), coords=coords, name="f_init",
                               attrs={"source": "NNDSVD component 0 time course x b's scale"}),
    }


def _preview_init(outputs, inputs, params) -> Figure:
    A, C = outputs["A_init"], outputs["C_init"]
    img, outlines = unit_map(A)
    f = outputs["f_init"]
    return Figure("4e A/C initialisation", [
        ImagePanel(f"{A.sizes['unit_id']} units, {A.attrs.get('supplement_added', 0)} of them "
                   "added by the search (max over A)", img, cmap="viridis", outlines=outlines),
        trace_stack(C, "C_init"),
        ImagePanel("background b_init", outputs["b_init"].values),
        LinePanel("background f_init", f.frame.values, {"f": f.values}, xlabel="original frame"),
    ])


# ============================================================================== 4f


def drop_invalid_units(p: DropInvalidParams, ctx, A_init: xr.DataArray,
                       C_init: xr.DataArray) -> dict:
    """Step 4f: drop units with NaN values, empty footprints or flat traces."""
    ids = _check_units(A_init, C_init, "4f")
    M = load_csr(A_init, ctx)
    keep, reasons = drop_invalid(M, np.asarray(C_init.values), flat_tol=p.flat_tolerance,
                                 check_nan=p.check_nan, check_empty=p.check_empty,
                                 check_flat=p.check_flat)
    if not keep.any():
        raise StepError(f"all {len(ids)} components are invalid ({reasons[0]}); revisit steps "
                        f"4b-4e")
    idx = np.flatnonzero(keep)
    gone = np.flatnonzero(~keep)
    dropped = {"unit_id": ids[gone].tolist(), "reason": [reasons[i] for i in gone],
               "n_in": int(len(ids)), "n_kept": int(len(idx)), "n_dropped": int(len(gone)),
               "by_reason": {r: int(sum(r in reasons[i].split(",") for i in gone))
                             for r in ("nan", "empty", "flat")}}
    return {"A_valid": _select(A_init, idx, "A_valid"), "C_valid": _select(C_init, idx, "C_valid"),
            "dropped_4f": dropped}


def _select(X: xr.DataArray, idx: np.ndarray, name: str) -> xr.DataArray:
    """Units idx of a stored A or C, lazily, with A's chunking."""
    out = X.isel(unit_id=idx)
    if "height" in out.dims:
        out = out.chunk({"unit_id": UNIT_CHUNK, "height": -1, "width": -1})
    out.name = name
    return out


def _preview_valid(outputs, inputs, params) -> Figure:
    A, r = outputs["A_valid"], outputs["dropped_4f"]
    img, outlines = unit_map(A)
    return Figure("4f Drop invalid components", [
        ImagePanel(f"{A.sizes['unit_id']} valid units", img, cmap="viridis", outlines=outlines),
        _text("dropped", {"components in": r["n_in"], "kept": r["n_kept"],
                          "dropped": r["n_dropped"], **r["by_reason"]}),
    ])


# ============================================================================== 4g


def merge_temporal(p: TemporalMergeParams, ctx, A_valid: xr.DataArray, C_valid: xr.DataArray,
                   movie_cropped: xr.DataArray) -> dict:
    """Step 4g: merge correlated, overlapping units; merged traces recomputed from the movie."""
    ids = _check_units(A_valid, C_valid, "4g")
    if _shape_of(A_valid) != _shape_of(movie_cropped):
        raise StepError("the footprints and movie_cropped differ in size; rerun steps 3b-4f")
    M = load_csr(A_valid, ctx)
    C = np.asarray(C_valid.values, np.float32)
    recompute = make_recompute(movie_cropped.data, compute=lambda *c: ctx.compute(
        *c, message="recomputing merged traces"))
    norm = str(A_valid.attrs.get("normalisation", "max"))
    A2, C2, groups = temporal_merge(M, C, corr_threshold=p.correlation_threshold,
                                    overlap_threshold=p.overlap_threshold, recompute=recompute,
                                    normalisation=norm, demix=p.demix)
    new_ids = np.array([ids[g].min() for g in groups], np.int64)
    merged = {str(int(new_ids[k])): ids[g].tolist() for k, g in enumerate(groups) if len(g) > 1}
    attrs = {**_resolved(dict(A_valid.attrs)), "correlation_threshold": p.correlation_threshold,
             "overlap_threshold": p.overlap_threshold, "demix": p.demix, "n_in": int(len(ids)),
             "n_merged_groups": len(merged), "merged_groups": json.dumps(merged)}
    return {"A_merged": footprints_da(A2, _shape_of(A_valid), new_ids, "A_merged", attrs),
            "C_merged": traces_da(C2, new_ids, frame_coords(C_valid), "C_merged", attrs)}


def _preview_merge(outputs, inputs, params) -> Figure:
    A, C = outputs["A_merged"], outputs["C_merged"]
    img, outlines = unit_map(A)
    merged = json.loads(A.attrs.get("merged_groups", "{}"))
    text = "\n".join(f"unit {k} <- {v}" for k, v in list(merged.items())[:25]) or "no merges"
    panels = [ImagePanel(f"{A.sizes['unit_id']} units after merging", img, cmap="viridis",
                         outlines=outlines),
              TextPanel(f"{len(merged)} merged groups", text)]
    if merged:
        keep = [int(k) for k in merged][:_STACK_UNITS]
        panels.append(trace_stack(C.sel(unit_id=keep), "recomputed traces of merged units"))
    return Figure("4g Temporal merge", panels)


# ============================================================================== 4h


def _mean_of_cropped(crop: dict, mean_frame: xr.DataArray,
                     static_background: xr.DataArray) -> np.ndarray:
    """Mean frame of movie_cropped without reading the movie: crop(mean) - background.

    Exact for every 3a method (background removal is affine per frame) unless negatives were
    clipped, where it is close enough for a contrast score."""
    c = Crop.from_dict(crop)
    return subtract_background(c.apply(np.asarray(mean_frame.values, np.float32)),
                               np.asarray(static_background.values, np.float32),
                               clip_negative=bool(static_background.attrs.get("clip_negatives")),
                               mask=c.mask)


def quarantine_units(p: QuarantineParams, ctx, A_merged: xr.DataArray, C_merged: xr.DataArray,
                     crop: dict, mean_frame: xr.DataArray, static_background: xr.DataArray,
                     movie_cropped: xr.DataArray, cell_size: dict) -> dict:
    """Step 4h: score every unit and set likely artifacts apart (reviewable, restorable)."""
    ids = _check_units(A_merged, C_merged, "4h")
    d = sizes.diameter(cell_size)
    shape = _shape_of(A_merged)
    movie_mean = _mean_of_cropped(crop, mean_frame, static_background)
    if movie_mean.shape != shape:
        raise StepError("the crop of step 3a differs from the footprints' frame; rerun 3b-4g")
    M = load_csr(A_merged, ctx)
    C = np.asarray(C_merged.values, np.float32)
    table = score_components(M, C, movie_mean, shape=shape, drift_window=p.drift_window_frames)
    lo, hi = sizes.area(p.min_size, d, 0.2), sizes.area(p.max_size, d, 6.0)
    if lo >= hi:
        raise StepError(f"min_size ({lo:.0f} px²) must be smaller than max_size ({hi:.0f} px²)")
    limits = {"min_size_px": lo, "max_size_px": hi, "min_solidity": p.min_solidity,
              "max_elongation": p.max_elongation, "min_skewness": p.min_skewness,
              "min_snr": p.min_snr, "max_drift": p.max_drift, "min_failed": p.min_failed}
    flags, reasons = quarantine(table, min_size=lo, max_size=hi, min_solidity=p.min_solidity,
                                max_elongation=p.max_elongation, min_skewness=p.min_skewness,
                                min_snr=p.min_snr, max_drift=p.max_drift, min_failed=p.min_failed)
    if not p.enabled:
        flags = np.zeros_like(flags)
    if flags.all():
        raise StepError(f"all {len(ids)} components would be quarantined; loosen the checks or "
                        f"raise min_failed")
    scores = {"unit_id": ids, **{k: table[k] for k in SCORE_COLUMNS},
              "failed_checks": reasons, "quarantined": flags}
    scores = {k: np.asarray(v).tolist() if not isinstance(v, list) else v for k, v in scores.items()}
    if ctx.output_dir is not None:
        write_csv(Path(ctx.output_dir) / "component_scores_table.csv", scores)
    q = np.flatnonzero(flags)
    keep = np.flatnonzero(~flags)
    report = {"unit_id": ids[q].tolist(), "reason": [reasons[i] for i in q],
              "n_quarantined": int(len(q)), "n_kept": int(len(keep)), "enabled": p.enabled,
              "restore_from": {"step": "4g", "A": "A_merged", "C": "C_merged"},
              "limits": limits, "cell_diameter_px": d}
    kept_A = M[keep]
    smooth = (_seed_smoothness(ctx, kept_A, C[keep], shape, movie_cropped, d)
              if p.smoothed_copy else None)
    report["smoothness"] = smooth
    if smooth is None:
        copy, copy_ids = sp.csr_array((0, M.shape[1]), dtype=np.float32), []
        unit_sigma = np.zeros(0)
    else:
        unit_sigma = np.asarray(smooth.pop("unit_sigma_px"), np.float64)
        copy = sp.csr_array(sf.smooth_csr(sp.csr_matrix(kept_A), shape, unit_sigma))
        copy_ids = ids[keep]
        smooth["unit_sigma_px_quartiles"] = np.round(
            np.percentile(unit_sigma, [25, 50, 75]), 2).tolist()
    attrs = {"smoothness": json.dumps(smooth), "kept": int(smooth is not None)}
    copy_da = footprints_da(copy, shape, copy_ids, "A_seed_smoothed", attrs)
    return {"A_seed": _select(A_merged, keep, "A_seed"), "C_seed": _select(C_merged, keep, "C_seed"),
            "A_seed_smoothed": copy_da.assign_coords(
                smoothing_sigma_px=("unit_id", unit_sigma.astype(np.float32))),
            "quarantine": report, "component_scores": scores}


def _seed_smoothness(ctx, A: sp.csr_array, C: np.ndarray, shape: tuple[int, int],
                     movie_cropped: xr.DataArray, d: float) -> dict | None:
    """How smooth the kept footprints are in the data (the measurement of step 7e, on the
    seeds), with each unit's own scale capped at the common one: one streamed read of the
    movie (at most SMOOTHNESS_FRAMES frames) in a window around each unit. None: no unit."""
    if A.shape[0] == 0:
        return None
    if (movie_cropped.sizes["height"], movie_cropped.sizes["width"]) != shape:
        raise StepError("step 4h: movie_cropped and the footprints differ in size; rerun 3a-4g")
    if movie_cropped.sizes["frame"] != C.shape[1]:
        raise StepError(f"step 4h: C_merged has {C.shape[1]} frames but movie_cropped "
                        f"{movie_cropped.sizes['frame']}; rerun 4d-4g")
    if C.shape[1] > SMOOTHNESS_FRAMES:
        chunks = movie_cropped.data.chunks[0]  # whole chunks: a chunk is read whole anyway
        idx = sample_indices(chunks, SMOOTHNESS_FRAMES,
                             max_chunks=int(np.ceil(SMOOTHNESS_FRAMES / max(chunks))))
        movie_cropped, C = movie_cropped.isel(frame=idx), C[:, idx]
    A = sp.csr_matrix(A)
    windows = unit_windows(A, int(round(WINDOW_PAD_D * d)), shape=shape)
    YC, _ = sufficient_statistics(
        movie_cropped, C, plans=windows,
        compute=lambda *c: ctx.compute(*c, message="4h: measuring the footprints' smoothness"))
    report = measure_smoothness(A, windows, YC.products, YC.pixel_mean, C, YC.n_frames, d,
                                shape=shape, per_unit=True)
    return {**report, "frames_read": int(YC.n_frames)}


def _preview_quarantine(outputs, inputs, params) -> Figure:
    s, q = outputs["component_scores"], outputs["quarantine"]
    flags = np.asarray(s["quarantined"], bool)
    img, outlines = unit_map(outputs["A_seed"])
    panels = [ImagePanel(f"{q['n_kept']} kept units", img, cmap="viridis", outlines=outlines)]
    if q["unit_id"]:
        qimg, qout = unit_map(inputs["A_merged"].sel(unit_id=q["unit_id"][:_MAX_OUTLINES]))
        panels.append(ImagePanel(f"{q['n_quarantined']} quarantined units", qimg, cmap="magma",
                                 outlines=qout))
    for key in ("size", "elongation", "skewness", "snr", "drift"):
        v = np.asarray(s[key], float)
        panels.append(HistPanel(key, {"kept": v[~flags], "quarantined": v[flags]}, bins=30))
    reasons = "\n".join(f"unit {u}: {r}" for u, r in list(zip(q["unit_id"], q["reason"]))[:20])
    panels.append(TextPanel("quarantined (first 20)", reasons or "none"))
    sm = q.get("smoothness")
    if sm:
        simg, sout = unit_map(outputs["A_seed_smoothed"])
        # the title stays short: one panel of three columns
        panels.append(ImagePanel(f"extent in the data (smoothed {sm['unit_sigma_px_quartiles'][1]}"
                                 f" px)", simg, cmap="viridis", outlines=sout))
    return Figure("4h Artifact quarantine", panels)


# ============================================================================== declarations


STEP_4A = Step(
    id="4a", title="Watershed parameter search", stage=STAGE,
    summary="Tries combinations of peak distance, threshold and smoothing on a seeded sample of "
            "components and suggests the one whose regions look most like single cells of the "
            "expected size.",
    params=WatershedSearchParams, inputs=("nndsvd_spatial", "cell_size"),
    outputs=("watershed_suggestion",), run=watershed_search,
    previews=(Preview("search", "Parameter search", _preview_search),),
)

STEP_4B = Step(
    id="4b", title="Watershed segmentation", stage=STAGE,
    summary="Splits every NNDSVD component into regions with watershed, using the values set "
            "here or, for those left null, 4a's suggestion.",
    params=WatershedParams, inputs=("nndsvd_spatial", "cell_size"),
    optional_inputs=("watershed_suggestion",), outputs=("regions",), run=watershed_segment,
    previews=(Preview("regions", "Regions", _preview_regions),),
)

STEP_4C = Step(
    id="4c", title="Spatial merge", stage=STAGE,
    summary="Merges regions whose centres are close and whose sizes are similar, and drops "
            "regions that are too small. The result does not depend on the order of regions.",
    params=SpatialMergeParams, inputs=("regions", "cell_size"), outputs=("regions_merged",),
    run=merge_regions, previews=(Preview("merged", "Merged regions", _preview_merged),),
)

STEP_4D = Step(
    id="4d", title="Temporal extraction", stage=STAGE,
    summary="Extracts each region's trace from the whole movie, streaming over frame chunks in "
            "batches of regions so memory stays bounded.",
    params=TemporalExtractionParams, inputs=("regions_merged", "movie_cropped"),
    outputs=("region_traces",), run=extract_region_traces,
    previews=(Preview("traces", "Region traces", _preview_traces),),
)

STEP_4E = Step(
    id="4e", title="A/C initialisation", stage=STAGE,
    summary="Builds the first footprints A and traces C from the regions, normalised as chosen, "
            "adds the cells a greedy search of the movie finds where no region is, and keeps the "
            "background component apart as b and f.",
    params=ACInitParams,
    inputs=("regions_merged", "region_traces", "nndsvd_spatial", "nndsvd_temporal",
            "movie_cropped", "cell_size"),
    outputs=("A_init", "C_init", "b_init", "f_init"), run=initialise_AC,
    previews=(Preview("init", "A and C", _preview_init),),
)

STEP_4F = Step(
    id="4f", title="Drop invalid components", stage=STAGE,
    summary="Removes components with NaN values, empty footprints or flat traces, which would "
            "break the later steps, and records why each one went.",
    params=DropInvalidParams, inputs=("A_init", "C_init"),
    outputs=("A_valid", "C_valid", "dropped_4f"), run=drop_invalid_units,
    previews=(Preview("valid", "Valid components", _preview_valid),),
)

STEP_4G = Step(
    id="4g", title="Temporal merge", stage=STAGE,
    summary="Merges components whose traces correlate and whose footprints overlap (one cell "
            "split in two); chains merge consistently and merged traces are recomputed from the "
            "movie.",
    params=TemporalMergeParams, inputs=("A_valid", "C_valid", "movie_cropped"),
    outputs=("A_merged", "C_merged"), run=merge_temporal,
    previews=(Preview("merge", "Merged components", _preview_merge),),
)

STEP_4H = Step(
    id="4h", title="Artifact quarantine", stage=STAGE,
    summary="Scores every component (size, shape, trace skewness, SNR, slow drift) and moves "
            "likely artifacts such as vessel fragments or edge glow to a quarantine list you can "
            "review and restore. The score table is saved. It also measures how far the kept "
            "units' light spreads in the data and stores a copy of their footprints smoothed to "
            "that scale.",
    params=QuarantineParams,
    inputs=("A_merged", "C_merged", "crop", "mean_frame", "static_background", "movie_cropped",
            "cell_size"),
    outputs=("A_seed", "C_seed", "A_seed_smoothed", "quarantine", "component_scores"),
    run=quarantine_units,
    previews=(Preview("quarantine", "Scores and quarantine", _preview_quarantine),),
)
