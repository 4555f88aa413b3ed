# Ran 2026-11-24: axis 1 X8 4.0963 ms, XP prepared by a launch 3.7334 ms, XP prepared by the router 3.7104 ms (61.2% of this machine's read floor); axis 0 3.6671 ms.
# session 13, third: the decode step at axis 1 three ways in one process: X8 at its tiles
# (MIXDESK_XP=0), x prepared by a launch of moe_decode's own (MIXDESK_XP_ROUTE=0), and x
# prepared by the router (the default); both switches in the code while this ran. Then axis 0
# against itself (no change expected).
#   bash tests/bench/results/h100-s13-xp/run3.sh
source tests/bench/gpu_env.sh
timeout 240 python3 tests/bench/step_ab.py --axis 1 --rounds 5 --variant x8:MIXDESK_XP=0 --variant xp-launch:MIXDESK_XP_ROUTE=0 --variant xp-route: --out $OUT/step3-axis1.json 2>&1 | grep -v Warn
timeout 150 python3 tests/bench/step_ab.py --axis 0 --rounds 3 --variant xp-route: --out $OUT/step3-axis0.json 2>&1 | grep -v Warn
