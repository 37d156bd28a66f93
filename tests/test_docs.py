"""The user guide (docs/) stays true: generated tables, pages, links, commands and examples.

* The committed parameter tables and step list equal what the step registry gives now
  (`mps docs --check`), and a changed default makes them stale.
* Every step has a page titled with its id and title.
* Every internal link resolves (file and heading), and every page is reachable from the index.
* Every command in a shell block runs (the cheap ones: `mps steps`, `mps params ...`,
  `mps docs ...`, `--help`) or parses with the real argument parsers (`mps run`, `mps export`,
  `mps demo`, `dask scheduler / worker`), `--set` overrides included; install commands are the
  README's. Every parameter file shown is valid, and every Python example runs against a small
  session and export made here.
* Resuming as the quick start says (`--params SESSION/params.json --from ID`) works and marks
  the later steps stale.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mps_core import docsgen
from mps_core.cli import _parser, main
from mps_core.paramtypes import P, choices
from mps_core.params import ParamSet
from mps_core.steps import BY_ID, STEPS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
GENERATED = re.compile(r"^<!-- (params:\w+|steps) -->[ \t]*$.*?^<!-- /(params:\w+|steps) -->",
                       re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
SHELL = ("sh", "bash", "shell", "console")
RUN_CHEAP = {"steps", "params", "docs"}  # mps subcommands cheap enough to really run here


def blocks(lang: tuple[str, ...]) -> list[tuple[Path, str]]:
    return [(page, m.group(2)) for page in PAGES
            for m in FENCE.finditer(page.read_text(encoding="utf-8")) if m.group(1) in lang]


def shell_commands(text: str) -> list[list[str]]:
    """Token lists of every command of a shell block (continuations joined, && split)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split("&&"):
            out.append(shlex.split(part, comments=True))
    return out


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """A folder shaped like `mps demo`'s output: a small real session (steps 1..2d) under
    mps-demo/session, with an export written by the real writers in steps/8c/export."""
    from mps_core.export import ExportData, write_formats
    from mps_core.synth import simulate, write_miniscope

    base = tmp_path_factory.mktemp("docs")
    rec = simulate(n_frames=60, height=48, width=48, n_cells=4, cell_diameter=8.0, seed=3)
    write_miniscope(rec, base / "mps-demo" / "recording", layout="v4", frames_per_file=30)
    session = base / "mps-demo" / "session"
    assert main(["run", "--input", str(base / "mps-demo" / "recording"), "--output",
                 str(session), "--to", "2d", "--quiet"]) == 0
    frames = np.array([0, 1, 3, 4, 5])
    table = {"frame": frames, "movie_number": np.zeros(5, int), "local_frame": frames,
             "time_s": frames / 20.0, "hw_stamp": frames * 50}
    rng = np.random.default_rng(0)
    data = ExportData(A=rng.random((2, 8, 8)), C=rng.random((2, 5)), S=rng.random((2, 5)),
                      unit_ids=[3, 7], frames=frames, motion=np.zeros((5, 2)),
                      frame_table=table, units={"centroid_y": [2.0, 5.0], "size_px": [9, 12]},
                      metadata={"pixel_grid": {"height": 8, "width": 8}})
    write_formats(session / "steps" / "8c" / "export", data, {"numpy", "zarr", "json", "table"})
    return base


# ----------------------------------------------------------------------------- generated


def test_docs_dir_is_the_checkout_docs_folder():
    assert docsgen.docs_dir() == DOCS
    assert docsgen.step_page("6d") == DOCS / "steps" / "6d.md"


def test_committed_tables_match_the_registry():
    stale = docsgen.stale_pages(DOCS)
    assert stale == [], f"run `mps docs`: {[str(p.relative_to(ROOT)) for p in stale]}"


def test_a_changed_default_makes_the_page_stale(tmp_path):
    from mps_core.steps.filtering import FilterParams

    class Changed(FilterParams):
        median_ksize: int = P(7, "Median window in pixels (odd).", ge=3, le=31, odd=True,
                              unit="px")

    steps = [dataclasses.replace(s, params=Changed) if s.id == "2b" else s for s in STEPS]
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy)
    before = (copy / "steps" / "2b.md").read_text()
    assert docsgen.stale_pages(copy, steps) == [copy / "steps" / "2b.md"]
    assert docsgen.update_pages(copy, steps) == [copy / "steps" / "2b.md"]
    after = (copy / "steps" / "2b.md").read_text()
    assert "| `median_ksize` | basic | `7` |" in after and "`5` |" in before
    # only the generated block changed
    assert GENERATED.sub("", before) == GENERATED.sub("", after)
    assert docsgen.stale_pages(copy, steps) == []


