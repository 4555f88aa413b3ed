#!/bin/bash
# The GPU run of the kernels: correctness at Mixtral shapes, then the benchmark.
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_check.sh [bench args...]     (results under $OUT)
# Builds .whl here first with /work/shared/tools/device-wheels.sh (hqq 0.2.8.post1, termcolor).
set -uo pipefail
OUT=${OUT:-/tmp/mixdesk-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
# the mixdesk namespace without installing the project (pyproject maps mixdesk.x to x/)
mkdir -p /tmp/ns/mixdesk
for pkg in kernels engine; do ln -sfn "$PWD/$pkg" "/tmp/ns/mixdesk/$pkg"; done
export PYTHONPATH=/tmp/ns${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv \
    | tee "$OUT/gpu.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' \
    | tee -a "$OUT/gpu.txt"
if [ -z "${SKIP_PYTEST:-}" ]; then
    timeout "${PYTEST_TIMEOUT:-200}" python3 -m pytest -m gpu tests/kernels -q -p no:cacheprovider -o addopts="--strict-markers" \
        2>&1 | tee "$OUT/pytest-gpu.log" | tail -15
fi
timeout "${BENCH_TIMEOUT:-540}" python3 -m mixdesk.engine.bench --out "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
