"""Bad input is a Python exception naming what is wrong, never a crash of the interpreter."""

import numpy as np
import pytest

import tttc
from conftest import DATA, GOLDEN, ROOT


def small(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((3, 4)).astype(dtype),
        "w": rng.standard_normal((4, 5)).astype(dtype),
        "b": rng.standard_normal((5,)).astype(dtype),
    }


@pytest.fixture(scope="module")
def prog():
    return tttc.Program.load(DATA / "small.ttt")


def test_malformed_program_is_a_compile_error_with_location():
    with pytest.raises(tttc.CompileError) as info:
        tttc.Program.load(DATA / "broken.ttt")
    e = info.value
    assert isinstance(e, ValueError)
    assert "broken.ttt:3:" in str(e)
    assert "undefined_name" in str(e)
    (file, line, col, message) = e.diagnostics[0]
    assert file.endswith("broken.ttt") and line == 3 and col > 1 and message


def test_source_that_is_not_a_program(tmp_path):
    bad = tmp_path / "garbage.ttt"
    bad.write_bytes(b"main { \xff\xfe }")
    with pytest.raises(tttc.CompileError):
        tttc.Program.load(bad)


def test_missing_file_is_an_os_error():
    with pytest.raises(FileNotFoundError):
        tttc.Program.load(DATA / "no_such_file.ttt")


def test_bad_load_arguments():
    with pytest.raises(ValueError, match="backend"):
        tttc.Program.load(DATA / "small.ttt", backend="tpu")
    with pytest.raises(ValueError, match="precision"):
        tttc.Program.load(DATA / "small.ttt", precision="float16")
    with pytest.raises(ValueError, match="unknown setting|not a setting|mini_batch"):
        tttc.Program.load(ROOT / "examples/ttt_linear.ttt", set={"mini_batch_size": "x"})
    with pytest.raises(TypeError):
        tttc.Program.load(DATA / "small.ttt", set={"N": [1, 2]})


def test_unknown_dimension_setting_fails_at_the_first_call():
    prog = tttc.Program.load(DATA / "small.ttt", set={"no_such_dim": 3})
    with pytest.raises(ValueError, match="no_such_dim"):
        prog(**small())


def test_wrong_dtype_is_a_type_error(prog):
    t = small()
    t["x"] = t["x"].astype(np.float64)
    with pytest.raises(TypeError, match="`x`.*float32.*float64"):
        prog(**t)
    t = small()
    t["b"] = np.arange(5)
    with pytest.raises(TypeError, match="`b`"):
        prog(**t)


def test_not_an_array_is_a_type_error(prog):
    t = small()
    t["x"] = [[1.0] * 4] * 3
    with pytest.raises(TypeError, match="`x`"):
        prog(**t)


def test_non_contiguous_is_a_value_error(prog):
    t = small()
    t["w"] = np.ascontiguousarray(t["w"].T).T
    assert not t["w"].flags.c_contiguous
    with pytest.raises(ValueError, match="`w`.*contiguous"):
        prog(**t)
    t = small()
    t["x"] = np.zeros((3, 8), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="`x`.*contiguous"):
        prog(**t)


def test_wrong_shape_is_a_value_error(prog):
    t = small()
    t["w"] = np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match="`w`"):
        prog(**t)
    t = small()
    t["b"] = np.zeros((5, 1), np.float32)
    with pytest.raises(ValueError, match="`b`"):
        prog(**t)


def test_missing_and_unknown_inputs_are_type_errors(prog):
    t = small()
    del t["b"]
    with pytest.raises(TypeError, match="missing.*b"):
        prog(**t)
    t = small()
    t["bias"] = t["b"]
    with pytest.raises(TypeError, match="`bias` is not an input"):
        prog(**t)


