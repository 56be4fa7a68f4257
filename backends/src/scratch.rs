//! Where the native CPU backends (LLVM, Cranelift) put scratch buffers, and which loops they
//! run on several threads: decided once here from the kernel program's schedules and memory
//! spaces, and read by the code generators.
//!
//! Scratch buffers follow the kernel interpreter (`kernel_interp`, the oracle): a `Local`
//! buffer is fresh (reset) at the start of every iteration of every `Parallel`, `GpuThread` or
//! `GpuBlock` loop that uses it, a `Shared` buffer at every iteration of every `GpuBlock` loop
//! that uses it, and otherwise it lives as long as the program. On the CPU, a scratch buffer
//! used inside a parallel loop (`Parallel`/`GpuBlock`, run on several threads) gets one copy per
//! worker when every such use is behind a refresh inside that loop (so no value can pass between
//! iterations), and a single program-wide copy when it is never refreshed at all (it then
//! behaves like a global temporary). Anything else would need values to flow between threads
//! and is refused.

use crate::bounds::AnalysisError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tttc_ir::kernel::{BufId, BufferKind, KernelProgram, MemorySpace, Schedule, Stmt};

/// How a loop runs on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CpuSchedule {
    /// Iterations in order on the current thread.
    Serial,
    /// Iterations spread over threads (outlined into a worker when not nested in another).
    Parallel,
}

/// The CPU meaning of a schedule: `Parallel` and `GpuBlock` spread iterations over threads;
/// `Serial`, `Vector`, `Unroll` and `GpuThread` run in order (LLVM's own vectorizer and unroller
/// decide the rest).
pub(crate) fn cpu_schedule(s: Schedule) -> CpuSchedule {
    match s {
        Schedule::Parallel | Schedule::GpuBlock => CpuSchedule::Parallel,
        Schedule::Serial | Schedule::Vector(_) | Schedule::Unroll(_) | Schedule::GpuThread => {
            CpuSchedule::Serial
        }
    }
}

/// Identity of a loop statement (its address; the program is borrowed for the whole build).
pub(crate) type LoopKey = usize;

/// The key of loop statement `s`.
pub(crate) fn loop_key(s: &Stmt) -> LoopKey {
    s as *const Stmt as usize
}

/// What the code generator needs to know beyond the program itself.
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    /// Number of elements of every buffer.
    pub lens: Vec<u64>,
    /// Buffers allocated once per call at the start of the program: global temporaries the
    /// memory plan does not place, and program-wide copies of scratch buffers.
    pub program_allocs: Vec<BufId>,
    /// Length of the memory plan's arena in elements (0: no arena), allocated once per call at
    /// the start of the program.
    pub arena_len: u64,
    /// The global temporaries in the arena, with their element offsets
    /// ([`tttc_ir::kernel::KernelProgram::memory`]).
    pub arena: Vec<(BufId, u64)>,
    /// For each outermost parallel loop: the scratch buffers its worker allocates (one copy per
    /// worker call).
    pub region_allocs: HashMap<LoopKey, Vec<BufId>>,
    /// For each loop: the scratch buffers reset at the start of each of its iterations.
    pub iteration_locals: HashMap<LoopKey, Vec<BufId>>,
}

