"""Dual-form TTT-Linear / TTT-MLP in PyTorch (eager) and JAX (jit + lax.scan): the peers tttc
is measured against. Same math as the goldens (ttt-lm-pytorch's inner loop), written here from
DESIGN.md §2; `check()` compares both with tests/golden before anything is timed.

Shapes: XQ, XK, XV [B, H, L, f]; token_eta [K]; ttt_lr_eta [B, H, L]; W1 [H, f, h]; b1 [H, 1, h];
(W2 [H, h, f]; b2 [H, 1, f]); ln_weight, ln_bias [H, f]. L must be a multiple of K here.
"""
import math

EPS = 1e-6
C = math.sqrt(2.0 / math.pi)


# ----------------------------------------------------------------------------- PyTorch
def torch_forward(t, mlp):
    import torch

    def ln_fwd(x, w, b):
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        std = torch.sqrt(var + EPS)
        xhat = (x - mu) / std
        return w * xhat + b

    def ln_l2_bwd(x, target, w, b):
        f = x.shape[-1]
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        std = torch.sqrt(var + EPS)
        xhat = (x - mu) / std
        gy = (w * xhat + b) - target
        gx = gy * w
        return (f * gx - gx.sum(-1, keepdim=True) - xhat * (gx * xhat).sum(-1, keepdim=True)) / (f * std)

    def gelu(x):
        return 0.5 * x * (1 + torch.tanh(C * (x + 0.044715 * x ** 3)))

    def gelu_d(x):
        th = torch.tanh(C * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * C * (1 + 3 * 0.044715 * x * x)

    XQ, XK, XV = t["XQ"], t["XK"], t["XV"]
    B, H, L, f = XQ.shape
    K = t["token_eta"].shape[0]
    n = L // K
    mb = lambda x: x.reshape(B, H, n, K, *x.shape[3:])
    XQ, XK, XV = mb(XQ), mb(XK), mb(XV)
    lr = t["ttt_lr_eta"].reshape(B, H, n, K)
    te = t["token_eta"]
    lw, lb = t["ln_weight"][None, :, None, :], t["ln_bias"][None, :, None, :]
    tril = torch.tril(torch.ones(K, K, dtype=XQ.dtype))
    W1 = t["W1"][None].expand(B, -1, -1, -1).clone()
    b1 = t["b1"][None].expand(B, -1, -1, -1).clone()
    if mlp:
        W2 = t["W2"][None].expand(B, -1, -1, -1).clone()
        b2 = t["b2"][None].expand(B, -1, -1, -1).clone()
    out = []
    for i in range(n):
        q, k, v = XQ[:, :, i], XK[:, :, i], XV[:, :, i]
        eta = te[None, None, :, None] * lr[:, :, i, None, :] * tril        # [B,H,K,K]
        last = eta[:, :, -1, :, None]                                       # [B,H,K,1]
        target = v - k
        if not mlp:
            z1 = k @ W1 + b1
            g1 = ln_l2_bwd(z1, target, lw, lb)
            attn = torch.tril(q @ k.transpose(-1, -2))
            z1_bar = q @ W1 - (eta * attn) @ g1 + b1 - eta @ g1
            W1 = W1 - (last * k).transpose(-1, -2) @ g1
            b1 = b1 - (last * g1).sum(-2, keepdim=True)
            out.append(q + ln_fwd(z1_bar, lw, lb))
        else:
            z1 = k @ W1 + b1
            x2 = gelu(z1)
            z2 = x2 @ W2 + b2
            g2 = ln_l2_bwd(z2, target, lw, lb)
            g1 = (g2 @ W2.transpose(-1, -2)) * gelu_d(z1)
            attn1 = torch.tril(q @ k.transpose(-1, -2))
            z1_bar = q @ W1 - (eta * attn1) @ g1 + b1 - eta @ g1
            x2_bar = gelu(z1_bar)
            attn2 = torch.tril(x2_bar @ x2.transpose(-1, -2))
            z2_bar = x2_bar @ W2 - (eta * attn2) @ g2 + b2 - eta @ g2
            W1 = W1 - (last * k).transpose(-1, -2) @ g1
            b1 = b1 - (last * g1).sum(-2, keepdim=True)
            W2 = W2 - (last * x2).transpose(-1, -2) @ g2
            b2 = b2 - (last * g2).sum(-2, keepdim=True)
            out.append(q + ln_fwd(z2_bar, lw, lb))
    Z = torch.stack(out, 2).reshape(B, H, L, f)
    res = {"Z": Z, "W1_last": W1, "b1_last": b1}
    if mlp:
        res.update(W2_last=W2, b2_last=b2)
    return res


# ----------------------------------------------------------------------------- JAX
def jax_forward_fn(mlp):
    """The jitted forward (`jax_forward`)."""
    import jax

    return jax.jit(jax_forward(mlp))


def jax_forward(mlp, remat_group=0):
    """The forward as a plain function of a dict of arrays. With `remat_group` G > 0 the scan
    runs over groups of G mini-batches, each group under `jax.checkpoint` (ttt-lm-jax's remat:
    the backward keeps the state at group boundaries and recomputes inside a group); the number
    of mini-batches must then be a multiple of G."""
    import jax
    import jax.numpy as jnp

    def ln_fwd(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return w * (x - mu) / jnp.sqrt(var + EPS) + b

    def ln_l2_bwd(x, target, w, b):
        f = x.shape[-1]
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        std = jnp.sqrt(var + EPS)
        xhat = (x - mu) / std
        gx = ((w * xhat + b) - target) * w
        return (f * gx - gx.sum(-1, keepdims=True) - xhat * (gx * xhat).sum(-1, keepdims=True)) / (f * std)

    def gelu(x):
        return 0.5 * x * (1 + jnp.tanh(C * (x + 0.044715 * x ** 3)))

    def gelu_d(x):
        th = jnp.tanh(C * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * C * (1 + 3 * 0.044715 * x * x)

    def forward(t):
        XQ, XK, XV = t["XQ"], t["XK"], t["XV"]
        B, H, L, f = XQ.shape
        K = t["token_eta"].shape[0]
        n = L // K
        mb = lambda x: jnp.moveaxis(x.reshape(B, H, n, K, *x.shape[3:]), 2, 0)
        xs = (mb(XQ), mb(XK), mb(XV), jnp.moveaxis(t["ttt_lr_eta"].reshape(B, H, n, K), 2, 0))
        te = t["token_eta"]
        lw, lb = t["ln_weight"][None, :, None, :], t["ln_bias"][None, :, None, :]
        tril = jnp.tril(jnp.ones((K, K), XQ.dtype))
        bc = lambda x: jnp.broadcast_to(x[None], (B,) + x.shape)
        state = (bc(t["W1"]), bc(t["b1"])) + ((bc(t["W2"]), bc(t["b2"])) if mlp else ())

        def step(state, x):
            q, k, v, lr = x
            eta = te[None, None, :, None] * lr[:, :, None, :] * tril
            last = eta[:, :, -1, :, None]
            target = v - k
            if not mlp:
                W1, b1 = state
                z1 = k @ W1 + b1
                g1 = ln_l2_bwd(z1, target, lw, lb)
                attn = jnp.tril(q @ jnp.swapaxes(k, -1, -2))
                z1_bar = q @ W1 - (eta * attn) @ g1 + b1 - eta @ g1
                W1 = W1 - jnp.swapaxes(last * k, -1, -2) @ g1
                b1 = b1 - (last * g1).sum(-2, keepdims=True)
                return (W1, b1), q + ln_fwd(z1_bar, lw, lb)
            W1, b1, W2, b2 = state
            z1 = k @ W1 + b1
            x2 = gelu(z1)
            z2 = x2 @ W2 + b2
            g2 = ln_l2_bwd(z2, target, lw, lb)
            g1 = (g2 @ jnp.swapaxes(W2, -1, -2)) * gelu_d(z1)
            attn1 = jnp.tril(q @ jnp.swapaxes(k, -1, -2))
            z1_bar = q @ W1 - (eta * attn1) @ g1 + b1 - eta @ g1
            x2_bar = gelu(z1_bar)
            attn2 = jnp.tril(x2_bar @ jnp.swapaxes(x2, -1, -2))
            z2_bar = x2_bar @ W2 - (eta * attn2) @ g2 + b2 - eta @ g2
            W1 = W1 - jnp.swapaxes(last * k, -1, -2) @ g1
            b1 = b1 - (last * g1).sum(-2, keepdims=True)
            W2 = W2 - jnp.swapaxes(last * x2, -1, -2) @ g2
            b2 = b2 - (last * g2).sum(-2, keepdims=True)
            return (W1, b1, W2, b2), q + ln_fwd(z2_bar, lw, lb)

        if remat_group:
            G = remat_group
            grouped = jax.tree_util.tree_map(lambda x: x.reshape((n // G, G) + x.shape[1:]), xs)
            group = jax.checkpoint(lambda s, x: jax.lax.scan(step, s, x), prevent_cse=False)
            state, zs = jax.lax.scan(group, state, grouped)
            zs = zs.reshape((n,) + zs.shape[2:])
        else:
            state, zs = jax.lax.scan(step, state, xs)
        Z = jnp.moveaxis(zs, 0, 2).reshape(B, H, L, f)
        res = {"Z": Z, "W1_last": state[0], "b1_last": state[1]}
        if mlp:
            res.update(W2_last=state[2], b2_last=state[3])
        return res

    return forward
