"""The results explorer (mps_gui.explorer), offscreen.

On a session made by the real pipeline (`make_smoke_session`, once for the module): it opens,
a map click selects the unit's table row, traces and movie outline; a box selects several;
labels persist across a reopen; quarantined units can be restored (and say they need steps
5-8 re-run); the keyboard drives the movie; the movie and the traces' cursor follow each
other; the curated export writes files and changes nothing stored.

On a store shaped like a 60-minute recording (72,000 frames, 400 units; small frames): opening
it and selecting units reads only the stored chunks they need (chunk reads are counted at the
zarr store, so the test cannot flake on a slow machine).
"""

from __future__ import annotations

import collections
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QEvent, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QMouseEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from mps_core import curation as cu  # noqa: E402
from mps_core.store import SessionStore  # noqa: E402
from mps_gui.explorer import ExplorerWindow  # noqa: E402

from test_curation import build_session  # noqa: E402  (the store-format session builder)


# ============================================================================ fixtures


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    from mps_gui.app import make_smoke_session

    return make_smoke_session(tmp_path_factory.mktemp("explorer"))


@pytest.fixture
def smoke(smoke_root):
    """The module's session; labels and curated exports a test writes are removed after."""
    yield SessionStore(smoke_root, create=False)
    (smoke_root / cu.CURATION_FILE).unlink(missing_ok=True)
    shutil.rmtree(smoke_root / cu.CURATED_DIR, ignore_errors=True)


def _open(store, qtbot) -> ExplorerWindow:
    win = ExplorerWindow(store)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    assert win.wait_ready(60)
    return win


def _close(win: ExplorerWindow) -> None:
    win.close()
    QApplication.processEvents()


def _viewport_point(win: ExplorerWindow, y: float, x: float):
    scene = win.map.view.mapViewToScene(QPointF(x, y))
    return win.map.graphics.mapFromScene(scene)


