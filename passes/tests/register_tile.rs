//! The `register_tile` kernel pass: small matrix products (shapes with row and column
//! remainders, batched, f32 and f64) lowered to kernel IR, tiled for several tile shapes, and
//! run by the kernel executor against the untiled program.
//!
//! Tolerance: none — the outputs must be bitwise equal. Tiling changes only the interleaving
//! between different elements of the result; each element still receives the same terms in the
//! same order, so any difference is a bug (a lost, repeated or reordered term).

mod common;

use common::kernel_inputs::tensor;
use std::collections::BTreeMap;
use tttc_backends::kernel_interp::run_kernel_program;
use tttc_ir::kernel::{print_kernel_program, verify, KernelProgram, Schedule, Stmt};
use tttc_ir::{DType, Graph, Op, Shape, TensorType};
use tttc_passes::lower_kernel::{lower_graph, lower_graph_with, LowerOptions};
use tttc_passes::pipeline::KernelPass;
use tttc_passes::register_tile::{RegisterTile, TileShape};
use tttc_runtime::{ElemType, Tensor};

/// `a @ b` for inputs of shapes `sa`, `sb` in `dtype`, lowered to kernel IR.
fn product(dtype: DType, sa: &[usize], sb: &[usize]) -> (Graph, KernelProgram) {
    let tt = |d: &[usize]| TensorType::new(dtype, Shape::known(d));
    let mut g = Graph::new();
    let a = g.add_input("a", tt(sa)).expect("a");
    let b = g.add_input("b", tt(sb)).expect("b");
    let m = g.add(Op::MatMul, &[a, b]).expect("matmul");
    g.add_output("c", m);
    let k = lower_graph("product", &g).expect("lower");
    (g, k)
}

fn count_vector_loops(body: &[Stmt]) -> usize {
    let mut n = 0;
    for s in body {
        s.walk(&mut |s| {
            n += usize::from(matches!(
                s,
                Stmt::Loop {
                    schedule: Schedule::Vector(_),
                    ..
                }
            ));
            true
        });
    }
    n
}

#[test]
fn tiled_products_compute_bitwise_the_same() {
    let shapes: &[(&[usize], &[usize])] = &[
        (&[16, 12], &[12, 40]),
        (&[13, 5], &[5, 37]),
        (&[2, 9, 7], &[7, 3]),
        (&[3, 16], &[16, 16]),
        (&[2, 2], &[2, 2]),
        // A batch of one-row products with a matrix each (a decode token's heads), tiled a
        // row at a time with wide columns.
        (&[6, 1, 16], &[6, 16, 64]),
        (&[3, 1, 9], &[3, 9, 37]),
    ];
    let tiles = [
        TileShape { rows: 4, lanes: 8 },
        TileShape { rows: 8, lanes: 16 },
        TileShape { rows: 3, lanes: 2 },
    ];
    for dtype in [DType::F32, DType::F64] {
        for &(sa, sb) in shapes {
            let (_, k) = product(dtype, sa, sb);
            let inputs: BTreeMap<String, Tensor> = [
                ("a".to_string(), tensor(sa, 1, dtype)),
                ("b".to_string(), tensor(sb, 2, dtype)),
            ]
            .into();
            let want = run_kernel_program(&k, &inputs).expect("untiled");
            for tile in tiles {
                let what = format!("{dtype:?} {sa:?} @ {sb:?}, tile {tile:?}");
                let t = RegisterTile { tile: Some(tile) }
                    .run(&k)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                verify(&t).unwrap_or_else(|e| panic!("{what}: {e}\n{}", print_kernel_program(&t)));
                assert!(
                    count_vector_loops(&t.body) > 0,
                    "{what}: not tiled\n{}",
                    print_kernel_program(&t)
                );
                let got = run_kernel_program(&t, &inputs).expect("tiled");
                let (w, g) = (&want["c"], &got["c"]);
                assert_eq!(w.shape(), g.shape(), "{what}");
                assert_eq!(w.elem_type(), g.elem_type(), "{what}");
                let (w, g) = (w.to_f64_vec(), g.to_f64_vec());
                assert_eq!(w.len(), g.len(), "{what}");
                for (x, y) in w.iter().zip(&g) {
                    assert!(!x.is_nan(), "{what}: NaN");
                    assert_eq!(x.to_bits(), y.to_bits(), "{what}: {x} vs {y}");
                }
            }
        }
    }
}

