"""Download a model from the Hugging Face hub into $MIXDESK_HOME/models.

huggingface_hub does the talking to the hub: it lists the repo with sizes and
hashes (`HfApi.model_info(files_metadata=True)`), resolves each file (HEAD,
redirects, ETag, commit), builds the headers (the token from `--token`,
HF_TOKEN or its own token store), and maps HTTP errors. It honours HF_ENDPOINT.
The transfer itself is ours, on huggingface_hub's HTTP session, because a
download has to survive an app restart: huggingface_hub deletes its partial
file when a transfer fails.

How a download goes (STYLE.md: partial file, resume, verify, rename):

1. List the repo; keep only what the engine reads (`wanted_file`).
2. Check disk space before the first byte: the files still to fetch plus room
   for the quantized copy.
3. Fetch each file into `<models>/.<name>.partial/<file>.incomplete`. A partial
   file left by an earlier run (same commit) resumes with a Range request.
4. Verify size and hash (sha256 for LFS files, the git blob id otherwise). A
   file that fails is fetched again once, from zero.
5. Write the marker `.mixdesk-download.json` and rename the folder into place.

TLS verification stays on (huggingface_hub's default client).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from mixdesk.engine.errors import (
    DiskSpaceError,
    DownloadError,
    GatedRepoError,
    JobCancelled,
    MixdeskError,
)
from mixdesk.engine.paths import models_dir

log = logging.getLogger("mixdesk.hub")

MARKER = ".mixdesk-download.json"
STATE = ".mixdesk-partial.json"
QUANTIZED_ROOM = 0.3
"""Room kept free for the quantized copy, as a fraction of the weight bytes.

The card recipe makes Mixtral-8x7B 13.6 GB out of 93 GB of bf16 weights (0.15);
0.3 also covers the 4-bit recipes and the job's scratch files."""

WANTED_NAMES = frozenset({
    "config.json", "generation_config.json", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json",
})
SKIPPED_PATTERNS = ("consolidated*", "*.bin", "*.pt", "*.pth", "*.gguf", "*.ckpt", "*.h5",
                    "*.msgpack", "*.onnx")
HQQ_WEIGHTS = "qmodel.pt"  # the published HQQ checkpoints' one weight file
_BLOCK = 1 << 20
_RETRIES = 3
_PROGRESS_EVERY_S = 0.1


@dataclass(frozen=True)
class DownloadProgress:
    """Where a download stands; handed to the `progress` callback.

    Attributes:
        file: the file being fetched (repo path).
        file_done: bytes of it on disk.
        file_total: its size.
        done: bytes of the whole download on disk (resumed bytes included).
        total: bytes of the whole download.
        speed: bytes per second over this run's transfer so far.
        eta_s: seconds left at that speed; None before it is known.
        files_done: files finished and verified.
        files_total: files in the download.
    """

    file: str
    file_done: int
    file_total: int
    done: int
    total: int
    speed: float
    eta_s: float | None
    files_done: int
    files_total: int


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: repo path, size, and the hashes the hub gave."""

    name: str
    size: int
    sha256: str | None
    blob_id: str | None


ProgressFn = Callable[[DownloadProgress], None]
DiskFreeFn = Callable[[Path], int]


def wanted_file(name: str, checkpoint: str = "safetensors") -> bool:
    """True for the files the engine reads: top-level safetensors, index, config, tokenizer.

    Duplicate weights (`consolidated.*`, `pytorch_model.bin`, `*.pth`, GGUF) and
    subfolders (`original/`) are skipped. With checkpoint="hqq" (a published hqq 0.1.x
    checkpoint, for `import-hqq`) the weights are `qmodel.pt` instead.
    """
    if checkpoint == "hqq":
        return "/" not in name and (name in WANTED_NAMES or name == HQQ_WEIGHTS)
    if "/" in name or any(fnmatch.fnmatch(name, pattern) for pattern in SKIPPED_PATTERNS):
        return False
    return name in WANTED_NAMES or name.endswith(".safetensors")


def human_bytes(n: float) -> str:
    """1.5 GB, 300 MB, 12 kB, 5 B (decimal units, as disks are sold)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def default_dest(repo_id: str) -> Path:
    """$MIXDESK_HOME/models/<repo name>, e.g. models/Mixtral-8x7B-Instruct-v0.1."""
    return models_dir() / repo_id.rstrip("/").split("/")[-1]


