//! flash-linear-attention's TTT-Linear (`examples/fla_ttt_linear.ttt`: a step size per *token*,
//! `update minibatch_gd(token_eta = e, lr = 1)` with `e` of the shape of `lr`) against vectors
//! computed by fla's own naive code (`tools/fla_ttt_ref.py` runs it; tests/golden/fla/README.md).
//!
//! Tolerances, relative to max |expected| (tests/common/compare.rs): f64 1e-9 against fla run
//! in float64 (measured ~3e-16: the same sums in another order); f32 2e-5 against fla's own
//! float32 run (measured ~2e-7: two float32 computations, each a few ulps off, through two
//! mini-batches of gradient steps), the goldens' tolerances. One-shot and streamed in random
//! chunks (whole mini-batches by the step graph, the rest by the token step, so the per-token
//! step sizes are sliced by both), on every built backend; a session saved in the middle of a
//! mini-batch resumes as if uninterrupted.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tttc::runtime::Tensor;
use tttc::Precision;

const PROGRAM: &str = "examples/fla_ttt_linear.ttt";

/// The vector sets: L = 40 (two full mini-batches of 16 and a remainder of 8) and L = 32.
const CASES: [&str; 2] = [
    "fla_ttt_linear_B2_H2_L40_f16_K16",
    "fla_ttt_linear_B1_H2_L32_f16_K16",
];

fn file(stem: &str, suffix: &str) -> PathBuf {
    root()
        .join("tests/golden/fla")
        .join(format!("{stem}{suffix}"))
}

fn tolerance(precision: &str) -> f64 {
    if precision == "f64" {
        1e-9
    } else {
        2e-5
    }
}

/// Every tensor fla computed (a remainder case has no `hb`: see the README) against `got`.
fn check(stem: &str, precision: &str, got: &BTreeMap<String, Tensor>, what: &str) {
    let expected = load(&file(stem, &format!(".expected_{precision}.safetensors")));
    assert!(expected.contains_key("o") && expected.contains_key("h"));
    assert_outputs_close(what, got, &expected, tolerance(precision));
}

/// `tttc run` of the program on case `stem`; `extra` are more arguments.
fn run(stem: &str, backend: &str, precision: &str, extra: &[&str]) -> BTreeMap<String, Tensor> {
    let inputs = file(stem, ".inputs.safetensors");
    run_program(
        std::path::Path::new(PROGRAM),
        &inputs,
        backend,
        precision,
        extra,
    )
}

#[test]
fn fla_ttt_linear_matches_flash_linear_attention_on_every_backend() {
    for stem in CASES {
        for backend in backends() {
            for precision in ["f64", "f32"] {
                let got = run(stem, backend, precision, &[]);
                check(
                    stem,
                    precision,
                    &got,
                    &format!("{stem} {backend} {precision}"),
                );
            }
        }
    }
}

/// The interpreter after `autodiff` runs the scan token by token (no step graph): the per-token
/// step sizes indexed by the literal definition.
#[test]
fn fla_ttt_linear_token_by_token_matches() {
    for stem in CASES {
        let got = run(stem, "interp", "f64", &["--stop-after", "autodiff"]);
        check(
            stem,
            "f64",
            &got,
            &format!("{stem} interp --stop-after autodiff"),
        );
    }
}

/// Chunkings mixing single tokens, pieces inside a mini-batch and pieces across mini-batch
/// boundaries, a different one per (case, backend, precision).
fn chunking(len: usize, seed: u64) -> Vec<usize> {
    let mut rng = common::random::Lcg(seed);
    rng.next_u64();
    let mut sizes = Vec::new();
    let mut left = len;
    while left > 0 {
        let x = rng.next_u64();
        let n = match (x >> 33) % 3 {
            0 => 1,
            1 => 1 + (x >> 40) as usize % 7,
            _ => 16 + (x >> 40) as usize % 20,
        }
        .min(left);
        sizes.push(n);
        left -= n;
    }
    sizes
}

#[test]
fn fla_ttt_linear_streams_in_random_chunks_on_every_backend() {
    for (i, stem) in CASES.iter().enumerate() {
        let len = load(&file(stem, ".inputs.safetensors"))["q"].shape()[1];
        for (j, backend) in backends().into_iter().enumerate() {
            for (p, precision) in ["f64", "f32"].into_iter().enumerate() {
                let sizes = chunking(len, (i * 11 + j * 3 + p) as u64 + 5);
                let chunks = sizes
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let got = run(stem, backend, precision, &["--chunks", &chunks]);
                check(
                    stem,
                    precision,
                    &got,
                    &format!("{stem} {backend} {precision} --chunks {chunks}"),
                );
            }
        }
    }
}

