"""Measures tttc against PyTorch eager and JAX jit + lax.scan on the same dual-form math, and
the machine's sgemm rate, in one run; writes bench/RESULTS.md. Run through bench/run.sh.

B=1, 12 heads, f=64, K=16, L in {512, 2048, 8192}, TTT-Linear and TTT-MLP, f32.
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import peers  # noqa: E402

TTTC = os.path.join(ROOT, "target", "release", "tttc")
ITERS = int(os.environ.get("BENCH_ITERS", "10"))
LENGTHS = [int(x) for x in os.environ.get("BENCH_LENGTHS", "512,2048,8192").split(",")]
BACKEND = os.environ.get("BENCH_BACKEND", "llvm")
B, H, F, K = 1, 12, 64, 16


def inputs(L, mlp, seed=0):
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


def flops_per_token(mlp):
    # hand-derived dual form, per token and head (issue 4)
    return (56 * F * F + 30 * K * F) if mlp else (6 * F * F + 6 * K * F)


def median_ms(fn, iters=ITERS):
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def check(torch):
    """Both peers against the goldens (inner cases with L a multiple of K)."""
    import jax.numpy as jnp
    for case, mlp in [("inner_linear_B1_nh2_f16_K16_L64", False), ("inner_mlp_B1_nh2_f16_K16_L64", True)]:
        base = os.path.join(ROOT, "tests", "golden", case)
        t = load_file(base + ".inputs.safetensors")
        exp = load_file(base + ".expected_f64.safetensors")
        tt = {k: torch.from_numpy(v.astype(np.float64)) for k, v in t.items()}
        got_t = peers.torch_forward(tt, mlp)
        got_j = peers.jax_forward_fn(mlp)({k: jnp.asarray(v) for k, v in t.items()})
        for name in ["Z", "W1_last"]:
            e = exp[name]
            for who, g in [("torch", got_t[name].numpy()), ("jax", np.asarray(got_j[name]))]:
                err = np.abs(g - e).max() / np.abs(e).max()
                tol = 1e-9 if who == "torch" else 2e-5  # jax runs f32 by default
                assert err < tol, f"{who} {case} {name}: {err}"
    print("peers agree with the goldens")


def tttc_bench(program, path):
    out = subprocess.run(
        [TTTC, "bench", program, "--inputs", path, "--backend", BACKEND, "--iters", str(ITERS), "--json"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    import torch
    import jax
    import jax.numpy as jnp
    torch.set_num_threads(os.cpu_count() or 1)
    check(torch)
    a = np.random.default_rng(1).standard_normal((2048, 2048)).astype(np.float32)
    sgemm_ms = median_ms(lambda: a @ a, 5)
    sgemm = 2 * 2048 ** 3 / (sgemm_ms * 1e-3) / 1e9
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mlp in [False, True]:
            name = "TTT-MLP" if mlp else "TTT-Linear"
            program = os.path.join(ROOT, "examples", "ttt_mlp.ttt" if mlp else "ttt_linear.ttt")
            jf = peers.jax_forward_fn(mlp)
            for L in LENGTHS:
                t = inputs(L, mlp)
                path = os.path.join(tmp, f"{name}_{L}.safetensors")
                save_file(t, path)
                flops = flops_per_token(mlp) * B * H * L
                tt = {k: torch.from_numpy(v) for k, v in t.items()}
                with torch.no_grad():
                    torch_ms = median_ms(lambda: peers.torch_forward(tt, mlp))
                jt = {k: jnp.asarray(v) for k, v in t.items()}
                jax_ms = median_ms(lambda: jax.block_until_ready(jf(jt)))
                r = tttc_bench(program, path)
                rows.append((name, L, r["median_ms"], torch_ms, jax_ms, flops, r["compile_ms"]))
                print(name, L, r, torch_ms, jax_ms, flush=True)
    lines = [
        "# Benchmark results",
        "",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch.__version__}, jax {jax.__version__}  ",
        f"tttc backend: {BACKEND}; medians of {ITERS} runs; B=1, 12 heads, f=64, K=16, f32.  ",
        f"numpy sgemm (2048², f32): {sgemm:.0f} GFLOP/s.  ",
        "GFLOP/s counts the hand-derived dual-form FLOPs (linear 6f²+6Kf, MLP 56f²+30Kf per token and head).",
        "",
        "| model | L | tttc ms | torch ms | jax ms | tttc tokens/s | tttc GFLOP/s | % of sgemm | vs torch | vs jax | tttc compile ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, L, ms, tms, jms, flops, cms in rows:
        g = flops / (ms * 1e-3) / 1e9
        lines.append(
            f"| {name} | {L} | {ms:.2f} | {tms:.2f} | {jms:.2f} | {B * L / (ms * 1e-3):.0f} | {g:.1f} | "
            f"{100 * g / sgemm:.0f}% | {tms / ms:.2f}x | {jms / ms:.2f}x | {cms:.0f} |")
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
