"""Sweep the tile and K split of `moe_decode`'s two launches at the Mixtral-8x7B shape.

`gemv.TUNED` was swept one matrix at a time; inside the MoE the w1/w3 launch covers
2 experts x 2 matrices and the w2 launch 2 experts, so its best tile and split may
differ. Times each candidate pair in a CUDA graph over 4 layers (past L2), and prints
the best against the default, in GB/s of the bytes the two experts hold.

    python tests/bench/moe_sweep.py [--axis 1] --out $OUT/moe_sweep.json
    python tests/bench/moe_sweep.py --axis 1 --tiles-13 128x32x4,64x16x4 --tiles-2 32x128x4

--tiles-13 and --tiles-2 sweep those tiles (rows x columns x warps) instead of the lists below.

With --variants it times the shipped tiles (TUNED_MOE) beside VARIANTS of them instead: caps
on the registers a thread (`Config.max_registers`, ptxas maxnreg; fewer registers let more
programs share an SM, at the price of spills), 3 rounds interleaved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable

import torch

from mixdesk.engine.bench import (
    MIXTRAL_SHAPES,
    Case,
    parse_tiles,
    random_packed,
    sweep_configs,
    time_graph,
    time_variants,
)
from mixdesk.kernels.gemv import TUNED_MOE, Config, default_config, moe_decode

LAYERS = 4
# Since the accumulators hold one column in 4 (kernels/gemv.py `_quarters`, 2026-11-23), a
# thread's registers allow larger tiles: w1/w3 at (8, 128) went from 167 to 80 registers.
TILES_13 = [(8, 128, 4), (2, 512, 4), (4, 512, 4), (8, 256, 4), (16, 128, 4), (4, 256, 4),
            (8, 512, 8), (16, 256, 8)]
TILES_2 = [(32, 64, 4), (16, 128, 4), (32, 128, 4), (64, 64, 4), (16, 256, 4), (64, 64, 8),
           (32, 128, 8)]
# axis 1: rows are output rows, columns groups of 8 along K (B = 512 for w1/w3, 1792 for w2)
TILES_13_AXIS1 = [(16, 128, 4), (8, 128, 4), (32, 64, 4), (16, 64, 4), (64, 32, 4),
                  (8, 256, 4), (16, 256, 8), (32, 128, 8)]
TILES_2_AXIS1 = [(64, 32, 4), (32, 64, 4), (16, 128, 4), (32, 32, 4), (16, 64, 4), (8, 128, 4),
                 (64, 64, 8)]
PER_SM = (4, 8, 16)
# kernels/gemv.py _lane: 1 is the exact decode. Axis 0 only: at axis 1 the lanes per shift come
# with x prepared (`prepare_x`, 4 at 2 bits), fixed by the bits. Taking x times 2**(bits*k) in
# the kernel instead measured slower, 109.3 -> 115.7 us (2026-11-23,
# tests/bench/results/h100-s7-moe-sweep-axis1-lanes.json); prepared by the kernel before, faster
# (97.0 -> 87.5 us, tests/bench/results/h100-s13-xp/)
LANES_PER_SHIFT = (1, 2, 4)
# --variants: (w1/w3 changes, w2 changes) against the shipped configs
VARIANTS: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "shipped": ({}, {}),
    "w2 no cap": ({}, {"max_registers": 0}),
    "w2 cap 120": ({}, {"max_registers": 120}),
    "w2 cap 104": ({}, {"max_registers": 104}),
    "w13 cap 76": ({"max_registers": 76}, {}),
}


def configs(pw, tiles, launches, lanes=LANES_PER_SHIFT, per_sm=PER_SM):
    return sweep_configs(pw, tiles, launches, per_sm=per_sm,
                         lanes=lanes if pw.axis == 0 else (1,))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="moe_sweep.json")
    parser.add_argument("--splits", action="store_true",
                        help="only the K split of the shipped tiles (TUNED_MOE), one launch at "
                             "a time: the programs' last wave can leave SMs idle")
    parser.add_argument("--axis", type=int, default=0)
    parser.add_argument("--lanes", default="1,2,4", help="lanes per shift to try (axis 0)")
    parser.add_argument("--per-sm", default="4,8,16", help="programs per SM to aim at")
    parser.add_argument("--tiles-13", help="w1/w3 tiles to sweep instead, ROWSxCOLSxWARPS,...")
    parser.add_argument("--tiles-2", help="w2 tiles to sweep instead, ROWSxCOLSxWARPS,...")
    parser.add_argument("--variants", action="store_true",
                        help="only the shipped tiles beside VARIANTS of them")
    args = parser.parse_args()
    lanes = tuple(int(n) for n in args.lanes.split(","))
    per_sm = tuple(int(n) for n in args.per_sm.split(","))
    ffn, dim = MIXTRAL_SHAPES["w1/w3"]
    w13 = [random_packed(Case("w1/w3", ffn, dim, 2, 8, args.axis), mats=16)
           for _ in range(LAYERS)]
    w2 = [random_packed(Case("w2", dim, ffn, 2, 8, args.axis), mats=8) for _ in range(LAYERS)]
    tiles_13 = parse_tiles(args.tiles_13 or (TILES_13 if args.axis == 0 else TILES_13_AXIS1))
    tiles_2 = parse_tiles(args.tiles_2 or (TILES_2 if args.axis == 0 else TILES_2_AXIS1))
    x = torch.randn(dim, device="cuda", dtype=torch.float16)
    rw = torch.softmax(torch.randn(2, device="cuda"), 0)
    ids = [torch.randperm(8, device="cuda")[:2].to(torch.int32) for _ in range(LAYERS)]
    nbytes = 2 * (2 * (w13[0].nbytes()) + w2[0].nbytes())  # nbytes() is one matrix

    def timed(c13, c2) -> float:
        def step() -> None:
            for i in range(LAYERS):
                moe_decode(x, w13[i], w2[i], ids[i], rw, configs=(c13, c2))
        return time_graph(step, LAYERS)

    dev = torch.device("cuda")
    d13 = default_config(w13[0], 4, dev, table=TUNED_MOE)
    d2 = default_config(w2[0], 2, dev, table=TUNED_MOE)
    if args.variants:
        rows = time_variants(timed, {
            name: (dataclasses.replace(d13, **a), dataclasses.replace(d2, **b))
            for name, (a, b) in VARIANTS.items()})
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"axis": args.axis, "w13": str(d13), "w2": str(d2), "rows": rows}, f,
                      indent=1)
        return
    base = timed(d13, d2)
    if args.splits:
        s13 = default_config(w13[0], 4, dev, table=TUNED_MOE)
        s2 = default_config(w2[0], 2, dev, table=TUNED_MOE)
        split_sweep(timed, s13, s2, nbytes=nbytes, base=timed(s13, s2), out=args.out)
        return
    exact13, exact2 = (dataclasses.replace(d13, lanes_per_shift=1),
                       dataclasses.replace(d2, lanes_per_shift=1))
    exact = timed(exact13, exact2)  # the default tiles, one shift a lane (before 2026-11-23)
    rows = []
    best2 = d2
    for c13 in configs(w13[0], tiles_13, 4, lanes, per_sm):
        rows.append({"w13": str(c13), "us": timed(c13, best2) * 1e6})
    best13 = min(rows, key=lambda r: r["us"])
    c13_best = next(c for c in configs(w13[0], tiles_13, 4, lanes, per_sm)
                    if str(c) == best13["w13"])
    rows2 = []
    for c2 in configs(w2[0], tiles_2, 2, lanes, per_sm):
        rows2.append({"w2": str(c2), "us": timed(c13_best, c2) * 1e6})
    best2_row = min(rows2, key=lambda r: r["us"])
    result = {"axis": args.axis, "bytes": nbytes,
              "default": {"w13": str(d13), "w2": str(d2), "us": base * 1e6,
                          "gbs": nbytes / base / 1e9},
              "default_one_shift_a_lane": {"us": exact * 1e6, "gbs": nbytes / exact / 1e9},
              "best_w13": best13, "best_pair": {**best2_row, "w13": best13["w13"],
                                                "gbs": nbytes / (best2_row["us"] / 1e6) / 1e9},
              "w13_top": sorted(rows, key=lambda r: r["us"])[:8],
              "w2_top": sorted(rows2, key=lambda r: r["us"])[:8]}
    print(json.dumps(result, indent=1))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


def split_sweep(timed: Callable[[Config, Config], float], d13: Config, d2: Config, *,
                nbytes: int, base: float, out: str) -> None:
    """Time the shipped tiles at every K split from 1 to 4x the default, w13 then w2."""
    rows13 = [{"split": s, "us": timed(dataclasses.replace(d13, split=s), d2) * 1e6}
              for s in range(1, 4 * d13.split + 1)]
    best13 = min(rows13, key=lambda r: r["us"])
    c13 = dataclasses.replace(d13, split=best13["split"])
    rows2 = [{"split": s, "us": timed(c13, dataclasses.replace(d2, split=s)) * 1e6}
             for s in range(max(1, d2.split // 4), 3 * d2.split + 1, max(1, d2.split // 8))]
    best2 = min(rows2, key=lambda r: r["us"])
    result = {"bytes": nbytes, "default": {"w13": str(d13), "w2": str(d2), "us": base * 1e6},
              "w13_splits": rows13, "w2_splits": rows2,
              "best": {"w13_split": best13["split"], "w2_split": best2["split"],
                       "us": best2["us"], "gbs": nbytes / (best2["us"] / 1e6) / 1e9}}
    print(json.dumps(result, indent=1))
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
