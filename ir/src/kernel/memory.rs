//! The memory plan of a kernel program: where its `Global` temporaries live in one arena, so
//! that temporaries whose lifetimes do not overlap share memory (across layers too).
//!
//! **Time.** A program runs as a sequence of *steps*: each top-level statement of the body is
//! one step — a loop as a whole, whatever it does inside, and a [`Stmt::Call`] as a whole,
//! touching every argument (and whatever else its function's body touches). A call's arguments
//! are therefore never placed over each other: code generators may keep treating a function's
//! parameters as pairwise disjoint (LLVM's `noalias`). Since each statement of a function body
//! touches a subset of what its call touches, a plan that holds for `p` also holds for
//! [`super::inline_calls`]`(p)`.
//!
//! **Lifetimes.** A buffer's [`Lifetime`] is the first and last step that touches it (reads or
//! writes it anywhere inside the step). Two buffers whose lifetimes are disjoint never hold a
//! value at the same time (a temporary holds nothing before its first step: reading it before
//! writing it is a bug that poison catches, see `docs/backends.md`), so they may share memory.
//!
//! **The plan** ([`MemoryPlan`]) puts some `Global` temporaries at element offsets in one arena
//! of [`MemoryPlan::arena_len`] elements; the verifier ([`super::verify`]) checks that each
//! placed buffer fits and that two placed buffers overlapping in the arena have disjoint
//! lifetimes. Code generators allocate the arena once per run and point each placed buffer
//! into it; the kernel interpreter simulates it.

use super::{buffers_used, BufId, KernelProgram, Stmt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where the `Global` temporaries of a program live (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// Length of the arena in elements of the program's element type.
    pub arena_len: u64,
    /// The buffers in the arena, each once, in order of buffer id.
    pub placements: Vec<Placement>,
}

/// One buffer's place in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The buffer (a `Global` temporary).
    pub buf: BufId,
    /// Its first element's offset in the arena, in elements.
    pub offset: u64,
}

impl MemoryPlan {
    /// The arena offset of `buf`, if it is placed.
    pub fn offset_of(&self, buf: BufId) -> Option<u64> {
        self.placements
            .binary_search_by_key(&buf, |p| p.buf)
            .ok()
            .map(|i| self.placements[i].offset)
    }
}

/// The first and last step (inclusive) that touch a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// The first step.
    pub first: usize,
    /// The last step.
    pub last: usize,
}

impl Lifetime {
    /// Whether the two share a step.
    pub fn overlaps(&self, other: &Lifetime) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// The buffers each step of `p` touches, in order (see the module documentation).
pub fn steps(p: &KernelProgram) -> Vec<BTreeSet<BufId>> {
    let per_function: Vec<BTreeSet<BufId>> =
        p.functions.iter().map(|f| buffers_used(&f.body)).collect();
    let mut out = Vec::with_capacity(p.body.len());
    for s in &p.body {
        match s {
            Stmt::Call { func, args } => {
                let mut step: BTreeSet<BufId> = args.iter().copied().collect();
                if let (Some(f), Some(used)) =
                    (p.function(*func), per_function.get(func.0 as usize))
                {
                    let rename: BTreeMap<BufId, BufId> =
                        f.params.iter().copied().zip(args.iter().copied()).collect();
                    step.extend(used.iter().map(|b| rename.get(b).copied().unwrap_or(*b)));
                }
                out.push(step);
            }
            s => out.push(buffers_used(std::slice::from_ref(s))),
        }
    }
    out
}

/// The lifetime of every buffer some step of `p` touches.
pub fn lifetimes(p: &KernelProgram) -> BTreeMap<BufId, Lifetime> {
    let mut out: BTreeMap<BufId, Lifetime> = BTreeMap::new();
    for (step, used) in steps(p).iter().enumerate() {
        for &b in used {
            out.entry(b)
                .and_modify(|l| l.last = step)
                .or_insert(Lifetime {
                    first: step,
                    last: step,
                });
        }
    }
    out
}
