"""Batches: the same parameter file run over many sessions, one output folder each.

The session list (``mps batch SESSIONS.txt``) is a plain text file, one session per line::

    # INPUT_DIR                 [OUTPUT_DIR]            [ANIMAL_ID] [SESSION_ID]
    /data/m12/day1/Miniscope    /results/m12-day1       m12         day1
    "/data/m12/day 2/Miniscope" -                       m12         day2
    /data/m14/day1/Miniscope

* Fields are separated by whitespace; a path holding spaces is quoted ("..." or '...').
  A line holding a tab is split on tabs only, so a list exported from a spreadsheet needs no
  quotes. Backslashes are kept as they are (Windows paths).
* ``#`` starts a comment (at the start of a field); blank lines are ignored.
* ``-`` (or an empty field between tabs) leaves a field at its default; no OUTPUT_DIR
  means the default output folder: ``<INPUT_DIR>_mps`` next to the input folder, or
  ``<output root>/<label>`` when an output root is given. The label (the session's name in
  events and the summary) is ``ANIMAL_ID_SESSION_ID`` when both ids are given, else the end
  of the input path that tells the sessions apart, e.g. ``m12_day1_Miniscope``.
* ANIMAL_ID / SESSION_ID replace step 1's ``animal_id`` / ``session_id`` for that session;
  left out, the parameter file's values are used.
* Relative paths are taken from the folder holding the list file.

Every session runs through :class:`mps_core.runner.Runner`, exactly as ``mps run`` would with
the batch's parameters and the session's folders, so each session has its own session folder,
``session.log`` and step manifests. A session that fails (unreadable video, bad folder,
unreachable scheduler, crash) is recorded with the step and the cause, and the batch goes
on. A session whose every planned step is done with the batch's parameters is skipped
(``rerun=True`` runs it again from step 1); a session done only in part, or whose parameters
changed from some step on, is resumed from the first step that is not done with the same
parameters. Step 1's execution keys (``n_workers``, ``memory_limit_gb``,
``scheduler_address``) do not change results and are not compared.

Sessions run one after another. With step 1's ``scheduler_address`` set, up to ``parallel``
sessions run at once, each in its own thread driving its own Runner against the same Dask
cluster; without a cluster one session already uses every core, and the local scheduler's
settings are process-wide, so sessions never overlap.
"""

from __future__ import annotations

import csv
import logging
import os
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .params import ParamSet
from .registry import Step, StepError

log = logging.getLogger("mps")

SUMMARY_NAME = "batch_summary.csv"
SUMMARY_COLUMNS = ("session", "input", "output", "status", "duration_s", "units_found",
                   "frames_removed", "failed_step", "cause", "log")
# step 1 keys that say where and how fast to compute, not what: they never force a re-run
EXECUTION_KEYS = ("n_workers", "memory_limit_gb", "scheduler_address")
DEFAULT_SUFFIX = "_mps"


# ----------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class SessionEntry:
    """One session of a batch: where its videos are, where its results go, its ids.

    ``output_dir`` None means "the default" (see :func:`assign_outputs`); ``label`` names the
    session in events and the summary; ``line`` is its line in the list file (0: built in
    code, e.g. by the GUI)."""

    input_dir: Path
    output_dir: Path | None = None
    animal_id: str | None = None
    session_id: str | None = None
    label: str = ""
    line: int = 0

    @property
    def name(self) -> str:
        return self.label or Path(self.input_dir).name


