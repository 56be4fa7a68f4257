//! Inner models other than the paper's two, run through the CLI and compared with an
//! independent implementation written here by hand: a plain mini-batch gradient-descent loop
//! over per-token gradients derived on paper (no autodiff, no IR), in f64.
//!
//! Tolerance 1e-12 relative to max |expected|: both sides compute the same f64 math with
//! different summation orders over at most a few hundred terms.

mod common;

use common::random::Lcg;
use common::*;
use std::collections::BTreeMap;
use tttc::runtime::{write_safetensors, Tensor};

/// Row-major matrix helpers on flat slices.
fn matvec_row(x: &[f64], w: &[f64], cols: usize) -> Vec<f64> {
    (0..cols)
        .map(|c| {
            x.iter()
                .enumerate()
                .map(|(r, xr)| xr * w[r * cols + c])
                .sum()
        })
        .collect()
}

fn outer(x: &[f64], d: &[f64]) -> Vec<f64> {
    x.iter()
        .flat_map(|&a| d.iter().map(move |&b| a * b))
        .collect()
}

/// `W d` for a row-major `W [rows, cols]` and `d [cols]` (backprop through `x W`).
fn back_row(w: &[f64], d: &[f64], rows: usize) -> Vec<f64> {
    let cols = d.len();
    (0..rows)
        .map(|r| (0..cols).map(|c| w[r * cols + c] * d[c]).sum())
        .collect()
}

/// An inner model by hand: per-token gradients of every state, and the output.
trait Model {
    fn grads(&self, states: &[Vec<f64>], k: &[f64], v: &[f64]) -> Vec<Vec<f64>>;
    fn out(&self, states: &[Vec<f64>], q: &[f64]) -> Vec<f64>;
}

/// One sequence's queries, keys and values, a row per token.
type Rows<'a> = (&'a [Vec<f64>], &'a [Vec<f64>], &'a [Vec<f64>]);

/// Mini-batch GD over one sequence: θ_i = θ − e[i] Σ_{j≤i} lr_j g_j, out_i = out(θ_i, q_i).
fn scan(
    model: &dyn Model,
    mut states: Vec<Vec<f64>>,
    (q, k, v): Rows,
    eta: &[f64],
    lr: &[f64],
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let l = q.len();
    let kk = eta.len();
    let mut outs = Vec::with_capacity(l);
    let mut t0 = 0;
    while t0 < l {
        let n = kk.min(l - t0);
        let grads: Vec<Vec<Vec<f64>>> = (0..n)
            .map(|j| model.grads(&states, &k[t0 + j], &v[t0 + j]))
            .collect();
        let mut current = states.clone();
        for i in 0..n {
            current = states.clone();
            for (s, state) in current.iter_mut().enumerate() {
                for (j, g) in grads.iter().enumerate().take(i + 1) {
                    for (x, gj) in state.iter_mut().zip(&g[s]) {
                        *x -= eta[i] * lr[t0 + j] * gj;
                    }
                }
            }
            outs.push(model.out(&current, &q[t0 + i]));
        }
        states = current;
        t0 += n;
    }
    (outs, states)
}

struct DeltaRule {
    dv: usize,
}

impl Model for DeltaRule {
    fn grads(&self, s: &[Vec<f64>], k: &[f64], v: &[f64]) -> Vec<Vec<f64>> {
        // loss = ½‖kW − v‖², ∇_W = kᵀ (kW − v)
        let resid: Vec<f64> = matvec_row(k, &s[0], self.dv)
            .iter()
            .zip(v)
            .map(|(a, b)| a - b)
            .collect();
        vec![outer(k, &resid)]
    }
    fn out(&self, s: &[Vec<f64>], q: &[f64]) -> Vec<f64> {
        matvec_row(q, &s[0], self.dv)
    }
}

struct Mlp3 {
    d: usize,
    h: usize,
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn silu_d(x: f64) -> f64 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
}

