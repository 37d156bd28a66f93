"""The explorer's footprint map: every unit over the mean / max / correlation image.

Units are drawn as outlines (solid: kept by 8c, dashed: removed by 8c, dotted: quarantined
at 4h) and / or a translucent fill, coloured by unit, by label, by SNR or by activity at the
cursor's frame. Hovering names the unit under the pointer; a click selects it (Ctrl adds or
removes, Shift adds); dragging with Shift held (or with "Box select" on) selects every unit
whose centre lies in the box. Plain dragging pans, the wheel zooms.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QCheckBox, QComboBox, QHBoxLayout, QLabel, QSizePolicy,
                               QVBoxLayout, QWidget)

from mps_gui.explorer_data import BACKGROUNDS, Footprints
from mps_gui.viewers import colormap, robust_levels

__all__ = ["FootprintMap", "MapViewBox", "COLOUR_MODES", "unit_colours", "value_colours",
           "LABEL_RGB", "cmap"]

COLOUR_MODES = {"unit": "by unit", "label": "by label", "snr": "by SNR",
                "activity": "by activity at the cursor"}
ORIGIN_STYLE = {"kept": Qt.PenStyle.SolidLine, "removed": Qt.PenStyle.DashLine,
                "quarantined": Qt.PenStyle.DotLine}
LABEL_RGB = {"accepted": (40, 200, 40), "rejected": (235, 50, 50),
             "kept": (255, 210, 0), "removed": (170, 170, 170), "quarantined": (210, 80, 230)}
FILL_ALPHA = 150
SELECTED_WIDTH = 3.5
WIDTH = 1.4


def cmap(name: str) -> pg.ColorMap:
    """A colour map from pyqtgraph's own files ("gray", "viridis", "inferno", "CET-D1"...):
    asking matplotlib for one imports it, which costs seconds when a window opens."""
    if name == "gray":
        return pg.ColorMap(pos=[0.0, 1.0], color=[(0, 0, 0), (255, 255, 255)])
    try:
        return pg.colormap.get(name)
    except Exception:  # noqa: BLE001 -- not among pyqtgraph's files
        return colormap(name)


def unit_colours(ids: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 distinct, bright colours from the ids (golden-ratio hues: stable when
    units are added or removed)."""
    out = np.zeros((len(ids), 3), np.uint8)
    for k, u in enumerate(ids):
        c = QColor.fromHsvF((int(u) * 0.618033988749895) % 1.0, 0.75, 1.0)
        out[k] = (c.red(), c.green(), c.blue())
    return out


def value_colours(values: np.ndarray, name: str = "viridis", lo: float | None = None,
                  hi: float | None = None) -> np.ndarray:
    """(n, 3) uint8 colours of ``values`` through a colour map (NaN: grey)."""
    v = np.asarray(values, np.float64)
    fin = v[np.isfinite(v)]
    lo = float(np.min(fin)) if lo is None and fin.size else (lo or 0.0)
    hi = float(np.max(fin)) if hi is None and fin.size else (hi if hi is not None else 1.0)
    span = hi - lo if hi > lo else 1.0
    t = np.clip((np.nan_to_num(v, nan=lo) - lo) / span, 0, 1)
    rgba = cmap(name).map(t, mode="byte")
    out = np.asarray(rgba)[:, :3].astype(np.uint8)
    out[~np.isfinite(v)] = 128
    return out


