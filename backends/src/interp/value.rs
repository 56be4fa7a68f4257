//! Runtime values of the interpreter: dense row-major arrays of one element type, and tuples.

use std::fmt::Debug;
use std::ops::{Add, Div, Mul, Neg, Sub};
use tttc_ir::DType;
use tttc_runtime::{RuntimeError, Tensor};

/// A dense row-major array: `data.len()` is always the product of `shape`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Arr<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T: Elem> Arr<T> {
    /// An array, checking that the data fills the shape.
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Self, String> {
        let n = numel(&shape)?;
        if n != data.len() {
            return Err(format!(
                "internal: {} element(s) for shape {shape:?} ({n} needed)",
                data.len()
            ));
        }
        Ok(Arr { shape, data })
    }

    /// A scalar.
    pub fn scalar(x: T) -> Self {
        Arr {
            shape: Vec::new(),
            data: vec![x],
        }
    }
}

/// The value of a node: a tensor of either element type, or a tuple (the scan's result).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    F32(Arr<f32>),
    F64(Arr<f64>),
    Tuple(Vec<Value>),
}

impl Value {
    /// Short description (`f32[2, 3]`, `tuple`) for error messages.
    pub fn describe(&self) -> String {
        match self {
            Value::F32(a) => format!("f32{:?}", a.shape),
            Value::F64(a) => format!("f64{:?}", a.shape),
            Value::Tuple(vs) => format!("a {}-tuple", vs.len()),
        }
    }
}

/// Largest number of elements one array may have (keeps every byte count within `isize`).
const MAX_ELEMENTS: usize = (isize::MAX as usize) / 8;

/// Number of elements of `shape`, or an error if it is absurdly large.
pub(crate) fn numel(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("shape {shape:?} has too many elements"))
}

/// An element type the interpreter computes in. Every operation of an `f32` program is done in
/// `f32`, of an `f64` program in `f64`.
pub(crate) trait Elem:
    Copy
    + PartialOrd
    + Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    /// The IR element type.
    const DTYPE: DType;
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// Conversion from `f64`, rounding to nearest.
    fn from_f64(v: f64) -> Self;
    /// Conversion to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Square root.
    fn sqrt(self) -> Self;
    /// `e^x`.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Real power.
    fn powf(self, e: Self) -> Self;
    /// Largest integer not above `self`.
    fn floor(self) -> Self;
    /// Sine.
    fn sin(self) -> Self;
    /// Cosine.
    fn cos(self) -> Self;
    /// Whether this is a NaN.
    fn is_nan(self) -> bool;
    /// Wraps an array of this type as a value.
    fn wrap(a: Arr<Self>) -> Value;
    /// The array, if `v` is a tensor of this element type.
    fn unwrap(v: &Value) -> Option<&Arr<Self>>;
    /// The elements, if `t` has this element type.
    fn tensor_data(t: &Tensor) -> Option<&[Self]>;
    /// A runtime tensor of this element type.
    fn to_tensor(a: Arr<Self>) -> Result<Tensor, RuntimeError>;
}

macro_rules! impl_elem {
    ($t:ty, $dtype:expr, $variant:ident, $as_slice:ident, $ctor:ident) => {
        impl Elem for $t {
            const DTYPE: DType = $dtype;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn wrap(a: Arr<Self>) -> Value {
                Value::$variant(a)
            }
            fn unwrap(v: &Value) -> Option<&Arr<Self>> {
                match v {
                    Value::$variant(a) => Some(a),
                    _ => None,
                }
            }
            fn tensor_data(t: &Tensor) -> Option<&[Self]> {
                t.$as_slice()
            }
            fn to_tensor(a: Arr<Self>) -> Result<Tensor, RuntimeError> {
                Tensor::$ctor(a.shape, a.data)
            }
        }
    };
}

impl_elem!(f32, DType::F32, F32, as_f32, from_f32);
impl_elem!(f64, DType::F64, F64, as_f64, from_f64);
