"""Load a model folder into our Transformer plus its tokenizer.

The model is built on the meta device and its tensors are assigned straight
from the memory-mapped shards, so nothing is allocated twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mixdesk.engine.checkpoint import Checkpoint, sanitize
from mixdesk.engine.config import ModelArgs
from mixdesk.engine.errors import ModelFormatError, NoGPUError, TokenizerError
from mixdesk.engine.fastpath import capture_decode
from mixdesk.engine.model import Transformer
from mixdesk.engine.paths import demo_model_dir
from mixdesk.engine.qformat import is_quantized_folder, load_quantized_into

if TYPE_CHECKING:
    from mixdesk.engine.budget import Plan

log = logging.getLogger("mixdesk.engine.loader")

DEFAULT_CONTEXT = 4096  # the app's default window; the config's maximum is often far larger
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclass
class LoadedModel:
    """A model ready to generate.

    Attributes:
        path: the model folder.
        args: its architecture.
        model: our Transformer, KV cache allocated for `context` positions.
        tokenizer: the folder's own Hugging Face tokenizer.
        device: where the weights live.
        dtype: compute dtype of unquantized tensors.
        context: the KV cache length (prompt plus answer).
    """

    path: Path
    args: ModelArgs
    model: Transformer
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    context: int


def resolve_model_path(name: str | Path) -> Path:
    """`demo` means the demo model in $MIXDESK_HOME; anything else is a folder."""
    if str(name) == "demo":
        return demo_model_dir()
    return Path(name).expanduser()


def prepare_model_path(name: str | Path,
                       progress: Callable[[str, float], None] | None = None) -> Path:
    """The folder `name` means, building the demo first when `name` is "demo"."""
    if str(name) == "demo":
        from mixdesk.engine.demo import ensure_demo  # noqa: PLC0415 - only the demo needs it

        ensure_demo(progress=progress)
    return resolve_model_path(name)


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[str, torch.dtype]:
    """Turn "auto" into CUDA when present, else the CPU; bf16 on a GPU, fp32 on the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    return device, getattr(torch, dtype)


