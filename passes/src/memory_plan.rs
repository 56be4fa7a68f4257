//! The memory plan: every `Global` temporary of a kernel program gets an offset in one arena,
//! so that temporaries whose lifetimes do not overlap share memory — across layers too: the
//! temporaries of an outlined layer are its call's arguments, alive only at that call, so the
//! next layer's call reuses them.
//!
//! Lifetimes are [`tttc_ir::kernel::lifetimes`] over the program's steps (a top-level
//! statement, a loop as a whole; a call is one step per statement of its function's body). So
//! the temporaries within one layer share memory where their lifetimes inside the layer are
//! disjoint, and two arguments of one call may overlap in the arena (LLVM then leaves
//! `noalias` off those parameters: [`tttc_ir::kernel::aliased_params`]). Placement is
//! greedy by size: the largest buffer first, each at the start of the smallest gap (best fit)
//! between the already placed buffers whose lifetimes overlap its own, or after the last of
//! them. Offsets and sizes are rounded up to [`ARENA_ALIGN_BYTES`]. The plan is recorded in the
//! IR ([`KernelProgram::memory`]) and checked by the kernel verifier.
//!
//! CPU targets only (the GPU path allocates its buffers as before). `TTTC_NO_MEMORY_PLAN=1` in
//! the environment turns it off ([`MemoryPlanner::from_env`]) for comparisons.

use crate::pipeline::KernelPass;
use crate::PassError;
use tttc_ir::kernel::{
    lifetimes, BufId, BufferKind, KernelProgram, Lifetime, MemoryPlan, MemorySpace, Placement,
};

/// Alignment of every buffer in the arena, in bytes (a cache line; enough for any vector).
pub const ARENA_ALIGN_BYTES: u64 = 64;

/// The environment variable that turns planning off in [`MemoryPlanner::from_env`].
pub const DISABLE_ENV: &str = "TTTC_NO_MEMORY_PLAN";

/// The memory-planning pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlanner {
    /// Whether it plans (off: the program passes through unchanged).
    pub enabled: bool,
}

impl Default for MemoryPlanner {
    fn default() -> Self {
        MemoryPlanner { enabled: true }
    }
}

impl MemoryPlanner {
    /// On, unless [`DISABLE_ENV`] is set to something other than `0` or the empty string.
    pub fn from_env() -> MemoryPlanner {
        let off = crate::pipeline::switched_off(DISABLE_ENV);
        MemoryPlanner { enabled: !off }
    }
}

impl KernelPass for MemoryPlanner {
    fn name(&self) -> &'static str {
        "memory_plan"
    }

    fn run(&self, program: &KernelProgram) -> Result<KernelProgram, PassError> {
        let mut out = program.clone();
        if self.enabled {
            out.memory = Some(plan_memory(program));
        }
        Ok(out)
    }
}

/// The plan for `p`'s `Global` temporaries that some step touches (see the module doc).
pub fn plan_memory(p: &KernelProgram) -> MemoryPlan {
    let align = (ARENA_ALIGN_BYTES / p.dtype.size_bytes().max(1) as u64).max(1);
    let round = |n: u64| n.div_ceil(align) * align;
    let lives = lifetimes(p);
    let mut todo: Vec<(u64, BufId, Lifetime)> = lives
        .iter()
        .filter_map(|(&b, &life)| {
            let buf = p.buffer(b)?;
            (buf.space == MemorySpace::Global && buf.kind == BufferKind::Temp)
                .then(|| (round(buf.len() as u64), b, life))
        })
        .collect();
    // Largest first; ties by buffer for a deterministic plan.
    todo.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    // Placed so far: (offset, size, lifetime).
    let mut placed: Vec<(u64, u64, Lifetime)> = Vec::with_capacity(todo.len());
    let mut placements = Vec::with_capacity(todo.len());
    let mut arena_len = 0;
    for (size, buf, life) in todo {
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|(_, _, l)| l.overlaps(&life))
            .map(|&(o, s, _)| (o, o + s))
            .collect();
        busy.sort_unstable();
        let mut best: Option<(u64, u64)> = None; // (gap size, offset)
        let mut at = 0;
        for &(start, end) in &busy {
            if start > at && start - at >= size && best.is_none_or(|(g, _)| start - at < g) {
                best = Some((start - at, at));
            }
            at = at.max(end);
        }
        let offset = best.map_or(at, |(_, o)| o);
        placed.push((offset, size, life));
        placements.push(Placement { buf, offset });
        arena_len = arena_len.max(offset + size);
    }
    placements.sort_by_key(|pl| pl.buf);
    MemoryPlan {
        arena_len,
        placements,
    }
}

#[cfg(test)]
mod tests;
