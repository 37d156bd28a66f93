"""Live pyqtgraph viewers: preview figures (:class:`FigureView`) and lazy movies (:class:`MovieView`).

The core describes previews as plain data (:mod:`mps_core.figures`) and renders them to PNG
with matplotlib; :class:`FigureView` draws the same panels live so the user can zoom, pan,
adjust image levels and read pixel values. :class:`MovieView` browses a dask-backed movie one
frame at a time (a recording can be far larger than memory, so only the frame shown is read).

Image coordinates follow the matplotlib version: pixel ``(i, j)`` has its centre at
``x = j, y = i`` and row 0 is at the top, so outlines given in pixel units land on the pixels.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (QCheckBox, QGridLayout, QHBoxLayout, QLabel, QPlainTextEdit,
                               QPushButton, QScrollArea, QSizePolicy, QSlider, QSpinBox,
                               QVBoxLayout, QWidget)

from mps_core.figures import Figure, HistPanel, ImagePanel, LinePanel, Panel, TextPanel

__all__ = ["FigureView", "MovieView", "ImageCanvas", "robust_levels", "colormap"]

# matplotlib's default colour cycle, so live curves match the stored PNGs
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
         "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MAX_MARKS = 500  # same cap as render_png: more vertical lines only blacken the plot
MAX_COLUMNS = 3
PANEL_MIN_HEIGHT = 260  # px; enough to read an image and its level histogram
PLAY_FPS = 20.0


def _colour(i: int, alpha: int = 255):
    c = pg.mkColor(TAB10[i % len(TAB10)])
    c.setAlpha(alpha)
    return c


# ----------------------------------------------------------------------------- image helpers


def robust_levels(img: np.ndarray) -> tuple[float, float]:
    """Display levels at the 0.5 / 99.5 percentiles of the finite values (as render_png).

    Large images are subsampled first: the percentiles barely move and it keeps scrubbing fast.
    """
    a = np.asarray(img)
    if a.size > 1_000_000:
        step = int(np.ceil(np.sqrt(a.size / 1_000_000)))
        a = a[::step, ::step]
    a = a.astype(np.float32, copy=False)
    finite = a[np.isfinite(a)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


@functools.lru_cache(maxsize=32)
def colormap(name: str) -> pg.ColorMap:
    """The matplotlib colour map ``name`` as a pyqtgraph ColorMap; grey if unknown."""
    try:
        cmap = pg.colormap.get(name, source="matplotlib")
        if cmap is not None:
            return cmap
    except Exception:  # unknown name or matplotlib missing: a grey image still shows the data
        pass
    return pg.ColorMap(pos=[0.0, 1.0], color=[(0, 0, 0), (255, 255, 255)])


def _displayable(img: np.ndarray) -> np.ndarray:
    """The image as pyqtgraph can draw it, copying only when the dtype forces it."""
    a = np.asarray(img)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind not in "uif":
        return a.astype(np.float32)
    return a


class ImageCanvas(QWidget):
    """An image in an aspect-locked, y-down ViewBox with a level histogram beside it.

    ``hovered`` emits a short text ("value 12.3 at (y 4, x 7)") when the mouse moves over a
    pixel, and "" when it leaves the image.
    """

    hovered = Signal(str)

    def __init__(self, parent: QWidget | None = None, histogram: bool = True) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.view = pg.ViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image_item)
        self.graphics.addItem(self.view, 0, 0)
        self.histogram: pg.HistogramLUTItem | None = None
        if histogram:
            self.histogram = pg.HistogramLUTItem(image=self.image_item)
            self.histogram.setToolTip("Drag the yellow bars to change the brightness range; "
                                      "right-click the colour bar to change the colour map.")
            self.graphics.addItem(self.histogram, 0, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.graphics)
        self._image: np.ndarray | None = None
        self.graphics.scene().sigMouseMoved.connect(self._mouse_moved)

    def image(self) -> np.ndarray | None:
        """The image currently shown (as given, not copied)."""
        return self._image

    def set_colormap(self, name: str) -> None:
        cmap = colormap(name)
        if self.histogram is not None:
            self.histogram.gradient.setColorMap(cmap)  # also sets the image's lookup table
        else:
            self.image_item.setColorMap(cmap)

    def set_image(self, img: np.ndarray, levels: tuple[float, float] | None = None,
                  auto_range: bool = False) -> None:
        """Show ``img`` (2-D, or RGB(A) as (H, W, 3|4)); ``levels`` None keeps the current ones."""
        a = _displayable(img)
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
            raise ValueError(f"image must be 2-D (height, width) or (height, width, 3|4), "
                             f"got shape {a.shape}")
        new_shape = self._image is None or self._image.shape[:2] != a.shape[:2]
        self._image = a
        if levels is None and self.image_item.image is None:
            levels = robust_levels(a)
        self.image_item.setImage(a, autoLevels=False)
        if levels is not None:
            self.set_levels(*levels)
        # put pixel centres on integer coordinates, as matplotlib's imshow does
        self.image_item.setRect(QRectF(-0.5, -0.5, a.shape[1], a.shape[0]))
        if new_shape or auto_range:
            self.view.autoRange(padding=0.01)

    def set_levels(self, lo: float, hi: float) -> None:
        if self.histogram is not None:
            self.histogram.setLevels(lo, hi)
        else:
            self.image_item.setLevels((lo, hi))

    def levels(self) -> tuple[float, float]:
        lv = self.image_item.getLevels()
        return (float(lv[0]), float(lv[1])) if lv is not None else (0.0, 1.0)

    def clear(self) -> None:
        self._image = None
        self.image_item.clear()

    def pixel_text(self, y: int, x: int) -> str:
        """Words for the value of pixel (y, x); "" outside the image."""
        a = self._image
        if a is None or not (0 <= y < a.shape[0] and 0 <= x < a.shape[1]):
            return ""
        v = a[y, x]
        vtxt = ", ".join(f"{float(c):.4g}" for c in v) if np.ndim(v) else f"{float(v):.4g}"
        return f"value {vtxt} at (y {y}, x {x})"

    def _mouse_moved(self, scene_pos) -> None:
        if self._image is None or not self.view.sceneBoundingRect().contains(scene_pos):
            self.hovered.emit("")
            return
        p = self.view.mapSceneToView(scene_pos)
        self.hovered.emit(self.pixel_text(int(np.floor(p.y() + 0.5)), int(np.floor(p.x() + 0.5))))


# ----------------------------------------------------------------------------- figure view


class _PanelBox(QWidget):
    """One panel: a title line over its content (title also shows the hovered pixel)."""

    def __init__(self, title: str, content: QWidget) -> None:
        super().__init__()
        self.title = title
        self.title_label = QLabel(title)
        self.title_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title_label.setWordWrap(True)
        self.content = content
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.title_label)
        lay.addWidget(content, 1)
        self.setMinimumHeight(PANEL_MIN_HEIGHT)

    def show_hover(self, text: str) -> None:
        self.title_label.setText(f"{self.title} \u2014 {text}" if text else self.title)


class FigureView(QWidget):
    """Draws a :class:`mps_core.figures.Figure` live, panels in a grid of up to 3 columns.

    After :meth:`show_figure` the created items are listed in ``image_items``,
    ``histograms``, ``plot_items`` and ``text_boxes`` (in panel order).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title_label = QLabel()
        self.title_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title_label.setStyleSheet("font-weight: bold")
        self.message_label = QLabel()
        self.message_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message_label.setWordWrap(True)
        self._grid_host = QWidget()
        self._grid = QGridLayout(self._grid_host)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._scroll = QScrollArea()
        self._scroll.setWidgetResizable(True)
        self._scroll.setWidget(self._grid_host)
        lay = QVBoxLayout(self)
        lay.addWidget(self.title_label)
        lay.addWidget(self.message_label, 1)
        lay.addWidget(self._scroll, 1)
        self.panels: list[_PanelBox] = []
        self.image_items: list[pg.ImageItem] = []
        self.histograms: list[pg.HistogramLUTItem] = []
        self.plot_items: list[pg.PlotItem] = []
        self.text_boxes: list[QPlainTextEdit] = []
        self.show_message("")

    # -- public API

    def clear(self) -> None:
        """Remove every panel and message."""
        for box in self.panels:
            self._grid.removeWidget(box)
            # deleteLater alone: setParent(None) would hand the widget to Python as well, and
            # Python and Qt would each delete it (a crash when the wrapper is released)
            box.hide()
            box.deleteLater()
        self.panels, self.image_items, self.histograms = [], [], []
        self.plot_items, self.text_boxes = [], []
        self.title_label.setText("")
        self.message_label.setText("")
        self.message_label.hide()
        self._scroll.hide()

    def show_message(self, text: str) -> None:
        """Replace the figure by a sentence, e.g. "Run this step to see its previews"."""
        self.clear()
        self.message_label.setText(text)
        self.message_label.show()

    def show_figure(self, fig: Figure) -> None:
        """Draw every panel of ``fig``; a panel that fails shows why instead of its plot."""
        if not isinstance(fig, Figure):
            raise ValueError(f"FigureView.show_figure: expected an mps_core.figures.Figure, "
                             f"got {type(fig).__name__}")
        self.clear()
        self.title_label.setText(fig.title)
        if not fig.panels:
            self.message_label.setText("This preview has no panels.")
            self.message_label.show()
            return
        self._scroll.show()
        cols = min(len(fig.panels), MAX_COLUMNS)
        for k, panel in enumerate(fig.panels):
            box = self._panel_box(panel)
            self.panels.append(box)
            self._grid.addWidget(box, k // cols, k % cols)

    # -- one builder per panel kind

    def _panel_box(self, panel: Panel) -> _PanelBox:
        builders = {ImagePanel: self._image_panel, LinePanel: self._line_panel,
                    HistPanel: self._hist_panel, TextPanel: self._text_panel}
        title = getattr(panel, "title", "")
        build = builders.get(type(panel))
        try:
            if build is None:
                raise ValueError(f"unknown panel type {type(panel).__name__}")
            return build(panel)
        except Exception as e:  # one bad panel must not hide the others
            msg = QLabel(f"preview could not be drawn: {e}")
            msg.setWordWrap(True)
            msg.setAlignment(Qt.AlignmentFlag.AlignCenter)
            return _PanelBox(title, msg)

    def _image_panel(self, panel: ImagePanel) -> _PanelBox:
        canvas = ImageCanvas()
        canvas.set_colormap(panel.cmap)
        canvas.set_image(panel.image, levels=robust_levels(panel.image), auto_range=True)
        for k, (ys, xs, label) in enumerate(panel.outlines):
            curve = pg.PlotDataItem(np.asarray(xs, float), np.asarray(ys, float),
                                    pen=pg.mkPen(_colour(k), width=1.5), connect="finite")
            if label:
                curve.setToolTip(str(label))
            canvas.view.addItem(curve)
        box = _PanelBox(panel.title, canvas)
        canvas.hovered.connect(box.show_hover)
        self.image_items.append(canvas.image_item)
        if canvas.histogram is not None:
            self.histograms.append(canvas.histogram)
        return box

    def _plot_widget(self, xlabel: str, ylabel: str) -> pg.PlotWidget:
        w = pg.PlotWidget()
        item = w.getPlotItem()
        item.showGrid(x=True, y=True, alpha=0.2)
        if xlabel:
            item.setLabel("bottom", xlabel)
        if ylabel:
            item.setLabel("left", ylabel)
        self.plot_items.append(item)
        return w

    def _line_panel(self, panel: LinePanel) -> _PanelBox:
        w = self._plot_widget(panel.xlabel, panel.ylabel)
        item = w.getPlotItem()
        if len(panel.lines) > 1:
            item.addLegend(offset=(5, 5))
        x = np.asarray(panel.x, float)
        ylo, yhi = np.inf, -np.inf
        for k, (label, y) in enumerate(panel.lines.items()):
            y = np.asarray(y, float)
            n = min(len(x), len(y))
            curve = item.plot(x[:n], y[:n], pen=pg.mkPen(_colour(k), width=1), name=str(label),
                              connect="finite")
            # long traces (100,000 frames): draw only what the screen can show
            curve.setDownsampling(auto=True, method="peak")
            curve.setClipToView(True)
            fin = y[np.isfinite(y)]
            if fin.size:
                ylo, yhi = min(ylo, fin.min()), max(yhi, fin.max())
        dash = pg.mkPen((160, 160, 160), width=1, style=Qt.PenStyle.DashLine)
        for label, v in panel.hlines.items():
            if v is None or not np.isfinite(v):
                continue
            item.addItem(pg.InfiniteLine(pos=float(v), angle=0, pen=dash, label=str(label),
                                         labelOpts={"position": 0.05, "color": (200, 200, 200),
                                                    "anchors": [(0, 1), (0, 1)]}))
            ylo, yhi = min(ylo, v), max(yhi, v)
        self._add_marks(item, panel.marks, ylo, yhi)
        return _PanelBox(panel.title, w)

    @staticmethod
    def _add_marks(item: pg.PlotItem, marks: Any, ylo: float, yhi: float) -> None:
        """Vertical lines at ``marks`` as one item (cheap even at the 500-mark cap)."""
        if marks is None:
            return
        m = np.asarray(marks, float).ravel()[:MAX_MARKS]
        m = m[np.isfinite(m)]
        if not m.size:
            return
        if not (np.isfinite(ylo) and np.isfinite(yhi)) or yhi <= ylo:
            ylo, yhi = (ylo, ylo + 1.0) if np.isfinite(ylo) else (0.0, 1.0)
        xs = np.repeat(m, 2)
        ys = np.tile([ylo, yhi], m.size)
        item.addItem(pg.PlotDataItem(xs, ys, connect="pairs",
                                     pen=pg.mkPen((214, 39, 40, 90), width=1)))

    def _hist_panel(self, panel: HistPanel) -> _PanelBox:
        w = self._plot_widget(panel.xlabel, "count")
        item = w.getPlotItem()
        vals = {}
        for label, v in panel.values.items():
            v = np.asarray(v, float).ravel()
            vals[label] = v[np.isfinite(v)]
        every = np.concatenate(list(vals.values())) if vals else np.empty(0)
        if not every.size:
            item.setTitle("no finite values")
            return _PanelBox(panel.title, w)
        # shared bin edges so the groups can be compared bar by bar
        edges = np.histogram_bin_edges(every, bins=panel.bins)
        if len(vals) > 1:
            item.addLegend(offset=(5, 5))
        for k, (label, v) in enumerate(vals.items()):
            counts, _ = np.histogram(v, bins=edges)
            item.plot(edges, counts, stepMode="center", fillLevel=0, fillOutline=True,
                      brush=pg.mkBrush(_colour(k, 90)), pen=pg.mkPen(_colour(k), width=1),
                      name=str(label))
        return _PanelBox(panel.title, w)

    def _text_panel(self, panel: TextPanel) -> _PanelBox:
        box = QPlainTextEdit()
        box.setReadOnly(True)
        box.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        box.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        box.setPlainText(panel.text)
        self.text_boxes.append(box)
        return _PanelBox(panel.title, box)


# ----------------------------------------------------------------------------- movie view


def _check_movie(name: str, arr: Any) -> None:
    dims = tuple(getattr(arr, "dims", ()))
    if "frame" not in dims or len(dims) != 3:
        raise ValueError(f"MovieView: movie '{name}' must be a DataArray with dims (frame, height, "
                         f"width), got dims {dims}")


def _coord(arr: Any, name: str) -> np.ndarray | None:
    """A per-frame coordinate as numpy (small: one number per frame), or None."""
    if name not in arr.coords or arr.coords[name].dims != ("frame",):
        return None
    return np.asarray(arr.coords[name].values)


class MovieView(QWidget):
    """Browse one movie, or a before/after pair side by side, one frame at a time.

    Only the frame shown is read (``arr.isel(frame=i).values``); playing skips frames when
    reading is slower than the ~20 fps display rate instead of queueing them.
    """

    frame_changed = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._movies: dict[str, Any] = {}
        self._n = 0
        self._index = 0
        self._shown = False  # whether frame self._index is on screen
        self._levels_set: list[bool] = []
        self._orig: np.ndarray | None = None
        self._time: np.ndarray | None = None
        self.canvases: list[ImageCanvas] = []
        self.titles: list[QLabel] = []
        self._cells: list[QWidget] = []
        self._build_controls()
        self._timer = QTimer(self)
        self._timer.setInterval(int(1000 / PLAY_FPS))
        self._timer.timeout.connect(self._tick)
        self._play_t0 = 0.0
        self._play_f0 = 0
        self.clear()

    def _build_controls(self) -> None:
        self._images = QHBoxLayout()
        self.play_button = QPushButton("Play")
        self.play_button.setCheckable(True)
        self.play_button.setToolTip("Play the movie at about 20 frames per second (frames are "
                                    "skipped if reading them from disk is slower)")
        self.play_button.toggled.connect(self._play_toggled)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Drag to move through the movie")
        self.slider.valueChanged.connect(self.set_frame)
        self.spin = QSpinBox()
        self.spin.setToolTip("Frame index in this movie (counting from 0)")
        self.spin.setKeyboardTracking(False)  # read a frame per finished number, not per key
        self.spin.valueChanged.connect(self.set_frame)
        self.auto_levels = QCheckBox("auto levels")
        self.auto_levels.setToolTip("Recompute the brightness range for every frame; when off, "
                                    "the range set on the first frame (or by you) is kept")
        self.frame_label = QLabel()
        self.hover_label = QLabel()
        self.hover_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        controls = QHBoxLayout()
        controls.addWidget(self.play_button)
        controls.addWidget(self.slider, 1)
        controls.addWidget(self.spin)
        controls.addWidget(self.auto_levels)
        info = QHBoxLayout()
        info.addWidget(self.frame_label)
        info.addStretch(1)
        info.addWidget(self.hover_label)
        lay = QVBoxLayout(self)
        lay.addLayout(self._images, 1)
        lay.addLayout(controls)
        lay.addLayout(info)

    # -- public API

    def clear(self) -> None:
        """Forget the movies (stops playing)."""
        self.pause()
        # each movie sits in one cell widget: removeWidget + deleteLater is the only owner
        # change (taking layout items out by hand left Python wrappers of deleted C++ items)
        for cell in self._cells:
            self._images.removeWidget(cell)
            cell.hide()
            cell.deleteLater()
        self._cells, self.canvases, self.titles = [], [], []
        self._movies, self._n, self._index, self._shown = {}, 0, 0, False
        self._orig = self._time = None
        self._set_range(0)
        self.frame_label.setText("No movie loaded")
        self.hover_label.setText("")

    def set_movies(self, movies: Mapping[str, Any]) -> None:
        """Show one movie, or two side by side ({"before": a, "after": b}); starts at frame 0."""
        if not isinstance(movies, Mapping) or not 1 <= len(movies) <= 2:
            raise ValueError("MovieView.set_movies: give a dict of 1 or 2 movies "
                             f"(name -> DataArray), got {len(movies) if isinstance(movies, Mapping) else type(movies).__name__}")
        for name, arr in movies.items():
            _check_movie(name, arr)
        counts = {name: int(arr.sizes["frame"]) for name, arr in movies.items()}
        if len(set(counts.values())) > 1:
            (a, na), (b, nb) = counts.items()
            raise ValueError(f"MovieView.set_movies: movies '{a}' ({na} frames) and '{b}' "
                             f"({nb} frames) must have the same number of frames")
        names = [str(n) for n in movies]
        if len(names) == len(self.canvases):  # same layout: reuse the canvases (cheap)
            self.pause()
            for title, name in zip(self.titles, names):
                title.setText(name)
        else:
            self.clear()
            for k, name in enumerate(names):
                self._add_canvas(name, k)
        self._movies = dict(movies)
        self._n = next(iter(counts.values()))
        self._index, self._shown = 0, False
        first = next(iter(movies.values()))
        self._orig, self._time = _coord(first, "frame"), _coord(first, "time_s")
        self._levels_set = [False] * len(self.canvases)
        self._set_range(self._n)
        if self._n:
            self.set_frame(0)
        else:
            self.frame_label.setText("This movie has no frames")

    def set_frame(self, i: int) -> None:
        """Show frame ``i`` (clamped to the movie) in every movie."""
        if not self._n:
            return
        i = int(min(max(int(i), 0), self._n - 1))
        if i == self._index and self._shown:
            return
        self._index = i
        for w in (self.slider, self.spin):  # keep both in step without re-entering here
            w.blockSignals(True)
            w.setValue(i)
            w.blockSignals(False)
        for k, (arr, canvas) in enumerate(zip(self._movies.values(), self.canvases)):
            self._show(k, canvas, np.asarray(arr.isel(frame=i).values))
        self._shown = True
        self.frame_label.setText(self._frame_text(i))
        self.frame_changed.emit(i)

    def frame(self) -> int:
        """Index (from 0) of the frame shown."""
        return self._index

    def n_frames(self) -> int:
        return self._n

    def is_playing(self) -> bool:
        return self._timer.isActive()

    def play(self) -> None:
        self.play_button.setChecked(True)

    def pause(self) -> None:
        self.play_button.setChecked(False)

    # -- internals

    def _add_canvas(self, name: str, k: int) -> None:
        cell = QWidget()
        col = QVBoxLayout(cell)
        col.setContentsMargins(0, 0, 0, 0)
        title = QLabel(name)
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        canvas = ImageCanvas()
        # the title is read at hover time: canvases are reused for other movies
        canvas.hovered.connect(lambda text, t=title: self.hover_label.setText(
            f"{t.text()}: {text}" if text else ""))
        if self.canvases:  # a before/after pair pans and zooms together
            canvas.view.setXLink(self.canvases[0].view)
            canvas.view.setYLink(self.canvases[0].view)
        col.addWidget(title)
        col.addWidget(canvas, 1)
        self._images.addWidget(cell, 1)
        self._cells.append(cell)
        self.canvases.append(canvas)
        self.titles.append(title)

    def _set_range(self, n: int) -> None:
        for w in (self.slider, self.spin):
            w.blockSignals(True)
            w.setRange(0, max(n - 1, 0))
            w.setValue(0)
            w.setEnabled(n > 0)
            w.blockSignals(False)
        self.play_button.setEnabled(n > 1)

    def _show(self, k: int, canvas: ImageCanvas, img: np.ndarray) -> None:
        levels = None
        if self.auto_levels.isChecked() or not self._levels_set[k]:
            levels = robust_levels(img)
            self._levels_set[k] = True
        canvas.set_image(img, levels=levels)

    def _frame_text(self, i: int) -> str:
        parts = [f"Frame {i} of {self._n} (0\u2013{self._n - 1})"]
        if self._orig is not None and np.issubdtype(self._orig.dtype, np.number):
            parts.append(f"original frame {int(self._orig[i])}")
        if self._time is not None and np.issubdtype(self._time.dtype, np.number) \
                and np.isfinite(self._time[i]):
            parts.append(f"time {float(self._time[i]):.3f} s")
        return " \u00b7 ".join(parts)

    def _play_toggled(self, on: bool) -> None:
        self.play_button.setText("Pause" if on else "Play")
        if not on or self._n < 2:
            self._timer.stop()
            if on:
                self.play_button.setChecked(False)
            return
        if self._index >= self._n - 1:  # at the end: play from the start again
            self.set_frame(0)
        self._play_t0, self._play_f0 = time.monotonic(), self._index
        self._timer.start()

    def _tick(self) -> None:
        # target frame from the wall clock: slow reads skip frames instead of piling up
        target = self._play_f0 + int((time.monotonic() - self._play_t0) * PLAY_FPS)
        target = max(target, self._index + 1)
        if target >= self._n:
            self.set_frame(self._n - 1)
            self.pause()
            return
        self.set_frame(target)
