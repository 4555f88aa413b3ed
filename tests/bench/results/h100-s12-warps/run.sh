# Ran 2026-11-23: w1/w3 (2, 128, 1) 3.8010 -> 3.8122 ms a step (not kept); one-warp q/k/v and o swept 17.86 -> 16.73 us a layer.
# session 12: tiles as wide as a warp's 32 threads x 4 columns have no layout conversion in the
# loop (the [cols] meta-meta vectors load straight into the tile's columns; with 4 warps on 128
# columns each vector went through shared memory, 8 barriers a tile). First the MoE sweep with
# one- and two-warp tiles (moe_sweep_warps.json, run before this script):
#   python tests/bench/moe_sweep.py --axis 0 --lanes 4 --per-sm 8,16,32 \
#     --tiles-13 8x128x4,2x128x1,4x128x1,2x256x2,4x256x2 --tiles-2 32x64x4,8x64x1,16x64x1,16x128x2
# then this: the decode step with w1/w3 at (2, 128, 1) against (8, 128, 4) (MIXDESK_TILE_AB: a
# switch in kernels/gemv.py while this ran), and the q/k/v and o tiles swept with one warp.
#   bash tests/bench/results/h100-s12-warps/run.sh
source tests/bench/gpu_env.sh
timeout 170 python3 tests/bench/step_ab.py --axis 0 --rounds 5 --variant w13-8x128x4:MIXDESK_TILE_AB=w13-8x128x4 --variant w13-2x128x1: --out $OUT/step-axis0.json 2>&1 | grep -v Warn
timeout 300 python3 tests/bench/attn_sweep.py --axis 0 --tiles 8x128x4,4x256x4,2x128x1,4x128x1,8x128x1,1x256x2,2x256x2 --per-sm 4,8,16,32 --out $OUT/attn_sweep_warps.json 2>&1 | grep -v Warn | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['default']); print(d['best_pair']); [print(r) for r in d['qkv_top'][:5]]; [print(r) for r in d['o_top'][:5]]"
