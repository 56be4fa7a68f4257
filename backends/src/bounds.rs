//! Checks a kernel program before any native code is built (by LLVM or Cranelift), and works
//! out where scratch buffers live and when they are refreshed.
//!
//! Everything the generated code could do wrong is rejected here: unknown buffers or loop
//! variables, stores into inputs, inputs or outputs outside global memory or not row-major, and
//! above all any element access that could fall outside its buffer. Bounds are proven by
//! interval arithmetic over the loop extents (every loop variable `v` of a loop with extent `n`
//! lies in `0..n`), with checked `i64` arithmetic, so the native code can index without run-time
//! checks. The analysis is conservative: an access whose interval leaves its buffer is rejected
//! even if correlations between variables would keep it inside.
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

/// Why a kernel program cannot be compiled to native code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    /// The program is malformed or could access memory outside a buffer.
    #[error("{0}")]
    Invalid(String),
    /// A bug in the analysis.
    #[error("{0}")]
    Internal(String),
}

use std::collections::{BTreeMap, BTreeSet, HashMap};
use tttc_ir::kernel::{
    BufId, BufferKind, Index, KernelProgram, MemorySpace, Schedule, Stmt, Value, VarId,
};

/// Deepest nesting of expressions ([`Value`] and [`Index`] trees) accepted.
pub(crate) const MAX_EXPR_DEPTH: usize = 1000;
/// Deepest nesting of loops accepted.
pub(crate) const MAX_LOOP_DEPTH: usize = 256;
/// Largest buffer accepted, in bytes (keeps every offset and byte count far inside `i64`).
pub(crate) const MAX_BUFFER_BYTES: u64 = 1 << 40;

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
    /// Buffers allocated once per call at the start of the program: global temporaries, and
    /// program-wide copies of scratch buffers.
    pub program_allocs: Vec<BufId>,
    /// For each outermost parallel loop: the scratch buffers its worker allocates (one copy per
    /// worker call).
    pub region_allocs: HashMap<LoopKey, Vec<BufId>>,
    /// For each loop: the scratch buffers reset at the start of each of its iterations.
    pub iteration_locals: HashMap<LoopKey, Vec<BufId>>,
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

struct Walker<'p> {
    p: &'p KernelProgram,
    lens: Vec<u64>,
    /// Loop variables in scope, innermost last, with their largest values.
    scope: Vec<(VarId, i64)>,
    /// Enclosing loops, outermost first.
    loops: Vec<Enclosing>,
    used: BTreeSet<BufId>,
    scratch: BTreeMap<BufId, ScratchUse>,
    refresh: BTreeMap<LoopKey, BTreeSet<BufId>>,
}

/// Whether an iteration of a loop with `schedule` starts with a fresh buffer in `space`.
fn refreshes(schedule: Schedule, space: MemorySpace) -> bool {
    match space {
        MemorySpace::Local => matches!(
            schedule,
            Schedule::Parallel | Schedule::GpuThread | Schedule::GpuBlock
        ),
        MemorySpace::Shared => schedule == Schedule::GpuBlock,
        MemorySpace::Global => false,
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, AnalysisError> {
    Err(AnalysisError::Invalid(msg.into()))
}

/// Checks `p` and computes the allocation plan.
pub(crate) fn analyze(p: &KernelProgram) -> Result<Analysis, AnalysisError> {
    let elem = p.dtype.size_bytes() as u64;
    let mut lens = Vec::with_capacity(p.buffers.len());
    for (i, b) in p.buffers.iter().enumerate() {
        let n = b
            .layout
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .filter(|&n| {
                n.checked_mul(elem)
                    .is_some_and(|bytes| bytes <= MAX_BUFFER_BYTES)
            });
        let Some(n) = n else {
            return invalid(format!(
                "buffer b{i} ({}) with shape {:?} is too large (at most {MAX_BUFFER_BYTES} bytes)",
                b.name, b.layout.shape
            ));
        };
        lens.push(n);
        let io = matches!(b.kind, BufferKind::Input(_) | BufferKind::Output(_));
        if io && b.layout != tttc_ir::kernel::Layout::row_major(&b.layout.shape) {
            return invalid(format!(
                "input/output buffer b{i} ({}) is not row-major",
                b.name
            ));
        }
        match (&b.kind, b.space) {
            (BufferKind::Input(_) | BufferKind::Output(_), MemorySpace::Global) => {}
            (BufferKind::Input(n) | BufferKind::Output(n), space) => {
                return invalid(format!(
                    "buffer b{i} ({n}) is a program input or output but lives in {space:?} memory"
                ))
            }
            (BufferKind::Temp, _) => {}
        }
    }
    if p.buffers.len() > u32::MAX as usize {
        return invalid("too many buffers");
    }
    for (what, list) in [("input", p.inputs()), ("output", p.outputs())] {
        let mut seen = BTreeSet::new();
        for (_, name) in list {
            if !seen.insert(name) {
                return invalid(format!("two program {what}s are named {name:?}"));
            }
        }
    }
    let mut w = Walker {
        p,
        lens,
        scope: Vec::new(),
        loops: Vec::new(),
        used: BTreeSet::new(),
        scratch: BTreeMap::new(),
        refresh: BTreeMap::new(),
    };
    w.stmts(&p.body)?;

    let mut a = Analysis {
        lens: std::mem::take(&mut w.lens),
        ..Analysis::default()
    };
    for &id in &w.used {
        let b = &p.buffers[id.0 as usize];
        match (&b.kind, b.space) {
            (BufferKind::Input(_) | BufferKind::Output(_), _) => {}
            (BufferKind::Temp, MemorySpace::Global) => a.program_allocs.push(id),
            (BufferKind::Temp, MemorySpace::Local | MemorySpace::Shared) => {
                let Some(u) = w.scratch.get(&id) else {
                    return Err(AnalysisError::Internal(format!(
                        "no uses recorded for b{}",
                        id.0
                    )));
                };
                if u.regions.is_empty() || !u.refreshed {
                    // Serial uses only (refreshed as the oracle does), or never refreshed: one
                    // program-wide copy, like a global temporary.
                    a.program_allocs.push(id);
                } else if !u.unguarded_parallel && !u.unguarded_serial {
                    // Every use is behind a refresh within its own copy's scope.
                    for &top in &u.regions {
                        a.region_allocs.entry(top).or_default().push(id);
                    }
                    if u.outside_parallel {
                        a.program_allocs.push(id);
                    }
                } else {
                    return invalid(format!(
                        "{:?} buffer b{} ({}) would carry values between the threads of a \
                         parallel loop (it is used inside one without being fresh for each of \
                         its iterations, and refreshed elsewhere)",
                        b.space, id.0, b.name
                    ));
                }
            }
        }
    }
    for (key, bufs) in w.refresh {
        a.iteration_locals.insert(key, bufs.into_iter().collect());
    }
    Ok(a)
}

impl Walker<'_> {
    fn stmts(&mut self, body: &[Stmt]) -> Result<(), AnalysisError> {
        for s in body {
            self.stmt(s)?;
        }
        Ok(())
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), AnalysisError> {
        match s {
            Stmt::Loop {
                var,
                extent,
                schedule,
                body,
            } => {
                if self.scope.len() >= MAX_LOOP_DEPTH {
                    return invalid(format!("loops nested deeper than {MAX_LOOP_DEPTH}"));
                }
                if var.0 >= self.p.vars {
                    return invalid(format!(
                        "loop variable i{} is not below the program's {} variable(s)",
                        var.0, self.p.vars
                    ));
                }
                if self.scope.iter().any(|(v, _)| v == var) {
                    return invalid(format!(
                        "loop variable i{} is bound again inside its own loop",
                        var.0
                    ));
                }
                let Ok(n) = i64::try_from(*extent) else {
                    return invalid(format!("loop i{} has extent {extent}, beyond i64", var.0));
                };
                if n == 0 {
                    // Never runs: nothing in it is executed, so nothing needs checking.
                    return Ok(());
                }
                self.scope.push((*var, n - 1));
                self.loops.push(Enclosing {
                    key: loop_key(s),
                    schedule: *schedule,
                });
                let r = self.stmts(body);
                self.loops.pop();
                self.scope.pop();
                r
            }
            Stmt::Store { buf, index, value } => {
                let b = self.access(*buf, index, "store to")?;
                if let BufferKind::Input(n) = &b.kind {
                    return invalid(format!("store into program input b{} ({n})", buf.0));
                }
                self.value(value, 0)
            }
            // No memory access; CPU backends run statements in order.
            Stmt::Barrier => Ok(()),
        }
    }

    /// Checks one access of `buf` at `index` and records the use.
    fn access(
        &mut self,
        buf: BufId,
        index: &Index,
        what: &str,
    ) -> Result<&tttc_ir::kernel::Buffer, AnalysisError> {
        let p = self.p;
        let Some(b) = p.buffer(buf) else {
            return invalid(format!("{what} unknown buffer b{}", buf.0));
        };
        let len = self.lens[buf.0 as usize] as i64;
        let (lo, hi) = self.range(index, 0)?;
        if lo < 0 || hi >= len {
            return invalid(format!(
                "{what} b{} ({}) at index {index}: the index ranges over {lo}..={hi}, outside \
                 the buffer's {len} element(s)",
                buf.0, b.name
            ));
        }
        self.used.insert(buf);
        if b.kind == BufferKind::Temp && b.space != MemorySpace::Global {
            let space = b.space;
            let top = self
                .loops
                .iter()
                .position(|l| cpu_schedule(l.schedule) == CpuSchedule::Parallel);
            let refreshing: Vec<usize> = (0..self.loops.len())
                .filter(|&i| refreshes(self.loops[i].schedule, space))
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
        Ok(b)
    }

    fn value(&mut self, v: &Value, depth: usize) -> Result<(), AnalysisError> {
        if depth > MAX_EXPR_DEPTH {
            return invalid(format!("expression nested deeper than {MAX_EXPR_DEPTH}"));
        }
        match v {
            Value::Load { buf, index } => self.access(*buf, index, "load from").map(|_| ()),
            Value::Const(_) => Ok(()),
            Value::FromIndex(i) => self.range(i, depth + 1).map(|_| ()),
            Value::Unary(_, x) => self.value(x, depth + 1),
            Value::Binary(_, a, b) => {
                self.value(a, depth + 1)?;
                self.value(b, depth + 1)
            }
        }
    }

    /// The range `lo..=hi` of `index` over every iteration in scope; fails on unbound variables,
    /// non-positive divisors and anything that could overflow `i64`.
    fn range(&self, index: &Index, depth: usize) -> Result<(i64, i64), AnalysisError> {
        if depth > MAX_EXPR_DEPTH {
            return invalid(format!("index nested deeper than {MAX_EXPR_DEPTH}"));
        }
        let overflow = || AnalysisError::Invalid(format!("index {index} may overflow i64"));
        Ok(match index {
            Index::Const(c) => (*c, *c),
            Index::Var(v) => match self.scope.iter().rev().find(|(var, _)| var == v) {
                Some(&(_, hi)) => (0, hi),
                None => return invalid(format!("loop variable i{} used outside its loop", v.0)),
            },
            Index::Add(a, b) => {
                let (al, ah) = self.range(a, depth + 1)?;
                let (bl, bh) = self.range(b, depth + 1)?;
                (
                    al.checked_add(bl).ok_or_else(overflow)?,
                    ah.checked_add(bh).ok_or_else(overflow)?,
                )
            }
            Index::Mul(a, c) => {
                let (l, h) = self.range(a, depth + 1)?;
                let x = l.checked_mul(*c).ok_or_else(overflow)?;
                let y = h.checked_mul(*c).ok_or_else(overflow)?;
                (x.min(y), x.max(y))
            }
            Index::Div(a, c) => {
                if *c <= 0 {
                    return invalid(format!("index {index} divides by {c}"));
                }
                let (l, h) = self.range(a, depth + 1)?;
                // Truncating division by a positive constant is monotone.
                (l / c, h / c)
            }
            Index::Rem(a, c) => {
                if *c <= 0 {
                    return invalid(format!("index {index} takes a remainder by {c}"));
                }
                let (l, h) = self.range(a, depth + 1)?;
                if l >= 0 {
                    if h < *c {
                        (l, h)
                    } else {
                        (0, c - 1)
                    }
                } else if h <= 0 {
                    if l > -c {
                        (l, h)
                    } else {
                        (-(c - 1), 0)
                    }
                } else {
                    (-(c - 1), c - 1)
                }
            }
        })
    }
}

/// Buffers read or written anywhere in `body` (outside loops that never run), in id order.
pub(crate) fn buffers_used(body: &[Stmt]) -> BTreeSet<BufId> {
    fn value(v: &Value, out: &mut BTreeSet<BufId>) {
        match v {
            Value::Load { buf, .. } => {
                out.insert(*buf);
            }
            Value::Const(_) | Value::FromIndex(_) => {}
            Value::Unary(_, x) => value(x, out),
            Value::Binary(_, a, b) => {
                value(a, out);
                value(b, out);
            }
        }
    }
    fn stmts(body: &[Stmt], out: &mut BTreeSet<BufId>) {
        for s in body {
            match s {
                Stmt::Loop { extent: 0, .. } => {}
                Stmt::Loop { body, .. } => stmts(body, out),
                Stmt::Store { buf, value: v, .. } => {
                    out.insert(*buf);
                    value(v, out);
                }
                Stmt::Barrier => {}
            }
        }
    }
    let mut out = BTreeSet::new();
    stmts(body, &mut out);
    out
}

/// Loop variables mentioned anywhere in `body` (outside loops that never run), in id order.
pub(crate) fn vars_used(body: &[Stmt]) -> BTreeSet<VarId> {
    fn index(i: &Index, out: &mut BTreeSet<VarId>) {
        match i {
            Index::Const(_) => {}
            Index::Var(v) => {
                out.insert(*v);
            }
            Index::Add(a, b) => {
                index(a, out);
                index(b, out);
            }
            Index::Mul(a, _) | Index::Div(a, _) | Index::Rem(a, _) => index(a, out),
        }
    }
    fn value(v: &Value, out: &mut BTreeSet<VarId>) {
        match v {
            Value::Load { index: i, .. } | Value::FromIndex(i) => index(i, out),
            Value::Const(_) => {}
            Value::Unary(_, x) => value(x, out),
            Value::Binary(_, a, b) => {
                value(a, out);
                value(b, out);
            }
        }
    }
    fn stmts(body: &[Stmt], out: &mut BTreeSet<VarId>) {
        for s in body {
            match s {
                Stmt::Loop { extent: 0, .. } => {}
                Stmt::Loop { body, .. } => stmts(body, out),
                Stmt::Store {
                    index: i, value: v, ..
                } => {
                    index(i, out);
                    value(v, out);
                }
                Stmt::Barrier => {}
            }
        }
    }
    let mut out = BTreeSet::new();
    stmts(body, &mut out);
    out
}
