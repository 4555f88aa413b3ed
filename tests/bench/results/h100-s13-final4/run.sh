# session 13: the final code (w2's axis-1 tile from h100-s13-tiles/, no act change) benched
# again, both axes with hqq in the same run (engine first).
#   bash tests/bench/results/h100-s13-final4/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
