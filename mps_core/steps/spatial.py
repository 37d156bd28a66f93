"""Steps 7a-7f: refine every footprint against the whole recording.

7a-7d only prepare the update (they do not change what footprints look like): dilation gives the
update room around each footprint, clusters and their padded boxes split the field into local
patches, and 7d suggests penalties from the data. 7e solves a non-negative LASSO per pixel from
statistics streamed over all frames (one read of the movie); 7f assembles, optionally smooths
and validates the result, and is quick to re-run because it only reads 7e's footprints (and the
movie only when duplicates have to be merged).

7e and the background: the movie is modelled as ``A C + b f`` with f = ``f_init`` (4e). The
background's spatial part b is re-estimated at every pixel of the boxes together with the
footprints (unpenalised, non-negative), rather than held at ``b_init``: any background the
initial rank-1 estimate missed (and each unit's constant baseline, which C no longer holds)
is then taken up by b instead of leaking into the footprints. The re-estimated b is used only
inside 7e; 8a keeps ``b_init``.

The numerics live in :mod:`mps_core.cnmf.clusters` (7a-7c) and :mod:`mps_core.cnmf.spatial`
(7e-7f); this module resolves parameters, checks inputs and stores results. Parameters with a
``None`` default are derived from the expected cell diameter d (the ``cell_size`` output of 3a);
"a cell's area" means pi * (d / 2) ** 2 pixels. Resolved values are stored with each result.

Stored formats: ``A_dilated`` / ``A_updated`` / ``A_refined*`` footprints (unit_id, height,
width) float32; ``clusters`` JSON {unit_id, cluster, ...}; ``cluster_bounds`` JSON {cluster, y0,
y1, x0, x1 (half-open), ...}; ``spatial_suggestions`` JSON {values, reasons, measured};
``C_refined`` traces (unit_id, frame).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial
from typing import Any, Literal

import dask
import numpy as np
import scipy.sparse as sp
import xarray as xr
from pydantic import model_validator
from scipy.sparse.csgraph import connected_components
from scipy.special import ndtri

from ..cnmf import clusters as cl
from ..cnmf import sparse_footprints as sf
from ..cnmf.spatial import (WINDOW_PAD_D, BoxProducts, measure_smoothness, plan_boxes,
                            results_csr, sufficient_statistics, unit_windows, update_footprints)
from ..cnmf.yra import compute_yra
from ..figures import Figure, HistPanel, ImagePanel, LinePanel, TextPanel
from ..framewise import sample_indices
from ..paramtypes import P, StepParams
from ..registry import Preview, Step, StepError
from . import sizes
from .temporal import frame_coords, traces_array

STAGE = "Spatial update"


class DilationParams(StepParams):
    window: int | None = P(
        None, "Radius of the dilation applied to each footprint; null: 0.3 x cell diameter (at "
        "least 1 px). Larger gives the update more room but risks reaching neighbours.",
        ge=0, le=1000, unit="px")
    threshold: float = P(0.1, "Only pixels above this fraction of the footprint's maximum are "
                         "dilated; raise it to dilate more conservatively.", ge=0, lt=1)


class ClusteringParams(StepParams):
    max_cluster_size: int = P(10, "Most units in one cluster; larger clusters are solved "
                              "together (more exact for crowded cells, slower).", ge=1, le=1000)
    max_distance: float | None = P(
        None, "Units whose centroids are closer than this may share a cluster; null: 1.5 x cell "
        "diameter.", gt=0, le=10000, unit="px")
    overlap_threshold: float = P(0.2, "Units whose dilated footprints share more than this "
                                 "fraction of the smaller one's pixels go in the same cluster.",
                                 ge=0, le=1)
    min_area: int | None = P(
        None, "Units with fewer footprint pixels are not grouped with neighbours (each gets its "
        "own cluster); null: a tenth of a cell's area.", ge=0, le=1000000, unit="px²")
    min_intensity: float = P(0.0, "Units whose footprint peak is under this fraction of the "
                             "brightest unit's peak are not grouped with neighbours (each gets "
                             "its own cluster); 0 groups all.", ge=0, le=1)


class BoundsParams(StepParams):
    dilation_radius: int | None = P(
        None, "Footprints are dilated by this before their box is computed; null: 1 x cell "
        "diameter.", ge=0, le=10000, unit="px")
    padding: int | None = P(
        None, "Extra margin added around each cluster's box; null: 2 x cell diameter. Raise it "
        "if footprints look cut at box edges.", ge=0, le=10000, unit="px")
    min_size: int | None = P(
        None, "Smallest allowed side of a box; null: 4 x cell diameter.",
        ge=1, le=100000, unit="px")
    intensity_threshold: float = P(0.05, "Pixels above this fraction of a unit's maximum count as "
                                   "part of it when computing the box; lower gives larger "
                                   "boxes.", ge=0, lt=1)


class SpatialSuggestionParams(StepParams):
    suggest_min_std: bool = P(True, "Suggest the minimum pixel standard deviation of step 7e.")
    suggest_penalties: bool = P(True, "Suggest the penalty scale and the minimum and maximum "
                                "penalty of step 7e.")
    preference: Literal["conservative", "balanced", "aggressive"] = P(
        "balanced", "Style of the suggestions: 'aggressive' keeps dimmer pixels and gives more "
        "expansive footprints, 'conservative' more compact footprints with less noise.")
    sample_frames: int = P(2000, "Frames (evenly spaced) read to measure pixel variability; more "
                           "is steadier but slower.", ge=10, le=10000000, advanced=True,
                           unit="frames")


class SpatialUpdateParams(StepParams):
    penalty_scale: float = P(1.0, "Sparsity penalty of a pixel, as a multiple of its noise level "
                             "(5a); raise it for more compact footprints, lower it if they look "
                             "fragmented.", ge=0, le=10000)
    min_penalty: float = P(0.1, "Lowest penalty a pixel gets, in multiples of the field's median "
                           "noise level (keeps very quiet pixels from spreading footprints).",
                           ge=0, le=10000)
    max_penalty: float = P(10.0, "Highest penalty a pixel gets, in multiples of the field's "
                           "median noise level (keeps very noisy pixels from being excluded "
                           "outright).", ge=0, le=10000)
    min_std: float = P(0.0, "Pixels whose temporal standard deviation is under this (movie "
                       "intensity units) are left out of the update; raise it if footprints "
                       "pick up noise, 0 keeps all pixels.", ge=0)
    chunk_frames: int = P(0, "Frames read at a time while accumulating the statistics; 0 "
                          "derives it from the memory limit.", ge=0, le=100000, advanced=True,
                          unit="frames")
    use_suggestions: bool = P(False, "Replace penalty_scale, min_penalty, max_penalty and min_std "
                              "with the values step 7d suggested; off uses the values set "
                              "here.")
    measure_smoothness: bool = P(True, "Also measure, in the same pass over the movie, how "
                                 "smooth the footprints are in the data (the scale step 7f "
                                 "smooths them with by default); off saves a little time.",
                                 advanced=True)

    @model_validator(mode="after")
    def _penalty_range(self) -> "SpatialUpdateParams":
        if self.min_penalty > self.max_penalty:
            raise ValueError(f"min_penalty ({self.min_penalty}) must not exceed max_penalty "
                             f"({self.max_penalty})")
        return self


class MergeValidateParams(StepParams):
    smoothing: bool = P(False, "Pass the smoothed footprints on to step 8 (its traces are then "
                        "read through them); off, step 8 reads the traces through the sharper "
                        "footprints of 7e, which separate neighbouring cells better, and the "
                        "smoothed copy is what step 8c exports by default.")
    smoothing_sigma: float | None = P(
        None, "Sigma of the Gaussian smoothing; null: the scale step 7e measured from the data "
        "(0 = no smoothing, e.g. for sharp cells), or 0.1 x cell diameter when 7e did not "
        "measure it.", ge=0, le=100, unit="px")
    keep_both_versions: bool = P(True, "Also store the smoothed copy (A_refined_smoothed) when "
                                 "smoothing is off: step 8c exports it by default.")
    handle_overlaps: bool = P(True, "Has no effect in MPS: 7e solves each unit in exactly one "
                              "cluster box, so no pixel is claimed twice. Kept so parameter "
                              "files written for the user guide's 7f still load.")
    duplicate_overlap: float = P(0.8, "Two units whose footprints share more than this fraction "
                                 "of the smaller one's pixels are duplicate candidates; lower it "
                                 "to merge more.", ge=0, le=1)
    duplicate_correlation: float = P(0.8, "Duplicate candidates are merged only when their traces "
                                     "also correlate above this; lower it to merge more.",
                                     ge=0, le=1, advanced=True)



# ----------------------------------------------------------------------------- shared helpers
# (also used by step 8c; frame_coords and traces_array are 6a-6e's)


def values(ctx, arr: Any, message: str) -> np.ndarray:
    """The values of a DataArray (lazy or not) as numpy, read through ``ctx.compute``."""
    data = getattr(arr, "data", arr)
    if not hasattr(data, "dask"):
        return np.asarray(data)
    if data.ndim < 2 or data.numblocks[0] < 2:
        (data,) = ctx.compute(data, message=message)
        return np.asarray(data)
    # A few chunks at a time into one array: computing the whole dask array would hold every
    # chunk and their concatenation at once (two dense copies of a footprint stack). The
    # results come back to this process, so it works on a cluster too.
    out = np.empty(data.shape, data.dtype)
    bounds = np.cumsum((0,) + data.chunks[0])
    step = max(2, 2 * int(getattr(ctx, "n_workers", 1) or 1))
    for i in range(0, data.numblocks[0], step):
        j = min(i + step, data.numblocks[0])
        (out[bounds[i]:bounds[j]],) = ctx.compute(data[bounds[i]:bounds[j]], message=message)
    return out


def footprints_array(A: np.ndarray, unit_ids: Any, name: str, attrs: dict | None = None,
                     unit_coords: dict | None = None) -> xr.DataArray:
    """(unit_id, height, width) float32 footprints, chunked 64 units at a time for storage."""
    A = np.asarray(A, np.float32)
    n, H, W = A.shape
    coords: dict[str, Any] = {"unit_id": np.asarray(unit_ids, np.int64).reshape(n),
                              "height": np.arange(H), "width": np.arange(W)}
    for key, v in (unit_coords or {}).items():
        coords[key] = ("unit_id", np.asarray(v))
    out = xr.DataArray(A, dims=("unit_id", "height", "width"), coords=coords, name=name,
                       attrs=dict(attrs or {}))
    return out.chunk({"unit_id": 64, "height": -1, "width": -1}) if n else out


def read_footprints(ctx, arr: xr.DataArray, message: str) -> tuple[sp.csr_matrix, tuple[int, int]]:
    """A stored (unit, height, width) stack as a (n, H*W) float32 CSR and its frame shape,
    read one unit chunk at a time: the dense stack is never held whole (footprints are
    sparse: a few MB instead of hundreds)."""
    csr = sf.read_csr(arr, lambda *c: ctx.compute(*c, message=message))
    return csr, (int(arr.shape[1]), int(arr.shape[2]))


def lazy_footprints(csr: sp.csr_matrix, shape: tuple[int, int], unit_ids: Any, name: str,
                    attrs: dict | None = None,
                    unit_coords: dict | None = None) -> xr.DataArray:
    """As `footprints_array`, from a CSR: the dense (unit, height, width) float32 blocks of 64
    units are made only while the store writes them (same stored layout)."""
    n = csr.shape[0]
    H, W = shape
    coords: dict[str, Any] = {"unit_id": np.asarray(unit_ids, np.int64).reshape(n),
                              "height": np.arange(H), "width": np.arange(W)}
    for key, v in (unit_coords or {}).items():
        coords[key] = ("unit_id", np.asarray(v))
    data = sf.lazy_dense(csr, (H, W), 64) if n else np.zeros((0, H, W), np.float32)
    return xr.DataArray(data, dims=("unit_id", "height", "width"), coords=coords, name=name,
                        attrs=dict(attrs or {}))


def aligned_traces(ctx, C: xr.DataArray, unit_ids: np.ndarray, what: str, step: str) -> np.ndarray:
    """(n, T) float32 rows of ``C`` in the order of ``unit_ids``; StepError if any is missing."""
    have = np.asarray(C.unit_id.values, np.int64)
    missing = np.setdiff1d(unit_ids, have)
    if missing.size:
        raise StepError(f"step {step}: {what} has no trace for units {missing[:10].tolist()}; "
                        f"its inputs come from different runs: rerun the earlier steps")
    if not np.array_equal(have, unit_ids):
        C = C.sel(unit_id=unit_ids)
    return values(ctx, C, f"reading {what}").astype(np.float32, copy=False)


def check_frames(step: str, movie: xr.DataArray, *arrays: tuple[str, Any]) -> None:
    """StepError unless every array covers exactly the movie's frames."""
    frames = np.asarray(movie.frame.values)
    for what, arr in arrays:
        if arr is None:
            continue
        other = np.asarray(arr.frame.values)
        if other.shape != frames.shape or not np.array_equal(other, frames):
            raise StepError(f"step {step}: {what} covers {other.size} frames but movie_cropped "
                            f"{frames.size} (or different ones); rerun the steps after 3a")


