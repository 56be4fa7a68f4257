"""TTT-Linear / TTT-MLP prefill on an NVIDIA GPU: tttc's PTX backend against PyTorch CUDA
(eager and torch.compile) on the same dual-form math, for scripts/gpu_check.sh.

The PyTorch implementation follows DESIGN.md §2 (the dual form of one mini-batch, the remainder
mini-batch with token_eta[:r]); `check` compares it with the inner-loop goldens in tests/golden
before anything is timed. Inputs are written as safetensors by a small pure-Python writer (no
numpy needed), so tttc and PyTorch read identical data.

    python3 bench/gpu_peers.py check
    python3 bench/gpu_peers.py table --tttc target/release/tttc --out bench/GPU_RESULTS.md \
        --deadline EPOCH_SECONDS [--iters N] [--batches 1,16] [--lengths 2048,8192]
    python3 bench/gpu_peers.py one {eager,compile} {linear,mlp} INPUTS.safetensors ITERS

Without torch (or CUDA) `check` fails and `table` fills the PyTorch columns with "n/a".
Matmuls run in full f32 (TF32 off), like tttc.
"""
import array
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 1e-6
C = math.sqrt(2.0 / math.pi)
HEADS, F, K = 12, 64, 16
TOL_F32 = 2e-5


# ----------------------------------------------------------------------------- safetensors
def st_write(path, tensors):
    """tensors: name -> (shape, array('f')) written as F32."""
    header, offset = {}, 0
    for name, (shape, data) in tensors.items():
        n = len(data) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, (_, data) in tensors.items():
            if sys.byteorder != "little":
                data = array.array("f", data)
                data.byteswap()
            data.tofile(f)


