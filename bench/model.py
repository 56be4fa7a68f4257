"""Whole-model benchmark helpers for bench/model.sh: tttc against the authors' ttt-lm-pytorch.

Subcommands (each prints one JSON line on stdout):

  make DIR --layer linear|mlp [--size 125m|small] [--layers N]
      a random-weight TTTForCausalLM (Mamba backbone: pre_conv, share_qk, use_gate) saved as a
      Hugging Face folder: DIR/config.json and DIR/model.safetensors under the state_dict names.
  ids FILE --length L [--vocab V]     random token ids `input_ids` [1, L] (int64), seed 0.
  torch-prefill DIR IDS [--iters N] [--save-logits F]
      median seconds of one eager forward over IDS (no cache), and this process's peak RSS.
  torch-decode DIR --prompt P --tokens N
      greedy decode after a P-token prompt through TTTCache, one token per forward: tokens/s
      and the generated ids.
  compare A B NAME                    max |a - b| / max |b| of tensor NAME in two files.
  run-peak CMD...                      runs CMD, prints its wall seconds and peak RSS.

The authors' code is imported from TTT_OFFICIAL_PY (default
../shared/peers/ttt-lm-pytorch/ttt.py), never copied into this repository.
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file, save_file


def official():
    """The authors' ttt.py as a module, or exit with a clear message."""
    path = os.environ.get(
        "TTT_OFFICIAL_PY",
        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peers", "ttt-lm-pytorch", "ttt.py"),
    )
    if not os.path.exists(path):
        sys.exit(f"bench/model.py: the authors' ttt.py is not at {path}; set TTT_OFFICIAL_PY")
    spec = importlib.util.spec_from_file_location("ttt_official", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SIZES = {
    # The paper's smallest model (125M parameters), Mamba backbone.
    "125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, vocab_size=32000),
    # A quick plumbing check.
    "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=512),
}


def config_dict(size, layer, layers):
    c = dict(SIZES[size])
    if layers:
        c["num_hidden_layers"] = layers
    c.update(
        ttt_layer_type=layer,
        pre_conv=True,
        share_qk=True,
        use_gate=True,
        conv_kernel=4,
        mini_batch_size=16,
        ttt_base_lr=1.0 if layer == "linear" else 0.1,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        max_position_embeddings=16384,
    )
    return c


def load_model(folder):
    ttt = official()
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    config = ttt.TTTConfig(**cfg)
    # transformers 5 expects a dict here (see ../shared/peers/README.md).
    ttt.TTTForCausalLM._tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    model = ttt.TTTForCausalLM(config)
    weights = {k: torch.from_numpy(v) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        sys.exit(f"bench/model.py: state_dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.eval()
    return ttt, model


def cmd_make(a):
    ttt = official()
    torch.manual_seed(0)
    cfg = config_dict(a.size, a.layer, a.layers)
    ttt.TTTForCausalLM._tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    model = ttt.TTTForCausalLM(ttt.TTTConfig(**cfg))
    os.makedirs(a.dir, exist_ok=True)
    with open(os.path.join(a.dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    sd = {k: v.detach().contiguous().numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, os.path.join(a.dir, "model.safetensors"))
    params = sum(v.size for v in sd.values())
    print(json.dumps({"dir": a.dir, "parameters": params, "tensors": len(sd)}))


def cmd_ids(a):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, a.vocab, size=(1, a.length), dtype=np.int64)
    save_file({"input_ids": ids}, a.file)
    print(json.dumps({"file": a.file, "length": a.length}))


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cmd_torch_prefill(a):
    torch.set_num_threads(os.cpu_count())
    _, model = load_model(a.dir)
    ids = torch.from_numpy(load_file(a.ids)["input_ids"])
    times = []
    with torch.no_grad():
        for i in range(a.iters):
            t = time.perf_counter()
            logits = model(input_ids=ids, use_cache=False).logits
            times.append(time.perf_counter() - t)
            if i == 0 and a.save_logits:
                save_file({"logits": logits.float().numpy()}, a.save_logits)
            del logits
    print(json.dumps({"median_s": statistics.median(times), "times_s": times, "peak_mb": peak_mb()}))


def cmd_torch_decode(a):
    torch.set_num_threads(os.cpu_count())
    ttt, model = load_model(a.dir)
    ids = torch.from_numpy(load_file(a.ids)["input_ids"])[:, : a.prompt]
    out = []
    with torch.no_grad():
        cache = ttt.TTTCache(model.model, 1)
        logits = model(input_ids=ids, cache_params=cache, use_cache=True).logits
        nxt = int(logits[0, -1].argmax())
        steps = []
        for _ in range(a.tokens):
            out.append(nxt)
            t = time.perf_counter()
            logits = model(input_ids=torch.tensor([[nxt]]), cache_params=cache, use_cache=True).logits
            nxt = int(logits[0, -1].argmax())
            steps.append(time.perf_counter() - t)
    # As tttc generate: the first one-token step apart, the rest timed.
    rate = (len(steps) - 1) / sum(steps[1:])
    print(json.dumps({"tokens_per_s": rate, "ids": out}))


def cmd_compare(a):
    x = load_file(a.a)[a.name].astype(np.float64)
    y = load_file(a.b)[a.name].astype(np.float64)
    if x.shape != y.shape:
        sys.exit(f"bench/model.py: shapes differ: {x.shape} vs {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        sys.exit("bench/model.py: non-finite values")
    rel = float(np.abs(x - y).max() / np.abs(y).max())
    print(json.dumps({"max_rel": rel}))


def cmd_run_peak(a):
    t = time.perf_counter()
    p = subprocess.Popen(a.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    wall = time.perf_counter() - t
    # This process runs exactly one child: the children's peak is the command's.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.stderr.write(err.decode(errors="replace"))
        sys.exit(f"bench/model.py: {' '.join(a.cmd)} failed with {p.returncode}")
    print(json.dumps({"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024.0,
                      "stdout": out.decode(errors="replace")[-2000:], "stderr": err.decode(errors="replace")[-2000:]}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make")
    p.add_argument("dir")
    p.add_argument("--layer", choices=["linear", "mlp"], required=True)
    p.add_argument("--size", choices=sorted(SIZES), default="125m")
    p.add_argument("--layers", type=int)
    p.set_defaults(f=cmd_make)
    p = sub.add_parser("ids")
    p.add_argument("file")
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--vocab", type=int, default=32000)
    p.set_defaults(f=cmd_ids)
    p = sub.add_parser("torch-prefill")
    p.add_argument("dir")
    p.add_argument("ids")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--save-logits")
    p.set_defaults(f=cmd_torch_prefill)
    p = sub.add_parser("torch-decode")
    p.add_argument("dir")
    p.add_argument("ids")
    p.add_argument("--prompt", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.set_defaults(f=cmd_torch_decode)
    p = sub.add_parser("compare")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("name")
    p.set_defaults(f=cmd_compare)
    p = sub.add_parser("run-peak")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(f=cmd_run_peak)
    a = ap.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
