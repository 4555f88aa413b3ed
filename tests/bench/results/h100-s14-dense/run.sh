# Ran 2026-11-24: lm_head alone cuBLAS 101.7 us (2577 GB/s), the kernel 90.4 us at 4x512x4 (2900 GB/s), 92.2 at 8x512x4; decode step axis 0 cuBLAS 3.6644 ms, kernel 3.6527 (8x512x4) / 3.6562 (16x512x4) / 3.6514 (4x1024x4); axis 1 all four 3.734-3.735 ms by the median, the kernel 15-19 us faster in 4 of 5 rounds (the machine moved between ~3.715 and ~3.735 ms). Kept at 4x512x4, switches removed.
# session 14: the lm_head as a Triton GEMV on the decode graph's PDL chain (kernels.dense)
# instead of cuBLAS's. Its tile swept alone against cuBLAS (dense_sweep.py), then the decode
# step in one process a axis: cuBLAS (MIXDESK_DENSE_AB=0) against the kernel at three tiles
# (MIXDESK_DENSE_TILE=ROWSxCOLSxWARPS); both switches in engine/model.py while this ran.
#   bash tests/bench/results/h100-s14-dense/run.sh
source tests/bench/gpu_env.sh
timeout 150 python3 tests/bench/dense_sweep.py --out $OUT/dense_sweep.json 2>&1 | grep -v Warn | python3 -c 'import json,sys; d=json.load(sys.stdin); print("cublas", d["cublas_us"], d["cublas_gbs"]); print("shipped", d["shipped"]); [print(r) for r in d["top"]]'
for axis in 0 1; do
timeout 200 python3 tests/bench/step_ab.py --axis $axis --rounds 5 --variant cublas:MIXDESK_DENSE_AB=0 --variant dense-8x512x4: --variant dense-16x512x4:MIXDESK_DENSE_TILE=16x512x4 --variant dense-4x1024x4:MIXDESK_DENSE_TILE=4x1024x4 --out $OUT/step-axis$axis.json 2>&1 | grep -v Warn
done
