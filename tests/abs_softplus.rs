//! `abs` and `softplus`, the two elementwise ops added to prove the op table (issue 13): written
//! in the language, compiled through the whole pipeline and run on every built backend, against
//! Rust's own `f64::abs` and `ln_1p(exp(x))`; and inside an inner model's loss, whose gradient
//! autodiff derives, against the same program run on the interpreter (the derivative rules
//! themselves are checked against finite differences in `passes/tests/rules.rs` and
//! `passes/tests/fd_proptest.rs`).
//!
//! Tolerances, relative to max |expected|: `abs` moves numbers only, so it is exact (0). f64
//! `softplus` is `relu(x) + log(1 + e^-|x|)`, whose log term is rounded after `1 + e^-|x|`:
//! absolute error ≈ 1 ulp of 1 (2.2e-16) plus libm's, so 1e-14 relative to values of order 1-10.
//! f32: 1e-6 (a few f32 ulps). Backends against the interpreter on the TTT program: f64 1e-10
//! (the dual form and FMA contraction reorder sums), as in the golden tests.

mod common;

use common::assert_close;
use std::collections::BTreeMap;
use tttc::runtime::Tensor;
use tttc::{Backend, Precision, Settings};

const BACKENDS: [Backend; 3] = [Backend::Interp, Backend::Llvm, Backend::Cranelift];

fn run(
    backend: Backend,
    source: &str,
    inputs: &BTreeMap<String, Tensor>,
    precision: Precision,
) -> BTreeMap<String, Tensor> {
    let settings = Settings::new();
    let program = tttc::compile_source("ops.ttt", source, precision, &settings)
        .unwrap_or_else(|e| panic!("compile: {e}"));
    let bound = tttc::bind(&program, inputs, &settings, precision.elem())
        .unwrap_or_else(|e| panic!("bind: {e}"));
    tttc::prepare(backend, &bound.program)
        .and_then(|p| p.run(&bound.inputs))
        .unwrap_or_else(|e| panic!("{}: {e}", backend.name()))
}

#[test]
fn abs_and_softplus_match_rust_on_every_backend() {
    let source = r#"
main {
  input x: [n]
  output a = abs(x)
  output s = softplus(x)
  output both = softplus(abs(x) * -1.0)
}
"#;
    let xs: Vec<f64> = vec![
        -0.0, 0.0, 1.5, -1.5, 3.25, -7.0, 20.0, -20.0, 0.125, -0.3, 45.0, 1e-3,
    ];
    let inputs: BTreeMap<String, Tensor> = [(
        "x".to_string(),
        Tensor::from_f64(vec![xs.len()], xs.clone()).unwrap(),
    )]
    .into();
    for backend in BACKENDS.into_iter().filter(|b| b.is_built()) {
        for (precision, tol) in [(Precision::F64, 1e-14), (Precision::F32, 1e-6)] {
            // The expected values of the inputs as the run holds them (f32 rounds 0.3).
            let held: Vec<f64> = match precision {
                Precision::F32 => xs.iter().map(|&x| x as f32 as f64).collect(),
                _ => xs.clone(),
            };
            let abs: Vec<f64> = held.iter().map(|x| x.abs()).collect();
            let softplus: Vec<f64> = held.iter().map(|x| x.exp().ln_1p()).collect();
            let both: Vec<f64> = held.iter().map(|x| (-x.abs()).exp().ln_1p()).collect();
            let out = run(backend, source, &inputs, precision);
            let what = |n: &str| format!("{} {precision:?} {n}", backend.name());
            let got_abs = out["a"].to_f64_vec();
            assert_close(&what("abs"), &got_abs, &abs, 0.0);
            assert!(
                got_abs[0].is_sign_positive(),
                "{}: abs(-0) must be +0",
                what("abs")
            );
            assert_close(&what("softplus"), &out["s"].to_f64_vec(), &softplus, tol);
            assert_close(&what("both"), &out["both"].to_f64_vec(), &both, tol);
        }
    }
}

/// An inner model whose loss uses both ops: autodiff derives `abs`'s and `softplus`'s
/// derivatives inside the inner gradient; every backend must agree with the interpreter.
#[test]
fn inner_model_with_abs_and_softplus_runs_on_every_backend() {
    let source = std::fs::read_to_string(common::root().join("tests/data/abs_softplus.ttt"))
        .expect("tests/data/abs_softplus.ttt");
    let mut state = 0x2545_f491_u64;
    let mut next = |scale: f64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * scale
    };
    let (b, h, l, f) = (1, 2, 20, 4);
    let mut tensor = |shape: &[usize], scale: f64| {
        let n = shape.iter().product();
        Tensor::from_f64(
            shape.to_vec(),
            (0..n).map(|_| next(scale)).collect::<Vec<_>>(),
        )
        .unwrap()
    };
    let inputs: BTreeMap<String, Tensor> = [
        ("XQ", tensor(&[b, h, l, f], 1.0)),
        ("XK", tensor(&[b, h, l, f], 1.0)),
        ("XV", tensor(&[b, h, l, f], 1.0)),
        ("W", tensor(&[h, f, f], 0.3)),
        (
            "token_eta",
            Tensor::from_f64(
                vec![8],
                (0..8).map(|i| 1.0 / (i as f64 + 1.0)).collect::<Vec<_>>(),
            )
            .unwrap(),
        ),
        (
            "lr",
            Tensor::from_f64(vec![b, h, l], vec![0.1; b * h * l]).unwrap(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let reference = run(Backend::Interp, &source, &inputs, Precision::F64);
    let z = reference["Z"].to_f64_vec();
    assert!(z.iter().all(|v| v.is_finite()), "interpreter output finite");
    for backend in [Backend::Llvm, Backend::Cranelift] {
        if !backend.is_built() {
            continue;
        }
        let out = run(backend, &source, &inputs, Precision::F64);
        assert_close(backend.name(), &out["Z"].to_f64_vec(), &z, 1e-10);
    }
}