impl Mlp3 {
    /// Forward pass: pre-activations and activations of both hidden layers, and the output.
    #[allow(clippy::type_complexity)]
    fn forward(
        &self,
        s: &[Vec<f64>],
        x: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let z1 = matvec_row(x, &s[0], self.h);
        let a1: Vec<f64> = z1.iter().map(|&z| silu(z)).collect();
        let z2 = matvec_row(&a1, &s[1], self.h);
        let a2: Vec<f64> = z2.iter().map(|&z| silu(z)).collect();
        let y = matvec_row(&a2, &s[2], self.d);
        (z1, a1, z2, a2, y)
    }
}

impl Model for Mlp3 {
    fn grads(&self, s: &[Vec<f64>], k: &[f64], v: &[f64]) -> Vec<Vec<f64>> {
        // loss = ½‖silu(silu(k W1) W2) W3 − v‖², backpropagated by hand.
        let (z1, a1, z2, a2, y) = self.forward(s, k);
        let dy: Vec<f64> = y.iter().zip(v).map(|(a, b)| a - b).collect();
        let g3 = outer(&a2, &dy);
        let da2 = back_row(&s[2], &dy, self.h);
        let dz2: Vec<f64> = da2.iter().zip(&z2).map(|(g, &z)| g * silu_d(z)).collect();
        let g2 = outer(&a1, &dz2);
        let da1 = back_row(&s[1], &dz2, self.h);
        let dz1: Vec<f64> = da1.iter().zip(&z1).map(|(g, &z)| g * silu_d(z)).collect();
        let g1 = outer(k, &dz1);
        vec![g1, g2, g3]
    }
    fn out(&self, s: &[Vec<f64>], q: &[f64]) -> Vec<f64> {
        self.forward(s, q).4
    }
}

struct Setup<'a> {
    program: &'a str,
    /// Names of Q, K, V, the states (initial and final), the per-position scale, the lr.
    q: &'a str,
    k: &'a str,
    v: &'a str,
    out: &'a str,
    states: &'a [(&'a str, &'a str, usize, usize)],
    position_scale: &'a str,
    lr: &'a str,
    dims: (usize, usize, usize, usize, usize), // B, H, L, dk, dv
}

