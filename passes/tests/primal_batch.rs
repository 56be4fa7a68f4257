//! Batching (`tttc_passes::batch`) checked against its definition: a batched graph evaluated on
//! a block of `k` tokens must give, in row `i`, what the per-token graph gives on token `i`
//! (unbatched inputs shared by every row). Both sides run through the reference interpreter;
//! the batched graph is built with the symbolic extent `$k` and specialized, as the scan's step
//! graph is. Every op kind is covered, with every batched/unbatched mix of operands and
//! broadcasting between per-token shapes of different ranks.
//!
//! Tolerance: 1e-12 · (1 + |expected|) per element, f64. Row `i` of a batched op computes the
//! same arithmetic in the same order as the per-token op, so the results are in fact identical.

mod common;

use common::{Inputs, B};
use std::collections::BTreeMap;
use tttc_ir::program::specialize_graph;
use tttc_ir::{
    BinaryOp, DType, Dim, Graph, Op, ReduceOp, Shape, TensorType, UnaryOp, MINI_BATCH_DIM,
};
use tttc_passes::batch::{batch_graph, batch_outputs, BatchError};
use tttc_runtime::Tensor;

const TOL: f64 = 1e-12;

#[path = "common/primal.rs"]
mod primal;

/// Known extents of a per-token input.
fn dims_of(g: &Graph, id: tttc_ir::NodeId) -> Vec<usize> {
    common::dims(&g.tensor_type(id).expect("tensor").shape)
}

/// Batches `src` over `$k` with the given flags, into a fresh graph whose inputs are named as
/// in `src`; every output batched.
fn batched(src: &Graph, flags: &[bool]) -> Result<Graph, BatchError> {
    let k = Dim::sym(MINI_BATCH_DIM);
    let mut dst = Graph::new();
    let mut inputs = Vec::new();
    for (&id, &b) in src.inputs().iter().zip(flags) {
        let t = src.tensor_type(id).expect("tensor").clone();
        let shape = if b {
            let mut d = vec![k.clone()];
            d.extend(t.shape.0.iter().cloned());
            Shape(d)
        } else {
            t.shape.clone()
        };
        let name = src.input_name(id).expect("name");
        inputs.push(
            dst.add_input(name, TensorType::new(t.dtype, shape))
                .expect("input"),
        );
    }
    let outs = batch_graph(src, flags, &k, &mut dst, &inputs)?;
    for (o, n) in src.outputs().iter().zip(outs) {
        dst.add_output(&o.name, n);
    }
    tttc_ir::verify::verify_graph(&dst, "batched").expect("the batched graph verifies");
    Ok(dst)
}

/// Row `i` of a `[k, ...]` tensor.
fn row(t: &Tensor, i: usize) -> Tensor {
    let shape = t.shape()[1..].to_vec();
    let n: usize = shape.iter().product();
    let data = t.to_f64_vec()[i * n..(i + 1) * n].to_vec();
    Tensor::from_f64(shape, data).expect("row")
}

/// Checks the batched form of `src` (flags per input) against row-by-row evaluation, for
/// `k` in 1 and 3. Inputs are uniform in `[lo, hi)`.
fn check(src: &Graph, flags: &[bool], what: &str) {
    check_range(src, flags, what, -1.0, 1.0);
}

