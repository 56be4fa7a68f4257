//! The runtime's error type.

use std::path::PathBuf;

/// Everything that can go wrong building tensors or reading and writing tensor files.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The file could not be read or written.
    #[error("cannot access `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (bad header, truncated data, bad offsets...).
    #[error("`{}` is not a valid safetensors file: {message}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor in the file has an element type other than F32 or F64.
    #[error(
        "tensor `{tensor}` has element type {dtype}; only F32 and F64 are supported (and I64, I32 for inputs declared `int`)"
    )]
    UnsupportedDType {
        /// The tensor's name.
        tensor: String,
        /// The element type the file declares (safetensors spelling, such as `BF16`).
        dtype: String,
    },
    /// A tensor could not be written.
    #[error("cannot write tensor `{tensor}` to `{}`: {message}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Why.
        message: String,
    },
    /// A tensor was built from a data buffer whose length does not match its shape.
    #[error("shape {shape:?} holds {expected} element(s) but the data has {got}")]
    ShapeMismatch {
        /// The requested shape.
        shape: Vec<usize>,
        /// Number of elements the shape holds.
        expected: usize,
        /// Number of elements supplied.
        got: usize,
    },
    /// The number of elements of a shape does not fit in `usize`.
    #[error("shape {shape:?} has too many elements")]
    ShapeOverflow {
        /// The requested shape.
        shape: Vec<usize>,
    },
    /// A tensor of this shape could not be allocated (more bytes than the address space
    /// holds, or the allocator refused).
    #[error("cannot allocate a tensor of shape {shape:?} ({bytes} bytes)")]
    Allocation {
        /// The requested shape.
        shape: Vec<usize>,
        /// The bytes it needs (saturated at `u128::MAX`).
        bytes: u128,
    },
}
