//! Derivative rules on tiny graphs, against gradients computed by hand; structure of the
//! gradient graph; errors.

mod common;

use common::*;
use std::collections::BTreeMap;
use tttc_ir::{BinaryOp, DType, Dim, Graph, Op, Shape, TensorType, UnaryOp};
use tttc_passes::autodiff::{gradient_graph, AutodiffError};

fn names(ns: &[&str]) -> Vec<String> {
    ns.iter().map(|s| s.to_string()).collect()
}

/// Gradients of `g`'s output `loss` w.r.t. `wrt`, evaluated at `inputs`.
fn grads(g: &Graph, inputs: &Inputs, wrt: &[&str]) -> BTreeMap<String, Vec<f64>> {
    let grad = gradient_graph(g, "loss", &names(wrt)).unwrap_or_else(|e| panic!("{e}"));
    tttc_ir::verify::verify_graph(&grad, "grad").unwrap_or_else(|e| panic!("{e}"));
    eval(&grad, inputs)
        .into_iter()
        .map(|(k, v)| (k, v.as_f64().expect("f64").to_vec()))
        .collect()
}

fn count_ops(g: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    g.node_ids()
        .into_iter()
        .filter(|&id| pred(&g.node(id).op))
        .count()
}

#[test]
fn unary_rules_match_closed_forms() {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let gelu_d = move |x: f64| {
        let t = (c * (x + 0.044715 * x * x * x)).tanh();
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
    };
    let anywhere = [-0.7, 0.0, 0.3, 1.2];
    let positive = [0.5, 1.0, 2.5, 4.0];
    type D = fn(f64) -> f64;
    type Case<'a> = (UnaryOp, &'a [f64], Box<dyn Fn(f64) -> f64>);
    let cases: Vec<Case> = vec![
        (UnaryOp::Neg, &anywhere, Box::new((|_| -1.0) as D)),
        (
            UnaryOp::Sqrt,
            &positive,
            Box::new((|x: f64| 0.5 / x.sqrt()) as D),
        ),
        (
            UnaryOp::Rsqrt,
            &positive,
            Box::new((|x: f64| -0.5 * x.powf(-1.5)) as D),
        ),
        (UnaryOp::Exp, &anywhere, Box::new((|x: f64| x.exp()) as D)),
        (UnaryOp::Log, &positive, Box::new((|x: f64| 1.0 / x) as D)),
        (
            UnaryOp::Tanh,
            &anywhere,
            Box::new((|x: f64| 1.0 - x.tanh().powi(2)) as D),
        ),
        (
            UnaryOp::Sigmoid,
            &anywhere,
            Box::new(move |x| sig(x) * (1.0 - sig(x))),
        ),
        (
            UnaryOp::Silu,
            &anywhere,
            Box::new(move |x| sig(x) + x * sig(x) * (1.0 - sig(x))),
        ),
        // relu'(0) = 0 by convention (step(0) = 0).
        (
            UnaryOp::Relu,
            &anywhere,
            Box::new((|x: f64| if x > 0.0 { 1.0 } else { 0.0 }) as D),
        ),
        (UnaryOp::GeluTanh, &anywhere, Box::new(gelu_d)),
        (UnaryOp::Step, &anywhere, Box::new((|_| 0.0) as D)),
        // floor is piecewise constant: zero derivative (also at the jumps, by convention).
        (
            UnaryOp::Floor,
            &[-1.5, -1.0, 0.0, 0.3, 2.0],
            Box::new((|_| 0.0) as D),
        ),
        (UnaryOp::Sin, &anywhere, Box::new((|x: f64| x.cos()) as D)),
        (UnaryOp::Cos, &anywhere, Box::new((|x: f64| -x.sin()) as D)),
        // abs'(0) = 0 by convention (torch.sign(0) = 0).
        (
            UnaryOp::Abs,
            &anywhere,
            Box::new(
                (|x: f64| {
                    if x > 0.0 {
                        1.0
                    } else if x < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                }) as D,
            ),
        ),
        (UnaryOp::Softplus, &anywhere, Box::new(sig as D)),
    ];
    assert_eq!(cases.len(), UnaryOp::ALL.len(), "every unary op is covered");
    for (fun, xs, d) in cases {
        let mut b = B::new();
        let x = b.input("x", &[xs.len()]);
        let y = b.un(fun, x);
        let l = b.sum_all(y);
        let g = b.finish("loss", l);
        let inputs = Inputs::from([("x".to_string(), t(&[xs.len()], xs))]);
        let got = &grads(&g, &inputs, &["x"])["grad_x"];
        let want: Vec<f64> = xs.iter().map(|&x| d(x)).collect();
        assert_close(got, &want, 1e-12);
    }
}

#[test]
fn gelu_tanh_rule_matches_finite_differences() {
    let mut b = B::new();
    let x = b.input("x", &[7]);
    let y = b.un(UnaryOp::GeluTanh, x);
    let l = b.sum_all(y);
    let g = b.finish("loss", l);
    let xs = [-3.0, -1.5, -0.4, 0.0, 0.2, 1.1, 2.7];
    let inputs = Inputs::from([("x".to_string(), t(&[7], &xs))]);
    check_fd(&g, "loss", &inputs, &names(&["x"]), 1e-6, 1e-8, 1.0).unwrap();
}

#[test]
fn mul_broadcast_sums_adjoints_to_operand_shapes() {
    // loss = sum(a * b), a [2,3], b [3] / [1,3] / [2,1]
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    for (bshape, bvals, want_a, want_b) in [
        (
            vec![3],
            vec![10.0, 20.0, 30.0],
            vec![10.0, 20.0, 30.0, 10.0, 20.0, 30.0],
            vec![5.0, 7.0, 9.0],
        ),
        (
            vec![1, 3],
            vec![10.0, 20.0, 30.0],
            vec![10.0, 20.0, 30.0, 10.0, 20.0, 30.0],
            vec![5.0, 7.0, 9.0],
        ),
        (
            vec![2, 1],
            vec![10.0, 20.0],
            vec![10.0, 10.0, 10.0, 20.0, 20.0, 20.0],
            vec![6.0, 15.0],
        ),
    ] {
        let mut bld = B::new();
        let an = bld.input("a", &[2, 3]);
        let bn = bld.input("b", &bshape);
        let p = bld.mul(an, bn);
        let l = bld.sum_all(p);
        let g = bld.finish("loss", l);
        let inputs = Inputs::from([
            ("a".to_string(), t(&[2, 3], &a)),
            ("b".to_string(), t(&bshape, &bvals)),
        ]);
        let gr = grads(&g, &inputs, &["a", "b"]);
        assert_close(&gr["grad_a"], &want_a, 1e-14);
        assert_close(&gr["grad_b"], &want_b, 1e-14);
    }
}

#[test]
fn add_sub_div_rules() {
    // loss = sum(a / b - b + a), a, b [2]
    let mut bld = B::new();
    let a = bld.input("a", &[2]);
    let b = bld.input("b", &[2]);
    let q = bld.div(a, b);
    let d = bld.sub(q, b);
    let s = bld.add(d, a);
    let l = bld.sum_all(s);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("a".to_string(), t(&[2], &[3.0, -1.0])),
        ("b".to_string(), t(&[2], &[2.0, 4.0])),
    ]);
    let gr = grads(&g, &inputs, &["a", "b"]);
    // d/da = 1/b + 1; d/db = -a/b^2 - 1
    assert_close(&gr["grad_a"], &[1.5, 1.25], 1e-14);
    assert_close(&gr["grad_b"], &[-0.75 - 1.0, 1.0 / 16.0 - 1.0], 1e-14);
}

#[test]
fn pow_rules_and_constant_exponent_needs_no_log() {
    // loss = sum(x ^ 3)
    let mut bld = B::new();
    let x = bld.input("x", &[3]);
    let three = bld.c(3.0);
    let p = bld.bin(BinaryOp::Pow, x, three);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([("x".to_string(), t(&[3], &[0.5, 2.0, -1.0]))]);
    let gr = grads(&g, &inputs, &["x"]);
    assert_close(&gr["grad_x"], &[0.75, 12.0, 3.0], 1e-14);
    let grad = gradient_graph(&g, "loss", &names(&["x"])).unwrap();
    let logs = count_ops(&grad, |op| matches!(op, Op::Unary { fun: UnaryOp::Log }));
    assert_eq!(logs, 0, "no ln x for a constant exponent");

    // loss = sum(x ^ y), both differentiated; y not in wrt -> still no log.
    let mut bld = B::new();
    let x = bld.input("x", &[2]);
    let y = bld.input("y", &[2]);
    let p = bld.bin(BinaryOp::Pow, x, y);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("x".to_string(), t(&[2], &[2.0, 3.0])),
        ("y".to_string(), t(&[2], &[3.0, 0.5])),
    ]);
    let gr = grads(&g, &inputs, &["x", "y"]);
    assert_close(&gr["grad_x"], &[3.0 * 4.0, 0.5 * 3f64.powf(-0.5)], 1e-14);
    assert_close(
        &gr["grad_y"],
        &[8.0 * 2f64.ln(), 3f64.sqrt() * 3f64.ln()],
        1e-14,
    );
    let only_x = gradient_graph(&g, "loss", &names(&["x"])).unwrap();
    assert_eq!(
        count_ops(&only_x, |op| matches!(op, Op::Unary { fun: UnaryOp::Log })),
        0
    );
}

#[test]
fn max_min_route_to_the_selected_operand_ties_to_the_first() {
    let av = [1.0, 2.0, 3.0];
    let bv = [1.0, 0.0, 5.0];
    for (fun, want_a, want_b) in [
        (BinaryOp::Max, [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]),
        (BinaryOp::Min, [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]),
    ] {
        let mut bld = B::new();
        let a = bld.input("a", &[3]);
        let b = bld.input("b", &[3]);
        let m = bld.bin(fun, a, b);
        let l = bld.sum_all(m);
        let g = bld.finish("loss", l);
        let inputs = Inputs::from([
            ("a".to_string(), t(&[3], &av)),
            ("b".to_string(), t(&[3], &bv)),
        ]);
        let gr = grads(&g, &inputs, &["a", "b"]);
        assert_close(&gr["grad_a"], &want_a, 0.0);
        assert_close(&gr["grad_b"], &want_b, 0.0);
    }
    // Broadcast: max(a [2,2], s [] ) routes and sums the scalar's share.
    let mut bld = B::new();
    let a = bld.input("a", &[2, 2]);
    let s = bld.input("s", &[]);
    let m = bld.bin(BinaryOp::Max, a, s);
    let l = bld.sum_all(m);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("a".to_string(), t(&[2, 2], &[0.0, 2.0, -1.0, 0.5])),
        ("s".to_string(), t(&[], &[0.5])),
    ]);
    let gr = grads(&g, &inputs, &["a", "s"]);
    assert_close(&gr["grad_a"], &[0.0, 1.0, 0.0, 1.0], 0.0);
    assert_close(&gr["grad_s"], &[2.0], 0.0);
}

#[test]
fn matmul_rules_with_batch_broadcasting() {
    // loss = sum(A @ B), A [2,3], B [3,2]: dA[i,k] = sum_j B[k,j], dB[k,j] = sum_i A[i,k]
    let av = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let bv = [1.0, -1.0, 2.0, 0.5, -3.0, 4.0];
    let mut bld = B::new();
    let a = bld.input("A", &[2, 3]);
    let b = bld.input("B", &[3, 2]);
    let p = bld.matmul(a, b);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("A".to_string(), t(&[2, 3], &av)),
        ("B".to_string(), t(&[3, 2], &bv)),
    ]);
    let gr = grads(&g, &inputs, &["A", "B"]);
    assert_close(&gr["grad_A"], &[0.0, 2.5, 1.0, 0.0, 2.5, 1.0], 1e-14);
    assert_close(&gr["grad_B"], &[5.0, 5.0, 7.0, 7.0, 9.0, 9.0], 1e-14);

    // A [2,1,3] (batch 2) @ B [3,1]: dB[k] = sum over batch and rows of A[.., k];
    // dA[b,0,k] = B[k].
    let mut bld = B::new();
    let a = bld.input("A", &[2, 1, 3]);
    let b = bld.input("B", &[3, 1]);
    let p = bld.matmul(a, b);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("A".to_string(), t(&[2, 1, 3], &av)),
        ("B".to_string(), t(&[3, 1], &[7.0, 8.0, 9.0])),
    ]);
    let gr = grads(&g, &inputs, &["A", "B"]);
    assert_close(&gr["grad_A"], &[7.0, 8.0, 9.0, 7.0, 8.0, 9.0], 1e-14);
    assert_close(&gr["grad_B"], &[5.0, 7.0, 9.0], 1e-14);
}

