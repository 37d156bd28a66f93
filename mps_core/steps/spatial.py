"""Steps 7a-7f: refine every footprint against the whole recording.

7a-7d only prepare the update (they do not change what footprints look like): dilation gives the
update room around each footprint, clusters and their padded boxes split the field into local
patches, and 7d suggests penalties from the data. 7e solves a non-negative LASSO per pixel from
statistics streamed over all frames; 7f assembles, optionally smooths and validates the result.

Only the declarations live here for now; every step has ``run=None``. Parameters with a
``None`` default are derived from the expected cell diameter d (step 1, estimated from the data
when null); "a cell's area" means pi * (d / 2) ** 2 pixels.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ..paramtypes import P, StepParams
from ..registry import Step

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

    @model_validator(mode="after")
    def _penalty_range(self) -> "SpatialUpdateParams":
        if self.min_penalty > self.max_penalty:
            raise ValueError(f"min_penalty ({self.min_penalty}) must not exceed max_penalty "
                             f"({self.max_penalty})")
        return self


class MergeValidateParams(StepParams):
    smoothing: bool = P(False, "Smooth the footprints passed on to step 8 with a Gaussian; "
                        "leave off unless they look ragged, since smoothing spreads them into "
                        "neighbours.")
    smoothing_sigma: float | None = P(
        None, "Sigma of the Gaussian smoothing; null: 0.1 x cell diameter. Lower it if "
        "footprints look diffuse.", gt=0, le=100, unit="px")
    keep_both_versions: bool = P(True, "Also store a smoothed copy (A_refined_smoothed) when "
                                 "smoothing is off, to compare before deciding.")
    handle_overlaps: bool = P(True, "Reconcile pixels that a unit received from several "
                              "overlapping cluster boxes; keep on (off can leave seams at box "
                              "edges).")
    duplicate_overlap: float = P(0.8, "Two units whose footprints share more than this fraction "
                                 "of the smaller one's pixels are duplicate candidates; lower it "
                                 "to merge more.", ge=0, le=1)
    duplicate_correlation: float = P(0.8, "Duplicate candidates are merged only when their traces "
                                     "also correlate above this; lower it to merge more.",
                                     ge=0, le=1, advanced=True)


STEP_7A = Step(
    id="7a", title="Dilation", stage=STAGE,
    summary="Expands each footprint by a small radius so the spatial update has room around it. "
            "Footprints are not otherwise changed.",
    params=DilationParams, inputs=("A_filtered",), outputs=("A_dilated",), run=None, previews=(),
)

STEP_7B = Step(
    id="7b", title="Clustering", stage=STAGE,
    summary="Groups nearby or overlapping units into small clusters that are updated together; "
            "every unit belongs to exactly one cluster.",
    params=ClusteringParams, inputs=("A_dilated",), outputs=("clusters",), run=None, previews=(),
)

STEP_7C = Step(
    id="7c", title="Bounds", stage=STAGE,
    summary="Computes a padded bounding box per cluster; the spatial update works only on the "
            "pixels inside it.",
    params=BoundsParams, inputs=("clusters", "A_dilated"), outputs=("cluster_bounds",),
    run=None, previews=(),
)

STEP_7D = Step(
    id="7d", title="Spatial parameter suggestions", stage=STAGE,
    summary="Suggests the minimum pixel standard deviation and the penalty range of step 7e from "
            "the data, with the reason for each. Treat them as a starting point.",
    params=SpatialSuggestionParams,
    inputs=("A_filtered", "C_filtered", "movie_cropped", "noise"),
    outputs=("spatial_suggestions",), run=None, previews=(),
)

STEP_7E = Step(
    id="7e", title="Spatial update", stage=STAGE,
    summary="Re-estimates every footprint inside its cluster's box with a non-negative, "
            "noise-scaled LASSO per pixel over all frames, from statistics accumulated in one "
            "streamed pass over the movie.",
    params=SpatialUpdateParams,
    inputs=("A_dilated", "C_filtered", "clusters", "cluster_bounds", "movie_cropped", "noise",
            "b_init", "f_init"),
    optional_inputs=("spatial_suggestions",), outputs=("A_updated",), run=None, previews=(),
)

STEP_7F = Step(
    id="7f", title="Merge and validate", stage=STAGE,
    summary="Combines the per-cluster footprints, resolves overlapping boxes, optionally smooths, "
            "drops empty footprints and merges duplicates. Quick to re-run without redoing 7e.",
    params=MergeValidateParams, inputs=("A_updated", "C_filtered"),
    outputs=("A_refined", "A_refined_smoothed", "C_refined"), run=None, previews=(),
)
