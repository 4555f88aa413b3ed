# session 13: where the final code's decode step spends its kernel time, 8 layers, each axis
# (torch.profiler over graph replays; kernels grouped by name, then the top 25).
#   bash tests/bench/results/h100-s13-profile/run.sh
source tests/bench/gpu_env.sh
for axis in 0 1; do
    timeout 120 python3 tests/bench/profile_decode.py --layers 8 --axis $axis 2>&1 | grep -v Warn | head -40 > $OUT/profile-axis$axis.txt
    head -12 $OUT/profile-axis$axis.txt
done
