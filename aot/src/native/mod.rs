//! The JIT's native run time (`backends/src/native`), compiled a second time: the worker pool
//! and the matrix library the pieces call (with its kernel for narrow products).

#[path = "../../../backends/src/native/gemm.rs"]
#[allow(dead_code)]
pub(crate) mod gemm;
#[path = "../../../backends/src/native/narrow.rs"]
#[allow(dead_code)]
pub(crate) mod narrow;
#[path = "../../../backends/src/native/parallel.rs"]
#[allow(dead_code)]
pub(crate) mod parallel;