def require_units(n: int, what: str, step: str) -> None:
    if n == 0:
        raise StepError(f"step {step}: {what} holds no units; nothing to refine (relax the "
                        f"filters of the earlier steps)")


def diameter(cell_size: dict) -> float:
    try:
        return sizes.diameter(cell_size)
    except (KeyError, TypeError, ValueError):
        raise StepError("cell_size (step 3a) has no 'diameter_px'; rerun step 3a") from None


def _attrs_json(d: dict) -> str:
    return json.dumps(d, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))


def _slabs(A: Any):
    """Dense slabs of (at most 64) units of a footprint stack, read one at a time (previews run
    beside the next step: reading every chunk at once would add to its peak memory)."""
    return sf.iter_slabs(A, lambda *c: dask.compute(*c, scheduler="sync"))


def _max_image(A: xr.DataArray, units: int | None = None) -> np.ndarray:
    """Maximum projection over (at most ``units``) footprints, for previews."""
    if units is not None and A.sizes["unit_id"] > units:
        A = A.isel(unit_id=slice(0, units))
    best = None
    for slab in _slabs(A):
        m = slab.max(axis=0)
        best = m if best is None else np.maximum(best, m, out=best)
    if best is None:
        return np.zeros((A.sizes["height"], A.sizes["width"]), np.float32)
    return np.asarray(best, np.float32)


