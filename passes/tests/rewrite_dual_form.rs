//! The dual form found by equality saturation on a hand-built primal-form TTT-Linear step graph
//! (the form the scan-lowering pass produces), on the example programs lowered by that pass,
//! determinism, runner limits, and the two passes on whole programs.
//!
//! Tolerance: 1e-10 relative to each output's largest magnitude (f64). The dual form sums the
//! same products in another order (`Σ_j eta[i,j] (q_i·u_j) d_j` instead of
//! `q_i (Σ_j eta[i,j] u_jᵀ d_j)`), so the two differ by a few ulps.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;
use tttc_ir::program::specialize_graph;
use tttc_ir::verify::{verify_graph, verify_program};
use tttc_ir::{
    BinaryOp, DType, Dim, Graph, NodeId, Op, Program, Shape, TensorType, UnaryOp, MINI_BATCH_DIM,
};
use tttc_passes::pipeline::Pipeline;
use tttc_passes::rewrite::{
    dual_form_graph, estimate_graph_cost, simplify_graph, DualForm, Limits, RewriteConfig, Simplify,
};
use tttc_passes::Pass;

const TOL: f64 = 1e-10;

/// How the primal step writes the per-token states of the weight.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `mix(eta, matmul(transpose(K3), D3))`, as the scan-lowering pass writes it.
    Mix,
    /// `mix_outer(eta, K, D)` directly.
    MixOuter,
    /// Outer products as a broadcasting `mul`, with the gradient scaled by a constant and the
    /// learning rates applied as per-row scales of the gradient.
    ScaledMul,
}

/// A primal-form mini-batch step of TTT-Linear without LayerNorm: `z = x W + b`,
/// `loss = ½ ‖z − v‖²`, `out(q) = tanh(q W_i + b_i)`, with `k` tokens (`None`: the symbol
/// `$k`), `W [m, n]`, `b [1, n]`. Inputs and outputs follow the step-graph contract.
fn primal_step(k: Option<usize>, m: usize, n: usize, form: Form) -> Graph {
    let kd = k.map_or_else(|| Dim::sym(MINI_BATCH_DIM), Dim::Known);
    let one = Dim::Known(1);
    let (md, nd) = (Dim::Known(m), Dim::Known(n));
    let ty = |dims: &[&Dim]| {
        TensorType::new(
            DType::F64,
            Shape(dims.iter().map(|d| (*d).clone()).collect()),
        )
    };
    let mut b = B::new();
    let w = b.g.add_input("W", ty(&[&md, &nd])).unwrap();
    let bias = b.g.add_input("b", ty(&[&one, &nd])).unwrap();
    let keys = b.g.add_input("k", ty(&[&kd, &md])).unwrap();
    let vals = b.g.add_input("v", ty(&[&kd, &nd])).unwrap();
    let queries = b.g.add_input("q", ty(&[&kd, &md])).unwrap();
    let token_eta = b.g.add_input("token_eta", ty(&[&kd])).unwrap();
    let lr = b.g.add_input("lr", ty(&[&kd])).unwrap();
    let shape = |dims: &[&Dim]| Shape(dims.iter().map(|d| (*d).clone()).collect());
    let k3 = b.reshape_to(keys, shape(&[&kd, &one, &md]));
    let v3 = b.reshape_to(vals, shape(&[&kd, &one, &nd]));
    let q3 = b.reshape_to(queries, shape(&[&kd, &one, &md]));

    // Gradients at the same θ for every token.
    let z = b.matmul(k3, w);
    let z = b.add(z, bias);
    let d3 = b.sub(z, v3); // [k, 1, n]
    let kt = b.transpose(k3); // [k, m, 1]

    // eta[i, j] = token_eta[i] lr[j] for j <= i.
    let col = b.reshape_to(token_eta, shape(&[&kd, &one]));
    let iota =
        b.g.add_leaf(Op::Iota { len: kd.clone() }, DType::F64)
            .unwrap();
    let i_col = b.reshape_to(iota, shape(&[&kd, &one]));
    let j_row = b.reshape_to(iota, shape(&[&one, &kd]));
    let diff = b.sub(i_col, j_row);
    let diff = b.add_c(diff, 0.5);
    let mask = b.un(UnaryOp::Step, diff);
    let lr_row = b.reshape_to(lr, shape(&[&one, &kd]));
    let eta = match form {
        // The learning rates scale the gradient rows instead.
        Form::ScaledMul => b.mul(col, mask),
        _ => {
            let rates = b.mul(col, lr_row);
            b.mul(rates, mask)
        }
    };
    // The last row of eta: onehot(k - 1) @ eta.
    let extent =
        b.g.add_leaf(Op::Extent { dim: kd.clone() }, DType::F64)
            .unwrap();
    let from_last = b.bin(BinaryOp::Sub, iota, extent);
    let from_last = b.add_c(from_last, 1.5);
    let onehot = b.un(UnaryOp::Step, from_last);
    let onehot = b.reshape_to(onehot, shape(&[&one, &kd]));
    let w_last = b.matmul(onehot, eta); // [1, k]

    let u = b.reshape_to(k3, shape(&[&kd, &md]));
    let dflat = b.reshape_to(d3, shape(&[&kd, &nd]));
    let (mixed, mixed_last) = match form {
        Form::Mix => {
            let grads = b.matmul(kt, d3); // [k, m, n]
            (b.mix(eta, grads), b.mix(w_last, grads))
        }
        Form::MixOuter => (b.mix_outer(eta, u, dflat), b.mix_outer(w_last, u, dflat)),
        Form::ScaledMul => {
            let two = b.c(2.0);
            let half = b.c(0.5);
            let d_scaled = b.mul(d3, half);
            let d_scaled = b.mul(two, d_scaled); // = d3
            let outer = b.mul(kt, d_scaled); // [k, m, n], broadcasting
            let lr3 = b.reshape_to(lr, shape(&[&kd, &one, &one]));
            let grads = b.mul(lr3, outer);
            (b.mix(eta, grads), b.mix(w_last, grads))
        }
    };
    let w_all = b.sub(w, mixed); // [k, m, n]
    let (b_mixed, b_last) = match form {
        Form::ScaledMul => {
            let lr3 = b.reshape_to(lr, shape(&[&kd, &one, &one]));
            let g = b.mul(d3, lr3);
            (b.mix(eta, g), b.mix(w_last, g))
        }
        _ => (b.mix(eta, d3), b.mix(w_last, d3)),
    };
    let b_all = b.sub(bias, b_mixed); // [k, 1, n]
    let zq = b.matmul(q3, w_all);
    let zq = b.add(zq, b_all);
    let out = b.un(UnaryOp::Tanh, zq);
    let out = b.reshape_to(out, shape(&[&kd, &nd]));
    b.g.add_output("out", out);
    let last = b.reshape_to(mixed_last, shape(&[&md, &nd]));
    let next_w = b.sub(w, last);
    b.g.add_output("next_W", next_w);
    let b_last = b.reshape_to(b_last, shape(&[&one, &nd]));
    let next_b = b.sub(bias, b_last);
    b.finish("next_b", next_b)
}

