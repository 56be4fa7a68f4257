//! Dense row-major tensors of `f32` or `f64`.

use crate::elements::Elements;
use crate::error::RuntimeError;
use std::fmt;

/// Element type of a [`Tensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

impl ElemType {
    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            ElemType::F32 => 4,
            ElemType::F64 => 8,
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
        })
    }
}

/// The elements of a [`Tensor`], in row-major order: owned, or read in place from a mapped
/// weights file (see [`Elements`]).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Single-precision elements.
    F32(Elements<f32>),
    /// Double-precision elements.
    F64(Elements<f64>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn elem_type(&self) -> ElemType {
        match self {
            TensorData::F32(_) => ElemType::F32,
            TensorData::F64(_) => ElemType::F64,
        }
    }

    /// Whether the elements are read in place from a mapped file (see [`Elements`]).
    pub fn is_mapped(&self) -> bool {
        match self {
            TensorData::F32(v) => v.is_mapped(),
            TensorData::F64(v) => v.is_mapped(),
        }
    }
}

impl From<Vec<f32>> for TensorData {
    fn from(v: Vec<f32>) -> TensorData {
        TensorData::F32(v.into())
    }
}

impl From<Vec<f64>> for TensorData {
    fn from(v: Vec<f64>) -> TensorData {
        TensorData::F64(v.into())
    }
}

/// A dense tensor: a shape (`[]` for a scalar) and its elements in row-major order. The number
/// of elements always equals the product of the shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// Number of elements of `shape`, or an error if it overflows `usize`.
fn element_count(shape: &[usize]) -> Result<usize, RuntimeError> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| RuntimeError::ShapeOverflow {
            shape: shape.to_vec(),
        })
}

