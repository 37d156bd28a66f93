"""How a step declares its parameters.

Every step has one pydantic model. Each field is declared with :func:`P`, which records the
description, the bounds and whether the parameter is basic or advanced. The GUI form, the
tooltips, the parameter-file validation, the ``--set`` option and the docs tables are all
generated from these models, so names and limits are written exactly once.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from pydantic.fields import FieldInfo


class StepParams(BaseModel):
    """Base of every step's parameter model: strict types, unknown keys rejected."""

    # strict: "3" is not 3 and 1 is not True -- a parameter file says exactly what it means
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, frozen=False)


    @model_validator(mode="after")
    def _odd_sizes(self):
        for name, field in type(self).model_fields.items():
            v = getattr(self, name)
            if is_odd_only(field) and isinstance(v, int) and v % 2 == 0:
                raise PydanticCustomError("odd", "must be odd", {"field": name})
        return self


class NoParams(StepParams):
    """For steps without parameters."""


def P(default: Any, description: str, *, ge: float | None = None, le: float | None = None,
      gt: float | None = None, lt: float | None = None, advanced: bool = False,
      unit: str | None = None, odd: bool = False) -> Any:
    """Declare one parameter: default, one-sentence description, bounds, basic/advanced.

    `odd=True` restricts an integer to odd values (filter kernel sizes).
    """
    extra: dict[str, Any] = {"advanced": advanced}
    if unit:
        extra["unit"] = unit
    if odd:
        extra["odd"] = True
    return Field(default, description=description, ge=ge, le=le, gt=gt, lt=lt,
                 json_schema_extra=extra)


def is_advanced(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return bool(isinstance(extra, dict) and extra.get("advanced"))


def unit_of(field: FieldInfo) -> str | None:
    extra = field.json_schema_extra
    return extra.get("unit") if isinstance(extra, dict) else None


def is_odd_only(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return bool(isinstance(extra, dict) and extra.get("odd"))


def bounds(field: FieldInfo) -> dict[str, float]:
    """The numeric bounds of a field as {'ge': .., 'lt': ..}."""
    out: dict[str, float] = {}
    for m in field.metadata:
        for cls, key in ((Ge, "ge"), (Gt, "gt"), (Le, "le"), (Lt, "lt")):
            if isinstance(m, cls):
                out[key] = getattr(m, key)
    return out


def choices(annotation: Any) -> list[Any] | None:
    """Allowed values of a Literal annotation (also inside Optional), else None."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    if _is_optional(annotation):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return choices(inner[0])
    return None


def _is_optional(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return (origin is typing.Union or origin is types.UnionType) and \
        type(None) in typing.get_args(annotation)


def _type_words(annotation: Any) -> str:
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "text"
    lits = choices(annotation)
    if lits is not None and not _is_optional(annotation):
        return "one of " + ", ".join(_show(v) for v in lits)
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        inner = _type_words(args[0]) if args else "values"
        return f"a list of {inner.removeprefix('a ').removeprefix('an ')}s" \
            if inner in ("an integer", "a number") else f"a list of {inner}"
    if _is_optional(annotation):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type_words(a) for a in inner) + " or null"
    return getattr(annotation, "__name__", str(annotation))


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"'{v}'"
    if v is None:
        return "null"
    return repr(v)


def allowed(field: FieldInfo) -> str:
    """Human words for what a field accepts, e.g. 'an integer >= 1 and <= 31'."""
    words = _type_words(field.annotation)
    if is_odd_only(field):
        words = words.replace("an integer", "an odd integer")
    b = bounds(field)
    sym = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    limits = [f"{sym[k]} {_show(v)}" for k, v in b.items()]
    if limits:
        words += " " + " and ".join(limits)
    return words


def show_value(v: Any) -> str:
    """A value as it is written in a parameter file (JSON spelling)."""
    import json

    try:
        return json.dumps(v)
    except TypeError:
        return repr(v)
