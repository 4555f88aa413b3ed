# session 12: a second bench of the final code on a fresh machine: axis 0 3.712 ms 269.4 tok/s 60.71%, axis 1 4.117 ms 54.69%
source tests/bench/gpu_env.sh; timeout 250 python3 -m mixdesk.engine.bench --sections engine --axes 0,1 --out $OUT/bench.json
