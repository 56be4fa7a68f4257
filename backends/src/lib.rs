//! tttc's execution backends.
//!
//! - [`interp`]: the reference interpreter, the definitional oracle every compiled backend is
//!   tested against. It evaluates graph IR directly, op by op, in the tensors' own precision.

pub mod aot;
#[cfg(any(feature = "llvm", feature = "cranelift"))]
pub mod bounds;
#[cfg(feature = "cranelift")]
pub mod cranelift;
pub mod interp;
pub mod kernel_interp;
#[cfg(feature = "llvm")]
pub mod llvm;
#[cfg(any(feature = "llvm", feature = "cranelift"))]
mod native;
#[cfg(any(feature = "llvm", feature = "cranelift"))]
pub use native::BufferList;
#[cfg(feature = "llvm")]
pub mod ptx;
#[cfg(any(feature = "llvm", feature = "cranelift"))]
mod scratch;
pub mod tensor_core;