class MapViewBox(pg.ViewBox):
    """A y-down, aspect-locked view whose left clicks and Shift-drags select units."""

    clicked = Signal(float, float, object)  # x, y (pixels), keyboard modifiers
    boxed = Signal(object, object)  # QRectF in pixels, modifiers

    def __init__(self) -> None:
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self.box_mode = False
        self.band = pg.QtWidgets.QGraphicsRectItem()
        self.band.setPen(pg.mkPen((255, 255, 255), width=1, style=Qt.PenStyle.DashLine))
        self.band.setBrush(pg.mkBrush(255, 255, 255, 30))
        self.band.setZValue(1e6)
        self.band.hide()
        self.addItem(self.band, ignoreBounds=True)

    def mouseClickEvent(self, ev) -> None:  # noqa: N802 -- pyqtgraph's name
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            p = self.mapSceneToView(ev.scenePos())
            self.clicked.emit(p.x(), p.y(), ev.modifiers())
        else:
            super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev, axis=None) -> None:  # noqa: N802
        shift = bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if ev.button() != Qt.MouseButton.LeftButton or not (shift or self.box_mode):
            super().mouseDragEvent(ev, axis)
            return
        ev.accept()
        p0 = self.mapSceneToView(ev.buttonDownScenePos())
        p1 = self.mapSceneToView(ev.scenePos())
        rect = QRectF(p0, p1).normalized()
        if ev.isFinish():
            self.band.hide()
            self.boxed.emit(rect, ev.modifiers())
        else:
            self.band.setRect(rect)
            self.band.show()