fn check_against_reference(setup: &Setup, model: &dyn Model, mini_batch: usize) {
    let (b_n, h_n, l, dk, dv) = setup.dims;
    let mut rng = Lcg(mini_batch as u64 * 7919 + l as u64);
    let q = rng.vec(b_n * h_n * l * dk, 1.0);
    let k = rng.vec(b_n * h_n * l * dk, 1.0);
    let v = rng.vec(b_n * h_n * l * dv, 1.0);
    let init: Vec<Vec<f64>> = setup
        .states
        .iter()
        .map(|(_, _, r, c)| rng.vec(h_n * r * c, 0.3))
        .collect();
    let eta: Vec<f64> = (0..mini_batch).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let lr: Vec<f64> = rng
        .vec(b_n * h_n * l, 0.05)
        .iter()
        .map(|x| x + 0.1)
        .collect();
    let t = |shape: Vec<usize>, d: &[f64]| Tensor::from_f64(shape, d.to_vec()).expect("sizes");
    let mut inputs: BTreeMap<String, Tensor> = BTreeMap::new();
    inputs.insert(setup.q.into(), t(vec![b_n, h_n, l, dk], &q));
    inputs.insert(setup.k.into(), t(vec![b_n, h_n, l, dk], &k));
    inputs.insert(setup.v.into(), t(vec![b_n, h_n, l, dv], &v));
    for ((name, _, r, c), data) in setup.states.iter().zip(&init) {
        inputs.insert((*name).into(), t(vec![h_n, *r, *c], data));
    }
    inputs.insert(setup.position_scale.into(), t(vec![mini_batch], &eta));
    inputs.insert(setup.lr.into(), t(vec![b_n, h_n, l], &lr));
    let dir = tempfile::tempdir().expect("tempdir");
    let in_path = dir.path().join("in.safetensors");
    let out_path = dir.path().join("out.safetensors");
    write_safetensors(&in_path, &inputs).expect("write inputs");
    let set = format!("mini_batch_size={mini_batch}");
    let run = tttc(&[
        "run",
        setup.program,
        "--inputs",
        in_path.to_str().expect("utf-8"),
        "--out",
        out_path.to_str().expect("utf-8"),
        "--precision",
        "f64",
        "--set",
        &set,
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let got = load(&out_path);
    // The reference, slice by slice.
    let mut want_out = Vec::new();
    let mut want_states: Vec<Vec<f64>> = vec![Vec::new(); setup.states.len()];
    for b in 0..b_n {
        for h in 0..h_n {
            let rows = |x: &[f64], d: usize| -> Vec<Vec<f64>> {
                (0..l)
                    .map(|t| {
                        x[((b * h_n + h) * l + t) * d..((b * h_n + h) * l + t + 1) * d].to_vec()
                    })
                    .collect()
            };
            let states: Vec<Vec<f64>> = setup
                .states
                .iter()
                .zip(&init)
                .map(|((_, _, r, c), data)| data[h * r * c..(h + 1) * r * c].to_vec())
                .collect();
            let lr_bh = &lr[(b * h_n + h) * l..(b * h_n + h + 1) * l];
            let (outs, last) = scan(
                model,
                states,
                (&rows(&q, dk), &rows(&k, dk), &rows(&v, dv)),
                &eta,
                lr_bh,
            );
            want_out.extend(outs.into_iter().flatten());
            for (acc, s) in want_states.iter_mut().zip(last) {
                acc.extend(s);
            }
        }
    }
    let err = rel_error(&got[setup.out], &t(vec![b_n, h_n, l, dv], &want_out));
    assert!(
        err < 1e-12,
        "{} K={mini_batch}: {} rel error {err:e}",
        setup.program,
        setup.out
    );
    for ((_, last_name, r, c), want) in setup.states.iter().zip(&want_states) {
        let err = rel_error(&got[*last_name], &t(vec![b_n, h_n, *r, *c], want));
        assert!(
            err < 1e-12,
            "{} K={mini_batch}: {last_name} rel error {err:e}",
            setup.program
        );
    }
}

const DELTA: Setup = Setup {
    program: "examples/delta_rule.ttt",
    q: "Q",
    k: "K",
    v: "V",
    out: "O",
    states: &[("W0", "W_last", 5, 4)],
    position_scale: "position_scale",
    lr: "lr",
    dims: (2, 3, 11, 5, 4),
};

const MLP3: Setup = Setup {
    program: "examples/mlp3_silu.ttt",
    q: "Q",
    k: "K",
    v: "V",
    out: "O",
    states: &[
        ("W1", "W1_last", 4, 6),
        ("W2", "W2_last", 6, 6),
        ("W3", "W3_last", 6, 4),
    ],
    position_scale: "position_scale",
    lr: "lr",
    dims: (1, 2, 13, 4, 4),
};

#[test]
fn delta_rule_online_gd() {
    check_against_reference(&DELTA, &DeltaRule { dv: 4 }, 1);
}

#[test]
fn delta_rule_minibatch_with_remainder() {
    check_against_reference(&DELTA, &DeltaRule { dv: 4 }, 4);
}

#[test]
fn delta_rule_one_partial_minibatch() {
    check_against_reference(&DELTA, &DeltaRule { dv: 4 }, 16);
}

#[test]
fn mlp3_silu_minibatch_with_remainder() {
    check_against_reference(&MLP3, &Mlp3 { d: 4, h: 6 }, 4);
}

#[test]
fn mlp3_silu_online_gd() {
    check_against_reference(&MLP3, &Mlp3 { d: 4, h: 6 }, 1);
}
