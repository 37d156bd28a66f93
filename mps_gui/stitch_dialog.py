"""Tools > Stitch streams: `mps stitch` in a dialog (two or more receivers of one recording).

Each stream is a video plus its metadata CSV (found beside the video when it has the same
name). The stitch runs in a worker thread with progress and Cancel; when outputs already
exist the dialog asks before overwriting, as `--force` does on the command line.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox, QDialog, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget,
    QMessageBox, QProgressBar, QPushButton, QVBoxLayout,
)

from .dialogs import field_with_button
from .export_dialog import ExportThread


class StitchDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Stitch streams")
        self.videos = QListWidget()
        add = QPushButton("Add video...")
        remove = QPushButton("Remove")
        add.clicked.connect(self._add)
        remove.clicked.connect(lambda: [self.videos.takeItem(self.videos.row(i))
                                        for i in self.videos.selectedItems()])
        side = QVBoxLayout()
        side.addWidget(add)
        side.addWidget(remove)
        side.addStretch(1)
        row = QHBoxLayout()
        row.addWidget(self.videos, 1)
        row.addLayout(side)
        self.output = QLineEdit()
        out_row = field_with_button(self.output, self._browse_output)
        self.name = QLineEdit("stitched")
        self.debug = QCheckBox("Also write a debug video of the candidates side by side")
        form = QFormLayout()
        form.addRow("Output folder", out_row)
        form.addRow("Name", self.name)
        form.addRow("", self.debug)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.message = QLabel("Add the video of each receiver (its metadata CSV of the same name "
                              "is found beside it).")
        self.message.setWordWrap(True)
        self.start_btn = QPushButton("Stitch")
        self.cancel_btn = QPushButton("Cancel")
        close = QPushButton("Close")
        self.start_btn.clicked.connect(lambda: self.start(force=False))
        self.cancel_btn.clicked.connect(self.cancel)
        close.clicked.connect(self.reject)
        self.cancel_btn.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_btn)
        buttons.addWidget(self.cancel_btn)
        buttons.addStretch(1)
        buttons.addWidget(close)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Streams (two or more receivers of the same recording):"))
        lay.addLayout(row)
        lay.addLayout(form)
        lay.addWidget(self.bar)
        lay.addWidget(self.message)
        lay.addLayout(buttons)
        self.thread: ExportThread | None = None
        self.ok: bool | None = None
        self.resize(680, 440)

    # -- choices ----------------------------------------------------------------------------
    def add_video(self, path: str) -> None:
        self.videos.addItem(path)

    def _add(self) -> None:
        paths = QFileDialog.getOpenFileNames(self, "Receiver videos", "",
                                             "Videos (*.avi *.mp4 *.mkv *.tif *.tiff)")[0]
        for p in paths:
            self.add_video(p)

    def _browse_output(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Output folder", self.output.text())
        if d:
            self.output.setText(d)

    # -- running ------------------------------------------------------------------------------
    def job(self, force: bool):
        from mps_core.stitch import stitch_streams

        videos = [self.videos.item(i).text() for i in range(self.videos.count())]
        out = Path(self.output.text().strip()).expanduser()
        name, debug = self.name.text().strip() or "stitched", self.debug.isChecked()

        def run(progress, cancel):
            if len(videos) < 2:
                raise ValueError("add at least two receiver videos to stitch")
            if not self.output.text().strip():
                raise ValueError("choose an output folder (not one of the input folders)")
            return stitch_streams(videos, out, name=name, debug_video=debug, force=force,
                                  progress=progress, cancel=cancel)
        return run

    def start(self, force: bool = False) -> None:
        if self.thread is not None and self.thread.isRunning():
            if self.ok is None:
                return  # still stitching
            # its outcome is delivered and the thread is only returning: a new start must not
            # be dropped (seen under load: the click was ignored and the old outcome stood)
            self.thread.wait()
        self.ok = None
        self._force = force
        self.message.setText("Stitching...")
        self.thread = ExportThread(self.job(force), self)
        self.thread.progress.connect(lambda f, m: (self.bar.setValue(int(f * 1000)),
                                                   self.bar.setFormat(f"{f:.0%} {m}")))
        self.thread.outcome.connect(self._done)
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.thread.start()

    def cancel(self) -> None:
        if self.thread is not None:
            self.thread.cancel_event.set()

    def _done(self, ok: bool, line: str) -> None:
        self.start_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if not ok and "already exist" in line and not self._force:
            if self._confirm_overwrite(line):
                self.thread.wait()
                self.start(force=True)
                return
        self.ok = ok
        self.message.setText(line if ok else f"<span style='color:#b00020'>{line}</span>")

    def _confirm_overwrite(self, line: str) -> bool:
        return QMessageBox.question(self, "Overwrite?", line.split("; nothing")[0] +
                                    ".\nOverwrite these files?") == QMessageBox.StandardButton.Yes

    def reject(self) -> None:
        if self.thread is not None and self.thread.isRunning():
            self.cancel()
            self.thread.wait(30000)
        super().reject()
