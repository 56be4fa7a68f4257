#!/usr/bin/env bash
# The GPU check of the ptx backend, for a machine with an NVIDIA GPU (sm_80 or newer) and its
# driver. Within 8 minutes in all (each step has a timeout; what does not fit is reported as
# skipped, never left running):
#   1. builds tttc and the golden tests (release);
#   2. runs every golden case (inner loops and whole layers, f32 and f64) with --backend ptx,
#      judged as on the CPU (tests/common/golden.rs);
#   3. checks the PyTorch CUDA implementation of bench/gpu_peers.py against the goldens;
#   4. benchmarks TTT-Linear and TTT-MLP prefill (B in {1, 16}, 12 heads, f = 64, K = 16,
#      L in {2048, 8192}): tttc bench --backend ptx vs PyTorch eager and torch.compile, and
#      writes the table (default bench/GPU_RESULTS.md).
#
# Usage: scripts/gpu_check.sh [--out FILE] [--iters N] [--batches 1,16] [--lengths 2048,8192]
#                             [--budget SECONDS] [--skip-build] [--dry-run]
# Environment: PYTHON (a Python with torch for CUDA; default: bench/.venv/bin/python if it has
# torch, else python3), CARGO_FLAGS (e.g. --offline when the machine has no network and the
# crates are already fetched).
# --dry-run parses the arguments, prints the plan and exits (what can be checked without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

out=bench/GPU_RESULTS.md
iters=5
batches=1,16
lengths=2048,8192
budget=470
build=1
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a file}; shift 2 ;;
    --iters) iters=${2:?--iters needs a number}; shift 2 ;;
    --batches) batches=${2:?--batches needs a list}; shift 2 ;;
    --lengths) lengths=${2:?--lengths needs a list}; shift 2 ;;
    --budget) budget=${2:?--budget needs seconds}; shift 2 ;;
    --skip-build) build=0; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$iters" "$budget"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: expected a positive number, got $n" >&2; exit 2; }
done
for l in "$batches" "$lengths"; do
  [[ "$l" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "gpu_check: expected a list like 1,16, got $l" >&2; exit 2; }
done
[ "$budget" -le 480 ] || { echo "gpu_check: the budget is at most 480 s (8 minutes)" >&2; exit 2; }

start=$(date +%s)
deadline=$((start + budget))
left() { echo $((deadline - $(date +%s))); }
log() { echo "[gpu_check +$(($(date +%s) - start))s] $*" >&2; }
# `capped MAX CMD...`: runs CMD with a timeout of min(MAX, time left - 10 s).
capped() {
  local max=$1; shift
  local t; t=$(left); t=$((t - 10)); [ "$t" -lt "$max" ] || t=$max
  if [ "$t" -lt 5 ]; then log "skipped (out of time): $*"; return 124; fi
  timeout --kill-after=5 "$t" "$@"
}

python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x bench/.venv/bin/python ] && bench/.venv/bin/python -c 'import torch' 2>/dev/null; then
    python=bench/.venv/bin/python
  else
    python=python3
  fi
fi

if [ "$dry" -eq 1 ]; then
  echo "plan: budget ${budget}s; build=$build; goldens with --backend ptx; torch check with $python;"
  echo "      bench B=$batches L=$lengths, $iters iterations each; table -> $out"
  python3 -m py_compile bench/gpu_peers.py
  exit 0
fi

status=0
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
else
  log "warning: nvidia-smi not found; the ptx backend will say whether a CUDA driver is present"
fi

# 1. Build.
if [ "$build" -eq 1 ]; then
  log "building tttc and the golden tests (release)"
  # shellcheck disable=SC2086
  capped 240 cargo build --release ${CARGO_FLAGS:-} --bin tttc --test golden_inner --test golden_layer \
    || { log "build failed or timed out"; exit 1; }
fi
tttc=target/release/tttc
[ -x "$tttc" ] || { log "no $tttc (build first, or drop --skip-build)"; exit 1; }

# 2. Every golden case through the ptx backend (the same judgement as on the CPU).
log "golden cases with --backend ptx"
# shellcheck disable=SC2086
if TTTC_TEST_PTX=only capped 120 cargo test --release ${CARGO_FLAGS:-} --test golden_inner --test golden_layer; then
  goldens="all golden cases pass with --backend ptx"
else
  goldens="golden cases FAILED (or timed out) with --backend ptx"
  status=1
fi
log "$goldens"

# 3. The PyTorch implementation against the goldens.
if capped 60 "$python" bench/gpu_peers.py check; then
  torch_ok="PyTorch implementation matches the goldens"
else
  torch_ok="PyTorch check failed or torch (CUDA) missing: its columns may be n/a"
fi
log "$torch_ok"

# 4. The benchmark table (gpu_peers.py stops starting work 20 s before the deadline).
log "benchmarks"
mkdir -p "$(dirname "$out")"
capped 600 "$python" bench/gpu_peers.py table --tttc "$tttc" --out "$out" --iters "$iters" \
  --batches "$batches" --lengths "$lengths" --deadline $((deadline - 15)) || status=1
if [ -f "$out" ]; then
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
  {
    echo
    echo "Goldens: $goldens. $torch_ok."
    echo "GPU: ${gpu:-unknown}. Took $(($(date +%s) - start)) s."
  } >>"$out"
  cat "$out"
fi
log "done in $(($(date +%s) - start)) s (status $status)"
exit "$status"
