"""Where a 1024-token prefill of the synthetic Mixtral-8x7B spends its time, and what the
experts' grouping costs: `engine.model.group_by_expert` (one host read of the counts a
layer) against the grouping it replaced (`torch.where` per expert: a host read per expert),
each timed as `mixdesk bench` times TTFT (wall clock, median of 9), then torch.profiler over
two prefills of the new grouping: the sum of kernel durations against the wall clock (the
rest is the GPU waiting for the host), kernels grouped by name, host syncs counted.

    python tests/bench/profile_prefill.py [--layers 32] [--prompt 1024] [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from mixdesk.engine import model as engine_model
from mixdesk.engine.bench import synthetic_prompt


def where_per_expert(chosen: Tensor, n_experts: int) -> engine_model.ExpertGroups:  # noqa: ARG001
    """The grouping before group_by_expert: `unique` and a `torch.where` per expert (a host
    read of its count each), the same groups."""
    rows, slots, spans, start = [], [], [], 0
    for e in chosen.unique().tolist():
        slot, row = torch.where(chosen.T == e)
        rows.append(row)
        slots.append(slot)
        spans.append((e, start, start + len(row)))
        start += len(row)
    return engine_model.ExpertGroups(torch.cat(rows), torch.cat(slots), spans)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    model, tokens, positions = synthetic_prompt(args.layers, args.prompt)
    new = engine_model.group_by_expert

    def prefill() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        int(model(tokens, positions)[0, -1].argmax().item())
        return time.perf_counter() - start

    with torch.inference_mode():
        prefill()  # compiles the dequantize kernel, warms cuBLAS
        for name, grouping in (("group_by_expert", new), ("torch.where per expert",
                                                          where_per_expert),
                               ("group_by_expert again", new)):
            engine_model.group_by_expert = grouping  # MoE.run_experts looks it up per call
            times = sorted(prefill() for _ in range(args.runs))
            print(f"{args.layers} layers, prompt {args.prompt}, {name}: median "
                  f"{1e3 * statistics.median(times):.1f} ms (min {1e3 * times[0]:.1f}, max "
                  f"{1e3 * times[-1]:.1f})", flush=True)
        engine_model.group_by_expert = new
        walls = []
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                walls.append(prefill())
    events = prof.events()
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    syncs = [e for e in events if e.device_type.name == "CPU" and e.name in (
        "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync")]
    busy = sum(e.device_time for e in kernels) / 2 / 1e3
    print(f"profiled (2 prefills): wall {1e3 * statistics.mean(walls):.1f} ms, kernel time "
          f"{busy:.1f} ms a prefill ({len(kernels) / 2:.0f} kernels), host syncs and copies "
          f"{len(syncs) / 2:.0f} a prefill")
    groups: dict[str, list[float]] = {}
    for e in kernels:
        name = e.name
        key = ("dequantize (Triton)" if "_dequant" in name else
               "gemm (cuBLAS)" if "gemm" in name.lower() or "nvjet" in name else
               "attention (sdpa)" if "flash" in name.lower() or "attention" in name.lower() else
               "sort, bincount, index" if any(s in name.lower() for s in (
                   "sort", "bincount", "index", "gather", "scatter", "nonzero")) else
               "elementwise/reduce (torch)")
        groups.setdefault(key, []).append(e.device_time)
    print("| group | kernels a prefill | ms a prefill |")
    print("|---|---|---|")
    for key, times in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {key} | {len(times) / 2:.0f} | {sum(times) / 2 / 1e3:.2f} |")


if __name__ == "__main__":
    main()
