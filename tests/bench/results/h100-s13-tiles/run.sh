# Ran 2026-11-24: axis 1 shipped 3.7137 ms, w1/w3 (64, 64, 8) 3.7606, w2 (128, 32, 4, no prefetch) 3.7001 (taken), both 3.7558.
# session 13: the axis-1 MoE tiles the XP re-sweep ranked near the shipped ones, in the decode
# step (one process): w1/w3 (64, 64, 8) reads the prepared x half as often as (32, 64, 4); w2
# (128, 32, 4, no prefetch) was the sweep's best. MIXDESK_TILE_AB (NAME=ROWSxCOLSxWARPSxPREFETCHxPER_SM
# joined by +) was a switch in kernels/gemv.py while this ran.
#   bash tests/bench/results/h100-s13-tiles/run.sh
source tests/bench/gpu_env.sh
timeout 280 python3 tests/bench/step_ab.py --axis 1 --rounds 5 --variant shipped: --variant w13-64x64x8:MIXDESK_TILE_AB=w13=64x64x8x1x4 --variant w2-128x32x4:MIXDESK_TILE_AB=w2=128x32x4x0x4 --variant both:MIXDESK_TILE_AB=w13=64x64x8x1x4+w2=128x32x4x0x4 --out $OUT/step-tiles-axis1.json 2>&1 | grep -v Warn
