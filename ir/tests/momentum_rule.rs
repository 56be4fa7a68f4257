//! `update momentum_gd` as the language lowers it: one momentum buffer per state, carried as an
//! extra scan state (after the model's states) that starts at zero; the three per-token
//! coefficients are sequence operands; programs serialized before the rule existed load as
//! `minibatch_gd`. (Its results: tests/momentum.rs; its diagnostics: tests/errors.rs.)

use tttc_ir::scan::OperandKind;
use tttc_ir::syntax::compile;
use tttc_ir::{DType, Op, Program, TttScan, UpdateRule};

fn example(name: &str) -> String {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// examples/ttt_linear.ttt with its update rule made `momentum_gd` (one file: no import).
fn momentum_program() -> String {
    example("ttt_linear.ttt").replacen(
        "update minibatch_gd(size = mini_batch_size, token_eta = token_eta, lr = ttt_lr_eta)",
        "update momentum_gd(size = mini_batch_size, lr = ttt_lr_eta, momentum = ttt_lr_eta, \
         decay = ttt_lr_eta)",
        1,
    )
}

fn scan(p: &Program) -> &TttScan {
    p.graph
        .node_ids()
        .into_iter()
        .find_map(|id| match &p.graph.node(id).op {
            Op::Ttt(s) => Some(&**s),
            _ => None,
        })
        .expect("a scan")
}

#[test]
fn momentum_buffers_are_scan_states_after_the_models() {
    let p = compile(
        "m.ttt",
        &momentum_program(),
        DType::F64,
        &Default::default(),
    )
    .unwrap();
    let s = scan(&p);
    assert_eq!(s.rule, UpdateRule::MomentumGd);
    assert_eq!(s.states, ["W1", "b1", "W1_momentum", "b1_momentum"]);
    assert_eq!(s.model_states(), ["W1", "b1"]);
    assert!(s.header().contains("rule=momentum_gd"));
    // states (4), params (2), loss args (2), out args (1), momentum, lr, decay.
    assert_eq!(s.operand_count(), 12);
    assert_eq!(s.operand_kind(2), OperandKind::State(2));
    assert_eq!(s.operand_kind(11), OperandKind::Decay);
    for i in 9..12 {
        assert!(s.is_sequence_operand(i), "operand {i}");
    }
    // The initial momentum buffers are zeros of the states' bound shapes, mapped like them.
    let id = p
        .graph
        .node_ids()
        .into_iter()
        .find(|&id| matches!(p.graph.node(id).op, Op::Ttt(_)))
        .unwrap();
    let ops = p.graph.operands(id);
    assert_eq!(
        p.graph.tensor_type(ops[2]).map(|t| t.shape.to_string()),
        p.graph.tensor_type(ops[0]).map(|t| t.shape.to_string())
    );
    assert_eq!(s.axes[2], s.axes[0]);
    assert!(matches!(p.graph.node(ops[2]).op, Op::Expand { .. }));
    // The scan's result has a field per carry: `r.W1_momentum` type-checks.
    let with_field = momentum_program().replacen(
        "output b1_last = r.b1",
        "output b1_last = r.b1\n  output S = r.W1_momentum",
        1,
    );
    compile("m.ttt", &with_field, DType::F64, &Default::default()).unwrap();
}

#[test]
fn a_state_named_like_a_momentum_buffer_is_an_error() {
    let text = momentum_program()
        .replacen(
            "param ln_bias: [f]",
            "param ln_bias: [f]\n  param W1_momentum: [f]",
            1,
        )
        .replacen(
            "ln_bias = ln_bias,",
            "ln_bias = ln_bias, W1_momentum = ln_bias,",
            1,
        );
    let e = compile("m.ttt", &text, DType::F64, &Default::default()).unwrap_err();
    assert!(
        e.render(false).contains("momentum buffer `W1_momentum`"),
        "{}",
        e.render(false)
    );
}

#[test]
fn scans_serialized_without_the_rule_are_minibatch_gd() {
    let p = compile(
        "m.ttt",
        &momentum_program(),
        DType::F64,
        &Default::default(),
    )
    .unwrap();
    let mut json = serde_json::to_value(scan(&p)).unwrap();
    assert_eq!(json["rule"], "MomentumGd");
    let round = serde_json::from_value::<TttScan>(json.clone()).unwrap();
    assert_eq!(&round, scan(&p));
    json.as_object_mut().unwrap().remove("rule");
    let old: TttScan = serde_json::from_value(json).unwrap();
    assert_eq!(old.rule, UpdateRule::MinibatchGd);
}