const K: usize = 4;
const M: usize = 3;
const N: usize = 5;

/// Whether a node of `g` has shape `[k, m, n]` or its symbolic form.
fn has_block_of_states(g: &Graph, k: &Dim) -> bool {
    has_shape(g, &[k.clone(), Dim::Known(M), Dim::Known(N)])
}

fn count(g: &Graph, name: &str) -> usize {
    count_where(g, |op| op.name() == name)
}

fn dual(g: &Graph) -> Graph {
    let (r, report) =
        dual_form_graph(g, &RewriteConfig::default(), "step").unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    verify_graph(&r, "dual").unwrap_or_else(|e| panic!("{e}"));
    assert!(report.kept_original.is_none(), "{report}");
    r
}

#[test]
fn ttt_linear_primal_step_becomes_the_dual_form() {
    for form in [Form::Mix, Form::MixOuter, Form::ScaledMul] {
        let g = primal_step(Some(K), M, N, form);
        verify_graph(&g, "primal").unwrap();
        assert!(has_block_of_states(&g, &Dim::Known(K)));
        let r = dual(&g);
        let p = tttc_ir::printer::print_graph(&r);
        assert!(!has_block_of_states(&r, &Dim::Known(K)), "{form:?}:\n{p}");
        assert_eq!(count(&r, "mix_outer"), 0, "{form:?}:\n{p}");
        assert_eq!(count(&r, "mix"), 0, "{form:?}:\n{p}");
        // Q Kᵀ is the only [k, k] matmul of queries and keys; there is no [k, m, n] matmul.
        let hints = RewriteConfig::default().hints;
        let (before, after) = (
            estimate_graph_cost(&g, &hints),
            estimate_graph_cost(&r, &hints),
        );
        assert!(after.flops < before.flops, "{form:?}: {after} vs {before}");
        assert!(after.total() < before.total());
        for seed in 0..4 {
            assert_same_results(&g, &r, &random_inputs(&g, 10 * seed + 1), TOL);
        }
    }
}

