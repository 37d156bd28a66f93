"""The desktop entry point builds its window offscreen and lists every step."""

import pytest

pytest.importorskip("PySide6")


def test_window_lists_steps(qtbot):
    from PySide6.QtWidgets import QTreeWidget

    from mps_core.steps import STEPS
    from mps_gui.app import build_window

    win = build_window()
    qtbot.addWidget(win)
    tree = win.findChild(QTreeWidget)
    ids = []
    for i in range(tree.topLevelItemCount()):
        stage = tree.topLevelItem(i)
        ids += [stage.child(j).text(0) for j in range(stage.childCount())]
    assert ids == [s.id for s in STEPS]


def test_smoke_test_writes_screenshot(tmp_path):
    from mps_gui.app import main

    shot = tmp_path / "shot.png"
    assert main(["--smoke-test", "--screenshot", str(shot)]) == 0
    assert shot.stat().st_size > 1000
