//! `tttc._native.Session`: a program fed in chunks (tttc's streaming sessions,
//! docs/streaming.md), with its state saved to and loaded from safetensors.

use crate::arrays;
use crate::errors;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use tttc::ir::Program;
use tttc::runtime::ElemType;
use tttc::{Backend, Precision, Settings};

/// A streaming session (see the Python class `tttc.Session`).
#[pyclass(module = "tttc._native", frozen)]
pub struct Session {
    program: Program,
    elem: ElemType,
    inner: Mutex<tttc::stream::Session>,
}

impl Session {
    /// A session of `program` with `weights`.
    pub fn new(
        backend: Backend,
        program: Program,
        weights: BTreeMap<String, tttc::runtime::Tensor>,
        settings: Settings,
        precision: Precision,
    ) -> PyResult<Session> {
        let inner =
            tttc::stream::Session::new(backend, program.clone(), weights, settings, precision)
                .map_err(errors::stream)?;
        Ok(Session {
            program,
            elem: precision.elem(),
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, tttc::stream::Session> {
        // A panic while feeding is reported as an exception; the session is left as it was.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Session {
    /// Feeds the next tokens: every per-token input with the same number of entries along its
    /// sequence axis. Returns every output for these tokens (per-token outputs for them,
    /// whole-sequence outputs as they stand after them).
    fn feed<'py>(
        &self,
        py: Python<'py>,
        chunk: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let objects: BTreeMap<String, Bound<'_, PyAny>> = chunk.extract()?;
        let tensors = arrays::to_tensors(py, &self.program, &objects, self.elem, false)?;
        let outputs = py
            .detach(|| self.lock().feed(&tensors))
            .map_err(errors::stream)?;
        let result = PyDict::new(py);
        for (name, t) in &outputs {
            if !self.program.intermediates.contains(name) {
                result.set_item(name, arrays::to_numpy(py, t)?)?;
            }
        }
        Ok(result)
    }

    /// Writes the session's state (its position and every scan's carried state) to `path`.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.lock().save(&path))
            .map_err(errors::stream)
    }

    /// Continues from a state written by `save` for the same program and weights.
    fn load(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.lock().load(&path))
            .map_err(errors::stream)
    }

    /// Tokens fed so far.
    #[getter]
    fn position(&self) -> usize {
        self.lock().position()
    }

    /// The per-token inputs and their sequence axes.
    #[getter]
    fn token_inputs(&self) -> BTreeMap<String, usize> {
        self.lock().token_inputs().clone()
    }
}
