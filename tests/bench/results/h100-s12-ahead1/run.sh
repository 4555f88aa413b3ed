# Ran 2026-11-23 (session 12): 4.1143 -> 4.1049 ms at axis 1; ahead kept at both axes, the switch removed.
# session 12: attention's loads ahead of the PDL wait at axis 1 again, now that the o GEMV reads
# the attention's output lane-major with no copy between (MIXDESK_ATTN_AHEAD1=1: a switch in
# kernels/attention.py while this ran), then the bench of both axes with hqq in the same run.
#   bash tests/bench/results/h100-s12-ahead1/run.sh
source tests/bench/gpu_env.sh
timeout 150 python3 tests/bench/step_ab.py --axis 1 --rounds 5 --variant wait: --variant ahead:MIXDESK_ATTN_AHEAD1=1 --out $OUT/step-axis1.json 2>&1 | grep -v Warn
