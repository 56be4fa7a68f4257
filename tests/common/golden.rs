//! The golden cases in tests/golden: which program runs each, with which settings, and how its
//! outputs are judged. Shared by every test that runs them (CLI, kernel IR, Cranelift).
//!
//! Tolerances, relative to max |expected|: f64 ≤ 1e-9 — the reference ran in float64, so a
//! float64 implementation of the same math differs only by summation order (~1e-15) and the
//! reference's rounded GELU-derivative constants (~1e-11, documented in the goldens' README);
//! f32 ≤ 2e-5 — the reference's own float32 error is 2e-7..5e-7 (`tolerance_hint`), and a
//! float32 computation with a different summation order lands within a few times that. Layers
//! are judged on `output_exact_rope` in f64 (exact RoPE tables, like tttc) and `output` in f32.

use super::{load, rel_error, root};
use std::collections::BTreeMap;
use tttc::runtime::Tensor;

/// f64 tolerance.
pub const TOL_F64: f64 = 1e-9;
/// f32 tolerance.
pub const TOL_F32: f64 = 2e-5;

/// One golden case.
pub struct GoldenCase {
    /// The file stem in tests/golden.
    pub stem: String,
    /// The example program that computes it.
    pub program: &'static str,
    /// Its settings (TTTConfig names).
    pub settings: tttc::Settings,
    /// A whole layer (else the inner loop only).
    pub layer: bool,
}

impl GoldenCase {
    /// Path of `<stem><suffix>` in tests/golden.
    pub fn file(&self, suffix: &str) -> std::path::PathBuf {
        root().join(format!("tests/golden/{}{suffix}", self.stem))
    }

    /// The inputs.
    pub fn inputs(&self) -> BTreeMap<String, Tensor> {
        load(&self.file(".inputs.safetensors"))
    }

    /// The expected outputs in precision `tag` (`f64` or `f32`).
    pub fn expected(&self, tag: &str) -> BTreeMap<String, Tensor> {
        load(&self.file(&format!(".expected_{tag}.safetensors")))
    }

    /// The settings as `--set NAME=VALUE` arguments.
    pub fn set_args(&self) -> Vec<String> {
        self.settings
            .iter()
            .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")])
            .collect()
    }

    /// Checks `got` against the expected outputs in precision `tag` at the standard tolerance:
    /// `Z` and every `*_last` for inner cases, `output` for layers. `what` names the run.
    pub fn check(&self, tag: &str, got: &BTreeMap<String, Tensor>, what: &str) {
        let tol = if tag == "f64" { TOL_F64 } else { TOL_F32 };
        self.check_within(tag, got, what, tol);
    }

    /// [`GoldenCase::check`] at tolerance `tol` (an opt-in precision's stated one).
    pub fn check_within(&self, tag: &str, got: &BTreeMap<String, Tensor>, what: &str, tol: f64) {
        let expected = self.expected(tag);
        if self.layer {
            let reference = if tag == "f64" {
                "output_exact_rope"
            } else {
                "output"
            };
            let err = rel_error(&got["output"], &expected[reference]);
            assert!(
                err <= tol,
                "{what}: output vs {reference}: {err:e} > {tol:e}"
            );
            return;
        }
        let mut compared = 0;
        for (name, exp) in expected
            .iter()
            .filter(|(n, _)| *n == "Z" || n.ends_with("_last"))
        {
            let g = got
                .get(name)
                .unwrap_or_else(|| panic!("{what}: output {name} missing"));
            let err = rel_error(g, exp);
            assert!(err <= tol, "{what} {name}: rel error {err:e} > {tol:e}");
            compared += 1;
        }
        assert!(compared >= 3, "{what}: compared only {compared} tensors");
    }
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json file")).expect("json")
}

fn stems(suffix: &str, prefix: &str) -> Vec<String> {
    let mut stems: Vec<String> = std::fs::read_dir(root().join("tests/golden"))
        .expect("tests/golden exists")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(suffix)?;
            stem.starts_with(prefix).then(|| stem.to_string())
        })
        .collect();
    stems.sort();
    stems
}

/// The inner-loop cases (examples/ttt_{linear,mlp}.ttt, `mini_batch_size` from the sidecar).
pub fn inner_cases() -> Vec<GoldenCase> {
    let cases: Vec<GoldenCase> = stems(".json", "inner_")
        .into_iter()
        .map(|stem| {
            let sidecar = json(&root().join(format!("tests/golden/{stem}.json")));
            let program = match sidecar["ttt_layer_type"].as_str() {
                Some("linear") => "examples/ttt_linear.ttt",
                Some("mlp") => "examples/ttt_mlp.ttt",
                other => panic!("{stem}: unknown layer type {other:?}"),
            };
            let k = sidecar["config"]["mini_batch_size"]
                .as_f64()
                .expect("mini_batch_size");
            GoldenCase {
                stem,
                program,
                settings: [("mini_batch_size".to_string(), k.into())].into(),
                layer: false,
            }
        })
        .collect();
    assert!(cases.len() >= 4, "expected the four inner golden cases");
    cases
}

/// The whole-layer cases (examples/ttt_{linear,mlp}_layer.ttt, settings from
/// `<stem>.config.json`).
pub fn layer_cases() -> Vec<GoldenCase> {
    let cases: Vec<GoldenCase> = stems(".config.json", "layer_")
        .into_iter()
        .map(|stem| {
            let config = json(&root().join(format!("tests/golden/{stem}.config.json")));
            let program = match config["ttt_layer_type"].as_str() {
                Some("linear") => "examples/ttt_linear_layer.ttt",
                Some("mlp") => "examples/ttt_mlp_layer.ttt",
                other => panic!("{stem}: unknown layer type {other:?}"),
            };
            let settings = [
                "num_attention_heads",
                "mini_batch_size",
                "ttt_base_lr",
                "rope_theta",
            ]
            .iter()
            .map(|k| {
                let v = config[k].as_f64().expect("numeric config");
                (k.to_string(), v.into())
            })
            .collect();
            GoldenCase {
                stem,
                program,
                settings,
                layer: true,
            }
        })
        .collect();
    assert!(cases.len() >= 2, "expected the two layer golden cases");
    cases
}

/// Every golden case: the inner-loop cases, then the whole-layer cases.
pub fn all_cases() -> Vec<GoldenCase> {
    let mut cases = inner_cases();
    cases.extend(layer_cases());
    cases
}
