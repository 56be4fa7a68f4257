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
    /// Programs compiled several times over, for steps that run on several threads at once:
    /// every scan of a model asks for the same token step's copies, and gets the same ones.
    copies: HashMap<Vec<u8>, Vec<Prepared>>,
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
            copies: HashMap::new(),
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
        let key = encoding(program)?;
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

    /// `count` separately compiled copies of `program` (so that `count` threads can run it at
    /// once), shared with an earlier request for copies of exactly the same program. Sharing
    /// is safe: a copy is run by one thread at a time (see [`Prepared`]), and a session's
    /// scans take turns. On a warm start of a twelve-layer model this loads two copies of the
    /// token step from the compile cache instead of twenty-four.
    pub(super) fn prepare_copies(
        &mut self,
        program: &Program,
        count: usize,
    ) -> Result<Vec<Prepared>, StreamError> {
        let key = encoding(program)?;
        if let Some(copies) = self.copies.get(&key) {
            if copies.len() == count {
                return Ok(copies.clone());
            }
        }
        let copies = (0..count)
            .map(|_| prepare(self.backend, program))
            .collect::<Result<Vec<_>, _>>()?;
        self.copies.insert(key, copies.clone());
        Ok(copies)
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

/// A program's exact encoding, the key of its pieces.
fn encoding(program: &Program) -> Result<Vec<u8>, StreamError> {
    let mut key = Vec::new();
    ciborium::into_writer(program, &mut key)
        .map_err(|e| StreamError::internal(format!("encoding a piece: {e}")))?;
    Ok(key)
}
