#!/bin/bash
# The GPU run of issue 4's engine work, all at once: `pytest -m gpu` on the kernels
# (dequantize and MoE at Mixtral shapes) and the engine (decode graph vs eager, no host
# sync, generate's replays, kernels vs torch path), then `mixdesk bench` sections hqq and
# engine (TTFT of a 1024-token prompt, one-graph decode tok/s against the floor, peak VRAM,
# hqq 0.2.8 torch.compile over the same step's matmuls).
# On the lent machine, from the repo root, with the hqq wheels carried in .whl/:
#   bash tests/bench/gpu_graph_check.sh [bench args...]     (results under $OUT)
# Build .whl here first with /work/shared/tools/device-wheels.sh (hqq 0.2.8.post1, termcolor).
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
    timeout "${PYTEST_TIMEOUT:-240}" python3 -m pytest -m gpu -q -s -p no:cacheprovider \
        -o addopts="--strict-markers -ra" -W ignore \
        tests/kernels/test_gemv.py tests/engine/test_fastpath_gpu.py \
        -k "${PYTEST_K:-dequantize or moe_decode_mixtral or fastpath_gpu}" 2>&1 \
        | tee "$OUT/pytest-gpu.log" | tail -40
fi
timeout "${BENCH_TIMEOUT:-330}" python3 -m mixdesk.engine.bench --out "$OUT/bench.json" \
    --sections "${SECTIONS:-hqq,engine}" "$@" 2>&1 | tee "$OUT/bench.log"
if [ -n "${PROFILE_LAYERS:-}" ]; then
    timeout "${PROFILE_TIMEOUT:-90}" python3 tests/bench/profile_decode.py --layers "$PROFILE_LAYERS" \
        2>&1 | tee "$OUT/profile.log" | head -12
fi
