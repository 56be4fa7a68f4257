//! From source to a program ready to run: parse, lower, derive the inner gradients, verify.

use std::path::Path;
use tttc_ir::syntax::CompileError;
use tttc_ir::{DType, Program};
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
}

impl DriverError {
    /// Whether the user can fix it (exit code 2) rather than a compiler bug (exit code 1).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, DriverError::Pass(_))
    }
}

/// Compiles a `.ttt` file: parse, lower, derive gradients, verify.
pub fn compile_file(path: &Path, precision: Precision) -> Result<Program, DriverError> {
    let bytes = std::fs::read(path).map_err(|source| DriverError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let program =
        tttc_ir::syntax::compile_bytes(&path.display().to_string(), &bytes, precision.dtype())?;
    finish(program)
}

/// Compiles program text (`file` names it in diagnostics).
pub fn compile_source(
    file: &str,
    text: &str,
    precision: Precision,
) -> Result<Program, DriverError> {
    finish(tttc_ir::syntax::compile(file, text, precision.dtype())?)
}

fn finish(mut program: Program) -> Result<Program, DriverError> {
    tttc_passes::run_pipeline(&mut program, &[&tttc_passes::Autodiff])?;
    Ok(program)
}
