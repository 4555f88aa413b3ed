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
