//! Python arrays in and out: inputs read through the buffer protocol (floating-point ones
//! borrowed in place, `int` ones converted exactly as `tttc run` converts them), outputs made as
//! numpy arrays that compiled code writes into.

use crate::errors;
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use tttc::ir::Program;
use tttc::runtime::{ElemType, Elements, IntTensor, SharedBytes, Tensor, TensorData, TensorFile};

/// The numpy name of an element type.
pub fn dtype_name(elem: ElemType) -> &'static str {
    match elem {
        ElemType::F32 => "float32",
        ElemType::F64 => "float64",
    }
}

/// How a Python object describes itself in messages: its type and, for arrays, its dtype.
fn describe(obj: &Bound<'_, PyAny>) -> String {
    let ty = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into());
    match obj.getattr("dtype") {
        Ok(d) => format!("{ty} of dtype {d}"),
        Err(_) => ty,
    }
}

/// `obj` itself, or for a 0-d array a 1-element view of it: the buffer protocol has no shape
/// array for 0-d buffers, which PyO3 refuses. The second value is whether it was 0-d.
pub fn with_shape<'py>(obj: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyAny>, bool)> {
    match obj.getattr("ndim").and_then(|n| n.extract::<usize>()) {
        Ok(0) => Ok((obj.call_method1("reshape", (1,))?, true)),
        _ => Ok((obj.clone(), false)),
    }
}

/// The shape of a buffer read through [`with_shape`].
fn shape_of(shape: &[usize], scalar: bool) -> Vec<usize> {
    if scalar {
        Vec::new()
    } else {
        shape.to_vec()
    }
}

/// A floating-point buffer borrowed from the caller.
pub enum FloatBuffer {
    /// `float32` elements.
    F32(PyBuffer<f32>),
    /// `float64` elements.
    F64(PyBuffer<f64>),
}

impl FloatBuffer {
    /// The address of the first element.
    pub fn ptr(&self) -> *const u8 {
        match self {
            FloatBuffer::F32(b) => b.buf_ptr() as *const u8,
            FloatBuffer::F64(b) => b.buf_ptr() as *const u8,
        }
    }

    /// A copy as a tensor of `shape`.
    fn to_tensor(&self, py: Python<'_>, shape: &[usize]) -> PyResult<Tensor> {
        let data = match self {
            FloatBuffer::F32(b) => TensorData::F32(b.to_vec(py)?.into()),
            FloatBuffer::F64(b) => TensorData::F64(b.to_vec(py)?.into()),
        };
        Tensor::new(shape.to_vec(), data).map_err(errors::value)
    }
}

/// A caller's C-contiguous buffer as the bytes of tensor views ([`Arg::into_view`]): the
/// tensors read the caller's array in place, and the buffer (so the array) stays held as long as
/// any of them lives. Writing a view copies it first (the runtime's copy on write), so the
/// caller's array is never written.
struct BufferBytes(FloatBuffer);

