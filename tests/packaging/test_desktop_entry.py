"""The menu entry and icons the installers ship: valid, and at the sizes desktops ask for.

These need no bundle and run in every `make test`.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
SIZES = (16, 32, 48, 64, 128, 256)  # the hicolor sizes the .deb installs; plus scalable SVG


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None,
                    reason="desktop-file-validate missing (apt-get install desktop-file-utils)")
def test_desktop_file_validates() -> None:
    result = subprocess.run(["desktop-file-validate", str(RESOURCES / "mixdesk.desktop")],
                            capture_output=True, text=True, check=False)
    # hints too: the validator exits 0 on them, but they are what a desktop complains about
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_desktop_file_starts_the_window_with_the_icon() -> None:
    entry = dict(line.split("=", 1) for line in
                 (RESOURCES / "mixdesk.desktop").read_text().splitlines() if "=" in line)
    assert entry["Exec"] == "mixdesk gui"
    assert entry["Icon"] == "mixdesk"  # the installed hicolor name, not a path
    assert entry["Terminal"] == "false"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return width, height


@pytest.mark.parametrize("size", SIZES)
def test_icon_png_at_size(size: int) -> None:
    assert _png_size(RESOURCES / "icons" / f"mixdesk-{size}.png") == (size, size)


def test_windows_icon_has_every_size() -> None:
    data = (RESOURCES / "icons" / "mixdesk.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", data[:6])
    assert (reserved, kind) == (0, 1)
    # ICONDIR entries: width and height bytes, 0 meaning 256
    sizes = {data[6 + 16 * i] or 256 for i in range(count)}
    assert sizes >= set(SIZES)
