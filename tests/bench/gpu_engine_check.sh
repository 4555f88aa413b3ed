#!/bin/bash
# The GPU run of the engine's kernel path: `pytest -m gpu tests/engine`, then decode
# tok/s of the kernel path against the torch dequantize path on a random
# Mixtral-8x7B-shaped layer stack (`python -m mixdesk.engine.fastpath`).
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_engine_check.sh [fastpath args...]     (results under $OUT)
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
    timeout "${PYTEST_TIMEOUT:-300}" python3 -m pytest -m gpu tests/engine -q -s -p no:cacheprovider --continue-on-collection-errors \
        -o addopts="--strict-markers -ra" 2>&1 | tee "$OUT/pytest-engine-gpu.log" | tail -25
fi
timeout "${BENCH_TIMEOUT:-180}" python3 -m mixdesk.engine.fastpath "$@" 2>&1 \
    | tee "$OUT/fastpath-bench.log"
