//! Malformed programs and bad inputs give located, named errors and exit code 2, never a panic.

mod common;

use common::*;
use std::collections::BTreeMap;
use tttc::runtime::{write_safetensors, Tensor};

fn linear_source() -> String {
    std::fs::read_to_string(root().join("examples/ttt_linear.ttt")).expect("example")
}

/// Writes `text` to a temp file, runs `tttc check` on it, and returns (exit code, output).
fn check_program(dir: &std::path::Path, name: &str, bytes: &[u8]) -> (i32, String) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write program");
    let out = tttc(&["check", path.to_str().expect("utf-8")]);
    (out.status.code().unwrap_or(-1), text(&out))
}

/// (case name, program text, expected `line:col`, expected message fragment)
fn program_cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let base = linear_source();
    let replace = |from: &str, to: &str| {
        assert!(base.contains(from), "the example contains {from:?}");
        base.replacen(from, to, 1)
    };
    vec![
        (
            "syntax",
            replace("out(q: [1, f]) = q + g(q)", "out(q: [1, f]) = q + * g(q)"),
            "19:24",
            "expected an expression",
        ),
        (
            "unknown name",
            replace("q + g(q)", "q + g(qq)"),
            "19:26",
            "unknown name `qq`",
        ),
        (
            "unknown function",
            replace("q + g(q)", "q + h(q)"),
            "19:24",
            "unknown function `h`",
        ),
        (
            "shape mismatch",
            replace("x @ W1 + b1", "x @ W1 @ x"),
            "13:42",
            "matmul: inner dimensions differ",
        ),
        (
            "wrong arity",
            replace(
                "layer_norm(x @ W1 + b1, ln_weight, ln_bias, 1e-6)",
                "layer_norm(x @ W1 + b1, ln_weight, ln_bias)",
            ),
            "13:31",
            "missing argument `eps` of `layer_norm`",
        ),
        (
            "builtin arity",
            replace(
                "0.5 * sum((g(k) - (v - k)) ^ 2)",
                "0.5 * sum((g(k) - (v - k)) ^ 2, 0, 1)",
            ),
            "16:38",
            "`sum` takes 1 to 2 argument(s), got 3",
        ),
        (
            "non-scalar loss",
            replace(
                "0.5 * sum((g(k) - (v - k)) ^ 2)",
                "0.5 * ((g(k) - (v - k)) ^ 2)",
            ),
            "16:32",
            "the loss must be a scalar",
        ),
        (
            "unused state",
            replace("state b1: [1, f]", "state b1: [1, f]\n  state W9: [f, f]"),
            "10:9",
            "state `W9` is never used by `loss`",
        ),
        (
            "unknown field",
            replace("output b1_last = r.b1", "output b1_last = r.b2"),
            "37:22",
            "no field `b2`",
        ),
        (
            "unbound state",
            replace("W1 = W1, b1 = b1,", "W1 = W1,"),
            "30:15",
            "`b1` of `TTTLinear` is not bound",
        ),
        (
            "bad binding shape",
            replace("input b1: [H, 1, f]", "input b1: [H, f, f]"),
            "30:39",
            "binding `b1`",
        ),
        (
            "token_eta neither per position nor per token",
            replace(
                "input token_eta: [mini_batch_size]",
                "input token_eta: [L, f]",
            ),
            "33:67",
            "must be [mini_batch_size] (a step size per position in the mini-batch) or the shape of `lr`, [L]",
        ),
        (
            "momentum_gd's momentum not per token",
            replace(GD, &momentum(MOM_WRONG)),
            "33:82",
            "`momentum` is [mini_batch_size]: it must have the shape of `lr`, [L] (a value per token)",
        ),
        (
            "momentum_gd without decay",
            replace(GD, &momentum(MOM_MISSING)),
            "33:18",
            "`momentum_gd` needs `decay = ...`",
        ),
        (
            "momentum_gd with minibatch_gd's argument",
            replace(GD, &momentum(MOM_UNKNOWN)),
            "33:114",
            "`momentum_gd` has no argument `token_eta` (it takes size, lr, momentum, decay)",
        ),
        (
            "a rule that is not linear",
            user_rule(
                &base,
                "S = m * S - lr * (grad + wd * state * S)",
                "m = ttt_lr_eta",
            ),
            "41:28",
            "rule `mwd` is not linear in (state, carries, grad): this multiplies two of them",
        ),
        (
            "a rule with an unknown coefficient",
            user_rule(&base, "S = mu * S - lr * grad", "m = ttt_lr_eta"),
            "41:7",
            "rule `mwd` has no coefficient, carry or `state`/`grad` named `mu`",
        ),
        (
            "a rule with a constant term",
            user_rule(&base, "S = m * S - lr * grad + wd", "m = ttt_lr_eta"),
            "41:7",
            "this adds a term without any of them",
        ),
        (
            "a rule's coefficient of the wrong shape",
            user_rule(&base, "S = m * S - lr * (grad + wd * state)", "m = XQ"),
            "33:67",
            "`m` is [L, f]: it must have the shape of `lr`, [L] (a value per token)",
        ),
        (
            "a rule with two coefficients per position",
            user_rule(&base, "S = m * S - lr * grad", "m = token_eta", )
                .replacen("lr = ttt_lr_eta, m", "lr = token_eta, m", 1),
            "33:66",
            "`m` is a value per position in the mini-batch ([mini_batch_size]), and so is `lr`: a rule takes at most one such coefficient",
        ),
        (
            "a rule's end statement reading grad",
            rule_with_end(&base, "end S = S + grad"),
            "44:11",
            "an `end` statement runs after the mini-batch's last token and cannot read `grad`",
        ),
        (
            "a rule's end statement setting an unknown name",
            rule_with_end(&base, "end T = 0"),
            "44:7",
            "`end T` sets neither `state` nor a carry",
        ),
        (
            "a rule's end statement with a constant",
            rule_with_end(&base, "end S = wd"),
            "44:11",
            "`end S` must be linear in the state and the carries",
        ),
        (
            "a rule's per-token statement after an end statement",
            rule_with_end(&base, "end S = 0\n  S = S"),
            "45:3",
            "the per-token statements and `read` come before the `end` statements",
        ),
    ]
}

