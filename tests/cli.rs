//! The CLI's commands and formats: `check`, `inspect --format text|json|dot`, `--help`.

mod common;

use common::*;

#[test]
fn inspect_formats() {
    for example in ["examples/ttt_linear.ttt", "examples/ttt_mlp.ttt"] {
        let text_out = tttc(&["inspect", example]);
        assert!(text_out.status.success(), "{}", text(&text_out));
        let printed = String::from_utf8_lossy(&text_out.stdout).into_owned();
        assert!(printed.contains("= ttt "), "the scan is printed");
        assert!(
            printed.contains("grad {"),
            "the derived gradient graph is printed"
        );

        let json_out = tttc(&["inspect", example, "--format", "json", "--precision", "f64"]);
        assert!(json_out.status.success());
        let program: tttc::ir::Program =
            serde_json::from_slice(&json_out.stdout).expect("inspect --format json parses back");
        tttc::ir::verify::verify_program(&program).expect("and verifies");
        assert!(tttc::ir::printer::print_program(&program).contains("f64["));

        let dot_out = tttc(&["inspect", example, "--format", "dot"]);
        assert!(dot_out.status.success());
        let dot = String::from_utf8_lossy(&dot_out.stdout);
        assert!(dot.starts_with("digraph"), "{dot}");
        assert_eq!(dot.matches('{').count(), dot.matches('}').count());
    }
}

