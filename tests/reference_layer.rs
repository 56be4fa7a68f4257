//! Whole TTT-Linear layers on shapes the goldens lack (batch 2, remainders, other widths, head
//! counts, mini-batch sizes and learning rates), against tttc's independent NumPy reference
//! (`tools/ttt_layer_ref.py`, see tests/reference/README.md), through the CLI; and both layer
//! programs with the Mamba backbone's options `share_qk` and `use_gate` against the whole-model
//! reference's layer (`tools/ttt_lm_ref.py layers`), on every built backend.
//! Tolerance: f64 ≤ 1e-9 relative to max |expected| (both sides are float64 with exact RoPE
//! tables; measured ~1e-15).

mod common;

use common::*;

fn check(stem: &str, sets: &[&str]) {
    check_program("examples/ttt_linear_layer.ttt", "interp", stem, sets);
}

fn check_program(program: &str, backend: &str, stem: &str, sets: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.safetensors");
    let inputs = root().join(format!("tests/reference/{stem}.inputs.safetensors"));
    let mut args = vec![
        "run".to_string(),
        program.into(),
        "--inputs".into(),
        inputs.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--precision".into(),
        "f64".into(),
        "--backend".into(),
        backend.into(),
    ];
    for s in sets {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = tttc(&args);
    assert!(run.status.success(), "{stem}: {}", text(&run));
    let expected = load(&root().join(format!("tests/reference/{stem}.expected_f64.safetensors")));
    let err = rel_error(&load(&out)["output"], &expected["output"]);
    assert!(err <= 1e-9, "{stem} {backend}: {err:e}");
}

#[test]
fn batch_two_with_a_remainder() {
    check(
        "layer_linear_B2_L40_H48_nh3_K16_lr0.5",
        &["num_attention_heads=3", "ttt_base_lr=0.5"],
    );
}

#[test]
fn mini_batch_eight_with_a_remainder() {
    check(
        "layer_linear_B1_L37_H64_nh4_K8_lr1",
        &["num_attention_heads=4", "mini_batch_size=8"],
    );
}

#[test]
fn shared_qk_and_output_gate_layers() {
    let sets = [
        "share_qk=true",
        "use_gate=true",
        "num_attention_heads=4",
        "ttt_base_lr=0.1",
    ];
    for backend in backends() {
        check_program(
            "examples/ttt_mlp_layer.ttt",
            backend,
            "layer_mlp_shareqk_gate_B2_L37",
            &sets,
        );
        check_program(
            "examples/ttt_linear_layer.ttt",
            backend,
            "layer_linear_shareqk_gate_B2_L37",
            &sets,
        );
    }
}
