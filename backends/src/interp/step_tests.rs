//! The scan's step-graph path ([`tttc_ir::TttScan::step`]): a delta-rule scan
//! (`loss = ½‖x W − y‖²`, `out = q W`) with a hand-written step graph, run through the
//! interpreter with and without the step graph and against an independent plain-Rust reference.
//!
//! Tolerances: f64 ≤ 1e-12 relative to the largest magnitude (the three compute the same sums
//! in different orders); f32 step vs token by token ≤ 1e-5 relative.

use super::{eval_graph, InterpError};
use std::collections::BTreeMap;
use tttc_ir::{
    BinaryOp, DType, Dim, Graph, NodeId, Op, OperandAxes, ReduceOp, Shape, TensorType, TttScan,
    UnaryOp, MINI_BATCH_DIM,
};
use tttc_runtime::Tensor;

#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    l: usize,
    k: usize,
    f: usize,
    e: usize,
}

fn tt(dtype: DType, shape: Vec<Dim>) -> TensorType {
    TensorType::new(dtype, Shape(shape))
}

fn kn(dims: &[usize]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Known(d)).collect()
}

fn add(g: &mut Graph, op: Op, xs: &[NodeId]) -> NodeId {
    g.add(op, xs)
        .unwrap_or_else(|err| panic!("test graph: {err}"))
}

fn bin(g: &mut Graph, fun: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
    add(g, Op::Binary { fun }, &[a, b])
}

fn reshape(g: &mut Graph, x: NodeId, dims: Vec<Dim>) -> NodeId {
    add(g, Op::Reshape { shape: Shape(dims) }, &[x])
}

/// `½ Σ (x W − y)²`: inputs `W [f, e]`, `x [1, f]`, `y [1, e]`.
fn loss_graph(dtype: DType, d: Dims) -> Graph {
    let mut g = Graph::new();
    let w = g.add_input("W", tt(dtype, kn(&[d.f, d.e]))).unwrap();
    let x = g.add_input("x", tt(dtype, kn(&[1, d.f]))).unwrap();
    let y = g.add_input("y", tt(dtype, kn(&[1, d.e]))).unwrap();
    let p = add(&mut g, Op::MatMul, &[x, w]);
    let r = bin(&mut g, BinaryOp::Sub, p, y);
    let sq = bin(&mut g, BinaryOp::Mul, r, r);
    let s0 = add(
        &mut g,
        Op::Reduce {
            fun: ReduceOp::Sum,
            axis: 0,
        },
        &[sq],
    );
    let s1 = add(
        &mut g,
        Op::Reduce {
            fun: ReduceOp::Sum,
            axis: 1,
        },
        &[s0],
    );
    let s = reshape(&mut g, s1, vec![]);
    let half = g.add_const(0.5, dtype);
    let l = bin(&mut g, BinaryOp::Mul, s, half);
    g.add_output("loss", l);
    g
}

/// `grad_W = xᵀ (x W − y)`.
fn grad_graph(dtype: DType, d: Dims) -> Graph {
    let mut g = Graph::new();
    let w = g.add_input("W", tt(dtype, kn(&[d.f, d.e]))).unwrap();
    let x = g.add_input("x", tt(dtype, kn(&[1, d.f]))).unwrap();
    let y = g.add_input("y", tt(dtype, kn(&[1, d.e]))).unwrap();
    let p = add(&mut g, Op::MatMul, &[x, w]);
    let r = bin(&mut g, BinaryOp::Sub, p, y);
    let xt = add(&mut g, Op::Transpose, &[x]);
    let gw = add(&mut g, Op::MatMul, &[xt, r]);
    g.add_output("grad_W", gw);
    g
}

/// `q W`: inputs `W [f, e]`, `q [1, f]`.
fn out_graph(dtype: DType, d: Dims) -> Graph {
    let mut g = Graph::new();
    let w = g.add_input("W", tt(dtype, kn(&[d.f, d.e]))).unwrap();
    let q = g.add_input("q", tt(dtype, kn(&[1, d.f]))).unwrap();
    let z = add(&mut g, Op::MatMul, &[q, w]);
    g.add_output("out", z);
    g
}

/// Which step graph to build.
#[derive(Clone, Copy, PartialEq)]
enum StepKind {
    /// The primal form, as the scan-lowering pass defines it.
    Primal,
    /// A wrong one (the strictly lower-triangular mask), to show the step graph is what runs.
    StrictMask,
    /// No `next_W` output.
    NoNext,
}

