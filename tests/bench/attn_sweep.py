"""Sweep the tiles, K split and lanes per shift of the attention projections' GEMVs.

q and o (4096x4096) and k and v (1024x4096) at 4-bit g64 axis 0, as a decode step runs
them: four launches a layer (q, k, v, o), in a CUDA graph over 4 layers (past L2). Prints
the best tile per shape against `default_config`'s, in GB/s of the bytes they hold.

    python tests/bench/attn_sweep.py --out $OUT/attn_sweep.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from mixdesk.engine.bench import MIXTRAL_SHAPES, Case, random_packed, sweep_configs, time_graph
from mixdesk.kernels.gemv import Config, default_config, gemv

LAYERS = 4
TILES = [(8, 128, 4), (4, 128, 4), (16, 64, 4), (4, 256, 4), (8, 256, 8), (2, 512, 4)]
PER_SM = (4, 8)
LANES_PER_SHIFT = (1, 2)


def configs(pw, launches):
    return sweep_configs(pw, TILES, launches, per_sm=PER_SM, lanes=LANES_PER_SHIFT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="attn_sweep.json")
    args = parser.parse_args()
    dim = MIXTRAL_SHAPES["q/o"][1]
    qo = [random_packed(Case("q/o", *MIXTRAL_SHAPES["q/o"], 4, 64, 0)) for _ in range(2 * LAYERS)]
    kv = [random_packed(Case("k/v", *MIXTRAL_SHAPES["k/v"], 4, 64, 0)) for _ in range(2 * LAYERS)]
    x = torch.randn(dim, device="cuda", dtype=torch.float16)
    out_qo = torch.zeros(MIXTRAL_SHAPES["q/o"][0], device="cuda")
    out_kv = torch.zeros(MIXTRAL_SHAPES["k/v"][0], device="cuda")
    nbytes = 2 * (qo[0].nbytes() + kv[0].nbytes())  # one layer

    def timed(c_qo: Config, c_kv: Config) -> float:
        def step() -> None:
            for i in range(LAYERS):
                gemv(x, qo[2 * i], out_qo, config=c_qo)
                gemv(x, kv[2 * i], out_kv, config=c_kv)
                gemv(x, kv[2 * i + 1], out_kv, config=c_kv)
                gemv(x, qo[2 * i + 1], out_qo, config=c_qo)
        return time_graph(step, LAYERS)

    dev = torch.device("cuda")
    d_qo, d_kv = default_config(qo[0], 1, dev), default_config(kv[0], 1, dev)
    result: dict[str, object] = {"bytes_a_layer": nbytes}
    for name, cfg_qo, cfg_kv in (
            ("default", d_qo, d_kv),
            ("default_one_shift_a_lane", dataclasses.replace(d_qo, lanes_per_shift=1),
             dataclasses.replace(d_kv, lanes_per_shift=1))):
        us = timed(cfg_qo, cfg_kv) * 1e6
        result[name] = {"q/o": str(cfg_qo), "k/v": str(cfg_kv), "us": us,
                        "gbs": nbytes / us / 1e3}
    rows = [{"q/o": str(c), "us": timed(c, d_kv) * 1e6} for c in configs(qo[0], 1)]
    best_qo = min(rows, key=lambda r: r["us"])
    c_qo = next(c for c in configs(qo[0], 1) if str(c) == best_qo["q/o"])
    rows_kv = [{"k/v": str(c), "us": timed(c_qo, c) * 1e6} for c in configs(kv[0], 1)]
    best_kv = min(rows_kv, key=lambda r: r["us"])
    result["best_pair"] = {"q/o": best_qo["q/o"], **best_kv,
                           "gbs": nbytes / best_kv["us"] / 1e3}
    result["q/o_top"] = sorted(rows, key=lambda r: r["us"])[:8]
    result["k/v_top"] = sorted(rows_kv, key=lambda r: r["us"])[:8]
    print(json.dumps(result, indent=1))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
