"""The mixdesk quantized format, its writer, reader and the streaming quantize job.

A quantized model is a folder:
    manifest.json           format version, source, config, recipe, tensor index, byte totals
    config.json             the source's config.json, unchanged (ModelArgs reads it)
    layer-0000.safetensors  one file per decoder layer, so a resumed job redoes one
                            layer at most and a damaged file names its layer
    extra.safetensors       embeddings, final norm, lm_head
    tokenizer files and chat template, copied

A quantized weight `P.weight` is stored as `P.qweight` (packed codes) with
`P.scale_q`/`P.scale_qmeta` and `P.zero_q`/`P.zero_qmeta` (8-bit meta) or
`P.scale`/`P.zero` (fp16 meta); `mixdesk.engine.quantize` documents the layout.
Every other tensor is stored under its own name in the recipe's keep dtype.
Format version 1 has one packing ("bitstream-le"); the kernels' packed layout
will be a new packing name, so readers can refuse what they do not know.

A job in progress keeps `.mixdesk-job.json` (done files and their hashes) and
writes each file as `*.partial`, renamed once complete. `manifest.json` is
written last, so an unfinished folder never loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mixdesk.engine.checkpoint import INDEX_NAME, Checkpoint, sanitize
from mixdesk.engine.config import ModelArgs
from mixdesk.engine.errors import (
    DiskSpaceError,
    JobCancelled,
    ModelFormatError,
    NoGPUError,
    OutOfVRAMError,
    OutputFolderError,
)
from mixdesk.engine.fastpath import enable_kernels, kernels_unavailable
from mixdesk.engine.quantize import (
    QuantizedWeight,
    QuantLinear,
    QuantSpec,
    Recipe,
    estimate_bytes,
    get_recipe,
    hqq_version,
    kind_of,
    quantize_weight,
)

log = logging.getLogger("mixdesk.engine.qformat")

FORMAT_NAME = "mixdesk-quantized"
FORMAT_VERSION = 1
PACKING = "bitstream-le"
MANIFEST_NAME = "manifest.json"
JOB_NAME = ".mixdesk-job.json"
EXTRA_FILE = "extra.safetensors"
DISK_MARGIN_BYTES = 64 * 1024**2  # room for the manifest, tokenizer and file-system slack
# what a chat app needs besides weights; copied when present
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)
_HASH_CHUNK = 8 * 1024**2


def layer_file(index: int) -> str:
    return f"layer-{index:04d}.safetensors"


def _unit_of(name: str) -> str:
    """Which output file holds weight `name` (our module path)."""
    match = re.match(r"^layers\.(\d+)\.", name)
    return layer_file(int(match.group(1))) if match else EXTRA_FILE


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes), without the data."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                raise ModelFormatError(f"{path}: truncated safetensors file (no header)")
            (size,) = struct.unpack("<Q", raw)
            if size > 100 * 1024**2:
                raise ModelFormatError(f"{path}: not a safetensors file (header size {size})")
            header = json.loads(handle.read(size))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as bad:
        raise ModelFormatError(f"{path}: damaged safetensors header ({bad})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: damaged safetensors header")
    header.pop("__metadata__", None)
    return header


# ---------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class QuantizeProgress:
    """One progress event of a quantize or import job.

    Attributes:
        phase: "hash" (reading the source shards), "quantize", "write" or "done".
        tensors_done, tensors_total: source tensors handled.
        bytes_done, bytes_total: source bytes handled (resumed files count as done).
        file: the output file being written.
        elapsed_s: seconds since this run started.
        eta_s: seconds left, from this run's rate; None until it can be told.
    """

    phase: str
    tensors_done: int
    tensors_total: int
    bytes_done: int
    bytes_total: int
    file: str
    elapsed_s: float
    eta_s: float | None


ProgressCallback = Callable[[QuantizeProgress], None]
CancelFlag = threading.Event | Callable[[], bool]


def _cancelled(cancel: CancelFlag | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class _Progress:
    def __init__(self, callback: ProgressCallback | None, tensors_total: int, bytes_total: int
                 ) -> None:
        self.callback = callback
        self.tensors_total, self.bytes_total = tensors_total, bytes_total
        self.tensors_done = self.bytes_done = 0
        self.start = time.monotonic()
        self.bytes_at_start = 0

    def resume_from(self, tensors: int, nbytes: int) -> None:
        self.tensors_done, self.bytes_done = tensors, nbytes
        self.bytes_at_start = nbytes

    def emit(self, phase: str, file: str) -> None:
        if self.callback is None:
            return
        elapsed = time.monotonic() - self.start
        done_here = self.bytes_done - self.bytes_at_start
        eta = None
        if done_here > 0 and elapsed > 0:
            eta = (self.bytes_total - self.bytes_done) * elapsed / done_here
        self.callback(QuantizeProgress(phase, self.tensors_done, self.tensors_total,
                                       self.bytes_done, self.bytes_total, file, elapsed, eta))


# ---------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class _SourceTensor:
    hub_name: str
    name: str  # our weight name
    shape: tuple[int, ...]
    nbytes: int


def _source_tensors(checkpoint: Checkpoint) -> list[_SourceTensor]:
    headers: dict[str, dict[str, Any]] = {}
    out = []
    for hub_name, shard in checkpoint.weight_map.items():
        name = sanitize(hub_name)
        if name is None:
            continue
        if shard not in headers:
            headers[shard] = read_safetensors_header(checkpoint.folder / shard)
        info = headers[shard].get(hub_name)
        if info is None:
            raise ModelFormatError(f"{checkpoint.folder / shard}: lacks {hub_name}")
        begin, end = info["data_offsets"]
        out.append(_SourceTensor(hub_name, name, tuple(info["shape"]), int(end) - int(begin)))
    return out


def _source_files(folder: Path, checkpoint: Checkpoint) -> list[Path]:
    files = [folder / s for s in sorted(set(checkpoint.weight_map.values()))]
    if (folder / INDEX_NAME).is_file():
        files.append(folder / INDEX_NAME)
    return files + [folder / "config.json"]


def _hash_sources(files: list[Path], cached: Mapping[str, Any], progress: _Progress
                  ) -> dict[str, dict[str, Any]]:
    """sha256 of each source file; reuses `cached` entries whose size and mtime match."""
    out = {}
    for path in files:
        stat = path.stat()
        old = cached.get(path.name)
        if old and old.get("bytes") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
            out[path.name] = dict(old)
            continue
        progress.emit("hash", path.name)
        out[path.name] = {"sha256": sha256_file(path), "bytes": stat.st_size,
                          "mtime_ns": stat.st_mtime_ns}
    return out


def _source_identity(folder: Path, repo: str | None, revision: str | None) -> tuple[str, str]:
    """Repo id and revision, given, or read from a Hugging Face cache path."""
    match = re.search(r"models--([^/]+)--([^/]+)/snapshots/([0-9a-f]{7,})", str(folder.resolve()))
    if match:
        repo = repo or f"{match.group(1)}/{match.group(2)}"
        revision = revision or match.group(3)
    return repo or folder.name, revision or "local"


# ---------------------------------------------------------------------------- the job


def quantize_model(
    src: Path,
    dest: Path,
    recipe: str | Recipe,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    device: str | None = None,
    source_repo: str | None = None,
    source_revision: str | None = None,
    disk_margin_bytes: int = DISK_MARGIN_BYTES,
) -> Path:
    """Quantize a hub-layout checkpoint into the mixdesk format, tensor by tensor.

    Resumable: run it again on the same `dest` after a kill or a cancel and it
    redoes at most the one file that was being written.

    Args:
        src: a folder with config.json, safetensors shards and tokenizer files.
        dest: the output folder; new, empty, or an unfinished job of the same
            source and recipe.
        recipe: a recipe name (see `quantize.RECIPES`) or a Recipe.
        progress: called with a QuantizeProgress after each tensor.
        cancel: a threading.Event or a callable; checked before each tensor.
        device: where hqq's solver runs; default "cuda" when available, else "cpu".
        source_repo, source_revision: recorded in the manifest (read from a
            Hugging Face cache path when not given).
        disk_margin_bytes: free disk to keep beyond the estimated output.

    Returns:
        dest.

    Raises:
        RecipeError: unknown recipe.
        ModelFormatError: the source is not a readable model folder.
        OutputFolderError: dest is in use.
        DiskSpaceError: not enough free disk for the output.
        NoGPUError: device is cuda and there is no GPU.
        JobCancelled: `cancel` was set; nothing half-written is left to load.
    """
    src, dest = Path(src), Path(dest)
    recipe = get_recipe(recipe)
    args = ModelArgs.from_folder(src)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    checkpoint = Checkpoint(src)
    tensors = _source_tensors(checkpoint)
    if not tensors:
        raise ModelFormatError(f"{src}: the checkpoint holds no weights")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NoGPUError("no CUDA GPU is available to quantize on; use --device cpu (slower)")

    state = _open_job(dest, recipe)
    units: dict[str, list[_SourceTensor]] = {}
    for t in sorted(tensors, key=lambda t: (_unit_order(_unit_of(t.name)), t.name)):
        units.setdefault(_unit_of(t.name), []).append(t)
    done = _verified_done(dest, state)
    todo = [u for u in units if u not in done]
    shapes = {t.name: t.shape for t in tensors}
    _check_disk(dest, recipe, {t.name: t.shape for u in todo for t in units[u]},
                src, disk_margin_bytes)

    track = _Progress(progress, len(tensors), sum(t.nbytes for t in tensors))
    sources = _hash_sources(_source_files(src, checkpoint), state.get("sources", {}), track)
    if state.get("sources") and _hashes(state["sources"]) != _hashes(sources):
        raise OutputFolderError(
            f"{dest}: holds an unfinished job for a different version of {src.name}; "
            "choose another output folder or delete this one"
        )
    state["sources"] = sources
    state.setdefault("files", {})
    _write_json_atomic(dest / JOB_NAME, state)
    track.resume_from(sum(len(units[u]) for u in done),
                      sum(t.nbytes for u in done for t in units[u]))
    for stale in dest.glob("*.partial"):
        stale.unlink()

    log.info("quantizing %s to %s with %s on %s: %d files, %d already done",
             src, dest, recipe.name, device, len(units), len(done))
    for unit in todo:
        entry = _quantize_unit(checkpoint, units[unit], recipe, dest / unit, device=device,
                               cancel=cancel, track=track)
        state["files"][unit] = entry
        _write_json_atomic(dest / JOB_NAME, state)

    track.emit("write", MANIFEST_NAME)
    _copy_side_files(src, dest)
    manifest = _build_manifest(
        dest, recipe, config, args, state, shapes=shapes,
        source=_source_identity(src, source_repo, source_revision),
    )
    _write_json_atomic(dest / MANIFEST_NAME, manifest)
    (dest / JOB_NAME).unlink()
    track.emit("done", MANIFEST_NAME)
    return dest


def _unit_order(unit: str) -> tuple[int, str]:
    return (1, unit) if unit == EXTRA_FILE else (0, unit)


def _hashes(sources: Mapping[str, Any]) -> dict[str, str]:
    return {k: v["sha256"] for k, v in sources.items()}


def _open_job(dest: Path, recipe: Recipe) -> dict[str, Any]:
    """Start a new job in `dest`, or reopen the unfinished one there."""
    job = dest / JOB_NAME
    if job.is_file():
        try:
            state = json.loads(job.read_text(encoding="utf-8"))
            state_recipe = state["recipe"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise OutputFolderError(
                f"{job}: the job file is damaged; delete {dest} and start again"
            ) from None
        if state_recipe != recipe.to_dict():
            raise OutputFolderError(
                f"{dest}: holds an unfinished job with recipe {state_recipe.get('name')!r}, "
                f"not {recipe.name!r}; resume it with that recipe or choose another folder"
            )
        if state.get("format_version") != FORMAT_VERSION:
            raise OutputFolderError(
                f"{dest}: holds a job of another mixdesk version; delete it and start again"
            )
        return dict(state)
    if (dest / MANIFEST_NAME).is_file():
        raise OutputFolderError(f"{dest}: already holds a quantized model; choose another folder")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise OutputFolderError(
            f"{dest}: is not empty and is not an unfinished quantize job; choose an empty "
            "or new folder"
        )
    dest.mkdir(parents=True, exist_ok=True)
    return {"format_version": FORMAT_VERSION, "recipe": recipe.to_dict()}


def _verified_done(dest: Path, state: Mapping[str, Any]) -> set[str]:
    """The job's finished files that are still on disk with the recorded size."""
    done = set()
    for unit, entry in state.get("files", {}).items():
        path = dest / unit
        if path.is_file() and path.stat().st_size == entry["bytes"]:
            done.add(unit)
        else:
            log.warning("%s: missing or changed since it was written; redoing it", path)
    return done


