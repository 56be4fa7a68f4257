//! The whole-model golden cases (ttt-lm-pytorch's TTTForCausalLM, `tests/golden/model_*`)
//! through exactly the user's interface:
//!
//!     tttc run examples/ttt_lm.ttt --config CASE.config.json --inputs CASE.inputs.safetensors --out OUT
//!
//! on every built backend, in f64 and f32; plus the two backbone/layer combinations without a
//! golden (TTT-Linear on the Mamba backbone, TTT-MLP on the Transformer backbone, configs in
//! `examples/configs/`, against tttc's own NumPy reference), a model with another layer count,
//! and prefixes and batches of the golden sequences.
//!
//! Tolerances, relative to max |expected| (as for the layers, `common::golden`): f64 ≤ 1e-9
//! against `logits_exact_rope` (the reference with float64 RoPE tables, as tttc computes them;
//! the remaining differences are summation order and, for TTT-MLP, the reference's rounded
//! GELU-derivative constants, ~1e-11); f32 ≤ 2e-5 against `logits` (the reference's own float32
//! error is ~3e-7, `tolerance_hint.logits_f32_compute`). The residual stream after each layer
//! (`aux.hidden_states_after_layer_{i}`) follows the reference's float32 RoPE tables, whose
//! effect is ~1e-7 (`tolerance_hint.float32_rope_table_effect`): f64 ≤ 1e-6 there.

mod common;

use common::golden::{TOL_F32, TOL_F64};
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tttc::runtime::{read_safetensors_with_ints, write_safetensors_with_ints, Tensor, TensorFile};

const PROGRAM: &str = "examples/ttt_lm.ttt";
/// Intermediates downstream of the reference's float32 RoPE tables, in f64.
const TOL_AUX_F64: f64 = 1e-6;

/// The model cases' stems in tests/golden.
fn model_cases() -> Vec<String> {
    let mut stems: Vec<String> = std::fs::read_dir(root().join("tests/golden"))
        .expect("tests/golden exists")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".config.json")?;
            stem.starts_with("model_").then(|| stem.to_string())
        })
        .collect();
    stems.sort();
    assert!(stems.len() >= 2, "expected the two model golden cases");
    stems
}

fn golden(stem: &str, suffix: &str) -> PathBuf {
    root().join(format!("tests/golden/{stem}{suffix}"))
}

/// `tttc run examples/ttt_lm.ttt --config C --inputs I --out O [extra]`; panics on failure.
fn run(config: &Path, inputs: &Path, out: &Path, extra: &[&str], what: &str) {
    let mut args = vec![
        "run",
        PROGRAM,
        "--config",
        config.to_str().expect("utf-8"),
        "--inputs",
        inputs.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ];
    args.extend(extra);
    let result = tttc(&args);
    assert!(result.status.success(), "{what}: {}", text(&result));
}

/// Runs every model case on `backend` in `precision` and checks the logits (and in f64 the
/// residual stream after every layer).
fn check_goldens(backend: &str, precision: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    for stem in model_cases() {
        let what = format!("{stem} {backend} {precision}");
        let out = tmp.path().join(format!("{stem}.safetensors"));
        run(
            &golden(&stem, ".config.json"),
            &golden(&stem, ".inputs.safetensors"),
            &out,
            &[
                "--backend",
                backend,
                "--precision",
                precision,
                "--dump-intermediates",
            ],
            &what,
        );
        let got = load(&out);
        let expected = load(&golden(
            &stem,
            &format!(".expected_{precision}.safetensors"),
        ));
        let (reference, tol) = match precision {
            "f64" => ("logits_exact_rope", TOL_F64),
            _ => ("logits", TOL_F32),
        };
        let err = rel_error(&got["logits"], &expected[reference]);
        eprintln!("{what}: logits vs {reference}: max rel error {err:.3e}");
        assert!(
            err <= tol,
            "{what}: logits vs {reference}: {err:e} > {tol:e}"
        );
        let mut layers = 0;
        for (name, exp) in expected
            .iter()
            .filter(|(n, _)| n.starts_with("aux.hidden_states_after_layer_"))
        {
            let tol = if precision == "f64" {
                TOL_AUX_F64
            } else {
                TOL_F32
            };
            let g = got
                .get(name)
                .unwrap_or_else(|| panic!("{what}: {name} missing"));
            let err = rel_error(g, exp);
            assert!(err <= tol, "{what}: {name}: {err:e} > {tol:e}");
            layers += 1;
        }
        assert!(layers >= 2, "{what}: compared {layers} layers");
    }
}

