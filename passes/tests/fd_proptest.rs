//! Random expressions over the op set, differentiated and checked against central finite
//! differences.
//!
//! The generator is a small "random program": a list of steps, each picking an op and operands
//! from the pool of values built so far (inputs first). Shapes are tracked, so every step is
//! well-typed by construction (an incompatible choice falls back to a compatible operand, e.g.
//! the value itself, or `a @ transpose(a)` for a matmul). Unary ops with restricted domains only
//! see safe arguments (`sqrt`, `rsqrt`, `log` of `x*x + 1`; `exp` of `tanh x`; `pow` of
//! `x*x + 1` to the power `tanh y`), divisors are `y*y + 1`. The non-smooth ops (`relu`, `step`,
//! `max`, `min`) are left to the rule tests: finite differences across a kink would make the
//! test flaky; `floor` only ever sees constants. `permute` takes a random permutation of its
//! operand's axes (a 3-D input shape, and `expand`'s extra batch axis, give it 3-D values).
//! `iota` and `extent` appear as constants that scale a value through broadcasting, e.g.
//! `x * (iota(n) + 1) / extent(m)`, which also exercises copying them into the gradient graph.
//! The loss is the sum of every element of every value in the pool.

mod common;

use common::*;
use proptest::prelude::*;
use tttc_ir::{BinaryOp, DType, Dim, NodeId, Op, Shape, UnaryOp};

const SHAPES: [&[usize]; 7] = [
    &[2, 3],
    &[1, 3],
    &[3],
    &[3, 3],
    &[3, 2],
    &[2, 1],
    &[2, 3, 2],
];
const OPS: u8 = 27;

#[derive(Clone, Debug)]
struct Case {
    /// (shape index, values) per input.
    inputs: Vec<(usize, Vec<f64>)>,
    /// Which inputs to differentiate (bit i = input i; at least one is always taken).
    wrt_mask: u8,
    /// (op, operand a, operand b, extra).
    steps: Vec<(u8, u16, u16, u8)>,
}

fn input_strategy() -> impl Strategy<Value = (usize, Vec<f64>)> {
    (0..SHAPES.len()).prop_flat_map(|i| {
        let n: usize = SHAPES[i].iter().product();
        (Just(i), prop::collection::vec(-1.0f64..1.0, n))
    })
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(input_strategy(), 1..=3),
        any::<u8>(),
        prop::collection::vec((0..OPS, any::<u16>(), any::<u16>(), any::<u8>()), 1..10),
    )
        .prop_map(|(inputs, wrt_mask, steps)| Case {
            inputs,
            wrt_mask,
            steps,
        })
}

fn dims_of(b: &B, x: NodeId) -> Vec<usize> {
    dims(&b.shape(x))
}

/// `x * x + 1` (>= 1).
fn sq1(b: &mut B, x: NodeId) -> NodeId {
    let sq = b.mul(x, x);
    b.add_c(sq, 1.0)
}

/// Picks a pool value whose shape broadcasts with `a`'s (there is always `a` itself).
fn compatible(b: &B, pool: &[NodeId], a: NodeId, sel: u16) -> NodeId {
    let sa = b.shape(a);
    let cands: Vec<NodeId> = pool
        .iter()
        .copied()
        .filter(|&p| sa.broadcast(&b.shape(p)).is_some())
        .collect();
    cands[sel as usize % cands.len()]
}

/// The `k % rank!`-th permutation of `0..rank` (in lexicographic order).
fn nth_permutation(rank: usize, k: usize) -> Vec<usize> {
    let fact = |n: usize| (1..=n).product::<usize>();
    let mut items: Vec<usize> = (0..rank).collect();
    let mut k = k % fact(rank);
    let mut perm = Vec::with_capacity(rank);
    for i in (0..rank).rev() {
        let f = fact(i);
        perm.push(items.remove(k / f));
        k %= f;
    }
    perm
}

/// `iota(n)` as an `f64` value of shape `[n]`, or `[n, 1]` when `column`.
fn iota(b: &mut B, n: usize, column: bool) -> NodeId {
    let i =
        b.g.add_leaf(Op::Iota { len: Dim::Known(n) }, DType::F64)
            .expect("iota leaf");
    if column {
        b.op(
            Op::Reshape {
                shape: Shape::known(&[n, 1]),
            },
            &[i],
        )
    } else {
        i
    }
}

/// `extent(n)` as an `f64` scalar.
fn extent(b: &mut B, n: usize) -> NodeId {
    b.g.add_leaf(Op::Extent { dim: Dim::Known(n) }, DType::F64)
        .expect("extent leaf")
}

/// An `iota` along the last axis of `a` (or the second-to-last, as a column, when `column`
/// and `a` has one), which broadcasts against `a`.
fn iota_like(b: &mut B, da: &[usize], column: bool) -> NodeId {
    match da {
        [.., m, _] if column => iota(b, *m, true),
        [.., n] => iota(b, *n, false),
        [] => iota(b, 1, false),
    }
}

fn step(b: &mut B, pool: &[NodeId], (op, ia, ib, extra): (u8, u16, u16, u8)) -> NodeId {
    let a = pool[ia as usize % pool.len()];
    let da = dims_of(b, a);
    match op {
        0 => b.un(UnaryOp::Neg, a),
        1 => b.un(UnaryOp::Tanh, a),
        2 => b.un(UnaryOp::Sigmoid, a),
        3 => {
            let th = b.un(UnaryOp::Tanh, a);
            b.un(UnaryOp::Exp, th)
        }
        4 => {
            let s = sq1(b, a);
            b.un(UnaryOp::Sqrt, s)
        }
        5 => {
            let s = sq1(b, a);
            b.un(UnaryOp::Rsqrt, s)
        }
        6 => {
            let s = sq1(b, a);
            b.un(UnaryOp::Log, s)
        }
        7 => b.un(UnaryOp::Silu, a),
        8 => b.un(UnaryOp::GeluTanh, a),
        25 => b.un(UnaryOp::Softplus, a),
        // |tanh(a) - 2|: abs away from its kink at 0 (the argument lies in (-3, -1)).
        26 => {
            let th = b.un(UnaryOp::Tanh, a);
            let two = b.c(2.0);
            let shifted = b.bin(BinaryOp::Sub, th, two);
            b.un(UnaryOp::Abs, shifted)
        }
        9..=11 => {
            let c = compatible(b, pool, a, ib);
            let fun = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul][(op - 9) as usize];
            b.bin(fun, a, c)
        }
        12 => {
            let c = compatible(b, pool, a, ib);
            let den = sq1(b, c);
            b.div(a, den)
        }
        13 => {
            let c = compatible(b, pool, a, ib);
            let base = sq1(b, a);
            let ex = b.un(UnaryOp::Tanh, c);
            b.bin(BinaryOp::Pow, base, ex)
        }
        14 => {
            // matmul: a (as a matrix) @ a compatible pool value, else a @ a^T.
            let a = if da.len() == 1 {
                b.op(
                    Op::Reshape {
                        shape: Shape::known(&[1, da[0]]),
                    },
                    &[a],
                )
            } else {
                a
            };
            let sa = b.shape(a);
            let k = &sa.0[sa.rank() - 1];
            let lead_a = Shape(sa.0[..sa.rank() - 2].to_vec());
            let cands: Vec<NodeId> = pool
                .iter()
                .copied()
                .filter(|&p| {
                    let sp = b.shape(p);
                    sp.rank() >= 2
                        && &sp.0[sp.rank() - 2] == k
                        && lead_a
                            .broadcast(&Shape(sp.0[..sp.rank() - 2].to_vec()))
                            .is_some()
                })
                .collect();
            let rhs = if cands.is_empty() {
                b.transpose(a)
            } else {
                cands[ib as usize % cands.len()]
            };
            b.matmul(a, rhs)
        }
        15 => {
            if da.len() >= 2 {
                b.transpose(a)
            } else {
                b.op(
                    Op::Reshape {
                        shape: Shape::known(&[da[0], 1]),
                    },
                    &[a],
                )
            }
        }
        16 => b.sum(a, extra as usize % da.len().max(1)),
        17 => b.mean(a, extra as usize % da.len().max(1)),
        18 => {
            // expand: to a pool shape it broadcasts to, else add a leading batch axis of 2.
            let sa = b.shape(a);
            let cands: Vec<Shape> = pool
                .iter()
                .map(|&p| b.shape(p))
                .filter(|s| *s != sa && sa.broadcasts_to(s))
                .collect();
            let target = if !cands.is_empty() {
                cands[ib as usize % cands.len()].clone()
            } else if da.len() <= 2 {
                let mut d = vec![2];
                d.extend(&da);
                Shape::known(&d)
            } else {
                return b.un(UnaryOp::Neg, a);
            };
            b.op(Op::Expand { shape: target }, &[a])
        }
        19 => {
            // sum_to: drop the leading axis of a rank >= 2 value, or set one axis to 1.
            let axis = extra as usize % da.len();
            let target = if da.len() >= 2 && extra % 2 == 0 {
                Shape::known(&da[1..])
            } else {
                let mut d = da.clone();
                d[axis] = 1;
                Shape::known(&d)
            };
            b.op(Op::SumTo { shape: target }, &[a])
        }
        20 => {
            let target = if da.len() >= 2 {
                Shape::known(&[da.iter().product()])
            } else {
                Shape::known(&[da[0], 1])
            };
            b.op(Op::Reshape { shape: target }, &[a])
        }
        22 => b.op(
            Op::Permute {
                perm: nth_permutation(da.len(), extra as usize),
            },
            &[a],
        ),
        23 => {
            // a * (iota + 1) / extent(one of a's axes)
            let i = iota_like(b, &da, extra % 2 == 1);
            let i1 = b.add_c(i, 1.0);
            let n = da
                .get(extra as usize % da.len().max(1))
                .copied()
                .unwrap_or(1);
            let e = extent(b, n);
            let k = b.div(i1, e);
            b.mul(a, k)
        }
        24 => {
            // a * (floor(iota / 2) - 1): floor of a constant only.
            let i = iota_like(b, &da, extra % 2 == 1);
            let h = b.scale(i, 0.5);
            let f = b.un(UnaryOp::Floor, h);
            let k = b.add_c(f, -1.0);
            b.mul(a, k)
        }
        _ => b.scale(a, extra as f64 / 64.0 - 2.0),
    }
}

