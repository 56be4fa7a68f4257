"""Per-token DECODE of the TTT inner loop (TTT-Linear, TTT-MLP) in JAX (jit) and PyTorch (eager):
the decode peers tttc is measured against. Same math as the goldens (DESIGN.md section 2,
tests/golden/README.md "inner"), written here in the primal form with the partial gradient sum
carried between tokens of an unfinished mini-batch.

Decode state per (b, h): theta0 (fast weights at the current mini-batch's start), S (same shapes
as theta: sum over the earlier tokens j of this mini-batch of lr_j * grad_j(theta0)) and the
position p in the mini-batch (one p for all b, h: every sequence advances one token per step).
One step for token (q, k, v, lr) at position p:

    g       = grad_theta 0.5*||LN(g(k; theta0)) - (v - k)||^2     (hand-derived backward)
    S       = S + lr * g
    theta_p = theta0 - token_eta[p] * S
    z       = q + LN(g(q; theta_p))
    p += 1; if p == K: theta0 = theta_p, S = 0, p = 0

Gradients are hand-derived (LayerNorm+L2 backward, then linear / GELU-tanh MLP backward), the
same formulas as bench/peers.py. The JAX step is ONE jax.jit function for every position: p is
a traced int32 array, token_eta[p] a dynamic index and the mini-batch close a jnp.where on the
flag p+1 == K, so it compiles once. The PyTorch step is eager (torch.no_grad, float32), with p a
Python int. A golden's remainder mini-batch needs nothing special: positions p = t mod K give
token_eta[0:r] automatically.

Shapes: q, k, v [B, H, f]; lr [B, H]; token_eta [K]; ln_weight, ln_bias [H, f];
theta: W1 [B, H, f, h], b1 [B, H, h] (, W2 [B, H, h, f], b2 [B, H, f]); h = f (linear), 4f (mlp).

    bench/.venv/bin/python bench/decode_peers.py --check   # goldens only
    bench/.venv/bin/python bench/decode_peers.py           # check, then a table
    bench/.venv/bin/python bench/decode_peers.py --json    # check (stderr), then JSON lines
Options: --tokens N (default 208 = 13 mini-batches), --runs R (default 5), --impl, --model.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

EPS = 1e-6
C = math.sqrt(2.0 / math.pi)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")
CASES = [
    ("inner_linear_B1_nh2_f16_K16_L64", False),
    ("inner_linear_B2_nh2_f16_K16_L40", False),
    ("inner_mlp_B1_nh2_f16_K16_L64", True),
    ("inner_mlp_B2_nh2_f16_K16_L40", True),
]
TOL = 1e-5  # max|err| / max|expected|, float32 vs the float64 expectations
B, H, F, K = 1, 12, 64, 16


# ----------------------------------------------------------------------------- safetensors
def load_safetensors(path):
    """Tiny reader (header length, JSON header, raw little-endian row-major data)."""
    dt = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4"}
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dt[e["dtype"]]).reshape(e["shape"]).copy()
    return out


# ----------------------------------------------------------------------------- state helpers
def init_theta(t, batch):
    """Golden-layout weights [H, ...] (b1, b2 [H, 1, n]) -> decode layout [B, H, ...] float32."""
    bc = lambda x: np.array(np.broadcast_to(x, (batch,) + x.shape), np.float32)  # own, writable copy
    theta = [bc(t["W1"]), bc(t["b1"][:, 0, :])]
    if "W2" in t:
        theta += [bc(t["W2"]), bc(t["b2"][:, 0, :])]
    return theta


# ----------------------------------------------------------------------------- JAX
_JAX_STEPS = {}


def jax_step_fn(mlp):
    """One jitted decode step: (theta0, S, p, q, k, v, lr, token_eta, ln_w, ln_b) ->
    (theta0', S', p', z). theta0 and S are tuples of arrays, p an int32 scalar array; the state
    arguments (theta0, S, p) are donated, so XLA updates them in place. Built once per model."""
    if mlp not in _JAX_STEPS:
        _JAX_STEPS[mlp] = _make_jax_step(mlp)
    return _JAX_STEPS[mlp]


def _make_jax_step(mlp):
    import jax
    import jax.numpy as jnp

    def ln_stats(x):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        std = jnp.sqrt(var + EPS)
        return (x - mu) / std, std

    def ln_fwd(x, w, b):
        return w * ln_stats(x)[0] + b

    def ln_l2_bwd(x, target, w, b):
        f = x.shape[-1]
        xhat, std = ln_stats(x)
        gx = ((w * xhat + b) - target) * w
        return (f * gx - gx.sum(-1, keepdims=True) - xhat * (gx * xhat).sum(-1, keepdims=True)) / (f * std)

    def gelu(x):
        return 0.5 * x * (1 + jnp.tanh(C * (x + 0.044715 * x ** 3)))

    def gelu_d(x):
        th = jnp.tanh(C * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * C * (1 + 3 * 0.044715 * x * x)

    mv = lambda x, W: jnp.einsum("bhf,bhfg->bhg", x, W)   # batched row-vector @ matrix
    outer = lambda a, d: a[..., :, None] * d[..., None, :]

    def step(theta0, S, p, q, k, v, lr, te, lw, lb):
        target = v - k
        if not mlp:
            W1, b1 = theta0
            g1 = ln_l2_bwd(mv(k, W1) + b1, target, lw, lb)
            grads = (outer(k, g1), g1)
        else:
            W1, b1, W2, b2 = theta0
            z1 = mv(k, W1) + b1
            x2 = gelu(z1)
            g2 = ln_l2_bwd(mv(x2, W2) + b2, target, lw, lb)
            g1 = jnp.einsum("bhf,bhgf->bhg", g2, W2) * gelu_d(z1)
            grads = (outer(k, g1), g1, outer(x2, g2), g2)
        lr_ = lambda x: lr.reshape(lr.shape + (1,) * (x.ndim - 2))
        S = tuple(s + lr_(g) * g for s, g in zip(S, grads))
        eta = te[p]
        theta_p = tuple(t0 - eta * s for t0, s in zip(theta0, S))
        if not mlp:
            out = mv(q, theta_p[0]) + theta_p[1]
        else:
            out = mv(gelu(mv(q, theta_p[0]) + theta_p[1]), theta_p[2]) + theta_p[3]
        z = q + ln_fwd(out, lw, lb)
        close = p + 1 == te.shape[0]
        theta0 = tuple(jnp.where(close, tp, t0) for tp, t0 in zip(theta_p, theta0))
        S = tuple(jnp.where(close, jnp.zeros_like(s), s) for s in S)
        p = jnp.where(close, 0, p + 1).astype(jnp.int32)
        return theta0, S, p, z

    return jax.jit(step, donate_argnums=(0, 1, 2))


class JaxDecoder:
    def __init__(self, t, batch, mlp):
        import jax.numpy as jnp
        self.jnp = jnp
        self.step = jax_step_fn(mlp)
        self.theta0 = tuple(jnp.asarray(x) for x in init_theta(t, batch))
        self.S = tuple(jnp.zeros_like(x) for x in self.theta0)
        self.p = jnp.asarray(0, jnp.int32)
        self.te = jnp.asarray(t["token_eta"], jnp.float32)
        self.lw = jnp.asarray(t["ln_weight"], jnp.float32)
        self.lb = jnp.asarray(t["ln_bias"], jnp.float32)

    def tokens(self, t):
        """Pre-sliced per-token device arrays (q, k, v, lr)."""
        jnp = self.jnp
        L = t["XQ"].shape[2]
        return [tuple(jnp.asarray(np.ascontiguousarray(t[n][:, :, i])) for n in ("XQ", "XK", "XV", "ttt_lr_eta"))
                for i in range(L)]

    def __call__(self, tok):
        self.theta0, self.S, self.p, z = self.step(self.theta0, self.S, self.p, *tok, self.te, self.lw, self.lb)
        return z

    def sync(self, z):
        z.block_until_ready()

    def current_theta(self):
        """theta after the last decoded token (theta0 right after a close)."""
        p = int(self.p)
        if p == 0:
            return [np.asarray(x) for x in self.theta0]
        return [np.asarray(t0 - self.te[p - 1] * s) for t0, s in zip(self.theta0, self.S)]


# ----------------------------------------------------------------------------- PyTorch
class TorchDecoder:
    def __init__(self, t, batch, mlp):
        import torch
        self.torch = torch
        self.mlp = mlp
        self.theta0 = [torch.from_numpy(x) for x in init_theta(t, batch)]
        self.S = [torch.zeros_like(x) for x in self.theta0]
        self.p = 0
        self.te = [float(x) for x in t["token_eta"]]   # host scalars: eager code indexes them per token
        self.K = len(self.te)
        self.lw = torch.from_numpy(np.ascontiguousarray(t["ln_weight"], np.float32))
        self.lb = torch.from_numpy(np.ascontiguousarray(t["ln_bias"], np.float32))

    def tokens(self, t):
        torch = self.torch
        L = t["XQ"].shape[2]
        return [tuple(torch.from_numpy(np.ascontiguousarray(t[n][:, :, i], np.float32))
                      for n in ("XQ", "XK", "XV", "ttt_lr_eta")) for i in range(L)]

    def _ln_stats(self, x):
        mu = x.mean(-1, keepdim=True)
        xc = x - mu
        std = self.torch.sqrt((xc * xc).mean(-1, keepdim=True) + EPS)
        return xc / std, std

    def _ln_l2_bwd(self, x, target):
        f = x.shape[-1]
        xhat, std = self._ln_stats(x)
        gx = ((self.lw * xhat + self.lb) - target) * self.lw
        return (f * gx - gx.sum(-1, keepdim=True) - xhat * (gx * xhat).sum(-1, keepdim=True)) / (f * std)

    def _ln_fwd(self, x):
        return self.lw * self._ln_stats(x)[0] + self.lb

    def __call__(self, tok):
        torch = self.torch
        with torch.no_grad():
            q, k, v, lr = tok
            mv = lambda x, W: (x.unsqueeze(-2) @ W).squeeze(-2)
            target = v - k
            lr3 = lr[..., None]
            th = self.theta0
            if not self.mlp:
                g1 = self._ln_l2_bwd(mv(k, th[0]) + th[1], target)
                S = self.S
                S[0].add_((k * lr3).unsqueeze(-1) * g1.unsqueeze(-2))   # lr * outer(k, g1)
                S[1].add_(g1 * lr3)
            else:
                z1 = mv(k, th[0]) + th[1]
                x2 = gelu_t(z1)
                g2 = self._ln_l2_bwd(mv(x2, th[2]) + th[3], target)
                g1 = mv(g2, th[2].transpose(-1, -2)) * gelu_d_t(z1)
                S = self.S
                S[0].add_((k * lr3).unsqueeze(-1) * g1.unsqueeze(-2))
                S[1].add_(g1 * lr3)
                S[2].add_((x2 * lr3).unsqueeze(-1) * g2.unsqueeze(-2))
                S[3].add_(g2 * lr3)
            eta = self.te[self.p]
            theta_p = [t0 - eta * s for t0, s in zip(th, self.S)]
            if not self.mlp:
                out = mv(q, theta_p[0]) + theta_p[1]
            else:
                out = mv(gelu_t(mv(q, theta_p[0]) + theta_p[1]), theta_p[2]) + theta_p[3]
            z = q + self._ln_fwd(out)
            self.p += 1
            if self.p == self.K:
                self.theta0 = theta_p
                for s in self.S:
                    s.zero_()
                self.p = 0
            return z

    def sync(self, z):
        pass

    def current_theta(self):
        if self.p == 0:
            return [x.numpy() for x in self.theta0]
        eta = self.te[self.p - 1]
        return [(t0 - eta * s).numpy() for t0, s in zip(self.theta0, self.S)]


def gelu_t(x):
    import torch
    return 0.5 * x * (1 + torch.tanh(C * (x + 0.044715 * x ** 3)))


def gelu_d_t(x):
    import torch
    th = torch.tanh(C * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * C * (1 + 3 * 0.044715 * x * x)


IMPLS = {"jax": JaxDecoder, "torch": TorchDecoder}


# ----------------------------------------------------------------------------- check
def check(impls, out=sys.stdout):
    """Decode every inner golden token by token; compare Z (and the final / last-full-mini-batch
    state) with the float64 expectations. Returns the worst Z error."""
    worst = 0.0
    for case, mlp in CASES:
        base = os.path.join(GOLDEN, case)
        t = load_safetensors(base + ".inputs.safetensors")
        exp = load_safetensors(base + ".expected_f64.safetensors")
        Bc, Hc, L, f = t["XQ"].shape
        Kc = t["token_eta"].shape[0]
        names = ["W1", "b1"] + (["W2", "b2"] if mlp else [])
        for impl in impls:
            dec = IMPLS[impl](t, Bc, mlp)
            compiled = dec.step._cache_size() if impl == "jax" else 0
            zs, full_mb = [], None
            for i, tok in enumerate(dec.tokens(t)):
                z = dec(tok)
                dec.sync(z)
                zs.append(np.asarray(z))
                if (i + 1) % Kc == 0:
                    full_mb = dec.current_theta()
            Z = np.stack(zs, 2)
            if impl == "jax":   # at most one new compile (new shapes) for all positions and closes
                n_new = dec.step._cache_size() - compiled
                assert n_new <= 1, f"jax step compiled {n_new} times for one sequence"
            rel = lambda g, e: float(np.abs(g - e).max() / np.abs(e).max())
            errs = {"Z": rel(Z, exp["Z"])}
            last = dec.current_theta()
            for n, g in zip(names, last):
                e = exp[n + "_last"]
                errs[n + "_last"] = rel(g, e.reshape(g.shape))
            if L % Kc:
                for n, g in zip(names, full_mb):
                    e = exp[n + "_last_full_mb"]
                    errs[n + "_last_full_mb"] = rel(g, e.reshape(g.shape))
            bad = {k: v for k, v in errs.items() if not v <= TOL}
            worst = max(worst, errs["Z"])
            state_err = max(v for k, v in errs.items() if k != "Z")
            print(f"check {impl:5s} {case:34s} Z max|err|/max|exp| = {errs['Z']:.2e}   "
                  f"state (worst of {len(errs) - 1}) = {state_err:.2e}", file=out)
            if bad:
                raise SystemExit(f"FAIL {impl} {case}: {bad} (tol {TOL})")
    print(f"decode peers agree with the goldens (tol {TOL:g}; worst Z error {worst:.2e})", file=out)
    return worst


# ----------------------------------------------------------------------------- benchmark
def bench_inputs(mlp, L, seed=0):
    """Like bench/run.py: N(0,1) q/k/v, weights N(0, 0.02^2), lr = 1/f, token_eta = 1/(i+1)."""
    r = np.random.default_rng(seed)
    n = lambda *s, sc=1.0: (r.standard_normal(s) * sc).astype(np.float32)
    h = 4 * F if mlp else F
    t = {
        "XQ": n(B, H, L, F), "XK": n(B, H, L, F), "XV": n(B, H, L, F),
        "token_eta": (1.0 / np.arange(1, K + 1)).astype(np.float32),
        "ttt_lr_eta": np.full((B, H, L), 1.0 / F, np.float32),
        "W1": n(H, F, h, sc=0.02), "b1": np.zeros((H, 1, h), np.float32),
        "ln_weight": np.ones((H, F), np.float32), "ln_bias": np.zeros((H, F), np.float32),
    }
    if mlp:
        t.update(W2=n(H, h, F, sc=0.02), b2=np.zeros((H, 1, F), np.float32))
    return t


def bench(impl, mlp, tokens, runs):
    """Untimed warm-up first (2 mini-batches: JAX compiles its one step there, a close is
    included). Then `runs` runs, each from a fresh decoder state over the same `tokens` tokens
    (positions cycle 0..K-1, so every K-th step closes a mini-batch); every step is synchronized
    (z ready - block_until_ready for JAX - before the next step is issued) and timed alone with
    perf_counter. Returns (median of all per-token times, median of the per-run means, the
    per-run means), in microseconds."""
    t = bench_inputs(mlp, tokens)
    cls = IMPLS[impl]
    dec = cls(t, B, mlp)
    toks = dec.tokens(t)
    for tok in toks[:2 * K]:
        dec.sync(dec(tok))
    means, per_tok = [], []
    for _ in range(runs):
        dec = cls(t, B, mlp)
        ts = []
        for tok in toks:
            t0 = time.perf_counter()
            dec.sync(dec(tok))
            ts.append(time.perf_counter() - t0)
        means.append(sum(ts) / len(ts) * 1e6)
        per_tok += ts
    return statistics.median(per_tok) * 1e6, statistics.median(means), means


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="goldens only")
    ap.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    ap.add_argument("--tokens", type=int, default=13 * K, help="decode steps per timed run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--impl", choices=["jax", "torch", "all"], default="all")
    ap.add_argument("--model", choices=["linear", "mlp", "all"], default="all")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch.set_num_threads (default 1; 0 keeps torch's default)")
    a = ap.parse_args()
    impls = ["jax", "torch"] if a.impl == "all" else [a.impl]
    models = ["linear", "mlp"] if a.model == "all" else [a.model]
    if "torch" in impls:
        import torch
        if a.torch_threads > 0:
            torch.set_num_threads(a.torch_threads)

    check(impls, out=sys.stderr if a.json else sys.stdout)
    if a.check:
        return
    rows = []
    for model in models:
        for impl in impls:
            tok_med, run_med, means = bench(impl, model == "mlp", a.tokens, a.runs)
            if a.json:
                print(json.dumps({"impl": impl, "model": model, "us_per_token": round(tok_med, 1),
                                  "heads": H, "f": F, "K": K}), flush=True)
            rows.append((model, impl, tok_med, run_med, means))
    if a.json:
        return
    import jax
    import torch
    print(f"\nper-token decode, B={B}, heads={H}, f={F}, K={K}, float32; {a.tokens} tokens per run "
          f"({a.tokens / K:g} mini-batches), {a.runs} runs; jax {jax.__version__} (jit, CPU), "
          f"torch {torch.__version__} (eager, {torch.get_num_threads()} threads); os.cpu_count()={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| model | impl | us/token: median token | us/token: median of run means | run means |")
    print("| --- | --- | --- | --- | --- |")
    for model, impl, tok_med, run_med, means in rows:
        name = "TTT-Linear" if model == "linear" else "TTT-MLP"
        print(f"| {name} | {impl} | {tok_med:.1f} | {run_med:.1f} | " + ", ".join(f"{m:.0f}" for m in means) + " |")


if __name__ == "__main__":
    main()
