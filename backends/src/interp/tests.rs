//! Tests of the interpreter against hand-computed values and independent plain-Rust loops.

use super::*;
use crate::input::InputError;
use tttc_ir::{BinaryOp, Dim, OperandAxes, ReduceOp, TttScan, UnaryOp};

// ---------------------------------------------------------------------------------------------
// Helpers

fn tt(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, Shape::known(dims))
}

fn t64(shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::from_f64(shape, data).unwrap()
}

fn t32(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(shape, data).unwrap()
}

fn named(pairs: Vec<(&str, Tensor)>) -> BTreeMap<String, Tensor> {
    pairs.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

/// Deterministic pseudo-random values in [-1, 1).
fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan());
        assert!(
            ok,
            "element {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}"
        );
    }
}

/// Evaluates a one-op graph `op(x[, y])` in f64.
fn eval_op(op: Op, args: &[(&[usize], &[f64])]) -> Tensor {
    let mut g = Graph::new();
    let mut ids = Vec::new();
    let mut ins = Vec::new();
    for (i, (shape, data)) in args.iter().enumerate() {
        let name = format!("x{i}");
        ids.push(g.add_input(&name, tt(DType::F64, shape)).unwrap());
        ins.push((name, t64(shape, data)));
    }
    let r = g.add(op, &ids).unwrap();
    g.add_output("r", r);
    let ins = ins.into_iter().collect();
    let mut out = eval_graph(&g, &ins).unwrap();
    out.remove("r").unwrap()
}

fn check_op(op: Op, args: &[(&[usize], &[f64])], shape: &[usize], want: &[f64]) {
    let r = eval_op(op.clone(), args);
    assert_eq!(r.shape(), shape, "{op}");
    assert_eq!(r.elem_type(), ElemType::F64);
    assert_close(&r.to_f64_vec(), want, 1e-15);
}

fn unary(fun: UnaryOp, x: &[f64], want: &[f64]) {
    check_op(Op::Unary { fun }, &[(&[x.len()], x)], &[x.len()], want);
}

fn binary(fun: BinaryOp, a: (&[usize], &[f64]), b: (&[usize], &[f64]), s: &[usize], w: &[f64]) {
    check_op(Op::Binary { fun }, &[a, b], s, w);
}

// ---------------------------------------------------------------------------------------------
// Elementwise ops

#[test]
fn unary_ops_match_hand_values() {
    let ln2 = 2f64.ln();
    let ln3 = 3f64.ln();
    let e = std::f64::consts::E;
    unary(UnaryOp::Neg, &[-1.0, 0.5, 2.0], &[1.0, -0.5, -2.0]);
    unary(UnaryOp::Sqrt, &[0.0, 1.0, 4.0, 0.25], &[0.0, 1.0, 2.0, 0.5]);
    unary(
        UnaryOp::Rsqrt,
        &[1.0, 4.0, 0.25, 16.0],
        &[1.0, 0.5, 2.0, 0.25],
    );
    unary(UnaryOp::Exp, &[0.0, 1.0, ln2], &[1.0, e, 2.0]);
    unary(UnaryOp::Log, &[1.0, e, 0.5], &[0.0, 1.0, -ln2]);
    // tanh(ln 2) = (2 - 1/2) / (2 + 1/2) = 0.6
    unary(UnaryOp::Tanh, &[0.0, ln2, -ln2], &[0.0, 0.6, -0.6]);
    // sigmoid(ln 3) = 1 / (1 + 1/3) = 0.75
    unary(UnaryOp::Sigmoid, &[0.0, ln3, -ln3], &[0.5, 0.75, 0.25]);
    unary(
        UnaryOp::Silu,
        &[0.0, ln3, -ln3],
        &[0.0, 0.75 * ln3, -0.25 * ln3],
    );
    unary(UnaryOp::Relu, &[-1.0, 0.0, 2.0], &[0.0, 0.0, 2.0]);
    unary(
        UnaryOp::Step,
        &[-1.0, 0.0, 1e-300, 2.0],
        &[0.0, 0.0, 1.0, 1.0],
    );
    unary(
        UnaryOp::Floor,
        &[-2.5, -1.0, -0.5, 0.0, 0.3, 1.0, 2.7],
        &[-3.0, -1.0, -1.0, 0.0, 0.0, 1.0, 2.0],
    );
    // sin and cos at multiples of pi/6 and pi/2.
    let pi = std::f64::consts::PI;
    unary(
        UnaryOp::Sin,
        &[0.0, pi / 6.0, pi / 2.0, -pi / 2.0],
        &[0.0, 0.5, 1.0, -1.0],
    );
    unary(UnaryOp::Cos, &[0.0, pi / 3.0, pi], &[1.0, 0.5, -1.0]);
    // gelu_tanh: 0 at 0, x for large x, 0 for very negative x; 1 and -0.5 from the formula.
    unary(
        UnaryOp::GeluTanh,
        &[0.0, 10.0, -10.0, 1.0, -0.5],
        &[0.0, 10.0, 0.0, 0.8411919906082768, -0.15428599017485606],
    );
}

