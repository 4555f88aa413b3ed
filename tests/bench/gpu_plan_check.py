"""The planner's VRAM prediction against torch's measured peak, on a random Mixtral stack.

Measures the GPU once (`engine.budget.measure_gpu`: copy and pinned H2D bandwidth,
CUDA context), builds a random quantized Mixtral-8x7B-shaped model with fewer layers
on the GPU (`engine.fastpath.random_quantized_model`, the kernels' packed copy on),
prefills a prompt and decodes a few tokens the way engine.generate does, and prints
torch's peak allocation and the device's used memory next to the plan's prediction.
"""

from __future__ import annotations

import argparse
import time

import torch

from mixdesk.engine.budget import GB, ModelSource, measure_gpu, price_plan
from mixdesk.engine.config import ModelArgs
from mixdesk.engine.fastpath import enable_kernels, random_quantized_model
from mixdesk.engine.quantize import RECIPES


def run(recipe: str, layers: int, context: int, prompt: int, new: int) -> None:
    gpu = measure_gpu(save=True)
    args = ModelArgs(model_type="mixtral", vocab_size=32000, dim=4096, n_layers=layers,
                     n_heads=32, n_kv_heads=8, head_dim=128, ffn_dim=14336, n_experts=8,
                     top_k=2, max_seq_len=context)
    rec = RECIPES[recipe]
    p = price_plan(ModelSource(f"random Mixtral x{layers}", args), rec, "resident", gpu,
                   context=context, prompt_tokens=prompt, kernel_copy=True)
    attn = rec.entries[0].spec
    experts = rec.entries[1].spec
    assert attn is not None and experts is not None
    torch.manual_seed(0)
    model = random_quantized_model(args, attn, experts, "cuda", torch.float16)
    model.setup_cache(context)
    enable_kernels(model, "cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, args.vocab_size, (prompt,), device="cuda")
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(ids[None], torch.arange(prompt, device="cuda"))[0, -1]
        token = logits.argmax()
        for i in range(new):
            logits = model(token.view(1, 1), torch.tensor([prompt + i], device="cuda"))[0, -1]
            token = logits.argmax()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated()
    free, total = torch.cuda.mem_get_info()
    used = total - free
    predicted_no_ctx = p.vram_total - p.vram["cuda context"]
    resident_pred = sum(p.vram[k] for k in ("weights", "meta", "kernel copy", "kv cache"))
    print(f"## {recipe}, {layers} Mixtral-8x7B layers, context {context}, prompt {prompt}, "
          f"{new} new tokens ({seconds:.1f} s)")
    print(f"gpu {gpu.name}: hbm {gpu.hbm_gbps} GB/s, h2d {gpu.h2d_gbps} GB/s, "
          f"cuda context {gpu.cuda_context_bytes / GB:.3f} GB")
    print("| quantity | predicted GB | measured GB | error |")
    print("|---|---|---|---|")
    rows = (("resident after load (weights, meta, packed copy, KV; torch allocated)",
             resident_pred, resident),
            ("peak during generation (torch max_memory_allocated) vs plan minus context",
             predicted_no_ctx, peak),
            ("device used after generation (mem_get_info, incl. context and cache slack)",
             p.vram_total, used))
    for name, pred, meas in rows:
        err = 100 * (pred - meas) / meas
        print(f"| {name} | {pred / GB:.3f} | {meas / GB:.3f} | {err:+.1f}% |")
    print("plan breakdown GB:", {k: round(v / GB, 3) for k, v in p.vram.items()})
    del model, logits
    torch.cuda.empty_cache()


def _main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--recipes", default="hqq-card,4bit-g64")
    a = parser.parse_args()
    for recipe in a.recipes.split(","):
        run(recipe, a.layers, a.context, a.prompt, a.new)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