def _check_disk(dest: Path, recipe: Recipe, shapes: Mapping[str, tuple[int, ...]], src: Path,
                margin: int) -> None:
    need = sum(estimate_bytes(recipe, shapes).values()) + margin
    need += sum((src / f).stat().st_size for f in TOKENIZER_FILES if (src / f).is_file())
    free = shutil.disk_usage(dest).free
    if need > free:
        raise DiskSpaceError(
            f"{dest}: needs {need / 1e9:.2f} GB free for the quantized files, "
            f"only {free / 1e9:.2f} GB is free; free some space or choose another disk"
        )


def _quantize_unit(checkpoint: Checkpoint, tensors: list[_SourceTensor], recipe: Recipe,
                   path: Path, *, device: str, cancel: CancelFlag | None, track: _Progress
                   ) -> dict[str, Any]:
    """Quantize one output file's tensors and write it; returns its job entry."""
    out: dict[str, torch.Tensor] = {}
    weights: dict[str, Any] = {}
    keep = recipe.keep_torch_dtype()
    for t in tensors:
        if _cancelled(cancel):
            raise JobCancelled(
                f"quantization cancelled; {path.parent} keeps the finished layers, run the "
                "same command again to resume"
            )
        tensor = checkpoint.tensor(t.hub_name)
        spec = recipe.spec_for(t.name, t.shape)
        if spec is not None and tensor.numel() % spec.group == 0:
            prefix = t.name.removesuffix(".weight")
            qw = quantize_weight(tensor, spec, device)
            out.update(qw.tensors(prefix))
            weights[t.name] = {"kind": kind_of(t.name), "shape": list(t.shape),
                               "quant": spec.to_dict(), "packing": PACKING}
        else:
            if spec is not None:
                log.warning("%s: shape %s does not split into groups of %d; kept in %s",
                            t.name, t.shape, spec.group, recipe.keep_dtype)
            out[t.name] = tensor.to(keep).contiguous()
            weights[t.name] = {"kind": kind_of(t.name), "shape": list(t.shape),
                               "quant": None, "dtype": recipe.keep_dtype}
        del tensor
        track.tensors_done += 1
        track.bytes_done += t.nbytes
        track.emit("quantize", path.name)
    track.emit("write", path.name)
    return _write_unit(path, out, weights)


