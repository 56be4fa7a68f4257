#!/usr/bin/env bash
# Benchmarks tttc against PyTorch eager and JAX (jit + lax.scan) and the machine's sgemm rate.
# Sets up its own virtual environment (bench/.venv: numpy, torch, jax, safetensors from PyPI;
# torch brings large CUDA wheels), builds tttc in release mode, writes bench/RESULTS.md.
# Environment: BENCH_ITERS (default 10), BENCH_LENGTHS (default 512,2048,8192),
# BENCH_BACKEND (default llvm).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q --upgrade pip
  bench/.venv/bin/pip install -q numpy safetensors torch jax
fi
cargo build --release
bench/.venv/bin/python bench/run.py
