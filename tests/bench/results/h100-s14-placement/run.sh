# session 14: is the ~1% spread of the same code between processes where the weights land?
# Five processes on one machine at axis 1, each with a different pad allocated before the
# model (tests/bench/placement_probe.py), two of them with the same pad.
#   bash tests/bench/results/h100-s14-placement/run.sh
source tests/bench/gpu_env.sh
for pad in 0 0 1 333 2048; do
timeout 110 python3 tests/bench/placement_probe.py --axis 1 --pad-mb $pad --out $OUT/placement-$pad.json 2>&1 | grep '^{'
done
