"""Running compiled programs from Python: the goldens on every backend, the specs, numpy and
torch in and out, inputs read in place (no copy), one compile per input shapes, cost, inspect."""

import json

import numpy as np
import pytest

import tttc
from conftest import (
    DATA,
    GOLDEN,
    ROOT,
    TOL_F32,
    TOL_F64,
    assert_close,
    inner_cases,
    run_cli,
)

BACKENDS = [b for b in ("llvm", "cranelift", "interp") if b in tttc.backends()]


def golden_inputs(stem, dtype):
    return {k: v.astype(dtype) for k, v in tttc.load_safetensors(GOLDEN / f"{stem}.inputs.safetensors").items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_inner_goldens(backend, precision):
    tol = TOL_F64 if precision == "float64" else TOL_F32
    tag = "f64" if precision == "float64" else "f32"
    for stem, program, settings in inner_cases():
        prog = tttc.Program.load(program, set=settings, backend=backend, precision=precision)
        out = prog(**golden_inputs(stem, precision))
        expected = tttc.load_safetensors(GOLDEN / f"{stem}.expected_{tag}.safetensors")
        compared = 0
        for name, exp in expected.items():
            if name == "Z" or name.endswith("_last"):
                assert out[name].dtype == np.dtype(precision)
                assert_close(out[name], exp, tol, f"{stem} {backend} {precision} {name}")
                compared += 1
        assert compared >= 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_golden_with_config_file(backend):
    """The 2-layer LM with its config.json and int64 token ids, as `tttc run --config`."""
    stem = "model_linear_T"
    prog = tttc.Program.load(
        ROOT / "examples/ttt_lm.ttt",
        config=GOLDEN / f"{stem}.config.json",
        backend=backend,
        precision="float64",
    )
    tensors = tttc.load_safetensors(GOLDEN / f"{stem}.inputs.safetensors")
    assert tensors["input_ids"].dtype == np.int64
    inputs = {k: (v if k == "input_ids" else v.astype(np.float64)) for k, v in tensors.items()}
    inputs = {k: v for k, v in inputs.items() if k in prog.input_names}
    out = prog(**inputs)
    expected = tttc.load_safetensors(GOLDEN / f"{stem}.expected_f64.safetensors")
    assert_close(out["logits"], expected["logits_exact_rope"], TOL_F64, f"{stem} {backend}")


def test_outputs_equal_the_cli(tttc_bin, tmp_path):
    """prog(**inputs) and `tttc run` give the same numbers (same code, same backend)."""
    stem, program, settings = inner_cases()[0]
    inputs = GOLDEN / f"{stem}.inputs.safetensors"
    out_file = tmp_path / "out.safetensors"
    args = ["run", program, "--inputs", inputs, "--out", out_file, "--backend", "llvm",
            "--precision", "f64", "--no-cache"]
    for k, v in settings.items():
        args += ["--set", f"{k}={v}"]
    run_cli(tttc_bin, *args)
    cli_out = tttc.load_safetensors(out_file)
    prog = tttc.Program.load(program, set=settings, precision="float64")
    out = prog(**golden_inputs(stem, np.float64))
    assert set(out) == set(cli_out)
    for name in out:
        # The same compiled code on the same inputs: equal up to the thread pool's order.
        assert_close(out[name], cli_out[name], 1e-13, name)


def test_specs():
    prog = tttc.Program.load(ROOT / "examples/ttt_linear.ttt")
    specs = {s.name: s for s in prog.inputs}
    assert specs["XQ"].shape == ("B", "H", "L", "f")
    assert specs["XQ"].dtype == "float32"
    assert specs["token_eta"].shape == ("mini_batch_size",)
    assert [s.name for s in prog.outputs] == ["Z", "W1_last", "b1_last"]
    lm = tttc.Program.load(ROOT / "examples/ttt_lm.ttt", config=GOLDEN / "model_linear_T.config.json")
    ids = next(s for s in lm.inputs if s.name == "input_ids")
    assert ids.dtype == "int64"


def small_inputs(dtype=np.float32, n=3, d=4, e=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, d)).astype(dtype),
        "w": rng.standard_normal((d, e)).astype(dtype),
        "b": rng.standard_normal((e,)).astype(dtype),
    }


def small_reference(t):
    y = np.tanh(t["x"].astype(np.float64) @ t["w"] + t["b"])
    x = t["x"].astype(np.float64)
    s = np.sum(x / (1 + np.exp(-x)))
    return y, s


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_program_against_numpy(backend):
    prog = tttc.Program.load(DATA / "small.ttt", backend=backend, precision="float64")
    t = small_inputs(np.float64)
    out = prog(**t)
    y, s = small_reference(t)
    assert_close(out["y"], y, 1e-12, "y")
    assert_close(out["s"], s, 1e-12, "s")


