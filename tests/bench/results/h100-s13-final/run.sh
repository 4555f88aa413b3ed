# Ran 2026-11-24: axis 0 3.703 ms 270.0 tok/s 60.72% of the read floor, axis 1 3.733 ms 267.9 tok/s 60.18%; TTFT 0.18 / 0.15 s; hqq 25.9x / 25.7x; GPU tests 37 passed.
# session 13, last: the final code (switches removed): `mixdesk bench` of both axes with hqq in
# the same run (engine first), then the GPU tests of the kernels and the engine.
#   bash tests/bench/results/h100-s13-final/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
timeout 230 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels tests/engine/test_fastpath_gpu.py -k "dequantize or moe_decode_mixtral or attention or route or fastpath_gpu or lane_major or mixtral_shapes or prepared" 2>&1 | tail -3
