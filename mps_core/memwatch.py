"""Peak memory of this process and its children (local dask workers) while a step runs.

The operating system keeps only a lifetime high-water mark per process, so a step's own
peak is sampled: a daemon thread reads the resident set sizes every `interval` seconds.
Short spikes between samples can be missed; the number is for reports and benchmarks,
not for enforcing limits.
"""

from __future__ import annotations

import threading

import psutil  # a dependency of dask.distributed


def tree_rss(proc: psutil.Process, children: list | None = None) -> int:
    """Resident bytes of `proc` and its descendants (vanished children count 0).
    children: the descendants when already listed (listing them scans all of /proc)."""
    total = 0
    for p in [proc, *(proc.children(recursive=True) if children is None else children)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


_RELIST_EVERY = 20  # samples between two listings of the child processes


class PeakMemory:
    """Context manager: `peak_bytes` is the largest sampled resident size so far."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._children: list = []
        self._samples = 0
        self._thread = threading.Thread(target=self._watch, name="mps-memwatch", daemon=True)

    def _sample(self) -> None:
        # The descendants (local dask worker processes) change rarely: listing them scans
        # all of /proc, which at every sample was 1 % of a run's CPU (measured).
        if self._samples % _RELIST_EVERY == 0:
            try:
                self._children = self._proc.children(recursive=True)
            except psutil.Error:
                self._children = []
        self._samples += 1
        self.peak_bytes = max(self.peak_bytes, tree_rss(self._proc, self._children))

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise, so a long run's
    resident size only ever grows). A no-op where there is no glibc. No gc.collect() here:
    runs happen in worker threads, and the desktop app collects only on its GUI thread."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_arenas_limited = False


def limit_malloc_arenas(n: int = 2) -> None:
    """Cap glibc's per-thread heaps. Each dask, zarr and codec thread otherwise gets a heap
    of its own that keeps freed chunk memory: measured on 20,000 frames, the resident size
    after 2a-3b was 794 MB with the default and 516 MB with 2 heaps, at the same speed.
    Affects only heaps created afterwards; a no-op where there is no glibc. Done once per
    process: mallopt while another thread trims the heaps deadlocked (seen in the GUI)."""
    import ctypes
    import ctypes.util

    global _arenas_limited
    if _arenas_limited:
        return
    _arenas_limited = True
    M_ARENA_MAX = -8
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_ARENA_MAX, n)
    except (OSError, AttributeError):
        pass