impl Tensor {
    /// A tensor of `data` with shape `shape`; fails if `data.len()` is not the product of
    /// `shape`.
    pub fn new(shape: impl Into<Vec<usize>>, data: TensorData) -> Result<Tensor, RuntimeError> {
        let shape = shape.into();
        let expected = element_count(&shape)?;
        if data.len() != expected {
            return Err(RuntimeError::ShapeMismatch {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// An `f32` tensor; fails if `data.len()` is not the product of `shape`.
    pub fn from_f32(
        shape: impl Into<Vec<usize>>,
        data: impl Into<Vec<f32>>,
    ) -> Result<Tensor, RuntimeError> {
        Tensor::new(shape, TensorData::F32(Elements::from(data.into())))
    }

    /// An `f64` tensor; fails if `data.len()` is not the product of `shape`.
    pub fn from_f64(
        shape: impl Into<Vec<usize>>,
        data: impl Into<Vec<f64>>,
    ) -> Result<Tensor, RuntimeError> {
        Tensor::new(shape, TensorData::F64(Elements::from(data.into())))
    }

    /// A tensor of zeros.
    ///
    /// # Panics
    ///
    /// If the number of elements overflows `usize` (as `vec![0; n]` would); use
    /// [`Tensor::new`] for shapes that come from untrusted input.
    pub fn zeros(shape: impl Into<Vec<usize>>, elem: ElemType) -> Tensor {
        Tensor::try_zeros(shape, elem).unwrap_or_else(|e| panic!("Tensor::zeros: {e}"))
    }

    /// [`Tensor::zeros`] for a shape that comes from user input: an element count that
    /// overflows `usize` is [`RuntimeError::ShapeOverflow`], and a tensor the allocator cannot
    /// provide [`RuntimeError::Allocation`], instead of a panic or an abort.
    pub fn try_zeros(shape: impl Into<Vec<usize>>, elem: ElemType) -> Result<Tensor, RuntimeError> {
        fn zeroed<T: Copy + Default>(n: usize, shape: &[usize]) -> Result<Vec<T>, RuntimeError> {
            let mut v = Vec::new();
            v.try_reserve_exact(n)
                .map_err(|_| RuntimeError::Allocation {
                    shape: shape.to_vec(),
                    bytes: (n as u128).saturating_mul(std::mem::size_of::<T>() as u128),
                })?;
            v.resize(n, T::default());
            Ok(v)
        }
        let shape = shape.into();
        let n = element_count(&shape)?;
        let data = match elem {
            ElemType::F32 => TensorData::F32(zeroed::<f32>(n, &shape)?.into()),
            ElemType::F64 => TensorData::F64(zeroed::<f64>(n, &shape)?.into()),
        };
        Ok(Tensor { shape, data })
    }

    /// The shape (`[]` for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn elem_type(&self) -> ElemType {
        self.data.elem_type()
    }

    /// The elements, in row-major order.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// This tensor with elements it owns: a view of a mapped file ([`Elements`]) is copied,
    /// so that the file may be rewritten while the tensor lives.
    pub fn into_owned(mut self) -> Tensor {
        match &mut self.data {
            TensorData::F32(v) => {
                v.make_owned();
            }
            TensorData::F64(v) => {
                v.make_owned();
            }
        }
        self
    }

    /// The shape and the elements.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements (some extent is 0).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements, if this is an `f32` tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v.as_slice()),
            TensorData::F64(_) => None,
        }
    }

    /// The elements, if this is an `f64` tensor.
    pub fn as_f64(&self) -> Option<&[f64]> {
        match &self.data {
            TensorData::F64(v) => Some(v.as_slice()),
            TensorData::F32(_) => None,
        }
    }

    /// The elements widened to `f64` (exact for both element types).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::F64(v) => v.to_vec(),
        }
    }

    /// This tensor with elements of type `elem`: itself when it has them (no copy), else
    /// converted as [`Tensor::cast`] does.
    pub fn into_elem(self, elem: ElemType) -> Tensor {
        if self.data.elem_type() == elem {
            self
        } else {
            self.cast(elem)
        }
    }

    /// A copy with element type `elem`. `f32 -> f64` is exact; `f64 -> f32` rounds to nearest
    /// (ties to even; out-of-range values become infinities), the only lossy direction.
    pub fn cast(&self, elem: ElemType) -> Tensor {
        let data = match (&self.data, elem) {
            (TensorData::F32(v), ElemType::F32) => TensorData::F32(v.clone()),
            (TensorData::F64(v), ElemType::F64) => TensorData::F64(v.clone()),
            (TensorData::F32(v), ElemType::F64) => {
                TensorData::F64(v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>().into())
            }
            // `as` rounds to nearest, ties to even.
            (TensorData::F64(v), ElemType::F32) => {
                TensorData::F32(v.iter().map(|&x| x as f32).collect::<Vec<_>>().into())
            }
        };
        Tensor {
            shape: self.shape.clone(),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_check_the_length() {
        let t = Tensor::from_f32([2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.len(), 6);
        assert_eq!(t.elem_type(), ElemType::F32);
        assert_eq!(t.as_f32().unwrap()[4], 5.0);
        assert!(t.as_f64().is_none());
        let err = Tensor::from_f64(vec![2, 2], vec![1.0; 3]).unwrap_err();
        assert!(matches!(
            err,
            RuntimeError::ShapeMismatch {
                expected: 4,
                got: 3,
                ..
            }
        ));
        assert!(err.to_string().contains("[2, 2]"));
        let err = Tensor::from_f64(vec![usize::MAX, 3], vec![]).unwrap_err();
        assert!(matches!(err, RuntimeError::ShapeOverflow { .. }));
    }

    #[test]
    fn zeros_of_an_overflowing_shape_is_an_error() {
        let err = Tensor::try_zeros([usize::MAX, 2], ElemType::F32).unwrap_err();
        assert!(matches!(err, RuntimeError::ShapeOverflow { .. }));
        // Elements that fit in usize, bytes that do not: an error, not a capacity panic.
        let err = Tensor::try_zeros([usize::MAX / 4], ElemType::F64).unwrap_err();
        assert!(matches!(err, RuntimeError::Allocation { .. }), "{err}");
        let z = Tensor::try_zeros([3, 2], ElemType::F64).unwrap();
        assert_eq!(z.shape(), &[3, 2]);
    }

    #[test]
    fn scalars_and_empty_tensors() {
        let s = Tensor::from_f64(Vec::new(), vec![2.5]).unwrap();
        assert_eq!(s.len(), 1);
        assert!(s.shape().is_empty());
        let e = Tensor::from_f32([3, 0], Vec::new()).unwrap();
        assert!(e.is_empty());
        let z = Tensor::zeros([2, 2], ElemType::F64);
        assert_eq!(z.as_f64().unwrap(), &[0.0; 4]);
    }

    #[test]
    fn cast_rounds_to_nearest() {
        let x = 1.0 + f64::EPSILON * 3.0; // not representable in f32
        let t = Tensor::from_f64([2], vec![x, 0.1]).unwrap();
        let c = t.cast(ElemType::F32);
        assert_eq!(c.elem_type(), ElemType::F32);
        assert_eq!(c.as_f32().unwrap(), &[1.0f32, 0.1f32]);
        // widening is exact
        let back = c.cast(ElemType::F64);
        assert_eq!(back.as_f64().unwrap(), &[1.0, f64::from(0.1f32)]);
        assert_eq!(back.to_f64_vec(), vec![1.0, f64::from(0.1f32)]);
        assert_eq!(ElemType::F32.to_string(), "f32");
        assert_eq!(ElemType::F64.to_string(), "f64");
    }
}
