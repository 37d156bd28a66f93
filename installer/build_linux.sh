#!/usr/bin/env bash
# Build the frozen MPS folder and its tarball on Linux, from a clean checkout.
#
#   installer/build_linux.sh            -> dist/mps/ and dist/mps-<version>-linux-<arch>.tar.gz
#
# Makes (or reuses) a separate build environment, build/frozen/venv, with a pinned
# PyInstaller and the project installed from this checkout (`pip install .`), so nothing
# installed by hand is needed and the developer's own environment is left alone.
# Environment: PYTHON (default python3, >= 3.11), MPS_BUILD_VENV (default build/frozen/venv),
# MPS_DIST_DIR (default dist), MPS_WORK_DIR (PyInstaller's work folder, build/frozen/work).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PY=${PYTHON:-python3}
VENV=${MPS_BUILD_VENV:-$ROOT/build/frozen/venv}
WORK=${MPS_WORK_DIR:-$ROOT/build/frozen/work}
DIST=${MPS_DIST_DIR:-$ROOT/dist}

version=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
arch=$(uname -m)
tarball="$DIST/mps-$version-linux-$arch.tar.gz"

step() { printf '\n== %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "build environment: $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
step "pinned PyInstaller and the project (pip install .)"
"$VENV/bin/pip" install -q -r installer/build-requirements.txt
# the project itself, fresh each build (not editable: the bundle must not point at the checkout)
"$VENV/bin/pip" install -q --force-reinstall --no-deps "$ROOT"
"$VENV/bin/pip" install -q "$ROOT"

step "freezing (a few minutes)"
rm -rf "$DIST/mps"
start=$(date +%s)
"$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
  --distpath "$DIST" --workpath "$WORK" installer/mps.spec
echo "froze in $(( $(date +%s) - start )) s"

step "deduplicating identical libraries"
# wheels vendor the same library under their own *.libs folders (scs and sparsediffpy carry
# the same OpenBLAS build): keep one copy, link the others to it
"$VENV/bin/python" - "$DIST/mps" <<'PY'
import hashlib, os, sys
from pathlib import Path

first, saved = {}, 0
for path in sorted(Path(sys.argv[1]).rglob("*.so*")):
    if path.is_symlink() or not path.is_file() or path.stat().st_size < 1 << 20:
        continue
    key = (path.name, hashlib.sha256(path.read_bytes()).hexdigest())
    if key in first:
        saved += path.stat().st_size
        path.unlink()
        path.symlink_to(os.path.relpath(first[key], path.parent))
    else:
        first[key] = path
print(f"linked duplicates: {saved / 2**20:.0f} MB saved")
PY
echo "$version" > "$DIST/mps/VERSION"

step "tarball"
# the installer scripts and icon travel with the folder, so the tarball installs on its own
cp installer/install_linux.sh installer/uninstall_linux.sh installer/linux/mps.desktop.in \
  "$DIST/mps/"
rm -f "$tarball"
if command -v pigz >/dev/null 2>&1; then zip=(-I pigz); else zip=(-z); fi  # pigz: all cores
tar -C "$DIST" "${zip[@]}" -cf "$tarball" mps
echo "folder:  $DIST/mps ($(du -sm "$DIST/mps" | cut -f1) MB)"
echo "tarball: $tarball ($(du -m "$tarball" | cut -f1) MB)"