#[test]
fn model_goldens_f64() {
    for backend in backends() {
        check_goldens(backend, "f64");
    }
}

#[test]
fn model_goldens_f32() {
    for backend in backends() {
        check_goldens(backend, "f32");
    }
}

/// The command of the issue, character for character (default backend and precision: f32).
#[test]
fn model_goldens_with_default_flags() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for stem in model_cases() {
        let out = tmp.path().join("out.safetensors");
        run(
            &golden(&stem, ".config.json"),
            &golden(&stem, ".inputs.safetensors"),
            &out,
            &[],
            &stem,
        );
        let got = load(&out);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["logits"], "{stem}");
        let expected = load(&golden(&stem, ".expected_f32.safetensors"));
        let err = rel_error(&got["logits"], &expected["logits"]);
        assert!(err <= TOL_F32, "{stem}: {err:e} > {TOL_F32:e}");
    }
}

fn read_case(stem: &str) -> TensorFile {
    read_safetensors_with_ints(&golden(stem, ".inputs.safetensors")).expect("inputs")
}

fn write_case(dir: &Path, name: &str, file: &TensorFile) -> PathBuf {
    let path = dir.join(format!("{name}.inputs.safetensors"));
    write_safetensors_with_ints(&path, &file.floats, &file.ints).expect("write inputs");
    path
}

fn finite_logits(out: &BTreeMap<String, Tensor>, what: &str) {
    let v = out["logits"].to_f64_vec();
    assert!(v.iter().all(|x| x.is_finite()), "{what}: non-finite logits");
    assert!(v.iter().any(|x| *x != 0.0), "{what}: all-zero logits");
}

/// TTT-Linear on the Mamba backbone and TTT-MLP on the Transformer backbone have no golden from
/// the paper's code: their configs (`examples/configs/ttt_lm_{linear_M,mlp_T}.config.json`) run
/// on weights rearranged from the goldens (each case's inner-model weights taken from the
/// other; `tests/reference/model_*`) and are compared with tttc's independent NumPy reference
/// (`tools/ttt_lm_ref.py`, which reproduces both goldens' `logits_exact_rope` to 6e-16 and
/// 7e-12). Same tolerances as the goldens: f64 ≤ 1e-9, f32 ≤ 2e-5.
#[test]
fn other_backbone_combinations_match_the_numpy_reference() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (stem, config) in [
        ("model_linear_M", "ttt_lm_linear_M"),
        ("model_mlp_T", "ttt_lm_mlp_T"),
    ] {
        let config = root().join(format!("examples/configs/{config}.config.json"));
        let inputs = root().join(format!("tests/reference/{stem}.inputs.safetensors"));
        let expected =
            load(&root().join(format!("tests/reference/{stem}.expected_f64.safetensors")));
        for backend in backends() {
            for (precision, tol) in [("f64", TOL_F64), ("f32", TOL_F32)] {
                let what = format!("{stem} {backend} {precision}");
                let out = tmp
                    .path()
                    .join(format!("{stem}.{backend}.{precision}.safetensors"));
                run(
                    &config,
                    &inputs,
                    &out,
                    &["--backend", backend, "--precision", precision],
                    &what,
                );
                let got = load(&out);
                finite_logits(&got, &what);
                let err = rel_error(&got["logits"], &expected["logits_exact_rope"]);
                eprintln!("{what}: logits vs the NumPy reference: max rel error {err:.3e}");
                assert!(err <= tol, "{what}: {err:e} > {tol:e}");
            }
        }
    }
}