/// [`user_rule`] with `tail` (line 44 on) after its `read`.
fn rule_with_end(base: &str, tail: &str) -> String {
    let text = user_rule(base, "S = m * S - lr * grad", "m = ttt_lr_eta");
    let read = "  read state\n}\n";
    assert!(text.ends_with(read));
    format!(
        "{}  read state\n  {tail}\n}}\n",
        &text[..text.len() - read.len()]
    )
}

/// `examples/ttt_linear.ttt` with a rule `mwd(lr, m, wd)` appended (line 39 on; its carry's
/// update `carry_update` on line 41) and used by the scan (`m = ...` as given).
fn user_rule(base: &str, carry_update: &str, m: &str) -> String {
    let rule = format!(
        "rule mwd(lr, m, wd) {{\n  carry S = 0\n  {carry_update}\n  state = state + S\n  read state\n}}\n"
    );
    assert_eq!(base.lines().count(), 38, "the example's length");
    let text = base.replacen(
        GD,
        &format!("update mwd(size = mini_batch_size, lr = ttt_lr_eta, {m}, wd = ttt_lr_eta)"),
        1,
    );
    format!("{text}{rule}")
}

/// `examples/ttt_linear.ttt`'s update rule, replaced by the `momentum_gd` variants below.
const GD: &str =
    "update minibatch_gd(size = mini_batch_size, token_eta = token_eta, lr = ttt_lr_eta)";
/// `momentum` of the shape of `token_eta` ([K]), not of `lr`.
const MOM_WRONG: &str = "lr = ttt_lr_eta, momentum = token_eta, decay = ttt_lr_eta";
/// No `decay`.
const MOM_MISSING: &str = "lr = ttt_lr_eta, momentum = ttt_lr_eta";
/// `token_eta`, an argument of `minibatch_gd` only.
const MOM_UNKNOWN: &str =
    "lr = ttt_lr_eta, momentum = ttt_lr_eta, decay = ttt_lr_eta, token_eta = token_eta";

fn momentum(args: &str) -> String {
    format!("update momentum_gd(size = mini_batch_size, {args})")
}

#[test]
fn malformed_programs_are_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, program, line_col, fragment) in program_cases() {
        let (code, out) = check_program(dir.path(), "bad.ttt", program.as_bytes());
        assert_eq!(code, 2, "{name}: exit code\n{out}");
        let location = format!("bad.ttt:{line_col}:");
        assert!(
            out.contains(&location),
            "{name}: expected {location} in\n{out}"
        );
        assert!(
            out.contains(fragment),
            "{name}: expected {fragment:?} in\n{out}"
        );
        assert!(
            out.contains('^') || out.contains('─'),
            "{name}: no caret excerpt in\n{out}"
        );
        assert!(!out.contains("panicked"), "{name}: panic\n{out}");
    }
}

