//! Every pass preserves meaning: random inner models, written as `.ttt` source, run through the
//! interpreter after every stage of the pipeline (autodiff, primal, dual_form, simplify)
//! give the same outputs — f64, within 1e-10 relative to max |output| (the stages reorder
//! sums of at most a few hundred terms; 1e-10 leaves room for that and nothing else).

mod common;

use common::random_model::{inputs, model};
use proptest::prelude::*;
use std::collections::BTreeMap;
use tttc::ir::DType;
use tttc::runtime::Tensor;
use tttc::{bind, optimize};

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn every_stage_computes_the_same(m in model(), b in 1..3usize, h in 1..3usize, l in 1..11usize, k in 1..5usize, seed in any::<u64>()) {
        let (text, states) = m.source();
        let settings: tttc::Settings = [("mini_batch_size".to_string(), (k as f64).into())].into_iter().collect();
        let lowered = tttc::ir::syntax::compile("random.ttt", &text, DType::F64, &settings)
            .map_err(|e| TestCaseError::fail(format!("{}\n{text}", e.render(false))))?;
        let compiled = optimize(lowered, None, true).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let inputs = inputs(&m, &states, (b, h, l, k), seed);
        let mut reference: Option<(&str, BTreeMap<String, Tensor>)> = None;
        for stage in &compiled.stages {
            let program = stage.snapshot.as_ref().and_then(|ir| ir.graph()).expect("snapshots");
            let bound = bind(program, &inputs, &settings, tttc::runtime::ElemType::F64)
                .map_err(|e| TestCaseError::fail(format!("{}: {e}\n{text}", stage.name)))?;
            let outputs = tttc::backends::interp::run_program(&bound.program, &bound.inputs)
                .map_err(|e| TestCaseError::fail(format!("{}: {e}\n{text}", stage.name)))?;
            match &reference {
                None => reference = Some((stage.name, outputs)),
                Some((first, want)) => {
                    for (name, w) in want {
                        let got = &outputs[name];
                        let err = common::rel_error(got, w);
                        prop_assert!(err <= 1e-10, "{name} after {} differs from after {first}: {err:e}\n{text}", stage.name);
                    }
                }
            }
        }
    }
}
