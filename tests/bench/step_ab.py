"""Decode-step variants A/B in one process: one synthetic Mixtral-8x7B, one graph a variant.

A variant is a name and environment settings that hold while its `fastpath.DecodeGraph` is
captured (the launchers read them then, e.g. `MIXDESK_PDL=0`). The graphs are replayed in
turn, `--rounds` times `--steps` replays, so drift falls on every variant alike; each is
reported as ms a token, % of the read floor, and its first logits against the first variant's.

    python tests/bench/step_ab.py --axis 0 --variant pdl: --variant no-pdl:MIXDESK_PDL=0 \
        --out $OUT/step_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import torch

from mixdesk.engine.bench import (
    hbm_read_bandwidth,
    rel_error,
    step_bytes,
    synthetic_mixtral,
    time_replays,
)

PROMPT = 1024
CONTEXT = 4096


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """"name:KEY=VALUE,KEY=VALUE" as (name, settings); "name:" has none."""
    name, _, rest = text.partition(":")
    settings = dict(pair.split("=", 1) for pair in rest.split(",") if pair)
    return name, settings


def capture(model: Any, nxt: torch.Tensor, settings: dict[str, str]) -> tuple[Any, torch.Tensor]:
    from mixdesk.engine.fastpath import DecodeGraph  # noqa: PLC0415

    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        graph = DecodeGraph(torch.device("cuda"), compile_glue=True)
        logits = graph.step(model, nxt, PROMPT).float().clone()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return graph, logits


def replay_ms(graph: Any, steps: int) -> float:
    graph.pos.fill_(PROMPT)  # each replay advances pos: every round over the same positions
    graph.graph.replay()  # warm: the other variant's graph ran last
    return time_replays(graph.graph, steps) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--axis", type=int, default=0)
    parser.add_argument("--variant", action="append", required=True,
                        help="name:KEY=VALUE,... (settings while its graph is captured)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--out", default="step_ab.json")
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in args.variant)
    read_bw = hbm_read_bandwidth()
    model = synthetic_mixtral(32, CONTEXT, args.axis)
    graphs, logits = {}, {}
    with torch.inference_mode():
        tokens = torch.randint(0, model.args.vocab_size, (1, PROMPT), device="cuda")
        nxt = model(tokens, torch.arange(PROMPT, device="cuda"))[0, -1].argmax(-1, keepdim=True)
        for name, settings in variants.items():
            graphs[name], logits[name] = capture(model, nxt, settings)
        torch.cuda.synchronize()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name in variants:
                times[name].append(replay_ms(graphs[name], args.steps))
    used = sum(v for k, v in step_bytes(model, PROMPT + args.steps, CONTEXT).items()
               if k != "kv_static")
    floor_ms = used / read_bw * 1e3
    first = next(iter(variants))
    rows = []
    for name, ms_list in times.items():
        ms = statistics.median(ms_list)
        row = {"variant": name, "settings": variants[name], "ms_median": ms, "ms": ms_list,
               "pct_read_floor": 100 * floor_ms / ms,
               "logits_rel_error_vs_first": rel_error(logits[name], logits[first])}
        rows.append(row)
        print(f"axis {args.axis} {name:20s} {ms:.4f} ms  {row['pct_read_floor']:.1f}% of the read "
              f"floor ({floor_ms:.3f} ms)  {[round(t, 4) for t in ms_list]}  logits vs {first} "
              f"{row['logits_rel_error_vs_first']:.2e}", flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"axis": args.axis, "read_bw_gbs": read_bw / 1e9, "floor_ms_read_bw": floor_ms,
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
