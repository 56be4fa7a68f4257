//! `tttc._native`: the Rust half of the Python package `tttc` (PyO3). The Python half
//! (`python/tttc/`) adds torch tensors (as numpy views), the `Program` and `Session` classes
//! users see, and `tttc.torch`. docs/python.md documents the API.
//!
//! | module | job |
//! | --- | --- |
//! | [`program`] | compile, bind per input shapes (kept), run in place with the GIL released; cost, inspect, vjp, sessions |
//! | [`arrays`] | Python buffers in, numpy arrays out |
//! | [`vjp`] | the vector-Jacobian product (glue until the library has an entry point) |
//! | [`session`] | streaming sessions |
//! | [`errors`] | tttc's errors as Python exceptions |

mod arrays;
mod errors;
mod program;
mod session;
mod vjp;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tttc::runtime::{IntTensor, Tensor, TensorData};

/// Reads a safetensors file: name → numpy array (F32/F64 as stored, I64/I32 token ids as int64
/// / int32).
#[pyfunction]
fn load_safetensors<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let file = tttc::runtime::read_safetensors_with_ints(&path).map_err(errors::value)?;
    let result = arrays::to_dict(py, &file.floats)?;
    for (name, t) in &file.ints {
        let np = py.import("numpy")?;
        // 0-d tensors are made as one element, then reshaped (the buffer protocol has no
        // shape array for 0-d buffers).
        let alloc = if t.shape.is_empty() {
            vec![1]
        } else {
            t.shape.clone()
        };
        let array = if t.dtype == "I32" {
            let values: Vec<i32> = t.values.iter().map(|&v| v as i32).collect();
            let a = np.getattr("empty")?.call1((alloc.clone(), "int32"))?;
            PyBuffer::<i32>::get(&a)?.copy_from_slice(py, &values)?;
            a
        } else {
            let a = np.getattr("empty")?.call1((alloc.clone(), "int64"))?;
            PyBuffer::<i64>::get(&a)?.copy_from_slice(py, &t.values)?;
            a
        };
        let array = array.call_method1("reshape", (t.shape.clone(),))?;
        result.set_item(name, array)?;
    }
    Ok(result)
}

/// Writes name → array (float32, float64, int64 or int32; any layout) to a safetensors file.
#[pyfunction]
fn save_safetensors(py: Python<'_>, path: PathBuf, tensors: &Bound<'_, PyDict>) -> PyResult<()> {
    let mut floats = BTreeMap::new();
    let mut ints = BTreeMap::new();
    for (k, v) in tensors.iter() {
        let name: String = k.extract()?;
        let (v, scalar) = arrays::with_shape(&v)?;
        let shape_of = |s: &[usize]| if scalar { Vec::new() } else { s.to_vec() };
        if let Ok(b) = PyBuffer::<f32>::get(&v) {
            let t = Tensor::new(shape_of(b.shape()), TensorData::F32(b.to_vec(py)?.into()))
                .map_err(errors::value)?;
            floats.insert(name, t);
        } else if let Ok(b) = PyBuffer::<f64>::get(&v) {
            let t = Tensor::new(shape_of(b.shape()), TensorData::F64(b.to_vec(py)?.into()))
                .map_err(errors::value)?;
            floats.insert(name, t);
        } else if let Ok(b) = PyBuffer::<i64>::get(&v) {
            let (shape, values) = (shape_of(b.shape()), b.to_vec(py)?);
            ints.insert(
                name,
                IntTensor {
                    shape,
                    values,
                    dtype: "I64",
                },
            );
        } else if let Ok(b) = PyBuffer::<i32>::get(&v) {
            let shape = shape_of(b.shape());
            let values = b.to_vec(py)?.into_iter().map(i64::from).collect();
            ints.insert(
                name,
                IntTensor {
                    shape,
                    values,
                    dtype: "I32",
                },
            );
        } else {
            return Err(errors::type_error(format!(
                "`{name}`: expected a float32, float64, int64 or int32 array"
            )));
        }
    }
    tttc::runtime::write_safetensors_with_ints(&path, &floats, &ints).map_err(errors::value)
}

/// Which backends this build has.
#[pyfunction]
fn backends() -> Vec<&'static str> {
    [
        tttc::Backend::Llvm,
        tttc::Backend::Cranelift,
        tttc::Backend::Interp,
        tttc::Backend::Ptx,
    ]
    .into_iter()
    .filter(|b| b.is_built())
    .map(|b| b.name())
    .collect()
}

/// Returns to the system the large blocks compiled code freed and the allocator kept for the
/// next run (its memory-plan arenas); the bytes released.
#[pyfunction]
fn release_memory() -> usize {
    tttc::backends::release_kept_blocks()
}

/// The module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<program::Program>()?;
    m.add_class::<session::Session>()?;
    m.add("CompileError", m.py().get_type::<errors::CompileError>())?;
    m.add_function(wrap_pyfunction!(load_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(save_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(backends, m)?)?;
    m.add_function(wrap_pyfunction!(release_memory, m)?)?;
    Ok(())
}
