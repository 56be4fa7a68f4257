//! The check every compiled runner (LLVM, Cranelift, the PTX host runner, CUDA) makes on the
//! tensors it is given before any generated code runs, and its one error type, [`InputError`],
//! which names the tensor.

use std::collections::BTreeMap;
use tttc_ir::DType;
use tttc_runtime::{ElemType, Tensor};

/// Why the input tensors of a run do not fit the compiled program.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A program input was not given.
    #[error("input {name:?}: missing")]
    Missing {
        /// The input's name.
        name: String,
    },
    /// A tensor was given under a name the program has no input for.
    #[error("input {name:?}: the program has no such input")]
    Unknown {
        /// The tensor's name.
        name: String,
    },
    /// The tensor's element type is not the program's.
    #[error("input {name:?}: element type {got} but the program computes in {expected}")]
    ElemType {
        /// The input's name.
        name: String,
        /// The tensor's element type.
        got: ElemType,
        /// The program's.
        expected: ElemType,
    },
    /// The tensor does not have the input buffer's number of elements.
    #[error(
        "input {name:?}: {got} element(s) (shape {shape:?}) but the program's buffer has \
         {expected} (shape {expected_shape:?})"
    )]
    Size {
        /// The input's name.
        name: String,
        /// The tensor's number of elements.
        got: usize,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// The buffer's number of elements.
        expected: usize,
        /// The buffer's shape.
        expected_shape: Vec<usize>,
    },
    /// The tensor does not have the input's shape (the interpreters compare shapes, not only
    /// sizes).
    #[error("input {name:?}: shape {got:?} but the program expects {expected:?}")]
    Shape {
        /// The input's name.
        name: String,
        /// The tensor's shape.
        got: Vec<usize>,
        /// The input's shape.
        expected: Vec<usize>,
    },
}

impl InputError {
    /// The name of the tensor the error is about.
    pub fn name(&self) -> &str {
        match self {
            InputError::Missing { name }
            | InputError::Unknown { name }
            | InputError::ElemType { name, .. }
            | InputError::Size { name, .. }
            | InputError::Shape { name, .. } => name,
        }
    }
}

/// A program input as a runner expects it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExpectedInput<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its number of elements.
    pub len: usize,
    /// Its buffer's shape (for messages: only the number of elements must match).
    pub shape: &'a [usize],
}

/// The runtime element type of a program's `dtype`.
pub(crate) fn elem_type(dtype: DType) -> ElemType {
    match dtype {
        DType::F32 => ElemType::F32,
        DType::F64 => ElemType::F64,
    }
}

/// The tensor `name` of `inputs`, which must exist and have element type `elem` and exactly
/// `shape` (the interpreters' check: one input at a time, shapes compared).
pub(crate) fn exact_input<'t>(
    inputs: &'t BTreeMap<String, Tensor>,
    name: &str,
    elem: ElemType,
    shape: &[usize],
) -> Result<&'t Tensor, InputError> {
    let t = inputs.get(name).ok_or_else(|| InputError::Missing {
        name: name.to_string(),
    })?;
    if t.elem_type() != elem {
        return Err(InputError::ElemType {
            name: name.to_string(),
            got: t.elem_type(),
            expected: elem,
        });
    }
    if t.shape() != shape {
        return Err(InputError::Shape {
            name: name.to_string(),
            got: t.shape().to_vec(),
            expected: shape.to_vec(),
        });
    }
    Ok(t)
}

/// Checks `inputs` against a program computing in `dtype` whose inputs are `expected` (program
/// order): no name the program does not have, every input given, with the program's element
/// type and exactly its buffer's number of elements (the shape itself is not compared). Returns
/// the tensors in the order of `expected`.
pub(crate) fn check_inputs<'t, 'a>(
    inputs: &'t BTreeMap<String, Tensor>,
    dtype: DType,
    expected: impl IntoIterator<Item = ExpectedInput<'a>> + Clone,
) -> Result<Vec<&'t Tensor>, InputError> {
    for name in inputs.keys() {
        if !expected.clone().into_iter().any(|e| e.name == name) {
            return Err(InputError::Unknown { name: name.clone() });
        }
    }
    let want = elem_type(dtype);
    let mut tensors = Vec::new();
    for e in expected {
        let name = || e.name.to_string();
        let Some(t) = inputs.get(e.name) else {
            return Err(InputError::Missing { name: name() });
        };
        if t.elem_type() != want {
            return Err(InputError::ElemType {
                name: name(),
                got: t.elem_type(),
                expected: want,
            });
        }
        if t.len() != e.len {
            return Err(InputError::Size {
                name: name(),
                got: t.len(),
                shape: t.shape().to_vec(),
                expected: e.len,
                expected_shape: e.shape.to_vec(),
            });
        }
        tensors.push(t);
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(pairs: &[(&str, Tensor)]) -> BTreeMap<String, Tensor> {
        pairs
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect()
    }

    /// Inputs `x` (4 elements, shape [2, 2]) and `y` (3 elements).
    fn check(inputs: &BTreeMap<String, Tensor>) -> Result<Vec<&Tensor>, InputError> {
        let expected = [
            ExpectedInput {
                name: "x",
                len: 4,
                shape: &[2, 2],
            },
            ExpectedInput {
                name: "y",
                len: 3,
                shape: &[3],
            },
        ];
        check_inputs(inputs, DType::F32, expected)
    }

    #[test]
    fn fitting_inputs_come_back_in_program_order() {
        let x = Tensor::from_f32([4], vec![1.0; 4]).unwrap();
        let y = Tensor::from_f32([3], vec![2.0; 3]).unwrap();
        let ins = named(&[("y", y.clone()), ("x", x.clone())]);
        let got = check(&ins).unwrap();
        assert_eq!(got, vec![&x, &y]);
    }

    #[test]
    fn every_misfit_names_its_tensor() {
        let x = Tensor::from_f32([2, 2], vec![1.0; 4]).unwrap();
        let y = Tensor::from_f32([3], vec![2.0; 3]).unwrap();
        let cases = [
            (named(&[("x", x.clone())]), "y", "missing"),
            (
                named(&[("x", x.clone()), ("y", y.clone()), ("z", y.clone())]),
                "z",
                "no such input",
            ),
            (
                named(&[
                    ("x", Tensor::from_f64([4], vec![1.0; 4]).unwrap()),
                    ("y", y.clone()),
                ]),
                "x",
                "element type f64 but the program computes in f32",
            ),
            (
                named(&[
                    ("x", x.clone()),
                    ("y", Tensor::from_f32([2, 2], vec![0.0; 4]).unwrap()),
                ]),
                "y",
                "4 element(s) (shape [2, 2]) but the program's buffer has 3 (shape [3])",
            ),
        ];
        for (ins, name, what) in cases {
            let e = check(&ins).expect_err(what);
            assert_eq!(e.name(), name);
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("input {name:?}: ")), "{msg}");
            assert!(msg.contains(what), "{msg}");
        }
    }
}
