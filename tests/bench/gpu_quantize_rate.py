"""How fast the quantize job runs: source bytes per second, for the wizard's time estimate.

Writes a random checkpoint with Mixtral-8x7B's shapes (hidden 4096, FFN 14336, 8 experts,
vocab 32000) but only `--layers` decoder layers, in the hub's layout and bf16, then times
`engine.qformat.quantize_model` on it per recipe. Prints one line per recipe; the rate
is what `engine.fit.QUANTIZE_BYTES_PER_S_*` should hold. A benchmark script, not a test.

On the lent GPU machine, from the repo root, with the hqq wheels carried in .whl/:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    mkdir -p /tmp/ns/mixdesk && ln -sfn $PWD/engine /tmp/ns/mixdesk/engine \
        && ln -sfn $PWD/kernels /tmp/ns/mixdesk/kernels
    PYTHONPATH=/tmp/ns:/tmp/site python3 tests/bench/gpu_quantize_rate.py --layers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mixdesk.engine.checkpoint import save_hub_checkpoint
from mixdesk.engine.qformat import quantize_model

MIXTRAL = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
           "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
           "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
           "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
           "rope_theta": 1e6, "tie_word_embeddings": False, "bos_token_id": 1,
           "eos_token_id": 2, "torch_dtype": "bfloat16"}


def write_checkpoint(dest: Path, layers: int) -> int:
    """Mixtral-shaped random bf16 weights; returns the bytes of the shards."""
    cfg = {**MIXTRAL, "num_hidden_layers": layers}
    d, f, v, hd = 4096, 14336, 32000, 128
    gen = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * shape[-1] ** -0.5).to(torch.bfloat16)

    t = {"model.embed_tokens.weight": r(v, d), "lm_head.weight": r(v, d),
         "model.norm.weight": torch.ones(d, dtype=torch.bfloat16)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = torch.ones(d, dtype=torch.bfloat16)
        t[p + "post_attention_layernorm.weight"] = torch.ones(d, dtype=torch.bfloat16)
        t[p + "self_attn.q_proj.weight"] = r(32 * hd, d)
        t[p + "self_attn.k_proj.weight"] = r(8 * hd, d)
        t[p + "self_attn.v_proj.weight"] = r(8 * hd, d)
        t[p + "self_attn.o_proj.weight"] = r(d, 32 * hd)
        t[p + "block_sparse_moe.gate.weight"] = r(8, d)
        for e in range(8):
            q = p + f"block_sparse_moe.experts.{e}."
            t[q + "w1.weight"], t[q + "w3.weight"], t[q + "w2.weight"] = r(f, d), r(f, d), r(d, f)
    save_hub_checkpoint(dest, t, cfg, max_shard_bytes=5 * 10**9)
    return sum(p.stat().st_size for p in dest.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--recipes", default="hqq-card,4bit-g64")
    parser.add_argument("--device", default=None, help="default: cuda when present")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    work = Path(tempfile.mkdtemp(prefix="mixdesk-qrate-"))
    try:
        started = time.perf_counter()
        nbytes = write_checkpoint(work / "src", args.layers)
        print(f"checkpoint: {args.layers} Mixtral-8x7B layers + embeddings, "
              f"{nbytes / 1e9:.2f} GB bf16, written in {time.perf_counter() - started:.0f} s",
              flush=True)
        results = []
        for recipe in args.recipes.split(","):
            out = work / recipe
            started = time.perf_counter()
            quantize_model(work / "src", out, recipe, device=device)
            seconds = time.perf_counter() - started
            rate = nbytes / seconds
            results.append({"recipe": recipe, "device": name, "source_bytes": nbytes,
                            "seconds": round(seconds, 2), "bytes_per_s": round(rate)})
            print(f"{recipe:>9} on {name}: {seconds:.1f} s, {rate / 1e6:.0f} MB/s of source "
                  f"(Mixtral-8x7B's 93.4 GB would take {93.4e9 / rate / 60:.0f} min)",
                  flush=True)
            shutil.rmtree(out)
        print(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
