#!/usr/bin/env bash
# Compares two tttc binaries on a product whose right operand is a transpose, where the copy
# of that operand to contiguous rows is most of the work: 48 batches of [2, 64] @ [256, 64]ᵀ
# (bench/transpose_copy.ttt, the TTT-MLP scan's W2ᵀ shape), with library gemms off so the
# product runs as lowered loops. Both binaries alternate ROUNDS times (load changes hit both
# alike); prints each run's median and the median of those.
#
#   bash bench/transpose_copy.sh OLD_TTTC NEW_TTTC [ROUNDS]
#
# Needs /work/main/bench/.venv or bench/.venv (numpy, safetensors) for the input file.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 rounds=${3:-5}
PY=${PY:-bench/.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$PY - "$tmp/in.safetensors" <<'PYEOF'
import sys
import numpy as np
from safetensors.numpy import save_file
r = np.random.default_rng(0)
save_file({"A": r.standard_normal((48, 2, 64)).astype(np.float32),
           "W": r.standard_normal((48, 256, 64)).astype(np.float32)}, sys.argv[1])
PYEOF
export TTTC_GEMM_MIN_MNK=off TTTC_POISON=0
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { $PY -c "import json,sys; print(json.load(sys.stdin)['median_ms'])"; }
for ((r = 0; r < rounds; r++)); do
  for who in old new; do
    exe=$old; [ "$who" = new ] && exe=$new
    ms=$("$exe" bench bench/transpose_copy.ttt --inputs "$tmp/in.safetensors" --backend llvm \
      --iters 30 --json --no-cache | field)
    echo "$who $ms" | tee -a "$tmp/times"
  done
done
o=$(grep '^old' "$tmp/times" | cut -d' ' -f2 | median)
n=$(grep '^new' "$tmp/times" | cut -d' ' -f2 | median)
echo "median ms: old $o, new $n, new / old $($PY -c "print(round($n / $o, 3))")"
uptime
