"""Steps 4a-4h: split the NNDSVD components into candidate cells and clean the candidate set.

Watershed regions (4a-4b) are merged by distance (4c), given traces (4d), turned into the first
footprints A and traces C (4e), and cleaned: invalid components dropped (4f), split cells merged
by correlation (4g), likely artifacts moved to a quarantine list the user can review (4h).
Over-seeding is acceptable here (CNMF prunes later); missing a cell is not, so the defaults lean
permissive.

Only the declarations live here for now; every step has ``run=None``. Parameters with a
``None`` default are derived from the expected cell diameter d (step 1, estimated from the data
when null); "a cell's area" means pi * (d / 2) ** 2 pixels.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from ..paramtypes import P, StepParams
from ..registry import Step

STAGE = "Component detection"


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

    @model_validator(mode="after")
    def _size_range(self) -> "QuarantineParams":
        if self.min_size is not None and self.max_size is not None \
                and self.min_size >= self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must be smaller than max_size "
                             f"({self.max_size})")
        return self


STEP_4A = Step(
    id="4a", title="Watershed parameter search", stage=STAGE,
    summary="Tries combinations of peak distance, threshold and smoothing on a seeded sample of "
            "components and suggests the one whose regions look most like single cells of the "
            "expected size.",
    params=WatershedSearchParams, inputs=("nndsvd_spatial", "config"),
    outputs=("watershed_suggestion",), run=None, previews=(),
)

STEP_4B = Step(
    id="4b", title="Watershed segmentation", stage=STAGE,
    summary="Splits every NNDSVD component into regions with watershed, using the values set "
            "here or, for those left null, 4a's suggestion.",
    params=WatershedParams, inputs=("nndsvd_spatial", "config"),
    optional_inputs=("watershed_suggestion",), outputs=("regions",), run=None, previews=(),
)

STEP_4C = Step(
    id="4c", title="Spatial merge", stage=STAGE,
    summary="Merges regions whose centres are close and whose sizes are similar, and drops "
            "regions that are too small. The result does not depend on the order of regions.",
    params=SpatialMergeParams, inputs=("regions", "config"), outputs=("regions_merged",),
    run=None, previews=(),
)

STEP_4D = Step(
    id="4d", title="Temporal extraction", stage=STAGE,
    summary="Extracts each region's trace from the whole movie, streaming over frame chunks in "
            "batches of regions so memory stays bounded.",
    params=TemporalExtractionParams, inputs=("regions_merged", "movie_cropped"),
    outputs=("region_traces",), run=None, previews=(),
)

STEP_4E = Step(
    id="4e", title="A/C initialisation", stage=STAGE,
    summary="Builds the first footprints A and traces C from the regions, normalised as chosen, "
            "and keeps the background component apart as b and f.",
    params=ACInitParams,
    inputs=("regions_merged", "region_traces", "nndsvd_spatial", "nndsvd_temporal"),
    outputs=("A_init", "C_init", "b_init", "f_init"), run=None, previews=(),
)

STEP_4F = Step(
    id="4f", title="Drop invalid components", stage=STAGE,
    summary="Removes components with NaN values, empty footprints or flat traces, which would "
            "break the later steps, and records why each one went.",
    params=DropInvalidParams, inputs=("A_init", "C_init"),
    outputs=("A_valid", "C_valid", "dropped_4f"), run=None, previews=(),
)

STEP_4G = Step(
    id="4g", title="Temporal merge", stage=STAGE,
    summary="Merges components whose traces correlate and whose footprints overlap (one cell "
            "split in two); chains merge consistently and merged traces are recomputed from the "
            "movie.",
    params=TemporalMergeParams, inputs=("A_valid", "C_valid", "movie_cropped"),
    outputs=("A_merged", "C_merged"), run=None, previews=(),
)

STEP_4H = Step(
    id="4h", title="Artifact quarantine", stage=STAGE,
    summary="Scores every component (size, shape, trace skewness, SNR, slow drift) and moves "
            "likely artifacts such as vessel fragments or edge glow to a quarantine list you can "
            "review and restore. The score table is saved.",
    params=QuarantineParams, inputs=("A_merged", "C_merged", "movie_cropped"),
    outputs=("A_seed", "C_seed", "quarantine", "component_scores"), run=None, previews=(),
)
