"""Hugging Face safetensors checkpoints: read tensor by tensor, write in hub layout.

All checkpoint-name mapping lives in `sanitize`; nothing else in the engine
knows the hub's names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mixdesk.engine.errors import ModelFormatError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# hub name (after the "model." prefix is gone) -> our module path
_RENAMES = [
    (re.compile(r"^layers\.(\d+)\.block_sparse_moe\.gate\.weight$"), r"layers.\1.moe.gate.weight"),
    (
        re.compile(r"^layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$"),
        r"layers.\1.moe.experts.\2.\3.weight",
    ),
    # a dense MLP is expert 0: gate_proj is w1, down_proj is w2, up_proj is w3
    (re.compile(r"^layers\.(\d+)\.mlp\.gate_proj\.weight$"), r"layers.\1.moe.experts.0.w1.weight"),
    (re.compile(r"^layers\.(\d+)\.mlp\.down_proj\.weight$"), r"layers.\1.moe.experts.0.w2.weight"),
    (re.compile(r"^layers\.(\d+)\.mlp\.up_proj\.weight$"), r"layers.\1.moe.experts.0.w3.weight"),
]
_SKIPPED = re.compile(r"rotary_emb\.inv_freq$")


def sanitize(hub_name: str) -> str | None:
    """Map a hub tensor name to our module path; None for tensors we do not use."""
    if _SKIPPED.search(hub_name):
        return None
    name = hub_name.removeprefix("model.")
    for pattern, replacement in _RENAMES:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    return name


class Checkpoint:
    """A safetensors checkpoint folder, sharded (with an index) or single-file.

    Tensors are read one at a time from memory-mapped shards.

    Attributes:
        folder: the model folder.
        weight_map: hub tensor name -> shard file name.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.weight_map = _read_weight_map(self.folder)
        self._open: dict[str, Any] = {}
        for shard in sorted(set(self.weight_map.values())):
            self._open_shard(shard)

    def _open_shard(self, shard: str) -> Any:
        if shard not in self._open:
            path = self.folder / shard
            if not path.is_file():
                raise ModelFormatError(f"{path}: shard listed in {INDEX_NAME} is missing")
            try:
                handle = safe_open(str(path), framework="pt")
                keys = set(handle.keys())
            except (SafetensorError, OSError) as bad:
                raise ModelFormatError(
                    f"{path}: damaged or truncated safetensors shard ({bad})"
                ) from None
            missing = [n for n, s in self.weight_map.items() if s == shard and n not in keys]
            if missing:
                raise ModelFormatError(f"{path}: lacks {missing[0]}, which the index places there")
            self._open[shard] = handle
        return self._open[shard]

    def names(self) -> list[str]:
        return list(self.weight_map)

    def tensor(self, name: str) -> torch.Tensor:
        """Read one tensor by its hub name."""
        shard = self.weight_map.get(name)
        if shard is None:
            raise ModelFormatError(f"{self.folder}: checkpoint has no tensor {name}")
        try:
            return self._open_shard(shard).get_tensor(name)
        except SafetensorError as bad:
            raise ModelFormatError(f"{self.folder / shard}: cannot read {name} ({bad})") from None

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (hub name, tensor), shard by shard."""
        for name in sorted(self.weight_map, key=lambda n: (self.weight_map[n], n)):
            yield name, self.tensor(name)


def _read_weight_map(folder: Path) -> dict[str, str]:
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as bad:
            raise ModelFormatError(f"{index}: not a valid safetensors index ({bad})") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFormatError(f"{index}: weight_map is empty")
        return {str(k): str(v) for k, v in weight_map.items()}
    single = folder / SINGLE_NAME
    if single.is_file():
        try:
            with safe_open(str(single), framework="pt") as handle:
                return {k: SINGLE_NAME for k in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as bad:
            raise ModelFormatError(
                f"{single}: damaged or truncated safetensors file ({bad})"
            ) from None
    raise ModelFormatError(f"{folder}: no {INDEX_NAME} or {SINGLE_NAME}, so there are no weights")


def save_hub_checkpoint(
    folder: Path,
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    max_shard_bytes: int = 2 * 1024**3,
) -> list[Path]:
    """Write tensors and config.json in the hub's layout.

    Shards are named `model-0000i-of-0000n.safetensors` with an index, as in
    the mistralai repos; a checkpoint that fits one shard is `model.safetensors`.

    Args:
        folder: destination, created if needed.
        tensors: hub tensor name -> tensor.
        config: the config.json content.
        max_shard_bytes: start a new shard past this size.

    Returns:
        The shard paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = tensor.contiguous()
        size += nbytes
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2) + "\n")
    metadata = {"format": "pt"}
    if len(groups) == 1:
        path = folder / SINGLE_NAME
        save_file(groups[0], str(path), metadata=metadata)
        return [path]
    paths = []
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        shard = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(folder / shard), metadata=metadata)
        weight_map.update(dict.fromkeys(group, shard))
        paths.append(folder / shard)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return paths
