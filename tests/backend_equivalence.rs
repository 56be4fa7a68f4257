//! Differential test of the backends: random inner models (`.ttt` source, see
//! common/random_model.rs) through the whole pipeline give the same outputs on the interpreter,
//! LLVM and Cranelift — f64, within 1e-10 relative to max |output|. Cranelift neither contracts
//! nor reassociates (it matches the kernel-IR executor bit for bit); LLVM contracts
//! multiply-adds into FMAs, which changes roundings at the 1e-16 level; the kernel lowering sums
//! in the interpreter's order where cheap. 1e-10 leaves room for those differences carried
//! through a few gradient steps, and for nothing else.

mod common;

use common::random_model::{inputs, model};
use proptest::prelude::*;
use tttc::ir::DType;
use tttc::{bind, optimize, prepare, Backend};

proptest! {
    // LLVM compiles each case with O3 (~0.3 s): few cases, each a different random program.
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn backends_agree(m in model(), b in 1..3usize, h in 1..3usize, l in 1..11usize, k in 1..5usize, seed in any::<u64>()) {
        let (text, states) = m.source();
        let settings: tttc::Settings = [("mini_batch_size".to_string(), (k as f64).into())].into_iter().collect();
        let lowered = tttc::ir::syntax::compile("random.ttt", &text, DType::F64, &settings)
            .map_err(|e| TestCaseError::fail(format!("{}\n{text}", e.render(false))))?;
        let program = optimize(lowered, None, false).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?.program;
        let tensors = inputs(&m, &states, (b, h, l, k), seed);
        let bound = bind(&program, &tensors, &settings, tttc::runtime::ElemType::F64)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let run = |backend: Backend| {
            prepare(backend, &bound.program)
                .and_then(|p| p.run(&bound.inputs))
                .map_err(|e| TestCaseError::fail(format!("{}: {e}\n{text}", backend.name())))
        };
        let want = run(Backend::Interp)?;
        for backend in [Backend::Llvm, Backend::Cranelift] {
            if !backend.is_built() {
                continue;
            }
            let got = run(backend)?;
            for (name, w) in &want {
                let err = common::rel_error(&got[name], w);
                prop_assert!(err <= 1e-10, "{name} on {}: {err:e}\n{text}", backend.name());
            }
        }
    }
}