def read_session_list(path: Path, output_root: Path | None = None) -> list[SessionEntry]:
    """Parse a session list file (module docstring) and give every session its output folder.

    Raises ValueError naming the file and line for a malformed line, an empty list, or two
    sessions sharing an output folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from Windows editors is dropped
    except FileNotFoundError:
        raise ValueError(f"{path}: session list not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the session list ({e})") from None
    entries = parse_session_lines(text.splitlines(), base=path.absolute().parent,
                                  source=str(path))
    if not entries:
        raise ValueError(f"{path}: no sessions (one INPUT_DIR [OUTPUT_DIR] [ANIMAL_ID] "
                         f"[SESSION_ID] per line)")
    return assign_outputs(entries, output_root, source=str(path))


def parse_session_lines(lines: Sequence[str], base: Path, source: str = "session list"
                        ) -> list[SessionEntry]:
    """Entries of the non-blank, non-comment lines; relative paths are taken from `base`."""
    entries = []
    for number, raw in enumerate(lines, 1):
        fields = _split_line(raw, f"{source} line {number}")
        if not fields:
            continue
        if len(fields) > 4:
            raise ValueError(f"{source} line {number}: {len(fields)} fields; expected "
                             f"INPUT_DIR [OUTPUT_DIR] [ANIMAL_ID] [SESSION_ID] (quote paths "
                             f"holding spaces)")
        fields += [""] * (4 - len(fields))
        inp, out, animal, session = (None if f in ("", "-") else f for f in fields)
        entries.append(SessionEntry(
            input_dir=_absolute(inp, base),
            output_dir=None if out is None else _absolute(out, base),
            animal_id=animal, session_id=session, line=number))
    return entries


def _split_line(raw: str, where: str) -> list[str]:
    """The fields of one line; '' for a field left empty between two tabs."""
    if "\t" in raw:  # tab-separated: fields may hold spaces without quotes, and keep places
        fields = []
        for f in raw.split("\t"):
            f = f.strip()
            if f.startswith("#"):
                break
            fields.append(_unquote(f))
        while fields and not fields[-1]:
            fields.pop()
    else:
        fields = _split_words(raw, where)
    if fields and fields[0] in ("", "-"):
        raise ValueError(f"{where}: the first field must be the input folder (INPUT_DIR)")
    return fields


def _split_words(raw: str, where: str) -> list[str]:
    """Whitespace-separated words; quotes group (and are removed), backslashes are plain
    characters (Windows paths), and '#' starting a word outside quotes ends the line
    (shlex would also end it at a '#' inside a word, e.g. a folder named 'run#2')."""
    words: list[str] = []
    word: list[str] | None = None  # None: between words
    quote = ""
    for ch in raw:
        if quote:
            if ch == quote:
                quote = ""
            else:
                word.append(ch)
        elif ch in "\"'":
            quote = ch
            word = word if word is not None else []
        elif ch.isspace():
            if word is not None:
                words.append("".join(word))
            word = None
        elif ch == "#" and word is None:
            break
        else:
            word = (word if word is not None else []) + [ch]
    if quote:
        raise ValueError(f"{where}: no closing quotation ({quote}): close the quote around "
                         f"the path")
    if word is not None:
        words.append("".join(word))
    return words


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _absolute(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else (base / p).absolute()


def assign_outputs(entries: Sequence[SessionEntry], output_root: Path | None = None,
                   source: str = "batch") -> list[SessionEntry]:
    """Fill in labels and default output folders; ValueError if two sessions would share one.

    Default: ``<input>_mps`` beside the input folder, or ``output_root/<label>``."""
    labels = _unique_labels([Path(e.input_dir) for e in entries])
    out = []
    for e, label in zip(entries, labels):
        if e.animal_id and e.session_id and not e.label:
            label = f"{e.animal_id}_{e.session_id}"
        label = e.label or label
        target = e.output_dir
        if target is None:
            target = (Path(output_root).expanduser().absolute() / label.replace("/", "_")
                      if output_root else
                      Path(e.input_dir).with_name(Path(e.input_dir).name + DEFAULT_SUFFIX))
        out.append(replace(e, input_dir=Path(e.input_dir).expanduser().absolute(),
                           output_dir=Path(target).expanduser().absolute(), label=label))
    seen: dict[Path, SessionEntry] = {}
    for e in out:
        if e.output_dir in seen:
            first = seen[e.output_dir]
            raise ValueError(f"{source}: {_where(first)} and {_where(e)} both write to "
                             f"{e.output_dir}; give one of them another OUTPUT_DIR")
        seen[e.output_dir] = e
    return out


def _where(e: SessionEntry) -> str:
    return f"line {e.line}" if e.line else f"session {e.input_dir}"


def _unique_labels(inputs: list[Path]) -> list[str]:
    """The shortest path ends that tell the inputs apart ('day1/Miniscope', 'day2/Miniscope')."""
    parts = [p.parts[1:] if p.is_absolute() else p.parts for p in inputs]
    depth = [1] * len(inputs)
    while True:
        labels = ["/".join(ps[-d:]) for ps, d in zip(parts, depth)]
        clash = {lb for lb in labels if labels.count(lb) > 1}
        grow = [i for i, lb in enumerate(labels) if lb in clash and depth[i] < len(parts[i])]
        if not grow:
            return labels
        for i in grow:
            depth[i] += 1


# ----------------------------------------------------------------------------- outcomes


@dataclass
class SessionOutcome:
    """What happened to one session: status is done | skipped | failed | cancelled."""

    entry: SessionEntry
    status: str
    duration_s: float = 0.0
    first_step: str = ""      # the step the run started from ('' when nothing ran)
    units_found: int | None = None
    frames_removed: int | None = None
    failed_step: str = ""
    cause: str = ""
    log: str = ""
    steps_run: list[str] = field(default_factory=list)

    def row(self) -> dict[str, str]:
        """One line of the summary CSV."""
        return {"session": self.entry.name, "input": str(self.entry.input_dir),
                "output": str(self.entry.output_dir), "status": self.status,
                "duration_s": f"{self.duration_s:.1f}",
                "units_found": "" if self.units_found is None else str(self.units_found),
                "frames_removed": "" if self.frames_removed is None else str(self.frames_removed),
                "failed_step": self.failed_step, "cause": _one_line(self.cause), "log": self.log}


@dataclass(frozen=True)
class BatchEvent:
    """A change in one session, for progress displays.

    kind: started | step (a step started / done / failed / cancelled: ``message`` says which)
    | progress | done | failed | skipped | cancelled. ``fraction`` is the session's overall
    progress (0..1) over its planned steps. Events may come from worker threads when
    sessions run in parallel: a GUI must hand them to its own thread."""

    index: int
    session: str
    kind: str
    step_id: str = ""
    fraction: float = 0.0
    message: str = ""


EventFn = Callable[[BatchEvent], None]


def _one_line(text: str) -> str:
    return " / ".join(" ".join(ln.split()) for ln in str(text).splitlines() if ln.strip())


# ----------------------------------------------------------------------------- the run


def run_batch(entries: Sequence[SessionEntry], params: ParamSet, *,
              on_event: EventFn | None = None, cancel: threading.Event | None = None,
              rerun: bool = False, parallel: int = 1, stop: str | None = None,
              output_root: Path | None = None, summary: Path | None = None,
              steps: Sequence[Step] | None = None) -> list[SessionOutcome]:
    """Run every session; return one outcome per entry, in the entries' order.

    params: the batch's parameters (step 1's folders and ids are set per session).
    stop: last step to run (default: the last step), for quick checks on part of the
    pipeline. parallel: sessions at once, used only with step 1's scheduler_address.
    summary: a CSV path rewritten after every session (pending ones listed as 'pending').
    Cancelling (the event, or Ctrl-C in the calling thread) stops the running sessions,
    keeping their previous step results, and marks the rest 'cancelled'.
    """
    from .steps import STEPS

    steps = list(steps or STEPS)
    planned = planned_steps(steps, stop)
    entries = assign_outputs(entries, output_root)
    cancel = cancel or threading.Event()
    emit = on_event or (lambda ev: None)
    outcomes: list[SessionOutcome | None] = [None] * len(entries)
    lock = threading.Lock()

    def finish(i: int, outcome: SessionOutcome) -> None:
        with lock:
            outcomes[i] = outcome
            if summary is not None:
                write_summary(_with_pending(entries, outcomes), summary)

    def one(i: int) -> None:
        finish(i, run_session(entries[i], params, planned, steps, index=i, emit=emit,
                              cancel=cancel, rerun=rerun))

    address = params[steps[0].id].scheduler_address
    workers = max(1, min(int(parallel), len(entries))) if address else 1
    try:
        if workers == 1:
            for i in range(len(entries)):
                one(i)
        else:
            with _shared_client(address), ThreadPoolExecutor(workers, "mps-batch") as pool:
                futures = [pool.submit(one, i) for i in range(len(entries))]
                _wait_all(futures, cancel)
    except KeyboardInterrupt:  # Ctrl-C: stop cleanly and still report every session
        cancel.set()
        log.info("batch interrupted")
    final = _with_pending(entries, outcomes, pending="cancelled")
    if summary is not None:
        write_summary(final, summary)
    return final


def _wait_all(futures, cancel: threading.Event) -> None:
    """Wait for the sessions; Ctrl-C cancels them and still waits for them to stop."""
    for f in futures:
        while True:
            try:
                f.result()
                break
            except KeyboardInterrupt:
                cancel.set()  # the threads see it between tasks and stop their steps


def _with_pending(entries, outcomes, pending: str = "pending") -> list[SessionOutcome]:
    return [o if o is not None else SessionOutcome(e, pending, cause="" if pending == "pending"
                                                   else "the batch was cancelled")
            for e, o in zip(entries, outcomes)]


def planned_steps(steps: Sequence[Step], stop: str | None) -> list[Step]:
    ids = [s.id for s in steps]
    if stop is None:
        last = len(steps) - 1
    elif stop in ids:
        last = ids.index(stop)
    else:
        raise ValueError(f"stop step {stop!r} is unknown; steps are " + ", ".join(ids))
    return list(steps[:last + 1])


@contextmanager
def _shared_client(address: str) -> Iterator[None]:
    """One client for the whole parallel batch, around the sessions' own clients.

    Each Runner opens (and closes) its own client, which sets dask's default scheduler for
    the process; overlapping sessions would otherwise leave that setting behind when the last
    one closes. An unreachable cluster is not an error here: each session reports it."""
    try:
        from distributed import Client

        client = Client(address, timeout="10s", set_as_default=True)
    except Exception as e:  # noqa: BLE001 -- every session will say why in its outcome
        log.warning("batch: cannot connect to %s (%s)", address, e)
        yield
        return
    try:
        yield
    finally:
        client.close()


def session_params(params: ParamSet, entry: SessionEntry, config_step: str = "1") -> ParamSet:
    """The batch's parameters with this session's folders and ids in step 1."""
    values = {"input_dir": str(entry.input_dir), "output_dir": str(entry.output_dir)}
    if entry.animal_id:
        values["animal_id"] = entry.animal_id
    if entry.session_id:
        values["session_id"] = entry.session_id
    return params.with_values(config_step, values, source=f"batch session {entry.name}")


def run_session(entry: SessionEntry, params: ParamSet, planned: Sequence[Step],
                steps: Sequence[Step], *, index: int = 0, emit: EventFn | None = None,
                cancel: threading.Event | None = None, rerun: bool = False) -> SessionOutcome:
    """Run (or skip) one session; every failure becomes a 'failed' outcome, never an error."""
    from .runner import PlanError, Runner, StepFailed
    from .steps.config import check_config
    from .store import SessionStore, StoreError

    cancel = cancel or threading.Event()
    track = _Tracker(index, entry.name, emit or (lambda ev: None))
    t0 = time.time()
    store = None
    outcome = SessionOutcome(entry, "failed")
    if cancel.is_set():
        outcome.status, outcome.cause = "cancelled", "the batch was cancelled"
        track.emit("cancelled", message=outcome.cause)
        return outcome
    try:
        ps = session_params(params, entry, planned[0].id)
        check_config(ps[planned[0].id])
        store = SessionStore(entry.output_dir)
        outcome.log = str(store.log_path)
        first = first_step_to_run(store, ps, planned, rerun)
        if first is None:
            outcome.status = "skipped"
            outcome.cause = "every step is done with these parameters"
            track.emit("skipped", fraction=1.0, message=outcome.cause)
        else:
            todo = [s.id for s in planned[[s.id for s in planned].index(first):]]
            track.begin(todo)
            outcome.first_step = first
            results = Runner(steps, ps, store, on_progress=track.progress,
                             on_event=track.step_event).run(first, planned[-1].id, cancel=cancel)
            outcome.steps_run = [r.step_id for r in results if r.status == "done"]
            if results and results[-1].status == "cancelled":
                outcome.status, outcome.cause = "cancelled", "cancelled by the user"
                outcome.failed_step = results[-1].step_id
            else:
                outcome.status = "done"
    except StepFailed as e:
        outcome.failed_step, outcome.cause = e.step.id, e.message
    except (StepError, StoreError, PlanError, ValueError) as e:  # before any step ran
        outcome.failed_step = _step_named(str(e)) or (planned[0].id if store is None else "")
        outcome.cause = str(e)
    except KeyboardInterrupt:
        cancel.set()
        outcome.status, outcome.cause = "cancelled", "interrupted (Ctrl-C)"
        outcome.failed_step = track.current
    except Exception as e:  # noqa: BLE001 -- one broken session must not end the batch
        outcome.failed_step, outcome.cause = track.current, f"{type(e).__name__}: {e}"
        log.error("batch: session %s stopped: %s", entry.name, outcome.cause)
        if store is not None:  # the traceback goes to the session's log, not the terminal
            _append_log(store.log_path, f"batch: the session stopped:\n{traceback.format_exc()}")
    outcome.duration_s = time.time() - t0 if outcome.status != "skipped" else 0.0
    if store is not None:
        try:
            outcome.units_found, outcome.frames_removed = units_found(store), frames_removed(store)
        except Exception as e:  # noqa: BLE001 -- a damaged result leaves the counts empty
            log.warning("batch: session %s: cannot count units / frames (%s)", entry.name, e)
    if outcome.status == "done":
        track.emit("done", fraction=1.0, message=f"{outcome.duration_s:.1f} s")
    elif outcome.status == "failed":
        track.emit("failed", step_id=outcome.failed_step, message=_one_line(outcome.cause))
    elif outcome.status == "cancelled":
        track.emit("cancelled", step_id=outcome.failed_step, message=outcome.cause)
    return outcome


def first_step_to_run(store, params: ParamSet, planned: Sequence[Step],
                      rerun: bool = False) -> str | None:
    """The first planned step not done with these parameters (None: all done, skip).

    A step whose inputs changed since it ran is 'stale', not done, so everything before the
    returned step is a valid, current result and the run can resume there."""
    if rerun:
        return planned[0].id
    status = store.statuses([s.id for s in planned])
    for s in planned:
        m = store.manifest(s.id)
        if status[s.id] != "done" or m is None or \
                not same_params(s.id, m.get("params", {}), params[s.id], planned[0].id):
            return s.id
    return None


def same_params(step_id: str, stored: dict, current, config_step: str = "1") -> bool:
    """Whether a manifest's parameters equal the current ones (execution keys aside)."""
    now = current.model_dump(mode="json")
    if step_id == config_step:
        stored, now = _comparable_config(stored), _comparable_config(now)
    return stored == now


