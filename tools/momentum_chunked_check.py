"""Checks the chunked form of `momentum_gd` written in docs/language.md against the rule's per-token definition, in float64 NumPy.

Per-token definition, inside a mini-batch all gradients at its starting state W:
    S_t = eta_t S_{t-1} - rho_t g_t,   W_t = (1 - alpha_t) W_{t-1} + S_t,   token t reads W_t;
S starts at zero and carries across mini-batches.

Chunked form (a = 1 - alpha, P^x(m..n) = prod_{m<=l<=n} x_l, 1 when empty):
    W_i = P^a(0..i) W + c_i S - sum_{j<=i} M[i, j] g_j
    c_i = sum_{m<=i} P^a(m+1..i) P^eta(0..m)
    M[i, j] = rho_j sum_{j<=m<=i} P^a(m+1..i) P^eta(j+1..m)
    S' = P^eta(0..k-1) S - sum_j P^eta(j+1..k-1) rho_j g_j

The inner model here is linear (loss 0.5 ||x W - y||^2, gradient x^T (x W - y)), a remainder
mini-batch included, momentum values including 0 and negatives. The mixing weights and carry
coefficients are also checked against the general form (products of the per-token 2x2
transition matrices). Also checks that momentum = 0,
decay = 0 is minibatch_gd with token_eta = 1. Also checks the step graph's own formulation
(segment-product matrices by Hillis-Steele doubling, passes/src/lower_scan.rs) against the sums.
Usage: python3 tools/momentum_chunked_check.py (needs numpy); exits non-zero on a mismatch.
"""
import numpy as np


def grad(W, x, y):
    return np.outer(x, x @ W - y)


def per_token(W, X, Y, rho, eta, alpha, K):
    L = len(X)
    S = np.zeros_like(W)
    reads = []
    for t0 in range(0, L, K):
        W0 = W
        for t in range(t0, min(t0 + K, L)):
            g = grad(W0, X[t], Y[t])
            S = eta[t] * S - rho[t] * g
            W = (1 - alpha[t]) * W + S
            reads.append(W @ np.ones(W.shape[1]))  # a fixed readout of W_t
    return np.array(reads), W, S


def P(x, m, n):
    return np.prod(x[m:n + 1]) if n >= m else 1.0


def chunked(W, X, Y, rho, eta, alpha, K):
    L = len(X)
    S = np.zeros_like(W)
    reads = []
    for t0 in range(0, L, K):
        k = min(K, L - t0)
        r, e, a = rho[t0:t0 + k], eta[t0:t0 + k], 1 - alpha[t0:t0 + k]
        G = [grad(W, X[t0 + j], Y[t0 + j]) for j in range(k)]
        M = np.zeros((k, k))
        c = np.zeros(k)
        for i in range(k):
            c[i] = sum(P(a, m + 1, i) * P(e, 0, m) for m in range(i + 1))
            for j in range(i + 1):
                M[i, j] = r[j] * sum(P(a, m + 1, i) * P(e, j + 1, m) for m in range(j, i + 1))
        # The general form: x = [W; S], x_t = T_t x_{t-1} + b_t g_t, T_t = [[a, eta], [0, eta]],
        # b_t = -rho_t [1; 1]; the weights are the first row of T_i ... T_{j+1} b_j and the
        # carries' coefficients the first row of T_i ... T_0.
        T = [np.array([[a[t], e[t]], [0.0, e[t]]]) for t in range(k)]
        prod = lambda lo, hi: np.linalg.multi_dot([np.eye(2)] * 2 + T[lo:hi + 1][::-1])
        for i in range(k):
            assert np.allclose(prod(0, i)[0], [P(a, 0, i), c[i]], rtol=1e-13, atol=1e-15)
            for j in range(i + 1):
                w = prod(j + 1, i)[0] @ (-r[j] * np.ones(2))
                assert abs(w + M[i, j]) <= 1e-13 * max(1.0, abs(M[i, j])), (i, j)
        Ws = [P(a, 0, i) * W + c[i] * S - sum(M[i, j] * G[j] for j in range(i + 1))
              for i in range(k)]
        reads += [Wi @ np.ones(W.shape[1]) for Wi in Ws]
        S = P(e, 0, k - 1) * S - sum(P(e, j + 1, k - 1) * r[j] * G[j] for j in range(k))
        W = Ws[-1]
    return np.array(reads), W, S


