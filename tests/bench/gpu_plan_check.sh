#!/bin/bash
# The planner's VRAM prediction against the measured peak (tests/bench/gpu_plan_check.py).
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_plan_check.sh [--layers 8 --context 4096 --prompt 512 ...]
# Results under $OUT; the measured bandwidths land in $MIXDESK_HOME/hardware.json.
set -uo pipefail
OUT=${OUT:-/tmp/mixdesk-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export MIXDESK_HOME=${MIXDESK_HOME:-/tmp/mixdesk-home}
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
# the mixdesk namespace without installing the project (pyproject maps mixdesk.x to x/)
mkdir -p /tmp/ns/mixdesk
for pkg in kernels engine; do ln -sfn "$PWD/$pkg" "/tmp/ns/mixdesk/$pkg"; done
export PYTHONPATH=/tmp/ns${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout "${BENCH_TIMEOUT:-200}" python3 tests/bench/gpu_plan_check.py "$@" 2>&1 \
    | tee "$OUT/plan-check.log"
cp "$MIXDESK_HOME/hardware.json" "$OUT/" 2>/dev/null || true
