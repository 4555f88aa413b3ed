"""Kernel and decode-step benchmarks on the GPU, against the bandwidth floor and hqq.

`python -m mixdesk.engine.bench --out bench.json` (what `mixdesk bench --kernels`
runs) measures, in one process:
  - HBM bandwidth: a large device-to-device copy (bytes read + written / time);
  - each fused GEMV at the Mixtral-8x7B shapes: time, GB/s, % of that bandwidth,
    correctness against fp32 on the dequantized weights, and a sweep of tile shapes;
  - dense fp16 GEMV (cuBLAS through torch) on the same shapes;
  - hqq 0.2.8's own path on the same fp16 weights (its PyTorch backend and its
    torch.compile backend), next to our kernel on our quantization of them;
  - a Mixtral-8x7B-shaped decode step (32 layers of q/k/v/o 4-bit g64 and top-2
    experts 2-bit g8, random weights generated on the device) captured in one
    CUDA graph, against the bandwidth floor of the bytes it reads.

Timings are medians of CUDA-event timed graph replays; each timed graph cycles
through enough weight copies (>= 200 MB) that no matrix is still in L2 when read.
Weights are random, never zeros.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import Tensor

from mixdesk.engine.fastpath import pack_quantized_weight
from mixdesk.kernels import reference
from mixdesk.kernels.layout import PackedWeight, pack, random_logical, stack

ROTATE_BYTES = 200 * 2**20  # > 2x the H100's 50 MB L2
MAX_COPIES = 64


@dataclass(frozen=True)
class Case:
    """One matrix shape and quantization spec; y[N] = W[N, K] @ x[K]."""

    name: str
    n: int
    k: int
    bits: int
    group: int
    axis: int

    @property
    def label(self) -> str:
        return f"{self.name} {self.n}x{self.k} {self.bits}b g{self.group} ax{self.axis}"


MIXTRAL_SHAPES = {"w1/w3": (14336, 4096), "w2": (4096, 14336), "q/o": (4096, 4096),
                  "k/v": (1024, 4096)}

# Prefills a time to first token is the median of: on the H100 one 1024-token prefill of the
# synthetic Mixtral took 0.17 to 0.22 s from one call to the next in one process
# (tests/bench/prefill_probe.py; cause not isolated), and medians of 3 ranged 0.17-0.27 s
# between runs.
TTFT_RUNS = 9


def mixtral_cases(axes: Sequence[int] = (0, 1)) -> list[Case]:
    """The card recipe's matrices (experts 2-bit g8, attention 4-bit g64), per axis,
    plus the other expert recipes (2-bit g16, 3-bit g64, 4-bit g64) on w1/w3."""
    cases = []
    for axis in axes:
        for name, (n, k) in MIXTRAL_SHAPES.items():
            bits, group = (2, 8) if name in ("w1/w3", "w2") else (4, 64)
            cases.append(Case(name, n, k, bits, group, axis))
    n, k = MIXTRAL_SHAPES["w1/w3"]
    cases += [Case("w1/w3", n, k, 2, 16, 0), Case("w1/w3", n, k, 3, 64, 0),
              Case("w1/w3", n, k, 4, 64, 0)]
    return cases


# ---------------------------------------------------------------------------- timing


def time_graph(step: Callable[[], None], calls: int, replays: int = 15) -> float:
    """Seconds per call: `step` (doing `calls` calls) captured in a CUDA graph, median replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles, warms the allocator
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times) / calls


def time_variants(timed: Callable[[Any, Any], float], variants: dict[str, tuple[Any, Any]],
                  rounds: int = 3) -> list[dict[str, Any]]:
    """Each named pair of configs, `timed(a, b)` seconds, `rounds` times, the variants
    interleaved so that drift between calls falls on all of them alike: rows of the name, the
    median and every time in microseconds, each printed."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (a, b) in variants.items():
            times[name].append(timed(a, b) * 1e6)
    rows: list[dict[str, Any]] = []
    for name, us in times.items():
        rows.append({"variant": name, "us_median": statistics.median(us), "us": us})
        print(f"{name:14s} {statistics.median(us):.2f} us  {[round(t, 2) for t in us]}")
    return rows


def time_eager(fn: Callable[[], Any], iters: int = 50) -> float:
    """Seconds per call, launched one by one from Python (what an eager model pays)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def hbm_bandwidth(nbytes: int = 2 * 2**30) -> float:
    """Bytes per second of a device-to-device copy, counting the read and the write."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)

    def step() -> None:
        dst.copy_(src)

    seconds = time_graph(step, 1, replays=20)
    return 2 * nbytes / seconds


def hbm_read_bandwidth(nbytes: int = 2 * 2**30) -> float:
    """Bytes per second of a large sum (reads only, what a GEMV does)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    total = torch.empty((), dtype=torch.float32, device="cuda")

    def step() -> None:
        torch.sum(src, dim=0, out=total)

    return nbytes / time_graph(step, 1, replays=20)


