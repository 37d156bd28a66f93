"""Tools > Stitch streams: the dialog runs `stitch_streams`, asks before overwriting."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")

from test_stitch import NUMS, clean_movie, read_all, write_stream  # noqa: E402


def test_stitch_dialog_stitches_and_asks_before_overwriting(qtbot, tmp_path):
    from mps_gui.stitch_dialog import StitchDialog

    movie = clean_movie(len(NUMS))
    a, _ = write_stream(tmp_path / "rx1", "a", movie, NUMS, {105: "lost_buffer"}, drop={100})
    b, _ = write_stream(tmp_path / "rx2", "b", movie, NUMS, {107: "noise"}, drop={129}, seed=2)
    dlg = StitchDialog()
    qtbot.addWidget(dlg)
    dlg.start()                                           # nothing chosen yet: one clear line
    qtbot.waitUntil(lambda: dlg.ok is not None, timeout=30_000)
    assert dlg.ok is False and "two receiver videos" in dlg.message.text()
    dlg.add_video(str(a))
    dlg.add_video(str(b))
    dlg.output.setText(str(tmp_path / "out"))
    dlg.start()
    qtbot.waitUntil(lambda: dlg.ok is not None, timeout=120_000)
    assert dlg.ok, dlg.message.text()
    frames = read_all(tmp_path / "out" / "stitched.avi")
    assert frames.shape[0] == len(NUMS)
    asked = []
    dlg._confirm_overwrite = lambda line: asked.append(line) or False
    dlg.start()
    qtbot.waitUntil(lambda: dlg.ok is not None, timeout=60_000)
    assert asked and dlg.ok is False and "already exist" in dlg.message.text()
    dlg._confirm_overwrite = lambda line: True
    dlg.start()
    qtbot.waitUntil(lambda: dlg.ok is not None, timeout=120_000)
    assert dlg.ok
