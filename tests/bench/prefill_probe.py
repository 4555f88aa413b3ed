"""How much prefill pays for q split into k's shape (engine.fastpath.fuse_qkv): one
1024-token forward of a synthetic Mixtral-8x7B-shaped stack, q dequantized from its split
stack (rows put back by merge_rows) against q joined back into one matrix. CUDA only.

    python tests/bench/prefill_probe.py [--layers 4] [--prompt 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mixdesk.engine.bench import synthetic_prompt
from mixdesk.kernels.layout import join_rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=1024)
    args = parser.parse_args()
    model, tokens, positions = synthetic_prompt(args.layers, args.prompt)

    def timed() -> float:
        times = []
        for _ in range(5):
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(tokens, positions)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])

    with torch.inference_mode():
        split = timed()
        for block in model.blocks():
            q = block.self_attn.q_proj
            q.packed, q.row_parts = join_rows(q.packed), 1
        joined = timed()
    print(f"{args.layers} layers, prompt {args.prompt}: q split {1e3 * split:.1f} ms, "
          f"q joined {1e3 * joined:.1f} ms a prefill")


if __name__ == "__main__":
    main()
