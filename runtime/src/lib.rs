//! tttc's runtime: dense tensors and safetensors I/O.
//!
//! - [`Tensor`]: a dense, row-major tensor of `f32` or `f64` elements with a known shape.
//! - [`read_safetensors`] / [`write_safetensors`]: load and store named tensors in the
//!   [safetensors](https://github.com/huggingface/safetensors) format (F32 and F64);
//!   [`read_safetensors_with_ints`] also reads I64 and I32 tensors (token ids).
//! - [`parse_json_object`]: a `config.json` object, its keys in order, duplicates rejected.
//! - [`RuntimeError`]: every failure, naming the file and/or the tensor involved.

#![warn(missing_docs)]

mod elements;
mod error;
mod json_object;
mod safetensors_io;
mod tensor;

pub use elements::{Elements, SharedBytes};
pub use error::RuntimeError;
pub use json_object::{parse_json_object, JsonObject};
pub use safetensors_io::{
    read_safetensors, read_safetensors_with_ints, write_safetensors, write_safetensors_with_ints,
    IntTensor, TensorFile,
};
pub use tensor::{ElemType, Tensor, TensorData};