def _areas(A: Any) -> np.ndarray:
    """Pixels > 0 of every footprint, one slab at a time."""
    return np.concatenate([(s > 0).reshape(s.shape[0], -1).sum(axis=1) for s in _slabs(A)]
                          or [np.zeros(0, np.int64)])


# ----------------------------------------------------------------------------- 7a


def run_dilation(p: DilationParams, ctx, A_filtered: xr.DataArray, cell_size: dict) -> dict:
    d = diameter(cell_size)
    window = int(round(sizes.length(p.window, d, 0.3)))
    require_units(A_filtered.sizes["unit_id"], "A_filtered", "7a")
    attrs = {"window_px": window, "threshold": p.threshold,
             "window_rule": "parameter" if p.window is not None else "0.3 x cell diameter",
             "cell_diameter_px": d}
    data = A_filtered.data
    func = partial(_dilate_block, window=window, threshold=p.threshold)
    if hasattr(data, "dask"):  # lazy, unit chunk by unit chunk (written in one pass)
        data = data.rechunk({0: 64, 1: -1, 2: -1}).map_blocks(func, dtype=np.float32)
        out = A_filtered.copy(data=data).astype(np.float32)
        out.name = "A_dilated"
        out.attrs = attrs
        return {"A_dilated": out}
    return {"A_dilated": footprints_array(func(np.asarray(data)), A_filtered.unit_id.values,
                                          "A_dilated", attrs)}


def _dilate_block(block: np.ndarray, window: int, threshold: float) -> np.ndarray:
    return cl.dilate(block, window=window, threshold=threshold)


def _preview_dilation(outputs, inputs, params) -> Figure:
    before, after = inputs["A_filtered"], outputs["A_dilated"]
    a, b = _max_image(before, 300), _max_image(after, 300)
    area_a, area_b = _areas(before), _areas(after)
    return Figure("7a Dilation", [
        ImagePanel("footprints before (max)", a), ImagePanel("pixels the update may use",
                                                              (b > 0).astype(np.float32)),
        HistPanel("footprint pixels per unit", {"before": area_a, "after dilation": area_b},
                  xlabel="pixels"),
        TextPanel("resolved", f"window: {after.attrs.get('window_px')} px "
                              f"({after.attrs.get('window_rule')})\n"
                              f"threshold: {after.attrs.get('threshold')}"),
    ])


# ----------------------------------------------------------------------------- 7b


def run_clustering(p: ClusteringParams, ctx, A_dilated: xr.DataArray, cell_size: dict) -> dict:
    d = diameter(cell_size)
    max_distance = sizes.length(p.max_distance, d, 1.5)
    min_area = int(round(sizes.area(p.min_area, d, 0.1, minimum=0)))
    A, shape = read_footprints(ctx, A_dilated, "reading footprints")
    require_units(A.shape[0], "A_dilated", "7b")
    labels = cl.cluster_units(A, max_cluster_size=p.max_cluster_size,
                              overlap_threshold=p.overlap_threshold, max_distance=max_distance,
                              min_area=min_area, min_intensity=p.min_intensity, shape=shape)
    counts = np.bincount(labels)
    return {"clusters": {
        "unit_id": np.asarray(A_dilated.unit_id.values, np.int64).tolist(),
        "cluster": labels.tolist(),
        "n_clusters": int(counts.size),
        "cluster_size_counts": {str(k): int(v) for k, v in
                                zip(*np.unique(counts, return_counts=True))},
        "resolved": {"max_cluster_size": p.max_cluster_size, "max_distance_px": max_distance,
                     "overlap_threshold": p.overlap_threshold, "min_area_px": min_area,
                     "min_intensity": p.min_intensity, "cell_diameter_px": d},
    }}


def cluster_labels(clusters: dict, unit_ids: np.ndarray, step: str) -> np.ndarray:
    """Cluster label of every unit of ``unit_ids``, from the stored 7b result."""
    try:
        ids = np.asarray(clusters["unit_id"], np.int64)
        labels = np.asarray(clusters["cluster"], np.int64)
    except (KeyError, TypeError):
        raise StepError(f"step {step}: the stored clusters (7b) are not readable; "
                        f"rerun 7b") from None
    if ids.shape != labels.shape or not np.array_equal(np.sort(ids), np.sort(unit_ids)):
        raise StepError(f"step {step}: the clusters of step 7b are for other units than the "
                        f"footprints of step 7a; rerun 7b and 7c")
    order = {int(u): i for i, u in enumerate(ids)}
    return labels[[order[int(u)] for u in unit_ids]]


def _cluster_image(A: Any, labels: np.ndarray) -> np.ndarray:
    """Per pixel, 1 + the cluster of the unit with the largest footprint value (0: none; ties:
    the first such unit). ``A`` a (unit, height, width) stack, read one slab at a time."""
    best = arg = None
    start = 0
    for slab in _slabs(A):
        m, a = slab.max(axis=0), slab.argmax(axis=0) + start
        if best is None:
            best, arg = m, a
        else:
            better = m > best  # strictly: an earlier unit keeps a tie, as argmax does
            best, arg = np.where(better, m, best), np.where(better, a, arg)
        start += slab.shape[0]
    if best is None:
        return np.zeros(A.shape[1:], np.float32)
    img = (labels[arg] % 20 + 1).astype(np.float32)  # 20 colours cycle
    return np.where(best > 0, img, 0)


def _preview_clusters(outputs, inputs, params) -> Figure:
    c = outputs["clusters"]
    A = inputs["A_dilated"]
    labels = cluster_labels(c, np.asarray(A.unit_id.values, np.int64), "7b")
    counts = np.bincount(labels)
    img = _cluster_image(A, labels)
    r = c["resolved"]
    return Figure("7b Clustering", [
        ImagePanel("clusters (colour = cluster)", img, cmap="tab20"),
        HistPanel("units per cluster", {"clusters": counts}, bins=max(1, int(counts.max()))),
        TextPanel("resolved", f"units: {len(labels)}\nclusters: {c['n_clusters']}\n"
                              f"max cluster size: {r['max_cluster_size']}\n"
                              f"max distance: {r['max_distance_px']:.1f} px\n"
                              f"overlap threshold: {r['overlap_threshold']}\n"
                              f"min area: {r['min_area_px']} px²"),
    ])


