#!/bin/bash
# The GPU run of issue 5's budgets: the streamed-expert tests on CUDA (pinned memory read by
# the fill kernel inside a CUDA graph), then the synthetic Mixtral-8x7B (card recipe) at
# each budget as the plan places it, budget enforced in the process, against the plan's
# VRAM and floor, and hqq 0.2.8's offload_meta path over the same step's matmuls.
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_budget_check.sh            (results under $OUT)
source "$(dirname "$0")/gpu_env.sh"
timeout "${PYTEST_TIMEOUT:-150}" python3 -m pytest -q -s -p no:cacheprovider \
    -o addopts="--strict-markers -ra" -W ignore \
    tests/engine/test_offload.py tests/kernels/test_gemv.py -k "fill_slots or stream or pinned" \
    2>&1 | tee "$OUT/pytest-budget.log" | tail -15
timeout "${BENCH_TIMEOUT:-420}" python3 -m mixdesk.engine.offload --out "$OUT/budgets.json" \
    --layers "${LAYERS:-32}" --budgets "${BUDGETS:-13.6,16,20,24,32}" --steps "${STEPS:-32}" \
    2>&1 | tee "$OUT/budgets.log" | grep -v "^ " | tail -40
