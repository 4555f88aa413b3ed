# Ran 2026-11-24: run 1 axis 0 3.660 ms 273.2 tok/s 61.80%, axis 1 3.725 ms 268.4 tok/s 60.66% (read bandwidth 3072 GB/s); run 2 axis 0 3.660 ms 61.39%, axis 1 3.725 ms 268.5 tok/s 60.25% (3093 GB/s); TTFT 0.18 / 0.17 and 0.13 / 0.15 s.
# session 14, final code, `mixdesk bench` of both axes twice in a row (two processes): the
# same code measured ~1% apart between processes on one machine (h100-s14-ab2/ against
# h100-s14-final2/), so more than one draw of the final code.
#   bash tests/bench/results/h100-s14-final3/run.sh
source tests/bench/gpu_env.sh
for run in 1 2; do
SKIP_PYTEST=1 SECTIONS=engine BENCH_TIMEOUT=200 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{" | grep -v "^name\|^NVIDIA\|^torch"
cp $OUT/bench.json $OUT/bench$run.json
done