def _click(win, y, x, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    QTest.mouseClick(win.map.graphics.viewport(), Qt.MouseButton.LeftButton, modifier,
                     _viewport_point(win, y, x))
    assert win.wait_ready(60)  # traces of a new chunk are read in a thread


def _drag(win, y0, x0, y1, x1, modifier=Qt.KeyboardModifier.ShiftModifier) -> None:
    """A real mouse drag (press, moves, release) over the map; pyqtgraph drops moves closer
    than 10 ms apart, so they are spaced."""
    widget = win.map.graphics.viewport()
    p0, p1 = _viewport_point(win, y0, x0), _viewport_point(win, y1, x1)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton

    def send(kind, p, button, buttons):
        QApplication.sendEvent(widget, QMouseEvent(kind, QPointF(p), QPointF(widget.mapToGlobal(p)),
                                                   button, buttons, modifier))
        time.sleep(0.02)

    send(QEvent.Type.MouseMove, p0, none, none)
    send(QEvent.Type.MouseButtonPress, p0, left, left)
    for k in range(1, 9):
        send(QEvent.Type.MouseMove, p0 + (p1 - p0) * k / 8, none, left)
    send(QEvent.Type.MouseButtonRelease, p1, left, none)
    QApplication.processEvents()


def _pixel_of(win: ExplorerWindow, uid: int) -> tuple[int, int]:
    """A pixel where unit ``uid`` is the unit drawn (its strongest such pixel)."""
    row = win.model.row_of[uid]
    fp = win.footprints
    w = np.where(fp.owner == row, fp.weight, -1)
    i, j = np.unravel_index(np.argmax(w), w.shape)
    assert w[i, j] > 0, f"unit {uid} owns no pixel"
    return int(i), int(j)


def _kept(win: ExplorerWindow) -> list[int]:
    t = win.data.table
    return [int(u) for u, o in zip(t.unit_id, t.origin) if o == "kept"]


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ============================================================================ the real session


def test_explorer_opens_on_a_finished_session(smoke, qtbot):
    win = _open(smoke, qtbot)
    table = cu.unit_table(smoke)
    assert win.model.rowCount() == len(table) > 0
    assert win.table.proxy.rowCount() == len(table)
    assert len(win.map.curves) == len(table)  # one outline per unit, drawn
    # units kept by 8c are drawn; quarantined ones only when asked for
    vis = win.map.visible_rows()
    assert vis[table.origin == "kept"].all() and not vis[table.origin == "quarantined"].any()
    win.map.quarantine_box.setChecked(True)
    assert win.map.visible_rows().all()
    assert win.data.trace_kinds() == ["C", "S", "YrA"]
    assert set(win.data.movie_stages()) == {"raw", "2e", "reconstruction", "residual"}
    assert win.player.stage == "2e" and win.player.canvas.image() is not None
    assert win.map.image.image is not None  # the mean image under the units
    assert win.traces.units() == [] and "quarantined at 4h" in win.statusBar().currentMessage()
    _close(win)


def test_a_map_click_selects_the_table_row_the_traces_and_the_outline(smoke, qtbot):
    win = _open(smoke, qtbot)
    uid = _kept(win)[0]
    y, x = _pixel_of(win, uid)
    _click(win, y, x)
    assert win.selected_ids() == [uid]
    assert win.table.selected_ids() == [uid]
    assert win.traces.units() == [uid]
    C = np.asarray(smoke.load("8b", "C_final").sel(unit_id=uid).values)
    np.testing.assert_array_equal(win.traces.curves[(uid, "C")].yData, C)
    assert {k for (u, k) in win.traces.curves} == {"C", "S", "YrA"}
    assert len(win.player._items) == 1  # the unit outlined on the movie
    assert win.map.selected == {win.model.row_of[uid]}
    assert win.describe_row(win.model.row_of[uid]).startswith(f"unit {uid} \u00b7 kept by 8c")
    # Ctrl-click adds a second unit, a click elsewhere (no unit) clears
    other = _kept(win)[1]
    _click(win, *_pixel_of(win, other), Qt.KeyboardModifier.ControlModifier)
    assert win.selected_ids() == [uid, other] and set(win.table.selected_ids()) == {uid, other}
    assert win.traces.units() == [uid, other]
    # the table drives the map the other way round
    idx = win.table.proxy.mapFromSource(win.model.index(win.model.row_of[other], 0))
    win.table.scrollTo(idx)
    QTest.mouseClick(win.table.viewport(), Qt.MouseButton.LeftButton,
                     Qt.KeyboardModifier.NoModifier, win.table.visualRect(idx).center())
    assert win.wait_ready(60)
    assert win.selected_ids() == [other] and win.traces.units() == [other]
    assert win.map.selected == {win.model.row_of[other]}
    _close(win)


def test_a_shift_drag_selects_every_unit_in_the_box(smoke, qtbot):
    win = _open(smoke, qtbot)
    h, w = win.data.shape
    _drag(win, -0.4, -0.4, h - 0.6, w - 0.6)
    fp = win.footprints
    expected = [int(win.data.table.unit_id[r]) for r in np.flatnonzero(
        win.map.visible_rows() & np.isfinite(fp.centroid[:, 0]))]
    assert sorted(win.selected_ids()) == sorted(expected) and len(expected) > 2
    assert sorted(win.table.selected_ids()) == sorted(expected)
    _close(win)


def test_labels_persist_across_a_reopen(smoke, qtbot):
    win = _open(smoke, qtbot)
    a, b, c = _kept(win)[:3]
    win.select_units([a, b])
    qtbot.mouseClick(win.buttons["accept"], Qt.MouseButton.LeftButton)
    win.select_units([c])
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow)
    QTest.keyClick(win, Qt.Key.Key_R)  # the R key rejects
    win.note_edit.setText("looks like a vessel")
    QTest.keyClick(win.note_edit, Qt.Key.Key_Return)
    assert "saved to curation.json" in win.message.text()
    _close(win)

    saved = json.loads((smoke.root / "curation.json").read_text())
    assert saved["units"][str(c)]["status"] == "rejected"
    assert saved["units"][str(c)]["note"] == "looks like a vessel"
    assert saved["made_for"]["8c"] == smoke.manifest("8c")["run_id"]
    win = _open(smoke, qtbot)
    assert [win.curation.status(u) for u in (a, b, c)] == ["accepted", "accepted", "rejected"]
    row = win.model.row_of[c]
    assert win.model.index(row, 1).data() == "rejected"
    assert win.model.index(row, 7).data() == "looks like a vessel"
    win.filter_box.setCurrentIndex(win.filter_box.findData("rejected"))
    assert win.table.proxy.rowCount() == 1
    assert not win.banner.isVisible()  # labels made on these very results
    _close(win)


