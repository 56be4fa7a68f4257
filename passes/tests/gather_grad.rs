//! The derivative of `gather` (and of its adjoint `scatter_add`), against central finite
//! differences on the graph interpreter, with repeated ids so that a scatter that overwrote
//! rows instead of adding them would fail; and the exact gradient of a linear use by hand.
//!
//! Tolerance: `|ad - fd| <= 1e-6 |fd| + 1e-8 (1 + |loss|)`. The functions are smooth and O(1)
//! (`tanh`, products), so the truncation error of central differences with h = 1e-6 is ~1e-13
//! and the rounding noise ~1e-10 · |loss|; a rule that drops or overwrites a row is off by a
//! whole row's contribution (order 0.1 to 1).

mod common;

use common::*;
use tttc_ir::{Dim, NodeId, Op, UnaryOp};

/// Ids with repeats: rows 0 and 3 twice, row 2 three times, row 1 never (4 rows).
const IDS: [f64; 8] = [3.0, 0.0, 2.0, 2.0, 0.0, 3.0, 2.0, 4.0];
const ROWS: usize = 5;

fn gather(b: &mut B, table: NodeId, ids: NodeId) -> NodeId {
    b.op(Op::Gather, &[table, ids])
}

fn inputs_with_ids(g: &tttc_ir::Graph, seed: u64, ids_shape: &[usize]) -> Inputs {
    let mut inputs = random_inputs(g, seed);
    inputs.insert("ids".into(), t(ids_shape, &IDS));
    inputs
}

fn fd_check(g: &tttc_ir::Graph, inputs: &Inputs, wrt: &[&str]) {
    let loss = scalar(g, inputs, "loss");
    let wrt: Vec<String> = wrt.iter().map(|s| s.to_string()).collect();
    check_fd(g, "loss", inputs, &wrt, 1e-6, 1e-8, loss.abs()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn gather_gradient_matches_finite_differences_with_repeated_ids() {
    // sum(w * gather(table, ids)), ids [2, 4], table [5, 3]: linear in the table.
    let mut b = B::new();
    let table = b.input("table", &[ROWS, 3]);
    let ids = b.input("ids", &[2, 4]);
    let w = b.input("w", &[2, 4, 3]);
    let rows = gather(&mut b, table, ids);
    let p = b.mul(w, rows);
    let loss = b.sum_all(p);
    let g = b.finish("loss", loss);
    fd_check(&g, &inputs_with_ids(&g, 11, &[2, 4]), &["table", "w"]);

    // sum(w * tanh(gather(table, ids))) with a [5, 2, 2] table and ids [8]: the adjoint of
    // each row depends on the row's values, and rows have two axes.
    let mut b = B::new();
    let table = b.input("table", &[ROWS, 2, 2]);
    let ids = b.input("ids", &[8]);
    let w = b.input("w", &[8, 2, 2]);
    let rows = gather(&mut b, table, ids);
    let th = b.un(UnaryOp::Tanh, rows);
    let p = b.mul(w, th);
    let loss = b.sum_all(p);
    let g = b.finish("loss", loss);
    fd_check(&g, &inputs_with_ids(&g, 12, &[8]), &["table", "w"]);
}

#[test]
fn repeated_ids_add_their_rows_exactly() {
    let mut b = B::new();
    let table = b.input("table", &[ROWS, 2]);
    let ids = b.input("ids", &[8]);
    let w = b.input("w", &[8, 2]);
    let rows = gather(&mut b, table, ids);
    let p = b.mul(w, rows);
    let loss = b.sum_all(p);
    let g = b.finish("loss", loss);
    let grad = tttc_passes::autodiff::gradient_graph(&g, "loss", &["table".to_string()])
        .expect("gradient");
    assert!(
        grad.node_ids()
            .iter()
            .any(|&n| matches!(grad.node(n).op, Op::ScatterAdd { .. })),
        "the gradient scatters"
    );
    let inputs = inputs_with_ids(&g, 5, &[8]);
    let wv = inputs["w"].to_f64_vec();
    let mut want = vec![0.0; ROWS * 2];
    for (s, &id) in IDS.iter().enumerate() {
        for h in 0..2 {
            want[id as usize * 2 + h] += wv[s * 2 + h];
        }
    }
    assert_eq!(output(&grad, &inputs, "grad_table"), want);
    // No id is 1: its row gets no gradient.
    assert_eq!(&want[2..4], &[0.0, 0.0]);
}

#[test]
fn scatter_add_gradient_is_a_gather() {
    // sum(v * tanh(scatter_add(x, ids, 5))): differentiating the adjoint itself.
    let mut b = B::new();
    let x = b.input("x", &[8, 3]);
    let ids = b.input("ids", &[8]);
    let v = b.input("v", &[ROWS, 3]);
    let s = b.op(
        Op::ScatterAdd {
            rows: Dim::Known(ROWS),
        },
        &[x, ids],
    );
    let th = b.un(UnaryOp::Tanh, s);
    let p = b.mul(v, th);
    let loss = b.sum_all(p);
    let g = b.finish("loss", loss);
    fd_check(&g, &inputs_with_ids(&g, 21, &[8]), &["x", "v"]);
}

#[test]
fn ids_get_no_gradient() {
    let mut b = B::new();
    let table = b.input("table", &[ROWS, 2]);
    let ids = b.input("ids", &[8]);
    let rows = gather(&mut b, table, ids);
    let loss = b.sum_all(rows);
    let g = b.finish("loss", loss);
    let grad =
        tttc_passes::autodiff::gradient_graph(&g, "loss", &["ids".to_string()]).expect("gradient");
    let inputs = inputs_with_ids(&g, 3, &[8]);
    assert_eq!(output(&grad, &inputs, "grad_ids"), vec![0.0; 8]);
}
