"""Steps 5a-5b: the per-pixel noise map and the checks before CNMF.

The noise map (5a) tells the temporal and spatial updates how much of each pixel's signal to
trust; 5b stops bad values and implausible component sizes before the expensive updates run.

Only the declarations live here for now; every step has ``run=None``. Parameters with a
``None`` default are derived from the expected cell diameter d (step 1, estimated from the data
when null); "a cell's area" means pi * (d / 2) ** 2 pixels.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from ..paramtypes import P, StepParams
from ..registry import Step

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


STEP_5A = Step(
    id="5a", title="Noise estimation", stage=STAGE,
    summary="Estimates each pixel's noise level from the high-frequency part of its power "
            "spectrum, optionally smoothed and scaled up in active regions. The temporal and "
            "spatial updates use this map.",
    params=NoiseParams, inputs=("movie_cropped",), outputs=("noise",), run=None, previews=(),
)

STEP_5B = Step(
    id="5b", title="Validation and setup", stage=STAGE,
    summary="Checks footprints, traces and the noise map for NaN or Inf values and drops "
            "components whose size is outside the plausible range before CNMF starts.",
    params=PrepParams, inputs=("A_seed", "C_seed", "noise"), outputs=("A_prep", "C_prep"),
    run=None, previews=(),
)
