//! The language features whole models need: compile-time `for` loops (unrolled, in `main` and in
//! functions), `if`/`else` statements and expressions on boolean, string and integer configs,
//! tensor names with `{i}` interpolation, `int` inputs with a range; and their errors, located
//! with `FILE:LINE:COL` and a caret, with exit code 2.

mod common;

use common::*;
use std::collections::BTreeMap;
use tttc::ir::Setting;
use tttc::runtime::{write_safetensors_with_ints, IntTensor, Tensor};
use tttc::{Precision, Settings};

/// Compiles `source` with `settings` and runs it on the interpreter with `inputs`.
fn run(source: &str, settings: &Settings, inputs: &[(&str, Tensor)]) -> BTreeMap<String, Tensor> {
    let program = tttc::compile_source("t.ttt", source, Precision::F64, settings)
        .unwrap_or_else(|e| panic!("compile: {e}"));
    let tensors: BTreeMap<String, Tensor> = inputs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let bound = tttc::bind(&program, &tensors, settings, Precision::F64.elem())
        .unwrap_or_else(|e| panic!("bind: {e}"));
    tttc::backends::interp::run_program(&bound.program, &bound.inputs).expect("run")
}

fn input_names(source: &str, settings: &Settings) -> Vec<String> {
    let program = tttc::compile_source("t.ttt", source, Precision::F64, settings)
        .unwrap_or_else(|e| panic!("compile: {e}"));
    let g = &program.graph;
    let mut names: Vec<String> = g
        .inputs()
        .iter()
        .filter_map(|&i| g.input_name(i).map(str::to_string))
        .collect();
    names.sort();
    names
}

fn vec3(a: f64, b: f64, c: f64) -> Tensor {
    Tensor::from_f64(vec![3], vec![a, b, c]).expect("tensor")
}

const LAYERS: &str = r#"
config num_layers = 3
config mode = "mul" | "add"
config bias = false

main {
  input x: [f]
  let h = x
  for i in 0..num_layers {
    input w.{i}: [f]
    if mode == "mul" {
      let h = h * w.{i}
    } else if mode == "add" {
      let h = h + w.{i}
    }
    intermediate after_{i} = h
  }
  if bias && num_layers > 1 {
    input b: [f]
    let h = h + b
  }
  output y = h
}
"#;

#[test]
fn loops_unroll_and_ifs_pick_one_branch() {
    let w = |i: usize| vec3(i as f64 + 1.0, 2.0, -1.0);
    let base = [
        ("x", vec3(1.0, 2.0, 3.0)),
        ("w.0", w(0)),
        ("w.1", w(1)),
        ("w.2", w(2)),
    ];
    // Defaults: three layers of products.
    let out = run(LAYERS, &Settings::new(), &base);
    assert_eq!(out["y"].to_f64_vec(), [6.0, 16.0, -3.0]);
    assert_eq!(
        input_names(LAYERS, &Settings::new()),
        ["w.0", "w.1", "w.2", "x"]
    );
    // A string config picks the other branch; a boolean adds an input; the count is a config.
    let settings: Settings = [
        ("mode".to_string(), Setting::Text("add".into())),
        ("bias".to_string(), Setting::Bool(true)),
        ("num_layers".to_string(), Setting::Number(2.0)),
    ]
    .into();
    assert_eq!(input_names(LAYERS, &settings), ["b", "w.0", "w.1", "x"]);
    let mut inputs = base[..3].to_vec();
    inputs.push(("b", vec3(10.0, 20.0, 30.0)));
    let out = run(LAYERS, &settings, &inputs);
    assert_eq!(out["y"].to_f64_vec(), [14.0, 26.0, 31.0]);
    // Interpolated output names.
    let program = tttc::compile_source("t.ttt", LAYERS, Precision::F64, &settings).expect("ok");
    assert_eq!(program.intermediates, ["after_0", "after_1"]);
}