def st_read(path):
    """name -> (dtype string, shape, bytes)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        out[name] = (h["dtype"], h["shape"], blob[a:b])
    return out


def make_inputs(mlp, B, L, seed=0):
    """Plausible TTT inputs (as in ttt-lm-pytorch at init), tiled from a small random block so
    that gigabytes are written quickly."""
    rng = random.Random(seed)
    block = array.array("f", (rng.uniform(-1.0, 1.0) for _ in range(1 << 16)))

    def filled(n, scale=1.0, shift=0.0):
        base = array.array("f", (x * scale + shift for x in block))
        reps = -(-n // len(base))
        a = base * reps
        del a[n:]
        return a

    h = 4 * F
    t = {
        "XQ": ([B, HEADS, L, F], filled(B * HEADS * L * F)),
        "XK": ([B, HEADS, L, F], filled(B * HEADS * L * F)),
        "XV": ([B, HEADS, L, F], filled(B * HEADS * L * F)),
        "token_eta": ([K], array.array("f", (1.0 / (i + 1) for i in range(K)))),
        "ttt_lr_eta": ([B, HEADS, L], filled(B * HEADS * L, 0.004, 0.008)),
        "ln_weight": ([HEADS, F], array.array("f", [1.0] * (HEADS * F))),
        "ln_bias": ([HEADS, F], array.array("f", [0.0] * (HEADS * F))),
    }
    if not mlp:
        t["W1"] = ([HEADS, F, F], filled(HEADS * F * F, 0.02))
        t["b1"] = ([HEADS, 1, F], array.array("f", [0.0] * (HEADS * F)))
    else:
        t["W1"] = ([HEADS, F, h], filled(HEADS * F * h, 0.02))
        t["b1"] = ([HEADS, 1, h], array.array("f", [0.0] * (HEADS * h)))
        t["W2"] = ([HEADS, h, F], filled(HEADS * h * F, 0.02))
        t["b2"] = ([HEADS, 1, F], array.array("f", [0.0] * (HEADS * F)))
    return t


# ----------------------------------------------------------------------------- PyTorch
def to_torch(tensors, device):
    import torch

    kinds = {"F32": torch.float32, "F64": torch.float64}
    out = {}
    for name, (dtype, shape, raw) in tensors.items():
        x = torch.frombuffer(bytearray(raw), dtype=kinds[dtype]).reshape(shape)
        out[name] = x.to(device=device, dtype=torch.float32)
    return out


def make_step(mlp):
    """One mini-batch in dual form: (state, q, k, v, lr, te) -> (state, z)."""
    import torch

    def ln(x, w, b):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return w * (x - mu) / torch.sqrt(var + EPS) + b

    def ln_l2_grad(x, target, w, b):
        f = x.shape[-1]
        mu = x.mean(-1, keepdim=True)
        std = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + EPS)
        xhat = (x - mu) / std
        gx = (w * xhat + b - target) * w
        return (f * gx - gx.sum(-1, keepdim=True) - xhat * (gx * xhat).sum(-1, keepdim=True)) / (f * std)

    def gelu(x):
        return 0.5 * x * (1 + torch.tanh(C * (x + 0.044715 * x ** 3)))

    def gelu_grad(x):
        th = torch.tanh(C * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * C * (1 + 3 * 0.044715 * x * x)

    def dual(a, u, d, W, b, eta):
        # a @ W_bar for every row, with W_bar the per-token weights of the primal form.
        attn = torch.tril(a @ u.transpose(-1, -2))
        return a @ W - (eta * attn) @ d + b - eta @ d

    def step(state, q, k, v, lr, te, lw, lb):
        r = q.shape[-2]
        eta = torch.tril(te[:r, None] * lr[..., None, :])   # [B,H,r,r], eta[i,j] = te[i] lr[j]
        last = eta[..., -1, :, None]                          # [B,H,r,1]
        target = v - k
        if not mlp:
            W1, b1 = state
            g1 = ln_l2_grad(k @ W1 + b1, target, lw, lb)
            z = q + ln(dual(q, k, g1, W1, b1, eta), lw, lb)
            return (W1 - (last * k).transpose(-1, -2) @ g1, b1 - (last * g1).sum(-2, keepdim=True)), z
        W1, b1, W2, b2 = state
        z1 = k @ W1 + b1
        x2 = gelu(z1)
        g2 = ln_l2_grad(x2 @ W2 + b2, target, lw, lb)
        g1 = (g2 @ W2.transpose(-1, -2)) * gelu_grad(z1)
        x2_bar = gelu(dual(q, k, g1, W1, b1, eta))
        z = q + ln(dual(x2_bar, x2, g2, W2, b2, eta), lw, lb)
        new = (
            W1 - (last * k).transpose(-1, -2) @ g1,
            b1 - (last * g1).sum(-2, keepdim=True),
            W2 - (last * x2).transpose(-1, -2) @ g2,
            b2 - (last * g2).sum(-2, keepdim=True),
        )
        return new, z

    return step


def forward(t, mlp, step):
    """The whole scan: full mini-batches, then the remainder."""
    import torch

    XQ, XK, XV, lr = t["XQ"], t["XK"], t["XV"], t["ttt_lr_eta"]
    B, H, L, f = XQ.shape
    k_size = t["token_eta"].shape[0]
    lw, lb = t["ln_weight"][None, :, None, :], t["ln_bias"][None, :, None, :]
    names = ["W1", "b1"] + (["W2", "b2"] if mlp else [])
    state = tuple(t[n][None].expand(B, *t[n].shape).contiguous() for n in names)
    out = []
    for s in range(0, L, k_size):
        e = min(s + k_size, L)
        state, z = step(state, XQ[:, :, s:e], XK[:, :, s:e], XV[:, :, s:e], lr[:, :, s:e],
                        t["token_eta"], lw, lb)
        out.append(z)
    res = {"Z": torch.cat(out, 2)}
    res.update({n + "_last": x for n, x in zip(names, state)})
    return res


def check():
    """Compares the PyTorch implementation with every inner golden case (f32, CUDA)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    golden = os.path.join(ROOT, "tests", "golden")
    stems = sorted(n[: -len(".json")] for n in os.listdir(golden)
                   if n.startswith("inner_") and n.endswith(".json"))
    if not stems:
        raise SystemExit("no inner golden cases found")
    for stem in stems:
        meta = json.load(open(os.path.join(golden, stem + ".json")))
        mlp = meta["ttt_layer_type"] == "mlp"
        t = to_torch(st_read(os.path.join(golden, stem + ".inputs.safetensors")), device)
        want = to_torch(st_read(os.path.join(golden, stem + ".expected_f32.safetensors")), device)
        got = forward(t, mlp, make_step(mlp))
        for name, w in want.items():
            if name != "Z" and not name.endswith("_last"):
                continue
            g = got[name].reshape(w.shape)
            err = ((g - w).abs().max() / w.abs().max().clamp_min(1e-30)).item()
            if not err <= TOL_F32:
                raise SystemExit(f"{stem} {name}: relative error {err:.2e} > {TOL_F32:.0e}")
        print(f"torch ({device}) matches {stem}")


