//! `rule` declarations as the language checks them: the derived recurrence `x_t = T_t x_{t−1} +
//! b_t g_t`, `read_t = u_t · x_t` (`tttc_ir::rule`), and the scan a rule's `update` builds. (Its
//! results: tests/rules.rs; its diagnostics: tests/errors.rs.)

use tttc_ir::syntax::compile;
use tttc_ir::{DType, Op, Poly, Program, TttScan, UpdateRule};

fn example(name: &str) -> String {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// examples/ttt_linear.ttt updated by `rule` (one file: no import).
fn program(rule: &str, update: &str) -> Program {
    let text = example("ttt_linear.ttt").replacen(
        "update minibatch_gd(size = mini_batch_size, token_eta = token_eta, lr = ttt_lr_eta)",
        update,
        1,
    ) + rule;
    compile("r.ttt", &text, DType::F64, &Default::default())
        .unwrap_or_else(|e| panic!("{}", e.render(false)))
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

/// `Σ c · Π coef` from (constant, coefficient indices) pairs.
fn poly(terms: &[(f64, &[usize])]) -> Poly {
    Poly(terms.iter().map(|(c, m)| (*c, m.to_vec())).collect()).normalized()
}

#[test]
fn momentum_weight_decay_derives_the_designed_recurrence() {
    let p = program(
        "rule mwd(lr, momentum, wd) {\n  carry S = 0\n  \
         S = momentum * S - lr * (grad + wd * state)\n  state = state + S\n  read state\n}\n",
        "update mwd(size = mini_batch_size, lr = ttt_lr_eta, momentum = ttt_lr_eta, \
         wd = ttt_lr_eta)",
    );
    let s = scan(&p);
    let UpdateRule::Linear(r) = &s.rule else {
        panic!("not a rule: {:?}", s.rule)
    };
    // Coefficients 0 = lr (ρ), 1 = momentum (η), 2 = wd.
    // T = [[1 − ρ wd, η], [−ρ wd, η]], b = [−ρ, −ρ], u = [1, 0].
    assert_eq!(r.coefficients, ["lr", "momentum", "wd"]);
    assert_eq!(r.carries, ["S"]);
    let eta = poly(&[(1.0, &[1])]);
    assert_eq!(
        r.transition,
        vec![
            vec![poly(&[(1.0, &[]), (-1.0, &[0, 2])]), eta.clone()],
            vec![poly(&[(-1.0, &[0, 2])]), eta],
        ]
    );
    assert_eq!(r.gradient, vec![poly(&[(-1.0, &[0])]); 2]);
    assert_eq!(r.read, vec![poly(&[(1.0, &[])]), Poly::zero()]);
    // The scan: a carry per state after the model's, three per-token coefficient operands.
    assert_eq!(s.states, ["W1", "b1", "W1_S", "b1_S"]);
    assert_eq!(s.model_states(), ["W1", "b1"]);
    assert_eq!(s.coefficient_count(), 3);
    assert!(s.header().contains("rule=mwd"));
}

#[test]
fn a_rule_with_two_coefficients_gets_a_zero_third_operand() {
    let p = program(
        "rule heavy_ball(lr, momentum) {\n  carry v = 0\n  v = momentum * v + grad\n  \
         state = state - lr * v\n  read state\n}\n",
        "update heavy_ball(size = mini_batch_size, lr = ttt_lr_eta, momentum = ttt_lr_eta)",
    );
    let s = scan(&p);
    assert_eq!(s.operand_count(), s.states.len() + 2 + 3 + 3);
    let r = s.rule.linear().expect("a rule");
    // v_t = η v + g; W_t = W − ρ (η v + g): T = [[1, −ρη], [0, η]], b = [−ρ, 1].
    assert_eq!(r.transition[0][1], poly(&[(-1.0, &[0, 1])]));
    assert_eq!(r.gradient, vec![poly(&[(-1.0, &[0])]), poly(&[(1.0, &[])])]);
}
