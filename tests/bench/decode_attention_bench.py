"""Decode attention of one layer at the Mixtral shape: the torch path (whole cache, masked)
against `kernels.attention.decode_attention` (positions 0..pos), per cache length, position
and chunk. CUDA only; prints a markdown table of microseconds a call (CUDA-graph replays,
so launch overhead is counted as in a decode step).

    PYTHONPATH=/tmp/ns python3 tests/bench/decode_attention_bench.py
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from mixdesk.engine.bench import time_graph
from mixdesk.kernels import reference
from mixdesk.kernels.attention import chunk_for, decode_attention

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128


def graph_us(fn: Callable[[], object], replays: int = 200) -> float:
    """Median time of one replay of fn captured in a CUDA graph, in microseconds."""
    def step() -> None:
        fn()

    return 1e6 * time_graph(step, 1, replays)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256, 512])
    args = parser.parse_args()
    dtype, scale = torch.float16, HEAD_DIM**-0.5
    print("| S | pos | torch us | " + " | ".join(f"chunk {c} us" for c in args.chunks)
          + " | default chunk | kernel GB/s at default |")
    print("|---" * (5 + len(args.chunks)) + "|")
    for max_len in args.lengths:
        q = torch.randn(1, HEADS, HEAD_DIM, device="cuda", dtype=dtype)
        k = torch.randn(1, KV_HEADS, max_len, HEAD_DIM, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        pos = torch.zeros(1, dtype=torch.long, device="cuda")
        for at in (100, max_len // 4, max_len - 1):
            pos.fill_(at)
            torch_us = graph_us(lambda: reference.decode_attention(q, k, v, pos, scale))  # noqa: B023
            times = [graph_us(lambda c=c: decode_attention(q, k, v, pos, scale, chunk=c))  # noqa: B023
                     for c in args.chunks]
            default = chunk_for(max_len)
            default_us = graph_us(lambda: decode_attention(q, k, v, pos, scale))  # noqa: B023
            read = 2 * KV_HEADS * (at + 1) * HEAD_DIM * 2  # bytes of K and V up to pos
            print(f"| {max_len} | {at} | {torch_us:.1f} | "
                  + " | ".join(f"{t:.1f}" for t in times)
                  + f" | {default} | {read / default_us / 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
