"""`mps-gui`: the desktop application's entry point.

For now the window lists the pipeline steps and their status in a session folder; the full
step pages come with the GUI issue. `--smoke-test` builds the window, saves a screenshot and
exits, so installs can be checked without a person at the screen.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path


def build_window(session: Path | None = None):
    from PySide6.QtWidgets import QLabel, QMainWindow, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

    from mps_core import __version__
    from mps_core.steps import STEPS
    from mps_core.store import SessionStore

    statuses = {}
    if session is not None:
        store = SessionStore(session, create=False)
        statuses = store.statuses([s.id for s in STEPS])
    win = QMainWindow()
    win.setWindowTitle(f"MPS {__version__}")
    tree = QTreeWidget()
    tree.setHeaderLabels(["Step", "Title", "Status"])
    stage_items = {}
    for s in STEPS:
        parent = stage_items.get(s.stage)
        if parent is None:
            parent = stage_items[s.stage] = QTreeWidgetItem(tree, [s.stage])
            parent.setFirstColumnSpanned(True)  # stage names are longer than step ids
            parent.setExpanded(True)
        status = statuses.get(s.id, "not run") if s.implemented else "not available yet"
        item = QTreeWidgetItem(parent, [s.id, s.title, status])
        item.setToolTip(1, s.summary)
    tree.resizeColumnToContents(1)
    box = QWidget()
    lay = QVBoxLayout(box)
    lay.addWidget(QLabel("Pipeline steps. The step pages arrive with the desktop application "
                         "issue; use the `mps` command to run them now."))
    lay.addWidget(tree)
    win.setCentralWidget(box)
    win.resize(760, 720)
    return win


def main(argv: list[str] | None = None) -> int:
    multiprocessing.freeze_support()
    ap = argparse.ArgumentParser(prog="mps-gui")
    ap.add_argument("session", nargs="?", type=Path, help="a session output folder to open")
    ap.add_argument("--smoke-test", action="store_true",
                    help="build the window, save a screenshot, exit")
    ap.add_argument("--screenshot", type=Path, default=Path("mps-gui-smoke.png"))
    args = ap.parse_args(argv)
    try:
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication
    except ImportError as e:  # a missing system library (e.g. xcb) must not crash silently
        print(f"mps-gui: cannot start Qt: {e}", file=sys.stderr)
        return 1
    app = QApplication.instance() or QApplication(sys.argv[:1])
    win = build_window(args.session)
    win.show()
    if args.smoke_test:
        def shoot():
            win.grab().save(str(args.screenshot))
            app.quit()
        QTimer.singleShot(300, shoot)
    return app.exec()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
