//! The GPU mapping, proven on the CPU: every golden case (and the general example models)
//! compiled, lowered to kernel IR, mapped to GPU blocks, threads, barriers and shared memory
//! (`tttc_passes::gpu_schedule`), and run by the kernel executor's GPU emulation
//! (`run_kernel_program_gpu`: threads run one after another between barriers; any element two
//! threads touch between barriers, one of them writing, is a reported race).
//!
//! Judged twice: against the goldens at the tolerances of common/golden.rs, and bit for bit
//! against the plain kernel executor on the unmapped program (the mapping never changes the
//! order of a sum, so any difference is a mapping bug). And the check can fail: dropping a
//! needed barrier from the mapped TTT-Linear program is reported as a race.

mod common;

use common::golden::{all_cases, inner_cases, layer_cases, GoldenCase};
use common::*;
use std::collections::BTreeMap;
use tttc::backends::kernel_interp::{
    run_kernel_program, run_kernel_program_gpu, GpuEmulation, KernelInterpError,
};
use tttc::ir::kernel::{KernelProgram, MemorySpace, Schedule, Stmt};
use tttc::passes::gpu_schedule::{gpu_schedule, GpuConfig};
use tttc::passes::lower_kernel::lower_program;
use tttc::runtime::Tensor;
use tttc::{Precision, Settings};

/// The bound kernel program of `program` for `tensors`, and its inputs.
fn kernels(
    program: &str,
    settings: &Settings,
    tensors: &BTreeMap<String, Tensor>,
    precision: Precision,
) -> (KernelProgram, BTreeMap<String, Tensor>) {
    let lowered = tttc::lower_file(&root().join(program), precision, settings).expect("lower");
    let compiled = tttc::optimize(lowered, None, false)
        .expect("optimize")
        .program;
    let bound = tttc::bind(&compiled, tensors, settings, precision.elem()).expect("bind");
    let k = lower_program(&bound.program).expect("lower_kernel");
    (k, bound.inputs)
}

/// Maps `k` with `cfg`, emulates it with `threads` threads per block, and checks it equals the
/// plain executor bit for bit. Returns the outputs.
fn mapped(
    k: &KernelProgram,
    inputs: &BTreeMap<String, Tensor>,
    cfg: &GpuConfig,
    threads: usize,
    what: &str,
) -> BTreeMap<String, Tensor> {
    let g = gpu_schedule(k, cfg).unwrap_or_else(|e| panic!("{what}: gpu_schedule: {e}"));
    let got = run_kernel_program_gpu(&g, inputs, GpuEmulation { threads })
        .unwrap_or_else(|e| panic!("{what}: emulation: {e}"));
    let want = run_kernel_program(k, inputs).unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: output names"
    );
    for (name, w) in &want {
        assert_eq!(got[name].shape(), w.shape(), "{what}: {name} shape");
        let (a, b) = (got[name].to_f64_vec(), w.to_f64_vec());
        let same = a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
        assert!(same, "{what}: {name} differs from the unmapped program");
    }
    got
}

fn goldens(cases: Vec<GoldenCase>, precision: Precision, tag: &str) {
    let cfg = GpuConfig::default();
    for case in cases {
        let what = format!("{} {tag}", case.stem);
        let (k, inputs) = kernels(case.program, &case.settings, &case.inputs(), precision);
        let got = mapped(&k, &inputs, &cfg, cfg.threads, &what);
        case.check(tag, &got, &what);
    }
}

#[test]
fn inner_goldens_f64() {
    goldens(inner_cases(), Precision::F64, "f64");
}

#[test]
fn inner_goldens_f32() {
    goldens(inner_cases(), Precision::F32, "f32");
}

#[test]
fn layer_goldens_f64() {
    goldens(layer_cases(), Precision::F64, "f64");
}

#[test]
fn layer_goldens_f32() {
    goldens(layer_cases(), Precision::F32, "f32");
}

