"""Checks the chunked form of `momentum_gd` written in docs/language.md (a design: the compiler
does not implement the rule yet) against the rule's per-token definition, in float64 NumPy.

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
decay = 0 is minibatch_gd with token_eta = 1. Usage: python3 tools/momentum_chunked_check.py
(needs numpy); exits non-zero on a mismatch.
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
