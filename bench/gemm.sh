#!/usr/bin/env bash
# Dense projections through `tttc bench` on llvm with the library gemm off and on, as ratios to
# numpy's sgemm in the same run; writes bench/GEMM.md (see bench/gemm.py).
# Sets up bench/.venv with numpy if missing and builds tttc in release mode.
# Environment: BENCH_ITERS (default 5), BENCH_SQUARES (default 16,32,48,64,96,128,256).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q --upgrade pip
fi
bench/.venv/bin/python -c "import numpy" 2>/dev/null || bench/.venv/bin/pip install -q numpy
cargo build --release
bench/.venv/bin/python bench/gemm.py
