#!/bin/bash
# The GPU run of the engine's kernel path: `pytest -m gpu tests/engine`, then decode
# tok/s of the kernel path against the torch dequantize path on a random
# Mixtral-8x7B-shaped layer stack (`python -m mixdesk.engine.fastpath`).
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_engine_check.sh [fastpath args...]     (results under $OUT)
source "$(dirname "$0")/gpu_env.sh"
if [ -z "${SKIP_PYTEST:-}" ]; then
    timeout "${PYTEST_TIMEOUT:-300}" python3 -m pytest -m gpu tests/engine -q -s -p no:cacheprovider --continue-on-collection-errors \
        -o addopts="--strict-markers -ra" 2>&1 | tee "$OUT/pytest-engine-gpu.log" | tail -25
fi
timeout "${BENCH_TIMEOUT:-180}" python3 -m mixdesk.engine.fastpath "$@" 2>&1 \
    | tee "$OUT/fastpath-bench.log"
