"""The pyqtgraph viewers: preview figures, lazy movie browsing and the step 3a crop editor."""

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import xarray as xr  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from mps_core.figures import Figure, HistPanel, ImagePanel, LinePanel, TextPanel  # noqa: E402
from mps_core.init.crop import crop_box  # noqa: E402
from mps_gui.crop_editor import CropEditor  # noqa: E402
from mps_gui.viewers import FigureView, MovieView, robust_levels  # noqa: E402

RNG = np.random.default_rng(0)


def _figure() -> Figure:
    img = RNG.random((24, 30)).astype(np.float32)
    img[3, 4] = np.nan  # previews can hold NaN outside the field
    t = np.linspace(0, 2 * np.pi, 40)
    outline = (12 + 5 * np.sin(t), 15 + 5 * np.cos(t), "cell 1")
    x = np.arange(100.0)
    return Figure("All kinds", [
        ImagePanel("mean frame", img, cmap="magma", outlines=[outline]),
        LinePanel("traces", x, {"a": np.sin(x / 10), "b": np.cos(x / 10)}, xlabel="frame",
                  ylabel="dF", hlines={"threshold": 0.5}, marks=np.array([10, 50, 70])),
        HistPanel("sizes", {"kept": RNG.normal(0, 1, 200), "dropped": RNG.normal(2, 1, 50)},
                  bins=20, xlabel="px"),
        TextPanel("summary", "cells kept: 12\ncells dropped: 3"),
    ])


def _grab(widget, path) -> np.ndarray:
    widget.grab().save(str(path))
    img = QImage(str(path)).convertToFormat(QImage.Format.Format_RGB32)
    buf = np.frombuffer(img.constBits(), np.uint8, img.sizeInBytes())
    return buf.reshape(img.height(), img.bytesPerLine())


