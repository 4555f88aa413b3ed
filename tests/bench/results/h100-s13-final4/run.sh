# Ran 2026-11-24: axis 0 3.692 ms 270.9 tok/s 60.63% of the read floor, axis 1 3.757 ms 266.2 tok/s 59.52% (replays 3.750 ms, where step_ab read 3.698 ms for this code minutes before on the same machine); hqq 23.1x / 22.7x. The w2 tile went back to (64, 32, 4, prefetch, 8) after it.
# session 13: the final code (w2's axis-1 tile from h100-s13-tiles/, no act change) benched
# again, both axes with hqq in the same run (engine first).
#   bash tests/bench/results/h100-s13-final4/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=330 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{"
