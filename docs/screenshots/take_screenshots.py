"""Take the README screenshots with the real app and a real model.

Run under Xvfb (the xcb platform, as on a desktop), for example:

    xvfb-run -s "-screen 0 1400x900x24" python docs/screenshots/take_screenshots.py \
        --model .cache/fixtures/smol-moe-v1.1 --out docs/screenshots

Everything it writes besides the PNGs (chats, settings) goes to a temp folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QSettings

from mixdesk.app.gui.app import Gui, build_gui, wait_until
from mixdesk.app.gui.settings import Settings
from mixdesk.engine.chats import ChatStore
from mixdesk.engine.events import SamplingParams

PROMPTS = (
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
)


def settle(gui: Gui) -> None:
    for _ in range(20):
        QCoreApplication.processEvents()
    gui.window.chat_view.scroll_to_bottom()
    QCoreApplication.processEvents()


def shoot(gui: Gui, path: Path) -> None:
    settle(gui)
    if not gui.window.grab().save(str(path)):
        raise SystemExit(f"could not write {path}")
    print(f"wrote {path}", flush=True)


def make(theme: str, tmp: Path, model: Path | None) -> Gui:
    settings = Settings(QSettings(str(tmp / f"{theme}.ini"), QSettings.Format.IniFormat))
    settings.models_folder = model.parent if model else tmp / "empty-models"
    gui = build_gui(store=ChatStore(tmp / f"{theme}.sqlite3"), settings=settings,
                    theme_name=theme)
    gui.window.resize(1280, 820)
    gui.window.show()
    gui.client.probe()
    wait_until(lambda: bool(gui.window.status.hardware), 60)
    return gui


def chat(gui: Gui, model: Path) -> None:
    session = gui.session
    session.load_model(model)
    if not wait_until(lambda: session.model_state in ("ready", "failed"), 300):
        raise SystemExit("model load timed out")
    if session.model_state != "ready":
        raise SystemExit(gui.window.banner.text())
    session.set_params(SamplingParams(temperature=0.0, max_new_tokens=140,
                                      repetition_penalty=1.1))
    for prompt in PROMPTS:
        done: list[object] = []
        session.message_finished.connect(done.append)
        session.send(prompt)
        if not wait_until(lambda d=done: bool(d), 600):
            raise SystemExit("answer timed out")
        session.message_finished.disconnect(done.append)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MIXDESK_HOME"] = str(tmp / "home")
        first = make("light", tmp, None)
        shoot(first, args.out / "first-run.png")
        first.window.close()
        first.shutdown()
        for theme in ("light", "dark"):
            gui = make(theme, tmp, args.model)
            chat(gui, args.model)
            gui.window.panel_button.setChecked(theme == "dark")  # show the side panel once
            shoot(gui, args.out / f"chat-{theme}.png")
            gui.window.close()
            gui.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
