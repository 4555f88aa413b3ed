# Ran 2026-11-24: axis 0 3.713 ms 269.3 tok/s 60.83% of the read floor, axis 1 3.765 ms 265.6 tok/s 59.94%; TTFT 0.140 / 0.144 s; hqq 23.0x / 22.7x; GPU MoE tests 2 passed.
# session 13, last: the final code (w2's axis-1 tile from h100-s13-tiles/) benched, both axes
# with hqq in the same run (engine first), then the GPU MoE tests.
#   bash tests/bench/results/h100-s13-final3/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels/test_gemv.py -k "moe_decode_mixtral" 2>&1 | tail -2
