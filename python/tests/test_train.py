"""examples/python/train_lm.py: 50 AdamW steps on a small repetitive text cut the training loss
by at least 40% (fixed seed, tiny model), and under torchrun two processes with half of every
batch each end with the parameters of one process with the whole batch (f64, 1e-10 relative
after 3 steps: DDP averages the two halves' gradients, which equals the whole batch's mean up to
rounding)."""

import os
import socket
import subprocess
import sys

import numpy as np

import tttc
from conftest import ROOT, assert_close

SCRIPT = ROOT / "examples" / "python" / "train_lm.py"
TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--intermediate", "48",
        "--mini-batch", "8", "--seq-len", "32", "--backend", "cranelift", "--quiet"]


def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 100)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, env=None):
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, **(env or {})}, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_fifty_steps_cut_the_loss(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import train_lm
    finally:
        sys.path.pop(0)
    history = train_lm.main([
        "--text", str(text_file(tmp_path)), "--out", str(tmp_path / "run"), "--steps", "50",
        "--batch", "8", "--lr", "1e-2", "--val-every", "25", "--no-plot", *TINY,
    ])
    train = [loss for _, loss in history["train"]]
    first, last = np.mean(train[:3]), np.mean(train[-3:])
    assert np.isfinite(train).all()
    assert last <= 0.6 * first, f"loss {first:.3f} -> {last:.3f}: less than a 40% cut"
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert len(history["val"]) == 2


def test_ddp_two_halves_equal_one_whole_batch(tmp_path):
    text = text_file(tmp_path)
    common = ["--text", str(text), "--steps", "3", "--batch", "4", "--lr", "1e-2",
              "--val-every", "0", "--val-batches", "1", "--no-plot", "--precision", "float64",
              *TINY]
    run([sys.executable, str(SCRIPT), *common, "--out", str(tmp_path / "one")])
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(SCRIPT), *common,
         "--out", str(tmp_path / "two")], env={"OMP_NUM_THREADS": "1"})
    one = tttc.load_safetensors(tmp_path / "one" / "model.safetensors")
    two = tttc.load_safetensors(tmp_path / "two" / "model.safetensors")
    assert set(one) == set(two)
    for name in one:
        assert one[name].dtype == np.float64
        assert_close(two[name], one[name], 1e-10, name)
    # Not vacuous: the three steps moved the parameters.
    run([sys.executable, str(SCRIPT), *common, "--steps", "0", "--out", str(tmp_path / "init")])
    init = tttc.load_safetensors(tmp_path / "init" / "model.safetensors")
    assert max(float(np.abs(one[n] - init[n]).max()) for n in one) > 1e-3
