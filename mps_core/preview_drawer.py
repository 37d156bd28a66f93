"""Step previews drawn in the background after each step is committed.

Drawing the PNG previews with matplotlib is single-threaded Python: on the bench's quick
recording it was about a third of a headless run's CPU time. On a thread of the run's own
process it held the interpreter lock against the steps' own Python code, so previews slowed
every step. The pipeline's steps are therefore drawn in one separate process (spawned once,
kept for later runs, lower priority, one thread): it fills the time the pipeline leaves a core
idle. A step that is not one of the pipeline's (a test's own, say) is drawn on a thread.

A preview is for looking at, never an input, so a step is done when its arrays are committed;
a preview that cannot be drawn only adds a warning to the step's manifest.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .figures import render_png
from .registry import Step
from .store import SessionStore, jsonable, load_path

log = logging.getLogger("mps")

# The drawing process holds about 350 MB (its libraries, matplotlib, one preview's data):
# under a smaller memory limit than this, previews are drawn on a thread of the run instead.
SEPARATE_DRAWING_MIN_GB = 3.0

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


class PreviewDrawer:
    """Queue of preview jobs for one store; `wait()` before anything reads or deletes them."""

    def __init__(self, store: SessionStore, separate: bool = True):
        self.store = store
        self.separate = separate  # pipeline steps drawn in the drawing process
        self._threads: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Future, str | None, str | None]] = []

    def submit(self, step: Step, run_id: str, inputs: dict[str, Any], params: Any,
               sources: dict[str, str] | None = None) -> None:
        """Queue `step`'s previews; `sources` names the step each input came from."""
        if not step.previews:
            return
        if self.separate and sources is not None and _registered(step):
            files = self._files(step, sources)
            if files is not None:
                try:
                    job = _process_pool().submit(draw_files, step.id, run_id, *files, params)
                except Exception as e:  # noqa: BLE001 -- no process: draw here instead
                    log.info("previews drawn in this process (%s)", e)
                else:
                    self._pending.append((job, step.id, run_id))
                    return
        if self._threads is None:
            self._threads = ThreadPoolExecutor(1, thread_name_prefix="mps-previews")
        job = self._threads.submit(self._draw, step, run_id, inputs, params)
        self._pending.append((job, None, None))  # the thread reports its own problems

    def wait(self) -> None:
        """Block until every queued preview is drawn (or has failed and been reported)."""
        pending, self._pending = self._pending, []
        for job, step_id, run_id in pending:
            try:
                problems = job.result()
            except Exception as e:  # noqa: BLE001 -- the drawing process died (out of memory?)
                problems = [f"previews could not be drawn: {type(e).__name__}: {e}"]
            if step_id is not None and problems:
                _report(self.store.step_dir(step_id), step_id, run_id, problems)

    def close(self) -> None:
        self.wait()
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None

    def _files(self, step: Step, sources: dict[str, str]):
        """(step folder, {output: file}, {input: file}) of the committed result, or None."""
        try:
            m = self.store.manifest(step.id) or {}
            folder = self.store.step_dir(step.id)
            outputs = {n: str(folder / m["outputs"][n]) for n in step.outputs}
            inputs = {}
            for name, src in sources.items():
                sm = self.store.manifest(src) or {}
                inputs[name] = str(self.store.step_dir(src) / sm["outputs"][name])
        except (KeyError, OSError, ValueError):
            return None
        return str(folder), outputs, inputs

    def _draw(self, step: Step, run_id: str, inputs: dict[str, Any], params: Any) -> None:
        folder = self.store.step_dir(step.id)
        if _run_id(folder) != run_id:
            return  # the step was run again since: its new run queues its own previews
        try:
            stored = {n: self.store.load(step.id, n) for n in step.outputs}
        except Exception as e:  # noqa: BLE001 -- a preview must never fail a run
            problems = [f"previews could not be drawn: {e}"]
        else:
            problems = draw_previews(step, folder, stored, inputs, params)
        if problems:
            _report(folder, step.id, run_id, problems)


def draw_previews(step: Step, folder: Path, outputs: dict[str, Any], inputs: dict[str, Any],
                  params: Any) -> list[str]:
    """Render every preview of `step` into `folder`; the problems met, as messages."""
    problems = []
    for p in step.previews:
        target = folder / f"preview_{p.name}.png"
        tmp = folder / f".preview_{p.name}.tmp.png"  # never a half-written PNG
        try:
            render_png(p.make(outputs, inputs, params), tmp)
            tmp.replace(target)
        except Exception as e:  # noqa: BLE001
            tmp.unlink(missing_ok=True)
            problems.append(f"preview '{p.name}' could not be drawn: {e}")
    return problems


def draw_files(step_id: str, run_id: str, folder: str, outputs: dict[str, str],
               inputs: dict[str, str], params: Any) -> list[str]:
    """The drawing process's job: open the stored files (never the session as a whole, whose
    crash recovery belongs to the running process) and draw step `step_id`'s previews."""
    from .steps import BY_ID

    if _run_id(Path(folder)) != run_id:
        return []
    try:
        stored = {n: load_path(Path(p)) for n, p in outputs.items()}
        loaded = {n: load_path(Path(p)) for n, p in inputs.items()}
    except Exception as e:  # noqa: BLE001
        return [f"previews could not be drawn: {e}"]
    return draw_previews(BY_ID[step_id], Path(folder), stored, loaded, params)


def _registered(step: Step) -> bool:
    from .steps import BY_ID

    return BY_ID.get(step.id) is step


def _process_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or getattr(_pool, "_broken", False):
            _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_drawing_process)
        return _pool


def _drawing_process() -> None:
    """A background process: lower priority and one thread, so the pipeline goes first."""
    import dask

    from .memwatch import limit_malloc_arenas

    if hasattr(os, "nice"):
        os.nice(5)
    # leave without tearing down ~2,000 modules one by one (1.2 s at the end of every run);
    # by then multiprocessing has delivered every result and there is nothing to flush
    atexit.register(os._exit, 0)
    dask.config.set(scheduler="synchronous")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # noqa: BLE001 -- only a speed setting
        pass
    limit_malloc_arenas()


def _run_id(folder: Path) -> str | None:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def _report(folder: Path, step_id: str, run_id: str, problems: list[str]) -> None:
    for msg in problems:
        log.warning("step %s: %s", step_id, msg)
    if _run_id(folder) != run_id:
        return
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m["warnings"] = list(m.get("warnings", [])) + problems
    tmp = path.with_name(".manifest.tmp.json")
    tmp.write_text(json.dumps(m, indent=1, default=jsonable))
    tmp.replace(path)
