"""The 125M model's dense matmul shapes at L = 2048: the `gemm` crate (through `tttc bench`, the
library gemm forced on) against numpy's sgemm (OpenBLAS) and PyTorch's (MKL, 2 threads), in
one run, on the same shapes; and the model's dense FLOP count. Prints a markdown table.

    /work/main/bench/.venv/bin/python bench/model_gemm.py    # needs target/release/tttc

Each product is `x @ w.T` (nn.Linear's weight layout), f32, x: [L, k], w: [n, k]. Medians of
BENCH_ITERS (default 5) runs; every run allocates its output (all three). tttc's time is
`tttc bench`'s median execution time (compile excluded).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from gemm import save_safetensors  # noqa: E402

TTTC = os.path.join(ROOT, "target", "release", "tttc")
ITERS = int(os.environ.get("BENCH_ITERS", "5"))
L, H, I, V, LAYERS = 2048, 768, 2048, 32000, 12
# (name, k, n, count in the model: per layer x 12 layers, or once)
SHAPES = [
    ("q/v/g/o projections", H, H, 4 * LAYERS),
    ("SwiGLU gate/up", H, I, 2 * LAYERS),
    ("SwiGLU down", I, H, LAYERS),
    ("LM head", H, V, 1),
]


def median_s(f):
    f()
    t = []
    for _ in range(ITERS):
        s = time.perf_counter()
        f()
        t.append(time.perf_counter() - s)
    return statistics.median(t)


def tttc_s(tmp, x, w):
    m, k = x.shape
    n = w.shape[0]
    program = os.path.join(tmp, f"p{k}_{n}.ttt")
    with open(program, "w") as f:
        f.write(f"main {{\n  input x: [{m}, {k}]\n  input w: [{n}, {k}]\n  output y = x @ w.T\n}}\n")
    inputs = os.path.join(tmp, f"p{k}_{n}.safetensors")
    save_safetensors(inputs, {"x": x, "w": w})
    out = subprocess.run(
        [TTTC, "bench", program, "--inputs", inputs, "--backend", "llvm", "--iters", str(ITERS),
         "--json", "--no-cache"],
        check=True, capture_output=True, text=True, env=dict(os.environ, TTTC_GEMM_MIN_MNK="0"),
    )
    return json.loads(out.stdout)["median_ms"] / 1e3


def main():
    if not os.path.exists(TTTC):
        sys.exit(f"{TTTC} missing: cargo build --release")
    torch.set_num_threads(os.cpu_count())
    r = np.random.default_rng(0)
    rows, total = [], {"flop": 0.0, "numpy": 0.0, "torch": 0.0, "tttc": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        a = np.random.rand(2048, 2048).astype(np.float32)
        sq = 2 * 2048**3 / median_s(lambda: a @ a) / 1e9
        for name, k, n, count in SHAPES:
            x = r.standard_normal((L, k)).astype(np.float32)
            w = (r.standard_normal((n, k)) * 0.02).astype(np.float32)
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            flop = 2.0 * L * k * n
            t_np = median_s(lambda: x @ w.T)
            with torch.no_grad():
                t_torch = median_s(lambda: torch.nn.functional.linear(xt, wt))
            t_tttc = tttc_s(tmp, x, w)
            rows.append((name, k, n, count, flop, t_np, t_torch, t_tttc))
            for key, t in (("flop", flop), ("numpy", t_np), ("torch", t_torch), ("tttc", t_tttc)):
                total[key] += count * t
    g = lambda flop, t: flop / t / 1e9
    print(f"numpy sgemm 2048^3: {sq:.0f} GFLOP/s; load average {os.getloadavg()[0]:.2f}; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"numpy {np.__version__}")
    print()
    print("| product [L=2048, k] @ [k, n] | k | n | times in the model | numpy GFLOP/s | PyTorch GFLOP/s "
          "| gemm crate (tttc) GFLOP/s | tttc / numpy | tttc / PyTorch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, k, n, count, flop, t_np, t_torch, t_tttc in rows:
        print(f"| {name} | {k} | {n} | {count} | {g(flop, t_np):.1f} | {g(flop, t_torch):.1f} | "
              f"{g(flop, t_tttc):.1f} | {t_np / t_tttc:.2f} | {t_torch / t_tttc:.2f} |")
    f = total["flop"]
    print(f"| **all of the model's dense matmuls** | | | | {g(f, total['numpy']):.1f} | "
          f"{g(f, total['torch']):.1f} | {g(f, total['tttc']):.1f} | "
          f"{total['numpy'] / total['tttc']:.2f} | {total['torch'] / total['tttc']:.2f} |")
    print()
    print(f"The model's dense matmul FLOPs at L = {L}: {f / 1e9:.1f} GFLOP; the time they take at "
          f"each rate: numpy {total['numpy']:.2f} s, PyTorch {total['torch']:.2f} s, "
          f"tttc's gemm {total['tttc']:.2f} s.")


if __name__ == "__main__":
    main()
