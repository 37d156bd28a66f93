"""The explorer's traces: C, S and YrA of the selected units, one row per unit, stacked on a
shared time axis in seconds, with a cursor synchronised with the movie.

Each row draws YrA (grey, the raw trace under the footprint), C (the unit's colour, the
denoised calcium) and S (light blue, the spike estimate, drawn upward from a lane under the traces).
Zoom and pan with the mouse (all rows move together); drag the cursor or click in a row to
move the movie there.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

__all__ = ["TracePanel", "MAX_ROWS"]

MAX_ROWS = 8
YRA_PEN = (150, 150, 150)
S_PEN = (120, 200, 255)
LEGEND = {"YrA": "YrA (raw)", "C": "C (calcium)", "S": "S (spikes, own lane)"}
CURSOR_PEN = (255, 255, 255)


class TracePanel(QWidget):
    """Rows of traces; ``cursor_moved(seconds)`` when the user moves the cursor."""

    cursor_moved = Signal(float)

    def __init__(self, kinds: list[str], time_words: str = "time (s)", parent=None) -> None:
        super().__init__(parent)
        self.time_words = time_words
        self.kind_boxes: dict[str, QCheckBox] = {}
        controls = QHBoxLayout()
        controls.addWidget(QLabel("show:"))
        tips = {"C": "C: the denoised calcium trace (step 8b)",
                "S": "S: the spike estimate (step 8b), drawn upward under the traces",
                "YrA": "YrA: the raw trace under the footprint, other units removed (8a)"}
        for kind in ("C", "S", "YrA"):
            box = QCheckBox(kind)
            box.setToolTip(tips[kind])
            box.setChecked(kind in kinds)
            box.setEnabled(kind in kinds)
            box.toggled.connect(lambda _=None: self._redraw())
            self.kind_boxes[kind] = box
            controls.addWidget(box)
        self.info = QLabel("Select units on the map or in the table to see their traces.")
        controls.addWidget(self.info, 1)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.scene().sigMouseClicked.connect(self._scene_clicked)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(controls)
        lay.addWidget(self.graphics, 1)
        self.plots: list[pg.PlotItem] = []
        self.cursors: list[pg.InfiniteLine] = []
        self.curves: dict[tuple[int, str], pg.PlotDataItem] = {}
        self._units: list[int] = []
        self._data: dict[int, dict[str, np.ndarray | None]] = {}
        self._colours: dict[int, tuple[int, int, int]] = {}
        self._x = np.zeros(0)
        self._cursor = 0.0
        self._xrange: tuple[float, float] | None = None

    # -- public API
    def units(self) -> list[int]:
        return list(self._units)

    def set_units(self, ids: list[int], traces: dict[int, dict[str, np.ndarray | None]],
                  colours: dict[int, tuple[int, int, int]], x: np.ndarray) -> None:
        """Show these units (at most :data:`MAX_ROWS`), their traces by kind, on ``x`` (s)."""
        if self.plots:
            self._xrange = tuple(self.plots[0].getViewBox().viewRange()[0])
        self._units = [int(u) for u in ids][:MAX_ROWS]
        self._data, self._colours, self._x = traces, colours, np.asarray(x, np.float64)
        extra = len(ids) - len(self._units)
        if not ids:
            self.info.setText("Select units on the map or in the table to see their traces.")
        else:
            self.info.setText(f"{len(ids)} unit(s) selected" +
                              (f"; the first {MAX_ROWS} are drawn" if extra > 0 else ""))
        self._redraw()

    def set_cursor(self, seconds: float) -> None:
        """Move the cursor without emitting :attr:`cursor_moved`."""
        self._cursor = float(seconds)
        for c in self.cursors:
            c.blockSignals(True)
            c.setValue(self._cursor)
            c.blockSignals(False)

    def cursor(self) -> float:
        return self._cursor

    # -- drawing
    def _redraw(self) -> None:
        self.graphics.clear()
        self.plots, self.cursors, self.curves = [], [], {}
        x = self._x
        empty = [u for u in self._units if not any(
            v is not None for v in self._data.get(u, {}).values())]
        for k, uid in enumerate(self._units):
            plot = self.graphics.addPlot(row=k, col=0)
            plot.showGrid(x=True, y=False, alpha=0.15)
            plot.setLabel("left", f"unit {uid}")
            plot.getAxis("left").setWidth(60)
            plot.setMouseEnabled(x=True, y=False)  # zoom / pan in time; each row fits its y
            plot.enableAutoRange(axis="y")
            plot.setAutoVisible(y=True)
            if k < len(self._units) - 1:
                plot.getAxis("bottom").setStyle(showValues=False)
            else:
                plot.setLabel("bottom", self.time_words)
            if self.plots:
                plot.setXLink(self.plots[0])
            else:
                plot.addLegend(offset=(-5, 2), labelTextSize="8pt", colCount=3)
            self._draw_unit(plot, uid, x)
            if uid in empty:
                note = pg.TextItem("no traces: quarantined at step 4h (restore it and re-run "
                                   "steps 5-8 to get traces)", color=(200, 200, 200))
                plot.addItem(note)
            line = pg.InfiniteLine(self._cursor, angle=90, movable=True,
                                   pen=pg.mkPen(CURSOR_PEN, width=1),
                                   hoverPen=pg.mkPen((255, 220, 0), width=2))
            line.setToolTip("The movie's frame: drag to move the movie")
            line.sigDragged.connect(self._cursor_dragged)
            plot.addItem(line, ignoreBounds=True)
            self.cursors.append(line)
            self.plots.append(plot)
        if self.plots and x.size:
            lo, hi = self._xrange if self._xrange else (float(x[0]), float(x[-1]))
            self.plots[0].setXRange(lo, hi, padding=0)

    def _draw_unit(self, plot: pg.PlotItem, uid: int, x: np.ndarray) -> None:
        tr = self._data.get(uid, {})
        show = {k: b.isChecked() for k, b in self.kind_boxes.items()}
        colour = self._colours.get(uid, (80, 170, 255))
        lows, highs = [], []
        for kind in ("YrA", "C"):
            y = tr.get(kind)
            if y is None or not show[kind]:
                continue
            pen = pg.mkPen(YRA_PEN if kind == "YrA" else colour, width=1 if kind == "YrA" else 1.5)
            self._curve(plot, uid, kind, x, y, pen, LEGEND[kind])
            fin = y[np.isfinite(y)]
            if fin.size:
                lows.append(float(fin.min()))
                highs.append(float(fin.max()))
        s = tr.get("S")
        if s is not None and show["S"]:
            lo = min(lows) if lows else 0.0
            span = (max(highs) - lo) if highs else 1.0
            smax = float(np.nanmax(s)) if np.isfinite(s).any() else 0.0
            scale = 0.3 * span / smax if smax > 0 and lows else 1.0
            base = lo - 0.05 * span - 0.3 * span if lows else 0.0
            self._curve(plot, uid, "S", x, base + s * scale, pg.mkPen(S_PEN, width=1),
                        LEGEND["S"])

    def _curve(self, plot, uid, kind, x, y, pen, name) -> None:
        n = min(len(x), len(y))
        curve = plot.plot(x[:n], np.asarray(y[:n], np.float64), pen=pen, connect="finite",
                          name=name)
        # an hour at 20 fps is 72,000 points: draw only what the screen can show
        curve.setDownsampling(auto=True, method="peak")
        curve.setClipToView(True)
        self.curves[(uid, kind)] = curve

    # -- cursor
    def _cursor_dragged(self, line: pg.InfiniteLine) -> None:
        self._cursor = float(line.value())
        for c in self.cursors:
            if c is not line:
                c.blockSignals(True)
                c.setValue(self._cursor)
                c.blockSignals(False)
        self.cursor_moved.emit(self._cursor)

    def _scene_clicked(self, ev) -> None:
        if ev.button() != Qt.MouseButton.LeftButton or ev.double():
            return
        for plot in self.plots:
            vb = plot.getViewBox()
            if vb.sceneBoundingRect().contains(ev.scenePos()):
                t = float(vb.mapSceneToView(ev.scenePos()).x())
                self.set_cursor(t)
                self.cursor_moved.emit(t)
                return