def open_model(name: str | Path, *, device: str = "auto", dtype: str = "auto",
               context: int | None = None,
               progress: Callable[[str, float], None] | None = None,
               budget_gb: float | None = None) -> LoadedModel:
    """What the front ends call: resolve "auto", build the demo on first use, then load.

    Args:
        name: a model folder, or "demo".
        device: "auto", "cpu" or "cuda[:n]".
        dtype: "auto", "float32", "bfloat16" or "float16".
        context: KV cache length (default min(model maximum, 4096)).
        progress: reports the demo build, (stage, fraction).
        budget_gb: VRAM the load may use; None: no check.
    """
    prepare_model_path(name, progress)
    torch_device, torch_dtype = resolve_device(device, dtype)
    return load_model(name, device=torch_device, dtype=torch_dtype, context=context,
                      budget_gb=budget_gb)


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer, or a TokenizerError naming what is missing."""
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise TokenizerError(
            f"{folder}: no tokenizer.json or tokenizer.model; copy the tokenizer files "
            "from the model's hub repo into this folder"
        )
    from transformers import AutoTokenizer  # noqa: PLC0415 - heavy import, only when loading

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as bad:
        raise TokenizerError(f"{folder}: the tokenizer files cannot be read ({bad})") from None


def load_model(path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
               context: int | None = None, budget_gb: float | None = None) -> LoadedModel:
    """Read config, weights and tokenizer from a model folder.

    Args:
        path: a model folder, or "demo".
        device: "cpu" or "cuda[:n]".
        dtype: dtype for the weights and activations.
        context: KV cache length; defaults to min(config maximum, 4096).
        budget_gb: VRAM the load may use (engine.budget); None: no check.

    Returns:
        The loaded model.

    Raises:
        OutOfVRAMError: the model does not fit `budget_gb`; the message says what would.
    """
    folder = resolve_model_path(path)
    if str(path) == "demo" and not folder.is_dir():
        raise ModelFormatError("the demo model is not built yet; run `mixdesk demo` first")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NoGPUError("no CUDA GPU is available; use --device cpu")
    args = ModelArgs.from_folder(folder)
    tokenizer = load_tokenizer(folder)
    context = min(context or DEFAULT_CONTEXT, args.max_seq_len)
    fitted = None if budget_gb is None else enforce_budget(folder, device, budget_gb, context)
    slots = fitted.expert_slots if fitted is not None and fitted.expert_slots else None
    if device.startswith("cuda"):  # the engine never takes more than the plan's budget;
        from mixdesk.engine.budget import cap_process  # noqa: PLC0415

        cap_process(fitted, torch.device(device).index or 0)  # no budget: the whole GPU
    if is_quantized_folder(folder):  # the mixdesk quantized format (engine.qformat)
        with torch.device("meta"):
            model = Transformer(args)
        load_quantized_into(model, folder, device, dtype, cache_dequantized=device == "cpu",
                            expert_slots=slots)
        model.eval()
        model.setup_cache(context)
        if device.startswith("cuda"):
            capture_decode(model)  # the first answer does not pay the compile and capture
        return LoadedModel(folder, args, model, tokenizer, torch.device(device), dtype, context)
    checkpoint = Checkpoint(folder)

    with torch.device("meta"):
        model = Transformer(args)
    state = _read_state(checkpoint, args, dtype)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise ModelFormatError(f"{folder}: checkpoint lacks {missing[0]} ({len(missing)} missing)")
    unexpected = sorted(set(state) - expected)
    if unexpected:
        log.warning("ignoring %d unknown tensors, first %s", len(unexpected), unexpected[0])
    for name, tensor in model.state_dict().items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ModelFormatError(
                f"{folder}: {name} has shape {tuple(state[name].shape)}, "
                f"config.json implies {tuple(tensor.shape)}"
            )
    model.load_state_dict({k: v.to(device) for k, v in state.items() if k in expected},
                          assign=True)
    model.eval()
    model.setup_cache(context)
    return LoadedModel(folder, args, model, tokenizer, torch.device(device), dtype, context)


def enforce_budget(folder: Path, device: str, budget_gb: float, context: int) -> Plan | None:
    """The plan for `budget_gb` (engine.budget); refuse a GPU load it cannot hold.

    A folder that is not quantized loads dense, so it is planned without a recipe.
    A plan with EXPERTS_ON_HOST tells the loader how many experts to cache.
    Returns None off the GPU, where no budget applies.
    """
    if not device.startswith("cuda"):
        log.info("a VRAM budget applies to GPU loads; ignored on %s", device)
        return None
    from mixdesk.engine.budget import check_fits, detect_gpu, plan  # noqa: PLC0415
    from mixdesk.engine.quantize import Recipe  # noqa: PLC0415

    gpu = detect_gpu(torch.device(device).index or 0)
    dense = None if is_quantized_folder(folder) else Recipe("dense", ())
    # one copy per weight: on CUDA the packed copy replaces the stored form (engine.fastpath)
    fitted = plan(folder, gpu, budget_gb, context, recipe=dense, runnable_only=True,
                  kernel_copy=False)
    check_fits(fitted, gpu)
    log.info("plan: %s, %s, %.2f GB of VRAM predicted, budget %.1f GB", fitted.recipe.name,
             fitted.placement, fitted.vram_total / 1e9, budget_gb)
    return fitted


def _read_state(checkpoint: Checkpoint, args: ModelArgs, dtype: torch.dtype
                ) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for hub_name, tensor in checkpoint.tensors():
        name = sanitize(hub_name)
        if name is not None:
            state[name] = tensor.to(dtype)
    if "lm_head.weight" not in state and args.tie_embeddings and "embed_tokens.weight" in state:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    return state