/// The extents of the vector loops of `body`, outermost first.
fn vector_extents(body: &[Stmt]) -> Vec<usize> {
    let mut out = Vec::new();
    for s in body {
        s.walk(&mut |s| {
            if let Stmt::Loop {
                extent,
                schedule: Schedule::Vector(_),
                ..
            } = s
            {
                out.push(*extent);
            }
            true
        });
    }
    out
}

#[test]
fn rows_with_a_matrix_each_get_a_tile_of_one_row_and_every_accumulator() {
    let tile = TileShape { rows: 8, lanes: 16 };
    // A batch of six one-row products, one matrix per row: jamming rows would share no load,
    // so each row gets the 16 accumulators along its columns (256 of them).
    let (_, k) = product(DType::F32, &[6, 1, 64], &[6, 64, 256]);
    let t = RegisterTile { tile: Some(tile) }.run(&k).expect("tiles");
    assert_eq!(
        vector_extents(&t.body),
        vec![256],
        "{}",
        print_kernel_program(&t)
    );
    // Rows sharing their matrix are jammed as before: 8 rows × 2 vectors.
    let (_, k) = product(DType::F32, &[16, 64], &[64, 256]);
    let t = RegisterTile { tile: Some(tile) }.run(&k).expect("tiles");
    assert_eq!(
        vector_extents(&t.body),
        vec![32],
        "{}",
        print_kernel_program(&t)
    );
}

#[test]
fn off_leaves_the_program_alone() {
    let (_, k) = product(DType::F32, &[16, 12], &[12, 40]);
    let t = RegisterTile { tile: None }.run(&k).expect("run");
    assert_eq!(t, k);
}

/// `a @ transpose(b)` for `b` of shape `[…, n, k]`: the right operand's rows are strided, so
/// lowering copies it into a contiguous temporary in blocks of columns (with a remainder
/// block here: n = 70). The copy moves values only: the product must equal bitwise the
/// product of `a` with the same matrix given already transposed, tiled or not.
#[test]
fn transposed_right_operand_is_copied_exactly() {
    let (m, k, n) = (5, 9, 70);
    let tt = |d: &[usize]| TensorType::new(DType::F32, Shape::known(d));
    let mut g = Graph::new();
    let a = g.add_input("a", tt(&[2, m, k])).expect("a");
    let b = g.add_input("b", tt(&[2, n, k])).expect("b");
    let bt = g.add(Op::Transpose, &[b]).expect("transpose");
    let c = g.add(Op::MatMul, &[a, bt]).expect("matmul");
    g.add_output("c", c);
    let cpu = LowerOptions {
        blocked_transposes: true,
        ..LowerOptions::default()
    };
    let transposed = lower_graph_with("transposed", &g, &cpu).expect("lower");
    let text = print_kernel_program(&transposed);
    assert!(
        text.contains("in 0..2 (Serial)") && text.contains("in 0..32 (Serial)"),
        "no blocked copy:\n{text}"
    );
    let (_, plain) = product(DType::F32, &[2, m, k], &[2, k, n]);

    let at = tensor(&[2, m, k], 1, DType::F32);
    let bv = tensor(&[2, n, k], 2, DType::F32).to_f64_vec();
    // the same matrices, transposed on the host
    let mut btv = vec![0.0; bv.len()];
    for z in 0..2 {
        for j in 0..n {
            for p in 0..k {
                btv[(z * k + p) * n + j] = bv[(z * n + j) * k + p];
            }
        }
    }
    let b_plain = Tensor::from_f64(vec![2, k, n], btv)
        .expect("bt")
        .cast(ElemType::F32);
    let b_strided = tensor(&[2, n, k], 2, DType::F32);
    let want = run_kernel_program(
        &plain,
        &[("a".to_string(), at.clone()), ("b".to_string(), b_plain)].into(),
    )
    .expect("plain")["c"]
        .to_f64_vec();
    let inputs: BTreeMap<String, Tensor> =
        [("a".to_string(), at), ("b".to_string(), b_strided)].into();
    for tile in [None, Some(TileShape { rows: 4, lanes: 8 })] {
        let t = RegisterTile { tile }.run(&transposed).expect("tile");
        verify(&t).expect("verify");
        let got = run_kernel_program(&t, &inputs).expect("transposed")["c"].to_f64_vec();
        assert_eq!(want.len(), got.len());
        for (x, y) in want.iter().zip(&got) {
            assert!(!x.is_nan(), "NaN");
            assert_eq!(x.to_bits(), y.to_bits(), "tile {tile:?}: {x} vs {y}");
        }
    }
}

