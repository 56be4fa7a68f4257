"""Forward and forward + backward (a vector-Jacobian product) of TTT-Linear / TTT-MLP, tttc
(`tttc bench --grad`, llvm, f32) against PyTorch autograd through the authors' code
(ttt-lm-pytorch's `TTTLinear` / `TTTMLP`, imported from TTT_OFFICIAL_PY, never copied;
`scan_checkpoint_group_size` 0 and 4) and `jax.grad` of the same dual-form math with
ttt-lm-jax-style remat (groups of 4 mini-batches under `jax.checkpoint`, bench/peers.py), in
one run; then the peak memory of one gradient of the TTT-MLP layer (tttc grad against PyTorch
autograd without and with checkpointing, each in its own process). Writes bench/GRAD.md.
Run through bench/grad.sh.

Every gradient is for cotangents of ones on every output (`tttc bench --grad`'s): the inner
loop's Z and final states, the layer's output. Before anything is timed, the gradients of a few
inputs from `tttc grad` are compared with PyTorch's at the benchmark's shapes.

Environment: TTTC (default target/release/tttc, else target/debug/tttc), BENCH_ITERS (timed
runs of tttc and JAX, default 5), BENCH_TORCH_ITERS (PyTorch's, default 1), BENCH_LENGTHS (default 2048,8192), BENCH_PEAK_LENGTH (default 8192; 0 skips
the memory runs), BENCH_SCOPES (default inner,layer), TTT_OFFICIAL_PY.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
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
from run import B, F, H, K, inputs, median_ms  # noqa: E402

_release = os.path.join(ROOT, "target", "release", "tttc")
TTTC = os.environ.get("TTTC", _release if os.path.exists(_release) else os.path.join(ROOT, "target", "debug", "tttc"))
ITERS = int(os.environ.get("BENCH_ITERS", "5"))
TORCH_ITERS = int(os.environ.get("BENCH_TORCH_ITERS", "1"))
LENGTHS = [int(x) for x in os.environ.get("BENCH_LENGTHS", "2048,8192").split(",") if x]
SCOPES = [s for s in os.environ.get("BENCH_SCOPES", "inner,layer").split(",") if s]
PEAK_L = int(os.environ.get("BENCH_PEAK_LENGTH", "8192"))
HIDDEN = H * F  # 768


def official():
    from model import official as load
    return load()


def layer_config(mlp, group=None):
    """The layer's settings (the gradient goldens' keys); with `group`, the authors'
    `scan_checkpoint_group_size` too."""
    c = dict(hidden_size=HIDDEN, num_attention_heads=H, mini_batch_size=K,
             ttt_base_lr=0.1 if mlp else 1.0, rope_theta=10000.0,
             ttt_layer_type="mlp" if mlp else "linear")
    if group is not None:
        c["scan_checkpoint_group_size"] = group
    return c


def program(scope, mlp):
    name = ("ttt_mlp" if mlp else "ttt_linear") + ("_layer" if scope == "layer" else "")
    return os.path.join(ROOT, "examples", name + ".ttt")


# ----------------------------------------------------------------------------- PyTorch
def torch_module(ttt, mlp, group, t=None):
    """The authors' layer in training mode (their checkpointing is on only then), its inner
    parameters (and, for the layer, every parameter) from `t` when given."""
    import torch
    torch.manual_seed(0)
    cfg = ttt.TTTConfig(**layer_config(mlp, group))
    m = (ttt.TTTMLP if mlp else ttt.TTTLinear)(cfg, layer_idx=0)
    if t is not None:
        sd = {k: torch.from_numpy(v) for k, v in t.items() if k != "hidden_states"}
        missing, unexpected = m.load_state_dict(sd, strict=False)
        if unexpected:
            sys.exit(f"bench/grad.py: unexpected parameters {unexpected}")
    m.train()
    return m


def weighted(value, ct, name):
    """Σ value · cotangent (of ones when `ct` is None)."""
    import torch
    if ct is None:
        return value.sum()
    return (value * torch.from_numpy(ct[name]).reshape(value.shape)).sum()


def torch_inner(ttt, t, mlp, group, ct=None):
    """(forward, forward + backward) closures of the authors' `ttt` method (the inner loop) on
    the inner-loop inputs `t`, the latter giving the gradients by tttc's input names, for the
    cotangents `ct` by tttc's output names (ones when None)."""
    import torch
    m = torch_module(ttt, mlp, group)
    with torch.no_grad():
        m.W1.copy_(torch.from_numpy(t["W1"]))
        m.b1.copy_(torch.from_numpy(t["b1"]))
        if mlp:
            m.W2.copy_(torch.from_numpy(t["W2"]))
            m.b2.copy_(torch.from_numpy(t["b2"]))
        m.ttt_norm_weight.copy_(torch.from_numpy(t["ln_weight"]))
        m.ttt_norm_bias.copy_(torch.from_numpy(t["ln_bias"]))
    L = t["XQ"].shape[2]
    n = L // K
    leaves = {k: torch.from_numpy(t[k]).requires_grad_() for k in ["XQ", "XK", "XV", "token_eta", "ttt_lr_eta"]}

    def loss():
        mb = lambda x: x.reshape(B, H, n, K, F)
        te = torch.broadcast_to(leaves["token_eta"].reshape(1, 1, 1, K, 1), (B, H, n, K, 1))
        lr = leaves["ttt_lr_eta"].reshape(B, H, n, 1, K)
        inp = {"XQ": mb(leaves["XQ"]), "XK": mb(leaves["XK"]), "XV": mb(leaves["XV"]),
               "eta": te * lr, "token_eta": te, "ttt_lr_eta": lr}
        out, last = m.ttt(inp, mini_batch_size=K, last_mini_batch_params_dict=None, cache_params=None)
        # [B, L, H·f] (tokens, then heads) as tttc's Z [B, H, L, f].
        total = weighted(out.reshape(B, L, H, F).transpose(1, 2), ct, "Z")
        for k in ["W1", "b1"] + (["W2", "b2"] if mlp else []):
            total = total + weighted(last[k + "_states"], ct, k + "_last")
        return total

    wrt = list(leaves.values()) + [m.W1, m.b1] + ([m.W2, m.b2] if mlp else []) + [m.ttt_norm_weight, m.ttt_norm_bias]
    names = list(leaves) + ["W1", "b1"] + (["W2", "b2"] if mlp else []) + ["ln_weight", "ln_bias"]

    def grads():
        g = torch.autograd.grad(loss(), wrt)
        return {k: v.detach().numpy() for k, v in zip(names, g)}

    return (lambda: loss().detach()), grads


