#!/usr/bin/env bash
# Build MPS.app on a Mac from installer/mps.spec (the same recipe as Linux and Windows),
# run its smoke test, then make the .dmg (make_dmg.sh).
#
#   installer/macos/build_macos.sh     -> dist/MPS.app, dist/mps-<version>-macos-<arch>.dmg
#
# Needs Python 3.11+ from python.org or Homebrew (PYTHON, default python3). Makes a separate
# build environment (build/frozen/venv-mac) with the pinned PyInstaller
# (installer/build-requirements.txt) and the project (`pip install .`). PyInstaller signs the
# app ad hoc; signing with a Developer ID and notarising are not done here.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=$ROOT/build/frozen/venv-mac

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q -r installer/build-requirements.txt
"$VENV/bin/pip" install -q --force-reinstall --no-deps "$ROOT"
"$VENV/bin/pip" install -q "$ROOT"

rm -rf dist/mps dist/MPS.app
"$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
  --distpath dist --workpath build/frozen/work-mac installer/mps.spec

echo "== frozen smoke test"
QT_QPA_PLATFORM=offscreen dist/MPS.app/Contents/MacOS/mps-gui --smoke-test \
  --screenshot build/frozen/smoke-macos.png

installer/macos/make_dmg.sh
