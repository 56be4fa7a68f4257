//! The scan-lowering pass (`primal`) on the example programs: the interpreter runs each
//! program token by token (no step graph) and with the step graph the pass builds, on the
//! golden inputs of ttt-lm-pytorch (TTT-Linear, TTT-MLP) and on random inputs (delta rule),
//! with full mini-batches, a remainder mini-batch (L not a multiple of K), K = 1 and K > L.
//!
//! Tolerances (f64), relative to the largest magnitude of each expected tensor:
//! - step vs token by token ≤ 1e-10: the two compute the same sums in different orders
//!   (`Σ_j (token_eta[i] lr[j]) g_j` against `token_eta[i] Σ_j lr[j] g_j`), so they differ by a
//!   few ulps per mini-batch;
//! - step vs the goldens' float64 expected values ≤ 1e-9, the bound `tests/golden_inner.rs`
//!   uses (the reference's rounded GELU-derivative constants cost ~1e-11).

#[path = "common/primal.rs"]
mod primal;

use primal::*;
use std::collections::BTreeMap;
use tttc_ir::{Dim, Op, Shape, TttScan, MINI_BATCH_DIM};
use tttc_runtime::Tensor;

const TOL_STEP: f64 = 1e-10;
const TOL_GOLDEN: f64 = 1e-9;

/// The inner golden cases: (stem, example file).
fn golden_cases() -> Vec<(String, &'static str)> {
    let dir = repo_root().join("tests/golden");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/golden") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let Some(stem) = name.strip_suffix(".inputs.safetensors") else {
            continue;
        };
        let program = if stem.starts_with("inner_linear_") {
            "ttt_linear.ttt"
        } else if stem.starts_with("inner_mlp_") {
            "ttt_mlp.ttt"
        } else {
            continue;
        };
        cases.push((stem.to_string(), program));
    }
    cases.sort();
    assert!(cases.len() >= 4, "expected the four inner golden cases");
    cases
}

/// Runs `file` with mini-batch size `k` on `inputs`, token by token and with the step graph,
/// and checks that they agree; returns the step graph's outputs.
fn token_vs_step(
    file: &str,
    k: usize,
    inputs: &BTreeMap<String, Tensor>,
    what: &str,
) -> BTreeMap<String, Tensor> {
    let p = compile_example(file, &[("mini_batch_size", k as f64)]);
    assert!(!has_steps(&p));
    let q = lowered(&p);
    assert!(
        has_steps(&q),
        "{what}: the pass left a scan without a step graph"
    );
    let token = run_bound(&p, inputs);
    let step = run_bound(&q, inputs);
    let worst = assert_outputs_close(&step, &token, TOL_STEP, what);
    eprintln!("{what}: step vs token {worst:e}");
    step
}

/// `inputs` with `token_eta` cut to its first `k` entries.
fn with_k(inputs: &BTreeMap<String, Tensor>, eta: &str, k: usize) -> BTreeMap<String, Tensor> {
    let mut ins = inputs.clone();
    let t = prefix(&inputs[eta], k);
    ins.insert(eta.to_string(), t);
    ins
}

#[test]
fn golden_cases_agree_token_by_token_and_with_the_goldens() {
    for (stem, file) in golden_cases() {
        let dir = repo_root().join("tests/golden");
        let inputs = read_f64(&dir.join(format!("{stem}.inputs.safetensors")));
        let expected = read_f64(&dir.join(format!("{stem}.expected_f64.safetensors")));
        let step = token_vs_step(file, 16, &inputs, &stem);
        for (name, got) in &step {
            let want = expected
                .get(name)
                .unwrap_or_else(|| panic!("{stem}: no expected `{name}`"));
            let e = rel_to_max(got, want);
            assert!(e <= TOL_GOLDEN, "{stem}: `{name}` vs golden {e:e}");
        }
    }
}

#[test]
fn golden_inputs_with_remainders_and_k1() {
    for (stem, file) in golden_cases() {
        let dir = repo_root().join("tests/golden");
        let inputs = read_f64(&dir.join(format!("{stem}.inputs.safetensors")));
        let l = inputs["XQ"].shape()[2];
        // K = 6 and 7 leave remainders for L = 40 and 64; K = 1 is online gradient descent.
        for k in [6, 7, 1] {
            let remainder = l % k;
            assert!(k == 1 || remainder > 0);
            token_vs_step(
                file,
                k,
                &with_k(&inputs, "token_eta", k),
                &format!("{stem} K={k}"),
            );
        }
    }
}

