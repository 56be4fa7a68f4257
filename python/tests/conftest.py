"""Shared helpers of the Python package's tests: paths, the golden cases, the CLI, and one
comparison that fails on NaN and on shape mismatch."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
GOLDEN = ROOT / "tests" / "golden"

# Tolerances, relative to max |expected| (those of tests/common/golden.rs): f64 1e-9 (the
# reference ran in float64; only summation order and its rounded GELU-derivative constants
# differ), f32 2e-5 (a float32 computation in another summation order).
TOL_F64 = 1e-9
TOL_F32 = 2e-5


def rel_error(got, expected) -> float:
    """max |got - expected| / max |expected|; fails on a shape mismatch or a NaN."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"shape {got.shape} != expected {expected.shape}"
    assert not np.isnan(got).any(), "NaN in the result"
    assert not np.isnan(expected).any(), "NaN in the expected values"
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-300)
    return float(np.abs(got - expected).max(initial=0.0)) / scale


def assert_close(got, expected, tol, what=""):
    err = rel_error(got, expected)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def inner_cases():
    """(stem, program, settings) of every inner-loop golden case."""
    cases = []
    for sidecar in sorted(GOLDEN.glob("inner_*.json")):
        meta = json.loads(sidecar.read_text())
        kind = meta["ttt_layer_type"]
        program = ROOT / "examples" / f"ttt_{kind}.ttt"
        settings = {"mini_batch_size": meta["config"]["mini_batch_size"]}
        cases.append((sidecar.stem, program, settings))
    assert len(cases) >= 4, "expected the four inner golden cases"
    return cases


def cli():
    """The tttc binary built by cargo (CI builds it before the Python tests), or None."""
    explicit = os.environ.get("TTTC_BIN")
    if explicit:
        return explicit
    for profile in ("debug", "release"):
        path = ROOT / "target" / profile / "tttc"
        if path.exists():
            return str(path)
    return shutil.which("tttc")


@pytest.fixture
def tttc_bin():
    """The CLI; a missing binary fails under CI=true and skips elsewhere."""
    path = cli()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the tttc binary is not built (cargo build --bin tttc)")
        pytest.skip("the tttc binary is not built (cargo build --bin tttc)")
    return path


def run_cli(binary, *args):
    out = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout
