//! The kernel IR's verifier (`tttc_ir::kernel::verify`) accepts every program lowered from
//! `examples/*.ttt`, before and after the GPU mapping. (Its rejections of malformed programs are
//! tested in `ir/src/kernel/verify/tests.rs`, on hand-built programs.)
//!
//! Each example is compiled with small shapes (the ones `tests/ptx.rs` uses), bound by shape
//! (`bind_shapes`), lowered with `lower_program` (which itself verifies what it makes) and
//! verified again here; `examples/ttt_lm.ttt` is compiled for each model golden case's config
//! and bound to its inputs. A new example without an entry here fails the test.

mod common;

use common::*;
use std::collections::BTreeMap;
use tttc::ir::kernel::verify;
use tttc::ir::{Dim, Program};
use tttc::passes::gpu_schedule::{gpu_schedule, GpuConfig};
use tttc::passes::lower_kernel::lower_program;
use tttc::{Precision, Settings};

/// Small shapes for every example but the language model, as `--set` pairs.
const SHAPES: &[(&str, &[(&str, f64)])] = &[
    (
        "momentum_linear.ttt",
        &[("B", 1.0), ("H", 2.0), ("L", 37.0), ("f", 8.0)],
    ),
    (
        "momentum_weight_decay.ttt",
        &[("B", 1.0), ("H", 2.0), ("L", 37.0), ("f", 8.0)],
    ),
    (
        "momentum_mlp.ttt",
        &[("B", 1.0), ("H", 2.0), ("L", 37.0), ("f", 4.0), ("h", 16.0)],
    ),
    (
        "fla_ttt_linear.ttt",
        &[("B", 2.0), ("H", 2.0), ("L", 40.0), ("f", 16.0)],
    ),
    (
        "ttt_linear.ttt",
        &[("B", 1.0), ("H", 2.0), ("L", 40.0), ("f", 16.0)],
    ),
    (
        "ttt_mlp.ttt",
        &[
            ("B", 1.0),
            ("H", 2.0),
            ("L", 40.0),
            ("f", 16.0),
            ("h", 64.0),
        ],
    ),
    (
        "ttt_linear_layer.ttt",
        &[
            ("B", 1.0),
            ("L", 48.0),
            ("hidden_size", 64.0),
            ("f", 16.0),
            ("half", 8.0),
        ],
    ),
    (
        "ttt_mlp_layer.ttt",
        &[
            ("B", 1.0),
            ("L", 48.0),
            ("hidden_size", 64.0),
            ("f", 16.0),
            ("half", 8.0),
            ("h", 64.0),
        ],
    ),
    (
        "delta_rule.ttt",
        &[
            ("B", 1.0),
            ("H", 2.0),
            ("L", 40.0),
            ("dk", 16.0),
            ("dv", 16.0),
        ],
    ),
    (
        "mlp3_silu.ttt",
        &[("B", 1.0), ("H", 2.0), ("L", 40.0), ("d", 8.0), ("h", 16.0)],
    ),
];

/// Every input's shape with the dimensions `dims` (and the program's integer configs).
fn input_shapes(program: &Program, dims: &[(&str, f64)]) -> BTreeMap<String, Vec<usize>> {
    let mut known = program.int_configs();
    known.extend(dims.iter().map(|&(name, n)| (name.to_string(), n as usize)));
    let g = &program.graph;
    let mut out = BTreeMap::new();
    for &id in g.inputs() {
        let (Some(name), Some(ty)) = (g.input_name(id), g.tensor_type(id)) else {
            continue;
        };
        let shape = ty
            .shape
            .0
            .iter()
            .map(|d| match d.substitute(&known) {
                Dim::Known(n) => n,
                Dim::Sym(s) => panic!("input `{name}` needs dimension `{s}`"),
            })
            .collect();
        out.insert(name.to_string(), shape);
    }
    out
}

/// Lowers `program` (bound) to kernels, maps it to a GPU, and verifies both.
fn lower_and_verify(program: &Program, what: &str) {
    let kernels = lower_program(program).unwrap_or_else(|e| panic!("{what}: lower_kernel: {e}"));
    verify(&kernels).unwrap_or_else(|e| panic!("{what}: kernels: {e}"));
    let mapped = gpu_schedule(&kernels, &GpuConfig::default())
        .unwrap_or_else(|e| panic!("{what}: gpu_schedule: {e}"));
    verify(&mapped).unwrap_or_else(|e| panic!("{what}: mapped kernels: {e}"));
}

#[test]
fn every_example_lowers_to_verified_kernels() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            name.ends_with(".ttt").then_some(name)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 7, "examples: {files:?}");
    for file in files {
        let path = root().join("examples").join(&file);
        if file == "ttt_lm.ttt" {
            language_model(&path);
            continue;
        }
        let Some((_, dims)) = SHAPES.iter().find(|(f, _)| *f == file) else {
            panic!("examples/{file} has no shapes in tests/kernel_verify.rs");
        };
        let settings: Settings = dims
            .iter()
            .map(|&(name, value)| (name.to_string(), value.into()))
            .collect();
        for precision in [Precision::F32, Precision::F64] {
            let what = format!("{file} {precision:?}");
            let compiled = tttc::compile_file(&path, precision, &settings)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let (bound, _) =
                tttc::bind_shapes(&compiled, &input_shapes(&compiled, dims), &settings)
                    .unwrap_or_else(|e| panic!("{what}: bind: {e}"));
            lower_and_verify(&bound, &what);
        }
    }
}

/// `examples/ttt_lm.ttt` for every model golden case's config, bound to the case's inputs.
fn language_model(path: &std::path::Path) {
    let mut stems: Vec<String> = std::fs::read_dir(root().join("tests/golden"))
        .expect("tests/golden")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".config.json")?;
            stem.starts_with("model_").then(|| stem.to_string())
        })
        .collect();
    stems.sort();
    assert!(!stems.is_empty(), "no model golden cases");
    for stem in stems {
        let what = format!("ttt_lm.ttt {stem}");
        let defaults = tttc::lower_file(path, Precision::F32, &Settings::new())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let config = root().join(format!("tests/golden/{stem}.config.json"));
        let settings =
            tttc::read_config_file(&config, &defaults).unwrap_or_else(|e| panic!("{what}: {e}"));
        let compiled = tttc::compile_file(path, Precision::F32, &settings)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let inputs = root().join(format!("tests/golden/{stem}.inputs.safetensors"));
        let tensors = tttc::read_inputs(&compiled, &inputs, Precision::F32.elem())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let bound = tttc::bind(&compiled, &tensors, &settings, Precision::F32.elem())
            .unwrap_or_else(|e| panic!("{what}: bind: {e}"));
        lower_and_verify(&bound.program, &what);
    }
}
