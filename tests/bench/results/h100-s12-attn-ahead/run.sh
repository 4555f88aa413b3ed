# Ran 2026-11-23 (session 12): axis 0 3.8205 -> 3.7962 ms, axis 1 4.3662 -> 4.3760 ms; kept at axis 0 only
# (qkv_attention passes AHEAD = axis == 0), the switch removed.
# Prepared in session 11, not yet run (no device time was left): attention loading pos, cos,
# sin and its chunk's first block of cache rows before pos ahead of the PDL wait, and no q loads
# in chunks past pos (MIXDESK_ATTN_AHEAD=1, a temporary switch in kernels/attention.py)
# against the kernel before (=0: the same loads and wait as on main, with the added selects of
# zeros), one process an axis; the GPU attention and engine tests first.
#   git checkout s11-attn-kv-ahead && bash tests/bench/results/h100-s12-attn-ahead/run.sh
# Keep it if both axes gain; then drop the switch (AHEAD) and merge.
source tests/bench/gpu_env.sh
timeout 180 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels/test_attention.py tests/engine/test_fastpath_gpu.py 2>&1 | tail -1
timeout 170 python3 tests/bench/step_ab.py --axis 0 --rounds 5 --variant before:MIXDESK_ATTN_AHEAD=0 --variant ahead: --out $OUT/step-axis0.json 2>&1 | grep -v Warn
timeout 150 python3 tests/bench/step_ab.py --axis 1 --rounds 3 --variant before:MIXDESK_ATTN_AHEAD=0 --variant ahead: --out $OUT/step-axis1.json 2>&1 | grep -v Warn
# where an axis-1 step's time goes now (8 layers, kernels grouped by name)
timeout 80 python3 tests/bench/profile_decode.py --axis 1 > $OUT/profile-axis1.log 2>&1; tail -25 $OUT/profile-axis1.log | cut -c1-60,150-230