#[test]
fn transpose_reshape_expand_sum_to_rules() {
    let cv = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    // loss = sum(transpose(A) * C), A [2,3], C [3,2] -> dA = C^T
    let mut bld = B::new();
    let a = bld.input("A", &[2, 3]);
    let c = bld.input("C", &[3, 2]);
    let at = bld.transpose(a);
    let p = bld.mul(at, c);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("A".to_string(), t(&[2, 3], &[0.0; 6])),
        ("C".to_string(), t(&[3, 2], &cv)),
    ]);
    let gr = grads(&g, &inputs, &["A"]);
    assert_close(&gr["grad_A"], &[1.0, 3.0, 5.0, 2.0, 4.0, 6.0], 0.0);

    // loss = sum(reshape(A, [3,2]) * C) -> dA = C read row-major as [2,3]
    let mut bld = B::new();
    let a = bld.input("A", &[2, 3]);
    let c = bld.input("C", &[3, 2]);
    let r = bld.op(
        Op::Reshape {
            shape: Shape::known(&[3, 2]),
        },
        &[a],
    );
    let p = bld.mul(r, c);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let gr = grads(&g, &inputs, &["A"]);
    assert_close(&gr["grad_A"], &cv, 0.0);

    // loss = sum(expand(x [3], [2,3]) * M) -> dx = column sums of M
    let mut bld = B::new();
    let x = bld.input("x", &[3]);
    let m = bld.input("M", &[2, 3]);
    let e = bld.op(
        Op::Expand {
            shape: Shape::known(&[2, 3]),
        },
        &[x],
    );
    let p = bld.mul(e, m);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("x".to_string(), t(&[3], &[0.0; 3])),
        ("M".to_string(), t(&[2, 3], &cv)),
    ]);
    let gr = grads(&g, &inputs, &["x"]);
    assert_close(&gr["grad_x"], &[5.0, 7.0, 9.0], 0.0);

    // loss = sum(sum_to(Y [2,3], [1,3]) * v [1,3]) -> dY = v in every row
    let mut bld = B::new();
    let y = bld.input("Y", &[2, 3]);
    let v = bld.input("v", &[1, 3]);
    let s = bld.op(
        Op::SumTo {
            shape: Shape::known(&[1, 3]),
        },
        &[y],
    );
    let p = bld.mul(s, v);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("Y".to_string(), t(&[2, 3], &[0.0; 6])),
        ("v".to_string(), t(&[1, 3], &[1.0, -2.0, 3.0])),
    ]);
    let gr = grads(&g, &inputs, &["Y"]);
    assert_close(&gr["grad_Y"], &[1.0, -2.0, 3.0, 1.0, -2.0, 3.0], 0.0);
}