/// The mini-batch step of the delta rule, written by hand: inputs `W [f, e]`, `x [$k, f]`,
/// `y [$k, e]`, `q [$k, f]`, `token_eta [$k]`, `lr [$k]`; outputs `out [$k, e]`, `next_W`.
fn step_graph(dtype: DType, d: Dims, kind: StepKind) -> Graph {
    let k = Dim::sym(MINI_BATCH_DIM);
    let (f, e) = (Dim::Known(d.f), Dim::Known(d.e));
    let one = Dim::Known(1);
    let mut g = Graph::new();
    let w = g
        .add_input("W", tt(dtype, vec![f.clone(), e.clone()]))
        .unwrap();
    let x = g
        .add_input("x", tt(dtype, vec![k.clone(), f.clone()]))
        .unwrap();
    let y = g
        .add_input("y", tt(dtype, vec![k.clone(), e.clone()]))
        .unwrap();
    let q = g
        .add_input("q", tt(dtype, vec![k.clone(), f.clone()]))
        .unwrap();
    let te = g
        .add_input("token_eta", tt(dtype, vec![k.clone()]))
        .unwrap();
    let lr = g.add_input("lr", tt(dtype, vec![k.clone()])).unwrap();
    // G [k, f, e]: one gradient per token at W.
    let x3 = reshape(&mut g, x, vec![k.clone(), one.clone(), f.clone()]);
    let y3 = reshape(&mut g, y, vec![k.clone(), one.clone(), e.clone()]);
    let p = add(&mut g, Op::MatMul, &[x3, w]);
    let r = bin(&mut g, BinaryOp::Sub, p, y3);
    let xt = add(&mut g, Op::Transpose, &[x3]);
    let grads = add(&mut g, Op::MatMul, &[xt, r]);
    // eta [k, k].
    let col = reshape(&mut g, te, vec![k.clone(), one.clone()]);
    let row = reshape(&mut g, lr, vec![one.clone(), k.clone()]);
    let rates = bin(&mut g, BinaryOp::Mul, col, row);
    let iota = g.add_leaf(Op::Iota { len: k.clone() }, dtype).unwrap();
    let ic = reshape(&mut g, iota, vec![k.clone(), one.clone()]);
    let jr = reshape(&mut g, iota, vec![one.clone(), k.clone()]);
    let diff = bin(&mut g, BinaryOp::Sub, ic, jr);
    let half = g.add_const(
        if kind == StepKind::StrictMask {
            -0.5
        } else {
            0.5
        },
        dtype,
    );
    let shifted = bin(&mut g, BinaryOp::Add, diff, half);
    let mask = add(&mut g, Op::Unary { fun: UnaryOp::Step }, &[shifted]);
    let eta = bin(&mut g, BinaryOp::Mul, rates, mask);
    // θ_i and the outputs.
    let mixed = add(&mut g, Op::Mix, &[eta, grads]);
    let w_all = bin(&mut g, BinaryOp::Sub, w, mixed);
    let q3 = reshape(&mut g, q, vec![k.clone(), one.clone(), f.clone()]);
    let z3 = add(&mut g, Op::MatMul, &[q3, w_all]);
    let z = reshape(&mut g, z3, vec![k.clone(), e.clone()]);
    g.add_output("out", z);
    // θ' from the last row of eta.
    let ext = g.add_leaf(Op::Extent { dim: k.clone() }, dtype).unwrap();
    let from_last = bin(&mut g, BinaryOp::Sub, iota, ext);
    let c = g.add_const(1.5, dtype);
    let s = bin(&mut g, BinaryOp::Add, from_last, c);
    let onehot = add(&mut g, Op::Unary { fun: UnaryOp::Step }, &[s]);
    let onehot = reshape(&mut g, onehot, vec![one.clone(), k.clone()]);
    let last = add(&mut g, Op::MatMul, &[onehot, eta]);
    let m = add(&mut g, Op::Mix, &[last, grads]);
    let m = reshape(&mut g, m, vec![f, e]);
    let next = bin(&mut g, BinaryOp::Sub, w, m);
    if kind != StepKind::NoNext {
        g.add_output(&TttScan::next_output_name("W"), next);
    }
    g
}

