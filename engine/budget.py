"""The VRAM budget planner: which recipe and placement fit a GPU, and how fast it decodes.

`plan(model, gpu, budget_gb, context)` prices every tensor of the model from its
recipe, to the byte (codes, 8-bit meta and its fp16 pairs, dense tensors), adds
the KV cache, activations, workspace and the CUDA context, and returns a `Plan`.
Given only a budget it takes the best-fidelity recipe that fits, keeping meta in
pinned host memory before it gives up fidelity. Decode speed is predicted as a
floor: bytes read per token over HBM bandwidth, or the meta crossing PCIe per
token over host-to-GPU bandwidth when that is slower (the copy overlaps compute).

Sizes are decimal: 1 GB = 1e9 bytes, as the app and DESIGN.md print them.

Bandwidths and the CUDA context are measured once per GPU (`measure_gpu`) and
cached in `$MIXDESK_HOME/hardware.json`; until then the defaults below are used.

On CUDA each quantized weight is held once, in the kernels' packed form (decode
reads it, prefill dequantizes from it); `kernel_copy=True` also counts a second,
stored copy, as the engine held before. Offloading meta (the card's 13.6 GB layout)
is priced but not built: such a plan says so in `Plan.runnable`. What the offload
engine runs instead (`engine/offload.py`) is EXPERTS_ON_HOST: the experts in pinned
host memory, as many as the rest of the budget holds resident on the GPU, and top_k
staging slots that each decode step fills over the bus from inside its CUDA graph.
The loader asks for runnable plans only (`runnable_only`), which puts that in place
of a meta placement. Such a step cannot copy before its router has chosen, so its
floor is the HBM time plus the bus time, not the larger of the two.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mixdesk.engine.config import ModelArgs
from mixdesk.engine.errors import ModelFormatError, OutOfVRAMError
from mixdesk.engine.paths import mixdesk_home
from mixdesk.engine.quantize import (
    RECIPES,
    QuantSpec,
    Recipe,
    kind_of,
    quantized_nbytes,
)

log = logging.getLogger("mixdesk.engine.budget")

GB = 1e9
DTYPE_BYTES = 2  # dense tensors, KV cache and activations: bf16/fp16 on a GPU
# Measured on smol-moe, docs/QUALITY.md (KL against the unquantized model, nats): the
# planner's order of preference, best first.
RECIPE_KL = {"4bit-g64": 0.303, "3bit-g64": 0.821, "hqq-card": 0.929, "2bit-g16": 2.258}
FIDELITY_ORDER = tuple(sorted(RECIPE_KL, key=RECIPE_KL.__getitem__))
PREFILL_TOKENS = 512  # activations are sized for a prompt of this many tokens in one forward
CUDA_CONTEXT_DEFAULT = 512 * 2**20  # driver + torch + cuBLAS handles; typical on torch 2.x
# Code the engine loads onto the GPU after the context is measured (cuBLAS kernels, the Triton
# kernels, the compiled decode glue): on an H100 the device showed 0.78-0.80 GB beyond torch's
# reservation after a decode, against a context of 0.55 GB measured at start (PERFORMANCE.md).
KERNEL_MODULES_BYTES = 256 * 2**20
# Streamed experts fill the budget with resident experts, so a small miss in the activation
# model would be an out-of-memory error: this much of the budget stays unassigned.
STREAMED_HEADROOM_BYTES = 256 * 2**20
# DESIGN.md: copy bandwidth of an H100 SXM and pinned H2D on its host
KNOWN_GPUS = {"H100": (2950.0, 54.8)}
DEFAULT_HBM_GBPS = 900.0  # unknown GPU: roughly an RTX 3090/4090
DEFAULT_H2D_GBPS = 25.0  # PCIe 4 x16 as measured on consumer boards
KL_UNKNOWN = math.inf

PLACEMENTS = ("resident", "expert meta on host", "all meta on host")
# What the offload engine (engine.offload.stream_experts) runs: the experts' packed copies in
# pinned host memory, as many resident on the GPU as the VRAM left holds, plus top_k staging
# slots. Offered in place of a meta placement that today's engine cannot run.
EXPERTS_ON_HOST = "experts on host"


# ---------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as the planner sees it.

    Attributes:
        name: as CUDA reports it.
        total_bytes: its memory.
        hbm_gbps: device copy bandwidth, GB/s (read + write over time).
        h2d_gbps: pinned host-to-device bandwidth, GB/s.
        cuda_context_bytes: memory the driver and torch take before any tensor.
        free_bytes: free memory when detected (other programs' use shows here).
        measured: the numbers were measured on this machine (else defaults).
    """

    name: str
    total_bytes: int
    hbm_gbps: float
    h2d_gbps: float
    cuda_context_bytes: int = CUDA_CONTEXT_DEFAULT
    free_bytes: int | None = None
    measured: bool = False

    @classmethod
    def default(cls, name: str, total_bytes: int) -> GpuInfo:
        """Bandwidth defaults by name (DESIGN.md's H100 numbers), else a PCIe 4 consumer card."""
        hbm, h2d = next((v for k, v in KNOWN_GPUS.items() if k in name),
                        (DEFAULT_HBM_GBPS, DEFAULT_H2D_GBPS))
        return cls(name, total_bytes, hbm, h2d)