#[test]
fn permute_rule_applies_the_inverse_permutation() {
    // loss = sum(permute(X, [2, 0, 1]) * W), X [2,3,4], W [4,2,3]:
    // Y[a,b,c] = X[b,c,a], so dX[b,c,a] = W[a,b,c]. With W[a,b,c] = 1 + 6a + 3b + c
    // (1..=24 row-major), dX[b,c,a] = 1 + 6a + 3b + c.
    let mut bld = B::new();
    let x = bld.input("X", &[2, 3, 4]);
    let w = bld.input("W", &[4, 2, 3]);
    let y = bld.op(
        Op::Permute {
            perm: vec![2, 0, 1],
        },
        &[x],
    );
    let p = bld.mul(y, w);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let wv: Vec<f64> = (1..=24).map(f64::from).collect();
    let inputs = Inputs::from([
        ("X".to_string(), t(&[2, 3, 4], &[0.0; 24])),
        ("W".to_string(), t(&[4, 2, 3], &wv)),
    ]);
    let gr = grads(&g, &inputs, &["X", "W"]);
    #[rustfmt::skip]
    let want_x = [
        1.0, 7.0, 13.0, 19.0,   2.0, 8.0, 14.0, 20.0,   3.0, 9.0, 15.0, 21.0, // b = 0
        4.0, 10.0, 16.0, 22.0,  5.0, 11.0, 17.0, 23.0,  6.0, 12.0, 18.0, 24.0, // b = 1
    ];
    assert_close(&gr["grad_X"], &want_x, 0.0);
    // dW = Y = permute(X) = 0 here.
    assert_close(&gr["grad_W"], &[0.0; 24], 0.0);
    // The adjoint is one permute by the inverse [1, 2, 0] (not by [2, 0, 1] again).
    let grad = gradient_graph(&g, "loss", &names(&["X"])).unwrap();
    assert_eq!(
        count_ops(&grad, |op| *op
            == Op::Permute {
                perm: vec![1, 2, 0]
            }),
        1
    );
    assert_eq!(count_ops(&grad, |op| matches!(op, Op::Permute { .. })), 1);

    // 2-D: loss = sum(permute(A, [1, 0]) * C), A [2,3], C [3,2] -> dA = C^T.
    let mut bld = B::new();
    let a = bld.input("A", &[2, 3]);
    let c = bld.input("C", &[3, 2]);
    let at = bld.op(Op::Permute { perm: vec![1, 0] }, &[a]);
    let p = bld.mul(at, c);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("A".to_string(), t(&[2, 3], &[0.0; 6])),
        ("C".to_string(), t(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
    ]);
    let gr = grads(&g, &inputs, &["A"]);
    assert_close(&gr["grad_A"], &[1.0, 3.0, 5.0, 2.0, 4.0, 6.0], 0.0);
}

#[test]
fn permute_gradient_through_a_nonlinearity_matches_finite_differences() {
    // loss = sum(tanh(permute(X, [1, 2, 0])) * W) with X [2,3,4]: checks that the adjoint
    // lines up with the forward values the tanh rule reuses.
    let mut bld = B::new();
    let x = bld.input("X", &[2, 3, 4]);
    let w = bld.input("W", &[3, 4, 2]);
    let y = bld.op(
        Op::Permute {
            perm: vec![1, 2, 0],
        },
        &[x],
    );
    let th = bld.un(UnaryOp::Tanh, y);
    let p = bld.mul(th, w);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("X".to_string(), t(&[2, 3, 4], &values(1, 24))),
        ("W".to_string(), t(&[3, 4, 2], &values(2, 24))),
    ]);
    check_fd(&g, "loss", &inputs, &names(&["X", "W"]), 1e-6, 1e-8, 10.0).unwrap();
}

#[test]
fn iota_and_extent_are_constants() {
    // loss = sum(x * iota(3) / extent(4)) + extent(4) * sum(x), x [2,3]:
    // dx[i,j] = j / 4 + 4.
    let mut bld = B::new();
    let x = bld.input("x", &[2, 3]);
    let i = bld
        .g
        .add_leaf(Op::Iota { len: Dim::Known(3) }, DType::F64)
        .unwrap();
    let n = bld
        .g
        .add_leaf(Op::Extent { dim: Dim::Known(4) }, DType::F64)
        .unwrap();
    let k = bld.div(i, n);
    let p = bld.mul(x, k);
    let l1 = bld.sum_all(p);
    let sx = bld.sum_all(x);
    let l2 = bld.mul(n, sx);
    let l = bld.add(l1, l2);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([(
        "x".to_string(),
        t(&[2, 3], &[1.0, -2.0, 3.0, 0.5, 0.0, 7.0]),
    )]);
    let gr = grads(&g, &inputs, &["x"]);
    assert_close(&gr["grad_x"], &[4.0, 4.25, 4.5, 4.0, 4.25, 4.5], 0.0);
    // The leaves are copied into the gradient graph (as leaves, once each) and never
    // differentiated.
    let grad = gradient_graph(&g, "loss", &names(&["x"])).unwrap();
    assert_eq!(count_ops(&grad, |op| matches!(op, Op::Iota { .. })), 1);
    assert_eq!(count_ops(&grad, |op| matches!(op, Op::Extent { .. })), 1);
}

