# Ran 2026-11-23: one-warp q/k/v and o 3.7148 -> 3.6501 ms a step at axis 0 (kept, switch removed); GPU tests 36 passed.
# session 12, second: w1/w3 back at (8, 128, 4) (the one-warp tile was slower in the step,
# 3.8010 -> 3.8122 ms); q/k/v and o at the one-warp tiles the sweep found (4, 128, 1, no
# prefetch, 16 a SM; 17.86 -> 16.73 us a layer) against the 4-warp ones (MIXDESK_TILE_AB), in
# the decode step; then the GPU tests.
#   bash tests/bench/results/h100-s12-warps/run2.sh
source tests/bench/gpu_env.sh
timeout 170 python3 tests/bench/step_ab.py --axis 0 --rounds 5 --variant attn-4-warps:MIXDESK_TILE_AB=attn-4-warps --variant attn-1-warp: --out $OUT/step2-axis0.json 2>&1 | grep -v Warn
timeout 330 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels tests/engine/test_fastpath_gpu.py -k "dequantize or moe_decode_mixtral or attention or route or fastpath_gpu or lane_major or mixtral_shapes" 2>&1 | tail -3
