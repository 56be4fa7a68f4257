//! Outlining repeated layers (`tttc_passes::outline`) on the language model,
//! `examples/ttt_lm.ttt` (TTT-Linear, the `model_linear_T` golden's config) with 3 and 4 layers:
//!
//! - the pass finds the layers: one kernel function, called once per layer, each call exactly
//!   one layer (the RoPE tables every layer shares, which the lowering computes inside the
//!   first layer, are moved to the front of the program first);
//! - outlined and not outlined (`TTTC_NO_OUTLINE=1`) give the same results on LLVM and
//!   Cranelift as the graph interpreter (the oracle), and so does the kernel interpreter on the
//!   outlined kernel program.
//!
//! - the memory plan (`tttc_passes::memory_plan`, run after outlining) gives the outlined
//!   program's global temporaries one arena smaller than their sum; the kernel interpreter,
//!   which simulates the arena, computes exactly what it computes without the plan, and the
//!   backend runs above (LLVM, Cranelift, plan on) match the graph interpreter.
//!
//! Inputs: the golden's weights for layers 0 and 1, and for each further layer `i` layer
//! `i % 2`'s weights scaled by `1 - i/20` (so no two layers are alike). Tolerance: f64, 1e-9
//! relative to max |expected| (the golden model tests' f64 tolerance; only summation order
//! differs between the backends).

mod common;

use common::compare::assert_tensor_close;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tttc::ir::kernel::{verify, BufferKind, KernelProgram, MemorySpace, Stmt};
use tttc::passes::pipeline::Target;
use tttc::runtime::{read_safetensors_with_ints, write_safetensors_with_ints, Tensor};
use tttc::Precision;

const PROGRAM: &str = "examples/ttt_lm.ttt";
const STEM: &str = "model_linear_T";
const TOL: f64 = 1e-9;

/// A config and inputs for the golden's model with `layers` layers, in `dir`.
fn case(dir: &Path, layers: usize) -> (PathBuf, PathBuf) {
    let golden = root().join(format!("tests/golden/{STEM}"));
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.config.json", golden.display())).expect("config"),
    )
    .expect("json");
    config["num_hidden_layers"] = serde_json::json!(layers);
    let config_path = dir.join(format!("l{layers}.config.json"));
    std::fs::write(&config_path, config.to_string()).expect("write config");
    let mut file = read_safetensors_with_ints(&PathBuf::from(format!(
        "{}.inputs.safetensors",
        golden.display()
    )))
    .expect("inputs");
    for i in 2..layers {
        let from = format!("model.layers.{}.", i % 2);
        let scale = 1.0 - i as f64 / 20.0;
        let copies: Vec<(String, Tensor)> = file
            .floats
            .iter()
            .filter_map(|(n, t)| {
                let rest = n.strip_prefix(&from)?;
                let v: Vec<f64> = t.to_f64_vec().iter().map(|x| x * scale).collect();
                let t = Tensor::from_f64(t.shape().to_vec(), v).expect("shape");
                Some((format!("model.layers.{i}.{rest}"), t))
            })
            .collect();
        file.floats.extend(copies);
    }
    let inputs = dir.join(format!("l{layers}.inputs.safetensors"));
    write_safetensors_with_ints(&inputs, &file.floats, &file.ints).expect("write inputs");
    (config_path, inputs)
}

/// `tttc run` on `backend` in f64, outlining on or off; the outputs.
fn run(
    dir: &Path,
    (config, inputs): &(PathBuf, PathBuf),
    backend: &str,
    outline: bool,
) -> BTreeMap<String, Tensor> {
    let out = dir.join(format!("{backend}-{outline}.safetensors"));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tttc"));
    cmd.current_dir(root()).args([
        "run",
        PROGRAM,
        "--config",
        config.to_str().expect("utf-8"),
        "--inputs",
        inputs.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--backend",
        backend,
        "--precision",
        "f64",
    ]);
    if outline {
        cmd.env_remove("TTTC_NO_OUTLINE");
    } else {
        cmd.env("TTTC_NO_OUTLINE", "1");
    }
    let o = cmd.output().expect("tttc runs");
    assert!(o.status.success(), "{backend}: {}", text(&o));
    load(&out)
}