def _write_unit(path: Path, out: Mapping[str, torch.Tensor], weights: Mapping[str, Any]
                ) -> dict[str, Any]:
    """Write `out` to `path` via a .partial file; return its job entry."""
    partial = path.with_name(path.name + ".partial")
    # one metadata key: safetensors writes a map's keys in random order, and a resumed job
    # must write the same bytes as an uninterrupted one
    save_file({k: v.contiguous() for k, v in out.items()}, str(partial),
              metadata={"format": f"{FORMAT_NAME}/{FORMAT_VERSION}"})
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    os.chmod(partial, 0o644)  # safetensors creates 0600; a model folder is for sharing
    os.replace(partial, path)
    for name in weights:
        weights[name]["file"] = path.name
    return {
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "weights": dict(weights),
        "tensors": {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                    for k, v in out.items()},
    }


def _copy_side_files(src: Path, dest: Path) -> None:
    shutil.copyfile(src / "config.json", dest / "config.json")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)


def _build_manifest(dest: Path, recipe: Recipe, config: Mapping[str, Any], args: ModelArgs,
                    state: Mapping[str, Any], *, shapes: Mapping[str, tuple[int, ...]],
                    source: tuple[str, str], quantizer: Mapping[str, str] | None = None
                    ) -> dict[str, Any]:
    files = state["files"]
    weights: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    for unit, entry in sorted(files.items()):
        weights.update(entry["weights"])
        for name, info in entry["tensors"].items():
            tensors[name] = {"file": unit, **info}
    missing = sorted(set(shapes) - set(weights))
    if missing:
        raise ModelFormatError(f"{dest}: the job lost {missing[0]}; delete the folder and rerun")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "packing": PACKING,
        "quantizer": dict(quantizer or {"name": "hqq", "version": hqq_version()}),
        "source": {"repo": source[0], "revision": source[1],
                   "files": {k: {"sha256": v["sha256"], "bytes": v["bytes"]}
                             for k, v in state.get("sources", {}).items()}},
        "config": dict(config),
        "args": args.to_dict(),
        "recipe": recipe.to_dict(),
        "files": {k: {"sha256": v["sha256"], "bytes": v["bytes"]}
                  for k, v in sorted(files.items())},
        "weights": weights,
        "tensors": tensors,
        "totals": _totals(weights, tensors),
    }