# ----------------------------------------------------------------------------- 7c


def run_bounds(p: BoundsParams, ctx, clusters: dict, A_dilated: xr.DataArray,
               cell_size: dict) -> dict:
    d = diameter(cell_size)
    radius = int(round(sizes.length(p.dilation_radius, d, 1.0, minimum=0)))
    padding = int(round(sizes.length(p.padding, d, 2.0, minimum=0)))
    min_size = int(round(sizes.length(p.min_size, d, 4.0)))
    A, (H, W) = read_footprints(ctx, A_dilated, "reading footprints")
    require_units(A.shape[0], "A_dilated", "7c")
    ids = np.asarray(A_dilated.unit_id.values, np.int64)
    labels = cluster_labels(clusters, ids, "7c")
    boxes = cl.cluster_boxes(A, labels, dilation_radius=radius, padding=padding,
                             min_size=min_size, intensity_threshold=p.intensity_threshold,
                             shape=(H, W))
    y0, y1, x0, x1 = (np.array([b[i] for b in boxes], np.int64) for i in range(4))
    covered = np.zeros((H, W), bool)
    for b in boxes:
        covered[b[0]:b[1], b[2]:b[3]] = True
    return {"cluster_bounds": {
        "cluster": list(range(len(boxes))), "y0": y0.tolist(), "y1": y1.tolist(),
        "x0": x0.tolist(), "x1": x1.tolist(),
        "n_units": np.bincount(labels, minlength=len(boxes)).tolist(),
        "frame_shape": [int(H), int(W)],
        "fraction_of_frame_covered": float(covered.mean()),
        "resolved": {"dilation_radius_px": radius, "padding_px": padding, "min_size_px": min_size,
                     "intensity_threshold": p.intensity_threshold, "cell_diameter_px": d},
    }}


def stored_boxes(bounds: dict, n_clusters: int, step: str) -> list[tuple[int, int, int, int]]:
    try:
        boxes = list(zip(bounds["y0"], bounds["y1"], bounds["x0"], bounds["x1"]))
    except (KeyError, TypeError):
        raise StepError(f"step {step}: the stored cluster_bounds (7c) are not readable; rerun "
                        f"7c") from None
    if len(boxes) != n_clusters:
        raise StepError(f"step {step}: step 7c stored {len(boxes)} boxes for {n_clusters} "
                        f"clusters; rerun 7c after 7b")
    return [tuple(int(v) for v in b) for b in boxes]


def _box_outline(b) -> tuple[np.ndarray, np.ndarray, str]:
    y0, y1, x0, x1 = b
    ys = np.array([y0, y0, y1 - 1, y1 - 1, y0], float) - 0.5 + np.array([0, 0, 1, 1, 0])
    xs = np.array([x0, x1 - 1, x1 - 1, x0, x0], float) - 0.5 + np.array([0, 1, 1, 0, 0])
    return ys, xs, ""


def _preview_bounds(outputs, inputs, params) -> Figure:
    bnd = outputs["cluster_bounds"]
    boxes = list(zip(bnd["y0"], bnd["y1"], bnd["x0"], bnd["x1"]))
    img = _max_image(inputs["A_dilated"])
    areas = np.array([(b[1] - b[0]) * (b[3] - b[2]) for b in boxes])
    r = bnd["resolved"]
    # at most 200 outlines keep the figure readable and quick
    return Figure("7c Bounds", [
        ImagePanel(f"cluster boxes ({len(boxes)})", img,
                   outlines=[_box_outline(b) for b in boxes[:200]]),
        HistPanel("box area", {"boxes": areas}, xlabel="pixels"),
        TextPanel("resolved", f"dilation radius: {r['dilation_radius_px']} px\n"
                              f"padding: {r['padding_px']} px\nmin size: {r['min_size_px']} px\n"
                              f"intensity threshold: {r['intensity_threshold']}\n"
                              f"frame covered: {100 * bnd['fraction_of_frame_covered']:.0f} %"),
    ])


# ----------------------------------------------------------------------------- 7d

# expected number of noise-only pixels kept per footprint, per preference
_FALSE_PIXELS = {"conservative": 0.1, "balanced": 0.5, "aggressive": 2.0}
# min_std as a fraction of the median noise level
_DEAD_FRACTION = {"conservative": 0.75, "balanced": 0.5, "aggressive": 0.25}
# percentiles of the noise map the penalty clip starts at (low, high)
_CLIP_PERCENTILES = {"conservative": (10.0, 99.9), "balanced": (2.0, 99.0),
                     "aggressive": (0.5, 95.0)}
# the update may use about this many times a footprint's own pixels (its dilated support)
_DILATED_AREA_FACTOR = 2.5


def run_suggestions(p: SpatialSuggestionParams, ctx, A_filtered: xr.DataArray,
                    C_filtered: xr.DataArray, movie_cropped: xr.DataArray,
                    noise: xr.DataArray) -> dict:
    T = movie_cropped.sizes["frame"]
    # frames from a few chunks only: an evenly spread sample would read the whole movie
    idx = sample_indices(movie_cropped.data.chunks[0], min(p.sample_frames, T))
    # the streamed pixel sums of 7e's statistics, without any unit: one read of the sample
    stats, _ = sufficient_statistics(
        movie_cropped.data[idx], np.zeros((0, idx.size), np.float32), plans=[],
        compute=lambda *c: ctx.compute(*c, message="7d: pixel std on a frame sample"))
    std = stats.pixel_std.astype(np.float64)
    sn = values(ctx, noise, "reading the noise map").astype(np.float64)
    A, _ = read_footprints(ctx, A_filtered, "reading footprints")
    require_units(A.shape[0], "A_filtered", "7d")
    if sn.shape != std.shape:
        raise StepError(f"step 7d: the noise map is {sn.shape} but the movie's frames "
                        f"{std.shape}; rerun 5a")
    C = aligned_traces(ctx, C_filtered, np.asarray(A_filtered.unit_id.values, np.int64),
                       "C_filtered", "7d")
    out = suggest_spatial(std, sn, A, C, p.preference, p.suggest_min_std, p.suggest_penalties)
    out["measured"]["frames_sampled"] = int(idx.size)
    return {"spatial_suggestions": out}


