//! The Cranelift backend on the real programs: every golden case compiled (`lower_file`,
//! `optimize`, `bind`), lowered to kernel IR and run by `tttc_backends::cranelift`, against the
//! goldens and against the kernel interpreter on the same kernel program.
//!
//! Tolerances, relative to max |expected| (the bounds of `golden_inner.rs`/`golden_layer.rs`,
//! for the same reasons): f64 ≤ 1e-9, f32 ≤ 2e-5 (layer: f64 against `output_exact_rope`, f32
//! against `output`). Against the kernel interpreter: bit for bit (NaN matching NaN) — the
//! backend evaluates every element with the interpreter's operations in the interpreter's
//! order, without FMA contraction or reassociation, and calls the same libm.
//!
//! `cranelift_ttt_timing` (ignored; run it in release mode on an idle machine) times the
//! compiled TTT-Linear or TTT-MLP layer on a safetensors file given in `TTTC_CL_BENCH_INPUTS`.
#![cfg(feature = "cranelift")]

mod common;

use common::golden::{inner_cases, layer_cases, GoldenCase};
use common::*;
use std::collections::BTreeMap;
use std::time::Instant;
use tttc::backends::cranelift::CraneliftJit;
use tttc::backends::kernel_interp::run_kernel_program;
use tttc::ir::kernel::KernelProgram;
use tttc::passes::lower_kernel::lower_program;
use tttc::runtime::Tensor;
use tttc::{Precision, Settings};

/// Compiles `program` with `settings`, binds it to `tensors` and lowers it to kernel IR.
fn kernels(
    program: &str,
    settings: &Settings,
    tensors: &BTreeMap<String, Tensor>,
    precision: Precision,
    what: &str,
) -> (KernelProgram, BTreeMap<String, Tensor>) {
    let lowered = tttc::lower_file(&root().join(program), precision, settings)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let compiled = tttc::optimize(lowered, None, false)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .program;
    let bound = tttc::bind(&compiled, tensors, settings, precision.elem())
        .unwrap_or_else(|e| panic!("{what}: bind: {e}"));
    let kernels =
        lower_program(&bound.program).unwrap_or_else(|e| panic!("{what}: lower_kernel: {e}"));
    (kernels, bound.inputs)
}

/// Runs the kernels through Cranelift and checks them bit for bit against the kernel
/// interpreter. Returns Cranelift's outputs.
fn run_cranelift(
    kernels: &KernelProgram,
    inputs: &BTreeMap<String, Tensor>,
    what: &str,
) -> BTreeMap<String, Tensor> {
    let jit = CraneliftJit::compile(kernels).unwrap_or_else(|e| panic!("{what}: compile: {e}"));
    eprintln!(
        "{what}: compile {:?} (Cranelift {:?}), {:?}",
        jit.compile_time(),
        jit.codegen_time(),
        jit.stats()
    );
    assert!(jit.stats().simd_loops > 0, "{what}: no SIMD loop");
    let got = jit
        .run(inputs)
        .unwrap_or_else(|e| panic!("{what}: run: {e}"));
    let want = run_kernel_program(kernels, inputs)
        .unwrap_or_else(|e| panic!("{what}: kernel_interp: {e}"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: output names"
    );
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(g.shape(), w.shape(), "{what}: {name}: shape");
        let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
        for (e, (a, b)) in gv.iter().zip(&wv).enumerate() {
            assert!(
                (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits(),
                "{what}: {name}[{e}] = {a:e} but the kernel interpreter gives {b:e}"
            );
        }
    }
    got
}

/// Every golden case of one kind in one precision, judged as in common/golden.rs.
fn goldens(cases: Vec<GoldenCase>, precision: Precision, tag: &str) {
    for case in cases {
        let what = format!("{} {tag}", case.stem);
        let got = {
            let (kp, inputs) = kernels(
                case.program,
                &case.settings,
                &case.inputs(),
                precision,
                &what,
            );
            run_cranelift(&kp, &inputs, &what)
        };
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

/// Times the Cranelift backend on `TTTC_CL_BENCH_INPUTS` (a safetensors file for
/// `TTTC_CL_BENCH_PROGRAM`, default `examples/ttt_linear.ttt`; f32; default settings), like
/// `tttc bench`: one warm-up run, then the median of `TTTC_CL_BENCH_ITERS` (default 10) runs.
/// Also checks the result against the kernel interpreter unless `TTTC_CL_BENCH_NO_CHECK` is
/// set. Run it in release mode on an otherwise idle machine:
///
/// ```text
/// TTTC_CL_BENCH_INPUTS=/tmp/lin2048.safetensors cargo test --release --features cranelift \
///     --test cranelift_backend cranelift_ttt_timing -- --ignored --nocapture
/// ```
#[test]
#[ignore = "a benchmark: needs TTTC_CL_BENCH_INPUTS, release mode and an idle machine"]
fn cranelift_ttt_timing() {
    let Some(path) = std::env::var_os("TTTC_CL_BENCH_INPUTS") else {
        eprintln!("TTTC_CL_BENCH_INPUTS is not set: nothing to time");
        return;
    };
    let program = std::env::var("TTTC_CL_BENCH_PROGRAM")
        .unwrap_or_else(|_| "examples/ttt_linear.ttt".to_string());
    let iters: usize = std::env::var("TTTC_CL_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .max(1);
    let tensors = load(std::path::Path::new(&path));
    let settings = Settings::new();
    let start = Instant::now();
    let (kp, inputs) = kernels(&program, &settings, &tensors, Precision::F32, &program);
    let pipeline = start.elapsed();
    let jit = CraneliftJit::compile(&kp).expect("compiles");
    println!(
        "{program}: pipeline + lowering {pipeline:?}; Cranelift compile {:?} (codegen {:?}, \
         of which define_function {:?}); {:?}",
        jit.compile_time(),
        jit.codegen_time(),
        jit.stats().compile,
        jit.stats()
    );
    let first = jit.run(&inputs).expect("runs"); // warm-up
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        std::hint::black_box(jit.run(&inputs).expect("runs"));
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    println!(
        "{program}: median {median:.3} ms over {iters} runs (min {:.3} ms), {} thread(s)",
        times[0],
        tttc::backends::cranelift::thread_count()
    );
    if std::env::var_os("TTTC_CL_BENCH_NO_CHECK").is_none() {
        let t0 = Instant::now();
        let want = run_kernel_program(&kp, &inputs).expect("kernel interpreter");
        println!("kernel interpreter: {:?}", t0.elapsed());
        for (name, w) in &want {
            let err = rel_error(&first[name], w);
            println!("{name}: rel error vs kernel interpreter {err:e}");
            assert!(err == 0.0, "{name}: {err:e}");
        }
    }
}
