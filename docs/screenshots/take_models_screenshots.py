"""Screenshots of the models page, a running download and each quantize-wizard page.

Run under Xvfb (the xcb platform, as on a desktop), from the repo root:

    xvfb-run -s "-screen 0 1400x900x24" .venv/bin/python \
        docs/screenshots/take_models_screenshots.py --out docs/screenshots

What is real and what is simulated (this machine has no GPU and no hub access):
- The app, the planner, the quantizer and the download code are the real ones.
- The GPU is a simulated reading: an RTX 4090 with 24 GB (the planner's input).
- "Mixtral-8x7B-Instruct-v0.1" is its real config.json with sparse placeholder
  shards of the real sizes, so the page and the planner see the real model; it is
  planned, never quantized. The quantize job shown running is a tiny random
  Mixtral (tests/app/quantizable.py), held mid-way for the picture.
- The download runs over real HTTP from the local fake hub (tests/fixtures/fakehub.py),
  slowed down so it can be caught in flight.
- The confirm page's free-disk figure is simulated (500 GB).

Everything it writes besides the PNGs goes to a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "app")]
os.environ["HF_HUB_OFFLINE"] = "0"  # the fake hub only: HF_ENDPOINT is set below
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from PySide6.QtCore import QCoreApplication, QSettings  # noqa: E402
from PySide6.QtWidgets import QWidget, QWizard  # noqa: E402
from quantizable import write_quantizable_mixtral  # noqa: E402

from fixtures.fakehub import FakeHub  # noqa: E402
from mixdesk.app.gui.app import Gui, build_gui, wait_until  # noqa: E402
from mixdesk.app.gui.settings import Settings  # noqa: E402
from mixdesk.app.gui.wizard import (  # noqa: E402
    BUDGET_PAGE,
    CONFIRM_PAGE,
    FINISH_PAGE,
    RUN_PAGE,
    JobSpec,
    QuantizeWizard,
    run_job,
)
from mixdesk.engine.budget import GpuInfo  # noqa: E402
from mixdesk.engine.chats import ChatStore  # noqa: E402

GPU = GpuInfo.default("NVIDIA GeForce RTX 4090", 24 * 10**9)
TINY_REPO = "mixdesk-fixtures/tiny-random-mixtral"
MIXTRAL_CONFIG = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
    "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
    "rope_theta": 1e6, "sliding_window": None, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
}
MIXTRAL_SHARD_BYTES = 4_915_000_000  # 19 shards, 93.4 GB, as the mistralai repo has


def settle(rounds: int = 30) -> None:
    for _ in range(rounds):
        QCoreApplication.processEvents()


def shoot(widget: QWidget, path: Path) -> None:
    settle()
    if not widget.grab().save(str(path)):
        raise SystemExit(f"could not write {path}")
    print(f"wrote {path}", flush=True)


def must(done: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    if not wait_until(done, timeout_s):
        raise SystemExit(f"timed out waiting for {what}")


def placeholder_mixtral(folder: Path) -> Path:
    """Mixtral-8x7B's config and sparse shards of the real sizes (no disk used)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(MIXTRAL_CONFIG, indent=1))
    for i in range(1, 20):
        with open(folder / f"model-{i:05d}-of-00019.safetensors", "wb") as handle:
            handle.truncate(MIXTRAL_SHARD_BYTES)
    return folder


def make_gui(tmp: Path, models: Path, theme: str) -> Gui:
    settings = Settings(QSettings(str(tmp / f"{theme}.ini"), QSettings.Format.IniFormat))
    settings.models_folder = models
    gui = build_gui(store=ChatStore(tmp / f"{theme}.sqlite3"), settings=settings,
                    theme_name=theme)
    gui.window.resize(1280, 860)
    gui.window.show()
    gui.window.models_page.set_gpu_probe(lambda: GPU)
    must(lambda: bool(gui.window.status.hardware), "the hardware probe")
    return gui


def next_page(wizard: QuantizeWizard, page: int) -> None:
    button = wizard.button(QWizard.WizardButton.NextButton)
    if not button.isVisible():
        button = wizard.button(QWizard.WizardButton.CommitButton)
    button.click()
    must(lambda: wizard.currentId() == page, f"wizard page {page}")


def wait_plan(wizard: QuantizeWizard) -> None:
    page = wizard.budget_page
    must(lambda: not page._pending and not page._timer.isActive(), "the plan")


