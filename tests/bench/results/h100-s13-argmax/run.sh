# Ran 2026-11-24: the pytest line ran past its 230 s (no summary; rerun alone: pytest.txt, 14 passed: the greedy kernel at 32000 in three dtypes, every test of test_fastpath_gpu.py, the MoE graphs); bench axis 0 3.682 ms 271.6 tok/s 61.23% of the read floor (replays 3.655), axis 1 3.721 ms 268.8 tok/s 60.53% (replays 3.712); TTFT 0.131 / 0.164 s; hqq 24.2x / 24.0x.
# session 13: the decode graph's greedy end in one Triton launch (kernels.greedy.greedy_next:
# argmax into the token buffer and pos + 1) in place of torch's argmax reduction (10.9 us a
# step), copy and add. GPU tests, then `mixdesk bench` of both axes with hqq.
#   bash tests/bench/results/h100-s13-argmax/run.sh
source tests/bench/gpu_env.sh
timeout 230 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels tests/engine/test_fastpath_gpu.py -k "dequantize or moe_decode_mixtral or attention or route or fastpath_gpu or lane_major or mixtral_shapes or prepared or greedy" 2>&1 | tail -3
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