impl AsRef<[u8]> for BufferBytes {
    fn as_ref(&self) -> &[u8] {
        let (ptr, len) = match &self.0 {
            FloatBuffer::F32(b) => (b.buf_ptr() as *const u8, b.len_bytes()),
            FloatBuffer::F64(b) => (b.buf_ptr() as *const u8, b.len_bytes()),
        };
        // SAFETY: the buffer was checked C-contiguous when it was borrowed ([`borrow_float`]),
        // so its `len_bytes` bytes from `buf_ptr` are its elements; the `PyBuffer` is held (not
        // released) as long as `self` lives. As for every in-place input of a call, the caller
        // must not resize or write the array while tttc reads it.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// One input of a call.
pub enum Arg {
    /// A floating-point array in the run's element type, C-contiguous: used in place.
    Borrowed {
        /// The caller's storage.
        buffer: FloatBuffer,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// An `int` input converted to the run's element type (a copy, as `tttc run` makes).
    Converted(Tensor),
}

impl Arg {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Arg::Borrowed { shape, .. } => shape,
            Arg::Converted(t) => t.shape(),
        }
    }

    /// The address of the first element, in the run's element type.
    pub fn ptr(&self) -> *const u8 {
        match self {
            Arg::Borrowed { buffer, .. } => buffer.ptr(),
            Arg::Converted(t) => match t.data() {
                TensorData::F32(v) => v.as_ptr() as *const u8,
                TensorData::F64(v) => v.as_ptr() as *const u8,
            },
        }
    }

    /// The values as a tensor that views a borrowed buffer in place (no copy; a copy where the
    /// runtime cannot view it in place: a misaligned buffer, a big-endian host).
    pub fn into_view(self, py: Python<'_>) -> PyResult<Tensor> {
        let (buffer, shape) = match self {
            Arg::Borrowed { buffer, shape } => (buffer, shape),
            converted => return converted.to_tensor(py),
        };
        let is_f32 = matches!(buffer, FloatBuffer::F32(_));
        let bytes = BufferBytes(buffer);
        let len = bytes.as_ref().len();
        let shared: SharedBytes = Arc::new(bytes);
        let view = if is_f32 {
            Elements::<f32>::mapped(&shared, 0..len).map(TensorData::F32)
        } else {
            Elements::<f64>::mapped(&shared, 0..len).map(TensorData::F64)
        };
        let data = match view {
            Some(data) => data,
            None => {
                let raw = (*shared).as_ref();
                if is_f32 {
                    TensorData::F32(
                        raw.chunks_exact(4)
                            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                            .collect::<Vec<_>>()
                            .into(),
                    )
                } else {
                    TensorData::F64(
                        raw.chunks_exact(8)
                            .map(|c| {
                                f64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                            })
                            .collect::<Vec<_>>()
                            .into(),
                    )
                }
            }
        };
        Tensor::new(shape, data).map_err(errors::value)
    }

    /// The values as a tensor (a copy for borrowed storage).
    pub fn to_tensor(&self, py: Python<'_>) -> PyResult<Tensor> {
        match self {
            Arg::Borrowed { buffer, shape } => buffer.to_tensor(py, shape),
            Arg::Converted(t) => Ok(t.clone()),
        }
    }
}

/// Reads input `name` of `program` from `obj` (anything exporting a buffer: a numpy array; the
/// Python layer turns CPU torch tensors into numpy arrays without copying). Floating-point
/// inputs must be C-contiguous arrays of the run's element type `elem` (`TypeError` for another
/// dtype, `ValueError` for another layout); `int` inputs must hold int64 or int32 values, which
/// are converted exactly to `elem` (`ValueError` naming the value that would round).
pub fn read_input(
    program: &Program,
    name: &str,
    obj: &Bound<'_, PyAny>,
    elem: ElemType,
) -> PyResult<Arg> {
    if program.integer_inputs.iter().any(|i| i.name == name) {
        return read_int(program, name, obj, elem).map(Arg::Converted);
    }
    borrow_float(&format!("input `{name}`"), obj, elem)
}

/// A floating-point array (`what` names it in messages) borrowed in place: it must be
/// C-contiguous (`ValueError`) and of element type `elem` (`TypeError`).
pub fn borrow_float(what: &str, obj: &Bound<'_, PyAny>, elem: ElemType) -> PyResult<Arg> {
    let wrong_dtype = || {
        errors::type_error(format!(
            "{what}: expected an array of dtype {} (this program computes in {}), got {}",
            dtype_name(elem),
            dtype_name(elem),
            describe(obj)
        ))
    };
    let (view, scalar) = with_shape(obj)?;
    let buffer = match elem {
        ElemType::F32 => FloatBuffer::F32(PyBuffer::<f32>::get(&view).map_err(|_| wrong_dtype())?),
        ElemType::F64 => FloatBuffer::F64(PyBuffer::<f64>::get(&view).map_err(|_| wrong_dtype())?),
    };
    let (contiguous, shape) = match &buffer {
        FloatBuffer::F32(b) => (b.is_c_contiguous(), shape_of(b.shape(), scalar)),
        FloatBuffer::F64(b) => (b.is_c_contiguous(), shape_of(b.shape(), scalar)),
    };
    if !contiguous {
        return Err(errors::value(format!(
            "{what}: the array is not C-contiguous (row-major, no gaps); pass \
             numpy.ascontiguousarray(x), or x.contiguous() for a torch tensor"
        )));
    }
    Ok(Arg::Borrowed { buffer, shape })
}

/// An `int` input's values, converted exactly to `elem`.
fn read_int(
    program: &Program,
    name: &str,
    obj: &Bound<'_, PyAny>,
    elem: ElemType,
) -> PyResult<Tensor> {
    let py = obj.py();
    let (view, scalar) = with_shape(obj)?;
    let (shape, values, dtype) = if let Ok(b) = PyBuffer::<i64>::get(&view) {
        (shape_of(b.shape(), scalar), b.to_vec(py)?, "I64")
    } else if let Ok(b) = PyBuffer::<i32>::get(&view) {
        let values = b.to_vec(py)?.into_iter().map(i64::from).collect();
        (shape_of(b.shape(), scalar), values, "I32")
    } else {
        return Err(errors::type_error(format!(
            "input `{name}`: the program declares it `int` (token ids): pass an int64 or int32 \
             array, got {}",
            describe(obj)
        )));
    };
    let mut ints = BTreeMap::new();
    ints.insert(
        name.to_string(),
        IntTensor {
            shape,
            values,
            dtype,
        },
    );
    let file = TensorFile {
        floats: BTreeMap::new(),
        ints,
        copied: Vec::new(),
    };
    let mut converted = tttc::inputs::convert_inputs(program, file, elem).map_err(errors::value)?;
    converted
        .remove(name)
        .ok_or_else(|| errors::internal(format!("input `{name}` was not converted")))
}

/// Reads every entry of `tensors` as an input of `program` (see [`read_input`]); a name that is
/// not an input is a `TypeError` listing the inputs.
pub fn read_inputs(
    program: &Program,
    tensors: &BTreeMap<String, Bound<'_, PyAny>>,
    elem: ElemType,
) -> PyResult<BTreeMap<String, Arg>> {
    let mut args = BTreeMap::new();
    for (name, obj) in tensors {
        if program.graph.input_by_name(name).is_none() {
            return Err(errors::type_error(format!(
                "`{name}` is not an input of the program (its inputs: {})",
                input_names(program).join(", ")
            )));
        }
        args.insert(name.clone(), read_input(program, name, obj, elem)?);
    }
    Ok(args)
}

/// The names of `program`'s inputs, in order.
pub fn input_names(program: &Program) -> Vec<String> {
    program
        .graph
        .inputs()
        .iter()
        .filter_map(|&id| program.graph.input_name(id).map(str::to_string))
        .collect()
}

/// A new, uninitialized numpy array of `shape` and `elem`, and the address of its storage.
pub fn empty<'py>(
    py: Python<'py>,
    shape: &[usize],
    elem: ElemType,
) -> PyResult<(Bound<'py, PyAny>, *mut u8)> {
    // A 0-d array is made as one element and reshaped (a view of the same storage).
    let flat = shape.is_empty();
    let alloc: Vec<usize> = if flat { vec![1] } else { shape.to_vec() };
    let array = py
        .import("numpy")?
        .getattr("empty")?
        .call1((alloc, dtype_name(elem)))?;
    let ptr = match elem {
        ElemType::F32 => PyBuffer::<f32>::get(&array)?.buf_ptr() as *mut u8,
        ElemType::F64 => PyBuffer::<f64>::get(&array)?.buf_ptr() as *mut u8,
    };
    let array = if flat {
        array.call_method1("reshape", (pyo3::types::PyTuple::empty(py),))?
    } else {
        array
    };
    Ok((array, ptr))
}