#[test]
fn the_symbolic_step_is_rewritten_and_agrees_for_every_block_length() {
    let g = primal_step(None, M, N, Form::Mix);
    let k = Dim::sym(MINI_BATCH_DIM);
    assert!(has_block_of_states(&g, &k));
    let r = dual(&g);
    assert!(
        !has_block_of_states(&r, &k),
        "{}",
        tttc_ir::printer::print_graph(&r)
    );
    assert_eq!(count(&r, "mix_outer") + count(&r, "mix"), 0);
    // Full mini-batches, a remainder, a single token.
    for len in [K, 3, 1] {
        let bind: BTreeMap<String, usize> = [(MINI_BATCH_DIM.to_string(), len)].into();
        let (gb, rb) = (specialize_graph(&g, &bind), specialize_graph(&r, &bind));
        verify_graph(&rb, "bound").unwrap();
        assert_same_results(&gb, &rb, &random_inputs(&gb, len as u64), TOL);
    }
}

#[test]
fn rewriting_is_deterministic() {
    for form in [Form::Mix, Form::ScaledMul] {
        let g = primal_step(None, M, N, form);
        let first = tttc_ir::printer::print_graph(&dual(&g));
        for _ in 0..3 {
            let again = tttc_ir::printer::print_graph(&dual(&g.clone()));
            assert_eq!(first, again);
        }
        let (s1, _) = simplify_graph(&g, &RewriteConfig::default(), "s").unwrap();
        let (s2, _) = simplify_graph(&g, &RewriteConfig::default(), "s").unwrap();
        assert_eq!(
            tttc_ir::printer::print_graph(&s1),
            tttc_ir::printer::print_graph(&s2)
        );
    }
}

fn with_limits(limits: Limits) -> RewriteConfig {
    RewriteConfig {
        limits,
        ..RewriteConfig::default()
    }
}

#[test]
fn limits_stop_the_runner_and_the_result_is_still_valid() {
    let g = primal_step(Some(K), M, N, Form::Mix);
    let ins = random_inputs(&g, 99);
    let cases = [
        (
            Limits {
                node_limit: 10,
                ..Limits::default()
            },
            "NodeLimit",
        ),
        (
            Limits {
                iter_limit: 1,
                ..Limits::default()
            },
            "IterationLimit",
        ),
        (
            Limits {
                time_limit: Duration::ZERO,
                ..Limits::default()
            },
            "TimeLimit",
        ),
    ];
    for (limits, reason) in cases {
        let (r, report) = dual_form_graph(&g, &with_limits(limits), "limited").unwrap();
        println!("{report}");
        assert!(
            report
                .stages
                .iter()
                .any(|s| s.stop_reason.starts_with(reason)),
            "{reason}: {report}"
        );
        verify_graph(&r, "limited").unwrap();
        assert_same_results(&g, &r, &ins, TOL);
        let hints = RewriteConfig::default().hints;
        assert!(estimate_graph_cost(&r, &hints).total() <= estimate_graph_cost(&g, &hints).total());
    }
    // The tiny node limit stops the first stage after its first iteration.
    let (_, report) = dual_form_graph(
        &g,
        &with_limits(Limits {
            node_limit: 10,
            ..Limits::default()
        }),
        "tiny",
    )
    .unwrap();
    assert!(report.stages.iter().all(|s| s.iterations <= 1), "{report}");
    // Unlimited enough, both stages saturate.
    let (_, report) = dual_form_graph(&g, &RewriteConfig::default(), "free").unwrap();
    assert!(
        report.stages.iter().all(|s| s.stop_reason == "Saturated"),
        "{report}"
    );
}

// ---------------------------------------------------------------------------------------------
// Whole programs.

fn compile_example(file: &str, settings: &[(&str, f64)]) -> Program {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let settings: tttc_ir::Settings = settings
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    let mut p = tttc_ir::syntax::compile(file, &text, DType::F64, &settings)
        .unwrap_or_else(|e| panic!("{file}: {e:?}"));
    Pipeline::of_passes(vec![Box::new(tttc_passes::Autodiff)])
        .run_graph(&mut p)
        .unwrap_or_else(|e| panic!("{e}"));
    p
}