fn check_range(src: &Graph, flags: &[bool], what: &str, lo: f64, hi: f64) {
    let dst = batched(src, flags).unwrap_or_else(|e| panic!("{what}: {e}"));
    for k in [1usize, 3] {
        let spec = specialize_graph(&dst, &BTreeMap::from([(MINI_BATCH_DIM.to_string(), k)]));
        let mut block_inputs: Inputs = BTreeMap::new();
        for (n, (&id, &b)) in src.inputs().iter().zip(flags).enumerate() {
            let mut shape = dims_of(src, id);
            if b {
                shape.insert(0, k);
            }
            let name = src.input_name(id).expect("name").to_string();
            let seed = 100 * n as u64 + k as u64;
            block_inputs.insert(name, primal::rand_tensor(seed, &shape, lo, hi));
        }
        let got = common::eval(&spec, &block_inputs);
        for i in 0..k {
            let token_inputs: Inputs = src
                .inputs()
                .iter()
                .zip(flags)
                .map(|(&id, &b)| {
                    let name = src.input_name(id).expect("name").to_string();
                    let t = &block_inputs[&name];
                    (name, if b { row(t, i) } else { t.clone() })
                })
                .collect();
            let want = common::eval(src, &token_inputs);
            for o in src.outputs() {
                let g = row(&got[&o.name], i);
                let w = &want[&o.name];
                assert_eq!(g.shape(), w.shape(), "{what}: `{}` row {i} shape", o.name);
                for (j, (a, b)) in g.to_f64_vec().iter().zip(w.to_f64_vec()).enumerate() {
                    assert!(
                        (a - b).abs() <= TOL * (1.0 + b.abs()),
                        "{what} (k={k}): `{}` row {i} element {j}: batched {a}, per token {b}",
                        o.name
                    );
                }
            }
        }
    }
}

/// Every batching of two operands: first, second, both.
const FLAGS2: [[bool; 2]; 3] = [[true, false], [false, true], [true, true]];

#[test]
fn unary_ops() {
    let mut b = B::new();
    let x = b.input("x", &[2, 3]);
    let pos = b.un(UnaryOp::Exp, x);
    let mut outs = Vec::new();
    for fun in UnaryOp::ALL {
        let arg = match fun {
            UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Log => pos,
            _ => x,
        };
        outs.push((fun.name(), b.un(fun, arg)));
    }
    let mut g = b.g;
    for (name, n) in outs {
        g.add_output(name, n);
    }
    check(&g, &[true], "unary");
}

#[test]
fn binary_ops_with_broadcasting() {
    let pairs: &[(&[usize], &[usize])] = &[
        (&[], &[3]),
        (&[3], &[]),
        (&[], &[]),
        (&[2, 3], &[3]),
        (&[3], &[2, 3]),
        (&[2, 1], &[1, 3]),
        (&[2, 3], &[]),
        (&[4, 2, 3], &[2, 3]),
        (&[1], &[4, 2, 1]),
    ];
    for fun in BinaryOp::ALL {
        for (sa, sb) in pairs {
            for flags in FLAGS2 {
                let mut b = B::new();
                let x = b.input("a", sa);
                let y = b.input("b", sb);
                // A positive base for pow.
                let x = if fun == BinaryOp::Pow {
                    b.un(UnaryOp::Exp, x)
                } else {
                    x
                };
                let r = b.bin(fun, x, y);
                let g = b.finish("r", r);
                check(
                    &g,
                    &flags,
                    &format!("{} {sa:?} {sb:?} {flags:?}", fun.name()),
                );
            }
        }
    }
}

#[test]
fn matmul_with_batch_axes() {
    let pairs: &[(&[usize], &[usize])] = &[
        (&[2, 3], &[3, 4]),
        (&[5, 2, 3], &[3, 4]),
        (&[2, 3], &[5, 3, 4]),
        (&[1, 2, 3], &[5, 3, 4]),
        (&[5, 2, 3], &[5, 3, 4]),
        (&[1, 3], &[3, 1]),
    ];
    for (sa, sb) in pairs {
        for flags in FLAGS2 {
            let mut b = B::new();
            let x = b.input("a", sa);
            let y = b.input("b", sb);
            let r = b.matmul(x, y);
            let g = b.finish("r", r);
            check(&g, &flags, &format!("matmul {sa:?} {sb:?} {flags:?}"));
        }
    }
}