def partial_dir(dest: Path) -> Path:
    """Where a download of `dest` is assembled: a hidden sibling on the same disk."""
    return dest.parent / f".{dest.name}.partial"


def is_downloaded(folder: Path) -> bool:
    """True when `folder` is a finished, verified download (it holds the marker)."""
    return (folder / MARKER).is_file()


def save_token(token: str, name: str = "mixdesk") -> None:
    """Store a hub token in huggingface_hub's own token store and make it the active one.

    Later downloads (and every other huggingface_hub user) pick it up with no
    `token=` argument. It is not checked against the hub here.
    """
    from huggingface_hub._login import _set_active_token  # noqa: PLC0415
    from huggingface_hub.utils._auth import _save_token  # noqa: PLC0415

    token = token.strip()
    if not token:
        raise GatedRepoError("the token is empty; paste the token from "
                             "https://huggingface.co/settings/tokens")
    _save_token(token=token, token_name=name)
    _set_active_token(token_name=name, add_to_git_credential=False)


def _disk_free(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _endpoint() -> str:
    from huggingface_hub import constants  # noqa: PLC0415

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _hub_error(error: Exception, repo_id: str, revision: str | None,  # noqa: PLR0911
               endpoint: str, *, token_given: bool) -> MixdeskError | None:
    """The one-sentence MixdeskError for a huggingface_hub / HTTP failure; None if unknown."""
    import httpx2  # noqa: PLC0415 - huggingface_hub's HTTP client
    from huggingface_hub import errors as hf  # noqa: PLC0415

    if isinstance(error, hf.GatedRepoError):
        status = error.response.status_code if error.response is not None else 401
        how = (f"open https://huggingface.co/{repo_id} while logged in, accept its conditions, "
               "create a read token at https://huggingface.co/settings/tokens")
        if status == 403 or token_given:
            return GatedRepoError(
                f"{repo_id} is a gated model and your token has no access to it yet: {how}, "
                "and pass that token with --token, HF_TOKEN or `huggingface-cli login`")
        return GatedRepoError(
            f"{repo_id} is a gated model and needs a hub token: {how}, then pass it with "
            "--token, set HF_TOKEN, or run `huggingface-cli login`")
    if isinstance(error, hf.RevisionNotFoundError):
        return DownloadError(f"{repo_id} has no revision {revision!r}; check the branch, tag "
                             "or commit name")
    if isinstance(error, hf.RemoteEntryNotFoundError):
        return DownloadError(f"a file listed in {repo_id} is missing on the hub; try again "
                             "later or pick another revision")
    if isinstance(error, hf.RepositoryNotFoundError):
        return DownloadError(f"there is no model {repo_id} on {endpoint} (or it is private: "
                             "pass a token with access to it)")
    if isinstance(error, hf.OfflineModeIsEnabled):
        return DownloadError("HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it "
                             "and try again")
    if isinstance(error, hf.HfHubHTTPError):
        status = error.response.status_code if error.response is not None else "?"
        return DownloadError(f"the hub at {endpoint} answered HTTP {status} for {repo_id}; "
                             "try again later")
    if isinstance(error, httpx2.TimeoutException):
        return DownloadError(f"the hub at {endpoint} did not answer in time; check your "
                             "connection and run the download again to resume it")
    if isinstance(error, httpx2.TransportError):  # DNS, refused, reset, TLS
        return DownloadError(f"cannot reach the hub at {endpoint} ({type(error).__name__}: "
                             f"{error}); check your internet connection, proxy or HF_ENDPOINT, "
                             "then run the download again to resume it")
    return None


@contextmanager
def hub_errors(what: str, revision: str | None, endpoint: str, *, token_given: bool
               ) -> Iterator[None]:
    """Turn huggingface_hub's and the network's exceptions into our typed errors.

    A MixdeskError passes through; anything `_hub_error` does not know stays a bug.
    """
    try:
        yield
    except MixdeskError:
        raise
    except Exception as error:
        mapped = _hub_error(error, what, revision, endpoint, token_given=token_given)
        if mapped is None:
            raise
        raise mapped from error


class _Meter:
    """Bytes done/total, speed and ETA; calls the progress callback, checks cancel."""

    def __init__(self, total: int, done: int, files_total: int, progress: ProgressFn | None,
                 cancel: threading.Event | None) -> None:
        self.total, self.done = total, done
        self.files_total, self.files_done = files_total, 0
        self.progress, self.cancel = progress, cancel
        self.started = time.monotonic()
        self.moved = 0
        self.last = 0.0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise JobCancelled("download cancelled; run it again to resume where it stopped")

    def report(self, file: str, file_done: int, file_total: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or (not force and now - self.last < _PROGRESS_EVERY_S):
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        speed = self.moved / elapsed
        eta = (self.total - self.done) / speed if speed > 0 else None
        self.progress(DownloadProgress(file, file_done, file_total, self.done, self.total, speed,
                                       eta, self.files_done, self.files_total))


def _list_files(repo_id: str, revision: str | None, token: str | None,
                endpoint: str, checkpoint: str = "safetensors"
                ) -> tuple[str, list[RemoteFile], list[str]]:
    from huggingface_hub import HfApi  # noqa: PLC0415

    info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=True,
                                               token=token)
    keep: list[RemoteFile] = []
    skipped: list[str] = []
    for sib in info.siblings or []:
        if not wanted_file(sib.rfilename, checkpoint):
            skipped.append(sib.rfilename)
            continue
        size = sib.lfs.size if sib.lfs is not None else sib.size
        if size is None:
            raise DownloadError(f"the hub gave no size for {repo_id}/{sib.rfilename}; "
                                f"is HF_ENDPOINT ({endpoint}) a Hugging Face hub?")
        keep.append(RemoteFile(sib.rfilename, size, sib.lfs.sha256 if sib.lfs else None,
                               sib.blob_id))
    if info.sha is None:
        raise DownloadError(f"the hub gave no commit for {repo_id}; is HF_ENDPOINT ({endpoint}) "
                            "a Hugging Face hub?")
    return info.sha, keep, skipped


def _check_files(repo_id: str, files: list[RemoteFile], skipped: list[str],
                 checkpoint: str = "safetensors") -> None:
    names = {f.name for f in files}
    if "config.json" not in names:
        raise DownloadError(f"{repo_id} has no config.json; it is not a model mixdesk can run")
    if checkpoint == "hqq":
        if HQQ_WEIGHTS not in names:
            raise DownloadError(f"{repo_id} has no {HQQ_WEIGHTS}; it is not a published hqq "
                                "0.1.x checkpoint")
        return
    if not any(n.endswith(".safetensors") for n in names):
        found = ", ".join(skipped[:4]) or "no weight files"
        raise DownloadError(f"{repo_id} has no safetensors weights (it has {found}); mixdesk "
                            "reads safetensors only")


def _verify(path: Path, remote: RemoteFile) -> str | None:
    """None when the file matches the hub's size and hash; else what is wrong."""
    size = path.stat().st_size
    if size != remote.size:
        return f"size {size} instead of {remote.size}"
    if remote.sha256 is None and remote.blob_id is None:
        return None
    digest = hashlib.sha256() if remote.sha256 else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK * 8):
            digest.update(block)
    expected = remote.sha256 or remote.blob_id
    return None if digest.hexdigest() == expected else "a different checksum"