fn scans(p: &Program) -> Vec<NodeId> {
    p.graph
        .node_ids()
        .into_iter()
        .filter(|&id| matches!(p.graph.node(id).op, Op::Ttt(_)))
        .collect()
}

fn step(p: &Program, id: NodeId) -> &Graph {
    match &p.graph.node(id).op {
        Op::Ttt(scan) => scan.step.as_ref().expect("a step graph"),
        _ => panic!("not a scan"),
    }
}

#[test]
fn the_example_models_get_their_dual_form() {
    // f = 3, h = 5 (TTT-MLP's hidden width), mini-batches of 4; the other models' widths.
    let dims: BTreeMap<String, usize> = [
        ("f".to_string(), 3),
        ("h".to_string(), 5),
        ("d".to_string(), 3),
        ("dk".to_string(), 3),
        ("dv".to_string(), 2),
        (MINI_BATCH_DIM.to_string(), 4),
    ]
    .into();
    // The paper's two models and two written the same way (generality).
    for file in [
        "ttt_linear.ttt",
        "ttt_mlp.ttt",
        "mlp3_silu.ttt",
        "delta_rule.ttt",
    ] {
        let mut p = compile_example(file, &[]);
        Pipeline::of_passes(vec![Box::new(tttc_passes::lower_scan::LowerScan)])
            .run_graph(&mut p)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let primal = p.clone();
        let pass = DualForm::default();
        let handle = pass.report_handle();
        let boxed: Box<dyn Pass> = Box::new(pass);
        Pipeline::of_passes(vec![boxed])
            .run_graph(&mut p)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let reports = handle.reports();
        assert_eq!(reports.len(), scans(&p).len());
        for r in &reports {
            println!("{file}: {r}");
        }
        for id in scans(&p) {
            let (before, after) = (step(&primal, id), step(&p, id));
            let k = Dim::sym(MINI_BATCH_DIM);
            // No per-token weight copies [k, a, b] with a, b > 1 remain.
            let blocks = |g: &Graph| {
                g.node_ids().into_iter().any(|n| {
                    g.tensor_type(n).is_some_and(|t| {
                        t.shape.rank() == 3
                            && t.shape.0[0] == k
                            && t.shape.0[1] != Dim::Known(1)
                            && t.shape.0[2] != Dim::Known(1)
                    })
                })
            };
            assert!(
                blocks(before),
                "{file}: the primal step has no weight copies"
            );
            assert!(
                !blocks(after),
                "{file}:\n{}",
                tttc_ir::printer::print_graph(after)
            );
            assert_eq!(count(after, "mix_outer"), 0, "{file}");
            let hints = RewriteConfig::default().hints;
            assert!(
                estimate_graph_cost(after, &hints).flops
                    < estimate_graph_cost(before, &hints).flops
            );
            let (gb, rb) = (
                specialize_graph(before, &dims),
                specialize_graph(after, &dims),
            );
            verify_graph(&rb, "bound").unwrap();
            let mut ins = random_inputs(&gb, 5);
            // Keep LayerNorm's variance away from zero: keys and values of order 1 suffice.
            for v in ins.values_mut() {
                let data: Vec<f64> = v.as_f64().unwrap().iter().map(|x| x * 0.5).collect();
                *v = t(v.shape(), &data);
            }
            assert_same_results(&gb, &rb, &ins, TOL);
        }
    }
}