#[test]
fn transpose_and_permute() {
    for shape in [&[2usize, 3][..], &[4, 2, 3]] {
        let mut b = B::new();
        let x = b.input("x", shape);
        let r = b.transpose(x);
        let g = b.finish("r", r);
        check(&g, &[true], &format!("transpose {shape:?}"));
    }
    let perms: &[(&[usize], Vec<usize>)] = &[
        (&[2, 3, 4], vec![2, 0, 1]),
        (&[2, 3, 4], vec![0, 2, 1]),
        (&[3], vec![0]),
        (&[], vec![]),
    ];
    for (shape, perm) in perms {
        let mut b = B::new();
        let x = b.input("x", shape);
        let r = b.op(Op::Permute { perm: perm.clone() }, &[x]);
        let g = b.finish("r", r);
        check(&g, &[true], &format!("permute {perm:?}"));
    }
}

#[test]
fn reductions() {
    for fun in [ReduceOp::Sum, ReduceOp::Mean] {
        for (shape, axis) in [
            (&[2usize, 3][..], 0),
            (&[2, 3], 1),
            (&[3], 0),
            (&[2, 3, 4], 2),
        ] {
            let mut b = B::new();
            let x = b.input("x", shape);
            let r = b.reduce(fun, x, axis);
            let g = b.finish("r", r);
            check(
                &g,
                &[true],
                &format!("{} {shape:?} axis {axis}", fun.name()),
            );
        }
    }
}

#[test]
fn expand_sum_to_and_reshape() {
    let expands: &[(&[usize], &[usize])] = &[
        (&[3], &[2, 3]),
        (&[2, 1], &[2, 3]),
        (&[], &[2, 3]),
        (&[1], &[4]),
        (&[2, 3], &[2, 3]),
        (&[1, 3], &[4, 2, 3]),
    ];
    for (from, to) in expands {
        let mut b = B::new();
        let x = b.input("x", from);
        let r = b.op(
            Op::Expand {
                shape: Shape::known(to),
            },
            &[x],
        );
        let g = b.finish("r", r);
        check(&g, &[true], &format!("expand {from:?} -> {to:?}"));
    }
    let sums: &[(&[usize], &[usize])] = &[
        (&[2, 3], &[3]),
        (&[2, 3], &[2, 1]),
        (&[2, 3], &[]),
        (&[4, 2, 3], &[1, 3]),
        (&[4, 2, 3], &[2, 1]),
        (&[2, 3], &[2, 3]),
        (&[2, 3], &[1, 1]),
        (&[3], &[1]),
    ];
    for (from, to) in sums {
        let mut b = B::new();
        let x = b.input("x", from);
        let r = b.op(
            Op::SumTo {
                shape: Shape::known(to),
            },
            &[x],
        );
        let g = b.finish("r", r);
        check(&g, &[true], &format!("sum_to {from:?} -> {to:?}"));
    }
    let reshapes: &[(&[usize], &[usize])] = &[
        (&[2, 3], &[6]),
        (&[2, 3], &[3, 2]),
        (&[6], &[1, 2, 3]),
        (&[1, 1], &[]),
        (&[], &[1]),
    ];
    for (from, to) in reshapes {
        let mut b = B::new();
        let x = b.input("x", from);
        let r = b.op(
            Op::Reshape {
                shape: Shape::known(to),
            },
            &[x],
        );
        let g = b.finish("r", r);
        check(&g, &[true], &format!("reshape {from:?} -> {to:?}"));
    }
}