#[test]
fn loops_in_functions_and_if_expressions() {
    let source = r#"
config order = 3
config squared = true
fn power(x, n) {
  let y = 1
  for i in 0..n {
    let y = y * x
  }
  y
}
main {
  input x: [f]
  output p = power(x, order)
  output q = if squared { x * x } else { x }
  output r = if order >= 4 { x } else if order == 3 { -x } else { 2 * x }
}
"#;
    let out = run(source, &Settings::new(), &[("x", vec3(2.0, -1.0, 0.5))]);
    assert_eq!(out["p"].to_f64_vec(), [8.0, -1.0, 0.125]);
    assert_eq!(out["q"].to_f64_vec(), [4.0, 1.0, 0.25]);
    assert_eq!(out["r"].to_f64_vec(), [-2.0, 1.0, -0.5]);
}

/// `LINE:COL` of the first `needle` in `text` (1-based), after its leading newline if any.
fn loc(text: &str, needle: &str) -> String {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the program"))
        + usize::from(needle.starts_with('\n'));
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{line}:{col}")
}

#[test]
fn malformed_compile_time_code_is_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    // (program, the text the error points at, message fragment)
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "main {\n  input x: [L]\n  for i in 0..L {\n    let y = x\n  }\n  output y = x\n}\n".into(),
            "L {",
            "only known once inputs are bound",
        ),
        (
            "config layers = 2\nmain {\n  input x: [f]\n  if layers {\n    let x = x\n  }\n  output y = x\n}\n"
                .into(),
            "layers {",
            "a condition must be a boolean",
        ),
        (
            "config kind = \"a\"\nmain {\n  input x: [f]\n  if kind == 1 {\n    let x = x\n  }\n  output y = x\n}\n"
                .into(),
            "kind == 1",
            "cannot combine a string",
        ),
        (
            "main {\n  input x.{j}: [f]\n  output y = 1\n}\n".into(),
            "x.{j}",
            "unknown name `j`",
        ),
        (
            "main {\n  input x: [f]\n  output y = x == x\n}\n".into(),
            "x == x",
            "is a tensor",
        ),
        (
            "config flag = true\nmain {\n  input x: [f]\n  output y = x * flag\n}\n".into(),
            "flag\n",
            "not a tensor",
        ),
        (
            "config n = 2\nmain {\n  input x: [f]\n  if 0 < n < 3 {\n    let x = x\n  }\n  output y = x\n}\n"
                .into(),
            "< 3",
            "comparisons do not chain",
        ),
        (
            "config mode = \"a\" | \"b\"\nmain {\n  input x: [f]\n  output y = if mode == \"a\" { x }\n}\n"
                .into(),
            "\n}\n",
            "expected `else`",
        ),
        (
            "main {\n  input x: [f]\n  output y = shift(x, 0, -1)\n}\n".into(),
            "-1)",
            "non-negative integer",
        ),
        (
            "config n = 3\nmain {\n  input x: [f]\n  for i in 0..n {\n    input w.{i}: [g]\n    let x = x + w.{i}\n  }\n  output y = x\n}\n"
                .into(),
            "x + w",
            "in the loop iteration with `i` = 0",
        ),
        (
            "main {\n  input x: [f]\n  input x: [f]\n  output y = x\n}\n".into(),
            "x: [f]\n  output",
            "declared twice",
        ),
    ];
    for (program, at, fragment) in cases {
        let path = dir.path().join("bad.ttt");
        std::fs::write(&path, &program).expect("write");
        let out = tttc(&["check", path.to_str().expect("utf-8")]);
        let out_text = text(&out);
        assert_eq!(out.status.code(), Some(2), "{fragment}: {out_text}");
        let expected = format!("bad.ttt:{}:", loc(&program, at));
        assert!(
            out_text.contains(&expected),
            "{fragment}: expected {expected} in\n{out_text}"
        );
        assert!(
            out_text.contains(fragment),
            "{fragment}: not in\n{out_text}"
        );
        assert!(
            out_text.contains('^'),
            "{fragment}: no caret in\n{out_text}"
        );
    }
}

