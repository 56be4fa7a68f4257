#!/usr/bin/env bash
# Prefill of momentum_gd against minibatch_gd on TTT-Linear (tttc bench, llvm, f32, medians of
# interleaved runs) and both programs' tttc cost against the hand-derived counts; see
# bench/momentum.py. Builds tttc in release mode unless TTTC names a binary; needs numpy and
# safetensors in bench/.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q --upgrade pip
fi
bench/.venv/bin/python -c "import numpy, safetensors" 2>/dev/null || bench/.venv/bin/pip install -q numpy safetensors
if [ -z "${TTTC:-}" ]; then
  cargo build --release
fi
bench/.venv/bin/python bench/momentum.py
