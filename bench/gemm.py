"""Dense projections through `tttc bench` (llvm) with the library gemm forced off and on,
against numpy's sgemm measured in the same run; writes bench/GEMM.md. Run through bench/gemm.sh.

Cases: one projection `x @ w.T` ([2048, 768] x [768, 768], nn.Linear's weight layout), the
LM head ([2048, 768] x [768, 32000]), and square products [s, s] @ [s, s] for the threshold
(`GEMM_MIN_MNK` in passes/src/lower_kernel/mod.rs). f32 throughout. Every time is a median.
"""
import datetime
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TTTC = os.path.join(ROOT, "target", "release", "tttc")
ITERS = int(os.environ.get("BENCH_ITERS", "5"))
PROJECTIONS = [("projection", 2048, 768, 768), ("LM head", 2048, 768, 32000)]
SQUARES = [int(s) for s in os.environ.get("BENCH_SQUARES", "16,32,48,64,96,128,256").split(",")]


def save_safetensors(path, tensors):
    """The safetensors format by hand (an 8-byte header length, a JSON header, the data)."""
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def tttc_ms(program, inputs, library, iters):
    env = dict(os.environ, TTTC_GEMM_MIN_MNK="0" if library else "off")
    out = subprocess.run(
        [TTTC, "bench", program, "--inputs", inputs, "--backend", "llvm", "--iters", str(iters), "--json"],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout)["median_ms"]


def numpy_ms(x, w, iters):
    x @ w.T
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        x @ w.T
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def case(tmp, m, k, n, iters_loops):
    r = np.random.default_rng(0)
    x = r.standard_normal((m, k)).astype(np.float32)
    w = (r.standard_normal((n, k)) * 0.02).astype(np.float32)
    program = os.path.join(tmp, f"p{m}_{k}_{n}.ttt")
    with open(program, "w") as f:
        f.write(f"main {{\n  input x: [{m}, {k}]\n  input w: [{n}, {k}]\n  output y = x @ w.T\n}}\n")
    inputs = os.path.join(tmp, f"p{m}_{k}_{n}.safetensors")
    save_safetensors(inputs, {"x": x, "w": w})
    flop = 2.0 * m * n * k
    np_ms = numpy_ms(x, w, ITERS)
    on = tttc_ms(program, inputs, True, ITERS)
    off = tttc_ms(program, inputs, False, iters_loops)
    return flop, np_ms, on, off


def main():
    if not os.path.exists(TTTC):
        sys.exit(f"{TTTC} missing: run bench/gemm.sh")
    rows, squares = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, m, k, n in PROJECTIONS:
            flop, np_ms, on, off = case(tmp, m, k, n, 2 if n > 4096 else ITERS)
            g = lambda ms: flop / ms / 1e6
            rows.append((name, m, k, n, np_ms, g(np_ms), off, g(off), on, g(on)))
            print(f"{name}: numpy {g(np_ms):.1f} GFLOP/s, loops {g(off):.1f}, library {g(on):.1f}", flush=True)
        for s in SQUARES:
            flop, np_ms, on, off = case(tmp, s, s, s, ITERS)
            squares.append((s, np_ms, off, on))
            print(f"[{s}]^2: numpy {np_ms:.4f} ms, loops {off:.4f} ms, library {on:.4f} ms", flush=True)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "# Library gemm: dense projections (f32, llvm)",
        "",
        f"Written by `bench/gemm.sh` on {datetime.date.today()}, {cpu}, {os.cpu_count()} CPUs "
        f"(numpy {np.__version__}). Medians of {ITERS} runs (2 for the LM head's loop nest), "
        "`tttc bench` execution time only (compilation excluded; the run includes filling the "
        "output with NaN, as every run does). *loops*: `TTTC_GEMM_MIN_MNK=off` (the generated "
        "loop nest); *library*: `TTTC_GEMM_MIN_MNK=0` (`Stmt::Gemm`, the `gemm` crate). "
        "Ratios are to numpy's `x @ w.T` (its BLAS sgemm) in the same run.",
        "",
        "| product | numpy GFLOP/s | loops GFLOP/s | loops / numpy | library GFLOP/s | library / numpy | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m, k, n, np_ms, gnp, off, goff, on, gon in rows:
        lines.append(
            f"| {name} [{m},{k}] @ [{k},{n}] | {gnp:.1f} | {goff:.1f} | {goff / gnp:.3f} | "
            f"{gon:.1f} | {gon / gnp:.3f} | {off / on:.1f}x |"
        )
    lines += [
        "",
        "Square products `[s, s] @ [s, s]` (the threshold `GEMM_MIN_MNK`): median ms per run.",
        "",
        "| s | m·n·k | numpy ms | loops ms | library ms | loops / library |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s, np_ms, off, on in squares:
        lines.append(f"| {s} | {s**3} | {np_ms:.4f} | {off:.4f} | {on:.4f} | {off / on:.2f} |")
    lines.append("")
    with open(os.path.join(ROOT, "bench", "GEMM.md"), "w") as f:
        f.write("\n".join(lines))
    print("wrote bench/GEMM.md")


if __name__ == "__main__":
    main()