def segment_products(x, rounds):
    """The compiler's segment products (passes/src/lower_scan.rs): Q[i, m] = prod_{m<l<=i} x_l
    for m <= i, 0 above the diagonal, by Hillis-Steele doubling with 0/1 masks."""
    k = len(x)
    i, m = np.arange(k)[:, None], np.arange(k)[None, :]
    above, lower = (i > m).astype(float), (i >= m).astype(float)
    y = above * x[:, None] + (1 - above)
    for r in range(rounds):
        by = 1 << r
        shifted = np.zeros_like(y)
        shifted[by:] = y[:k - by] if by < k else shifted[by:]
        y = y * (shifted + (1 - (np.arange(k)[:, None] >= by)))
    return y * lower


def step_graph_form(W, S, G, rho, eta, alpha, rounds):
    """The step graph's matrices: P^a = Q^a[:, 0] a_0, c = Q^a P^eta, M = Q^a (Q^eta rho)."""
    a = 1 - alpha
    first = (np.arange(len(a)) == 0).astype(float)
    qa, qe = segment_products(a, rounds), segment_products(eta, rounds)
    pa, pe = qa @ (a * first), qe @ (eta * first)
    c = qa @ pe
    M = qa @ (qe * rho[None, :])
    Ws = [pa[i] * W + c[i] * S - sum(M[i, j] * G[j] for j in range(len(a))) for i in range(len(a))]
    S_next = pe[-1] * S - sum((qe * rho[None, :])[-1, j] * G[j] for j in range(len(a)))
    return Ws, S_next


def main():
    rng = np.random.default_rng(21)
    f, L, K = 4, 13, 5  # two full mini-batches and a remainder of 3
    W = 0.3 * rng.normal(size=(f, f))
    X, Y = rng.normal(size=(L, f)), rng.normal(size=(L, f))
    rho = rng.uniform(0.01, 0.2, L)
    eta = rng.uniform(-0.5, 0.95, L)
    eta[[2, 7]] = 0.0
    alpha = rng.uniform(0.0, 0.3, L)
    worst = 0.0
    for a, b in zip(per_token(W, X, Y, rho, eta, alpha, K), chunked(W, X, Y, rho, eta, alpha, K)):
        worst = max(worst, np.abs(a - b).max() / np.abs(a).max())
    print(f"momentum_gd chunked vs per-token: max relative error {worst:.1e}")
    assert worst < 1e-12, worst
    # The step graph's formulation (segment products by doubling, 16 rounds or exactly
    # ceil(log2 k)) against the chunked form's sums, on one mini-batch of k = 5 and of k = 1.
    for k in (5, 1):
        r, e, al = rho[:k], eta[:k], alpha[:k]
        S0 = 0.1 * rng.normal(size=(f, f))
        G = [rng.normal(size=(f, f)) for _ in range(k)]
        a = 1 - al
        want_W = [P(a, 0, i) * W + sum(P(a, m + 1, i) * P(e, 0, m) for m in range(i + 1)) * S0
                  - sum(r[j] * sum(P(a, m + 1, i) * P(e, j + 1, m) for m in range(j, i + 1)) * G[j]
                        for j in range(i + 1)) for i in range(k)]
        want_S = P(e, 0, k - 1) * S0 - sum(P(e, j + 1, k - 1) * r[j] * G[j] for j in range(k))
        for rounds in (16, int(np.ceil(np.log2(k)))):
            Ws, S1 = step_graph_form(W, S0, G, r, e, al, rounds)
            err = max(np.abs(np.array(Ws) - np.array(want_W)).max(), np.abs(S1 - want_S).max())
            assert err < 1e-13, (k, rounds, err)
    print("step-graph form (doubling segment products) vs chunked form: ok")
    # momentum = 0, decay = 0: minibatch_gd with token_eta = 1 (W_i = W - sum_{j<=i} rho_j g_j).
    z = np.zeros(L)
    reads, _, _ = per_token(W, X, Y, rho, z, z, K)
    gd, Wg = [], W
    for t0 in range(0, L, K):
        G = [grad(Wg, X[t], Y[t]) for t in range(t0, min(t0 + K, L))]
        Ws = [Wg - sum(rho[t0 + j] * G[j] for j in range(i + 1)) for i in range(len(G))]
        gd += [Wi @ np.ones(f) for Wi in Ws]
        Wg = Ws[-1]
    err = np.abs(reads - np.array(gd)).max() / np.abs(reads).max()
    print(f"momentum = decay = 0 vs minibatch_gd: max relative error {err:.1e}")
    assert err < 1e-12, err


if __name__ == "__main__":
    main()
