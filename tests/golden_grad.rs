//! Gradients of whole programs (`tttc grad`) against the VJP goldens in `tests/golden/grad`
//! (ttt-lm-pytorch's code under torch autograd in float64, checked there by finite differences
//! to ~1e-9; see that folder's README): inner loops with a remainder mini-batch, whole layers
//! (every parameter by its state_dict name and `hidden_states`), a 2-layer LM — on the
//! interpreter, Cranelift and LLVM (the backward scan lowered to kernels).
//!
//! Tolerance, max |got − expected| / max |expected| per tensor: f64 ≤ 1e-8 (the issue's; the
//! reference differs from tttc's float64 math by summation order and its rounded
//! GELU-derivative constants, ~1e-11 in the forward goldens); f32 ≤ 2e-4 (the issue's: float32
//! rounding through the forward, the recomputation and the backward of 40 tokens).
//! `--checkpoint-every 1, 4, 1000` must give the same gradients (f64 ≤ 1e-12: only the order of
//! recomputation changes, not the arithmetic), on the interpreter and on LLVM.

mod common;

use common::compare::assert_tensor_close;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tttc::runtime::Tensor;

const TOL_F64: f64 = 1e-8;
const TOL_F32: f64 = 2e-4;

struct Case {
    stem: String,
    program: String,
    /// `--set` or `--config` arguments.
    settings: Vec<String>,
}

fn dir() -> PathBuf {
    root().join("tests/golden/grad")
}

fn cases() -> Vec<Case> {
    let mut stems: Vec<String> = std::fs::read_dir(dir())
        .expect("tests/golden/grad exists")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json")?;
            (!stem.ends_with(".config")).then(|| stem.to_string())
        })
        .collect();
    stems.sort();
    let cases: Vec<Case> = stems
        .into_iter()
        .map(|stem| {
            let json: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir().join(format!("{stem}.json"))).expect("sidecar"),
            )
            .expect("json");
            let program = json["program"].as_str().expect("program").to_string();
            let settings = match json["set"].as_object() {
                Some(set) => set
                    .iter()
                    .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")])
                    .collect(),
                None => vec![
                    "--config".to_string(),
                    dir()
                        .join(format!("{stem}.config.json"))
                        .display()
                        .to_string(),
                ],
            };
            Case {
                stem,
                program,
                settings,
            }
        })
        .collect();
    assert!(cases.len() >= 5, "expected the five gradient golden cases");
    cases
}

fn grad(case: &Case, backend: &str, precision: &str, every: usize, out: &Path) {
    let file = |suffix: &str| dir().join(format!("{}{suffix}", case.stem));
    let mut args: Vec<String> = vec![
        "grad".into(),
        case.program.clone(),
        "--inputs".into(),
        file(".inputs.safetensors").display().to_string(),
        "--cotangents".into(),
        file(".cotangents.safetensors").display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--precision".into(),
        precision.into(),
        "--backend".into(),
        backend.into(),
        "--checkpoint-every".into(),
        every.to_string(),
    ];
    args.extend(case.settings.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = tttc(&args);
    assert!(result.status.success(), "{}: {}", case.stem, text(&result));
}

fn expected(case: &Case) -> BTreeMap<String, Tensor> {
    load(&dir().join(format!("{}.expected_grad_f64.safetensors", case.stem)))
}

fn check_case(case: &Case, backend: &str, precision: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("grad.safetensors");
    grad(case, backend, precision, 4, &out);
    let got = load(&out);
    let expected = expected(case);
    let tol = if precision == "f64" { TOL_F64 } else { TOL_F32 };
    for (name, exp) in &expected {
        let g = got.get(name).unwrap_or_else(|| {
            panic!(
                "{} {backend} {precision}: no gradient for `{name}`",
                case.stem
            )
        });
        assert_tensor_close(
            &format!("{} {backend} {precision} d{name}", case.stem),
            g,
            exp,
            tol,
        );
    }
}

fn case(prefix: &str) -> Vec<Case> {
    let cs: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.stem.starts_with(prefix))
        .collect();
    assert!(!cs.is_empty(), "no case {prefix}*");
    cs
}

#[test]
fn inner_loops_match_torch_autograd_f64() {
    for c in case("grad_inner_") {
        check_case(&c, "interp", "f64");
    }
}

#[test]
fn layers_match_torch_autograd_f64() {
    for c in case("grad_layer_") {
        check_case(&c, "interp", "f64");
    }
}

#[test]
fn language_model_matches_torch_autograd_f64() {
    for c in case("grad_model_") {
        check_case(&c, "interp", "f64");
    }
}

/// Every case on a native backend (whose stem starts with `prefix`), in both precisions.
#[cfg(any(feature = "llvm", feature = "cranelift"))]
fn native(backend: &str, prefix: &str) {
    for c in case(prefix) {
        for precision in ["f64", "f32"] {
            check_case(&c, backend, precision);
        }
    }
}