#[test]
fn empty_and_binary_files_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, bytes, fragment) in [
        ("empty.ttt", &b""[..], "the file is empty"),
        (
            "blank.ttt",
            &b"  \n# only a comment\n"[..],
            "no `main` block",
        ),
        ("binary.ttt", &b"inner X {\x00\x01\x02"[..], "binary file"),
        ("latin1.ttt", &b"main { \xff }"[..], "not a text file"),
    ] {
        let (code, out) = check_program(dir.path(), name, bytes);
        assert_eq!(code, 2, "{name}: {out}");
        assert!(
            out.contains(&format!("{name}:1:")),
            "{name}: no location in\n{out}"
        );
        assert!(
            out.contains(fragment),
            "{name}: expected {fragment:?} in\n{out}"
        );
    }
}

#[test]
fn missing_program_file_is_a_user_error() {
    let out = tttc(&["check", "does/not/exist.ttt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("does/not/exist.ttt"));
}

fn golden_inputs() -> BTreeMap<String, Tensor> {
    load(&root().join("tests/golden/inner_linear_B2_nh2_f16_K16_L40.inputs.safetensors"))
}

/// Runs `program` on `inputs` with extra arguments; returns (exit code, output).
fn run_program(program: &str, inputs: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("out.safetensors");
    let mut args = vec![
        "run",
        program,
        "--inputs",
        inputs.to_str().expect("utf-8"),
        "--out",
        out_path.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let out = tttc(&args);
    (out.status.code().unwrap_or(-1), text(&out))
}

#[test]
fn bad_inputs_name_the_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, tensors: &BTreeMap<String, Tensor>| {
        let p = dir.path().join(name);
        write_safetensors(&p, tensors).expect("write");
        p
    };
    let mut missing = golden_inputs();
    missing.remove("XK");
    let mut misshaped = golden_inputs();
    let xq = misshaped["XQ"].to_f64_vec();
    misshaped.insert(
        "XQ".into(),
        Tensor::from_f64(vec![2, 2, 20, 32], xq).expect("same size"),
    );
    let mut inconsistent = golden_inputs();
    let lr = inconsistent["ttt_lr_eta"].to_f64_vec();
    inconsistent.insert(
        "ttt_lr_eta".into(),
        Tensor::from_f64(vec![2, 2, 20, 2], lr).expect("same size"),
    );
    let cases = [
        (
            write("missing.safetensors", &missing),
            vec![],
            "`XK`: missing",
        ),
        (write("misshaped.safetensors", &misshaped), vec![], "`XQ`"),
        (
            write("rank.safetensors", &inconsistent),
            vec![],
            "`ttt_lr_eta`",
        ),
        (
            write("ok.safetensors", &golden_inputs()),
            vec!["--set", "mini_batch_size=8"],
            "`token_eta`",
        ),
        (
            write("ok2.safetensors", &golden_inputs()),
            vec!["--set", "nonsense=3"],
            "unknown setting `nonsense`",
        ),
    ];
    for (path, extra, fragment) in cases {
        let (code, out) = run_with(&path, &extra);
        assert_eq!(code, 2, "{fragment}: {out}");
        assert!(out.contains(fragment), "expected {fragment:?} in\n{out}");
        assert!(!out.contains("panicked"), "{out}");
    }
}

#[test]
fn bad_files_and_options_are_user_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .expect("write");
    let truncated = dir.path().join("truncated.safetensors");
    let good = std::fs::read(
        root().join("tests/golden/inner_linear_B2_nh2_f16_K16_L40.inputs.safetensors"),
    )
    .expect("read");
    std::fs::write(&truncated, &good[..good.len() / 2]).expect("write");
    let int64 = dir.path().join("int64.safetensors");
    {
        let data: Vec<u8> = vec![0u8; 8 * 4];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![4], &data)
            .expect("view");
        let bytes = safetensors::serialize([("XQ", view)], &None).expect("serialize");
        std::fs::write(&int64, bytes).expect("write");
    }
    let ok = root().join("tests/golden/inner_linear_B2_nh2_f16_K16_L40.inputs.safetensors");
    let cases: Vec<(&std::path::Path, Vec<&str>, &str)> = vec![
        (&garbage, vec![], "garbage.safetensors"),
        (&truncated, vec![], "truncated.safetensors"),
        (&int64, vec![], "XQ"),
        (
            std::path::Path::new("no/such/file.safetensors"),
            vec![],
            "no/such/file.safetensors",
        ),
        (&ok, vec!["--set", "mini_batch_size=0"], "mini_batch_size"),
        (&ok, vec!["--set", "mini_batch_size=abc"], "mini_batch_size"),
        (&ok, vec!["--set", "mini_batch_size"], "NAME=VALUE"),
        (&ok, vec!["--backend", "tpu"], "--backend"),
        (&ok, vec!["--precision", "f16"], "--precision"),
    ];
    for (path, extra, fragment) in cases {
        let (code, out) = run_with(path, &extra);
        assert_eq!(code, 2, "{fragment}: {out}");
        assert!(out.contains(fragment), "expected {fragment:?} in\n{out}");
        assert!(!out.contains("panicked"), "{out}");
    }
}

