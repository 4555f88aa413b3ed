"""The mixdesk desktop app (PySide6).

Import cost is kept low: Qt and the window load when `main` runs, torch only
on the engine worker's thread when a model loads. Nothing here imports the
web server.

Files: `app.py` starts everything; `session.py` is the chat logic;
`worker.py` the engine thread; `markdown.py`, `models.py`, `settings.py`,
`conversations.py` and `tasks.py` are logic; the rest are widgets.
"""

from __future__ import annotations


def main(argv: list[str] | None = None, *, selftest: bool = False) -> int:
    """Run the desktop app; returns the process exit code.

    Args:
        argv: options after `mixdesk gui`: `--selftest`, `--model PATH`,
            `--screenshot PNG`, `--timeout SECONDS`.
        selftest: start offscreen, check resources, open a temporary chat
            store, load the model (`--model`, else the demo, built if absent),
            answer one prompt, check it reached the store, exit 0 (1 on any
            failure, with the reason on stderr).
    """
    from mixdesk.app.gui.app import run  # noqa: PLC0415 - Qt loads only when the GUI runs

    return run(argv, selftest=selftest)