/// The main graph: a delta-rule scan per batch element.
fn main_graph(dtype: DType, d: Dims, grad: bool, step: Option<StepKind>) -> Graph {
    let Dims { b, l, k, f, e } = d;
    let mut g = Graph::new();
    let w0 = g.add_input("W0", tt(dtype, kn(&[b, f, e]))).unwrap();
    let xs = g.add_input("X", tt(dtype, kn(&[b, l, f]))).unwrap();
    let ys = g.add_input("Y", tt(dtype, kn(&[b, l, e]))).unwrap();
    let qs = g.add_input("Q", tt(dtype, kn(&[b, l, f]))).unwrap();
    let te = g.add_input("token_eta", tt(dtype, kn(&[k]))).unwrap();
    let lr = g.add_input("lr", tt(dtype, kn(&[b, l]))).unwrap();
    let seq = OperandAxes {
        per: vec![Some(0), None, None],
    };
    let scan = TttScan {
        model: "DeltaRule".into(),
        per: vec!["B".into()],
        mini_batch: Dim::Known(k),
        states: vec!["W".into()],
        params: vec![],
        loss_args: vec!["x".into(), "y".into()],
        out_args: vec!["q".into()],
        axes: vec![
            seq.clone(),
            seq.clone(),
            seq.clone(),
            seq,
            OperandAxes { per: vec![None] },
            OperandAxes {
                per: vec![Some(0), None],
            },
        ],
        token_eta: Default::default(),
        rule: Default::default(),
        doubling_rounds: None,
        loss: loss_graph(dtype, d),
        out: out_graph(dtype, d),
        grad: grad.then(|| grad_graph(dtype, d)),
        step: step.map(|kind| step_graph(dtype, d, kind)),
        step_vjp: None,
    };
    let t = g
        .add(Op::Ttt(Box::new(scan)), &[w0, xs, ys, qs, te, lr])
        .unwrap();
    let z = g.add(Op::Get { index: 0 }, &[t]).unwrap();
    let w = g.add(Op::Get { index: 1 }, &[t]).unwrap();
    g.add_output("Z", z);
    g.add_output("W_last", w);
    g
}

/// Deterministic values in [-1, 1).
fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

struct Data {
    w0: Vec<f64>,
    x: Vec<f64>,
    y: Vec<f64>,
    q: Vec<f64>,
    eta: Vec<f64>,
    lr: Vec<f64>,
}

fn data(d: Dims) -> Data {
    let Dims { b, l, k, f, e } = d;
    Data {
        w0: rand_vec(b * f * e, 1),
        x: rand_vec(b * l * f, 2),
        y: rand_vec(b * l * e, 3),
        q: rand_vec(b * l * f, 4),
        eta: (0..k).map(|i| 1.0 / (i as f64 + 1.0)).collect(),
        lr: rand_vec(b * l, 5).iter().map(|v| 0.25 + 0.2 * v).collect(),
    }
}

fn inputs(d: Dims, x: &Data, dtype: DType) -> BTreeMap<String, Tensor> {
    let Dims { b, l, k, f, e } = d;
    let t = |shape: Vec<usize>, v: &[f64]| match dtype {
        DType::F64 => Tensor::from_f64(shape, v.to_vec()).unwrap(),
        DType::F32 => {
            Tensor::from_f32(shape, v.iter().map(|&a| a as f32).collect::<Vec<_>>()).unwrap()
        }
    };
    BTreeMap::from([
        ("W0".to_string(), t(vec![b, f, e], &x.w0)),
        ("X".to_string(), t(vec![b, l, f], &x.x)),
        ("Y".to_string(), t(vec![b, l, e], &x.y)),
        ("Q".to_string(), t(vec![b, l, f], &x.q)),
        ("token_eta".to_string(), t(vec![k], &x.eta)),
        ("lr".to_string(), t(vec![b, l], &x.lr)),
    ])
}

/// An independent reference: `θ_i = θ − Σ_{j<=i} token_eta[i] lr[j] g_j` with plain loops.
fn reference(d: Dims, x: &Data) -> (Vec<f64>, Vec<f64>) {
    let Dims { b, l, k: kk, f, e } = d;
    let mut z = vec![0.0; b * l * e];
    let mut w_last = Vec::new();
    for bi in 0..b {
        let mut w = x.w0[bi * f * e..(bi + 1) * f * e].to_vec();
        let mut start = 0;
        while start < l {
            let k = kk.min(l - start);
            let grads: Vec<Vec<f64>> = (0..k)
                .map(|j| {
                    let t = bi * l + start + j;
                    let xj = &x.x[t * f..(t + 1) * f];
                    let yj = &x.y[t * e..(t + 1) * e];
                    let r: Vec<f64> = (0..e)
                        .map(|c| (0..f).map(|p| xj[p] * w[p * e + c]).sum::<f64>() - yj[c])
                        .collect();
                    (0..f * e).map(|i| xj[i / e] * r[i % e]).collect()
                })
                .collect();
            let mut w_i = w.clone();
            for i in 0..k {
                w_i = w.clone();
                for (j, g) in grads.iter().enumerate().take(i + 1) {
                    let coef = x.eta[i] * x.lr[bi * l + start + j];
                    for (a, gv) in w_i.iter_mut().zip(g) {
                        *a -= coef * gv;
                    }
                }
                let t = bi * l + start + i;
                let qi = &x.q[t * f..(t + 1) * f];
                for c in 0..e {
                    z[t * e + c] = (0..f).map(|p| qi[p] * w_i[p * e + c]).sum();
                }
            }
            w = w_i;
            start += k;
        }
        w_last.extend(w);
    }
    (z, w_last)
}

