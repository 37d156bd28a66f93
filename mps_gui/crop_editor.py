"""Step 3a crop editor: drag and resize the crop on the motion-corrected mean (or max) frame.

The ROI maps one-to-one to step 3a's parameters, with the geometry of
:func:`mps_core.init.crop.crop_box`: pixel ``(i, j)`` has its centre at ``y = i, x = j``; the crop
centre is ``((H - 1) / 2 + offset_y, (W - 1) / 2 + offset_x)`` and its diameter (circle) or side
(square) is ``D = size_fraction * min(H, W)``. The editor only edits those numbers; the step
itself does the cropping, so what is saved is exactly what the parameters say.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from mps_core import paramtypes
from mps_core.init.crop import SHAPES, crop_box
from mps_core.steps import get as get_step

from .viewers import ImageCanvas

__all__ = ["CropEditor"]

ROI_PEN = pg.mkPen((255, 220, 0), width=2)
MIN_CROP_PX = 2.0  # a dragged crop smaller than this holds no pixel of a half-pixel centre


def _param_bounds(name: str) -> dict[str, float]:
    return paramtypes.bounds(get_step("3a").params.model_fields[name])


def _clip(value: float, b: dict[str, float], step: float) -> float:
    """Clip to a field's bounds; an open bound (gt/lt) is kept ``step`` inside."""
    lo = b.get("ge", b["gt"] + step if "gt" in b else -np.inf)
    hi = b.get("le", b["lt"] - step if "lt" in b else np.inf)
    return float(min(max(value, lo), hi))


