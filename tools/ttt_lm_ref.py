"""An independent NumPy reference of ttt-lm-pytorch's TTTForCausalLM forward (float64), written
from the formulas in tests/golden/README.md (section `model`), for the backbone / layer-type
combinations and shapes the goldens do not cover. Both inner models run token by token in the
primal form with hand-derived gradients (LayerNorm + L2, and GELU for TTT-MLP); RoPE tables are
exact (float64), so compare with a golden's `logits_exact_rope`.

Usage:
  python3 tools/ttt_lm_ref.py check GOLDEN_STEM...      compare with tests/golden/<stem>
  python3 tools/ttt_lm_ref.py combos OUT_DIR             write the combinations without goldens
  python3 tools/ttt_lm_ref.py layers OUT_DIR             write share_qk + use_gate layer cases

`combos` takes the weights of tests/golden/model_mlp_M (Mamba backbone) and model_linear_T
(Transformer backbone), exchanges their inner models' weights (W1, b1[, W2, b2]) to get TTT-Linear
on the Mamba backbone and TTT-MLP on the Transformer backbone, configured by
examples/configs/ttt_lm_{linear_M,mlp_T}.config.json, and writes
OUT_DIR/model_{linear_M,mlp_T}.{inputs,expected_f64}.safetensors.
Needs numpy and safetensors (pip install numpy safetensors). Optional: the tests read the files.
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ttt_layer_ref import layer_norm, ln_l2_grad  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GOLDEN = os.path.join(ROOT, "tests", "golden")
C = np.sqrt(2.0 / np.pi)


def rms_norm(x, w, eps):
    return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(C * (x + 0.044715 * x ** 3)))


def gelu_grad(x):
    t = np.tanh(C * (x + 0.044715 * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3 * 0.044715 * x * x)


def causal_conv(x, w, b):
    """x [B, L, C], w [C, 1, k], b [C]: c + sum_j w[:, 0, j] x[t - (k-1) + j]."""
    B, L, Ch = x.shape
    k = w.shape[-1]
    y = np.broadcast_to(b, x.shape).copy()
    for t in range(L):
        for j in range(k):
            src = t - (k - 1) + j
            if src >= 0:
                y[:, t] += w[:, 0, j] * x[:, src]
    return y


def grads(params, x, v, lnw, lnb):
    """Gradients of 0.5 ||LN(g(x)) - (v - x)||^2 w.r.t. the inner weights, by hand."""
    if "W2" in params:
        z1 = x @ params["W1"] + params["b1"]
        a = gelu(z1)
        z2 = a @ params["W2"] + params["b2"]
        dz2 = ln_l2_grad(z2, v - x - lnb, lnw)
        dz1 = (dz2 @ params["W2"].T) * gelu_grad(z1)
        return {"W1": np.outer(x, dz1), "b1": dz1, "W2": np.outer(a, dz2), "b2": dz2}
    z = x @ params["W1"] + params["b1"]
    dz = ln_l2_grad(z, v - x - lnb, lnw)
    return {"W1": np.outer(x, dz), "b1": dz}


def inner_out(params, q, lnw, lnb):
    if "W2" in params:
        z = gelu(q @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]
    else:
        z = q @ params["W1"] + params["b1"]
    return q + layer_norm(z, lnw, lnb)


def inner_loop(XQ, XK, XV, token_eta, lr, params, lnw, lnb, K):
    L, f = XQ.shape
    Z = np.zeros_like(XQ)
    t0 = 0
    while t0 < L:
        k = min(K, L - t0)
        g = [grads(params, XK[t0 + j], XV[t0 + j], lnw, lnb) for j in range(k)]
        for i in range(k):
            Wi = {n: params[n] - sum(token_eta[i] * lr[t0 + j] * g[j][n] for j in range(i + 1))
                  for n in params}
            Z[t0 + i] = inner_out(Wi, XQ[t0 + i], lnw, lnb)
        params = Wi
        t0 += k
    return Z


def ttt_block(p, s, X, cfg):
    B, L, H = X.shape
    nh, K = cfg["num_attention_heads"], cfg["mini_batch_size"]
    f = H // nh
    heads = lambda y: y.reshape(B, L, nh, f).transpose(0, 2, 1, 3)
    if cfg["share_qk"]:
        P = X @ p[s + "q_proj.weight"].T
        XQ = heads(causal_conv(P, p[s + "conv_q.weight"], p[s + "conv_q.bias"]))
        XK = heads(causal_conv(P, p[s + "conv_k.weight"], p[s + "conv_k.bias"]))
    else:
        XQ = heads(X @ p[s + "q_proj.weight"].T)
        XK = heads(X @ p[s + "k_proj.weight"].T)
    XV = heads(X @ p[s + "v_proj.weight"].T)
    pos = np.arange(L) % K
    a = pos[:, None] * (cfg["rope_theta"] ** (-2.0 * np.arange(f // 2) / f))[None, :]
    c, sn = np.cos(a), np.sin(a)

    def rope(y):
        y0, y1 = y[..., 0::2], y[..., 1::2]
        out = np.empty_like(y)
        out[..., 0::2] = y0 * c - y1 * sn
        out[..., 1::2] = y1 * c + y0 * sn
        return out

    XQ, XK = rope(XQ), rope(XK)
    gate = X @ p[s + "learnable_ttt_lr_weight"][:, 0, :].T + p[s + "learnable_ttt_lr_bias"][:, 0]
    lr = cfg["ttt_base_lr"] / (1 + np.exp(-gate)) / f  # [B, L, nh]
    token_eta = np.maximum(0, 1.0 / np.arange(1, K + 1) + p[s + "learnable_token_idx"])
    names = ["W1", "b1", "W2", "b2"] if cfg["ttt_layer_type"] == "mlp" else ["W1", "b1"]
    Z = np.zeros((B, nh, L, f))
    for bb in range(B):
        for h in range(nh):
            params = {n: p[s + n][h] for n in names}
            params = {n: (w[0] if n.startswith("b") else w) for n, w in params.items()}
            Z[bb, h] = inner_loop(XQ[bb, h], XK[bb, h], XV[bb, h], token_eta, lr[bb, :, h],
                                  params, p[s + "ttt_norm_weight"][h], p[s + "ttt_norm_bias"][h], K)
    y = layer_norm(Z.transpose(0, 2, 1, 3).reshape(B, L, H), p[s + "post_norm.weight"],
                   p[s + "post_norm.bias"])
    if cfg["use_gate"]:
        y = gelu(X @ p[s + "g_proj.weight"].T) * y
    return y @ p[s + "o_proj.weight"].T


def forward(p, ids, cfg):
    eps = cfg["rms_norm_eps"]
    h = p["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        if cfg["pre_conv"]:
            h = h + causal_conv(rms_norm(h, p[pre + "conv.norm.weight"], eps),
                                p[pre + "conv.conv.weight"], p[pre + "conv.conv.bias"])
        h = h + ttt_block(p, pre + "seq_modeling_block.", rms_norm(h, p[pre + "seq_norm.weight"], eps), cfg)
        x = rms_norm(h, p[pre + "ffn_norm.weight"], eps)
        z = x @ p[pre + "mlp.gate_proj.weight"].T
        h = h + (z / (1 + np.exp(-z)) * (x @ p[pre + "mlp.up_proj.weight"].T)) @ p[pre + "mlp.down_proj.weight"].T
    w_out = p["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else p["lm_head.weight"]
    return rms_norm(h, p["model.norm.weight"], eps) @ w_out.T


def load_case(stem):
    raw = load_file(os.path.join(GOLDEN, stem + ".inputs.safetensors"))
    cfg = json.load(open(os.path.join(GOLDEN, stem + ".config.json")))
    return raw, cfg


def run(raw, cfg):
    p = {k: v.astype(np.float64) for k, v in raw.items() if k != "input_ids"}
    return forward(p, raw["input_ids"], cfg)


def check(stems):
    for stem in stems:
        raw, cfg = load_case(stem)
        want = load_file(os.path.join(GOLDEN, stem + ".expected_f64.safetensors"))["logits_exact_rope"]
        got = run(raw, cfg)
        print(f"{stem}: max rel error vs logits_exact_rope {np.abs(got - want).max() / np.abs(want).max():.3e}")


def swap_inner(base, donor):
    inner = lambda n: any(n.endswith(".seq_modeling_block." + w) for w in ("W1", "b1", "W2", "b2"))
    out = {k: v for k, v in base.items() if not inner(k)}
    out.update({k: v for k, v in donor.items() if inner(k)})
    return out


def combos(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    (lin_t, cfg_t), (mlp_m, cfg_m) = load_case("model_linear_T"), load_case("model_mlp_M")
    config = lambda name: json.load(open(os.path.join(ROOT, "examples", "configs", name)))
    cases = {
        "model_linear_M": (swap_inner(mlp_m, lin_t), config("ttt_lm_linear_M.config.json")),
        "model_mlp_T": (swap_inner(lin_t, mlp_m), config("ttt_lm_mlp_T.config.json")),
    }
    assert cases["model_linear_M"][1] == dict(cfg_m, ttt_layer_type="linear")
    assert cases["model_mlp_T"][1] == dict(cfg_t, ttt_layer_type="mlp")
    for stem, (raw, cfg) in cases.items():
        logits = run(raw, cfg)
        save_file(raw, os.path.join(out_dir, stem + ".inputs.safetensors"))
        save_file({"logits_exact_rope": logits}, os.path.join(out_dir, stem + ".expected_f64.safetensors"))
        print(f"wrote {stem}: logits {logits.shape}, max |logit| {np.abs(logits).max():.4f}")


def layers(out_dir):
    """Whole TTT layers with share_qk and use_gate (the Mamba backbone's TTT layer): layer 0's
    seq_modeling_block of the Mamba cases (TTT-MLP from the golden model_mlp_M, TTT-Linear from
    OUT_DIR/model_linear_M made by `combos`), under the layer programs' names (the prefix
    dropped), on random hidden states: batch 2, 37 tokens (a remainder of 5)."""
    os.makedirs(out_dir, exist_ok=True)
    sources = {
        "layer_mlp_shareqk_gate_B2_L37": os.path.join(GOLDEN, "model_mlp_M.inputs.safetensors"),
        "layer_linear_shareqk_gate_B2_L37": os.path.join(out_dir, "model_linear_M.inputs.safetensors"),
    }
    cfg = json.load(open(os.path.join(GOLDEN, "model_mlp_M.config.json")))
    prefix = "model.layers.0.seq_modeling_block."
    for stem, path in sources.items():
        raw = load_file(path)
        p = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
        kind = "mlp" if "W2" in p else "linear"
        rng = np.random.default_rng(5)
        p["hidden_states"] = rng.standard_normal((2, 37, cfg["hidden_size"])).astype(np.float32)
        p64 = {k: v.astype(np.float64) for k, v in p.items()}
        y = ttt_block(p64, "", p64["hidden_states"], dict(cfg, ttt_layer_type=kind))
        save_file(p, os.path.join(out_dir, stem + ".inputs.safetensors"))
        save_file({"output": y}, os.path.join(out_dir, stem + ".expected_f64.safetensors"))
        print(f"wrote {stem}: output {y.shape}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "check":
        check(sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "combos":
        combos(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "layers":
        layers(sys.argv[2])
    else:
        sys.exit(__doc__)
