//! The `sibling_products` kernel pass: batched one-row products over the same right operand
//! (a decode token's `k @ W` and `q @ W`, one matrix per head) merged into one nest, then
//! register-tiled, run by the kernel executor against the program as lowered.
//!
//! Tolerance: none — the outputs must be bitwise equal. Merging moves a product next to its
//! sibling and interleaves their stores; each element still receives the same terms in the
//! same order, so any difference is a bug.

mod common;

use common::kernel_inputs::tensor;
use std::collections::BTreeMap;
use tttc_backends::kernel_interp::run_kernel_program;
use tttc_ir::kernel::{print_kernel_program, verify, KernelProgram, Stmt};
use tttc_ir::{BinaryOp, DType, Graph, NodeId, Op, ReduceOp, Shape, TensorType};
use tttc_passes::lower_kernel::lower_graph;
use tttc_passes::pipeline::KernelPass;
use tttc_passes::register_tile::{RegisterTile, TileShape};
use tttc_passes::sibling_products::SiblingProducts;
use tttc_runtime::Tensor;

const HEADS: usize = 6;
const K: usize = 16;
const N: usize = 64;

/// Inputs `x1`, `x2` `[HEADS, 1, K]`, `w`, `v` `[HEADS, K, N]`; `outputs` builds the outputs.
fn program(outputs: impl Fn(&mut Graph, [NodeId; 4])) -> KernelProgram {
    let tt = |d: &[usize]| TensorType::new(DType::F64, Shape::known(d));
    let mut g = Graph::new();
    let x1 = g.add_input("x1", tt(&[HEADS, 1, K])).expect("x1");
    let x2 = g.add_input("x2", tt(&[HEADS, 1, K])).expect("x2");
    let w = g.add_input("w", tt(&[HEADS, K, N])).expect("w");
    let v = g.add_input("v", tt(&[HEADS, K, N])).expect("v");
    outputs(&mut g, [x1, x2, w, v]);
    let k = lower_graph("siblings", &g).expect("lower");
    verify(&k).expect("lowered program verifies");
    k
}

fn inputs() -> BTreeMap<String, Tensor> {
    [
        ("x1", &[HEADS, 1, K][..], 1),
        ("x2", &[HEADS, 1, K], 2),
        ("w", &[HEADS, K, N], 3),
        ("v", &[HEADS, K, N], 4),
    ]
    .into_iter()
    .map(|(n, s, seed)| (n.to_string(), tensor(s, seed, DType::F64)))
    .collect()
}

/// Top-level loop nests of `k`.
fn nests(k: &KernelProgram) -> usize {
    k.body
        .iter()
        .filter(|s| matches!(s, Stmt::Loop { .. }))
        .count()
}

/// `k` merged (and register-tiled), with every output bitwise the same as `k`'s.
fn merged_and_checked(k: &KernelProgram) -> KernelProgram {
    let merged = SiblingProducts::default().run(k).expect("runs");
    verify(&merged).unwrap_or_else(|e| panic!("{e}\n{}", print_kernel_program(&merged)));
    let tiled = RegisterTile {
        tile: Some(TileShape { rows: 8, lanes: 16 }),
    }
    .run(&merged)
    .expect("tiles");
    verify(&tiled).unwrap_or_else(|e| panic!("{e}\n{}", print_kernel_program(&tiled)));
    let inputs = inputs();
    let want = run_kernel_program(k, &inputs).expect("as lowered");
    for program in [&merged, &tiled] {
        let got = run_kernel_program(program, &inputs).expect("merged");
        for (name, w) in &want {
            let g = &got[name];
            assert_eq!(w.shape(), g.shape(), "{name}");
            let (w, g) = (w.to_f64_vec(), g.to_f64_vec());
            assert_eq!(w.len(), g.len(), "{name}");
            for (x, y) in w.iter().zip(&g) {
                assert!(!x.is_nan(), "{name}: NaN");
                assert_eq!(x.to_bits(), y.to_bits(), "{name}: {x} vs {y}");
            }
        }
    }
    merged
}

/// Asserts that `sibling_products` leaves `k`'s nests as they are (and changes no result).
fn assert_kept_apart(k: &KernelProgram) {
    let merged = merged_and_checked(k);
    assert_eq!(
        nests(&merged),
        nests(k),
        "{}",
        print_kernel_program(&merged)
    );
}

/// Outputs `y1 = x1 @ w` and `y2 = a @ b` for `(a, b) = second(g, inputs)`.
fn y1_and(second: impl Fn(&mut Graph, [NodeId; 4]) -> [NodeId; 2]) -> KernelProgram {
    program(|g, inputs| {
        let y1 = g.add(Op::MatMul, &[inputs[0], inputs[2]]).expect("y1");
        let [a, b] = second(g, inputs);
        let y2 = g.add(Op::MatMul, &[a, b]).expect("y2");
        g.add_output("y1", y1);
        g.add_output("y2", y2);
    })
}

#[test]
fn products_over_the_same_matrices_become_one_nest() {
    // y1 = x1 @ w and y2 = x2 @ w, with an unrelated product between them.
    let k = program(|g, [x1, x2, w, v]| {
        let y1 = g.add(Op::MatMul, &[x1, w]).expect("y1");
        let other = g.add(Op::MatMul, &[x1, v]).expect("other");
        let y2 = g.add(Op::MatMul, &[x2, w]).expect("y2");
        g.add_output("y1", y1);
        g.add_output("other", other);
        g.add_output("y2", y2);
    });
    let merged = merged_and_checked(&k);
    assert_eq!(
        nests(&merged),
        nests(&k) - 1,
        "{}",
        print_kernel_program(&merged)
    );
}

#[test]
fn products_over_different_matrices_stay_apart() {
    assert_kept_apart(&y1_and(|_, [_, x2, _, v]| [x2, v]));
}

#[test]
fn a_product_reading_its_siblings_result_stays_after_it() {
    // y2's left operand is scaled by a mean of y1: y2 cannot run beside y1.
    let k = program(|g, [x1, x2, w, _]| {
        let y1 = g.add(Op::MatMul, &[x1, w]).expect("y1");
        let mean = g
            .add(
                Op::Reduce {
                    fun: ReduceOp::Mean,
                    axis: 2,
                },
                &[y1],
            )
            .expect("mean");
        let scaled = g
            .add(Op::Binary { fun: BinaryOp::Mul }, &[x2, mean])
            .expect("scaled");
        let y2 = g.add(Op::MatMul, &[scaled, w]).expect("y2");
        g.add_output("y1", y1);
        g.add_output("y2", y2);
    });
    assert_kept_apart(&k);
}

#[test]
fn off_leaves_the_program_alone() {
    let k = y1_and(|_, [_, x2, w, _]| [x2, w]);
    let off = SiblingProducts { enabled: false }.run(&k).expect("runs");
    assert_eq!(print_kernel_program(&off), print_kernel_program(&k));
}
