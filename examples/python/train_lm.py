"""Trains a byte-level TTT language model from Python: the model is a `.ttt` program
(examples/ttt_lm.ttt by default) compiled by tttc, its parameters `nn.Parameter`s of a
`tttc.torch.TTTModel`, its backward the compiled VJP; PyTorch does the rest (AdamW, DDP).

    python examples/python/train_lm.py --text input.txt --steps 500 --out runs/lm
    tttc generate examples/ttt_lm.ttt --model runs/lm --prompt "Once upon a time"

    # two processes on this machine, each with half of every batch (gloo):
    torchrun --nproc_per_node 2 examples/python/train_lm.py --text input.txt --out runs/lm

`--layer linear|mlp` picks the inner model, `--backbone transformer|mamba` the backbone of the
paper; `--program any.ttt` trains another whole-model program instead (one integer input, the
token ids `[B, L]`, an output `logits` `[B, L, 256]`; its config comes from the same flags and
`--set NAME=VALUE`). Every `--val-every` steps the validation loss is measured on the last 10%
of the text and the checkpoint folder (`config.json` + `model.safetensors`) is written; at the
end `loss.png` plots both curves (when matplotlib is installed). Needs torch and numpy; tqdm
for the progress bar (optional).
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import tttc
import tttc.torch

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 256  # bytes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", required=True, help="a text file (trained on as UTF-8 bytes)")
    p.add_argument("--out", default="runs/ttt_lm", help="checkpoint folder (tttc generate --model)")
    p.add_argument("--program", default=str(ROOT / "examples" / "ttt_lm.ttt"))
    p.add_argument("--layer", choices=["linear", "mlp"], default="linear")
    p.add_argument("--backbone", choices=["transformer", "mamba"], default="transformer")
    p.add_argument("--hidden", type=int, default=256, help="hidden_size")
    p.add_argument("--layers", type=int, default=4, help="num_hidden_layers")
    p.add_argument("--heads", type=int, default=4, help="num_attention_heads")
    p.add_argument("--intermediate", type=int, default=None, help="default: 2.75 x hidden")
    p.add_argument("--mini-batch", type=int, default=16, help="TTT mini_batch_size")
    p.add_argument("--ttt-base-lr", type=float, default=1.0)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any other setting of the program (repeatable)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="sequences per step, over all processes")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up steps, then cosine")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--val-batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    # Cranelift by default: it compiles the gradient program in about a second where LLVM
    # takes tens of seconds to minutes on 2 cores; LLVM's steps are faster once compiled
    # (bench/TRAIN.md), which pays off for long runs.
    p.add_argument("--backend", default="cranelift", choices=["llvm", "cranelift"])
    p.add_argument("--precision", default="float32", choices=["float32", "float64"])
    p.add_argument("--checkpoint-every", type=int, default=4,
                   help="mini-batches per checkpoint group of the scans' backward")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log", default=None, help="write the losses as JSON lines here")
    return p.parse_args(argv)


def setting_value(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    return text


def model_config(args):
    """A ttt-lm-pytorch style config.json for the flags."""
    mamba = args.backbone == "mamba"
    config = {
        "model_type": "ttt",
        "vocab_size": VOCAB,
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate or int(round(args.hidden * 2.75 / 16)) * 16,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "ttt_layer_type": args.layer,
        "mini_batch_size": args.mini_batch,
        "ttt_base_lr": args.ttt_base_lr,
        "share_qk": mamba,
        "pre_conv": mamba,
        "use_gate": mamba,
        "conv_kernel": 4,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
    }
    if args.layer == "mlp":
        # TTT-MLP's hidden width, a dimension of its weights: 4 x the head width, as in the paper.
        config["mlp_width"] = 4 * args.hidden // args.heads
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set {item}: expected NAME=VALUE")
        config[name] = setting_value(value)
    return config


class Distributed:
    """torch.distributed under torchrun (gloo), else one process."""

    def __init__(self):
        self.on = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if self.on:
            import torch.distributed as dist

            dist.init_process_group("gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1

    def close(self):
        if self.on:
            import torch.distributed as dist

            dist.destroy_process_group()


def batches(data, batch, seq_len, generator):
    """Random windows of seq_len + 1 bytes: (inputs, targets), each [batch, seq_len]."""
    starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
    rows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def lm_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def plot(history, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no loss plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*history["train"]), label="train", alpha=0.7)
    if history["val"]:
        ax.plot(*zip(*history["val"]), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/byte)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"loss plot: {path}")


def main(argv=None):
    args = parse_args(argv)
    dist = Distributed()
    if args.batch % dist.world:
        sys.exit(f"--batch {args.batch} must be a multiple of the {dist.world} processes")
    text = Path(args.text).read_bytes()
    data = torch.tensor(np.frombuffer(text, dtype=np.uint8).astype(np.int64))
    split = int(len(data) * 0.9)
    train, val = data[:split], data[split:]
    if len(val) <= args.seq_len + 1:
        val = train
    if len(train) <= args.seq_len + 1:
        sys.exit(f"{args.text}: {len(text)} bytes, too short for --seq-len {args.seq_len}")

    config = model_config(args)
    torch.manual_seed(args.seed)
    model = tttc.torch.TTTModel(
        args.program, config, backend=args.backend, precision=args.precision,
        seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    n_params = sum(p.numel() for p in model.parameters())
    net = model
    if dist.on:
        net = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            betas=(0.9, 0.95))

    def lr_at(step):
        if args.warmup and step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    # Every process draws the same global batch and takes its share of the rows: two
    # processes with half the batch each see exactly what one process with all of it sees.
    gen = torch.Generator().manual_seed(args.seed)
    val_gen = torch.Generator().manual_seed(args.seed + 1)
    share = args.batch // dist.world
    lead = dist.rank == 0
    if lead:
        print(f"{n_params / 1e6:.2f}M parameters ({args.layer}, {args.backbone}, "
              f"{config['num_hidden_layers']} layers, hidden {config['hidden_size']}), "
              f"{dist.world} process(es), {len(train)} training bytes")
    bar = None
    if lead and not args.quiet:
        try:
            from tqdm import tqdm

            bar = tqdm(total=args.steps, unit="step")
        except ImportError:
            pass
    history = {"train": [], "val": []}
    log = open(args.log, "w") if (args.log and lead) else None
    out = Path(args.out)
    start = time.time()

    def validate(step):
        model.eval()
        with torch.no_grad():
            losses = []
            for _ in range(args.val_batches):
                x, y = batches(val, share, args.seq_len, val_gen)
                losses.append(lm_loss(model(x), y).item())
        model.train()
        v = float(np.mean(losses))
        history["val"].append((step, v))
        if lead:
            model.save_pretrained(out)
            msg = f"step {step}: validation loss {v:.4f}"
            (bar.write if bar else print)(msg)
            if log:
                log.write(json.dumps({"step": step, "val": v}) + "\n")

    for step in range(args.steps):
        x, y = batches(train, args.batch, args.seq_len, gen)
        x, y = x[dist.rank * share : (dist.rank + 1) * share], y[dist.rank * share : (dist.rank + 1) * share]
        loss = lm_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history["train"].append((step, loss.item()))
        if log:
            log.write(json.dumps({"step": step, "train": loss.item()}) + "\n")
        if bar:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update(1)
        elif lead and not args.quiet and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step}: loss {loss.item():.4f}")
        if args.val_every and (step + 1) % args.val_every == 0:
            validate(step + 1)
    if not history["val"] or history["val"][-1][0] != args.steps:
        validate(args.steps)
    if bar:
        bar.close()
    if lead:
        elapsed = time.time() - start
        print(f"{args.steps} steps in {elapsed:.1f} s; checkpoint: {out} "
              f"(tttc generate {args.program} --model {out} --prompt \"...\")")
        if log:
            log.close()
        if not args.no_plot:
            plot(history, out / "loss.png")
    dist.close()
    return history


if __name__ == "__main__":
    main()
