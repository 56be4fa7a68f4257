//! Time of the compiler pipeline (lowering + every pass) for the shipped examples.
//! Run: `cargo bench --bench pipeline`. Target (issue 4): `ttt_mlp.ttt` under 200 ms.

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::PathBuf;
use tttc::{lower_file, optimize, Precision};

fn pipeline(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for example in [
        "ttt_linear.ttt",
        "ttt_mlp.ttt",
        "mlp3_silu.ttt",
        "ttt_mlp_layer.ttt",
    ] {
        let path = root.join("examples").join(example);
        c.bench_function(&format!("pipeline/{example}"), |b| {
            b.iter(|| {
                let lowered = lower_file(&path, Precision::F32, &Default::default())
                    .expect("the example compiles");
                optimize(lowered, None, false).expect("the pipeline runs")
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = pipeline
}
criterion_main!(benches);