/// Few threads (each runs many iterations) and no shared memory at all (every scratch buffer
/// a per-block slice of global memory): the other paths of the mapping.
#[test]
fn inner_goldens_with_few_threads_and_no_shared_memory() {
    let cfg = GpuConfig {
        threads: 32,
        shared_bytes: 0,
    };
    for case in inner_cases() {
        let what = format!("{} f64 (32 threads, no shared memory)", case.stem);
        let (k, inputs) = kernels(case.program, &case.settings, &case.inputs(), Precision::F64);
        let g = gpu_schedule(&k, &cfg).expect("schedule");
        assert!(g.buffers.iter().all(|b| b.space != MemorySpace::Shared));
        let got = mapped(&k, &inputs, &cfg, 32, &what);
        case.check("f64", &got, &what);
    }
}

/// Deterministic pseudo-random values in [lo, hi).
fn random(seed: u64, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    common::random::xorshift_tensor(seed, shape, lo, hi)
}

#[test]
fn general_models_map_too() {
    let (b, h) = (2, 3);
    for (l, k) in [(11, 4), (3, 4), (5, 1)] {
        let (dk, dv) = (4, 5);
        let tensors = BTreeMap::from([
            ("Q".to_string(), random(1, &[b, h, l, dk], -1.0, 1.0)),
            ("K".to_string(), random(2, &[b, h, l, dk], -1.0, 1.0)),
            ("V".to_string(), random(3, &[b, h, l, dv], -1.0, 1.0)),
            ("W0".to_string(), random(4, &[h, dk, dv], -0.5, 0.5)),
            ("position_scale".to_string(), random(5, &[k], 0.1, 1.0)),
            ("lr".to_string(), random(6, &[b, h, l], 0.0, 0.3)),
        ]);
        let settings = Settings::from([("mini_batch_size".to_string(), (k as f64).into())]);
        let (kp, inputs) = kernels(
            "examples/delta_rule.ttt",
            &settings,
            &tensors,
            Precision::F64,
        );
        mapped(
            &kp,
            &inputs,
            &GpuConfig::default(),
            64,
            &format!("delta_rule L={l} K={k}"),
        );
    }
    let (d, hid) = (4, 6);
    for (l, k) in [(10, 4), (7, 8)] {
        let tensors = BTreeMap::from([
            ("Q".to_string(), random(11, &[1, 2, l, d], -1.0, 1.0)),
            ("K".to_string(), random(12, &[1, 2, l, d], -1.0, 1.0)),
            ("V".to_string(), random(13, &[1, 2, l, d], -1.0, 1.0)),
            ("W1".to_string(), random(14, &[2, d, hid], -0.5, 0.5)),
            ("W2".to_string(), random(15, &[2, hid, hid], -0.5, 0.5)),
            ("W3".to_string(), random(16, &[2, hid, d], -0.5, 0.5)),
            ("position_scale".to_string(), random(17, &[k], 0.1, 1.0)),
            ("lr".to_string(), random(18, &[1, 2, l], 0.0, 0.3)),
        ]);
        let settings = Settings::from([("mini_batch_size".to_string(), (k as f64).into())]);
        let (kp, inputs) = kernels(
            "examples/mlp3_silu.ttt",
            &settings,
            &tensors,
            Precision::F64,
        );
        mapped(
            &kp,
            &inputs,
            &GpuConfig::default(),
            64,
            &format!("mlp3_silu L={l} K={k}"),
        );
    }
}

fn count(body: &[Stmt], f: &dyn Fn(&Stmt) -> bool) -> usize {
    body.iter()
        .map(|s| {
            usize::from(f(s))
                + match s {
                    Stmt::Loop { body, .. } => count(body, f),
                    _ => 0,
                }
        })
        .sum()
}