#[cfg(feature = "cranelift")]
#[test]
fn every_case_on_cranelift() {
    native("cranelift", "grad_");
}

/// Every case on LLVM, both precisions. Compiling a gradient program takes ~10 s of CPU for
/// the TTT-MLP inner loop in a debug build since the LLVM backend splits long statement lists
/// into parts (it took ~75 s before: LLVM's loop passes are quadratic in the loops of one
/// function).
#[cfg(feature = "llvm")]
#[test]
fn every_case_on_llvm() {
    native("llvm", "grad_");
}

#[test]
fn checkpoint_groups_do_not_change_gradients() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for c in case("grad_inner_") {
        let runs: Vec<BTreeMap<String, Tensor>> = [1, 4, 1000]
            .iter()
            .map(|&g| {
                let out = tmp.path().join(format!("{}.{g}.safetensors", c.stem));
                grad(&c, "interp", "f64", g, &out);
                load(&out)
            })
            .collect();
        for other in &runs[1..] {
            assert_eq!(
                other.keys().collect::<Vec<_>>(),
                runs[0].keys().collect::<Vec<_>>()
            );
            for (name, t) in other {
                assert_tensor_close(&format!("{} {name}", c.stem), t, &runs[0][name], 1e-12);
            }
        }
    }
}

/// `--checkpoint-every 1, 2, 1000` on the inner loops (3 mini-batches, the last a remainder:
/// one group per mini-batch, a full group then the remainder alone, one group) give the
/// interpreter's gradients with 4 to 1e-12 on a native backend (4 is the golden tests').
#[cfg(any(feature = "llvm", feature = "cranelift"))]
fn native_checkpoint_groups(backend: &str, prefix: &str, groups: &[usize]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    for c in case(prefix) {
        let reference = tmp.path().join(format!("{}.interp.safetensors", c.stem));
        grad(&c, "interp", "f64", 4, &reference);
        let reference = load(&reference);
        for &g in groups {
            let out = tmp.path().join(format!("{}.{g}.safetensors", c.stem));
            grad(&c, backend, "f64", g, &out);
            let got = load(&out);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                reference.keys().collect::<Vec<_>>()
            );
            for (name, t) in &got {
                assert_tensor_close(
                    &format!("{} {backend} G={g} {name}", c.stem),
                    t,
                    &reference[name],
                    1e-12,
                );
            }
        }
    }
}

#[cfg(feature = "cranelift")]
#[test]
fn checkpoint_groups_do_not_change_gradients_on_cranelift() {
    native_checkpoint_groups("cranelift", "grad_inner_", &[1, 2, 1000]);
}

/// On llvm both inner loops, G = 1 and 1000 (2 is cranelift's).
#[cfg(feature = "llvm")]
#[test]
fn checkpoint_groups_do_not_change_gradients_on_llvm() {
    native_checkpoint_groups("llvm", "grad_inner_", &[1, 1000]);
}

/// A cotangent under a name that is not an output, or of the wrong shape, is a user error
/// (exit 2) naming it; a subset of the outputs is fine (the others have zero cotangents).
#[test]
fn bad_cotangents_are_user_errors_naming_them() {
    let c = &case("grad_inner_linear")[0];
    let tmp = tempfile::tempdir().expect("tempdir");
    let cts = load(&dir().join(format!("{}.cotangents.safetensors", c.stem)));
    let run = |cts: &BTreeMap<String, Tensor>, backend: &str| {
        let path = tmp.path().join("ct.safetensors");
        tttc::runtime::write_safetensors(&path, cts).expect("write");
        let out = tmp.path().join("g.safetensors");
        let mut args: Vec<String> = vec![
            "grad".into(),
            c.program.clone(),
            "--inputs".into(),
            dir()
                .join(format!("{}.inputs.safetensors", c.stem))
                .display()
                .to_string(),
            "--cotangents".into(),
            path.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--backend".into(),
            backend.into(),
            "--precision".into(),
            "f64".into(),
        ];
        args.extend(c.settings.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (tttc(&args), out)
    };

    let mut unknown = cts.clone();
    unknown.insert("not_an_output".into(), cts["Z"].clone());
    let (r, _) = run(&unknown, "interp");
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(text(&r).contains("not_an_output"), "{}", text(&r));

    let mut wrong = cts.clone();
    wrong.insert(
        "Z".into(),
        Tensor::from_f64(vec![3], vec![0.0; 3]).expect("tensor"),
    );
    let (r, _) = run(&wrong, "interp");
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(text(&r).contains("`Z`"), "{}", text(&r));

    // Only Z: the final states' cotangents are zero, and every float input gets a gradient.
    let only_z: BTreeMap<String, Tensor> = [("Z".to_string(), cts["Z"].clone())].into();
    let (r, out) = run(&only_z, "interp");
    assert!(r.status.success(), "{}", text(&r));
    let got = load(&out);
    for name in expected(c).keys() {
        assert!(got.contains_key(name), "no gradient for {name}");
    }
}
