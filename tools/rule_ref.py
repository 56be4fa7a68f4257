"""Reference vectors for an update rule written in the language
(examples/momentum_weight_decay.ttt): an independent, hand-derived NumPy per-token loop in
float64 of the rule as written,

    S_t = momentum_t S_{t-1} - lr_t (g_t + wd W_{t-1}),    W_t = W_{t-1} + S_t,

with every g_t taken at the mini-batch's starting W (the scan's rule), W_{t-1} the running
state, token t's output reading W_t, S starting at zero and carrying across mini-batches (a
remainder mini-batch included), wd one value per head (the program passes it as it is; the
compiler broadcasts it to every token). The inner model is TTT-Linear; its
gradient and output come from tools/momentum_ref.py (hand-derived, checked against finite
differences there). Nothing here comes from tttc.

Inputs are random values rounded to float32 (stored F32) so that tttc's f32 and f64 runs read
the same numbers; the expected values are the float64 loop's. Momentum values include exact
zeros and a negative one.

Usage: PYTHON tools/rule_ref.py [OUT_DIR] (default tests/golden/rules); needs numpy and
safetensors (the repository's bench/.venv has both).
"""
import os
import sys

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from momentum_ref import check_gradient, grad, out  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (stem, B, H, L, f, K, seed): L = 2 K + a remainder.
CASES = [("momentum_weight_decay_B1_H2_L37_f8_K16", 1, 2, 37, 8, 16, 41)]


def rule_scan(st0, p, X, lr, mom, wd, K):
    """One (batch, head) slice: X = (q, k, v) rows [L, f]; returns outputs, final W and S."""
    q, k, v = X
    L = len(q)
    W = {n: a.copy() for n, a in st0.items()}
    S = {n: np.zeros_like(a) for n, a in st0.items()}
    Z = []
    for t0 in range(0, L, K):
        W0 = {n: a.copy() for n, a in W.items()}
        for t in range(t0, min(t0 + K, L)):
            g = grad("linear", W0, p, k[t:t + 1], v[t:t + 1])
            for n in W:
                S[n] = mom[t] * S[n] - lr[t] * (g[n] + wd * W[n])
                W[n] = W[n] + S[n]
            Z.append(out("linear", W, p, q[t:t + 1])[0])
    return np.array(Z), W, S


def make_case(B, H, L, f, K, seed):
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, dtype=np.float32)
    x = {
        "XQ": f32(rng.normal(size=(B, H, L, f))),
        "XK": f32(rng.normal(size=(B, H, L, f))),
        "XV": f32(rng.normal(size=(B, H, L, f))),
        "lr": f32(rng.uniform(0.01, 0.1, size=(B, H, L))),
        "momentum": f32(rng.uniform(-0.3, 0.9, size=(B, H, L))),
        "wd": f32(rng.uniform(0.05, 0.5, size=(H,))),
        "ln_weight": f32(1.0 + 0.1 * rng.normal(size=(H, f))),
        "ln_bias": f32(0.1 * rng.normal(size=(H, f))),
    }
    x["momentum"][..., [3, 17, 20]] = 0.0
    x["momentum"][..., 5] = -0.5
    shapes = {"W1": (f, f), "b1": (1, f)}
    for n, s in shapes.items():
        x[n] = f32(0.3 / np.sqrt(s[0]) * rng.normal(size=(H,) + s))
    d = {n: a.astype(np.float64) for n, a in x.items()}
    expected = {"Z": np.zeros((B, H, L, f))}
    for n, s in shapes.items():
        expected[f"{n}_last"] = np.zeros((B, H) + s)
        expected[f"{n}_S"] = np.zeros((B, H) + s)
    for b in range(B):
        for hd in range(H):
            st = {n: d[n][hd] for n in shapes}
            p = (d["ln_weight"][hd], d["ln_bias"][hd])
            X = (d["XQ"][b, hd], d["XK"][b, hd], d["XV"][b, hd])
            check_gradient("linear", st, p, X[1][:1], X[2][:1])
            Z, W, S = rule_scan(st, p, X, d["lr"][b, hd], d["momentum"][b, hd], d["wd"][hd], K)
            expected["Z"][b, hd] = Z
            for n in shapes:
                expected[f"{n}_last"][b, hd] = W[n]
                expected[f"{n}_S"][b, hd] = S[n]
    return x, expected


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "golden", "rules")
    os.makedirs(out_dir, exist_ok=True)
    for stem, B, H, L, f, K, seed in CASES:
        x, expected = make_case(B, H, L, f, K, seed)
        save_file(x, os.path.join(out_dir, f"{stem}.inputs.safetensors"))
        save_file(expected, os.path.join(out_dir, f"{stem}.expected.safetensors"))
        print(f"{stem}: max |Z| {np.abs(expected['Z']).max():.3f}, "
              f"max |W1_S| {np.abs(expected['W1_S']).max():.3e}")


if __name__ == "__main__":
    main()
