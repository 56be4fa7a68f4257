//! The compiler's passes over the tttc IR, and the pipeline that runs them to machine code.
//!
//! [`pipeline`] names every stage in order — the graph passes [`Autodiff`] (`autodiff`),
//! [`lower_scan`] (`primal`, the vectorized primal form, using [`batch`]),
//! [`rewrite`] (`dual_form` and `simplify`, equality saturation with egg), then
//! [`lower_kernel`] (graph IR to kernel IR; it decides fusion) and, for GPU targets,
//! [`gpu_schedule`] — and runs them with instruments around each stage: the IR verifier,
//! timings, snapshots and dumps. Code generation, the last stage, is supplied by the caller
//! (the code generators live in `tttc-backends`).
//!
//! Beside the pipeline: [`cost`] (FLOPs and bytes of a bound program, for `tttc cost`),
//! [`token_step`] (the one-token step graphs of decoding).
//!
//! A [`Pass`] rewrites a graph [`Program`] in place; a pass that breaks an invariant is named
//! at once by the verifier that runs after it.

#![warn(missing_docs)]

pub mod autodiff;
pub mod batch;
pub mod cost;
pub mod cpu_parallel;
pub mod gpu_schedule;
pub mod lower_kernel;
pub mod lower_scan;
pub mod memory_plan;
pub mod outline;
pub mod pipeline;
pub mod reduce_jam;
pub mod register_tile;
pub mod residuals;
pub mod rewrite;
pub mod sibling_products;
pub mod token_step;
pub mod vector_loops;

use tttc_ir::verify::VerifyError;
use tttc_ir::Program;

pub use autodiff::{derive_gradients, gradient_graph, AutodiffError};

/// Why a pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The autodiff pass failed.
    #[error("pass `autodiff` failed: {0}")]
    Autodiff(#[from] AutodiffError),
    /// Some other pass failed.
    #[error("pass `{pass}` failed: {source}")]
    Failed {
        /// The pass's name.
        pass: &'static str,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The program did not verify after a stage (a compiler bug in that stage), or before the
    /// first one (`pass` is then `"input"`).
    #[error("IR verification failed after pass `{pass}`: {source}")]
    Verify {
        /// The pass that ran last.
        pass: &'static str,
        /// The verifier's report.
        #[source]
        source: VerifyError,
    },
    /// A kernel program did not verify after a kernel stage (a compiler bug in that stage).
    #[error("kernel IR verification failed after stage `{stage}`: {source}")]
    KernelVerify {
        /// The stage that ran last.
        stage: &'static str,
        /// The kernel IR verifier's report.
        #[source]
        source: tttc_ir::kernel::VerifyError,
    },
    /// A stage name the pipeline does not have.
    #[error("unknown stage `{name}`; the stages are: {stages}")]
    UnknownStage {
        /// The name asked for.
        name: String,
        /// The pipeline's stages, comma-separated.
        stages: String,
    },
    /// A stage was given the other IR (graph IR where it reads kernel IR, or the reverse).
    #[error("stage `{stage}` reads {expected}, but was given {found}")]
    WrongIr {
        /// The stage.
        stage: &'static str,
        /// What it reads.
        expected: pipeline::IrForm,
        /// What it was given.
        found: pipeline::IrForm,
    },
    /// The dump instrument could not write a stage's text.
    #[error("cannot write the IR dump {path}: {source}")]
    Dump {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A transformation of a whole program.
pub trait Pass {
    /// A short, stable name (used in errors and dumps).
    fn name(&self) -> &'static str;
    /// Rewrites `program` in place.
    fn run(&self, program: &mut Program) -> Result<(), PassError>;
}

/// Derives the gradient graph of every `ttt` scan's loss with respect to its states
/// (see [`autodiff::derive_gradients`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Autodiff;

impl Pass for Autodiff {
    fn name(&self) -> &'static str {
        "autodiff"
    }

    fn run(&self, program: &mut Program) -> Result<(), PassError> {
        Ok(derive_gradients(program)?)
    }
}
