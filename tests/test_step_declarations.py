"""Tests of the declarations of steps 3a-8c: ids, titles, parameter models, store names."""

import json

import pytest
from pydantic import ValidationError

from mps_core.paramtypes import StepParams, bounds, unit_of
from mps_core.registry import Step
from mps_core.steps.cnmf_prep import STEP_5A, STEP_5B
from mps_core.steps.final import STEP_8A, STEP_8B, STEP_8C
from mps_core.steps.initialisation import STEP_3A, STEP_3B, STEP_3C
from mps_core.steps.seeding import (STEP_4A, STEP_4B, STEP_4C, STEP_4D, STEP_4E, STEP_4F,
                                    STEP_4G, STEP_4H)
from mps_core.steps.spatial import STEP_7A, STEP_7B, STEP_7C, STEP_7D, STEP_7E, STEP_7F
from mps_core.steps.temporal import STEP_6A, STEP_6B, STEP_6C, STEP_6D, STEP_6E

STEPS = (STEP_3A, STEP_3B, STEP_3C, STEP_4A, STEP_4B, STEP_4C, STEP_4D, STEP_4E, STEP_4F,
         STEP_4G, STEP_4H, STEP_5A, STEP_5B, STEP_6A, STEP_6B, STEP_6C, STEP_6D, STEP_6E,
         STEP_7A, STEP_7B, STEP_7C, STEP_7D, STEP_7E, STEP_7F, STEP_8A, STEP_8B, STEP_8C)

TITLES = {
    "3a": "Crop and static background", "3b": "NNDSVD initialisation",
    "3c": "Initialisation analysis",
    "4a": "Watershed parameter search", "4b": "Watershed segmentation", "4c": "Spatial merge",
    "4d": "Temporal extraction", "4e": "A/C initialisation", "4f": "Drop invalid components",
    "4g": "Temporal merge", "4h": "Artifact quarantine",
    "5a": "Noise estimation", "5b": "Validation and setup",
    "6a": "YrA", "6b": "YrA validation", "6c": "Temporal parameter suggestions",
    "6d": "Temporal update", "6e": "Filter and validate",
    "7a": "Dilation", "7b": "Clustering", "7c": "Bounds", "7d": "Spatial parameter suggestions",
    "7e": "Spatial update", "7f": "Merge and validate",
    "8a": "Final YrA", "8b": "Final temporal update", "8c": "Final filter and export",
}
STAGES = {"3": "Crop and initialisation", "4": "Component detection", "5": "CNMF preparation",
          "6": "Temporal update", "7": "Spatial update", "8": "Final pass and export"}
# what steps 1 and 2a-2f put in the store
UPSTREAM = {"config", "movie_raw", "frame_index", "removed_frames_2a", "file_health",
            "movie_filtered", "shifts", "motion_qc", "removed_frames_2d", "movie", "validation"}
PIXEL_UNITS = {"px", "px²"}

ids = pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])


def _fields(step: Step):
    return step.params.model_fields.items()


def test_ids_titles_and_stages():
    assert [s.id for s in STEPS] == list(TITLES)
    for s in STEPS:
        assert s.title == TITLES[s.id]
        assert s.stage == STAGES[s.id[0]]
        assert isinstance(s, Step) and issubclass(s.params, StepParams)
        # one to three sentences for the user
        assert s.summary and 1 <= s.summary.count(". ") + 1 <= 3 and s.summary.endswith(".")
        # an implemented step shows the user at least one preview
        assert s.implemented == (s.run is not None) and (not s.implemented or s.previews)


@ids
def test_defaults_validate_strictly_and_round_trip(step):
    model = step.params
    default = model()
    # pydantic does not validate defaults by itself: feed them back explicitly
    raw = {name: f.default for name, f in _fields(step)}
    assert model.model_validate(raw, strict=True) == default
    dumped = default.model_dump(mode="json")
    again = model.model_validate(json.loads(json.dumps(dumped)), strict=True)
    assert again == default
    assert again.model_dump(mode="json") == dumped


@ids
def test_unknown_keys_rejected(step):
    with pytest.raises(ValidationError, match="extra"):
        step.params.model_validate({"no_such_parameter": 1})


@ids
def test_every_field_described(step):
    assert step.params.model_fields, f"step {step.id} has no parameters"
    for name, f in _fields(step):
        assert f.description and f.description.strip().endswith("."), (step.id, name)
        # a null pixel size must say how it is derived
        if f.default is None and unit_of(f) in PIXEL_UNITS:
            assert "null:" in f.description, (step.id, name)


@ids
def test_bounded_fields_are_numbers(step):
    # bounds on a list or text would be ignored or fail at run time: only numbers carry them
    for name, f in _fields(step):
        if bounds(f):
            assert f.default is None or type(f.default) in (int, float), (step.id, name)