class _Fetcher:
    """Fetches files of one repo commit into a partial folder, resuming with Range."""

    def __init__(self, repo_id: str, commit: str, endpoint: str, token: str | None,
                 meter: _Meter) -> None:
        from huggingface_hub.utils import build_hf_headers  # noqa: PLC0415

        self.repo_id, self.commit, self.endpoint = repo_id, commit, endpoint
        self.token, self.meter = token, meter
        self.headers: dict[str, str] = build_hf_headers(token=token)
        self.headers["Accept-Encoding"] = "identity"  # sizes and Ranges are of the real bytes

    def locate(self, name: str) -> tuple[str, dict[str, str]]:
        """HEAD the resolve URL: the download URL (CDN after a redirect) and its headers."""
        from huggingface_hub import get_hf_file_metadata  # noqa: PLC0415

        # not hf_hub_url: it keeps the endpoint read at import when asked for that same one
        url = (f"{self.endpoint}/{self.repo_id}/resolve/{quote(self.commit, safe='')}/"
               f"{quote(name)}")
        meta = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
        headers = dict(self.headers)
        if urlsplit(meta.location).netloc != urlsplit(url).netloc:
            headers.pop("authorization", None)  # a signed CDN URL: the token stays on the hub
        return meta.location, headers

    def fetch(self, remote: RemoteFile, incomplete: Path) -> None:
        """Bring `incomplete` up to `remote.size` bytes, resuming what is on disk."""
        import httpx2  # noqa: PLC0415

        url, headers = self.locate(remote.name)
        failures = 0
        while True:
            have = incomplete.stat().st_size if incomplete.exists() else 0
            if have > remote.size:
                incomplete.unlink()
                have = 0
            if have == remote.size:
                return
            try:
                self._get(url, headers, remote, incomplete, have)
                failures = 0
            except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.ReadTimeout) as error:
                failures += 1
                if failures > _RETRIES:
                    raise
                log.warning("%s: transfer interrupted (%s); resuming", remote.name, error)
                time.sleep(0.2 * failures)

    def _get(self, url: str, headers: dict[str, str], remote: RemoteFile, incomplete: Path,
             have: int) -> None:
        from huggingface_hub import constants  # noqa: PLC0415
        from huggingface_hub.utils import get_session, hf_raise_for_status  # noqa: PLC0415

        request_headers = dict(headers)
        if have:
            request_headers["Range"] = f"bytes={have}-"
        with get_session().stream("GET", url, headers=request_headers, follow_redirects=True,
                                  timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
            if have and response.status_code == 416:  # the partial is longer than the file
                incomplete.unlink()
                return
            hf_raise_for_status(response)
            if have and response.status_code == 200:  # Range ignored: start over
                log.info("%s: the server ignored the Range request; starting over", remote.name)
                self.meter.done -= have
                have = 0
            mode = "ab" if have else "wb"
            with open(incomplete, mode) as out:
                for block in response.iter_bytes():
                    self.meter.check_cancel()
                    out.write(block)
                    have += len(block)
                    self.meter.done += len(block)
                    self.meter.moved += len(block)
                    self.meter.report(remote.name, have, remote.size)
                    if have > remote.size:
                        break  # a longer body than announced: verification will catch it
        self.meter.report(remote.name, have, remote.size, force=True)


def _load_state(work: Path, repo_id: str, commit: str) -> None:
    """Keep a partial folder of the same repo and commit; clear one of anything else."""
    state = work / STATE
    if work.is_dir():
        try:
            old = json.loads(state.read_text())
        except (OSError, ValueError):
            old = None
        if not (isinstance(old, dict) and old.get("repo_id") == repo_id
                and old.get("commit") == commit):
            log.info("%s: partial download of another revision; starting over", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"repo_id": repo_id, "commit": commit}))


