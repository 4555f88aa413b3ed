# Ran 2026-11-24: axis 0 3.697 ms 270.5 tok/s 60.95% of the read floor (replays 3.677), axis 1 3.733 ms 267.9 tok/s 60.29% (replays 3.711); TTFT 0.128 / 0.169 s; hqq 21.7x / 21.5x.
# session 13: the final code (the greedy chain in the graph) benched again on a fresh machine,
# both axes with hqq in the same run (engine first).
#   bash tests/bench/results/h100-s13-greedy2/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
