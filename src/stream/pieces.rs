//! The compiled pieces of a session, one per distinct program: the layers of a model give the
//! same stage program at every level but the first and the last, and the same token step for
//! every scan, so a twelve-layer model compiles (or loads from the compile cache) a handful of
//! pieces instead of a few dozen.

use super::StreamError;
use crate::execute::{prepare, Backend, Prepared};
use std::collections::HashMap;
use tttc_ir::Program;

/// A session's backend and its compiled programs by their exact encoding.
pub(super) struct Pieces {
    backend: Backend,
    compiled: HashMap<Vec<u8>, Prepared>,
    /// Every distinct program, in the order first asked for, when recording (for an
    /// ahead-of-time library, which compiles exactly these).
    recorded: Option<Vec<Program>>,
}

impl Pieces {
    /// No pieces yet, for `backend`.
    pub(super) fn new(backend: Backend) -> Pieces {
        Pieces {
            backend,
            compiled: HashMap::new(),
            recorded: None,
        }
    }

    /// The backend the pieces are compiled for.
    pub(super) fn backend(&self) -> Backend {
        self.backend
    }

    /// `program` compiled for the backend: shared with an earlier piece of exactly the same
    /// program (same graph, names, shapes and settings), else compiled now.
    pub(super) fn prepare(&mut self, program: &Program) -> Result<Prepared, StreamError> {
        let mut key = Vec::new();
        ciborium::into_writer(program, &mut key)
            .map_err(|e| StreamError::internal(format!("encoding a piece: {e}")))?;
        if let Some(p) = self.compiled.get(&key) {
            return Ok(p.clone());
        }
        let p = prepare(self.backend, program)?;
        self.compiled.insert(key, p.clone());
        if let Some(r) = &mut self.recorded {
            r.push(program.clone());
        }
        Ok(p)
    }

    /// Keeps every distinct program compiled from now on (see [`Pieces::recorded`]).
    pub(super) fn record(&mut self) {
        self.recorded.get_or_insert_with(Vec::new);
    }

    /// The distinct programs compiled since [`Pieces::record`], in order.
    pub(super) fn recorded(&self) -> &[Program] {
        self.recorded.as_deref().unwrap_or_default()
    }

    /// How many distinct programs were compiled.
    pub(super) fn len(&self) -> usize {
        self.compiled.len()
    }
}