/// Checks `p` (verifier and bounds proof, [`crate::bounds::prove`]) and plans where its
/// buffers live.
pub(crate) fn analyze(p: &KernelProgram) -> Result<Analysis, AnalysisError> {
    let lens = crate::bounds::prove(p)?;
    let mut u = Uses {
        p,
        loops: Vec::new(),
        used: BTreeSet::new(),
        scratch: BTreeMap::new(),
        refresh: BTreeMap::new(),
    };
    // Functions' bodies as if at the top level, where their calls are (their loops are keyed by
    // address, so each is planned once for every call).
    for f in &p.functions {
        u.stmts(&f.body);
    }
    u.stmts(&p.body);
    let mut a = Analysis {
        lens,
        ..Analysis::default()
    };
    for &id in &u.used {
        let b = &p.buffers[id.0 as usize];
        match (&b.kind, b.space) {
            (BufferKind::Input(_) | BufferKind::Output(_), _) => {}
            (BufferKind::Temp, MemorySpace::Global) => {
                match p.memory.as_ref().and_then(|m| m.offset_of(id)) {
                    Some(offset) => a.arena.push((id, offset)),
                    None => a.program_allocs.push(id),
                }
            }
            (BufferKind::Temp, MemorySpace::Local | MemorySpace::Shared) => {
                let Some(s) = u.scratch.get(&id) else {
                    return Err(AnalysisError::Internal(format!(
                        "no uses recorded for b{}",
                        id.0
                    )));
                };
                if s.regions.is_empty() || !s.refreshed {
                    // Serial uses only (refreshed as the oracle does), or never refreshed: one
                    // program-wide copy, like a global temporary.
                    a.program_allocs.push(id);
                } else if !s.unguarded_parallel && !s.unguarded_serial {
                    // Every use is behind a refresh within its own copy's scope.
                    for &top in &s.regions {
                        a.region_allocs.entry(top).or_default().push(id);
                    }
                    if s.outside_parallel {
                        a.program_allocs.push(id);
                    }
                } else {
                    return Err(AnalysisError::Invalid(format!(
                        "{:?} buffer b{} ({}) would carry values between the threads of a \
                         parallel loop (it is used inside one without being fresh for each of \
                         its iterations, and refreshed elsewhere)",
                        b.space, id.0, b.name
                    )));
                }
            }
        }
    }
    if !a.arena.is_empty() {
        a.arena_len = p.memory.as_ref().map_or(0, |m| m.arena_len);
    }
    for (key, bufs) in u.refresh {
        a.iteration_locals.insert(key, bufs.into_iter().collect());
    }
    Ok(a)
}

/// How a scratch buffer is used, over all its uses.
#[derive(Default)]
struct ScratchUse {
    /// Some use is inside no parallel loop.
    outside_parallel: bool,
    /// Some use is inside a refreshing loop.
    refreshed: bool,
    /// Some use inside a parallel loop is not behind a refresh inside that loop.
    unguarded_parallel: bool,
    /// Some use outside parallel loops is not behind any refresh.
    unguarded_serial: bool,
    /// The outermost parallel loops enclosing uses.
    regions: BTreeSet<LoopKey>,
}

/// One enclosing loop, as far as scratch buffers care.
#[derive(Clone, Copy)]
struct Enclosing {
    key: LoopKey,
    schedule: Schedule,
}

/// The buffers' uses, by enclosing loops.
struct Uses<'p> {
    p: &'p KernelProgram,
    /// Enclosing loops, outermost first.
    loops: Vec<Enclosing>,
    used: BTreeSet<BufId>,
    scratch: BTreeMap<BufId, ScratchUse>,
    refresh: BTreeMap<LoopKey, BTreeSet<BufId>>,
}

impl Uses<'_> {
    fn stmts(&mut self, body: &[Stmt]) {
        for s in body {
            match s {
                // Never runs.
                Stmt::Loop { extent: 0, .. } => {}
                Stmt::Loop { schedule, body, .. } => {
                    self.loops.push(Enclosing {
                        key: loop_key(s),
                        schedule: *schedule,
                    });
                    self.stmts(body);
                    self.loops.pop();
                }
                Stmt::Store { buf, index, value } => {
                    self.note(*buf);
                    value.for_each_load(&mut |b, _| self.note(b));
                    index.for_each_load(&mut |b, _| self.note(b));
                }
                Stmt::Call { args, .. } => args.iter().for_each(|&b| self.note(b)),
                Stmt::Barrier => {}
                Stmt::Gemm(g) => {
                    for v in [&g.a, &g.b, &g.c] {
                        self.note(v.buf);
                    }
                }
            }
        }
    }

    /// Records one use of `buf` under the enclosing loops.
    fn note(&mut self, buf: BufId) {
        self.used.insert(buf);
        let b = &self.p.buffers[buf.0 as usize];
        if b.kind != BufferKind::Temp || b.space == MemorySpace::Global {
            return;
        }
        let space = b.space;
        let top = self
            .loops
            .iter()
            .position(|l| cpu_schedule(l.schedule) == CpuSchedule::Parallel);
        let refreshing: Vec<usize> = (0..self.loops.len())
            .filter(|&i| space.fresh_each_iteration_of(self.loops[i].schedule))
            .collect();
        for &i in &refreshing {
            self.refresh
                .entry(self.loops[i].key)
                .or_default()
                .insert(buf);
        }
        let u = self.scratch.entry(buf).or_default();
        u.refreshed |= !refreshing.is_empty();
        match top {
            None => {
                u.outside_parallel = true;
                u.unguarded_serial |= refreshing.is_empty();
            }
            Some(t) => {
                u.regions.insert(self.loops[t].key);
                u.unguarded_parallel |= !refreshing.iter().any(|&i| i >= t);
            }
        }
    }
}