# ---------------------------------------------------------------------------- weights


def random_packed(case: Case, device: str = "cuda", mats: int = 1) -> PackedWeight:
    """A packed weight (a stack of `mats`) from random logical codes, on the device."""
    shape = (case.n, case.k)
    weights = []
    for _ in range(mats):
        logical = random_logical(shape, bits=case.bits, group=case.group, device=device)
        weights.append(pack(*logical, bits=case.bits, group=case.group, axis=case.axis))
    return weights[0] if mats == 1 else stack(weights)


def copies_for(nbytes: int) -> int:
    return max(2, min(MAX_COPIES, math.ceil(ROTATE_BYTES / nbytes)))


def rel_error(y: Tensor, ref: Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def check_gemv(case: Case) -> float:
    """Relative error of the kernel against fp32 on the dequantized weights, fresh inputs."""
    from mixdesk.kernels.gemv import gemv  # noqa: PLC0415 - imports triton

    logical = random_logical((case.n, case.k), bits=case.bits, group=case.group, device="cuda")
    pw = pack(*logical, bits=case.bits, group=case.group, axis=case.axis)
    x = torch.randn(case.k, device="cuda", dtype=torch.float16)
    w = reference.dequantize_logical(*logical, bits=case.bits, group=case.group, axis=case.axis)
    ref = w.double() @ x.double()
    return rel_error(gemv(x, pw), ref)


# ---------------------------------------------------------------------------- kernels


SWEEP_TILES = {  # (rows, cols, warps) per program
    0: [(1, 512, 4), (1, 1024, 4), (2, 512, 4), (2, 256, 4), (4, 128, 4), (4, 256, 4),
        (8, 128, 4), (16, 128, 8), (2, 1024, 8)],
    1: [(32, 64, 4), (16, 128, 4), (64, 32, 4), (8, 128, 4), (32, 32, 4), (16, 64, 4),
        (8, 256, 4)],
}


def candidate_configs(pw: PackedWeight) -> list[Any]:
    """The default tile, then tile shapes to sweep, each with and without the register
    prefetch; the K split keeps ~4 programs per SM, and the lanes a shift are the default's
    (what `default_config` gives a tuned tile, so the best runs later as it was timed)."""
    from mixdesk.kernels.gemv import Config, default_config, split_for  # noqa: PLC0415

    _, b_cols = pw.grid
    cuda = torch.device("cuda")
    default = default_config(pw, 1, cuda)
    out = {default}
    for rows, cols, warps in SWEEP_TILES[pw.axis]:
        if cols > 2 * b_cols:
            continue
        split = split_for(pw, rows, cols, 1, cuda)
        for prefetch in (True, False):
            out.add(Config(rows, cols, split, warps, prefetch, default.lanes_per_shift))
    rest = sorted(out - {default},
                  key=lambda c: (c.num_warps, c.block_rows, c.block_cols, c.prefetch))
    return [default, *rest]


def parse_tiles(tiles: str | list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """"128x32x4,64x16x4" as [(128, 32, 4), (64, 16, 4)] (rows, columns, warps); a list as
    it is (the sweep scripts' --tiles options)."""
    if not isinstance(tiles, str):
        return tiles
    out = []
    for tile in tiles.split(","):
        r, c, w = (int(n) for n in tile.split("x"))
        out.append((r, c, w))
    return out


def sweep_configs(pw: PackedWeight, tiles: Sequence[tuple[int, int, int]], launches: int, *,
                  per_sm: Sequence[int] = (4, 8), lanes: Sequence[int] = (1,)) -> list[Any]:
    """Every (rows, cols, warps) tile x programs per SM x prefetch x lanes per shift, the K
    split set for `launches` launches: what tests/bench/moe_sweep.py and attn_sweep.py time."""
    from mixdesk.kernels.gemv import Config, split_for  # noqa: PLC0415

    cuda = torch.device("cuda")
    out = []
    for (rows, cols, warps), sm, prefetch, lps in itertools.product(
            tiles, per_sm, (False, True), lanes):
        split = split_for(pw, rows, cols, launches, cuda, programs_per_sm=sm)
        out.append(Config(rows, cols, split, warps, prefetch, lps))
    return list(dict.fromkeys(out))


def bench_gemv(case: Case, bandwidth: float, sweep: bool) -> dict[str, Any]:
    """Time one GEMV case (default tile, then the sweep); bytes are what one call reads."""
    from mixdesk.kernels.gemv import TUNED, Config, gemv  # noqa: PLC0415

    probe = random_packed(case)
    n_copies = copies_for(probe.nbytes())
    weights = [probe] + [random_packed(case) for _ in range(n_copies - 1)]
    x = torch.randn(case.k, device="cuda", dtype=torch.float16)
    nbytes = probe.nbytes() + 2 * case.k + 4 * case.n

    def timed(cfg: Config | None) -> float:
        def step() -> None:
            for pw in weights:
                gemv(x, pw, config=cfg)

        return time_graph(step, len(weights))

    result: dict[str, Any] = {"case": case.label, **asdict(case), "bytes": nbytes,
                              "bits_per_weight": 8 * probe.nbytes() / (case.n * case.k),
                              "rel_error": check_gemv(case)}
    seconds = timed(None)
    result.update(default_us=seconds * 1e6, default_gbs=nbytes / seconds / 1e9,
                  default_pct_bw=100 * nbytes / seconds / bandwidth)
    if sweep:
        trials: list[dict[str, Any]] = []
        for cfg in candidate_configs(probe):
            try:
                t = timed(cfg)
            except Exception as err:  # noqa: BLE001 - a config that fails to compile is skipped
                trials.append({"config": asdict(cfg), "error": str(err)[:200]})
                continue
            trials.append({"config": asdict(cfg), "us": t * 1e6})
        ok = [t for t in trials if "us" in t]
        best = min(ok, key=lambda t: t["us"])
        cfg = best["config"]  # later sections (moe, decode) run with the measured best
        if cfg != trials[0]["config"]:  # not the default: a swept tile (~4 programs per SM)
            TUNED[(case.bits, case.group, case.axis, case.n, case.k)] = (
                cfg["block_rows"], cfg["block_cols"], cfg["num_warps"], cfg["prefetch"])
        result["tuned"] = [case.bits, case.group, case.axis, case.n, case.k,
                           *TUNED[(case.bits, case.group, case.axis, case.n, case.k)]]
        result.update(best_config=best["config"], best_us=best["us"],
                      best_gbs=nbytes / best["us"] / 1e3,
                      best_pct_bw=100 * nbytes / (best["us"] * 1e-6) / bandwidth,
                      sweep=trials)
    weights.clear()
    torch.cuda.empty_cache()
    return result


def bench_dense(name: str, n: int, k: int, bandwidth: float) -> dict[str, Any]:
    """fp16 W @ x through torch (cuBLAS GEMV), weights rotated past L2."""
    nbytes = 2 * n * k
    weights = [torch.randn(n, k, device="cuda", dtype=torch.float16)
               for _ in range(copies_for(nbytes))]
    x = torch.randn(k, device="cuda", dtype=torch.float16)

    def step() -> None:
        for w in weights:
            torch.mv(w, x)

    seconds = time_graph(step, len(weights))
    weights.clear()
    torch.cuda.empty_cache()
    total = nbytes + 2 * (n + k)
    return {"case": f"dense fp16 {name} {n}x{k}", "us": seconds * 1e6,
            "gbs": total / seconds / 1e9, "pct_bw": 100 * total / seconds / bandwidth}


# ---------------------------------------------------------------------------- MoE


def bench_moe(bandwidth: float, axis: int = 0, experts: int = 8) -> dict[str, Any]:
    """One MoE decode (top-2 of 8 experts, 2-bit g8): both launches, ids read on device."""
    from mixdesk.kernels.gemv import moe_decode  # noqa: PLC0415

    ffn, dim = MIXTRAL_SHAPES["w1/w3"]
    c13 = Case("w1/w3", ffn, dim, 2, 8, axis)
    c2 = Case("w2", dim, ffn, 2, 8, axis)
    layers = 2  # 2 x 8 experts x 3 x 14.7 MB, far past L2
    w13 = [random_packed(c13, mats=2 * experts) for _ in range(layers)]
    w2 = [random_packed(c2, mats=experts) for _ in range(layers)]
    x = torch.randn(dim, device="cuda", dtype=torch.float16)
    ids = [torch.randperm(experts, device="cuda")[:2].to(torch.int32) for _ in range(layers)]
    rw = torch.softmax(torch.randn(2, device="cuda"), 0)

    def step() -> None:
        for i in range(layers):
            moe_decode(x, w13[i], w2[i], ids[i], rw)

    seconds = time_graph(step, layers)
    nbytes = 2 * (2 * w13[0].nbytes() + w2[0].nbytes())  # 2 experts x (w1 + w3 + w2)
    # correctness on layer 0 against the reference
    y = moe_decode(x, w13[0], w2[0], ids[0], rw)
    ref = reference.moe_decode(x, w13[0], w2[0], ids[0], rw)
    w13.clear()
    w2.clear()
    torch.cuda.empty_cache()
    return {"case": f"moe decode top-2 2b g8 ax{axis}", "us": seconds * 1e6, "bytes": nbytes,
            "gbs": nbytes / seconds / 1e9, "pct_bw": 100 * nbytes / seconds / bandwidth,
            "rel_error": rel_error(y, ref)}


# ---------------------------------------------------------------------------- hqq


def bench_hqq(case: Case, compile_hqq: bool = True) -> dict[str, Any]:
    """hqq 0.2.8's HQQLinear (PyTorch backend, torch.compile backend) against our kernel,
    both from the same random fp16 weight quantized by hqq's solver."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear  # noqa: PLC0415

    from mixdesk.engine.quantize import QuantSpec, quantize_weight  # noqa: PLC0415
    from mixdesk.kernels.gemv import gemv  # noqa: PLC0415

    torch.manual_seed(0)
    w = (0.02 * torch.randn(case.n, case.k, device="cuda")).half()
    x = torch.randn(1, case.k, device="cuda", dtype=torch.float16)
    linear = torch.nn.Linear(case.k, case.n, bias=False, device="cuda", dtype=torch.float16)
    linear.weight.data.copy_(w)
    config = BaseQuantizeConfig(nbits=case.bits, group_size=case.group, axis=case.axis)
    hqq_layer = HQQLinear(linear, config, compute_dtype=torch.float16, device="cuda")
    ours = pack_quantized_weight(quantize_weight(w, QuantSpec(case.bits, case.group, case.axis),
                                           device="cuda")).to("cuda")
    nbytes = ours.nbytes() + 2 * case.k + 4 * case.n
    out: dict[str, Any] = {"case": case.label, "bytes_ours": nbytes}
    with torch.inference_mode():
        HQQLinear.set_backend(HQQBackend.PYTORCH)
        y_hqq = hqq_layer(x).float().reshape(-1)
        out["hqq_pytorch_us"] = time_eager(lambda: hqq_layer(x)) * 1e6
        if compile_hqq:
            HQQLinear.set_backend(HQQBackend.PYTORCH_COMPILE)
            started = time.perf_counter()
            hqq_layer(x)
            out["hqq_compile_first_call_s"] = time.perf_counter() - started
            out["hqq_compile_us"] = time_eager(lambda: hqq_layer(x)) * 1e6
            HQQLinear.set_backend(HQQBackend.PYTORCH)
        xv = x.reshape(-1)
        y_ours = gemv(xv, ours)
        out["ours_eager_us"] = time_eager(lambda: gemv(xv, ours)) * 1e6
        out["ours_graph_us"] = time_graph(lambda: gemv(xv, ours), 1) * 1e6
    out["rel_diff_ours_vs_hqq"] = rel_error(y_ours, y_hqq)  # 8-bit meta vs hqq's fp16 meta
    out["rel_diff_fp16_vs_hqq"] = rel_error((w.float() @ xv.float()), y_hqq)
    for key in ("hqq_pytorch_us", "hqq_compile_us"):
        if key in out:
            out[key.replace("_us", "_over_ours_eager")] = out[key] / out["ours_eager_us"]
    return out


# ---------------------------------------------------------------------------- decode step


def decode_step_estimate(bandwidth: float, layers: int = 32, experts: int = 8,
                         axis: int = 0) -> dict[str, Any]:
    """All linear layers of a Mixtral-8x7B decode step with the card recipe, in one CUDA graph.

    Per layer: q, k and v in two launches (k and v stacked), o (4-bit g64), and a top-2
    MoE (2-bit g8) with the expert ids on the device: 5 launches, one memset a step.
    Norms, RoPE, attention over the KV cache, the router and lm_head are left out;
    the bytes they read are listed for the floor.
    """
    from mixdesk.kernels.gemv import gemv, moe_decode  # noqa: PLC0415

    dim, ffn = 4096, 14336
    att = {name: Case(name, n, k, 4, 64, axis) for name, (n, k) in
           {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "o": (4096, 4096)}.items()}
    c13, c2 = Case("w1/w3", ffn, dim, 2, 8, axis), Case("w2", dim, ffn, 2, 8, axis)
    model = []
    for _ in range(layers):
        layer = {name: random_packed(c) for name, c in att.items()}
        layer["kv"] = stack([layer.pop("k"), layer.pop("v")])  # one launch: they share x
        layer["w13"] = random_packed(c13, mats=2 * experts)
        layer["w2"] = random_packed(c2, mats=experts)
        layer["ids"] = torch.randperm(experts, device="cuda")[:2].to(torch.int32)
        model.append(layer)
    rw = torch.softmax(torch.randn(2, device="cuda"), 0)
    x = torch.randn(dim, device="cuda", dtype=torch.float16)

    sizes = [4096, 2 * 1024, 4096, dim, 2 * 2 * ffn]  # q kv o moe-out h

    def step() -> None:
        # one memset for every output of the step, as a captured decode step would do
        ws = torch.zeros(layers * sum(sizes), device="cuda")
        for i, layer in enumerate(model):
            q, kv, o, y, h = ws[i * sum(sizes):(i + 1) * sum(sizes)].split(sizes)
            gemv(x, layer["q"], q)
            gemv(x, layer["kv"], kv)
            gemv(x, layer["o"], o)
            moe_decode(x, layer["w13"], layer["w2"], layer["ids"], rw, out=y,
                       h=h.view(2, 2, ffn))

    seconds = time_graph(step, 1, replays=10)
    first = model[0]
    per_layer = sum(first[n].nbytes() for n in ("q", "o")) + 2 * first["kv"].nbytes() + 2 * (
        2 * first["w13"].nbytes() + first["w2"].nbytes())
    linear_bytes = layers * per_layer
    other = {"lm_head fp16": 32000 * 4096 * 2, "router fp16": layers * 8 * 4096 * 2,
             "embedding row + norms": 4096 * 2 * (1 + 2 * layers)}
    model.clear()
    torch.cuda.empty_cache()
    return {"layers": layers, "seconds": seconds, "ms": seconds * 1e3,
            "tok_per_s_linear_only": 1 / seconds, "linear_bytes": linear_bytes,
            "linear_floor_ms": linear_bytes / bandwidth * 1e3,
            "pct_of_floor": 100 * linear_bytes / bandwidth / seconds,
            "other_bytes": other,
            "full_step_floor_ms": (linear_bytes + sum(other.values())) / bandwidth * 1e3}


# ---------------------------------------------------------------------------- the engine


def synthetic_mixtral(layers: int = 32, context: int = 4096, axis: int = 0,
                      dtype: torch.dtype = torch.float16, *,
                      on_fused: Callable[[Any], None] | None = None) -> Any:
    """Our Transformer at the Mixtral-8x7B shape with the card recipe, random, on the GPU.

    Built on the meta device and filled one matrix at a time straight into the kernels'
    layout (random codes and real 8-bit meta, `fastpath.random_quantized`), each MoE layer
    fused as it is made: the dense bf16 model (93 GB) never exists, and every quantized
    weight is held once, as `enable_kernels` leaves a loaded model. `on_fused(moe)` is
    called on each MoE layer once fused (e.g. to move its experts to the host, as the
    loader does for a plan with experts on host).
    """
    from torch import nn  # noqa: PLC0415

    from mixdesk.engine.config import ModelArgs  # noqa: PLC0415
    from mixdesk.engine.fastpath import (  # noqa: PLC0415
        finish_decode_path,
        fuse_experts,
        pack_linear,
        random_quantized,
    )
    from mixdesk.engine.model import MoE, Transformer  # noqa: PLC0415
    from mixdesk.engine.quantize import QuantLinear, QuantSpec  # noqa: PLC0415

    args = ModelArgs(model_type="mixtral", vocab_size=32000, dim=4096, n_layers=layers,
                     n_heads=32, n_kv_heads=8, head_dim=128, ffn_dim=14336, n_experts=8,
                     top_k=2, max_seq_len=context)
    attention, experts = QuantSpec(bits=4, group=64, axis=axis), QuantSpec(bits=2, group=8,
                                                                           axis=axis)
    with torch.device("meta"):
        model = Transformer(args)
    for name, module in list(model.named_modules()):
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(module, nn.Linear) and name != "lm_head" and not name.endswith("gate"):
            spec = attention if "self_attn" in name else experts
            qw = random_quantized((module.out_features, module.in_features), spec, "cuda")
            linear = QuantLinear(qw, dtype=dtype)
            assert pack_linear(linear), name
            linear.drop_torch_copy()
            setattr(parent, leaf, linear)
            if name.endswith(f"experts.{args.n_experts - 1}.w3"):  # the layer's last matrix
                moe = parent_name.rpartition(".experts")[0]
                fused = cast(MoE, model.get_submodule(moe))
                assert fuse_experts(fused), moe
                if on_fused is not None:
                    on_fused(fused)
            continue
        for pname, param in list(module.named_parameters(recurse=False)):
            if param.device.type == "meta":
                value = (torch.ones(param.shape, device="cuda", dtype=dtype) if "norm" in name
                         else 0.02 * torch.randn(param.shape, device="cuda", dtype=dtype))
                setattr(module, pname, nn.Parameter(value, requires_grad=False))
    finish_decode_path(model)  # as enable_kernels leaves a loaded model
    model.setup_cache(context)
    return model.eval()


def synthetic_prompt(layers: int, prompt: int, axis: int = 0) -> tuple[Any, Tensor, Tensor]:
    """`synthetic_mixtral(layers)` at context 4096 and a random `prompt`-token prompt with its
    positions, on the GPU: what the prefill probes time."""
    model = synthetic_mixtral(layers, 4096, axis)
    tokens = torch.randint(0, model.args.vocab_size, (1, prompt), device="cuda")
    return model, tokens, torch.arange(prompt, device="cuda")


def _weight_bytes(module: Any) -> int:
    """Bytes a decode step reads for one linear layer: its packed copy, else its stored form."""
    from mixdesk.engine.quantize import QuantLinear  # noqa: PLC0415

    if isinstance(module, QuantLinear):
        if module.packed is not None:  # q split into several matrices (fuse_qkv): all of them
            return module.packed.nbytes() * module.packed.n_mats
        return sum(v.numel() * v.element_size() for v in module.quantized().tensors("w").values())
    return int(module.weight.numel() * module.weight.element_size())


def step_bytes(model: Any, context_used: int, context_read: int) -> dict[str, int]:
    """Bytes one decode step must read: attention, the top-k experts, the dense rest, and
    the KV cache up to the used context (and, as the static cache is read, all of it)."""
    args = model.args
    attention = experts = 0
    for block in model.blocks():
        attn = block.self_attn
        attention += sum(_weight_bytes(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj,
                                                    attn.o_proj))
        moe = block.moe
        chosen = args.top_k if moe.gate is not None else 1
        per_expert = [sum(_weight_bytes(getattr(e, n)) for n in ("w1", "w2", "w3"))
                      for e in moe.experts[:chosen]]  # experts share a spec and shape
        experts += sum(per_expert)
    per_pos = 2 * args.n_layers * args.n_kv_heads * args.head_dim * 2
    gate = args.n_experts if args.is_moe else 0
    dense = (args.vocab_size * args.dim + args.n_layers * (gate + 2) * args.dim
             + 2 * args.dim) * 2
    return {"attention": attention, "experts_top2": experts, "dense": dense,
            "kv_used": per_pos * context_used, "kv_static": per_pos * context_read}


def time_decode_graph(model: Any, tokens: Tensor, positions: Tensor, steps: int, *,
                      compile_glue: bool) -> dict[str, Any]:
    """Decode `steps` tokens after the prompt through a fresh `fastpath.DecodeGraph`: per token
    as engine.generate does it greedy (the graph's argmax, queue the next replay, read the id),
    and replays alone back to back (CUDA events)."""
    from mixdesk.engine.fastpath import DecodeGraph  # noqa: PLC0415
    from mixdesk.engine.generate import TokenReadback  # noqa: PLC0415

    prompt = tokens.shape[1]
    graph = DecodeGraph(torch.device("cuda"), compile_glue=compile_glue)
    nxt = model(tokens, positions)[0, -1].argmax(-1, keepdim=True)
    started = time.perf_counter()
    graph.step(model, nxt, prompt)
    torch.cuda.synchronize()
    capture_s = time.perf_counter() - started
    started = time.perf_counter()
    readback = TokenReadback(torch.device("cuda"))
    for i in range(steps):  # the next step queued before the last id is read back
        nxt = graph.greedy_token()  # the graph's own argmax, as generate takes it greedy
        assert nxt is not None
        readback.start(nxt, written=graph.greedy_written())  # the graph wrote it to the host
        graph.step(model, nxt, prompt + 1 + i)
        readback.result()
    torch.cuda.synchronize()
    per_token = (time.perf_counter() - started) / steps
    assert graph.graph is not None and graph.captures == 1
    graph.pos.fill_(prompt + 1)  # each replay advances pos: over the positions decoded above
    replay = time_replays(graph.graph, steps)
    return {"compiled": graph.compiled, "capture_s": capture_s,
            "decode_ms_per_token": per_token * 1e3, "decode_tok_per_s": 1 / per_token,
            "replay_ms": replay * 1e3, "replay_tok_per_s": 1 / replay}


def time_replays(graph: torch.cuda.CUDAGraph, steps: int) -> float:
    """Seconds a replay of `graph`, `steps` replays back to back (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / steps


def bench_engine(bandwidth: float, read_bandwidth: float, *, layers: int = 32,
                 prompt: int = 1024, context: int = 4096, steps: int = 64,
                 axis: int = 0, model_path: str | None = None) -> dict[str, Any]:
    """The whole engine: TTFT of a `prompt`-token prompt (eager prefill: Triton dequantize
    per matrix, cuBLAS, tokens grouped by expert), then decode through
    `fastpath.DecodeGraph` (one CUDA-graph replay a token), peak VRAM. On the synthetic
    Mixtral-8x7B (`layers`, `axis`), or on a model folder loaded as the app loads it."""
    gc.collect()  # an earlier model held only by reference cycles: its VRAM is not this peak's
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    if model_path is not None:
        from mixdesk.engine.loader import load_model  # noqa: PLC0415

        model = load_model(model_path, device="cuda", dtype=torch.float16,
                           context=context).model
        context, layers = model.max_len, model.args.n_layers
        prompt = min(prompt, context - steps - 1)
    else:
        model = synthetic_mixtral(layers, context, axis)
    resident = torch.cuda.memory_allocated()
    tokens = torch.randint(0, model.args.vocab_size, (1, prompt), device="cuda")
    positions = torch.arange(prompt, device="cuda")
    out: dict[str, Any] = {"model": model_path or "synthetic mixtral-8x7b", "layers": layers,
                           "prompt": prompt, "context": context, "axis": axis,
                           "resident_gb": resident / 1e9}
    with torch.inference_mode():
        def first_token(net: Any = model) -> int:
            return int(net(tokens, positions)[0, -1].argmax().item())

        started = time.perf_counter()
        first_token()  # compiles the dequantize kernel, warms cuBLAS
        out["first_prefill_s"] = time.perf_counter() - started
        times = []
        for _ in range(TTFT_RUNS):
            torch.cuda.synchronize()
            started = time.perf_counter()
            first_token()
            times.append(time.perf_counter() - started)
        out["ttft_s"] = statistics.median(times)
        out["ttft_spread_s"] = [round(min(times), 4), round(max(times), 4)]
        out["prefill_tok_per_s"] = prompt / out["ttft_s"]
        plain = time_decode_graph(model, tokens, positions, steps, compile_glue=False)
        out.update({f"plain_{k}": v for k, v in plain.items()})
        print({k: v for k, v in out.items()}, flush=True)
        try:
            out.update(time_decode_graph(model, tokens, positions, steps, compile_glue=True))
        except (RuntimeError, AssertionError) as bad:  # keep the plain graph's numbers
            out["compile_error"] = f"{type(bad).__name__}: {bad}"[:500]
            out.update(plain)
    per_token = out["decode_ms_per_token"] / 1e3
    nbytes = step_bytes(model, prompt + steps, context)
    used = sum(v for k, v in nbytes.items() if k != "kv_static")
    out.update({
        "bytes": nbytes,
        "step_bytes": used, "floor_ms_copy_bw": used / bandwidth * 1e3,
        "floor_ms_read_bw": used / read_bandwidth * 1e3,
        "pct_floor_copy_bw": 100 * used / bandwidth / per_token,
        "pct_floor_read_bw": 100 * used / read_bandwidth / per_token,
        "peak_vram_gb": torch.cuda.max_memory_allocated() / 1e9,
        "reserved_gb": torch.cuda.memory_reserved() / 1e9,
    })
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------- main


def _print_table(rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    print(" | ".join(keys))
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key, "")
            cells.append(f"{value:.4g}" if isinstance(value, float) else str(value))
        print(" | ".join(cells))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mixdesk-bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--sections", default="kernels,moe,decode,dense,hqq,engine",
                        help="comma-separated, run in this order (the kernels sweep tunes "
                             "the tiles that moe and decode then use)")
    parser.add_argument("--sweep", action="store_true", help="sweep tile shapes per kernel")
    parser.add_argument("--axes", default="0,1", help="axes to benchmark (kernels section)")
    parser.add_argument("--no-compile", action="store_true", help="skip hqq's torch.compile")
    parser.add_argument("--layers", type=int, default=32, help="engine section: layers")
    parser.add_argument("--prompt", type=int, default=1024, help="engine section: prompt tokens")
    parser.add_argument("--context", type=int, default=4096, help="engine section: KV length")
    parser.add_argument("--model", help="engine section: a model folder (quantized or not) "
                                        "instead of the synthetic Mixtral-8x7B")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("mixdesk bench needs a CUDA GPU", file=sys.stderr)
        return 2
    sections = args.sections.split(",")
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(),
                               "torch": torch.__version__}
    import triton  # noqa: PLC0415

    results["triton"] = triton.__version__

    def save() -> None:
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(results, handle, indent=1)

    bandwidth = hbm_bandwidth()
    results["hbm_bandwidth_gbs"] = bandwidth / 1e9
    results["hbm_read_bandwidth_gbs"] = hbm_read_bandwidth() / 1e9
    print(f"HBM bandwidth: copy {bandwidth / 1e9:.0f} GB/s (the % below), "
          f"read-only sum {results['hbm_read_bandwidth_gbs']:.0f} GB/s", flush=True)
    save()
    _run_sections(args, sections, bandwidth, results, save)
    save()
    return 0


def _run_sections(args: argparse.Namespace, sections: list[str], bandwidth: float,
                  results: dict[str, Any], save: Callable[[], None]) -> None:
    for section in sections:
        runner = {"kernels": _section_kernels, "dense": _section_dense, "moe": _section_moe,
                  "decode": _section_decode, "hqq": _section_hqq,
                  "engine": _section_engine}[section]
        runner(args, bandwidth, results)
        save()
    if _compare_hqq(results):  # either order: engine first measures it before hqq's compile
        save()


def _compare_hqq(results: dict[str, Any]) -> bool:
    """Each engine row's step against hqq's torch.compile path over the same matmuls, when
    both sections ran; whether there was anything to compare."""
    hqq = {row["case"].split()[0]: row.get("hqq_compile_us") for row in results.get("hqq", [])}
    rows = results.get("engine", [])
    if not rows or not all(hqq.get(name) for name in ("w1/w3", "w2", "q/o", "k/v")):
        return False
    # the matmuls of one step: 2 experts x (w1, w3, w2) + q, k, v, o, per layer
    per_layer = 2 * (2 * hqq["w1/w3"] + hqq["w2"]) + 2 * hqq["q/o"] + 2 * hqq["k/v"]
    for row in rows:
        row["hqq_compile_step_ms"] = row["layers"] * per_layer / 1e3
        row["speedup_vs_hqq_compile"] = row["hqq_compile_step_ms"] / row["decode_ms_per_token"]
        print(f"axis {row['axis']}: hqq torch.compile {row['hqq_compile_step_ms']:.1f} ms a "
              f"step, ours {row['decode_ms_per_token']:.3f} ms: "
              f"{row['speedup_vs_hqq_compile']:.1f}x", flush=True)
    return True


def _section_kernels(args: argparse.Namespace, bandwidth: float, results: dict[str, Any]
                     ) -> None:
    axes = [int(a) for a in args.axes.split(",")]
    rows: list[dict[str, Any]] = []
    results["kernels"] = rows
    for case in mixtral_cases(axes):
        row = bench_gemv(case, bandwidth, args.sweep)
        rows.append(row)
        print({k: v for k, v in row.items() if k != "sweep"}, flush=True)
    _print_table(rows, ["case", "rel_error", "default_us", "default_pct_bw", "best_us",
                        "best_gbs", "best_pct_bw", "best_config"])


def _section_dense(args: argparse.Namespace, bandwidth: float, results: dict[str, Any]
                   ) -> None:
    del args
    results["dense"] = [bench_dense(name, n, k, bandwidth)
                        for name, (n, k) in MIXTRAL_SHAPES.items()]
    _print_table(results["dense"], ["case", "us", "gbs", "pct_bw"])


def _section_moe(args: argparse.Namespace, bandwidth: float, results: dict[str, Any]) -> None:
    results["moe"] = [bench_moe(bandwidth, axis) for axis in [int(a) for a in
                                                              args.axes.split(",")]]
    _print_table(results["moe"], ["case", "us", "gbs", "pct_bw", "rel_error"])


def _section_decode(args: argparse.Namespace, bandwidth: float, results: dict[str, Any]
                    ) -> None:
    results["decode"] = [decode_step_estimate(bandwidth, axis=axis)
                         for axis in [int(a) for a in args.axes.split(",")]]
    for row in results["decode"]:
        print(row, flush=True)


def _section_hqq(args: argparse.Namespace, bandwidth: float, results: dict[str, Any]) -> None:
    del bandwidth
    rows: list[dict[str, Any]] = []
    results["hqq"] = rows
    for name, (n, k) in MIXTRAL_SHAPES.items():
        bits, group = (2, 8) if name in ("w1/w3", "w2") else (4, 64)
        rows.append(bench_hqq(Case(name, n, k, bits, group, 0), not args.no_compile))
        print(rows[-1], flush=True)
    _print_table(rows, ["case", "hqq_pytorch_us", "hqq_compile_us", "ours_eager_us",
                        "ours_graph_us", "hqq_compile_over_ours_eager", "rel_diff_ours_vs_hqq"])


def _section_engine(args: argparse.Namespace, bandwidth: float, results: dict[str, Any]
                    ) -> None:
    read_bw = results["hbm_read_bandwidth_gbs"] * 1e9
    rows: list[dict[str, Any]] = []
    results["engine"] = rows
    axes = [int(a) for a in args.axes.split(",")] if args.model is None else [-1]
    for axis in axes:  # a model folder carries its own recipe: one row
        rows.append(bench_engine(bandwidth, read_bw, layers=args.layers, prompt=args.prompt,
                                 context=args.context, axis=axis, model_path=args.model))
        print(rows[-1], flush=True)
    _print_table(rows, ["axis", "ttft_s", "prefill_tok_per_s", "plain_decode_ms_per_token",
                        "compiled", "capture_s", "decode_tok_per_s",
                        "decode_ms_per_token", "replay_ms", "floor_ms_read_bw",
                        "pct_floor_copy_bw", "pct_floor_read_bw", "peak_vram_gb"])


if __name__ == "__main__":
    sys.exit(main())
