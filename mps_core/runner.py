"""The runner: run all steps, a range, or one step, through the session store.

The GUI and the ``mps`` command both drive the pipeline through :class:`Runner`, so a run
tuned by hand and a run replayed from a parameter file are the same run. For each step the
runner checks that the inputs exist, loads them lazily from the store, calls the step's pure
function, persists its outputs into a temporary folder and commits it; its previews are then
drawn in the background while the next step runs (all drawn when `run` returns). A failure
or a cancel leaves the previous good result of that step untouched.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .execution import Execution
from .memwatch import PeakMemory, limit_malloc_arenas, release_free_memory
from .params import ParamSet
from .preview_drawer import SEPARATE_DRAWING_MIN_GB, PreviewDrawer
from .registry import (HOLD_SHARE, Cancelled, Step, StepError, StepNotImplemented,
                       chunk_frames_for, hold_if_small)
from .store import SessionStore, library_versions, released_message

log = logging.getLogger("mps")

ProgressCb = Callable[[str, float, str], None]   # (step id, fraction, message)
EventCb = Callable[[str, str, str], None]        # (step id, event, message)


class PlanError(ValueError):
    """The requested run cannot start (unknown step, missing input, not implemented)."""


class StepFailed(RuntimeError):
    def __init__(self, step: Step, message: str):
        super().__init__(f"step {step.id} ({step.title}) failed: {message}")
        self.step, self.message = step, message


@dataclass
class StepResult:
    step_id: str
    status: str            # done | failed | cancelled
    duration_s: float
    message: str = ""
    warnings: list[str] = field(default_factory=list)


class RunContext:
    """The Context a step function sees during a runner-driven run."""

    def __init__(self, step: Step, execution: Execution, cancel: threading.Event,
                 on_progress: ProgressCb | None, output_dir: Path | None = None):
        self.step, self.execution, self.cancel = step, execution, cancel
        # files a step writes itself (exports) go here and are committed with its arrays
        self.output_dir = output_dir
        self._on_progress = on_progress
        self.warnings: list[str] = []

    def progress(self, fraction: float, message: str = "") -> None:
        if self._on_progress:
            self._on_progress(self.step.id, max(0.0, min(1.0, fraction)), message)

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("cancelled by the user")

    def compute(self, *collections: Any, message: str = "") -> tuple:
        return self.execution.compute(*collections, progress=self.progress,
                                      cancel=self.cancel, message=message)

    def chunk_frames(self, frame_bytes: int, copies: float = 4.0) -> int:
        return chunk_frames_for(self.execution.memory_limit_bytes, frame_bytes, copies)

    def hold(self, data: Any, share: float = HOLD_SHARE) -> Any:
        if self.execution.client is not None:
            return data  # the data would travel to the cluster's workers at every pass
        return hold_if_small(data, self.memory_limit_bytes, share,
                             lambda d: self.compute(d, message="reading the movie"))

    @property
    def n_workers(self) -> int:
        return self.execution.n_workers

    @property
    def memory_limit_bytes(self) -> int:
        return self.execution.memory_limit_bytes

    def warn(self, message: str) -> None:
        log.warning("step %s: %s", self.step.id, message)
        self.warnings.append(message)


class Runner:
    def __init__(self, steps: Sequence[Step], params: ParamSet, store: SessionStore,
                 on_progress: ProgressCb | None = None, on_event: EventCb | None = None):
        self.steps = list(steps)
        self.by_id = {s.id: s for s in self.steps}
        self.order = {s.id: i for i, s in enumerate(self.steps)}
        self.producer = {name: s.id for s in self.steps for name in s.outputs}
        self.params, self.store = params, store
        self.on_progress, self.on_event = on_progress, on_event
        self.previews = PreviewDrawer(store)

    # -- planning -------------------------------------------------------------------------
    def resolve(self, step_id: str | None, default: int) -> int:
        if step_id is None:
            return default
        if step_id not in self.order:
            raise PlanError(f"unknown step '{step_id}'; steps are " + ", ".join(self.order))
        return self.order[step_id]

    def plan(self, start: str | None = None, stop: str | None = None) -> list[Step]:
        """The steps from `start` to `stop` (inclusive), checked to be runnable."""
        i, j = self.resolve(start, 0), self.resolve(stop, len(self.steps) - 1)
        if i > j:
            raise PlanError(f"--from {start} comes after --to {stop}")
        chosen = self.steps[i:j + 1]
        todo = [s for s in chosen if not s.implemented]
        if todo:
            done = [s.id for s in self.steps if s.implemented]
            last = _last_of_prefix(self.steps)
            hint = f"; run up to {last} with --to {last}" if last and self.order[last] >= i else ""
            raise PlanError(f"step {todo[0].id} ({todo[0].title}) is not implemented yet in this "
                            f"version (implemented: {_ranges(done, self.order)}){hint}")
        planned = {s.id for s in chosen}
        for s in chosen:
            for name in s.inputs:
                src = self.producer.get(name)
                if src is None:
                    raise PlanError(f"step {s.id} needs '{name}', which no step produces")
                if src in planned:
                    continue
                if self.store.released(src, name):
                    raise PlanError(f"step {s.id} ({s.title}) cannot run: "
                                    f"{released_message(src, name)}")
                if not self.store.has(src, name):
                    raise PlanError(f"step {s.id} ({s.title}) needs '{name}' from step {src}, "
                                    f"which has no result in {self.store.root}; run from step "
                                    f"{src} (or earlier) instead")
        return chosen

    # -- running --------------------------------------------------------------------------
    def run(self, start: str | None = None, stop: str | None = None,
            cancel: threading.Event | None = None) -> list[StepResult]:
        """Run a range of steps. Raises PlanError before anything runs, StepFailed on failure."""
        cancel = cancel or threading.Event()
        limit_malloc_arenas()  # once per process; the command and the app do it at start
        chosen = self.plan(start, stop)
        config = self.params[self.steps[0].id]
        for s in [self.steps[0]] + [s for s in chosen if s is not self.steps[0]]:
            if s.preflight is not None:
                try:
                    s.preflight(self.params[s.id])
                except StepError as e:
                    raise PlanError(f"step {s.id} ({s.title}): {e}") from None
        self.params.save(self.store.params_path)  # auto-save at every run
        handler = _attach_log(self.store.log_path)
        results: list[StepResult] = []
        try:
            log.info("run %s..%s in %s", chosen[0].id, chosen[-1].id, self.store.root)
            self.previews.separate = config.memory_limit_gb >= SEPARATE_DRAWING_MIN_GB
            with Execution(config.n_workers, config.memory_limit_gb,
                           config.scheduler_address) as ex:
                if ex.dashboard_link:
                    log.info("dask dashboard: %s", ex.dashboard_link)
                try:
                    for s in chosen:
                        res = self.run_step(s, ex, cancel)
                        results.append(res)
                        if res.status == "cancelled":
                            break
                finally:
                    self.previews.close()
        finally:
            _detach_log(handler)
        return results

    def run_step(self, step: Step, execution: Execution, cancel: threading.Event) -> StepResult:
        params = self.params[step.id]
        self._event(step.id, "started", step.title)
        log.info("step %s (%s) started", step.id, step.title)
        t0 = time.time()
        run = self.store.begin(step.id)
        ctx = RunContext(step, execution, cancel, self.on_progress, output_dir=run.tmp)
        release_free_memory()  # what earlier steps left behind is not this step's peak
        memory = PeakMemory().__enter__()
        try:
            inputs, fingerprints = self._load_inputs(step)
            outputs = step(params, ctx, **inputs)
            jobs = [j for n, v in outputs.items() for j in run.put(n, v)]
            if jobs:  # one pass: outputs that share inputs read them once
                ctx.compute(*jobs, message="writing results")
            ctx.check_cancel()  # a cancel that came during the last task still keeps the old result
            manifest = {
                "step": step.id, "title": step.title, "run_id": run.run_id, "status": "done",
                "params": params.model_dump(mode="json"), "inputs": fingerprints,
                "outputs": {n: run.path_of(n).name for n in outputs},
                "versions": library_versions(), "started": now_iso_from(t0),
                "duration_s": round(time.time() - t0, 3), "finished_time": time.time(),
                "warnings": ctx.warnings,
                "peak_memory_mb": round(memory.peak_mb, 1),
                "execution": {"workers": execution.n_workers,
                              "memory_limit_bytes": execution.memory_limit_bytes,
                              "scheduler": execution.scheduler_address or "local threads"},
            }
            run.commit(manifest)
            self.previews.submit(step, run.run_id, inputs, params,
                                 {n: f["step"] for n, f in fingerprints.items()})
        except Cancelled:
            run.abort()
            log.info("step %s cancelled; its previous result is unchanged", step.id)
            self._event(step.id, "cancelled", "cancelled; previous result kept")
            return StepResult(step.id, "cancelled", time.time() - t0, "cancelled")
        except (StepError, StepNotImplemented, ValueError) as e:
            run.abort()
            if not isinstance(e, StepError):  # raised deeper down: keep where, for the log
                log.error("step %s: %s", step.id, traceback.format_exc())
            return self._fail(step, str(e), t0)
        except BaseException as e:  # noqa: BLE001 -- any crash must leave the store intact
            run.abort()
            log.error("step %s crashed:\n%s", step.id, traceback.format_exc())
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                self.store.record_failure(step.id, "interrupted")
                raise
            return self._fail(step, f"{type(e).__name__}: {e}", t0)
        finally:
            memory.__exit__(None, None, None)
        dt = time.time() - t0
        log.info("step %s done in %.1f s (peak memory %.0f MB)", step.id, dt, memory.peak_mb)
        self._release_intermediates()
        self._event(step.id, "done", f"{dt:.1f} s")
        return StepResult(step.id, "done", dt, warnings=ctx.warnings)

    def _release_intermediates(self) -> None:
        """Delete intermediate movies that every step reading them has used (if asked)."""
        if not getattr(self.params[self.steps[0].id], "delete_intermediate_movies", False):
            return
        status = self.store.statuses([s.id for s in self.steps])
        for s in self.steps:
            for name in s.intermediate:
                readers = [r for r in self.steps if name in r.inputs + r.optional_inputs]
                if not (readers and all(status[r.id] == "done" for r in readers)) \
                        or not self.store.has(s.id, name):
                    continue
                self.previews.wait()  # a preview still being drawn may be reading it
                if self.store.release(s.id, name):
                    log.info("deleted '%s' of step %s to save disk: every step reading it "
                             "is done", name, s.id)

    def _fail(self, step: Step, message: str, t0: float) -> StepResult:
        log.error("step %s failed: %s", step.id, message)
        self.store.record_failure(step.id, message)
        self._event(step.id, "failed", message)
        raise StepFailed(step, message)

    def _load_inputs(self, step: Step) -> tuple[dict[str, Any], dict[str, Any]]:
        inputs, prints = {}, {}
        for name in step.inputs + step.optional_inputs:
            src = self.producer[name]
            if not self.store.has(src, name):
                if name in step.optional_inputs:
                    continue
                raise StepError(f"input '{name}' from step {src} is missing")
            inputs[name] = self.store.load(src, name)
            prints[name] = {"step": src, "run_id": self.store.manifest(src)["run_id"]}
        return inputs, prints

    def _event(self, step_id: str, event: str, message: str) -> None:
        if self.on_event:
            self.on_event(step_id, event, message)


def now_iso_from(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


# threads running a Runner now: a batch runs several sessions at once in one process, and
# each session's log must not receive the other sessions' lines
_RUN_THREADS: set[int] = set()


class _OwnThreadFilter(logging.Filter):
    """Keep a record if this run's thread wrote it, or a thread that runs no session (dask
    helpers, the GUI): the "mps" logger is shared by every run in the process."""

    def __init__(self) -> None:
        super().__init__()
        self.owner = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.owner or record.thread not in _RUN_THREADS


def _attach_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(_OwnThreadFilter())
    _RUN_THREADS.add(threading.get_ident())
    lg = logging.getLogger("mps")
    lg.setLevel(logging.INFO)
    lg.addHandler(handler)
    return handler


def _detach_log(handler: logging.Handler) -> None:
    logging.getLogger("mps").removeHandler(handler)
    handler.close()
    _RUN_THREADS.discard(threading.get_ident())


def _last_of_prefix(steps: Sequence[Step]) -> str | None:
    last = None
    for s in steps:
        if not s.implemented:
            break
        last = s.id
    return last


def _ranges(ids: list[str], order: dict[str, int]) -> str:
    """'1..2f, 5a' style summary of step ids."""
    if not ids:
        return "none"
    groups, cur = [], [ids[0]]
    for sid in ids[1:]:
        if order[sid] == order[cur[-1]] + 1:
            cur.append(sid)
        else:
            groups.append(cur)
            cur = [sid]
    groups.append(cur)
    return ", ".join(g[0] if len(g) == 1 else f"{g[0]}..{g[-1]}" for g in groups)
