"""The parameter file: one versioned JSON document holding every parameter of every step.

    {"format": "mps-params", "version": 1,
     "steps": {"1": {...}, "2a": {...}, ..., "8c": {...}}}

A file may leave out steps or keys (they take their defaults). Loading validates everything
before anything runs: any problem raises :class:`ParamError` with one line naming the file,
the step, the key, the value given and what is allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from .paramtypes import StepParams, allowed, show_value
from .registry import Step

FORMAT = "mps-params"
VERSION = 1


class ParamError(ValueError):
    """A parameter file or override is invalid; the message is one line for the user."""


class ParamSet:
    """Validated parameters for every registered step, keyed by step id."""

    def __init__(self, steps: Iterable[Step], values: dict[str, StepParams] | None = None):
        self.steps = {s.id: s for s in steps}
        self.values: dict[str, StepParams] = {sid: s.params() for sid, s in self.steps.items()}
        if values:
            self.values.update(values)

    # -- access -------------------------------------------------------------------------
    def __getitem__(self, step_id: str) -> StepParams:
        return self.values[step_id]

    def copy(self) -> "ParamSet":
        return ParamSet(self.steps.values(),
                        {k: v.model_copy(deep=True) for k, v in self.values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION,
                "steps": {sid: self.values[sid].model_dump(mode="json") for sid in self.steps}}

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: Path) -> None:
        """Write atomically: a crash never leaves a half-written parameter file."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.dumps())
        tmp.replace(path)

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path, steps: Iterable[Step]) -> "ParamSet":
        path = Path(path)
        return cls.from_dict(_read_json(path), steps, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, steps: Iterable[Step], source: str = "parameters") -> "ParamSet":
        steps = list(steps)
        by_id = {s.id: s for s in steps}
        values: dict[str, StepParams] = {}
        for sid, section in _checked_sections(data, source).items():
            if sid not in by_id:
                raise ParamError(f"{source}: unknown step '{sid}'; steps are " + ", ".join(by_id))
            if not isinstance(section, dict):
                raise ParamError(f"{source}: step {sid}: the section must be an object of "
                                 f"key: value pairs, got {show_value(section)}")
            values[sid] = validate_section(by_id[sid], section, source)
        return cls(steps, values)

    @classmethod
    def load_lenient(cls, path: Path, steps: Iterable[Step],
                     base: "ParamSet | None" = None) -> tuple["ParamSet", list[str]]:
        """Apply every valid value of a file over `base`; return the problems, one line each.

        The desktop app uses this so that one bad entry does not throw away a whole file and
        no bad entry is skipped silently. A file that is not a parameter file at all (not
        JSON, wrong format or version) still raises ParamError and changes nothing.
        """
        path = Path(path)
        steps = list(steps)
        by_id = {s.id: s for s in steps}
        source = str(path)
        sections = _checked_sections(_read_json(path), source)
        out = (base or cls(steps)).copy()
        problems: list[str] = []
        for sid, section in sections.items():
            if sid not in by_id:
                problems.append(f"{source}: unknown step '{sid}' ignored; steps are "
                                + ", ".join(by_id))
            elif not isinstance(section, dict):
                problems.append(f"{source}: step {sid}: the section must be an object of "
                                f"key: value pairs, got {show_value(section)}")
            else:
                # the file's section replaces the step's values (unset keys take defaults);
                # each bad key keeps its default and is reported
                out.values[sid] = by_id[sid].params()
                for key, value in section.items():
                    try:
                        out = out.with_values(sid, {key: value}, source=source)
                    except ParamError as e:
                        problems.append(str(e))
        return out, problems

    # -- changes ------------------------------------------------------------------------
    def with_values(self, step_id: str, updates: dict[str, Any],
                    source: str = "parameters") -> "ParamSet":
        """A copy with some keys of one step changed (validated)."""
        if step_id not in self.steps:
            raise ParamError(f"{source}: unknown step '{step_id}'; steps are "
                             + ", ".join(self.steps))
        merged = self.values[step_id].model_dump(mode="json") | dict(updates)
        out = self.copy()
        out.values[step_id] = validate_section(self.steps[step_id], merged, source)
        return out

    def with_overrides(self, overrides: Iterable[str]) -> "ParamSet":
        """Apply command-line overrides ``ID.key=value`` (value in JSON, or bare text)."""
        out = self
        for item in overrides:
            target, sep, raw = item.partition("=")
            sid, dot, key = target.partition(".")
            if not sep or not dot or not key:
                raise ParamError(f"--set {item}: expected STEP.key=value, e.g. 2b.denoise_method=median")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            out = out.with_values(sid, {key: value}, source=f"--set {item}")
        return out


def validate_section(step: Step, section: dict[str, Any], source: str) -> StepParams:
    """Validate one step's section; raise ParamError naming the first problem.

    `source` (a file, "--set ...") prefixes the message; "" leaves it out (a step page).
    """
    fields = step.params.model_fields
    where = f"{source}: " if source else ""
    for key in section:
        if key not in fields:
            raise ParamError(f"{where}step {step.id} ({step.title}): unknown key '{key}'; "
                             f"keys are " + ", ".join(fields))
    try:
        return step.params.model_validate(section)
    except ValidationError as e:
        err = e.errors()[0]
        loc = err.get("loc", ())
        key = str(loc[0]) if loc else str(err.get("ctx", {}).get("field", ""))
        if key in fields:
            given = section.get(key, fields[key].default)
            why = ""
            if err.get("type") in ("value_error", "assertion_error", "odd"):
                why = f" ({err.get('msg', '').removeprefix('Value error, ')})"
            raise ParamError(f"{where}step {step.id} ({step.title}), key '{key}': "
                             f"{show_value(given)} is not allowed{why}; expected "
                             f"{allowed(fields[key])}") from None
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        raise ParamError(f"{where}step {step.id} ({step.title}): {msg}") from None


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamError(f"{path}: parameter file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParamError(f"{path}: cannot read the parameter file ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ParamError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: "
                         f"{e.msg}") from None


def _checked_sections(data: Any, source: str) -> dict[str, Any]:
    """The 'steps' object of a parameter document, after checking format and version."""
    if not isinstance(data, dict):
        raise ParamError(f"{source}: the file must hold a JSON object "
                         f'{{"format": "{FORMAT}", "version": {VERSION}, "steps": {{...}}}}')
    unknown_top = set(data) - {"format", "version", "steps"}
    if unknown_top:
        raise ParamError(f"{source}: unknown top-level key '{sorted(unknown_top)[0]}'; "
                         f"allowed: format, version, steps")
    if data.get("format") != FORMAT:
        raise ParamError(f"{source}: 'format' is {show_value(data.get('format'))}; "
                         f"an MPS parameter file has \"format\": \"{FORMAT}\"")
    version = data.get("version")
    if version != VERSION or isinstance(version, bool):
        raise ParamError(f"{source}: parameter file version {show_value(version)} is not "
                         f"supported; this MPS reads version {VERSION}")
    sections = data.get("steps", {})
    if not isinstance(sections, dict):
        raise ParamError(f"{source}: 'steps' must be an object keyed by step id")
    return sections
