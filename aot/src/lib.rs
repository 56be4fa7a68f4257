//! The run time of an ahead-of-time session library (`tttc compile --session`): tttc's own
//! streaming session ([`stream::Session`], the source of `src/stream` compiled a second time)
//! over pieces compiled to native code when the library was written, behind the C API the
//! library's header documents ([`capi`]). Nothing here links LLVM.
//!
//! A library holds a [`manifest::Manifest`] (the program after the pipeline, the shapes it was
//! compiled for, the pieces' signatures) and one native entry per piece. A session asks for a
//! piece by its program, exactly as the JIT session does; here the answer is looked up by the
//! program's key ([`manifest::piece_key`]) among the library's pieces instead of compiled.
//! Chunks of any length are fed as whole mini-batches (from a mini-batch boundary) and single
//! tokens, the two lengths the pieces were compiled for.

#![warn(missing_docs)]

#[path = "../../src/bind.rs"]
#[allow(dead_code, unused_imports)]
mod bind;
pub mod capi;
mod driver;
mod execute;
pub mod manifest;
mod native;
#[path = "../../src/stream/mod.rs"]
#[allow(dead_code, unused_imports)]
pub mod stream;

pub use bind::BindError;
pub use driver::Precision;
pub use execute::{Backend, ExecError};
