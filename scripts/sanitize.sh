#!/usr/bin/env bash
# Runs tttc's ahead-of-time library under AddressSanitizer and UndefinedBehaviorSanitizer:
# compiles examples/ttt_linear.ttt to a shared library (`tttc compile --target x86_64`) whose C
# entry shim is built with -fsanitize=address,undefined (through CC), builds the C programs of
# examples/c with the same flags against it, and runs them: examples/c/main.c on the sample
# inputs, and examples/c/abi_checks.c, which calls the library with wrong shapes, NULL pointers
# and short error buffers, and from two threads at once. Then a session library
# (`tttc compile --session`, the golden TTT-MLP language model) with its shim built the same
# way: examples/c/session_errors.c calls every error path of the session API, and
# examples/c/generate.c prefills, saves, resumes and decodes. Fails on any sanitizer report
# (every report aborts the program) and on any failed expectation.
#
# The kernel object itself is emitted by LLVM without sanitizer instrumentation (tttc has no
# option for it): ASan sees every access the shim and the C programs make, and the kernel's
# accesses only where they reach an ASan-checked libc call; abi_checks.c checks that a refused
# call writes no output.
#
# Installs clang-19 if missing (Debian). Usage: scripts/sanitize.sh
# With TTTC=path/to/tttc (built with the default features, LLVM included) it uses that binary
# instead of building one: CI passes the one `cargo test` has just built.
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

if [ -z "${TTTC:-}" ]; then
  cargo build --bin tttc
  TTTC=target/debug/tttc
fi
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

# A session library of the golden TTT-MLP language model, and its two C programs.
golden=tests/golden/model_mlp_M
mkdir -p "$work/session"
CC="$work/cc-sanitize" "$TTTC" compile examples/ttt_lm.ttt --target x86_64 --session \
  --config "$golden.config.json" --weights "$golden.inputs.safetensors" \
  -o "$work/session/libttt_lm.so"
for program in session_errors generate; do
  # shellcheck disable=SC2086
  "$CLANG" $FLAGS -pthread -I"$work/session" "examples/c/$program.c" -L"$work/session" \
    -lttt_lm -Wl,-rpath,"$work/session" -o "$work/$program"
done
# States and weights for session_errors: one weight missing, one of another shape, a state
# saved by another program.
python3 - "$golden.inputs.safetensors" "$work" <<'PY'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
body = data[8 + n:]
def write(path, tensors):
    out, blobs, at = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        out[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    h = json.dumps(out).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
tensors = {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]])
           for k, v in header.items() if k != "__metadata__" and v["dtype"] in ("F32", "F64")}
missing = dict(tensors)
del missing["model.norm.weight"]
write(f"{sys.argv[2]}/missing.safetensors", missing)
wrong = dict(tensors)
wrong["model.norm.weight"] = ("F32", [65], bytes(4 * 65))
write(f"{sys.argv[2]}/wrong.safetensors", wrong)
PY
"$TTTC" run examples/ttt_linear.ttt --inputs examples/data/ttt_linear_sample.safetensors \
  --out "$work/o.safetensors" --save-state "$work/other_state.safetensors" >/dev/null

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
prompt=5,90,33,2,71,8,8,40,12,60,3,77,19,25,50,1,96,44,30,9,10,11,13
for run in "main $work" "abi_checks" \
    "session_errors $golden.inputs.safetensors $work/missing.safetensors $work/wrong.safetensors $work/other_state.safetensors" \
    "generate $golden.inputs.safetensors $prompt 8 $work/state.safetensors"; do
  # shellcheck disable=SC2086
  set -- $run
  program=$1
  shift
  echo "== $program (ASan + UBSan)"
  # The Rust run time keeps its worker pool and the library's manifest for the process's
  # life: not leaks, but LeakSanitizer cannot see them from its threads.
  leaks=1
  case $program in session_errors|generate) leaks=0 ;; esac
  if ! ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=$leaks" "$work/$program" "$@" \
      > "$work/$program.log" 2>&1; then
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
