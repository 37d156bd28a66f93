"""A finished step's preview figures, rebuilt from the session store.

The runner renders previews to PNG when a step finishes; the desktop app draws the same
figures live (zoom, levels, hover) when a finished step's page is opened later. Both build
them with the step's own ``Preview.make`` from the stored outputs, the stored inputs and the
parameters the result was computed with (from the manifest), so the plot always matches the
result on disk, not the parameters currently being edited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .figures import Figure
from .registry import Step
from .store import SessionStore


@dataclass
class StoredPreview:
    name: str
    title: str
    figure: Figure | None
    error: str | None = None


def producers(steps: Sequence[Step]) -> dict[str, str]:
    """Output name -> id of the step that makes it."""
    return {name: s.id for s in steps for name in s.outputs}


def result_params(step: Step, store: SessionStore) -> Any:
    """The parameters a stored result was computed with (defaults when unreadable)."""
    m = store.manifest(step.id) or {}
    try:
        return step.params.model_validate(m.get("params", {}), strict=False)
    except Exception:  # written by another version: the plot is still worth showing
        return step.params()


def stored_previews(step: Step, store: SessionStore, steps: Sequence[Step]) -> list[StoredPreview]:
    """Every preview of `step` drawn from its stored result ([] when it has none)."""
    if not step.previews or store.manifest(step.id) is None:
        return []
    made_by = producers(steps)
    outputs = {n: store.load(step.id, n) for n in step.outputs if store.has(step.id, n)}
    inputs = {}
    for name in step.inputs + step.optional_inputs:
        src = made_by.get(name)
        if src is not None and store.has(src, name):
            inputs[name] = store.load(src, name)
    params = result_params(step, store)
    out = []
    for p in step.previews:
        try:
            out.append(StoredPreview(p.name, p.title, p.make(outputs, inputs, params)))
        except Exception as e:  # one broken plot must not hide the others
            out.append(StoredPreview(p.name, p.title, None, f"{type(e).__name__}: {e}"))
    return out
