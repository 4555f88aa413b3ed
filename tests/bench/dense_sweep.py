"""Sweep `kernels.dense.dense_gemv`'s tile at Mixtral's lm_head (32000 x 4096 fp16) against
torch's (cuBLAS) GEMV, each in a CUDA graph, in GB/s of the weight.

    python tests/bench/dense_sweep.py --out $OUT/dense_sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F  # noqa: N812

from mixdesk.engine.bench import time_graph
from mixdesk.kernels.dense import BLOCK_K, BLOCK_N, WARPS, dense_gemv

ROWS = (4, 8, 16)
COLS = (256, 512, 1024)
WARP_COUNTS = (4, 8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="dense_sweep.json")
    args = parser.parse_args()
    weight = torch.randn(32000, 4096, device="cuda", dtype=torch.float16)
    x = torch.randn(4096, device="cuda", dtype=torch.float16)
    out = torch.empty(32000, device="cuda", dtype=torch.float16)
    nbytes = weight.numel() * weight.element_size()
    want = F.linear(x, weight).float()

    def timed(tile: tuple[int, int, int] | None) -> float:
        if tile is None:
            return time_graph(lambda: F.linear(x, weight), 1, replays=30)
        err = float((dense_gemv(x, weight, out, tile=tile).float() - want).norm() / want.norm())
        assert err < 1e-3, (tile, err)
        return time_graph(lambda: dense_gemv(x, weight, out, tile=tile), 1, replays=30)

    cublas = timed(None)
    rows = [{"tile": list(t), "us": timed(t) * 1e6}
            for t in itertools.product(ROWS, COLS, WARP_COUNTS)]
    for r in rows:
        r["gbs"] = nbytes / r["us"] / 1e3
    shipped = timed((BLOCK_N, BLOCK_K, WARPS))
    result = {"cublas_us": cublas * 1e6, "cublas_gbs": nbytes / cublas / 1e9,
              "shipped": {"tile": [BLOCK_N, BLOCK_K, WARPS], "us": shipped * 1e6,
                          "gbs": nbytes / shipped / 1e9},
              "top": sorted(rows, key=lambda r: r["us"])[:8]}
    print(json.dumps(result, indent=1))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