/// Removes the `n`-th barrier in program order.
fn drop_barrier(body: &mut Vec<Stmt>, n: &mut usize) -> bool {
    let mut i = 0;
    while i < body.len() {
        if matches!(body[i], Stmt::Barrier) {
            if *n == 0 {
                body.remove(i);
                return true;
            }
            *n -= 1;
        } else if let Stmt::Loop { body, .. } = &mut body[i] {
            if drop_barrier(body, n) {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// The shape of the mapped TTT-Linear program, and missing barriers caught as races (never a
/// silently different result).
#[test]
fn ttt_linear_mapping_and_missing_barriers() {
    let case = inner_cases()
        .into_iter()
        .find(|c| c.stem == "inner_linear_B2_nh2_f16_K16_L40")
        .expect("case");
    let (k, inputs) = kernels(case.program, &case.settings, &case.inputs(), Precision::F64);
    let cfg = GpuConfig::default();
    let g = gpu_schedule(&k, &cfg).expect("schedule");
    if std::env::var_os("TTTC_PRINT_KERNELS").is_some() {
        println!("{}", tttc::ir::kernel::print_kernel_program(&g));
    }
    // The scan is one launch of B*H = 4 blocks; its fast weights are in shared memory.
    let scan = g
        .body
        .iter()
        .find(|s| {
            matches!(
                s,
                Stmt::Loop {
                    schedule: Schedule::GpuBlock,
                    extent: 4,
                    ..
                }
            )
        })
        .expect("a launch of 4 blocks");
    assert!(
        count(std::slice::from_ref(scan), &|s| matches!(
            s,
            Stmt::Loop { schedule: Schedule::GpuThread, extent, .. } if *extent >= 256
        )) > 0
    );
    assert!(g.buffers.iter().any(|b| b.space == MemorySpace::Shared));
    let want = run_kernel_program(&k, &inputs).expect("cpu");
    let barriers = count(&g.body, &|s| matches!(s, Stmt::Barrier));
    assert!(barriers > 5, "{barriers} barriers");
    let mut caught = 0;
    for n in 0..barriers {
        let mut h = g.clone();
        assert!(drop_barrier(&mut h.body, &mut { n }));
        match run_kernel_program_gpu(&h, &inputs, GpuEmulation { threads: 256 }) {
            Err(KernelInterpError::Race { .. }) => caught += 1,
            Ok(got) => {
                for (name, w) in &want {
                    assert_eq!(
                        got[name].to_f64_vec(),
                        w.to_f64_vec(),
                        "barrier {n} dropped: {name} silently differs"
                    );
                }
            }
            Err(e) => panic!("barrier {n} dropped: {e}"),
        }
    }
    assert!(
        caught * 2 >= barriers,
        "only {caught} of {barriers} barriers were needed"
    );
}

/// The largest error of `got` against `case`'s f32 expected outputs (relative to max |expected|,
/// over the outputs [`GoldenCase::check`] judges).
fn golden_error(case: &GoldenCase, got: &BTreeMap<String, Tensor>) -> f64 {
    let expected = case.expected("f32");
    expected
        .iter()
        .filter(|(n, _)| {
            if case.layer {
                *n == "output"
            } else {
                *n == "Z" || n.ends_with("_last")
            }
        })
        .map(|(n, e)| rel_error(&got[n], e))
        .fold(0.0, f64::max)
}

/// The numerics of the tensor-core opt-in, emulated on the CPU on every golden case: the
/// mapped program run with the operands of exactly the loops the PTX backend puts on tensor
/// cores rounded to tf32 (bf16), products exact, f32 accumulation. The measured error against
/// the goldens must stay within the tolerance docs/backends.md states — and be larger than the
/// exact path's, so the emulation is not silently the identity.
#[test]
fn tensor_core_numerics_on_the_goldens() {
    use tttc::backends::kernel_interp::run_kernel_program_gpu_tensor_cores;
    use tttc::backends::tensor_core::{matmul_loops, TensorCores};
    let cfg = GpuConfig::default();
    let emu = GpuEmulation {
        threads: cfg.threads,
    };
    // The tolerances docs/backends.md states (relative to max |expected|).
    for (tc, bound) in [(TensorCores::Tf32, 2e-3), (TensorCores::Bf16, 1.5e-2)] {
        let mut worst: f64 = 0.0;
        for case in all_cases() {
            let what = format!("{} {}", case.stem, tc.name());
            let (k, inputs) = kernels(case.program, &case.settings, &case.inputs(), Precision::F32);
            let g = gpu_schedule(&k, &cfg).unwrap_or_else(|e| panic!("{what}: {e}"));
            let loops = matmul_loops(&g.body, tc).len();
            let got = run_kernel_program_gpu_tensor_cores(&g, &inputs, emu, tc)
                .unwrap_or_else(|e| panic!("{what}: emulation: {e}"));
            let exact = run_kernel_program_gpu(&g, &inputs, emu)
                .unwrap_or_else(|e| panic!("{what}: exact: {e}"));
            let (err, err_exact) = (golden_error(&case, &got), golden_error(&case, &exact));
            eprintln!(
                "{what}: {loops} tensor-core loop(s), error {err:.3e} (exact f32 path {err_exact:.3e})"
            );
            assert!(err <= bound, "{what}: error {err:e} > {bound:e}");
            if loops > 0 {
                assert!(
                    err > 4.0 * err_exact,
                    "{what}: the emulated rounding changed nothing ({err:e} vs {err_exact:e})"
                );
            }
            worst = worst.max(err);
        }
        eprintln!("{}: worst error over the goldens {worst:.3e}", tc.name());
    }
}

/// The backward of a scan (`ttt_vjp`) mapped to the GPU and emulated: the gradient programs of
/// the inner-loop VJP goldens (`tests/golden/grad`, TTT-Linear and TTT-MLP, 3 mini-batches
/// with a remainder), with checkpoint groups 1 (a loop over groups) and 4 (one group), equal
/// bit for bit to the unmapped kernel program and to the VJP golden to 1e-8 (f64, the
/// tolerance of `golden_grad.rs`).
#[test]
fn scan_backward_maps_to_the_gpu() {
    let cfg = GpuConfig::default();
    for stem in [
        "grad_inner_linear_B1_nh2_f16_K16_L40",
        "grad_inner_mlp_B1_nh2_f16_K16_L40",
    ] {
        let dir = root().join("tests/golden/grad");
        let load = |suffix: &str| common::load(&dir.join(format!("{stem}{suffix}")));
        let program = if stem.contains("linear") {
            "examples/ttt_linear.ttt"
        } else {
            "examples/ttt_mlp.ttt"
        };
        let settings: Settings = [("mini_batch_size".to_string(), 16.0.into())]
            .into_iter()
            .collect();
        let forward =
            tttc::compile_file(&root().join(program), Precision::F64, &settings).expect("compile");
        let cts = load(".cotangents.safetensors");
        let names: Vec<String> = cts.keys().cloned().collect();
        let ct_inputs = tttc::passes::autodiff::cotangent_input_names(&forward, &names);
        let mut tensors = load(".inputs.safetensors");
        for (name, input) in names.iter().zip(ct_inputs) {
            tensors.insert(input, cts[name].clone());
        }
        for every in [1, 4] {
            let grad = tttc::driver::gradient(&forward, &names, every, None, false)
                .expect("gradient")
                .program;
            let bound =
                tttc::bind(&grad, &tensors, &settings, Precision::F64.elem()).expect("bind");
            let k = lower_program(&bound.program).expect("lower_kernel");
            let what = format!("{stem} G={every}");
            let got = mapped(&k, &bound.inputs, &cfg, cfg.threads, &what);
            for (name, exp) in load(".expected_grad_f64.safetensors") {
                let err = rel_error(&got[&name], &exp);
                assert!(err <= 1e-8, "{what} d{name}: {err:e}");
            }
        }
    }
}
