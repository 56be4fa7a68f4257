//! Inner models other than the paper's two, run through the same CLI and compared with an
//! independent implementation written here by hand (its gradient derived on paper), in f64.
//!
//! Tolerance 1e-12 relative to max |expected|: both sides compute the same f64 math with
//! different summation orders over a few dozen terms.

mod common;

use common::*;
use std::collections::BTreeMap;
use tttc::runtime::{write_safetensors, Tensor};

/// Deterministic pseudo-random values in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// The delta rule by hand: per (b, h), mini-batches of k tokens from W:
/// g_j = k_jᵀ (k_j W − v_j); W_i = W − e[i] Σ_{j≤i} lr_j g_j; o_i = q_i W_i.
#[allow(clippy::too_many_arguments)]
fn delta_rule_reference(
    (b_n, h_n, l, dk, dv, kk): (usize, usize, usize, usize, usize, usize),
    q: &[f64],
    k: &[f64],
    v: &[f64],
    w0: &[f64],
    eta: &[f64],
    lr: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; b_n * h_n * l * dv];
    let mut w_last = vec![0.0; b_n * h_n * dk * dv];
    for b in 0..b_n {
        for h in 0..h_n {
            let mut w: Vec<f64> = w0[h * dk * dv..(h + 1) * dk * dv].to_vec();
            let tok = |x: &[f64], t: usize, d: usize| -> Vec<f64> {
                let base = ((b * h_n + h) * l + t) * d;
                x[base..base + d].to_vec()
            };
            let mut t0 = 0;
            while t0 < l {
                let n = kk.min(l - t0);
                let grads: Vec<Vec<f64>> = (0..n)
                    .map(|j| {
                        let (kj, vj) = (tok(k, t0 + j, dk), tok(v, t0 + j, dv));
                        let mut resid = vec![0.0; dv];
                        for c in 0..dv {
                            resid[c] = (0..dk).map(|r| kj[r] * w[r * dv + c]).sum::<f64>() - vj[c];
                        }
                        let mut g = vec![0.0; dk * dv];
                        for r in 0..dk {
                            for c in 0..dv {
                                g[r * dv + c] = kj[r] * resid[c];
                            }
                        }
                        g
                    })
                    .collect();
                let mut wi = w.clone();
                for i in 0..n {
                    wi = w.clone();
                    for j in 0..=i {
                        let lr_j = lr[(b * h_n + h) * l + t0 + j];
                        for (x, g) in wi.iter_mut().zip(&grads[j]) {
                            *x -= eta[i] * lr_j * g;
                        }
                    }
                    let qi = tok(q, t0 + i, dk);
                    for c in 0..dv {
                        out[((b * h_n + h) * l + t0 + i) * dv + c] =
                            (0..dk).map(|r| qi[r] * wi[r * dv + c]).sum();
                    }
                }
                w = wi;
                t0 += n;
            }
            w_last[(b * h_n + h) * dk * dv..(b * h_n + h + 1) * dk * dv].copy_from_slice(&w);
        }
    }
    (out, w_last)
}

fn run_delta_rule(mini_batch: usize, l: usize) {
    let (b_n, h_n, dk, dv) = (2, 3, 5, 4);
    let mut rng = Lcg(mini_batch as u64 * 1000 + l as u64);
    let q = rng.vec(b_n * h_n * l * dk, 1.0);
    let k = rng.vec(b_n * h_n * l * dk, 1.0);
    let v = rng.vec(b_n * h_n * l * dv, 1.0);
    let w0 = rng.vec(h_n * dk * dv, 0.3);
    let eta: Vec<f64> = (0..mini_batch).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let lr: Vec<f64> = rng
        .vec(b_n * h_n * l, 0.05)
        .iter()
        .map(|x| x + 0.1)
        .collect();
    let t = |shape: Vec<usize>, d: &[f64]| Tensor::from_f64(shape, d.to_vec()).expect("sizes");
    let inputs: BTreeMap<String, Tensor> = [
        ("Q", t(vec![b_n, h_n, l, dk], &q)),
        ("K", t(vec![b_n, h_n, l, dk], &k)),
        ("V", t(vec![b_n, h_n, l, dv], &v)),
        ("W0", t(vec![h_n, dk, dv], &w0)),
        ("position_scale", t(vec![mini_batch], &eta)),
        ("lr", t(vec![b_n, h_n, l], &lr)),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let in_path = dir.path().join("in.safetensors");
    let out_path = dir.path().join("out.safetensors");
    write_safetensors(&in_path, &inputs).expect("write inputs");
    let set = format!("mini_batch_size={mini_batch}");
    let run = tttc(&[
        "run",
        "examples/delta_rule.ttt",
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
    let (o, w) = delta_rule_reference(
        (b_n, h_n, l, dk, dv, mini_batch),
        &q,
        &k,
        &v,
        &w0,
        &eta,
        &lr,
    );
    let err_o = rel_error(&got["O"], &t(vec![b_n, h_n, l, dv], &o));
    let err_w = rel_error(&got["W_last"], &t(vec![b_n, h_n, dk, dv], &w));
    assert!(err_o < 1e-12, "K={mini_batch} L={l}: O rel error {err_o:e}");
    assert!(
        err_w < 1e-12,
        "K={mini_batch} L={l}: W_last rel error {err_w:e}"
    );
}

#[test]
fn delta_rule_online_gd() {
    run_delta_rule(1, 7);
}

#[test]
fn delta_rule_minibatch_with_remainder() {
    run_delta_rule(4, 11);
}

#[test]
fn delta_rule_one_partial_minibatch() {
    run_delta_rule(8, 5);
}
