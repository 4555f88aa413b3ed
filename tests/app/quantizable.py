"""A tiny random Mixtral whose shapes every recipe's groups divide, for the wizard tests.

The cached `tiny-random-mixtral` fixture has odd dims (hidden 60), so a 64-group
recipe would keep all of it in fp16 and the wizard would quantize nothing. This one
has hidden 64 and FFN 128, and borrows that fixture's tokenizer and chat template,
so the quantized model loads and answers through the real engine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mixdesk.engine.checkpoint import save_hub_checkpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json")
N_LAYERS = 3


def write_quantizable_mixtral(dest: Path, tokenizer_from: Path, *, seed: int) -> Path:
    """Hub layout, 3 layers, 4 experts top-2, hidden 64, FFN 128, fp32, sharded."""
    gen = torch.Generator().manual_seed(seed)
    base = json.loads((tokenizer_from / "config.json").read_text())
    dim, ffn, heads, kv, experts = 64, 128, 4, 2, 4
    hd = dim // heads
    cfg = {**base, "hidden_size": dim, "intermediate_size": ffn, "num_hidden_layers": N_LAYERS,
           "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
           "num_local_experts": experts}

    def normal(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=gen) / cols**0.5  # keeps activations O(1)

    vocab = cfg["vocab_size"]
    head = normal(vocab, dim)
    head[int(cfg["eos_token_id"])] = 0  # EOS never wins greedily: every answer says something
    t = {"model.embed_tokens.weight": normal(vocab, dim), "lm_head.weight": head,
         "model.norm.weight": 1 + 0.1 * torch.randn(dim, generator=gen)}
    for i in range(N_LAYERS):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(dim, generator=gen)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(dim, generator=gen)
        t[p + "self_attn.q_proj.weight"] = normal(heads * hd, dim)
        t[p + "self_attn.k_proj.weight"] = normal(kv * hd, dim)
        t[p + "self_attn.v_proj.weight"] = normal(kv * hd, dim)
        t[p + "self_attn.o_proj.weight"] = normal(dim, heads * hd)
        t[p + "block_sparse_moe.gate.weight"] = normal(experts, dim)
        for e in range(experts):
            q = p + f"block_sparse_moe.experts.{e}."
            t[q + "w1.weight"], t[q + "w3.weight"] = normal(ffn, dim), normal(ffn, dim)
            t[q + "w2.weight"] = normal(dim, ffn)
    save_hub_checkpoint(dest, t, cfg, max_shard_bytes=400_000)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy2(tokenizer_from / name, dest / name)
    return dest
