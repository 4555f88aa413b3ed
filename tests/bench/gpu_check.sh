#!/bin/bash
# The GPU run of the kernels: correctness at Mixtral shapes, then the benchmark.
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_check.sh [bench args...]     (results under $OUT)
source "$(dirname "$0")/gpu_env.sh"
if [ -z "${SKIP_PYTEST:-}" ]; then
    timeout "${PYTEST_TIMEOUT:-200}" python3 -m pytest -m gpu tests/kernels -q -p no:cacheprovider -o addopts="--strict-markers" \
        2>&1 | tee "$OUT/pytest-gpu.log" | tail -15
fi
timeout "${BENCH_TIMEOUT:-540}" python3 -m mixdesk.engine.bench --out "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
