"""Program.vjp against `tttc grad` (the same gradient program on the interpreter: f64 1e-10),
the gradient goldens (ttt-lm-pytorch under torch autograd: f64 1e-8, tests/golden_grad.rs), and
central finite differences."""

import numpy as np
import pytest

import tttc
from conftest import DATA, GOLDEN, ROOT, assert_close, run_cli

GRAD = GOLDEN / "grad"


def grad_case(stem):
    import json

    meta = json.loads((GRAD / f"{stem}.json").read_text())
    program = ROOT / meta["program"]
    if "set" in meta:
        kwargs = {"set": meta["set"]}
    else:
        kwargs = {"config": GRAD / f"{stem}.config.json"}
    return program, kwargs


def f64_inputs(path, prog):
    tensors = tttc.load_safetensors(path)
    return {
        k: (v if v.dtype.kind == "i" else v.astype(np.float64))
        for k, v in tensors.items()
        if k in prog.input_names
    }


@pytest.mark.parametrize(
    "stem", ["grad_inner_linear_B1_nh2_f16_K16_L40", "grad_layer_linear_H64_nh4_K16_L40_B1"]
)
def test_vjp_equals_tttc_grad_and_the_goldens(stem, tttc_bin, tmp_path):
    # Cranelift on both sides: compiling these backwards with LLVM takes tens of seconds on CI's
    # 2 cores; LLVM's native scan backward is checked on a small case below.
    program, kwargs = grad_case(stem)
    prog = tttc.Program.load(program, precision="float64", backend="cranelift", **kwargs)
    inputs = f64_inputs(GRAD / f"{stem}.inputs.safetensors", prog)
    cts = {k: v.astype(np.float64) for k, v in tttc.load_safetensors(GRAD / f"{stem}.cotangents.safetensors").items()}
    got = prog.vjp(inputs, cts)

    out = tmp_path / "grad.safetensors"
    args = ["grad", program, "--inputs", GRAD / f"{stem}.inputs.safetensors",
            "--cotangents", GRAD / f"{stem}.cotangents.safetensors", "--out", out,
            "--precision", "f64", "--backend", "cranelift"]
    if "set" in kwargs:
        for k, v in kwargs["set"].items():
            args += ["--set", f"{k}={v}"]
    else:
        args += ["--config", kwargs["config"]]
    run_cli(tttc_bin, *args)
    cli = tttc.load_safetensors(out)
    expected = tttc.load_safetensors(GRAD / f"{stem}.expected_grad_f64.safetensors")
    assert set(got) == set(cli)
    for name in got:
        assert_close(got[name], cli[name], 1e-10, f"{stem} {name} vs tttc grad")
        if name in expected:
            assert_close(got[name], expected[name], 1e-8, f"{stem} {name} vs golden")


def model_case():
    """The 2-layer LM gradient golden: the program (cranelift, f64), its inputs, cotangents
    and expected gradients."""
    stem = "grad_model_linear_T"
    program, kwargs = grad_case(stem)
    prog = tttc.Program.load(program, precision="float64", backend="cranelift", **kwargs)
    inputs = f64_inputs(GRAD / f"{stem}.inputs.safetensors", prog)
    cts = {k: v.astype(np.float64) for k, v in tttc.load_safetensors(GRAD / f"{stem}.cotangents.safetensors").items()}
    expected = tttc.load_safetensors(GRAD / f"{stem}.expected_grad_f64.safetensors")
    return prog, inputs, cts, expected


def test_vjp_model_int_inputs_have_no_gradient():
    prog, inputs, cts, expected = model_case()
    got = prog.vjp(inputs, cts)
    assert "input_ids" not in got
    for name, exp in expected.items():
        assert_close(got[name], exp, 1e-8, name)


def test_forward_keeping_then_backward_equals_vjp_and_run():
    # A training step's two halves: the outputs equal a plain call's, the gradients vjp's (the
    # same math computed once instead of twice: f64 1e-10) and the goldens (1e-8); residuals
    # of another shape are a ValueError, not a crash.
    prog, inputs, cts, expected = model_case()
    out, residuals = prog.forward_keeping(inputs)
    assert len(residuals) > 0
    shapes = prog.residual_shapes(**{k: v.shape for k, v in inputs.items()})
    assert shapes == [tuple(r.shape) for r in residuals]
    plain = prog(**inputs)
    assert sorted(out) == sorted(plain)
    for name in plain:
        assert_close(out[name], plain[name], 1e-12, name)
    got = prog.backward(inputs, residuals, cts)
    want = prog.vjp(inputs, cts)
    assert sorted(got) == sorted(want)
    for name in want:
        assert_close(got[name], want[name], 1e-10, name)
    for name, exp in expected.items():
        assert_close(got[name], exp, 1e-8, name)
    wrong = list(residuals)
    wrong[0] = np.zeros(wrong[0].shape + (2,))
    with pytest.raises(ValueError):
        prog.backward(inputs, wrong, cts)
    with pytest.raises(ValueError, match="missing"):
        prog.backward(inputs, residuals[:-1], cts)
    with pytest.raises(ValueError, match="not a residual"):
        prog.backward(inputs, residuals + [residuals[0]], cts)


