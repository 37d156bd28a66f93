"""Steps 3a-3c: crop the field, remove a static background, and seed components with NNDSVD.

Only the declarations live here for now (parameter models, inputs, outputs); the numerics are
added later, so every step has ``run=None`` and the registry reports it as not implemented.

Pixel sizes follow the data: a parameter declared with a ``None`` default is derived from the
expected cell diameter (step 1's ``cell_diameter_px``, estimated from the data when that is
null). The derivation rule is stated in each description.
"""

from __future__ import annotations

from typing import Literal

from ..paramtypes import P, StepParams
from ..registry import Step

STAGE = "Crop and initialisation"


class CropParams(StepParams):
    use_full_frame: bool = P(False, "Keep the whole frame instead of cropping (background "
                             "removal below still applies); turn on when cells fill the frame.")
    shape: Literal["square", "circle"] = P(
        "circle", "Shape of the crop: 'circle' matches the round field of a GRIN lens "
        "(pixels outside it are set to 0), 'square' keeps the corners.")
    size_fraction: float = P(0.75, "Crop size (square side or circle diameter) as a fraction of "
                             "the frame's smaller side; lower it for a tighter, faster crop.",
                             gt=0, le=1)
    offset_x: int = P(0, "Horizontal shift of the crop centre from the frame centre; positive "
                      "moves the crop right.", ge=-10000, le=10000, unit="px")
    offset_y: int = P(0, "Vertical shift of the crop centre from the frame centre; positive "
                      "moves the crop down.", ge=-10000, le=10000, unit="px")
    background: Literal["none", "ring", "lowrank"] = P(
        "none", "Static background removed from every frame: 'none', 'ring' (the mean image "
        "convolved with an annulus) or 'lowrank' (mean plus the top spatial modes of a frame "
        "sample).")
    ring_radius: float | None = P(
        None, "Radius of the ring (annulus) for 'ring' background; null: 1.5 x cell diameter. "
        "Raise it if cells leave dark halos.", gt=0, le=1000, unit="px")
    ring_width: float | None = P(
        None, "Width of the annulus for 'ring' background; null: 0.25 x cell diameter (at least "
        "1 px). Wider rings give a smoother background.", gt=0, le=1000, unit="px")
    lowrank_rank: int = P(1, "Number of spatial modes (besides the mean) in the 'lowrank' "
                          "background; raise it when the background has several independent "
                          "patterns (e.g. vessels).", ge=1, le=50)
    lowrank_frames: int = P(1000, "Frames (evenly spaced) used to estimate the 'lowrank' "
                            "modes; more is steadier but slower.", ge=10, le=100000,
                            advanced=True, unit="frames")
    smoothing_sigma: float | None = P(
        None, "Gaussian sigma applied to the background estimate so it holds only structure "
        "larger than cells; null: 1 x cell diameter, 0 disables smoothing.",
        ge=0, le=1000, unit="px")
    clip_negatives: bool = P(False, "Set values that are negative after background removal to "
                             "0; leave off to keep the noise floor unbiased.")
    save_mean_image: bool = P(True, "Also write the cropped field's mean frame as a PNG image "
                              "in the session folder (for figures and presentations).")


class NNDSVDParams(StepParams):
    n_components: int = P(100, "Components computed, background (component 0) included; raise "
                          "it for dense fields (cost grows about linearly).", ge=2, le=5000)
    power_iterations: int = P(5, "Power iterations of the randomised SVD; more refine the "
                              "singular vectors at the cost of one movie pass each.",
                              ge=0, le=50, advanced=True)
    oversampling: int = P(10, "Extra random directions of the randomised range finder beyond "
                          "n_components; more gives a more accurate truncated SVD.",
                          ge=0, le=1000, advanced=True)
    sparsity_threshold: float = P(0.05, "Values under this fraction of a component's maximum are "
                                  "set to 0; lower it for sparse, dim fields, raise it in dense "
                                  "fields to drop noise.", ge=0, lt=1)
    spatial_regularisation: bool = P(True, "Pull components toward compact, blob-like shapes "
                                     "(Gaussian smoothing of each spatial component).")
    regularisation_sigma: float | None = P(
        None, "Width of the spatial regularisation; null: 0.2 x cell diameter. Raise it for "
        "large, spread-out cells, lower it for small compact ones.", gt=0, le=100, unit="px")
    chunk_frames: int = P(0, "Frames per chunk read from the movie; 0 derives it from the memory "
                          "limit. Lower uses less memory but runs slower.",
                          ge=0, le=100000, advanced=True, unit="frames")
    frame_subsample: int = P(1, "Fit the spatial components on every k-th frame (1 = all "
                             "frames); raise it to speed up long recordings. Temporal components "
                             "still cover every frame.", ge=1, le=1000)
    seed: int = P(0, "Seed of the randomised SVD, so a rerun gives the same components.",
                  ge=0, le=2**32 - 1, advanced=True)


class InitAnalysisParams(StepParams):
    gallery_size: int = P(16, "Number of components shown in the gallery (the strongest "
                          "first).", ge=1, le=500)
    save_stats_csv: bool = P(True, "Write the per-component statistics (variance explained, "
                             "size, peak) as a CSV file in the session folder.")


STEP_3A = Step(
    id="3a", title="Crop and static background", stage=STAGE,
    summary="Crops the movie to the imaging field (square or circle, or the full frame) and "
            "optionally removes a static background. The crop offsets are kept so footprints can "
            "be placed back in the original video's pixel grid.",
    params=CropParams, inputs=("config", "movie"),
    outputs=("crop", "mean_frame", "static_background", "movie_cropped"),
    run=None, previews=(),
)

STEP_3B = Step(
    id="3b", title="NNDSVD initialisation", stage=STAGE,
    summary="Computes a truncated SVD of the cropped movie out of core and turns it into "
            "non-negative components (NNDSVD). Component 0 is the background; the others are "
            "candidate cells.",
    params=NNDSVDParams, inputs=("movie_cropped",),
    outputs=("nndsvd_spatial", "nndsvd_temporal", "singular_values"),
    run=None, previews=(),
)

STEP_3C = Step(
    id="3c", title="Initialisation analysis", stage=STAGE,
    summary="Shows the singular value spectrum, the variance explained as a fraction of the "
            "movie's total variance, the background component and a gallery of components, and "
            "saves per-component statistics.",
    params=InitAnalysisParams,
    inputs=("nndsvd_spatial", "nndsvd_temporal", "singular_values", "movie_cropped"),
    outputs=("init_stats",),
    run=None, previews=(),
)