def models_page_shots(gui: Gui, hub: FakeHub, out: Path) -> None:
    window = gui.window
    window.show_models_page()
    page = window.models_page
    must(lambda: all(c.badge.text() != "checking fit…" for c in page.cards.values()),
         "the fit badges")
    shoot(window, out / "models-page.png")

    hub.throttle_s = 0.03
    page.start_download(TINY_REPO)
    job = page.downloads[TINY_REPO]
    assert job.row is not None
    row = job.row
    must(lambda: row.progress.value() > 350, "the download to get going")
    shoot(window, out / "download-running.png")
    hub.throttle_s = 0.0
    must(lambda: job.task is None, "the download to finish")


def mixtral_wizard_shots(gui: Gui, models: Path, out: Path, suffix: str = "") -> None:
    wizard = gui.window.open_wizard(models / "Mixtral-8x7B-Instruct-v0.1")
    wizard.disk_free = lambda _path: 500 * 10**9  # simulated, see the docstring
    settle()
    if not suffix:
        shoot(wizard, out / "wizard-1-source.png")
    next_page(wizard, BUDGET_PAGE)
    wait_plan(wizard)
    if suffix:  # the dark one at 16 GB: the experts in host memory, a GPU cache of them
        wizard.budget_page.set_budget_gb(16.0)
        wait_plan(wizard)
    wizard.budget_page.advanced.setChecked(True)
    shoot(wizard, out / f"wizard-2-budget{suffix}.png")
    if not suffix:
        next_page(wizard, CONFIRM_PAGE)
        shoot(wizard, out / "wizard-3-confirm.png")
    wizard.reject()
    settle()


def tiny_wizard_shots(gui: Gui, models: Path, out: Path) -> None:
    wizard = gui.window.open_wizard(models / "tiny-mixtral")
    next_page(wizard, BUDGET_PAGE)
    wait_plan(wizard)
    next_page(wizard, CONFIRM_PAGE)
    wizard.confirm_page.output.setText(str(models / "tiny-mixtral-q4"))  # -4bit-g64 exists
    hold, release = threading.Event(), threading.Event()

    def held_job(spec: JobSpec, progress: Callable[[str, float], None],
                 cancel: threading.Event) -> Path:
        def watch(stage: str, fraction: float) -> None:
            progress(stage, fraction)
            if "layer-0001" in stage and "tensors" in stage and not release.is_set():
                hold.set()
                release.wait(120)

        return run_job(spec, watch, cancel)

    wizard.run_job = held_job
    next_page(wizard, RUN_PAGE)
    must(hold.is_set, "the job to reach layer 1")
    shoot(wizard, out / "wizard-4-run.png")
    release.set()
    must(lambda: wizard.currentId() == FINISH_PAGE, "the job to finish", 600)
    shoot(wizard, out / "wizard-5-finish.png")
    wizard.reject()
    settle()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tiny_source = REPO / ".cache" / "fixtures" / "tiny-random-mixtral-v1"
    if not tiny_source.is_dir():
        raise SystemExit(f"{tiny_source} is missing: run the tests once to build the fixtures")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MIXDESK_HOME"] = str(tmp / "home")
        hub = FakeHub().start()
        os.environ["HF_ENDPOINT"] = hub.url
        from huggingface_hub import constants  # noqa: PLC0415

        constants.HF_HUB_OFFLINE = False
        hub.add_repo(TINY_REPO, tiny_source)
        models = tmp / "models"
        placeholder_mixtral(models / "Mixtral-8x7B-Instruct-v0.1")
        tiny = write_quantizable_mixtral(models / "tiny-mixtral", tiny_source, seed=3)
        from mixdesk.engine.qformat import quantize_model  # noqa: PLC0415

        quantize_model(tiny, models / "tiny-mixtral-4bit-g64", "4bit-g64")
        try:
            for theme in ("light", "dark"):
                gui = make_gui(tmp, models, theme)
                try:
                    if theme == "light":
                        models_page_shots(gui, hub, args.out)
                        mixtral_wizard_shots(gui, models, args.out)
                        tiny_wizard_shots(gui, models, args.out)
                    else:
                        mixtral_wizard_shots(gui, models, args.out, suffix="-dark")
                finally:
                    gui.window.close()
                    gui.shutdown()
        finally:
            hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