#[test]
fn symbolic_iota_and_extent_are_copied_unbound_then_specialized() {
    // x [n]: loss = sum(x * iota(n)) / extent(n) -> dx_j = j / n.
    let n = Dim::sym("n");
    let mut bld = B::new();
    let x = bld.input_shape("x", Shape(vec![n.clone()]));
    let i = bld
        .g
        .add_leaf(Op::Iota { len: n.clone() }, DType::F64)
        .unwrap();
    let e = bld
        .g
        .add_leaf(Op::Extent { dim: n.clone() }, DType::F64)
        .unwrap();
    let p = bld.mul(x, i);
    let s = bld.sum_all(p);
    let l = bld.div(s, e);
    let g = bld.finish("loss", l);
    let grad = gradient_graph(&g, "loss", &names(&["x"])).unwrap();
    tttc_ir::verify::verify_graph(&grad, "grad").unwrap();
    let bind = BTreeMap::from([("n".to_string(), 4usize)]);
    let grad4 = tttc_ir::program::specialize_graph(&grad, &bind);
    tttc_ir::verify::verify_graph(&grad4, "grad").unwrap();
    let inputs = Inputs::from([("x".to_string(), t(&[4], &[3.0, -1.0, 2.0, 5.0]))]);
    let got = output(&grad4, &inputs, "grad_x");
    assert_close(&got, &[0.0, 0.25, 0.5, 0.75], 1e-15);
}

#[test]
fn reduce_sum_and_mean_rules() {
    // loss = sum(mean(X, 1) * w) + sum(sum(X, 0) * u), X [2,4], w [2,1], u [1,4]
    let mut bld = B::new();
    let x = bld.input("X", &[2, 4]);
    let w = bld.input("w", &[2, 1]);
    let u = bld.input("u", &[1, 4]);
    let m = bld.mean(x, 1);
    let mw = bld.mul(m, w);
    let s = bld.sum(x, 0);
    let su = bld.mul(s, u);
    let l1 = bld.sum_all(mw);
    let l2 = bld.sum_all(su);
    let l = bld.add(l1, l2);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("X".to_string(), t(&[2, 4], &[0.0; 8])),
        ("w".to_string(), t(&[2, 1], &[4.0, -8.0])),
        ("u".to_string(), t(&[1, 4], &[1.0, 2.0, 3.0, 4.0])),
    ]);
    let gr = grads(&g, &inputs, &["X"]);
    assert_close(
        &gr["grad_X"],
        &[2.0, 3.0, 4.0, 5.0, -1.0, 0.0, 1.0, 2.0],
        1e-15,
    );
}

#[test]
fn symbolic_mean_divides_by_the_bound_extent() {
    // X [2, n]: loss = sum(mean(X, 1) * X[.., ..]) differentiated before n is bound.
    let n = Dim::sym("n");
    let mut bld = B::new();
    let x = bld.input_shape("X", Shape(vec![Dim::Known(2), n.clone()]));
    let m = bld.mean(x, 1);
    let e = bld.mul(m, x); // [2, n]
    let l = bld.sum_all(e); // reshape [1,1] -> []
    let g = bld.finish("loss", l);
    let grad = gradient_graph(&g, "loss", &names(&["X"])).unwrap();
    tttc_ir::verify::verify_graph(&grad, "grad").unwrap();
    assert_eq!(
        grad.tensor_type(grad.output_by_name("grad_X").unwrap())
            .unwrap()
            .shape,
        Shape(vec![Dim::Known(2), n])
    );
    let bind = BTreeMap::from([("n".to_string(), 4usize)]);
    let g4 = tttc_ir::program::specialize_graph(&g, &bind);
    let grad4 = tttc_ir::program::specialize_graph(&grad, &bind);
    tttc_ir::verify::verify_graph(&grad4, "grad").unwrap();
    // loss = sum_i n * mean_i^2 = sum_i (sum_j x_ij)^2 / n -> d/dx_ij = 2 mean_i
    let xv = [1.0, 2.0, 3.0, 6.0, -1.0, 0.0, 1.0, 4.0];
    let inputs = Inputs::from([("X".to_string(), t(&[2, 4], &xv))]);
    let got = output(&grad4, &inputs, "grad_X");
    assert_close(&got, &[6.0, 6.0, 6.0, 6.0, 2.0, 2.0, 2.0, 2.0], 1e-14);
    check_fd(&g4, "loss", &inputs, &names(&["X"]), 1e-6, 1e-8, 10.0).unwrap();
}