#[test]
fn an_fla_session_saved_mid_mini_batch_resumes_on_every_backend() {
    let stem = CASES[0]; // L = 40: the save falls inside the second mini-batch
    let settings = tttc::Settings::default();
    let program = tttc::compile_file(&root().join(PROGRAM), Precision::F64, &settings).unwrap();
    let inputs = load(&file(stem, ".inputs.safetensors"));
    let expected = load(&file(stem, ".expected_f64.safetensors"));
    // 21 tokens (position 5 of the second mini-batch), save, then 3, 12 (across the boundary
    // into the remainder) and 4; the per-token step sizes stream with the tokens.
    check_resumed_sessions(
        &program,
        &inputs,
        (&[17, 4, 3, 12, 4], 21),
        ("", &["eta"]),
        |what, last| {
            // After the last chunk the final state is fla's.
            assert_tensor_close(
                &format!("{what} resumed: final h"),
                &last["h"],
                &expected["h"],
                1e-9,
            );
        },
    );
}

/// Gradients through per-token step sizes (issue 16 on the form of issue 21): the gradient
/// program of the fla example (its `token_eta` is per token, so the backward scan slices it
/// and writes its cotangent per token like `lr`'s) against central finite differences along a
/// random direction per input, on the interpreter in f64, with checkpoint groups of 1 and 4.
/// Tolerance: 1e-6 of the pairing's scale (Richardson-extrapolated differences are accurate to
/// ~1e-9 here; a per-position slicing of a per-token `token_eta` is off by O(1)).
#[test]
fn per_token_step_sizes_have_gradients_matching_finite_differences() {
    let stem = CASES[0];
    let text = std::fs::read_to_string(root().join(PROGRAM)).expect("example");
    let settings = tttc::Settings::default();
    let lowered = tttc::ir::syntax::compile(PROGRAM, &text, tttc::ir::DType::F64, &settings)
        .unwrap_or_else(|e| panic!("{}", e.render(false)));
    let program = tttc::optimize(lowered, None, false)
        .expect("optimize")
        .program;
    let inputs: BTreeMap<String, Tensor> = load(&file(stem, ".inputs.safetensors"))
        .into_iter()
        .map(|(name, t)| {
            let t64 = Tensor::from_f64(t.shape().to_vec(), t.to_f64_vec()).expect("sizes");
            (name, t64)
        })
        .collect();
    let expected = load(&file(stem, ".expected_f64.safetensors"));
    let mut rng = common::random::Lcg(7);
    let cts: BTreeMap<String, Tensor> = ["o", "h", "hb"]
        .iter()
        .map(|name| {
            let shape = match expected.get(*name) {
                Some(t) => t.shape().to_vec(),
                // The remainder case stores no `hb` (see the README): [B, H, 1, f].
                None => {
                    let h0 = inputs["hb0"].shape();
                    h0.to_vec()
                }
            };
            let n = shape.iter().product();
            let t = Tensor::from_f64(shape, rng.vec(n, 1.0)).expect("sizes");
            (name.to_string(), t)
        })
        .collect();
    let f = common::finite_diff::pairing(&program, &inputs, &cts, &settings).expect("forward");
    let by_group: Vec<BTreeMap<String, Tensor>> = [1, 4]
        .iter()
        .map(|&g| {
            common::finite_diff::gradients(&program, &inputs, &cts, &settings, g).expect("grad")
        })
        .collect();
    for (name, g) in &by_group[0] {
        assert_tensor_close(
            &format!("d{name}, G = 4 vs G = 1"),
            &by_group[1][name],
            g,
            1e-12,
        );
    }
    for name in inputs.keys() {
        let g = by_group[0]
            .get(name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let v = rng.vec(g.len(), 1.0);
        let check =
            common::finite_diff::directional(&program, &inputs, &cts, &settings, name, g, &v)
                .expect("finite differences");
        let tol = 1e-6 * check.scale + 1e-8 * (1.0 + f.abs());
        assert!(
            (check.autodiff - check.finite_differences).abs() <= tol,
            "d{name}: autodiff {:e}, finite differences {:e} (tol {tol:e})",
            check.autodiff,
            check.finite_differences
        );
    }
}
