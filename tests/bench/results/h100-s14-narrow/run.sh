# Ran 2026-11-24: one- and two-warp tiles at axis 1 are slower: q/k/v and o 17.46 us a layer shipped against 33.65 at the best narrow pair (q/k/v alone 25.6 us at 8x32x1); the MoE 88.8 us shipped, 89.7 at the best narrow pair (w1/w3 8x128x1, w2 32x32x2). Nothing taken.
# session 14: one- and two-warp tiles at axis 1, where the [cols] vectors (meta-meta, and x:
# lane-major for q/k/v and o, prepared for the experts) would load straight into a warp's
# columns (session 12 found this at axis 0: q/k/v and o 17.86 -> 16.73 us a layer). PART=attn:
# q/k/v and o (attn_sweep.py --axis 1); PART=moe: w1/w3 and w2 (moe_sweep.py --axis 1).
#   PART=attn bash tests/bench/results/h100-s14-narrow/run.sh
source tests/bench/gpu_env.sh
if [ "$PART" = attn ]; then
timeout 560 python3 tests/bench/attn_sweep.py --axis 1 --tiles 8x32x1,16x32x1,8x64x1,16x64x1,16x64x2 --per-sm 8,16 --out $OUT/attn-axis1.json 2>&1 | grep -v Warn | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["default"]); print(d["best_pair"]); [print(r) for r in d["qkv_top"][:5]]; [print(r) for r in d["o_top"][:5]]'
else
timeout 560 python3 tests/bench/moe_sweep.py --axis 1 --tiles-13 8x64x1,16x64x1,8x128x1,16x64x2,32x64x2 --tiles-2 16x32x1,32x32x1,8x64x1,32x32x2,64x32x2 --per-sm 8,16 --out $OUT/moe-axis1.json 2>&1 | grep -v Warn | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["default"]); print(d["best_pair"]); [print(r) for r in d["w13_top"][:5]]; [print(r) for r in d["w2_top"][:5]]'
fi
