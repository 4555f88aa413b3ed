# session 12: x lane-major for the axis-1 4-bit q/k/v and o GEMVs (XT) by a Triton kernel in the
# PDL chain (new) against the torch copy before (MIXDESK_XT_COPY=torch: a switch in
# kernels/gemv.py while this ran); the engine's GPU tests first, then profiles of both axes.
#   bash tests/bench/results/h100-s12-xt/run.sh
source tests/bench/gpu_env.sh
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers" -W ignore tests/engine/test_fastpath_gpu.py tests/kernels/test_gemv.py 2>&1 | tail -1
timeout 170 python3 tests/bench/step_ab.py --axis 1 --rounds 5 --variant torch:MIXDESK_XT_COPY=torch --variant triton: --out $OUT/step-axis1.json 2>&1 | grep -v Warn
for axis in 0 1; do
    timeout 80 python3 tests/bench/profile_decode.py --axis $axis > $OUT/profile-axis$axis.log 2>&1
    sed -n 3,12p $OUT/profile-axis$axis.log
    grep -E "^ +[a-zA-Z_].* [0-9]+ *$" $OUT/profile-axis$axis.log | cut -c1-60,185-240
done
