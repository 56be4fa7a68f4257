"""tttc.torch: a program as an autograd-aware custom op."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tttc  # noqa: E402
import tttc.torch  # noqa: E402
from conftest import DATA, GOLDEN, ROOT, assert_close  # noqa: E402


def small(dtype=torch.float64, n=3, d=4, e=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True),
        "w": (0.5 * torch.randn(d, e, generator=g, dtype=dtype)).requires_grad_(True),
        "b": torch.randn(e, generator=g, dtype=dtype, requires_grad=True),
    }


def test_apply_forward_and_backward_match_torch():
    prog = tttc.Program.load(DATA / "small.ttt", precision="float64")
    t = small()
    out = tttc.torch.apply(prog, **t)
    (out["y"].pow(2).sum() + 3 * out["s"]).backward()
    ref = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    y = torch.tanh(ref["x"] @ ref["w"] + ref["b"])
    s = (torch.sigmoid(ref["x"]) * ref["x"]).sum()
    (y.pow(2).sum() + 3 * s).backward()
    assert_close(out["y"].detach().numpy(), y.detach().numpy(), 1e-12, "y")
    for k in t:
        assert_close(t[k].grad.numpy(), ref[k].grad.numpy(), 1e-12, f"d{k}")


def test_gradcheck_small_program():
    prog = tttc.Program.load(DATA / "small.ttt", precision="float64")
    t = small()
    names = list(prog.input_names)

    def f(*args):
        out = tttc.torch.apply(prog, **dict(zip(names, args)))
        return out["y"], out["s"]

    assert torch.autograd.gradcheck(f, tuple(t[n] for n in names), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradcheck_through_a_scan():
    prog = tttc.Program.load(ROOT / "examples/ttt_linear.ttt", precision="float64",
                             set={"mini_batch_size": 2})
    g = torch.Generator().manual_seed(4)
    B, H, L, f = 1, 1, 5, 2
    r = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g, dtype=torch.float64)).requires_grad_(True)
    t = {
        "XQ": r(B, H, L, f), "XK": r(B, H, L, f), "XV": r(B, H, L, f),
        "token_eta": torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True),
        "ttt_lr_eta": (0.1 + 0.05 * torch.rand(B, H, L, generator=g, dtype=torch.float64)).requires_grad_(True),
        "W1": r(H, f, f, scale=0.3), "b1": r(H, 1, f, scale=0.1),
        "ln_weight": (1 + 0.1 * torch.randn(H, f, generator=g, dtype=torch.float64)).requires_grad_(True),
        "ln_bias": r(H, f, scale=0.1),
    }
    names = list(prog.input_names)

    def fn(*args):
        out = tttc.torch.apply(prog, **dict(zip(names, args)))
        return out["Z"], out["W1_last"]

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_backward_equals_prog_vjp_on_the_model():
    stem = "grad_model_linear_T"
    prog = tttc.Program.load(ROOT / "examples/ttt_lm.ttt", precision="float64", backend="cranelift",
                             config=GOLDEN / "grad" / f"{stem}.config.json")
    raw = tttc.load_safetensors(GOLDEN / "grad" / f"{stem}.inputs.safetensors")
    t = {
        k: (torch.from_numpy(v) if v.dtype.kind == "i" else torch.from_numpy(v.astype(np.float64)).requires_grad_(True))
        for k, v in raw.items() if k in prog.input_names
    }
    ct = torch.from_numpy(tttc.load_safetensors(GOLDEN / "grad" / f"{stem}.cotangents.safetensors")["logits"].astype(np.float64))
    out = tttc.torch.apply(prog, **t)
    out["logits"].backward(ct)
    expected = tttc.load_safetensors(GOLDEN / "grad" / f"{stem}.expected_grad_f64.safetensors")
    assert t["input_ids"].grad is None
    for name, exp in expected.items():
        assert_close(t[name].grad.numpy(), exp, 1e-8, name)


def test_torch_compile_traces_around_the_op():
    prog = tttc.Program.load(DATA / "small.ttt", precision="float64")
    t = small()

    def f(x, w, b):
        out = tttc.torch.apply(prog, x=x, w=w, b=b)
        return (out["y"] * 2).sum() + out["s"]

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = compiled(t["x"], t["w"], t["b"])
    got.backward()
    ref = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    f(ref["x"], ref["w"], ref["b"]).backward()
    assert abs(got.item() - f(ref["x"], ref["w"], ref["b"]).item()) < 1e-12
    for k in t:
        assert_close(t[k].grad.numpy(), ref[k].grad.numpy(), 1e-12, f"d{k}")


def test_apply_errors():
    prog = tttc.Program.load(DATA / "small.ttt", precision="float64")
    t = small()
    with pytest.raises(TypeError, match="missing"):
        tttc.torch.apply(prog, x=t["x"], w=t["w"])
    with pytest.raises(TypeError, match="not an input"):
        tttc.torch.apply(prog, **t, z=t["x"])
    with pytest.raises(TypeError, match="torch tensor"):
        tttc.torch.apply(prog, **dict(t, x=t["x"].detach().numpy()))