fn layer_inputs() -> BTreeMap<String, Tensor> {
    load(&root().join("tests/golden/layer_linear_H64_nh4_K16_L48_B1.inputs.safetensors"))
}

fn run_with(inputs: &std::path::Path, extra: &[&str]) -> (i32, String) {
    run_program("examples/ttt_linear.ttt", inputs, extra)
}

fn run_layer(inputs: &std::path::Path, extra: &[&str]) -> (i32, String) {
    run_program("examples/ttt_linear_layer.ttt", inputs, extra)
}

#[test]
fn layer_parameters_are_checked_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, tensors: &BTreeMap<String, Tensor>| {
        let p = dir.path().join(name);
        write_safetensors(&p, tensors).expect("write");
        p
    };
    let mut narrow = layer_inputs();
    let q = narrow["q_proj.weight"].to_f64_vec();
    let half: Vec<f64> = q.chunks(64).flat_map(|row| row[..32].to_vec()).collect();
    narrow.insert(
        "q_proj.weight".into(),
        Tensor::from_f64(vec![64, 32], half).expect("size"),
    );
    let mut missing = layer_inputs();
    missing.remove("post_norm.bias");
    let cases = [
        (
            write("narrow.safetensors", &narrow),
            "`q_proj.weight`: expected [64, 64] ([hidden_size, hidden_size]), got [64, 32]",
        ),
        (
            write("missing.safetensors", &missing),
            "`post_norm.bias`: missing; expected f32 [64] ([hidden_size])",
        ),
    ];
    for (path, fragment) in cases {
        let (code, out) = run_layer(&path, &[]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(fragment), "expected {fragment:?} in\n{out}");
    }
    // An unknown tensor is a warning that names it; the run still succeeds.
    let mut extra = layer_inputs();
    extra.insert(
        "q_proj.bias".into(),
        Tensor::zeros(vec![64], tttc::runtime::ElemType::F32),
    );
    let (code, out) = run_layer(&write("extra.safetensors", &extra), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning") && out.contains("q_proj.bias"),
        "{out}"
    );
}

#[test]
fn layer_settings_are_checked() {
    let inputs = root().join("tests/golden/layer_linear_H64_nh4_K16_L48_B1.inputs.safetensors");
    let config = root().join("tests/golden/layer_linear_H64_nh4_K16_L48_B1.config.json");
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"num_attention_heads\": ").expect("write");
    let wrong_type = dir.path().join("wrong.json");
    std::fs::write(&wrong_type, "{\"mini_batch_size\": \"sixteen\"}").expect("write");
    let config = config.to_str().expect("utf-8");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--set", "num_attention_heads=5"],
            "num_attention_heads",
        ),
        (vec!["--set", "num_attention_heads=2.5"], "integer config"),
        (
            vec!["--config", config, "--set", "mini_batch_size=8"],
            "conflicting values for `mini_batch_size`",
        ),
        (
            vec!["--config", broken.to_str().expect("utf-8")],
            "broken.json",
        ),
        (
            vec!["--config", wrong_type.to_str().expect("utf-8")],
            "`mini_batch_size` is an integer config",
        ),
        (
            vec!["--config", "no/such/config.json"],
            "no/such/config.json",
        ),
    ];
    for (extra, fragment) in cases {
        let (code, out) = run_layer(&inputs, &extra);
        assert_eq!(code, 2, "{extra:?}: {out}");
        assert!(
            out.contains(fragment),
            "{extra:?}: expected {fragment:?} in\n{out}"
        );
        assert!(!out.contains("panicked"), "{out}");
    }
}

