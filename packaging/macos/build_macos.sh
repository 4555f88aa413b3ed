#!/usr/bin/env bash
# Build mixdesk for macOS: dist/mixdesk.app (PyInstaller BUNDLE) and a drag-to-Applications
# .dmg, then smoke-test the app inside the .dmg the way smoke.sh does on Linux.
#   TORCH_VARIANT=cpu packaging/macos/build_macos.sh     (macOS has no CUDA: always cpu/MPS)
# Needs macOS 12+ with iconutil, sips and hdiutil (all in the base system), Python 3.11 with
# mixdesk's requirements and pyinstaller. Not run here: written to match build_linux.sh and
# run by .github/workflows/package.yml. The app is not signed or notarized: users open it
# with right-click > Open the first time (signing needs a Developer ID; see the README).
set -euo pipefail
trap 'printf "[build_macos] FAILED at line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
VARIANT="${TORCH_VARIANT:-cpu}"
DIST="$REPO/dist"
WORK="$REPO/build/pyinstaller"
VERSION="$(awk -F'"' '/^version = /{print $2; exit}' pyproject.toml)"
ARCH="$(uname -m)"
say() { printf '[build_macos] %s\n' "$*"; }

# the .icns from the committed PNGs (iconutil wants an .iconset folder with these names)
ICONSET="$WORK/mixdesk.iconset"
rm -rf "$ICONSET" && mkdir -p "$ICONSET"
for size in 16 32 128 256; do
    cp "resources/icons/mixdesk-$size.png" "$ICONSET/icon_${size}x${size}.png"
done
cp resources/icons/mixdesk-32.png "$ICONSET/icon_16x16@2x.png"
cp resources/icons/mixdesk-64.png "$ICONSET/icon_32x32@2x.png"
cp resources/icons/mixdesk-256.png "$ICONSET/icon_128x128@2x.png"
sips -s format png -z 512 512 resources/icons/mixdesk-256.png --out "$ICONSET/icon_256x256@2x.png" >/dev/null
cp "$ICONSET/icon_256x256@2x.png" "$ICONSET/icon_512x512.png"
iconutil -c icns "$ICONSET" -o "$WORK/mixdesk.icns"

start=$(date +%s)
MIXDESK_ICNS="$WORK/mixdesk.icns" TORCH_VARIANT="$VARIANT" "$PYTHON" -m PyInstaller --noconfirm \
    --log-level WARN --distpath "$DIST" --workpath "$WORK" packaging/mixdesk.spec
say "bundle built in $(( $(date +%s) - start )) s"
APP="$DIST/mixdesk.app"
test -x "$APP/Contents/MacOS/mixdesk"

MODEL="$REPO/build/smoke/tiny-random-mixtral"
[[ -f "$MODEL/config.json" ]] || "$PYTHON" tests/fixtures/builders.py tiny-random-mixtral "$MODEL"
QT_QPA_PLATFORM=offscreen "$APP/Contents/MacOS/mixdesk" gui --selftest --timeout 300 --model "$MODEL"

# the .dmg: the app and a link to /Applications, compressed (UDZO)
DMG="$DIST/mixdesk-$VERSION-macos-$ARCH.dmg"
STAGE="$WORK/dmg"
rm -rf "$STAGE" "$DMG" && mkdir -p "$STAGE"
cp -R "$APP" "$STAGE/"
ln -s /Applications "$STAGE/Applications"
hdiutil create -volname "mixdesk $VERSION" -srcfolder "$STAGE" -fs HFS+ -format UDZO -ov "$DMG"

# open the .dmg as a user would and run the app from it
MOUNT="$(mktemp -d)"
hdiutil attach -nobrowse -readonly -mountpoint "$MOUNT" "$DMG" >/dev/null
trap 'hdiutil detach "$MOUNT" >/dev/null || true' EXIT
QT_QPA_PLATFORM=offscreen "$MOUNT/mixdesk.app/Contents/MacOS/mixdesk" gui --selftest \
    --timeout 300 --model "$MODEL"
say "$(basename "$DMG") $(du -h "$DMG" | cut -f1); mixdesk.app $(du -sh "$APP" | cut -f1)"
