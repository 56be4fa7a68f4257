//! insta snapshots of the printed IR of both examples after every graph stage of the pipeline, so
//! that any change to lowering, the derived gradients, the primal and dual forms or the
//! simplifier shows up in review (the kernel IR has its own tests: tests/kernel_lowering.rs).

mod common;

use tttc::{lower_file, optimize, Precision};

fn stages(name: &str) -> Vec<(String, String)> {
    let path = common::root().join("examples").join(name);
    let lowered = lower_file(&path, Precision::F32, &Default::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let compiled = optimize(lowered, None, true).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut out = Vec::new();
    if let Some(parsed) = &compiled.parsed {
        out.push((
            "parse".to_string(),
            tttc::ir::printer::print_program(parsed),
        ));
    }
    for stage in &compiled.stages {
        let program = stage
            .snapshot
            .as_ref()
            .and_then(|ir| ir.graph())
            .expect("snapshots were requested");
        out.push((
            stage.name.to_string(),
            tttc::ir::printer::print_program(program),
        ));
    }
    out
}

fn snapshot_all(example: &str, stem: &str) {
    for (stage, text) in stages(example) {
        insta::assert_snapshot!(format!("{stem}__{stage}"), text);
    }
}

#[test]
fn ttt_linear_stages() {
    snapshot_all("ttt_linear.ttt", "ttt_linear");
}

#[test]
fn ttt_mlp_stages() {
    snapshot_all("ttt_mlp.ttt", "ttt_mlp");
}