def suggest_spatial(std: np.ndarray, sn: np.ndarray, A: np.ndarray | sp.spmatrix, C: np.ndarray,
                    preference: str, with_min_std: bool = True,
                    with_penalties: bool = True) -> dict:
    """Suggested 7e values with reasons, from pixel std, noise map, footprints and traces.

    * ``min_std``: a fraction (by preference) of the median noise level m: a live pixel's
      temporal std is at least its noise, so pixels under it are dead or masked (outside a
      circular crop, saturated) and can only add noise to footprints.
    * ``penalty_scale`` z: a pixel is kept when its projection on the unit's trace exceeds z
      noise standard deviations, so z sets how many noise-only pixels a footprint keeps. With
      N candidate pixels per unit (about 2.5 x the median footprint area above 10 % of its
      peak: the dilated support 7a gives the update), z = isf(k / N) of the normal law
      keeps on average k noise pixels per unit
      (k = 0.1 / 0.5 / 2 for conservative / balanced / aggressive).
    * ``min_penalty`` / ``max_penalty`` (multiples of m): z times low / high percentiles of
      the noise map of live pixels, so the clip only acts on the quietest and noisiest pixels.
    Values are rounded to 3 significant digits; the rounded values are the ones stored and used.
    """
    sn = np.asarray(sn, np.float64)
    std = np.asarray(std, np.float64)
    m = float(np.median(sn))
    if not m > 0:
        raise StepError("step 7d: the median of the noise map (5a) is 0; check step 5a")
    frac = _DEAD_FRACTION[preference]
    min_std = _round3(frac * m)
    live = std >= min_std
    dead = int((~live).sum())
    # a footprint's pixels as 7a counts them (above 10 % of its peak; tails left out);
    # A dense (n, H, W) or a sparse (n, H*W) matrix: only its non-zero values matter
    A = sp.csr_matrix(A if sp.issparse(A) else np.asarray(A).reshape(A.shape[0], -1))
    peaks = sf.row_max(A)
    rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    areas = np.bincount(rows[A.data > (0.1 * peaks)[rows]], minlength=A.shape[0])
    area = float(np.median(areas))
    candidates = max(_DILATED_AREA_FACTOR * area, 2.0)
    k = _FALSE_PIXELS[preference]
    z = _round3(float(np.clip(-ndtri(min(k / candidates, 0.5)), 0.5, 6.0)))
    lo_pct, hi_pct = _CLIP_PERCENTILES[preference]
    live_sn = sn[live] if live.any() else sn.ravel()
    q_lo, q_hi = (float(v) for v in np.percentile(live_sn, [lo_pct, hi_pct]))
    min_pen = _round3(z * q_lo / m)
    max_pen = max(_round3(z * q_hi / m), min_pen)
    # what z means for a typical unit: the faintest footprint value kept, relative to its peak
    norms = np.linalg.norm(np.asarray(C, np.float64), axis=1)
    ok = (norms > 0) & (peaks > 0)
    faint = float(np.median(z * m / norms[ok] / peaks[ok])) if ok.any() else float("nan")
    vals: dict[str, float] = {}
    reasons: dict[str, str] = {}
    if with_min_std:
        vals["min_std"] = min_std
        reasons["min_std"] = (
            f"{frac:g} x the median noise level ({m:.3g}): {dead} pixels "
            f"({100 * dead / std.size:.1f} %) vary less than that over the sampled frames, which "
            f"no live pixel does (its variation is at least its noise); they are dead or masked "
            f"and are left out of the update.")
    if with_penalties:
        vals.update(penalty_scale=z, min_penalty=min_pen, max_penalty=max_pen)
        reasons["penalty_scale"] = (
            f"footprints have a median of {area:.0f} pixels, so the update sees about "
            f"{candidates:.0f} candidate pixels per unit; a threshold of {z:g} noise standard "
            f"deviations keeps on average {k:g} noise-only pixels per unit ({preference}). For "
            f"the median unit the faintest pixel kept is about {100 * faint:.0f} % of its peak.")
        reasons["min_penalty"] = (
            f"{z:g} x percentile {lo_pct:g} of the noise map ({q_lo:.3g}) / its median: "
            f"only pixels quieter than that get a raised penalty.")
        reasons["max_penalty"] = (
            f"{z:g} x percentile {hi_pct:g} of the noise map ({q_hi:.3g}) / its median: "
            f"only pixels noisier than that get a capped penalty.")
    hist, edges = np.histogram(std[np.isfinite(std)], bins=50)
    return {
        "values": vals, "reasons": reasons, "preference": preference,
        "measured": {
            "median_noise": m, "noise_percentiles": {str(lo_pct): q_lo, str(hi_pct): q_hi},
            "median_footprint_area_px": area, "dead_pixels": dead,
            "pixel_std_median": float(np.median(std)),
            "pixel_std_histogram": {"counts": hist.tolist(), "edges": edges.tolist()},
        },
    }


def _round3(x: float) -> float:
    return float(f"{x:.3g}")


