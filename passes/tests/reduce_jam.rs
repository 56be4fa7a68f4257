//! The `reduce_jam` kernel pass: row reductions (a LayerNorm's mean and variance, a sum of
//! products, with row remainders, in f32 and f64) lowered to kernel IR, jammed for several tile
//! heights, and run by the kernel executor against the unjammed program.
//!
//! Tolerance: none — the outputs must be bitwise equal. Jamming changes only the interleaving
//! between rows; each row still receives the same terms in the same order, so any difference is
//! a lost, repeated or reordered term.

mod common;

use common::kernel_inputs::tensor;
use std::collections::BTreeMap;
use tttc_backends::kernel_interp::run_kernel_program;
use tttc_ir::kernel::{print_kernel_program, verify, KernelProgram, Stmt};
use tttc_ir::{BinaryOp, DType, Graph, Op, ReduceOp, Shape, TensorType, UnaryOp};
use tttc_passes::lower_kernel::lower_graph;
use tttc_passes::pipeline::KernelPass;
use tttc_passes::reduce_jam::ReduceJam;
use tttc_runtime::Tensor;

/// A LayerNorm-like chain over the last axis of `x [m, n]`: the mean, the centred values, the
/// variance plus epsilon's square root, and `Σ_j x·w` (a sum of products), as outputs.
fn layer_norm(dtype: DType, m: usize, n: usize) -> Graph {
    let tt = |d: &[usize]| TensorType::new(dtype, Shape::known(d));
    let mut g = Graph::new();
    let x = g.add_input("x", tt(&[m, n])).expect("x");
    let w = g.add_input("w", tt(&[m, n])).expect("w");
    let mean = g
        .add(
            Op::Reduce {
                fun: ReduceOp::Mean,
                axis: 1,
            },
            &[x],
        )
        .expect("mean");
    let centred = g
        .add(Op::Binary { fun: BinaryOp::Sub }, &[x, mean])
        .expect("sub");
    let square = g
        .add(Op::Binary { fun: BinaryOp::Mul }, &[centred, centred])
        .expect("square");
    let var = g
        .add(
            Op::Reduce {
                fun: ReduceOp::Mean,
                axis: 1,
            },
            &[square],
        )
        .expect("var");
    let std = g
        .add(Op::Unary { fun: UnaryOp::Sqrt }, &[var])
        .expect("sqrt");
    let xw = g
        .add(Op::Binary { fun: BinaryOp::Mul }, &[x, w])
        .expect("mul");
    let dot = g
        .add(
            Op::Reduce {
                fun: ReduceOp::Sum,
                axis: 1,
            },
            &[xw],
        )
        .expect("sum");
    g.add_output("centred", centred);
    g.add_output("std", std);
    g.add_output("dot", dot);
    g
}

/// Row loops whose body starts with a store and a loop, the shape the pass rewrites.
fn row_reductions(p: &KernelProgram) -> usize {
    let mut n = 0;
    for s in &p.body {
        s.walk(&mut |s| {
            if let Stmt::Loop { body, .. } = s {
                n += usize::from(matches!(
                    body.as_slice(),
                    [Stmt::Store { .. }, Stmt::Loop { .. }, ..]
                ));
            }
            true
        });
    }
    n
}

/// Every output of `got` has the bits of `want`'s (no NaN, same lengths).
fn assert_bitwise_equal(
    want: &BTreeMap<String, Tensor>,
    got: &BTreeMap<String, Tensor>,
    what: &str,
) {
    for (name, w) in want {
        let (w, g) = (w.to_f64_vec(), got[name].to_f64_vec());
        assert_eq!(w.len(), g.len(), "{what} {name}");
        for (e, (x, y)) in w.iter().zip(&g).enumerate() {
            assert!(!x.is_nan() && !y.is_nan(), "{what} {name}[{e}]: NaN");
            assert_eq!(x.to_bits(), y.to_bits(), "{what} {name}[{e}]");
        }
    }
}

#[test]
fn jammed_row_reductions_are_bitwise_unchanged() {
    for dtype in [DType::F32, DType::F64] {
        // 19 rows: remainders for every tile height below.
        let (m, n) = (19, 37);
        let plain = lower_graph("layer_norm", &layer_norm(dtype, m, n)).expect("lower");
        let inputs: BTreeMap<String, Tensor> = [
            ("x".to_string(), tensor(&[m, n], 1, dtype)),
            ("w".to_string(), tensor(&[m, n], 2, dtype)),
        ]
        .into();
        let want = run_kernel_program(&plain, &inputs).expect("plain");
        assert!(
            row_reductions(&plain) >= 3,
            "{}",
            print_kernel_program(&plain)
        );
        for rows in [2, 4, 8] {
            let jammed = ReduceJam { rows: Some(rows) }.run(&plain).expect("jam");
            verify(&jammed).expect("verify");
            let text = print_kernel_program(&jammed);
            // Each reduction became a tile loop (whose body starts with `rows` stores) and a
            // remainder loop of the original shape.
            assert!(
                text.contains(&format!(" in 0..{} (Serial)", m / rows)),
                "rows {rows}:\n{text}"
            );
            let got = run_kernel_program(&jammed, &inputs).expect("jammed");
            assert_bitwise_equal(&want, &got, &format!("{dtype} rows {rows}"));
        }
    }
}

#[test]
fn parallel_row_loops_are_jammed_into_parallel_tiles_bitwise_unchanged() {
    use tttc_passes::cpu_parallel::CpuParallel;
    for dtype in [DType::F32, DType::F64] {
        // Enough work for `cpu_parallel` to hand the rows to the thread pool (2^17 stores);
        // 203 = 25 tiles of 8 and 3 rows.
        let (m, n) = (203, 701);
        let plain = lower_graph("layer_norm", &layer_norm(dtype, m, n)).expect("lower");
        let parallel = CpuParallel.run(&plain).expect("parallel");
        let before = print_kernel_program(&parallel);
        assert!(
            before.contains(&format!(" in 0..{m} (Parallel)")),
            "no parallel row loop:\n{before}"
        );
        let inputs: BTreeMap<String, Tensor> = [
            ("x".to_string(), tensor(&[m, n], 1, dtype)),
            ("w".to_string(), tensor(&[m, n], 2, dtype)),
        ]
        .into();
        let want = run_kernel_program(&parallel, &inputs).expect("plain");
        let jammed = ReduceJam { rows: Some(8) }.run(&parallel).expect("jam");
        verify(&jammed).expect("verify");
        let text = print_kernel_program(&jammed);
        assert!(text.contains(" in 0..25 (Parallel)"), "{text}");
        let got = run_kernel_program(&jammed, &inputs).expect("jammed");
        assert_bitwise_equal(&want, &got, &format!("{dtype} parallel"));
    }
}

#[test]
fn off_leaves_programs_unchanged() {
    let plain = lower_graph("layer_norm", &layer_norm(DType::F32, 9, 5)).expect("lower");
    let same = ReduceJam { rows: None }.run(&plain).expect("off");
    assert_eq!(print_kernel_program(&same), print_kernel_program(&plain));
}
