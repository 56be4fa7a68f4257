//! Regression tests for wrong code from the LLVM backend.
//!
//! `token_step_matches_interpreter`: the streaming token step of a small two-layer inner model
//! (batched matmuls over `N` slices, elementwise ops, mean/sum_to reductions), whose loops all
//! have tiny extents, so LLVM's `default<O3>` unrolls them fully and leaves one long
//! straight-line block. LLVM 19.1's SLP vectorizer miscompiles that block on AVX-512 hosts
//! (N = 2, 3, 4 give relative errors up to 0.9: it builds vectors with the wrong scalar in a
//! lane), while the kernel-IR executor, which checks every access, is exact. That is LLVM's bug,
//! not UB in our IR: `tests/llvm/slp_poison_lane.ll` is the module reduced with LLVM's tools,
//! and `tests/llvm/main.rs` watches it (`docs/backends.md`, "The SLP vectorizer"). The backend
//! turns the SLP vectorizer off (`set_llvm_options` in `backends/src/llvm/mod.rs`); LLVM
//! must agree with the interpreter to 1e-12 (only `contract` FMA fusion differs) for every `N`.
//! `TTTC_LLVM_SLP=1 cargo test --test llvm_regression` keeps SLP on and shows the failure (or,
//! on a fixed LLVM, that SLP can come back).
#![cfg(feature = "llvm")]

mod common;

use common::rel_error;
use std::collections::BTreeMap;
use tttc::ir::DType;
use tttc::runtime::Tensor;
use tttc::{bind, optimize, prepare, Backend, Precision};

/// The inner model: `layer_norm(silu(x W0 + b0) W1)` with a squared loss, d = 3, hidden 4.
const SOURCE: &str = "\
config mini_batch_size = 4
inner M {
  state W0: [3, 4]
  state b0: [1, 4]
  state W1: [4, 3]
  param lnw, lnb: [3]
fn g(x: [1, 3]) -> [1, 3] = layer_norm((silu(((x @ W0) + b0)) @ W1), lnw, lnb, 1e-6)
loss(k: [1, 3], v: [1, 3]) = 0.5 * sum((g(k) - v) ^ 2)
out(q: [1, 3]) = g(q)
}
main {
input XQ, XK, XV: [B, H, L, 3]
input eta: [mini_batch_size]
input lr: [B, H, L]
input W0: [H, 3, 4]
input b0: [H, 1, 4]
input W1: [H, 4, 3]
input lnw, lnb: [H, 3]
let r = ttt M(W0 = W0, b0 = b0, W1 = W1, lnw = lnw, lnb = lnb, k = XK, v = XV, q = XQ) per (B, H)
update minibatch_gd(size = mini_batch_size, token_eta = eta, lr = lr)
output Z = r.out
output W0_last = r.W0
output b0_last = r.b0
output W1_last = r.W1
}
";

/// Deterministic values in `[-scale, scale)`.
fn values(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    common::random::Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
        .vec(n, scale)
}

fn tensor(shape: Vec<usize>, seed: u64, scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f64(shape, values(seed, n, scale)).expect("sizes")
}

/// The `ttt` scan of the bound main program (B = 2, H = 2, L = 37, mini-batch 4).
fn scan() -> tttc::ir::Op {
    let settings: tttc::Settings = [("mini_batch_size".to_string(), 4.0.into())]
        .into_iter()
        .collect();
    let lowered =
        tttc::ir::syntax::compile("regression.ttt", SOURCE, DType::F64, &settings).unwrap();
    let program = optimize(lowered, None, false).unwrap().program;
    let (b, h, l) = (2, 2, 37);
    let mut inputs = BTreeMap::new();
    for (i, name) in ["XQ", "XK", "XV"].into_iter().enumerate() {
        inputs.insert(name.to_string(), tensor(vec![b, h, l, 3], i as u64, 1.0));
    }
    inputs.insert("eta".to_string(), tensor(vec![4], 4, 1.0));
    inputs.insert("lr".to_string(), tensor(vec![b, h, l], 5, 0.2));
    inputs.insert("W0".to_string(), tensor(vec![h, 3, 4], 6, 0.5));
    inputs.insert("b0".to_string(), tensor(vec![h, 1, 4], 7, 0.5));
    inputs.insert("W1".to_string(), tensor(vec![h, 4, 3], 8, 0.5));
    inputs.insert("lnw".to_string(), tensor(vec![h, 3], 9, 1.0));
    inputs.insert("lnb".to_string(), tensor(vec![h, 3], 10, 0.3));
    let bound = bind(&program, &inputs, &settings, Precision::F64.elem()).unwrap();
    let g = &bound.program.graph;
    g.node_ids()
        .into_iter()
        .map(|id| g.node(id).op.clone())
        .find(|op| matches!(op, tttc::ir::Op::Ttt(_)))
        .expect("a ttt scan")
}

#[test]
fn token_step_matches_interpreter() {
    let tttc::ir::Op::Ttt(scan) = scan() else {
        unreachable!()
    };
    let mut failures = Vec::new();
    for n in 1..=8 {
        let step = tttc::passes::token_step::token_step_graph(&scan, n).unwrap();
        let simplified = tttc::passes::rewrite::simplify_graph(&step, &Default::default(), "x")
            .unwrap()
            .0;
        for (variant, g) in [("plain", step), ("simplified", simplified)] {
            let mut inputs = BTreeMap::new();
            for (i, &id) in g.inputs().iter().enumerate() {
                let shape = g.tensor_type(id).unwrap().shape.to_known().unwrap();
                inputs.insert(
                    g.input_name(id).unwrap().to_string(),
                    tensor(shape, 100 + i as u64, 0.5),
                );
            }
            let p = tttc::ir::Program {
                name: format!("token_step_{n}"),
                configs: vec![],
                derived_dims: vec![],
                intermediates: vec![],
                integer_inputs: Vec::new(),
                graph: g,
            };
            let expected = prepare(Backend::Interp, &p).unwrap().run(&inputs).unwrap();
            let got = prepare(Backend::Llvm, &p).unwrap().run(&inputs).unwrap();
            for (name, e) in &expected {
                let err = rel_error(&got[name], e);
                if err > 1e-12 {
                    failures.push(format!(
                        "N = {n} ({variant}) {name}: relative error {err:e}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "LLVM differs from the interpreter:\n{}",
        failures.join("\n")
    );
}
