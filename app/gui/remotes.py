"""Remote servers the user added: what is kept about each, and how it is named.

Pure Python (no Qt, no network): settings store the list, the model picker
reads it. A server is an OpenAI-compatible API root (another machine's
`mixdesk serve`, vLLM, llama.cpp's server...). Its model ids are remembered
from the last successful "Test connection", so the picker opens without a
network round trip; choosing a model checks the server again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("mixdesk.gui.remotes")

REMOTE_PREFIX = "remote:"  # model_info["path"] of a remote model: remote:<url>#<model id>


@dataclass(frozen=True)
class RemoteServer:
    """One saved server.

    Attributes:
        url: the API root, normalized (ends in /v1 unless the user gave another path).
        api_key: sent as a Bearer token; "" when the server needs none.
        models: the model ids it listed at the last successful test.
    """

    url: str
    api_key: str = ""
    models: tuple[str, ...] = field(default_factory=tuple)

    @property
    def host(self) -> str:
        return server_host(self.url)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "api_key": self.api_key, "models": list(self.models)}


def server_host(url: str) -> str:
    """What the picker shows for a server: host, and the port when one is given."""
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host


def remote_path(url: str, model: str) -> str:
    """The `path` a remote model carries in model_info and in a conversation's record."""
    return f"{REMOTE_PREFIX}{url}#{model}"


def servers_from_data(data: Any) -> list[RemoteServer]:
    """Saved servers from stored JSON; malformed entries are skipped, not fatal."""
    servers: list[RemoteServer] = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            log.warning("skipping a malformed saved server: %r", item)
            continue
        key = item.get("api_key")
        models = item.get("models")
        servers.append(RemoteServer(
            url=item["url"], api_key=key if isinstance(key, str) else "",
            models=tuple(str(m) for m in models) if isinstance(models, list) else ()))
    return servers


def with_server(servers: list[RemoteServer], server: RemoteServer) -> list[RemoteServer]:
    """The list with `server` added, or replacing the saved one with the same URL."""
    return [s for s in servers if s.url != server.url] + [server]
