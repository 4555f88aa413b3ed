# session 13: the final code (the greedy chain in the graph) benched again on a fresh machine,
# both axes with hqq in the same run (engine first).
#   bash tests/bench/results/h100-s13-greedy2/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
