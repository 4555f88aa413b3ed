# session 14, final code (embed_norm, the dense lm_head, the host-ring readback, axis-1 w2 at
# (128, 32, 4)): smol-moe at the card recipe, 32 greedy tokens through the kernels against the
# torch dequant path (after `bash tests/bench/gpu_smolmoe_stage.sh` in the call before), then
# `mixdesk bench` of both axes with hqq's path.
#   bash tests/bench/results/h100-s14-final2/run.sh
source tests/bench/gpu_env.sh
bash tests/bench/gpu_smolmoe_check.sh 2>&1 | tail -6
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=280 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
