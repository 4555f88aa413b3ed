#!/bin/bash
# The GPU run of issue 5's offload engine: tests/engine/test_offload.py and the
# out-of-memory test on CUDA (pinned memory, copy stream, events; a real second allocation),
# then the offloaded-expert decode bench at the Mixtral-8x7B shape (card recipe):
# ms/token, hit rate and bytes over the bus per cache size, prefetch off and on.
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_offload_check.sh            (results under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/mixdesk-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
mkdir -p /tmp/ns/mixdesk
for pkg in kernels engine app; do ln -sfn "$PWD/$pkg" "/tmp/ns/mixdesk/$pkg"; done
export PYTHONPATH=/tmp/ns${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout "${PYTEST_TIMEOUT:-200}" python3 -m pytest -q -s -p no:cacheprovider \
    -o addopts="--strict-markers -ra" -W ignore \
    tests/engine/test_offload.py "tests/engine/test_out_of_memory.py::test_gpu_memory_taken_mid_answer" \
    2>&1 | tee "$OUT/pytest-offload.log" | tail -25
timeout "${BENCH_TIMEOUT:-300}" python3 -m mixdesk.engine.offload --out "$OUT/offload.json" \
    --layers "${LAYERS:-32}" --fractions "${FRACTIONS:-0.25,0.5,0.75}" 2>&1 \
    | tee "$OUT/offload.log" | tail -60