def _finished_at(dest: Path, repo_id: str, revision: str | None) -> bool:
    """True when `dest` is a finished download of this repo (and revision, if one is given)."""
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (marker.get("repo_id") == repo_id
            and revision in (None, marker.get("revision"), marker.get("commit")))


def download(repo_id: str, *, revision: str | None = None, dest: Path | None = None,
             token: str | None = None, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None, disk_free: DiskFreeFn = _disk_free,
             quantized_room: float = QUANTIZED_ROOM, checkpoint: str = "safetensors") -> Path:
    """Download the files of `repo_id` that the engine reads, verified, into one folder.

    Args:
        repo_id: a hub id, e.g. "mistralai/Mixtral-8x7B-Instruct-v0.1".
        revision: a branch, tag or commit (default: main).
        dest: the model folder to create (default: $MIXDESK_HOME/models/<repo name>).
        token: a hub token; None uses HF_TOKEN or huggingface_hub's token store.
        progress: called with a DownloadProgress as bytes arrive (from this thread).
        cancel: set it to stop; the partial files stay, and the next call resumes.
        disk_free: free bytes on the disk holding a path (tests fake it).
        quantized_room: disk kept for the quantized copy, as a fraction of the weights.
        checkpoint: "safetensors" (a hub-layout model), or "hqq" (a published hqq 0.1.x
            `qmodel.pt` for `import-hqq`; room is kept for the imported copy, as big).

    Returns:
        The model folder, holding the marker `.mixdesk-download.json`.

    Raises:
        GatedRepoError: the repo is gated and the token is missing or has no access.
        DiskSpaceError: not enough free disk, before anything is fetched.
        DownloadError: the hub cannot be reached, the repo or revision does not
            exist, or a file fails its checksum twice.
        JobCancelled: `cancel` was set.
    """
    dest = Path(dest) if dest is not None else default_dest(repo_id)
    if _finished_at(dest, repo_id, revision):
        log.info("%s is already downloaded in %s", repo_id, dest)
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DownloadError(f"{dest} already exists and is not a download of {repo_id}; "
                            "choose another folder or delete it")
    endpoint = _endpoint()
    with hub_errors(repo_id, revision, endpoint, token_given=token is not None):
        return _download(repo_id, revision=revision, dest=dest, token=token, endpoint=endpoint,
                         progress=progress, cancel=cancel, disk_free=disk_free,
                         quantized_room=1.0 if checkpoint == "hqq" else quantized_room,
                         checkpoint=checkpoint)


