//! Where the threads of a block must wait for each other.
//!
//! The statements of a block are thread loops (each race-free on its own: its iterations are
//! independent) and loops every thread runs in step. Walking them in order, the buffers read
//! and written since the last barrier are kept; a barrier goes before a statement that writes a
//! buffer read or written since then, or reads one written since then. A loop run in step gets
//! a barrier before it when anything in it conflicts with what is pending, and one at the end
//! of its body when what is pending there conflicts with anything in the body (the next
//! iteration's head).
//!
//! One refinement: a conflict on a buffer is no conflict when both statements are thread loops
//! of the same extent that index the buffer, everywhere, by the same expression of their thread
//! variable and the block variables alone. One of them writes the buffer, and its iterations are
//! independent, so that expression never gives one element to two iterations: an element is
//! touched at the same iteration, hence by the same thread, in both (a matmul's zeroing and
//! accumulation loops over rows × columns). Otherwise buffer granularity is conservative; the
//! kernel emulator checks element by element that no barrier is missing.

use std::collections::{BTreeMap, BTreeSet};
use tttc_ir::kernel::{BufId, Index, Schedule, Stmt, VarId};

/// Which thread owns each element of a buffer: a thread loop's extent and the (canonical)
/// index expression of every access; `None` when unknown.
type Owner = Option<(usize, String)>;

/// Buffers read and written.
#[derive(Clone, Default)]
pub(crate) struct Accesses {
    reads: BTreeSet<BufId>,
    writes: BTreeSet<BufId>,
    owner: BTreeMap<BufId, Owner>,
}

/// The thread variable, renamed in canonical index expressions.
const THREAD: VarId = VarId(u32::MAX);

fn rename(ix: &Index, from: VarId) -> Index {
    match ix {
        Index::Var(v) if *v == from => Index::Var(THREAD),
        Index::Const(_) | Index::Var(_) => ix.clone(),
        Index::Add(a, b) => Index::Add(Box::new(rename(a, from)), Box::new(rename(b, from))),
        Index::Mul(a, c) => Index::Mul(Box::new(rename(a, from)), *c),
        Index::Div(a, c) => Index::Div(Box::new(rename(a, from)), *c),
        Index::Rem(a, c) => Index::Rem(Box::new(rename(a, from)), *c),
        Index::Load { buf, index, bound } => Index::load(*buf, rename(index, from), *bound),
    }
}

fn merge(a: Option<&Owner>, b: &Owner) -> Owner {
    match a {
        None => b.clone(),
        Some(x) if x == b => b.clone(),
        Some(_) => None,
    }
}

impl Accesses {
    /// The accesses of one statement of a block; `block` are the block variables.
    fn of_stmt(s: &Stmt, block: &BTreeSet<VarId>) -> Accesses {
        let mut a = Accesses::of(std::slice::from_ref(s));
        if let Stmt::Loop {
            var,
            extent,
            schedule: Schedule::GpuThread,
            body,
        } = s
        {
            let mut all: Vec<(BufId, &Index)> = Vec::new();
            for s in body {
                s.for_each_access(&mut |a| all.push((a.buf, a.index)));
            }
            let mut owner: BTreeMap<BufId, Owner> = BTreeMap::new();
            for (b, ix) in all {
                let o = ix
                    .vars()
                    .iter()
                    .all(|v| v == var || block.contains(v))
                    .then(|| (*extent, rename(ix, *var).to_string()));
                let m = merge(owner.get(&b), &o);
                owner.insert(b, m);
            }
            a.owner = owner;
        }
        a
    }

    fn of(body: &[Stmt]) -> Accesses {
        let mut a = Accesses::default();
        for s in body {
            s.for_each_access(&mut |x| {
                if x.write {
                    a.writes.insert(x.buf);
                } else {
                    a.reads.insert(x.buf);
                }
            });
        }
        for b in a.reads.iter().chain(&a.writes) {
            a.owner.insert(*b, None);
        }
        a
    }

    /// Whether running `later` after `self` without a barrier could race.
    fn conflicts(&self, later: &Accesses) -> bool {
        let risky = |b: &BufId| {
            !matches!(
                (self.owner.get(b), later.owner.get(b)),
                (Some(Some(x)), Some(Some(y))) if x == y
            )
        };
        self.writes
            .iter()
            .any(|b| (later.reads.contains(b) || later.writes.contains(b)) && risky(b))
            || self
                .reads
                .iter()
                .any(|b| later.writes.contains(b) && risky(b))
    }

    fn extend(&mut self, other: &Accesses) {
        self.reads.extend(other.reads.iter().copied());
        self.writes.extend(other.writes.iter().copied());
        for (b, o) in &other.owner {
            let m = merge(self.owner.get(b), o);
            self.owner.insert(*b, m);
        }
    }

    fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty()
    }
}

/// `body` (collective statements of a block) with barriers inserted, given what is pending
/// before it; returns it and what is pending after it. `block` are the block variables.
pub(crate) fn insert(
    body: Vec<Stmt>,
    mut pending: Accesses,
    block: &BTreeSet<VarId>,
) -> (Vec<Stmt>, Accesses) {
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
                let (mut body, tail) = insert(body, pending, block);
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
                let a = Accesses::of_stmt(&s, block);
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
