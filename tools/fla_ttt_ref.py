"""Reference vectors for examples/fla_ttt_linear.ttt from flash-linear-attention's naive
TTT-Linear (`chunk_ttt_linear_ref` in fla/ops/ttt/naive.py, MIT; a copy of that file lives at
../shared/peers/flash-linear-attention/ttt_naive.py beside this repository). This script
*imports and runs* the peer's file; none of its code is copied here.

Per-token step sizes: fla's `eta` has one value per token ([B, T, H, 1]) and the step of token
i in a mini-batch is the *query* token's `eta` (tttc: `token_eta` per token, `lr = 1`).

Two precisions:
- expected_f32: the peer's code as it is (it casts everything to float32);
- expected_f64: the same code with its float32 casts turned into float64: the module's global
  `torch` is replaced, for this run only, by a proxy whose `float32` attribute is
  `torch.float64` (every `.to(torch.float32)` and `dtype=torch.float32` in the file then means
  float64); the file itself is not changed.

Inputs are random values rounded to float32 (stored F32), so both runs and tttc read the same
numbers. fla pads a remainder mini-batch with zero tokens, which leaves the outputs and the
final `h` exact but adds the padded tokens' gradients to the final bias `hb`: for a case whose
length is not a multiple of the mini-batch size `hb` is not written (nothing to compare with).

Usage: bench/.venv/bin/python tools/fla_ttt_ref.py [PEER_FILE] [OUT_DIR]
(defaults: ../shared/peers/flash-linear-attention/ttt_naive.py, tests/golden/fla). Needs torch,
numpy and safetensors. Writes, per case STEM: STEM.inputs.safetensors, STEM.expected_f64.safetensors,
STEM.expected_f32.safetensors.
"""
import importlib.util
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, "..", "shared", "peers", "flash-linear-attention", "ttt_naive.py")
OUT = os.path.join(ROOT, "tests", "golden", "fla")

# (stem, B, H, L, f, K, seed)
CASES = [
    ("fla_ttt_linear_B2_H2_L40_f16_K16", 2, 2, 40, 16, 16, 21),
    ("fla_ttt_linear_B1_H2_L32_f16_K16", 1, 2, 32, 16, 16, 22),
]


def load_peer(path):
    spec = importlib.util.spec_from_file_location("fla_ttt_naive", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Float64Torch:
    """`torch`, except that `float32` is `float64` (for the peer module's float64 run)."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


def inputs(B, H, L, f, seed):
    rng = np.random.default_rng(seed)
    f32 = lambda a: a.astype(np.float32)
    return {
        "q": f32(rng.normal(size=(B, L, H, f))),
        "k": f32(rng.normal(size=(B, L, H, f))),
        "v": f32(rng.normal(size=(B, L, H, f))),
        "eta": f32(rng.uniform(0.02, 0.2, size=(B, L, H, 1))),
        "h0": f32(0.1 * rng.normal(size=(B, H, f, f))),
        "hb0": f32(0.1 * rng.normal(size=(B, H, 1, f))),
        "ln_weight": f32(1.0 + 0.1 * rng.normal(size=(H, f))),
        "ln_bias": f32(0.1 * rng.normal(size=(H, f))),
    }


def run(mod, x, K, dtype):
    t = {n: torch.from_numpy(a.astype(np.float64)).to(dtype) for n, a in x.items()}
    # clones: the peer scales q in place
    o, h, hb = mod.chunk_ttt_linear_ref(
        t["q"].clone(), t["k"].clone(), t["v"].clone(), t["ln_weight"].clone(),
        t["ln_bias"].clone(), t["eta"].clone(), scale=None, eps=1e-6, mini_batch_size=K,
        initial_state=t["h0"].clone(), initial_state_bias=t["hb0"].clone(),
        output_final_state=True)
    # contiguous copies: safetensors writes an array's memory as it lies (fla's `o` is a
    # transposed view)
    return {n: np.ascontiguousarray(a.numpy()) for n, a in (("o", o), ("h", h), ("hb", hb))}


def main():
    peer = sys.argv[1] if len(sys.argv) > 1 else PEER
    out = sys.argv[2] if len(sys.argv) > 2 else OUT
    os.makedirs(out, exist_ok=True)
    mod = load_peer(peer)
    real_torch = mod.torch
    for stem, B, H, L, f, K, seed in CASES:
        x = inputs(B, H, L, f, seed)
        save_file(x, os.path.join(out, stem + ".inputs.safetensors"))
        mod.torch = real_torch
        r32 = run(mod, x, K, torch.float32)
        mod.torch = Float64Torch()
        r64 = run(mod, x, K, torch.float64)
        mod.torch = real_torch
        assert r64["o"].dtype == np.float64 and r32["o"].dtype == np.float32
        if L % K != 0:
            for r in (r32, r64):
                del r["hb"]
        save_file(r64, os.path.join(out, stem + ".expected_f64.safetensors"))
        save_file(r32, os.path.join(out, stem + ".expected_f32.safetensors"))
        diff = max(np.abs(r64[n] - r32[n]).max() for n in r64)
        print(f"{stem}: wrote {sorted(r64)}; max |f64 - f32| = {diff:.2e}")


if __name__ == "__main__":
    main()
