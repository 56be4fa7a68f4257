//! `LowerOptions::transposed_products`: a product read only through `transpose`, and a batch
//! of single rows against a transposed weight, are computed as `bᵀ @ aᵀ` into row-major memory
//! (so their readers, or the copy of the weight, stop gathering down columns).
//!
//! Tolerance: none — each element is the same sum of the same products in the same order
//! whichever way the product is laid out, so the results must be bitwise equal to the plain
//! lowering, tiled or not; any difference is a lost, repeated or reordered term.

mod common;

use common::kernel_inputs::tensor;
use std::collections::BTreeMap;
use tttc_backends::kernel_interp::run_kernel_program;
use tttc_ir::kernel::{print_kernel_program, verify, KernelProgram};
use tttc_ir::{BinaryOp, DType, Graph, Op, Shape, TensorType, UnaryOp};
use tttc_passes::lower_kernel::{lower_graph_with, LowerOptions};
use tttc_passes::pipeline::KernelPass;
use tttc_passes::register_tile::{RegisterTile, TileShape};
use tttc_runtime::Tensor;

fn cpu(transposed_products: bool) -> LowerOptions {
    LowerOptions {
        blocked_transposes: true,
        transposed_products,
        ..LowerOptions::default()
    }
}

fn buffers_named(p: &KernelProgram, part: &str) -> usize {
    p.buffers.iter().filter(|b| b.name.contains(part)).count()
}

/// Runs `g` lowered with the option off and on (the latter untiled and tiled) on `inputs`:
/// every output bitwise equal and free of NaN. Returns the program lowered with the option on.
fn same_results(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> KernelProgram {
    let plain = lower_graph_with("plain", g, &cpu(false)).expect("lower plain");
    let on = lower_graph_with("transposed", g, &cpu(true)).expect("lower transposed");
    verify(&on).expect("verify");
    let want = run_kernel_program(&plain, inputs).expect("plain");
    for tile in [None, Some(TileShape { rows: 4, lanes: 8 })] {
        let t = RegisterTile { tile }.run(&on).expect("tile");
        verify(&t).expect("verify tiled");
        let got = run_kernel_program(&t, inputs).expect("transposed");
        for (name, w) in &want {
            let (w, g) = (w.to_f64_vec(), got[name].to_f64_vec());
            assert_eq!(w.len(), g.len(), "{name}: length");
            for (i, (x, y)) in w.iter().zip(&g).enumerate() {
                assert!(!x.is_nan() && !y.is_nan(), "{name}[{i}]: NaN");
                assert_eq!(
                    x.to_bits(),
                    y.to_bits(),
                    "{name}[{i}], tile {tile:?}: {x} vs {y}"
                );
            }
        }
    }
    on
}

fn tt(d: &[usize]) -> TensorType {
    TensorType::new(DType::F32, Shape::known(d))
}

/// `x + transpose(a @ b)` and `x + transpose(neg(a @ b))` (batched, with remainders): the
/// product is computed transposed, and the same product also read directly is not.
#[test]
fn a_product_read_only_transposed_is_computed_transposed() {
    let (m, k, n) = (5, 9, 37);
    let build = |also_direct: bool, negated: bool| {
        let mut g = Graph::new();
        let a = g.add_input("a", tt(&[2, m, k])).expect("a");
        let b = g.add_input("b", tt(&[2, k, n])).expect("b");
        let x = g.add_input("x", tt(&[2, n, m])).expect("x");
        let p = g.add(Op::MatMul, &[a, b]).expect("matmul");
        let read = if negated {
            g.add(Op::Unary { fun: UnaryOp::Neg }, &[p]).expect("neg")
        } else {
            p
        };
        let pt = g.add(Op::Transpose, &[read]).expect("transpose");
        let y = g
            .add(Op::Binary { fun: BinaryOp::Add }, &[x, pt])
            .expect("add");
        g.add_output("y", y);
        if also_direct {
            let e = g.add(Op::Unary { fun: UnaryOp::Exp }, &[p]).expect("exp");
            g.add_output("e", e);
        }
        g
    };
    let inputs: BTreeMap<String, Tensor> = [
        ("a".to_string(), tensor(&[2, m, k], 1, DType::F32)),
        ("b".to_string(), tensor(&[2, k, n], 2, DType::F32)),
        ("x".to_string(), tensor(&[2, n, m], 3, DType::F32)),
    ]
    .into();
    for negated in [false, true] {
        let on = same_results(&build(false, negated), &inputs);
        assert_eq!(
            buffers_named(&on, "matmul, transposed"),
            1,
            "negated {negated}:\n{}",
            print_kernel_program(&on)
        );
        let both = same_results(&build(true, negated), &inputs);
        assert_eq!(
            buffers_named(&both, "matmul, transposed"),
            0,
            "negated {negated}"
        );
    }
}

/// A step's `[K, 1, f] @ Wᵀ` with `W` of `[h, f]`: one product `W @ aᵀ` of `[h, f] @ [f, K]`
/// instead of a copy of the whole `Wᵀ`; with as many rows as the weight has, the copy stays.
#[test]
fn single_rows_against_a_transposed_weight_are_computed_transposed() {
    let (f, h) = (24, 80);
    let build = |rows: usize| {
        let mut g = Graph::new();
        let a = g.add_input("a", tt(&[rows, 1, f])).expect("a");
        let w = g.add_input("w", tt(&[h, f])).expect("w");
        let wt = g.add(Op::Transpose, &[w]).expect("transpose");
        let p = g.add(Op::MatMul, &[a, wt]).expect("matmul");
        let y = g.add(Op::Unary { fun: UnaryOp::Exp }, &[p]).expect("exp");
        g.add_output("y", y);
        g
    };
    for (rows, transposed) in [(6, true), (h, false)] {
        let inputs: BTreeMap<String, Tensor> = [
            ("a".to_string(), tensor(&[rows, 1, f], 4, DType::F32)),
            ("w".to_string(), tensor(&[h, f], 5, DType::F32)),
        ]
        .into();
        let on = same_results(&build(rows), &inputs);
        let text = print_kernel_program(&on);
        assert_eq!(
            buffers_named(&on, "matmul, transposed"),
            usize::from(transposed),
            "rows {rows}:\n{text}"
        );
        // The weight's transposing copy (`[f, h]`) is gone exactly when the product is
        // transposed; what is copied instead is `aᵀ` (`[f, rows]`).
        let weight_copies = on
            .buffers
            .iter()
            .filter(|b| b.name.contains("rhs, contiguous") && b.layout.shape == [f, h])
            .count();
        assert_eq!(
            weight_copies,
            usize::from(!transposed),
            "rows {rows}:\n{text}"
        );
    }
}