def test_quarantined_units_can_be_restored_and_units_merged(smoke, qtbot):
    win = _open(smoke, qtbot)
    t = win.data.table
    q = int(t.unit_id[t.origin == "quarantined"][0])
    win.map.quarantine_box.setChecked(True)
    win.select_units([q, _kept(win)[0]])
    assert not win.buttons["merge"].isEnabled()  # a quarantined unit has no traces
    win.select_units([q])
    win.restore_selected()
    assert win.curation.status(q) == "accepted"
    assert "re-run steps 5-8" in win.message.text()
    assert cu.load_curation(smoke.root).restored_from_quarantine() == [q]
    assert win.traces.units() == [q]  # listed, with a word instead of traces
    a, b = _kept(win)[:2]
    win.select_units([a, b])
    win.merge_selected()
    assert win.curation.merges == [sorted([a, b])]
    assert win.model.index(win.model.row_of[a], 6).data() == str(b)
    win.unmerge_selected()
    assert win.curation.merges == []
    _close(win)


def test_keys_play_step_and_change_the_step_size(smoke, qtbot):
    win = _open(smoke, qtbot)
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow)
    win.table.setFocus()  # keys work wherever the focus is, except in text fields
    p = win.player
    assert p.pos == 0 and p.step_size() == 1
    QTest.keyClick(win.table, Qt.Key.Key_Right)
    assert p.pos == 1
    QTest.keyClick(win.table, Qt.Key.Key_Up)
    assert p.step_size() == 2
    QTest.keyClick(win.table, Qt.Key.Key_Right)
    assert p.pos == 3
    QTest.keyClick(win.table, Qt.Key.Key_Left)
    assert p.pos == 1
    QTest.keyClick(win.table, Qt.Key.Key_Down)
    assert p.step_size() == 1
    QTest.keyClick(win.table, Qt.Key.Key_Space)
    assert p.is_playing()
    qtbot.waitUntil(lambda: p.pos > 3, timeout=10000)
    QTest.keyClick(win.table, Qt.Key.Key_Space)
    assert not p.is_playing()
    _close(win)


def test_the_movie_and_the_trace_cursor_follow_each_other(smoke, qtbot):
    win = _open(smoke, qtbot)
    win.select_units(_kept(win)[:2])
    assert win.wait_ready(60)
    p = win.player
    p.show_position(100, emit=True)
    t = win.data.time_of(p.frame_number())
    assert win.traces.cursor() == pytest.approx(t)
    assert all(c.value() == pytest.approx(t) for c in win.traces.cursors)
    win.traces.cursor_moved.emit(float(win.data.times[40]))  # as a drag of the cursor does
    assert p.frame_number() == int(win.data.frames[40])
    # another stage keeps the moment; the residual is in the crop grid
    p.set_stage("residual")
    assert p.frame_number() == int(win.data.frames[40])
    assert p.canvas.image().shape == win.data.shape
    _close(win)


def test_colour_modes_and_backgrounds(smoke, qtbot):
    win = _open(smoke, qtbot)
    win.map.fill_box.setChecked(True)
    for mode in ("label", "snr", "activity", "unit"):
        win.map.colour_box.setCurrentIndex(win.map.colour_box.findData(mode))
        assert win.wait_ready(60)
        assert win.map.overlay.image is not None and win.map.overlay.image[..., 3].max() > 0
    for name in ("max", "correlation", "mean"):
        win.map.background_box.setCurrentIndex(win.map.background_box.findData(name))
        assert win.wait_ready(60)
        assert win.map.image.image.shape == win.data.shape
    corr = win.data.background("correlation")
    assert np.isfinite(corr).all() and corr.max() <= 1.0 + 1e-6
    _close(win)


def test_the_curated_export_writes_files_and_changes_nothing_stored(smoke, qtbot):
    before = _digest(smoke.root / "steps")
    win = _open(smoke, qtbot)
    kept = _kept(win)
    win.select_units([kept[0]])
    win.reject_selected()
    dlg = win.open_export_dialog()
    qtbot.addWidget(dlg)
    for fmt, box in dlg.formats.items():
        box.setChecked(fmt in ("numpy", "json"))
    dlg.start()
    qtbot.waitUntil(lambda: "units written" in dlg.status.text(), timeout=60000)
    ids = np.load(smoke.root / cu.CURATED_DIR / "unit_ids.npy").tolist()
    assert ids == kept[1:]
    assert _digest(smoke.root / "steps") == before
    _close(win)


