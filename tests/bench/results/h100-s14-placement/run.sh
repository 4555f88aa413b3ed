# Ran 2026-11-24: axis-1 replays by process, in run order: pad 0 3.671 ms, pad 0 3.708, pad 1 MB 3.724, pad 333 MB 3.722, pad 2048 MB 3.725 (rounds inside a process within 0.012 ms). Two processes with the same pad differ by 1%, and the time rises over the first three processes and then stays: the warming GPU, not where the weights land.
# session 14: is the ~1% spread of the same code between processes where the weights land?
# Five processes on one machine at axis 1, each with a different pad allocated before the
# model (tests/bench/placement_probe.py), two of them with the same pad.
#   bash tests/bench/results/h100-s14-placement/run.sh
source tests/bench/gpu_env.sh
for pad in 0 0 1 333 2048; do
timeout 110 python3 tests/bench/placement_probe.py --axis 1 --pad-mb $pad --out $OUT/placement-$pad.json 2>&1 | grep '^{'
done