/// A numpy array holding a copy of `t`.
pub fn to_numpy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    let (array, ptr) = empty(py, t.shape(), t.elem_type())?;
    let bytes: &[u8] = match t.data() {
        TensorData::F32(v) => bytemuck_bytes(v),
        TensorData::F64(v) => bytemuck_bytes(v),
    };
    // SAFETY: `ptr` is the storage of the fresh array of `t`'s shape and element type: exactly
    // `bytes.len()` bytes, not aliased by `t`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
    Ok(array)
}

/// The bytes of a slice of floats.
fn bytemuck_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: f32/f64 have no padding and every byte pattern of them is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Every tensor of `tensors` as a numpy array, in a dict.
pub fn to_dict<'py>(
    py: Python<'py>,
    tensors: &BTreeMap<String, Tensor>,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    let dict = pyo3::types::PyDict::new(py);
    for (name, t) in tensors {
        dict.set_item(name, to_numpy(py, t)?)?;
    }
    Ok(dict)
}

/// Every entry of `tensors` (inputs of `program`) as a tensor in `elem`: copies, or with
/// `views` floating-point arrays as views of the caller's storage ([`Arg::into_view`]); `int`
/// inputs converted either way.
pub fn to_tensors(
    py: Python<'_>,
    program: &Program,
    tensors: &BTreeMap<String, Bound<'_, PyAny>>,
    elem: ElemType,
    views: bool,
) -> PyResult<BTreeMap<String, Tensor>> {
    read_inputs(program, tensors, elem)?
        .into_iter()
        .map(|(name, arg)| {
            let t = if views {
                arg.into_view(py)?
            } else {
                arg.to_tensor(py)?
            };
            Ok((name, t))
        })
        .collect()
}