def layer_inputs(ttt, mlp, L):
    """The authors' layer's parameters (their initialization, seed 0) by state_dict name, and
    hidden states: tttc's layer program's inputs."""
    m = torch_module(ttt, mlp, 0)
    t = {k: v.detach().contiguous().numpy() for k, v in m.named_parameters()}
    t["hidden_states"] = np.random.default_rng(0).standard_normal((B, L, HIDDEN)).astype(np.float32)
    return t


def torch_layer(ttt, t, mlp, group, ct=None):
    import torch
    m = torch_module(ttt, mlp, group, t)
    L = t["hidden_states"].shape[1]
    x = torch.from_numpy(t["hidden_states"]).requires_grad_()
    pos = torch.arange(L)[None]
    params = dict(m.named_parameters())

    def loss():
        return weighted(m(x, position_ids=pos), ct, "output")

    def grads():
        g = torch.autograd.grad(loss(), [x] + list(params.values()), allow_unused=True)
        out = {"hidden_states": g[0].numpy()}
        out.update({k: v.numpy() for k, v in zip(params, g[1:]) if v is not None})
        return out

    return (lambda: loss().detach()), grads


def torch_times(fwd_loss, grads):
    """Medians of TORCH_ITERS runs (no warm-up: eager PyTorch compiles nothing, and the
    authors' code takes minutes per gradient at L = 2048 here) of the forward (training mode,
    recording for autograd) and of forward + backward."""
    def med(fn):
        times = []
        for _ in range(TORCH_ITERS):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return med(fwd_loss), med(grads)


