"""The parameter form of a step page, generated from the step's pydantic parameter model.

Every field of ``step.params`` becomes one row: a label in words (with the unit), an editor
chosen from the field's annotation and a tooltip with the description, the default and the
allowed values. Basic parameters come first; advanced ones sit in a collapsed "Advanced (N)"
section. Every edit is parsed and validated with the same code the parameter file uses
(:func:`mps_core.params.validate_section`), so the form can never accept a value that the
command line would reject; a bad field is outlined in red and its tooltip says what is wrong.

Number boxes are plain line edits on purpose: a user may type anything, and a wrong value is
shown as wrong instead of being silently refused by a validator.
"""

from __future__ import annotations

import copy
import math
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QPushButton, QSizePolicy, QToolButton,
                               QVBoxLayout, QWidget)
from pydantic.fields import FieldInfo

from mps_core.params import ParamError, validate_section
from mps_core.paramtypes import StepParams, allowed, is_advanced, show_value, unit_of
from mps_core.registry import Step

__all__ = ["ParamForm", "FieldKind", "field_kind", "format_value", "parse_text", "ParseProblem"]

# A red outline for fields that are wrong; selected by a dynamic property so that valid
# widgets keep the platform look.
_STYLE = """
QLineEdit[invalid="true"] { border: 2px solid #c62828; border-radius: 3px; padding: 1px 2px;
                            background: #fff4f4; }
QComboBox[invalid="true"] { border: 2px solid #c62828; border-radius: 3px; }
QCheckBox[invalid="true"] { color: #c62828; }
QLabel[invalid="true"] { color: #c62828; }
"""

_KEY_RE = re.compile(r"key '([A-Za-z_][A-Za-z0-9_]*)'")


# ------------------------------------------------------------------------ pure field logic

@dataclass(frozen=True)
class FieldKind:
    """What editor a field needs.

    base: 'bool', 'int', 'float', 'str', 'choice', 'list' or 'json' (anything else, typed as
    JSON text). optional: the annotation admits None (shown as an "auto" checkbox).
    item: int or float for 'list'. choices: the Literal values for 'choice'.
    """

    base: str
    optional: bool = False
    item: type | None = None
    choices: tuple[Any, ...] = ()


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(annotation)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and len(inner) < len(args):
            return inner[0], True
    return annotation, False


def field_kind(annotation: Any) -> FieldKind:
    """The editor kind of a field annotation (bool, int, float, str, Literal, list, Optional)."""
    inner, optional = _strip_optional(annotation)
    if inner is bool:
        return FieldKind("bool", optional)
    if inner is int:
        return FieldKind("int", optional)
    if inner is float:
        return FieldKind("float", optional)
    if inner is str:
        return FieldKind("str", optional)
    if typing.get_origin(inner) is Literal:
        return FieldKind("choice", optional, choices=tuple(typing.get_args(inner)))
    if typing.get_origin(inner) in (list, tuple):
        args = [a for a in typing.get_args(inner) if a is not Ellipsis]
        if typing.get_origin(inner) is list and len(args) == 1 and args[0] in (int, float):
            return FieldKind("list", optional, item=args[0])
    return FieldKind("json", optional)


class ParseProblem(ValueError):
    """The text of a box is not a value of the field's type; the message says what it is not."""


def _format_number(v: Any) -> str:
    # repr is the shortest text that reads back to the same float: no precision is lost
    if isinstance(v, float):
        return repr(v)
    return str(v)


def format_value(kind: FieldKind, value: Any) -> str:
    """The text shown in a line edit for a (non-None) value."""
    if kind.base in ("int", "float"):
        return _format_number(value)
    if kind.base == "list":
        return ", ".join(_format_number(v) for v in value)
    if kind.base == "str":
        return str(value)
    return show_value(value)


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ParseProblem("is not a whole number") from None


def _parse_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        hint = ""
        if "," in text:
            try:
                float(text.replace(",", "."))
                hint = " (use a point for decimals)"
            except ValueError:
                pass
        raise ParseProblem(f"is not a number{hint}") from None
    if not math.isfinite(v):
        raise ParseProblem("is not a finite number")
    return v


def parse_text(kind: FieldKind, text: str) -> Any:
    """Parse the text of a line edit into a value of the field's type (raise ParseProblem)."""
    if kind.base == "str":
        return text
    s = text.strip()
    if kind.base == "int":
        if not s:
            raise ParseProblem("is empty")
        return _parse_int(s)
    if kind.base == "float":
        if not s:
            raise ParseProblem("is empty")
        return _parse_float(s)
    if kind.base == "list":
        s = s.removeprefix("[").removesuffix("]").strip()
        if not s:
            return []
        parse = _parse_int if kind.item is int else _parse_float
        try:
            return [parse(part.strip()) for part in s.split(",")]
        except ParseProblem:
            words = "whole numbers" if kind.item is int else "numbers"
            raise ParseProblem(f"is not a list of {words} separated by commas") from None
    import json  # 'json' kind: any JSON value

    try:
        return json.loads(s)
    except json.JSONDecodeError:
        raise ParseProblem("is not a valid value") from None


