# session 12, second XT run: the torch copy (shipped) against no copy at all (none: wrong
# products, the bound of a producer writing x lane-major itself) and the Triton copy with
# coalesced stores, 8 programs, with and without PDL.
#   bash tests/bench/results/h100-s12-xt/run2.sh
source tests/bench/gpu_env.sh
timeout 300 python3 tests/bench/step_ab.py --axis 1 --rounds 4 --variant torch:MIXDESK_XT_COPY=torch --variant none:MIXDESK_XT_COPY=none --variant triton:MIXDESK_XT_COPY=triton --variant plain:MIXDESK_XT_COPY=plain --out $OUT/step2-axis1.json 2>&1 | grep -v Warn
MIXDESK_XT_COPY=triton timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/engine/test_fastpath_gpu.py 2>&1 | tail -2
