#!/bin/bash
# The GPU run of issue 4's engine work, all at once: `pytest -m gpu` on the kernels
# (dequantize and MoE at Mixtral shapes) and the engine (decode graph vs eager, no host
# sync, generate's replays, kernels vs torch path), then `mixdesk bench` sections hqq and
# engine (TTFT of a 1024-token prompt, one-graph decode tok/s against the floor, peak VRAM,
# hqq 0.2.8 torch.compile over the same step's matmuls). MOE_SWEEP=1 sweeps moe_decode's tiles
# first (tests/bench/moe_sweep.py), ATTN_SWEEP=1 the q/k/v and o launches'; PREFILL_PROFILE=1
# times and profiles a 1024-token prefill (tests/bench/profile_prefill.py); PROFILE_LAYERS=N
# profiles the compiled step last. PYTEST_FILES and PYTEST_K pick the GPU tests; SWEEP_AXIS=1
# sweeps the axis-1 tiles, SWEEP_LANES the lanes per shift the MoE sweep tries (axis 0).
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_graph_check.sh [bench args...]     (results under $OUT)
source "$(dirname "$0")/gpu_env.sh"
if [ -z "${SKIP_PYTEST:-}" ]; then
    timeout "${PYTEST_TIMEOUT:-240}" python3 -m pytest -m gpu -q -s -p no:cacheprovider \
        -o addopts="--strict-markers -ra" -W ignore \
        ${PYTEST_FILES:-tests/kernels/test_gemv.py tests/kernels/test_attention.py \
        tests/kernels/test_router.py tests/engine/test_fastpath_gpu.py} \
        -k "${PYTEST_K:-dequantize or moe_decode_mixtral or attention or route or fastpath_gpu or offload}" 2>&1 \
        | tee "$OUT/pytest-gpu.log" | tail -40
fi
if [ -n "${ATTN_SWEEP:-}" ]; then  # the same for q, k, v and o (4-bit g64)
    timeout "${SWEEP_TIMEOUT:-240}" python3 tests/bench/attn_sweep.py --axis "${SWEEP_AXIS:-0}" --out "$OUT/attn_sweep.json" \
        2>&1 | tail -40 | tee "$OUT/attn_sweep.log"
fi
if [ -n "${MOE_SWEEP:-}" ]; then  # tiles, K split, prefetch and lanes per shift of moe_decode
    timeout "${SWEEP_TIMEOUT:-240}" python3 tests/bench/moe_sweep.py --axis "${SWEEP_AXIS:-0}" \
        --lanes "${SWEEP_LANES:-1,2,4}" --out "$OUT/moe_sweep.json" \
        2>&1 | tail -60 | tee "$OUT/moe_sweep.log"
fi
timeout "${BENCH_TIMEOUT:-330}" python3 -m mixdesk.engine.bench --out "$OUT/bench.json" \
    --sections "${SECTIONS:-hqq,engine}" "$@" 2>&1 | tee "$OUT/bench.log"
if [ -n "${PREFILL_PROFILE:-}" ]; then  # TTFT: the experts' grouping, kernel time vs wall
    timeout "${PROFILE_TIMEOUT:-120}" python3 tests/bench/profile_prefill.py 2>&1 \
        | tee "$OUT/prefill_profile.log"
fi
if [ -n "${PROFILE_LAYERS:-}" ]; then
    timeout "${PROFILE_TIMEOUT:-90}" python3 tests/bench/profile_decode.py --layers "$PROFILE_LAYERS" \
        2>&1 | tee "$OUT/profile.log" | head -12
fi
