"""The frozen app's selftest fails, and says why, when its bundle is broken.

These run against a built bundle: `packaging/smoke.sh` (`make package-smoke`) sets
MIXDESK_BUNDLE to `dist/mixdesk` and MIXDESK_SMOKE_MODEL to the tiny Mixtral fixture.
Without them they are skipped, so a plain `pytest` never tests a stale bundle.
Each test breaks a hard-linked copy of the bundle (cheap, and the original is untouched).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
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


def _env(tmp_path: Path) -> dict[str, str]:
    """A user's environment: no virtualenv, no PYTHONPATH, a fresh HOME."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
            "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}


def _selftest(bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`mixdesk gui --selftest` from `bundle`, outside any virtualenv."""
    env = _env(tmp_path)
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
    assert result.returncode == 1
    assert "selftest: FAILED: loading" in result.stderr, result.stderr[-2000:]


def test_frozen_generate_and_serve(tmp_path: Path) -> None:
    """The other commands work frozen too: `generate`, and `serve` (lazily imported ASGI stack)."""
    assert BUNDLE and MODEL
    exe = str(Path(BUNDLE) / "mixdesk")
    gen = subprocess.run([exe, "generate", MODEL, "--prompt", "Hello", "--max-new-tokens", "4",
                          "--temperature", "0", "--json"],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=300,
                         check=False)
    assert gen.returncode == 0, gen.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([exe, "serve", MODEL, "--port", str(port)], env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=5) as r:
                    model_id = json.load(r)["data"][0]["id"]
                break
            except OSError:
                assert server.poll() is None, server.communicate()[0][-2000:]
                assert time.monotonic() < deadline, "the frozen server did not start in 120 s"
                time.sleep(0.5)
        body = json.dumps({"model": model_id, "max_tokens": 4,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        req = urllib.request.Request(f"{base}/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.load(r)
        assert answer["choices"][0]["message"]["role"] == "assistant"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_no_arguments_opens_the_window(tmp_path: Path) -> None:
    """Double-clicking the program (no arguments) starts the app, not the CLI's usage text."""
    assert BUNDLE
    app = subprocess.Popen([str(Path(BUNDLE) / "mixdesk")], env=_env(tmp_path),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        app.wait(timeout=15)
    except subprocess.TimeoutExpired:  # still running: the window is up
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=30)
        return
    pytest.fail(f"exited {app.returncode} at once: {app.communicate()[0][-2000:]}")
