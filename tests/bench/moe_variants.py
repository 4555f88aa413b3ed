"""Time `moe_decode` at the Mixtral-8x7B shape with the shipped tiles (TUNED_MOE) beside
variants of them: caps on the registers a thread (`Config.max_registers`, ptxas maxnreg; fewer
registers let more programs share an SM, at the price of spills). Each variant is timed ROUNDS
times, interleaved with the others, in a CUDA graph over 4 layers (past L2).

    python tests/bench/moe_variants.py --axis 0 --out $OUT/moe_variants.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import torch

from mixdesk.engine.bench import MIXTRAL_SHAPES, Case, random_packed, time_graph
from mixdesk.kernels.gemv import TUNED_MOE, default_config, moe_decode

LAYERS = 4
ROUNDS = 3
# (w1/w3 changes, w2 changes) against the shipped configs
VARIANTS = {
    "shipped": ({}, {}),
    "w2 no cap": ({}, {"max_registers": 0}),
    "w2 cap 120": ({}, {"max_registers": 120}),
    "w2 cap 104": ({}, {"max_registers": 104}),
    "w13 cap 76": ({"max_registers": 76}, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="moe_variants.json")
    parser.add_argument("--axis", type=int, default=0)
    args = parser.parse_args()
    ffn, dim = MIXTRAL_SHAPES["w1/w3"]
    w13 = [random_packed(Case("w1/w3", ffn, dim, 2, 8, args.axis), mats=16)
           for _ in range(LAYERS)]
    w2 = [random_packed(Case("w2", dim, ffn, 2, 8, args.axis), mats=8) for _ in range(LAYERS)]
    x = torch.randn(dim, device="cuda", dtype=torch.float16)
    rw = torch.softmax(torch.randn(2, device="cuda"), 0)
    ids = [torch.randperm(8, device="cuda")[:2].to(torch.int32) for _ in range(LAYERS)]
    dev = torch.device("cuda")
    d13 = default_config(w13[0], 4, dev, table=TUNED_MOE)
    d2 = default_config(w2[0], 2, dev, table=TUNED_MOE)
    variants = {name: (dataclasses.replace(d13, **a), dataclasses.replace(d2, **b))
                for name, (a, b) in VARIANTS.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(ROUNDS):
        for key, (c13, c2) in variants.items():
            def step(c13=c13, c2=c2) -> None:
                for i in range(LAYERS):
                    moe_decode(x, w13[i], w2[i], ids[i], rw, configs=(c13, c2))
            times[key].append(time_graph(step, LAYERS) * 1e6)
    rows = [{"variant": k, "us_median": statistics.median(v), "us": v} for k, v in times.items()]
    result = {"axis": args.axis, "w13": str(d13), "w2": str(d2), "rows": rows}
    for r in rows:
        print(f"{r['variant']:14s} {r['us_median']:.1f} us  {[round(t, 1) for t in r['us']]}")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