def hardware_path() -> Path:
    return mixdesk_home() / "hardware.json"


def read_hardware_cache(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """GPU name -> measured numbers; a missing or damaged file reads as empty (one log line)."""
    path = path or hardware_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as bad:
        log.warning("ignoring %s, it is not readable JSON (%s); using defaults", path, bad)
        return {}
    gpus = data.get("gpus") if isinstance(data, dict) else None
    if not isinstance(gpus, dict):
        log.warning("ignoring %s, it has no \"gpus\" object; using defaults", path)
        return {}
    return {k: v for k, v in gpus.items() if isinstance(v, dict)}


def write_hardware_cache(info: GpuInfo, path: Path | None = None) -> None:
    path = path or hardware_path()
    gpus = read_hardware_cache(path)
    gpus[info.name] = {"hbm_gbps": info.hbm_gbps, "h2d_gbps": info.h2d_gbps,
                       "cuda_context_bytes": info.cuda_context_bytes,
                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"gpus": gpus}, indent=1), encoding="utf-8")
    tmp.replace(path)


def with_cached(info: GpuInfo, cache: Mapping[str, Mapping[str, Any]]) -> GpuInfo:
    """`info` with the numbers measured earlier for its name, where the cache has sane ones."""
    entry = cache.get(info.name)
    if not entry:
        return info
    try:
        hbm, h2d = float(entry["hbm_gbps"]), float(entry["h2d_gbps"])
        ctx = int(entry["cuda_context_bytes"])
    except (KeyError, TypeError, ValueError) as bad:
        log.warning("ignoring the hardware cache entry of %s (%s); using defaults", info.name, bad)
        return info
    if hbm <= 0 or h2d <= 0 or ctx < 0:
        log.warning("ignoring the hardware cache entry of %s (not positive)", info.name)
        return info
    return replace(info, hbm_gbps=hbm, h2d_gbps=h2d, cuda_context_bytes=ctx, measured=True)


def detect_gpu(device: int = 0) -> GpuInfo | None:
    """The CUDA GPU with cached measurements or defaults; None without CUDA."""
    import torch  # noqa: PLC0415 - the planner itself needs no torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device)
    free, total = torch.cuda.mem_get_info(device)
    info = replace(GpuInfo.default(props.name, int(total)), free_bytes=int(free))
    return with_cached(info, read_hardware_cache())