/// Two products with the same transposed right operand (what a step's VJP does with `Wᵀ`):
/// the operand is copied once, and each product is bitwise what it is when lowered alone.
#[test]
fn a_transposed_operand_shared_by_products_is_copied_once() {
    let (m, k, n) = (3, 9, 40);
    let tt = |d: &[usize]| TensorType::new(DType::F32, Shape::known(d));
    let build = |both: bool| {
        let mut g = Graph::new();
        let a1 = g.add_input("a1", tt(&[m, k])).expect("a1");
        let a2 = g.add_input("a2", tt(&[m + 2, k])).expect("a2");
        let b = g.add_input("b", tt(&[n, k])).expect("b");
        let bt = g.add(Op::Transpose, &[b]).expect("transpose");
        if both {
            let c1 = g.add(Op::MatMul, &[a1, bt]).expect("matmul");
            g.add_output("c1", c1);
        }
        let c2 = g.add(Op::MatMul, &[a2, bt]).expect("matmul");
        g.add_output("c2", c2);
        g
    };
    let cpu = LowerOptions {
        blocked_transposes: true,
        ..LowerOptions::default()
    };
    let shared = lower_graph_with("shared", &build(true), &cpu).expect("lower");
    let alone = lower_graph_with("alone", &build(false), &cpu).expect("lower");
    verify(&shared).expect("verify");
    let copies = |p: &KernelProgram| {
        p.buffers
            .iter()
            .filter(|b| b.name.contains("rhs, contiguous"))
            .count()
    };
    assert_eq!(copies(&shared), 1, "{}", print_kernel_program(&shared));
    assert_eq!(copies(&alone), 1);
    let inputs: BTreeMap<String, Tensor> = [
        ("a1".to_string(), tensor(&[m, k], 1, DType::F32)),
        ("a2".to_string(), tensor(&[m + 2, k], 2, DType::F32)),
        ("b".to_string(), tensor(&[n, k], 3, DType::F32)),
    ]
    .into();
    let got = run_kernel_program(&shared, &inputs).expect("shared");
    let want = run_kernel_program(&alone, &inputs).expect("alone")["c2"].to_f64_vec();
    let c2 = got["c2"].to_f64_vec();
    assert_eq!(c2.len(), want.len());
    for (x, y) in want.iter().zip(&c2) {
        assert!(!x.is_nan(), "NaN");
        assert_eq!(x.to_bits(), y.to_bits(), "{x} vs {y}");
    }
    // c1 against the definition (f32 products summed in order, computed in f64 here: within
    // f32 rounding of the sum).
    let (a1, b) = (inputs["a1"].to_f64_vec(), inputs["b"].to_f64_vec());
    let c1 = got["c1"].to_f64_vec();
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..k).map(|p| a1[i * k + p] * b[j * k + p]).sum();
            assert!(
                (c1[i * n + j] - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "c1[{i},{j}]"
            );
        }
    }
}

/// A top-level product whose rows `cpu_parallel` spreads over threads: the tiles of rows are
/// spread instead (the loop over them is `Parallel`) and the result is bitwise the untiled one.
#[test]
fn parallel_rows_are_tiled_in_parallel() {
    let (sa, sb) = (&[67usize, 64][..], &[64usize, 40][..]);
    let (_, k) = product(DType::F32, sa, sb);
    let k = tttc_passes::cpu_parallel::CpuParallel
        .run(&k)
        .expect("cpu_parallel");
    let parallel = |p: &KernelProgram| {
        p.body
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Stmt::Loop {
                        schedule: Schedule::Parallel,
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(
        parallel(&k),
        1,
        "rows not parallel\n{}",
        print_kernel_program(&k)
    );
    let inputs: BTreeMap<String, Tensor> = [
        ("a".to_string(), tensor(sa, 1, DType::F32)),
        ("b".to_string(), tensor(sb, 2, DType::F32)),
    ]
    .into();
    let want = run_kernel_program(&k, &inputs).expect("untiled")["c"].to_f64_vec();
    let t = RegisterTile {
        tile: Some(TileShape { rows: 8, lanes: 16 }),
    }
    .run(&k)
    .expect("tile");
    verify(&t).expect("verify");
    let text = print_kernel_program(&t);
    assert!(count_vector_loops(&t.body) > 0, "not tiled\n{text}");
    assert!(
        text.contains("in 0..8 (Parallel)"),
        "tiles of rows not parallel\n{text}"
    );
    let got = run_kernel_program(&t, &inputs).expect("tiled")["c"].to_f64_vec();
    assert_eq!(want.len(), got.len());
    for (x, y) in want.iter().zip(&got) {
        assert!(!x.is_nan(), "NaN");
        assert_eq!(x.to_bits(), y.to_bits(), "{x} vs {y}");
    }
}
