#!/usr/bin/env bash
# CPU time of one forward and of one gradient (forward + backward) on one thread, for tttc
# binaries side by side: `bash bench/grad_cpu.sh BIN...` (e.g. main's and a branch's
# target/release/tttc). On a shared machine wall-clock timings vary by 2x from run to run; the
# CPU time a process is charged varies much less, so this is the measurement for comparing two
# builds of the backward under load. Per binary and case: `tttc bench` (llvm, f32,
# TTTC_NUM_THREADS=1) with --iters 1 and --iters N, forward alone and with --grad (checkpoint
# every 4), each under /usr/bin/time; the differences divided by N-1 cancel compilation (cached
# by a warm-up run), loading and the first run. Inputs: bench/grad.py's (B=1, 12 heads, f=64,
# K=16, L=2048; the layers with their config). PYTHON names an interpreter with numpy,
# safetensors, torch and transformers (default bench/.venv/bin/python). N defaults to 11.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-bench/.venv/bin/python}"
N="${N:-11}"
[ "$#" -ge 1 ] || { echo "usage: bench/grad_cpu.sh BIN..." >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$PYTHON" - "$dir" <<'EOF'
import json, os, sys
sys.path.insert(0, "bench")
from safetensors.numpy import save_file
from run import inputs
import grad
d = sys.argv[1]
ttt = grad.official()
for mlp in (False, True):
    n = "mlp" if mlp else "linear"
    save_file(inputs(2048, mlp), f"{d}/{n}.safetensors")
    save_file(grad.layer_inputs(ttt, mlp, 2048), f"{d}/{n}_layer.safetensors")
    with open(f"{d}/{n}_layer.json", "w") as fh:
        json.dump(grad.layer_config(mlp), fh)
EOF
# CPU seconds (user + system) of one `tttc bench` run.
cpu() {
  /usr/bin/time -f "%U %S" -o "$dir/time" env TTTC_NUM_THREADS=1 "$@" >/dev/null 2>&1
  awk '{print $1 + $2}' "$dir/time"
}
uptime
printf '| case | binary | fwd ms (CPU) | f+b ms (CPU) | f+b / fwd |\n| --- | --- | --- | --- | --- |\n'
for case in linear mlp linear_layer mlp_layer; do
  prog="examples/ttt_${case}.ttt"
  extra=()
  [[ $case == *_layer ]] && extra=(--config "$dir/$case.json")
  for bin in "$@"; do
    run=("$bin" bench "$prog" --inputs "$dir/$case.safetensors" --backend llvm "${extra[@]}")
    "${run[@]}" --iters 1 --grad >/dev/null 2>&1   # compile once (cached)
    f1=$(cpu "${run[@]}" --iters 1); fn=$(cpu "${run[@]}" --iters "$N")
    g1=$(cpu "${run[@]}" --iters 1 --grad); gn=$(cpu "${run[@]}" --iters "$N" --grad)
    python3 -c "
f = ($fn - $f1) / ($N - 1); g = ($gn - $g1) / ($N - 1) - f
print('| $case | \`$bin\` | %.1f | %.1f | %.2fx |' % (f * 1e3, g * 1e3, g / f))"
  done
done
uptime