#[test]
fn inputs_the_output_does_not_use_get_zero_gradients() {
    // loss = sum(step(x) * y) + 0 * ... : x only through step; z unused.
    let mut bld = B::new();
    let x = bld.input("x", &[2]);
    let y = bld.input("y", &[2]);
    let _z = bld.input("z", &[3, 1]);
    let s = bld.un(UnaryOp::Step, x);
    let p = bld.mul(s, y);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("x".to_string(), t(&[2], &[1.0, -1.0])),
        ("y".to_string(), t(&[2], &[5.0, 6.0])),
        ("z".to_string(), t(&[3, 1], &[1.0, 2.0, 3.0])),
    ]);
    let gr = grads(&g, &inputs, &["z", "x", "y"]);
    assert_close(&gr["grad_z"], &[0.0, 0.0, 0.0], 0.0);
    assert_close(&gr["grad_x"], &[0.0, 0.0], 0.0);
    assert_close(&gr["grad_y"], &[1.0, 0.0], 0.0);
}

#[test]
fn inputs_reaching_the_output_only_through_floor_get_zero_gradients() {
    // loss = sum(floor(3 x) * y): x only reaches the loss through floor, so dx = 0;
    // dy = floor(3 x).
    let mut bld = B::new();
    let x = bld.input("x", &[3]);
    let y = bld.input("y", &[3]);
    let x3 = bld.scale(x, 3.0);
    let f = bld.un(UnaryOp::Floor, x3);
    let p = bld.mul(f, y);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let inputs = Inputs::from([
        ("x".to_string(), t(&[3], &[-0.5, 0.1, 0.9])),
        ("y".to_string(), t(&[3], &[5.0, 6.0, 7.0])),
    ]);
    let gr = grads(&g, &inputs, &["x", "y"]);
    assert_close(&gr["grad_x"], &[0.0, 0.0, 0.0], 0.0);
    assert_close(&gr["grad_y"], &[-2.0, 0.0, 2.0], 0.0);
}

#[test]
fn gradient_graph_keeps_inputs_and_names_outputs_in_order() {
    let mut bld = B::new();
    let a = bld.input("a", &[2, 3]);
    let b = bld.input("b", &[3]);
    let c = bld.input("c", &[]);
    let p = bld.mul(a, b);
    let q = bld.mul(p, c);
    let l = bld.sum_all(q);
    let g = bld.finish("loss", l);
    let grad = gradient_graph(&g, "loss", &names(&["c", "a"])).unwrap();
    let ins: Vec<(String, TensorType)> = grad
        .inputs()
        .iter()
        .map(|&i| {
            (
                grad.input_name(i).unwrap().to_string(),
                grad.tensor_type(i).unwrap().clone(),
            )
        })
        .collect();
    let want: Vec<(String, TensorType)> = g
        .inputs()
        .iter()
        .map(|&i| {
            (
                g.input_name(i).unwrap().to_string(),
                g.tensor_type(i).unwrap().clone(),
            )
        })
        .collect();
    assert_eq!(ins, want);
    let outs: Vec<&str> = grad.outputs().iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, ["grad_c", "grad_a"]);
    for (o, shape) in grad
        .outputs()
        .iter()
        .zip([Shape::scalar(), Shape::known(&[2, 3])])
    {
        assert_eq!(grad.tensor_type(o.node).unwrap().shape, shape);
    }
}

