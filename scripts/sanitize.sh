#!/usr/bin/env bash
# Runs tttc's ahead-of-time library under AddressSanitizer and UndefinedBehaviorSanitizer:
# compiles examples/ttt_linear.ttt to a shared library (`tttc compile --target x86_64`) whose C
# entry shim is built with -fsanitize=address,undefined (through CC), builds the C programs of
# examples/c with the same flags against it, and runs them: examples/c/main.c on the sample
# inputs, and examples/c/abi_checks.c, which calls the library with wrong shapes, NULL pointers
# and short error buffers, and from two threads at once. Fails on any sanitizer report (every
# report aborts the program) and on any failed expectation.
#
# The kernel object itself is emitted by LLVM without sanitizer instrumentation (tttc has no
# option for it): ASan sees every access the shim and the C programs make, and the kernel's
# accesses only where they reach an ASan-checked libc call; abi_checks.c checks that a refused
# call writes no output.
#
# Installs clang-19 if missing (Debian). Usage: scripts/sanitize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG=${CLANG:-clang-19}
if ! command -v "$CLANG" >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing clang-19"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq clang-19
fi
FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"

cargo build --bin tttc
TTTC=target/debug/tttc
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The C compiler tttc links the library with: clang with the sanitizer flags.
printf '#!/bin/sh\nexec %s %s "$@"\n' "$CLANG" "$FLAGS" > "$work/cc-sanitize"
chmod +x "$work/cc-sanitize"
sample=examples/data/ttt_linear_sample.safetensors
CC="$work/cc-sanitize" "$TTTC" compile examples/ttt_linear.ttt --target x86_64 \
  --inputs "$sample" -o "$work/libttt_linear.so"
for program in main abi_checks; do
  # shellcheck disable=SC2086
  "$CLANG" $FLAGS -I"$work" "examples/c/$program.c" -L"$work" -lttt_linear \
    -Wl,-rpath,"$work" -lpthread -lm -o "$work/$program"
done

# The sample inputs as the raw f32 files examples/c/main.c reads.
python3 - "$sample" "$work" <<'PY'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
for name, t in header.items():
    if name == "__metadata__":
        continue
    assert t["dtype"] == "F32", (name, t["dtype"])
    begin, end = t["data_offsets"]
    open(f"{sys.argv[2]}/{name}.f32", "wb").write(data[8 + n + begin:8 + n + end])
PY

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
status=0
for run in "main $work" "abi_checks"; do
  # shellcheck disable=SC2086
  set -- $run
  program=$1
  shift
  echo "== $program (ASan + UBSan)"
  if ! "$work/$program" "$@" > "$work/$program.log" 2>&1; then
    echo "error: $program failed" >&2
    status=1
  fi
  cat "$work/$program.log"
  if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehaviorSanitizer' \
      "$work/$program.log"; then
    echo "error: $program: sanitizer report above" >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "sanitize: no sanitizer report"
exit $status
