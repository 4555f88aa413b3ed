# session 11, call 4: X8 for every axis-1 word of 8 lanes (4-bit g64 too) against XT, and the
# axis-1 tiles again with X8 (bash tests/bench/results/h100-s11-x8wide/run.sh on the device)
source tests/bench/gpu_env.sh
timeout 100 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels/test_gemv.py -k "mixtral_shapes or other_recipes or moe_decode_mixtral" 2>&1 | tail -2
timeout 150 python3 tests/bench/step_ab.py --axis 1 --variant xt:MIXDESK_X8_WIDE=0 --variant x8-wide: --out $OUT/step-axis1.json 2>&1 | grep -v Warn
timeout 150 python3 tests/bench/moe_sweep.py --axis 1 --lanes 1 --per-sm 4,8 --out $OUT/moe-sweep-axis1.json > $OUT/moe-sweep-axis1.log 2>&1; python3 -c "
import json; d=json.load(open('$OUT/moe-sweep-axis1.json')); print(d['default'], d['best_pair']); print(d['w13_top'][:3]); print(d['w2_top'][:3])"
timeout 150 python3 tests/bench/attn_sweep.py --axis 1 --out $OUT/attn-sweep-axis1.json 2>&1 | grep -v Warn | tail -4
