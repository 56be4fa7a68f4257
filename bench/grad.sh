#!/usr/bin/env bash
# Forward and forward + backward of TTT-Linear / TTT-MLP (inner loop and whole layer): tttc
# (llvm, f32) against PyTorch autograd through the authors' code and jax.grad with remat, and the
# peak memory of one TTT-MLP layer gradient; writes bench/GRAD.md (see bench/grad.py). Uses
# TTTC when set, else target/release/tttc when built, else builds and uses target/debug/tttc
# (the JIT code is LLVM O3 either way). PYTHON names an interpreter with numpy, safetensors,
# torch, transformers and jax (default bench/.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-bench/.venv/bin/python}"
if [ -z "${TTTC:-}" ] && [ ! -x target/release/tttc ]; then
  cargo build --bin tttc
  export TTTC="$PWD/target/debug/tttc"
fi
uptime
"$PYTHON" bench/grad.py
uptime
