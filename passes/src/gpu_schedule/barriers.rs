//! Where the threads of a block must wait for each other.
//!
//! The statements of a block are thread loops (each race-free on its own: its iterations are
//! independent) and loops every thread runs in step. Walking them in order, the buffers read
//! and written since the last barrier are kept; a barrier goes before a statement that writes a
//! buffer read or written since then, or reads one written since then. A loop run in step gets
//! a barrier before it when anything in it conflicts with what is pending, and one at the end
//! of its body when what is pending there conflicts with anything in the body (the next
//! iteration's head). Buffer granularity is conservative: the kernel emulator checks element by
//! element that no barrier is missing.

use std::collections::BTreeSet;
use tttc_ir::kernel::{BufId, Schedule, Stmt, Value};

/// Buffers read and written.
#[derive(Clone, Default)]
pub(crate) struct Accesses {
    reads: BTreeSet<BufId>,
    writes: BTreeSet<BufId>,
}

impl Accesses {
    fn of(body: &[Stmt]) -> Accesses {
        fn loads(v: &Value, out: &mut BTreeSet<BufId>) {
            match v {
                Value::Load { buf, .. } => {
                    out.insert(*buf);
                }
                Value::Const(_) | Value::FromIndex(_) => {}
                Value::Unary(_, x) => loads(x, out),
                Value::Binary(_, a, b) => {
                    loads(a, out);
                    loads(b, out);
                }
            }
        }
        fn walk(body: &[Stmt], a: &mut Accesses) {
            for s in body {
                match s {
                    Stmt::Loop { body, .. } => walk(body, a),
                    Stmt::Store { buf, value, .. } => {
                        a.writes.insert(*buf);
                        loads(value, &mut a.reads);
                    }
                    Stmt::Barrier => {}
                }
            }
        }
        let mut a = Accesses::default();
        walk(body, &mut a);
        a
    }

    /// Whether running `later` after `self` without a barrier could race.
    fn conflicts(&self, later: &Accesses) -> bool {
        self.writes
            .iter()
            .any(|b| later.reads.contains(b) || later.writes.contains(b))
            || self.reads.iter().any(|b| later.writes.contains(b))
    }

    fn extend(&mut self, other: &Accesses) {
        self.reads.extend(other.reads.iter().copied());
        self.writes.extend(other.writes.iter().copied());
    }

    fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty()
    }
}

/// `body` (collective statements of a block) with barriers inserted, given what is pending
/// before it; returns it and what is pending after it.
pub(crate) fn insert(body: Vec<Stmt>, mut pending: Accesses) -> (Vec<Stmt>, Accesses) {
    let mut out = Vec::with_capacity(body.len());
    for s in body {
        match s {
            Stmt::Loop {
                var,
                extent,
                schedule,
                body,
            } if schedule != Schedule::GpuThread => {
                let all = Accesses::of(&body);
                if pending.conflicts(&all) {
                    out.push(Stmt::Barrier);
                    pending = Accesses::default();
                }
                let (mut body, tail) = insert(body, pending);
                if extent > 1 && tail.conflicts(&all) {
                    body.push(Stmt::Barrier);
                    pending = Accesses::default();
                } else {
                    pending = tail;
                }
                out.push(Stmt::Loop {
                    var,
                    extent,
                    schedule,
                    body,
                });
            }
            Stmt::Barrier => {
                if !pending.is_empty() {
                    out.push(Stmt::Barrier);
                }
                pending = Accesses::default();
            }
            s => {
                let a = Accesses::of(std::slice::from_ref(&s));
                if pending.conflicts(&a) {
                    out.push(Stmt::Barrier);
                    pending = Accesses::default();
                }
                pending.extend(&a);
                out.push(s);
            }
        }
    }
    (out, pending)
}
