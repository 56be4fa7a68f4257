#!/usr/bin/env bash
# Installs what is missing, builds tttc and runs the main example (TTT-Linear on the shipped
# sample inputs), then shows the outputs it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release
mkdir -p out
./target/release/tttc check examples/ttt_linear.ttt
./target/release/tttc run examples/ttt_linear.ttt \
  --inputs examples/data/ttt_linear_sample.safetensors \
  --out out/ttt_linear_sample.out.safetensors