#[test]
fn programs_without_step_graphs_are_left_valid() {
    let p = compile_example("ttt_linear.ttt", &[("mini_batch_size", 2.0)]);
    // DualForm: nothing to do.
    let mut q = p.clone();
    let dual_form = DualForm::default();
    let dual_form_reports = dual_form.report_handle();
    Pipeline::of_passes(vec![Box::new(dual_form)])
        .run_graph(&mut q)
        .unwrap();
    assert_eq!(p, q);
    assert!(dual_form_reports.reports().is_empty());
    // Simplify: the main graph around the scan is rebuilt; the program means the same.
    let simplify = Simplify::default();
    assert_eq!(simplify.name(), "simplify");
    let handle = simplify.report_handle();
    let mut s = p.clone();
    Pipeline::of_passes(vec![Box::new(simplify)])
        .run_graph(&mut s)
        .unwrap_or_else(|e| panic!("{e}"));
    verify_program(&s).unwrap();
    let reports = handle.reports();
    assert_eq!(reports.last().map(|r| r.graph.as_str()), Some("main"));
    // Same inputs and outputs, same values (the interpreter runs the scan token by token).
    let names = |p: &Program| input_names(&p.graph);
    assert_eq!(names(&p), names(&s));
    let bind: BTreeMap<String, usize> = [
        ("B", 1),
        ("H", 2),
        ("L", 5),
        ("f", 3),
        ("mini_batch_size", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (pb, sb) = (p.specialize(&bind), s.specialize(&bind));
    let ins = random_inputs(&pb.graph, 11);
    let run = |p: &Program| -> BTreeMap<String, Vec<f64>> {
        tttc_backends::interp::run_program(p, &ins)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|(k, v)| (k, v.as_f64().unwrap().to_vec()))
            .collect()
    };
    let (want, got) = (run(&pb), run(&sb));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, w) in &want {
        assert!(rel_err(&got[name], w) <= TOL, "{name}");
    }
}

#[test]
fn simplify_pass_rewrites_step_graphs_and_main() {
    let mut p = compile_example("ttt_linear.ttt", &[]);
    Pipeline::of_passes(vec![Box::new(tttc_passes::lower_scan::LowerScan)])
        .run_graph(&mut p)
        .unwrap();
    let before = p.clone();
    let simplify = Simplify::default();
    let handle = simplify.report_handle();
    Pipeline::of_passes(vec![Box::new(simplify)])
        .run_graph(&mut p)
        .unwrap_or_else(|e| panic!("{e}"));
    let reports = handle.reports();
    assert_eq!(reports.len(), scans(&p).len() + 1);
    assert!(reports[0].graph.ends_with("/step"));
    let dims: BTreeMap<String, usize> =
        [("f".to_string(), 3), (MINI_BATCH_DIM.to_string(), 3)].into();
    let (a, b) = (
        specialize_graph(step(&before, scans(&before)[0]), &dims),
        specialize_graph(step(&p, scans(&p)[0]), &dims),
    );
    assert!(b.node_count() <= a.node_count());
    assert_same_results(&a, &b, &random_inputs(&a, 4), TOL);
}

#[test]
fn the_layers_equal_step_graphs_are_rewritten_once_to_what_each_alone_gives() {
    // Three unrolled layers: three scans whose step graphs are equal.
    let settings = [
        ("num_hidden_layers", 3.0),
        ("hidden_size", 8.0),
        ("num_attention_heads", 2.0),
        ("intermediate_size", 16.0),
        ("vocab_size", 11.0),
    ];
    // The full path: it locates the model's imports.
    let path = format!("{}/../examples/ttt_lm.ttt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let settings: tttc_ir::Settings = settings
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    let mut p = tttc_ir::syntax::compile(&path, &text, DType::F64, &settings)
        .unwrap_or_else(|e| panic!("{path}: {e:?}"));
    Pipeline::of_passes(vec![
        Box::new(tttc_passes::Autodiff) as Box<dyn Pass>,
        Box::new(tttc_passes::lower_scan::LowerScan),
    ])
    .run_graph(&mut p)
    .unwrap_or_else(|e| panic!("{e}"));
    let primal = p.clone();
    let ids = scans(&p);
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|&id| step(&p, id) == step(&p, ids[0])));
    let pass = DualForm::default();
    let handle = pass.report_handle();
    Pipeline::of_passes(vec![Box::new(pass) as Box<dyn Pass>])
        .run_graph(&mut p)
        .unwrap_or_else(|e| panic!("{e}"));
    let reports = handle.reports();
    assert_eq!(reports.len(), 3);
    for (id, r) in ids.iter().zip(&reports) {
        // Each repeat's result is what rewriting it alone gives, under its own label.
        let (alone, _) =
            dual_form_graph(step(&primal, *id), &RewriteConfig::default(), "alone").unwrap();
        assert!(step(&p, *id) == &alone, "scan {id:?}");
        assert!(
            r.graph.ends_with(&format!("ttt%{}/step", id.index())),
            "{}",
            r.graph
        );
        assert_eq!(
            (r.nodes_before, r.nodes_after, &r.cost_after),
            (
                reports[0].nodes_before,
                reports[0].nodes_after,
                &reports[0].cost_after
            )
        );
    }
}
