# Ran 2026-11-24: axis 1 alone 3.765 ms 265.6 tok/s 59.87% of the read floor (replays 3.760); axis 0 alone 3.699 ms 270.3 tok/s 60.48%.
# session 13: on the machine of h100-s13-final4/ and final5/ (axis 1 at 59.5% and 59.4% when
# measured after axis 0 in one process), each axis alone in its own process, axis 1 first.
#   bash tests/bench/results/h100-s13-order/run.sh
source tests/bench/gpu_env.sh
for axis in 1 0; do
    timeout 150 python3 -m mixdesk.engine.bench --sections engine --axes $axis --out $OUT/bench-axis$axis.json 2>&1 | grep -E "^[01] \||HBM"
done
