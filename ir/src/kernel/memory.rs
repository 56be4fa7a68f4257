//! The memory plan of a kernel program: where its `Global` temporaries live in one arena, so
//! that temporaries whose lifetimes do not overlap share memory (across layers too).
//!
//! **Time.** A program runs as a sequence of *steps*: each top-level statement of the body is
//! one step — a loop as a whole, whatever it does inside — and a [`Stmt::Call`] is one step per
//! top-level statement of its function's body, each touching what that statement touches with
//! the parameters renamed to the call's arguments. The steps of `p` are therefore exactly the
//! top-level statements of [`super::inline_calls`]`(p)`, so a plan that holds for `p` holds for
//! it, and the temporaries of one layer (a call's arguments) share memory where their lifetimes
//! inside the layer are disjoint. Two arguments of one call may thus overlap in the arena: a
//! code generator that treats a function's parameters as pairwise disjoint (LLVM's `noalias`)
//! must drop that for the parameters [`aliased_params`] names.
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
    let mut out = Vec::with_capacity(p.body.len());
    for s in &p.body {
        match s {
            Stmt::Call { func, args } => {
                let Some(f) = p.function(*func) else {
                    // A call of no function (the verifier rejects it): one step touching its
                    // arguments.
                    out.push(args.iter().copied().collect());
                    continue;
                };
                let rename: BTreeMap<BufId, BufId> =
                    f.params.iter().copied().zip(args.iter().copied()).collect();
                for t in &f.body {
                    out.push(
                        buffers_used(std::slice::from_ref(t))
                            .into_iter()
                            .map(|b| rename.get(&b).copied().unwrap_or(b))
                            .collect(),
                    );
                }
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

/// For each function of `p`, the indices of its parameters that share arena memory with
/// another parameter in some call (their elements overlap in [`KernelProgram::memory`]'s
/// arena), sorted; all empty without a plan. The other parameters are disjoint from every other
/// parameter in every call.
pub fn aliased_params(p: &KernelProgram) -> Vec<Vec<usize>> {
    let mut out: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); p.functions.len()];
    let Some(plan) = &p.memory else {
        return vec![Vec::new(); p.functions.len()];
    };
    for s in &p.body {
        let Stmt::Call { func, args } = s else {
            continue;
        };
        let Some(marks) = out.get_mut(func.0 as usize) else {
            continue;
        };
        // (start, end, parameter index) of the placed arguments.
        let spans: Vec<(u64, u64, usize)> = args
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| {
                let start = plan.offset_of(b)?;
                let len = p.buffer(b)?.len() as u64;
                (len > 0).then_some((start, start + len, i))
            })
            .collect();
        for (x, &(start, end, i)) in spans.iter().enumerate() {
            for &(s2, e2, j) in &spans[x + 1..] {
                if start < e2 && s2 < end {
                    marks.insert(i);
                    marks.insert(j);
                }
            }
        }
    }
    out.into_iter().map(|m| m.into_iter().collect()).collect()
}
