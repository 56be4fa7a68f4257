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
