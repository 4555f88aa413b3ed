"""What the app remembers between runs, through QSettings.

Theme, font size, the default sampling parameters of new chats, the models
folder, the last model loaded and the window geometry. Values are read with a
type and a fallback, so a hand-edited or stale file never crashes the app.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

from mixdesk.app.gui.remotes import RemoteServer, servers_from_data
from mixdesk.engine.events import SamplingParams
from mixdesk.engine.paths import models_dir

log = logging.getLogger("mixdesk.gui.settings")

THEMES = ("system", "light", "dark")
DEFAULT_SERVER_PORT = 8080  # the port `mixdesk serve` uses too; 0 means any free port
DEFAULT_PARAMS = SamplingParams()
PARAM_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed")


def params_to_dict(params: SamplingParams) -> dict[str, Any]:
    """The fields a conversation stores (stop strings stay engine defaults)."""
    d = asdict(params)
    return {k: d[k] for k in PARAM_KEYS}


def params_from_dict(data: dict[str, Any] | None,
                     base: SamplingParams = DEFAULT_PARAMS) -> SamplingParams:
    """SamplingParams from stored JSON; unknown or mistyped keys fall back to `base`."""
    values = asdict(base)
    types = {f.name: f.type for f in fields(SamplingParams)}
    for key, value in (data or {}).items():
        if key not in PARAM_KEYS:
            continue
        if key == "seed":
            values[key] = value if isinstance(value, int) and not isinstance(value, bool) else None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[key] = int(value) if "int" in str(types[key]) else float(value)
    values["stop"] = tuple(values.get("stop") or ())
    return SamplingParams(**values)


class Settings:
    """Typed access to the app's QSettings.

    Attributes:
        qsettings: the store (the user's config file, or a test's ini file).
    """

    def __init__(self, qsettings: QSettings | None = None) -> None:
        self.qsettings = qsettings or QSettings("mixdesk", "mixdesk")

    def _get(self, key: str, default: Any, kind: type) -> Any:
        value = self.qsettings.value(key, default)
        try:
            return kind(value)
        except (TypeError, ValueError):
            log.warning("setting %s=%r is not a %s; using %r", key, value, kind.__name__, default)
            return default

    @property
    def theme(self) -> str:
        value = self._get("appearance/theme", "system", str)
        return value if value in THEMES else "system"

    @theme.setter
    def theme(self, value: str) -> None:
        if value not in THEMES:
            raise ValueError(f"theme must be one of {THEMES}")
        self.qsettings.setValue("appearance/theme", value)

    @property
    def font_size(self) -> int:
        """Point size of chat text; 0 means the system font's size."""
        return max(0, min(48, int(self._get("appearance/font_size", 0, int))))

    @font_size.setter
    def font_size(self, value: int) -> None:
        self.qsettings.setValue("appearance/font_size", int(value))

    @property
    def models_folder(self) -> Path:
        value = self._get("models/folder", "", str)
        return Path(value).expanduser() if value else models_dir()

    @models_folder.setter
    def models_folder(self, value: Path | str) -> None:
        self.qsettings.setValue("models/folder", str(value))

    @property
    def last_model(self) -> str:
        return str(self._get("models/last", "", str))

    @last_model.setter
    def last_model(self, value: str) -> None:
        self.qsettings.setValue("models/last", value)

    @property
    def default_params(self) -> SamplingParams:
        raw = self._get("chat/default_params", "{}", str)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = {}
        return params_from_dict(data if isinstance(data, dict) else {})

    @default_params.setter
    def default_params(self, value: SamplingParams) -> None:
        self.qsettings.setValue("chat/default_params", json.dumps(params_to_dict(value)))

    @property
    def remote_servers(self) -> list[RemoteServer]:
        """Servers added with "Add a server…". API keys are kept here, in plain text in
        the user's own settings file (like the other apps' keys in their config)."""
        raw = self._get("remote/servers", "[]", str)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = []
        return servers_from_data(data)

    @remote_servers.setter
    def remote_servers(self, value: list[RemoteServer]) -> None:
        self.qsettings.setValue("remote/servers", json.dumps([s.to_dict() for s in value]))

    @property
    def server_port(self) -> int:
        """The port of the Local server switch (it always binds 127.0.0.1)."""
        port = int(self._get("server/port", DEFAULT_SERVER_PORT, int))
        return port if 0 <= port <= 65535 else DEFAULT_SERVER_PORT

    @server_port.setter
    def server_port(self, value: int) -> None:
        self.qsettings.setValue("server/port", int(value))

    @property
    def geometry(self) -> QByteArray | None:
        value = self.qsettings.value("window/geometry")
        return value if isinstance(value, QByteArray) else None

    @geometry.setter
    def geometry(self, value: QByteArray) -> None:
        self.qsettings.setValue("window/geometry", value)

    def sync(self) -> None:
        self.qsettings.sync()
