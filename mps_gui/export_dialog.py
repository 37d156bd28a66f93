"""Tools > Export video / Export movie: the `mps export-video` / `export-movie` in a dialog.

The export runs in a worker thread with a progress bar and a Cancel that deletes the partial
file; the dialog only collects the choices and shows the outcome.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QThread, Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDialog, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
    QProgressBar, QPushButton, QVBoxLayout,
)

from mps_core.movies import COLORMAPS, STAGES

from .dialogs import field_with_button

MOVIE_FORMATS = ("tiff", "npy", "mat", "zarr")


class ExportThread(QThread):
    progress = Signal(float, str)
    outcome = Signal(bool, str)          # ok, one line

    def __init__(self, job, parent=None):
        super().__init__(parent)
        self.job = job
        self.cancel_event = threading.Event()

    def run(self) -> None:
        from mps_core.registry import Cancelled

        try:
            result = self.job(self.progress.emit, self.cancel_event)
        except Cancelled:
            self.outcome.emit(False, "export cancelled; no file was left behind")
        except Exception as e:  # noqa: BLE001 -- shown to the user as one line
            self.outcome.emit(False, str(e))
        else:
            self.outcome.emit(True, result.line())


class ExportDialog(QDialog):
    """kind "video" writes an MP4; kind "movie" writes TIFF / .npy / .mat / zarr."""

    def __init__(self, store, kind: str = "video", parent=None):
        super().__init__(parent)
        self.store, self.kind = store, kind
        self.setWindowTitle("Export video (MP4)" if kind == "video" else "Export movie")
        self.stage = QComboBox()
        for name, info in STAGES.items():
            self.stage.addItem(f"{name}: {info.title}", name)
        self.frames = QLineEdit()
        self.frames.setPlaceholderText("all frames, or START:STOP:STEP e.g. 0:2000:2")
        self.target = QLineEdit()
        target_row = field_with_button(self.target, self._browse)
        form = QFormLayout()
        form.addRow("Stage", self.stage)
        if kind == "video":
            self.compare = QComboBox()
            self.compare.addItem("(none)", None)
            for name, info in STAGES.items():
                self.compare.addItem(f"{name}: {info.title}", name)
            self.cmap = QComboBox()
            self.cmap.addItems(list(COLORMAPS))
            self.contours = QCheckBox("Outline the final units")
            form.addRow("Side by side with", self.compare)
            form.addRow("Colour map", self.cmap)
            form.addRow("", self.contours)
            form.addRow("Video file", target_row)
            self.target.setText(str(store.root / "exports" / "movie.mp4"))
        else:
            self.format = QComboBox()
            self.format.addItems(list(MOVIE_FORMATS))
            form.addRow("Format", self.format)
            form.addRow("Folder", target_row)
            self.target.setText(str(store.root / "exports"))
        form.addRow("Frames", self.frames)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.start_btn = QPushButton("Export")
        self.cancel_btn = QPushButton("Cancel")
        self.close_btn = QPushButton("Close")
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.close_btn.clicked.connect(self.reject)
        self.cancel_btn.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_btn)
        buttons.addWidget(self.cancel_btn)
        buttons.addStretch(1)
        buttons.addWidget(self.close_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.bar)
        lay.addWidget(self.message)
        lay.addLayout(buttons)
        self.thread: ExportThread | None = None
        self.ok: bool | None = None
        self.resize(620, 300)

    def _browse(self) -> None:
        if self.kind == "video":
            path = QFileDialog.getSaveFileName(self, "Video file", self.target.text(),
                                               "MP4 video (*.mp4)")[0]
        else:
            path = QFileDialog.getExistingDirectory(self, "Folder", self.target.text())
        if path:
            self.target.setText(path)

    def job(self):
        """The export as a function of (progress, cancel), from the current choices."""
        stage = self.stage.currentData()
        frames = self.frames.text().strip() or None
        target = Path(self.target.text().strip()).expanduser()
        if self.kind == "video":
            from mps_core.video_export import export_video

            if target.suffix.lower() != ".mp4":
                target = target.with_suffix(".mp4")
            compare, cmap, contours = (self.compare.currentData(), self.cmap.currentText(),
                                       self.contours.isChecked())

            def run(progress, cancel):
                target.parent.mkdir(parents=True, exist_ok=True)
                return export_video(self.store, target, stage, compare=compare, frames=frames,
                                    cmap=cmap, contours=contours, progress=progress,
                                    cancel=cancel)
            return run
        from mps_core.movie_export import export_movie

        fmt = self.format.currentText()

        def run(progress, cancel):
            target.mkdir(parents=True, exist_ok=True)
            return export_movie(self.store, target, stage, fmt, frames=frames,
                                progress=progress, cancel=cancel)
        return run

    def start(self) -> None:
        if self.thread is not None and self.thread.isRunning():
            return
        self.ok = None
        self.message.setText("Exporting...")
        self.thread = ExportThread(self.job(), self)
        self.thread.progress.connect(self._progress)
        self.thread.outcome.connect(self._done)
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.thread.start()

    def cancel(self) -> None:
        if self.thread is not None:
            self.thread.cancel_event.set()

    def running(self) -> bool:
        return self.thread is not None and self.thread.isRunning()

    def _progress(self, fraction: float, message: str) -> None:
        self.bar.setValue(int(fraction * 1000))
        self.bar.setFormat(f"{fraction:.0%} {message}")

    def _done(self, ok: bool, line: str) -> None:
        self.ok = ok
        self.bar.setValue(1000 if ok else self.bar.value())
        self.message.setText(line if ok else f"<span style='color:#b00020'>{line}</span>")
        self.start_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def reject(self) -> None:
        if self.running():
            self.cancel()
            self.thread.wait(30000)
        super().reject()