/// Builds the graph of a case: output `loss` (the sum of every element of every pool value),
/// and outputs `v<i>` for every pool value (to measure the magnitudes involved).
fn build(case: &Case) -> (tttc_ir::Graph, Inputs, Vec<String>) {
    let mut b = B::new();
    let mut pool = Vec::new();
    let mut inputs = Inputs::new();
    let mut wrt = Vec::new();
    for (i, (si, vals)) in case.inputs.iter().enumerate() {
        let name = format!("x{i}");
        pool.push(b.input(&name, SHAPES[*si]));
        inputs.insert(name.clone(), t(SHAPES[*si], vals));
        if case.wrt_mask & (1 << i) != 0 {
            wrt.push(name);
        }
    }
    if wrt.is_empty() {
        wrt.push("x0".to_string());
    }
    for &s in &case.steps {
        let v = step(&mut b, &pool, s);
        pool.push(v);
    }
    let mut total = None;
    for &v in &pool {
        let s = b.sum_all(v);
        total = Some(match total {
            None => s,
            Some(acc) => b.add(acc, s),
        });
    }
    for (i, &v) in pool.iter().enumerate() {
        b.g.add_output(&format!("v{i}"), v);
    }
    let loss = total.expect("at least one input");
    (b.finish("loss", loss), inputs, wrt)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn gradients_match_finite_differences(case in case_strategy()) {
        let (g, inputs, wrt) = build(&case);
        // Magnitude scale: the sum of |value| over every intermediate value. Each forward
        // evaluation rounds with an absolute error of a few ulps of that scale (≈ 1e-16 · S per
        // op); central differences divide it by 2h = 2e-6, so the rounding noise is ≈ 1e-10 · S
        // times a small op count. The allowed error is therefore
        //     |ad - fd| <= 1e-5 · |fd| + 1e-7 · (1 + S),
        // i.e. ~100x the expected noise, while a wrong rule is off by O(|gradient|). The
        // truncation error h^2/6 · f''' ≈ 1e-13 for these smooth, O(1)-scaled functions is
        // negligible.
        let outs = eval(&g, &inputs);
        let scale: f64 = outs
            .iter()
            .filter(|(k, _)| k.starts_with('v'))
            .map(|(_, t)| t.as_f64().expect("f64").iter().map(|x| x.abs()).sum::<f64>())
            .sum();
        prop_assume!(scale.is_finite());
        let r = check_fd(&g, "loss", &inputs, &wrt, 1e-5, 1e-7, scale);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
