# Ran 2026-11-24: GPU tests 14 passed; bench axis 0 3.657 ms a token, replays 3.655 (gap 2 us, 15 before), 273.4 tok/s, 61.42% of the read floor; axis 1 3.694 ms, replays 3.681 (gap 13 us, 17 before), 270.7 tok/s, 60.74%; read bandwidth 3093 GB/s; TTFT 0.131 / 0.137 s; hqq 22.0x / 21.8x.
# session 14: the greedy token read back without a copy launch between replays (greedy_next
# writes it into a ring of pinned host memory; DecodeGraph.greedy_written,
# TokenReadback.start(written=)). GPU tests of greedy_next, the readback and the engine's fast
# path, then `mixdesk bench` of both axes (decode a token against replays back to back).
#   bash tests/bench/results/h100-s14-ring/run.sh
source tests/bench/gpu_env.sh
timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels/test_greedy.py tests/kernels/test_dense.py tests/engine/test_fastpath_gpu.py 2>&1 | tail -4
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=280 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
