# Ran 2026-11-24: shipped 3.7329 ms, w2 128x32x4 (no prefetch, 4 a SM) 3.7268 (faster in each of 7 rounds; taken), act kernel 64 groups 3.7348, 32 groups 3.7326, 256 groups 3.7416 (not taken); logits equal to the bit.
# session 14: axis-1 knobs in the decode step, one process: w2 at (128, 32, 4, no prefetch,
# 4 a SM) (session 13's step_ab found it 13.6 us faster, its bench runs on other machines did
# not), and `_act_kernel` with fewer groups a program (64 or 32 of 8 in place of 128: more
# programs, less latency each). MIXDESK_TILE_AB and MIXDESK_ACT_AB were switches in
# kernels/gemv.py while this ran.
#   bash tests/bench/results/h100-s14-ab/run.sh
source tests/bench/gpu_env.sh
timeout 300 python3 tests/bench/step_ab.py --axis 1 --rounds 7 --variant shipped: --variant w2-128x32:MIXDESK_TILE_AB=w2=128x32x4x0x4 --variant act-64:MIXDESK_ACT_AB=64x2 --variant act-32:MIXDESK_ACT_AB=32x1 --variant act-256:MIXDESK_ACT_AB=256x8 --out $OUT/step-axis1.json 2>&1 | grep -v Warn
