# Ran 2026-11-24: 47 passed, 141 deselected in 163 s.
# session 14, final code: every GPU test of the kernels and of the engine's fast path.
#   bash tests/bench/results/h100-s14-final4/run.sh
source tests/bench/gpu_env.sh
timeout 500 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels tests/engine/test_fastpath_gpu.py 2>&1 | tail -4
