#!/usr/bin/env bash
# Installs NVIDIA's PTX assembler `ptxas` without CUDA or a GPU: the `nvidia-cuda-nvcc-cu12`
# wheel from PyPI (about 40 MB) into a virtual environment at .venv-ptxas/ (ignored by git),
# then prints the path of ptxas. tests/ptx.rs finds it there (or through $TTTC_PTXAS) and
# assembles the PTX of every example with it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-ptxas
find_ptxas() {
  find "$venv" -path '*nvidia/cuda_nvcc/bin/ptxas' -type f 2>/dev/null | head -n 1
}
ptxas=$(find_ptxas || true)
if [ -z "$ptxas" ]; then
  if ! command -v python3 >/dev/null 2>&1; then
    echo "error: python3 not found; it is needed to install ptxas from PyPI" >&2
    exit 1
  fi
  if [ ! -x "$venv/bin/pip" ]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
      # Debian without python3-venv: install it (CI runs as root), else fail with advice.
      if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq python3-venv
        python3 -m venv "$venv"
      else
        echo "error: python3 -m venv failed; install python3-venv" >&2
        exit 1
      fi
    fi
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "nvidia-cuda-nvcc-cu12>=12.4,<13"
  ptxas=$(find_ptxas || true)
fi
if [ -z "$ptxas" ] || [ ! -x "$ptxas" ]; then
  echo "error: ptxas not found in $venv after installing nvidia-cuda-nvcc-cu12" >&2
  exit 1
fi
"$ptxas" --version | tail -n 1 >&2
realpath "$ptxas"
