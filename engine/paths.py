"""Where mixdesk keeps its files: models, chats, logs, caches."""

from __future__ import annotations

import os
from pathlib import Path


def mixdesk_home() -> Path:
    """$MIXDESK_HOME, or ~/.local/share/mixdesk (XDG_DATA_HOME honoured)."""
    if os.environ.get("MIXDESK_HOME"):
        return Path(os.environ["MIXDESK_HOME"]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "mixdesk"


def models_dir() -> Path:
    return mixdesk_home() / "models"


def demo_model_dir() -> Path:
    return models_dir() / "demo"


def chats_db_path() -> Path:
    return mixdesk_home() / "chats.sqlite3"


def logs_dir() -> Path:
    return mixdesk_home() / "logs"
