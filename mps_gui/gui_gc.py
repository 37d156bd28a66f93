"""Garbage collection only on the GUI thread while a window is open.

Python's cyclic collector runs in whichever thread happens to allocate. When the pipeline
worker triggers it, Qt objects caught in reference cycles (plot items are) would be deleted
off the GUI thread, which crashes Qt at random. While any window is open, automatic
collection is off and a GUI-thread timer collects instead.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

_users: set[int] = set()


class GuiThreadCollector(QObject):
    def __init__(self, parent: QObject, interval_ms: int = 500):
        super().__init__(parent)
        self._threshold = gc.get_threshold()
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.collect)
        self._timer.start(interval_ms)
        _users.add(id(self))
        gc.disable()

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
        if not _users:
            gc.enable()
