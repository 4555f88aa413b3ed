"""The kernel path of the quantized engine: pack once at load, then fused kernels at batch 1.

On CUDA with triton, `enable_kernels` packs every QuantLinear whose spec and shape
the kernels take (kernels/README.md) into their layout, once, and stacks each MoE
layer's experts for `moe_decode`. A forward over one token then runs
`kernels.gemv.gemv` (attention) and `kernels.gemv.moe_decode` (experts, ids read on
the device: no host sync). Prefill (many rows) keeps the torch dequantize path.
Anywhere else (CPU, no triton) the torch path stays, and loading says so in one line.

`python -m mixdesk.engine.fastpath` times decode steps of a random Mixtral-shaped
layer stack through both paths (CUDA only).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import time

import torch
from torch import nn

from mixdesk.engine.config import ModelArgs
from mixdesk.engine.model import MoE, Transformer
from mixdesk.engine.quantize import (
    QuantizedWeight,
    QuantLinear,
    QuantMeta,
    QuantSpec,
    pack_codes,
)
from mixdesk.kernels.layout import META_GROUP, PackedWeight, check_spec, group_grid, pack, stack

log = logging.getLogger("mixdesk.engine.fastpath")


def pack_quantized_weight(qw: QuantizedWeight) -> PackedWeight:
    """engine.quantize.QuantizedWeight (8-bit meta) -> the kernels' layout, on qw's device.

    Codes in the weight's natural layout, meta codes flat in group order, and the
    two fp16 (step, offset) rows of scale and zero stacked into meta [4, C].
    """
    logical = qw.logical()
    return pack(logical["q"], logical["scale_q"], logical["zero_q"],
                logical["meta"].to(torch.float16),
                bits=qw.spec.bits, group=qw.spec.group, axis=qw.spec.axis)


def kernel_reason(spec: QuantSpec, shape: tuple[int, ...]) -> str | None:
    """Why the kernels cannot take a weight of this spec and shape; None when they can."""
    if spec.meta_bits != 8 or spec.meta_group != META_GROUP:
        return f"meta {spec.meta_bits}-bit in groups of {spec.meta_group} is not packed"
    if len(shape) != 2:
        return f"shape {tuple(shape)} is not 2-D"
    try:
        check_spec(spec.bits, spec.group, spec.axis)
        group_grid((int(shape[0]), int(shape[1])), spec.group, spec.axis)
    except ValueError as bad:
        return str(bad)
    return None


def kernels_unavailable(device: torch.device | str) -> str | None:
    """Why the kernels cannot run on `device`; None when they can."""
    if not torch.cuda.is_available():
        return "CUDA not available"
    if torch.device(device).type != "cuda":
        return f"the model is on {torch.device(device).type}"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def pack_linear(module: QuantLinear) -> bool:
    """Give `module` its packed copy (on its buffers' device) if the kernels take it."""
    if kernel_reason(module.spec, module.shape) is not None:
        return False
    module.packed = pack_quantized_weight(module.quantized())
    return True


def fuse_experts(moe: MoE) -> bool:
    """Stack a MoE layer's packed experts for `moe_decode`; True when they fit.

    Needs every expert's w1, w2, w3 packed (`pack_linear`) with one spec each. The
    experts' own packed copies are dropped: decode reads the stacks, prefill the
    torch path.
    """
    if moe.gate is None:
        return False
    trios = [[getattr(e, name, None) for name in ("w1", "w3", "w2")] for e in moe.experts]
    flat = [m for trio in trios for m in trio]
    mods = [m for m in flat if isinstance(m, QuantLinear) and m.packed is not None]
    if len(mods) != len(flat):
        return False
    packed = [m.packed for m in mods if m.packed is not None]  # [w1_0, w3_0, w2_0, w1_1, ...]
    try:
        w13 = stack([p for i, p in enumerate(packed) if i % 3 != 2])  # w1/w3 of e at 2e, 2e+1
        moe.packed = (w13, stack(packed[2::3]))
    except ValueError:  # w1 and w3 of different specs: the experts stay on the linear path
        return False
    for m in mods:
        m.packed = None
    return True


def enable_kernels(model: nn.Module, device: torch.device | str) -> str:
    """Pack the model's quantized matrices for the kernels when `device` can run them.

    Logs one info line naming the path and why, and returns it.
    """
    reason = kernels_unavailable(device)
    if reason is not None:
        line = f"{reason}: the torch dequantize path is used"
        log.info("%s", line)
        return line
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    packed = sum(pack_linear(m) for m in linears)
    moes = [m for m in model.modules() if isinstance(m, MoE) and m.gate is not None]
    fused = sum(fuse_experts(m) for m in moes)
    line = (f"CUDA: the Triton kernels run batch-1 decode ({packed} of {len(linears)} quantized "
            f"matrices packed, {fused} of {len(moes)} MoE layers fused); prefill dequantizes "
            "in torch")
    if packed < len(linears):
        line += "; the rest have shapes or specs the kernels do not take"
    log.info("%s", line)
    return line


def disable_kernels(model: nn.Module) -> None:
    """Drop every packed copy: the whole model runs the torch dequantize path."""
    for m in model.modules():
        if isinstance(m, QuantLinear | MoE):
            m.packed = None


# ---------------------------------------------------------------------------- bench


def random_quantized(shape: tuple[int, int], spec: QuantSpec, device: torch.device | str
                     ) -> QuantizedWeight:
    """Random codes and meta in `spec` (8-bit meta), shaped like a trained weight's."""
    numel = shape[0] * shape[1]
    n = numel // spec.group
    cols = math.ceil(n / spec.meta_group)
    codes = torch.randint(0, 2**spec.bits, (numel,), dtype=torch.uint8, device=device)

    def meta(lo: float, hi: float) -> QuantMeta:
        step = torch.full((cols,), (hi - lo) / 255, device=device)
        qmeta = torch.stack([step, -lo / step]).half()  # [2, C]
        grid = torch.randint(0, 256, (spec.meta_group, cols), dtype=torch.uint8, device=device)
        return QuantMeta(length=n, codes=grid, qmeta=qmeta)

    top = 2**spec.bits - 1
    return QuantizedWeight(spec, shape, pack_codes(codes, spec.bits),
                           meta(0.002, 0.02), meta(0.0, float(top)))


def random_quantized_model(args: ModelArgs, attention: QuantSpec, experts: QuantSpec,
                           device: str, dtype: torch.dtype) -> Transformer:
    """Our Transformer with random quantized attention and experts (dense rest random)."""
    with torch.device(device):  # built in place: the dense fp32 copy never leaves the device
        model = Transformer(args)
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name in ("lm_head",) or name.endswith("gate"):
            continue
        spec = attention if "self_attn" in name else experts
        parent, _, leaf = name.rpartition(".")
        qw = random_quantized((module.out_features, module.in_features), spec, device)
        setattr(model.get_submodule(parent), leaf, QuantLinear(qw, dtype=dtype))
    return model.to(dtype).eval()  # fp16 meta and uint8 codes are unchanged


def time_decode(model: Transformer, steps: int) -> float:
    """Seconds a decode step takes (one token, eager), median of `steps` after warm-up."""
    device = model.embed_tokens.weight.device
    token = torch.ones((1, 1), dtype=torch.long, device=device)
    times = []
    with torch.no_grad():
        for i in range(steps + 3):
            pos = torch.tensor([i], device=device)
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(token, pos)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return sorted(times[3:])[len(times[3:]) // 2]


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixdesk.engine.fastpath")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--recipe", choices=("hqq-card", "4bit-g64"), default="hqq-card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    margs = ModelArgs(model_type="mixtral", vocab_size=32000, dim=4096, n_layers=args.layers,
                      n_heads=32, n_kv_heads=8, head_dim=128, ffn_dim=14336, n_experts=8,
                      top_k=2, max_seq_len=256)
    attention = QuantSpec(bits=4, group=64)
    experts = QuantSpec(bits=2, group=8) if args.recipe == "hqq-card" else attention
    torch.manual_seed(0)
    model = random_quantized_model(margs, attention, experts, "cuda", torch.float16)
    model.setup_cache(256)
    torch_s = time_decode(model, max(3, args.steps // 4))
    enable_kernels(model, "cuda")
    kernel_s = time_decode(model, args.steps)
    print(f"Mixtral-8x7B-shaped stack, {args.layers} layers, {args.recipe}, eager decode step "
          f"(no CUDA graph), median:")
    print(f"| path | ms/step | tok/s ({args.layers} layers) | tok/s scaled to 32 layers (rough) |")
    print("|---|---|---|---|")
    for name, s in (("torch dequantize", torch_s), ("Triton kernels", kernel_s)):
        print(f"| {name} | {1e3 * s:.2f} | {1 / s:.1f} | {args.layers / (32 * s):.1f} |")
    print(f"speed-up {torch_s / kernel_s:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

