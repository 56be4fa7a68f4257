#!/usr/bin/env bash
# Per-token decode, one run: tttc (`tttc bench --decode`, llvm and cranelift) against JAX jit and
# PyTorch eager decode steps of the same math (bench/decode_peers.py, checked against the
# goldens first). B=1, 12 heads, f=64, K=16, f32, 208 tokens (13 mini-batches) per pass; tttc
# and the peers both quote the median time of a single token. Writes bench/DECODE.md.
# Needs bench/.venv (made by bench/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=bench/.venv/bin/python
cargo build --release -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$PY - "$tmp" <<'PYEOF'
import sys
sys.path.insert(0, "bench")
import run
from safetensors.numpy import save_file
for name, mlp in (("linear", False), ("mlp", True)):
    save_file(run.inputs(208, mlp), f"{sys.argv[1]}/{name}.safetensors")
PYEOF
{
  echo "# Decode: median µs per token (B=1, 12 heads, f=64, K=16, f32)"
  echo
  echo "One run of \`bash bench/decode.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo
  echo "| model | tttc llvm | tttc cranelift | JAX jit | PyTorch eager | JAX / tttc llvm |"
  echo "| --- | --- | --- | --- | --- | --- |"
  peers=$($PY bench/decode_peers.py --json 2>/dev/null)
  for m in linear mlp; do
    l=$(./target/release/tttc bench examples/ttt_$m.ttt --inputs "$tmp/$m.safetensors" --decode --iters 5 --json --backend llvm 2>/dev/null | $PY -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["median_us_per_token"])')
    c=$(./target/release/tttc bench examples/ttt_$m.ttt --inputs "$tmp/$m.safetensors" --decode --iters 5 --json --backend cranelift 2>/dev/null | $PY -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["median_us_per_token"])')
    j=$(echo "$peers" | $PY -c "import json,sys; print('%.1f' % [r for r in map(json.loads, sys.stdin) if r['impl']=='jax' and r['model']=='$m'][0]['us_per_token'])")
    t=$(echo "$peers" | $PY -c "import json,sys; print('%.1f' % [r for r in map(json.loads, sys.stdin) if r['impl']=='torch' and r['model']=='$m'][0]['us_per_token'])")
    r=$($PY -c "print('%.1fx' % ($j / $l))")
    echo "| $m | $l | $c | $j | $t | $r |"
  done
} | tee bench/DECODE.md