def _comparable_config(values: dict) -> dict:
    """Step 1's values without the execution keys, folders as real paths (a folder written
    another way, through a link or with '~', is the same folder)."""
    out = {k: v for k, v in values.items() if k not in EXECUTION_KEYS}
    for key in ("input_dir", "output_dir"):
        if out.get(key):
            out[key] = os.path.realpath(os.path.expanduser(out[key]))
    return out


def _step_named(message: str) -> str:
    """'step 2a (...)' at the start of a plan error names the step."""
    import re

    m = re.match(r"\s*step (\w+)\b", message)
    return m.group(1) if m else ""


def _append_log(path: Path, line: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR {line}\n")
    except OSError:
        pass


class _Tracker:
    """Turns one Runner's step events and progress into the session's BatchEvents."""

    def __init__(self, index: int, name: str, emit: EventFn):
        self.index, self.name, self._emit = index, name, emit
        self.todo: list[str] = []
        self.finished = 0
        self.current = ""
        self.last_pct = -1

    def emit(self, kind: str, step_id: str = "", fraction: float = 0.0, message: str = "") -> None:
        try:
            self._emit(BatchEvent(self.index, self.name, kind, step_id, fraction, message))
        except Exception:  # noqa: BLE001 -- a broken display must not stop the sessions
            log.exception("batch: the event callback failed")

    def begin(self, todo: list[str]) -> None:
        self.todo = todo
        self.emit("started", todo[0], 0.0, f"steps {todo[0]}..{todo[-1]}")

    def overall(self, within: float) -> float:
        return min(1.0, (self.finished + within) / max(1, len(self.todo)))

    def step_event(self, step_id: str, event: str, message: str) -> None:
        if event == "started":
            self.current = step_id
        elif event == "done":
            self.finished += 1
            self.last_pct = max(self.last_pct, int(self.overall(0.0) * 100))
        self.emit("step", step_id, max(self.last_pct, 0) / 100, f"{event} {message}".strip())

    def progress(self, step_id: str, fraction: float, message: str) -> None:
        # a step with several passes restarts its own fraction at each: never go backwards
        pct = max(self.last_pct, int(self.overall(fraction) * 100))
        if pct != self.last_pct:  # one event per percent: a GUI need not see every task
            self.last_pct = pct
            self.emit("progress", step_id, pct / 100, message)


# ----------------------------------------------------------------------------- summary


def units_found(store) -> int | None:
    """Units in 8c's export (None when 8c has no current result)."""
    if store.status("8c") != "done":
        return None
    if store.has("8c", "export_manifest"):
        n = store.load("8c", "export_manifest").get("n_units")
        if n is not None:
            return int(n)
    if store.has("8c", "final_units"):
        return int(sum(bool(k) for k in store.load("8c", "final_units").get("kept", [])))
    return None


def frames_removed(store) -> int | None:
    """Distinct original frames listed in all_removed_frames.txt (None before step 2a)."""
    from .store import REMOVED_FILE

    path = store.root / REMOVED_FILE
    if not path.exists():
        return 0 if store.status("2a") == "done" else None
    frames = {line.split("\t", 1)[0] for line in path.read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    return len(frames)


def summary_path(where: Path | None) -> Path:
    """`where` itself when it names a .csv file, else `where/batch_summary.csv` (default: the
    current folder)."""
    where = Path(where) if where is not None else Path.cwd()
    return where if where.suffix.lower() == ".csv" else where / SUMMARY_NAME


def write_summary(outcomes: Sequence[SessionOutcome], path: Path) -> Path:
    """Write the summary CSV (atomically: a reader never sees half a table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for o in outcomes:
            w.writerow(o.row())
    tmp.replace(path)
    return path


def read_summary(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def format_table(outcomes: Sequence[SessionOutcome], width: int = 60) -> str:
    """The summary as an aligned text table (the cause cut to `width` characters)."""
    head = ("session", "status", "duration_s", "units", "removed", "step", "cause")
    rows = [head]
    for o in outcomes:
        r = o.row()
        cause = r["cause"] if len(r["cause"]) <= width else r["cause"][:width - 3] + "..."
        rows.append((r["session"], r["status"], r["duration_s"], r["units_found"] or "-",
                     r["frames_removed"] or "-", r["failed_step"] or "-", cause or "-"))
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def counts(outcomes: Sequence[SessionOutcome]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in outcomes:
        out[o.status] = out.get(o.status, 0) + 1
    return out
