#!/bin/bash
# The unmasked GEMV loads (kernels/gemv.py `whole_tiles`) on the lent GPU, in one call: the GPU
# tests of the kernels and the engine, the MoE and attention launches masked and unmasked
# (tests/bench/gemv_variants.py, both axes), `mixdesk bench` (hqq and engine, both axes) on
# the default code, then the engine at axis 0 again with MIXDESK_GEMV_MASKED=1. Results
# under $OUT.   bash tests/bench/gpu_masks_check.sh
source "$(dirname "$0")/gpu_env.sh"
if [ -z "${SKIP_PYTEST:-}" ]; then
    timeout "${PYTEST_TIMEOUT:-200}" python3 -m pytest -m gpu -q -p no:cacheprovider \
        -o addopts="--strict-markers -ra" -W ignore tests/kernels tests/engine/test_fastpath_gpu.py \
        2>&1 | tee "$OUT/pytest-gpu.log" | tail -4
fi
for axis in ${VARIANT_AXES:-0 1}; do
    timeout 120 python3 tests/bench/gemv_variants.py --axis $axis --out "$OUT/variants-axis$axis.json" \
        2>&1 | tail -4
done
timeout "${BENCH_TIMEOUT:-240}" python3 -m mixdesk.engine.bench --out "$OUT/bench.json" \
    --sections "${SECTIONS:-hqq,engine}" --axes 0,1 2>&1 | tee "$OUT/bench.log" | tail -4
MIXDESK_GEMV_MASKED=1 timeout 150 python3 -m mixdesk.engine.bench --out "$OUT/bench-masked.json" \
    --sections engine --axes 0 2>&1 | tee "$OUT/bench-masked.log" | tail -2
