#!/usr/bin/env bash
# Install the frozen MPS for the current user (no root needed) and add it to the
# applications menu; optionally put a launcher on the desktop.
#
#   install_linux.sh [--desktop] [SOURCE]
#
# SOURCE is the built folder (the one holding `mps-gui`) or its tarball
# (mps-<version>-linux-<arch>.tar.gz). Default: the folder this script is in, when it is
# the unpacked bundle, else dist/mps of the checkout.
#
# Installs (XDG_DATA_HOME defaults to ~/.local/share):
#   $XDG_DATA_HOME/mps/                             the application (mps-gui, _internal/)
#   $XDG_DATA_HOME/applications/mps.desktop         the menu entry (name, icon, exec path)
#   $XDG_DATA_HOME/icons/hicolor/{256x256,scalable}/apps/mps.{png,svg}
#   ~/.local/bin/mps-gui, ~/.local/bin/mps          links: the app, and the headless CLI
#   the desktop folder's mps.desktop                only with --desktop
# Everything it writes is listed in $XDG_DATA_HOME/mps/install-manifest.txt;
# $XDG_DATA_HOME/mps/uninstall_linux.sh (a copy of uninstall_linux.sh) removes exactly that.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

on_desktop=0
src=""
for arg in "$@"; do
  case "$arg" in
    --desktop) on_desktop=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "install_linux.sh: unknown option $arg (allowed: --desktop, --help)" >&2; exit 2 ;;
    *) src=$arg ;;
  esac
done
if [ -z "$src" ]; then
  if [ -x "$HERE/mps-gui" ]; then src=$HERE; else src=$HERE/../dist/mps; fi
fi

DATA=${XDG_DATA_HOME:-$HOME/.local/share}
APP=$DATA/mps
BIN=$HOME/.local/bin
ENTRY=$DATA/applications/mps.desktop
ICON_PNG=$DATA/icons/hicolor/256x256/apps/mps.png
ICON_SVG=$DATA/icons/hicolor/scalable/apps/mps.svg

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. the application folder, unpacked or copied next to its final place, then swapped in
if [ -f "$src" ]; then
  tar -C "$tmp" -xzf "$src"
  src=$tmp/mps
fi
if [ ! -x "$src/mps-gui" ]; then
  echo "install_linux.sh: $src is not an MPS build (no executable mps-gui in it);" \
       "give the folder made by build_linux.sh or its .tar.gz" >&2
  exit 1
fi
src=$(cd "$src" && pwd)
template=$src/mps.desktop.in
[ -f "$template" ] || template=$HERE/linux/mps.desktop.in
uninstaller=$src/uninstall_linux.sh
[ -f "$uninstaller" ] || uninstaller=$HERE/uninstall_linux.sh
version=$(cat "$src/VERSION" 2>/dev/null || echo unknown)  # written by build_linux.sh
mkdir -p "$DATA"
new=$(mktemp -d "$DATA/.mps-new.XXXXXX")
cp -a "$src/." "$new/"
cp "$template" "$new/tmp-entry" && mv "$new/tmp-entry" "$new/mps.desktop.in"
cp "$uninstaller" "$new/uninstall_linux.sh"
chmod +x "$new/uninstall_linux.sh"
if [ -e "$APP" ]; then
  if [ -x "$APP/uninstall_linux.sh" ]; then "$APP/uninstall_linux.sh" --quiet; else rm -rf "$APP"; fi
fi
mv "$new" "$APP"

# 2. icons, the menu entry (absolute exec and icon paths), the terminal link
mkdir -p "$(dirname "$ICON_PNG")" "$(dirname "$ICON_SVG")" "$(dirname "$ENTRY")" "$BIN"
cp "$APP/_internal/icons/mps.png" "$ICON_PNG"
cp "$APP/_internal/icons/mps.svg" "$ICON_SVG"
sed -e "s|@EXEC@|$APP/mps-gui|g" -e "s|@ICON@|$ICON_PNG|g" -e "s|@VERSION@|$version|g" \
  "$APP/mps.desktop.in" > "$ENTRY"
chmod +x "$ENTRY"
ln -sfn "$APP/mps-gui" "$BIN/mps-gui"
manifest=("$ENTRY" "$ICON_PNG" "$ICON_SVG" "$BIN/mps-gui")
# the same executable started as `mps` is the headless command line; never replace an `mps`
# that is not ours (e.g. from `pip install --user`)
if [ ! -e "$BIN/mps" ] || [ "$(readlink "$BIN/mps")" = "$APP/mps-gui" ]; then
  ln -sfn "$APP/mps-gui" "$BIN/mps"
  manifest+=("$BIN/mps")
else
  echo "note: $BIN/mps exists and is not MPS's link: left as it is"
fi

# 3. optionally a launcher on the desktop (marked trusted where GNOME's gio can)
if [ "$on_desktop" = 1 ]; then
  desk=$(xdg-user-dir DESKTOP 2>/dev/null || true)
  [ -n "$desk" ] && [ "$desk" != "$HOME" ] || desk=$HOME/Desktop
  mkdir -p "$desk"
  cp "$ENTRY" "$desk/mps.desktop"
  chmod +x "$desk/mps.desktop"
  command -v gio >/dev/null 2>&1 && gio set "$desk/mps.desktop" metadata::trusted true 2>/dev/null || true
  manifest+=("$desk/mps.desktop")
fi
printf '%s\n' "${manifest[@]}" > "$APP/install-manifest.txt"

# 4. let menus and icon caches notice (optional tools; absent on minimal systems)
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$DATA/applications" 2>/dev/null || true
command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$DATA/icons/hicolor" 2>/dev/null || true

echo "MPS $version installed in $APP"
echo "menu entry: $ENTRY"
[ "$on_desktop" = 1 ] && echo "desktop launcher: ${manifest[-1]}"
case ":$PATH:" in *":$BIN:"*) ;; *) echo "(add $BIN to PATH to start mps-gui from a terminal)" ;; esac
echo "uninstall: $APP/uninstall_linux.sh"
