# session 11: route/add_norm loading the norm and gate weights before the PDL wait (new)
# against the kernel before (MIXDESK_ROUTE_OLD=1: a switch in kernels/router.py while this ran, removed since), one process an axis
source tests/bench/gpu_env.sh
timeout 60 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/kernels/test_router.py 2>&1 | tail -1
timeout 170 python3 tests/bench/step_ab.py --axis 0 --rounds 5 --variant old:MIXDESK_ROUTE_OLD=1 --variant new: --out $OUT/step-axis0.json 2>&1 | grep -v Warn
timeout 150 python3 tests/bench/step_ab.py --axis 1 --rounds 3 --variant old:MIXDESK_ROUTE_OLD=1 --variant new: --out $OUT/step-axis1.json 2>&1 | grep -v Warn
