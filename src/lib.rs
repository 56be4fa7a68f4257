//! tttc: a compiler for Test-Time-Training layers.
//!
//! This crate holds the `tttc` command-line tool and the library behind it, and re-exports the
//! workspace's crates: [`ir`] (the `.ttt` language, the graph IR and the kernel IR),
//! [`passes`] (the pipeline: autodiff, the primal and dual forms, simplification, the lowering
//! to kernel IR, the GPU mapping; the cost model), [`backends`] (the reference interpreter and
//! the LLVM, Cranelift and PTX code generators) and [`runtime`] (tensors and safetensors I/O).
//!
//! The library connects them: [`driver`] runs the pipeline ([`compile_file`]: source to an
//! optimized program; [`driver::kernel_program`] and [`driver::generate_code`]: a bound
//! program to kernel IR and machine code), [`bind`] specializes a program to named tensors'
//! shapes, [`execute`] runs a bound program on a backend, [`gpu`] is the NVIDIA path,
//! [`stream`] runs a program over a sequence in chunks (prefill, then decode), [`grad`]
//! computes vector-Jacobian products of a whole program ([`GradProgram`]), [`inputs`]
//! reads a program's input tensors, [`model_dir`] a Hugging Face model folder, and [`cache`]
//! keeps compiled code on disk between runs.

#![warn(missing_docs)]

pub mod aot_session;
pub mod bind;
pub mod cache;
pub mod driver;
pub mod execute;
pub mod gpu;
pub mod grad;
pub mod inputs;
pub mod model_dir;
pub mod stream;

pub use tttc_backends as backends;
pub use tttc_ir as ir;
pub use tttc_passes as passes;
pub use tttc_runtime as runtime;

pub use bind::{bind, bind_owned, bind_shapes, check_values, unused_tensors, BindError, Bound};
pub use driver::{
    compile_file, compile_source, lower_file, lower_with_config, merge_settings, optimize,
    read_config_file, Compiled, DriverError, Lowered, Precision, Settings, StageReport,
};
pub use execute::{prepare, Backend, ExecError, Prepared};
pub use grad::{GradError, GradProgram, Residuals};
pub use inputs::{read_inputs, InputError};
