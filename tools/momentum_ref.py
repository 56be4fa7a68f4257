"""Reference vectors for `update momentum_gd` (examples/momentum_linear.ttt and
examples/momentum_mlp.ttt): an independent, hand-derived NumPy per-token loop in float64.

The rule (docs/language.md): inside a mini-batch all gradients are taken at the mini-batch's
starting state W; per token t

    S_t = momentum_t S_{t-1} - lr_t g_t,    W_t = (1 - decay_t) W_{t-1} + S_t,

token t's output reads W_t, S starts at zero and carries across mini-batches (a remainder
mini-batch included). The inner models are TTT-Linear and TTT-MLP (examples/ttt_linear.ttt,
examples/ttt_mlp.ttt): loss 0.5 ||g(k) - (v - k)||^2 and output q + g(q) with
g(x) = layer_norm(x W1 + b1) (MLP: layer_norm(gelu_tanh(x W1 + b1) W2 + b2)). Their gradients
are written out by hand below (layer norm's and gelu_tanh's derivatives) and checked against
central finite differences before any vector is written. Nothing here comes from tttc.

Inputs are random values rounded to float32 (stored F32) so that tttc's f32 and f64 runs read
the same numbers; the expected values are the float64 loop's (one file: f32 runs are compared
with it at 2e-5). Momentum values include exact zeros and negatives, decays exact zeros.

Usage: PYTHON tools/momentum_ref.py [OUT_DIR] (default tests/golden/momentum); needs numpy and
safetensors (the repository's bench/.venv has both). Writes STEM.inputs.safetensors and
STEM.expected.safetensors per case.
"""
import os
import sys

import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 1e-6
C = np.sqrt(2.0 / np.pi)

# (stem, model, B, H, L, f, K, seed): L = 2 K + a remainder.
CASES = [
    ("momentum_linear_B1_H2_L37_f8_K16", "linear", 1, 2, 37, 8, 16, 31),
    ("momentum_mlp_B1_H2_L37_f4_K16", "mlp", 1, 2, 37, 4, 16, 32),
]


def layer_norm(z, w, b):
    mu = z.mean(-1, keepdims=True)
    var = ((z - mu) ** 2).mean(-1, keepdims=True)
    xhat = (z - mu) / np.sqrt(var + EPS)
    return xhat * w + b, xhat, np.sqrt(var + EPS)


def layer_norm_back(dy, xhat, sigma, w):
    dx = dy * w
    return (dx - dx.mean(-1, keepdims=True) - xhat * (dx * xhat).mean(-1, keepdims=True)) / sigma


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(C * (x + 0.044715 * x ** 3)))


