"""Steps 8a-8c: the final pass (YrA and temporal update from the refined footprints) and export.

8a and 8b reuse the parameter models of 6a and 6d, so both passes are tuned with the same names;
using the same step-8 values across sessions keeps traces comparable between recordings.
8c applies the last quality filter and writes the results in the formats a lab needs.

Only the declarations live here for now; every step has ``run=None``. Parameters with a
``None`` default are derived from the expected cell diameter d (step 1, estimated from the data
when null); "a cell's area" means pi * (d / 2) ** 2 pixels.
"""

from __future__ import annotations

from typing import Literal

from ..paramtypes import P, StepParams
from ..registry import Step
from .temporal import TemporalSolverParams, YrAParams

STAGE = "Final pass and export"


class FinalYrAParams(YrAParams):
    """Same parameters as step 6a, applied to the refined footprints of step 7f."""


class FinalTemporalParams(TemporalSolverParams):
    include_background: bool = P(False, "Also fit the background trace (f) with the units, so "
                                 "that background fluctuations are not absorbed by the traces.")


class ExportParams(StepParams):
    min_size: int | None = P(
        None, "Units whose footprint has fewer pixels are left out; null: a quarter of a cell's "
        "area.", ge=0, le=1000000, unit="px²")
    min_snr: float = P(1.0, "Units whose trace peak is under this many noise standard deviations "
                       "are left out; 0 keeps all.", ge=0, le=1000)
    min_correlation: float = P(0.2, "Units whose footprint correlates less than this with the "
                               "movie under it (while the unit is active) are left out; 0 keeps "
                               "all.", ge=-1, le=1)
    exclude_rejected: bool = P(True, "Leave out units rejected during curation; off exports them "
                               "too, labelled as rejected.")
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


STEP_8A = Step(
    id="8a", title="Final YrA", stage=STAGE,
    summary="Recomputes each unit's raw trace (YrA) from the refined footprints of step 7f, as "
            "in step 6a.",
    params=FinalYrAParams, inputs=("A_refined", "C_refined", "b_init", "f_init", "movie_cropped"),
    outputs=("YrA_final",), run=None, previews=(),
)

STEP_8B = Step(
    id="8b", title="Final temporal update", stage=STAGE,
    summary="Reruns the temporal update (as in step 6d) on the final YrA, giving the final "
            "calcium traces C, spikes S, baselines and AR coefficients.",
    params=FinalTemporalParams, inputs=("YrA_final", "A_refined"),
    # the background is needed only when include_background is on
    optional_inputs=("b_init", "f_init"),
    outputs=("C_final", "S_final", "b0_final", "c0_final", "g_final", "solver_report_final"),
    run=None, previews=(),
)

STEP_8C = Step(
    id="8c", title="Final filter and export", stage=STAGE,
    summary="Leaves out units that fail the final size, SNR and footprint-correlation checks, "
            "then exports footprints, traces, spikes and metadata in the chosen formats, placed "
            "back in the input video's pixel grid. Re-runs in seconds.",
    params=ExportParams,
    inputs=("A_refined", "C_final", "S_final", "crop", "frame_index", "motion_qc", "shifts",
            "mean_frame", "config"),
    # exported when present: background, quarantine labels
    optional_inputs=("b_init", "f_init", "quarantine"),
    outputs=("final_units", "export_manifest"), run=None, previews=(),
)
