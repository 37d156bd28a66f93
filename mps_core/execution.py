"""Where dask work runs: the embedded local scheduler or an existing distributed cluster.

Step 1 sizes it (workers, memory limit per worker) or names a scheduler address. Every
``compute`` goes through :meth:`Execution.compute`, which reports progress per finished task
and checks the cancel flag between tasks, so a long step can be stopped within a chunk.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import dask
from dask.callbacks import Callback

from .registry import Cancelled

ProgressFn = Callable[[float, str], None]


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def accumulator_chains(limit: int = 4) -> int:
    """Parallel in-place accumulators for a streamed sum over frame chunks (3b's SVD passes,
    7e's statistics): one per core, at most ``limit`` (each holds a whole partial result)."""
    return max(1, min(default_workers(), limit))


class _LocalProgress(Callback):
    """Counts finished tasks of one local compute; raises Cancelled before the next task."""

    def __init__(self, report: Callable[[int, int], None], cancel: threading.Event):
        super().__init__()
        self.report, self.cancel = report, cancel
        self.total, self.done = 1, 0

    def _start_state(self, dsk, state):
        self.total = max(1, sum(len(state[k]) for k in ("ready", "waiting", "running")))

    def _pretask(self, key, dsk, state):
        if self.cancel.is_set():
            raise Cancelled("cancelled by the user")

    def _posttask(self, key, result, dsk, state, worker_id):
        self.done += 1
        self.report(self.done, self.total)


class Execution:
    """A context manager owning the dask configuration (and client) for one run."""

    def __init__(self, n_workers: int = 0, memory_limit_gb: float = 4.0,
                 scheduler_address: str = ""):
        self.n_workers = n_workers or default_workers()
        self.memory_limit_bytes = int(memory_limit_gb * 1024**3)
        self.scheduler_address = scheduler_address
        self.client = None
        self._config = None

    def __enter__(self) -> "Execution":
        if self.scheduler_address:
            from distributed import Client

            # the current client of this thread while the run lasts, so every compute of the
            # run goes to the cluster. Not the process-wide default: a batch runs sessions in
            # parallel threads, and one session closing "the default" client cancelled the
            # other's computations (FutureCancelledError, seen in CI)
            self.client = Client(self.scheduler_address, timeout="10s", set_as_default=False)
            self._current = self.client.as_current()
            self._current.__enter__()
        else:
            self._config = dask.config.set(scheduler="threads", num_workers=self.n_workers)
            self._config.__enter__()
            # dask runs one task per worker thread; OpenCV's and BLAS's own threads would
            # oversubscribe the cores (measured: BLAS threads halve the SVD's speed here)
            import cv2
            from threadpoolctl import threadpool_limits

            self._cv_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            self._blas = threadpool_limits(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self._current.__exit__(*exc)
            self.client.close()
            self.client = None
        if self._config is not None:
            self._config.__exit__(*exc)
            self._config = None
            self._blas.restore_original_limits()
            import cv2

            cv2.setNumThreads(self._cv_threads)

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None) if self.client else None

    def compute(self, *collections: Any, progress: ProgressFn | None = None,
                cancel: threading.Event | None = None, message: str = "") -> tuple:
        cancel = cancel or threading.Event()
        if cancel.is_set():
            raise Cancelled("cancelled by the user")
        report = (lambda d, t: progress(d / t, f"{message} {d}/{t}".strip())) if progress \
            else (lambda d, t: None)
        if self.client is None:
            # no graph optimisation: it fuses the movie readers into every consumer, so a
            # movie written and scored in one pass was decoded twice (measured)
            with _LocalProgress(report, cancel):
                return dask.compute(*collections, optimize_graph=False)
        return self._compute_distributed(collections, report, cancel)

    def _compute_distributed(self, collections, report, cancel) -> tuple:
        from dask.base import unpack_collections
        from distributed import as_completed, futures_of

        # same calling convention as dask.compute: arguments may be lists / dicts holding
        # dask objects, or plain values (client.persist accepts only dask collections)
        flat, repack = unpack_collections(*collections, traverse=True)
        if not flat:
            return repack([])
        # unoptimised like the local path: fusing would re-key tasks and read shared inputs
        # once per consumer
        persisted = self.client.persist(flat, optimize_graph=False)
        futures = futures_of(persisted)
        total = max(1, len(futures))
        for i, _ in enumerate(as_completed(futures), 1):
            report(i, total)
            if cancel.is_set():
                self.client.cancel(futures)
                raise Cancelled("cancelled by the user")
        return repack(self.client.compute(persisted, sync=True, optimize_graph=False))
