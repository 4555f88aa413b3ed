# Ran 2026-11-24: GPU tests 37 passed; axis 0 3.695 ms 270.7 tok/s 61.33% of the read floor (replays 3.669 ms: 26 us between), axis 1 3.728 ms 268.3 tok/s 60.73% (replays 3.707: 21 us); TTFT 0.168 / 0.145 s; hqq 24.1x / 23.9x.
# session 13: the decode graph ends with its logits' argmax written into its token buffer and
# pos advanced; greedy decoding hands that token back (DecodeGraph.greedy_token), so nothing is
# launched between replays but the id's readback. GPU tests of the engine and kernels, then
# `mixdesk bench` of both axes with hqq (per token against replays back to back: the gap was
# 40 us at axis 0 and 33 us at axis 1 in h100-s13-final/).
#   bash tests/bench/results/h100-s13-greedy/run.sh
source tests/bench/gpu_env.sh
timeout 230 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels tests/engine/test_fastpath_gpu.py -k "dequantize or moe_decode_mixtral or attention or route or fastpath_gpu or lane_major or mixtral_shapes or prepared" 2>&1 | tail -3
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
