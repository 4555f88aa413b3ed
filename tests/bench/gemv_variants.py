"""Time the GEMVs with and without their masks at the Mixtral-8x7B shape.

Variants: "masked" (MIXDESK_GEMV_MASKED=1: every load masked, as before 2026-11-23) and
"whole" (the default: unmasked loads where every tile is whole, `gemv.whole_tiles`). For each,
`moe_decode` top-2 and the attention projections (q/k/v stacked, then o) at their shipped
tiles, 4 layers in a CUDA graph (past L2), and the largest difference of their outputs from
the first variant's.

    python tests/bench/gemv_variants.py [--axis 1] --out $OUT/variants.json
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from mixdesk.engine.bench import MIXTRAL_SHAPES, Case, random_packed, time_graph
from mixdesk.kernels.gemv import gemv, moe_decode
from mixdesk.kernels.layout import select, split_rows, stack, with_period

LAYERS = 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="masked,whole,masked,whole")
    parser.add_argument("--axis", type=int, default=0)
    parser.add_argument("--out", default="variants.json")
    args = parser.parse_args()
    ffn, dim = MIXTRAL_SHAPES["w1/w3"]
    w13 = [random_packed(Case("w1/w3", ffn, dim, 2, 8, args.axis), mats=16) for _ in range(LAYERS)]
    w2 = [random_packed(Case("w2", dim, ffn, 2, 8, args.axis), mats=8) for _ in range(LAYERS)]
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
    rw = torch.softmax(torch.randn(2, device="cuda"), 0)
    ids = [torch.randperm(8, device="cuda")[:2].to(torch.int32) for _ in range(LAYERS)]
    moe_bytes = 2 * (2 * w13[0].nbytes() + w2[0].nbytes())
    out_moe = torch.zeros(dim, device="cuda")
    out_qkv = torch.zeros(parts + 2, kv.n, device="cuda")
    out_o = torch.zeros(qo.n, device="cuda")

    def moe() -> None:
        for i in range(LAYERS):
            moe_decode(x, w13[i], w2[i], ids[i], rw)

    def attn() -> None:
        for i in range(LAYERS):
            gemv(x, qkv[i], out_qkv)
            gemv(x, o[i], out_o)

    rows, ref = [], None
    for variant in args.variants.split(","):
        os.environ["MIXDESK_GEMV_MASKED"] = "1" if variant == "masked" else "0"
        out_moe.copy_(moe_decode(x, w13[0], w2[0], ids[0], rw))
        out_qkv.zero_()
        out_o.zero_()
        gemv(x, qkv[0], out_qkv)
        gemv(x, o[0], out_o)
        outs = [out_moe.clone(), out_qkv.clone(), out_o.clone()]
        ref = ref or outs
        err = max(float(((a - b).abs().max() / b.abs().max())) for a, b in zip(outs, ref,
                                                                                strict=True))
        moe_us, attn_us = time_graph(moe, LAYERS) * 1e6, time_graph(attn, LAYERS) * 1e6
        rows.append({"variant": variant, "moe_us": moe_us, "moe_gbs": moe_bytes / moe_us / 1e3,
                     "attn_us": attn_us, "max_rel_diff_vs_first": err})
        print(rows[-1], flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"axis": args.axis, "layers": LAYERS, "moe_bytes": moe_bytes, "rows": rows}, f,
                  indent=1)


if __name__ == "__main__":
    main()
