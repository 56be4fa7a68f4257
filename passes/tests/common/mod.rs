//! Helpers shared by the autodiff tests: a terse IR builder, evaluation through the reference
//! interpreter, and central finite differences.
#![allow(dead_code)]

pub mod kernel_inputs;

use std::collections::BTreeMap;
use tttc_backends::interp::eval_graph;
use tttc_ir::{BinaryOp, DType, Dim, Graph, NodeId, Op, ReduceOp, Shape, TensorType, UnaryOp};
use tttc_runtime::Tensor;

/// Named input tensors.
pub type Inputs = BTreeMap<String, Tensor>;

/// An `f64` tensor.
pub fn t(shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::from_f64(shape.to_vec(), data.to_vec()).expect("tensor of a consistent shape")
}

/// A terse builder of `f64` graphs for tests.
#[derive(Default)]
pub struct B {
    pub g: Graph,
}

impl B {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn input(&mut self, name: &str, dims: &[usize]) -> NodeId {
        self.input_shape(name, Shape::known(dims))
    }
    pub fn input_shape(&mut self, name: &str, shape: Shape) -> NodeId {
        self.g
            .add_input(name, TensorType::new(DType::F64, shape))
            .expect("fresh input")
    }
    pub fn c(&mut self, v: f64) -> NodeId {
        self.g.add_const(v, DType::F64)
    }
    pub fn op(&mut self, op: Op, xs: &[NodeId]) -> NodeId {
        self.g
            .add(op, xs)
            .unwrap_or_else(|e| panic!("test graph: {e}"))
    }
    pub fn un(&mut self, fun: UnaryOp, x: NodeId) -> NodeId {
        self.op(Op::Unary { fun }, &[x])
    }
    pub fn bin(&mut self, fun: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
        self.op(Op::Binary { fun }, &[a, b])
    }
    pub fn add(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Add, a, b)
    }
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Sub, a, b)
    }
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Mul, a, b)
    }
    pub fn div(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Div, a, b)
    }
    pub fn scale(&mut self, a: NodeId, v: f64) -> NodeId {
        let c = self.c(v);
        self.mul(a, c)
    }
    pub fn add_c(&mut self, a: NodeId, v: f64) -> NodeId {
        let c = self.c(v);
        self.add(a, c)
    }
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.op(Op::MatMul, &[a, b])
    }
    pub fn transpose(&mut self, a: NodeId) -> NodeId {
        self.op(Op::Transpose, &[a])
    }
    pub fn reduce(&mut self, fun: ReduceOp, a: NodeId, axis: usize) -> NodeId {
        self.op(Op::Reduce { fun, axis }, &[a])
    }
    pub fn sum(&mut self, a: NodeId, axis: usize) -> NodeId {
        self.reduce(ReduceOp::Sum, a, axis)
    }
    pub fn mean(&mut self, a: NodeId, axis: usize) -> NodeId {
        self.reduce(ReduceOp::Mean, a, axis)
    }
    pub fn shape(&self, a: NodeId) -> Shape {
        self.g.tensor_type(a).expect("tensor node").shape.clone()
    }
    /// Sum of every element, as a scalar `[]`.
    pub fn sum_all(&mut self, a: NodeId) -> NodeId {
        let mut x = a;
        for axis in 0..self.shape(a).rank() {
            x = self.sum(x, axis);
        }
        self.op(
            Op::Reshape {
                shape: Shape::scalar(),
            },
            &[x],
        )
    }
    /// `0.5 * sum(x * x)` as a scalar.
    pub fn half_sq(&mut self, a: NodeId) -> NodeId {
        let sq = self.mul(a, a);
        let s = self.sum_all(sq);
        self.scale(s, 0.5)
    }
    /// LayerNorm over the last axis, then `* w + b`.
    pub fn layer_norm(&mut self, x: NodeId, w: NodeId, b: NodeId, eps: f64) -> NodeId {
        let axis = self.shape(x).rank() - 1;
        let mu = self.mean(x, axis);
        let c = self.sub(x, mu);
        let sq = self.mul(c, c);
        let var = self.mean(sq, axis);
        let ve = self.add_c(var, eps);
        let r = self.un(UnaryOp::Rsqrt, ve);
        let xhat = self.mul(c, r);
        let scaled = self.mul(xhat, w);
        self.add(scaled, b)
    }
    pub fn finish(mut self, output: &str, node: NodeId) -> Graph {
        self.g.add_output(output, node);
        self.g
    }
}

