# Ran 2026-11-24: 47 passed, 141 deselected in 154 s (pytest.txt).
# session 14, final code: the GPU tests of the kernels (Mixtral shapes: GEMVs, MoE graphs,
# attention, router and embed_norm, the lm_head's dense GEMV, greedy) and of the engine's fast
# path (greedy 32 tokens kernels against torch, no host sync in a step, graph against eager).
#   bash tests/bench/results/h100-s14-final/run2.sh
source tests/bench/gpu_env.sh
timeout 500 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels tests/engine/test_fastpath_gpu.py 2>&1 | tail -4