def test_figure_view_draws_every_panel_kind(qtbot, tmp_path):
    fig = _figure()
    view = FigureView()
    qtbot.addWidget(view)
    view.resize(900, 700)
    view.show_figure(fig)
    view.show()
    qtbot.waitExposed(view)

    assert len(view.panels) == 4
    assert len(view.image_items) == 1 and len(view.histograms) == 1
    assert len(view.plot_items) == 2  # line + histogram panels
    assert len(view.text_boxes) == 1 and view.text_boxes[0].isReadOnly()
    assert "cells dropped: 3" in view.text_boxes[0].toPlainText()
    item = view.image_items[0]
    np.testing.assert_array_equal(item.image, fig.panels[0].image)
    lo, hi = robust_levels(fig.panels[0].image)
    np.testing.assert_allclose(item.getLevels(), [lo, hi], rtol=1e-5)
    # row 0 at the top, pixel centres on integers
    assert view.panels[0].content.view.yInverted()
    assert item.mapToParent(item.boundingRect()).boundingRect().topLeft().x() == pytest.approx(-0.5)
    # outline on the image; legend + 2 curves on lines; 2 filled step curves on the histogram
    assert sum(type(i).__name__ == "PlotDataItem" for i in view.panels[0].content.view.addedItems) == 1
    lines, hist = view.plot_items
    assert lines.legend is not None and len(lines.listDataItems()) == 3  # a, b and the marks
    assert lines.getAxis("bottom").labelText == "frame"
    assert len(hist.listDataItems()) == 2
    # hovering writes the pixel value in the panel title
    canvas = view.panels[0].content
    assert canvas.pixel_text(2, 5) == f"value {fig.panels[0].image[2, 5]:.4g} at (y 2, x 5)"
    view.panels[0].show_hover(canvas.pixel_text(2, 5))
    assert "at (y 2, x 5)" in view.panels[0].title_label.text()

    pix = _grab(view, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 1000
    assert pix.std() > 10  # not a blank widget


def test_figure_view_message_and_bad_panel(qtbot):
    view = FigureView()
    qtbot.addWidget(view)
    view.show_figure(_figure())
    view.show_message("Run this step to see its previews")
    assert view.panels == [] and view.image_items == []
    assert view.message_label.text() == "Run this step to see its previews"
    assert not view.message_label.isHidden()
    # a panel that cannot be drawn says so, the others still show
    bad = Figure("bad", [ImagePanel("broken", np.zeros((2, 3, 5))), TextPanel("ok", "fine")])
    view.show_figure(bad)
    assert view.message_label.isHidden()
    assert "preview could not be drawn" in view.panels[0].content.text()
    assert len(view.text_boxes) == 1
    with pytest.raises(ValueError, match="Figure"):
        view.show_figure("not a figure")


# ----------------------------------------------------------------------------- movies


def _movie(n=30, h=32, w=40, reads=None, offset=0.0):
    """A lazy movie whose frame k has value k + offset + small pattern; ``reads`` logs frames read."""
    pattern = np.add.outer(np.arange(h), np.arange(w)).astype(np.float32) / 100

    def frame(k):
        if reads is not None:
            reads.append(k)
        return (pattern + k + offset)[None]

    parts = [da.from_delayed(dask.delayed(frame)(k), (1, h, w), np.float32) for k in range(n)]
    time_s = np.arange(n) * 0.05
    time_s[3] = np.nan
    return xr.DataArray(da.concatenate(parts), dims=("frame", "height", "width"),
                        coords={"frame": np.arange(n) + 100, "time_s": ("frame", time_s)})


def test_movie_view_browses_lazily(qtbot):
    reads = []
    view = MovieView()
    qtbot.addWidget(view)
    view.set_movies({"motion corrected": _movie(reads=reads)})
    img = view.canvases[0].image_item.image
    assert view.frame() == 0 and img[0, 0] == pytest.approx(0.0)
    assert reads == [0]  # only the frame shown was computed
    levels0 = view.canvases[0].levels()

    view.set_frame(7)
    assert view.frame() == 7 and view.slider.value() == 7 and view.spin.value() == 7
    np.testing.assert_allclose(view.canvases[0].image_item.image, _movie()[7].values)
    assert "original frame 107" in view.frame_label.text()
    assert "time 0.350 s" in view.frame_label.text()
    assert view.canvases[0].levels() == levels0  # levels kept while scrubbing
    view.set_frame(3)  # NaN time is not shown
    assert "time" not in view.frame_label.text()
    assert sorted(reads) == [0, 3, 7]

    view.auto_levels.setChecked(True)
    view.slider.setValue(20)  # the slider drives the frame too
    assert view.frame() == 20 and view.spin.value() == 20
    assert view.canvases[0].levels()[0] > levels0[1]
    view.set_frame(999)  # clamped to the last frame
    assert view.frame() == 29


def test_movie_view_pair_in_sync_and_mismatch(qtbot):
    view = MovieView()
    qtbot.addWidget(view)
    view.set_movies({"before": _movie(), "after": _movie(offset=1000.0)})
    assert len(view.canvases) == 2
    view.set_frame(5)
    before, after = (c.image_item.image for c in view.canvases)
    assert before[0, 0] == pytest.approx(5.0) and after[0, 0] == pytest.approx(1005.0)
    # pan/zoom is linked
    view.canvases[0].view.setRange(xRange=(2, 10), yRange=(3, 9), padding=0)
    r0, r1 = view.canvases[0].view.viewRange(), view.canvases[1].view.viewRange()
    np.testing.assert_allclose(r0, r1, atol=1e-6)

    with pytest.raises(ValueError, match="'before' \\(30 frames\\).*'after' \\(12 frames\\)"):
        view.set_movies({"before": _movie(), "after": _movie(n=12)})
    with pytest.raises(ValueError, match="dims"):
        view.set_movies({"flat": xr.DataArray(np.zeros((3, 4)), dims=("frame", "x"))})
    view.clear()
    assert view.canvases == [] and view.frame_label.text() == "No movie loaded"


def test_movie_view_plays(qtbot):
    reads = []
    view = MovieView()
    qtbot.addWidget(view)
    view.set_movies({"movie": _movie(n=10, reads=reads)})
    view.play()
    assert view.is_playing()
    qtbot.waitUntil(lambda: view.frame() >= 3, timeout=5000)
    view.pause()
    assert not view.is_playing()
    shown = view.frame()
    assert view.canvases[0].image_item.image[0, 0] == pytest.approx(shown)
    assert len(reads) == len(set(reads)) <= shown + 1  # never re-read or read ahead
    view.play()  # runs to the end and stops there
    qtbot.waitUntil(lambda: not view.is_playing(), timeout=5000)
    assert view.frame() == 9


# ----------------------------------------------------------------------------- crop editor


@pytest.mark.parametrize("shape", ["circle", "square"])
def test_crop_editor_round_trip(qtbot, shape):
    ed = CropEditor()
    qtbot.addWidget(ed)
    ed.set_image(RNG.random((32, 40)).astype(np.float32))
    ed.set_crop(shape, 0.6, offset_x=3, offset_y=-2, full_frame=False)
    assert ed.crop() == {"shape": shape, "size_fraction": 0.6, "offset_x": 3, "offset_y": -2}
    assert isinstance(ed.roi, {"circle": __import__("pyqtgraph").CircleROI,
                               "square": __import__("pyqtgraph").RectROI}[shape])
    # the ROI sits where crop_box puts the crop: centre and size in pixel coordinates
    d = 0.6 * 32
    pos, size = ed.roi.pos(), ed.roi.size()
    assert (size.x(), size.y()) == pytest.approx((d, d))
    assert (pos.x() + d / 2, pos.y() + d / 2) == pytest.approx((19.5 + 3, 15.5 - 2))
    c = crop_box(32, 40, shape=shape, size_fraction=0.6, offset_x=3, offset_y=-2)
    assert f"keeps {c.h} x {c.w} px" in ed.size_label.text()
    # the ROI read back gives the same parameters
    assert ed._state_from_roi() == ed.crop()
    # out-of-range size is clipped to the parameter's bounds; full frame hides the outline
    ed.set_crop(shape, 1.7, 0, 0, full_frame=True)
    assert ed.crop()["size_fraction"] == 1.0 and not ed.roi.isVisible()
    assert "Full frame" in ed.size_label.text()
    with pytest.raises(ValueError, match="shape"):
        ed.set_crop("hexagon", 0.5, 0, 0, False)


def test_crop_editor_emits_on_user_move(qtbot):
    ed = CropEditor()
    qtbot.addWidget(ed)
    ed.set_crop("circle", 0.5, 0, 0, False)  # before the image: kept and applied later
    ed.set_image(np.zeros((32, 40), np.float32))
    got = []
    ed.crop_changed.connect(got.append)
    d = 0.5 * 32
    with qtbot.waitSignal(ed.crop_changed, timeout=1000) as sig:
        ed.roi.setPos((19.5 + 5.2 - d / 2, 15.5 - 4.1 - d / 2))  # emits the finish signal
    assert sig.args[0] == {"shape": "circle", "size_fraction": 0.5, "offset_x": 5, "offset_y": -4}
    assert ed.crop() == sig.args[0]
    ed.roi.sigRegionChangeFinished.emit(ed.roi)  # nothing changed: no second emission
    assert len(got) == 1
    # a resize through the handle side: size changes, centre stays
    ed.roi.setSize((20, 20), center=(0.5, 0.5))
    assert got[-1]["size_fraction"] == pytest.approx(20 / 32, abs=1e-4)
    assert (got[-1]["offset_x"], got[-1]["offset_y"]) == (5, -4)
    # dragging the centre off the frame keeps it on the edge pixel
    ed.roi.setPos((500, 500))
    assert got[-1]["offset_x"] == 19 and got[-1]["offset_y"] == 15

