#!/bin/bash
# The GPU run of issue 5's offload engine: tests/engine/test_offload.py and the
# out-of-memory test on CUDA (pinned memory, copy stream, events; a real second allocation),
# then the offloaded-expert decode bench at the Mixtral-8x7B shape (card recipe):
# ms/token, hit rate and bytes over the bus per cache size, prefetch off and on.
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_offload_check.sh            (results under $OUT)
source "$(dirname "$0")/gpu_env.sh"
timeout "${PYTEST_TIMEOUT:-200}" python3 -m pytest -q -s -p no:cacheprovider \
    -o addopts="--strict-markers -ra" -W ignore \
    tests/engine/test_offload.py "tests/engine/test_out_of_memory.py::test_gpu_memory_taken_mid_answer" \
    2>&1 | tee "$OUT/pytest-offload.log" | tail -25
timeout "${BENCH_TIMEOUT:-300}" python3 -m mixdesk.engine.offload --out "$OUT/offload.json" \
    --layers "${LAYERS:-32}" --fractions "${FRACTIONS:-0.25,0.5,0.75}" 2>&1 \
    | tee "$OUT/offload.log" | tail -60