# ----------------------------------------------------------------------------- tttc
def tttc(*args, json_out=True):
    out = subprocess.run([TTTC, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench/grad.py: tttc {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout) if json_out else out.stdout


def settings(scope, cfg_path):
    return ["--config", cfg_path] if scope == "layer" else []


def tttc_grads(tmp, scope, mlp, path, cfg_path, cts):
    ct = os.path.join(tmp, "ct.safetensors")
    save_file(cts, ct)
    g = os.path.join(tmp, "g.safetensors")
    tttc("grad", program(scope, mlp), "--inputs", path, "--cotangents", ct, "--out", g,
         "--backend", "llvm", *settings(scope, cfg_path), json_out=False)
    return load_file(g)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64).reshape(np.shape(a))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ----------------------------------------------------------------------------- main run
def run(_args):
    import jax
    import jax.numpy as jnp
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    ttt = official()
    a = np.random.default_rng(1).standard_normal((2048, 2048)).astype(np.float32)
    sgemm = 2 * 2048 ** 3 / (median_ms(lambda: a @ a, 5) * 1e-3) / 1e9
    print("sgemm", sgemm, flush=True)
    rows, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for scope in SCOPES:
            for mlp in [False, True]:
                name = ("TTT-MLP" if mlp else "TTT-Linear") + (" layer" if scope == "layer" else " inner loop")
                cfg_path = os.path.join(tmp, "config.json")
                with open(cfg_path, "w") as fh:
                    json.dump(layer_config(mlp), fh)
                for L in LENGTHS:
                    t = inputs(L, mlp) if scope == "inner" else layer_inputs(ttt, mlp, L)
                    path = os.path.join(tmp, "in.safetensors")
                    save_file(t, path)
                    if scope == "inner":
                        make = lambda g, ct=None: torch_inner(ttt, t, mlp, g, ct)
                        outs = {"Z": (B, H, L, F), "W1_last": (B, H, F, 4 * F if mlp else F),
                                "b1_last": (B, H, 1, 4 * F if mlp else F)}
                        if mlp:
                            outs.update(W2_last=(B, H, 4 * F, F), b2_last=(B, H, 1, F))
                    else:
                        make = lambda g, ct=None: torch_layer(ttt, t, mlp, g, ct)
                        outs = {"output": (B, L, HIDDEN)}
                    # Gradients agree before anything is timed (at the first length only: the
                    # check itself is one more gradient of each), for random cotangents (with
                    # ones, some gradients vanish: the layer norm's outputs sum to a constant).
                    if L == LENGTHS[0]:
                        rng = np.random.default_rng(2)
                        cts = {k: rng.standard_normal(v).astype(np.float32) for k, v in outs.items()}
                        got = tttc_grads(tmp, scope, mlp, path, cfg_path, cts)
                        _, tg = make(0, cts)
                        want = tg()
                        for k in (["XQ", "W1", "ttt_lr_eta", "ln_weight"] if scope == "inner"
                                  else ["hidden_states", "W1", "q_proj.weight", "learnable_ttt_lr_weight"]):
                            checks.append((name, L, k, rel(got[k], want[k])))
                            print("check", checks[-1], flush=True)
                    # A pause first: the peers' thread pools in this process may still be
                    # spinning right after the gradient check above.
                    time.sleep(1)
                    r = tttc("bench", program(scope, mlp), "--inputs", path, "--backend", "llvm", "--grad",
                             "--iters", str(ITERS), "--json", *settings(scope, cfg_path))
                    print(name, L, r, flush=True)
                    tf0, tb0 = torch_times(*make(0))
                    tf4, tb4 = torch_times(*make(4))
                    print("torch", tf0, tb0, tf4, tb4, flush=True)
                    jf = jb = None
                    if scope == "inner":
                        jt = {k: jnp.asarray(v) for k, v in t.items()}
                        fwd = peers.jax_forward(mlp, remat_group=4)
                        loss = lambda d: sum(jnp.sum(v) for v in fwd(d).values())
                        jfwd = jax.jit(loss)
                        jgrad = jax.jit(jax.grad(loss))
                        jf = median_ms(lambda: jax.block_until_ready(jfwd(jt)))
                        jb = median_ms(lambda: jax.block_until_ready(jgrad(jt)))
                        print("jax", jf, jb, flush=True)
                    rows.append((name, L, r, tf0, tb0, tf4, tb4, jf, jb))
        peak = peak_rows() if PEAK_L else []
    write(rows, checks, peak, sgemm, torch, jax)


def peak_rows():
    """Max RSS of one gradient of the TTT-MLP layer, each in its own process."""
    ttt = official()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = layer_inputs(ttt, True, PEAK_L)
        path = os.path.join(tmp, "in.safetensors")
        save_file(t, path)
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as fh:
            json.dump(layer_config(True), fh)
        ct = os.path.join(tmp, "ct.safetensors")
        save_file({"output": np.ones((B, PEAK_L, HIDDEN), np.float32)}, ct)
        me = [sys.executable, os.path.abspath(__file__)]
        cmds = [("tttc grad (llvm, f32, G = 4)",
                 [TTTC, "grad", program("layer", True), "--inputs", path, "--cotangents", ct,
                  "--out", os.path.join(tmp, "g.safetensors"), "--config", cfg, "--backend", "llvm"]),
                ("PyTorch autograd, no checkpointing", me + ["torch-grad", path, "0"]),
                ("PyTorch autograd, scan_checkpoint_group_size=4", me + ["torch-grad", path, "4"])]
        for what, cmd in cmds:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "peak", "--"] + cmd,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"bench/grad.py: {what} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout)
            rows.append((what, r["peak_mb"], r["wall_s"]))
            print("peak", rows[-1], flush=True)
    return rows