// ---- issue 18: hostile inputs (R1, R5, R7, R8, R9, R10) -----------------------------------

/// `examples/ttt_linear.ttt` with the output expression replaced by `out`.
fn linear_with_out(out: &str) -> String {
    let base = linear_source();
    let from = "out(q: [1, f]) = q + g(q)";
    assert!(base.contains(from));
    base.replacen(from, &format!("out(q: [1, f]) = {out}"), 1)
}

/// The exit code is 2 and the output has an `error: FILE:LINE:` location and `fragment`.
fn assert_located(code: i32, out: &str, file: &str, fragment: &str, what: &str) {
    assert_eq!(code, 2, "{what}: {out}");
    assert!(out.contains("error: "), "{what}: {out}");
    assert!(
        out.lines().any(|l| l.contains(file) && l.contains(':')),
        "{what}: no location: {out}"
    );
    assert!(out.contains(fragment), "{what}: {out}");
}

/// R1: deep nesting (parentheses, calls, chained operators and fields, `else if`s, and
/// function calls stacking bodies up) is a located error, never a stack overflow.
#[test]
fn deep_nesting_is_a_located_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let too_deep = "this nests deeper than 256 levels";
    let cases = [
        (
            "parens",
            linear_with_out(&format!("{}g(q){}", "(".repeat(3000), ")".repeat(3000))),
            too_deep,
        ),
        (
            "calls",
            linear_with_out(&format!("{}g(q){}", "tanh(".repeat(3000), ")".repeat(3000))),
            too_deep,
        ),
        (
            "chain",
            linear_with_out(&vec!["g(q)"; 8000].join(" + ")),
            too_deep,
        ),
        (
            "negations",
            linear_with_out(&format!("{}g(q)", "-".repeat(3000))),
            too_deep,
        ),
        (
            "fields",
            linear_with_out(&format!("g(q){}", ".T".repeat(3000))),
            too_deep,
        ),
        (
            "else-if",
            linear_with_out(&format!(
                "{}g(q){}",
                "if true { g(q) } else ".repeat(3000),
                ""
            )),
            too_deep,
        ),
        (
            // Five functions, each nesting 250 calls around the previous one: every body is
            // within the parser's limit, the inlined whole is not.
            "inlined",
            {
                let mut fns = format!("fn f0(x) = {}x{}\n", "tanh(".repeat(250), ")".repeat(250));
                for i in 1..5 {
                    fns += &format!(
                        "fn f{i}(x) = {}f{}(x){}\n",
                        "tanh(".repeat(249),
                        i - 1,
                        ")".repeat(249)
                    );
                }
                fns + &linear_with_out("f4(g(q))")
            },
            "expressions nest deeper than 1024 levels once function calls are inlined",
        ),
    ];
    for (name, text, fragment) in cases {
        let (code, out) = check_program(dir.path(), &format!("{name}.ttt"), text.as_bytes());
        assert_located(code, &out, &format!("{name}.ttt"), fragment, name);
    }
    // Within the limits, deep programs compile.
    let text = linear_with_out(&format!("{}g(q){}", "(".repeat(200), ")".repeat(200)));
    let (code, out) = check_program(dir.path(), "fine.ttt", text.as_bytes());
    assert_eq!(code, 0, "{out}");
}

