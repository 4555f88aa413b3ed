# Ran 2026-11-24 (another machine): shipped 3.6709 ms; w1/w3 32x64x4 prefetch 8 a SM 3.6748, 64x32x4 3.9097, 16x64x4 3.9006, 32x64x4 no prefetch 3.7641; w2 128x32x4 no prefetch 8 a SM 3.7592, with prefetch 3.7067, 256x32x8 4.3159, 128x16x4 4.2514. The shipped pair is the fastest; nothing changed.
# session 14: the axis-1 MoE tiles near the shipped ones, in the decode step (one process),
# since isolated sweeps and the step disagree by a few us: w1/w3 around (32, 64, 4, prefetch,
# 4 a SM), w2 around (128, 32, 4, no prefetch, 4 a SM). MIXDESK_TILE_AB
# (NAME=ROWSxCOLSxWARPSxPREFETCHxPER_SM) was a switch in kernels/gemv.py while this ran.
#   bash tests/bench/results/h100-s14-ab2/run.sh
source tests/bench/gpu_env.sh
timeout 500 python3 tests/bench/step_ab.py --axis 1 --rounds 5 --variant shipped: --variant w13-32x64x4x1x8:MIXDESK_TILE_AB=w13=32x64x4x1x8 --variant w13-64x32x4x1x4:MIXDESK_TILE_AB=w13=64x32x4x1x4 --variant w13-16x64x4x1x4:MIXDESK_TILE_AB=w13=16x64x4x1x4 --variant w13-32x64x4x0x4:MIXDESK_TILE_AB=w13=32x64x4x0x4 --variant w2-128x32x4x0x8:MIXDESK_TILE_AB=w2=128x32x4x0x8 --variant w2-128x32x4x1x4:MIXDESK_TILE_AB=w2=128x32x4x1x4 --variant w2-256x32x8x0x4:MIXDESK_TILE_AB=w2=256x32x8x0x4 --variant w2-128x16x4x0x4:MIXDESK_TILE_AB=w2=128x16x4x0x4 --out $OUT/step-axis1.json 2>&1 | grep -v Warn
