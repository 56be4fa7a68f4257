//! Graph-to-graph passes over the tttc IR, and a small pipeline to run them.
//!
//! A [`Pass`] rewrites a [`Program`] in place; [`run_pipeline`] runs a list of passes in order
//! and checks the IR with [`tttc_ir::verify::verify_program`] after each one, so that a pass that
//! breaks an invariant is named at once.
//!
//! Passes so far:
//! - [`Autodiff`] (module [`autodiff`]): reverse-mode differentiation of every `ttt` scan's
//!   loss with respect to its states.

#![warn(missing_docs)]

pub mod autodiff;
pub mod batch;
pub mod cost;
pub mod fuse;
pub mod gpu_schedule;
pub mod lower_kernel;
pub mod lower_scan;
pub mod pipeline;
pub mod rewrite;
pub mod token_step;

use tttc_ir::verify::{verify_program, VerifyError};
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
    /// The program did not verify after a pass (a compiler bug in that pass), or before the
    /// first one (`pass` is then `"input"`).
    #[error("IR verification failed after pass `{pass}`: {source}")]
    Verify {
        /// The pass that ran last.
        pass: &'static str,
        /// The verifier's report.
        #[source]
        source: VerifyError,
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

/// Runs `passes` in order on `program`, verifying the IR before the first pass and after every
/// pass.
pub fn run_pipeline(program: &mut Program, passes: &[&dyn Pass]) -> Result<(), PassError> {
    verify_program(program).map_err(|source| PassError::Verify {
        pass: "input",
        source,
    })?;
    for pass in passes {
        pass.run(program)?;
        verify_program(program).map_err(|source| PassError::Verify {
            pass: pass.name(),
            source,
        })?;
    }
    Ok(())
}
