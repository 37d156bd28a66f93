"""The explorer's movie: raw, motion corrected, reconstruction or residual, with the selected
units outlined, play / pause, frame stepping, a step size and a playing speed.

Frames are read through :class:`~mps_gui.explorer_data.FrameCache` (a batch of one stored
chunk at a time), so an hour-long movie plays without reading more than it shows. Playing
follows the wall clock: when reading is slower than the chosen speed, frames are skipped
instead of piling up. The position is an original frame number, shared with the traces'
cursor, so switching stage keeps the same moment.

Keys (set by the explorer window): Space play / pause, Left / Right step, Up / Down change
the step size.
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QHBoxLayout, QLabel, QPushButton,
                               QSizePolicy, QSlider, QVBoxLayout, QWidget)

from mps_core.movies import StageMissing, frame_rate
from mps_gui.explorer_data import MOVIE_STAGES, ExplorerData, FrameCache
from mps_gui.explorer_map import cmap
from mps_gui.viewers import ImageCanvas, robust_levels

__all__ = ["MoviePlayer", "STEP_SIZES", "SPEEDS"]

STEP_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
MAX_DISPLAY_FPS = 30.0


class MoviePlayer(QWidget):
    """``frame_changed(original frame number)`` when the user moves the movie."""

    frame_changed = Signal(int)

    def __init__(self, data: ExplorerData, parent=None) -> None:
        super().__init__(parent)
        self.data = data
        self.stage: str | None = None
        self.movie = None
        self.cache: FrameCache | None = None
        self.frames = np.zeros(0, np.int64)  # original frame number of each position
        self.pos = 0
        self.fps = 20.0
        self.offset = (0, 0)  # where the crop grid's (0, 0) is in this stage's grid
        self._outlines: list[tuple[np.ndarray, np.ndarray, tuple]] = []
        self._items: list[pg.PlotCurveItem] = []
        self._levels_for: str | None = None
        self._build()
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self._play_t0, self._play_p0 = 0.0, 0
        stages = data.movie_stages()
        if stages:
            self.set_stage("2e" if "2e" in stages else stages[0])
        else:
            self.label.setText("This session holds no movie to show yet.")

    # -- construction
    def _build(self) -> None:
        self.stage_box = QComboBox()
        for stage in self.data.movie_stages():
            self.stage_box.addItem(MOVIE_STAGES[stage], stage)
        self.stage_box.setToolTip("Which movie: as recorded, after motion correction, the "
                                  "model (footprints \u00d7 traces + background) or what the "
                                  "model leaves unexplained (residual: look for cells the "
                                  "units missed)")
        self.stage_box.currentIndexChanged.connect(
            lambda i: self.set_stage(self.stage_box.itemData(i)))
        self.canvas = ImageCanvas()
        self.canvas.hovered.connect(lambda t: self.hover.setText(t))
        self.back_button = QPushButton("\u25c0")
        self.back_button.setToolTip("Step back (Left arrow)")
        self.back_button.clicked.connect(lambda: self.step(-1))
        self.play_button = QPushButton("Play")
        self.play_button.setCheckable(True)
        self.play_button.setToolTip("Play / pause (Space)")
        self.play_button.toggled.connect(self._play_toggled)
        self.next_button = QPushButton("\u25b6")
        self.next_button.setToolTip("Step forward (Right arrow)")
        self.next_button.clicked.connect(lambda: self.step(1))
        self.step_box = QComboBox()
        for s in STEP_SIZES:
            self.step_box.addItem(f"step {s} frame{'s' if s > 1 else ''}", s)
        self.step_box.setToolTip("Frames moved by one step (Up / Down arrows change it)")
        self.speed_box = QComboBox()
        for s in SPEEDS:
            self.speed_box.addItem(f"{s:g}\u00d7 speed", s)
        self.speed_box.setCurrentIndex(SPEEDS.index(1.0))
        self.speed_box.setToolTip("Playing speed relative to the recording's frame rate")
        self.speed_box.currentIndexChanged.connect(lambda _: self._restart_clock())
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Drag to move through the movie")
        self.slider.valueChanged.connect(lambda v: self.show_position(v, emit=True))
        self.outline_box = QCheckBox("outline selected units")
        self.outline_box.setChecked(True)
        self.outline_box.toggled.connect(lambda _=None: self._draw_outlines())
        self.auto_levels = QCheckBox("auto levels")
        self.auto_levels.setToolTip("Recompute the brightness range on every frame")
        self.label = QLabel()
        self.hover = QLabel()
        self.hover.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        top = QHBoxLayout()
        top.addWidget(self.stage_box)
        top.addWidget(self.outline_box)
        top.addWidget(self.auto_levels)
        top.addStretch(1)
        controls = QHBoxLayout()
        for w in (self.back_button, self.play_button, self.next_button, self.step_box,
                  self.speed_box):
            controls.addWidget(w)
        controls.addWidget(self.slider, 1)
        info = QHBoxLayout()
        info.addWidget(self.label)
        info.addStretch(1)
        info.addWidget(self.hover)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.canvas, 1)
        lay.addLayout(controls)
        lay.addLayout(info)

    # -- stage
    def set_stage(self, stage: str) -> None:
        """Show another movie at the same original frame number."""
        if stage is None or stage == self.stage:
            return
        keep = int(self.frames[self.pos]) if self.frames.size else None
        self.pause()
        try:
            movie = self.data.movie(stage)
        except (StageMissing, ValueError) as e:
            self.label.setText(str(e))
            return
        self.stage, self.movie = stage, movie
        self.cache = FrameCache(movie)
        self.frames = np.asarray(movie.frame.values, np.int64)
        self.fps = frame_rate(movie)
        y0, x0 = self.data.crop_offset
        self.offset = (y0, x0) if movie.attrs.get("grid") == "full" else (0, 0)
        idx = self.stage_box.findData(stage)
        if idx >= 0 and self.stage_box.currentIndex() != idx:
            self.stage_box.blockSignals(True)
            self.stage_box.setCurrentIndex(idx)
            self.stage_box.blockSignals(False)
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(len(self.frames) - 1, 0))
        self.slider.blockSignals(False)
        # blue - white - red for residuals (0 is white), grey otherwise
        cm = cmap("CET-D1" if stage == "residual" else "gray")
        if self.canvas.histogram is not None:
            self.canvas.histogram.gradient.setColorMap(cm)
        else:
            self.canvas.image_item.setColorMap(cm)
        self._levels_for = None
        self._draw_outlines()
        self.show_position(self.position_of(keep) if keep is not None else 0, force=True)

    def position_of(self, frame_number: int) -> int:
        """The position of the nearest frame at or before ``frame_number`` in this stage."""
        if not self.frames.size:
            return 0
        i = int(np.searchsorted(self.frames, frame_number, side="right") - 1)
        return int(np.clip(i, 0, len(self.frames) - 1))

    def frame_number(self) -> int:
        return int(self.frames[self.pos]) if self.frames.size else 0

    # -- moving
    def show_position(self, pos: int, emit: bool = False, force: bool = False) -> None:
        if self.cache is None or not self.frames.size:
            return
        pos = int(np.clip(int(pos), 0, len(self.frames) - 1))
        if pos == self.pos and not force:
            return
        self.pos = pos
        img = np.asarray(self.cache.get(pos), np.float32)
        levels = None
        if self.auto_levels.isChecked() or self._levels_for != self.stage:
            levels = self._levels(img)
            self._levels_for = self.stage
        self.canvas.set_image(img, levels=levels)
        self.slider.blockSignals(True)
        self.slider.setValue(pos)
        self.slider.blockSignals(False)
        self.label.setText(self._frame_text(pos))
        if emit:
            self.frame_changed.emit(int(self.frames[pos]))

    def _levels(self, img: np.ndarray) -> tuple[float, float]:
        if self.stage == "residual":
            lo, hi = robust_levels(img)
            m = max(abs(lo), abs(hi)) or 1.0
            return -m, m
        return robust_levels(img)

    def set_frame_number(self, frame_number: int) -> None:
        """Go to an original frame number (from the traces' cursor); emits nothing."""
        self.show_position(self.position_of(frame_number))

    def step_size(self) -> int:
        return int(self.step_box.currentData())

    def step(self, direction: int) -> None:
        self.pause()
        self.show_position(self.pos + int(direction) * self.step_size(), emit=True)

    def change_step_size(self, direction: int) -> None:
        i = int(np.clip(self.step_box.currentIndex() + int(direction), 0,
                        self.step_box.count() - 1))
        self.step_box.setCurrentIndex(i)

    def _frame_text(self, pos: int) -> str:
        n = len(self.frames)
        words = [f"frame {int(self.frames[pos])} (position {pos + 1} of {n})"]
        t = self.data.time_of(int(self.frames[pos]))
        words.append(f"{t:.2f} s")
        return " \u00b7 ".join(words)

    # -- playing
    def is_playing(self) -> bool:
        return self._timer.isActive()

    def toggle_play(self) -> None:
        self.play_button.setChecked(not self.play_button.isChecked())

    def play(self) -> None:
        self.play_button.setChecked(True)

    def pause(self) -> None:
        self.play_button.setChecked(False)

    def speed(self) -> float:
        return float(self.speed_box.currentData())

    def _restart_clock(self) -> None:
        self._play_t0, self._play_p0 = time.monotonic(), self.pos
        rate = min(self.fps * self.speed(), MAX_DISPLAY_FPS)
        self._timer.setInterval(max(1, int(1000 / rate)))

    def _play_toggled(self, on: bool) -> None:
        self.play_button.setText("Pause" if on else "Play")
        if not on or len(self.frames) < 2:
            self._timer.stop()
            if on:
                self.play_button.setChecked(False)
            return
        if self.pos >= len(self.frames) - 1:
            self.show_position(0, emit=True)
        self._restart_clock()
        self._timer.start()

    def _tick(self) -> None:
        # the position follows the wall clock: slow reads skip frames instead of lagging
        target = self._play_p0 + int((time.monotonic() - self._play_t0) * self.fps * self.speed())
        target = max(target, self.pos + 1)
        if target >= len(self.frames):
            self.show_position(len(self.frames) - 1, emit=True)
            self.pause()
            return
        self.show_position(target, emit=True)

    # -- outlines
    def set_outlines(self, outlines: list[tuple[np.ndarray, np.ndarray, tuple]]) -> None:
        """(ys, xs, rgb) per selected unit, in the crop grid of step 3a."""
        self._outlines = list(outlines)
        self._draw_outlines()

    def _draw_outlines(self) -> None:
        for item in self._items:
            self.canvas.view.removeItem(item)
        self._items = []
        if not self.outline_box.isChecked():
            return
        dy, dx = self.offset
        for ys, xs, rgb in self._outlines:
            item = pg.PlotCurveItem(np.asarray(xs) + dx, np.asarray(ys) + dy, connect="finite",
                                    pen=pg.mkPen(rgb, width=1.5))
            item.setZValue(10)
            self.canvas.view.addItem(item)
            self._items.append(item)
