#!/usr/bin/env bash
# Pack dist/MPS.app into a compressed disk image with a link to /Applications, so users
# install by dragging the app onto it.
#
#   installer/macos/make_dmg.sh        -> dist/mps-<version>-macos-<arch>.dmg
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d dist/MPS.app ] || { echo "make_dmg.sh: dist/MPS.app is missing: run build_macos.sh" >&2; exit 1; }
version=$(/usr/libexec/PlistBuddy -c "Print CFBundleShortVersionString" dist/MPS.app/Contents/Info.plist)
dmg="dist/mps-$version-macos-$(uname -m).dmg"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -R dist/MPS.app "$stage/"
ln -s /Applications "$stage/Applications"
rm -f "$dmg"
hdiutil create -volname "MPS $version" -srcfolder "$stage" -fs HFS+ -format UDZO -ov "$dmg"
echo "disk image: $dmg"