def _totals(weights: Mapping[str, Any], tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Bytes by kind (split into qweight, meta, dense) and measured bits per weight."""
    by_kind: dict[str, dict[str, int]] = {}
    params: dict[str, int] = {}
    owner = {}
    for name in weights:
        prefix = name.removesuffix(".weight")
        owner[name] = name
        for suffix in ("qweight", "scale_q", "scale_qmeta", "zero_q", "zero_qmeta", "scale",
                       "zero"):
            owner[f"{prefix}.{suffix}"] = name
    for tname, info in tensors.items():
        wname = owner.get(tname, tname)
        kind = weights.get(wname, {}).get("kind", "other")
        size = math.prod(info["shape"]) * torch.empty((), dtype=getattr(
            torch, info["dtype"])).element_size()
        part = ("qweight" if tname.endswith(".qweight") else
                "dense" if weights.get(wname, {}).get("quant") is None else "meta")
        by_kind.setdefault(kind, {}).setdefault(part, 0)
        by_kind[kind][part] += size
    for name, info in weights.items():
        params[info["kind"]] = params.get(info["kind"], 0) + math.prod(info["shape"])
    bits = {k: round(8 * sum(v.values()) / params[k], 4) for k, v in by_kind.items() if params[k]}
    total = sum(sum(v.values()) for v in by_kind.values())
    return {"bytes": by_kind, "params": params, "bits_per_weight": bits, "total_bytes": total}


# ---------------------------------------------------------------------------- reading


@dataclass
class QuantizedFolder:
    """A verified quantized model folder.

    Attributes:
        folder: its path.
        manifest: the parsed manifest.json.
    """

    folder: Path
    manifest: dict[str, Any]

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(self.manifest["recipe"])

    def files(self) -> list[str]:
        return list(self.manifest["files"])


def is_quantized_folder(folder: Path) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def read_manifest(folder: Path) -> dict[str, Any]:
    """Parse and version-check `folder/manifest.json`."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        if (folder / JOB_NAME).is_file():
            raise ModelFormatError(
                f"{folder}: an unfinished quantization job; run the same `mixdesk quantize` "
                "command again to finish it"
            )
        raise ModelFormatError(f"{path}: missing, so {folder} is not a quantized model")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as bad:
        raise ModelFormatError(f"{path}: not readable JSON ({bad})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelFormatError(f"{path}: not a mixdesk quantized-model manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{path}: format version {version}, but this mixdesk reads version "
            f"{FORMAT_VERSION}; quantize the model again or update mixdesk"
        )
    if manifest.get("packing") != PACKING:
        raise ModelFormatError(f"{path}: packing {manifest.get('packing')!r} is not supported")
    for key in ("files", "weights", "tensors", "recipe", "config"):
        if not isinstance(manifest.get(key), dict):
            raise ModelFormatError(f"{path}: the {key!r} section is missing or damaged")
    return manifest


def open_quantized(folder: Path, *, verify_hashes: bool = True) -> QuantizedFolder:
    """Read the manifest and check every file: present, size, hash, header shapes.

    Raises:
        ModelFormatError: naming the file that is missing, truncated or damaged.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    expected: dict[str, dict[str, Any]] = {}
    for name, info in manifest["tensors"].items():
        expected.setdefault(info["file"], {})[name] = info
    for fname, info in manifest["files"].items():
        path = folder / fname
        if not path.is_file():
            raise ModelFormatError(f"{path}: missing; the quantized model is incomplete")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise ModelFormatError(
                f"{path}: {size} bytes, the manifest says {info['bytes']}: truncated or damaged"
            )
        if verify_hashes and sha256_file(path) != info["sha256"]:
            raise ModelFormatError(f"{path}: damaged (its sha256 differs from the manifest)")
        header = read_safetensors_header(path)
        for name, tinfo in expected.get(fname, {}).items():
            got = header.get(name)
            if got is None:
                raise ModelFormatError(f"{path}: lacks {name}, which the manifest places there")
            if list(got["shape"]) != list(tinfo["shape"]):
                raise ModelFormatError(
                    f"{path}: {name} has shape {got['shape']}, the manifest says {tinfo['shape']}"
                )
    return QuantizedFolder(folder, manifest)


def iter_file_tensors(path: Path) -> Iterable[tuple[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is no dict
                yield name, handle.get_tensor(name)
    except (SafetensorError, OSError) as bad:
        raise ModelFormatError(f"{path}: damaged safetensors file ({bad})") from None


def load_quantized_into(model: nn.Module, folder: Path, device: torch.device | str,
                        dtype: torch.dtype, *, verify_hashes: bool = True,
                        cache_dequantized: bool = False, kernels: bool = True,
                        expert_slots: int | None = None) -> None:
    """Replace the model's quantized Linear modules by QuantLinear and load every tensor.

    Works on a model built on the meta device: every parameter is assigned. Then,
    on CUDA, packs the weights for the fused kernels (engine.fastpath), and logs
    one line saying which path runs and why.

    Args:
        model: our Transformer (or any module with the same weight names).
        folder: a quantized model folder.
        device: where tensors go.
        dtype: compute dtype of dense tensors and of the dequantized weights.
        verify_hashes: check each file's sha256 against the manifest.
        cache_dequantized: QuantLinear keeps its dequantized weight after the
            first call (fast on the CPU, costs full-size memory).
        kernels: use the fused kernels where the device runs them; False keeps
            the torch dequantize path everywhere.
        expert_slots: keep the experts in pinned host memory and this many on the device,
            top_k of them staging (engine.offload.stream_experts; the plan's
            EXPERTS_ON_HOST). Needs the kernels.

    Raises:
        ModelFormatError: the folder is damaged or does not fit the model.
        OutOfVRAMError: `expert_slots` was asked for where the kernels cannot run.
    """
    _check_experts_on_host(expert_slots, device, kernels=kernels)
    qf = open_quantized(folder, verify_hashes=verify_hashes)
    weights = qf.manifest["weights"]
    params = dict(model.named_parameters())
    loaded = set()
    for fname in qf.files():
        path = qf.folder / fname
        stored = dict(iter_file_tensors(path))
        for name, info in weights.items():
            if info["file"] != fname:
                continue
            if info["quant"] is None:
                if name not in params:
                    raise ModelFormatError(f"{path}: {name} does not fit this model")
                _assign_param(model, name, stored[name].to(device=device, dtype=dtype), path)
            else:
                prefix = name.removesuffix(".weight")
                spec = QuantSpec.from_dict(info["quant"])
                try:
                    qw = QuantizedWeight.from_tensors(prefix, spec, tuple(info["shape"]), stored)
                except KeyError as missing:
                    raise ModelFormatError(f"{path}: lacks {missing}") from None
                # offloaded experts are packed on the host and never touch the device
                on_host = expert_slots is not None and ".experts." in prefix
                _swap_linear(model, prefix, qw, device="cpu" if on_host else device,
                             dtype=dtype, cache=cache_dequantized, path=path)
            loaded.add(name)
    args = qf.manifest.get("args", {})
    if "lm_head.weight" not in loaded and args.get("tie_embeddings") and \
            "lm_head.weight" in params and "embed_tokens.weight" in loaded:
        _assign_param(model, "lm_head.weight",
                      dict(model.named_parameters())["embed_tokens.weight"], qf.folder)
        loaded.add("lm_head.weight")
    left = [n for n, p in model.named_parameters() if n not in loaded]
    if left:
        raise ModelFormatError(f"{qf.folder}: the quantized model lacks {left[0]} "
                               f"({len(left)} missing)")
    if kernels:
        enable_kernels(model, device)
    else:
        log.info("kernels turned off: the torch dequantize path is used")
    _experts_on_host(model, qf.folder, expert_slots, device)


def _parent(model: nn.Module, dotted: str, path: Path) -> tuple[nn.Module, str]:
    parent_name, _, leaf = dotted.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        raise ModelFormatError(f"{path}: {dotted} does not fit this model") from None
    return parent, leaf


def _assign_param(model: nn.Module, name: str, tensor: torch.Tensor, path: Path) -> None:
    parent, leaf = _parent(model, name, path)
    current = getattr(parent, leaf, None)
    if current is not None and tuple(current.shape) != tuple(tensor.shape):
        raise ModelFormatError(
            f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects "
            f"{tuple(current.shape)}"
        )
    if isinstance(tensor, nn.Parameter):
        setattr(parent, leaf, tensor)
    else:
        setattr(parent, leaf, nn.Parameter(tensor, requires_grad=False))


def _check_experts_on_host(slots: int | None, device: torch.device | str, *,
                           kernels: bool) -> None:
    if slots is None:
        return
    reason = kernels_unavailable(device) if kernels else "kernels turned off"
    if reason is not None:
        raise OutOfVRAMError(f"keeping the experts in host memory needs the CUDA kernels "
                             f"({reason}); load with a budget that holds the whole model")


def _experts_on_host(model: nn.Module, folder: Path, slots: int | None,
                     device: torch.device | str) -> None:
    if slots is None:
        return
    from mixdesk.engine.offload import stream_experts  # noqa: PLC0415

    try:
        stream_experts(model, slots, device)
    except ValueError as bad:  # experts of a shape the kernels do not take
        raise OutOfVRAMError(f"{folder}: its experts cannot live in host memory ({bad}); "
                             "load with a budget that holds the whole model") from None


def _swap_linear(model: nn.Module, prefix: str, qw: QuantizedWeight, *,
                 device: torch.device | str, dtype: torch.dtype, cache: bool, path: Path) -> None:
    parent, leaf = _parent(model, prefix, path)
    current = getattr(parent, leaf, None)
    if not isinstance(current, nn.Linear | QuantLinear):
        raise ModelFormatError(f"{path}: {prefix} is not a linear layer of this model")
    if (current.out_features, current.in_features) != tuple(qw.shape):
        raise ModelFormatError(
            f"{path}: {prefix} is {tuple(qw.shape)}, the model expects "
            f"{(current.out_features, current.in_features)}"
        )
    setattr(parent, leaf, QuantLinear(qw, dtype=dtype, cache=cache).to(device))
