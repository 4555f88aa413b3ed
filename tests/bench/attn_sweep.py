"""Sweep the tiles and K split of the attention projections' GEMVs as a decode step runs them.

At the Mixtral shape (4-bit g64, either axis) a layer is two launches: q (split into 4 matrices of
k's shape, `layout.split_rows`), k and v stacked as one GEMV of 6 [1024, 4096] matrices
(`engine.fastpath.fuse_qkv`; at axis 1 k's and v's meta tables laid out for q's period,
`layout.with_period`), then o (4096x4096). Timed in a CUDA graph over 4 layers (past
L2). Prints the best tiles against `default_config`'s, in GB/s of the bytes they hold. At axis 1
x comes lane-major, as the decode step's add_norm and attention write it (no copy launch).

    python tests/bench/attn_sweep.py [--axis 1] --out $OUT/attn_sweep.json

With --caps 64,80 it times the shipped tiles instead, each launch alone under each register cap
(`Config.max_registers`), 3 rounds interleaved.
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
from mixdesk.kernels.gemv import Config, default_config, gemv
from mixdesk.kernels.layout import select, split_rows, stack, with_period

LAYERS = 4
TILES = [(1, 512, 4), (2, 256, 4), (2, 512, 4), (4, 128, 4), (4, 256, 4), (8, 64, 4),
         (8, 128, 4), (16, 64, 4), (16, 128, 4), (4, 128, 8), (8, 256, 8)]
# axis 1: B = 64 groups of 64 along K, so at most 64 columns a tile
TILES_AXIS1 = [(16, 64, 4), (32, 32, 4), (8, 64, 4), (32, 64, 4), (64, 32, 4), (16, 32, 4)]
PER_SM = (2, 4, 8, 16)
PER_SM_AXIS1 = (2, 4, 8)  # the axis-1 kernels compile slower: a sweep of 4 did not end in 170 s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="attn_sweep.json")
    parser.add_argument("--axis", type=int, default=0)
    parser.add_argument("--caps", default="", help="register caps to time the shipped tiles at")
    parser.add_argument("--tiles", help="tiles to sweep instead, ROWSxCOLSxWARPS,...")
    parser.add_argument("--per-sm", help="programs per SM to aim at instead, N,...")
    args = parser.parse_args()
    tiles = parse_tiles(args.tiles or (TILES if args.axis == 0 else TILES_AXIS1))
    per_sm = (tuple(int(n) for n in args.per_sm.split(",")) if args.per_sm
              else PER_SM if args.axis == 0 else PER_SM_AXIS1)
    dim = MIXTRAL_SHAPES["q/o"][1]
    qo = Case("q/o", *MIXTRAL_SHAPES["q/o"], 4, 64, args.axis)
    kv = Case("k/v", *MIXTRAL_SHAPES["k/v"], 4, 64, args.axis)
    parts = qo.n // kv.n
    qkv, o = [], []
    for _ in range(LAYERS):
        q = split_rows(random_packed(qo), parts)
        k, v = (with_period(random_packed(kv), q.period) for _ in range(2))
        qkv.append(stack([*(select(q, i) for i in range(parts)), k, v]))
        o.append(random_packed(qo))
    x = torch.randn(dim, device="cuda", dtype=torch.float16)
    out_qkv = torch.zeros(parts + 2, kv.n, device="cuda")
    out_o = torch.zeros(qo.n, device="cuda")
    nbytes = qkv[0].n_mats * qkv[0].nbytes() + o[0].nbytes()  # one layer (nbytes: a matrix)

    def timed(c_qkv: Config, c_o: Config) -> float:
        def step() -> None:
            for i in range(LAYERS):  # at axis 1 x as the decode step hands it over: lane-major
                gemv(x, qkv[i], out_qkv, config=c_qkv, x_lane_major=args.axis == 1)
                gemv(x, o[i], out_o, config=c_o, x_lane_major=args.axis == 1)
        return time_graph(step, LAYERS)

    dev = torch.device("cuda")
    d_qkv, d_o = default_config(qkv[0], qkv[0].n_mats, dev), default_config(o[0], 1, dev)
    if args.caps:
        time_caps(timed, d_qkv, d_o, [int(c) for c in args.caps.split(",")], axis=args.axis,
                  out=args.out)
        return
    us = timed(d_qkv, d_o) * 1e6
    result: dict[str, object] = {"axis": args.axis, "bytes_a_layer": nbytes, "default": {
        "qkv": str(d_qkv), "o": str(d_o), "us": us, "gbs": nbytes / us / 1e3}}
    rows = []
    for c in sweep_configs(qkv[0], tiles, qkv[0].n_mats, per_sm=per_sm):
        rows.append({"qkv": str(c), "us": timed(c, d_o) * 1e6, "config": c})
    best_qkv = min(rows, key=lambda r: r["us"])
    rows_o = []
    for c in sweep_configs(o[0], tiles, 1, per_sm=per_sm):
        rows_o.append({"o": str(c), "us": timed(best_qkv["config"], c) * 1e6})
    best_o = min(rows_o, key=lambda r: r["us"])
    for r in rows:
        del r["config"]
    result["best_pair"] = {"qkv": best_qkv["qkv"], **best_o, "gbs": nbytes / best_o["us"] / 1e3}
    result["qkv_top"] = sorted(rows, key=lambda r: r["us"])[:10]
    result["o_top"] = sorted(rows_o, key=lambda r: r["us"])[:10]
    print(json.dumps(result, indent=1))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


def time_caps(timed: Callable[[Config, Config], float], d_qkv: Config, d_o: Config,
              caps: list[int], *, axis: int, out: str) -> None:
    """The shipped tiles, and each launch alone under each register cap, 3 rounds interleaved."""
    variants = {"shipped": (d_qkv, d_o)}
    for cap in caps:
        variants[f"qkv cap {cap}"] = (dataclasses.replace(d_qkv, max_registers=cap), d_o)
        variants[f"o cap {cap}"] = (d_qkv, dataclasses.replace(d_o, max_registers=cap))
    rows = time_variants(timed, variants)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"axis": axis, "qkv": str(d_qkv), "o": str(d_o), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
