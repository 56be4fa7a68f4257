//! Streaming: feed a sequence in chunks of any length (prefill, then one token at a time) and
//! get exactly what one pass over the whole sequence gives.
//!
//! A [`Session`] is made from a compiled program and its weights (the inputs that do not run
//! along the sequence). It holds, per scan, the fast weights at the start of the unfinished
//! mini-batch, the partial gradient sums of its tokens so far, and the position in the
//! sequence. [`Session::feed`] takes the per-token inputs of any number of tokens: whole
//! mini-batches that start on a mini-batch boundary go through the scan's own step (the dual
//! form); every other token goes through the primal token step
//! ([`tttc_passes::token_step`]). The rest of the program runs as stage programs on each chunk
//! (see [`plan`]), so every backend streams. The state saves to and loads from safetensors.

mod chunked;
mod grouped;
mod layout;
mod pieces;
pub mod plan;
mod scan;
mod session;
mod state_file;
mod team;

pub use chunked::{run_chunked, run_chunked_with_state, split_chunks};
pub use plan::{Class, StreamPlan};
pub use session::Session;
pub use tttc_passes::token_step::{DecodeState, StateForm};

use crate::execute::ExecError;

/// Why a program cannot stream, or a chunk or a saved state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The program mixes tokens in a way a chunk cannot reproduce.
    #[error("the program cannot be streamed: {at}: {why}")]
    NotStreamable {
        /// Where.
        at: String,
        /// Why.
        why: String,
    },
    /// A chunk's tensors do not fit the program or the session.
    #[error("{0}")]
    Input(String),
    /// Binding the first chunk failed.
    #[error(transparent)]
    Bind(#[from] crate::BindError),
    /// A saved state cannot be used.
    #[error("session state {path}: {message}")]
    State {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] tttc_runtime::RuntimeError),
    /// Compiling or running a piece failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A compiler bug.
    #[error("internal error while streaming: {0}")]
    Internal(String),
}

impl StreamError {
    pub(crate) fn not_streamable(at: impl Into<String>, why: impl Into<String>) -> Self {
        StreamError::NotStreamable {
            at: at.into(),
            why: why.into(),
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        StreamError::Internal(message.into())
    }

    /// Whether the user can fix it (exit code 2) rather than a bug (exit code 1).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            StreamError::NotStreamable { .. }
                | StreamError::Input(_)
                | StreamError::Bind(_)
                | StreamError::State { .. }
                | StreamError::Io(_)
        )
    }
}
