# Ran 2026-11-24: GPU MoE tests 18 passed; MoE at the shipped tiles apart 88.1 us, fused 89.6 us (best fused w1/w3 tile 32x64x4, 87.7 us); decode step at axis 1 apart 3.6987 ms, fused 3.8651 ms: not kept (code reverted). Its logits differed from the apart graph by 0.99 (relative), as any change of arithmetic does on the synthetic model (PERFORMANCE.md, on step_ab.py's logits column); the fused launch passed its interpreter tests and the GPU MoE-graph test.
# session 14: at axis 1 the w1/w3 launch writes w2's input itself (PAIR: a program takes rows of
# both w1 and w3, silu(h1) * h3 * w stored prepared, the groups' sums by atomics) in place of
# `_act_kernel`'s launch. MIXDESK_FUSE_ACT=0 (a switch in kernels/gemv.py while this ran) keeps
# the launch. GPU MoE tests, the MoE both ways at the shipped tiles, the w1/w3 tiles swept
# fused, then the decode step both ways in one process.
#   bash tests/bench/results/h100-s14-fuse/run.sh
source tests/bench/gpu_env.sh
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels/test_gemv.py -k "moe_decode_mixtral or mixtral_shapes" 2>&1 | tail -3
summ='import json,sys; d=json.load(sys.stdin); print(d["default"]); print(d["best_pair"]); [print(r) for r in d["w13_top"][:6]]; [print(r) for r in d["w2_top"][:4]]'
MIXDESK_FUSE_ACT=0 timeout 60 python3 tests/bench/moe_sweep.py --axis 1 --tiles-13 32x64x4 --tiles-2 64x32x4 --per-sm 4 --out $OUT/moe-apart.json 2>&1 | grep -v Warn | python3 -c "$summ"
timeout 240 python3 tests/bench/moe_sweep.py --axis 1 --tiles-13 32x64x4,64x64x4,16x128x4,64x32x4,32x128x4,64x64x8,128x32x4 --tiles-2 64x32x4,128x32x4 --per-sm 4,8 --out $OUT/moe-fused.json 2>&1 | grep -v Warn | python3 -c "$summ"
timeout 200 python3 tests/bench/step_ab.py --axis 1 --rounds 5 --variant apart:MIXDESK_FUSE_ACT=0 --variant fused: --out $OUT/step-axis1.json 2>&1 | grep -v Warn
