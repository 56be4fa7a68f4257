#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine with a Rust toolchain lacks for building and testing
# tttc. Today that is nothing beyond Rust itself (rustfmt and clippy for CI); later backends add
# their packages here (e.g. llvm-19-dev).
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust first (https://rustup.rs)" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