/// Another layer count: the first layer of `model_mlp_M` alone (`num_hidden_layers = 1`) must
/// reproduce the reference's residual stream after that layer.
#[test]
fn one_layer_model_matches_the_first_layer_of_the_golden() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stem = "model_mlp_M";
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden(stem, ".config.json")).expect("read"))
            .expect("json");
    config["num_hidden_layers"] = serde_json::json!(1);
    let config_path = tmp.path().join("one_layer.config.json");
    std::fs::write(&config_path, config.to_string()).expect("write config");
    let mut file = read_case(stem);
    file.floats.retain(|n, _| !n.starts_with("model.layers.1."));
    let inputs = write_case(tmp.path(), "one_layer", &file);
    let out = tmp.path().join("out.safetensors");
    run(
        &config_path,
        &inputs,
        &out,
        &[
            "--backend",
            "interp",
            "--precision",
            "f64",
            "--dump-intermediates",
        ],
        "one layer",
    );
    let got = load(&out);
    assert!(!got.contains_key("aux.hidden_states_after_layer_1"));
    let expected = load(&golden(stem, ".expected_f64.safetensors"));
    let name = "aux.hidden_states_after_layer_0";
    let err = rel_error(&got[name], &expected[name]);
    assert!(err <= TOL_AUX_F64, "{name}: {err:e} > {TOL_AUX_F64:e}");
    finite_logits(&got, "one layer");
}

/// Other shapes, checked against the golden itself: the model is causal and batch rows are
/// independent, so a prefix of the sequence (shorter than a mini-batch, shorter than the
/// convolution, or ending inside a mini-batch) gives the first rows of the golden logits, and a
/// batch of two sequences gives the golden's logits in its first row. f64, ≤ 1e-9 relative to
/// max |expected| (against `logits_exact_rope`).
#[test]
fn prefixes_and_batches_reproduce_the_golden() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for stem in model_cases() {
        let file = read_case(&stem);
        let ids = file.ints["input_ids"].clone();
        let l = ids.shape[1];
        let expected =
            load(&golden(&stem, ".expected_f64.safetensors"))["logits_exact_rope"].to_f64_vec();
        let vocab = expected.len() / l;
        let mut variants: Vec<(String, Vec<usize>, Vec<i64>)> = [2usize, 3, 21]
            .iter()
            .map(|&n| (format!("prefix{n}"), vec![1, n], ids.values[..n].to_vec()))
            .collect();
        let mut two = ids.values.clone();
        two.extend(ids.values.iter().rev());
        variants.push(("batch2".into(), vec![2, l], two));
        for (name, shape, values) in variants {
            let what = format!("{stem} {name}");
            let mut case = file.clone();
            case.ints.insert(
                "input_ids".into(),
                tttc::runtime::IntTensor {
                    shape: shape.clone(),
                    values,
                    dtype: "I64",
                },
            );
            let inputs = write_case(tmp.path(), &name, &case);
            let out = tmp.path().join(format!("{name}.out.safetensors"));
            run(
                &golden(&stem, ".config.json"),
                &inputs,
                &out,
                &["--backend", "interp", "--precision", "f64"],
                &what,
            );
            let got = load(&out)["logits"].to_f64_vec();
            assert_eq!(
                got.len(),
                shape[0] * shape[1] * vocab,
                "{what}: logits size"
            );
            let rows = shape[1].min(l);
            // Relative to the first rows' own max |expected|.
            assert_close(
                &what,
                &got[..rows * vocab],
                &expected[..rows * vocab],
                TOL_F64,
            );
        }
    }
}
