//! tttc's execution backends: everything that runs a program, from graph IR or from kernel IR.
//!
//! - [`interp`]: the reference interpreter, the definitional oracle every compiled backend is
//!   tested against. It evaluates graph IR directly, op by op, in the tensors' own precision.
//! - [`kernel_interp`]: executes kernel IR with every access bounds-checked (the oracle for
//!   code generation), and emulates the GPU mapping, detecting races.
//! - [`llvm`] (feature `llvm`): kernel IR to native CPU code through LLVM, in memory (JIT) or
//!   as an object file for a shared library.
//! - [`cranelift`] (feature `cranelift`): kernel IR to native CPU code through Cranelift, in
//!   milliseconds.
//! - [`ptx`] (feature `llvm`): GPU-mapped kernel IR to PTX through LLVM's NVPTX target; run on
//!   the CPU for testing ([`ptx::host`]) or, with feature `cuda`, through the CUDA driver.
//! - [`aot`]: the C header and checks of ahead-of-time libraries; [`bounds`]: the interval
//!   analysis that proves every access in bounds before code is generated; [`tensor_core`]:
//!   which GPU loops run on tensor cores.
//!
//! [`backend`] is what they have in common: the [`Backend`] and [`CompiledProgram`] traits and
//! [`BackendError`]; [`input`] the one check of a run's input tensors ([`InputError`]).

#![warn(missing_docs)]

pub mod aot;
pub mod backend;
#[cfg(any(feature = "llvm", feature = "cranelift"))]
pub mod bounds;
#[cfg(feature = "cranelift")]
pub mod cranelift;
pub mod input;
pub mod interp;
pub mod kernel_interp;
#[cfg(feature = "llvm")]
pub mod llvm;
#[cfg(feature = "llvm")]
mod llvm_expr;
#[cfg(any(feature = "llvm", feature = "cranelift"))]
mod native;
pub mod poison;
#[cfg(feature = "llvm")]
pub mod ptx;
#[cfg(any(feature = "llvm", feature = "cranelift"))]
mod scratch;
pub mod tensor_core;

pub use backend::{Backend, BackendError, BufferList, CompiledProgram, Interpreted};
pub use input::InputError;
#[cfg(any(feature = "llvm", feature = "cranelift"))]
pub use native::alloc::{kept_bytes, release_kept_blocks};
#[cfg(any(feature = "llvm", feature = "cranelift"))]
pub use native::{Jit, JitCode};
