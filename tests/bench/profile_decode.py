"""Where a one-graph decode step spends its time: torch.profiler over graph replays of
the synthetic Mixtral-8x7B (engine.bench.synthetic_mixtral), kernels grouped by name.

    python tests/bench/profile_decode.py [--layers 8] [--context 4096] [--axis 0] [--plain]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from mixdesk.engine.bench import synthetic_mixtral
from mixdesk.engine.fastpath import DecodeGraph

# kernels/attention.py and kernels/router.py: the step's small kernels of our own
OUR_SMALL_KERNELS = {"_attention_kernel", "_route_kernel", "_greedy_kernel"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--axis", type=int, default=0)
    parser.add_argument("--replays", type=int, default=5)
    parser.add_argument("--plain", action="store_true", help="do not torch.compile the glue")
    args = parser.parse_args()
    model = synthetic_mixtral(args.layers, args.context, args.axis)
    graph = DecodeGraph(torch.device("cuda"), compile_glue=not args.plain)
    token = torch.tensor([7], device="cuda")
    with torch.inference_mode():
        model(torch.randint(0, 32000, (1, 64), device="cuda"), torch.arange(64, device="cuda"))
        graph.step(model, token, 64)
        assert graph.graph is not None
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.replays):
                graph.graph.replay()
            torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    total = sum(e.device_time for e in events) / args.replays
    groups: dict[str, list[float]] = {}
    for e in events:
        name = e.name
        key = ("gemv/moe (Triton)" if "_gemv_" in name else
               "attention, rope, router (Triton)" if name in OUR_SMALL_KERNELS else
               "memset" if "memset" in name.lower() or "fill" in name.lower() else
               "gemm (cuBLAS)" if "gemm" in name.lower() or "nvjet" in name else
               "compiled glue (inductor)" if name.startswith("triton_") else
               "elementwise/reduce/index (torch)")
        groups.setdefault(key, []).append(e.device_time)
    print(f"{args.layers} layers, axis {args.axis}, context {args.context}, glue compiled "
          f"{graph.compiled}: "
          f"{len(events) / args.replays:.0f} kernels a step, {total / 1e3:.3f} ms of kernel time "
          "a step (sum of kernel durations)")
    print("| group | kernels a step | ms a step | mean us a kernel |")
    print("|---|---|---|---|")
    for key, times in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        n = len(times) / args.replays
        print(f"| {key} | {n:.0f} | {sum(times) / args.replays / 1e3:.3f} | "
              f"{sum(times) / len(times):.1f} |")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        graph.graph.replay()
    end.record()
    end.synchronize()
    print(f"replay wall (events): {start.elapsed_time(end) / 20:.3f} ms a step")


if __name__ == "__main__":
    main()