def test_table_rows_follow_the_parameter_model():
    step = BY_ID["2b"]
    table = docsgen.params_table(step).splitlines()
    assert table[0] == "| parameter | basic/advanced | default | allowed | description |"
    assert len(table) == 2 + len(step.params.model_fields)
    row = next(r for r in table if r.startswith("| `median_ksize` "))
    assert row.startswith("| `median_ksize` | basic | `5` | an odd integer >= 3 and <= 31 |")
    assert row.endswith("Unit: px. |")
    assert next(r for r in table if r.startswith("| `order` ")).split(" | ")[1] == "advanced"
    # pipes and asterisks cannot break a row
    assert docsgen._cell("a | b*c") == "a \\| b\\*c"


def test_every_step_has_a_page_titled_with_its_id_and_title():
    pages = docsgen.documented_steps(DOCS)
    assert set(pages) == {s.id for s in STEPS}
    for s in STEPS:
        first = pages[s.id].read_text(encoding="utf-8").splitlines()[0]
        assert first == f"# {s.id} {s.title}", pages[s.id]


def test_bad_markers_are_reported_and_change_nothing(tmp_path):
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy)
    (copy / "extra.md").write_text("# x\n\n<!-- params:9z -->\n<!-- /params:9z -->\n")
    (copy / "steps" / "2b.md").write_text("# 2b\n\n<!-- params:2b -->\nold\n<!-- /params:2b -->\n")
    with pytest.raises(ValueError, match=r"extra\.md.*names no step; steps are 1, 2a"):
        docsgen.update_pages(copy)
    assert "old" in (copy / "steps" / "2b.md").read_text()  # nothing was written
    with pytest.raises(ValueError, match="never closed"):
        docsgen.render("<!-- params:2b -->\ntext\n")
    # a marker quoted inside a line is text, not a block
    assert docsgen.render("see `<!-- steps -->` here\n") == "see `<!-- steps -->` here\n"