/// R5: a literal that overflows to infinity is rejected where it is written, like a `--set`
/// value (and a real config's value that overflows f32 in an f32 run).
#[test]
fn overflowing_literals_are_located_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lit = linear_with_out("q + g(q) * 1e999");
    let (code, out) = check_program(dir.path(), "lit.ttt", lit.as_bytes());
    assert_located(
        code,
        &out,
        "lit.ttt:19:",
        "the number `1e999` is too large",
        "1e999",
    );
    let cfg = format!("config big = 1e999\n{}", linear_source());
    let (code, out) = check_program(dir.path(), "cfg.ttt", cfg.as_bytes());
    assert_located(code, &out, "cfg.ttt:1:", "too large", "config 1e999");
    // Finite in f64, infinite in f32.
    let source = linear_with_out("q + g(q) * 1e39");
    let path = dir.path().join("f32.ttt");
    std::fs::write(&path, source).unwrap();
    let inputs = dir.path().join("in.safetensors");
    write_safetensors(&inputs, &golden_inputs()).unwrap();
    let out_file = dir.path().join("out.safetensors");
    let args = |p: &'static str| {
        vec![
            "run".to_string(),
            path.display().to_string(),
            "--inputs".into(),
            inputs.display().to_string(),
            "--out".into(),
            out_file.display().to_string(),
            "--backend".into(),
            "interp".into(),
            "--precision".into(),
            p.into(),
        ]
    };
    let run = |p| {
        let a = args(p);
        let r = tttc(&a.iter().map(String::as_str).collect::<Vec<_>>());
        (r.status.code().unwrap_or(-1), text(&r))
    };
    let (code, out) = run("f32");
    assert_located(
        code,
        &out,
        "f32.ttt:19:",
        "too large for f32",
        "1e39 in f32",
    );
    let (code, out) = run("f64");
    assert_eq!(code, 0, "1e39 is finite in f64: {out}");
}

/// R7: a tensor past the element limit is a user error before anything is allocated, and an
/// endless file is not read to the end.
#[test]
fn huge_tensors_and_files_are_user_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = dir.path().join("iota.ttt");
    std::fs::write(
        &program,
        "config n = 4\nmain {\n  input x: [1]\n  output y = sum(iota(n)) * x\n}\n",
    )
    .unwrap();
    let inputs = dir.path().join("x.safetensors");
    let x = Tensor::from_f64(vec![1], vec![1.0]).unwrap();
    write_safetensors(&inputs, &BTreeMap::from([("x".to_string(), x)])).unwrap();
    let out = dir.path().join("out.safetensors");
    let run = |n: &str| {
        tttc(&[
            "run",
            program.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--backend",
            "interp",
            "--set",
            &format!("n={n}"),
        ])
    };
    let r = run("1e14");
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        text(&r).contains("[100000000000000]") && text(&r).contains("more than 2147483648"),
        "{}",
        text(&r)
    );
    let r = run("5");
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(load(&out)["y"].to_f64_vec(), vec![10.0]);

    if std::path::Path::new("/dev/zero").exists() {
        let text_ = format!("import \"/dev/zero\"\n{}", linear_source());
        let (code, out) = check_program(dir.path(), "zero.ttt", text_.as_bytes());
        assert_located(
            code,
            &out,
            "zero.ttt:1:",
            "not a regular file",
            "import /dev/zero",
        );
        let r = tttc(&["check", "/dev/zero"]);
        assert_eq!(r.status.code(), Some(2), "{}", text(&r));
        assert!(text(&r).contains("not a regular file"), "{}", text(&r));
    }
    // A FIFO: opening it would block until a writer comes (forever); it is refused unopened.
    let fifo = dir.path().join("pipe.ttt");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.map(|s| s.success()).unwrap_or(false) {
        let r = tttc(&["check", fifo.to_str().expect("utf-8 path")]);
        assert_eq!(r.status.code(), Some(2), "{}", text(&r));
        assert!(text(&r).contains("not a regular file"), "{}", text(&r));
    }
}

/// R8: compile time grows linearly with the length of a `let` chain (it was quadratic: 4000
/// `let`s took 2.4 s, 50 000 more than a minute). A complexity check, not a timing bound:
/// doubling the chain must less than triple the time (the best of two runs each; a quadratic
/// pass quadruples it).
#[test]
fn long_let_chains_compile_in_linear_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = |n: usize, step: &str| {
        let mut s = String::from("main {\n  input x: [4, 4]\n  let a0 = x\n");
        for i in 1..=n {
            s += &format!("  let a{i} = a{}{step}\n", i - 1);
        }
        s + &format!("  output y = a{n}\n}}\n")
    };
    let time = |name: &str, source: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, source).unwrap();
        (0..2)
            .map(|_| {
                let start = std::time::Instant::now();
                let r = tttc(&["check", path.to_str().unwrap()]);
                assert!(r.status.success(), "{name}: {}", text(&r));
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    for (what, step) in [("lets", " + 1"), ("transposes", ".T")] {
        let t1 = time(&format!("{what}1.ttt"), &chain(3000, step));
        let t2 = time(&format!("{what}2.ttt"), &chain(6000, step));
        assert!(
            t2 / t1 < 3.0,
            "{what}: 3000 take {t1:.2} s, 6000 take {t2:.2} s: not linear"
        );
    }
}

/// R9: a state that reaches the loss only through zero-gradient terms is never trained: a
/// warning names it.
#[test]
fn a_state_with_zero_gradient_is_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = linear_source();
    let loss = "0.5 * sum((g(k) - (v - k)) ^ 2)";
    assert!(base.contains(loss));
    for (name, extra) in [
        ("times_zero", "0 * sum(b1)"),
        ("step", "sum(step(b1))"),
        ("floor", "sum(floor(b1))"),
    ] {
        // W1 alone in the model, b1 only in the extra term.
        let text = base.replacen(
            loss,
            &format!("0.5 * sum((k @ W1 - (v - k)) ^ 2) + {extra}"),
            1,
        );
        let (code, out) = check_program(dir.path(), &format!("{name}.ttt"), text.as_bytes());
        assert_eq!(code, 0, "{name}: {out}");
        assert!(
            out.contains("warning: state `b1` of inner model `TTTLinear` is never trained"),
            "{name}: {out}"
        );
        assert!(!out.contains("state `W1`"), "{name}: {out}");
    }
    let (code, out) = check_program(dir.path(), "plain.ttt", base.as_bytes());
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning"), "{out}");
}

