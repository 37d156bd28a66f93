"""Steps 6a-6e: each unit's raw trace (YrA) and the CNMF temporal update (C, S, b0, c0, g).

The temporal update fits, per unit, an autoregressive calcium model with a sparse spike train
to its YrA trace. The parameter models of 6a and 6d are reused by the final pass (8a, 8b), so
both passes are tuned with the same names.

Only the declarations live here for now; every step has ``run=None``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ..paramtypes import P, StepParams
from ..registry import Step

STAGE = "Temporal update"

Preference = Literal["conservative", "balanced", "aggressive"]


class YrAParams(StepParams):
    subtract_background: bool = P(True, "Subtract the background (b x f) from the movie before "
                                  "projecting; recommended, turn off only to inspect raw "
                                  "traces.")
    use_float32: bool = P(True, "Compute in 32-bit floats: half the memory of 64-bit with "
                          "negligible precision loss.", advanced=True)
    fix_nan: bool = P(True, "Replace NaN or Inf values of the movie with 0 before projecting.")
    chunk_frames: int = P(0, "Frames read at a time; 0 derives it from the memory limit. Lower "
                          "uses less memory.", ge=0, le=100000, advanced=True, unit="frames")


class YrAValidationParams(StepParams):
    n_units: int = P(5, "Number of units (a seeded random sample) whose YrA is plotted.",
                     ge=1, le=100)
    frame_selection: Literal["random", "start", "middle", "end", "highest_variance"] = P(
        "random", "Which frames are plotted: a random block, the start, middle or end of the "
        "recording, or the block where the units vary most.")
    n_frames: int = P(1000, "Number of consecutive frames plotted per unit.",
                      ge=10, le=1000000, unit="frames")
    seed: int = P(0, "Seed of the unit and frame sample, so a rerun shows the same plots.",
                  ge=0, le=2**32 - 1, advanced=True)


class TemporalSuggestionParams(StepParams):
    preference: Preference = P(
        "balanced", "Style of the suggestions: 'aggressive' favours finding more events (lower "
        "penalty), 'conservative' fewer but surer events.")
    max_units: int = P(500, "Suggestions are computed from at most this many units (a seeded "
                       "sample); 0 uses every unit.", ge=0, le=1000000, advanced=True)
    seed: int = P(0, "Seed of the unit sample, so a rerun suggests the same values.",
                  ge=0, le=2**32 - 1, advanced=True)


class TemporalSolverParams(StepParams):
    """The temporal-update parameters shared by 6d and 8b."""

    ar_order: Literal[1, 2] = P(
        1, "Order p of the calcium decay model: 1 (single exponential decay, cleaner, sparser "
        "traces) or 2 (rise and decay, resolves closely spaced events but noisier).")
    sparse_penalty: float = P(1.0, "Weight of the L1 penalty on spikes; higher gives fewer but "
                              "surer spikes, lower finds more events but more noise.",
                              ge=0, le=10000)
    noise_scaled_penalty: bool = P(True, "Multiply the sparse penalty by each unit's noise level "
                                   "so one value suits bright and dim units alike.")
    zero_threshold: float = P(0.01, "Values of C and S under this many noise standard "
                              "deviations of the unit are set to 0; raise it (e.g. 0.5) to drop "
                              "small noise events when the penalty is low.", ge=0, le=100)
    max_iterations: int = P(500, "Maximum iterations of the solver per unit; lower it if some "
                            "units take too long.", ge=1, le=1000000)
    solver: Literal["auto", "fast", "cvxpy"] = P(
        "auto", "'fast' is MPS's exact dedicated solver, 'cvxpy' the general reference solver "
        "(much slower); 'auto' uses fast and falls back to cvxpy for any unit where it fails.")
    chunk_frames: int = P(5000, "Long traces are solved in overlapping chunks of this many "
                          "frames; 0 solves each trace whole (most exact, more memory).",
                          ge=0, le=10000000, unit="frames")
    overlap_frames: int = P(100, "Frames shared by consecutive chunks, blended so chunk edges "
                            "leave no artifacts.", ge=0, le=100000, advanced=True, unit="frames")
    units_per_batch: int = P(100, "Units solved per parallel task; larger batches have less "
                             "overhead, smaller ones balance the workers better.",
                             ge=1, le=100000, advanced=True)

    @model_validator(mode="after")
    def _overlap(self) -> "TemporalSolverParams":
        # the blend needs clean, unshared frames in every chunk
        if self.chunk_frames and 2 * self.overlap_frames >= self.chunk_frames:
            raise ValueError(f"overlap_frames ({self.overlap_frames}) must be under half of "
                             f"chunk_frames ({self.chunk_frames}); or set chunk_frames 0")
        return self


class TemporalUpdateParams(TemporalSolverParams):
    use_suggestions: bool = P(False, "Replace ar_order, sparse_penalty, zero_threshold and "
                              "max_iterations with the values step 6c suggested (as shown "
                              "there); off uses the values set here.")


class FilterParams(StepParams):
    min_spike_sum: float = P(1e-6, "Units whose spikes S sum to less are dropped (no events "
                             "found).", ge=0)
    min_calcium_var: float = P(1e-6, "Units whose calcium trace C varies less are dropped "
                               "(flat trace).", ge=0)
    min_spatial_sum: float = P(1e-6, "Units whose footprint sums to less are dropped (empty "
                               "footprint).", ge=0)


STEP_6A = Step(
    id="6a", title="YrA", stage=STAGE,
    summary="Computes each unit's raw trace: the movie minus background and all other units, "
            "projected on the unit's footprint, plus its own trace. Streams over frame chunks.",
    params=YrAParams, inputs=("A_prep", "C_prep", "b_init", "f_init", "movie_cropped"),
    outputs=("YrA",), run=None, previews=(),
)

STEP_6B = Step(
    id="6b", title="YrA validation", stage=STAGE,
    summary="Plots YrA against the initial traces for a few units on selected frames, as a "
            "sanity check before the temporal update.",
    params=YrAValidationParams, inputs=("YrA", "C_prep"), outputs=("yra_validation",),
    run=None, previews=(),
)

STEP_6C = Step(
    id="6c", title="Temporal parameter suggestions", stage=STAGE,
    summary="Suggests the AR order, sparse penalty, maximum iterations and zero threshold from "
            "the units' SNR, decay time and event rate, with the reason for each. The "
            "suggestions are stored so step 6d can use exactly what was shown.",
    params=TemporalSuggestionParams, inputs=("YrA", "noise", "A_prep"),
    outputs=("temporal_suggestions",), run=None, previews=(),
)

STEP_6D = Step(
    id="6d", title="Temporal update", stage=STAGE,
    summary="Fits each unit's denoised calcium trace C, spikes S, baseline b0, initial decay c0 "
            "and AR coefficients g to its YrA with a sparse spike penalty. Records the solver and "
            "objective per unit.",
    params=TemporalUpdateParams, inputs=("YrA", "A_prep"),
    optional_inputs=("temporal_suggestions",),
    outputs=("C_temporal", "S_temporal", "b0_temporal", "c0_temporal", "g_temporal",
             "solver_report"),
    run=None, previews=(),
)

STEP_6E = Step(
    id="6e", title="Filter and validate", stage=STAGE,
    summary="Drops units with no spikes, a flat calcium trace or an empty footprint, and "
            "records why each dropped unit went.",
    params=FilterParams, inputs=("A_prep", "C_temporal", "S_temporal"),
    outputs=("A_filtered", "C_filtered", "S_filtered", "dropped_6e"), run=None, previews=(),
)
