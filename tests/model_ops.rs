//! The ops and prelude functions a whole language model adds — `slice`, `shift` (with and
//! without a history fill), `causal_conv`, `embedding` — written in the DSL, compiled through
//! the whole pipeline and run on every built backend (interpreter, LLVM, Cranelift), against
//! values computed here by plain loops.
//!
//! Tolerances: slices, shifts and the embedding (a gather) only move numbers, so every backend
//! must match exactly (bit for bit). The convolution sums `k` products in a fixed order: f64
//! results within 1e-14 relative to max |expected| (LLVM may contract a multiply-add into an
//! FMA), f32 within 1e-6.

mod common;

use common::assert_close;
use std::collections::BTreeMap;
use tttc::runtime::Tensor;
use tttc::{Backend, Precision, Settings};

const BACKENDS: [Backend; 3] = [Backend::Interp, Backend::Llvm, Backend::Cranelift];

/// Compiles `source`, binds `inputs` (with `settings`) and runs it on every built backend;
/// returns the outputs per backend name.
fn run_all(
    source: &str,
    settings: &Settings,
    inputs: &BTreeMap<String, Tensor>,
    precision: Precision,
) -> Vec<(&'static str, BTreeMap<String, Tensor>)> {
    let program = tttc::compile_source("ops.ttt", source, precision, settings)
        .unwrap_or_else(|e| panic!("compile: {e}"));
    let bound = tttc::bind(&program, inputs, settings, precision.elem())
        .unwrap_or_else(|e| panic!("bind: {e}"));
    BACKENDS
        .into_iter()
        .filter(|b| b.is_built())
        .map(|b| {
            let prepared =
                tttc::prepare(b, &bound.program).unwrap_or_else(|e| panic!("{}: {e}", b.name()));
            let out = prepared
                .run(&bound.inputs)
                .unwrap_or_else(|e| panic!("{}: {e}", b.name()));
            (b.name(), out)
        })
        .collect()
}

fn seq(n: usize, scale: f64, offset: f64) -> Vec<f64> {
    (0..n).map(|i| (i as f64) * scale + offset).collect()
}

fn t64(shape: &[usize], data: Vec<f64>) -> Tensor {
    Tensor::from_f64(shape.to_vec(), data).expect("tensor")
}

fn exact(got: &Tensor, want: &[f64], what: &str) {
    assert_eq!(got.to_f64_vec(), want, "{what}");
}

#[test]
fn slice_and_shift_by_hand() {
    let source = r#"
main {
  input x: [2, 4, 3]
  input fill: [2, 2, 3]
  output taken = slice(x, 1, 1, 2)
  output last_channel = slice(x, -1, 2, 1)
  output shifted = shift(x, 1, 1)
  output shifted_far = shift(x, 1, 6)
  output carried = shift(x, 1, 2, fill)
  output shifted_computed = shift(x * 2 + 1, 2, 1)
}
"#;
    let x: Vec<f64> = seq(24, 1.0, 1.0); // x[b, t, c] = 1 + 12 b + 3 t + c
    let fill: Vec<f64> = seq(12, -1.0, -1.0);
    let inputs: BTreeMap<String, Tensor> = [
        ("x".to_string(), t64(&[2, 4, 3], x.clone())),
        ("fill".to_string(), t64(&[2, 2, 3], fill.clone())),
    ]
    .into();
    let at = |b: usize, t: usize, c: usize| x[b * 12 + t * 3 + c];
    let mut taken = Vec::new();
    let mut last = Vec::new();
    let mut shifted = Vec::new();
    let mut carried = Vec::new();
    let mut computed = Vec::new();
    for b in 0..2 {
        for t in 0..4 {
            for c in 0..3 {
                if (1..3).contains(&t) {
                    taken.push(at(b, t, c));
                }
                shifted.push(if t >= 1 { at(b, t - 1, c) } else { 0.0 });
                carried.push(if t >= 2 {
                    at(b, t - 2, c)
                } else {
                    fill[b * 6 + t * 3 + c]
                });
                computed.push(if c >= 1 {
                    at(b, t, c - 1) * 2.0 + 1.0
                } else {
                    0.0
                });
            }
            last.push(at(b, t, 2));
        }
    }
    for precision in [Precision::F64, Precision::F32] {
        for (backend, out) in run_all(source, &Settings::new(), &inputs, precision) {
            let what = |n: &str| format!("{backend} {precision:?} {n}");
            exact(&out["taken"], &taken, &what("taken"));
            exact(&out["last_channel"], &last, &what("last_channel"));
            exact(&out["shifted"], &shifted, &what("shifted"));
            exact(&out["shifted_far"], &[0.0; 24], &what("shifted_far"));
            exact(&out["carried"], &carried, &what("carried"));
            exact(
                &out["shifted_computed"],
                &computed,
                &what("shifted_computed"),
            );
        }
    }
}