def test_mps_docs_command(tmp_path, capsys):
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy)
    page = copy / "steps" / "6d.md"
    page.write_text(page.read_text().replace("| `sparse_penalty` | basic | `1.0` |",
                                             "| `sparse_penalty` | basic | `9.0` |"))
    assert main(["docs", "--check", "--dir", str(copy)]) == 1
    assert str(page) in capsys.readouterr().out
    assert main(["docs", "--dir", str(copy)]) == 0
    assert main(["docs", "--check", "--dir", str(copy)]) == 0
    assert main(["docs", "--check", "--dir", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_importing_docsgen_loads_no_numerics():
    code = ("import sys, mps_core.docsgen as d; d.docs_dir(); "
            "print(sorted(m for m in ('numpy', 'xarray', 'dask', 'mps_core.steps') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_internal_links_resolve():
    bad = []
    for page in PAGES:
        for target in _links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.is_file():
                bad.append(f"{page.relative_to(DOCS)}: {target} (no such file)")
            elif anchor and anchor not in _anchors(dest):
                bad.append(f"{page.relative_to(DOCS)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_every_page_is_reachable_from_the_index():
    seen, todo = set(), [DOCS / "index.md"]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for target in _links(page):
            path = target.partition("#")[0]
            if path.endswith(".md"):
                todo.append((page.parent / path).resolve())
    assert set(PAGES) <= seen, sorted(str(p) for p in set(PAGES) - seen)


# ----------------------------------------------------------------------------- commands


def _check_mps(args: list[str], redirect: str | None, where: str, cwd: Path, capsys) -> bool:
    """Parse one `mps` command with the real parser; run it when it is cheap. True if run."""
    try:
        parsed = _parser().parse_args(args)
    except SystemExit as e:  # --help / --version exit 0 after printing
        assert e.code == 0, f"{where}: `mps {' '.join(args)}` does not parse"
        return True
    if getattr(parsed, "overrides", None):  # --set names existing steps, keys and values
        ParamSet(STEPS).with_overrides(parsed.overrides)
    for sid in (getattr(parsed, "start", None), getattr(parsed, "stop", None),
                getattr(parsed, "step", None)):
        assert sid is None or sid in BY_ID, f"{where}: unknown step {sid}"
    if args[0] not in RUN_CHEAP:
        return False
    if args[0] == "docs" and "--dir" not in args:
        shutil.copytree(DOCS, cwd / "docs-copy", dirs_exist_ok=True)
        args = args + ["--dir", str(cwd / "docs-copy")]
    capsys.readouterr()
    assert main(args) == 0, f"{where}: `mps {' '.join(args)}` failed"
    out = capsys.readouterr().out
    if redirect:
        (cwd / redirect).write_text(out)
    return True


def _check_dask(args: list[str], where: str) -> None:
    """`dask scheduler` / `dask worker` options, parsed by distributed's own commands."""
    from distributed.cli.dask_scheduler import main as scheduler
    from distributed.cli.dask_worker import main as worker

    command = {"scheduler": scheduler, "worker": worker}[args[0]]
    ctx = command.make_context(f"dask {args[0]}", list(args[1:]))
    assert not ctx.params.get("preload_argv"), f"{where}: unknown options {ctx.params}"


def _readme_commands() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return {line.strip() for line in text.splitlines() if line.startswith("    ")}


def test_every_command_shown_runs_or_parses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "params", tmp_path / "params")
    readme = _readme_commands()
    counts = {"run": 0, "parsed": 0, "dask": 0, "readme": 0}
    for page, text in blocks(SHELL):
        where = str(page.relative_to(DOCS))
        for line in (ln.strip() for ln in text.replace("\\\n", " ").splitlines()):
            if line and not line.startswith("#") and "mps" not in line.split()[0] \
                    and not line.startswith("dask "):
                assert line in readme, f"{where}: `{line}` is neither mps, dask nor README's"
                counts["readme"] += 1
        for tokens in shell_commands(text):
            redirect = None
            if ">" in tokens:
                i = tokens.index(">")
                tokens, redirect = tokens[:i], tokens[i + 1]
            program = Path(tokens[0]).name
            if program == "mps":
                ran = _check_mps(tokens[1:], redirect, where, tmp_path, capsys)
                counts["run" if ran else "parsed"] += 1
            elif program == "dask":
                _check_dask(tokens[1:], where)
                counts["dask"] += 1
            elif program == "mps-gui":
                assert len(tokens) <= 2, f"{where}: mps-gui takes one session folder"
    assert counts["run"] >= 6 and counts["parsed"] >= 8 and counts["dask"] == 2, counts


def test_parameter_files_shown_are_valid():
    shown = [(page, json.loads(text)) for page, text in blocks(("json",))]
    files = [(page, doc) for page, doc in shown if doc.get("format") == "mps-params"]
    assert files
    for page, doc in files:
        ParamSet.from_dict(doc, STEPS, source=str(page))


def test_python_examples_run(demo_like, monkeypatch, capsys):
    monkeypatch.chdir(demo_like)
    examples = blocks(("python",))
    assert len(examples) >= 4
    for page, code in examples:
        try:
            exec(compile(code, f"{page.name} example", "exec"), {})
        except Exception as e:  # noqa: BLE001 -- name the example that broke
            pytest.fail(f"{page.relative_to(DOCS)} example failed: {type(e).__name__}: {e}\n{code}")
    assert capsys.readouterr().out


def test_field_names_in_the_text_exist_in_the_code():
    """Every `snake_case` name quoted in the prose is a parameter, a choice, an output, or a
    string the code writes (a field of a manifest, report or export): renames cannot leave
    the guide behind."""
    known = {n for s in STEPS for n in s.params.model_fields}
    known |= {n for s in STEPS for n in s.outputs}
    known |= {str(c) for s in STEPS for f in s.params.model_fields.values()
              for c in choices(f.annotation) or []}
    source = "".join(p.read_text() for p in (ROOT / "mps_core").rglob("*.py"))
    known |= set(re.findall(r"[\"']([A-Za-z][A-Za-z0-9_]*)[\"']", source))
    missing = []
    for page in PAGES:
        text = FENCE.sub("", GENERATED.sub("", page.read_text(encoding="utf-8")))
        for name in re.findall(r"`([A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_]*)`", text):
            if name not in known and name.removeprefix("unit_") not in known:
                missing.append(f"{page.relative_to(DOCS)}: {name}")
    assert not missing, missing


# ----------------------------------------------------------------------------- resuming


def test_resuming_from_the_session_parameters_marks_later_steps_stale(demo_like, capsys):
    session = demo_like / "mps-demo" / "session"
    params = session / "params.json"
    assert main(["params", "--check", str(params)]) == 0
    assert main(["run", "--params", str(params), "--from", "2b", "--to", "2c", "--set",
                 "2b.denoise_method=gaussian", "--quiet"]) == 0
    from mps_core.store import SessionStore

    store = SessionStore(session, create=False)
    assert store.statuses(["2a", "2b", "2c", "2d"]) == {
        "2a": "done", "2b": "done", "2c": "done", "2d": "stale"}
    assert json.loads(params.read_text())["steps"]["2b"]["denoise_method"] == "gaussian"
    assert store.manifest("2b")["params"]["denoise_method"] == "gaussian"
