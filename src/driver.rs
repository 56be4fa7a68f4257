//! From source to a program ready to run: parse, lower, derive the inner gradients, verify.

use std::path::Path;
use tttc_ir::syntax::CompileError;
use tttc_ir::{DType, Program, Setting};
use tttc_runtime::ElemType;

/// Floating-point precision of a whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Single precision (the default).
    #[default]
    F32,
    /// Double precision.
    F64,
}

impl Precision {
    /// The IR element type.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }

    /// The runtime element type.
    pub fn elem(self) -> ElemType {
        match self {
            Precision::F32 => ElemType::F32,
            Precision::F64 => ElemType::F64,
        }
    }
}

/// Why a program could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The program is malformed.
    #[error("{0}")]
    Compile(#[from] CompileError),
    /// A pass failed (a compiler bug).
    #[error("internal compiler error: {0}")]
    Pass(#[from] tttc_passes::PassError),
    /// A `--config` file cannot be used.
    #[error("config file {path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// `--set` and `--config` disagree.
    #[error("conflicting values for `{name}`: {set} from --set, {file} from the config file")]
    Conflict {
        /// The setting.
        name: String,
        /// The `--set` value.
        set: Setting,
        /// The config file's value.
        file: Setting,
    },
}

impl DriverError {
    /// Whether the user can fix it (exit code 2) rather than a compiler bug (exit code 1).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, DriverError::Pass(_))
    }
}

/// Named values from `--set` or a config file: configs (numbers, booleans, strings) and
/// dimensions.
pub type Settings = tttc_ir::Settings;

/// Compiles a `.ttt` file: parse, lower (with `settings` applied to configs), then the whole
/// standard pipeline (autodiff, primal form, dual form, simplification, fusion), verifying
/// after every pass.
pub fn compile_file(
    path: &Path,
    precision: Precision,
    settings: &Settings,
) -> Result<Program, DriverError> {
    finish(lower_file(path, precision, settings)?)
}

/// Compiles program text (`file` names it in diagnostics and locates its imports).
pub fn compile_source(
    file: &str,
    text: &str,
    precision: Precision,
    settings: &Settings,
) -> Result<Program, DriverError> {
    finish(tttc_ir::syntax::compile(
        file,
        text,
        precision.dtype(),
        settings,
    )?)
}

/// Reads a Hugging Face style `config.json`: the values of keys that name one of `program`'s
/// settings (configs or dimensions) — numbers, booleans (`"share_qk": true`) and strings
/// (`"ttt_layer_type": "mlp"`). Other keys are ignored; a known key with another kind of value
/// (null, a list, an object) is an error. Whether the kind fits the setting is checked when the
/// program is compiled with the settings.
pub fn read_config_file(path: &Path, program: &Program) -> Result<Settings, DriverError> {
    let fail = |message: String| DriverError::Config {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    // Duplicate keys are an error naming the key (a JSON map would keep the last silently).
    let object = tttc_runtime::parse_json_object(&text)
        .map_err(|e| fail(format!("not a valid JSON object: {e}")))?;
    let names = program.setting_names();
    let mut settings = Settings::new();
    for (key, value) in &object.0 {
        if !names.contains(key) {
            continue;
        }
        let setting = match value {
            serde_json::Value::Bool(b) => Setting::Bool(*b),
            serde_json::Value::String(s) => Setting::Text(s.clone()),
            other => Setting::Number(other.as_f64().ok_or_else(|| {
                fail(format!(
                    "`{key}` must be a number, a boolean or a string, got {value}"
                ))
            })?),
        };
        settings.insert(key.clone(), setting);
    }
    Ok(settings)
}

/// `--set` values over a config file's; a name given differently by both is an error.
pub fn merge_settings(set: &Settings, file: &Settings) -> Result<Settings, DriverError> {
    let mut merged = file.clone();
    for (name, value) in set {
        if let Some(other) = file.get(name) {
            if other != value {
                return Err(DriverError::Conflict {
                    name: name.clone(),
                    set: value.clone(),
                    file: other.clone(),
                });
            }
        }
        merged.insert(name.clone(), value.clone());
    }
    Ok(merged)
}

fn finish(program: Program) -> Result<Program, DriverError> {
    Ok(optimize(program, None, false)?.program)
}

/// A program after (part of) the pipeline, with what each pass did.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The program as lowered from the source, before any pass (kept with snapshots).
    pub parsed: Option<Program>,
    /// The program after the last pass run.
    pub program: Program,
    /// One report per pass run.
    pub stages: Vec<tttc_passes::pipeline::StageReport>,
}

/// Runs the standard pipeline on a lowered program, up to and including the pass `until`
/// (all passes when `None`); `snapshots` keeps the program after every pass.
pub fn optimize(
    mut program: Program,
    until: Option<&str>,
    snapshots: bool,
) -> Result<Compiled, DriverError> {
    let parsed = snapshots.then(|| program.clone());
    let passes = tttc_passes::pipeline::standard();
    let stages = tttc_passes::pipeline::run_stages(&mut program, &passes, until, snapshots)?;
    Ok(Compiled {
        parsed,
        program,
        stages,
    })
}

/// Parses and lowers a `.ttt` file without running any pass.
pub fn lower_file(
    path: &Path,
    precision: Precision,
    settings: &Settings,
) -> Result<Program, DriverError> {
    let bytes = tttc_ir::syntax::read_source(path).map_err(|source| DriverError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let name = path.display().to_string();
    Ok(tttc_ir::syntax::compile_bytes(
        &name,
        &bytes,
        precision.dtype(),
        settings,
    )?)
}
