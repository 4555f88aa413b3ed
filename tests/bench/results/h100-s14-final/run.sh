# Ran 2026-11-24: axis 0 3.667 ms 272.7 tok/s 61.62% of the read floor (replays 3.652), axis 1 3.707 ms 269.7 tok/s 60.89% (replays 3.690); read bandwidth 3075 GB/s; TTFT 0.166 / 0.134 s; hqq torch.compile 27.5x / 27.2x; peak VRAM 25.57 GB.
# session 14, final code: the step start in one launch (router.embed_norm), the lm_head as
# kernels.dense. `mixdesk bench` of both axes with hqq's path in the same run.
#   bash tests/bench/results/h100-s14-final/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
