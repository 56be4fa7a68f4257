#!/usr/bin/env bash
# Fuzzes tttc with cargo-fuzz (libFuzzer): runs each target of fuzz/ for SECONDS (default 60)
# and fails if any finds a crash (a panic, an abort, a hang past the per-input timeout, or —
# for `differential` — backends, stages or streaming that disagree).
#
#   parse_lower        any bytes as a .ttt file: compile, print, the whole pass pipeline
#   safetensors_bind   any bytes as the inputs of examples/ttt_linear.ttt, as `tttc run` reads,
#                      binds and runs them (interpreter, Cranelift, streamed)
#   differential       generated well-typed programs: every stage, interp/cranelift/llvm and
#                      streamed in random chunks agree within 1e-9 (f64)
#
# Installs what it needs if missing: the nightly toolchain and cargo-fuzz. The seed corpora are
# fuzz/corpus/TARGET (read only); what the fuzzer learns goes to fuzz/work/TARGET (ignored by
# git) and a crashing input to fuzz/artifacts/TARGET. Turn each finding into a regression test
# by copying the input to tests/fuzz_regressions/TARGET/ (see tests/fuzz_regressions.rs; for
# `differential`, save the case text the panic message prints).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]     (all three targets by default)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(parse_lower safetensors_bind differential)

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# No sanitizer: the code under test is safe Rust plus JIT-compiled code that ASan could not
# instrument anyway (scripts/sanitize.sh covers the C side); debug assertions and overflow
# checks on, so an arithmetic overflow is a finding.
build_flags=(--sanitizer none --debug-assertions)
cd fuzz
cargo +nightly fuzz build "${build_flags[@]}"

# Per target: the longest input, the time one input may take before it counts as a hang (the
# differential target compiles with LLVM at O3 several times per input), a dictionary. Paths
# are absolute: the parse_lower target changes directory to the repository when it starts.
options() {
  case $1 in
    parse_lower) echo "-max_len=8192 -timeout=60 -dict=$PWD/dict/ttt.dict" ;;
    safetensors_bind) echo "-max_len=40000 -timeout=60" ;;
    differential) echo "-max_len=512 -timeout=180" ;;
  esac
}

failed=()
for target in "${targets[@]}"; do
  mkdir -p "work/$target"
  echo "== fuzzing $target for ${seconds}s"
  # shellcheck disable=SC2046
  if ! cargo +nightly fuzz run "${build_flags[@]}" "$target" "$PWD/work/$target" "$PWD/corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=3072 -print_final_stats=1 \
      $(options "$target"); then
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "error: findings in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: no findings in ${targets[*]} (${seconds}s each)"