/// Known extents of a shape.
pub fn dims(s: &Shape) -> Vec<usize> {
    s.0.iter()
        .map(|d| match d {
            Dim::Known(n) => *n,
            Dim::Sym(s) => panic!("symbolic dim {s} in an evaluated graph"),
        })
        .collect()
}

/// Evaluates `g` with the reference interpreter.
pub fn eval(g: &Graph, inputs: &Inputs) -> BTreeMap<String, Tensor> {
    eval_graph(g, inputs).unwrap_or_else(|e| panic!("interpreter failed: {e:?}"))
}

/// The `f64` elements of output `name`.
pub fn output(g: &Graph, inputs: &Inputs, name: &str) -> Vec<f64> {
    let outs = eval(g, inputs);
    let t = outs
        .get(name)
        .unwrap_or_else(|| panic!("no output `{name}`"));
    t.as_f64().expect("f64 output").to_vec()
}

/// The one-element output `name` as a number.
pub fn scalar(g: &Graph, inputs: &Inputs, name: &str) -> f64 {
    let v = output(g, inputs, name);
    assert_eq!(v.len(), 1, "output `{name}` is not a scalar");
    v[0]
}

/// Central finite differences of the scalar output `out` w.r.t. every element of input `wrt`.
pub fn finite_diff(g: &Graph, out: &str, inputs: &Inputs, wrt: &str, h: f64) -> Vec<f64> {
    let base = &inputs[wrt];
    let shape = base.shape().to_vec();
    let data = base.as_f64().expect("f64 input").to_vec();
    (0..data.len())
        .map(|i| {
            let at = |delta: f64| {
                let mut d = data.clone();
                d[i] += delta;
                let mut ins = inputs.clone();
                ins.insert(wrt.to_string(), t(&shape, &d));
                scalar(g, &ins, out)
            };
            (at(h) - at(-h)) / (2.0 * h)
        })
        .collect()
}

/// Step of the central differences. With values of order 1, the truncation error h^2 f'''/6
/// is ~1e-13 and the rounding error ~eps |f| / h ~ 1e-10 |f|, both far below the tolerances.
pub const H: f64 = 1e-6;

/// Compares the gradient graph of `g` (output `out`, inputs `wrt`) against central finite
/// differences. An entry passes when `|ad - fd| <= rel * |fd| + abs * (1 + scale)`, where
/// `scale` bounds the magnitude of the values whose rounding errors the differences amplify
/// (the caller passes e.g. |loss| or the sum of |intermediate values|).
pub fn check_fd(
    g: &Graph,
    out: &str,
    inputs: &Inputs,
    wrt: &[String],
    rel: f64,
    abs: f64,
    scale: f64,
) -> Result<(), String> {
    let grad = tttc_passes::autodiff::gradient_graph(g, out, wrt).map_err(|e| e.to_string())?;
    tttc_ir::verify::verify_graph(&grad, "grad").map_err(|e| e.to_string())?;
    let outs = eval(&grad, inputs);
    for name in wrt {
        let key = format!("grad_{name}");
        let ad = outs
            .get(&key)
            .ok_or_else(|| format!("missing output {key}"))?;
        if ad.shape() != inputs[name].shape() {
            return Err(format!(
                "{key} has shape {:?}, input has {:?}",
                ad.shape(),
                inputs[name].shape()
            ));
        }
        let ad = ad.as_f64().ok_or("f64 gradient")?;
        let fd = finite_diff(g, out, inputs, name, H);
        for (i, (a, f)) in ad.iter().zip(&fd).enumerate() {
            let tol = rel * f.abs() + abs * (1.0 + scale);
            // Written so that a NaN fails.
            let ok = (a - f).abs() <= tol;
            if !ok {
                return Err(format!(
                    "{key}[{i}]: autodiff {a:e}, finite differences {f:e} (|diff| {:e} > tol {tol:e})\nad = {ad:?}\nfd = {fd:?}",
                    (a - f).abs()
                ));
            }
        }
    }
    Ok(())
}

