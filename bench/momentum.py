"""Prefill of `update momentum_gd` against `update minibatch_gd` on the same inner model
(TTT-Linear, examples/momentum_linear.ttt vs examples/ttt_linear.ttt) and the same tokens and
weights, through `tttc bench` (llvm, f32), the two programs interleaved, medians; plus both
programs' `tttc cost` (FLOPs and bytes of the optimized program and of the per-token primal
form) and the hand-derived counts of the chunked forms (docs/language.md): per token and head
minibatch_gd 6f^2 + 6Kf, momentum_gd 10f^2 + 6Kf + 2K^2 + 6RK (R = ceil(log2 K) doubling
rounds). `momentum_gd` is also run written as a rule (`rule titans`, below): the chunked form
derived generically from the rule's recurrence (passes/src/lower_scan/rule.rs) against the
built-in's hand-built one; and `minibatch_gd` written as a rule with its partial sum's sign
flipped (`rule flipped`, below), which is not the literal form the compiler lowers as the
built-in, so its chunked form (end map included) is derived the same way. Run through
bench/momentum.sh.

Environment: TTTC (default target/release/tttc), BENCH_ITERS (timed runs per `tttc bench`,
default 10), BENCH_REPEATS (interleaved repeats, default 3), BENCH_SHAPE (B,H,L,f; default
1,4,2048,64).
"""
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TTTC = os.environ.get("TTTC", os.path.join(ROOT, "target", "release", "tttc"))
ITERS = int(os.environ.get("BENCH_ITERS", "10"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
B, H, L, F = (int(x) for x in os.environ.get("BENCH_SHAPE", "1,4,2048,64").split(","))
K = 16  # mini_batch_size of examples/ttt_linear.ttt


def save(path, tensors):
    from safetensors.numpy import save_file
    save_file({n: np.ascontiguousarray(a, dtype=np.float32) for n, a in tensors.items()}, path)


def inputs(d):
    rng = np.random.default_rng(0)
    r = lambda *s: rng.normal(size=s)
    common = {"XQ": r(B, H, L, F), "XK": r(B, H, L, F), "XV": r(B, H, L, F),
              "W1": 0.1 * r(H, F, F), "b1": 0.1 * r(H, 1, F),
              "ln_weight": np.ones((H, F)), "ln_bias": np.zeros((H, F))}
    lr = np.full((B, H, L), 0.05)
    mom = dict(common, lr=lr, momentum=np.full((B, H, L), 0.9), decay=np.full((B, H, L), 0.01))
    gd = dict(common, ttt_lr_eta=lr, token_eta=np.ones(K))
    paths = (os.path.join(d, "momentum.safetensors"), os.path.join(d, "gd.safetensors"))
    save(paths[0], mom)
    save(paths[1], gd)
    return paths


# momentum_gd written with `keep = 1 − decay` as its coefficient: the same recurrence, but not
# of `momentum_gd`'s literal form, so the compiler derives its chunked form generically instead
# of building the built-in's (ir/src/syntax/lower/ttt.rs, momentum_structure).
RULE = """
rule titans(lr, eta, keep) {
  carry momentum = 0
  momentum = eta * momentum - lr * grad
  state = keep * state + momentum
  read state
}
"""


# minibatch_gd with the partial sum's sign flipped: the same recurrence, derived generically
# (ir/src/syntax/lower/ttt.rs, minibatch_structure, recognizes the literal form only).
GD_RULE = """
rule flipped(token_eta as eta, lr) {
  carry sum = 0
  sum = sum - lr * grad
  read state + eta * sum
  end state = state + eta * sum
  end sum = 0
}
"""


def gd_rule_program(d):
    """examples/ttt_linear.ttt with minibatch_gd written as the rule `flipped`."""
    text = open(os.path.join(ROOT, "examples", "ttt_linear.ttt")).read()
    builtin = "update minibatch_gd(size = mini_batch_size, token_eta = token_eta, lr = ttt_lr_eta)"
    assert builtin in text
    text = text.replace(builtin, "update flipped(size = mini_batch_size, token_eta = token_eta, lr = ttt_lr_eta)") + GD_RULE
    path = os.path.join(d, "gd_rule.ttt")
    with open(path, "w") as f:
        f.write(text)
    return path


def rule_program(d):
    """examples/momentum_linear.ttt with momentum_gd written as a rule (the generic chunked
    form derived from the rule's recurrence instead of the built-in's hand-built one)."""
    import shutil
    text = open(os.path.join(ROOT, "examples", "momentum_linear.ttt")).read()
    builtin = "update momentum_gd(size = mini_batch_size, lr = lr, momentum = momentum, decay = decay)"
    assert builtin in text
    text = text.replace(builtin, "update titans(size = mini_batch_size, lr = lr, eta = momentum, keep = 1 - decay)") + RULE
    shutil.copy(os.path.join(ROOT, "examples", "ttt_linear.ttt"), d)
    path = os.path.join(d, "momentum_rule.ttt")
    with open(path, "w") as f:
        f.write(text)
    return path


def tttc(*args):
    out = subprocess.run([TTTC, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    with tempfile.TemporaryDirectory() as d:
        mom_in, gd_in = inputs(d)
        cases = [("momentum_gd", "examples/momentum_linear.ttt", mom_in),
                 ("momentum rule", rule_program(d), mom_in),
                 ("minibatch_gd", "examples/ttt_linear.ttt", gd_in),
                 ("gd rule", gd_rule_program(d), gd_in)]
        rounds = math.ceil(math.log2(K))
        hand = {"momentum_gd": 10 * F * F + 6 * K * F + 2 * K * K + 6 * rounds * K,
                "minibatch_gd": 6 * F * F + 6 * K * F}
        hand["momentum rule"] = hand["momentum_gd"]
        hand["gd rule"] = hand["minibatch_gd"]
        print(f"TTT-Linear B={B} H={H} L={L} f={F} K={K}, llvm f32, {TTTC}")
        for name, prog, inp in cases:
            c = tttc("cost", prog, "--inputs", inp, "--json")
            h = hand[name] * B * H * L
            print(f"{name:>13}: optimized {c['optimized']['flops']:.4g} FLOPs "
                  f"({c['optimized']['flops'] / h:.2f}x the hand count {h:.4g}), "
                  f"{c['optimized']['bytes']:.4g} bytes ({c['primal']['bytes'] / c['optimized']['bytes']:.2f}x "
                  f"fewer than the per-token form)")
        times = {name: [] for name, _, _ in cases}
        for _ in range(REPEATS):
            for name, prog, inp in cases:
                r = tttc("bench", prog, "--inputs", inp, "--backend", "llvm", "--iters", str(ITERS), "--json")
                times[name].append(r["median_ms"])
        med = {n: statistics.median(t) for n, t in times.items()}
        for n, t in times.items():
            print(f"{n:>13}: prefill median {med[n]:.2f} ms (per repeat: {', '.join(f'{x:.2f}' for x in t)})")
        print(f"momentum_gd / minibatch_gd prefill: {med['momentum_gd'] / med['minibatch_gd']:.2f}x")
        print(f"momentum rule / momentum_gd prefill: {med['momentum rule'] / med['momentum_gd']:.2f}x")
        print(f"momentum rule / minibatch_gd prefill: {med['momentum rule'] / med['minibatch_gd']:.2f}x")
        print(f"gd rule / minibatch_gd prefill: {med['gd rule'] / med['minibatch_gd']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