fn delta_inputs(
    b: usize,
    h: usize,
    l: usize,
    dk: usize,
    dv: usize,
    k: usize,
) -> BTreeMap<String, Tensor> {
    BTreeMap::from([
        ("Q".to_string(), rand_tensor(1, &[b, h, l, dk], -1.0, 1.0)),
        ("K".to_string(), rand_tensor(2, &[b, h, l, dk], -1.0, 1.0)),
        ("V".to_string(), rand_tensor(3, &[b, h, l, dv], -1.0, 1.0)),
        ("W0".to_string(), rand_tensor(4, &[h, dk, dv], -0.5, 0.5)),
        ("position_scale".to_string(), rand_tensor(5, &[k], 0.2, 1.0)),
        ("lr".to_string(), rand_tensor(6, &[b, h, l], 0.05, 0.5)),
    ])
}

#[test]
fn delta_rule_full_remainder_k1_and_k_above_l() {
    let l = 11;
    for k in [11, 4, 1, 16] {
        let inputs = delta_inputs(2, 3, l, 4, 3, k);
        token_vs_step("delta_rule.ttt", k, &inputs, &format!("delta_rule K={k}"));
    }
}

/// The step graph's interface, exactly as `TttScan::step` documents it, for TTT-Linear.
#[test]
fn step_graph_interface_of_ttt_linear() {
    let q = lowered(&compile_example("ttt_linear.ttt", &[]));
    let scan = q
        .graph
        .node_ids()
        .into_iter()
        .find_map(|id| match &q.graph.node(id).op {
            Op::Ttt(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a scan");
    let step = scan.step.as_ref().expect("step graph");
    let k = Dim::sym(MINI_BATCH_DIM);
    let f = Dim::sym("f");
    let sh = |d: &[&Dim]| Shape(d.iter().map(|&d| d.clone()).collect());
    let inputs: Vec<(String, Shape)> = step
        .inputs()
        .iter()
        .map(|&i| {
            (
                step.input_name(i).expect("name").to_string(),
                step.tensor_type(i).expect("tensor").shape.clone(),
            )
        })
        .collect();
    let want = vec![
        ("W1".to_string(), sh(&[&f, &f])),
        ("b1".to_string(), sh(&[&Dim::Known(1), &f])),
        ("ln_weight".to_string(), sh(&[&f])),
        ("ln_bias".to_string(), sh(&[&f])),
        ("k".to_string(), sh(&[&k, &f])),
        ("v".to_string(), sh(&[&k, &f])),
        ("q".to_string(), sh(&[&k, &f])),
        ("token_eta".to_string(), sh(&[&k])),
        ("lr".to_string(), sh(&[&k])),
    ];
    assert_eq!(inputs, want);
    let outputs: Vec<(String, Shape)> = step
        .outputs()
        .iter()
        .map(|o| {
            (
                o.name.clone(),
                step.tensor_type(o.node).expect("tensor").shape.clone(),
            )
        })
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("out".to_string(), sh(&[&k, &f])),
            (TttScan::next_output_name("W1"), sh(&[&f, &f])),
            (TttScan::next_output_name("b1"), sh(&[&Dim::Known(1), &f])),
        ]
    );
    // The per-token states are materialized: one `mix` per state for θ_i and one for θ'.
    let mixes = step
        .node_ids()
        .into_iter()
        .filter(|&n| matches!(step.node(n).op, Op::Mix))
        .count();
    assert_eq!(mixes, 4);
    if std::env::var_os("TTTC_PRINT_STEP").is_some() {
        println!("{}", tttc_ir::printer::print_graph(step));
    }
}

#[test]
fn lowering_needs_the_gradient() {
    let path = repo_root().join("examples/delta_rule.ttt");
    let text = std::fs::read_to_string(path).expect("example");
    let mut p = tttc_ir::syntax::compile(
        "delta_rule.ttt",
        &text,
        tttc_ir::DType::F64,
        &Default::default(),
    )
    .expect("compiles");
    let err = tttc_passes::pipeline::Pipeline::of_passes(vec![Box::new(
        tttc_passes::lower_scan::LowerScan,
    )])
    .run_graph(&mut p)
    .expect_err("no gradient yet");
    let msg = err.to_string();
    assert!(msg.contains("primal") && msg.contains("autodiff"), "{msg}");
}

#[test]
fn lowering_is_deterministic_and_keeps_the_inner_graphs() {
    let p = compile_example("ttt_mlp.ttt", &[]);
    let a = lowered(&p);
    let b = lowered(&p);
    assert_eq!(
        tttc_ir::printer::print_program(&a),
        tttc_ir::printer::print_program(&b)
    );
    for id in p.graph.node_ids() {
        if let (Op::Ttt(before), Op::Ttt(after)) = (&p.graph.node(id).op, &a.graph.node(id).op) {
            let print = tttc_ir::printer::print_graph;
            assert_eq!(print(&before.loss), print(&after.loss));
            assert_eq!(print(&before.out), print(&after.out));
        }
    }
}
