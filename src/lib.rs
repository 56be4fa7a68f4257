//! tttc: a compiler for Test-Time-Training layers.
//!
//! This crate holds the `tttc` command-line tool and re-exports the workspace's crates:
//! [`ir`] (the DSL and the graph IR), [`passes`] (autodiff and later optimizations),
//! [`backends`] (the reference interpreter) and [`runtime`] (tensors and safetensors I/O).
//! [`compile_file`] and [`bind`] connect them: source text to a differentiated program, and a
//! program plus named tensors to a program specialized for those shapes.

pub mod bind;
pub mod driver;
pub mod execute;
pub mod gpu;
pub mod inputs;
pub mod stream;

pub use tttc_backends as backends;
pub use tttc_ir as ir;
pub use tttc_passes as passes;
pub use tttc_runtime as runtime;

pub use bind::{bind, bind_shapes, unused_tensors, BindError, Bound};
pub use driver::{
    compile_file, compile_source, lower_file, merge_settings, optimize, read_config_file, Compiled,
    DriverError, Precision, Settings,
};
pub use execute::{prepare, Backend, ExecError, Prepared};
pub use inputs::{read_inputs, InputError};
