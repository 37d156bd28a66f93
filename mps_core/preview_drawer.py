"""Step previews drawn on one background thread after each step is committed.

Drawing the PNG previews with matplotlib took about a quarter of a headless run's wall time
(22 s of 79 s for steps 3a-8c on the bench's CA1 recording), all of it single-threaded Python
while the second core idled. Drawn after the commit, they overlap the next step's
computation. A preview is for looking at, never an input, so a step is done when its arrays
are committed; a preview that cannot be drawn only adds a warning to the step's manifest.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .figures import render_png
from .registry import Step
from .store import SessionStore, jsonable

log = logging.getLogger("mps")


class PreviewDrawer:
    """Queue of preview jobs for one store; `wait()` before anything reads or deletes them."""

    def __init__(self, store: SessionStore):
        self.store = store
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def submit(self, step: Step, run_id: str, inputs: dict[str, Any], params: Any) -> None:
        if not step.previews:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mps-previews")
        self._pending.append(self._pool.submit(self._draw, step, run_id, inputs, params))

    def wait(self) -> None:
        """Block until every queued preview is drawn (or has failed and been reported)."""
        pending, self._pending = self._pending, []
        for job in pending:
            job.result()

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _draw(self, step: Step, run_id: str, inputs: dict[str, Any], params: Any) -> None:
        if not self._current(step.id, run_id):
            return  # the step was run again since: its new run queues its own previews
        folder = self.store.step_dir(step.id)
        problems = []
        try:
            stored = {n: self.store.load(step.id, n) for n in step.outputs}
        except Exception as e:  # noqa: BLE001 -- a preview must never fail a run
            problems = [f"previews could not be drawn: {e}"]
            stored = None
        for p in step.previews if stored is not None else ():
            target = folder / f"preview_{p.name}.png"
            tmp = folder / f".preview_{p.name}.tmp.png"  # never a half-written PNG
            try:
                render_png(p.make(stored, inputs, params), tmp)
                tmp.replace(target)
            except Exception as e:  # noqa: BLE001
                tmp.unlink(missing_ok=True)
                problems.append(f"preview '{p.name}' could not be drawn: {e}")
        if problems:
            self._report(step.id, run_id, problems)

    def _current(self, step_id: str, run_id: str) -> bool:
        m = self.store.manifest(step_id)
        return bool(m) and m.get("run_id") == run_id

    def _report(self, step_id: str, run_id: str, problems: list[str]) -> None:
        for msg in problems:
            log.warning("step %s: %s", step_id, msg)
        if not self._current(step_id, run_id):
            return
        path = self.store.step_dir(step_id) / "manifest.json"
        m = json.loads(path.read_text())
        m["warnings"] = list(m.get("warnings", [])) + problems
        tmp = path.with_name(".manifest.tmp.json")
        tmp.write_text(json.dumps(m, indent=1, default=jsonable))
        tmp.replace(path)
