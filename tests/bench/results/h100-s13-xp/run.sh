# Ran 2026-11-24: MoE at the shipped tiles X8 97.0 us, XP 120.6 us (w2 16x128x4 slow with XP); XP sweep best 87.5 us (w13 32x64x4 split 1, w2 64x32x4 split 9); step 4.081 (X8) vs 4.780 ms (XP, X8 tiles); GPU kernel tests: 1 failed (act kernel used a non-constexpr global; fixed), then 18 passed.
# session 13: x prepared for the axis-1 experts (XP: 8 lanes scaled so 4 share a shift, the
# groups' sums and each dot's start written by the kernel before) against reading it as int64
# words (X8; MIXDESK_XP=0, a switch in kernels/gemv.py while this ran). MoE at the shipped
# tiles both ways, the axis-1 MoE tiles re-swept with XP, the decode step both ways in one
# process, then the GPU kernel tests.
#   bash tests/bench/results/h100-s13-xp/run.sh
source tests/bench/gpu_env.sh
MIXDESK_XP=0 timeout 60 python3 tests/bench/moe_sweep.py --axis 1 --tiles-13 64x32x4 --tiles-2 16x128x4 --per-sm 8 --out $OUT/moe-x8.json 2>&1 | grep -v Warn | python3 -c "import json,sys; d=json.load(sys.stdin); print('X8', d['default'])"
timeout 150 python3 tests/bench/step_ab.py --axis 1 --rounds 5 --variant x8:MIXDESK_XP=0 --variant xp: --out $OUT/step-axis1.json 2>&1 | grep -v Warn
timeout 220 python3 tests/bench/moe_sweep.py --axis 1 --tiles-13 64x32x4,32x64x4,128x32x4,32x32x4,16x128x4 --tiles-2 16x128x4,32x64x4,64x32x4,128x32x4 --per-sm 4,8,16 --out $OUT/moe-xp.json 2>&1 | grep -v Warn | python3 -c "import json,sys; d=json.load(sys.stdin); print('XP', d['default']); print(d['best_pair']); [print(r) for r in d['w13_top'][:5]]; [print(r) for r in d['w2_top'][:5]]"
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels/test_gemv.py -k "moe_decode_mixtral or mixtral_shapes" 2>&1 | tail -3
