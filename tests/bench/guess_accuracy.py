"""How often speculative prefetch guesses the next layer's experts right, on a real model (CPU).

For every position of each fidelity prompt and its greedy answer (one teacher-forced pass),
layer l+1's picks are compared with three guesses of them:
- `next router on this input`: layer l+1's router on layer l's MoE input, what
  `engine.offload.PinnedExperts.guess_next` does;
- `... with the next norm`: the same input re-weighted from layer l's RMSNorm weight to layer
  l+1's (x * w[l+1] / w[l], `engine.offload.next_norm_ratio`): the next router on this
  residual as the next layer would norm it (`guess_routers`, from layer 1 on);
- `same layer, previous token`: the experts layer l+1 picked one position earlier;
and, for the re-weighted guess, how often its first and its second id was picked.
Chance is top_k / n_experts. smol-moe has real weights and norms but a random router, so the
numbers are a proxy for Mixtral's trained routers, not a measurement of them.

    python tests/bench/guess_accuracy.py [MODEL_FOLDER] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from mixdesk.engine.generate import encode_prompt
from mixdesk.engine.loader import load_model
from mixdesk.engine.model import MoE
from mixdesk.engine.offload import next_norm_ratio
from mixdesk.engine.quantize import FIDELITY_PROMPTS, _greedy


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean share of b's top-k ids (rows) that a's rows contain."""
    return float((a[:, :, None] == b[:, None, :]).any(dim=1).float().mean())


def guess_accuracy(folder: Path, answer_tokens: int = 32) -> dict[str, Any]:
    lm = load_model(folder, device="cpu")
    blocks = list(lm.model.blocks())
    moes = [b.moe for b in blocks]
    if any(not isinstance(m, MoE) or m.gate is None for m in moes):
        raise SystemExit(f"{folder}: every layer must be a routed MoE")
    inputs: list[list[torch.Tensor]] = [[] for _ in moes]
    hooks = [m.register_forward_pre_hook(lambda _m, args, i=i: inputs[i].append(
        args[0].reshape(-1, args[0].shape[-1]).detach())) for i, m in enumerate(moes)]
    eos = set(lm.args.eos_token_ids) | {lm.tokenizer.eos_token_id}
    k = moes[0].top_k
    rows_of: dict[int, dict[str, list[float]]] = {}  # layer -> guess -> right picks, summed
    tokens: list[int] = []
    with torch.no_grad():
        for text in FIDELITY_PROMPTS:
            ids = encode_prompt(lm.tokenizer, text, chat=True)
            answer = _greedy(lm.model, ids, answer_tokens, eos)
            for acts in inputs:
                acts.clear()
            seq = torch.tensor([ids + answer])
            lm.model(seq, torch.arange(seq.shape[1]))
            xs = [acts[-1].float() for acts in inputs]  # the teacher-forced pass, [T, D]
            picks = [torch.topk(m.gate(x.to(m.gate.weight.dtype)).float(), k).indices
                     for m, x in zip(moes, xs, strict=True)]
            for i in range(len(moes) - 1):
                nxt = moes[i + 1].gate
                ratio = next_norm_ratio(blocks[i], blocks[i + 1])
                plain = torch.topk(nxt(xs[i].to(nxt.weight.dtype)).float(), k).indices
                renormed = torch.topk(nxt((xs[i] * ratio).to(nxt.weight.dtype)).float(),
                                      k).indices
                rows = rows_of.setdefault(i, {"plain": [], "renormed": [], "previous": [],
                                              "renormed_first": [], "renormed_second": []})
                for rank, name in ((0, "renormed_first"), (1, "renormed_second")):
                    hit = (renormed[:, rank, None] == picks[i + 1]).any(dim=1)
                    rows[name].append(float(hit.float().sum()))
                rows["plain"].append(overlap(plain, picks[i + 1]) * len(seq[0]))
                rows["renormed"].append(overlap(renormed, picks[i + 1]) * len(seq[0]))
                rows["previous"].append(overlap(picks[i + 1][:-1], picks[i + 1][1:])
                                        * (len(seq[0]) - 1))
            tokens.append(len(seq[0]))
    for h in hooks:
        h.remove()
    n = sum(tokens)
    per_layer = {i: {name: sum(v) / (n - len(tokens) if name == "previous" else n)
                     for name, v in r.items()} for i, r in rows_of.items()}
    names = ("plain", "renormed", "previous", "renormed_first", "renormed_second")
    mean = {name: sum(r[name] for r in per_layer.values()) / len(per_layer) for name in names}
    return {"model": str(folder), "positions": n, "top_k": k, "experts": len(moes[0].experts),
            "chance": k / len(moes[0].experts),
            "next_router_on_this_input": round(mean["plain"], 3),
            "next_router_with_the_next_norm": round(mean["renormed"], 3),
            "same_layer_previous_token": round(mean["previous"], 3),
            # of the re-weighted guess's first (its best-scored) and second ids, the share
            # that layer l+1 picked
            "first_guess_right": round(mean["renormed_first"], 3),
            "second_guess_right": round(mean["renormed_second"], 3),
            "per_layer": {i: {name: round(v, 3) for name, v in r.items()}
                          for i, r in per_layer.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=".cache/fixtures/smol-moe-v1.1")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    result = guess_accuracy(Path(args.model))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
