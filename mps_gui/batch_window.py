"""Automation > Batch: many sessions with one parameter set, unattended (`mps batch` in a window).

The table lists the sessions (input folder, output folder, ids); Run hands them to
:func:`mps_core.batch.run_batch` in a worker thread, whose events update each row's status and
progress. A failing session is marked with its cause and the batch goes on; at the end the
summary (the same CSV `mps batch` writes) is in the table and in the output root.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QThread, Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDialog, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
    QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout,
)

from mps_core.batch import SessionEntry, summary_path

COLUMNS = ("Input folder", "Output folder", "Animal", "Session", "Status", "Progress",
           "Units", "Frames removed", "Cause")


class BatchThread(QThread):
    event = Signal(object)            # mps_core.batch.BatchEvent (may come from any thread)
    finished_with = Signal(object)    # list[SessionOutcome], or an error string

    def __init__(self, entries, params, rerun: bool, stop: str | None, summary: Path | None,
                 parent=None):
        super().__init__(parent)
        self.entries, self.params, self.rerun, self.stop = entries, params, rerun, stop
        self.summary = summary
        self.cancel_event = threading.Event()

    def run(self) -> None:
        from mps_core.batch import run_batch

        try:
            outcomes = run_batch(self.entries, self.params, on_event=self.event.emit,
                                 cancel=self.cancel_event, rerun=self.rerun, stop=self.stop,
                                 summary=self.summary)
        except Exception as e:  # noqa: BLE001 -- a bad list or parameters: shown, not raised
            self.finished_with.emit(str(e))
            return
        self.finished_with.emit(outcomes)


class BatchWindow(QDialog):
    def __init__(self, params, steps, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Batch: many sessions")
        self.params, self.steps = params, steps
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        buttons = QVBoxLayout()
        for text, slot in (("Add folders...", self._add_dialog), ("Load list...", self._load_list),
                           ("Remove", self.remove_selected), ("Up", lambda: self.move(-1)),
                           ("Down", lambda: self.move(1))):
            b = QPushButton(text)
            b.clicked.connect(slot)
            buttons.addWidget(b)
        buttons.addStretch(1)
        top = QHBoxLayout()
        top.addWidget(self.table, 1)
        top.addLayout(buttons)
        self.summary = QLineEdit()
        self.summary.setPlaceholderText("folder (or .csv file) for the summary table (default: none)")
        self.rerun = QCheckBox("Re-run sessions that are already done")
        self.stop = QComboBox()
        self.stop.addItem("all steps", None)
        for s in steps:
            if s.implemented:
                self.stop.addItem(f"up to {s.id} {s.title}", s.id)
        opts = QHBoxLayout()
        opts.addWidget(QLabel("Run"))
        opts.addWidget(self.stop)
        opts.addWidget(self.rerun)
        opts.addWidget(QLabel("Summary"))
        opts.addWidget(self.summary, 1)
        self.message = QLabel("Add the input folder of each session. Every session uses the "
                              "parameters of the main window (step 1's folders and ids are set "
                              "per session).")
        self.message.setWordWrap(True)
        self.run_btn = QPushButton("Run batch")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        bottom = QHBoxLayout()
        bottom.addWidget(self.run_btn)
        bottom.addWidget(self.cancel_btn)
        bottom.addStretch(1)
        bottom.addWidget(close)
        lay = QVBoxLayout(self)
        lay.addLayout(top, 1)
        lay.addLayout(opts)
        lay.addWidget(self.message)
        lay.addLayout(bottom)
        self.thread: BatchThread | None = None
        self.outcomes = None
        self.resize(1000, 520)

    # -- the list -----------------------------------------------------------------------------
    def add_session(self, input_dir: str, output_dir: str = "", animal: str = "",
                    session: str = "") -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        for col, text in enumerate((input_dir, output_dir, animal, session, "", "", "", "", "")):
            self.table.setItem(row, col, QTableWidgetItem(text))

    def entries(self) -> list[SessionEntry]:
        out = []
        for r in range(self.table.rowCount()):
            text = [self.table.item(r, c).text().strip() for c in range(4)]
            out.append(SessionEntry(Path(text[0]).expanduser(),
                                    Path(text[1]).expanduser() if text[1] else None,
                                    text[2] or None, text[3] or None))
        return out

    def _add_dialog(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "A session's input folder")
        if d:
            self.add_session(d)

    def _load_list(self) -> None:
        from mps_core.batch import read_session_list

        path = QFileDialog.getOpenFileName(self, "Session list", "", "Session lists (*.txt *.tsv)")[0]
        if not path:
            return
        try:
            entries = read_session_list(Path(path))
        except ValueError as e:
            self.message.setText(f"<span style='color:#b00020'>{e}</span>")
            return
        for e in entries:
            self.add_session(str(e.input_dir), str(e.output_dir or ""), e.animal_id or "",
                             e.session_id or "")

    def remove_selected(self) -> None:
        for r in sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True):
            self.table.removeRow(r)

    def move(self, step: int) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        if len(rows) != 1:
            return
        r, t = rows[0], rows[0] + step
        if not 0 <= t < self.table.rowCount():
            return
        a = [self.table.takeItem(r, c) for c in range(self.table.columnCount())]
        b = [self.table.takeItem(t, c) for c in range(self.table.columnCount())]
        for c in range(self.table.columnCount()):
            self.table.setItem(r, c, b[c])
            self.table.setItem(t, c, a[c])
        self.table.selectRow(t)

    # -- running ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.running() or not self.table.rowCount():
            return
        self.outcomes = None
        summary = self.summary.text().strip()
        self.thread = BatchThread(self.entries(), self.params.copy(), self.rerun.isChecked(),
                                  self.stop.currentData(),
                                  summary_path(Path(summary).expanduser()) if summary else None,
                                  self)
        self.thread.event.connect(self._event)
        self.thread.finished_with.connect(self._finished)
        for r in range(self.table.rowCount()):
            self._set(r, 4, "waiting")
            self._set(r, 5, "")
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.message.setText("Running...")
        self.thread.start()

    def cancel(self) -> None:
        if self.thread is not None:
            self.thread.cancel_event.set()
            self.message.setText("Cancelling: the running session stops at its next check.")

    def running(self) -> bool:
        return self.thread is not None and self.thread.isRunning()

    def _set(self, row: int, col: int, text: str) -> None:
        item = self.table.item(row, col)
        if item is None:
            self.table.setItem(row, col, QTableWidgetItem(text))
        else:
            item.setText(text)

    def _event(self, ev) -> None:
        if not 0 <= ev.index < self.table.rowCount():
            return
        if ev.kind in ("started", "step", "progress"):
            self._set(ev.index, 4, f"running {ev.step_id}".strip())
        else:
            self._set(ev.index, 4, ev.kind)
        self._set(ev.index, 5, f"{ev.fraction:.0%}")

    def _finished(self, result) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if isinstance(result, str):
            self.outcomes = []
            self.message.setText(f"<span style='color:#b00020'>{result}</span>")
            return
        self.outcomes = result
        for r, o in enumerate(result):
            self._set(r, 1, str(o.entry.output_dir))
            self._set(r, 4, o.status)
            self._set(r, 6, "" if o.units_found is None else str(o.units_found))
            self._set(r, 7, "" if o.frames_removed is None else str(o.frames_removed))
            cause = f"step {o.failed_step}: {o.cause}" if o.failed_step else (o.cause or "")
            self._set(r, 8, cause)
        counts = {}
        for o in result:
            counts[o.status] = counts.get(o.status, 0) + 1
        self.message.setText("Batch finished: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
        from .notify_dialog import notify_batch_end

        notify_batch_end(result, self.thread.summary if self.thread else None, parent=self)

    def reject(self) -> None:
        if self.running():
            self.cancel()
            self.thread.wait(60000)
        super().reject()