def _preview_suggestions(outputs, inputs, params) -> Figure:
    s = outputs["spatial_suggestions"]
    h = s["measured"]["pixel_std_histogram"]
    edges = np.asarray(h["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    lines = [f"preference: {s['preference']}"]
    for key, v in s["values"].items():
        lines.append(f"{key} = {v:g}")
        lines.append("  " + _wrap(s["reasons"][key], 70, "  "))
    marks = np.array([s["values"]["min_std"]]) if "min_std" in s["values"] else None
    return Figure("7d Spatial parameter suggestions", [
        LinePanel("pixel std over sampled frames", centres, {"pixels": np.asarray(h["counts"])},
                  xlabel="std", ylabel="pixels", marks=marks),
        TextPanel("suggestions (used by 7e when use_suggestions is on)", "\n".join(lines)),
    ])


def _wrap(text: str, width: int, indent: str) -> str:
    import textwrap

    return ("\n" + indent).join(textwrap.wrap(text, width))


# ----------------------------------------------------------------------------- 7e

_UPDATE_KEYS = ("penalty_scale", "min_penalty", "max_penalty", "min_std")


def update_values(p: SpatialUpdateParams, suggestions: dict | None) -> dict[str, Any]:
    """The penalty values 7e uses: its own, or 7d's stored suggestions (exactly as shown)."""
    used: dict[str, Any] = {k: getattr(p, k) for k in _UPDATE_KEYS}
    source = dict.fromkeys(_UPDATE_KEYS, "parameter")
    if p.use_suggestions:
        if not suggestions or not isinstance(suggestions.get("values"), dict):
            raise StepError("use_suggestions is on but step 7d has no stored suggestions; run "
                            "7d first or turn use_suggestions off")
        for k, v in suggestions["values"].items():
            if k in used:
                used[k], source[k] = float(v), "7d suggestion"
    if used["min_penalty"] > used["max_penalty"]:
        raise StepError(f"min_penalty ({used['min_penalty']}) exceeds max_penalty "
                        f"({used['max_penalty']}); fix the values of 7e (or of 7d's suggestions)")
    return {**used, "source": source}


def run_update(p: SpatialUpdateParams, ctx, A_dilated: xr.DataArray, C_filtered: xr.DataArray,
               clusters: dict, cluster_bounds: dict, movie_cropped: xr.DataArray,
               noise: xr.DataArray, b_init: xr.DataArray, f_init: xr.DataArray,
               cell_size: dict, spatial_suggestions: dict | None = None) -> dict:
    used = update_values(p, spatial_suggestions)
    ids = np.asarray(A_dilated.unit_id.values, np.int64)
    require_units(ids.size, "A_dilated", "7e")
    check_frames("7e", movie_cropped, ("C_filtered", C_filtered), ("f_init", f_init))
    # footprints as a sparse (unit, pixel) matrix throughout: one dense copy is 640 MB at
    # ~435 units on 608 x 608 px, the CSR a few MB
    A, (H, W) = read_footprints(ctx, A_dilated, "reading footprints")
    if (movie_cropped.sizes["height"], movie_cropped.sizes["width"]) != (H, W):
        raise StepError(f"step 7e: footprints are {H}x{W} but movie_cropped is "
                        f"{movie_cropped.sizes['height']}x{movie_cropped.sizes['width']}; rerun "
                        f"the steps after 3a")
    C = aligned_traces(ctx, C_filtered, ids, "C_filtered", "7e")
    labels = cluster_labels(clusters, ids, "7e")
    boxes = stored_boxes(cluster_bounds, int(labels.max()) + 1, "7e")
    sn = values(ctx, noise, "reading the noise map").astype(np.float32, copy=False)
    b = values(ctx, b_init, "reading the background").astype(np.float32, copy=False)
    f = values(ctx, f_init, "reading the background trace").astype(np.float32, copy=False)
    for what, arr in (("noise", sn), ("b_init", b)):
        if arr.shape != (H, W):
            raise StepError(f"step 7e: {what} is {arr.shape} but the footprints {H}x{W}")
    try:
        plans = plan_boxes(A, labels, boxes, shape=(H, W))
    except ValueError as e:
        raise StepError(f"step 7e: {e}; rerun 7c") from None
    d = diameter(cell_size)
    # one window per unit, streamed in the same pass: its covariance map with the data
    windows = (unit_windows(A, int(round(WINDOW_PAD_D * d)), shape=(H, W))
               if p.measure_smoothness else [])
    t0 = time.perf_counter()
    YC, CC = sufficient_statistics(
        movie_cropped, C, f=f, plans=plans + windows, chunk_frames=p.chunk_frames or None,
        compute=lambda *c: ctx.compute(*c, message="7e: statistics over all frames"))
    t_stats = time.perf_counter() - t0
    YC, window_products = _split_windows(YC, len(plans))

    def on_plan(done: int, total: int) -> None:
        ctx.check_cancel()  # between clusters: a cancel is honoured within one cluster's solve
        ctx.progress(done / total, f"7e: updating cluster {done}/{total}")

    t0 = time.perf_counter()
    # b=None: the background's spatial part is re-estimated with the footprints (module doc)
    results = update_footprints(
        YC, CC, A, sn, b=None,
        penalty_scale=used["penalty_scale"], min_penalty=used["min_penalty"],
        max_penalty=used["max_penalty"], min_std=used["min_std"], on_plan=on_plan)
    t_solve = time.perf_counter() - t0
    out = results_csr(results, ids.size, (H, W))
    empty = ids[sf.row_max(out) <= 0]
    bg = [r.background for r in results if r.background is not None and r.background.size]
    smooth = (_measure_smoothness(out, (H, W), windows, window_products, YC, C, d, ctx)
              if p.measure_smoothness else None)
    report = {
        **{k: used[k] for k in _UPDATE_KEYS}, "source": used["source"],
        "background": "re-estimated in the boxes (b x f_init)",
        "background_median_in_boxes": float(np.median(np.concatenate(bg))) if bg else None,
        "n_units": int(ids.size), "n_clusters": len(plans),
        "pixels_solved": int(sum(pl.pixels.size for pl in plans)),
        "unknowns": int(sum(int(pl.support.sum()) for pl in plans)),
        "n_frames": int(YC.n_frames), "empty_units": empty.tolist(),
        "seconds_statistics": round(t_stats, 3), "seconds_solve": round(t_solve, 3),
        "smoothness": smooth,
    }
    if empty.size:
        ctx.warn(f"{empty.size} units have an empty footprint after the update (dropped by 7f)")
    return {"A_updated": lazy_footprints(
        out, (H, W), ids, "A_updated", {"report": _attrs_json(report)},
        unit_coords={"cluster": labels})}


def _split_windows(YC: BoxProducts, n_plans: int) -> tuple[BoxProducts, list[np.ndarray]]:
    """The statistics of the cluster plans, and the products of the unit windows after them."""
    windows = YC.products[n_plans:]
    return replace(YC, plans=YC.plans[:n_plans], products=YC.products[:n_plans]), windows


def _measure_smoothness(A: sp.csr_matrix, shape: tuple[int, int], windows: list,
                        products: list, YC: BoxProducts, C: np.ndarray, d: float, ctx) -> dict:
    """The smoothing scale of the updated footprints in the data (see
    :func:`~mps_core.cnmf.spatial.measure_smoothness`)."""
    ctx.progress(1.0, "7e: measuring the footprints' smoothness")
    return measure_smoothness(A, windows, products, YC.pixel_mean, C, YC.n_frames, d,
                              shape=shape)


def _report(arr: xr.DataArray) -> dict:
    try:
        return json.loads(arr.attrs.get("report", "{}"))
    except (TypeError, ValueError):
        return {}


def _sample_units(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int)) if n else \
        np.zeros(0, int)


def _smoothness_text(sm: dict | None) -> str:
    if not sm:
        return "smoothness: not measured"
    return (f"smoothness of the data: sigma {sm['sigma_px']} px "
            f"(from the {sm.get('units_used')} clearest of {sm['units_scored']} units; 7f "
            f"smooths the exported copy with it)")


def _preview_update(outputs, inputs, params) -> Figure:
    new, old = outputs["A_updated"], inputs["A_dilated"]
    r = _report(new)
    text = "\n".join([f"units: {r.get('n_units')}  clusters: {r.get('n_clusters')}",
                      f"pixels solved: {r.get('pixels_solved')}",
                      f"penalty_scale {r.get('penalty_scale')}, min {r.get('min_penalty')}, "
                      f"max {r.get('max_penalty')}, min_std {r.get('min_std')}",
                      f"values from: {sorted(set((r.get('source') or {}).values()))}",
                      f"background: {r.get('background')}",
                      f"empty after update: {len(r.get('empty_units', []))}",
                      f"time: statistics {r.get('seconds_statistics')} s, "
                      f"solve {r.get('seconds_solve')} s",
                      _smoothness_text(r.get("smoothness"))])
    area_old, area_new = _areas(old), _areas(new)
    return Figure("7e Spatial update", [
        ImagePanel("before (dilated, max)", _max_image(old)),
        ImagePanel("after update (max)", _max_image(new)),
        HistPanel("footprint pixels per unit", {"before": area_old, "after": area_new},
                  xlabel="pixels"),
        TextPanel("summary", text),
    ])


# ----------------------------------------------------------------------------- 7f


def run_merge(p: MergeValidateParams, ctx, A_updated: xr.DataArray, C_filtered: xr.DataArray,
              cell_size: dict, movie_cropped: xr.DataArray, b_init: xr.DataArray,
              f_init: xr.DataArray) -> dict:
    d = diameter(cell_size)
    sigma, sigma_rule = smoothing_sigma(p, _report(A_updated), d)
    ids = np.asarray(A_updated.unit_id.values, np.int64)
    require_units(ids.size, "A_updated", "7f")
    # footprints as a sparse (unit, pixel) matrix: no dense (units, H, W) copy is ever made
    A, (H, W) = read_footprints(ctx, A_updated, "reading footprints")
    C = aligned_traces(ctx, C_filtered, ids, "C_filtered", "7f")
    n = A.shape[0]
    nonempty = sf.row_max(A) > 0
    dropped_empty = ids[~nonempty].tolist()
    rows = np.flatnonzero(nonempty)
    if rows.size < n:
        A, C = A[rows], C[rows]
    groups = find_duplicates(A, C, p.duplicate_overlap, p.duplicate_correlation)
    A_m, C_m, keep_rows, merged = merge_duplicates(A, C, groups)
    del A
    kept_ids = ids[rows][keep_rows]
    if kept_ids.size == 0:
        raise StepError("step 7f: every footprint is empty after the spatial update; lower "
                        "7e's penalty_scale or min_std")
    smooth = p.smoothing or p.keep_both_versions
    # 7e solved every unit in exactly one cluster box and stored one footprint per unit, so
    # the assembled raw footprints are the (merged) rows themselves, all non-empty
    raw = A_m
    smoothed = None
    if smooth:  # a measured scale of 0: the smoothed copy is the raw
        smoothed = sf.smooth_csr(raw, (H, W), sigma) if sigma > 0 else raw.copy()
    final = smoothed if p.smoothing else raw
    C_out = C_m
    groups_report = [{"kept": int(ids[rows][g[0]]), "absorbed": ids[rows][g[1:]].tolist()}
                     for g in merged]
    if merged:
        C_out = _recompute_merged(ctx, final, C_m, [np.flatnonzero(keep_rows == g[0])[0]
                                                     for g in merged],
                                  movie_cropped, b_init, f_init)
    report = {"dropped_empty": dropped_empty, "merged_duplicates": groups_report,
              "n_in": int(n), "n_out": int(kept_ids.size), "smoothing": p.smoothing,
              "smoothing_sigma_px": sigma if smooth else None,
              "smoothing_sigma_rule": sigma_rule if smooth else None,
              "duplicate_overlap": p.duplicate_overlap,
              "duplicate_correlation": p.duplicate_correlation,
              "handle_overlaps": p.handle_overlaps,
              "note": "each unit is solved in exactly one cluster box (7b partitions the units), "
                      "so no pixel is claimed by several boxes"}
    attrs = {"report": _attrs_json(report)}
    empty_smoothed = sp.csr_matrix((0, H * W), dtype=np.float32)
    return {
        "A_refined": lazy_footprints(final, (H, W), kept_ids, "A_refined",
                                     {**attrs, "smoothed": int(p.smoothing)}),
        # smoothing off: the smoothed copy to compare with; on: the same as A_refined
        "A_refined_smoothed": lazy_footprints(
            smoothed if smooth else empty_smoothed, (H, W), kept_ids if smooth else [],
            "A_refined_smoothed", {**attrs, "kept": int(smooth)}),
        "C_refined": traces_array(C_out, kept_ids, frame_coords(C_filtered),
                                  "C_refined").assign_attrs(attrs),
    }


def smoothing_sigma(p: MergeValidateParams, update_report: dict, d: float) -> tuple[float, str]:
    """7f's smoothing width and where it came from: the parameter, else 7e's measurement of the
    data's smoothness, else 0.1 x d (7e did not measure it)."""
    if p.smoothing_sigma is not None:
        return float(p.smoothing_sigma), "parameter"
    measured = (update_report.get("smoothness") or {}).get("sigma_px")
    if measured is not None:
        return float(measured), "measured from the data in 7e"
    return max(0.1 * d, 0.5), "0.1 x cell diameter (7e did not measure the smoothness)"


def find_duplicates(A: np.ndarray | sp.spmatrix, C: np.ndarray, overlap: float,
                    correlation: float) -> list[np.ndarray]:
    """Groups (row indices, sorted, size >= 2) of duplicate units.

    Two units are duplicates when the pixels above 10 % of their peak (a footprint's pixels,
    ignoring the faint tails the LASSO leaves) share more than ``overlap`` of the smaller
    set AND their traces correlate above ``correlation``. Groups are connected components of
    that relation. ``A`` dense (n, H, W) or sparse (n, H*W).
    """
    n = A.shape[0]
    if n < 2:
        return []
    A = sp.csr_matrix(A if sp.issparse(A) else np.asarray(A).reshape(n, -1))
    peaks = sf.row_max(A)
    rows = np.repeat(np.arange(n), np.diff(A.indptr))
    above = A.data > (0.1 * peaks)[rows]
    S = sp.csr_matrix((np.ones(int(above.sum()), np.float32),
                       (rows[above], A.indices[above])), shape=A.shape)
    area = np.asarray(S.sum(axis=1)).ravel()
    inter = sp.triu(S @ S.T, k=1).tocoo()
    i, j, shared = inter.row, inter.col, inter.data
    ok = shared > overlap * np.minimum(area[i], area[j])
    i, j = i[ok], j[ok]
    if i.size == 0:
        return []
    r = np.array([_corr(C[a], C[b]) for a, b in zip(i, j)])
    ok = r > correlation
    i, j = i[ok], j[ok]
    if i.size == 0:
        return []
    graph = sp.coo_matrix((np.ones(i.size), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes_ = np.bincount(comp)
    return [np.flatnonzero(comp == c) for c in np.flatnonzero(sizes_ >= 2)]


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, np.float64) - np.mean(x)
    y = np.asarray(y, np.float64) - np.mean(y)
    den = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / den) if den > 0 else 0.0


def merge_duplicates(A: np.ndarray | sp.spmatrix, C: np.ndarray, groups: list[np.ndarray]):
    """Merge each group into its first (smallest-id) unit.

    The merged footprint is ``sum_i a_i ||c_i|| / ||c_first||``: with proportional traces the
    merged unit times the first trace reproduces the sum of the group's contributions. Returns
    (footprints, traces, kept row indices, the groups actually merged); the footprints are
    dense (m, H, W) for dense ``A``, a CSR (m, H*W) for sparse ``A``. Traces of merged units
    are placeholders here (the first unit's); the caller recomputes them from the movie.
    """
    if not groups:
        return A, C, np.arange(A.shape[0]), []
    dense_shape = None if sp.issparse(A) else np.shape(A)
    n = A.shape[0]
    Acsr = sp.csr_matrix(A if dense_shape is None else np.asarray(A).reshape(n, -1))
    keep = np.ones(n, bool)
    norms = np.linalg.norm(np.asarray(C, np.float64), axis=1)
    # one sparse weight matrix: kept units map to themselves (weight 1, exact), each group's
    # first unit to the norm-weighted sum of the group
    wr, wc, wv = [np.arange(n)], [np.arange(n)], [np.ones(n)]
    for g in groups:
        first = g[0]
        w = norms[g] / norms[first] if norms[first] > 0 else np.ones(g.size)
        wv[0][first] = 0.0  # replaced by the group's weights (which include the first)
        wr.append(np.full(g.size, first))
        wc.append(np.asarray(g))
        wv.append(w)
        keep[g[1:]] = False
    M = sp.csr_matrix((np.concatenate(wv), (np.concatenate(wr), np.concatenate(wc))),
                      shape=(n, n))
    rows = np.flatnonzero(keep)
    out = (M[rows] @ Acsr.astype(np.float64)).astype(np.float32).tocsr()
    out.eliminate_zeros()
    out.sort_indices()
    if dense_shape is not None:
        out = out.toarray().reshape((rows.size,) + tuple(dense_shape[1:]))
    return out, C[rows], rows, list(groups)


def _recompute_merged(ctx, A: sp.csr_matrix, C: np.ndarray, merged_rows: list[int],
                      movie: xr.DataArray, b_init: xr.DataArray,
                      f_init: xr.DataArray) -> np.ndarray:
    """Traces of the merged units recomputed from the movie (their YrA under the new footprint).

    Only the merged units and the units overlapping them are projected (a unit's YrA depends
    only on the footprints that overlap its own), in one pass over the movie.
    """
    check_frames("7f", movie, ("f_init", f_init))
    if movie.sizes["frame"] != C.shape[1]:
        raise StepError(f"step 7f: C_filtered has {C.shape[1]} frames but movie_cropped "
                        f"{movie.sizes['frame']}; rerun the steps after 3a")
    A = sp.csr_matrix(A)  # (n, H*W) footprints
    S = (A > 0).astype(np.float32)
    touch = np.asarray((S @ S[merged_rows].T).sum(axis=1)).ravel() > 0
    sub = np.flatnonzero(touch)
    Asub = A[sub]
    b = values(ctx, b_init, "reading the background").astype(np.float32, copy=False)
    f = values(ctx, f_init, "reading the background trace").astype(np.float32, copy=False)
    yra = compute_yra(movie, Asub, C[sub], b=b, f=f,
                      compute=lambda *c: ctx.compute(*c, message="7f: traces of merged units"))
    out = C.copy()
    pos = {int(u): i for i, u in enumerate(sub)}
    for r in merged_rows:
        out[r] = yra[pos[int(r)]]
    return out


def _preview_merge(outputs, inputs, params) -> Figure:
    ref, sm = outputs["A_refined"], outputs["A_refined_smoothed"]
    r = _report(ref)
    merged = r.get("merged_duplicates", [])
    text = "\n".join([f"units in: {r.get('n_in')}  out: {r.get('n_out')}",
                      f"dropped (empty footprint): {len(r.get('dropped_empty', []))} "
                      f"{r.get('dropped_empty', [])[:12]}",
                      f"duplicate groups merged: {len(merged)}"]
                     + [f"  {g['kept']} <- {g['absorbed']}" for g in merged[:12]]
                     + [f"smoothing: {r.get('smoothing')} (sigma {r.get('smoothing_sigma_px')} "
                        f"px)"])
    smoothed = bool(ref.attrs.get("smoothed"))
    panels = [ImagePanel(f"{'smoothed' if smoothed else 'raw'} footprints passed to step 8 "
                         f"(max)", _max_image(ref))]
    if sm.sizes["unit_id"] and not smoothed:
        panels.append(ImagePanel("smoothed footprints (max)", _max_image(sm)))
    C = outputs["C_refined"]
    if C.sizes["unit_id"]:
        pick = _sample_units(C.sizes["unit_id"], 4)
        sub = np.asarray(C.isel(unit_id=pick).values)
        x = np.asarray(C.frame.values)
        panels.append(LinePanel("C_refined (4 units)", x,
                                {f"unit {int(C.unit_id[i])}": s for i, s in zip(pick, sub)},
                                xlabel="original frame"))
    panels.append(TextPanel("merge and validation", text))
    return Figure("7f Merge and validate", panels)


# ----------------------------------------------------------------------------- declarations

STEP_7A = Step(
    id="7a", title="Dilation", stage=STAGE,
    summary="Expands each footprint by a small radius so the spatial update has room around it. "
            "Footprints are not otherwise changed.",
    params=DilationParams, inputs=("A_filtered", "cell_size"), outputs=("A_dilated",),
    run=run_dilation, previews=(Preview("dilation", "Before / after", _preview_dilation),),
)

STEP_7B = Step(
    id="7b", title="Clustering", stage=STAGE,
    summary="Groups nearby or overlapping units into small clusters that are updated together; "
            "every unit belongs to exactly one cluster.",
    params=ClusteringParams, inputs=("A_dilated", "cell_size"), outputs=("clusters",),
    run=run_clustering, previews=(Preview("clusters", "Clusters", _preview_clusters),),
)

STEP_7C = Step(
    id="7c", title="Bounds", stage=STAGE,
    summary="Computes a padded bounding box per cluster; the spatial update works only on the "
            "pixels inside it.",
    params=BoundsParams, inputs=("clusters", "A_dilated", "cell_size"),
    outputs=("cluster_bounds",), run=run_bounds,
    previews=(Preview("boxes", "Cluster boxes", _preview_bounds),),
)

STEP_7D = Step(
    id="7d", title="Spatial parameter suggestions", stage=STAGE,
    summary="Suggests the minimum pixel standard deviation and the penalty range of step 7e from "
            "the data, with the reason for each. Treat them as a starting point.",
    params=SpatialSuggestionParams,
    inputs=("A_filtered", "C_filtered", "movie_cropped", "noise"),
    outputs=("spatial_suggestions",), run=run_suggestions,
    previews=(Preview("suggestions", "Suggestions", _preview_suggestions),),
)

STEP_7E = Step(
    id="7e", title="Spatial update", stage=STAGE,
    summary="Re-estimates every footprint inside its cluster's box with a non-negative, "
            "noise-scaled LASSO per pixel over all frames, from statistics accumulated in one "
            "streamed pass over the movie.",
    params=SpatialUpdateParams,
    inputs=("A_dilated", "C_filtered", "clusters", "cluster_bounds", "movie_cropped", "noise",
            "b_init", "f_init", "cell_size"),
    optional_inputs=("spatial_suggestions",), outputs=("A_updated",), run=run_update,
    previews=(Preview("update", "Before / after", _preview_update),),
)

STEP_7F = Step(
    id="7f", title="Merge and validate", stage=STAGE,
    summary="Combines the per-cluster footprints, resolves overlapping boxes, optionally smooths, "
            "drops empty footprints and merges duplicates. Quick to re-run without redoing 7e.",
    params=MergeValidateParams,
    # the movie and background are read only when duplicates are merged (their traces)
    inputs=("A_updated", "C_filtered", "cell_size", "movie_cropped", "b_init", "f_init"),
    outputs=("A_refined", "A_refined_smoothed", "C_refined"), run=run_merge,
    previews=(Preview("merge", "Merge and validation", _preview_merge),),
)