#[test]
fn help_for_every_command() {
    for args in [
        vec!["--help"],
        vec!["check", "--help"],
        vec!["inspect", "--help"],
        vec!["run", "--help"],
    ] {
        let out = tttc(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
    let run_help = String::from_utf8_lossy(&tttc(&["run", "--help"]).stdout).into_owned();
    for option in ["--inputs", "--out", "--backend", "--precision", "--set"] {
        assert!(run_help.contains(option), "run --help mentions {option}");
    }
}

#[test]
fn check_reports_inputs_and_outputs() {
    let out = tttc(&["check", "examples/ttt_mlp.ttt"]);
    assert!(out.status.success());
    let s = text(&out);
    assert!(s.contains("W2: [H, h, f]"), "{s}");
    assert!(s.contains("b2_last: [B, H, 1, f]"), "{s}");
}

#[test]
fn inspect_every_stage() {
    let passes = tttc(&["inspect", "examples/ttt_linear.ttt", "--passes"]);
    let listed = String::from_utf8_lossy(&passes.stdout).into_owned();
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        names,
        ["autodiff", "primal", "dual_form", "simplify", "fuse"]
    );

    let after = |stage: &str| {
        let out = tttc(&["inspect", "examples/ttt_linear.ttt", "--after", stage]);
        assert!(out.status.success(), "{stage}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !after("parse").contains("grad {"),
        "no gradient before autodiff"
    );
    assert!(after("autodiff").contains("grad {"));
    assert!(
        after("primal").contains("= mix "),
        "the primal form mixes per-token states"
    );
    let dual = after("dual_form");
    assert!(dual.contains("step {") && !dual.contains("= mix"), "{dual}");
    assert!(
        after("fuse").contains("# kernel"),
        "kernel boundaries are visible"
    );

    let bad = tttc(&["inspect", "examples/ttt_linear.ttt", "--after", "magic"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad).contains("dual_form"),
        "the error lists the stages"
    );

    let all = tttc(&["inspect", "examples/ttt_mlp.ttt", "--all"]);
    let all = String::from_utf8_lossy(&all.stdout).into_owned();
    for stage in [
        "parse",
        "autodiff",
        "primal",
        "dual_form",
        "simplify",
        "fuse",
    ] {
        assert!(all.contains(&format!("== after {stage} ==")), "{stage}");
    }
    let json = tttc(&[
        "inspect",
        "examples/ttt_mlp.ttt",
        "--all",
        "--format",
        "json",
    ]);
    let stages: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(stages.as_array().map(Vec::len), Some(6));
    let dot = tttc(&[
        "inspect",
        "examples/ttt_mlp.ttt",
        "--after",
        "primal",
        "--format",
        "dot",
    ]);
    assert!(String::from_utf8_lossy(&dot.stdout).contains("cluster_"));

    let timings = tttc(&["inspect", "examples/ttt_mlp.ttt", "--timings"]);
    let timings = String::from_utf8_lossy(&timings.stdout).into_owned();
    for stage in [
        "autodiff",
        "primal",
        "dual_form",
        "simplify",
        "fuse",
        "total",
    ] {
        assert!(timings.lines().any(|l| l.starts_with(stage)), "{timings}");
    }
}

/// Writes zero-filled inputs of the given shapes.
fn zeros_file(dir: &std::path::Path, shapes: &[(&str, Vec<usize>)]) -> std::path::PathBuf {
    let tensors = shapes
        .iter()
        .map(|(n, s)| {
            (
                n.to_string(),
                tttc::runtime::Tensor::zeros(s.clone(), tttc::runtime::ElemType::F32),
            )
        })
        .collect();
    let path = dir.join("shapes.safetensors");
    tttc::runtime::write_safetensors(&path, &tensors).expect("write");
    path
}

fn cost_json(program: &str, inputs: &std::path::Path) -> serde_json::Value {
    let out = tttc(&[
        "cost",
        program,
        "--inputs",
        inputs.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("cost --json is JSON")
}

/// The acceptance numbers: at B=1, 12 heads, f=64, K=16, L=2048 the optimized FLOPs are
/// within 1.3x of the hand-derived dual form (per token and head: linear 6f²+6Kf, MLP
/// 56f²+30Kf) and the optimized program materializes at least 4x fewer bytes than the primal.
#[test]
fn cost_meets_the_dual_form_targets() {
    let (b, h, l, f, k) = (1usize, 12usize, 2048usize, 64usize, 16usize);
    let dir = tempfile::tempdir().expect("tempdir");
    let seq = vec![b, h, l, f];
    let common = vec![
        ("XQ", seq.clone()),
        ("XK", seq.clone()),
        ("XV", seq),
        ("token_eta", vec![k]),
        ("ttt_lr_eta", vec![b, h, l]),
        ("ln_weight", vec![h, f]),
        ("ln_bias", vec![h, f]),
    ];
    let mut linear = common.clone();
    linear.extend([("W1", vec![h, f, f]), ("b1", vec![h, 1, f])]);
    let mut mlp = common;
    mlp.extend([
        ("W1", vec![h, f, 4 * f]),
        ("b1", vec![h, 1, 4 * f]),
        ("W2", vec![h, 4 * f, f]),
        ("b2", vec![h, 1, f]),
    ]);
    let tokens = (b * h * l) as f64;
    let (f, k) = (f as f64, k as f64);
    for (program, shapes, per_token) in [
        ("examples/ttt_linear.ttt", linear, 6.0 * f * f + 6.0 * k * f),
        ("examples/ttt_mlp.ttt", mlp, 56.0 * f * f + 30.0 * k * f),
    ] {
        let path = zeros_file(dir.path(), &shapes);
        let cost = cost_json(program, &path);
        let flops = |stage: &str| cost[stage]["flops"].as_f64().expect("flops");
        let bytes = |stage: &str| cost[stage]["bytes"].as_f64().expect("bytes");
        let hand = per_token * tokens;
        let ratio = flops("optimized") / hand;
        assert!(
            ratio <= 1.3,
            "{program}: optimized FLOPs are {ratio:.3}x the hand-derived dual form"
        );
        assert!(
            ratio >= 0.9,
            "{program}: fewer FLOPs than the dual form needs ({ratio:.3}x)?"
        );
        let shrink = bytes("primal") / bytes("optimized");
        assert!(shrink >= 4.0, "{program}: only {shrink:.2}x fewer bytes");
        assert!(flops("primal") > flops("optimized"));
    }
}