/// R10: an output file is never one of the inputs; a config file with a key given twice is an
/// error naming it; `compile -o DIR/x.ptx` creates DIR as the x86_64 target does.
#[test]
fn outputs_never_overwrite_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = dir.path().join("in.safetensors");
    write_safetensors(&inputs, &golden_inputs()).unwrap();
    let before = std::fs::read(&inputs).unwrap();
    let program = root().join("examples/ttt_linear.ttt");
    let same = dir.path().join(".").join("in.safetensors");
    let r = tttc(&[
        "run",
        program.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        same.to_str().unwrap(),
        "--set",
        "mini_batch_size=16",
    ]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(text(&r).contains("would overwrite it"), "{}", text(&r));
    assert_eq!(
        std::fs::read(&inputs).unwrap(),
        before,
        "the input was changed"
    );
    let r = tttc(&[
        "run",
        program.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        inputs.to_str().unwrap(),
        "--save-state",
        program.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));

    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"mini_batch_size": 16, "other": 1, "mini_batch_size": 8}"#,
    )
    .unwrap();
    let r = tttc(&[
        "check",
        program.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        text(&r).contains("key `mini_batch_size` is given twice"),
        "{}",
        text(&r)
    );

    if cfg!(feature = "llvm") {
        let ptx = dir.path().join("newdir/x.ptx");
        let r = tttc(&[
            "compile",
            program.to_str().unwrap(),
            "--target",
            "sm_80",
            "--set",
            "B=1",
            "--set",
            "H=2",
            "--set",
            "L=16",
            "--set",
            "f=4",
            "-o",
            ptx.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", text(&r));
        assert!(ptx.exists() && dir.path().join("newdir/x.ptx.json").exists());
    }
}

/// `gather` with the wrong number of arguments, a scalar table, or inside an inner model: a
/// located error (exit 2) at the call or the argument.
#[test]
fn gather_misuse_is_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = |call: &str| {
        format!("main {{\n  input t: [V, H]\n  input ids: [L]\n  output e = {call}\n}}\n")
    };
    let cases = [
        (
            "three arguments",
            main("gather(t, ids, ids)"),
            "4:14",
            "`gather` takes 2 argument(s), got 3",
        ),
        (
            "one argument",
            main("gather(t)"),
            "4:14",
            "`gather` takes 2 argument(s), got 1",
        ),
        (
            "scalar table",
            main("gather(1.5, ids)"),
            "4:21",
            "a table with 1 or more axes",
        ),
        (
            "inner model",
            linear_with_out("q + gather(q, q)"),
            "19:24",
            "cannot be used inside an inner model",
        ),
    ];
    for (name, program, line_col, fragment) in cases {
        let (code, out) = check_program(dir.path(), "g.ttt", program.as_bytes());
        assert_eq!(code, 2, "{name}: exit code\n{out}");
        let location = format!("g.ttt:{line_col}:");
        assert!(
            out.contains(&location),
            "{name}: expected {location} in\n{out}"
        );
        assert!(
            out.contains(fragment),
            "{name}: expected {fragment:?} in\n{out}"
        );
        assert!(!out.contains("panicked"), "{name}: panic\n{out}");
    }
}
