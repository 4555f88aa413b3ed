"""Can the fused MoE kernel read experts straight from pinned host memory, and how fast?

Issue 5's design question: if `moe_decode` reads a missing expert over PCIe itself
(zero-copy, the pinned buffer's device-visible address) instead of the host copying it
into a cache slot, the offloaded decode step needs no host sync and stays one CUDA
graph. This measures, at the Mixtral-8x7B shape (2-bit g8 axis 0, top-2 of 8):
the kernel on device memory, the kernel on pinned host memory (eager and in a graph),
and a DMA copy of the same bytes, so the three rates are compared in one run.

    python tests/bench/zerocopy_probe.py --out $OUT/zerocopy.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import triton
import triton.language as tl

from mixdesk.engine.bench import MIXTRAL_SHAPES, Case, random_packed
from mixdesk.engine.offload import _to_host
from mixdesk.kernels import reference
from mixdesk.kernels.gemv import Config, gemv, moe_decode
from mixdesk.kernels.layout import select


def timed(fn, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


@triton.jit
def _copy_kernel(src, dst, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * BLOCK * ITERS
    for i in range(ITERS):
        off = base + i * BLOCK + tl.arange(0, BLOCK)
        tl.store(dst + off, tl.load(src + off, mask=off < n), mask=off < n)


def copy_kernel_rates(src: torch.Tensor, dst: torch.Tensor) -> list[dict[str, float]]:
    """SM reads of pinned host memory at their best: a plain copy kernel, int32 words."""
    s32, d32 = src[: src.numel() // 4 * 4].view(torch.int32), dst[: dst.numel() // 4 * 4].view(
        torch.int32)
    n = s32.numel()
    rows = []
    for block, iters, warps in ((1024, 1, 4), (2048, 4, 8), (4096, 8, 8), (4096, 1, 8),
                                (8192, 16, 16)):
        grid = (triton.cdiv(n, block * iters),)
        s = timed(lambda: _copy_kernel[grid](s32, d32, n, BLOCK=block, ITERS=iters,
                                             num_warps=warps), reps=5)
        rows.append({"block": block, "iters": iters, "warps": warps,
                     "gbps": 4 * n / s / 1e9})
    return rows


def sweep(h13, x) -> list[dict[str, object]]:
    """gemv over one w1/w3 pair read from host memory, by tile and K split."""
    pair = select(h13, 2, 4)
    rows = []
    for block_rows, block_cols in ((1, 512), (2, 512), (4, 256), (8, 128), (2, 256)):
        for split in (1, 2, 4, 8, 16):
            for warps, prefetch in ((4, False), (4, True), (8, True)):
                cfg = Config(block_rows, block_cols, split, warps, prefetch)
                try:
                    s = timed(lambda cfg=cfg: gemv(x, pair, config=cfg), reps=3)
                except Exception as bad:  # noqa: BLE001
                    rows.append({"cfg": str(cfg), "error": str(bad)[:200]})
                    continue
                rows.append({"cfg": [block_rows, block_cols, split, warps, prefetch],
                             "gbps": round(pair.nbytes() * 2 / s / 1e9, 2)})
    rows.sort(key=lambda r: -float(r.get("gbps", 0)))
    return rows[:12]


def host_rates(x, device_pair, host_pair, *, ids, rw, ref, nbytes) -> dict[str, object]:
    """moe_decode reading the experts from pinned host memory: eager, and in a CUDA graph."""
    (w13, w2), (h13, h2) = device_pair, host_pair
    ffn, dim = w13.shape
    result: dict[str, object] = {}
    try:
        y = moe_decode(x, h13, h2, ids, rw)
        torch.cuda.synchronize()
        result["host_accepted"] = True
        result["host_rel_error"] = float((y - ref).norm() / ref.norm())
        host_s = timed(lambda: moe_decode(x, h13, h2, ids, rw), reps=5)
        result["host_ms"] = host_s * 1e3
        result["host_gbps"] = nbytes / host_s / 1e9
        out = torch.zeros(dim, device="cuda")
        h = torch.zeros((2, 2, ffn), device="cuda")
        graph = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            moe_decode(x, h13, h2, ids, rw, out=out, h=h)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(graph):
            out.zero_()
            h.zero_()
            moe_decode(x, h13, h2, ids, rw, out=out, h=h)
        graph_s = timed(graph.replay, reps=5)
        result["host_graph_ms"] = graph_s * 1e3
        result["host_graph_gbps"] = nbytes / graph_s / 1e9
        ids.copy_(torch.tensor([3, 4], device="cuda", dtype=torch.int32))
        graph.replay()
        want = reference.moe_decode(x, w13, w2, ids, rw)
        result["graph_new_ids_rel_error"] = float((out - want).norm() / want.norm())
    except Exception as bad:  # noqa: BLE001 - a probe: record what failed
        result["host_accepted"] = False
        result["host_error"] = f"{type(bad).__name__}: {bad}"

    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="zerocopy.json")
    args = parser.parse_args()
    ffn, dim = MIXTRAL_SHAPES["w1/w3"]
    experts = 8
    w13 = random_packed(Case("w1/w3", ffn, dim, 2, 8, 0), mats=2 * experts)
    w2 = random_packed(Case("w2", dim, ffn, 2, 8, 0), mats=experts)
    x = torch.randn(dim, device="cuda", dtype=torch.float16)
    rw = torch.softmax(torch.randn(2, device="cuda"), 0)
    ids = torch.tensor([1, 6], device="cuda", dtype=torch.int32)
    nbytes = 2 * (2 * w13.nbytes() + w2.nbytes())
    result: dict[str, object] = {"bytes_per_call": nbytes}

    dev_s = timed(lambda: moe_decode(x, w13, w2, ids, rw))
    result["device_ms"] = dev_s * 1e3
    ref = moe_decode(x, w13, w2, ids, rw).clone()

    h13, h2 = _to_host(w13, pin=True), _to_host(w2, pin=True)
    result.update(host_rates(x, (w13, w2), (h13, h2), ids=ids, rw=rw, ref=ref, nbytes=nbytes))
    # DMA of the same bytes (2 experts' w13 pair + w2), pinned -> device
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dma_s = timed(lambda: dst.copy_(src, non_blocking=True))
    result["dma_ms"] = dma_s * 1e3
    result["dma_gbps"] = nbytes / dma_s / 1e9
    result["sweep"] = sweep(h13, x)
    result["copy_kernel"] = copy_kernel_rates(src, dst)
    print(json.dumps(result, indent=1))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