#[test]
fn relu_and_max_propagate_nan() {
    let r = eval_op(Op::Unary { fun: UnaryOp::Relu }, &[(&[1], &[f64::NAN])]);
    assert!(r.to_f64_vec()[0].is_nan());
    let r = eval_op(
        Op::Binary { fun: BinaryOp::Max },
        &[(&[2], &[f64::NAN, 1.0]), (&[2], &[0.0, f64::NAN])],
    );
    assert!(r.to_f64_vec().iter().all(|x| x.is_nan()));
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let col: (&[usize], &[f64]) = (&[2, 1], &[1.0, 2.0]);
    let row: (&[usize], &[f64]) = (&[3], &[10.0, 20.0, 30.0]);
    binary(
        BinaryOp::Add,
        col,
        row,
        &[2, 3],
        &[11.0, 21.0, 31.0, 12.0, 22.0, 32.0],
    );
    binary(
        BinaryOp::Sub,
        col,
        row,
        &[2, 3],
        &[-9.0, -19.0, -29.0, -8.0, -18.0, -28.0],
    );
    binary(
        BinaryOp::Mul,
        row,
        col,
        &[2, 3],
        &[10.0, 20.0, 30.0, 20.0, 40.0, 60.0],
    );
    binary(
        BinaryOp::Div,
        row,
        col,
        &[2, 3],
        &[10.0, 20.0, 30.0, 5.0, 10.0, 15.0],
    );
    // scalar operand
    binary(
        BinaryOp::Pow,
        (&[2], &[2.0, 9.0]),
        (&[], &[0.5]),
        &[2],
        &[2f64.sqrt(), 3.0],
    );
    binary(
        BinaryOp::Pow,
        (&[], &[2.0]),
        (&[3], &[-1.0, 0.0, 3.0]),
        &[3],
        &[0.5, 1.0, 8.0],
    );
    // [2,1,2] with [3,1] -> [2,3,2]
    binary(
        BinaryOp::Max,
        (&[2, 1, 2], &[0.0, 5.0, 3.0, -1.0]),
        (&[3, 1], &[1.0, 2.0, 4.0]),
        &[2, 3, 2],
        &[1.0, 5.0, 2.0, 5.0, 4.0, 5.0, 3.0, 1.0, 3.0, 2.0, 4.0, 4.0],
    );
    binary(
        BinaryOp::Min,
        (&[2, 1, 2], &[0.0, 5.0, 3.0, -1.0]),
        (&[3, 1], &[1.0, 2.0, 4.0]),
        &[2, 3, 2],
        &[
            0.0, 1.0, 0.0, 2.0, 0.0, 4.0, 1.0, -1.0, 2.0, -1.0, 3.0, -1.0,
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// MatMul, transpose, reductions, shape ops

#[test]
fn matmul_hand_example() {
    check_op(
        Op::MatMul,
        &[
            (&[2, 2], &[1.0, 2.0, 3.0, 4.0]),
            (&[2, 2], &[5.0, 6.0, 7.0, 8.0]),
        ],
        &[2, 2],
        &[19.0, 22.0, 43.0, 50.0],
    );
    // [1,3] @ [3,1]
    check_op(
        Op::MatMul,
        &[(&[1, 3], &[1.0, 2.0, 3.0]), (&[3, 1], &[4.0, 5.0, 6.0])],
        &[1, 1],
        &[32.0],
    );
}

/// Naive batched matmul with explicit index arithmetic: `a` is `[B1, B2, m, k]` (leading extents
/// given with 1 for broadcast), `b` likewise.
#[allow(clippy::too_many_arguments)]
fn naive_matmul(
    a: &[f64],
    a_lead: [usize; 2],
    b: &[f64],
    b_lead: [usize; 2],
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f64> {
    let lead = [a_lead[0].max(b_lead[0]), a_lead[1].max(b_lead[1])];
    let mut out = vec![0.0; lead[0] * lead[1] * m * n];
    for i0 in 0..lead[0] {
        for i1 in 0..lead[1] {
            let (a0, a1) = (i0 % a_lead[0], i1 % a_lead[1]);
            let (b0, b1) = (i0 % b_lead[0], i1 % b_lead[1]);
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0.0;
                    for p in 0..k {
                        s += a[((a0 * a_lead[1] + a1) * m + i) * k + p]
                            * b[((b0 * b_lead[1] + b1) * k + p) * n + j];
                    }
                    out[((i0 * lead[1] + i1) * m + i) * n + j] = s;
                }
            }
        }
    }
    out
}

#[test]
fn matmul_matches_naive_loops_with_broadcast_batches() {
    let (m, k, n) = (3, 4, 5);
    for (a_lead, b_lead) in [
        ([1, 1], [1, 1]),
        ([2, 3], [2, 3]),
        ([2, 1], [1, 3]),
        ([1, 3], [2, 1]),
    ] {
        let a = rand_vec(a_lead[0] * a_lead[1] * m * k, 1);
        let b = rand_vec(b_lead[0] * b_lead[1] * k * n, 2);
        let got = eval_op(
            Op::MatMul,
            &[
                (&[a_lead[0], a_lead[1], m, k], &a),
                (&[b_lead[0], b_lead[1], k, n], &b),
            ],
        );
        let lead = [a_lead[0].max(b_lead[0]), a_lead[1].max(b_lead[1])];
        assert_eq!(got.shape(), &[lead[0], lead[1], m, n]);
        assert_close(
            &got.to_f64_vec(),
            &naive_matmul(&a, a_lead, &b, b_lead, m, k, n),
            1e-14,
        );
    }
    // Operands of different ranks: [2,3,m,k] @ [k,n].
    let a = rand_vec(2 * 3 * m * k, 3);
    let b = rand_vec(k * n, 4);
    let got = eval_op(Op::MatMul, &[(&[2, 3, m, k], &a), (&[k, n], &b)]);
    assert_eq!(got.shape(), &[2, 3, m, n]);
    assert_close(
        &got.to_f64_vec(),
        &naive_matmul(&a, [2, 3], &b, [1, 1], m, k, n),
        1e-14,
    );
}

#[test]
fn transpose_swaps_the_last_two_axes() {
    check_op(
        Op::Transpose,
        &[(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
        &[3, 2],
        &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0],
    );
    check_op(
        Op::Transpose,
        &[(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0])],
        &[2, 2, 1],
        &[1.0, 2.0, 3.0, 4.0],
    );
    check_op(
        Op::Transpose,
        &[(&[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])],
        &[2, 2, 2],
        &[1.0, 3.0, 2.0, 4.0, 5.0, 7.0, 6.0, 8.0],
    );
}

#[test]
fn reductions_keep_the_axis() {
    let x: (&[usize], &[f64]) = (&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let sum = |axis| Op::Reduce {
        fun: ReduceOp::Sum,
        axis,
    };
    let mean = |axis| Op::Reduce {
        fun: ReduceOp::Mean,
        axis,
    };
    check_op(sum(0), &[x], &[1, 3], &[5.0, 7.0, 9.0]);
    check_op(sum(1), &[x], &[2, 1], &[6.0, 15.0]);
    check_op(mean(0), &[x], &[1, 3], &[2.5, 3.5, 4.5]);
    check_op(mean(1), &[x], &[2, 1], &[2.0, 5.0]);
    // middle axis of [2,2,2]
    let y: (&[usize], &[f64]) = (&[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    check_op(sum(1), &[y], &[2, 1, 2], &[4.0, 6.0, 12.0, 14.0]);
}

#[test]
fn expand_broadcasts() {
    let expand = |dims: &[usize]| Op::Expand {
        shape: Shape::known(dims),
    };
    check_op(
        expand(&[2, 3]),
        &[(&[3], &[1.0, 2.0, 3.0])],
        &[2, 3],
        &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0],
    );
    check_op(
        expand(&[2, 3]),
        &[(&[2, 1], &[1.0, 2.0])],
        &[2, 3],
        &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0],
    );
    check_op(expand(&[2, 2]), &[(&[], &[7.0])], &[2, 2], &[7.0; 4]);
}

#[test]
fn sum_to_sums_broadcast_axes() {
    let sum_to = |dims: &[usize]| Op::SumTo {
        shape: Shape::known(dims),
    };
    let x: (&[usize], &[f64]) = (&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    check_op(sum_to(&[3]), &[x], &[3], &[5.0, 7.0, 9.0]);
    check_op(sum_to(&[2, 1]), &[x], &[2, 1], &[6.0, 15.0]);
    check_op(sum_to(&[1, 3]), &[x], &[1, 3], &[5.0, 7.0, 9.0]);
    check_op(sum_to(&[]), &[x], &[], &[21.0]);
    check_op(
        sum_to(&[2, 3]),
        &[x],
        &[2, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    );
    // [2,2,3] -> [2,1]: the leading axis is dropped, the last summed with keepdims.
    let y: Vec<f64> = (1..=12).map(f64::from).collect();
    // rows: [1,2,3] [4,5,6] | [7,8,9] [10,11,12]; sum over axis 0 -> [8,10,12] [14,16,18]
    // then over the last axis -> [30] [48]
    check_op(sum_to(&[2, 1]), &[(&[2, 2, 3], &y)], &[2, 1], &[30.0, 48.0]);
}

#[test]
fn sum_to_is_the_adjoint_of_expand() {
    let cases: [(&[usize], &[usize]); 6] = [
        (&[3], &[2, 4, 3]),
        (&[4, 1], &[2, 4, 3]),
        (&[1, 1, 3], &[2, 4, 3]),
        (&[], &[2, 3]),
        (&[2, 1, 3], &[2, 4, 3]),
        (&[1], &[5]),
    ];
    for (i, (small, big)) in cases.into_iter().enumerate() {
        let x = rand_vec(small.iter().product(), 10 + i as u64);
        let y = rand_vec(big.iter().product(), 20 + i as u64);
        let ex = eval_op(
            Op::Expand {
                shape: Shape::known(big),
            },
            &[(small, &x)],
        );
        let sy = eval_op(
            Op::SumTo {
                shape: Shape::known(small),
            },
            &[(big, &y)],
        );
        assert_eq!(ex.shape(), big);
        assert_eq!(sy.shape(), small);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        let lhs = dot(&ex.to_f64_vec(), &y);
        let rhs = dot(&x, &sy.to_f64_vec());
        assert!(
            (lhs - rhs).abs() < 1e-12,
            "{small:?} -> {big:?}: {lhs} vs {rhs}"
        );
    }
}

#[test]
fn reshape_is_row_major() {
    let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    check_op(
        Op::Reshape {
            shape: Shape::known(&[3, 2]),
        },
        &[(&[2, 3], &data)],
        &[3, 2],
        &data,
    );
    check_op(
        Op::Reshape {
            shape: Shape::known(&[1, 2, 3]),
        },
        &[(&[6], &data)],
        &[1, 2, 3],
        &data,
    );
    check_op(
        Op::Reshape {
            shape: Shape::known(&[]),
        },
        &[(&[1, 1], &[4.0])],
        &[],
        &[4.0],
    );
}

#[test]
fn floor_of_negative_and_positive_values() {
    // Rounds toward -inf (not toward zero); integers, -0, inf and NaN are unchanged.
    let x = [-3.7, -3.0, -0.2, -0.0, 0.0, 0.999, 5.0, 5.5, f64::INFINITY];
    let want = [-4.0, -3.0, -1.0, -0.0, 0.0, 0.0, 5.0, 5.0, f64::INFINITY];
    let r = eval_op(
        Op::Unary {
            fun: UnaryOp::Floor,
        },
        &[(&[x.len()], &x)],
    );
    assert_eq!(r.to_f64_vec(), want);
    assert!(r.to_f64_vec()[3].is_sign_negative(), "floor(-0) = -0");
    let r = eval_op(
        Op::Unary {
            fun: UnaryOp::Floor,
        },
        &[(&[1], &[f64::NAN])],
    );
    assert!(r.to_f64_vec()[0].is_nan());
    // In f32.
    let mut g = Graph::new();
    let x = g.add_input("x", tt(DType::F32, &[4])).unwrap();
    let y = g
        .add(
            Op::Unary {
                fun: UnaryOp::Floor,
            },
            &[x],
        )
        .unwrap();
    g.add_output("y", y);
    let out = eval_graph(&g, &named(vec![("x", t32(&[4], &[-1.5, -0.5, 0.5, 1.5]))])).unwrap();
    assert_eq!(out["y"].as_f32().unwrap(), &[-2.0f32, -1.0, 0.0, 1.0]);
}

#[test]
fn permute_of_a_2x3x4_tensor() {
    // x[i, j, k] = 12 i + 4 j + k, so every element names its own index.
    let x: Vec<f64> = (0..24).map(f64::from).collect();
    let x: (&[usize], &[f64]) = (&[2, 3, 4], &x);
    let permute = |perm: &[usize]| Op::Permute {
        perm: perm.to_vec(),
    };
    // [2, 0, 1]: y[a, b, c] = x[b, c, a] = 12 b + 4 c + a, shape [4, 2, 3].
    check_op(
        permute(&[2, 0, 1]),
        &[x],
        &[4, 2, 3],
        &[
            0.0, 4.0, 8.0, 12.0, 16.0, 20.0, // a = 0
            1.0, 5.0, 9.0, 13.0, 17.0, 21.0, // a = 1
            2.0, 6.0, 10.0, 14.0, 18.0, 22.0, // a = 2
            3.0, 7.0, 11.0, 15.0, 19.0, 23.0, // a = 3
        ],
    );
    // [1, 2, 0]: y[a, b, c] = x[c, a, b] = 12 c + 4 a + b, shape [3, 4, 2].
    check_op(
        permute(&[1, 2, 0]),
        &[x],
        &[3, 4, 2],
        &[
            0.0, 12.0, 1.0, 13.0, 2.0, 14.0, 3.0, 15.0, // a = 0
            4.0, 16.0, 5.0, 17.0, 6.0, 18.0, 7.0, 19.0, // a = 1
            8.0, 20.0, 9.0, 21.0, 10.0, 22.0, 11.0, 23.0, // a = 2
        ],
    );
    // [0, 2, 1]: y[a, b, c] = x[a, c, b] = 12 a + 4 c + b, shape [2, 4, 3] (= transpose).
    let swap_last = [
        0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0, // a = 0
        12.0, 16.0, 20.0, 13.0, 17.0, 21.0, 14.0, 18.0, 22.0, 15.0, 19.0, 23.0, // a = 1
    ];
    check_op(permute(&[0, 2, 1]), &[x], &[2, 4, 3], &swap_last);
    check_op(Op::Transpose, &[x], &[2, 4, 3], &swap_last);
    // [2, 1, 0]: y[a, b, c] = x[c, b, a] = 12 c + 4 b + a, shape [4, 3, 2].
    check_op(
        permute(&[2, 1, 0]),
        &[x],
        &[4, 3, 2],
        &[
            0.0, 12.0, 4.0, 16.0, 8.0, 20.0, // a = 0
            1.0, 13.0, 5.0, 17.0, 9.0, 21.0, // a = 1
            2.0, 14.0, 6.0, 18.0, 10.0, 22.0, // a = 2
            3.0, 15.0, 7.0, 19.0, 11.0, 23.0, // a = 3
        ],
    );
    // The identity, a matrix, a vector and a scalar.
    check_op(permute(&[0, 1, 2]), &[x], &[2, 3, 4], x.1);
    check_op(
        permute(&[1, 0]),
        &[(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
        &[3, 2],
        &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0],
    );
    check_op(
        permute(&[0]),
        &[(&[3], &[1.0, 2.0, 3.0])],
        &[3],
        &[1.0, 2.0, 3.0],
    );
    check_op(permute(&[]), &[(&[], &[7.0])], &[], &[7.0]);
    // An empty axis.
    check_op(permute(&[1, 0]), &[(&[0, 3], &[])], &[3, 0], &[]);
}

#[test]
fn bad_permutations_are_errors_not_panics() {
    for perm in [vec![0, 0], vec![0], vec![0, 1, 2], vec![2, 0], vec![]] {
        let mut g = Graph::new();
        let x = g.add_input("x", tt(DType::F64, &[2, 2])).unwrap();
        let y = g.add(Op::Permute { perm: vec![1, 0] }, &[x]).unwrap();
        g.add_output("y", y);
        g.node_mut(y).unwrap().op = Op::Permute { perm: perm.clone() };
        let err =
            eval_graph(&g, &named(vec![("x", t64(&[2, 2], &[1.0, 2.0, 3.0, 4.0]))])).unwrap_err();
        assert!(
            matches!(err, InterpError::Invalid { .. }),
            "{perm:?}: {err}"
        );
        assert!(err.to_string().contains("permut"), "{err}");
    }
}

#[test]
fn iota_counts_from_zero() {
    let mut g = Graph::new();
    let a = g
        .add_leaf(Op::Iota { len: Dim::Known(5) }, DType::F64)
        .unwrap();
    let b = g
        .add_leaf(Op::Iota { len: Dim::Known(3) }, DType::F32)
        .unwrap();
    let e = g
        .add_leaf(Op::Iota { len: Dim::Known(0) }, DType::F64)
        .unwrap();
    g.add_output("a", a);
    g.add_output("b", b);
    g.add_output("e", e);
    let out = eval_graph(&g, &BTreeMap::new()).unwrap();
    assert_eq!(out["a"].shape(), &[5]);
    assert_eq!(out["a"].as_f64().unwrap(), &[0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(out["b"].as_f32().unwrap(), &[0.0f32, 1.0, 2.0]);
    assert_eq!(out["e"].shape(), &[0]);
    assert!(out["e"].as_f64().unwrap().is_empty());
}

#[test]
fn extent_is_the_bound_dimension() {
    let mut g = Graph::new();
    let a = g
        .add_leaf(Op::Extent { dim: Dim::Known(7) }, DType::F64)
        .unwrap();
    let b = g
        .add_leaf(Op::Extent { dim: Dim::Known(3) }, DType::F32)
        .unwrap();
    g.add_output("a", a);
    g.add_output("b", b);
    let out = eval_graph(&g, &BTreeMap::new()).unwrap();
    assert!(out["a"].shape().is_empty());
    assert_eq!(out["a"].as_f64().unwrap(), &[7.0]);
    assert_eq!(out["b"].as_f32().unwrap(), &[3.0f32]);
}

#[test]
fn iota_and_extent_with_a_floor_and_broadcasting() {
    // x [2, 4] * (floor(iota(4) / 2) + extent(n)), n = 10 after specialization:
    // floor([0, 0.5, 1, 1.5]) = [0, 0, 1, 1], + 10 -> [10, 10, 11, 11].
    let n = Dim::sym("n");
    let mut g = Graph::new();
    let x = g.add_input("x", tt(DType::F64, &[2, 4])).unwrap();
    let i = g
        .add_leaf(Op::Iota { len: Dim::Known(4) }, DType::F64)
        .unwrap();
    let two = g.add_const(2.0, DType::F64);
    let h = g.add(Op::Binary { fun: BinaryOp::Div }, &[i, two]).unwrap();
    let f = g
        .add(
            Op::Unary {
                fun: UnaryOp::Floor,
            },
            &[h],
        )
        .unwrap();
    let e = g.add_leaf(Op::Extent { dim: n }, DType::F64).unwrap();
    let k = g.add(Op::Binary { fun: BinaryOp::Add }, &[f, e]).unwrap();
    let y = g.add(Op::Binary { fun: BinaryOp::Mul }, &[x, k]).unwrap();
    g.add_output("y", y);
    let xs = [1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 0.0, 2.0];
    let ins = named(vec![("x", t64(&[2, 4], &xs))]);
    let bind = [("n".to_string(), 10usize)].into_iter().collect();
    let g = tttc_ir::program::specialize_graph(&g, &bind);
    let out = eval_graph(&g, &ins).unwrap();
    assert_eq!(
        out["y"].as_f64().unwrap(),
        &[10.0, 20.0, 33.0, 44.0, -10.0, 5.0, 0.0, 22.0]
    );
}

#[test]
fn symbolic_extent_and_iota_must_be_bound() {
    // extent: the node type is a scalar, so the op's own dimension is what is unbound.
    let mut g = Graph::new();
    let e = g
        .add_leaf(Op::Extent { dim: Dim::sym("n") }, DType::F64)
        .unwrap();
    g.add_output("e", e);
    let err = eval_graph(&g, &BTreeMap::new()).unwrap_err();
    match &err {
        InterpError::UnboundDim { symbol, node, .. } => {
            assert_eq!(symbol, "n");
            assert!(node.contains("extent"), "{node}");
        }
        e => panic!("unexpected {e}"),
    }
    let bind = [("n".to_string(), 4usize)].into_iter().collect();
    let out = eval_graph(
        &tttc_ir::program::specialize_graph(&g, &bind),
        &BTreeMap::new(),
    );
    assert_eq!(out.unwrap()["e"].as_f64().unwrap(), &[4.0]);

    // iota: its type `[n]` is unbound.
    let mut g = Graph::new();
    let i = g
        .add_leaf(Op::Iota { len: Dim::sym("n") }, DType::F64)
        .unwrap();
    g.add_output("i", i);
    let err = eval_graph(&g, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, InterpError::UnboundDim { symbol, .. } if symbol == "n"),
        "{err}"
    );
    let out = eval_graph(
        &tttc_ir::program::specialize_graph(&g, &bind),
        &BTreeMap::new(),
    );
    assert_eq!(out.unwrap()["i"].as_f64().unwrap(), &[0.0, 1.0, 2.0, 3.0]);

    // An iota whose type was bound but whose op was not (a broken specialization) is still an
    // unbound-dimension error, not a panic.
    let mut g = Graph::new();
    let i = g
        .add_leaf(Op::Iota { len: Dim::Known(2) }, DType::F64)
        .unwrap();
    g.add_output("i", i);
    g.node_mut(i).unwrap().op = Op::Iota { len: Dim::sym("m") };
    let err = eval_graph(&g, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, InterpError::UnboundDim { symbol, .. } if symbol == "m"),
        "{err}"
    );
    // ... and one whose length disagrees with its type is ill-formed.
    g.node_mut(i).unwrap().op = Op::Iota { len: Dim::Known(3) };
    let err = eval_graph(&g, &BTreeMap::new()).unwrap_err();
    assert!(matches!(err, InterpError::Invalid { .. }), "{err}");
}

#[test]
fn symbolic_reshape_sizes_are_checked_at_run_time() {
    // reshape x [a] -> [b, 2]: accepted while a and b are symbols.
    let mut g = Graph::new();
    let x = g
        .add_input("x", TensorType::new(DType::F64, Shape(vec![Dim::sym("a")])))
        .unwrap();
    let r = g
        .add(
            Op::Reshape {
                shape: Shape(vec![Dim::sym("b"), Dim::Known(2)]),
            },
            &[x],
        )
        .unwrap();
    g.add_output("r", r);
    let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let ins = named(vec![("x", t64(&[6], &data))]);
    let bind = |b: usize| {
        let m = [("a".to_string(), 6usize), ("b".to_string(), b)]
            .into_iter()
            .collect();
        tttc_ir::program::specialize_graph(&g, &m)
    };
    let out = eval_graph(&bind(3), &ins).unwrap();
    assert_eq!(out["r"].shape(), &[3, 2]);
    assert_eq!(out["r"].as_f64().unwrap(), &data);
    // 6 elements do not fill [2, 2] or [4, 2]: an error, not a panic.
    for b in [2, 4] {
        let err = eval_graph(&bind(b), &ins).unwrap_err();
        assert!(matches!(err, InterpError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("reshape"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Precision

#[test]
fn f32_graphs_compute_in_f32() {
    // x + 1e-8: 1 + 1e-8 rounds to 1 in f32 (the constant itself rounds to f32 first).
    let mut g = Graph::new();
    let x = g.add_input("x", tt(DType::F32, &[2])).unwrap();
    let c = g.add_const(1e-8, DType::F32);
    let y = g.add(Op::Binary { fun: BinaryOp::Add }, &[x, c]).unwrap();
    g.add_output("y", y);
    let out = eval_graph(&g, &named(vec![("x", t32(&[2], &[1.0, 0.0]))])).unwrap();
    assert_eq!(out["y"].as_f32().unwrap(), &[1.0, 1e-8f32]);

    // Sequential f32 accumulation: 1e8 + 1 = 1e8 in f32, then - 1e8 = 0 (f64 would give 1).
    let mut g = Graph::new();
    let a = g.add_input("a", tt(DType::F32, &[1, 3])).unwrap();
    let b = g.add_input("b", tt(DType::F32, &[3, 1])).unwrap();
    let p = g.add(Op::MatMul, &[a, b]).unwrap();
    g.add_output("p", p);
    let ins = named(vec![
        ("a", t32(&[1, 3], &[1e8, 1.0, -1e8])),
        ("b", t32(&[3, 1], &[1.0, 1.0, 1.0])),
    ]);
    let out = eval_graph(&g, &ins).unwrap();
    assert_eq!(out["p"].as_f32().unwrap(), &[0.0]);
}

#[test]
fn constants_take_the_node_element_type() {
    let mut g = Graph::new();
    let c = g.add_const(0.1, DType::F32);
    let d = g.add_const(0.1, DType::F64);
    g.add_output("c", c);
    g.add_output("d", d);
    let out = eval_graph(&g, &BTreeMap::new()).unwrap();
    assert_eq!(out["c"].as_f32().unwrap(), &[0.1f32]);
    assert_eq!(out["d"].as_f64().unwrap(), &[0.1f64]);
    assert!(out["c"].shape().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Errors

fn square_graph(shape: Shape) -> Graph {
    let mut g = Graph::new();
    let x = g
        .add_input("x", TensorType::new(DType::F64, shape))
        .unwrap();
    let y = g.add(Op::Binary { fun: BinaryOp::Mul }, &[x, x]).unwrap();
    g.add_output("y", y);
    g
}

#[test]
fn input_errors_are_reported() {
    let g = square_graph(Shape::known(&[2]));
    let err = eval_graph(&g, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, InterpError::Input(InputError::Missing { name }) if name == "x"),
        "{err}"
    );

    let err = eval_graph(&g, &named(vec![("x", t64(&[3], &[1.0, 2.0, 3.0]))])).unwrap_err();
    match &err {
        InterpError::Input(InputError::Shape {
            name,
            expected,
            got,
        }) => {
            assert_eq!(name, "x");
            assert_eq!(expected, &[2]);
            assert_eq!(got, &[3]);
        }
        e => panic!("unexpected {e}"),
    }

    let err = eval_graph(&g, &named(vec![("x", t32(&[2], &[1.0, 2.0]))])).unwrap_err();
    assert!(
        matches!(
            &err,
            InterpError::Input(InputError::ElemType {
                expected: ElemType::F64,
                got: ElemType::F32,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("\"x\""), "{err}");

    // extra inputs are ignored
    let out = eval_graph(
        &g,
        &named(vec![
            ("x", t64(&[2], &[2.0, 3.0])),
            ("extra", t64(&[], &[0.0])),
        ]),
    )
    .unwrap();
    assert_eq!(out["y"].as_f64().unwrap(), &[4.0, 9.0]);
}

#[test]
fn symbolic_dims_must_be_bound() {
    let g = square_graph(Shape(vec![Dim::Known(2), Dim::sym("f")]));
    let err = eval_graph(&g, &named(vec![("x", t64(&[2, 1], &[1.0, 2.0]))])).unwrap_err();
    match &err {
        InterpError::UnboundDim { symbol, .. } => assert_eq!(symbol, "f"),
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains("specialize"));
    // after specialization it runs
    let bindings = [("f".to_string(), 1usize)].into_iter().collect();
    let g = tttc_ir::program::specialize_graph(&g, &bindings);
    let out = eval_graph(&g, &named(vec![("x", t64(&[2, 1], &[1.0, 2.0]))])).unwrap();
    assert_eq!(out["y"].as_f64().unwrap(), &[1.0, 4.0]);
}

#[test]
fn ill_typed_graphs_are_errors_not_panics() {
    // A node whose declared type disagrees with what its op computes.
    let mut g = square_graph(Shape::known(&[2]));
    let y = g.output_by_name("y").unwrap();
    g.node_mut(y).unwrap().ty = NodeType::Tensor(tt(DType::F64, &[3]));
    let err = eval_graph(&g, &named(vec![("x", t64(&[2], &[1.0, 2.0]))])).unwrap_err();
    assert!(matches!(err, InterpError::Invalid { .. }), "{err}");

    // An op whose operand does not fit (matmul of vectors, reshape to the wrong size).
    for op in [
        Op::MatMul,
        Op::Reshape {
            shape: Shape::known(&[5]),
        },
        Op::Expand {
            shape: Shape::known(&[3]),
        },
        Op::SumTo {
            shape: Shape::known(&[3]),
        },
        Op::Reduce {
            fun: ReduceOp::Sum,
            axis: 4,
        },
        Op::Transpose,
        Op::Get { index: 0 },
    ] {
        let mut g = square_graph(Shape::known(&[2]));
        let y = g.output_by_name("y").unwrap();
        g.node_mut(y).unwrap().op = op.clone();
        let err = eval_graph(&g, &named(vec![("x", t64(&[2], &[1.0, 2.0]))])).unwrap_err();
        assert!(matches!(err, InterpError::Invalid { .. }), "{op}: {err}");
    }

    // Mixed element types.
    let mut g = Graph::new();
    let a = g.add_input("a", tt(DType::F64, &[2])).unwrap();
    let b = g.add_input("b", tt(DType::F64, &[2])).unwrap();
    let s = g.add(Op::Binary { fun: BinaryOp::Add }, &[a, b]).unwrap();
    g.add_output("s", s);
    g.node_mut(b).unwrap().ty = NodeType::Tensor(tt(DType::F32, &[2]));
    let ins = named(vec![
        ("a", t64(&[2], &[1.0, 2.0])),
        ("b", t32(&[2], &[1.0, 2.0])),
    ]);
    let err = eval_graph(&g, &ins).unwrap_err();
    assert!(matches!(err, InterpError::Invalid { .. }), "{err}");
}

#[test]
fn absurd_shapes_are_errors() {
    let mut g = Graph::new();
    let x = g.add_input("x", tt(DType::F64, &[])).unwrap();
    let big = Shape::known(&[usize::MAX / 2, 4]);
    let e = g.add(Op::Expand { shape: big }, &[x]).unwrap();
    g.add_output("e", e);
    let err = eval_graph(&g, &named(vec![("x", t64(&[], &[1.0]))])).unwrap_err();
    assert!(matches!(err, InterpError::Invalid { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The TTT scan

/// Sizes of the linear scan test.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    l: usize,
    k: usize,
    f: usize,
}

/// A linear inner model `loss = 0.5 * sum((k @ W - v)^2)`, `out = q @ W`, with the gradient
/// `grad_W = transpose(k) @ (k @ W - v)` written by hand.
fn linear_scan(dtype: DType, d: Dims, with_grad: bool) -> TttScan {
    let f = d.f;
    let mut loss = Graph::new();
    let w = loss.add_input("W", tt(dtype, &[f, f])).unwrap();
    let k = loss.add_input("k", tt(dtype, &[1, f])).unwrap();
    let v = loss.add_input("v", tt(dtype, &[1, f])).unwrap();
    let kw = loss.add(Op::MatMul, &[k, w]).unwrap();
    let r = loss
        .add(Op::Binary { fun: BinaryOp::Sub }, &[kw, v])
        .unwrap();
    let sq = loss
        .add(Op::Binary { fun: BinaryOp::Mul }, &[r, r])
        .unwrap();
    let s = loss
        .add(
            Op::Reduce {
                fun: ReduceOp::Sum,
                axis: 1,
            },
            &[sq],
        )
        .unwrap();
    let s = loss
        .add(
            Op::Reshape {
                shape: Shape::scalar(),
            },
            &[s],
        )
        .unwrap();
    let half = loss.add_const(0.5, dtype);
    let l = loss
        .add(Op::Binary { fun: BinaryOp::Mul }, &[half, s])
        .unwrap();
    loss.add_output("loss", l);

    let mut grad = Graph::new();
    let w = grad.add_input("W", tt(dtype, &[f, f])).unwrap();
    let k = grad.add_input("k", tt(dtype, &[1, f])).unwrap();
    let v = grad.add_input("v", tt(dtype, &[1, f])).unwrap();
    let kw = grad.add(Op::MatMul, &[k, w]).unwrap();
    let r = grad
        .add(Op::Binary { fun: BinaryOp::Sub }, &[kw, v])
        .unwrap();
    let kt = grad.add(Op::Transpose, &[k]).unwrap();
    let gw = grad.add(Op::MatMul, &[kt, r]).unwrap();
    grad.add_output("grad_W", gw);

    let mut out = Graph::new();
    let w = out.add_input("W", tt(dtype, &[f, f])).unwrap();
    let q = out.add_input("q", tt(dtype, &[1, f])).unwrap();
    let z = out.add(Op::MatMul, &[q, w]).unwrap();
    out.add_output("out", z);

    let mapped3 = OperandAxes {
        per: vec![Some(0), None, None],
    };
    TttScan {
        model: "linear".into(),
        per: vec!["B".into()],
        mini_batch: Dim::Known(d.k),
        states: vec!["W".into()],
        params: vec![],
        loss_args: vec!["k".into(), "v".into()],
        out_args: vec!["q".into()],
        axes: vec![
            mapped3.clone(),                 // W0 [B, f, f]
            mapped3.clone(),                 // XK [B, L, f]
            mapped3.clone(),                 // XV
            mapped3,                         // XQ
            OperandAxes { per: vec![None] }, // token_eta [K], shared
            OperandAxes {
                per: vec![Some(0), None],
            }, // lr [B, L]
        ],
        token_eta: Default::default(),
        rule: Default::default(),
        doubling_rounds: None,
        loss,
        out,
        grad: with_grad.then_some(grad),
        step: None,
        step_vjp: None,
    }
}

/// The main graph around [`linear_scan`]: outputs `Z` `[B, L, f]` and `W_last` `[B, f, f]`.
fn linear_main(dtype: DType, d: Dims, with_grad: bool) -> Graph {
    let Dims { b, l, k, f } = d;
    let mut g = Graph::new();
    let w0 = g.add_input("W0", tt(dtype, &[b, f, f])).unwrap();
    let xk = g.add_input("XK", tt(dtype, &[b, l, f])).unwrap();
    let xv = g.add_input("XV", tt(dtype, &[b, l, f])).unwrap();
    let xq = g.add_input("XQ", tt(dtype, &[b, l, f])).unwrap();
    let eta = g.add_input("token_eta", tt(dtype, &[k])).unwrap();
    let lr = g.add_input("lr", tt(dtype, &[b, l])).unwrap();
    let scan = linear_scan(dtype, d, with_grad);
    let t = g
        .add(Op::Ttt(Box::new(scan)), &[w0, xk, xv, xq, eta, lr])
        .unwrap();
    let z = g.add(Op::Get { index: 0 }, &[t]).unwrap();
    let w = g.add(Op::Get { index: 1 }, &[t]).unwrap();
    g.add_output("Z", z);
    g.add_output("W_last", w);
    g
}

struct ScanData {
    w0: Vec<f64>,
    xk: Vec<f64>,
    xv: Vec<f64>,
    xq: Vec<f64>,
    eta: Vec<f64>,
    lr: Vec<f64>,
}

fn scan_data(d: Dims) -> ScanData {
    let Dims { b, l, k, f } = d;
    ScanData {
        w0: rand_vec(b * f * f, 100),
        xk: rand_vec(b * l * f, 101),
        xv: rand_vec(b * l * f, 102),
        xq: rand_vec(b * l * f, 103),
        // token_eta[i] = 1/(i+1), lr in (0.05, 0.45)
        eta: (0..k).map(|i| 1.0 / (i as f64 + 1.0)).collect(),
        lr: rand_vec(b * l, 104)
            .iter()
            .map(|x| 0.25 + 0.2 * x)
            .collect(),
    }
}

/// An independent plain-Rust implementation of the mini-batch update for the linear model,
/// using the direct double sum `θ_i = θ − Σ_{j<=i} token_eta[i] lr[j] g_j`.
fn reference_linear(d: Dims, x: &ScanData) -> (Vec<f64>, Vec<f64>) {
    let Dims { b, l, k: kk, f } = d;
    let mut z = vec![0.0; b * l * f];
    let mut w_last = vec![0.0; b * f * f];
    for bi in 0..b {
        let row = |m: &[f64], t: usize| m[(bi * l + t) * f..(bi * l + t + 1) * f].to_vec();
        let mut w: Vec<f64> = x.w0[bi * f * f..(bi + 1) * f * f].to_vec();
        let mut start = 0;
        while start < l {
            let k = kk.min(l - start);
            // gradients at the mini-batch's starting W: g_j[p][c] = k_j[p] * (k_j W - v_j)[c]
            let mut grads = Vec::new();
            for j in 0..k {
                let (kj, vj) = (row(&x.xk, start + j), row(&x.xv, start + j));
                let mut r = vec![0.0; f];
                for c in 0..f {
                    let mut s = 0.0;
                    for p in 0..f {
                        s += kj[p] * w[p * f + c];
                    }
                    r[c] = s - vj[c];
                }
                let mut g = vec![0.0; f * f];
                for p in 0..f {
                    for c in 0..f {
                        g[p * f + c] = kj[p] * r[c];
                    }
                }
                grads.push(g);
            }
            let mut w_i = w.clone();
            for i in 0..k {
                w_i = w.clone();
                for (j, g) in grads.iter().enumerate().take(i + 1) {
                    let coef = x.eta[i] * x.lr[bi * l + start + j];
                    for (wi, gj) in w_i.iter_mut().zip(g) {
                        *wi -= coef * gj;
                    }
                }
                let q = row(&x.xq, start + i);
                for c in 0..f {
                    let mut s = 0.0;
                    for p in 0..f {
                        s += q[p] * w_i[p * f + c];
                    }
                    z[(bi * l + start + i) * f + c] = s;
                }
            }
            w = w_i;
            start += k;
        }
        w_last[bi * f * f..(bi + 1) * f * f].copy_from_slice(&w);
    }
    (z, w_last)
}

fn scan_inputs(d: Dims, x: &ScanData, dtype: DType) -> BTreeMap<String, Tensor> {
    let Dims { b, l, k, f } = d;
    let t = |shape: &[usize], data: &[f64]| {
        let t = t64(shape, data);
        match dtype {
            DType::F64 => t,
            DType::F32 => t.cast(ElemType::F32),
        }
    };
    named(vec![
        ("W0", t(&[b, f, f], &x.w0)),
        ("XK", t(&[b, l, f], &x.xk)),
        ("XV", t(&[b, l, f], &x.xv)),
        ("XQ", t(&[b, l, f], &x.xq)),
        ("token_eta", t(&[k], &x.eta)),
        ("lr", t(&[b, l], &x.lr)),
    ])
}

#[test]
fn ttt_scan_matches_a_plain_loop() {
    // L = 5, K = 2: two full mini-batches and a remainder of one token.
    for d in [
        Dims {
            b: 1,
            l: 5,
            k: 2,
            f: 3,
        },
        Dims {
            b: 2,
            l: 5,
            k: 2,
            f: 3,
        },
        Dims {
            b: 2,
            l: 4,
            k: 4,
            f: 2,
        },
        Dims {
            b: 1,
            l: 3,
            k: 5,
            f: 2,
        },
    ] {
        let x = scan_data(d);
        let g = linear_main(DType::F64, d, true);
        let out = eval_graph(&g, &scan_inputs(d, &x, DType::F64)).unwrap();
        let (z, w) = reference_linear(d, &x);
        assert_eq!(out["Z"].shape(), &[d.b, d.l, d.f]);
        assert_eq!(out["W_last"].shape(), &[d.b, d.f, d.f]);
        assert_close(&out["Z"].to_f64_vec(), &z, 1e-12);
        assert_close(&out["W_last"].to_f64_vec(), &w, 1e-12);
    }
}

#[test]
fn ttt_scan_remainder_uses_the_first_token_etas() {
    // With L = 5, K = 2 the last token starts a fresh mini-batch from W_last of the first four
    // tokens and uses token_eta[0]: check it against a run on the first four tokens.
    let d5 = Dims {
        b: 1,
        l: 5,
        k: 2,
        f: 2,
    };
    let d4 = Dims { l: 4, ..d5 };
    let x5 = scan_data(d5);
    let out5 = eval_graph(
        &linear_main(DType::F64, d5, true),
        &scan_inputs(d5, &x5, DType::F64),
    )
    .unwrap();
    let x4 = ScanData {
        w0: x5.w0.clone(),
        xk: x5.xk[..8].to_vec(),
        xv: x5.xv[..8].to_vec(),
        xq: x5.xq[..8].to_vec(),
        eta: x5.eta.clone(),
        lr: x5.lr[..4].to_vec(),
    };
    let out4 = eval_graph(
        &linear_main(DType::F64, d4, true),
        &scan_inputs(d4, &x4, DType::F64),
    )
    .unwrap();
    // The first four outputs agree exactly (same ops in the same order).
    assert_eq!(
        &out5["Z"].as_f64().unwrap()[..8],
        out4["Z"].as_f64().unwrap()
    );
    // Last token by hand: W' = W4 - eta[0] lr[4] k^T (k W4 - v), z = q W'.
    let w4 = out4["W_last"].as_f64().unwrap();
    let (k, v, q) = (&x5.xk[8..10], &x5.xv[8..10], &x5.xq[8..10]);
    let r: Vec<f64> = (0..2)
        .map(|c| k[0] * w4[c] + k[1] * w4[2 + c] - v[c])
        .collect();
    let c = x5.eta[0] * x5.lr[4];
    let w5: Vec<f64> = (0..4).map(|i| w4[i] - c * k[i / 2] * r[i % 2]).collect();
    let z5: Vec<f64> = (0..2).map(|j| q[0] * w5[j] + q[1] * w5[2 + j]).collect();
    assert_close(&out5["Z"].to_f64_vec()[8..], &z5, 1e-14);
    assert_close(&out5["W_last"].to_f64_vec(), &w5, 1e-14);
}

#[test]
fn ttt_scan_in_f32() {
    let d = Dims {
        b: 2,
        l: 5,
        k: 2,
        f: 3,
    };
    let x = scan_data(d);
    let g = linear_main(DType::F32, d, true);
    let out = eval_graph(&g, &scan_inputs(d, &x, DType::F32)).unwrap();
    assert_eq!(out["Z"].elem_type(), ElemType::F32);
    // The reference runs in f64 on the f32-rounded inputs.
    let r = |v: &[f64]| v.iter().map(|&a| f64::from(a as f32)).collect::<Vec<_>>();
    let x32 = ScanData {
        w0: r(&x.w0),
        xk: r(&x.xk),
        xv: r(&x.xv),
        xq: r(&x.xq),
        eta: r(&x.eta),
        lr: r(&x.lr),
    };
    let (z, w) = reference_linear(d, &x32);
    assert_close(&out["Z"].to_f64_vec(), &z, 1e-5);
    assert_close(&out["W_last"].to_f64_vec(), &w, 1e-5);
}

#[test]
fn ttt_scan_without_gradient_asks_for_autodiff() {
    let d = Dims {
        b: 1,
        l: 5,
        k: 2,
        f: 2,
    };
    let g = linear_main(DType::F64, d, false);
    let err = eval_graph(&g, &scan_inputs(d, &scan_data(d), DType::F64)).unwrap_err();
    assert!(matches!(err, InterpError::MissingGradient { .. }), "{err}");
    assert!(err.to_string().contains("autodiff"));
}

#[test]
fn ttt_scan_output_must_be_taken_with_get() {
    let d = Dims {
        b: 1,
        l: 2,
        k: 2,
        f: 2,
    };
    let mut g = linear_main(DType::F64, d, true);
    let z = g.output_by_name("Z").unwrap();
    let t = g.operands(z)[0];
    g.add_output("tuple", t);
    let err = eval_graph(&g, &scan_inputs(d, &scan_data(d), DType::F64)).unwrap_err();
    assert!(
        matches!(&err, InterpError::TupleOutput { name } if name == "tuple"),
        "{err}"
    );
}

#[test]
fn ttt_scan_with_bad_gradient_graph_is_an_error() {
    let d = Dims {
        b: 1,
        l: 3,
        k: 2,
        f: 2,
    };
    let ins = scan_inputs(d, &scan_data(d), DType::F64);
    // A gradient graph whose output is misnamed, then one whose gradient has the wrong shape.
    let misnamed = {
        let mut x = Graph::new();
        let w = x.add_input("W", tt(DType::F64, &[2, 2])).unwrap();
        x.add_input("k", tt(DType::F64, &[1, 2])).unwrap();
        x.add_input("v", tt(DType::F64, &[1, 2])).unwrap();
        x.add_output("grad_V", w);
        x
    };
    let wrong_shape = {
        let mut x = Graph::new();
        x.add_input("W", tt(DType::F64, &[2, 2])).unwrap();
        let k = x.add_input("k", tt(DType::F64, &[1, 2])).unwrap();
        x.add_input("v", tt(DType::F64, &[1, 2])).unwrap();
        x.add_output("grad_W", k);
        x
    };
    for (grad, expect) in [(misnamed, "grad_W"), (wrong_shape, "gradient of state 0")] {
        let mut g = linear_main(DType::F64, d, true);
        let z = g.output_by_name("Z").unwrap();
        let t = g.operands(z)[0];
        if let Some(Op::Ttt(scan)) = g.node_mut(t).map(|n| &mut n.op) {
            scan.grad = Some(grad);
        }
        let err = eval_graph(&g, &ins).unwrap_err();
        assert!(matches!(err, InterpError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains(expect), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// slice and shift

#[test]
fn slice_and_shift_kernels_by_hand() {
    use super::value::Arr;
    // x[t, c] = 10 t + c, shape [3, 2].
    let x = Arr::new(vec![3, 2], vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0]).unwrap();
    let s = kernels::slice(&x, 0, 1, 2).unwrap();
    assert_eq!(
        (s.shape.clone(), s.data.clone()),
        (vec![2, 2], vec![10.0, 11.0, 20.0, 21.0])
    );
    let s = kernels::slice(&x, 1, 1, 1).unwrap();
    assert_eq!(
        (s.shape.clone(), s.data.clone()),
        (vec![3, 1], vec![1.0, 11.0, 21.0])
    );
    let y = kernels::shift(&x, None, 0, 1).unwrap();
    assert_eq!(y.data, vec![0.0, 0.0, 0.0, 1.0, 10.0, 11.0]);
    let y = kernels::shift(&x, None, 1, 1).unwrap();
    assert_eq!(y.data, vec![0.0, 0.0, 0.0, 10.0, 0.0, 20.0]);
    let fill = Arr::new(vec![2, 2], vec![-1.0, -2.0, -3.0, -4.0]).unwrap();
    let y = kernels::shift(&x, Some(&fill), 0, 2).unwrap();
    assert_eq!(y.data, vec![-1.0, -2.0, -3.0, -4.0, 0.0, 1.0]);
    let y = kernels::shift(&x, None, 0, 7).unwrap();
    assert_eq!(y.data, vec![0.0; 6]);
    // Bad operands are errors, not panics.
    assert!(kernels::slice(&x, 0, 2, 2).is_err());
    assert!(kernels::slice(&x, 2, 0, 1).is_err());
    assert!(kernels::slice(&x, 0, usize::MAX, 2).is_err());
    assert!(kernels::shift(&x, Some(&fill), 0, 1).is_err());
    assert!(kernels::shift(&x, None, 2, 1).is_err());
}
