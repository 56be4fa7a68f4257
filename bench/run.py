"""Measures tttc against PyTorch eager and JAX jit + lax.scan on the same dual-form math, and
the machine's sgemm rate, in one run; writes bench/RESULTS.md. Run through bench/run.sh.

B=1, 12 heads, f=64, K=16, L in {512, 2048, 8192}, TTT-Linear and TTT-MLP, f32; tttc also
without its register tiles (TTTC_NO_REGISTER_TILE=1) in the same run, and the held-out
examples/mlp3_silu.ttt (d=h=64) at L=2048.
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
# BENCH_PEERS=0 skips PyTorch and JAX (their columns read "-"): on an oversubscribed machine
# they take minutes per row and the table's targets are stated against sgemm, not them.
PEERS = os.environ.get("BENCH_PEERS", "1") != "0"
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


def tttc_bench(program, path, tiles=True, precision="f32"):
    env = dict(os.environ)
    if not tiles:
        env["TTTC_NO_REGISTER_TILE"] = "1"
    out = subprocess.run(
        [TTTC, "bench", program, "--inputs", path, "--backend", BACKEND, "--iters", str(ITERS), "--json",
         "--precision", precision],
        capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def mlp3_inputs(L, seed=0):
    r = np.random.default_rng(seed)
    n = lambda *s, sc=1.0: (r.standard_normal(s) * sc).astype(np.float32)
    return {
        "Q": n(B, H, L, F), "K": n(B, H, L, F), "V": n(B, H, L, F),
        "W1": n(H, F, F, sc=0.1), "W2": n(H, F, F, sc=0.1), "W3": n(H, F, F, sc=0.1),
        "position_scale": (1.0 / np.arange(1, K + 1)).astype(np.float32),
        "lr": np.full((B, H, L), 1.0 / F, np.float32),
    }


def mlp3_flops_per_token():
    # hand-derived dual form of three d×d layers (d = h = f), per token and head: forward of the
    # keys 6f², input gradients of layers 3 and 2 4f², forward of the queries 6f², three
    # updates 6f²; per layer the K×K scores and their product 4Kf
    return 22 * F * F + 12 * K * F


def main():
    import torch
    import jax
    import jax.numpy as jnp
    torch.set_num_threads(os.cpu_count() or 1)
    if PEERS:
        check(torch)
    a = np.random.default_rng(1).standard_normal((2048, 2048)).astype(np.float32)

    def sgemm_rate():
        return 2 * 2048 ** 3 / (median_ms(lambda: a @ a, 5) * 1e-3) / 1e9

    # the machine is shared: sgemm is measured again beside every row, and each row's
    # percentage is against the sgemm measured next to it
    sgemm = sgemm_rate()
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
                torch_ms = jax_ms = float("nan")
                # tttc first, after a pause: the peers' thread pools in this process may still
                # be spinning right after their runs (tttc's first row ran 20% slower there).
                time.sleep(1)
                r = tttc_bench(program, path)
                u = tttc_bench(program, path, tiles=False)
                if PEERS:
                    tt = {k: torch.from_numpy(v) for k, v in t.items()}
                    with torch.no_grad():
                        torch_ms = median_ms(lambda: peers.torch_forward(tt, mlp))
                    jt = {k: jnp.asarray(v) for k, v in t.items()}
                    jax_ms = median_ms(lambda: jax.block_until_ready(jf(jt)))
                sg = sgemm_rate()
                rows.append((name, L, r["median_ms"], u["median_ms"], torch_ms, jax_ms, flops, r["compile_ms"], sg))
                print(name, L, r, u, torch_ms, jax_ms, flush=True)
        # f64 at L = 2048 against dgemm measured beside each row
        d = a.astype(np.float64)
        f64_rows = []
        for mlp in [False, True]:
            name = "TTT-MLP" if mlp else "TTT-Linear"
            program = os.path.join(ROOT, "examples", "ttt_mlp.ttt" if mlp else "ttt_linear.ttt")
            path = os.path.join(tmp, f"{name}_2048.safetensors")
            if not os.path.exists(path):
                save_file(inputs(2048, mlp), path)
            r = tttc_bench(program, path, precision="f64")
            u = tttc_bench(program, path, tiles=False, precision="f64")
            dg = 2 * 2048 ** 3 / (median_ms(lambda: d @ d, 5) * 1e-3) / 1e9
            f64_rows.append((name, 2048, r["median_ms"], u["median_ms"], flops_per_token(mlp) * B * H * 2048, dg))
            print(name, "f64", r, u, dg, flush=True)
        L = 2048
        path = os.path.join(tmp, "mlp3.safetensors")
        save_file(mlp3_inputs(L), path)
        program = os.path.join(ROOT, "examples", "mlp3_silu.ttt")
        r = tttc_bench(program, path)
        u = tttc_bench(program, path, tiles=False)
        mlp3 = (L, r["median_ms"], u["median_ms"], mlp3_flops_per_token() * B * H * L, sgemm_rate())
        print("mlp3_silu", L, r, u, flush=True)
    lines = [
        "# Benchmark results",
        "",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch.__version__}, jax {jax.__version__}  ",
        f"tttc backend: {BACKEND}; medians of {ITERS} runs; B=1, 12 heads, f=64, K=16, f32.  ",
        f"numpy sgemm (2048², f32): {sgemm:.0f} GFLOP/s at the start; measured again beside every row "
        "(column sgemm), and each row's percentages are against that.  ",
        "GFLOP/s counts the hand-derived dual-form FLOPs (linear 6f²+6Kf, MLP 56f²+30Kf per token and head).",
        "",
        "Untiled: the same tttc with its register tiles off (`TTTC_NO_REGISTER_TILE=1`), same run.",
        f"Load average at the end: {os.getloadavg()[0]:.1f}.",
        "",
        "| model | L | tttc ms | untiled ms | tiles speedup | torch ms | jax ms | tttc tokens/s | tttc GFLOP/s | sgemm GFLOP/s | % of sgemm | untiled % of sgemm | vs torch | vs jax | tttc compile ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, L, ms, ums, tms, jms, flops, cms, sgemm in rows:
        g = flops / (ms * 1e-3) / 1e9
        gu = flops / (ums * 1e-3) / 1e9
        lines.append(
            f"| {name} | {L} | {ms:.2f} | {ums:.2f} | {ums / ms:.2f}x | {tms:.2f} | {jms:.2f} | {B * L / (ms * 1e-3):.0f} | {g:.1f} | {sgemm:.0f} | "
            f"{100 * g / sgemm:.0f}% | {100 * gu / sgemm:.0f}% | {tms / ms:.2f}x | {jms / ms:.2f}x | {cms:.0f} |"
            .replace("nanx", "-").replace("nan", "-"))
    lines += [
        "",
        "f64 (`--precision f64`, same inputs, L = 2048) against numpy's dgemm (2048², f64) measured beside each row:",
        "",
        "| model | L | tttc ms | untiled ms | tiles speedup | tttc GFLOP/s | dgemm GFLOP/s | % of dgemm | untiled % of dgemm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, L, ms, ums, flops, dg in f64_rows:
        g, gu = flops / (ms * 1e-3) / 1e9, flops / (ums * 1e-3) / 1e9
        lines.append(f"| {name} | {L} | {ms:.2f} | {ums:.2f} | {ums / ms:.2f}x | {g:.1f} | {dg:.0f} | "
                     f"{100 * g / dg:.0f}% | {100 * gu / dg:.0f}% |")
    L, ms, ums, flops, sgemm = mlp3
    g, gu = flops / (ms * 1e-3) / 1e9, flops / (ums * 1e-3) / 1e9
    lines += [
        "",
        "Held-out inner model `examples/mlp3_silu.ttt` (three SiLU layers, d = h = 64, no model-specific",
        "code; hand-derived dual-form FLOPs 22f²+12Kf per token and head):",
        "",
        "| model | L | tttc ms | untiled ms | tttc GFLOP/s | sgemm GFLOP/s | % of sgemm | untiled % of sgemm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| mlp3_silu | {L} | {ms:.2f} | {ums:.2f} | {g:.1f} | {sgemm:.0f} | {100 * g / sgemm:.0f}% | {100 * gu / sgemm:.0f}% |",
    ]
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
