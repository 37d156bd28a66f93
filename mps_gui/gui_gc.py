"""Garbage collection only on the GUI thread while a window is open.

Python's cyclic collector runs in whichever thread happens to allocate. When the pipeline
worker triggers it, Qt objects caught in reference cycles (plot items are) would be deleted
off the GUI thread, which crashes or deadlocks Qt at random. While any window is open,
automatic collection is off and a GUI-thread timer collects instead.

Automatic collection is turned off with a zero threshold, not gc.disable(): dask's slicing
runs under a `disable_gc` decorator that re-enables the collector after every call (it
remembers the state of when dask was imported), which undid gc.disable() within seconds.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

_users: set[int] = set()
_saved_threshold: tuple[int, ...] | None = None


class GuiThreadCollector(QObject):
    def __init__(self, parent: QObject, interval_ms: int = 500):
        global _saved_threshold
        super().__init__(parent)
        if not _users:
            _saved_threshold = gc.get_threshold()
            gc.set_threshold(0)  # no automatic collection in any thread
        self._threshold = _saved_threshold
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.collect)
        self._timer.start(interval_ms)
        _users.add(id(self))

    def collect(self) -> None:
        """Collect the generations whose counts passed the usual thresholds."""
        c0, c1, c2 = gc.get_count()
        t0, t1, t2 = self._threshold
        if c0 > t0:
            gen = 2 if (c1 > t1 and c2 > t2) else 1 if c1 > t1 else 0
            gc.collect(gen)

    def stop(self) -> None:
        self._timer.stop()
        _users.discard(id(self))
        if not _users and _saved_threshold is not None:
            gc.set_threshold(*_saved_threshold)
