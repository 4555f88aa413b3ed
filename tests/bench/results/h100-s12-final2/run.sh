# Ran 2026-11-23: axis 0 3.705 ms 269.9 tok/s 60.81% of the read floor, axis 1 4.127 ms 54.54%; hqq 27.6x / 24.8x. The axis-1 sweep after it ran out of its 200 s (no result).
# session 12, last run: the bench of both axes with hqq in the same run (engine first), then the
# axis-1 q/k/v and o tiles swept with one-warp tiles (x given lane-major).
#   bash tests/bench/results/h100-s12-final2/run.sh
source tests/bench/gpu_env.sh
SKIP_PYTEST=1 SECTIONS=engine,hqq BENCH_TIMEOUT=300 bash tests/bench/gpu_graph_check.sh --axes 0,1 | grep -v "^{" 
timeout 200 python3 tests/bench/attn_sweep.py --axis 1 --tiles 8x64x4,32x32x4,8x32x1,4x64x1,8x64x1 --per-sm 8,16 --out $OUT/attn_sweep_axis1_warps.json 2>&1 | grep -v Warn | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['default']); print(d['best_pair']); [print(r) for r in d['qkv_top'][:4]]; [print(r) for r in d['o_top'][:4]]"
