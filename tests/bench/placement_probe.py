"""Does where the weights land in GPU memory move the decode step? One process a run: a
pad of PAD_MB allocated first shifts every weight the synthetic model then allocates, and the
step's graph replays are timed (3 rounds of 64). Runs with different pads (separate
processes) apart by more than the rounds inside one are a placement effect.

    python tests/bench/placement_probe.py --axis 1 --pad-mb 0 --out $OUT/placement-0.json
"""

from __future__ import annotations

import argparse
import json

import torch

from mixdesk.engine.bench import synthetic_mixtral, time_replays

PROMPT = 1024
CONTEXT = 4096


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--axis", type=int, default=1)
    parser.add_argument("--pad-mb", type=int, default=0)
    parser.add_argument("--out", default="placement.json")
    args = parser.parse_args()
    pad = torch.empty(args.pad_mb * 2**20, dtype=torch.uint8, device="cuda")  # held to the end
    from mixdesk.engine.fastpath import DecodeGraph  # noqa: PLC0415

    model = synthetic_mixtral(32, CONTEXT, args.axis)
    with torch.inference_mode():
        tokens = torch.randint(0, model.args.vocab_size, (1, PROMPT), device="cuda")
        nxt = model(tokens, torch.arange(PROMPT, device="cuda"))[0, -1].argmax(-1, keepdim=True)
        graph = DecodeGraph(torch.device("cuda"), compile_glue=True)
        graph.step(model, nxt, PROMPT)
        rounds = []
        for _ in range(3):
            graph.pos.fill_(PROMPT)
            graph.graph.replay()
            rounds.append(time_replays(graph.graph, 64) * 1e3)
    result = {"axis": args.axis, "pad_mb": args.pad_mb, "pad_bytes": pad.numel(),
              "replay_ms": rounds}
    print(json.dumps(result))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
