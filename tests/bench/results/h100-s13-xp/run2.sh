# Ran 2026-11-24: step at axis 1 4.0966 ms (X8) -> 3.7316 ms (XP at the new tiles), 54.6% -> 60.0% of the read floor; the re-sweep put the best pair at 88.2 us against the shipped 89.2 (not taken).
# session 13, second: the axis-1 MoE tiles from run.sh's sweep with XP in TUNED_MOE (w1/w3
# (32, 64, 4, prefetch, 4 a SM), w2 (64, 32, 4, prefetch, 8 a SM)); the decode step against X8
# at its shipped tiles (MIXDESK_XP=0 also took X8's tiles: a switch while this ran), then
# the MoE tiles swept again around them.
#   bash tests/bench/results/h100-s13-xp/run2.sh
source tests/bench/gpu_env.sh
timeout 170 python3 tests/bench/step_ab.py --axis 1 --rounds 5 --variant x8:MIXDESK_XP=0 --variant xp: --out $OUT/step2-axis1.json 2>&1 | grep -v Warn
timeout 300 python3 tests/bench/moe_sweep.py --axis 1 --tiles-13 32x64x4,64x32x4,16x64x4,32x32x4,64x64x4,32x128x4,64x64x8 --tiles-2 64x32x4,128x32x4,32x32x4,64x64x4,128x16x4,64x64x8 --per-sm 4,8,16 --out $OUT/moe-xp2.json 2>&1 | grep -v Warn | python3 -c "import json,sys; d=json.load(sys.stdin); print('XP', d['default']); print(d['best_pair']); [print(r) for r in d['w13_top'][:6]]; [print(r) for r in d['w2_top'][:6]]"