def directional_check(prog, inputs, cts, h=1e-6, seed=0):
    """<vjp, v> against (f(x + h v) - f(x - h v)) / 2h for f = sum_o <ct_o, o>, per input."""
    grads = prog.vjp(inputs, cts)
    rng = np.random.default_rng(seed)

    def f(t):
        out = prog(**t)
        return sum(float(np.sum(cts[o] * out[o])) for o in cts)

    for name, g in grads.items():
        v = rng.standard_normal(inputs[name].shape)
        plus = dict(inputs, **{name: inputs[name] + h * v})
        minus = dict(inputs, **{name: inputs[name] - h * v})
        fd = (f(plus) - f(minus)) / (2 * h)
        analytic = float(np.sum(g * v))
        # Central differences in f64 with h = 1e-6: truncation ~h^2 |f'''| and rounding
        # ~1e-16 |f| / h, both far below 1e-6 relative for these smooth, O(1) functions.
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic)), (name, fd, analytic)


@pytest.mark.parametrize("backend", ["llvm", "interp"])
def test_vjp_small_program_finite_differences(backend):
    prog = tttc.Program.load(DATA / "small.ttt", precision="float64", backend=backend)
    rng = np.random.default_rng(1)
    inputs = {
        "x": rng.standard_normal((3, 4)),
        "w": rng.standard_normal((4, 5)) * 0.5,
        "b": rng.standard_normal(5),
    }
    cts = {"y": rng.standard_normal((3, 5)), "s": np.array(0.7)}
    directional_check(prog, inputs, cts)


def scan_case():
    rng = np.random.default_rng(2)
    B, H, L, f = 1, 2, 10, 4
    inputs = {
        "XQ": rng.standard_normal((B, H, L, f)),
        "XK": rng.standard_normal((B, H, L, f)),
        "XV": rng.standard_normal((B, H, L, f)),
        "token_eta": 1.0 / np.arange(1, 5),
        "ttt_lr_eta": rng.uniform(0.05, 0.2, (B, H, L)),
        "W1": rng.standard_normal((H, f, f)) * 0.3,
        "b1": rng.standard_normal((H, 1, f)) * 0.1,
        "ln_weight": 1 + 0.1 * rng.standard_normal((H, f)),
        "ln_bias": 0.1 * rng.standard_normal((H, f)),
    }
    cts = {"Z": rng.standard_normal((B, H, L, f)), "W1_last": rng.standard_normal((B, H, f, f))}
    return inputs, cts


def scan_program(backend="llvm"):
    return tttc.Program.load(ROOT / "examples/ttt_linear.ttt", precision="float64",
                             set={"mini_batch_size": 4}, backend=backend)


def test_vjp_scan_finite_differences():
    inputs, cts = scan_case()
    directional_check(scan_program(), inputs, cts)


@pytest.mark.parametrize("backend", ["llvm", "cranelift"])
def test_vjp_native_scan_backward_equals_interp(backend):
    """The scan's backward compiled (GradProgram on a native backend) against the interpreter;
    1e-12: the same f64 arithmetic, summed in another order."""
    inputs, cts = scan_case()
    a = scan_program(backend).vjp(inputs, cts, checkpoint_every=2)
    b = scan_program("interp").vjp(inputs, cts, checkpoint_every=2)
    assert set(a) == set(b)
    for name in b:
        assert_close(a[name], b[name], 1e-12, name)


def test_vjp_native_equals_interp_without_scan():
    rng = np.random.default_rng(3)
    inputs = {"x": rng.standard_normal((6, 4)), "w": rng.standard_normal((4, 5)), "b": rng.standard_normal(5)}
    cts = {"y": rng.standard_normal((6, 5))}
    a = tttc.Program.load(DATA / "small.ttt", precision="float64", backend="llvm").vjp(inputs, cts)
    b = tttc.Program.load(DATA / "small.ttt", precision="float64", backend="interp").vjp(inputs, cts)
    for name in b:
        assert_close(a[name], b[name], 1e-12, name)
