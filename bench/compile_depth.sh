#!/usr/bin/env bash
# Compile time against depth: `tttc bench`'s compile_ms (kernel lowering + code generation) of
# examples/ttt_lm.ttt with the small config of tests/golden/model_linear_T (hidden 64, 4 heads,
# intermediate 128, vocab 97, its 2-layer golden inputs' token ids) at 2/6/12/24 layers, on llvm
# and cranelift, with repeated layers inlined (TTTC_NO_OUTLINE=1, as before the `outline`
# stage) and outlined (the default). Medians of ROUNDS runs, every configuration alternating
# within a round so that load changes hit all alike. Writes the table into bench/COMPILE.md.
#
#   cargo build --release && bash bench/compile_depth.sh [TTTC] [ROUNDS]
#
# Needs only python3 (no packages): the inputs of deeper models are the golden's layer 0 and 1
# weights repeated (compile time does not depend on the values).
set -euo pipefail
cd "$(dirname "$0")/.."
tttc=${1:-target/release/tttc}
rounds=${2:-3}
depths=${DEPTHS:-"2 6 12 24"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$tmp" $depths <<'PYEOF'
import json, struct, sys
out, depths = sys.argv[1], [int(d) for d in sys.argv[2:]]
stem = "tests/golden/model_linear_T"
with open(stem + ".inputs.safetensors", "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    data = f.read()
meta = header.pop("__metadata__", None)
tensors = {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
           for k, v in header.items()}
config = json.load(open(stem + ".config.json"))
for layers in depths:
    t = {k: v for k, v in tensors.items() if not k.startswith("model.layers.")}
    for i in range(layers):
        src = "model.layers.%d." % (i % 2)
        for k, v in tensors.items():
            if k.startswith(src):
                t["model.layers.%d.%s" % (i, k[len(src):])] = v
    head, blob, off = {}, bytearray(), 0
    for k, (dt, shape, raw) in t.items():
        head[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blob += raw
        off += len(raw)
    if meta:
        head["__metadata__"] = meta
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    with open("%s/l%d.safetensors" % (out, layers), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bytes(blob))
    c = dict(config, num_hidden_layers=layers)
    json.dump(c, open("%s/l%d.config.json" % (out, layers), "w"))
PYEOF

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
compile_ms() { # layers backend no_outline
  TTTC_NO_OUTLINE=$3 "$tttc" bench examples/ttt_lm.ttt --config "$tmp/l$1.config.json" \
    --inputs "$tmp/l$1.safetensors" --backend "$2" --iters 1 --json 2>/dev/null |
    python3 -c "import json,sys; print(round(json.load(sys.stdin)['compile_ms']))"
}
write_table() { # rounds done
  table=$(
    echo "| layers | backend | inline (ms) | outlined (ms) | outlined / inline |"
    echo "| --- | --- | --- | --- | --- |"
    for backend in llvm cranelift; do
      for layers in $depths; do
        i=$(median <"$tmp/t_${layers}_${backend}_1"); o=$(median <"$tmp/t_${layers}_${backend}_0")
        echo "| $layers | $backend | $i | $o | $(awk "BEGIN{printf \"%.2f\", $o/$i}") |"
      done
    done
  )
  {
    echo "# Compile time against depth"
    echo
    echo "\`bash bench/compile_depth.sh\` ($(date -u +%Y-%m-%d), $(nproc) CPUs, medians of $1 rounds):"
    echo "\`tttc bench\`'s compile_ms (kernel lowering + code generation) of examples/ttt_lm.ttt"
    echo "with the model_linear_T config (hidden 64) at each depth; *inline* is \`TTTC_NO_OUTLINE=1\`"
    echo "(every layer compiled on its own, as before the \`outline\` stage), *outlined* the default."
    echo
    echo "$table"
    echo
    echo "At 2 layers nothing is outlined (the first layer differs from the others: docs/pipeline.md,"
    echo "\"Outlining repeated layers\"), so both columns compile the same program. Cranelift inlines"
    echo "the calls, so its two columns compile the same code too: their differences are noise. The"
    echo "machine's 2 CPUs were shared with other builds, so the absolute times vary between runs;"
    echo "compare within a row."
  } >bench/COMPILE.md
  echo "$table"
}

# The table is rewritten after every round, so an interrupted run leaves its medians so far.
for round in $(seq "$rounds"); do
  for layers in $depths; do
    for backend in llvm cranelift; do
      for off in 1 0; do
        compile_ms "$layers" "$backend" "$off" >>"$tmp/t_${layers}_${backend}_${off}"
      done
    done
  done
  write_table "$round"
done
