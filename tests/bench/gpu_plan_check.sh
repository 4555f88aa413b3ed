#!/bin/bash
# The planner's VRAM prediction against the measured peak (tests/bench/gpu_plan_check.py).
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_plan_check.sh [--layers 8 --context 4096 --prompt 512 ...]
# Results under $OUT; the measured bandwidths land in $MIXDESK_HOME/hardware.json.
export MIXDESK_HOME=${MIXDESK_HOME:-/tmp/mixdesk-home}
source "$(dirname "$0")/gpu_env.sh"
timeout "${BENCH_TIMEOUT:-200}" python3 tests/bench/gpu_plan_check.py "$@" 2>&1 \
    | tee "$OUT/plan-check.log"
cp "$MIXDESK_HOME/hardware.json" "$OUT/" 2>/dev/null || true