def measure_gpu(device: int = 0, *, save: bool = True) -> GpuInfo:
    """Measure copy and pinned H2D bandwidth (the fastest of 3 rounds each) and the CUDA
    context; cache them by GPU name.

    The context is the GPU memory in use beyond torch's reservations right after
    CUDA starts, so run this in a process that has not allocated much yet and with
    no other program on the GPU.
    """
    import torch  # noqa: PLC0415

    info = detect_gpu(device)
    if info is None:
        raise RuntimeError("measure_gpu needs CUDA")
    dev = torch.device("cuda", device)
    torch.empty(1, device=dev)
    torch.cuda.synchronize(dev)
    free, total = torch.cuda.mem_get_info(device)
    context = int(total - free - torch.cuda.memory_reserved(device))
    size = 1 << 30
    src = torch.empty(size, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)

    def timed(fn: Any, reps: int) -> float:
        fn()
        torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize(dev)
        return (time.perf_counter() - start) / reps

    # the fastest of 3 rounds: anything else on the machine only slows a copy down (one
    # round measured the H100's host-to-GPU copy at 35.2 GB/s, the others at 52-55)
    hbm = 2 * size / min(timed(lambda: dst.copy_(src), 20) for _ in range(3)) / GB
    host = torch.empty(size // 4, dtype=torch.uint8, pin_memory=True)
    h2d = host.numel() / min(
        timed(lambda: dst[: host.numel()].copy_(host, non_blocking=True), 10)
        for _ in range(3)) / GB
    info = replace(info, hbm_gbps=round(hbm, 1), h2d_gbps=round(h2d, 1),
                   cuda_context_bytes=context, measured=True)
    if save:
        write_hardware_cache(info)
    return info


# ---------------------------------------------------------------------------- the model's tensors


@dataclass(frozen=True)
class WeightBytes:
    """One weight, priced.

    Attributes:
        name: our module path (`layers.0.moe.experts.3.w1.weight`).
        kind: engine.quantize.kind_of.
        shape: [N, K] or [D].
        spec: its quantization, None when kept dense.
        codes: bytes of codes (dense: the tensor itself at DTYPE_BYTES).
        meta: bytes of scale/zero codes and their fp16 pairs (0 when dense).
        packed: bytes of the kernels' packed copy (0 when the kernels do not take it).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    spec: QuantSpec | None
    codes: int
    meta: int
    packed: int


def packed_copy_bytes(shape: tuple[int, ...], spec: QuantSpec) -> int:
    """Bytes of the kernels' PackedWeight for one matrix (kernels/README.md); 0 if not packed."""
    from mixdesk.engine.fastpath import kernel_reason  # noqa: PLC0415 - imports the kernels
    from mixdesk.kernels.layout import (  # noqa: PLC0415
        group_grid,
        is_inline,
        meta_groups,
        words_per_group,
    )

    if kernel_reason(spec, shape) is not None:
        return 0
    a_rows, b_cols = group_grid((int(shape[0]), int(shape[1])), spec.group, spec.axis)
    c_meta = meta_groups(a_rows * b_cols)
    period = c_meta // math.gcd(b_cols, c_meta)
    codes = words_per_group(spec.bits, spec.group) * a_rows * b_cols * 4  # int32 words
    meta = 0 if is_inline(spec.bits, spec.group) else a_rows * b_cols * 2  # int16
    table = 4 * min(period, a_rows) * b_cols * 4  # fp32 [4, P*B]
    return codes + meta + table


@functools.lru_cache(maxsize=8)
def weight_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Our weight names and shapes, from the model itself built on the meta device."""
    import torch  # noqa: PLC0415

    from mixdesk.engine.model import Transformer  # noqa: PLC0415

    with torch.device("meta"):
        model = Transformer(args)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def price_weights(shapes: Mapping[str, tuple[int, ...]],
                  specs: Mapping[str, QuantSpec | None]) -> list[WeightBytes]:
    """Every weight's bytes under its spec (None: dense at DTYPE_BYTES)."""
    out = []
    packed_of: dict[tuple[tuple[int, ...], QuantSpec], int] = {}  # experts share shapes
    for name, shape in shapes.items():
        numel = math.prod(shape)
        spec = specs.get(name)
        if spec is None or len(shape) != 2 or numel % spec.group:
            out.append(WeightBytes(name, kind_of(name), shape, None, numel * DTYPE_BYTES, 0, 0))
            continue
        codes, meta = quantized_nbytes(numel, spec)
        key = (tuple(shape), spec)
        if key not in packed_of:
            packed_of[key] = packed_copy_bytes(shape, spec)
        out.append(WeightBytes(name, kind_of(name), shape, spec, codes, meta, packed_of[key]))
    return out


@dataclass(frozen=True)
class ModelSource:
    """What the planner needs of a model: its architecture, name and (when fixed) its weights.

    Attributes:
        label: for messages and tables.
        args: the architecture.
        recipe: the recipe a quantized folder was written with; None: any recipe.
        specs: per-weight specs of a quantized folder (from its manifest).
    """

    label: str
    args: ModelArgs
    recipe: Recipe | None = None
    specs: Mapping[str, QuantSpec | None] | None = None

    def priced(self, recipe: Recipe) -> list[WeightBytes]:
        shapes = weight_shapes(self.args)
        if self.specs is not None:
            specs = dict(self.specs)
        else:
            specs = {n: recipe.spec_for(n, s) for n, s in shapes.items()}
        return price_weights(shapes, specs)


def model_source(model: str | Path | ModelArgs | Mapping[str, Any] | ModelSource) -> ModelSource:
    """A model folder (quantized or not), a ModelArgs, or a parsed config.json."""
    if isinstance(model, ModelSource):
        return model
    if isinstance(model, ModelArgs):
        return ModelSource(f"{model.model_type} model", model)
    if isinstance(model, Mapping):
        args = ModelArgs.from_hf_config(dict(model), source="config")
        return ModelSource(str(model.get("_name_or_path") or f"{args.model_type} model"), args)
    from mixdesk.engine.qformat import is_quantized_folder, read_manifest  # noqa: PLC0415

    folder = Path(model).expanduser()
    if not folder.exists():
        known = hub_config(str(model))
        if known is not None:  # a hub id planned before it is downloaded
            args = ModelArgs.from_hf_config(known, source=f"{model} (built-in config)")
            return ModelSource(str(model).rsplit("/", 1)[-1], args)
        if str(model).count("/") == 1 and not folder.is_absolute():
            raise ModelFormatError(
                f"{model}: no such model folder, and not a hub model mixdesk can plan "
                f"offline ({', '.join(hub_config_ids())}); download it first: "
                f"mixdesk download {model}")
    if is_quantized_folder(folder):
        manifest = read_manifest(folder)
        try:
            args = ModelArgs(**{**manifest["args"], "eos_token_ids":
                                tuple(manifest["args"].get("eos_token_ids", ()))})
            specs = {name: None if info["quant"] is None else QuantSpec.from_dict(info["quant"])
                     for name, info in manifest["weights"].items()}
        except (KeyError, TypeError) as bad:
            raise ModelFormatError(f"{folder}/manifest.json: no usable args ({bad})") from None
        return ModelSource(folder.name, args, Recipe.from_dict(manifest["recipe"]), specs)
    return ModelSource(folder.name, ModelArgs.from_folder(folder))


@functools.cache
def _hub_configs() -> dict[str, dict[str, Any]]:
    from importlib import resources  # noqa: PLC0415

    text = resources.files("mixdesk.resources").joinpath("hub_configs.json").read_text("utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def hub_config_ids() -> list[str]:
    """The hub models mixdesk can plan offline."""
    return list(_hub_configs())


def hub_config(repo_id: str) -> dict[str, Any] | None:
    """The config of a hub model mixdesk knows offline (resources/hub_configs.json), or None."""
    wanted = repo_id.strip().lower()
    return next((cfg for rid, cfg in _hub_configs().items() if rid.lower() == wanted), None)


# ---------------------------------------------------------------------------- memory model


def kv_cache_bytes(args: ModelArgs, context: int, batch: int = 1) -> int:
    """Keys and values of every layer for `context` positions (model.KVCache)."""
    return args.n_layers * 2 * batch * args.n_kv_heads * context * args.head_dim * DTYPE_BYTES


def activation_bytes(args: ModelArgs, tokens: int, context: int) -> int:
    """Peak live activations of one forward over `tokens` new tokens (the prefill).

    Hidden state and residuals, then the larger of the attention phase (q/k/v with
    RoPE, and k/v repeated to every head over the whole static cache for SDPA) and
    the MoE phase (the picks' inputs and outputs, [T*top_k, D] each, beside one expert's
    w1|w3 output [n, 2F], its silu and its product, n <= T: `engine.model.run_experts`),
    then the logits of every position.
    """
    t, d, hd = tokens, args.dim, args.head_dim
    hidden = 4 * t * d * DTYPE_BYTES  # x, residual, normed, block output
    attention = (2 * (args.n_heads + 2 * args.n_kv_heads) * t * hd  # projections + RoPE
                 + 2 * args.n_heads * context * hd) * DTYPE_BYTES  # repeat_interleave(k, v)
    moe = ((4 * t * args.ffn_dim + 2 * t * args.top_k * d) * DTYPE_BYTES
           + t * args.n_experts * 4 * 2)  # + router fp32
    logits = t * args.vocab_size * DTYPE_BYTES + args.vocab_size * 4  # + fp32 last row
    return hidden + max(attention, moe) + logits


def workspace_bytes(args: ModelArgs, weights: list[WeightBytes], tokens: int, context: int
                    ) -> int:
    """Transient buffers: prefill's torch dequantize of the largest matrix, RoPE, mask.

    Dequantizing a matrix of n weights holds its unpacked uint8 codes (n), the
    codes in the compute dtype (2n) and `codes - zero` (2n) while `* scale` writes
    the result (2n): 7n at the peak.
    """
    largest = max((math.prod(w.shape) for w in weights if w.spec is not None), default=0)
    rope = 2 * context * args.head_dim * 4  # cos, sin fp32 [S, Hd]
    mask = tokens * context  # bool [T, S]
    return 7 * largest + rope + mask


def read_fraction(kind: str, args: ModelArgs) -> float:
    """Share of a weight's bytes one decode step reads: top-k of the experts, one
    embedding row, all of everything else."""
    if kind == "experts":
        return args.top_k / args.n_experts
    if kind == "embedding":
        return 1 / args.vocab_size
    return 1.0


def _host_kinds(placement: str) -> tuple[str, ...]:
    return {"resident": (), "expert meta on host": ("experts",),
            "all meta on host": ("experts", "attention")}[placement]


@dataclass(frozen=True)
class Plan:
    """Where every byte goes, for one model, recipe, placement and context.

    Attributes:
        model: the model's label.
        recipe: the recipe.
        placement: one of PLACEMENTS.
        tensors: tensor class -> where its weights and meta live.
        context: KV cache length in tokens.
        prompt_tokens: activations are sized for a prompt this long.
        vram: breakdown in bytes: weights, meta, kernel copy, kv cache,
            activations, workspace, cuda context.
        host_bytes: pinned host memory for offloaded meta.
        hbm_bytes_per_token: GPU memory one decode step reads (empty cache).
        h2d_bytes_per_token: bytes one decode step copies host to GPU.
        kv_bytes_full: extra GPU reads per token with the cache full.
        gpu: whose bandwidths predict the speed.
        budget_bytes: the budget it was made for.
        kernel_copy: a second, stored copy of each packed weight is counted.
        runnable: None when today's engine runs the plan, else why not.
        fidelity_kl: measured KL of the recipe on smol-moe (docs/QUALITY.md).
        options: (recipe, placement, VRAM bytes) of every option weighed.
        expert_slots: expert slots on the GPU (placement EXPERTS_ON_HOST): the resident
            experts plus top_k staging slots; else 0.
        expert_hit_rate: the share of picks that find their expert resident, under
            uniform routing (resident / all experts).
    """

    model: str
    recipe: Recipe
    placement: str
    tensors: dict[str, str]
    context: int
    prompt_tokens: int
    vram: dict[str, int]
    host_bytes: int
    hbm_bytes_per_token: int
    h2d_bytes_per_token: int
    kv_bytes_full: int
    gpu: GpuInfo
    budget_bytes: int
    kernel_copy: bool
    runnable: str | None
    fidelity_kl: float
    options: tuple[tuple[str, str, int], ...] = field(default=(), compare=False)
    expert_slots: int = 0
    expert_hit_rate: float = 0.0

    @property
    def vram_total(self) -> int:
        return sum(self.vram.values())

    @property
    def decode_s(self) -> float:
        """The floor of one decode step. Streamed experts are copied only once the router
        has chosen them, so the bus time adds to the HBM time; offloaded meta (priced
        only) could be copied ahead, so the slower of the two bounds it."""
        hbm = self.hbm_bytes_per_token / (self.gpu.hbm_gbps * GB)
        h2d = self.h2d_bytes_per_token / (self.gpu.h2d_gbps * GB)
        return hbm + h2d if self.placement == EXPERTS_ON_HOST else max(hbm, h2d)

    @property
    def tok_s(self) -> float:
        return 1 / self.decode_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "recipe": self.recipe.name, "placement": self.placement,
            "tensors": self.tensors, "context": self.context,
            "prompt_tokens": self.prompt_tokens, "budget_bytes": self.budget_bytes,
            "vram": {**self.vram, "total": self.vram_total}, "host_bytes": self.host_bytes,
            "hbm_bytes_per_token": self.hbm_bytes_per_token,
            "h2d_bytes_per_token": self.h2d_bytes_per_token,
            "decode_ms_floor": round(1e3 * self.decode_s, 3), "tok_s_floor": round(self.tok_s, 1),
            "gpu": {"name": self.gpu.name, "hbm_gbps": self.gpu.hbm_gbps,
                    "h2d_gbps": self.gpu.h2d_gbps, "measured": self.gpu.measured},
            "kernel_copy": self.kernel_copy, "runnable": self.runnable,
            "fidelity_kl": None if math.isinf(self.fidelity_kl) else self.fidelity_kl,
            "expert_slots": self.expert_slots,
            "expert_hit_rate": round(self.expert_hit_rate, 3),
        }


def price_plan(source: ModelSource, recipe: Recipe, placement: str, gpu: GpuInfo, *,
               context: int, prompt_tokens: int | None = None, kernel_copy: bool = False,
               budget_bytes: int = 0, weights: list[WeightBytes] | None = None) -> Plan:
    """The Plan of one recipe and placement, priced (no fitting)."""
    args = source.args
    weights = weights if weights is not None else source.priced(recipe)
    tokens = min(context, prompt_tokens or PREFILL_TOKENS)
    host_kinds = _host_kinds(placement)
    vram = dict.fromkeys(("weights", "meta", "kernel copy", "kv cache", "activations",
                          "workspace", "cuda context"), 0)
    host = hbm = h2d = 0
    for w in weights:
        vram["weights"] += w.codes
        frac = read_fraction(w.kind, args)
        on_host = w.kind in host_kinds and w.spec is not None
        if on_host:
            host += w.meta
            h2d += round(w.meta * frac)
        else:
            vram["meta"] += w.meta
        packed = w.packed if kernel_copy and not on_host else 0
        vram["kernel copy"] += packed
        # decode reads the packed copy where there is one, else the stored form
        hbm += round((packed or (w.codes + (0 if on_host else w.meta))) * frac)
    vram["kv cache"] = kv_cache_bytes(args, context)
    vram["activations"] = activation_bytes(args, tokens, context)
    vram["workspace"] = workspace_bytes(args, weights, tokens, context)
    vram["cuda context"] = gpu.cuda_context_bytes + KERNEL_MODULES_BYTES
    tensors = {}
    for kind in sorted({w.kind for w in weights}):
        quantized = any(w.spec is not None for w in weights if w.kind == kind)
        if not quantized:
            tensors[kind] = "GPU"
        else:
            tensors[kind] = "GPU, meta in pinned host memory" if kind in host_kinds else "GPU"
    runnable = None
    if host_kinds:
        runnable = "keeping meta in host memory needs the offload engine (not built yet)"
    return Plan(source.label, recipe, placement, tensors, context, tokens, vram, host, hbm, h2d,
                kv_cache_bytes(args, context), gpu, budget_bytes, kernel_copy, runnable,
                RECIPE_KL.get(recipe.name, KL_UNKNOWN))


def price_experts_on_host(source: ModelSource, recipe: Recipe, gpu: GpuInfo, budget: int, *,
                          context: int, prompt_tokens: int | None = None,
                          weights: list[WeightBytes] | None = None,
                          slots: int | None = None) -> Plan | None:
    """The experts in pinned host memory, top_k staging slots and as many resident experts
    as the rest of `budget` holds (engine.offload.stream_experts).

    `slots` fixes the slot count instead (the smallest plan, for error messages). None
    when the kernels do not take the experts (nothing to offload) or the staging slots
    do not fit beside everything else.
    """
    args = source.args
    weights = weights if weights is not None else source.priced(recipe)
    experts = [w for w in weights if w.kind == "experts"]
    if not experts or any(w.spec is None or w.packed == 0 for w in experts):
        return None
    rest = [w for w in weights if w.kind != "experts"]
    base = price_plan(source, recipe, "resident", gpu, context=context,
                      prompt_tokens=prompt_tokens, kernel_copy=False, budget_bytes=budget,
                      weights=rest)
    n_experts = args.n_layers * args.n_experts
    host = sum(w.packed for w in experts)
    one = host // n_experts  # w1, w3 and w2 of one expert, packed
    vram = dict(base.vram)
    # prefill dequantizes one expert from its slot: w1 and w3, then w2, in fp16
    vram["workspace"] = max(vram["workspace"],
                            sum(math.prod(w.shape) for w in experts) // n_experts * DTYPE_BYTES)
    vram["headroom"] = STREAMED_HEADROOM_BYTES
    if slots is None:
        slots = min(n_experts + args.top_k, max(0, budget - sum(vram.values())) // one)
        if slots < args.top_k:  # the staging slots
            return None
    vram["expert cache"] = slots * one
    resident = slots - args.top_k
    hit = resident / n_experts
    active = args.n_layers * args.top_k
    staged = round(active * (1 - hit) * one)
    tensors = {**base.tensors,
               "experts": f"pinned host memory, {resident} of {n_experts} resident on the GPU "
                          f"+ {args.top_k} staging slots"}
    # a step reads its top-k experts from the pool, and writes the staged ones there first
    return replace(base, placement=EXPERTS_ON_HOST, tensors=tensors, vram=vram, host_bytes=host,
                   hbm_bytes_per_token=base.hbm_bytes_per_token + active * one + staged,
                   h2d_bytes_per_token=staged, runnable=None,
                   expert_slots=slots, expert_hit_rate=hit)


def _host_ram_available() -> int:
    import psutil  # noqa: PLC0415

    return int(psutil.virtual_memory().available)


def plan(model: str | Path | ModelArgs | Mapping[str, Any] | ModelSource, gpu: GpuInfo | None,
         budget_gb: float | None = None, context: int = 4096, *,
         recipe: str | Recipe | None = None, prompt_tokens: int | None = None,
         kernel_copy: bool = False, host_ram_bytes: int | None = None,
         runnable_only: bool = False) -> Plan:
    """The best-fidelity plan that fits the budget.

    Recipes go best first (RECIPE_KL); each is tried with everything on the GPU,
    then with the experts' meta in pinned host memory, then all meta; the first
    that fits in VRAM and whose host part fits free RAM wins.

    Args:
        model: a model folder (a quantized one fixes the recipe), ModelArgs, or a
            parsed config.json.
        gpu: the GPU (`detect_gpu()`); None plans for `budget_gb` with default
            bandwidths (an unknown PCIe 4 card).
        budget_gb: VRAM to use, GB; None: the whole GPU. Capped at the GPU's size.
        context: KV cache length in tokens.
        recipe: force one recipe (name or Recipe).
        prompt_tokens: the longest prompt prefilled in one forward (PREFILL_TOKENS).
        kernel_copy: also count a stored copy beside each packed weight (the engine
            before it held each weight once).
        host_ram_bytes: RAM available for pinned meta (default: psutil's available).
        runnable_only: only plans today's engine runs: a meta placement that fits is
            replaced by the same recipe with its experts on the host (EXPERTS_ON_HOST).

    Raises:
        OutOfVRAMError: nothing fits; the message names the smallest budget that works.
    """
    source = model_source(model)
    if budget_gb is None and gpu is None:
        raise ValueError("plan needs a GPU or a budget")
    if gpu is None:
        gpu = GpuInfo.default("unknown GPU", int((budget_gb or 0) * GB))
    budget = int((budget_gb if budget_gb is not None else gpu.total_bytes / GB) * GB)
    if budget > gpu.total_bytes:
        log.info("budget %.1f GB is more than the %s has; planning for %.1f GB",
                 budget / GB, gpu.name, gpu.total_bytes / GB)
        budget = gpu.total_bytes
    if source.recipe is not None:
        recipes = [source.recipe]
    elif recipe is not None:
        recipes = [recipe if isinstance(recipe, Recipe) else RECIPES[recipe]]
    else:
        recipes = [RECIPES[name] for name in FIDELITY_ORDER]
    host_free = host_ram_bytes if host_ram_bytes is not None else _host_ram_available()
    search = _Search(source, gpu, budget, context, prompt_tokens, kernel_copy, host_free)
    for rec in recipes:
        found = search.first_fit(rec, runnable_only=runnable_only)
        if found is not None:
            return found
    found = search.experts_on_host(recipes)
    if found is not None:
        return found
    raise OutOfVRAMError(_nothing_fits(source, search.weighed, budget, host_free, gpu))


@dataclass
class _Search:
    """One call of `plan`: what it was asked, and every plan weighed so far."""

    source: ModelSource
    gpu: GpuInfo
    budget: int
    context: int
    prompt_tokens: int | None
    kernel_copy: bool
    host_free: int
    weighed: list[Plan] = field(default_factory=list)
    priced: dict[str, list[WeightBytes]] = field(default_factory=dict)  # by recipe name

    def _weights(self, rec: Recipe) -> list[WeightBytes]:
        if rec.name not in self.priced:
            self.priced[rec.name] = self.source.priced(rec)
        return self.priced[rec.name]

    def _take(self, p: Plan) -> Plan:
        options = tuple((q.recipe.name, q.placement, q.vram_total) for q in self.weighed)
        return replace(p, options=options)

    def first_fit(self, rec: Recipe, *, runnable_only: bool) -> Plan | None:
        """The recipe resident, else with its meta on the host (or, for `runnable_only`,
        its experts on the host in place of a meta placement), whichever fits first."""
        weights = self._weights(rec)
        for placement in PLACEMENTS:
            if placement != "resident" and not any(e.offload_meta for e in rec.entries):
                continue
            p = price_plan(self.source, rec, placement, self.gpu, context=self.context,
                           prompt_tokens=self.prompt_tokens, kernel_copy=self.kernel_copy,
                           budget_bytes=self.budget, weights=weights)
            self.weighed.append(p)
            if p.vram_total > self.budget or p.host_bytes > self.host_free:
                continue
            if p.runnable is not None and runnable_only:
                runs = price_experts_on_host(self.source, rec, self.gpu, self.budget,
                                             context=self.context,
                                             prompt_tokens=self.prompt_tokens, weights=weights)
                if runs is None or runs.host_bytes > self.host_free:
                    continue
                self.weighed.append(runs)
                p = runs
            return self._take(p)
        return None

    def experts_on_host(self, recipes: list[Recipe]) -> Plan | None:
        """When nothing fits even with its meta on the host, the experts go to the host,
        best fidelity first (packed, the recipes' experts differ little in size, so in
        speed). Each recipe's smallest such plan is weighed, for the error message."""
        for rec in recipes:
            weights = self._weights(rec)
            runs = price_experts_on_host(self.source, rec, self.gpu, self.budget,
                                         context=self.context, prompt_tokens=self.prompt_tokens,
                                         weights=weights)
            if runs is not None and runs.host_bytes <= self.host_free:
                self.weighed.append(runs)
                return self._take(runs)
            least = price_experts_on_host(self.source, rec, self.gpu, self.budget,
                                          context=self.context,
                                          prompt_tokens=self.prompt_tokens, weights=weights,
                                          slots=self.source.args.top_k)  # staging only
            if least is not None:
                self.weighed.append(least)
        return None


def _nothing_fits(source: ModelSource, weighed: list[Plan], budget: int, host_free: int,
                  gpu: GpuInfo) -> str:
    possible = [p for p in weighed if p.host_bytes <= host_free]
    context = weighed[0].context if weighed else 0
    if not possible:
        least = min(weighed, key=lambda p: p.host_bytes)
        return (f"{source.label}: even the smallest plan needs {least.host_bytes / GB:.1f} GB "
                f"of host RAM for offloaded meta, and {host_free / GB:.1f} GB is free")
    best = min(possible, key=lambda p: p.vram_total)
    need = math.ceil(best.vram_total / GB * 10) / 10
    where = f"({best.recipe.name}, {best.placement}, context {context})"
    if need * GB > gpu.total_bytes and gpu.total_bytes > 0 and gpu.name != "unknown GPU":
        return (f"{source.label} does not fit the {gpu.name} ({gpu.total_bytes / GB:.1f} GB): "
                f"the smallest plan needs {need:.1f} GB {where}; try a shorter --context")
    message = (f"{source.label} needs at least {need:.1f} GB of VRAM {where}; the budget is "
               f"{budget / GB:.1f} GB. Give it {need:.1f} GB or more, or a shorter --context")
    least = min(weighed, key=lambda p: p.vram_total)
    if least.vram_total < best.vram_total:
        message += (f" ({least.vram_total / GB:.1f} GB would do with "
                    f"{least.host_bytes / GB:.1f} GB of host RAM free for offloaded meta; "
                    f"{host_free / GB:.1f} GB is free)")
    return message


def check_fits(p: Plan, gpu: GpuInfo | None) -> None:
    """What the loader calls: refuse a plan the budget, the GPU or today's engine cannot hold.

    Raises:
        OutOfVRAMError: with what would fit instead.
    """
    if p.runnable is not None:
        resident = [o for o in p.options if o[1] == "resident"]
        least = min(resident, key=lambda o: o[2]) if resident else None
        hint = (f"; with everything on the GPU, {least[0]} needs {least[2] / GB:.1f} GB"
                if least else "")
        raise OutOfVRAMError(f"{p.model}: this budget needs {p.placement} ({p.recipe.name}), "
                             f"but {p.runnable}{hint}")
    if p.vram_total > p.budget_bytes:
        raise OutOfVRAMError(f"{p.model} with {p.recipe.name} needs {p.vram_total / GB:.1f} GB "
                             f"of VRAM; the budget is {p.budget_bytes / GB:.1f} GB")
    if gpu is not None and gpu.free_bytes is not None:
        # free memory already excludes this process's CUDA context
        need = p.vram_total - p.vram["cuda context"]
        if need > gpu.free_bytes:
            raise OutOfVRAMError(
                f"{p.model} with {p.recipe.name} needs {need / GB:.1f} GB more on the "
                f"{gpu.name}, but only {gpu.free_bytes / GB:.1f} GB is free; close the programs "
                "using the GPU, or lower the budget")


def cap_process(p: Plan | None, device: int = 0) -> float:
    """Hold this process to the plan's budget on a CUDA device: torch's allocator may reserve
    the budget less the plan's CUDA context, and an allocation past it raises
    OutOfMemoryError (which generate reports as OutOfVRAMError) instead of taking more.
    None lifts the cap. Returns the fraction of the device set."""
    import torch  # noqa: PLC0415

    total = torch.cuda.get_device_properties(device).total_memory
    fraction = 1.0 if p is None else min(1.0, max(
        0.0, (p.budget_bytes - p.vram["cuda context"]) / total))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def describe_plan(p: Plan) -> str:
    """A table of where every byte goes, for the command line."""
    lines = [f"{p.model}: {p.recipe.name}, {p.placement}, context {p.context} tokens",
             f"  fidelity: KL {p.fidelity_kl:.3f} on smol-moe (docs/QUALITY.md)"
             if not math.isinf(p.fidelity_kl) else "  fidelity: not measured for this recipe",
             "", f"  {'VRAM':<24}{'GB':>8}"]
    for name, nbytes in p.vram.items():
        if nbytes:
            lines.append(f"  {name:<24}{nbytes / GB:>8.2f}")
    lines.append(f"  {'total':<24}{p.vram_total / GB:>8.2f}  (budget {p.budget_bytes / GB:.1f})")
    if p.host_bytes:
        lines.append(f"  {'pinned host memory':<24}{p.host_bytes / GB:>8.2f}")
    lines.append("")
    for kind, where in p.tensors.items():
        lines.append(f"  {kind:<12}{where}")
    gpu = p.gpu
    source = "measured" if gpu.measured else "default"
    lines += ["", f"  decode floor on {gpu.name} ({source}: HBM {gpu.hbm_gbps:.0f} GB/s, "
              f"host-to-GPU {gpu.h2d_gbps:.1f} GB/s):",
              f"    reads {p.hbm_bytes_per_token / GB:.2f} GB per token"
              + (f", copies {p.h2d_bytes_per_token / GB:.2f} GB over PCIe"
                 if p.h2d_bytes_per_token else ""),
              f"    {1e3 * p.decode_s:.1f} ms per token, {p.tok_s:.1f} tok/s at most "
              f"(a full context reads {p.kv_bytes_full / GB:.2f} GB more)"]
    if p.kernel_copy and p.vram["kernel copy"]:
        lines.append("  note: counts a stored copy beside each packed weight (the engine "
                     "holds one)")
    if p.expert_slots:
        lines.append(f"  note: {p.expert_hit_rate:.0%} of the picks find their expert "
                     "resident under uniform routing; the rest cross the bus inside the step")
    if p.runnable is not None:
        lines.append(f"  note: {p.runnable}")
    return "\n".join(lines)
