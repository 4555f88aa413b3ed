# session 14, final code: the step start in one launch (router.embed_norm), the lm_head as
# kernels.dense. `mixdesk bench` of both axes with hqq's path in the same run.
#   bash tests/bench/results/h100-s14-final/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
