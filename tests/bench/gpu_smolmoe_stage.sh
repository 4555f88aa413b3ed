#!/bin/bash
# Device call 1 of the smol-moe check: keeps the GGUF's first half (made here by
# tests/bench/smolmoe_split.sh) in /tmp/keep, outside the repo copy, where it survives
# while the machine stays warm until call 2 (tests/bench/gpu_smolmoe_check.sh).
# On the lent machine, from the repo root, carrying .cache/gpu/smolmoe-a:
#   bash tests/bench/gpu_smolmoe_stage.sh
set -euo pipefail
if [ ! -f .cache/gpu/smolmoe-a ]; then
    echo ".cache/gpu/smolmoe-a is missing: run tests/bench/smolmoe_split.sh here, then carry it" >&2
    exit 3
fi
mkdir -p /tmp/keep
cp .cache/gpu/smolmoe-a /tmp/keep/
want=$(sed -n 's/  smolmoe-a$//p' tests/bench/smolmoe.sha256)
got=$(sha256sum < /tmp/keep/smolmoe-a | cut -d' ' -f1)
ls -l /tmp/keep/smolmoe-a
[ "$got" = "$want" ] && echo "smolmoe-a staged, sha256 ok" \
    || { echo "smolmoe-a: sha256 $got, expected $want" >&2; exit 3; }
