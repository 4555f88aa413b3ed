# Ran 2026-11-24: axis 0 3.707 ms 269.7 tok/s 60.42% of the read floor, axis 1 3.767 ms 265.5 tok/s 59.40% (replays 3.743); hqq 21.6x / 21.2x.
# session 13: the final code (w2's axis-1 tile back at (64, 32, 4, prefetch, 8)) benched on the
# machine that ran h100-s13-final4/ just before, both axes with hqq in the same run.
#   bash tests/bench/results/h100-s13-final5/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