#[test]
fn string_configs_accept_only_their_choices() {
    let out = tttc(&[
        "check",
        "examples/ttt_lm.ttt",
        "--set",
        "ttt_layer_type=gru",
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("ttt_lm.ttt:"), "{t}");
    assert!(t.contains(r#"one of "linear", "mlp""#), "{t}");
    let out = tttc(&[
        "check",
        "examples/ttt_lm.ttt",
        "--set",
        "ttt_layer_type=mlp",
        "--set",
        "share_qk=true",
        "--set",
        "num_hidden_layers=1",
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains(r#"ttt_layer_type = "mlp""#), "{t}");
    assert!(t.contains("model.layers.0.seq_modeling_block.W2"), "{t}");
    assert!(
        t.contains("model.layers.0.seq_modeling_block.conv_k.weight"),
        "{t}"
    );
    assert!(!t.contains("model.layers.1."), "{t}");
    let out = tttc(&["check", "examples/ttt_lm.ttt", "--set", "share_qk=1"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("boolean config"), "{t}");
}

/// The `model_linear_T` golden inputs with `input_ids` replaced.
fn model_inputs_with(
    dir: &std::path::Path,
    name: &str,
    ids: Option<IntTensor>,
    float_ids: bool,
) -> String {
    let file = tttc::runtime::read_safetensors_with_ints(
        &root().join("tests/golden/model_linear_T.inputs.safetensors"),
    )
    .expect("inputs");
    let mut floats = file.floats.clone();
    let mut ints = file.ints.clone();
    if let Some(ids) = ids {
        ints.insert("input_ids".into(), ids);
    }
    if float_ids {
        let ids = ints.remove("input_ids").expect("ids");
        let values: Vec<f64> = ids.values.iter().map(|&v| v as f64).collect();
        floats.insert(
            "input_ids".into(),
            Tensor::from_f64(ids.shape, values).expect("tensor"),
        );
    }
    let path = dir.join(format!("{name}.safetensors"));
    write_safetensors_with_ints(&path, &floats, &ints).expect("write");
    path.display().to_string()
}

fn run_model(inputs: &str, extra: &[&str]) -> (i32, String) {
    let config = root().join("tests/golden/model_linear_T.config.json");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.safetensors");
    let mut args = vec![
        "run",
        "examples/ttt_lm.ttt",
        "--config",
        config.to_str().expect("utf-8"),
        "--inputs",
        inputs,
        "--out",
        out.to_str().expect("utf-8"),
        "--backend",
        "interp",
    ];
    args.extend(extra);
    let o = tttc(&args);
    (o.status.code().unwrap_or(-1), text(&o))
}

/// A library caller binding floating-point tensors itself: `int` inputs must hold integers in
/// their range.
#[test]
fn bind_checks_integer_inputs_given_as_floats() {
    let source =
        "main {\n  input ids: int[L] in 0..V\n  input table: [V, 2]\n  output y = ids\n}\n";
    let program =
        tttc::compile_source("t.ttt", source, Precision::F64, &Settings::new()).expect("compiles");
    let table = Tensor::from_f64(vec![3, 2], vec![0.0; 6]).expect("tensor");
    let bind = |ids: Vec<f64>| {
        let n = ids.len();
        let tensors: BTreeMap<String, Tensor> = [
            (
                "ids".to_string(),
                Tensor::from_f64(vec![n], ids).expect("t"),
            ),
            ("table".to_string(), table.clone()),
        ]
        .into();
        tttc::bind(&program, &tensors, &Settings::new(), Precision::F64.elem())
    };
    assert!(bind(vec![0.0, 2.0, 1.0]).is_ok());
    let err = bind(vec![0.0, 1.5])
        .expect_err("not an integer")
        .to_string();
    assert!(
        err.contains("`ids`: value 1.5 at index [1] is not an integer"),
        "{err}"
    );
    let err = bind(vec![-1.0]).expect_err("negative").to_string();
    assert!(
        err.contains("`ids`: value -1 at index [0] is out of its range 0..3 (`V` = 3)"),
        "{err}"
    );
}

#[test]
fn integer_inputs_are_checked_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = |values: Vec<i64>, dtype: &'static str| IntTensor {
        shape: vec![1, values.len()],
        values,
        dtype,
    };
    let mut forty: Vec<i64> = (0..40).map(|i| i * 2 % 97).collect();
    // I32 ids are read like I64 ones.
    let ok = model_inputs_with(dir.path(), "i32", Some(ids(forty.clone(), "I32")), false);
    let (code, out) = run_model(&ok, &[]);
    assert_eq!(code, 0, "{out}");
    forty[7] = 97;
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (
            model_inputs_with(dir.path(), "range", Some(ids(forty.clone(), "I64")), false),
            vec![],
            "`input_ids`: value 97 at index [0, 7] is out of its range 0..97 (`vocab_size` = 97)",
        ),
        (
            model_inputs_with(dir.path(), "float", None, true),
            vec![],
            "`input_ids`: the program declares it `int`",
        ),
        (
            model_inputs_with(
                dir.path(),
                "huge",
                Some(ids(vec![(1 << 24) + 1; 40], "I64")),
                false,
            ),
            vec!["--precision", "f32"],
            "`input_ids`: value 16777217 at index [0, 0] is not exactly representable in f32",
        ),
    ];
    for (inputs, extra, fragment) in cases {
        let (code, out) = run_model(&inputs, &extra);
        assert_eq!(code, 2, "{fragment}: {out}");
        assert!(out.contains(fragment), "expected {fragment:?} in\n{out}");
        assert!(!out.contains("panicked"), "{out}");
    }
    // An element type tttc does not read at all (U8), in a hand-made file: named, exit code 2.
    let header = br#"{"input_ids":{"dtype":"U8","shape":[1,4],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    let path = dir.path().join("u8.safetensors");
    std::fs::write(&path, bytes).expect("write");
    let (code, out) = run_model(path.to_str().expect("utf-8"), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("tensor `input_ids` has element type U8"),
        "{out}"
    );
    // An integer tensor for a floating-point input.
    let file = tttc::runtime::read_safetensors_with_ints(
        &root().join("tests/golden/model_linear_T.inputs.safetensors"),
    )
    .expect("inputs");
    let mut floats = file.floats.clone();
    let mut ints = file.ints.clone();
    let norm = floats.remove("model.norm.weight").expect("norm");
    ints.insert(
        "model.norm.weight".into(),
        IntTensor {
            shape: norm.shape().to_vec(),
            values: vec![1; norm.len()],
            dtype: "I64",
        },
    );
    let path = dir.path().join("int_weight.safetensors");
    write_safetensors_with_ints(&path, &floats, &ints).expect("write");
    let (code, out) = run_model(path.to_str().expect("utf-8"), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("`model.norm.weight`: stored as I64"), "{out}");
}

/// A config key that names a setting only once another of the config's keys is applied
/// (`g` exists only when `kind` is "b") is applied too, by the CLI and the library alike.
#[test]
fn config_keys_unlocked_by_other_keys_are_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = dir.path().join("t.ttt");
    std::fs::write(
        &program,
        "config kind = \"a\" | \"b\"\nmain {\n  input x: [f]\n  if kind == \"b\" {\n    input w: [g]\n    let x = x * sum(w)\n  }\n  output y = x\n}\n",
    )
    .expect("write program");
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"kind": "b", "g": 3, "unrelated": [1, 2]}"#).expect("config");
    let (_, settings) = tttc::lower_with_config(&program, Precision::F64, &Settings::new(), |p| {
        tttc::read_config_file(&config, p)
    })
    .expect("lowers");
    assert_eq!(settings.get("kind"), Some(&Setting::Text("b".into())));
    assert_eq!(settings.get("g"), Some(&Setting::Number(3.0)));
    // Through the CLI: `w` of 4 elements contradicts the config's g = 3.
    let inputs = dir.path().join("in.safetensors");
    let tensors: BTreeMap<String, Tensor> = [
        ("x".to_string(), vec3(1.0, 2.0, 3.0)),
        (
            "w".to_string(),
            Tensor::from_f64(vec![4], vec![1.0; 4]).expect("tensor"),
        ),
    ]
    .into();
    tttc::runtime::write_safetensors(&inputs, &tensors).expect("write inputs");
    let out = dir.path().join("out.safetensors");
    let o = tttc(&[
        "run",
        program.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
        "--inputs",
        inputs.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--backend",
        "interp",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains('w'), "{}", text(&o));
}
