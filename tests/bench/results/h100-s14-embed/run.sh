# Ran 2026-11-24: axis 0 3.6754 -> 3.6631 ms a step (61.3 -> 61.5% of the read floor), axis 1 3.7022 -> 3.6911 ms (61.4 -> 61.5%), logits at axis 1 equal to the bit (axis 0: its float-atomic order, see PERFORMANCE.md). Kept, switch removed.
# session 14: the decode step's start in one launch (kernels.router.embed_norm: the token's
# embedding row and the first layer's input norm, lane-major at axis 1; qkv_attention reading
# its RoPE rows at pos from the whole tables; no causal mask on the one-token path) against the
# step start before (embedding, norm, lane-major copy, cos/sin rows, mask; MIXDESK_EMBED_AB=0, a
# switch in engine/model.py while this ran), in one process a axis.
#   bash tests/bench/results/h100-s14-embed/run.sh
source tests/bench/gpu_env.sh
for axis in 0 1; do
timeout 200 python3 tests/bench/step_ab.py --axis $axis --rounds 5 --variant before:MIXDESK_EMBED_AB=0 --variant embed: --out $OUT/step-axis$axis.json 2>&1 | grep -v Warn
done