def test_outputs_unique_and_inputs_chain():
    produced = set(UPSTREAM)
    for s in STEPS:
        for name in s.inputs + s.optional_inputs:
            assert name in produced, f"step {s.id} reads '{name}' before any step writes it"
        assert not set(s.inputs) & set(s.optional_inputs), s.id
        for name in s.outputs:
            assert name not in produced, f"'{name}' is produced twice (again by {s.id})"
            produced.add(name)


def test_declared_store_names():
    assert STEP_3A.outputs == ("crop", "cell_size", "mean_frame", "max_projection",
                              "static_background", "movie_cropped")
    assert STEP_4B.optional_inputs == ("watershed_suggestion",)
    assert STEP_4H.outputs == ("A_seed", "C_seed", "A_seed_smoothed", "quarantine",
                               "component_scores")
    assert STEP_6D.optional_inputs == ("temporal_suggestions",)
    assert STEP_7E.optional_inputs == ("spatial_suggestions",)
    assert STEP_7F.outputs == ("A_refined", "A_refined_smoothed", "C_refined")
    assert STEP_8C.outputs == ("final_units", "export_manifest")


def test_key_defaults_from_the_specification():
    crop = STEP_3A.params()
    assert (crop.size_fraction, crop.background, crop.use_full_frame) == (0.75, "none", False)
    nn = STEP_3B.params()
    assert (nn.n_components, nn.power_iterations, nn.sparsity_threshold,
            nn.spatial_regularisation) == (100, 5, 0.05, True)
    search = STEP_4A.params()
    assert search.min_distance_diameters == [0.5, 0.75, 1.0]
    assert (search.thresholds, search.sigmas, search.sample_size) == ([0.1, 0.2], [1.0, 2.0], 20)
    assert STEP_4C.params().size_ratio == 5.0 and STEP_4C.params().distance is None
    assert STEP_4E.params().normalisation == "max"
    merge = STEP_4G.params()
    assert (merge.correlation_threshold, merge.overlap_threshold) == (0.75, 0.3)
    noise = STEP_5A.params()
    assert (noise.noise_band, noise.smoothing_sigma, noise.scaling_factor) == ([0.25, 0.5], 1.0,
                                                                               1.5)
    td = STEP_6D.params()
    assert (td.ar_order, td.max_iterations, td.solver, td.chunk_frames, td.overlap_frames) == \
        (1, 500, "auto", 5000, 100)
    assert STEP_6E.params().min_spatial_sum == 1e-6
    assert (STEP_7A.params().threshold, STEP_7B.params().max_cluster_size) == (0.1, 10)
    assert STEP_7C.params().intensity_threshold == 0.05
    # 8a/8b share their names with 6a/6d; 8a adds the model footprints, 8b the background
    assert set(STEP_8A.params.model_fields) == set(STEP_6A.params.model_fields) | \
        {"model_footprints"}
    assert set(STEP_8B.params.model_fields) == \
        set(STEP_6D.params.model_fields) - {"use_suggestions"} | {"include_background"}


@pytest.mark.parametrize("step, values", [
    (STEP_3A, {"size_fraction": 1.5}),
    (STEP_3A, {"shape": "hexagon"}),
    (STEP_3A, {"size_fraction": "0.5"}),           # strict: text is not a number
    (STEP_3B, {"spatial_regularisation": 1}),      # strict: 1 is not true
    (STEP_4A, {"min_distance_diameters": []}),
    (STEP_4A, {"thresholds": [0.1, 1.5]}),
    (STEP_4A, {"sigmas": [1.0, 1.0]}),
    (STEP_4B, {"min_distance": 0.0}),
    (STEP_4H, {"min_size": 500, "max_size": 100}),
    (STEP_5A, {"noise_band": [0.5, 0.25]}),
    (STEP_5A, {"noise_band": [0.1, 0.2, 0.3]}),
    (STEP_5A, {"background_threshold": "custom"}),
    (STEP_5B, {"min_size": 100, "max_size": 10}),
    (STEP_6D, {"ar_order": 3}),
    (STEP_6D, {"solver": "ecos"}),
    (STEP_6D, {"chunk_frames": 150, "overlap_frames": 100}),
    (STEP_7E, {"min_penalty": 5.0, "max_penalty": 1.0}),
    (STEP_8C, {"table_format": "xlsx"}),
])
def test_bad_values_rejected(step, values):
    with pytest.raises(ValidationError):
        step.params.model_validate(values)


def test_good_non_default_values_accepted():
    # integers are accepted for numbers: some tools write 1.0 as 1 in JSON
    assert STEP_4A.params.model_validate({"sigmas": [1, 2]}).sigmas == [1.0, 2.0]
    assert STEP_5A.params.model_validate(
        {"background_threshold": "custom", "custom_threshold": 12.5}).custom_threshold == 12.5
    assert STEP_6D.params.model_validate({"chunk_frames": 0, "overlap_frames": 100}).chunk_frames \
        == 0
    assert STEP_4B.params.model_validate({"min_distance": 6, "min_region_size": 8}).min_distance \
        == 6.0
    assert STEP_8B.params.model_validate({"ar_order": 2, "include_background": True}).ar_order \
        == 2
