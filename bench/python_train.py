"""A training step (forward + cross-entropy + backward + AdamW) through `tttc.torch.TTTModel`
against the authors' ttt-lm-pytorch (autograd, `scan_checkpoint_group_size` 4) on the same
weights and tokens, each in its own process (peak RSS per process), in one invocation.

    python/.venv/bin/python bench/python_train.py [--hidden 256 --layers 2 --length 256 ...]

The authors' ttt.py is imported from TTT_OFFICIAL_PY (default
../shared/peers/ttt-lm-pytorch/ttt.py), never copied; its process runs under PEER_PYTHON
(default /work/main/bench/.venv/bin/python, which has transformers). Prints one JSON line per
side and the ratios; the first step's loss of both sides is compared (same weights, same ids).
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def config(a):
    return dict(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, ttt_layer_type=a.layer,
        pre_conv=True, share_qk=True, use_gate=True, conv_kernel=4, mini_batch_size=16,
        ttt_base_lr=1.0 if a.layer == "linear" else 0.1, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=16384, scan_checkpoint_group_size=4,
        use_cache=False,
    )


def official():
    path = os.environ.get("TTT_OFFICIAL_PY", str(ROOT.parent / "shared" / "peers" / "ttt-lm-pytorch" / "ttt.py"))
    spec = importlib.util.spec_from_file_location("ttt_official", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.TTTForCausalLM._tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    return mod


def loss_of(logits, ids):
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    )


def train(model, ids, steps, forward):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times, losses = [], []
    for _ in range(steps):
        t = time.perf_counter()
        loss = loss_of(forward(ids), ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    return times, losses


def side(a):
    torch.set_num_threads(os.cpu_count())
    folder = Path(a.dir)
    cfg = json.loads((folder / "config.json").read_text())
    ids = torch.from_numpy(np.load(folder / "ids.npy"))
    if a.side == "torch":
        from safetensors.torch import load_file

        ttt = official()
        model = ttt.TTTForCausalLM(ttt.TTTConfig(**cfg))
        missing, unexpected = model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
        assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
        model.tie_weights()
        model.train()
        forward = lambda x: model(input_ids=x, use_cache=False).logits
    else:
        import tttc.torch

        model = tttc.torch.TTTModel.from_pretrained(folder, program=ROOT / "examples" / "ttt_lm.ttt",
                                                    backend=a.backend)
        forward = model
    t0 = time.perf_counter()
    times, losses = train(model, ids, a.steps, forward)
    print(json.dumps({
        "side": a.side, "first_step_s": times[0], "median_step_s": statistics.median(times[1:]),
        "steps": a.steps, "losses": losses, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": time.perf_counter() - t0,
    }))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--side", choices=["torch", "tttc"])
    p.add_argument("--dir")
    p.add_argument("--layer", default="linear", choices=["linear", "mlp"])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--backend", default="llvm")
    a = p.parse_args()
    if a.side:
        return side(a)

    # Driver: make the weights with the authors' code (in the peer's environment), then run
    # both sides.
    peer_python = os.environ.get("PEER_PYTHON", "/work/main/bench/.venv/bin/python")
    folder = Path(tempfile.mkdtemp(prefix="tttc_train_bench_"))
    cfg = config(a)
    (folder / "config.json").write_text(json.dumps(cfg))
    np.save(folder / "ids.npy", np.random.default_rng(0).integers(0, a.vocab, (1, a.length)))
    make = (
        "import sys, json, torch; sys.path.insert(0, %r); import python_train as b; "
        "from safetensors.torch import save_file; torch.manual_seed(0); ttt = b.official(); "
        "m = ttt.TTTForCausalLM(ttt.TTTConfig(**json.load(open(%r)))); "
        "save_file({k: v.contiguous() for k, v in m.state_dict().items() if k != 'lm_head.weight'}, %r)"
    ) % (str(Path(__file__).parent), str(folder / "config.json"), str(folder / "model.safetensors"))
    subprocess.run([peer_python, "-c", make], check=True)
    print(f"uptime: {os.getloadavg()}; cpus {os.cpu_count()}; config {cfg}", flush=True)
    rows = {}
    for name, python in (("torch", peer_python), ("tttc", sys.executable)):
        out = subprocess.run([python, __file__, "--side", name, "--dir", str(folder),
                              "--steps", str(a.steps), "--backend", a.backend],
                             check=True, capture_output=True, text=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(rows[name]), flush=True)
    t, c = rows["torch"], rows["tttc"]
    rel = abs(c["losses"][0] - t["losses"][0]) / abs(t["losses"][0])
    print(json.dumps({
        "speedup_median_step": t["median_step_s"] / c["median_step_s"],
        "first_loss_rel_diff": rel,
        "peak_rss_ratio_tttc_over_torch": c["peak_rss_mb"] / t["peak_rss_mb"],
    }))


if __name__ == "__main__":
    main()