class FootprintMap(QWidget):
    """The map; the explorer window decides colours and selection, the map draws them.

    Signals: ``units_clicked(ids, mode)`` (a click or a box; ids may be empty; mode
    "replace", "toggle" (Ctrl-click) or "add" (Shift-click, Ctrl-box)),
    ``background_changed(name)``, ``colour_changed(mode)``, ``visibility_changed()``.
    """

    units_clicked = Signal(list, str)
    background_changed = Signal(str)
    colour_changed = Signal(str)
    visibility_changed = Signal()
    hovered = Signal(str)

    def __init__(self, backgrounds: list[str], parent=None) -> None:
        super().__init__(parent)
        self.fp: Footprints | None = None
        self.origin = np.zeros(0, object)
        self.ids = np.zeros(0, np.int64)
        self.colours = np.zeros((0, 3), np.uint8)
        self.strength = np.zeros(0, np.float32)  # per row, scales the fill (activity mode)
        self.selected: set[int] = set()  # table rows
        self.curves: list[pg.PlotCurveItem] = []
        self.describe = lambda row: f"unit {int(self.ids[row])}"
        self._build(backgrounds)

    # -- construction
    def _build(self, backgrounds: list[str]) -> None:
        self.background_box = QComboBox()
        for name in backgrounds:
            self.background_box.addItem(BACKGROUNDS[name], name)
        self.background_box.setToolTip("Image under the units: the mean or maximum over frames "
                                       "of the motion-corrected movie, or each pixel's "
                                       "correlation with its neighbours (cells light up)")
        self.background_box.currentIndexChanged.connect(
            lambda i: self.background_changed.emit(self.background_box.itemData(i) or ""))
        self.colour_box = QComboBox()
        for key, words in COLOUR_MODES.items():
            self.colour_box.addItem(f"colour {words}", key)
        self.colour_box.setToolTip("Unit: a colour per unit. Label: green accepted, red "
                                   "rejected, yellow kept by 8c, grey removed by 8c, violet "
                                   "quarantined. SNR: dark (low) to yellow (high). Activity: "
                                   "each unit's calcium at the cursor's frame, scaled to its "
                                   "peak.")
        self.colour_box.currentIndexChanged.connect(
            lambda i: self.colour_changed.emit(self.colour_box.itemData(i)))
        self.contours_box = QCheckBox("outlines")
        self.contours_box.setChecked(True)
        self.contours_box.setToolTip("Outline each footprint at 30% of its peak")
        self.fill_box = QCheckBox("fill")
        self.fill_box.setToolTip("Paint each footprint in its colour (stronger where the "
                                 "footprint is stronger)")
        self.removed_box = QCheckBox("removed by 8c")
        self.removed_box.setChecked(True)
        self.removed_box.setToolTip("Show units the final filter (8c) left out (dashed)")
        self.quarantine_box = QCheckBox("quarantined")
        self.quarantine_box.setToolTip("Show units set apart as likely artifacts at step 4h "
                                       "(dotted); they have no traces")
        self.box_select = QCheckBox("box select")
        self.box_select.setToolTip("Drag a box to select every unit whose centre is inside "
                                   "(or hold Shift while dragging)")
        for box in (self.contours_box, self.fill_box):
            box.toggled.connect(lambda _=None: self._redraw())
        for box in (self.removed_box, self.quarantine_box):
            box.toggled.connect(self._visibility_toggled)
        self.box_select.toggled.connect(lambda on: setattr(self.view, "box_mode", on))

        top = QHBoxLayout()
        top.addWidget(self.background_box)
        top.addWidget(self.colour_box)
        top.addStretch(1)
        show = QHBoxLayout()
        for w in (self.contours_box, self.fill_box, QLabel("  show:"), self.removed_box,
                  self.quarantine_box, self.box_select):
            show.addWidget(w)
        show.addStretch(1)

        self.graphics = pg.GraphicsLayoutWidget()
        self.view = MapViewBox()
        self.graphics.addItem(self.view)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(cmap("gray"))
        self.overlay = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image)
        self.view.addItem(self.overlay)
        self.view.clicked.connect(self._clicked)
        self.view.boxed.connect(self._boxed)
        self.graphics.scene().sigMouseMoved.connect(self._mouse_moved)
        self.message = pg.TextItem("", color=(230, 230, 230), anchor=(0.5, 0.5))
        self.view.addItem(self.message, ignoreBounds=True)
        self.hover_label = QLabel(" ")
        self.hover_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addLayout(show)
        lay.addWidget(self.graphics, 1)
        lay.addWidget(self.hover_label)

    # -- public API
    def background_name(self) -> str:
        return self.background_box.currentData() or ""

    def colour_mode(self) -> str:
        return self.colour_box.currentData()

    def set_message(self, text: str) -> None:
        """A line in the middle of the map ("loading footprints...")."""
        self.message.setText(text)
        r = self.view.viewRect()
        self.message.setPos(r.center())

    def set_background(self, img: np.ndarray) -> None:
        img = np.asarray(img, np.float32)
        first = self.image.image is None
        self.image.setImage(img, autoLevels=False, levels=robust_levels(img))
        self.image.setRect(QRectF(-0.5, -0.5, img.shape[1], img.shape[0]))
        if first:
            self.view.autoRange(padding=0.01)

    def set_units(self, fp: Footprints, ids: np.ndarray, origin: np.ndarray) -> None:
        """The footprints (table row order) with their ids and origins."""
        for c in self.curves:
            self.view.removeItem(c)
        self.fp, self.ids, self.origin = fp, np.asarray(ids), np.asarray(origin)
        n = len(self.ids)
        self.colours = np.full((n, 3), 255, np.uint8)
        self.strength = np.ones(n, np.float32)
        self.curves = []
        for row, (ys, xs) in enumerate(fp.contours):
            curve = pg.PlotCurveItem(xs, ys, connect="finite")
            curve.setZValue(10)
            self.view.addItem(curve)
            self.curves.append(curve)
        self.set_message("")
        if self.image.image is None:
            h, w = fp.shape
            self.view.setRange(QRectF(-0.5, -0.5, w, h), padding=0.01)
        self._redraw()

    def set_colours(self, rgb: np.ndarray, strength: np.ndarray | None = None) -> None:
        """(rows, 3) uint8 colours; ``strength`` (rows,) 0..1 scales the fill's opacity."""
        rgb = np.asarray(rgb, np.uint8)
        same_shape = rgb.shape == self.colours.shape
        # a new pen makes pyqtgraph recompute the curve's bounds: only touch the outlines whose
        # colour changed (colouring by activity changes a few units per frame, not 400)
        changed = (np.flatnonzero((rgb != self.colours).any(axis=1)) if same_shape
                   else None)
        self.colours = rgb
        if strength is not None:
            self.strength = np.asarray(strength, np.float32)
        else:
            self.strength = np.ones(len(self.colours), np.float32)
        self._redraw(rows=None if changed is None else changed.tolist())

    def set_selected_rows(self, rows) -> None:
        new = {int(r) for r in rows}
        changed = new ^ self.selected  # only these outlines change (400 pens cost ~40 ms)
        self.selected = new
        self._redraw(fill=False, rows=changed)

    def visible_rows(self) -> np.ndarray:
        vis = self.origin == "kept"
        if self.removed_box.isChecked():
            vis |= self.origin == "removed"
        if self.quarantine_box.isChecked():
            vis |= self.origin == "quarantined"
        return np.asarray(vis, bool)

    def row_at(self, x: float, y: float) -> int | None:
        """The visible unit drawn at pixel (x, y), None when there is none."""
        if self.fp is None:
            return None
        i, j = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
        h, w = self.fp.shape
        if not (0 <= i < h and 0 <= j < w):
            return None
        row = int(self.fp.owner[i, j])
        if row < 0 or not self.visible_rows()[row]:
            return None
        return row

    def rows_in(self, rect: QRectF) -> list[int]:
        """Visible rows whose centre lies inside ``rect`` (pixel coordinates)."""
        if self.fp is None:
            return []
        cy, cx = self.fp.centroid[:, 0], self.fp.centroid[:, 1]
        ok = (self.visible_rows() & np.isfinite(cy) & (cx >= rect.left()) & (cx <= rect.right())
              & (cy >= rect.top()) & (cy <= rect.bottom()))
        return np.flatnonzero(ok).tolist()

    # -- drawing
    def _visibility_toggled(self, _=None) -> None:
        self._redraw()
        self.visibility_changed.emit()

    def _redraw(self, fill: bool = True, rows=None) -> None:
        if self.fp is None:
            return
        vis = self.visible_rows()
        show = self.contours_box.isChecked()
        for row in (range(len(self.curves)) if rows is None else sorted(rows)):
            curve = self.curves[row]
            on = bool(vis[row]) and (show or row in self.selected)
            curve.setVisible(on)
            if not on:
                continue
            sel = row in self.selected
            # selected outlines are white where colours carry meaning (label, activity)
            colour = (255, 255, 255) if sel and self.colour_mode() in ("label", "activity") \
                else tuple(int(c) for c in self.colours[row])
            curve.setPen(pg.mkPen(colour, width=SELECTED_WIDTH if sel else WIDTH,
                                  style=ORIGIN_STYLE.get(str(self.origin[row]),
                                                         Qt.PenStyle.SolidLine)))
            curve.setZValue(20 if sel else 10)
        if fill:
            self._draw_fill(vis)

    def _draw_fill(self, vis: np.ndarray) -> None:
        if not self.fill_box.isChecked() or self.fp is None or not len(self.colours):
            self.overlay.clear()
            return
        owner = self.fp.owner
        table = np.zeros((len(self.colours) + 1, 4), np.float32)  # last row: no unit
        table[:-1, :3] = self.colours
        table[:-1, 3] = FILL_ALPHA * vis * np.clip(self.strength, 0, 1)
        rgba = table[owner]  # owner -1 picks the empty last row
        rgba[..., 3] *= np.clip(self.fp.weight, 0, 1)
        self.overlay.setImage(rgba.astype(np.uint8), autoLevels=False)
        h, w = self.fp.shape
        self.overlay.setRect(QRectF(-0.5, -0.5, w, h))

    # -- mouse
    def _clicked(self, x: float, y: float, modifiers) -> None:
        row = self.row_at(x, y)
        mode = ("toggle" if modifiers & Qt.KeyboardModifier.ControlModifier else
                "add" if modifiers & Qt.KeyboardModifier.ShiftModifier else "replace")
        self.units_clicked.emit([] if row is None else [int(self.ids[row])], mode)

    def _boxed(self, rect: QRectF, modifiers) -> None:
        # Shift only starts a box; Ctrl adds the box's units to the selection
        mode = "add" if modifiers & Qt.KeyboardModifier.ControlModifier else "replace"
        self.units_clicked.emit([int(self.ids[r]) for r in self.rows_in(rect)], mode)

    def _mouse_moved(self, scene_pos) -> None:
        if self.fp is None or not self.view.sceneBoundingRect().contains(scene_pos):
            self.hover_label.setText(" ")
            return
        p = self.view.mapSceneToView(scene_pos)
        row = self.row_at(p.x(), p.y())
        text = self.describe(row) if row is not None else \
            f"(y {int(np.floor(p.y() + 0.5))}, x {int(np.floor(p.x() + 0.5))})"
        self.hover_label.setText(text)
        self.view.setToolTip(self.describe(row) if row is not None else "")
        self.hovered.emit(text)