#[test]
fn forward_values_are_reused_and_off_path_nodes_are_not_copied() {
    // loss = sum(exp(x) * tanh(w)) with wrt = [x]: the exp is copied once (reused by its own
    // rule), tanh(w) is copied as a forward value but never differentiated; the side branch
    // sigmoid(x), which the loss does not use, is not copied.
    let mut bld = B::new();
    let x = bld.input("x", &[3]);
    let w = bld.input("w", &[3]);
    let e = bld.un(UnaryOp::Exp, x);
    let th = bld.un(UnaryOp::Tanh, w);
    let _side = bld.un(UnaryOp::Sigmoid, x);
    let p = bld.mul(e, th);
    let l = bld.sum_all(p);
    let g = bld.finish("loss", l);
    let grad = gradient_graph(&g, "loss", &names(&["x"])).unwrap();
    let n = |f: UnaryOp| count_ops(&grad, |op| *op == Op::Unary { fun: f });
    assert_eq!(n(UnaryOp::Exp), 1);
    assert_eq!(n(UnaryOp::Tanh), 1);
    assert_eq!(n(UnaryOp::Sigmoid), 0);
    // tanh(w) is not differentiated: no 1 - t^2 (a `sub`) in the graph.
    assert_eq!(
        count_ops(&grad, |op| *op == Op::Binary { fun: BinaryOp::Sub }),
        0
    );
    let inputs = Inputs::from([
        ("x".to_string(), t(&[3], &[0.0, 1.0, -1.0])),
        ("w".to_string(), t(&[3], &[0.5, -0.5, 2.0])),
    ]);
    let gr = grads(&g, &inputs, &["x"]);
    let want: Vec<f64> = [(0.0f64, 0.5f64), (1.0, -0.5), (-1.0, 2.0)]
        .iter()
        .map(|(x, w)| x.exp() * w.tanh())
        .collect();
    assert_close(&gr["grad_x"], &want, 1e-14);
}

#[test]
fn f32_graphs_get_f32_constants() {
    let mut g = Graph::new();
    let x = g
        .add_input("x", TensorType::new(DType::F32, Shape::known(&[1, 4])))
        .unwrap();
    let m = g
        .add(
            Op::Reduce {
                fun: tttc_ir::ReduceOp::Mean,
                axis: 1,
            },
            &[x],
        )
        .unwrap();
    let s = g
        .add(
            Op::Unary {
                fun: UnaryOp::GeluTanh,
            },
            &[m],
        )
        .unwrap();
    g.add_output("loss", s);
    let grad = gradient_graph(&g, "loss", &names(&["x"])).unwrap();
    tttc_ir::verify::verify_graph(&grad, "grad").unwrap();
    let inputs = Inputs::from([(
        "x".to_string(),
        tttc_runtime::Tensor::from_f32(vec![1, 4], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap(),
    )]);
    let outs = eval(&grad, &inputs);
    let gx = outs["grad_x"].as_f32().expect("f32 gradient");
    assert_eq!(gx.len(), 4);
}

#[test]
fn errors_are_reported() {
    let mut bld = B::new();
    let x = bld.input("x", &[2]);
    let y = bld.un(UnaryOp::Exp, x);
    let mut g = bld.finish("vec", y);
    let s = {
        let sum = g
            .add(
                Op::Reduce {
                    fun: tttc_ir::ReduceOp::Sum,
                    axis: 0,
                },
                &[y],
            )
            .unwrap();
        g.add(
            Op::Reshape {
                shape: Shape::scalar(),
            },
            &[sum],
        )
        .unwrap()
    };
    g.add_output("loss", s);
    assert!(matches!(
        gradient_graph(&g, "nope", &names(&["x"])),
        Err(AutodiffError::OutputNotFound(n)) if n == "nope"
    ));
    assert!(matches!(
        gradient_graph(&g, "vec", &names(&["x"])),
        Err(AutodiffError::OutputNotScalar { .. })
    ));
    assert!(matches!(
        gradient_graph(&g, "loss", &names(&["w"])),
        Err(AutodiffError::UnknownWrt(n)) if n == "w"
    ));
    assert!(matches!(
        gradient_graph(&g, "loss", &names(&["x", "x"])),
        Err(AutodiffError::DuplicateWrt(n)) if n == "x"
    ));
    assert!(gradient_graph(&g, "loss", &names(&["x"])).is_ok());
    assert!(gradient_graph(&g, "loss", &[]).is_ok_and(|g| g.outputs().is_empty()));
}
