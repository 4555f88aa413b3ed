# Ran 2026-11-24: act launch 3.6984 ms, act computed in w2 (_act_prepared) 3.8674 ms: not kept (code reverted); GPU MoE tests 2 passed.
# session 13: w2 at axis 1 computing its own prepared input from h before its loop (each
# program its column range: _act_prepared) against the act launch before it
# (MIXDESK_ACT_LAUNCH=1, a switch in kernels/gemv.py while this ran), in the decode step, one
# process; then the MoE at Mixtral size in a CUDA graph against the reference.
#   bash tests/bench/results/h100-s13-tiles/run2.sh
source tests/bench/gpu_env.sh
timeout 200 python3 tests/bench/step_ab.py --axis 1 --rounds 5 --variant act-launch:MIXDESK_ACT_LAUNCH=1 --variant act-in-w2: --out $OUT/step-act-axis1.json 2>&1 | grep -v Warn
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels/test_gemv.py -k "moe_decode_mixtral" 2>&1 | tail -2
