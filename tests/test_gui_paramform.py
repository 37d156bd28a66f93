"""The step parameter form: built from every step's model, round-trips, marks bad values."""

from __future__ import annotations

import math
import typing

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QLineEdit  # noqa: E402

from mps_core.paramtypes import bounds, is_advanced, is_odd_only  # noqa: E402
from mps_core.steps import STEPS  # noqa: E402
from mps_gui.paramform import ParamForm, field_kind  # noqa: E402

BY_ID = {s.id: s for s in STEPS}


def make_form(qtbot, step_id):
    form = ParamForm(BY_ID[step_id])
    qtbot.addWidget(form)
    return form


def collect(signal):
    seen = []
    signal.connect(lambda *a: seen.append(a))
    return seen


def retype(qtbot, edit: QLineEdit, text: str) -> None:
    """Replace the text the way a user does: select all, type."""
    edit.selectAll()
    if text:
        qtbot.keyClicks(edit, text)
    else:
        edit.del_()


# ------------------------------------------------------------------ non-default values

def _number_in(field, kind: str, default):
    """A valid number different from the default, with awkward float digits."""
    b = bounds(field)
    lo = b.get("ge", b.get("gt", -50.0))
    hi = b.get("le", b.get("lt", lo + 100.0))
    if kind == "int":
        lo_i = math.ceil(lo) + (1 if "gt" in b else 0)
        hi_i = math.floor(hi) - (1 if "lt" in b else 0)
        cands = [v for v in range(lo_i, min(hi_i, lo_i + 40) + 1)
                 if v != default and (not is_odd_only(field) or v % 2)]
        return cands[len(cands) // 2] if cands else default
    # 1/3 of the way, plus a value that repr must keep exact (0.1 + 0.2 style digits)
    return lo + (hi - lo) / 3.0 + 1e-9 / 3.0


def _other_value(field):
    kind = field_kind(field.annotation)
    d = field.default
    if kind.base == "bool":
        return not d
    if kind.base == "choice":
        return next(c for c in kind.choices if c != d)
    if kind.base in ("int", "float"):
        return _number_in(field, kind.base, d)
    if kind.base == "list":
        return [3, 1, 2] if kind.item is int else [0.1 + 0.2, 1e-7, 0.3]
    if kind.base == "str":
        return "x_1 é/€"
    raise AssertionError(kind)


def changed_model(step):
    """A model of `step` with as many fields as possible set to valid non-default values."""
    model = step.params()
    n_changed = 0
    for name, field in step.params.model_fields.items():
        candidate = model.model_dump() | {name: _other_value(field)}
        try:
            model = step.params.model_validate(candidate)
            n_changed += 1
        except ValueError:
            pass  # e.g. a list validator wants another shape; keep the default
    return model, n_changed


# ------------------------------------------------------------------ building and round trips

@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_every_step_builds_with_defaults_and_round_trips(qtbot, step):
    form = ParamForm(step)
    qtbot.addWidget(form)
    assert form.params() == step.params()
    assert form.error() is None
    model, n = changed_model(step)
    assert n >= len(step.params.model_fields) // 2
    seen = collect(form.changed)
    form.set_params(model)
    assert form.params() == model
    assert form.params().model_dump() == model.model_dump()  # same types, not just equal
    assert seen == []  # set_params is not a user edit
    assert form.values() == model.model_dump(mode="json")


def test_editor_kinds_and_labels(qtbot):
    form = make_form(qtbot, "1")
    assert isinstance(form.field_widget("animal_id"), QLineEdit)
    assert isinstance(form.field_widget("n_workers"), QLineEdit)
    assert form.browse_button("input_dir") is not None
    assert form.browse_button("animal_id") is None
    assert form.auto_checkbox("cell_diameter_px") is not None
    labels = [lab.text() for lab in form.findChildren(QLabel)]
    assert "Memory limit gb (GB)" in labels and "Animal id" in labels
    tip = form.field_widget("memory_limit_gb").toolTip()
    desc = " ".join(BY_ID["1"].params.model_fields["memory_limit_gb"].description.split())
    assert desc in " ".join(tip.split())
    assert "Default: 4.0" in tip and "Allowed: a number > 0.1 and <= 4096" in tip
    form2 = make_form(qtbot, "2b")
    assert isinstance(form2.field_widget("glow_removal"), QCheckBox)
    assert isinstance(form2.field_widget("denoise_method"), QComboBox)
    label = next(lab for lab in form2.findChildren(QLabel) if lab.text() == "Median ksize (px)")
    assert label.toolTip() == form2.field_widget("median_ksize").toolTip()


def test_float_precision_and_scientific_notation(qtbot):
    form = make_form(qtbot, "6e")
    m = BY_ID["6e"].params(min_spike_sum=0.1 + 0.2, min_calcium_var=1.234567890123e-12)
    form.set_params(m)
    assert form.params() == m
    retype(qtbot, form.field_widget("min_spatial_sum"), "2.5E-3")
    assert form.params().min_spatial_sum == 0.0025


def test_list_fields(qtbot):
    form = make_form(qtbot, "4a")
    retype(qtbot, form.field_widget("sigmas"), "0.5, 1.5,3")
    assert form.params().sigmas == [0.5, 1.5, 3.0]
    retype(qtbot, form.field_widget("sigmas"), "0.5, x")
    assert form.params() is None and "key 'sigmas'" in form.error()
    mesh = make_form(qtbot, "2c")
    mesh.set_value("mesh", [4, 6])
    assert mesh.params().mesh == [4, 6]
    mesh.set_value("mesh", [])
    assert mesh.params().mesh == []
    mesh.auto_checkbox("mesh").setChecked(True)
    assert mesh.params().mesh is None


# ------------------------------------------------------------------ bad values

@pytest.mark.parametrize("step_id, name, text, words", [
    ("2b", "gaussian_sigma", "abc", "'abc' is not a number"),  # does not parse
    ("2b", "gaussian_sigma", "25", "25.0 is not allowed"),      # outside bounds (le=20)
    ("2b", "median_ksize", "4", "must be odd"),                 # even value, odd-only field
])
def test_bad_value_is_marked_then_cleared(qtbot, step_id, name, text, words):
    form = make_form(qtbot, step_id)
    edit = form.field_widget(name)
    good = edit.text()
    validity = collect(form.validity_changed)
    changed = collect(form.changed)
    retype(qtbot, edit, text)
    assert form.params() is None
    err = form.error()
    assert f"step {step_id}" in err and f"key '{name}'" in err and words in err
    assert "expected" in err and "\n" not in err
    assert form.is_marked(name) and edit.property("invalid") is True
    assert " ".join(edit.toolTip().split()).startswith(" ".join(err.split()))
    assert validity[-1] == (False, err)
    # emitted when validity or the reason changes, never twice the same
    assert all(a != b for a, b in zip(validity, validity[1:]))
    assert len(changed) >= 1
    assert form.values()[name] != getattr(BY_ID[step_id].params(), name)
    retype(qtbot, edit, good)
    assert form.params() == BY_ID[step_id].params()
    assert form.error() is None and not form.is_marked(name)
    assert not edit.toolTip().startswith("step")
    assert validity[-1] == (True, "")


def test_parse_error_line_style(qtbot):
    form = make_form(qtbot, "2b")
    form.set_value("gaussian_sigma", "abc")
    assert form.error() == ("step 2b, key 'gaussian_sigma': 'abc' is not a number; "
                            "expected a number > 0 and <= 20")
    assert form.values()["gaussian_sigma"] == "abc"


def test_cross_field_rule_marks_both_fields(qtbot):
    form = make_form(qtbot, "5b")
    form.set_value("min_size", 10)
    form.set_value("max_size", 5)
    assert form.params() is None and "min_size" in form.error()
    assert form.is_marked("min_size") and form.is_marked("max_size")
    form.set_value("max_size", 50)
    assert form.params().max_size == 50 and not form.is_marked("min_size")


def test_error_in_advanced_field_opens_advanced_group(qtbot):
    form = make_form(qtbot, "6d")
    assert not form.advanced_expanded()
    form.set_value("overlap_frames", 4000)  # chunk_frames is 5000: overlap must be < half
    assert form.params() is None and form.is_marked("overlap_frames")
    assert form.advanced_expanded()


# ------------------------------------------------------------------ special editors

def test_auto_checkbox_gives_none(qtbot):
    form = make_form(qtbot, "3a")
    m = BY_ID["3a"].params(ring_radius=12.5)
    form.set_params(m)
    box, edit = form.auto_checkbox("ring_radius"), form.field_widget("ring_radius")
    assert not box.isChecked() and edit.isEnabled() and edit.text() == "12.5"
    changed = collect(form.changed)
    box.click()
    assert form.params().ring_radius is None and form.values()["ring_radius"] is None
    assert not edit.isEnabled() and changed
    box.click()  # the typed value comes back
    assert form.params().ring_radius == 12.5
    retype(qtbot, edit, "")
    assert form.params() is None and "tick 'auto'" in form.error()


def test_literal_combo_gives_typed_value(qtbot):
    form = make_form(qtbot, "6d")
    combo = form.field_widget("ar_order")
    assert [combo.itemText(i) for i in range(combo.count())] == ["1", "2"]
    combo.setCurrentIndex(1)
    assert form.params().ar_order == 2 and type(form.values()["ar_order"]) is int
    solver = form.field_widget("solver")
    solver.setCurrentIndex(solver.findText("fast"))
    assert form.params().solver == "fast"


def test_browse_button_uses_dialog(qtbot, tmp_path, monkeypatch):
    form = make_form(qtbot, "1")
    asked = []
    monkeypatch.setattr(form, "_ask_directory",
                        lambda caption, start: asked.append(caption) or str(tmp_path))
    changed = collect(form.changed)
    form.browse_button("output_dir").click()
    assert asked == ["Output dir"]
    assert form.params().output_dir == str(tmp_path) and changed
    monkeypatch.setattr(form, "_ask_directory", lambda caption, start: "")  # cancelled
    form.browse_button("output_dir").click()
    assert form.params().output_dir == str(tmp_path)


# ------------------------------------------------------------------ form-wide actions

def test_reset_to_defaults_restores(qtbot):
    form = make_form(qtbot, "2a")
    model, _ = changed_model(BY_ID["2a"])
    form.set_params(model)
    form.set_value("trim_start", "oops")
    changed = collect(form.changed)
    form.reset_to_defaults()
    assert form.params() == BY_ID["2a"].params() and form.error() is None
    assert changed and not form.is_marked("trim_start")


def test_set_value_emits_changed_and_rejects_unknown(qtbot):
    form = make_form(qtbot, "3a")
    changed = collect(form.changed)
    form.set_value("offset_x", 7)
    assert form.params().offset_x == 7 and len(changed) == 1
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        form.set_value("nope", 1)
    with pytest.raises(ValueError, match="'shape'"):
        form.set_value("shape", "triangle")


def test_set_editable_locks_every_editor(qtbot):
    form = make_form(qtbot, "1")
    form.set_editable(False)
    for name in BY_ID["1"].params.model_fields:
        assert not form.field_widget(name).isEnabled(), name
    assert not form.auto_checkbox("cell_diameter_px").isEnabled()
    assert not form.browse_button("input_dir").isEnabled()
    form.set_editable(True)
    assert form.field_widget("animal_id").isEnabled()
    assert form.auto_checkbox("cell_diameter_px").isEnabled()
    assert not form.field_widget("cell_diameter_px").isEnabled()  # auto is ticked: stays off


def test_advanced_group_hidden_by_default(qtbot):
    form = make_form(qtbot, "2b")
    form.show()
    fields = BY_ID["2b"].params.model_fields
    n_adv = sum(is_advanced(f) for f in fields.values())
    assert not form.advanced_expanded()
    assert form.findChild(type(form._adv_button)).text() == f"Advanced ({n_adv})"
    for name, f in fields.items():
        assert form.field_widget(name).isVisible() != is_advanced(f), name
    form.set_advanced_expanded(True)
    assert form.field_widget("bilateral_d").isVisible()


def test_render_to_png(qtbot, tmp_path):
    form = make_form(qtbot, "1")
    form.resize(520, 480)
    form.set_advanced_expanded(True)
    form.set_value("memory_limit_gb", "abc")
    form.show()
    out = tmp_path / "form.png"
    assert form.grab().save(str(out))
    assert out.stat().st_size > 2000


def test_field_kinds_cover_every_annotation():
    for step in STEPS:
        for name, f in step.params.model_fields.items():
            kind = field_kind(f.annotation)
            assert kind.base != "json", (step.id, name, f.annotation)
            assert kind.optional == (type(None) in typing.get_args(f.annotation))
