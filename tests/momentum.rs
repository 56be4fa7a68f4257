//! `update momentum_gd` (issue 21 item 2: momentum and forgetting) on TTT-Linear and TTT-MLP
//! inner models (`examples/momentum_linear.ttt`, `examples/momentum_mlp.ttt`) against vectors
//! of an independent hand-derived NumPy per-token loop (`tools/momentum_ref.py`,
//! `tests/golden/momentum`): L = 37 tokens in mini-batches of 16 (a remainder of 5), momentum
//! values with exact zeros and a negative one, decays with exact zeros.
//!
//! Tolerances, relative to max |expected| (tests/common/compare.rs): f64 1e-9 (measured
//! ~4e-15: the chunked form's sums in another order than the loop's); f32 2e-5 against the
//! float64 loop (measured ~1e-6: float32 rounding through three mini-batches of momentum
//! steps). One-shot, token by token, streamed in random chunks (whole mini-batches by the step
//! graph, the rest by the token step) and saved/resumed mid-mini-batch, on every built backend;
//! `momentum = decay = 0` against `minibatch_gd` with `token_eta = 1`; gradients through the
//! scan against central finite differences.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tttc::runtime::Tensor;
use tttc::Precision;

/// (program, vector set).
const CASES: [(&str, &str); 2] = [
    (
        "examples/momentum_linear.ttt",
        "momentum_linear_B1_H2_L37_f8_K16",
    ),
    ("examples/momentum_mlp.ttt", "momentum_mlp_B1_H2_L37_f4_K16"),
];

fn file(stem: &str, suffix: &str) -> PathBuf {
    root()
        .join("tests/golden/momentum")
        .join(format!("{stem}{suffix}"))
}

fn tolerance(precision: &str) -> f64 {
    if precision == "f64" {
        1e-9
    } else {
        2e-5
    }
}

/// Every tensor of the reference (outputs, final states and final momentum buffers).
fn check(stem: &str, precision: &str, got: &BTreeMap<String, Tensor>, what: &str) {
    let expected = load(&file(stem, ".expected.safetensors"));
    assert!(expected.contains_key("Z") && expected.contains_key("W1_momentum"));
    assert_outputs_close(what, got, &expected, tolerance(precision));
}

/// `tttc run` of `program` (a path from the project root) on `inputs`.
fn run(
    program: &str,
    inputs: &std::path::Path,
    backend: &str,
    precision: &str,
    extra: &[&str],
) -> BTreeMap<String, Tensor> {
    run_program(
        std::path::Path::new(program),
        inputs,
        backend,
        precision,
        extra,
    )
}

