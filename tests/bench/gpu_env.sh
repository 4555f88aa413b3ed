# Sourced by every tests/bench/gpu_*.sh: the setup of a run on the lent GPU machine.
# - $OUT (default /tmp/mixdesk-gpu) made, unbuffered Python output;
# - the hqq wheels carried in .whl/ (build them here with /work/shared/tools/device-wheels.sh:
#   hqq 0.2.8.post1, termcolor) installed into /tmp/site;
# - the mixdesk namespace without installing the project (pyproject maps mixdesk.x to x/);
# - the GPU's name and memory, and the torch and triton versions, in $OUT/gpu.txt.
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
for pkg in kernels engine app resources; do ln -sfn "$PWD/$pkg" "/tmp/ns/mixdesk/$pkg"; done
export PYTHONPATH=/tmp/ns${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv \
    | tee "$OUT/gpu.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' \
    | tee -a "$OUT/gpu.txt"
