"""The quantize wizard driven end to end with qtbot, on a tiny model, with the real
planner, quantizer, loader and generator; and `mixdesk quantize --budget`.

Waits are on signals and conditions, never on sleeps or clocks.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QCoreApplication, QEvent, Qt
from PySide6.QtWidgets import QWizard
from quantizable import write_quantizable_mixtral

from fixtures.fakehub import VALID_TOKEN, FakeHub, fake_hub_fixture  # noqa: F401
from mixdesk.app.gui.wizard import (
    BUDGET_PAGE,
    CONFIRM_PAGE,
    FINISH_PAGE,
    RUN_PAGE,
    SOURCE_PAGE,
    JobSpec,
    QuantizeWizard,
    run_job,
)
from mixdesk.engine.budget import GpuInfo, plan
from mixdesk.engine.errors import OutOfVRAMError
from mixdesk.engine.events import Done, SamplingParams

pytestmark = pytest.mark.qt_log_ignore("does not support propagateSizeHints")

GPU = GpuInfo.default("NVIDIA GeForce RTX 4090", 24 * 10**9)  # a fake card: the planner's input
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)
WAIT = 120_000


@pytest.fixture(scope="module")
def source_model(tmp_path_factory: pytest.TempPathFactory, tiny_mixtral: Path) -> Path:
    return write_quantizable_mixtral(tmp_path_factory.mktemp("src") / "Tiny-Mixtral-64",
                                     tiny_mixtral, seed=7)


@pytest.fixture
def models(settings: Any, source_model: Path) -> Path:
    """The models folder holding one unquantized model."""
    folder = Path(settings.models_folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source_model, folder / source_model.name)
    return folder


def click_next(qtbot: Any, wizard: QuantizeWizard) -> None:
    button = wizard.button(QWizard.WizardButton.NextButton)
    if not button.isVisible():
        button = wizard.button(QWizard.WizardButton.CommitButton)
    assert button.isEnabled(), f"Next is disabled on page {wizard.currentId()}"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def wait_page(qtbot: Any, wizard: QuantizeWizard, page: int) -> None:
    qtbot.waitUntil(lambda: wizard.currentId() == page, timeout=WAIT)


def wait_plan(qtbot: Any, wizard: QuantizeWizard) -> None:
    """The budget page finished its latest plan (a plan, or the message saying none fits)."""
    page = wizard.budget_page
    qtbot.waitUntil(lambda: not page._pending and not page._timer.isActive(), timeout=WAIT)


def to_confirm(qtbot: Any, wizard: QuantizeWizard) -> None:
    """From the source page, with the budget page's default plan, to the confirm page."""
    click_next(qtbot, wizard)
    wait_page(qtbot, wizard, BUDGET_PAGE)
    wait_plan(qtbot, wizard)
    click_next(qtbot, wizard)
    wait_page(qtbot, wizard, CONFIRM_PAGE)


def open_wizard(gui: Any, source: Path | None, gpu: GpuInfo | None = GPU) -> QuantizeWizard:
    gui.window.models_page.set_gpu_probe(lambda: gpu)
    return gui.window.open_wizard(source)