#[test]
fn momentum_gd_matches_the_numpy_loop_on_every_backend() {
    for (program, stem) in CASES {
        let inputs = file(stem, ".inputs.safetensors");
        for backend in backends() {
            for precision in ["f64", "f32"] {
                let got = run(program, &inputs, backend, precision, &[]);
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

/// The interpreter after `autodiff` runs the scan token by token (no step graph): the literal
/// recurrence, not the chunked form.
#[test]
fn momentum_gd_token_by_token_matches() {
    for (program, stem) in CASES {
        let inputs = file(stem, ".inputs.safetensors");
        let got = run(
            program,
            &inputs,
            "interp",
            "f64",
            &["--stop-after", "autodiff"],
        );
        check(stem, "f64", &got, &format!("{stem} --stop-after autodiff"));
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
fn momentum_gd_streams_in_random_chunks_on_every_backend() {
    for (i, (program, stem)) in CASES.iter().enumerate() {
        let inputs = file(stem, ".inputs.safetensors");
        let len = load(&inputs)["XQ"].shape()[2];
        for (j, backend) in backends().into_iter().enumerate() {
            for (p, precision) in ["f64", "f32"].into_iter().enumerate() {
                let sizes = chunking(len, (i * 11 + j * 3 + p) as u64 + 9);
                let chunks = sizes
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let got = run(program, &inputs, backend, precision, &["--chunks", &chunks]);
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

/// A session saved in the middle of a mini-batch (its momentum buffers and mini-batch start
/// in the state file) resumes exactly as if uninterrupted, and ends at the reference.
#[test]
fn a_momentum_session_saved_mid_mini_batch_resumes_on_every_backend() {
    for (program_path, stem) in CASES {
        let settings = tttc::Settings::default();
        let program =
            tttc::compile_file(&root().join(program_path), Precision::F64, &settings).unwrap();
        let inputs = load(&file(stem, ".inputs.safetensors"));
        let expected = load(&file(stem, ".expected.safetensors"));
        // 21 tokens (position 5 of the second mini-batch), save, then 3, 9 (across the
        // boundary into the remainder) and 4.
        check_resumed_sessions(
            &program,
            &inputs,
            (&[17, 4, 3, 9, 4], 21),
            (stem, &["lr", "momentum", "decay"]),
            |what, last| {
                for name in ["W1_last", "W1_momentum"] {
                    assert_tensor_close(
                        &format!("{what} resumed: final {name}"),
                        &last[name],
                        &expected[name],
                        1e-9,
                    );
                }
            },
        );
    }
}

/// `momentum = 0, decay = 0` is `minibatch_gd` with `token_eta = 1`: the momentum example
/// against `examples/ttt_linear.ttt` on the same tokens, weights and learning rates (interp,
/// f64; 1e-12: the same update up to the order of sums).
#[test]
fn zero_momentum_and_decay_is_minibatch_gd() {
    let (program, stem) = CASES[0];
    let inputs = load(&file(stem, ".inputs.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let lr = &inputs["lr"];
    let zeros = Tensor::from_f64(lr.shape().to_vec(), vec![0.0; lr.len()]).unwrap();
    let mut mom = inputs.clone();
    mom.insert("momentum".into(), zeros.clone());
    mom.insert("decay".into(), zeros);
    let mut gd: BTreeMap<String, Tensor> = inputs
        .iter()
        .filter(|(k, _)| !["lr", "momentum", "decay"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    gd.insert("ttt_lr_eta".into(), lr.clone());
    gd.insert(
        "token_eta".into(),
        Tensor::from_f64(vec![16], vec![1.0; 16]).unwrap(),
    );
    let (mom_path, gd_path) = (
        dir.path().join("mom.safetensors"),
        dir.path().join("gd.safetensors"),
    );
    tttc::runtime::write_safetensors(&mom_path, &mom).unwrap();
    tttc::runtime::write_safetensors(&gd_path, &gd).unwrap();
    let a = run(program, &mom_path, "interp", "f64", &[]);
    let b = run("examples/ttt_linear.ttt", &gd_path, "interp", "f64", &[]);
    for name in ["Z", "W1_last", "b1_last"] {
        assert_tensor_close(
            &format!("{name}: momentum_gd(0, 0) vs minibatch_gd"),
            &a[name],
            &b[name],
            1e-12,
        );
    }
    // The momentum buffers stay the (negated) running sums of the last mini-batch's steps:
    // not zero, so the comparison above is not vacuous in what they feed.
    assert!(a["W1_momentum"].to_f64_vec().iter().any(|x| *x != 0.0));
}

/// Gradients through a momentum scan (issue 16 on the form of issue 21): the gradient program
/// of the TTT-Linear example against central finite differences along a random direction per
/// input (weights, tokens, and the per-token `lr`, `momentum` and `decay`), on the interpreter
/// in f64, with checkpoint groups of 1 and 2. Tolerance: 1e-6 of the pairing's scale
/// (Richardson-extrapolated differences are accurate to ~1e-9 here).
#[test]
fn momentum_gd_gradients_match_finite_differences() {
    let (program_path, stem) = CASES[0];
    let text = std::fs::read_to_string(root().join(program_path)).expect("example");
    let settings = tttc::Settings::default();
    let lowered = tttc::ir::syntax::compile(program_path, &text, tttc::ir::DType::F64, &settings)
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
    let expected = load(&file(stem, ".expected.safetensors"));
    let mut rng = common::random::Lcg(17);
    let cts: BTreeMap<String, Tensor> = expected
        .iter()
        .map(|(name, t)| {
            let v = rng.vec(t.len(), 1.0);
            (
                name.clone(),
                Tensor::from_f64(t.shape().to_vec(), v).expect("sizes"),
            )
        })
        .collect();
    let f = common::finite_diff::pairing(&program, &inputs, &cts, &settings).expect("forward");
    let by_group: Vec<BTreeMap<String, Tensor>> = [1, 2]
        .iter()
        .map(|&g| {
            common::finite_diff::gradients(&program, &inputs, &cts, &settings, g).expect("grad")
        })
        .collect();
    for (name, g) in &by_group[0] {
        assert_tensor_close(
            &format!("d{name}, G = 2 vs G = 1"),
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

/// The GPU path without a GPU: the kernel program mapped by `gpu_schedule` and generated by the
/// PTX code generator in its host flavor (threads and barriers on the CPU, tests/ptx_host.rs),
/// against the reference at the tolerances above; the unmapped kernel program on the kernel
/// executor (every access bounds-checked) too. The NVPTX back end itself needs a GPU
/// (`TTTC_TEST_PTX=1` adds `ptx` to the backends of the tests above).
#[cfg(feature = "llvm")]
#[test]
fn momentum_gd_kernels_for_the_gpu_run_on_the_host() {
    use tttc::backends::kernel_interp::run_kernel_program;
    use tttc::backends::ptx::host::run_on_host;
    use tttc::passes::gpu_schedule::{gpu_schedule, GpuConfig};
    use tttc::passes::lower_kernel::lower_program;
    for (program, stem) in CASES {
        for (precision, tag) in [(Precision::F64, "f64"), (Precision::F32, "f32")] {
            let what = format!("{stem} {tag} ptx host");
            let settings = tttc::Settings::default();
            let lowered =
                tttc::lower_file(&root().join(program), precision, &settings).expect("lower");
            let compiled = tttc::optimize(lowered, None, false)
                .expect("optimize")
                .program;
            let inputs = load(&file(stem, ".inputs.safetensors"));
            let bound = tttc::bind(&compiled, &inputs, &settings, precision.elem()).expect("bind");
            let kernels = lower_program(&bound.program).expect("lower_kernel");
            let executed = run_kernel_program(&kernels, &bound.inputs).expect("kernel executor");
            check(
                stem,
                tag,
                &executed,
                &format!("{stem} {tag} kernel executor"),
            );
            let threads = 32;
            let cfg = GpuConfig {
                threads,
                ..GpuConfig::default()
            };
            let mapped = gpu_schedule(&kernels, &cfg).expect("gpu_schedule");
            let got = run_on_host(&mapped, threads as u32, &bound.inputs)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            check(stem, tag, &got, &what);
        }
    }
}
