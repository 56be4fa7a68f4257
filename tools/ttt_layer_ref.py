"""An independent NumPy reference of ttt-lm-pytorch's TTTLinear module forward (float64),
written from the formulas in tests/golden/README.md, for checking tttc on shapes the goldens
do not cover (B > 1, L not a multiple of K, other widths and learning rates).

Usage: python3 tools/ttt_layer_ref.py OUT_DIR [B L H NH K BASE_LR SEED]
writes OUT_DIR/case.inputs.safetensors and OUT_DIR/case.expected.safetensors (output, F64).
Needs numpy and safetensors (pip install numpy safetensors). Optional: no test depends on it.
"""
import sys, os
import numpy as np
from safetensors.numpy import save_file


def layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def ln_l2_grad(z, target, w, eps=1e-6):
    """d/dz of 0.5*||LN(z) - target||^2 for a row z (hand-derived)."""
    f = z.shape[-1]
    mu = z.mean()
    xc = z - mu
    std = np.sqrt((xc ** 2).mean() + eps)
    xhat = xc / std
    g_xhat = (w * xhat + 0 - target) * w  # bias cancels in the difference below
    return (f * g_xhat - g_xhat.sum() - xhat * (g_xhat * xhat).sum()) / (f * std)


def inner_linear(XQ, XK, XV, token_eta, lr, W, b, lnw, lnb, K):
    L, f = XQ.shape
    Z = np.zeros_like(XQ)
    t0 = 0
    while t0 < L:
        k = min(K, L - t0)
        gW, gb = [], []
        for j in range(k):
            x = XK[t0 + j]
            z = x @ W + b
            target = XV[t0 + j] - x
            # residual: LN(z) - target, with the bias lnb included
            dz = ln_l2_grad(z, target - lnb, lnw)
            gW.append(np.outer(x, dz))
            gb.append(dz)
        Wi = W
        bi = b
        for i in range(k):
            Wi = W - sum(token_eta[i] * lr[t0 + j] * gW[j] for j in range(i + 1))
            bi = b - sum(token_eta[i] * lr[t0 + j] * gb[j] for j in range(i + 1))
            q = XQ[t0 + i]
            Z[t0 + i] = q + layer_norm(q @ Wi + bi, lnw, lnb)
        W, b = Wi, bi
        t0 += k
    return Z


def forward(p, x, nh, K, base_lr, theta=10000.0):
    B, L, H = x.shape
    f = H // nh
    heads = lambda y: y.reshape(B, L, nh, f).transpose(0, 2, 1, 3)
    XQ, XK, XV = (heads(x @ p[n].T) for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight"))
    pos = np.arange(L) % K
    inv = theta ** (-2.0 * np.arange(f // 2) / f)
    a = pos[:, None] * inv[None, :]
    c, s = np.cos(a), np.sin(a)

    def rope(y):
        y0, y1 = y[..., 0::2], y[..., 1::2]
        out = np.empty_like(y)
        out[..., 0::2] = y0 * c - y1 * s
        out[..., 1::2] = y1 * c + y0 * s
        return out

    XQ, XK = rope(XQ), rope(XK)
    gate = x @ p["learnable_ttt_lr_weight"][:, 0, :].T + p["learnable_ttt_lr_bias"][:, 0]
    lr = base_lr / (1 + np.exp(-gate)) / f  # [B, L, nh]
    token_eta = np.maximum(0, 1.0 / np.arange(1, K + 1) + p["learnable_token_idx"])
    Z = np.zeros((B, nh, L, f))
    for bb in range(B):
        for h in range(nh):
            Z[bb, h] = inner_linear(XQ[bb, h], XK[bb, h], XV[bb, h], token_eta, lr[bb, :, h],
                                    p["W1"][h], p["b1"][h, 0], p["ttt_norm_weight"][h],
                                    p["ttt_norm_bias"][h], K)
    y = Z.transpose(0, 2, 1, 3).reshape(B, L, H)
    y = layer_norm(y, p["post_norm.weight"], p["post_norm.bias"])
    return y @ p["o_proj.weight"].T


def main():
    out = sys.argv[1]
    B, L, H, nh, K = (int(v) for v in sys.argv[2:7]) if len(sys.argv) > 6 else (2, 40, 48, 3, 16)
    base_lr = float(sys.argv[7]) if len(sys.argv) > 7 else 0.5
    seed = int(sys.argv[8]) if len(sys.argv) > 8 else 0
    f = H // nh
    r = np.random.default_rng(seed)
    n = lambda *s, sc=0.1: (r.standard_normal(s) * sc).astype(np.float32)
    p = {
        "q_proj.weight": n(H, H), "k_proj.weight": n(H, H), "v_proj.weight": n(H, H),
        "o_proj.weight": n(H, H),
        "learnable_token_idx": n(K, sc=0.05),
        "learnable_ttt_lr_weight": n(nh, 1, H), "learnable_ttt_lr_bias": n(nh, 1),
        "ttt_norm_weight": (1 + n(nh, f)).astype(np.float32), "ttt_norm_bias": n(nh, f),
        "W1": n(nh, f, f, sc=0.02), "b1": np.zeros((nh, 1, f), np.float32),
        "post_norm.weight": (1 + n(H)).astype(np.float32), "post_norm.bias": n(H),
        "hidden_states": n(B, L, H, sc=1.0),
    }
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    y = forward(p64, p64["hidden_states"], nh, K, base_lr)
    os.makedirs(out, exist_ok=True)
    save_file(p, os.path.join(out, "case.inputs.safetensors"))
    save_file({"output": y}, os.path.join(out, "case.expected.safetensors"))


if __name__ == "__main__":
    main()
