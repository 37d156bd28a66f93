#!/usr/bin/env bash
# Remove a per-user MPS installation made by install_linux.sh: the files listed in its
# install-manifest.txt (menu entry, icons, terminal link, desktop launcher), then the
# application folder. Touches nothing else.
#
#   uninstall_linux.sh [--quiet]
set -euo pipefail
quiet=0
[ "${1:-}" = "--quiet" ] && quiet=1
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
APP=$DATA/mps
if [ ! -d "$APP" ]; then
  echo "uninstall_linux.sh: MPS is not installed in $APP" >&2
  exit 1
fi
if [ -f "$APP/install-manifest.txt" ]; then
  while IFS= read -r f; do
    [ -n "$f" ] && rm -f -- "$f"
  done < "$APP/install-manifest.txt"
fi
rm -rf -- "$APP"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$DATA/applications" 2>/dev/null || true
[ "$quiet" = 1 ] || echo "MPS removed from $APP"
