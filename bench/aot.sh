#!/usr/bin/env bash
# Session libraries (`tttc compile --session`) against the JIT path, on a Hugging Face model
# folder (default: the random-weight 125M TTT-Linear model at /work/m125/linear): the library's
# size, its compile time, its load time (dlopen + tttc_session_new, bench/aot_bench.c) and greedy
# decode tokens/s through it vs `tttc generate --model` (the JIT session, llvm), both after the
# same prompt, runs interleaved, medians over RUNS; and decode through the same library at batch
# BATCH (BATCH copies of the prompt side by side; the library is compiled with --batch 1,BATCH).
# Checks all generate the same tokens. Writes bench/AOT.md. Release build (built here when
# missing).
#
# Usage: bash bench/aot.sh   (MODEL=DIR NEW=64 RUNS=5 BATCH=4 override)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-/work/m125/linear}
NEW=${NEW:-64}
RUNS=${RUNS:-5}
BATCH=${BATCH:-4}
PROMPT=${PROMPT:-17,923,5,88,1204,31,777,42,9,15000,260,3,6012,71,100,2048,31999,5,12,400,812,7,64}
TTTC=target/release/tttc
if [ ! -x "$TTTC" ] || [ ! -f target/release/libtttc_aot_runtime.a ]; then
  cargo build --release -p tttc -p tttc-aot-runtime
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
load_before=$(uptime)

start=$(date +%s.%N)
"$TTTC" compile examples/ttt_lm.ttt --config "$MODEL/config.json" \
  --weights "$MODEL/model.safetensors" --target x86_64 --session --batch "1,$BATCH" \
  -o "$work/libttt_lm.so" 2> "$work/compile.log"
end=$(date +%s.%N)
cat "$work/compile.log"
compile_s=$(python3 -c "print(f'{$end - $start:.1f}')")
size=$(stat -c %s "$work/libttt_lm.so")
deps=$(ldd "$work/libttt_lm.so" | awk '{print $1}' | tr '\n' ' ')
cc -O2 -I"$work" bench/aot_bench.c -ldl -o "$work/aot_bench"

for r in $(seq 1 "$RUNS"); do
  echo "== run $r"
  "$work/aot_bench" "$work/libttt_lm.so" "$MODEL/model.safetensors" "$PROMPT" "$NEW" \
    > "$work/aot_$r.txt"
  tail -1 "$work/aot_$r.txt"
  "$work/aot_bench" "$work/libttt_lm.so" "$MODEL/model.safetensors" "$PROMPT" "$NEW" "$BATCH" \
    > "$work/aot_b_$r.txt"
  tail -1 "$work/aot_b_$r.txt"
  s=$(date +%s.%N)
  "$TTTC" generate examples/ttt_lm.ttt --model "$MODEL" --prompt-ids "$PROMPT" \
    --max-new-tokens "$NEW" > "$work/jit_$r.txt" 2> "$work/jit_$r.err"
  e=$(date +%s.%N)
  echo "$s $e" > "$work/jit_$r.wall"
  grep -E "prefill" "$work/jit_$r.err"
done
load_after=$(uptime)

python3 - "$work" "$RUNS" "$size" "$compile_s" "$deps" "$load_before" "$load_after" "$NEW" \
  "$MODEL" "$(grep -o '([0-9]* pieces' "$work/compile.log" | tr -d '(')" "$BATCH" <<'PY'
import re, statistics, sys
work, runs, size, compile_s, deps, before, after, new, model, pieces, batch = sys.argv[1:]
runs = int(runs)
aot, jit, batched = [], [], []
tokens = set()
for r in range(1, runs + 1):
    lines = open(f"{work}/aot_{r}.txt").read().split("\n")
    tokens.add(("aot", lines[0].strip()))
    load, prefill, rate, step = map(float, lines[1].split())
    aot.append(dict(load=load, prefill=prefill, rate=rate, step=step))
    lines = open(f"{work}/aot_b_{r}.txt").read().split("\n")
    tokens.add(("aot_batch", lines[0].strip()))
    load, prefill, rate, step = map(float, lines[1].split())
    batched.append(dict(rate=rate, step=step))
    tokens.add(("jit", open(f"{work}/jit_{r}.txt").read().strip()))
    err = open(f"{work}/jit_{r}.err").read()
    m = re.search(r"then (\d+) token\(s\) in ([0-9.]+) ms: ([0-9.]+) tokens/s", err)
    p = re.search(r"prefill: (\d+) token\(s\) in ([0-9.]+) ms", err)
    s, e = map(float, open(f"{work}/jit_{r}.wall").read().split())
    jit.append(dict(rate=float(m.group(3)), prefill=float(p.group(2)) / 1e3, wall=e - s))
same = len({t for _, t in tokens}) == 1
med = lambda xs, k: statistics.median(x[k] for x in xs)
ratio = med(aot, "rate") / med(jit, "rate")
md = f"""# Session libraries vs the JIT path

One run of `bash bench/aot.sh` (release build) on `{model}` (random weights; config.json: 12
layers, hidden 768, TTT-Linear, mini-batch 16, vocab 32000), f32, a prompt of 23 tokens then
{new} greedy tokens, {runs} runs interleaved (library, then `tttc generate --model`), medians.

| | session library (`tttc compile --session`) | JIT (`tttc generate`, llvm) |
| --- | --- | --- |
| decode, tokens/s (steps after the first) | {med(aot, 'rate'):.1f} (median step {med(aot, 'step'):.2f} ms) | {med(jit, 'rate'):.1f} |
| decode, library / JIT | **{ratio:.2f}x** | 1 |
| decode at batch {batch} (copies of the prompt), tokens/s of all rows | {med(batched, 'rate'):.1f} (median step {med(batched, 'step'):.2f} ms; {med(batched, 'rate') / med(aot, 'rate'):.2f}x batch 1) | — |
| load: dlopen + `tttc_session_new` | **{med(aot, 'load'):.3f} s** | — |
| prefill of 23 tokens | {med(aot, 'prefill'):.3f} s | {med(jit, 'prefill'):.3f} s (compiling or loading cached pieces included) |
| whole `tttc generate` process | — | {med(jit, 'wall'):.1f} s |

- Library: {int(size) / 1e6:.1f} MB, {pieces}, written by `tttc compile --session` in
  {compile_s} s for batch sizes 1 and {batch} (recording sessions on the interpreter, LLVM
  code generation, link); `ldd`:
  `{deps.strip()}` (no LLVM).
- The same tokens from both (and from the first row at batch {batch}): **{'yes' if same else 'NO'}**.
- Load before: `{before.strip()}`; after: `{after.strip()}` (2 cores shared with other work:
  the absolute rates are noisy, the ratio comes from interleaved runs).
"""
open("bench/AOT.md", "w").write(md)
print(md)
if not same:
    print("error: the library and the JIT generated different tokens:", tokens, file=sys.stderr)
    sys.exit(1)
PY
