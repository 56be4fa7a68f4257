#!/usr/bin/env bash
# Compares two tttc binaries on the same machine in one sitting: the prefill programs of
# bench/run.sh (B=1, 12 heads, f=64, K=16, f32; TTT-Linear and TTT-MLP) and the decode of
# bench/decode.sh (208 tokens fed one at a time), both binaries alternating ROUNDS times so
# load changes hit both alike. Prints a Markdown table of medians.
#
#   bash bench/compare_builds.sh OLD_TTTC NEW_TTTC [ROUNDS]
#
# Needs bench/.venv (made by bench/run.sh) for the input files.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 rounds=${3:-3}
PY=bench/.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$PY - "$tmp" <<'PYEOF'
import sys
sys.path.insert(0, "bench")
import run
from safetensors.numpy import save_file
for name, mlp in (("linear", False), ("mlp", True)):
    for L in (208, 2048, 8192):
        save_file(run.inputs(L, mlp), f"{sys.argv[1]}/{name}_{L}.safetensors")
PYEOF
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { $PY -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
echo "| case | backend | old | new | new / old |"
echo "| --- | --- | --- | --- | --- |"
for m in linear mlp; do
  for backend in llvm cranelift; do
    for L in 2048 8192; do
      : >"$tmp/o" ; : >"$tmp/n"
      for _ in $(seq "$rounds"); do
        for which in o n; do
          bin=$old; [ $which = n ] && bin=$new
          "$bin" bench "examples/ttt_$m.ttt" --inputs "$tmp/${m}_$L.safetensors" --backend $backend \
            --iters 5 --json 2>/dev/null | field median_ms >>"$tmp/$which"
        done
      done
      o=$(median <"$tmp/o"); n=$(median <"$tmp/n")
      echo "| $m prefill L=$L (ms) | $backend | $o | $n | $(awk "BEGIN{printf \"%.2f\", $n/$o}") |"
    done
    : >"$tmp/o" ; : >"$tmp/n"
    for _ in $(seq "$rounds"); do
      for which in o n; do
        bin=$old; [ $which = n ] && bin=$new
        "$bin" bench "examples/ttt_$m.ttt" --inputs "$tmp/${m}_208.safetensors" --decode --iters 5 \
          --json --backend $backend 2>/dev/null | field median_us_per_token >>"$tmp/$which"
      done
    done
    o=$(median <"$tmp/o"); n=$(median <"$tmp/n")
    echo "| $m decode (µs/token) | $backend | $o | $n | $(awk "BEGIN{printf \"%.2f\", $n/$o}") |"
  done
done
