# Ran 2026-11-24: smol-moe card 32/32 greedy tokens equal (kernels fp16 vs torch path fp16), KL 8.79e-4 (smolmoe-card.log); bench axis 0 3.646 ms 274.2 tok/s 61.84% of the read floor (replays 3.642), axis 1 3.724 ms 268.5 tok/s 60.49% (replays 3.711); read bandwidth 3081 GB/s; TTFT 0.155 / 0.175 s; hqq 25.8x / 25.2x. On this machine step_ab had put axis-1 replays at 3.671 ms (h100-s14-ab2/): the same code differs by ~1% between processes.
# session 14, final code (embed_norm, the dense lm_head, the host-ring readback, axis-1 w2 at
# (128, 32, 4)): smol-moe at the card recipe, 32 greedy tokens through the kernels against the
# torch dequant path (after `bash tests/bench/gpu_smolmoe_stage.sh` in the call before), then
# `mixdesk bench` of both axes with hqq's path.
#   bash tests/bench/results/h100-s14-final2/run.sh
source tests/bench/gpu_env.sh
bash tests/bench/gpu_smolmoe_check.sh 2>&1 | tail -6
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=280 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
