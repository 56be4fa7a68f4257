//! Compile times for every shipped example: the pipeline's passes, lowering to kernel IR, then
//! code generation by Cranelift and by LLVM, each timed separately.
//! Run: `cargo bench --bench codegen`. Target (issue 6): Cranelift codegen of `ttt_mlp.ttt`
//! under 20 ms.

use criterion::{criterion_group, criterion_main, Criterion};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tttc::ir::{Dim, Program};
use tttc::runtime::{ElemType, Tensor};
use tttc::{bind, lower_file, optimize, Precision};

/// Zero tensors of every input's shape with the given dimensions (integer configs included).
fn zeros(program: &Program, dims: &[(&str, usize)]) -> BTreeMap<String, Tensor> {
    let mut known = program.int_configs();
    known.extend(dims.iter().map(|(k, v)| (k.to_string(), *v)));
    let g = &program.graph;
    g.inputs()
        .iter()
        .filter_map(|&id| {
            let shape = g.tensor_type(id)?.shape.substitute(&known);
            let dims: Vec<usize> = shape.0.iter().map(Dim::known).collect::<Option<_>>()?;
            Some((
                g.input_name(id)?.to_string(),
                Tensor::zeros(dims, ElemType::F32),
            ))
        })
        .collect()
}

fn inputs(root: &Path, program: &Program, source: &Source) -> BTreeMap<String, Tensor> {
    match source {
        Source::File(f) => tttc::runtime::read_safetensors(&root.join(f)).expect("inputs"),
        Source::Dims(d) => zeros(program, d),
    }
}

enum Source {
    File(&'static str),
    Dims(&'static [(&'static str, usize)]),
}

fn codegen(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let examples: [(&str, Source); 6] = [
        (
            "ttt_linear.ttt",
            Source::File("examples/data/ttt_linear_sample.safetensors"),
        ),
        (
            "ttt_mlp.ttt",
            Source::File("examples/data/ttt_mlp_sample.safetensors"),
        ),
        (
            "ttt_linear_layer.ttt",
            Source::File("tests/golden/layer_linear_H64_nh4_K16_L48_B1.inputs.safetensors"),
        ),
        (
            "ttt_mlp_layer.ttt",
            Source::File("tests/golden/layer_mlp_H64_nh4_K16_L48_B1.inputs.safetensors"),
        ),
        (
            "delta_rule.ttt",
            Source::Dims(&[("B", 1), ("H", 2), ("L", 64), ("dk", 16), ("dv", 16)]),
        ),
        (
            "mlp3_silu.ttt",
            Source::Dims(&[("B", 1), ("H", 2), ("L", 64), ("d", 16), ("h", 64)]),
        ),
    ];
    for (example, source) in &examples {
        let path = root.join("examples").join(example);
        let lowered = lower_file(&path, Precision::F32, &Default::default()).expect("compiles");
        c.bench_function(&format!("passes/{example}"), |b| {
            b.iter(|| optimize(lowered.clone(), None, false).expect("pipeline"))
        });
        let program = optimize(lowered, None, false).expect("pipeline").program;
        let tensors = inputs(&root, &program, source);
        let bound = bind(&program, &tensors, &Default::default(), ElemType::F32).expect("binds");
        c.bench_function(&format!("lower_kernel/{example}"), |b| {
            b.iter(|| tttc::passes::lower_kernel::lower_program(&bound.program).expect("lowers"))
        });
        let kernels = tttc::passes::lower_kernel::lower_program(&bound.program).expect("lowers");
        #[cfg(feature = "cranelift")]
        c.bench_function(&format!("cranelift/{example}"), |b| {
            b.iter(|| tttc::backends::cranelift::CraneliftJit::compile(&kernels).expect("codegen"))
        });
        #[cfg(feature = "llvm")]
        c.bench_function(&format!("llvm/{example}"), |b| {
            b.iter(|| tttc::backends::llvm::LlvmJit::compile(&kernels).expect("codegen"))
        });
        let _ = &kernels;
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = codegen
}
criterion_main!(benches);
