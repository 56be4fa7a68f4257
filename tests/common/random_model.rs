//! Random inner models as `.ttt` source: a chain of layers `x @ W_i (+ b_i)` with activations,
//! an optional elementwise scale state, LayerNorm and residual, inside a `ttt` scan — and
//! deterministic inputs for them. Shared by the pass- and backend-equivalence tests.

#![allow(dead_code)]

use proptest::prelude::*;
use std::collections::BTreeMap;
use tttc::runtime::Tensor;

const ACTIVATIONS: [&str; 6] = ["tanh", "sigmoid", "silu", "gelu_tanh", "relu", ""];

/// A random inner model: a chain of layers `x @ W_i (+ b_i)` with activations, an optional
/// elementwise scale state, an optional LayerNorm and residual.
#[derive(Debug, Clone)]
pub struct Model {
    pub d: usize,
    pub widths: Vec<usize>,
    pub biases: Vec<bool>,
    pub acts: Vec<usize>,
    pub scale: bool,
    pub norm: bool,
    pub residual: bool,
}

/// Random models.
pub fn model() -> impl Strategy<Value = Model> {
    (2..4usize, 1..4usize).prop_flat_map(|(d, layers)| {
        (
            Just(d),
            prop::collection::vec(2..5usize, layers - 1),
            prop::collection::vec(any::<bool>(), layers),
            prop::collection::vec(0..ACTIVATIONS.len(), layers),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(d, mut widths, biases, acts, scale, norm, residual)| {
                widths.push(d);
                Model {
                    d,
                    widths,
                    biases,
                    acts,
                    scale,
                    norm,
                    residual,
                }
            })
    })
}

impl Model {
    /// The program text and the shapes of its states (per head).
    pub fn source(&self) -> (String, Vec<(String, Vec<usize>)>) {
        let mut states = Vec::new();
        let mut decls = String::new();
        let mut expr = "x".to_string();
        let mut width = self.d;
        for (i, &w) in self.widths.iter().enumerate() {
            decls += &format!("  state W{i}: [{width}, {w}]\n");
            states.push((format!("W{i}"), vec![width, w]));
            expr = format!("({expr} @ W{i})");
            if self.biases[i] {
                decls += &format!("  state b{i}: [1, {w}]\n");
                states.push((format!("b{i}"), vec![1, w]));
                expr = format!("({expr} + b{i})");
            }
            let act = ACTIVATIONS[self.acts[i]];
            if !act.is_empty() && i + 1 < self.widths.len() {
                expr = format!("{act}({expr})");
            }
            width = w;
        }
        if self.scale {
            decls += &format!("  state s: [1, {}]\n", self.d);
            states.push(("s".into(), vec![1, self.d]));
            expr = format!("({expr} * s)");
        }
        if self.norm {
            decls += &format!("  param lnw, lnb: [{}]\n", self.d);
            expr = format!("layer_norm({expr}, lnw, lnb, 1e-6)");
        }
        if self.residual {
            expr = format!("x + {expr}");
        }
        let mut bindings: Vec<String> = states.iter().map(|(n, _)| format!("{n} = {n}")).collect();
        let mut inputs: Vec<String> = states
            .iter()
            .map(|(n, s)| {
                format!(
                    "  input {n}: [H, {}]\n",
                    s.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        if self.norm {
            bindings.push("lnw = lnw, lnb = lnb".into());
            inputs.push(format!("  input lnw, lnb: [H, {}]\n", self.d));
        }
        let d = self.d;
        let text = format!(
            "config mini_batch_size = 4\n\
             inner M {{\n{decls}\
               fn g(x: [1, {d}]) -> [1, {d}] = {expr}\n\
               loss(k: [1, {d}], v: [1, {d}]) = 0.5 * sum((g(k) - v) ^ 2)\n\
               out(q: [1, {d}]) = g(q)\n\
             }}\n\
             main {{\n\
               input XQ, XK, XV: [B, H, L, {d}]\n\
               input eta: [mini_batch_size]\n\
               input lr: [B, H, L]\n{inputs}\
               let r = ttt M({bindings}, k = XK, v = XV, q = XQ) per (B, H)\n\
                 update minibatch_gd(size = mini_batch_size, token_eta = eta, lr = lr)\n\
               output Z = r.out\n{finals}\
             }}\n",
            inputs = inputs.concat(),
            bindings = bindings.join(", "),
            finals = states
                .iter()
                .map(|(n, _)| format!("  output {n}_last = r.{n}\n"))
                .collect::<String>(),
        );
        (text, states)
    }
}

/// Deterministic values in [-scale, scale).
pub fn values(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    super::random::Lcg(
        seed.wrapping_mul(2862933555777941757)
            .wrapping_add(3037000493),
    )
    .vec(n, scale)
}

/// Inputs for `m` at batch `b`, heads `h`, length `l`, mini-batch `k`.
pub fn inputs(
    m: &Model,
    states: &[(String, Vec<usize>)],
    (b, h, l, k): (usize, usize, usize, usize),
    seed: u64,
) -> BTreeMap<String, Tensor> {
    let d = m.d;
    let t = |shape: Vec<usize>, salt: u64, scale: f64| {
        let n = shape.iter().product();
        Tensor::from_f64(shape, values(seed ^ salt, n, scale)).expect("sizes")
    };
    let mut inputs = BTreeMap::new();
    inputs.insert("XQ".to_string(), t(vec![b, h, l, d], 1, 1.0));
    inputs.insert("XK".to_string(), t(vec![b, h, l, d], 2, 1.0));
    inputs.insert("XV".to_string(), t(vec![b, h, l, d], 3, 1.0));
    let eta: Vec<f64> = (0..k).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    inputs.insert(
        "eta".to_string(),
        Tensor::from_f64(vec![k], eta).expect("sizes"),
    );
    inputs.insert("lr".to_string(), t(vec![b, h, l], 4, 0.2));
    for (i, (name, shape)) in states.iter().enumerate() {
        let mut s = vec![h];
        s.extend(shape);
        inputs.insert(name.clone(), t(s, 10 + i as u64, 0.5));
    }
    if m.norm {
        inputs.insert("lnw".to_string(), t(vec![h, d], 5, 1.0));
        inputs.insert("lnb".to_string(), t(vec![h, d], 6, 0.3));
    }
    inputs
}
