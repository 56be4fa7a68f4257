//! Reading a program's input tensors from a safetensors file, integer inputs included.
//!
//! Inputs declared `int` in the program (`input input_ids: int[B, L] in 0..vocab_size`) must be
//! stored as I64 or I32; their values are converted exactly to the run's floating-point type
//! (every integer up to 2^24 in f32, 2^53 in f64), and a value that would round is an error
//! naming the tensor. Other inputs must be F32 or F64. The range of an `int` input is checked
//! by [`crate::bind`], once the dimensions are known.

use crate::bind::position;
use std::collections::BTreeMap;
use std::path::Path;
use tttc_ir::Program;
use tttc_runtime::{ElemType, IntTensor, RuntimeError, Tensor, TensorData, TensorFile};

/// Why the inputs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read or parsed, or holds an unsupported element type.
    #[error(transparent)]
    Read(#[from] RuntimeError),
    /// Tensors of the wrong kind for the program: one line each, naming the tensor.
    #[error("the inputs do not fit the program:\n  {}", .0.join("\n  "))]
    Inputs(Vec<String>),
}

/// The largest magnitude up to which every integer is exactly representable in `elem`.
fn exact_limit(elem: ElemType) -> i64 {
    match elem {
        ElemType::F32 => 1 << 24,
        ElemType::F64 => 1 << 53,
    }
}

/// `t` converted exactly to `elem`, or why not.
fn convert(name: &str, t: &IntTensor, elem: ElemType) -> Result<Tensor, String> {
    let limit = exact_limit(elem);
    if let Some((i, v)) = t.values.iter().enumerate().find(|(_, v)| v.abs() > limit) {
        return Err(format!(
            "`{name}`: value {v} at index {:?} is not exactly representable in {elem} (integers up to {limit} are)",
            position(&t.shape, i)
        ));
    }
    let data = match elem {
        ElemType::F32 => TensorData::F32(t.values.iter().map(|&v| v as f32).collect()),
        ElemType::F64 => TensorData::F64(t.values.iter().map(|&v| v as f64).collect()),
    };
    Tensor::new(t.shape.clone(), data).map_err(|e| format!("`{name}`: {e}"))
}

/// Reads the tensors of `path` for `program` in element type `elem` for its integer inputs
/// (floating-point tensors are returned as stored; [`crate::bind`] converts them). Integer
/// tensors the program does not take are converted too (for the unused-tensor warning).
pub fn read_inputs(
    program: &Program,
    path: &Path,
    elem: ElemType,
) -> Result<BTreeMap<String, Tensor>, InputError> {
    convert_inputs(
        program,
        tttc_runtime::read_safetensors_with_ints(path)?,
        elem,
    )
}

/// [`read_inputs`] on tensors already read (from one file or several: see
/// [`crate::model_dir`]).
pub fn convert_inputs(
    program: &Program,
    file: TensorFile,
    elem: ElemType,
) -> Result<BTreeMap<String, Tensor>, InputError> {
    let is_int = |name: &str| program.integer_inputs.iter().any(|i| i.name == name);
    let mut problems = Vec::new();
    let mut tensors = BTreeMap::new();
    for (name, t) in file.floats {
        if is_int(&name) {
            problems.push(format!(
                "`{name}`: the program declares it `int` (token ids), so it must be stored as I64 or I32, not {}",
                t.elem_type()
            ));
            continue;
        }
        tensors.insert(name, t);
    }
    for (name, t) in &file.ints {
        let taken = program.graph.input_by_name(name).is_some();
        if taken && !is_int(name) {
            problems.push(format!(
                "`{name}`: stored as {} (integers), but the program takes floating-point values here (declare it `int` to read integers)",
                t.dtype
            ));
            continue;
        }
        match convert(name, t, elem) {
            Ok(c) => {
                tensors.insert(name.clone(), c);
            }
            Err(why) if taken => problems.push(why),
            Err(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(tensors)
    } else {
        Err(InputError::Inputs(problems))
    }
}