def test_inputs_are_read_in_place_numpy():
    """Every floating-point input's own storage is what the compiled code reads, and every
    returned array is the storage it wrote: no copies either way."""
    prog = tttc.Program.load(DATA / "small.ttt")
    t = small_inputs()
    out = prog(**t)
    addresses = prog._last_addresses()
    for name, array in t.items():
        assert addresses[name] == array.ctypes.data, name
    for name, array in out.items():
        assert addresses[name] == array.ctypes.data, name


def test_inputs_are_read_in_place_torch():
    torch = pytest.importorskip("torch")
    prog = tttc.Program.load(DATA / "small.ttt")
    t = {k: torch.from_numpy(v) for k, v in small_inputs().items()}
    t["w"].requires_grad_(True)
    out = prog(**t)
    assert all(isinstance(v, torch.Tensor) for v in out.values())
    addresses = prog._last_addresses()
    for name, tensor in t.items():
        assert addresses[name] == tensor.data_ptr(), name
    for name, tensor in out.items():
        assert addresses[name] == tensor.data_ptr(), name
    y, s = small_reference({k: v.detach().numpy() for k, v in t.items()})
    assert_close(out["y"].numpy(), y, 1e-6, "y")


def test_one_compile_per_input_shapes():
    prog = tttc.Program.load(DATA / "small.ttt")
    prog(**small_inputs(seed=1))
    prog(**small_inputs(seed=2))
    assert prog._native.compiled_count() == 1
    prog(**small_inputs(n=7))
    assert prog._native.compiled_count() == 2


def test_output_shapes():
    prog = tttc.Program.load(DATA / "small.ttt")
    assert prog.output_shapes(x=(3, 4), w=(4, 5), b=(5,)) == {"y": (3, 5), "s": ()}


def test_cost_equals_the_cli(tttc_bin):
    stem, program, settings = inner_cases()[0]
    inputs = GOLDEN / f"{stem}.inputs.safetensors"
    args = ["cost", program, "--inputs", inputs, "--json"]
    for k, v in settings.items():
        args += ["--set", f"{k}={v}"]
    expected = json.loads(run_cli(tttc_bin, *args))
    prog = tttc.Program.load(program, set=settings)
    got = prog.cost(**tttc.load_safetensors(inputs))
    assert got == expected


def test_inspect():
    prog = tttc.Program.load(DATA / "small.ttt")
    assert "tanh" in prog.inspect("parse")
    assert json.loads(prog.inspect("simplify", "json"))
    assert prog.inspect(format="dot").startswith("digraph")
    kernel = prog.inspect("lower_kernel", x=(3, 4), w=(4, 5), b=(5,))
    assert "loop" in kernel.lower() or "for" in kernel.lower()


def test_inspect_equals_the_cli(tttc_bin):
    program = ROOT / "examples/ttt_linear.ttt"
    expected = run_cli(tttc_bin, "inspect", program, "--after", "dual_form")
    got = tttc.Program.load(program).inspect("dual_form")
    assert got.strip() == expected.strip()


def test_safetensors_round_trip(tmp_path):
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([[1, 2]], np.int64)}
    tttc.save_safetensors(tmp_path / "t.safetensors", t)
    back = tttc.load_safetensors(tmp_path / "t.safetensors")
    assert back["a"].dtype == np.float32 and back["ids"].dtype == np.int64
    np.testing.assert_array_equal(back["a"], t["a"])
    np.testing.assert_array_equal(back["ids"], t["ids"])


def test_gil_is_released_while_running():
    """Two threads calling the same program give the same results as one at a time."""
    import threading

    prog = tttc.Program.load(DATA / "small.ttt", precision="float64")
    inputs = [small_inputs(np.float64, n=64, d=32, e=32, seed=s) for s in range(4)]
    expected = [prog(**t)["y"] for t in inputs]
    results = [None] * 4

    def work(i):
        results[i] = prog(**inputs[i])["y"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for got, exp in zip(results, expected):
        np.testing.assert_array_equal(got, exp)


def test_large_blocks_are_kept_between_runs_and_released_on_request():
    """A run's large temporaries (here the [4096, 1024] float64 product, 32 MiB) are kept for
    the next run, which computes the same from the reused memory; `release_memory` hands them
    back once."""
    prog = tttc.Program.load(DATA / "small.ttt", precision="float64")
    t = small_inputs(np.float64, n=4096, d=1024, e=1024)
    tttc.release_memory()
    first = prog(**t)["y"]
    second = prog(**t)["y"]
    y, _ = small_reference(t)
    assert_close(first, y, 1e-12, "y")
    np.testing.assert_array_equal(second, first)
    assert tttc.release_memory() >= 4096 * 1024 * 8
    assert tttc.release_memory() == 0
