#!/usr/bin/env bash
# CI check of the Linux installer, end to end:
#   1. build the frozen folder and tarball (build_linux.sh; MPS_SKIP_BUILD=1 reuses dist/)
#   2. the frozen self-check: bundled data, imports, dask threads, a process LocalCluster
#      (workers re-enter the frozen executable), cvxpy/ECOS/SCS + numba, zarr/tiff/mp4/png
#   3. the frozen `mps-gui --smoke-test`, offscreen (timed)
#   4. install the tarball into a temporary HOME, check the desktop entry (name, version,
#      icon, an existing executable) and start that executable
#   5. under Xvfb (when Xvfb and xwininfo are installed): time from start to the first
#      window on screen; then the readable message (no crash) when an xcb library is
#      missing or there is no display
#   6. uninstall and check that entry, icons, link and folder are gone
# Prints the bundle size and the timings. Exit status 0 only if every check passed.
# Environment: MPS_DIST_DIR (default dist), MPS_SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIST=${MPS_DIST_DIR:-$ROOT/dist}
export MPS_DIST_DIR=$DIST MPS_NO_DIALOG=1
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
TARBALL=$DIST/mps-$version-linux-$(uname -m).tar.gz

tmp=$(mktemp -d)
xvfb_pid=""
app_pid=""
cleanup() {
  [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null || true
  [ -n "$xvfb_pid" ] && kill "$xvfb_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
# a throwaway HOME for everything the app writes (settings, numba's cache) and the install
export HOME=$tmp/home XDG_DATA_HOME= XDG_CONFIG_HOME= XDG_CACHE_HOME=
unset XDG_DATA_HOME XDG_CONFIG_HOME XDG_CACHE_HOME
mkdir -p "$HOME"

step() { printf '\n== %s\n' "$*"; }
fail() { echo "ci_check: FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

if [ "${MPS_SKIP_BUILD:-0}" != 1 ]; then
  step "build"
  t=$(now); installer/build_linux.sh; build_s=$(since "$t")
else
  build_s="skipped"
fi
[ -x "$DIST/mps/mps-gui" ] || fail "no frozen executable $DIST/mps/mps-gui"
[ -f "$TARBALL" ] || fail "no tarball $TARBALL"
size_mb=$(du -sm "$DIST/mps" | cut -f1)
tar_mb=$(du -m "$TARBALL" | cut -f1)

step "frozen self-check (no display)"
QT_QPA_PLATFORM=offscreen "$DIST/mps/mps-gui" --frozen-self-check

step "frozen smoke test, offscreen"
t=$(now)
QT_QPA_PLATFORM=offscreen "$DIST/mps/mps-gui" --smoke-test --screenshot "$tmp/smoke.png" \
  --settings "$tmp/settings.ini" || fail "frozen smoke test"
[ -s "$tmp/smoke.png" ] || fail "no screenshot from the frozen smoke test"
smoke_s=$(since "$t")

step "install into a temporary HOME ($HOME)"
installer/install_linux.sh --desktop "$TARBALL"
entry=$HOME/.local/share/applications/mps.desktop
[ -f "$entry" ] || fail "no desktop entry $entry"
grep -qx "Name=MPS" "$entry" || fail "desktop entry name"
grep -qx "X-MPS-Version=$version" "$entry" || fail "desktop entry version (expected $version)"
exec_path=$(sed -n 's/^Exec=//p' "$entry" | sed 's/^"\(.*\)"$/\1/')
icon_path=$(sed -n 's/^Icon=//p' "$entry")
[ -x "$exec_path" ] || fail "desktop entry Exec=$exec_path is not an executable"
[ -s "$icon_path" ] || fail "desktop entry Icon=$icon_path does not exist"
[ -f "$HOME/Desktop/mps.desktop" ] || fail "no desktop launcher"
if command -v desktop-file-validate >/dev/null 2>&1; then desktop-file-validate "$entry"; fi
echo "Exec=$exec_path  Icon=$icon_path"
# it starts and finds its bundled guide and presets (the window itself: next step, on Xvfb)
QT_QPA_PLATFORM=offscreen "$exec_path" --frozen-self-check data \
  || fail "the installed executable did not start"
# the same executable linked as `mps` is the headless command line
"$HOME/.local/bin/mps" --help | grep -q "usage: mps" || fail "the installed mps command"

first_window_s="not measured (no Xvfb)"
if command -v Xvfb >/dev/null 2>&1 && command -v xwininfo >/dev/null 2>&1; then
  step "first window on a real X server (Xvfb)"
  n=90
  while [ -e "/tmp/.X11-unix/X$n" ] || [ -e "/tmp/.X$n-lock" ]; do n=$((n + 1)); done
  Xvfb ":$n" -screen 0 1600x1000x24 -nolisten tcp >/dev/null 2>&1 &
  xvfb_pid=$!
  for _ in $(seq 100); do [ -e "/tmp/.X11-unix/X$n" ] && break; sleep 0.1; done
  export DISPLAY=":$n"
  t=$(now)
  env -u QT_QPA_PLATFORM "$exec_path" --settings "$tmp/settings.ini" >"$tmp/window.log" 2>&1 &
  app_pid=$!
  shown=0
  # the main window: WM_CLASS ("mps-gui", "MPS") and mapped (Qt's 1x1 helper windows,
  # made with the QApplication, have no class)
  for _ in $(seq 1200); do
    w=$(xwininfo -root -tree 2>/dev/null | awk '/\("mps-gui" "MPS"\)/ {print $1; exit}' || true)
    if [ -n "$w" ] && xwininfo -id "$w" 2>/dev/null | grep -q "IsViewable"; then
      shown=1; break
    fi
    kill -0 "$app_pid" 2>/dev/null || break
    sleep 0.1
  done
  first_window_s=$(since "$t")
  kill "$app_pid" 2>/dev/null || true
  wait "$app_pid" 2>/dev/null || true
  app_pid=""
  [ "$shown" = 1 ] || { cat "$tmp/window.log"; fail "no MPS window appeared"; }
  echo "first window after $first_window_s s"
fi

step "a missing xcb library gives a readable message, not a crash"
# The bundle carries most xcb libraries; libxcb itself, libGL and libEGL come from the
# system (PyInstaller never bundles them). An unloadable libxcb.so.1 found first on the
# library path stands for the missing package.
mkdir -p "$tmp/broken-libs"
: > "$tmp/broken-libs/libxcb.so.1"
set +e
DISPLAY=${DISPLAY:-:0} LD_LIBRARY_PATH=$tmp/broken-libs QT_QPA_PLATFORM=xcb timeout 120 \
  "$exec_path" >"$tmp/missing.log" 2>&1
rc=$?
set -e
cat "$tmp/missing.log"
[ "$rc" = 1 ] || fail "exit status $rc with a missing library (expected 1; 134 = Qt aborted)"
grep -qx "  sudo apt-get install libxcb1" "$tmp/missing.log" || fail "the message does not name libxcb1 (alone)"

step "no display at all: a readable message"
set +e
env -u DISPLAY -u WAYLAND_DISPLAY QT_QPA_PLATFORM=xcb timeout 120 "$exec_path" \
  >"$tmp/nodisplay.log" 2>&1
rc=$?
set -e
cat "$tmp/nodisplay.log"
[ "$rc" = 1 ] && grep -q "DISPLAY" "$tmp/nodisplay.log" || fail "no-display message (exit $rc)"

step "uninstall"
"$HOME/.local/share/mps/uninstall_linux.sh"
for f in "$entry" "$HOME/.local/share/mps" "$HOME/.local/bin/mps-gui" "$HOME/.local/bin/mps" \
         "$HOME/Desktop/mps.desktop" "$icon_path"; do
  [ ! -e "$f" ] && [ ! -L "$f" ] || fail "$f is still there after uninstalling"
done

step "summary"
echo "bundle: $DIST/mps  $size_mb MB; tarball $tar_mb MB"
echo "build: ${build_s} s"
echo "frozen smoke test to screenshot (generates and runs a small session): ${smoke_s} s"
echo "start to first window (Xvfb): ${first_window_s} s"