fn rel(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0.0f64,
            |m, v| if v.is_nan() { f64::INFINITY } else { m.max(v) },
        )
        / scale
}

fn run(d: Dims, dtype: DType, grad: bool, step: Option<StepKind>) -> (Vec<f64>, Vec<f64>) {
    let g = main_graph(dtype, d, grad, step);
    tttc_ir::verify::verify_graph(&g, "main").expect("verifies");
    let out = eval_graph(&g, &inputs(d, &data(d), dtype)).unwrap_or_else(|e| panic!("{e}"));
    (out["Z"].to_f64_vec(), out["W_last"].to_f64_vec())
}

const SHAPES: [(usize, usize); 5] = [(8, 4), (7, 3), (5, 1), (3, 5), (6, 6)];

#[test]
fn step_graph_matches_tokens_and_reference_in_f64() {
    for (l, k) in SHAPES {
        let d = Dims {
            b: 2,
            l,
            k,
            f: 3,
            e: 2,
        };
        let (z_ref, w_ref) = reference(d, &data(d));
        let (z_tok, w_tok) = run(d, DType::F64, true, None);
        let (z_step, w_step) = run(d, DType::F64, true, Some(StepKind::Primal));
        for (what, got, want) in [
            ("Z token", &z_tok, &z_ref),
            ("W token", &w_tok, &w_ref),
            ("Z step", &z_step, &z_ref),
            ("W step", &w_step, &w_ref),
        ] {
            let r = rel(got, want);
            assert!(r <= 1e-12, "L={l} K={k}: {what} differs by {r:e}");
        }
    }
}

#[test]
fn step_graph_matches_tokens_in_f32() {
    for (l, k) in SHAPES {
        let d = Dims {
            b: 2,
            l,
            k,
            f: 3,
            e: 2,
        };
        let (z_tok, w_tok) = run(d, DType::F32, true, None);
        let (z_step, w_step) = run(d, DType::F32, true, Some(StepKind::Primal));
        assert!(rel(&z_step, &z_tok) <= 1e-5, "L={l} K={k}: Z");
        assert!(rel(&w_step, &w_tok) <= 1e-5, "L={l} K={k}: W");
    }
}

#[test]
fn the_step_graph_defines_the_scan() {
    let d = Dims {
        b: 2,
        l: 7,
        k: 3,
        f: 3,
        e: 2,
    };
    // No gradient graph is needed when the step graph is there.
    let (z, w) = run(d, DType::F64, false, Some(StepKind::Primal));
    let (z_ref, w_ref) = reference(d, &data(d));
    assert!(rel(&z, &z_ref) <= 1e-12 && rel(&w, &w_ref) <= 1e-12);
    // A different step graph gives a different result: it is what runs.
    let (z_bad, _) = run(d, DType::F64, true, Some(StepKind::StrictMask));
    assert!(rel(&z_bad, &z_ref) > 1e-3);
    // Without either, the missing gradient is reported.
    let g = main_graph(DType::F64, d, false, None);
    let err = eval_graph(&g, &inputs(d, &data(d), DType::F64)).unwrap_err();
    assert!(matches!(err, InterpError::MissingGradient { .. }), "{err}");
}

#[test]
fn a_step_graph_without_next_state_is_reported() {
    let d = Dims {
        b: 1,
        l: 4,
        k: 2,
        f: 2,
        e: 2,
    };
    let g = main_graph(DType::F64, d, true, Some(StepKind::NoNext));
    let err = eval_graph(&g, &inputs(d, &data(d), DType::F64)).unwrap_err();
    assert!(matches!(err, InterpError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("next_W"), "{err}");
}

#[test]
fn a_step_graph_with_the_wrong_inputs_is_reported() {
    let d = Dims {
        b: 1,
        l: 4,
        k: 2,
        f: 2,
        e: 2,
    };
    let mut g = main_graph(DType::F64, d, true, None);
    // Give the scan a step graph that lacks the `lr` input.
    for id in g.node_ids() {
        if let Some(Op::Ttt(scan)) = g.node_mut(id).map(|n| &mut n.op) {
            let mut step = Graph::new();
            let w = step
                .add_input("W", tt(DType::F64, kn(&[d.f, d.e])))
                .unwrap();
            step.add_output("out", w);
            step.add_output("next_W", w);
            scan.step = Some(step);
        }
    }
    let err = eval_graph(&g, &inputs(d, &data(d), DType::F64)).unwrap_err();
    assert!(matches!(err, InterpError::Invalid { .. }), "{err}");
    assert!(
        err.to_string().contains("step graph takes 1 input"),
        "{err}"
    );
}