/// Deterministic pseudo-random values in [-1, 1) (an LCG; tests need no RNG crate).
pub fn values(seed: u64, n: usize) -> Vec<f64> {
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

/// Inputs of `g` filled with `values(seed + i)` in their (known) shapes.
pub fn random_inputs(g: &Graph, seed: u64) -> Inputs {
    g.inputs()
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let name = g.input_name(id).expect("input").to_string();
            let shape = dims(&g.tensor_type(id).expect("tensor").shape);
            let n = shape.iter().product();
            (name, t(&shape, &values(seed + i as u64, n)))
        })
        .collect()
}

/// The names of `g`'s inputs.
pub fn input_names(g: &Graph) -> Vec<String> {
    g.inputs()
        .iter()
        .map(|&id| g.input_name(id).expect("input").to_string())
        .collect()
}

/// Approximate equality of two vectors.
pub fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "element {i}: got {a}, want {b}\n got  {got:?}\n want {want:?}"
        );
    }
}

// Helpers of the rewrite tests (`rewrite_*.rs`).

impl B {
    /// `mix(w, x)`.
    pub fn mix(&mut self, w: NodeId, x: NodeId) -> NodeId {
        self.op(Op::Mix, &[w, x])
    }
    /// `mix_outer(w, u, d)`.
    pub fn mix_outer(&mut self, w: NodeId, u: NodeId, d: NodeId) -> NodeId {
        self.op(Op::MixOuter, &[w, u, d])
    }
    /// `reshape(x, dims)` to known extents.
    pub fn reshape(&mut self, x: NodeId, dims: &[usize]) -> NodeId {
        self.reshape_to(x, Shape::known(dims))
    }
    /// `reshape(x, shape)`.
    pub fn reshape_to(&mut self, x: NodeId, shape: Shape) -> NodeId {
        self.op(Op::Reshape { shape }, &[x])
    }
    /// `permute(x, perm)`.
    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> NodeId {
        self.op(
            Op::Permute {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }
    /// `expand(x, dims)`.
    pub fn expand(&mut self, x: NodeId, dims: &[usize]) -> NodeId {
        self.op(
            Op::Expand {
                shape: Shape::known(dims),
            },
            &[x],
        )
    }
    /// `sum_to(x, dims)`.
    pub fn sum_to(&mut self, x: NodeId, dims: &[usize]) -> NodeId {
        self.op(
            Op::SumTo {
                shape: Shape::known(dims),
            },
            &[x],
        )
    }
    /// `neg(x)`.
    pub fn neg(&mut self, x: NodeId) -> NodeId {
        self.un(UnaryOp::Neg, x)
    }
}

/// Every output of `g` at `inputs`, as `f64` vectors.
pub fn all_outputs(g: &Graph, inputs: &Inputs) -> BTreeMap<String, Vec<f64>> {
    eval(g, inputs)
        .into_iter()
        .map(|(k, v)| (k, v.as_f64().expect("f64 output").to_vec()))
        .collect()
}

/// `max |got - want| / max(1e-300, max |want|)`; infinite on a length mismatch or a NaN.
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
    let mut worst = 0.0f64;
    for (a, b) in got.iter().zip(want) {
        let d = (a - b).abs();
        if d.is_nan() {
            return f64::INFINITY;
        }
        worst = worst.max(d / scale);
    }
    worst
}

/// Asserts that `a` and `b` have the same outputs (names and values within `tol` relative to
/// each output's largest magnitude) at `inputs`.
pub fn assert_same_results(a: &Graph, b: &Graph, inputs: &Inputs, tol: f64) {
    let (ra, rb) = (all_outputs(a, inputs), all_outputs(b, inputs));
    assert_eq!(
        ra.keys().collect::<Vec<_>>(),
        rb.keys().collect::<Vec<_>>(),
        "output names differ"
    );
    for (name, want) in &ra {
        let err = rel_err(&rb[name], want);
        assert!(
            err <= tol,
            "output `{name}`: relative error {err:e} > {tol:e}\n got  {:?}\n want {want:?}",
            rb[name]
        );
    }
}

/// Number of nodes of `g` whose op satisfies `pred`.
pub fn count_where(g: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    g.node_ids()
        .into_iter()
        .filter(|&id| pred(&g.node(id).op))
        .count()
}

/// Whether some node of `g` has the tensor shape `dims`.
pub fn has_shape(g: &Graph, dims: &[Dim]) -> bool {
    g.node_ids()
        .into_iter()
        .any(|id| g.tensor_type(id).is_some_and(|t| t.shape.0 == dims))
}