class CropEditor(QWidget):
    """An image with a circle or square crop ROI mapped to step 3a's parameters.

    ``crop_changed`` emits ``{"shape", "size_fraction", "offset_x", "offset_y"}`` when the
    user finishes moving or resizing the ROI (only if the values changed).
    """

    crop_changed = Signal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.canvas = ImageCanvas()
        self.size_label = QLabel()
        self.size_label.setWordWrap(True)
        self.size_label.setToolTip("The crop keeps only the pixels inside the yellow outline. "
                                   "Drag it to move it, drag its handle to resize it.")
        lay = QVBoxLayout(self)
        lay.addWidget(self.canvas, 1)
        lay.addWidget(self.size_label)
        self.roi: pg.ROI | None = None
        self._shape_hw: tuple[int, int] | None = None
        self._full_frame = False
        self._placing = False  # set while the ROI is moved by code, not by the user
        self._state = {"shape": "circle", "size_fraction": 0.75, "offset_x": 0, "offset_y": 0}
        self._update_label()

    # -- public API

    def set_image(self, img: np.ndarray) -> None:
        """Show ``img`` (H, W), the full frame; the crop keeps its parameters."""
        a = np.asarray(img)
        if a.ndim != 2:
            raise ValueError(f"CropEditor.set_image: image must be 2-D (height, width), got shape {a.shape}")
        self._shape_hw = (int(a.shape[0]), int(a.shape[1]))
        self.canvas.set_image(a)
        self._place_roi()

    def set_crop(self, shape: str, size_fraction: float, offset_x: int, offset_y: int,
                 full_frame: bool = False) -> None:
        """Show the crop given by step 3a's parameters (``full_frame`` hides it)."""
        if shape not in SHAPES:
            raise ValueError(f"step 3a shape must be one of {list(SHAPES)}, got {shape!r}")
        for name, v in (("size_fraction", size_fraction), ("offset_x", offset_x), ("offset_y", offset_y)):
            if not np.isfinite(v):
                raise ValueError(f"step 3a {name} must be a finite number, got {v!r}")
        self._state = {
            "shape": shape,
            "size_fraction": _clip(float(size_fraction), _param_bounds("size_fraction"), 1e-3),
            "offset_x": int(round(_clip(offset_x, _param_bounds("offset_x"), 1))),
            "offset_y": int(round(_clip(offset_y, _param_bounds("offset_y"), 1))),
        }
        self._full_frame = bool(full_frame)
        self._place_roi()

    def crop(self) -> dict:
        """The current crop as step 3a parameters {shape, size_fraction, offset_x, offset_y}."""
        return dict(self._state)

    # -- ROI <-> parameters

    def _geometry(self, state: dict) -> tuple[float, float, float]:
        """(centre y, centre x, size D) in pixels for ``state``."""
        H, W = self._shape_hw
        return ((H - 1) / 2.0 + state["offset_y"], (W - 1) / 2.0 + state["offset_x"],
                state["size_fraction"] * min(H, W))

    def _state_from_roi(self) -> dict:
        H, W = self._shape_hw
        pos, size = self.roi.pos(), self.roi.size()
        d = (size.x() + size.y()) / 2.0
        cx, cy = pos.x() + size.x() / 2.0, pos.y() + size.y() / 2.0
        # keep the centre inside the frame so the crop always holds pixels
        hx, hy = int(np.floor((W - 1) / 2.0)), int(np.floor((H - 1) / 2.0))
        ox = int(np.clip(round(cx - (W - 1) / 2.0), -hx, hx))
        oy = int(np.clip(round(cy - (H - 1) / 2.0), -hy, hy))
        frac = max(d, MIN_CROP_PX) / min(H, W)
        frac = round(_clip(frac, _param_bounds("size_fraction"), 1e-3), 4)
        return {"shape": self._state["shape"], "size_fraction": frac,
                "offset_x": int(_clip(ox, _param_bounds("offset_x"), 1)),
                "offset_y": int(_clip(oy, _param_bounds("offset_y"), 1))}

    def _make_roi(self, shape: str, pos, size) -> pg.ROI:
        if shape == "circle":
            roi = pg.CircleROI(pos, size, pen=ROI_PEN, movable=True, rotatable=False)
        else:
            roi = pg.RectROI(pos, size, centered=True, sideScalers=False, aspectLocked=True,
                             pen=ROI_PEN, movable=True, rotatable=False)
        roi.setToolTip("Crop: drag to move, drag the handle to resize")
        roi.sigRegionChanged.connect(self._roi_moving)
        roi.sigRegionChangeFinished.connect(self._roi_finished)
        return roi

    def _place_roi(self) -> None:
        """Draw the ROI for the stored parameters (no signal: the user did not move it)."""
        if self._shape_hw is None:
            self._update_label()
            return
        cy, cx, d = self._geometry(self._state)
        pos, size = (cx - d / 2.0, cy - d / 2.0), (d, d)
        kind = pg.CircleROI if self._state["shape"] == "circle" else pg.RectROI
        self._placing = True
        try:
            if self.roi is not None and type(self.roi) is not kind:
                self.canvas.view.removeItem(self.roi)
                self.roi = None
            if self.roi is None:
                self.roi = self._make_roi(self._state["shape"], pos, size)
                self.canvas.view.addItem(self.roi)
            else:
                self.roi.setPos(pos, update=False, finish=False)
                self.roi.setSize(size, finish=False)
            self.roi.setVisible(not self._full_frame)
        finally:
            self._placing = False
        self._update_label()

    def _roi_moving(self, _roi=None) -> None:
        if not self._placing:
            self._update_label(self._state_from_roi())

    def _roi_finished(self, _roi=None) -> None:
        if self._placing or self.roi is None or self._shape_hw is None:
            return
        new = self._state_from_roi()
        changed = new != self._state
        self._state = new
        self._place_roi()  # snap the outline to the rounded values the step will use
        if changed:
            self.crop_changed.emit(dict(new))

    # -- label

    def _update_label(self, state: dict | None = None) -> None:
        self.size_label.setText(self._label_text(state or self._state))

    def _label_text(self, state: dict) -> str:
        if self._shape_hw is None:
            return "No image yet: run the motion correction steps to place the crop on the mean frame."
        H, W = self._shape_hw
        if self._full_frame:
            return f"Full frame kept: {H} x {W} px (height x width); the crop outline is hidden."
        try:
            c = crop_box(H, W, shape=state["shape"], size_fraction=state["size_fraction"],
                         offset_y=state["offset_y"], offset_x=state["offset_x"])
        except ValueError as e:
            return f"This crop cannot be used: {e}"
        d = state["size_fraction"] * min(H, W)
        what = "circle" if state["shape"] == "circle" else "square"
        return (f"Crop: {what} {d:.0f} px across, keeps {c.h} x {c.w} px (height x width) of the "
                f"{H} x {W} px frame; centre moved {state['offset_x']:+d} px right, "
                f"{state['offset_y']:+d} px down.")
