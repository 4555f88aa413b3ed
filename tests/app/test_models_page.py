"""The models page: local models with format, recipe, size and fit badges; chat, quantize,
delete and show-folder actions; the catalog; downloads (gated, cancel, resume) and hub
search against the local fake hub. Real planner, real downloads, real loads.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QPushButton
from quantizable import write_quantizable_mixtral

from fixtures.fakehub import VALID_TOKEN, FakeHub, fake_hub_fixture  # noqa: F401
from mixdesk.app.gui.mainwindow import CHAT_PAGE, MODELS_PAGE
from mixdesk.app.gui.models import folder_size, human_bytes
from mixdesk.app.gui.modelspage import Card, ModelsPage
from mixdesk.app.gui.statusbar import CPU_ONLY
from mixdesk.app.gui.wizard import SOURCE_PAGE
from mixdesk.engine.budget import GpuInfo
from mixdesk.engine.hub import partial_dir

pytestmark = pytest.mark.qt_log_ignore("does not support propagateSizeHints")

GPU_24 = GpuInfo.default("NVIDIA GeForce RTX 4090", 24 * 10**9)
GPU_TINY = GpuInfo.default("NVIDIA GeForce GT 710", 3 * 10**8)  # smaller than any plan
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
WAIT = 120_000


@pytest.fixture(scope="module")
def source_model(tmp_path_factory: pytest.TempPathFactory, tiny_mixtral: Path) -> Path:
    return write_quantizable_mixtral(tmp_path_factory.mktemp("src") / "Tiny-Mixtral-64",
                                     tiny_mixtral, seed=11)


@pytest.fixture(scope="module")
def quantized_model(tmp_path_factory: pytest.TempPathFactory, source_model: Path) -> Path:
    from mixdesk.engine.qformat import quantize_model  # noqa: PLC0415

    return quantize_model(source_model, tmp_path_factory.mktemp("q") / "Tiny-Mixtral-64-4bit",
                          "4bit-g64")


@pytest.fixture
def models(settings: Any, source_model: Path, quantized_model: Path) -> Path:
    folder = Path(settings.models_folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source_model, folder / source_model.name)
    shutil.copytree(quantized_model, folder / quantized_model.name)
    return folder


def show_page(qtbot: Any, gui: Any, gpu: GpuInfo | None) -> ModelsPage:
    page = gui.window.models_page
    page.set_gpu_probe(lambda: gpu)
    with qtbot.waitSignal(page.refreshed, timeout=WAIT):
        qtbot.mouseClick(gui.window.models_button, Qt.MouseButton.LeftButton)
    assert gui.window.pages.currentIndex() == MODELS_PAGE
    return page


def button(card: Card, text: str) -> QPushButton:
    found = [b for b in card.findChildren(QPushButton) if b.text() == text]
    assert found, f"no {text!r} button on {card.title.text()}: " \
                  f"{[b.text() for b in card.findChildren(QPushButton)]}"
    return found[0]


def refreshed(qtbot: Any, page: ModelsPage) -> None:
    with qtbot.waitSignal(page.refreshed, timeout=WAIT):
        page.refresh()


def test_local_models_with_format_recipe_size_and_fit(qtbot: Any, make_gui: Any,
                                                      models: Path) -> None:
    gui = make_gui()
    page = show_page(qtbot, gui, GPU_24)
    hf, quant = models / "Tiny-Mixtral-64", models / "Tiny-Mixtral-64-4bit"
    assert list(page.cards) == [hf, quant]
    assert "Hugging Face · safetensors · unquantized" in page.cards[hf].subtitle.text()
    assert "mixdesk quantized · 4bit-g64" in page.cards[quant].subtitle.text()
    assert f"· {human_bytes(folder_size(quant))} on disk ·" in page.cards[quant].subtitle.text()
    assert "RTX 4090 · 24.0 GB of VRAM" in page.hardware.text()
    badge = page.cards[quant].badge
    assert badge.property("level") == "green"
    assert badge.text().startswith("fits · up to ") and badge.text().endswith("tok/s")
    assert page.fits[quant].recipe == "4bit-g64" and page.fits[quant].tok_s > 0
    assert "GB of VRAM on the NVIDIA GeForce RTX 4090" in badge.toolTip()
    assert page.cards[hf].badge.text().startswith("quantize → 4bit-g64 · fits")
    assert not button(page.cards[quant], "Quantize…").isEnabled()  # already quantized

    broken = models / "broken-model"  # a config.json that is not JSON: said, not raised
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    page.set_gpu_probe(lambda: GPU_TINY)
    refreshed(qtbot, page)
    card = page.cards.pop(broken)
    assert card.badge.property("level") == "unknown" and card.badge.text() == "cannot plan"
    assert "config.json" in card.badge.toolTip()
    for card in page.cards.values():
        assert card.badge.property("level") == "red"
        assert card.badge.text() == "too big for GeForce"
        assert "needs at least" in card.badge.toolTip() or "does not fit" in card.badge.toolTip()

    page.set_gpu_probe(lambda: None)
    refreshed(qtbot, page)
    assert page.hardware.text().startswith(CPU_ONLY)
    page.cards.pop(broken)
    for card in page.cards.values():
        assert card.badge.property("level") == "cpu" and card.badge.text() == "runs on the CPU"


def test_chat_show_folder_and_quantize_actions(qtbot: Any, make_gui: Any, models: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    gui = make_gui()
    page = show_page(qtbot, gui, GPU_24)
    quant = models / "Tiny-Mixtral-64-4bit"
    with qtbot.waitSignal(gui.session.model_state_changed, timeout=WAIT,
                          check_params_cb=lambda state, _i: state in ("ready", "failed")):
        qtbot.mouseClick(button(page.cards[quant], "Chat"), Qt.MouseButton.LeftButton)
    assert gui.session.model_state == "ready", gui.window.banner.text()
    assert gui.session.model_info["path"] == str(quant)
    assert gui.window.pages.currentIndex() == CHAT_PAGE
    assert not gui.window.models_button.isChecked()
    # the model menu reaches the page too
    gui.window._fill_model_menu()
    (entry,) = [a for a in gui.window.model_menu.actions() if a.text() == "Models and downloads…"]
    with qtbot.waitSignal(page.refreshed, timeout=WAIT):
        entry.trigger()
    assert gui.window.pages.currentIndex() == MODELS_PAGE

    hf = models / "Tiny-Mixtral-64"
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()))
    qtbot.mouseClick(button(page.cards[hf], "Show folder"), Qt.MouseButton.LeftButton)
    assert opened == [str(hf)]
    qtbot.mouseClick(button(page.cards[hf], "Quantize…"), Qt.MouseButton.LeftButton)
    wizard = gui.window.wizard
    assert wizard is not None and wizard.isVisible() and wizard.currentId() == SOURCE_PAGE
    assert wizard.source_page.local_combo.currentData() == str(hf)
    # only unquantized models are offered as a source
    offered = [wizard.source_page.local_combo.itemData(i)
               for i in range(wizard.source_page.local_combo.count())]
    assert offered == [str(hf)]
    wizard.reject()


def test_delete_asks_and_refuses_the_loaded_model(qtbot: Any, make_gui: Any,
                                                  models: Path) -> None:
    gui = make_gui()
    page = show_page(qtbot, gui, None)
    hf, quant = models / "Tiny-Mixtral-64", models / "Tiny-Mixtral-64-4bit"
    asked: list[str] = []
    page.confirm = lambda _title, text: asked.append(text) or False
    qtbot.mouseClick(button(page.cards[hf], "Delete"), Qt.MouseButton.LeftButton)
    assert asked and "Delete Tiny-Mixtral-64 (" in asked[0] and "cannot be undone" in asked[0]
    assert hf.is_dir()  # "No" keeps it

    page.confirm = lambda _title, _text: True
    with qtbot.waitSignal(page.refreshed, timeout=WAIT):
        qtbot.mouseClick(button(page.cards[hf], "Delete"), Qt.MouseButton.LeftButton)
    assert not hf.exists() and list(page.cards) == [quant]
    assert gui.window.banner.text() == "Deleted Tiny-Mixtral-64."

    with qtbot.waitSignal(gui.session.model_state_changed, timeout=WAIT,
                          check_params_cb=lambda state, _i: state == "ready"):
        gui.session.load_model(quant)
    page = show_page(qtbot, gui, None)
    qtbot.mouseClick(button(page.cards[quant], "Delete"), Qt.MouseButton.LeftButton)
    assert quant.is_dir()
    assert "is loaded in the chat; unload it" in gui.window.banner.text()


def test_catalog_entries_and_the_server_one(qtbot: Any, tmp_path: Path) -> None:
    page = ModelsPage(tmp_path)
    qtbot.addWidget(page)
    assert list(page.catalog_cards) == [
        MIXTRAL,
        "mobiuslabsgmbh/Mixtral-8x7B-Instruct-v0.1-hf-attn-4bit-moe-2bit-metaoffload-HQQ",
        "mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mixtral-8x22B-Instruct-v0.1"]
    big = page.catalog_cards["mistralai/Mixtral-8x22B-Instruct-v0.1"]
    assert big.badge.text() == "needs a server" and big.badge.property("level") == "red"
    with qtbot.waitSignal(page.add_server_requested, timeout=5_000):
        qtbot.mouseClick(button(big, "Add a server…"), Qt.MouseButton.LeftButton)
    assert "quantize it here" in page.catalog_cards[MIXTRAL].subtitle.text()
    assert "gated: needs a hub token" in page.catalog_cards[MIXTRAL].subtitle.text()
    for repo in list(page.catalog_cards)[:3]:
        assert button(page.catalog_cards[repo], "Download").isEnabled()


def test_download_gated_then_token_then_cancel_and_resume(
        qtbot: Any, make_gui: Any, settings: Any, source_model: Path, fake_hub: FakeHub) -> None:
    fake_hub.add_repo(MIXTRAL, source_model, gated=True)
    gui = make_gui()
    page = show_page(qtbot, gui, None)
    models = Path(settings.models_folder)
    dest = models / "Mixtral-8x7B-Instruct-v0.1"

    # no token: the gated sentence and a way to enter one
    with qtbot.waitSignal(page.download_finished, timeout=WAIT) as blocker:
        qtbot.mouseClick(button(page.catalog_cards[MIXTRAL], "Download"),
                         Qt.MouseButton.LeftButton)
    assert blocker.args == [MIXTRAL, ""]
    row = page.downloads[MIXTRAL].row
    assert row is not None and row.badge.text() == "failed"
    assert "is a gated model and needs a hub token" in row.subtitle.text()
    page.ask_text = lambda _title, _label: VALID_TOKEN
    qtbot.mouseClick(button(row, "Enter a token…"), Qt.MouseButton.LeftButton)
    assert page.token == VALID_TOKEN
    assert "Token saved" in gui.window.banner.text()

    # with the token: running, then cancelled mid-way (transfers slowed down)
    fake_hub.throttle_s = 0.1  # about 8 s for the whole repo: time to click Cancel
    qtbot.mouseClick(button(row, "Try again"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: row.progress.value() > 0, timeout=WAIT)
    assert " of " in row.subtitle.text() and "/s" in row.subtitle.text()
    assert row.badge.text() == "downloading"
    with qtbot.waitSignal(page.download_finished, timeout=WAIT) as blocker:
        qtbot.mouseClick(button(row, "Cancel"), Qt.MouseButton.LeftButton)
    assert blocker.args == [MIXTRAL, ""]
    assert row.badge.text() == "stopped" and "Resume continues" in row.subtitle.text()
    work = partial_dir(dest)
    assert work.is_dir() and not dest.exists()
    kept = {p.name for p in work.iterdir() if not p.name.startswith(".")
            and not p.name.endswith(".incomplete")}
    partial = {p.name.removesuffix(".incomplete"): p.stat().st_size
               for p in work.glob("*.incomplete") if p.stat().st_size}
    assert kept or partial  # something had arrived
    refreshed(qtbot, page)
    assert work not in page.cards and dest not in page.cards  # a partial download is no model
    seen = len(fake_hub.requests)

    # resume: finishes without fetching again what had arrived
    fake_hub.throttle_s = 0.0
    with qtbot.waitSignal(page.download_finished, timeout=WAIT) as blocker:
        qtbot.mouseClick(button(row, "Resume"), Qt.MouseButton.LeftButton)
    assert blocker.args == [MIXTRAL, str(dest)]
    fetched = [r for r in fake_hub.requests[seen:] if r.method == "GET" and r.file
               and r.status in (200, 206)]
    assert not {r.file for r in fetched} & kept
    for name, size in partial.items():  # a file cut mid-way continues with a Range request
        assert [r.range for r in fetched if r.file == name] == [f"bytes={size}-"]
    for f in source_model.iterdir():
        assert (dest / f.name).read_bytes() == f.read_bytes()
    assert row.badge.text() == "downloaded"
    qtbot.waitUntil(lambda: dest in page.cards, timeout=WAIT)
    with qtbot.waitSignal(page.quantize_requested, timeout=5_000) as blocker:
        qtbot.mouseClick(button(row, "Quantize…"), Qt.MouseButton.LeftButton)
    assert blocker.args == [str(dest)]
    gui.window.wizard.reject()


def test_hub_search_shows_download_sizes(qtbot: Any, tmp_path: Path, source_model: Path,
                                         fake_hub: FakeHub) -> None:
    fake_hub.add_repo("mistralai/Tiny-Mixtral-64", source_model)
    empty = tmp_path / "empty-repo"
    empty.mkdir()
    fake_hub.add_repo("someone/tiny-mixtral-gguf", empty,
                      extra={"config.json": b"{}", "model.gguf": b"\0" * 100})
    fake_hub.add_repo("mistralai/Other", source_model)
    page = ModelsPage(tmp_path)
    qtbot.addWidget(page)
    page.search_edit.setText("tiny-mixtral")
    with qtbot.waitSignal(page.search_finished, timeout=WAIT) as blocker:
        qtbot.mouseClick(page.search_button, Qt.MouseButton.LeftButton)
    assert blocker.args == [2]
    assert list(page.result_cards) == ["mistralai/Tiny-Mixtral-64", "someone/tiny-mixtral-gguf"]
    size = sum(f.stat().st_size for f in source_model.iterdir() if f.is_file())
    good = page.result_cards["mistralai/Tiny-Mixtral-64"]
    assert f"{human_bytes(size)} to download in 10 files" in good.subtitle.text()
    assert button(good, "Download").isEnabled()
    bad = page.result_cards["someone/tiny-mixtral-gguf"]
    assert "has no safetensors weights" in bad.subtitle.text()
    assert not button(bad, "Download").isEnabled()
    assert page.search_status.text() == "2 models match “tiny-mixtral”."
    with qtbot.waitSignal(page.download_finished, timeout=WAIT) as done:
        qtbot.mouseClick(button(good, "Download"), Qt.MouseButton.LeftButton)
    assert done.args == ["mistralai/Tiny-Mixtral-64", str(tmp_path / "Tiny-Mixtral-64")]
    assert (tmp_path / "Tiny-Mixtral-64" / "config.json").is_file()

    page.search_edit.setText("no-such-model")
    with qtbot.waitSignal(page.search_finished, timeout=WAIT) as blocker:
        page.search()
    assert blocker.args == [0] and not page.result_cards
    assert page.search_status.text() == "No model on the hub matches “no-such-model”."


@pytest.mark.usefixtures("fake_hub")  # the hub online, tokens isolated
def test_hub_search_offline_says_so(qtbot: Any, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    page = ModelsPage(tmp_path)
    qtbot.addWidget(page)
    page.search_edit.setText("mixtral")
    with qtbot.waitSignal(page.search_finished, timeout=WAIT) as blocker:
        page.search()
    assert blocker.args == [-1]
    assert page.search_status.text().startswith(f"cannot reach the hub at http://127.0.0.1:{port}")
    assert page.search_button.isEnabled()


def test_the_published_hqq_checkpoint_downloads_and_imports(
        qtbot: Any, make_gui: Any, settings: Any, fake_hub: FakeHub) -> None:
    repo = "mobiuslabsgmbh/Mixtral-8x7B-Instruct-v0.1-hf-attn-4bit-moe-2bit-metaoffload-HQQ"
    card_data = Path(__file__).parents[1] / "fixtures" / "data" / "hqq018-tiny-mixtral"
    fake_hub.add_repo(repo, card_data)  # qmodel.pt written by hqq 0.1.8, config.json
    gui = make_gui()
    page = show_page(qtbot, gui, None)
    with qtbot.waitSignal(page.download_finished, timeout=WAIT) as blocker:
        qtbot.mouseClick(button(page.catalog_cards[repo], "Download"), Qt.MouseButton.LeftButton)
    models = Path(settings.models_folder)
    imported = models / f"{repo.split('/')[1]}-mixdesk"
    assert blocker.args == [repo, str(imported)], page.downloads[repo].row.subtitle.text()
    manifest = json.loads((imported / "manifest.json").read_text())
    assert manifest["quantizer"]["version"] == "0.1.x (imported)"
    assert manifest["source"]["repo"] == repo
    # only what the import reads came down: no safetensors from that repo
    assert {r.file for r in fake_hub.gets()} == {"qmodel.pt", "config.json"}
    qtbot.waitUntil(lambda: imported in page.cards, timeout=WAIT)
    assert "mixdesk quantized · " in page.cards[imported].subtitle.text()


def test_unfinished_downloads_resume_or_discard_after_a_restart(
        qtbot: Any, tmp_path: Path, source_model: Path, fake_hub: FakeHub) -> None:
    from mixdesk.engine.errors import JobCancelled  # noqa: PLC0415
    from mixdesk.engine.hub import download  # noqa: PLC0415

    models = tmp_path / "models"
    for repo in ("mistralai/Tiny-A", "mistralai/Tiny-B"):
        fake_hub.add_repo(repo, source_model)
        stop = threading.Event()

        def cut(p: Any, stop: threading.Event = stop) -> None:
            if p.file.endswith(".safetensors") and p.file_done:
                stop.set()  # mid-shard, like a closed app

        with pytest.raises(JobCancelled):
            download(repo, dest=models / repo.split("/")[1], progress=cut, cancel=stop)
    work = partial_dir(models / "Tiny-A")
    # as a killed app leaves it: the shard in flight half written
    shard = sorted(work.glob("*.safetensors"))[0]
    half = shard.stat().st_size // 2
    shard.with_name(shard.name + ".incomplete").write_bytes(shard.read_bytes()[:half])
    shard.unlink()
    kept = {p.name for p in work.iterdir()
            if not p.name.startswith(".") and not p.name.endswith(".incomplete")}
    assert "config.json" in kept

    page = ModelsPage(models)  # a new session
    qtbot.addWidget(page)
    refreshed(qtbot, page)
    assert list(page.downloads) == ["mistralai/Tiny-A", "mistralai/Tiny-B"]
    assert not page.cards  # partial downloads are not models
    row_a = page.downloads["mistralai/Tiny-A"].row
    assert row_a is not None and row_a.badge.text() == "unfinished"
    assert "arrived before it stopped" in row_a.subtitle.text()

    seen = len(fake_hub.requests)
    with qtbot.waitSignal(page.download_finished, timeout=WAIT) as blocker:
        qtbot.mouseClick(button(row_a, "Resume"), Qt.MouseButton.LeftButton)
    assert blocker.args == ["mistralai/Tiny-A", str(models / "Tiny-A")]
    fetched = {r.file for r in fake_hub.requests[seen:] if r.method == "GET" and r.file
               and r.status in (200, 206)}
    assert fetched and not fetched & kept
    assert [r.range for r in fake_hub.requests[seen:] if r.method == "GET"
            and r.file == shard.name and r.status == 206] == [f"bytes={half}-"]
    qtbot.waitUntil(lambda: models / "Tiny-A" in page.cards, timeout=WAIT)

    row_b = page.downloads["mistralai/Tiny-B"].row
    assert row_b is not None
    page.confirm = lambda _title, _text: True
    qtbot.mouseClick(button(row_b, "Discard"), Qt.MouseButton.LeftButton)
    assert not partial_dir(models / "Tiny-B").exists()
    assert "mistralai/Tiny-B" not in page.downloads
