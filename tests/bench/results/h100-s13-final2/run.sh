# Ran 2026-11-24: axis 0 3.691 ms 270.9 tok/s 61.28% of the read floor, axis 1 3.743 ms 267.2 tok/s 60.36%; TTFT 0.147 / 0.147 s; hqq 29.2x / 28.8x.
# session 13: the final code's `mixdesk bench` again, both axes with hqq in the same run
# (engine first), on a fresh machine.
#   bash tests/bench/results/h100-s13-final2/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