def test_wizard_end_to_end_budget_quantize_cancel_resume_chat(  # noqa: PLR0915 - one story
        qtbot: Any, make_gui: Any, models: Path, source_model: Path) -> None:
    gui = make_gui()  # the real engine worker
    wizard = open_wizard(gui, models / source_model.name)
    assert wizard.currentId() == SOURCE_PAGE
    assert wizard.source_page.local_radio.isChecked()
    assert wizard.source_page.local_combo.currentData() == str(models / source_model.name)

    # 1. source: checked off the GUI thread, then on to the budget page by itself
    click_next(qtbot, wizard)
    wait_page(qtbot, wizard, BUDGET_PAGE)
    wait_plan(qtbot, wizard)
    page = wizard.budget_page
    assert page.budget_gb() == 22.0  # 24 GB card minus the safety margin
    assert "RTX 4090" in page.hardware.text()
    plan = wizard.state.plan
    assert plan.recipe.name == "4bit-g64"  # the most faithful recipe fits easily
    assert page.headline.text().startswith("4bit-g64")
    assert "tok/s" in page.speed.text() and "KL 0.30" in page.fidelity.text()
    assert {k for k, _v, _c in page.bar.segments} >= {"weights", "kv cache", "cuda context"}
    assert page.table.rowCount() == 2  # attention and experts, with their bits and groups

    # a budget too small: the planner's sentence, Next disabled, nothing lost
    page.set_budget_gb(0.1)
    wait_plan(qtbot, wizard)
    assert wizard.state.plan is None
    assert "needs at least" in page.message.text() and page.message.level == "error"
    assert not wizard.button(QWizard.WizardButton.NextButton).isEnabled()
    page.set_budget_gb(2.0)
    wait_plan(qtbot, wizard)
    assert wizard.state.plan is not None and page.message.text() == ""
    assert wizard.state.plan.budget_bytes == 2 * 10**9

    # 3. confirm: default output in the models folder; a full disk (faked) says so
    click_next(qtbot, wizard)
    wait_page(qtbot, wizard, CONFIRM_PAGE)
    confirm = wizard.confirm_page
    out = models / "Tiny-Mixtral-64-4bit-g64"
    assert Path(confirm.output.text()) == out
    assert "free on that disk" in confirm.summary.text()
    real_free = wizard.disk_free
    wizard.disk_free = lambda _path: 5_000
    confirm.output.setText(str(out))  # re-check
    confirm._check()
    assert "Not enough disk space" in confirm.message.text()
    assert "5 KB is free" in confirm.message.text()
    assert not confirm.isComplete()
    assert not out.exists()
    wizard.disk_free = real_free
    confirm._check()
    assert confirm.isComplete()

    # 4. run, cancelled in the second layer (the job waits there until Cancel is clicked)
    in_layer_1 = threading.Event()
    released = threading.Event()
    written: list[list[str]] = []

    def gated_job(spec: JobSpec, progress: Callable[[str, float], None],
                  cancel: threading.Event) -> Path:
        written.append([])

        def watch(stage: str, fraction: float) -> None:
            progress(stage, fraction)
            if stage.startswith("Writing"):
                written[-1].append(stage.split(" · ")[1])
            if "layer-0001" in stage and not released.is_set():
                in_layer_1.set()
                cancel.wait(WAIT / 1000)  # hold the worker until the test cancels

        return run_job(spec, watch, cancel)

    wizard.run_job = gated_job
    click_next(qtbot, wizard)  # "Quantize"
    wait_page(qtbot, wizard, RUN_PAGE)
    run = wizard.run_page
    qtbot.waitUntil(in_layer_1.is_set, timeout=WAIT)
    qtbot.waitUntil(lambda: run.progress.value() > 0, timeout=WAIT)
    assert run.cancel_button.isVisible()
    qtbot.mouseClick(run.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not run.running, timeout=WAIT)
    assert run.stage.text() == "Cancelled."
    assert run.resume_button.isVisible() and run.resume_button.text() == "Resume"
    assert "kept" in run.message.text()
    assert not (out / "manifest.json").exists()  # a cancelled job never looks finished
    job = json.loads((out / ".mixdesk-job.json").read_text())
    assert list(job["files"]) == ["layer-0000.safetensors"]
    assert not wizard.button(QWizard.WizardButton.NextButton).isEnabled()

    # resume: the finished layer is not redone; then the finish page
    released.set()
    qtbot.mouseClick(run.resume_button, Qt.MouseButton.LeftButton)
    wait_page(qtbot, wizard, FINISH_PAGE)
    assert "layer-0000.safetensors" in written[0]
    assert "layer-0000.safetensors" not in written[1]
    assert "layer-0001.safetensors" in written[1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "4bit-g64"
    quantized = [n for n, w in manifest["weights"].items() if w["quant"] is not None]
    assert any("experts" in n for n in quantized) and any("self_attn" in n for n in quantized)
    assert str(out) in wizard.finish_page.summary.text()

    # 5. finish → opens in chat → answers, as the engine answers directly
    assert wizard.finish_page.open_chat.isChecked()
    with qtbot.waitSignal(gui.session.model_state_changed, timeout=WAIT,
                          check_params_cb=lambda state, _info: state in ("ready", "failed")):
        qtbot.mouseClick(wizard.button(QWizard.WizardButton.FinishButton),
                         Qt.MouseButton.LeftButton)
    assert gui.session.model_state == "ready", gui.window.banner.text()
    assert gui.session.model_info["path"] == str(out)
    assert gui.window.pages.currentIndex() == 0  # the chat page
    gui.session.set_params(GREEDY)
    with qtbot.waitSignal(gui.session.message_finished, timeout=WAIT) as blocker:
        gui.window.composer.edit.setPlainText("Hi")
        qtbot.keyClick(gui.window.composer.edit, Qt.Key.Key_Return)
    answer = blocker.args[0]

    from mixdesk.engine.generate import generate  # noqa: PLC0415
    from mixdesk.engine.loader import load_model  # noqa: PLC0415

    (done,) = [e for e in generate(load_model(out), [{"role": "user", "content": "Hi"}], GREEDY,
                                   chat=True) if isinstance(e, Done)]
    assert answer.status == "complete"
    assert answer.stats["generated_tokens"] == 8
    assert answer.content == done.text and answer.content


@pytest.mark.usefixtures("models")
def test_bad_sources_say_why_and_stay_on_the_page(
        qtbot: Any, make_gui: Any, source_model: Path, tmp_path: Path, fake_hub: FakeHub
) -> None:
    models = tmp_path / "models"  # settings.models_folder
    fake_hub.add_repo("mistralai/Gated-Tiny", source_model, gated=True)
    gui = make_gui()
    wizard = open_wizard(gui, None)
    src = wizard.source_page

    def try_source(radio: Any, edit: Any, text: str) -> str:
        radio.setChecked(True)
        edit.setText(text)
        with qtbot.waitSignal(src.completeChanged, timeout=WAIT,
                              check_params_cb=lambda: src._checking is None):
            click_next(qtbot, wizard)
        qtbot.waitUntil(lambda: src._checking is None, timeout=WAIT)
        assert wizard.currentId() == SOURCE_PAGE
        assert src.message.level == "error"
        return src.message.text()

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("not a model")
    assert "no config.json, so this is not a model folder" in try_source(
        src.folder_radio, src.folder_edit, str(notes))
    assert "no such folder" in try_source(src.folder_radio, src.folder_edit,
                                          str(tmp_path / "missing"))
    quantized = tmp_path / "already"
    quantized.mkdir()
    (quantized / "manifest.json").write_text("{}")
    (quantized / "config.json").write_text("{}")
    assert "already quantized" in try_source(src.folder_radio, src.folder_edit, str(quantized))
    src.hub_radio.setChecked(True)
    src.hub_edit.setText("just-a-name")
    click_next(qtbot, wizard)
    assert "is not a hub id" in src.message.text()
    assert f"there is no model nobody/nothing on {fake_hub.url}" in try_source(
        src.hub_radio, src.hub_edit, "nobody/nothing")
    gated = try_source(src.hub_radio, src.hub_edit, "mistralai/Gated-Tiny")
    assert "is a gated model and needs a hub token" in gated
    assert gated.endswith("paste the token into the Hub token field and press Next.")
    assert (notes / "todo.txt").read_text() == "not a model"  # nothing touched

    # with the token it goes through, to the budget page, planned from the hub's config alone
    src.token_edit.setText(VALID_TOKEN)
    click_next(qtbot, wizard)
    wait_page(qtbot, wizard, BUDGET_PAGE)
    wait_plan(qtbot, wizard)
    assert wizard.state.kind == "hub" and wizard.state.token == VALID_TOKEN
    assert wizard.state.plan.recipe.name == "4bit-g64"
    assert not (models / "Gated-Tiny").exists()  # nothing downloaded before Quantize


def test_hub_id_downloads_then_quantizes(qtbot: Any, make_gui: Any, settings: Any,
                                         source_model: Path, fake_hub: FakeHub) -> None:
    fake_hub.add_repo("mistralai/Tiny-Mixtral-64", source_model)
    gui = make_gui()
    wizard = open_wizard(gui, None, gpu=None)  # no GPU: plans for a card you name
    src = wizard.source_page
    assert src.hub_radio.isChecked()  # no local model to offer
    src.hub_edit.setText("mistralai/Tiny-Mixtral-64")
    click_next(qtbot, wizard)
    wait_page(qtbot, wizard, BUDGET_PAGE)
    wait_plan(qtbot, wizard)
    assert "no NVIDIA GPU" in wizard.budget_page.hardware.text()
    assert wizard.budget_page.budget_gb() == 16.0
    click_next(qtbot, wizard)
    wait_page(qtbot, wizard, CONFIRM_PAGE)
    assert "from the hub first" in wizard.confirm_page.summary.text()
    stages: list[str] = []
    wizard.run_page.progress.valueChanged.connect(
        lambda _v: stages.append(wizard.run_page.stage.text()))
    click_next(qtbot, wizard)
    wait_page(qtbot, wizard, FINISH_PAGE)
    assert any(s.startswith("Downloading mistralai/Tiny-Mixtral-64") for s in stages)
    assert any(s.startswith("Quantizing") for s in stages)
    models = Path(settings.models_folder)
    assert (models / "Tiny-Mixtral-64" / ".mixdesk-download.json").is_file()
    out = wizard.state.result
    assert out == models / "Tiny-Mixtral-64-4bit-g64"
    assert json.loads((out / "manifest.json").read_text())["recipe"]["name"] == "4bit-g64"
    assert fake_hub.gets("model.safetensors.index.json")


def test_closing_mid_job_stops_it_and_keeps_the_work(
        qtbot: Any, make_gui: Any, models: Path, source_model: Path) -> None:
    gui = make_gui()
    wizard = open_wizard(gui, models / source_model.name)
    to_confirm(qtbot, wizard)
    started = threading.Event()

    def held_job(spec: JobSpec, progress: Callable[[str, float], None],
                 cancel: threading.Event) -> Path:
        def watch(stage: str, fraction: float) -> None:
            progress(stage, fraction)
            if stage.startswith("Quantizing"):
                started.set()
                cancel.wait(WAIT / 1000)

        return run_job(spec, watch, cancel)

    wizard.run_job = held_job
    out = Path(wizard.confirm_page.output.text())
    click_next(qtbot, wizard)
    qtbot.waitUntil(started.is_set, timeout=WAIT)
    wizard.confirm_stop = lambda: True
    with qtbot.waitSignal(wizard.finished, timeout=WAIT):
        wizard.reject()  # the window's close button / Esc
    assert not wizard.run_page.running
    assert (out / ".mixdesk-job.json").is_file() and not (out / "manifest.json").exists()
    done_before = set(json.loads((out / ".mixdesk-job.json").read_text())["files"])
    assert gui.window.wizard is None

    # later (a new wizard, as after a restart): the same output folder resumes the job
    again = open_wizard(gui, models / source_model.name)
    to_confirm(qtbot, again)
    assert Path(again.confirm_page.output.text()) == out
    assert "holds an unfinished job: it resumes" in again.confirm_page.summary.text()
    assert again.confirm_page.isComplete()
    written: list[str] = []

    def watched(spec: JobSpec, progress: Callable[[str, float], None],
                cancel: threading.Event) -> Path:
        def watch(stage: str, fraction: float) -> None:
            progress(stage, fraction)
            if stage.startswith("Writing"):
                written.append(stage.split(" · ")[1])

        return run_job(spec, watch, cancel)

    again.run_job = watched
    click_next(qtbot, again)
    wait_page(qtbot, again, FINISH_PAGE)
    assert (out / "manifest.json").is_file()
    assert not set(written) & done_before  # finished layers were not redone
    assert "extra.safetensors" in written


def test_per_module_overrides_make_a_custom_recipe(qtbot: Any, make_gui: Any, models: Path,
                                                   source_model: Path) -> None:
    gui = make_gui()
    wizard = open_wizard(gui, models / source_model.name)
    click_next(qtbot, wizard)
    wait_page(qtbot, wizard, BUDGET_PAGE)
    wait_plan(qtbot, wizard)
    page = wizard.budget_page
    before = wizard.state.plan
    assert before.recipe.name == "4bit-g64"
    qtbot.mouseClick(page.advanced, Qt.MouseButton.LeftButton)
    assert page.table.isVisible()
    experts = next(r for r in range(page.table.rowCount())
                   if "experts" in page.table.item(r, 0).text())
    page.table.cellWidget(experts, 1).setCurrentIndex(0)  # 2 bits
    page.table.cellWidget(experts, 2).setCurrentIndex(0)  # group 8
    wait_plan(qtbot, wizard)
    after = wizard.state.plan
    assert after.recipe.name == "4bit-g64+custom"
    assert page.recipe.currentData() == "4bit-g64"  # pinned to the recipe it started from
    spec = after.recipe.spec_for("layers.0.moe.experts.1.w2.weight")
    assert (spec.bits, spec.group) == (2, 8)
    assert after.recipe.spec_for("layers.0.self_attn.q_proj.weight").bits == 4
    assert after.vram["weights"] < before.vram["weights"]
    assert "not measured" in page.fidelity.text()
    click_next(qtbot, wizard)
    wait_page(qtbot, wizard, CONFIRM_PAGE)
    assert wizard.confirm_page.output.text().endswith("Tiny-Mixtral-64-4bit-g64-custom")
    wizard.reject()


def test_cli_quantize_budget_picks_the_recipe(source_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from mixdesk.app.cli import main  # noqa: PLC0415

    too_small = tmp_path / "small"
    assert main(["quantize", str(source_model), str(too_small), "--budget", "0.1",
                 "--context", "512"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixdesk: error: ") and "needs at least " in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not too_small.exists()
    need = float(err.split("needs at least ")[1].split(" GB")[0])
    assert plan(source_model, None, need, 512).vram_total <= need * 1e9  # it names enough
    with pytest.raises(OutOfVRAMError):
        plan(source_model, None, need - 0.1, 512)

    out = tmp_path / "fits"
    assert main(["quantize", str(source_model), str(out), "--budget", "2",
                 "--context", "512"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "recipe 4bit-g64" in captured.err
    assert json.loads((out / "manifest.json").read_text())["recipe"]["name"] == "4bit-g64"

    forced = tmp_path / "forced"
    assert main(["quantize", str(source_model), str(forced), "--budget", "0.1",
                 "--recipe", "hqq-card"]) == 2
    assert "needs at least" in capsys.readouterr().err


def test_closing_while_a_check_runs_waits_for_it_before_deleting(
        qtbot: Any, make_gui: Any, models: Path, source_model: Path) -> None:
    gui = make_gui()
    release = threading.Event()

    def slow_probe() -> GpuInfo:
        release.wait(WAIT / 1000)
        return GPU

    gui.window.models_page.set_gpu_probe(slow_probe)
    wizard = gui.window.open_wizard(models / source_model.name)
    assert wizard.pending == 1  # the GPU probe
    destroyed: list[bool] = []
    wizard.destroyed.connect(lambda: destroyed.append(True))
    wizard.reject()
    assert gui.window.wizard is None
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)  # runs a deleteLater
    assert not destroyed  # the probe still runs: the wizard outlives it
    with qtbot.waitSignal(wizard.idle, timeout=WAIT):
        release.set()
    qtbot.waitUntil(lambda: bool(destroyed), timeout=WAIT)
