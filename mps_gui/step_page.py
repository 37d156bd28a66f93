"""One step's page: what it does, its parameters, Run / Cancel / Next step, its state.

The form is generated from the step's parameter model (:mod:`mps_gui.paramform`); the page
adds the controls and the words around it. Pages never run anything themselves: they ask the
window through signals, and the window tells them what state to show.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea, QVBoxLayout, QWidget,
)

from .paramform import ParamForm


class StepPage(QWidget):
    run_requested = Signal(str)
    cancel_requested = Signal()
    next_requested = Signal(str)
    params_changed = Signal(str)          # the form holds a new valid model
    help_requested = Signal(str)

    def __init__(self, step, parent=None):
        super().__init__(parent)
        self.step = step
        self._blocked_reason: str | None = None
        self._running = False
        self._cancellable = False   # a run is in progress (maybe of other steps)

        title = QLabel(f"<h2>{step.id} &nbsp; {step.title}</h2>")
        self.help_btn = QPushButton("Help for this step")
        self.help_btn.setToolTip("What this step does, what its plots should look like, "
                                 "and every parameter, from the user guide")
        self.help_btn.clicked.connect(lambda: self.help_requested.emit(step.id))
        head = QHBoxLayout()
        head.addWidget(title, 1)
        head.addWidget(self.help_btn)
        stage = QLabel(f"<i>{step.stage}</i>")
        summary = QLabel(step.summary)
        summary.setWordWrap(True)
        self.state = QLabel()
        self.state.setWordWrap(True)
        self.state.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reason = QLabel()
        self.reason.setWordWrap(True)
        self.reason.setStyleSheet("color: #b00020")

        self.form = ParamForm(step)
        self.form.changed.connect(self._form_changed)
        self.form.validity_changed.connect(lambda ok, why: self._refresh_buttons())
        self.extra = QVBoxLayout()        # special editors (3a crop, 1 new session) go here

        self.run_btn = QPushButton("Run")
        self.run_btn.setDefault(True)
        self.cancel_btn = QPushButton("Cancel")
        self.next_btn = QPushButton("Next step")
        self.run_btn.clicked.connect(lambda: self.run_requested.emit(step.id))
        self.cancel_btn.clicked.connect(self.cancel_requested.emit)
        self.next_btn.clicked.connect(lambda: self.next_requested.emit(step.id))
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setVisible(False)
        buttons = QHBoxLayout()
        for b in (self.run_btn, self.cancel_btn):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.next_btn)

        body = QWidget()
        lay = QVBoxLayout(body)
        lay.addLayout(head)
        lay.addWidget(stage)
        lay.addWidget(summary)
        if not step.implemented:
            na = QLabel("This step is not available yet in this version of MPS.")
            na.setStyleSheet("color: #9e9e9e; font-weight: bold")
            lay.addWidget(na)
        lay.addLayout(self.extra)
        lay.addWidget(self.form)
        lay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.addWidget(scroll, 1)
        outer.addWidget(self.state)
        outer.addWidget(self.reason)
        outer.addWidget(self.progress)
        outer.addLayout(buttons)
        self._refresh_buttons()

    # -- what the window tells the page -----------------------------------------------------
    def set_blocked(self, reason: str | None) -> None:
        """Why Run is not possible now (missing inputs, no session), or None."""
        self._blocked_reason = reason
        self._refresh_buttons()

    def set_running(self, running: bool) -> None:
        self._running = running
        self.form.set_editable(not running)
        self.progress.setVisible(running)
        if running:
            self.progress.setValue(0)
        self._refresh_buttons()

    def is_running(self) -> bool:
        return self._running

    def set_cancellable(self, on: bool) -> None:
        self._cancellable = on
        self._refresh_buttons()

    def set_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress.setFormat(f"{fraction:.0%}  {message}")

    def show_state(self, status: str, manifest: dict | None, failure: dict | None) -> None:
        text = f"Status: <b>{status}</b>"
        if status == "failed" and failure:
            text += f" — {failure.get('error', '')} (log: {failure.get('log', '')})"
        elif manifest:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(manifest.get("finished_time", 0)))
            text += f" — last run {when}, took {manifest.get('duration_s', 0):.1f} s"
            if manifest.get("warnings"):
                text += "<br>Warnings: " + "; ".join(manifest["warnings"][:5])
            if status == "stale":
                text += "<br>An earlier step changed since: run this step again."
        self.state.setText(text)

    # -- internals --------------------------------------------------------------------------
    def _form_changed(self) -> None:
        if self.form.params() is not None:
            self.params_changed.emit(self.step.id)
        self._refresh_buttons()

    def run_blocker(self) -> str | None:
        if not self.step.implemented:
            return "not available yet in this version"
        if self._running:
            return "running"
        if self.form.error():
            return self.form.error()
        return self._blocked_reason

    def _refresh_buttons(self) -> None:
        why = self.run_blocker()
        self.run_btn.setEnabled(why is None)
        self.run_btn.setToolTip(why or f"Run step {self.step.id}")
        self.cancel_btn.setEnabled(self._running or self._cancellable)
        self.reason.setText("" if why in (None, "running") else f"Cannot run: {why}")
