"""Test-wide settings: Qt runs offscreen, set before any QApplication exists; a private
configuration folder."""

import os
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# notification settings: never the user's own (~/.config/mps), which would e-mail them
os.environ["MPS_CONFIG_DIR"] = tempfile.mkdtemp(prefix="mps-test-config-")
