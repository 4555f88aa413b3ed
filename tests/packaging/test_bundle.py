"""The frozen app's selftest fails, and says why, when its bundle is broken.

These run against a built bundle: `packaging/smoke.sh` (`make package-smoke`) sets
MIXDESK_BUNDLE to `dist/mixdesk` and MIXDESK_SMOKE_MODEL to the tiny Mixtral fixture.
Without them they are skipped, so a plain `pytest` never tests a stale bundle.
Each test breaks a hard-linked copy of the bundle (cheap, and the original is untouched).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

BUNDLE = os.environ.get("MIXDESK_BUNDLE")
MODEL = os.environ.get("MIXDESK_SMOKE_MODEL")

pytestmark = pytest.mark.skipif(
    not (BUNDLE and MODEL),
    reason="needs a built bundle: run `make package-smoke` (sets MIXDESK_BUNDLE)",
)


def _copy(tmp_path: Path) -> Path:
    """A hard-linked copy of the bundle; removing files from it leaves the original whole."""
    dest = tmp_path / "mixdesk"
    assert BUNDLE
    shutil.copytree(BUNDLE, dest, symlinks=True, copy_function=os.link)
    return dest


def _selftest(bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`mixdesk gui --selftest` from `bundle`, outside any virtualenv."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
           "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
    assert MODEL
    return subprocess.run(
        [str(bundle / "mixdesk"), "gui", "--selftest", "--timeout", "120", "--model", MODEL],
        env=env, capture_output=True, text=True, timeout=300, check=False)


def _internal(bundle: Path) -> Path:
    return bundle / "_internal"


def test_missing_platform_plugin_fails(tmp_path: Path) -> None:
    bundle = _copy(tmp_path)
    plugins = list(_internal(bundle).glob("PySide6/Qt/plugins/platforms/libqoffscreen.*"))
    assert plugins, "the bundle has no offscreen platform plugin to remove"
    for plugin in plugins:
        plugin.unlink()
    result = _selftest(bundle, tmp_path)
    assert result.returncode != 0
    # Qt's own fatal message names the plugin it could not load
    assert 'Qt platform plugin "offscreen"' in result.stderr, result.stderr[-2000:]


def test_missing_resource_fails(tmp_path: Path) -> None:
    bundle = _copy(tmp_path)
    icon = _internal(bundle) / "mixdesk" / "resources" / "icons" / "send.svg"
    assert icon.is_file(), "the bundle's resources are not where importlib.resources looks"
    icon.unlink()
    result = _selftest(bundle, tmp_path)
    assert result.returncode == 1
    assert "selftest: FAILED: icon send" in result.stderr, result.stderr[-2000:]


def test_missing_tokenizer_module_fails(tmp_path: Path) -> None:
    """A library the model load needs (the `tokenizers` extension) gone: a clear failure."""
    bundle = _copy(tmp_path)
    found = list(_internal(bundle).glob("tokenizers/tokenizers*.so"))
    assert found, "the bundle has no tokenizers extension to remove"
    for ext in found:
        ext.unlink()
    result = _selftest(bundle, tmp_path)
    assert result.returncode != 0
    assert "selftest: FAILED" in result.stderr or "tokenizers" in result.stderr, \
        result.stderr[-2000:]
