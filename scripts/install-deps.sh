#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine with a Rust toolchain lacks for building and testing
# tttc: LLVM 19 (the native CPU backend; Debian's llvm-19-dev, found through
# .cargo/config.toml) and a C compiler (AOT libraries are linked with `cc`), plus rustfmt and
# clippy for CI.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust first (https://rustup.rs)" >&2
  exit 1
fi
missing=()
[ -x /usr/lib/llvm-19/bin/llvm-config ] || missing+=(llvm-19-dev libzstd-dev libpolly-19-dev)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}"
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
