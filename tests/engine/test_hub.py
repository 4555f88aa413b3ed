"""engine.hub against the local fake hub: real HTTP through huggingface_hub, no mocks."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from fixtures.fakehub import VALID_TOKEN, FakeHub, fake_hub_fixture  # noqa: F401
from mixdesk.engine.errors import DiskSpaceError, DownloadError, GatedRepoError, JobCancelled
from mixdesk.engine.hub import (
    DownloadProgress,
    download,
    is_downloaded,
    partial_dir,
    remote_files,
    save_token,
)
from mixdesk.engine.paths import models_dir

REPO = "mistralai/Tiny-Mixtral-Instruct"
SHARD1 = "model-00001-of-00004.safetensors"
SHARD2 = "model-00002-of-00004.safetensors"
SHARD3 = "model-00003-of-00004.safetensors"
DUPLICATES = {  # what real mistralai repos carry besides the HF-layout shards
    "consolidated.safetensors": b"\0" * 4096,
    "consolidated.00.pth": b"\1" * 4096,
    "pytorch_model.bin": b"\2" * 4096,
    "original/consolidated.00.pth": b"\3" * 4096,
    "params.json": b"{}",
    "README.md": b"# tiny\n",
}


@pytest.fixture
def repo(fake_hub: FakeHub, tiny_mixtral: Path) -> Path:
    fake_hub.add_repo(REPO, tiny_mixtral, extra=DUPLICATES)
    return tiny_mixtral


def _same_files(got: Path, source: Path) -> None:
    names = sorted(p.name for p in source.iterdir() if not p.name.startswith("."))
    assert sorted(p.name for p in got.iterdir() if not p.name.startswith(".")) == names
    for name in names:
        assert (got / name).read_bytes() == (source / name).read_bytes(), name


def test_sharded_mixtral_downloads_and_loads(fake_hub: FakeHub, repo: Path) -> None:
    from mixdesk.engine.loader import load_model  # noqa: PLC0415

    events: list[DownloadProgress] = []
    path = download(REPO, progress=events.append)

    assert path == models_dir() / "Tiny-Mixtral-Instruct"
    assert is_downloaded(path) and not partial_dir(path).exists()
    _same_files(path, repo)
    last = events[-1]
    assert last.done == last.total == sum(f.stat().st_size for f in path.iterdir()
                                          if not f.name.startswith("."))
    assert last.files_done == last.files_total == 10
    assert all(e.speed >= 0 for e in events)
    # LFS shards went the real hub's way: HEAD on resolve -> 302 -> CDN host
    assert any(s.path.startswith("/cdn/") for s in fake_hub.gets(SHARD1))
    assert any(s.method == "HEAD" and s.status == 302 for s in fake_hub.requests
               if s.file == SHARD1)
    lm = load_model(path)
    assert lm.path == path
    # a second call finds the marker and asks the hub nothing
    before = len(fake_hub.requests)
    assert download(REPO) == path
    assert len(fake_hub.requests) == before


def test_duplicate_weights_are_skipped(fake_hub: FakeHub, repo: Path) -> None:  # noqa: ARG001
    commit, files = remote_files(REPO)
    assert commit == fake_hub.repos[REPO].commit
    assert not {f.name for f in files} & set(DUPLICATES)
    path = download(REPO)
    asked = {s.file for s in fake_hub.requests if s.file is not None}
    assert not asked & set(DUPLICATES)
    assert not any((path / name).exists() for name in DUPLICATES)


def test_interrupted_transfer_resumes_with_range(fake_hub: FakeHub, repo: Path) -> None:
    size = (repo / SHARD1).stat().st_size
    fake_hub.cut_after(REPO, SHARD1, 100_000)

    path = download(REPO)

    first, second = fake_hub.gets(SHARD1)
    assert first.range is None and first.body_bytes == 100_000
    assert second.range is not None and second.status == 206
    start = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 100_000
    assert second.body_bytes == size - start < size
    assert fake_hub.served(SHARD1) < 2 * size
    _same_files(path, repo)


def test_download_resumes_after_a_restart(fake_hub: FakeHub, repo: Path) -> None:
    size = (repo / SHARD2).stat().st_size
    fake_hub.cut_after(REPO, SHARD2, 10_000, times=4)  # more cuts than the retries
    with pytest.raises(DownloadError, match="run the download again to resume"):
        download(REPO)
    dest = models_dir() / "Tiny-Mixtral-Instruct"
    assert not dest.exists()
    kept = (partial_dir(dest) / f"{SHARD2}.incomplete").stat().st_size
    assert kept == 40_000
    fetched_before = {s.file for s in fake_hub.gets()}
    n_before = len(fake_hub.requests)

    path = download(REPO)  # a new call, as after an app restart: all state is on disk

    again = fake_hub.requests[n_before:]
    resumed = [s for s in again if s.file == SHARD2 and s.method == "GET" and s.status == 206]
    assert [s.range for s in resumed] == [f"bytes={kept}-"]
    assert resumed[0].body_bytes == size - kept
    refetched = {s.file for s in again if s.method == "GET" and s.status in (200, 206)}
    assert SHARD1 in fetched_before and SHARD1 not in refetched  # finished files are kept
    _same_files(path, repo)


def test_corrupted_file_is_detected_and_refetched(fake_hub: FakeHub, repo: Path) -> None:
    fake_hub.corrupt_once(REPO, SHARD3)
    path = download(REPO)
    gets = fake_hub.gets(SHARD3)
    assert len(gets) == 2 and all(s.range is None for s in gets)  # refetched from zero
    _same_files(path, repo)


def test_file_damaged_twice_is_an_error(fake_hub: FakeHub, repo: Path) -> None:  # noqa: ARG001
    fake_hub.corrupt_once(REPO, "config.json", times=2)  # a small (non-LFS) file: git blob id
    with pytest.raises(DownloadError, match="config.json .* arrived damaged twice"):
        download(REPO)
    assert not (models_dir() / "Tiny-Mixtral-Instruct").exists()


def test_gated_repo_needs_a_token(fake_hub: FakeHub, tiny_mixtral: Path) -> None:
    fake_hub.add_repo("mistralai/Gated-Mixtral", tiny_mixtral, gated=True)
    with pytest.raises(GatedRepoError) as info:
        download("mistralai/Gated-Mixtral")
    message = str(info.value)
    assert "mistralai/Gated-Mixtral is a gated model" in message
    for hint in ("https://huggingface.co/mistralai/Gated-Mixtral", "--token", "HF_TOKEN",
                 "huggingface-cli login"):
        assert hint in message
    with pytest.raises(GatedRepoError, match="your token has no access to it yet"):
        download("mistralai/Gated-Mixtral", token="hf_not_approved")
    assert not is_downloaded(models_dir() / "Gated-Mixtral")

    path = download("mistralai/Gated-Mixtral", token=VALID_TOKEN)

    _same_files(path, tiny_mixtral)
    resolve = [s for s in fake_hub.requests if "/resolve/" in s.path and s.status in (200, 302)]
    cdn = [s for s in fake_hub.requests if s.path.startswith("/cdn/")]
    assert resolve and all(s.authorization == f"Bearer {VALID_TOKEN}" for s in resolve)
    assert cdn and all(s.authorization is None for s in cdn)  # the token stays on the hub


def test_saved_token_opens_a_gated_repo(fake_hub: FakeHub, tiny_mixtral: Path) -> None:
    fake_hub.add_repo("mistralai/Gated-Mixtral", tiny_mixtral, gated=True)
    save_token(VALID_TOKEN)  # huggingface_hub's store, under tmp_path (the fixture)
    path = download("mistralai/Gated-Mixtral")
    assert is_downloaded(path)


def test_not_enough_disk_stops_before_the_first_byte(fake_hub: FakeHub, repo: Path) -> None:
    total = sum(p.stat().st_size for p in repo.iterdir() if not p.name.startswith("."))
    with pytest.raises(DiskSpaceError) as info:
        download(REPO, disk_free=lambda _path: 500_000)
    message = str(info.value)
    assert "500.0 kB is free" in message
    assert f"{total / 1e6:.1f} MB of files" in message
    assert "for the quantized copy" in message and "--dest" in message
    assert not [s for s in fake_hub.requests if s.file is not None]  # not a HEAD, not a GET
    assert not (models_dir() / "Tiny-Mixtral-Instruct").exists()


def test_unreachable_hub_is_a_download_error(monkeypatch: pytest.MonkeyPatch,
                                             fake_hub: FakeHub) -> None:  # noqa: ARG001
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match="cannot reach the hub at http://127.0.0.1"):
        download(REPO)


def test_unknown_repo_is_a_download_error(fake_hub: FakeHub) -> None:  # noqa: ARG001
    with pytest.raises(DownloadError, match="there is no model mistralai/Nope"):
        download("mistralai/Nope")


def test_cancel_leaves_no_finished_folder(repo: Path) -> None:
    cancel = threading.Event()

    def on_progress(event: DownloadProgress) -> None:
        if event.file == SHARD1:
            cancel.set()

    with pytest.raises(JobCancelled, match="run it again to resume"):
        download(REPO, progress=on_progress, cancel=cancel)
    dest = models_dir() / "Tiny-Mixtral-Instruct"
    assert not dest.exists() and not is_downloaded(dest)
    assert partial_dir(dest).is_dir()  # kept for the resume

    path = download(REPO)
    _same_files(path, repo)
    assert not partial_dir(dest).exists()


def test_cli_download(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mixdesk.app.cli import main  # noqa: PLC0415

    dest = tmp_path / "mine"
    assert main(["download", REPO, "--revision", "main", "--dest", str(dest)]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    _same_files(dest, repo)


def test_cli_gated_repo_is_one_line_exit_2(fake_hub: FakeHub, tiny_mixtral: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from mixdesk.app.cli import main  # noqa: PLC0415

    fake_hub.add_repo("mistralai/Gated-Mixtral", tiny_mixtral, gated=True)
    assert main(["download", "mistralai/Gated-Mixtral"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixdesk: error: mistralai/Gated-Mixtral is a gated model")
    assert "\n" not in err
    assert main(["download", "mistralai/Gated-Mixtral", "--token", VALID_TOKEN,
                 "--save-token"]) == 0
    assert is_downloaded(models_dir() / "Gated-Mixtral")