def _download(repo_id: str, *, revision: str | None, dest: Path, token: str | None,
              endpoint: str, progress: ProgressFn | None, cancel: threading.Event | None,
              disk_free: DiskFreeFn, quantized_room: float,
              checkpoint: str = "safetensors") -> Path:
    commit, files, skipped = _list_files(repo_id, revision, token, endpoint, checkpoint)
    _check_files(repo_id, files, skipped, checkpoint)
    if skipped:
        log.info("%s: skipping %s", repo_id, ", ".join(skipped))
    work = partial_dir(dest)
    _load_state(work, repo_id, commit)

    total = sum(f.size for f in files)
    have = 0
    for f in files:
        for candidate in (work / f.name, work / f"{f.name}.incomplete"):
            if candidate.is_file():
                have += min(candidate.stat().st_size, f.size)
                break
    weights = sum(f.size for f in files if f.name.endswith((".safetensors", HQQ_WEIGHTS)))
    _check_disk(work, total - have, int(weights * quantized_room), disk_free)

    meter = _Meter(total, have, len(files), progress, cancel)
    fetcher = _Fetcher(repo_id, commit, endpoint, token, meter)
    for remote in files:
        meter.check_cancel()
        _fetch_verified(fetcher, remote, work, meter)
        meter.files_done += 1
        meter.report(remote.name, remote.size, remote.size, force=True)

    marker = {"repo_id": repo_id, "revision": revision or "main", "commit": commit,
              "endpoint": endpoint, "files": {f.name: {"size": f.size, "sha256": f.sha256}
                                               for f in files},
              "skipped": skipped, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (work / STATE).unlink(missing_ok=True)
    (work / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    if dest.is_dir():
        dest.rmdir()  # an empty folder the user made for it
    work.rename(dest)
    log.info("%s downloaded into %s", repo_id, dest)
    return dest


def _check_disk(work: Path, to_fetch: int, room: int, disk_free: DiskFreeFn) -> None:
    free = disk_free(work)
    needed = to_fetch + room
    if free < needed:
        raise DiskSpaceError(
            f"not enough disk space in {work.parent}: the download needs {human_bytes(needed)} "
            f"({human_bytes(to_fetch)} of files plus {human_bytes(room)} for the quantized "
            f"copy) and {human_bytes(free)} is free; free up {human_bytes(needed - free)} or "
            "pass --dest on a larger disk")


def _fetch_verified(fetcher: _Fetcher, remote: RemoteFile, work: Path, meter: _Meter) -> None:
    """Fetch one file, verify it, and rename it to its name; refetch once if it is damaged."""
    final = work / remote.name
    if final.is_file() and final.stat().st_size == remote.size:
        return  # verified by an earlier run
    incomplete = work / f"{remote.name}.incomplete"
    incomplete.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        fetcher.fetch(remote, incomplete)
        problem = _verify(incomplete, remote)
        if problem is None:
            os.replace(incomplete, final)
            return
        meter.done -= incomplete.stat().st_size
        incomplete.unlink()
        if attempt == 1:
            log.warning("%s arrived damaged (%s); fetching it again", remote.name, problem)
            continue
        raise DownloadError(f"{remote.name} from {fetcher.repo_id} arrived damaged twice "
                            f"({problem}); check your connection or disk and run the download "
                            "again")


def remote_files(repo_id: str, *, revision: str | None = None,
                 token: str | None = None) -> tuple[str, list[RemoteFile]]:
    """The commit and the files `download` would fetch, with sizes (for the models page)."""
    endpoint = _endpoint()
    with hub_errors(repo_id, revision, endpoint, token_given=token is not None):
        commit, files, skipped = _list_files(repo_id, revision, token, endpoint)
    _check_files(repo_id, files, skipped)
    return commit, files


def endpoint() -> str:
    """The hub this process talks to: HF_ENDPOINT, or huggingface.co."""
    return _endpoint()


def remote_config(repo_id: str, *, revision: str | None = None,
                  token: str | None = None) -> dict[str, object]:
    """A hub repo's config.json, parsed (the planner needs only that to size a model).

    Raises:
        GatedRepoError, DownloadError: as `download` does.
    """
    from huggingface_hub import get_session, hf_raise_for_status  # noqa: PLC0415
    from huggingface_hub.utils import build_hf_headers  # noqa: PLC0415

    url_base = _endpoint()
    rev = quote(revision or "main", safe="")
    url = f"{url_base}/{repo_id}/resolve/{rev}/config.json"
    from huggingface_hub import errors as hf  # noqa: PLC0415

    with hub_errors(repo_id, revision, url_base, token_given=token is not None):
        try:
            response = get_session().get(url, headers=build_hf_headers(token=token),
                                         follow_redirects=True)
            hf_raise_for_status(response)
        except hf.RemoteEntryNotFoundError:
            raise DownloadError(f"{repo_id} has no config.json; it is not a model mixdesk can "
                                "run") from None
    try:
        config = json.loads(response.content)
    except ValueError as error:
        raise DownloadError(f"{repo_id}: config.json on the hub is not JSON ({error})") from None
    if not isinstance(config, dict):
        raise DownloadError(f"{repo_id}: config.json on the hub is not a JSON object")
    return config


@dataclass(frozen=True)
class UnfinishedDownload:
    """A download that stopped (cancel, crash, app closed) and can resume.

    Attributes:
        repo_id: what it downloads.
        dest: the model folder it will become.
        work: the partial folder holding what arrived.
        bytes_done: bytes on disk so far.
    """

    repo_id: str
    dest: Path
    work: Path
    bytes_done: int


def unfinished_downloads(folder: Path) -> list[UnfinishedDownload]:
    """The partial downloads in a models folder (`.<name>.partial` with their state file)."""
    found = []
    try:
        candidates = sorted(folder.glob(".*.partial"))
    except OSError:
        return []
    for work in candidates:
        try:
            state = json.loads((work / STATE).read_text())
            repo_id = str(state["repo_id"])
            done = sum(p.stat().st_size for p in work.iterdir() if p.is_file()
                       and not p.name.startswith("."))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.append(UnfinishedDownload(repo_id, folder / work.name[1:-len(".partial")], work,
                                        done))
    return found
