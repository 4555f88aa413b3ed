#!/usr/bin/env bash
# Build the Linux packages of mixdesk from this checkout:
#   dist/mixdesk/                                   the one-folder bundle (PyInstaller)
#   dist/mixdesk-<version>-linux-<arch>-<variant>.tar.gz   that folder, for any distribution
#   dist/mixdesk_<version>-1_<debarch>.deb          installs to /opt/mixdesk, /usr/bin/mixdesk,
#                                                   a menu entry and the icons
#
# Usage: packaging/build_linux.sh [--skip-bundle]
#   TORCH_VARIANT=cpu|cuda   which torch the environment holds (default cpu); the spec checks it
#   PYTHON=...               the interpreter with mixdesk's requirements and pyinstaller
#                            (default .venv/bin/python)
#   --skip-bundle            reuse dist/mixdesk and only remake the .tar.gz and .deb
set -euo pipefail
trap 'printf "[build_linux] FAILED at line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VARIANT="${TORCH_VARIANT:-cpu}"
PYTHON="${PYTHON:-.venv/bin/python}"
DIST="$REPO/dist"
WORK="$REPO/build/pyinstaller"
VERSION="$(awk -F'"' '/^version = /{print $2; exit}' pyproject.toml)"
ARCH="$(uname -m)"
DEBARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
say() { printf '[build_linux] %s\n' "$*"; }

if [[ "${1:-}" != "--skip-bundle" ]]; then
    start=$(date +%s)
    say "PyInstaller, TORCH_VARIANT=$VARIANT ($("$PYTHON" -m PyInstaller --version))"
    # PYTHONWARNINGS: the torch hook imports every torch module; hide their deprecation noise
    PYTHONWARNINGS=ignore::DeprecationWarning,ignore::FutureWarning \
    TORCH_VARIANT="$VARIANT" "$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
        --distpath "$DIST" --workpath "$WORK" packaging/mixdesk.spec
    say "bundle built in $(( $(date +%s) - start )) s"
fi
test -x "$DIST/mixdesk/mixdesk" || { say "no bundle at $DIST/mixdesk"; exit 1; }
say "bundle $(du -sh "$DIST/mixdesk" | cut -f1)"

# --- .tar.gz: the folder as it is; run ./mixdesk/mixdesk gui -------------------
TARBALL="$DIST/mixdesk-$VERSION-linux-$ARCH-$VARIANT.tar.gz"
# gzip -6 (the default): -9 is ~3x slower on torch's libraries for ~1% less
t0=$(date +%s)
tar -C "$DIST" --owner=0 --group=0 -czf "$TARBALL" mixdesk
say "$(basename "$TARBALL") $(du -h "$TARBALL" | cut -f1) in $(( $(date +%s) - t0 )) s"

# --- .deb -------------------------------------------------------------------------
command -v dpkg-deb >/dev/null || { say "dpkg-deb missing (apt-get install dpkg-dev); no .deb"; exit 1; }
ROOT="$REPO/build/deb/mixdesk"
rm -rf "$ROOT"
mkdir -p "$ROOT/DEBIAN" "$ROOT/opt" "$ROOT/usr/bin" "$ROOT/usr/share/applications" \
    "$ROOT/usr/share/icons/hicolor/scalable/apps" "$ROOT/usr/share/doc/mixdesk"
cp -a "$DIST/mixdesk" "$ROOT/opt/mixdesk"
# the bootloader finds its _internal/ through /proc/self/exe, so a symlink is enough
ln -s /opt/mixdesk/mixdesk "$ROOT/usr/bin/mixdesk"
install -m 0644 resources/mixdesk.desktop "$ROOT/usr/share/applications/mixdesk.desktop"
install -m 0644 resources/mixdesk.svg "$ROOT/usr/share/icons/hicolor/scalable/apps/mixdesk.svg"
for size in 16 32 48 64 128 256; do
    install -D -m 0644 "resources/icons/mixdesk-$size.png" \
        "$ROOT/usr/share/icons/hicolor/${size}x${size}/apps/mixdesk.png"
done
cat > "$ROOT/usr/share/doc/mixdesk/copyright" <<EOF
mixdesk $VERSION, Apache-2.0. The bundle under /opt/mixdesk also holds Python, PyTorch,
Qt (PySide6, LGPLv3), transformers, hqq and their dependencies under their own licenses.
EOF
chmod -R u=rwX,go=rX "$ROOT"

# Runtime libraries the bundle does not carry (PyInstaller leaves out libc, the GL
# stack and what the desktop provides). Qt's xcb platform needs libxcb-cursor0 since
# Qt 6.5; Wayland sessions use the bundled wayland plugin.
# The bundle's Python and libraries were linked on this machine: it needs this glibc or newer
# (build on the oldest distribution you support; CI uses Ubuntu 22.04, glibc 2.35).
# (no `ldd --version | head`: under pipefail, ldd's SIGPIPE would end the script silently)
GLIBC="$(getconf GNU_LIBC_VERSION | awk '{print $2}')"
DEPENDS="libc6 (>= $GLIBC), libstdc++6, libgl1, libegl1, libfontconfig1, libfreetype6, \
libxkbcommon0, libxkbcommon-x11-0, libdbus-1-3, libxcb-cursor0, libxcb-icccm4, \
libxcb-keysyms1, libxcb-shape0, libxcb-render-util0, libxcb-image0, libglib2.0-0t64 | libglib2.0-0"
SIZE_KB="$(du -sk "$ROOT" | cut -f1)"
cat > "$ROOT/DEBIAN/control" <<EOF
Package: mixdesk
Version: $VERSION-1
Section: utils
Priority: optional
Architecture: $DEBARCH
Maintainer: mixdesk developers <mixdesk@localhost>
Installed-Size: $SIZE_KB
Depends: $DEPENDS
Description: Chat with Mixtral on your own GPU
 A desktop app and engine that quantizes Mixtral-8x7B-Instruct to fit the VRAM
 you give it and streams its answers into a chat window. Torch build: $VARIANT.
EOF
# no maintainer scripts: desktop-file-utils and hicolor-icon-theme refresh the menu and
# icon caches through dpkg file triggers when files land in their folders
DEB="$DIST/mixdesk_${VERSION}-1_${DEBARCH}.deb"
# xz -1: about as small as gzip -9 and several times faster than dpkg-deb's default xz -6
t0=$(date +%s)
dpkg-deb --root-owner-group -Zxz -z1 --build "$ROOT" "$DEB" >/dev/null
say "$(basename "$DEB") $(du -h "$DEB" | cut -f1) in $(( $(date +%s) - t0 )) s"
