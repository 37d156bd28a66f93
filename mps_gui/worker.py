"""Work off the GUI thread: pipeline runs and preview building.

Workers never touch widgets; they talk to the window only through signals, which Qt queues
onto the GUI thread. A run is the same :class:`~mps_core.runner.Runner` call the ``mps``
command makes, on a copy of the parameters taken when Run was pressed.
"""

from __future__ import annotations

import logging
import threading
import traceback

from PySide6.QtCore import QObject, QThread, Signal

from mps_core.runner import PlanError, StepFailed


class RunThread(QThread):
    """Runs steps start..stop; emits progress and per-step events, then one outcome signal."""

    progress = Signal(str, float, str)      # step id, fraction, message
    step_event = Signal(str, str, str)      # step id, started|done|failed|cancelled, message
    outcome = Signal(str, str)              # done|cancelled|failed|refused, message

    def __init__(self, session, start: str, stop: str, parent=None):
        super().__init__(parent)
        self.start_id, self.stop_id = start, stop
        self.cancel_event = threading.Event()
        # a snapshot: edits made while the run goes on apply to the next run
        self.params = session.params.copy()
        self.store = session.store
        self.steps = session.steps

    def cancel(self) -> None:
        self.cancel_event.set()

    def run(self) -> None:  # runs in the worker thread
        from mps_core.runner import Runner

        runner = Runner(self.steps, self.params, self.store,
                        on_progress=self.progress.emit, on_event=self.step_event.emit)
        try:
            results = runner.run(self.start_id, self.stop_id, cancel=self.cancel_event)
        except PlanError as e:
            self.outcome.emit("refused", str(e))
            return
        except StepFailed as e:
            self.outcome.emit("failed", str(e))
            return
        except Exception as e:  # noqa: BLE001 -- reported in the window, never a silent death
            logging.getLogger("mps").error("run crashed:\n%s", traceback.format_exc())
            self.outcome.emit("failed", f"{type(e).__name__}: {e}")
            return
        if results and results[-1].status == "cancelled":
            self.outcome.emit("cancelled", f"step {results[-1].step_id} cancelled; "
                                           "its previous result is unchanged")
        else:
            total = sum(r.duration_s for r in results)
            self.outcome.emit("done", f"steps {results[0].step_id}..{results[-1].step_id} "
                                      f"done in {total:.1f} s" if results else "nothing to run")


class PreviewThread(QThread):
    """Rebuilds a finished step's preview figures from the store (they may read the movie)."""

    ready = Signal(str, object)   # step id, list[StoredPreview]

    def __init__(self, step, store, steps, parent=None):
        super().__init__(parent)
        self.step, self.store, self.steps = step, store, steps

    def run(self) -> None:
        from mps_core.previews import StoredPreview, stored_previews

        try:
            previews = stored_previews(self.step, self.store, self.steps)
        except Exception as e:  # noqa: BLE001 -- an unreadable result is shown, not raised
            previews = [StoredPreview("error", "error", None, f"{type(e).__name__}: {e}")]
        self.ready.emit(self.step.id, previews)


class LogBridge(QObject):
    """A logging handler's signal: records from any thread reach the log pane safely."""

    line = Signal(str, int)   # text, level


class QtLogHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.bridge = LogBridge()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.bridge.line.emit(self.format(record), record.levelno)
        except RuntimeError:  # the window is gone (shutdown): nothing to show
            pass