def test_mps_explore_opens_the_explorer(smoke, qapp, tmp_path, capsys, monkeypatch):
    from mps_core.cli import main

    seen = []

    def fake_exec():
        # the test's shared QApplication must never run and quit its main loop: after a
        # quit, queued signals of later tests' worker threads are not delivered any more
        for w in QApplication.topLevelWidgets():
            if isinstance(w, ExplorerWindow) and w.isVisible():
                seen.append(w.store.root)
                w.wait_ready(60)
                w.close()
        return 0

    monkeypatch.setattr(type(qapp), "exec", staticmethod(fake_exec))
    assert main(["explore", str(smoke.root)]) == 0
    assert seen == [smoke.root]
    assert main(["explore", str(tmp_path)]) == 1
    assert "not an MPS session" in capsys.readouterr().err


# ============================================================================ 60 minutes


@pytest.fixture
def chunk_reads(monkeypatch):
    """Counts chunk reads per stored array (store folder, array) at the zarr store."""
    import zarr.storage

    reads: collections.Counter = collections.Counter()
    original = zarr.storage.LocalStore.get

    async def counting(self, key, prototype=None, byte_range=None):
        name, _, rest = key.partition("/")
        if rest.startswith("c/"):
            reads[(Path(str(self.root)).parent.name + "/" + Path(str(self.root)).name,
                   name)] += 1
        return await original(self, key, prototype, byte_range)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting)
    return reads


def test_a_60_minute_session_opens_reading_only_small_slices(tmp_path, qtbot, chunk_reads):
    n_units, n_frames = 400, 72_000
    truth = build_session(tmp_path / "long", n_units=n_units, n_frames=n_frames, height=24,
                          width=24, movie_chunk=500, lazy=True, n_quarantined=10)
    chunk_reads.clear()
    win = _open(truth["store"], qtbot)
    opened = dict(chunk_reads)
    # footprints: every block once (7 blocks of 64 units); quarantined: the block holding them
    assert opened[("7f/A_refined.zarr", "A_refined")] == 7
    assert opened[("4g/A_merged.zarr", "A_merged")] == 1
    # no trace was read, one chunk of the movie (500 of 72,000 frames)
    assert not any(k[1] in ("C_final", "S_final", "YrA_final") for k in opened)
    assert opened[("2e/movie.zarr", "movie")] == 1
    assert ("3a/movie_cropped.zarr", "movie_cropped") not in opened

    chunk_reads.clear()
    win.select_units([300])
    assert win.wait_ready(60)  # read in a thread: the window stays usable meanwhile
    win.select_units([301, 310])  # same stored chunk of 64 units: nothing more to read
    assert not win.jobs
    assert dict(chunk_reads) == {("8b/C_final.zarr", "C_final"): 1,
                                 ("8b/S_final.zarr", "S_final"): 1,
                                 ("8a/YrA_final.zarr", "YrA_final"): 1}
    assert win.traces.units() == [301, 310]
    assert win.traces.curves[(301, "C")].yData.size == n_frames
    chunk_reads.clear()
    for _ in range(20):  # stepping through a stored chunk decodes it once
        win.player.step(1)
    win.player.show_position(n_frames - 1, emit=True)
    assert dict(chunk_reads) == {("2e/movie.zarr", "movie"): 1}
    assert win.traces.cursor() == pytest.approx(win.data.times[-1])
    _close(win)


def test_the_explorer_collects_garbage_only_on_its_gui_thread(smoke, qtbot):
    import gc

    from mps_gui import gui_gc

    before = gc.get_threshold()
    win = _open(smoke, qtbot)
    win.select_units([_kept(win)[0]])   # dask slicing re-enables gc (its disable_gc)
    assert id(win._collector) in gui_gc._users
    assert gc.get_threshold()[0] == 0   # no automatic collection in any thread
    _close(win)
    assert id(win._collector) not in gui_gc._users
    if not gui_gc._users:
        assert gc.get_threshold() == before
