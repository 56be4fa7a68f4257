//! tttc's typed errors as Python exceptions: the user's mistakes as `ValueError` / `TypeError`
//! / `OSError` / [`CompileError`] (with the `file:line:col` diagnostic), compiler bugs as
//! `RuntimeError` saying so.

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use tttc::stream::StreamError;
use tttc::{BindError, DriverError, ExecError, GradError};

pyo3::create_exception!(
    tttc,
    CompileError,
    pyo3::exceptions::PyValueError,
    "A .ttt program that does not compile. `str(e)` is the rendered diagnostic \
     (`error: FILE:LINE:COL: message` with the source line and carets); `e.diagnostics` lists \
     `(file, line, column, message)` for each problem."
);

/// A compiler bug, reported as such.
pub fn internal(e: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(format!("internal error in tttc (please report): {e}"))
}

/// A value the user passed that does not fit.
pub fn value(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// An argument of the wrong kind.
pub fn type_error(e: impl std::fmt::Display) -> PyErr {
    PyTypeError::new_err(e.to_string())
}

/// A compile error as [`CompileError`] with its located diagnostics attached.
fn compile_error(py: Python<'_>, e: &tttc::ir::syntax::CompileError) -> PyErr {
    let err = CompileError::new_err(e.render(false).trim_end().to_string());
    let located: Vec<(String, usize, usize, String)> = e
        .diagnostics
        .iter()
        .map(|d| {
            let source = e.sources.get(d.source).or(e.sources.first());
            let (file, (line, col)) = match source {
                Some(s) => (
                    s.name.clone(),
                    tttc::ir::syntax::diagnostic::line_col(&s.text, d.span.start),
                ),
                None => (String::new(), (0, 0)),
            };
            (file, line, col, d.message.clone())
        })
        .collect();
    // Attaching the list cannot fail on a fresh exception object; if it did, the message
    // alone still says everything.
    let _ = err.value(py).setattr("diagnostics", located);
    err
}

/// A failure to read or compile a program.
pub fn driver(py: Python<'_>, e: DriverError) -> PyErr {
    match &e {
        DriverError::Compile(c) => compile_error(py, c),
        DriverError::Read { source, .. } => {
            PyOSError::new_err((source.raw_os_error().unwrap_or(0), e.to_string()))
        }
        other if other.is_user_error() => value(other),
        other => internal(other),
    }
}

/// Inputs that do not fit a program.
pub fn bind(e: BindError) -> PyErr {
    value(e)
}

/// A failure to compile for a backend or to run.
pub fn exec(e: ExecError) -> PyErr {
    if e.is_user_error() {
        value(e)
    } else {
        internal(e)
    }
}

/// A failure of a streaming session.
pub fn stream(e: StreamError) -> PyErr {
    match e {
        StreamError::Io(io) => PyOSError::new_err(io.to_string()),
        e if e.is_user_error() => value(e),
        e => internal(e),
    }
}

/// A failure to differentiate a program or to compute its vector-Jacobian product.
pub fn grad(py: Python<'_>, e: GradError) -> PyErr {
    match e {
        GradError::Driver(d) => driver(py, d),
        GradError::Exec(x) => exec(x),
        e if e.is_user_error() => value(e),
        e => internal(e),
    }
}