def one(kind, model, path, iters):
    """Times eager or torch.compile (the step compiled, the scan in Python) on `path`; prints
    {"median_ms": ...}."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    mlp = model == "mlp"
    t = to_torch(st_read(path), "cuda")
    step = make_step(mlp)
    if kind == "compile":
        step = torch.compile(step, dynamic=False)
    forward(t, mlp, step)  # warm-up (and compilation)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        forward(t, mlp, step)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    print(json.dumps({"median_ms": times[len(times) // 2]}))


def run_json(cmd, timeout):
    """Runs `cmd` and returns the JSON on its last stdout line, or a short reason."""
    if timeout < 5:
        return None, "skipped (time)"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["failed"]
        msg = tail[0]
        return None, (msg if msg.startswith("error") else "error: " + msg)[:90]
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, "no result"


def table(args):
    deadline = float(args["--deadline"])
    iters = int(args.get("--iters", "5"))
    batches = [int(x) for x in args.get("--batches", "1,16").split(",")]
    lengths = [int(x) for x in args.get("--lengths", "2048,8192").split(",")]
    tttc = args["--tttc"]
    try:
        import torch  # noqa: F401

        have_torch = torch.cuda.is_available()
    except ImportError:
        have_torch = False
    work = tempfile.mkdtemp(prefix="tttc-gpu-bench-")
    left = lambda: deadline - time.time()
    configs = [(m, B, L) for m in ["linear", "mlp"] for B in batches for L in lengths]
    rows = {c: {"model": "TTT-MLP" if c[0] == "mlp" else "TTT-Linear", "B": c[1], "L": c[2]}
            for c in configs}
    paths = {}
    # tttc first (the numbers this check exists for), then PyTorch eager, then torch.compile
    # (slowest to start): whatever does not fit before the deadline is marked as skipped.
    for c in configs:
        model, B, L = c
        if left() < 20:
            rows[c]["note"] = "skipped (time)"
            continue
        paths[c] = os.path.join(work, f"{model}_B{B}_L{L}.safetensors")
        st_write(paths[c], make_inputs(model == "mlp", B, L))
        program = os.path.join(ROOT, "examples", f"ttt_{model}.ttt")
        r, why = run_json([tttc, "bench", program, "--inputs", paths[c], "--backend", "ptx",
                           "--iters", str(iters), "--json"], min(left() - 5, 150))
        rows[c]["tttc"] = r or why
        print(json.dumps(rows[c]), flush=True)
    for kind in ["eager", "compile"]:
        for c in configs:
            if c not in paths:
                continue
            if not have_torch:
                rows[c][kind] = "n/a (no torch with CUDA)"
                continue
            r, why = run_json([sys.executable, os.path.abspath(__file__), "one", kind, c[0],
                               paths[c], str(iters)], min(left() - 5, 120))
            rows[c][kind] = r or why
            print(json.dumps(rows[c]), flush=True)
    for p in paths.values():
        os.remove(p)
    rows = [rows[c] for c in configs]
    write_table(rows, args["--out"], iters)


def write_table(rows, out, iters):
    def ms(x, key="median_ms"):
        return f"{x[key]:.2f}" if isinstance(x, dict) and key in x else (x if isinstance(x, str) else "")

    lines = [
        "# tttc PTX backend vs PyTorch CUDA (generated by scripts/gpu_check.sh)",
        "",
        f"TTT prefill, 12 heads, f = 64, K = 16, f32, medians of {iters} runs. `tttc kernels`: CUDA-event "
        "time of tttc's launches alone; `tttc run`: wall time of a whole run including host<->device "
        "copies of inputs and outputs. PyTorch times are CUDA-event times of the dual-form scan "
        "(eager; `torch.compile` of one mini-batch step, the scan in Python), TF32 off.",
        "",
        "| model | B | L | tttc kernels ms | tttc run ms | torch eager ms | torch.compile ms | tttc GFLOP/s | vs eager | vs compile |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['model']} | {r['B']} | {r['L']} | {r['note']} | | | | | | |")
            continue
        t = r.get("tttc")
        kern = t.get("device_median_ms") if isinstance(t, dict) else None

        def ratio(peer):
            p = r.get(peer)
            if kern and isinstance(p, dict):
                return f"{p['median_ms'] / kern:.2f}x"
            return ""

        gf = f"{t['device_gflops']:.1f}" if isinstance(t, dict) and "device_gflops" in t else ""
        lines.append(
            f"| {r['model']} | {r['B']} | {r['L']} | {ms(t, 'device_median_ms') if isinstance(t, dict) else ''} | {ms(t)} | "
            f"{ms(r.get('eager'))} | {ms(r.get('compile'))} | {gf} | {ratio('eager')} | {ratio('compile')} |"
        )
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main(argv):
    if len(argv) >= 1 and argv[0] == "check":
        return check()
    if len(argv) == 5 and argv[0] == "one":
        return one(argv[1], argv[2], argv[3], int(argv[4]))
    if len(argv) >= 1 and argv[0] == "table":
        opts = dict(zip(argv[1::2], argv[2::2]))
        missing = [k for k in ("--tttc", "--out", "--deadline") if k not in opts]
        if missing or len(argv[1:]) % 2:
            raise SystemExit(f"table needs --tttc, --out and --deadline (missing: {missing})")
        return table(opts)
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