def label_text(name: str, field: FieldInfo) -> str:
    """'cell_diameter_px' with unit 'px' -> 'Cell diameter px (px)'."""
    words = name.replace("_", " ")
    words = words[:1].upper() + words[1:]
    unit = unit_of(field)
    return f"{words} ({unit})" if unit else words


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=72, break_long_words=False, break_on_hyphens=False)


def tooltip_text(field: FieldInfo) -> str:
    """Description, default and allowed values, as plain text."""
    default = "auto" if field.default is None else show_value(field.default)
    parts = [_wrap(field.description or ""), f"Default: {default}",
             _wrap(f"Allowed: {allowed(field)}")]
    return "\n".join(p for p in parts if p)


# ------------------------------------------------------------------------ one row

class _Row:
    """The widgets of one field and how to read and write its value."""

    def __init__(self, form: "ParamForm", name: str, field: FieldInfo):
        self.form = form
        self.name = name
        self.field = field
        self.kind = field_kind(field.annotation)
        self._editable = True
        self.base_tip = tooltip_text(field)
        self.label = QLabel(label_text(name, field))
        self.auto: QCheckBox | None = None
        self.browse: QPushButton | None = None
        self.editor = self._make_editor()
        self.container = self._make_container()
        self.label.setBuddy(self.editor)
        self.mark(None)

    # -- building -------------------------------------------------------------------------
    def _make_editor(self) -> QWidget:
        k = self.kind
        if k.base == "bool":
            w = QCheckBox()
            w.toggled.connect(self.form._on_edit)
            return w
        if k.base == "choice":
            w = QComboBox()
            for v in k.choices:
                w.addItem(str(v))  # shown as text; the typed value is k.choices[index]
            w.currentIndexChanged.connect(self.form._on_edit)
            return w
        w = QLineEdit()
        w.setObjectName(f"edit_{self.name}")
        if k.base == "list":
            w.setPlaceholderText("comma-separated, e.g. 1, 2, 3")
        w.textChanged.connect(self.form._on_edit)
        return w

    def _make_container(self) -> QWidget:
        box = QWidget()
        lay = QHBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.editor, 1)
        if self.kind.base == "str" and self._dialog_kind():
            self.browse = QPushButton("Browse...")
            self.browse.setToolTip("Choose with a file dialog")
            self.browse.clicked.connect(self._on_browse)
            lay.addWidget(self.browse)
        if self.kind.optional:
            self.auto = QCheckBox("auto")
            self.auto.setToolTip("Ticked: MPS chooses this value from the data (null in the "
                                 "parameter file)")
            self.auto.toggled.connect(self._on_auto)
            lay.addWidget(self.auto)
        return box

    def _dialog_kind(self) -> str | None:
        if self.name.endswith("_dir"):
            return "dir"
        if self.name.endswith(("_path", "_file")):
            return "file"
        return None

    # -- values -----------------------------------------------------------------------------
    def write(self, value: Any) -> None:
        """Show a value (None ticks "auto" for optional fields; text goes in raw)."""
        if self.auto is not None:
            self.auto.setChecked(value is None)
            self._sync_enabled()
            if value is None:
                return
        elif value is None and self.kind.base != "json":
            raise ValueError(f"parameter '{self.name}' cannot be empty (auto); expected "
                             f"{allowed(self.field)}")
        k = self.kind
        if k.base == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"parameter '{self.name}': {value!r} is not true or false")
            self.editor.setChecked(value)
        elif k.base == "choice":
            idx = next((i for i, c in enumerate(k.choices)
                        if c == value and type(c) is type(value)), None)
            if idx is None:
                raise ValueError(f"parameter '{self.name}': {value!r} is not one of "
                                 + ", ".join(repr(c) for c in k.choices))
            self.editor.setCurrentIndex(idx)
        elif isinstance(value, str) and k.base != "str":
            self.editor.setText(value)  # raw text, e.g. a bad value typed programmatically
        else:
            self.editor.setText(format_value(k, value))

    def raw(self) -> Any:
        """What the widget holds, unparsed (text for line edits)."""
        if self.auto is not None and self.auto.isChecked():
            return None
        if self.kind.base == "bool":
            return self.editor.isChecked()
        if self.kind.base == "choice":
            return self.kind.choices[self.editor.currentIndex()]
        return self.editor.text()

    def read(self) -> Any:
        """The typed value (raise ParseProblem if the text is not of the field's type)."""
        v = self.raw()
        if v is None or self.kind.base in ("bool", "choice"):
            return v
        return parse_text(self.kind, v)

    # -- looks --------------------------------------------------------------------------------
    def mark(self, problem: str | None) -> None:
        """Outline the editor in red with the problem first in its tooltip; None clears."""
        tip = self.base_tip if problem is None else _wrap(problem) + "\n\n" + self.base_tip
        for w in (self.label, self.editor):
            w.setToolTip(tip)
            if bool(w.property("invalid")) != (problem is not None):
                w.setProperty("invalid", problem is not None)
                w.style().unpolish(w)  # re-evaluate the [invalid="true"] selector
                w.style().polish(w)
                w.update()

    def is_marked(self) -> bool:
        return bool(self.editor.property("invalid"))

    def set_editable(self, on: bool) -> None:
        self._editable = on
        self._sync_enabled()

    def _sync_enabled(self) -> None:
        on = self._editable
        auto = self.auto is not None and self.auto.isChecked()
        self.editor.setEnabled(on and not auto)
        if self.auto is not None:
            self.auto.setEnabled(on)
        if self.browse is not None:
            self.browse.setEnabled(on and not auto)

    # -- slots --------------------------------------------------------------------------------
    def _on_auto(self, _checked: bool) -> None:
        self._sync_enabled()
        self.form._on_edit()

    def _on_browse(self) -> None:
        start = self.editor.text()
        if self._dialog_kind() == "dir":
            chosen = self.form._ask_directory(self.label.text(), start)
        else:
            chosen = self.form._ask_file(self.label.text(), start)
        if chosen:
            self.editor.setText(chosen)


