"""Import published hqq 0.1.x checkpoints (`qmodel.pt` + `config.json`) without requantizing.

hqq 0.1.x (`BaseHQQModel.save_quantized`) writes one torch pickle: module name
-> that module's state dict. A quantized linear holds `W_q` and `meta`:
    W_q         codes bit-packed by hqq (`2bit_u8`, `4bit_u8`, `3bit_32`, ...), split
                along dim 0 of the grouped weight (axis 0: [g, n]; axis 1: [n, g])
    meta        nbits, group_size, axis, shape, packing, quant_scale, quant_zero and
      zero_scale  with offload_meta: uint8 [2, mg, C] (zero codes, scale codes), or
                  fp16 [2, ...] when the meta is not quantized
      zero_q / scale_q  the same codes, kept apart (no offload_meta)
      zero / scale      fp16 meta (no meta quantization)
      meta_zero / meta_scale  dicts with fp16 `scale` and `zero` [1, C] of the 8-bit
                  group-`mg` meta quantization (axis 0 over the flattened meta)
Every other module (embeddings, norms, router, lm_head) holds its `weight`.

The codes are repacked into our layout and the 8-bit meta is carried over as
is; meta in any other layout (for example hqq's whole-tensor zero
quantization) is dequantized to fp16.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mixdesk.engine.checkpoint import sanitize
from mixdesk.engine.config import ModelArgs
from mixdesk.engine.errors import ModelFormatError
from mixdesk.engine.qformat import (
    MANIFEST_NAME,
    TOKENIZER_FILES,
    ProgressCallback,
    _build_manifest,
    _open_job,
    _Progress,
    _unit_of,
    _unit_order,
    _write_json_atomic,
    _write_unit,
    sha256_file,
)
from mixdesk.engine.quantize import (
    ATTENTION,
    EXPERTS,
    QuantizedWeight,
    QuantMeta,
    QuantSpec,
    Recipe,
    RecipeEntry,
    kind_of,
    pack_codes,
)

log = logging.getLogger("mixdesk.engine.hqq_import")

WEIGHT_FILE = "qmodel.pt"
IMPORTED_RECIPE = "hqq-0.1.x-import"

# hqq 0.1.x packings: (slots per word, bits per slot); slot i holds rows [i*step, (i+1)*step)
_HQQ_PACKINGS = {"8bit_u8": (1, 8), "4bit_u8": (2, 4), "3bit_32": (10, 3), "2bit_u8": (4, 2),
                 "1bit_u8": (8, 1)}


def read_hqq_weights(folder: Path) -> dict[str, Any]:
    """Load `folder/qmodel.pt` with the safe (weights-only) unpickler, memory-mapped."""
    path = Path(folder) / WEIGHT_FILE
    if not path.is_file():
        raise ModelFormatError(f"{path}: missing, so {folder} is not an hqq 0.1.x checkpoint")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError) as bad:
        raise ModelFormatError(f"{path}: damaged or not an hqq checkpoint ({bad})") from None
    if not isinstance(weights, dict) or not weights:
        raise ModelFormatError(f"{path}: expected a dict of module state dicts")
    return weights


def unpack_hqq_codes(packed: torch.Tensor, meta: Mapping[str, Any]) -> torch.Tensor:
    """hqq 0.1.x's packed `W_q` back to uint8 codes in the grouped shape."""
    packing = meta.get("packing")
    if packing not in _HQQ_PACKINGS:
        raise ModelFormatError(f"hqq packing {packing!r} is not supported")
    if meta.get("view_as_float"):
        packed = packed.view(torch.int32 if packing == "3bit_32" else torch.uint8)
    slots, bits = _HQQ_PACKINGS[packing]
    word = packed.to(torch.int64)
    mask = (1 << bits) - 1
    shifts = [bits * (slots - 1 - i) for i in range(slots)]  # slot 0 in the high bits
    rows = torch.cat([(word >> s) & mask for s in shifts], dim=0).to(torch.uint8)
    group, axis = int(meta["group_size"]), int(meta["axis"])
    numel = int(torch.Size(meta["shape"]).numel())
    grouped = (group, numel // group) if axis == 0 else (numel // group, group)
    return rows[: grouped[0]].reshape(grouped)  # 3-bit words pad dim 0 to a multiple of 10


def _meta_parts(meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """zero/scale (fp) or zero_q/scale_q (codes) from whichever layout the file uses."""
    parts = {k: meta[k] for k in ("zero", "scale", "zero_q", "scale_q") if k in meta}
    if "zero_scale" in meta:
        zs = meta["zero_scale"]
        if zs.dtype == torch.uint8:
            parts["zero_q"], parts["scale_q"] = zs[0], zs[1]
        else:
            parts["zero"], parts["scale"] = zs[0], zs[1]
    return parts


def _hqq_meta_dequant(codes: torch.Tensor, qmeta: Mapping[str, Any]) -> torch.Tensor:
    """hqq's own dequantization of quantized meta, any grouping: (q - zero) * scale."""
    # grouped codes [g, C] against [1, C] meta, or a whole-tensor scalar pair
    out = (codes.to(torch.float32) - qmeta["zero"].float()) * qmeta["scale"].float()
    return out.reshape(-1)


def _convert_meta(name: str, parts: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                  n: int) -> tuple[QuantMeta, QuantMeta, int | None, int]:
    """(scale, zero, meta_bits, meta_group) in our layout."""
    ours = []
    for key in ("scale", "zero"):
        qm = meta.get(f"meta_{key}")
        codes = parts.get(f"{key}_q")
        if codes is not None and isinstance(qm, Mapping) and _is_our_meta_layout(qm, codes, n):
            qmeta = torch.stack([qm["scale"].reshape(-1), qm["zero"].reshape(-1)]).half()
            ours.append(QuantMeta(length=n, codes=codes.contiguous(), qmeta=qmeta))
        elif codes is not None and isinstance(qm, Mapping):
            ours.append(QuantMeta(length=n, values=_hqq_meta_dequant(codes, qm)[:n].half()))
        elif key in parts:
            ours.append(QuantMeta(length=n, values=parts[key].reshape(-1).half()))
        else:
            raise ModelFormatError(f"{WEIGHT_FILE}: {name} has no {key} meta")
    scale, zero = ours
    if scale.codes is not None and zero.codes is not None and \
            scale.codes.shape == zero.codes.shape:
        return scale, zero, 8, int(scale.codes.shape[0])
    # mixed layouts: keep both as fp16, which our spec can describe
    return (_as_fp16(scale), _as_fp16(zero), None, 128)


def _is_our_meta_layout(qm: Mapping[str, Any], codes: torch.Tensor, n: int) -> bool:
    group = qm.get("group_size")
    return (qm.get("nbits") == 8 and group is not None and int(qm.get("axis", 0)) == 0
            and qm.get("packing") in ("8bit_u8", None) and codes.dtype == torch.uint8
            and codes.dim() == 2 and codes.shape[0] == group and codes.numel() == n)


def _as_fp16(meta: QuantMeta) -> QuantMeta:
    if meta.values is not None:
        return meta
    return QuantMeta(length=meta.length, values=meta.dequantize(torch.float32).half())


def convert_hqq_linear(name: str, state: Mapping[str, Any]) -> QuantizedWeight:
    """One hqq 0.1.x HQQLinear state dict ({W_q, meta, bias}) as our QuantizedWeight."""
    meta = state["meta"]
    if state.get("bias") is not None:
        raise ModelFormatError(f"{WEIGHT_FILE}: {name} has a bias, which mixdesk does not support")
    try:
        bits, group, axis = int(meta["nbits"]), int(meta["group_size"]), int(meta["axis"])
        shape = tuple(int(s) for s in meta["shape"])
    except (KeyError, TypeError, ValueError) as bad:
        raise ModelFormatError(f"{WEIGHT_FILE}: {name} has incomplete meta ({bad})") from None
    codes = unpack_hqq_codes(state["W_q"], meta)
    n = codes.numel() // group
    scale, zero, meta_bits, meta_group = _convert_meta(name, _meta_parts(meta), meta, n)
    spec = QuantSpec(bits=bits, group=group, axis=axis, meta_bits=meta_bits,
                     meta_group=meta_group)
    return QuantizedWeight(spec, shape, pack_codes(codes, bits), scale, zero)


def import_hqq(src: Path, dest: Path, *, tokenizer_from: Path | None = None,
               source_repo: str | None = None, progress: ProgressCallback | None = None
               ) -> Path:
    """Convert an hqq 0.1.x checkpoint folder into the mixdesk format.

    Args:
        src: folder with qmodel.pt and config.json (a Mixtral, Mistral or Llama).
        dest: new or empty output folder.
        tokenizer_from: folder to copy tokenizer files from (default: src).
        source_repo: recorded in the manifest (default: src's name).
        progress: called with QuantizeProgress events.

    Returns:
        dest.
    """
    src, dest = Path(src), Path(dest)
    args = ModelArgs.from_folder(src)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    weights = read_hqq_weights(src)
    units: dict[str, dict[str, Any]] = {}
    for module, state in weights.items():
        if not isinstance(state, Mapping):
            raise ModelFormatError(f"{src / WEIGHT_FILE}: {module} is not a state dict")
        weight_name = sanitize(f"{module}.weight")
        if weight_name is None:
            continue
        units.setdefault(_unit_of(weight_name), {})[weight_name] = state
    recipe_specs: dict[str, QuantSpec | None] = {}
    placeholder = Recipe(IMPORTED_RECIPE, ())
    _open_job(dest, placeholder)
    track = _Progress(progress, sum(len(u) for u in units.values()),
                      (src / WEIGHT_FILE).stat().st_size)
    files = {}
    shapes = {}
    for unit in sorted(units, key=_unit_order):
        out: dict[str, torch.Tensor] = {}
        info: dict[str, Any] = {}
        for name, state in sorted(units[unit].items()):
            if "W_q" in state and "meta" in state:
                qw = convert_hqq_linear(name, state)
                out.update(qw.tensors(name.removesuffix(".weight")))
                info[name] = {"kind": kind_of(name), "shape": list(qw.shape),
                              "quant": qw.spec.to_dict(), "packing": "bitstream-le"}
                recipe_specs[name] = qw.spec
                shapes[name] = qw.shape
            elif "weight" in state:
                tensor = state["weight"].to(torch.float16).contiguous()
                out[name] = tensor
                info[name] = {"kind": kind_of(name), "shape": list(tensor.shape), "quant": None,
                              "dtype": "float16"}
                recipe_specs[name] = None
                shapes[name] = tuple(tensor.shape)
            else:
                log.warning("%s: skipping %s (keys %s)", src / WEIGHT_FILE, name, sorted(state))
                continue
            track.tensors_done += 1
        track.emit("write", unit)
        files[unit] = _write_unit(dest / unit, out, info)
    recipe = _recipe_from_specs(recipe_specs)
    for name in TOKENIZER_FILES:
        origin = Path(tokenizer_from or src) / name
        if origin.is_file():
            (dest / name).write_bytes(origin.read_bytes())
    (dest / "config.json").write_bytes((src / "config.json").read_bytes())
    sources = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
               for p in (src / WEIGHT_FILE, src / "config.json")}
    state = {"files": files, "sources": sources}
    manifest = _build_manifest(dest, recipe, config, args, state, shapes=shapes,
                               source=(source_repo or src.name, "local"),
                               quantizer={"name": "hqq", "version": "0.1.x (imported)"})
    _write_json_atomic(dest / MANIFEST_NAME, manifest)
    (dest / ".mixdesk-job.json").unlink(missing_ok=True)
    track.bytes_done = track.bytes_total
    track.emit("done", MANIFEST_NAME)
    return dest


def _recipe_from_specs(specs: Mapping[str, QuantSpec | None]) -> Recipe:
    """The recipe the checkpoint was made with, as pattern entries where a kind is uniform."""
    entries: list[RecipeEntry] = []
    for pattern, kind in ((ATTENTION, "attention"), (EXPERTS, "experts")):
        found = {s for n, s in specs.items() if kind_of(n) == kind}
        if len(found) == 1:
            (spec,) = found
            entries.append(RecipeEntry(pattern, spec))
        else:
            entries.extend(RecipeEntry(n, s) for n, s in sorted(specs.items())
                           if kind_of(n) == kind and s is not None)
    entries.extend(RecipeEntry(n, s) for n, s in sorted(specs.items())
                   if kind_of(n) not in ("attention", "experts") and s is not None)
    return Recipe(IMPORTED_RECIPE, tuple(entries))
