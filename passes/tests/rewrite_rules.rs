//! Each rule family of the egg rewriter on small hand-built graphs: the rewritten graph
//! evaluates to the same values (f64, 1e-12 relative) and has the expected structure and a
//! lower cost; equalities that must hold are proven in the e-graph, and ones that must not
//! hold (a rule without its guard would be unsound) are not.

mod common;

use common::*;
use std::collections::BTreeMap;
use tttc_ir::verify::verify_graph;
use tttc_ir::{DType, Dim, Graph, Op, Shape, TensorType, UnaryOp};
use tttc_passes::rewrite::rules::{self, Stage};
use tttc_passes::rewrite::{
    dual_form_graph, dual_form_stages, estimate_graph_cost, prove_equal, rewrite_graph,
    simplify_graph, simplify_stages, Limits, RewriteConfig,
};

const TOL: f64 = 1e-12;

fn config() -> RewriteConfig {
    RewriteConfig::default()
}

/// Runs `f` (a rewrite) on `g`, checks the result verifies, keeps inputs and outputs, evaluates
/// to the same values, and does not cost more; returns it.
fn check(g: &Graph, rewritten: Graph) -> Graph {
    verify_graph(&rewritten, "rewritten").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(input_names(g), input_names(&rewritten), "inputs changed");
    for (a, b) in g.inputs().iter().zip(rewritten.inputs()) {
        assert_eq!(
            g.tensor_type(*a),
            rewritten.tensor_type(*b),
            "input types changed"
        );
    }
    let names = |g: &Graph| {
        g.outputs()
            .iter()
            .map(|o| o.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(g), names(&rewritten), "outputs changed");
    for o in g.outputs() {
        assert_eq!(
            g.tensor_type(o.node),
            rewritten.tensor_type(rewritten.output_by_name(&o.name).unwrap()),
            "type of output `{}` changed",
            o.name
        );
    }
    for seed in 0..3 {
        assert_same_results(g, &rewritten, &random_inputs(g, 100 + seed), TOL);
    }
    let hints = config().hints;
    assert!(
        estimate_graph_cost(&rewritten, &hints).total() <= estimate_graph_cost(g, &hints).total()
    );
    rewritten
}

fn simplified(g: &Graph) -> Graph {
    let (r, _) = simplify_graph(g, &config(), "test").unwrap_or_else(|e| panic!("{e}"));
    check(g, r)
}

fn dualized(g: &Graph) -> Graph {
    let (r, report) = dual_form_graph(g, &config(), "test").unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    check(g, r)
}

fn is_op(name: &'static str) -> impl Fn(&Op) -> bool {
    move |op| op.name() == name
}

fn cost(g: &Graph) -> f64 {
    estimate_graph_cost(g, &config().hints).total()
}

fn all_stages() -> Vec<Stage> {
    dual_form_stages().expect("rule tables")
}

fn proven(g: &Graph, a: &str, b: &str) -> bool {
    prove_equal(g, a, b, &all_stages(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_rule_table_builds() {
    for table in [
        rules::simplify_rules(),
        rules::layout_rules(),
        rules::linearity_rules(),
        rules::outer_rules(),
        rules::dual_rules(),
        rules::mix_rules(),
    ] {
        let table = table.unwrap_or_else(|e| panic!("{e}"));
        assert!(!table.is_empty());
    }
    assert_eq!(simplify_stages().unwrap().len(), 1);
    let names: Vec<String> = all_stages()
        .iter()
        .flat_map(|s| s.rules.iter().map(|r| r.name.to_string()))
        .collect();
    for expected in [
        "transpose-transpose",
        "permute-permute",
        "reshape-reshape",
        "reshape-identity",
        "mul-one-right",
        "neg-neg",
        "matmul-sub-right",
        "mix-sub",
        "mix-scale-l",
        "mix-of-outer-products",
        "dual-form-query",
        "dual-form-state",
        "mix-row-blocks",
    ] {
        assert!(names.iter().any(|n| n == expected), "no rule `{expected}`");
    }
}

// ---------------------------------------------------------------------------------------------
// Simplification.

#[test]
fn simplification_removes_identities_and_folds_constants() {
    let mut b = B::new();
    let x = b.input("x", &[2, 3]);
    let y = b.input("y", &[3, 3]);
    let t = b.transpose(x);
    let tt = b.transpose(t); // x
    let r1 = b.reshape(tt, &[3, 2]);
    let r2 = b.reshape(r1, &[6]);
    let r3 = b.reshape(r2, &[2, 3]); // x
    let one = b.c(1.0);
    let m1 = b.mul(r3, one); // x
    let zero = b.c(0.0);
    let a0 = b.add(zero, m1); // x
    let s0 = b.sub(a0, zero); // x
    let n1 = b.neg(s0);
    let n2 = b.neg(n1); // x
    let d1 = b.div(n2, one); // x
    let e = b.expand(d1, &[2, 3]); // x
    let st = b.sum_to(e, &[2, 3]); // x
    let two = b.c(2.0);
    let three = b.c(3.0);
    let five = b.add(two, three); // folds to 5
    let scaled = b.mul(st, five);
    // permute [1, 2, 0] then [2, 0, 1] is the identity.
    let y3 = b.reshape(y, &[3, 3, 1]);
    let p1 = b.permute(y3, &[1, 2, 0]);
    let p2 = b.permute(p1, &[2, 0, 1]);
    let back = b.reshape(p2, &[3, 3]);
    let out = b.matmul(scaled, back);
    let g = b.finish("out", out);

    let r = simplified(&g);
    for op in [
        "transpose",
        "permute",
        "neg",
        "expand",
        "sum_to",
        "div",
        "sub",
    ] {
        assert_eq!(
            count_where(&r, is_op(op)),
            0,
            "a `{op}` is left:\n{}",
            print(&r)
        );
    }
    // x * 5 @ y: one mul by the folded constant, one matmul, at most the reshape pair of y.
    let consts: Vec<f64> = r
        .node_ids()
        .into_iter()
        .filter_map(|id| match r.node(id).op {
            Op::Const { value } => Some(value),
            _ => None,
        })
        .collect();
    assert_eq!(consts, vec![5.0], "{}", print(&r));
    assert_eq!(count_where(&r, is_op("mul")), 1);
    assert_eq!(count_where(&r, is_op("matmul")), 1);
    assert!(count_where(&r, is_op("reshape")) <= 1, "{}", print(&r));
    assert!(cost(&r) < cost(&g));
}

fn print(g: &Graph) -> String {
    tttc_ir::printer::print_graph(g)
}

#[test]
fn identities_that_change_the_shape_are_not_applied() {
    let mut b = B::new();
    let x = b.input("x", &[3]);
    let sq = b.input("sq", &[3, 3]);
    let one = b.c(1.0);
    let ones = b.expand(one, &[2, 3]);
    // x * ones broadcasts x to [2, 3]: not x.
    let bx = b.mul(x, ones);
    // A permutation of a square matrix that is not the identity keeps the shape.
    let p = b.permute(sq, &[1, 0]);
    // A reshape to another shape of the same size is not the identity.
    let r = b.reshape(bx, &[3, 2]);
    b.g.add_output("bx", bx);
    b.g.add_output("p", p);
    let g = b.finish("r", r);
    let s = simplified(&g);
    assert_eq!(
        s.tensor_type(s.output_by_name("bx").unwrap())
            .unwrap()
            .shape,
        Shape::known(&[2, 3])
    );
    let d = dualized(&g);
    // The permutation may become a transpose (layout rule), not nothing.
    let swaps = count_where(&d, is_op("transpose")) + count_where(&d, is_op("permute"));
    assert_eq!(swaps, 1, "{}", print(&d));
}

#[test]
fn simplify_keeps_unused_inputs_and_shares_equal_nodes() {
    let mut b = B::new();
    let x = b.input("x", &[2, 2]);
    let _unused = b.input("unused", &[5]);
    let e1 = b.un(UnaryOp::Exp, x);
    let e2 = b.un(UnaryOp::Exp, x);
    let s = b.add(e1, e2);
    let dead = b.un(UnaryOp::Tanh, x);
    let _ = dead;
    let g = b.finish("s", s);
    let r = simplified(&g);
    assert_eq!(input_names(&r), vec!["x", "unused"]);
    assert_eq!(count_where(&r, is_op("exp")), 1, "CSE");
    assert_eq!(count_where(&r, is_op("tanh")), 0, "DCE");
}

// ---------------------------------------------------------------------------------------------
// Linearity.

#[test]
fn matmul_distributes_over_broadcasting_sub_and_add() {
    let (k, m, n) = (4, 3, 5);
    let mut b = B::new();
    let q3 = b.input("q3", &[k, 1, m]);
    let theta = b.input("theta", &[m, n]);
    let big = b.input("big", &[k, m, n]);
    let a = b.input("a", &[2, k]);
    let x = b.input("x", &[k, n]);
    let y = b.input("y", &[1, n]);
    // matmul(Q3, θ − M) with θ unbatched.
    let diff = b.sub(theta, big);
    let lhs = b.matmul(q3, diff);
    let qt = b.matmul(q3, theta);
    let qm = b.matmul(q3, big);
    let rhs = b.sub(qt, qm);
    // matmul(a, x + y) with y broadcast along rows? No: y [1, n] broadcasts along the
    // contracted axis, which must NOT distribute: a @ (x + y) != a @ x + a @ y.
    let xy = b.add(x, y);
    let bad_lhs = b.matmul(a, xy);
    let ax = b.matmul(a, x);
    // (the wrong right-hand side: a @ x + y)
    let bad_rhs = b.add(ax, y);
    // A scalar factor moves out of a matmul.
    let c = b.c(0.25);
    let cx = b.mul(c, x);
    let xt = b.transpose(x);
    let scaled = b.matmul(xt, cx);
    let plain = b.matmul(xt, x);
    // (no commutativity: the rule puts the factor first)
    let scaled_rhs = b.mul(c, plain);
    b.g.add_output("lhs", lhs);
    b.g.add_output("rhs", rhs);
    b.g.add_output("bad_lhs", bad_lhs);
    b.g.add_output("bad_rhs", bad_rhs);
    b.g.add_output("scaled", scaled);
    let g = b.finish("scaled_rhs", scaled_rhs);
    let ins = random_inputs(&g, 7);
    let outs = all_outputs(&g, &ins);
    assert!(rel_err(&outs["lhs"], &outs["rhs"]) < TOL);
    assert!(rel_err(&outs["scaled"], &outs["scaled_rhs"]) < TOL);
    assert!(rel_err(&outs["bad_lhs"], &outs["bad_rhs"]) > 1e-3);
    assert!(proven(&g, "lhs", "rhs"));
    assert!(proven(&g, "scaled", "scaled_rhs"));
    assert!(!proven(&g, "bad_lhs", "bad_rhs"));
    dualized(&g);
}

#[test]
fn mix_distributes_only_when_rows_line_up() {
    let (p, k, n) = (2, 3, 4);
    let mut b = B::new();
    let w = b.input("w", &[p, k]);
    let x = b.input("x", &[k, 1, n]);
    let y = b.input("y", &[k, 2, n]);
    let x2 = b.input("x2", &[k, n]);
    let y3 = b.input("y3", &[k, k, n]);
    let s = b.input("s", &[]);
    let rows = b.input("rows", &[k, 1, 1]);
    // Rows line up: mix(w, x - y) = mix(w, x) - mix(w, y).
    let d = b.sub(x, y);
    let lhs = b.mix(w, d);
    let mx = b.mix(w, x);
    let my = b.mix(w, y);
    let rhs = b.sub(mx, my);
    // x2 [k, n] broadcast against y3 [k, k, n] aligns x2's rows with y3's SECOND axis:
    // mix(w, x2 - y3) != mix(w, x2) - mix(w, y3).
    let wk = b.input("wk", &[k, k]);
    let d2 = b.sub(x2, y3);
    let bad_lhs = b.mix(wk, d2);
    let mx2 = b.mix(wk, x2);
    let my3 = b.mix(wk, y3);
    let bad_rhs = b.sub(mx2, my3);
    // Scalar and per-row scales.
    let sx = b.mul(s, y);
    let scaled = b.mix(w, sx);
    let scaled_rhs = b.mul(s, my);
    let ry = b.mul(y, rows);
    let row_scaled = b.mix(w, ry);
    let r2 = b.reshape(rows, &[1, k]);
    let w2 = b.mul(w, r2);
    let row_scaled_rhs = b.mix(w2, y);
    for (name, node) in [
        ("lhs", lhs),
        ("rhs", rhs),
        ("bad_lhs", bad_lhs),
        ("bad_rhs", bad_rhs),
        ("scaled", scaled),
        ("scaled_rhs", scaled_rhs),
        ("row_scaled", row_scaled),
    ] {
        b.g.add_output(name, node);
    }
    let g = b.finish("row_scaled_rhs", row_scaled_rhs);
    let outs = all_outputs(&g, &random_inputs(&g, 3));
    assert!(rel_err(&outs["lhs"], &outs["rhs"]) < TOL);
    assert!(rel_err(&outs["bad_lhs"], &outs["bad_rhs"]) > 1e-3);
    assert!(proven(&g, "lhs", "rhs"));
    assert!(proven(&g, "scaled", "scaled_rhs"));
    assert!(proven(&g, "row_scaled", "row_scaled_rhs"));
    assert!(!proven(&g, "bad_lhs", "bad_rhs"));
    dualized(&g);
}

// ---------------------------------------------------------------------------------------------
// Outer products and the dual form.

/// Inputs of a mini-batch: k tokens, X3 [k,1,m], D3 [k,1,n], Q3 [k,1,m], eta [k,k].
struct Block {
    b: B,
    x3: tttc_ir::NodeId,
    d3: tttc_ir::NodeId,
    q3: tttc_ir::NodeId,
    eta: tttc_ir::NodeId,
}

fn block(k: usize, m: usize, n: usize) -> Block {
    let mut b = B::new();
    let x3 = b.input("x3", &[k, 1, m]);
    let d3 = b.input("d3", &[k, 1, n]);
    let q3 = b.input("q3", &[k, 1, m]);
    let eta = b.input("eta", &[k, k]);
    Block { b, x3, d3, q3, eta }
}

#[test]
fn a_mix_of_outer_products_is_a_mix_outer() {
    let (k, m, n) = (4, 3, 5);
    let Block {
        mut b, x3, d3, eta, ..
    } = block(k, m, n);
    let xt = b.transpose(x3);
    let grads = b.matmul(xt, d3); // [k, m, n], one outer product per token
    let mixed = b.mix(eta, grads);
    let u = b.reshape(x3, &[k, m]);
    let d = b.reshape(d3, &[k, n]);
    let outer = b.mix_outer(eta, u, d);
    // The same outer products written as a broadcasting mul.
    let prod = b.mul(xt, d3);
    let mixed_mul = b.mix(eta, prod);
    b.g.add_output("mixed", mixed);
    b.g.add_output("mixed_mul", mixed_mul);
    let g = b.finish("outer", outer);
    assert!(proven(&g, "mixed", "outer"));
    assert!(proven(&g, "mixed_mul", "outer"));
    let r = dualized(&g);
    // Only the mix_outer is left: no [k, m, n] gradient block, no mix.
    assert_eq!(count_where(&r, is_op("mix_outer")), 1, "{}", print(&r));
    assert_eq!(count_where(&r, is_op("mix")), 0, "{}", print(&r));
    assert_eq!(count_where(&r, is_op("matmul")), 0, "{}", print(&r));
    assert!(cost(&r) < cost(&g));
}

#[test]
fn a_sum_of_outer_products_is_one_matmul() {
    // What reverse mode gives for a weight's cotangent over a mini-batch: per-token outer
    // products `[k, m, 1] @ [k, 1, n]` summed over the tokens. One `[m, k] @ [k, n]` product.
    let (k, m, n) = (4, 3, 5);
    let Block { mut b, x3, d3, .. } = block(k, m, n);
    let xt = b.transpose(x3); // [k, m, 1]
    let outer = b.matmul(xt, d3); // [k, m, n]
    let summed = b.sum_to(outer, &[m, n]);
    let g = b.finish("summed", summed);
    let r = dualized(&g);
    let summed_r = r.output_by_name("summed").unwrap();
    assert_eq!(r.node(summed_r).op, Op::MatMul, "{}", print(&r));
    assert!(cost(&r) < cost(&g));
    // The guard: a sum over the tokens of something that is not an outer product of a
    // column and a row is not a matmul.
    let mut b = B::new();
    let a = b.input("a", &[k, m, 2]);
    let d = b.input("d", &[k, 2, n]);
    let prod = b.matmul(a, d);
    let s = b.sum_to(prod, &[m, n]);
    let g = b.finish("s", s);
    let r = dualized(&g);
    let s_r = r.output_by_name("s").unwrap();
    assert_ne!(r.node(s_r).op, Op::MatMul, "{}", print(&r));
}

#[test]
fn a_query_times_a_mix_outer_becomes_the_dual_form() {
    let (k, m, n) = (4, 3, 5);
    let Block {
        mut b,
        x3,
        d3,
        q3,
        eta,
    } = block(k, m, n);
    let u = b.reshape(x3, &[k, m]);
    let d = b.reshape(d3, &[k, n]);
    let outer = b.mix_outer(eta, u, d);
    let z = b.matmul(q3, outer); // [k, 1, n]
                                 // One shared query row for every token too.
    let q1 = b.input("q1", &[1, 1, m]);
    let z1 = b.matmul(q1, outer);
    b.g.add_output("z1", z1);
    let g = b.finish("z", z);
    let r = dualized(&g);
    assert_eq!(count_where(&r, is_op("mix_outer")), 0, "{}", print(&r));
    assert!(!has_shape(&r, &Shape::known(&[k, m, n]).0), "{}", print(&r));
    assert!(cost(&r) < cost(&g));
    assert!(
        estimate_graph_cost(&r, &config().hints).flops
            < estimate_graph_cost(&g, &config().hints).flops
    );
}

#[test]
fn a_queries_with_several_rows_per_token_keep_their_meaning() {
    // matmul(Q [k, 2, m], mix_outer) is not the rank-one case of the dual rule; whatever the
    // rewriter does, the values must not change.
    let (k, m, n) = (3, 2, 4);
    let Block {
        mut b, x3, d3, eta, ..
    } = block(k, m, n);
    let q = b.input("q", &[k, 2, m]);
    let u = b.reshape(x3, &[k, m]);
    let d = b.reshape(d3, &[k, n]);
    let outer = b.mix_outer(eta, u, d);
    let z = b.matmul(q, outer);
    let g = b.finish("z", z);
    dualized(&g);
}

#[test]
fn the_final_state_mix_outer_becomes_a_matmul() {
    let (k, m, n) = (4, 3, 5);
    let Block { mut b, x3, d3, .. } = block(k, m, n);
    let w_last = b.input("w_last", &[1, k]);
    let theta = b.input("theta", &[m, n]);
    let u = b.reshape(x3, &[k, m]);
    let d = b.reshape(d3, &[k, n]);
    let outer = b.mix_outer(w_last, u, d); // [1, m, n]
    let flat = b.reshape(outer, &[m, n]);
    let next = b.sub(theta, flat);
    let g = b.finish("next", next);
    let r = dualized(&g);
    assert_eq!(count_where(&r, is_op("mix_outer")), 0, "{}", print(&r));
    assert_eq!(count_where(&r, is_op("matmul")), 1, "{}", print(&r));
    // The matmul produces [m, n] directly; the reshapes around it are gone.
    assert!(r
        .node_ids()
        .into_iter()
        .any(|id| r.node(id).op == Op::MatMul
            && r.tensor_type(id).unwrap().shape == Shape::known(&[m, n])));
    assert!(cost(&r) < cost(&g));
}

#[test]
fn a_mix_of_row_blocks_is_a_matmul() {
    let (k, n) = (4, 5);
    let mut b = B::new();
    let eta = b.input("eta", &[k, k]);
    let bias = b.input("bias", &[1, n]);
    let d3 = b.input("d3", &[k, 1, n]);
    let d2 = b.input("d2", &[k, n]);
    let mixed = b.mix(eta, d3);
    let b_all = b.sub(bias, mixed); // [k, 1, n]
    let mixed2 = b.mix(eta, d2);
    b.g.add_output("b_all", b_all);
    let g = b.finish("mixed2", mixed2);
    let r = dualized(&g);
    assert_eq!(count_where(&r, is_op("mix")), 0, "{}", print(&r));
    assert_eq!(count_where(&r, is_op("matmul")), 2, "{}", print(&r));
    assert!(cost(&r) < cost(&g));
}

// ---------------------------------------------------------------------------------------------
// The shape-checked applier.

#[test]
fn an_ill_shaped_rule_is_never_applied() {
    // An unsound rule, `transpose(x) → x`, on a non-square matrix: the right-hand side has
    // another shape, so the applier refuses it and the graph keeps its meaning.
    let bad = rules::rule("bad-transpose", "(transpose ?x)", "?x", None).unwrap();
    // And one whose right-hand side does not type-check at all (`x @ x` for [2, 3]).
    let worse = rules::rule("bad-matmul", "(neg ?x)", "(matmul ?x ?x)", None).unwrap();
    let stages = [Stage {
        name: "bad",
        rules: vec![bad, worse],
    }];
    let mut b = B::new();
    let x = b.input("x", &[2, 3]);
    let t = b.transpose(x);
    let nx = b.neg(x);
    b.g.add_output("t", t);
    let g = b.finish("nx", nx);
    let (r, report) =
        rewrite_graph(&g, &stages, &config(), "bad").unwrap_or_else(|e| panic!("{e}"));
    assert!(report.stages[0].applied.is_empty(), "{report}");
    check(&g, r);
}

#[test]
fn symbolic_shapes_are_rewritten_too() {
    // The step graph's mini-batch length is the symbol `$k`.
    let k = Dim::sym(tttc_ir::MINI_BATCH_DIM);
    let (m, n) = (Dim::sym("f"), Dim::Known(5));
    let ty = |dims: Vec<Dim>| TensorType::new(DType::F64, Shape(dims));
    let mut b = B::new();
    let x3 =
        b.g.add_input("x3", ty(vec![k.clone(), Dim::Known(1), m.clone()]))
            .unwrap();
    let d3 =
        b.g.add_input("d3", ty(vec![k.clone(), Dim::Known(1), n.clone()]))
            .unwrap();
    let q3 =
        b.g.add_input("q3", ty(vec![k.clone(), Dim::Known(1), m.clone()]))
            .unwrap();
    let eta =
        b.g.add_input("eta", ty(vec![k.clone(), k.clone()]))
            .unwrap();
    let xt = b.transpose(x3);
    let grads = b.matmul(xt, d3);
    let mixed = b.mix(eta, grads);
    let z = b.matmul(q3, mixed);
    let g = b.finish("z", z);
    let (r, _) = dual_form_graph(&g, &config(), "sym").unwrap_or_else(|e| panic!("{e}"));
    verify_graph(&r, "sym").unwrap();
    assert!(
        !has_shape(&r, &[k.clone(), m.clone(), n.clone()]),
        "{}",
        print(&r)
    );
    assert_eq!(count_where(&r, is_op("mix_outer")), 0);
    // Bound, the two agree.
    let bind: BTreeMap<String, usize> = [
        (tttc_ir::MINI_BATCH_DIM.to_string(), 4),
        ("f".to_string(), 3),
    ]
    .into();
    let (g4, r4) = (
        tttc_ir::program::specialize_graph(&g, &bind),
        tttc_ir::program::specialize_graph(&r, &bind),
    );
    verify_graph(&r4, "bound").unwrap();
    assert_same_results(&g4, &r4, &random_inputs(&g4, 5), TOL);
}

/// A graph past `DAG_EXTRACTION_MAX_NODES` (a chain of 1500 `(x + 1).T`, two nodes each) goes
/// through the worklist tree extractor: the result verifies, keeps the inputs and outputs,
/// evaluates the same (1e-12) and costs no more (all checked by `simplified`).
#[test]
fn long_chains_use_the_linear_extractor() {
    use tttc_passes::rewrite::DAG_EXTRACTION_MAX_NODES;
    let mut g = Graph::new();
    let x = g
        .add_input("x", TensorType::new(DType::F64, Shape::known(&[3, 3])))
        .unwrap();
    let one = g.add_const(1.0, DType::F64);
    let mut v = x;
    for _ in 0..1500 {
        let s = g
            .add(
                Op::Binary {
                    fun: tttc_ir::BinaryOp::Add,
                },
                &[v, one],
            )
            .unwrap();
        v = g.add(Op::Transpose, &[s]).unwrap();
    }
    g.add_output("y", v);
    assert!(g.node_count() > DAG_EXTRACTION_MAX_NODES);
    simplified(&g);
}
