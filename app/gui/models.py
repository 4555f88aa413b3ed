"""Local model folders: which ones exist, what they are, how big.

Pure Python (no Qt, no torch): the model picker and the first-run page read
it. A model folder is a directory holding a `config.json` (a Hugging Face
layout) or a `manifest.json` (the mixdesk quantized format).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mixdesk.gui.models")

MARKERS = ("manifest.json", "config.json")


@dataclass(frozen=True)
class LocalModel:
    path: Path
    name: str
    size_bytes: int
    kind: str  # "mixdesk" (quantized manifest) or "hf" (config.json + weights)
    description: str  # e.g. "mixtral · 8 experts"


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in MARKERS)


def folder_size(path: Path) -> int:
    total = 0
    for f in path.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
        except OSError:
            continue
    return total


def describe(path: Path) -> LocalModel:
    kind = "mixdesk" if (path / "manifest.json").is_file() else "hf"
    description = ""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        model_type = str(config.get("model_type", "model"))
        experts = config.get("num_local_experts")
        description = f"{model_type} · {experts} experts" if experts else model_type
    except (OSError, ValueError, AttributeError):
        description = "quantized" if kind == "mixdesk" else "no readable config.json"
    return LocalModel(path=path, name=path.name, size_bytes=folder_size(path), kind=kind,
                      description=description)


def find_models(folder: Path) -> list[LocalModel]:
    """Model folders directly under `folder` (and `folder` itself if it is one), by name.

    Hidden folders are skipped: an unfinished download (`.<name>.partial`) is no model yet.
    """
    found: list[LocalModel] = []
    try:
        if is_model_folder(folder):
            found.append(describe(folder))
        if folder.is_dir():
            for child in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
                # hidden folders are work in progress: `.<name>.partial` downloads
                if not child.name.startswith(".") and is_model_folder(child):
                    found.append(describe(child))
    except OSError as e:
        log.warning("cannot list models in %s: %s", folder, e)
    return found


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
