"""Test-wide settings: Qt runs offscreen, set before any QApplication exists; a private
configuration folder."""

import os
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# notification settings: never the user's own (~/.config/mps), which would e-mail them
os.environ["MPS_CONFIG_DIR"] = tempfile.mkdtemp(prefix="mps-test-config-")

import gc
import sys

import pytest


@pytest.fixture(autouse=True)
def _collect_qt_garbage_on_the_main_thread(request):
    """Qt objects a GUI test leaves in reference cycles are collected here, on the main thread,
    before a later test starts pipeline threads. Collected from a worker or preview thread,
    their destructors deadlock against the main thread (seen in CI: a QMenu destroyed in the
    preview thread while the main thread destroyed another widget; the windows' own collector,
    mps_gui.gui_gc, only runs while a window is open)."""
    yield
    if "PySide6" in sys.modules and request.node.module.__name__.rsplit(".", 1)[-1].startswith(
            ("test_gui", "test_curation", "test_installer")):
        gc.collect()
