"""The generated parts of the user guide (docs/): parameter tables and the step list.

The guide is hand-written Markdown, except for blocks between markers that are generated
from the step registry (:data:`mps_core.steps.STEPS`), so a default, a bound or a
description is written once, in the step's parameter model, and never goes stale here:

    <!-- params:2b -->      ...one step's inputs, outputs, previews and parameter table...
    <!-- /params:2b -->
    <!-- steps -->          ...every step by stage, linked to its page...
    <!-- /steps -->

``mps docs`` rewrites the blocks in place; ``mps docs --check`` lists the pages whose blocks
differ from the registry (a test runs the same check). Everything outside the markers is
left byte for byte as it is.

Importing this module is cheap (no numerics): the registry is imported only when a block is
rendered, so the desktop app can call :func:`docs_dir` from its Help menu at no cost.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["docs_dir", "step_page", "param_rows", "params_table", "params_block",
           "steps_block", "render", "stale_pages", "update_pages", "documented_steps"]

# <!-- params:2b --> ... <!-- /params:2b -->  and  <!-- steps --> ... <!-- /steps -->, each
# marker alone on its line (a marker quoted in the text, e.g. in backticks, is not one)
_OPEN = re.compile(r"^<!-- (params:(?P<id>[0-9a-z]+)|steps) -->[ \t]*$", re.M)
HEADER = ("parameter", "basic/advanced", "default", "allowed", "description")


def docs_dir() -> Path | None:
    """The user guide folder: ``docs/`` next to the ``mps_core`` package (a source checkout),
    or, in the frozen application, the ``docs/`` bundled with it (PyInstaller's
    ``sys._MEIPASS``, or next to the executable).

    None when there is none (e.g. an installation made without the docs); the desktop app
    then says where the guide can be found instead of opening an empty window.
    """
    import sys

    candidates = [Path(__file__).resolve().parent.parent / "docs"]
    if getattr(sys, "frozen", False):
        bundle = getattr(sys, "_MEIPASS", None)
        if bundle:
            candidates.append(Path(bundle) / "docs")
        candidates.append(Path(sys.executable).resolve().parent / "docs")
    for folder in candidates:
        if (folder / "index.md").is_file():
            return folder
    return None


def step_page(step_id: str, docs: Path | None = None) -> Path | None:
    """The page documenting ``step_id`` (the one holding its parameter block), or None."""
    folder = docs if docs is not None else docs_dir()
    if folder is None:
        return None
    return documented_steps(folder).get(step_id)


def _steps(steps: Sequence[Any] | None) -> Sequence[Any]:
    if steps is not None:
        return steps
    from .steps import STEPS  # imported here: the registry pulls in the numerics

    return STEPS


# ----------------------------------------------------------------------------- cells


def _cell(text: str) -> str:
    """Plain text made safe for one Markdown table cell (GitHub and Qt's renderer)."""
    text = " ".join(str(text).split())
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")
    return re.sub(r"<(?=[A-Za-z/!])", "&lt;", text)  # never the start of an HTML tag


def _code(text: str) -> str:
    """A code span for one table cell (pipes escaped: GFM splits cells before code spans)."""
    return "`" + str(text).replace("|", "\\|") + "`"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def param_rows(step: Any) -> list[tuple[str, str, str, str, str]]:
    """One (name, level, default, allowed, description) per parameter of ``step``, in the
    order of its model; the unit, when declared, ends the description."""
    from .paramtypes import allowed, is_advanced, show_value, unit_of

    rows = []
    for name, field in step.params.model_fields.items():
        desc = field.description or ""
        unit = unit_of(field)
        if unit:
            desc = f"{desc} Unit: {unit}."
        rows.append((name, "advanced" if is_advanced(field) else "basic",
                     show_value(field.default), allowed(field), desc))
    return rows


def params_table(step: Any) -> str:
    """The Markdown parameter table of one step (a sentence when it has no parameters)."""
    rows = param_rows(step)
    if not rows:
        return "This step has no parameters."
    lines = [_row(HEADER), _row("---" for _ in HEADER)]
    for name, level, default, allowed_, desc in rows:
        lines.append(_row((_code(name), level, _code(default), _cell(allowed_), _cell(desc))))
    return "\n".join(lines)


def _io_line(step: Any, steps: Sequence[Any]) -> str:
    """What a step reads (and from which step), writes and draws."""
    producer = {name: s.id for s in steps for name in s.outputs}

    def src(names: Iterable[str]) -> str:
        return ", ".join(f"`{n}` ({producer.get(n, '?')})" for n in names)

    parts = []
    if step.inputs:
        parts.append("**Reads** " + src(step.inputs))
    if step.optional_inputs:
        parts.append("**Uses when present** " + src(step.optional_inputs))
    if step.outputs:
        parts.append("**Writes** " + ", ".join(f"`{n}`" for n in step.outputs))
    if step.previews:
        parts.append("**Previews** " + ", ".join(
            f"{_cell(p.title)} (`preview_{p.name}.png`)" for p in step.previews))
    return " · ".join(parts)


def params_block(step: Any, steps: Sequence[Any] | None = None) -> str:
    """Generated content of a ``params:<id>`` block: inputs/outputs line and the table."""
    steps = _steps(steps)
    head = _io_line(step, steps)
    return (head + "\n\n" if head else "") + params_table(step)


def steps_block(steps: Sequence[Any] | None = None, prefix: str = "steps/") -> str:
    """Generated content of the ``steps`` block: a table of stages and linked steps."""
    steps = _steps(steps)
    lines = [_row(("stage", "steps")), _row(("---", "---"))]
    stages: dict[str, list[Any]] = {}
    for s in steps:
        stages.setdefault(s.stage, []).append(s)
    for stage, members in stages.items():
        links = ", ".join(f"[{s.id} {_cell(s.title)}]({prefix}{s.id}.md)" for s in members)
        lines.append(_row((_cell(stage), links)))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- rewriting


def _blocks(text: str, where: str) -> list[tuple[int, int, str | None]]:
    """(start, end, step id or None for the step list) of every marked block's inner text."""
    out = []
    pos = 0
    while (m := _OPEN.search(text, pos)) is not None:
        sid = m.group("id")
        close = f"<!-- /params:{sid} -->" if sid else "<!-- /steps -->"
        found = re.compile(r"^" + re.escape(close) + r"[ \t]*$", re.M).search(text, m.end())
        end = found.start() if found else -1
        if end < 0:
            raise ValueError(f"{where}: the block opened by '{m.group(0)}' is never closed "
                             f"(expected '{close}')")
        nested = _OPEN.search(text, m.end(), end)
        if nested:
            raise ValueError(f"{where}: '{nested.group(0)}' opens inside the block "
                             f"'{m.group(0)}'; close each block before the next")
        out.append((m.end(), end, sid))
        pos = found.end()
    return out


def render(text: str, steps: Sequence[Any] | None = None, where: str = "page",
           steps_prefix: str = "steps/") -> str:
    """``text`` with every marked block regenerated from the registry.

    ``where`` names the page in error messages; ``steps_prefix`` is the path from the page to
    the step pages (for the ``steps`` block). Raises ValueError for an unknown step id or a
    block that is not closed.
    """
    steps = _steps(steps)
    by_id = {s.id: s for s in steps}
    out, last = [], 0
    for start, end, sid in _blocks(text, where):
        if sid is None:
            body = steps_block(steps, steps_prefix)
        elif sid in by_id:
            body = params_block(by_id[sid], steps)
        else:
            raise ValueError(f"{where}: '<!-- params:{sid} -->' names no step; steps are "
                             + ", ".join(by_id))
        out += [text[last:start], "\n\n", body, "\n\n"]
        last = end
    out.append(text[last:])
    return "".join(out)


def _pages(docs: Path) -> list[Path]:
    docs = Path(docs)
    if not docs.is_dir():
        raise ValueError(f"{docs}: the docs folder does not exist")
    return sorted(docs.rglob("*.md"))


def _render_page(page: Path, docs: Path, steps: Sequence[Any]) -> tuple[str, str]:
    text = page.read_text(encoding="utf-8")
    depth = len(page.relative_to(docs).parts) - 1
    prefix = "../" * depth + "steps/"
    return text, render(text, steps, where=str(page), steps_prefix=prefix)


def stale_pages(docs: Path, steps: Sequence[Any] | None = None) -> list[Path]:
    """Pages of ``docs`` whose generated blocks differ from what the registry gives now."""
    steps = _steps(steps)
    out = []
    for page in _pages(docs):
        old, new = _render_page(page, Path(docs), steps)
        if old != new:
            out.append(page)
    return out


def update_pages(docs: Path, steps: Sequence[Any] | None = None) -> list[Path]:
    """Rewrite the generated blocks of every page in place; return the pages that changed.

    Every page is rendered before any is written, so a bad marker changes nothing.
    """
    steps = _steps(steps)
    changes = []
    for page in _pages(docs):
        old, new = _render_page(page, Path(docs), steps)
        if old != new:
            changes.append((page, new))
    for page, new in changes:
        tmp = page.with_name(page.name + ".tmp")
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(page)
    return [p for p, _ in changes]


def documented_steps(docs: Path) -> dict[str, Path]:
    """Step id -> the page holding its ``params`` block (the first one, if several)."""
    out: dict[str, Path] = {}
    for page in _pages(docs):
        for _, _, sid in _blocks(page.read_text(encoding="utf-8"), str(page)):
            if sid is not None:
                out.setdefault(sid, page)
    return out
