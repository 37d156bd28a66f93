"""Automation > Batch: sessions in a table, run unattended, a broken one reported."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")


def test_batch_window_runs_sessions_and_reports_the_broken_one(qtbot, tmp_path):
    from mps_core.params import ParamSet
    from mps_core.steps import STEPS
    from mps_core.synth import simulate, write_miniscope
    from mps_gui.batch_window import BatchWindow

    good = tmp_path / "good"
    write_miniscope(simulate(n_frames=60, height=48, width=48, n_cells=3, seed=2), good)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "0.avi").write_bytes(b"not a video at all" * 100)
    params = ParamSet(STEPS).with_values("1", {"n_workers": 1, "memory_limit_gb": 1.0})
    win = BatchWindow(params, STEPS)
    qtbot.addWidget(win)
    win.add_session(str(good), str(tmp_path / "out-good"), "m1", "d1")
    win.add_session(str(broken), str(tmp_path / "out-broken"), "m1", "d2")
    win.add_session(str(tmp_path / "missing"), str(tmp_path / "out-x"), "m1", "d3")
    win.table.selectRow(2)
    win.remove_selected()
    win.table.selectRow(1)
    win.move(-1)                                      # the broken one first: the batch goes on
    assert win.table.item(0, 0).text() == str(broken)
    win.stop.setCurrentIndex(win.stop.findData("2a"))
    win.summary.setText(str(tmp_path / "reports"))
    win.start()
    qtbot.waitUntil(lambda: win.outcomes is not None, timeout=180_000)
    statuses = [o.status for o in win.outcomes]
    assert statuses == ["failed", "done"], [(o.status, o.cause) for o in win.outcomes]
    assert win.table.item(0, 4).text() == "failed" and "2a" in win.table.item(0, 8).text()
    assert win.table.item(1, 4).text() == "done"
    assert (tmp_path / "reports" / "batch_summary.csv").exists()
    assert "1 failed" in win.message.text() and "1 done" in win.message.text()