# ------------------------------------------------------------------------ the form

class ParamForm(QWidget):
    """Editable parameters of one step, validated on every edit.

    Signals: ``changed()`` after every user or :meth:`set_value` edit (not after
    :meth:`set_params`); ``validity_changed(ok, reason)`` when validity or the reason changes.
    """

    changed = Signal()
    validity_changed = Signal(bool, str)

    def __init__(self, step: Step, parent: QWidget | None = None):
        super().__init__(parent)
        self.step = step
        self._quiet = 0           # >0 while widgets are filled programmatically
        self._editable = True
        self._rows: dict[str, _Row] = {}
        self._values: dict[str, Any] = {}
        self._model: StepParams | None = None
        self._error: str | None = None
        self._validity: tuple[bool, str] = (True, "")
        self.setStyleSheet(_STYLE)
        self._build()
        self.set_params(step.params())

    # -- building -----------------------------------------------------------------------------
    def _build(self) -> None:
        fields = self.step.params.model_fields
        basic = [n for n, f in fields.items() if not is_advanced(f)]
        adv = [n for n, f in fields.items() if is_advanced(f)]
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self._quiet += 1  # building fires toggled/textChanged signals
        try:
            if not fields:
                outer.addWidget(QLabel("This step has no parameters."))
            outer.addLayout(self._form_of(basic))
            self._adv_button: QToolButton | None = None
            self._adv_body: QWidget | None = None
            if adv:
                self._build_advanced(outer, adv)
        finally:
            self._quiet -= 1
        bottom = QHBoxLayout()
        bottom.addStretch(1)
        self._reset = QPushButton("Reset to defaults")
        self._reset.setToolTip("Put every parameter of this step back to its default value")
        self._reset.clicked.connect(self.reset_to_defaults)
        self._reset.setEnabled(bool(fields))
        bottom.addWidget(self._reset)
        outer.addLayout(bottom)
        outer.addStretch(1)

    def _form_of(self, names: list[str]) -> QFormLayout:
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for name in names:
            row = _Row(self, name, self.step.params.model_fields[name])
            self._rows[name] = row
            form.addRow(row.label, row.container)
        return form

    def _build_advanced(self, outer: QVBoxLayout, names: list[str]) -> None:
        btn = QToolButton()
        btn.setText(f"Advanced ({len(names)})")
        btn.setCheckable(True)
        btn.setChecked(False)
        btn.setArrowType(Qt.ArrowType.RightArrow)
        btn.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        btn.setAutoRaise(True)
        btn.setToolTip("Show or hide the parameters most users never need to change")
        body = QWidget()
        body.setLayout(self._form_of(names))
        body.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        body.setVisible(False)
        btn.toggled.connect(self._on_advanced_toggled)
        self._adv_button, self._adv_body = btn, body
        outer.addWidget(btn)
        outer.addWidget(body)

    def _on_advanced_toggled(self, on: bool) -> None:
        self._adv_body.setVisible(on)
        self._adv_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    # -- public API -----------------------------------------------------------------------------
    def set_params(self, params: StepParams) -> None:
        """Fill every widget from a model; emits no `changed` (it is not a user edit)."""
        if not isinstance(params, self.step.params):
            raise ValueError(f"step {self.step.id}: set_params needs a "
                             f"{self.step.params.__name__}, got {type(params).__name__}")
        self._quiet += 1
        try:
            for name, row in self._rows.items():
                row.write(getattr(params, name))
        finally:
            self._quiet -= 1
        self._revalidate()

    def values(self) -> dict:
        """The raw values in the widgets: typed where they parse, the text where they do not."""
        return copy.deepcopy(self._values)

    def params(self) -> StepParams | None:
        """The validated model, or None while some field is invalid."""
        return None if self._model is None else self._model.model_copy(deep=True)

    def error(self) -> str | None:
        """The one-line reason the form is invalid, or None."""
        return self._error

    def reset_to_defaults(self) -> None:
        """Every field back to its default (a user edit: emits `changed`)."""
        self.set_params(self.step.params())
        self.changed.emit()

    def set_editable(self, on: bool) -> None:
        """Lock (False) or unlock the editors, e.g. while the step runs."""
        self._editable = bool(on)
        for row in self._rows.values():
            row.set_editable(self._editable)
        self._reset.setEnabled(self._editable and bool(self._rows))

    def is_editable(self) -> bool:
        return self._editable

    def field_widget(self, name: str) -> QWidget:
        """The editor of one field (QCheckBox, QComboBox or QLineEdit)."""
        return self._row(name).editor

    def auto_checkbox(self, name: str) -> QCheckBox | None:
        """The "auto" (None) checkbox of an optional field, else None."""
        return self._row(name).auto

    def browse_button(self, name: str) -> QPushButton | None:
        """The "Browse..." button of a *_dir / *_path / *_file field, else None."""
        return self._row(name).browse

    def set_value(self, name: str, value: Any) -> None:
        """Programmatic edit of one field (emits `changed`); None means "auto"."""
        row = self._row(name)
        self._quiet += 1
        try:
            row.write(value)
        finally:
            self._quiet -= 1
        self._revalidate()
        self.changed.emit()

    def is_marked(self, name: str) -> bool:
        """Whether a field is currently outlined as invalid."""
        return self._row(name).is_marked()

    def advanced_expanded(self) -> bool:
        return self._adv_button is not None and self._adv_button.isChecked()

    def set_advanced_expanded(self, on: bool) -> None:
        if self._adv_button is not None:
            self._adv_button.setChecked(on)

    # -- file dialogs (small methods so tests can replace them) -------------------------------
    def _ask_directory(self, caption: str, start: str) -> str:
        return QFileDialog.getExistingDirectory(self, caption, start)

    def _ask_file(self, caption: str, start: str) -> str:
        path, _filter = QFileDialog.getOpenFileName(self, caption, start)
        return path

    # -- validation -----------------------------------------------------------------------------
    def _row(self, name: str) -> _Row:
        try:
            return self._rows[name]
        except KeyError:
            raise ValueError(f"step {self.step.id} has no parameter '{name}'; parameters are "
                             + ", ".join(self._rows)) from None

    def _on_edit(self, *_args: Any) -> None:
        if self._quiet:
            return
        self._revalidate()
        self.changed.emit()

    def _parse_line(self, row: _Row, problem: ParseProblem) -> str:
        text = row.raw()
        hint = " (or tick 'auto')" if row.auto is not None else ""
        return (f"step {self.step.id}, key '{row.name}': '{text}' {problem}; expected "
                f"{allowed(row.field)}{hint}")

    def _revalidate(self) -> None:
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name, row in self._rows.items():
            try:
                values[name] = row.read()
            except ParseProblem as p:
                values[name] = row.raw()
                problems[name] = self._parse_line(row, p)
        model, error = None, None
        if problems:
            error = next(iter(problems.values()))
        else:
            try:
                model = validate_section(self.step, values, source="")
            except ParamError as e:
                error = str(e)
                problems = {n: error for n in self._fields_named_in(error)}
        for name, row in self._rows.items():
            row.mark(problems.get(name))
        if any(is_advanced(self._rows[n].field) for n in problems):
            self.set_advanced_expanded(True)  # never hide the field that is wrong
        self._values, self._model, self._error = values, model, error
        self._emit_validity()

    def _fields_named_in(self, message: str) -> list[str]:
        """The field a ParamError names; for cross-field rules every field it mentions."""
        m = _KEY_RE.search(message)
        if m and m.group(1) in self._rows:
            return [m.group(1)]
        return [n for n in self._rows if re.search(rf"\b{re.escape(n)}\b", message)]

    def _emit_validity(self) -> None:
        state = (self._model is not None, self._error or "")
        if state != self._validity:
            self._validity = state
            self.validity_changed.emit(*state)