/// The bound program of the case and its kernel program for CPUs (outlined).
fn kernel_program(case: &(PathBuf, PathBuf)) -> (KernelProgram, BTreeMap<String, Tensor>) {
    let path = root().join(PROGRAM);
    let raw = tttc::lower_file(&path, Precision::F64, &tttc::Settings::new()).expect("lowers");
    let settings = tttc::read_config_file(&case.0, &raw).expect("config");
    let program = tttc::compile_file(&path, Precision::F64, &settings).expect("compiles");
    let tensors =
        tttc::read_inputs(&program, &case.1, Precision::F64.elem()).expect("reads inputs");
    let bound = tttc::bind(&program, &tensors, &settings, Precision::F64.elem()).expect("binds");
    let k = tttc::driver::kernel_program(&bound.program, Target::Cpu).expect("kernel program");
    (k, bound.inputs)
}

fn calls(k: &KernelProgram) -> usize {
    k.body
        .iter()
        .filter(|s| matches!(s, Stmt::Call { .. }))
        .count()
}

#[test]
fn every_layer_is_one_function_called_per_layer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for layers in [3, 4] {
        let case = case(tmp.path(), layers);
        let (k, _) = kernel_program(&case);
        assert_eq!(k.functions.len(), 1, "{layers} layers");
        assert_eq!(calls(&k), layers, "{layers} layers");
        // Call n is layer n: it passes layer n's weights and no other layer's.
        for (n, s) in k
            .body
            .iter()
            .filter(|s| matches!(s, Stmt::Call { .. }))
            .enumerate()
        {
            let Stmt::Call { args, .. } = s else {
                unreachable!()
            };
            let reads = |layer: usize| {
                let prefix = format!("model.layers.{layer}.");
                args.iter()
                    .any(|b| k.buffers[b.0 as usize].name.starts_with(&prefix))
            };
            assert!(
                reads(n),
                "call {n} of {layers} layers does not read layer {n}"
            );
            for other in (0..layers).filter(|&o| o != n) {
                assert!(
                    !reads(other),
                    "call {n} of {layers} layers reads layer {other}"
                );
            }
        }
        // No layer's weights are read outside the calls.
        let outside = tttc::ir::kernel::buffers_used(
            &k.body
                .iter()
                .filter(|s| !matches!(s, Stmt::Call { .. }))
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert!(
            !outside
                .iter()
                .any(|b| k.buffers[b.0 as usize].name.starts_with("model.layers.")),
            "{layers} layers: a layer's weights are read outside the calls"
        );
    }
}

#[test]
fn outlined_and_inline_layers_compute_the_same_on_every_backend() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for layers in [3, 4] {
        let case = case(tmp.path(), layers);
        let expected = run(tmp.path(), &case, "interp", true);
        let mut got: Vec<(String, BTreeMap<String, Tensor>)> = Vec::new();
        for backend in backends() {
            if backend == "interp" || backend == "ptx" {
                continue;
            }
            for outline in [true, false] {
                got.push((
                    format!("{backend} outline={outline}"),
                    run(tmp.path(), &case, backend, outline),
                ));
            }
        }
        let (k, inputs) = kernel_program(&case);
        assert_eq!(k.functions.len(), 1);
        let kernel = tttc::backends::kernel_interp::run_kernel_program(&k, &inputs)
            .expect("kernel interpreter runs");
        got.push(("kernel interpreter (outlined)".into(), kernel));
        for (what, out) in &got {
            for (name, want) in &expected {
                let Some(t) = out.get(name) else {
                    panic!("{what}: no output {name}");
                };
                assert_tensor_close(&format!("{layers} layers, {what}: {name}"), t, want, TOL);
            }
        }
    }
}

#[test]
fn temporaries_share_an_arena_smaller_than_their_sum() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let case = case(tmp.path(), 3);
    let (k, inputs) = kernel_program(&case);
    assert_eq!(verify(&k), Ok(()));
    let plan = k.memory.as_ref().expect("a memory plan");
    let temps: Vec<u64> = k
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Temp && b.space == MemorySpace::Global)
        .map(|b| b.len() as u64)
        .collect();
    let sum: u64 = temps.iter().sum();
    assert_eq!(plan.placements.len(), temps.len());
    // Three layers' temporaries, each layer's dead once the next begins: under the sum.
    assert!(
        plan.arena_len < sum,
        "arena of {} elements for temporaries of {sum}",
        plan.arena_len
    );
    let with = tttc::backends::kernel_interp::run_kernel_program(&k, &inputs)
        .expect("kernel interpreter runs with the arena");
    let mut unplanned = k.clone();
    unplanned.memory = None;
    let without = tttc::backends::kernel_interp::run_kernel_program(&unplanned, &inputs)
        .expect("kernel interpreter runs without it");
    // The same statements in the same order: exactly equal.
    assert_eq!(with, without);
}
