//! `vjp_graph` and the closure of autodiff: derivative rules of the ops the primal form and the
//! dual form emit (`mix`, `mix_outer`), of slices and shifts (causal convolutions of layers),
//! VJPs of graphs with several outputs, and second order (the VJP of a gradient graph, through
//! the derivative rules' own ops: `step`, the GELU derivative, `scatter_add`, `sum_to`...), all
//! against central finite differences on the graph interpreter (f64).
//!
//! Tolerance: `|ad − fd| ≤ 1e-6 |fd| + 1e-8 (1 + scale)` as in the other finite-difference
//! tests (`common::check_fd`): with h = 1e-6 and O(1) values the truncation error is ~1e-13 and
//! the rounding noise ~1e-10 · scale; a wrong rule is off by O(0.1..1).

mod common;

use common::*;
use std::collections::BTreeMap;

use tttc_ir::program::specialize_graph;
use tttc_ir::{BinaryOp, DType, Dim, Graph, Op, ReduceOp, Shape, TensorType, UnaryOp};
use tttc_passes::autodiff::{gradient_graph, vjp_graph};

fn fd(g: &Graph, inputs: &Inputs, wrt: &[&str]) {
    let loss = scalar(g, inputs, "loss");
    let wrt: Vec<String> = wrt.iter().map(|s| s.to_string()).collect();
    check_fd(g, "loss", inputs, &wrt, 1e-6, 1e-8, loss.abs()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn mix_and_mix_outer_match_finite_differences() {
    let mut b = B::new();
    let w = b.input("w", &[3, 4]);
    let x = b.input("x", &[4, 2, 3]);
    let c = b.input("c", &[3, 2, 3]);
    let m = b.mix(w, x);
    let t = b.un(UnaryOp::Tanh, m);
    let p = b.mul(t, c);
    let loss = b.sum_all(p);
    let g = b.finish("loss", loss);
    fd(&g, &random_inputs(&g, 1), &["w", "x", "c"]);

    let mut b = B::new();
    let w = b.input("w", &[3, 4]);
    let u = b.input("u", &[4, 2]);
    let d = b.input("d", &[4, 5]);
    let c = b.input("c", &[3, 2, 5]);
    let m = b.mix_outer(w, u, d);
    let t = b.un(UnaryOp::Sin, m);
    let p = b.mul(t, c);
    let loss = b.sum_all(p);
    let g = b.finish("loss", loss);
    fd(&g, &random_inputs(&g, 2), &["w", "u", "d"]);
}

#[test]
fn slices_and_shifts_match_finite_differences() {
    let mut b = B::new();
    let x = b.input("x", &[2, 6, 3]);
    let c = b.input("c", &[2, 3, 3]);
    let s = b.op(
        Op::Slice {
            axis: 1,
            start: 2,
            len: 3,
        },
        &[x],
    );
    let t = b.un(UnaryOp::Tanh, s);
    let p = b.mul(t, c);
    let loss = b.sum_all(p);
    let g = b.finish("loss", loss);
    fd(&g, &random_inputs(&g, 3), &["x"]);

    for with_fill in [false, true] {
        let mut b = B::new();
        let x = b.input("x", &[2, 5, 3]);
        let fill = b.input("fill", &[2, 2, 3]);
        let c = b.input("c", &[2, 5, 3]);
        let operands = if with_fill { vec![x, fill] } else { vec![x] };
        let s = b.op(Op::Shift { axis: 1, by: 2 }, &operands);
        let t = b.un(UnaryOp::Tanh, s);
        let p = b.mul(t, c);
        let loss = b.sum_all(p);
        let g = b.finish("loss", loss);
        let wrt: &[&str] = if with_fill { &["x", "fill"] } else { &["x"] };
        fd(&g, &random_inputs(&g, 4), wrt);
    }
}

/// With known extents, the cotangents of `slice` and `shift` are zero padding by shifts
/// (linear in the size), not products with a 0/1 selection matrix built from `iota`s (quadratic
/// in the axis' extent); `slices_and_shifts_match_finite_differences` checks their values.
#[test]
fn slice_and_shift_cotangents_are_linear_when_extents_are_known() {
    let ops = [
        Op::Slice {
            axis: 1,
            start: 2,
            len: 3,
        },
        Op::Shift { axis: 1, by: 2 },
    ];
    for op in ops {
        let mut b = B::new();
        let x = b.input("x", &[2, 6, 3]);
        let y = b.op(op, &[x]);
        let g = b.finish("y", y);
        let v = vjp_graph(&g, &["y".to_string()], &["x".to_string()]).expect("vjp");
        for id in v.node_ids() {
            let op = &v.node(id).op;
            assert!(
                !matches!(op, Op::Iota { .. } | Op::Mix),
                "selection matrix in the VJP: {op:?}"
            );
        }
    }
}

/// Along an axis whose extent is symbolic (a model's sequence length, as gradient programs are
/// derived before shapes are bound), the cotangent of a zero-filled `shift` is an `unshift`
/// (linear), not a product with an `[L, L]` selection matrix (quadratic: at L = 2048 the 125M
/// model's causal convolutions made that most of its gradient's time). Its values, once `L` is
/// bound, equal those of the known-extent VJP (slices and zero padding, built independently).
#[test]
fn shift_cotangent_along_a_symbolic_axis_is_an_unshift() {
    for by in [0, 1, 3] {
        let mut b = B::new();
        let x = b.input_shape(
            "x",
            Shape(vec![Dim::Known(2), Dim::sym("L"), Dim::Known(3)]),
        );
        let y = b.op(Op::Shift { axis: 1, by }, &[x]);
        let g = b.finish("y", y);
        let v = vjp_graph(&g, &["y".to_string()], &["x".to_string()]).expect("vjp");
        let mut unshifts = 0;
        for id in v.node_ids() {
            let op = &v.node(id).op;
            assert!(
                !matches!(op, Op::Iota { .. } | Op::Mix),
                "selection matrix in the VJP: {op:?}"
            );
            unshifts += usize::from(matches!(op, Op::Unshift { .. }));
        }
        assert_eq!(unshifts, usize::from(by > 0), "by = {by}");

        let n = 6;
        let bound = specialize_graph(&v, &BTreeMap::from([("L".to_string(), n)]));
        let mut b = B::new();
        let x = b.input("x", &[2, n, 3]);
        let y = b.op(Op::Shift { axis: 1, by }, &[x]);
        let known = b.finish("y", y);
        let reference = vjp_graph(&known, &["y".to_string()], &["x".to_string()]).expect("vjp");
        let inputs = random_inputs(&reference, 7);
        let names = v.output_names();
        assert_eq!(names, reference.output_names());
        for name in names {
            assert_close(
                &output(&bound, &inputs, &name),
                &output(&reference, &inputs, &name),
                0.0,
            );
        }
    }
}

/// `unshift` (the shift back that reverse mode emits) has its own derivative rule, a shift:
/// first and second order against finite differences, the last positions zero.
#[test]
fn unshift_matches_finite_differences() {
    let mut b = B::new();
    let x = b.input("x", &[2, 5, 3]);
    let c = b.input("c", &[2, 5, 3]);
    let s = b.op(Op::Unshift { axis: 1, by: 2 }, &[x]);
    let t = b.un(UnaryOp::Sin, s);
    let p = b.mul(t, c);
    let loss = b.sum_all(p);
    let g = b.finish("loss", loss);
    let inputs = random_inputs(&g, 8);
    fd(&g, &inputs, &["x", "c"]);

    let grad = gradient_graph(&g, "loss", &["x".to_string()]).expect("gradient");
    let dx_name = grad
        .output_names()
        .into_iter()
        .find(|n| n != "loss")
        .expect("dx");
    let dx = output(&grad, &inputs, &dx_name);
    // x's positions 0 and 1 along the axis never reach the output.
    for o in 0..2 {
        for t in 0..2 {
            for i in 0..3 {
                assert_eq!(dx[(o * 5 + t) * 3 + i], 0.0, "dx[{o}, {t}, {i}]");
            }
        }
    }
    // Second order: the gradient graph (with its shift) differentiated again.
    let mut second = grad.clone();
    let dx_node = second.output_by_name(&dx_name).expect("dx node");
    let w = second
        .add_input("w", TensorType::new(DType::F64, Shape::known(&[2, 5, 3])))
        .expect("w");
    let wd = second
        .add(Op::Binary { fun: BinaryOp::Mul }, &[dx_node, w])
        .expect("mul");
    let mut total = wd;
    for axis in (0..3).rev() {
        total = second
            .add(
                Op::Reduce {
                    fun: ReduceOp::Sum,
                    axis,
                },
                &[total],
            )
            .expect("sum");
    }
    let total = second
        .add(
            Op::Reshape {
                shape: Shape::known(&[]),
            },
            &[total],
        )
        .expect("scalar");
    second.add_output("second", total);
    let mut inputs2 = inputs.clone();
    inputs2.insert("w".into(), random_inputs(&g, 9)["x"].clone());
    check_fd(
        &second,
        "second",
        &inputs2,
        &["x".to_string()],
        1e-6,
        1e-8,
        1.0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// A graph with two outputs: its VJP with cotangents `ct_y`, `ct_z` equals the gradient of
/// `⟨ct_y, y⟩ + ⟨ct_z, z⟩`, which finite differences check.
#[test]
fn vjp_of_several_outputs_is_the_gradient_of_their_pairing() {
    let build = |pair: bool| {
        let mut b = B::new();
        let x = b.input("x", &[3, 4]);
        let w = b.input("w", &[4, 2]);
        let y = b.matmul(x, w);
        let y = b.un(UnaryOp::GeluTanh, y);
        let z = b.un(UnaryOp::Exp, x);
        let z = b.sum(z, 1);
        if pair {
            let cy = b.input("ct_y", &[3, 2]);
            let cz = b.input("ct_z", &[3, 1]);
            let py = b.mul(y, cy);
            let pz = b.mul(z, cz);
            let sy = b.sum_all(py);
            let sz = b.sum_all(pz);
            let loss = b.add(sy, sz);
            b.finish("loss", loss)
        } else {
            let mut g = b.finish("y", y);
            g.add_output("z", z);
            g
        }
    };
    let g = build(false);
    let vjp = vjp_graph(&g, &["y".into(), "z".into()], &["x".into(), "w".into()]).expect("vjp");
    tttc_ir::verify::verify_graph(&vjp, "vjp").expect("verifies");
    let paired = build(true);
    let inputs = random_inputs(&paired, 5);
    fd(&paired, &inputs, &["x", "w"]);
    let want = eval(
        &gradient_graph(&paired, "loss", &["x".into(), "w".into()]).expect("grad"),
        &inputs,
    );
    let got = eval(&vjp, &inputs);
    for name in ["x", "w"] {
        assert_close(
            got[&format!("d_{name}")].as_f64().expect("f64"),
            want[&format!("grad_{name}")].as_f64().expect("f64"),
            1e-12,
        );
    }
}

/// Second order: the VJP of a gradient graph (a per-token inner loss of an MLP with GELU and
/// relu, as a scan's step differentiates it) against finite differences of that gradient.
#[test]
fn autodiff_is_closed_over_its_own_rules() {
    let mut b = B::new();
    let x = b.input("x", &[2, 3]);
    let w1 = b.input("w1", &[3, 4]);
    let w2 = b.input("w2", &[4, 3]);
    let h = b.matmul(x, w1);
    let a = b.un(UnaryOp::GeluTanh, h);
    let r = b.un(UnaryOp::Relu, a);
    let s = b.un(UnaryOp::Silu, h);
    let hh = b.add(r, s);
    let y = b.matmul(hh, w2);
    let d = b.sub(y, x);
    let sq = b.half_sq(d);
    let mx = b.bin(BinaryOp::Max, sq, x);
    let loss = b.sum_all(mx);
    let g = b.finish("loss", loss);
    let grad = gradient_graph(&g, "loss", &["w1".into(), "w2".into()]).expect("grad");

    // loss2 = ⟨c1, grad_w1⟩ + ⟨c2, grad_w2⟩ as a graph over the gradient graph's inputs.
    let vjp = vjp_graph(
        &grad,
        &["grad_w1".into(), "grad_w2".into()],
        &["x".into(), "w1".into(), "w2".into()],
    )
    .expect("second-order vjp");
    tttc_ir::verify::verify_graph(&vjp, "vjp").expect("verifies");
    let inputs = random_inputs(&vjp, 7);
    let got = eval(&vjp, &inputs);
    let pairing = |ins: &Inputs| -> f64 {
        let outs = eval(&grad, ins);
        ["w1", "w2"]
            .iter()
            .map(|w| {
                let gw = outs[&format!("grad_{w}")].as_f64().expect("f64").to_vec();
                let c = ins[&format!("ct_grad_{w}")].as_f64().expect("f64").to_vec();
                gw.iter().zip(&c).map(|(a, b)| a * b).sum::<f64>()
            })
            .sum()
    };
    let base = pairing(&inputs);
    for name in ["x", "w1", "w2"] {
        let ad = got[&format!("d_{name}")].as_f64().expect("f64").to_vec();
        let data = inputs[name].as_f64().expect("f64").to_vec();
        let shape = inputs[name].shape().to_vec();
        for (i, &a) in ad.iter().enumerate() {
            let at = |delta: f64| {
                let mut d = data.clone();
                d[i] += delta;
                let mut ins = inputs.clone();
                ins.insert(name.to_string(), t(&shape, &d));
                pairing(&ins)
            };
            let f = (at(H) - at(-H)) / (2.0 * H);
            let tol = 1e-6 * f.abs() + 1e-8 * (1.0 + base.abs());
            assert!(
                (a - f).abs() <= tol,
                "d_{name}[{i}]: second-order autodiff {a:e}, finite differences {f:e}"
            );
        }
    }
}

#[test]
fn vjp_of_an_unknown_output_is_a_typed_error() {
    // The error names the output rather than panicking.
    let mut b = B::new();
    let x = b.input("x", &[2]);
    let y = b.un(UnaryOp::Exp, x);
    let g = b.finish("y", y);
    let e = vjp_graph(&g, &["nope".into()], &["x".into()]).expect_err("unknown output");
    assert!(e.to_string().contains("nope"), "{e}");
}