def test_torch_errors(prog):
    torch = pytest.importorskip("torch")
    t = {k: torch.from_numpy(v) for k, v in small().items()}
    t["x"] = t["x"].to(torch.bfloat16)
    with pytest.raises(TypeError, match="`x`"):
        prog(**t)
    t = {k: torch.from_numpy(v) for k, v in small().items()}
    t["w"] = t["w"].t().contiguous().t()
    with pytest.raises(ValueError, match="`w`.*contiguous"):
        prog(**t)
    t = {k: torch.from_numpy(v) for k, v in small().items()}
    t["x"] = torch.zeros(3, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="`x`"):
        prog(**t)


def lm_inputs():
    tensors = tttc.load_safetensors(GOLDEN / "model_linear_T.inputs.safetensors")
    return {k: (v if k == "input_ids" else v.astype(np.float32)) for k, v in tensors.items()}


@pytest.fixture(scope="module")
def lm():
    return tttc.Program.load(
        ROOT / "examples/ttt_lm.ttt", config=GOLDEN / "model_linear_T.config.json"
    )


def test_token_ids(lm):
    t = {k: v for k, v in lm_inputs().items() if k in lm.input_names}
    bad = dict(t, input_ids=t["input_ids"].copy())
    bad["input_ids"][0, 3] = 97  # vocab_size = 97
    with pytest.raises(ValueError, match="input_ids.*range"):
        lm(**bad)
    bad["input_ids"] = t["input_ids"].astype(np.float32)
    with pytest.raises(TypeError, match="input_ids.*int"):
        lm(**bad)
    bad["input_ids"] = t["input_ids"].astype(np.int32)
    lm(**bad)  # int32 ids are fine


def test_vjp_errors(prog):
    t = small()
    with pytest.raises(ValueError, match="`nope`.*not an output"):
        prog.vjp(t, {"nope": np.zeros((3, 5), np.float32)})
    with pytest.raises(ValueError, match="`y`.*shape"):
        prog.vjp(t, {"y": np.zeros((3, 4), np.float32)})
    with pytest.raises(TypeError, match="cotangent `y`"):
        prog.vjp(t, {"y": np.zeros((3, 5), np.float64)})
    with pytest.raises(ValueError, match="checkpoint_every"):
        prog.vjp(t, {"y": np.zeros((3, 5), np.float32)}, checkpoint_every=0)


def test_inspect_and_cost_errors(prog):
    with pytest.raises(ValueError, match="unknown stage"):
        prog.inspect("no_such_stage")
    with pytest.raises(ValueError, match="shapes"):
        prog.inspect("lower_kernel")
    with pytest.raises(ValueError, match="format"):
        prog.inspect(None, "yaml")
    with pytest.raises(ValueError, match="dot"):
        prog.inspect("lower_kernel", "dot", x=(3, 4), w=(4, 5), b=(5,))
    with pytest.raises(ValueError, match="`w`"):
        prog.cost(x=(3, 4), w=(3, 5), b=(5,))


def test_session_errors(tmp_path):
    prog = tttc.Program.load(ROOT / "examples/ttt_linear.ttt", precision="float64")
    t = {k: v.astype(np.float64) for k, v in tttc.load_safetensors(
        GOLDEN / "inner_linear_B1_nh2_f16_K16_L64.inputs.safetensors").items()}
    with pytest.raises(ValueError, match="runs along the sequence"):
        prog.session(**t)
    weights = {k: v for k, v in t.items() if k not in ("XQ", "XK", "XV", "ttt_lr_eta")}
    s = prog.session(**weights)
    c = lambda a, n: np.ascontiguousarray(a[:, :, :n])
    with pytest.raises(ValueError, match="token"):
        s.feed(XQ=c(t["XQ"], 4), XK=c(t["XK"], 5), XV=c(t["XV"], 4), ttt_lr_eta=c(t["ttt_lr_eta"], 4))
    with pytest.raises((OSError, ValueError), match="missing.safetensors"):
        tttc.Session.load(tmp_path / "missing.safetensors", prog, **weights)
