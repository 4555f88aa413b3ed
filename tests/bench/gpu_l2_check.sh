#!/bin/bash
# L2 prefetch ahead of the GEMVs' loads (kernels/gemv.py `_ahead`, Config.l2_ahead), measured
# three ways on the lent GPU: moe_decode's shipped tiles at each pair of distances
# (moe_sweep.py --l2), q/k/v and o likewise plus one layer read hot from L2 (attn_sweep.py
# --l2), then the whole decode step (`mixdesk bench --sections engine`) once per distance in
# L2_BENCH with MIXDESK_L2_AHEAD set. AXES picks the axes (default 0). Results under $OUT.
#   bash tests/bench/gpu_l2_check.sh [bench args...]
source "$(dirname "$0")/gpu_env.sh"
for axis in ${AXES:-0}; do
    timeout "${SWEEP_TIMEOUT:-150}" python3 tests/bench/moe_sweep.py --axis "$axis" \
        --l2 "${L2_SWEEP:-0,2,4,8}" --out "$OUT/moe_l2_axis$axis.json" 2>&1 | tail -4
    timeout "${SWEEP_TIMEOUT:-150}" python3 tests/bench/attn_sweep.py --axis "$axis" \
        --l2 "${L2_SWEEP_ATTN:-0,2,4}" --out "$OUT/attn_l2_axis$axis.json" 2>&1 | tail -4
done
for d in ${L2_BENCH:-}; do
    for axis in ${AXES:-0}; do
        MIXDESK_L2_AHEAD=$d timeout "${BENCH_TIMEOUT:-200}" python3 -m mixdesk.engine.bench \
            --out "$OUT/bench-l2-$d-axis$axis.json" --sections engine --axes "$axis" "$@" 2>&1 \
            | tee "$OUT/bench-l2-$d-axis$axis.log" | tail -6
    done
done
