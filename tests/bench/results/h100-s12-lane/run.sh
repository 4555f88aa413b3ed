# Ran 2026-11-23 (session 12): a step at axis 1 4.1612 -> 4.1108 ms, logits equal; the switch removed.
# session 12: the axis-1 q/k/v and o GEMVs' x written lane-major by the kernel before them
# (add_norm, qkv_attention; new) against their own lane-major copy launch (MIXDESK_LANE_FROM=copy:
# a switch in engine/model.py while this ran); the GPU tests of the kernels and the engine first.
#   bash tests/bench/results/h100-s12-lane/run.sh
source tests/bench/gpu_env.sh
timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/engine/test_fastpath_gpu.py tests/kernels/test_router.py tests/kernels/test_attention.py tests/kernels/test_gemv.py -k "not mixtral_shapes and not other_recipes" 2>&1 | tail -2
timeout 200 python3 tests/bench/step_ab.py --axis 1 --rounds 5 --variant copy:MIXDESK_LANE_FROM=copy --variant producer: --out $OUT/step-axis1.json 2>&1 | grep -v Warn
