"""Streaming sessions from Python: chunks == one shot, and a saved state continues exactly."""

import numpy as np
import pytest

import tttc
from conftest import GOLDEN, ROOT, assert_close

STEM = "inner_linear_B1_nh2_f16_K16_L64"
TOKENS = ("XQ", "XK", "XV", "ttt_lr_eta")
# Chunks against one shot: only the grouping of a mini-batch's tokens differs (rounding), as in
# tests/streaming.rs: f64 1e-10 relative.
TOL = 1e-10


@pytest.fixture(scope="module")
def case():
    prog = tttc.Program.load(ROOT / "examples/ttt_linear.ttt", precision="float64",
                             set={"mini_batch_size": 16})
    t = {k: v.astype(np.float64) for k, v in tttc.load_safetensors(GOLDEN / f"{STEM}.inputs.safetensors").items()}
    return prog, t


def chunk(t, start, stop):
    return {k: np.ascontiguousarray(t[k][:, :, start:stop]) for k in TOKENS}


def weights(t):
    return {k: v for k, v in t.items() if k not in TOKENS}


def test_chunks_equal_one_shot(case):
    prog, t = case
    whole = prog(**t)
    s = prog.session(**weights(t))
    assert s.token_inputs == {"XQ": 2, "XK": 2, "XV": 2, "ttt_lr_eta": 2}
    pieces, last = [], None
    bounds = [0, 5, 16, 17, 18, 40, 64]
    for a, b in zip(bounds, bounds[1:]):
        last = s.feed(**chunk(t, a, b))
        pieces.append(last["Z"])
    assert s.position == 64
    assert_close(np.concatenate(pieces, axis=2), whole["Z"], TOL, "Z")
    assert_close(last["W1_last"], whole["W1_last"], TOL, "W1_last")


def test_save_and_load_continue(case, tmp_path):
    prog, t = case
    whole = prog(**t)
    s = prog.session(**weights(t))
    first = s.feed(**chunk(t, 0, 21))
    s.save(tmp_path / "state.safetensors")
    resumed = tttc.Session.load(tmp_path / "state.safetensors", prog, **weights(t))
    assert resumed.position == 21
    rest = resumed.feed(**chunk(t, 21, 64))
    z = np.concatenate([first["Z"], rest["Z"]], axis=2)
    assert_close(z, whole["Z"], TOL, "Z")
    assert_close(rest["W1_last"], whole["W1_last"], TOL, "W1_last")


def test_torch_session_returns_tensors(case):
    torch = pytest.importorskip("torch")
    prog, t = case
    s = prog.session(**{k: torch.from_numpy(v) for k, v in weights(t).items()})
    out = s.feed(**{k: torch.from_numpy(v) for k, v in chunk(t, 0, 3).items()})
    assert isinstance(out["Z"], torch.Tensor)