#[test]
fn causal_conv_and_embedding_by_hand() {
    let source = r#"
config conv_kernel = 3
main {
  input x: [B, L, C]
  input w: [C, 1, conv_kernel]
  input bias: [C]
  input ids: int[B, L] in 0..V
  input table: [V, C]
  output y = causal_conv(x, w, bias)
  output e = embedding(ids, table)
}
"#;
    let (b, l, c, k, v) = (2, 5, 3, 3, 4);
    let x: Vec<f64> = (0..b * l * c)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 4.0)
        .collect();
    let w: Vec<f64> = (0..c * k)
        .map(|i| ((i * 5 % 7) as f64 - 3.0) / 2.0)
        .collect();
    let bias = vec![0.25, -0.5, 1.0];
    let ids = [3.0, 0.0, 2.0, 2.0, 1.0, 0.0, 1.0, 3.0, 3.0, 2.0];
    let table: Vec<f64> = seq(v * c, 0.5, -1.0);
    let inputs: BTreeMap<String, Tensor> = [
        ("x".to_string(), t64(&[b, l, c], x.clone())),
        ("w".to_string(), t64(&[c, 1, k], w.clone())),
        ("bias".to_string(), t64(&[c], bias.clone())),
        ("ids".to_string(), t64(&[b, l], ids.to_vec())),
        ("table".to_string(), t64(&[v, c], table.clone())),
    ]
    .into();
    // nn.Conv1d(groups = C, padding = k - 1), first L outputs: W[c, 0, k-1] weights x[t].
    let mut y = Vec::new();
    let mut e = Vec::new();
    for bi in 0..b {
        for t in 0..l {
            for ch in 0..c {
                let mut acc = bias[ch];
                for j in 0..k {
                    let src = t as i64 - (k as i64 - 1) + j as i64;
                    if src >= 0 {
                        acc += w[ch * k + j] * x[(bi * l + src as usize) * c + ch];
                    }
                }
                y.push(acc);
                e.push(table[ids[bi * l + t] as usize * c + ch]);
            }
        }
    }
    for precision in [Precision::F64, Precision::F32] {
        let tol = if precision == Precision::F64 {
            1e-14
        } else {
            1e-6
        };
        for (backend, out) in run_all(source, &Settings::new(), &inputs, precision) {
            let got = out["y"].to_f64_vec();
            assert_close(&format!("{backend} {precision:?} conv"), &got, &y, tol);
            exact(&out["e"], &e, &format!("{backend} {precision:?} embedding"));
        }
    }
}

#[test]
fn shift_inside_an_inner_model_is_a_located_error() {
    let source = r#"
inner Shifty {
  state W: [f, f]
  loss(k: [1, f], v: [1, f]) = sum((shift(k @ W, 1, 1) - v) ^ 2)
  out(q: [1, f]) = q @ W
}
main {
  input XK, XV, XQ: [L, f]
  input W: [f, f]
  input eta: [4]
  input lr: [L]
  let r = ttt Shifty(W = W, k = XK, v = XV, q = XQ) per ()
          update minibatch_gd(size = 4, token_eta = eta, lr = lr)
  output Z = r.out
}
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shifty.ttt");
    std::fs::write(&path, source).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tttc"))
        .args(["check", path.to_str().expect("utf-8")])
        .output()
        .expect("tttc runs");
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{message}");
    // The `shift` call of the loss (line 4 of the source, which starts with a newline).
    let at = source.find("shift(").expect("shift");
    let col = at - source[..at].rfind('\n').expect("newline");
    assert!(
        message.contains(&format!("shifty.ttt:4:{col}:")),
        "{message}"
    );
    assert!(
        message.contains("cannot be used inside an inner model"),
        "{message}"
    );
}

/// The 2-operand shift as a streaming decoder uses it: the convolution of a chunk continued
/// from the `k - 1` inputs before it equals the convolution of the whole sequence there.
#[test]
fn causal_conv_continues_across_chunks() {
    let source = r#"
config conv_kernel = 3
main {
  input x: [B, L, C]
  input head: [B, H, C]
  input tail: [B, T, C]
  input history: [B, P, C]
  input w: [C, 1, conv_kernel]
  input bias: [C]
  output whole = causal_conv(x, w, bias)
  output first = causal_conv_continued(head, history * 0, w, bias)
  output second = causal_conv_continued(tail, history, w, bias)
}
"#;
    let (b, l, c, k, split) = (2, 7, 2, 3, 4);
    let x: Vec<f64> = (0..b * l * c)
        .map(|i| ((i * 7 % 13) as f64 - 6.0) / 3.0)
        .collect();
    let rows = |from: usize, to: usize| -> Vec<f64> {
        (0..b)
            .flat_map(|bi| x[(bi * l + from) * c..(bi * l + to) * c].to_vec())
            .collect()
    };
    let t = |n: usize, v: Vec<f64>| Tensor::from_f64(vec![b, n, c], v).expect("tensor");
    let inputs: BTreeMap<String, Tensor> = [
        ("x".to_string(), t(l, x.clone())),
        ("head".to_string(), t(split, rows(0, split))),
        ("tail".to_string(), t(l - split, rows(split, l))),
        (
            "history".to_string(),
            t(k - 1, rows(split - (k - 1), split)),
        ),
        (
            "w".to_string(),
            t64(&[c, 1, k], vec![0.5, -1.0, 2.0, 0.25, 1.5, -0.75]),
        ),
        ("bias".to_string(), t64(&[c], vec![0.1, -0.2])),
    ]
    .into();
    for (backend, out) in run_all(source, &Settings::new(), &inputs, Precision::F64) {
        let whole = out["whole"].to_f64_vec();
        let pick = |from: usize, to: usize| -> Vec<f64> {
            (0..b)
                .flat_map(|bi| whole[(bi * l + from) * c..(bi * l + to) * c].to_vec())
                .collect()
        };
        for (name, want) in [("first", pick(0, split)), ("second", pick(split, l))] {
            let got = out[name].to_f64_vec();
            // 1e-14 relative to max |expected| (the outputs are at most ~7 here).
            assert_close(&format!("{backend} {name}"), &got, &want, 1e-14);
        }
    }
}
