//! Compile times: the pipeline's passes, lowering to kernel IR, then code generation by
//! Cranelift and by LLVM, for each example on its shipped sample inputs.
//! Run: `cargo bench --bench codegen`. Target (issue 6): Cranelift codegen of `ttt_mlp.ttt`
//! under 20 ms.

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::PathBuf;
use tttc::{bind, lower_file, optimize, Precision};

fn codegen(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for (example, sample) in [
        ("ttt_linear.ttt", "ttt_linear_sample.safetensors"),
        ("ttt_mlp.ttt", "ttt_mlp_sample.safetensors"),
    ] {
        let path = root.join("examples").join(example);
        let lowered = lower_file(&path, Precision::F32, &Default::default()).expect("compiles");
        c.bench_function(&format!("passes/{example}"), |b| {
            b.iter(|| optimize(lowered.clone(), None, false).expect("pipeline"))
        });
        let program = optimize(lowered, None, false).expect("pipeline").program;
        let tensors = tttc::runtime::read_safetensors(&root.join("examples/data").join(sample))
            .expect("sample inputs");
        let bound = bind(
            &program,
            &tensors,
            &Default::default(),
            tttc::runtime::ElemType::F32,
        )
        .expect("binds");
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
