#!/usr/bin/env bash
# Per-token decode, one run: tttc (`tttc bench --decode`, llvm and cranelift) against JAX jit and
# PyTorch eager decode steps of the same math (bench/decode_peers.py, checked against the
# goldens first), each state form (--decode-state dense, factored). B=1, 12 heads, f=64, K=16, f32,
# 208 tokens (13 mini-batches) per pass; tttc
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
# The machine's limit for a token, per model and state form, from numpy in this run: the larger
# of (elements the form must touch per token x 4 bytes / a copy's rate at that size) and
# (FLOPs per token / sgemm rate). Per head, f = 64, K = 16, a weight [m, n] with a bias [1, n]:
#   dense:    the weights read once, the partial sums read and written: 3 (mn + n)
#   factored: the weights read once, the factors U^T [m, K] and D [K, n] read, one column and
#             row written, the close spread over the K tokens (U^T D read, weights read and
#             written): mn + K (m + n) + (m + n) + (K (m + n) + 2 mn) / K; biases dense, 3 n.
# FLOPs: the products of a token with every weight for the gradient (forward, backward) and the
# output (2 mn each; a first layer's backward has no product), plus the dense sum's outer
# products (2 mn) or the factored reads (4 K (m + n)).
limits=$($PY - <<'PYEOF'
import json, time
import numpy as np
H, f, K = 12, 64, 16
models = {"linear": [(f, f)], "mlp": [(f, 4 * f), (4 * f, f)]}
def median(fn, reps=15):
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]
a = np.random.rand(1024, 1024).astype(np.float32)
sgemm = 2 * 1024**3 / median(lambda: a @ a)
out = {}
for name, weights in models.items():
    for form in ("dense", "factored"):
        elems = 0
        flops = 0
        for i, (m, n) in enumerate(weights):
            if form == "dense":
                elems += 3 * (m * n + n)
                flops += 2 * m * n
            else:
                elems += m * n + K * (m + n) + (m + n) + (K * (m + n) + 2 * m * n) / K + 3 * n
                flops += 4 * K * (m + n)
            flops += 2 * m * n * (3 if i > 0 else 2)
        nbytes = int(elems * 4 * H)
        src = np.random.rand(nbytes // 4).astype(np.float32); dst = np.empty_like(src)
        copy = 2 * nbytes / median(lambda: np.copyto(dst, src), 51)
        us = max(nbytes / copy, flops * H / sgemm) * 1e6  # copy: bytes read + written per second
        out[f"{name}.{form}"] = {"bytes": nbytes, "copy_gbs": copy / 1e9, "flops": flops * H, "limit_us": us}
out["sgemm_gflops"] = sgemm / 1e9
print(json.dumps(out))
PYEOF
)
lim() { echo "$limits" | $PY -c "import json,sys; d=json.load(sys.stdin); print('%.1f' % d['$1']['limit_us'])"; }
{
  echo "# Decode: median µs per token (B=1, 12 heads, f=64, K=16, f32)"
  echo
  echo "One run of \`bash bench/decode.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo
  echo "| model | state form | tttc llvm | limit (numpy, this run) | llvm / limit | tttc cranelift | JAX jit | PyTorch eager | JAX / tttc llvm |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  peers=$($PY bench/decode_peers.py --json 2>/dev/null)
  for m in linear mlp; do
    j=$(echo "$peers" | $PY -c "import json,sys; print('%.1f' % [r for r in map(json.loads, sys.stdin) if r['impl']=='jax' and r['model']=='$m'][0]['us_per_token'])")
    t=$(echo "$peers" | $PY -c "import json,sys; print('%.1f' % [r for r in map(json.loads, sys.stdin) if r['impl']=='torch' and r['model']=='$m'][0]['us_per_token'])")
    for form in dense factored; do
      l=$(./target/release/tttc bench examples/ttt_$m.ttt --inputs "$tmp/$m.safetensors" --decode --decode-state $form --iters 5 --json --backend llvm 2>/dev/null | $PY -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["median_us_per_token"])')
      c=$(./target/release/tttc bench examples/ttt_$m.ttt --inputs "$tmp/$m.safetensors" --decode --decode-state $form --iters 5 --json --backend cranelift 2>/dev/null | $PY -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["median_us_per_token"])')
      lm=$(lim "$m.$form")
      echo "| $m | $form | $l | $lm | $($PY -c "print('%.2fx' % ($l / $lm))") | $c | $j | $t | $($PY -c "print('%.1fx' % ($j / $l))") |"
    done
  done
  echo
  echo "Limits (bytes a token touches in the form, copy rate at that size, FLOPs, sgemm): \`$limits\`"
} | tee bench/DECODE.md
