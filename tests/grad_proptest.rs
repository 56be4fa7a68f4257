//! Gradients of random inner models written as `.ttt` source (common/random_model.rs: chains
//! of layers with activations, biases, a scale state, LayerNorm, residual) through the whole
//! pipeline and `grad_program`, against central finite differences of `Σ ⟨ct, output⟩` along
//! a random direction per input, in f64 on the interpreter, with random batch, heads, sequence
//! length (remainder mini-batches included), mini-batch size and checkpoint group.
//!
//! 100 cases (tiny widths, L ≤ 10: about a second each in a debug build is the budget).
//! Tolerance `|ad − fd| ≤ 1e-6 · max(|fd|, Σ|∂ᵢ vᵢ|) + 1e-8 (1 + |f|)`, with `fd` the Richardson
//! extrapolation of central differences at h = 1e-5 and h/2: its truncation error is O(h⁴)
//! and its rounding noise ~1e-11 |f| — where the two central differences disagree by more
//! than 1e-4 (a LayerNorm of three nearly equal features: the saved regression case, whose
//! differences at 1e-5 were 20% off), at steps a quarter as long, down to h/256
//! (common/finite_diff.rs); a wrong
//! derivative rule or a wrong backward scan is off by O(0.1..1). Relu's kinks are met with
//! probability ~1e-5 per case at that step. Models with a LayerNorm over 2 features are left
//! out: it is nearly a sign function, and finite differences were off by 2e-5 relative there.

mod common;

use common::finite_diff;
use common::random_model::{inputs, model, values};
use proptest::prelude::*;
use std::collections::BTreeMap;
use tttc::ir::DType;
use tttc::runtime::{ElemType, Tensor};
use tttc::{bind, optimize};

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, .. ProptestConfig::default() })]

    #[test]
    fn gradients_match_finite_differences(m in model(), b in 1..3usize, h in 1..3usize, l in 1..11usize, k in 1..5usize, every in 1..4usize, seed in any::<u64>()) {
        // A LayerNorm over 2 features is nearly a sign function (x₁ − x₂ over its own absolute
        // value): its derivatives reach 1/sqrt(eps) and finite differences cannot follow it.
        prop_assume!(!(m.norm && m.d == 2));
        let (text, states) = m.source();
        let settings: tttc::Settings = [("mini_batch_size".to_string(), (k as f64).into())].into_iter().collect();
        let lowered = tttc::ir::syntax::compile("random.ttt", &text, DType::F64, &settings)
            .map_err(|e| TestCaseError::fail(format!("{}\n{text}", e.render(false))))?;
        let program = optimize(lowered, None, false).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?.program;
        let inputs = inputs(&m, &states, (b, h, l, k), seed);
        // One random cotangent per output, in its shape.
        let fwd = bind(&program, &inputs, &settings, ElemType::F64).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let outs = tttc::backends::interp::run_program(&fwd.program, &fwd.inputs)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let cts: BTreeMap<String, Tensor> = outs.iter().enumerate().map(|(i, (name, t))| {
            let v = values(seed ^ (100 + i as u64), t.len(), 1.0);
            (name.clone(), Tensor::from_f64(t.shape().to_vec(), v).expect("sizes"))
        }).collect();
        let grads = finite_diff::gradients(&program, &inputs, &cts, &settings, every)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let f = finite_diff::pairing(&program, &inputs, &cts, &settings).map_err(TestCaseError::fail)?;
        for (i, (name, x)) in inputs.iter().enumerate() {
            let g = grads.get(name).ok_or_else(|| TestCaseError::fail(format!("no gradient for {name}")))?;
            prop_assert_eq!(g.shape(), x.shape());
            let v = values(seed ^ (1000 + i as u64), x.len(), 1.0);
            let check = finite_diff::directional(&program, &inputs, &cts, &settings, name, g, &v)
                .map_err(TestCaseError::fail)?;
            let (ad, fd) = (check.autodiff, check.finite_differences);
            let tol = 1e-6 * check.scale + 1e-8 * (1.0 + f.abs());
            prop_assert!((ad - fd).abs() <= tol, "d{name}: autodiff {ad:e}, finite differences {fd:e} (tol {tol:e}), G = {every}\n{text}");
        }
    }
}

/// The gradients of the native backends (the backward scan lowered to kernels, after the
/// gradient pipeline's `dual_form` and `simplify` of `step_vjp`) against the interpreter's
/// (the unoptimized gradient program), f64, on 12 random models: relative error ≤ 1e-9 per
/// tensor (only summation orders and the rewrites' algebra differ; a wrong index, group or
/// accumulation in the lowering is off by O(1)). 12 cases: each compiles the gradient program
/// with LLVM, which is what the CI budget allows.
#[cfg(any(feature = "llvm", feature = "cranelift"))]
mod native {
    use super::common::compare::max_rel_error;
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

        #[test]
        fn native_gradients_match_the_interpreter(m in model(), b in 1..3usize, h in 1..3usize, l in 1..11usize, k in 1..5usize, every in 1..4usize, seed in any::<u64>()) {
            let (text, states) = m.source();
            let settings: tttc::Settings = [("mini_batch_size".to_string(), (k as f64).into())].into_iter().collect();
            let lowered = tttc::ir::syntax::compile("random.ttt", &text, DType::F64, &settings)
                .map_err(|e| TestCaseError::fail(format!("{}\n{text}", e.render(false))))?;
            let program = optimize(lowered, None, false).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?.program;
            let inputs = inputs(&m, &states, (b, h, l, k), seed);
            let fwd = bind(&program, &inputs, &settings, ElemType::F64).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let outs = tttc::backends::interp::run_program(&fwd.program, &fwd.inputs)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let cts: BTreeMap<String, Tensor> = outs.iter().enumerate().map(|(i, (name, t))| {
                let v = values(seed ^ (100 + i as u64), t.len(), 1.0);
                (name.clone(), Tensor::from_f64(t.shape().to_vec(), v).expect("sizes"))
            }).collect();
            let want = finite_diff::gradients(&program, &inputs, &cts, &settings, every)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let mut backends = Vec::new();
            #[cfg(feature = "llvm")]
            backends.push(tttc::Backend::Llvm);
            #[cfg(feature = "cranelift")]
            backends.push(tttc::Backend::Cranelift);
            for backend in backends {
                let g = tttc::GradProgram::new(program.clone(), tttc::Precision::F64, &settings, backend, every)
                    .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                let got = g.vjp(&inputs, &cts).map_err(|e| TestCaseError::fail(format!("{backend:?}: {e}\n{text}")))?;
                prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
                for (name, w) in &want {
                    prop_assert_eq!(got[name].shape(), w.shape());
                    let (err, at) = max_rel_error(&got[name].to_f64_vec(), &w.to_f64_vec()).map_err(TestCaseError::fail)?;
                    prop_assert!(err <= 1e-9, "{backend:?} d{name}: relative error {err:e} at {at}, G = {every}\n{text}");
                }
            }
        }
    }
}
