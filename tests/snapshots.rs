//! insta snapshots of the printed IR of both examples (after autodiff), so that any change to
//! lowering, the derived gradients or the printer shows up in review.

mod common;

use tttc::{compile_file, Precision};

fn printed(name: &str) -> String {
    let program = compile_file(
        &common::root().join("examples").join(name),
        Precision::F32,
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    tttc::ir::printer::print_program(&program)
}

#[test]
fn ttt_linear_ir() {
    insta::assert_snapshot!(printed("ttt_linear.ttt"));
}

#[test]
fn ttt_mlp_ir() {
    insta::assert_snapshot!(printed("ttt_mlp.ttt"));
}