def cmd_peak(a):
    """Runs one command and prints its peak resident memory (this process runs only it)."""
    t = time.perf_counter()
    p = subprocess.run(a.cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        sys.exit(p.returncode)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"peak_mb": usage.ru_maxrss / 1024.0, "wall_s": time.perf_counter() - t}))


def cmd_torch_grad(a):
    """One gradient of the authors' TTT-MLP layer (for the memory runs)."""
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    t = load_file(a.inputs)
    _, grads = torch_layer(official(), t, True, a.group)
    grads()


def write(rows, checks, peak, sgemm, torch, jax, load=None):
    """Writes bench/GRAD.md; with no timing rows (BENCH_SCOPES empty: the memory runs alone),
    bench/GRAD_memory.md."""
    lines = [] if not rows else [
        "# Gradients: tttc against PyTorch autograd and jax.grad",
        "",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{load or f'load average {os.getloadavg()[0]:.1f} at the end'} (shared machine: timings "
        f"are noisy; ratios are from one run)  ",
        f"Python {platform.python_version()}, torch {torch.__version__}, jax {jax.__version__}; "
        f"numpy sgemm (2048², f32) {sgemm:.0f} GFLOP/s  " if sgemm else "",
        f"tttc: `{os.path.relpath(TTTC, ROOT)}`, `tttc bench --grad --backend llvm --iters {ITERS}` "
        f"(f32, checkpoint every 4 mini-batches); JAX: medians of {ITERS} runs after one warm-up "
        f"(compilation); PyTorch: median of {TORCH_ITERS} run(s), no warm-up.  ",
        f"B=1, 12 heads, f=64, K=16, f32; cotangents of ones on every output. "
        + ("Rebuilt by `bench/grad.py from-log` from the printed results of `bench/grad.sh` and "
           "of its memory runs (`BENCH_SCOPES=`)." if load else "Generated by `bench/grad.sh`."),
        "",
        ("Not measured: L = 8192 timings (the authors' PyTorch code takes minutes per gradient on "
         "this machine; tttc's are `tttc bench --grad` away), " if 8192 not in {r[1] for r in rows}
         else "Not measured: ")
        + "JAX for the whole layers (only the inner loop's math is written in bench/peers.py).",
        "",
        "fwd: forward; f+b: forward + backward (one VJP). torch: the authors' `TTTLinear`/`TTTMLP` "
        "in training mode, `scan_checkpoint_group_size` 0 and 4 (their code splits the scan into "
        "that many checkpointed segments). jax: the same dual-form math (bench/peers.py) under "
        "`jax.grad`, groups of 4 mini-batches under `jax.checkpoint`.",
        "",
        "| case | L | tttc fwd ms | tttc f+b ms | f+b / fwd | same, min / min | torch fwd ms | "
        "torch f+b ms (G=0) | torch f+b ms (G=4) | jax fwd ms | jax f+b ms (remat 4) | "
        "torch G=0 / tttc f+b | jax / tttc f+b |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    def ms(x):
        return "—" if x is None else f"{x:.1f}"

    def ratio(x, y):
        return "—" if x is None or y is None else f"{x / y:.2f}x"

    for name, L, r, tf0, tb0, tf4, tb4, jf, jb in rows:
        f, g = r["forward_median_ms"], r["grad_median_ms"]
        mn = ratio(r["grad_min_ms"], r["forward_min_ms"])
        lines.append(f"| {name} | {L} | {f:.1f} | {g:.1f} | {g / f:.2f}x | {mn} | {ms(tf0)} | {ms(tb0)} | "
                     f"{ms(tb4)} | {ms(jf)} | {ms(jb)} | {ratio(tb0, g)} | {ratio(jb, g)} |")
    if checks:
        lines += ["", "Gradients checked before timing, for random cotangents (max |tttc − torch| / "
                  "max |torch|, f32 both):", "",
                  "| case | L | input | rel. error |", "| --- | --- | --- | --- |"]
        lines += [f"| {n} | {L} | `{k}` | {e:.1e} |" for n, L, k, e in checks]
    if peak:
        lines += ["", f"Peak resident memory of one gradient of the TTT-MLP layer (hidden 768, 12 heads, "
                      f"L={PEAK_L}, B=1, f32), each in its own process (`getrusage` max RSS of the child; "
                      "it includes the interpreter or the compiled code and the inputs):", "",
                  "| run | peak MB | wall s |", "| --- | --- | --- |"]
        lines += [f"| {w} | {m:.0f} | {s:.1f} |" for w, m, s in peak]
    text = "\n".join(lines) + "\n"
    if not rows:
        lines = ["# Gradients: peak memory", "",
                 f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}; "
                 f"tttc: `{os.path.relpath(TTTC, ROOT)}`; torch {torch.__version__}. Generated by "
                 "`BENCH_SCOPES= bench/grad.sh` (see bench/GRAD.md for the timings)."] + lines
        text = "\n".join(lines) + "\n"
    with open(os.path.join(ROOT, "bench", "GRAD.md" if rows else "GRAD_memory.md"), "w") as fh:
        fh.write(text)
    print(text)


def cmd_from_log(a):
    """Rebuilds bench/GRAD.md from the printed results of runs (their stdout, in order): what
    a run that was stopped early had measured, and the memory runs' lines."""
    import ast
    import itertools
    import jax
    import torch
    rows, checks, peak, sgemm, cur, loads = [], [], [], None, None, []
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(p)) for p in a.logs]
        for line in itertools.chain(*files):
            head, _, rest = line.strip().partition(" ")
            if "load average:" in line:
                loads.append(line.split("load average:")[1].strip())
            if head == "sgemm":
                sgemm = float(rest)
            elif head == "peak":
                peak.append(ast.literal_eval(rest))
            elif head == "check":
                checks.append(ast.literal_eval(rest))
            elif head == "torch" and cur:
                cur += [float(x) for x in rest.split()]
            elif head == "jax" and cur:
                cur += [float(x) for x in rest.split()]
            elif line.startswith("TTT-"):
                if cur:
                    rows.append(tuple(cur + [None] * (9 - len(cur))))
                i = line.index(" {")
                words = line[:i].split()
                cur = [" ".join(words[:-1]), int(words[-1]), ast.literal_eval(line[i + 1:].strip())]
    if cur:
        rows.append(tuple(cur + [None] * (9 - len(cur))))
    write(rows, checks, peak, sgemm, torch, jax,
          load=f"load averages (1, 5, 15 min) {' → '.join(loads)}" if loads else None)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="sub")
    p = sub.add_parser("peak")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(fn=lambda a: cmd_peak(argparse.Namespace(cmd=[c for c in a.cmd if c != "--"])))
    p = sub.add_parser("from-log")
    p.add_argument("logs", nargs="+")
    p.set_defaults(fn=cmd_from_log)
    p = sub.add_parser("torch-grad")
    p.add_argument("inputs")
    p.add_argument("group", type=int)
    p.set_defaults(fn=cmd_torch_grad)
    a = ap.parse_args()
    (a.fn if a.sub else run)(a)


if __name__ == "__main__":
    main()