#[test]
fn leaves_and_unbatched_subgraphs() {
    // x batched; y unbatched feeds a chain that stays unbatched; leaves mix in.
    let mut b = B::new();
    let x = b.input("x", &[3]);
    let y = b.input("y", &[3]);
    let iota =
        b.g.add_leaf(Op::Iota { len: Dim::Known(3) }, DType::F64)
            .expect("iota");
    let ext =
        b.g.add_leaf(Op::Extent { dim: Dim::Known(3) }, DType::F64)
            .expect("extent");
    let ey = b.un(UnaryOp::Exp, y);
    let shared = b.mul(ey, iota);
    let shared = b.add(shared, ext);
    let xi = b.mul(x, shared);
    let r = b.add_c(xi, 0.25);
    let mut g = b.finish("r", r);
    g.add_output("shared", shared);
    g.add_output("x", x);
    g.add_output("y", y);
    check(&g, &[true, false], "leaves");
    // The unbatched part is copied once, not batched.
    let lazy = {
        let k = Dim::Known(3);
        let mut dst = Graph::new();
        let x = dst
            .add_input("x", TensorType::new(DType::F64, Shape::known(&[3, 3])))
            .expect("x");
        let y = dst
            .add_input("y", TensorType::new(DType::F64, Shape::known(&[3])))
            .expect("y");
        batch_outputs(&g, &[true, false], &k, &mut dst, &[x, y]).expect("batches")
    };
    let flags: Vec<bool> = lazy.iter().map(|o| o.batched).collect();
    assert_eq!(flags, [true, false, true, false]);
}

#[test]
fn a_layer_norm_and_its_gradient() {
    // The shapes autodiff produces (sum_to, expand, keep-dims reductions) on a realistic graph.
    let mut b = B::new();
    let w = b.input("W", &[4, 3]);
    let bias = b.input("b", &[1, 3]);
    let lw = b.input("lw", &[3]);
    let lb = b.input("lb", &[3]);
    let x = b.input("x", &[1, 4]);
    let y = b.input("y", &[1, 3]);
    let h = b.matmul(x, w);
    let h = b.add(h, bias);
    let h = b.un(UnaryOp::GeluTanh, h);
    let z = b.layer_norm(h, lw, lb, 1e-6);
    let d = b.sub(z, y);
    let loss = b.half_sq(d);
    let g = b.finish("loss", loss);
    let names = common::input_names(&g)[..2].to_vec();
    let grad = tttc_passes::gradient_graph(&g, "loss", &names).expect("gradient");
    for flags in [
        [false, false, false, false, true, true],
        [true, true, false, false, true, true],
        [true, false, true, false, false, true],
    ] {
        check(&g, &flags, &format!("layer-norm loss {flags:?}"));
        check(&grad, &flags, &format!("layer-norm gradient {flags:?}"));
    }
}

#[test]
fn mix_is_copied_when_unbatched_and_refused_when_batched() {
    let mut b = B::new();
    let w = b.input("w", &[2, 3]);
    let x = b.input("x", &[3, 4]);
    let m = b.op(Op::Mix, &[w, x]);
    let g = b.finish("m", m);
    check(&g, &[false, false], "unbatched mix");
    for flags in FLAGS2 {
        let err = batched(&g, &flags).expect_err("mix cannot be batched");
        assert!(
            matches!(err, BatchError::Unsupported { op: "mix", .. }),
            "{err}"
        );
    }
    let mut b = B::new();
    let w = b.input("w", &[2, 3]);
    let u = b.input("u", &[3, 4]);
    let d = b.input("d", &[3, 5]);
    let m = b.op(Op::MixOuter, &[w, u, d]);
    let g = b.finish("m", m);
    let err = batched(&g, &[false, true, false]).expect_err("mix_outer cannot be batched");
    assert!(
        matches!(
            err,
            BatchError::Unsupported {
                op: "mix_outer",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn misfit_inputs_are_errors() {
    let mut b = B::new();
    let x = b.input("x", &[2]);
    let r = b.un(UnaryOp::Tanh, x);
    let g = b.finish("r", r);
    let mut dst = Graph::new();
    let wrong = dst
        .add_input("x", TensorType::new(DType::F64, Shape::known(&[2])))
        .expect("x");
    let err = batch_graph(&g, &[true], &Dim::Known(4), &mut dst, &[wrong]).expect_err("type");
    assert!(matches!(err, BatchError::InputType { .. }), "{err}");
    assert!(err.to_string().contains("[4, 2]"), "{err}");
    let err = batch_graph(&g, &[], &Dim::Known(4), &mut dst, &[wrong]).expect_err("count");
    assert!(matches!(err, BatchError::InputCount { .. }), "{err}");
}