def gelu_prime(x):
    t = np.tanh(C * (x + 0.044715 * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3 * 0.044715 * x * x)


def forward(model, st, p, x):
    """g(x) and what the backward needs; st: the states, p: (ln_weight, ln_bias)."""
    if model == "linear":
        z = x @ st["W1"] + st["b1"]
        y, xhat, sigma = layer_norm(z, *p)
        return y, (z, xhat, sigma)
    a = x @ st["W1"] + st["b1"]
    h = gelu(a)
    z = h @ st["W2"] + st["b2"]
    y, xhat, sigma = layer_norm(z, *p)
    return y, (a, h, xhat, sigma)


def loss(model, st, p, k, v):
    y, _ = forward(model, st, p, k)
    return 0.5 * ((y - (v - k)) ** 2).sum()


def grad(model, st, p, k, v):
    """The gradient of the loss of one token (k, v: [1, f]) with respect to every state."""
    y, cache = forward(model, st, p, k)
    dy = y - (v - k)
    if model == "linear":
        _, xhat, sigma = cache
        dz = layer_norm_back(dy, xhat, sigma, p[0])
        return {"W1": k.T @ dz, "b1": dz}
    a, h, xhat, sigma = cache
    dz = layer_norm_back(dy, xhat, sigma, p[0])
    da = (dz @ st["W2"].T) * gelu_prime(a)
    return {"W1": k.T @ da, "b1": da, "W2": h.T @ dz, "b2": dz}


def out(model, st, p, q):
    return q + forward(model, st, p, q)[0]


def check_gradient(model, st, p, k, v):
    """Central finite differences of the hand-written gradient (aborts on a mismatch)."""
    g = grad(model, st, p, k, v)
    rng = np.random.default_rng(0)
    for name in st:
        d = rng.normal(size=st[name].shape)
        h = 1e-6
        plus = dict(st, **{name: st[name] + h * d})
        minus = dict(st, **{name: st[name] - h * d})
        fd = (loss(model, plus, p, k, v) - loss(model, minus, p, k, v)) / (2 * h)
        an = (g[name] * d).sum()
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (model, name, fd, an)


def momentum_scan(model, st0, p, X, lr, mom, decay, K):
    """One (batch, head) slice: X = (q, k, v) rows [L, f]; returns outputs, final W and S."""
    q, k, v = X
    L = len(q)
    W = {n: a.copy() for n, a in st0.items()}
    S = {n: np.zeros_like(a) for n, a in st0.items()}
    Z = []
    for t0 in range(0, L, K):
        W0 = {n: a.copy() for n, a in W.items()}
        for t in range(t0, min(t0 + K, L)):
            g = grad(model, W0, p, k[t:t + 1], v[t:t + 1])
            for n in W:
                S[n] = mom[t] * S[n] - lr[t] * g[n]
                W[n] = (1.0 - decay[t]) * W[n] + S[n]
            Z.append(out(model, W, p, q[t:t + 1])[0])
    return np.array(Z), W, S


def make_case(model, B, H, L, f, K, seed):
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, dtype=np.float32)
    h = 4 * f
    x = {
        "XQ": f32(rng.normal(size=(B, H, L, f))),
        "XK": f32(rng.normal(size=(B, H, L, f))),
        "XV": f32(rng.normal(size=(B, H, L, f))),
        "lr": f32(rng.uniform(0.01, 0.1, size=(B, H, L))),
        "momentum": f32(rng.uniform(-0.3, 0.9, size=(B, H, L))),
        "decay": f32(rng.uniform(0.0, 0.2, size=(B, H, L))),
        "ln_weight": f32(1.0 + 0.1 * rng.normal(size=(H, f))),
        "ln_bias": f32(0.1 * rng.normal(size=(H, f))),
    }
    x["momentum"][..., [3, 17, 20]] = 0.0  # zero factors inside and at a mini-batch start
    x["momentum"][..., 5] = -0.5
    x["decay"][..., [2, 16, 33]] = 0.0
    if model == "linear":
        shapes = {"W1": (f, f), "b1": (1, f)}
    else:
        shapes = {"W1": (f, h), "b1": (1, h), "W2": (h, f), "b2": (1, f)}
    for n, s in shapes.items():
        x[n] = f32(0.3 / np.sqrt(s[0]) * rng.normal(size=(H,) + s))
    d = {n: a.astype(np.float64) for n, a in x.items()}
    expected = {"Z": np.zeros((B, H, L, f))}
    for n, s in shapes.items():
        expected[f"{n}_last"] = np.zeros((B, H) + s)
        expected[f"{n}_momentum"] = np.zeros((B, H) + s)
    for b in range(B):
        for hd in range(H):
            st = {n: d[n][hd] for n in shapes}
            p = (d["ln_weight"][hd], d["ln_bias"][hd])
            X = (d["XQ"][b, hd], d["XK"][b, hd], d["XV"][b, hd])
            check_gradient(model, st, p, X[1][:1], X[2][:1])
            coef = (d["lr"][b, hd], d["momentum"][b, hd], d["decay"][b, hd])
            Z, W, S = momentum_scan(model, st, p, X, *coef, K)
            expected["Z"][b, hd] = Z
            for n in shapes:
                expected[f"{n}_last"][b, hd] = W[n]
                expected[f"{n}_momentum"][b, hd] = S[n]
    return x, expected


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "golden", "momentum")
    os.makedirs(out_dir, exist_ok=True)
    for stem, model, B, H, L, f, K, seed in CASES:
        x, expected = make_case(model, B, H, L, f, K, seed)
        save_file(x, os.path.join(out_dir, f"{stem}.inputs.safetensors"))
        save_file(expected, os.path.join(out_dir, f"{stem}.expected.safetensors"))
        print(f"{stem}: max |Z| {np.abs(expected['Z']).max():.3f}, "
              f"max |W1_momentum| {np.abs(expected['W1_momentum']).max():.3e}")


if __name__ == "__main__":
    main()
