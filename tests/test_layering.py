"""Imports point one way (app -> engine -> kernels): the engine never loads Qt,
and the GUI never loads the web server.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QT = ("PySide6", "PyQt5", "PyQt6", "shiboken6")
WEB = ("fastapi", "uvicorn", "starlette")


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports, at any depth (lazy imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__" \
                and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value).split(".")[0])
    return names


@pytest.mark.parametrize("package", ["engine", "kernels"])
def test_engine_and_kernels_never_import_qt(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no python files under {package}/"
    offenders = {str(f.relative_to(REPO)): sorted(imported_modules(f) & set(QT)) for f in files}
    assert {f: q for f, q in offenders.items() if q} == {}


def test_the_scan_catches_a_qt_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from PySide6.QtCore import QObject\n    return QObject\n")
    assert "PySide6" in imported_modules(bad)


def _loaded_after(code: str) -> set[str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=120, env=env, check=True, cwd=REPO)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_importing_the_engine_loads_no_qt() -> None:
    modules = [f"mixdesk.engine.{p.stem}" for p in sorted((REPO / "engine").glob("*.py"))
               if p.stem != "__init__"]
    loaded = _loaded_after("\n".join(f"import {m}" for m in modules))
    assert loaded & set(QT) == set()


def test_the_gui_loads_no_web_server() -> None:
    # everything the window needs, built for real (offscreen), not just imported
    loaded = _loaded_after(
        "import tempfile, pathlib\n"
        "from mixdesk.app.gui import main\n"
        "from mixdesk.app.gui.app import build_gui\n"
        "from mixdesk.app.gui.settings import Settings\n"
        "from mixdesk.engine.chats import ChatStore\n"
        "from PySide6.QtCore import QSettings\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "ini = QSettings(str(d / 's.ini'), QSettings.Format.IniFormat)\n"
        "g = build_gui(store=ChatStore(d / 'c.db'), theme_name='light', settings=Settings(ini))\n"
        "g.shutdown()\n"
    )
    assert "PySide6" in loaded  # the check is live: the GUI did load
    assert loaded & set(WEB) == set()
