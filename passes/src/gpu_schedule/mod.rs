//! The GPU mapping of a kernel program: which loops run as GPU blocks and threads, where the
//! block-private scratch lives, and where the threads of a block must wait for each other.
//!
//! The result is what `tttc_backends::ptx` compiles and what
//! `tttc_backends::kernel_interp::run_kernel_program_gpu` emulates (with race detection), in
//! the form documented there:
//!
//! - **Launches.** Every top-level statement becomes one launch: a [`Schedule::GpuBlock`]
//!   loop. A `Parallel` loop (the `ttt` scan over batch × heads) keeps its variable as the block
//!   index: one block per slice, which scans the mini-batches with the fast weights in shared
//!   memory. Any other loop nest is searched for independent loops (see below); they are
//!   collapsed and split into blocks (outer) and threads (inner, about [`GpuConfig::threads`]
//!   iterations); a nest with none runs as one block.
//! - **Threads.** Inside a block, a loop nest whose loops include independent ones (by the
//!   affine test of [`affine`]: matmul rows and columns, elementwise loops, the rows of a
//!   reduction) becomes one [`Schedule::GpuThread`] loop over those loops collapsed (iteration
//!   `i` on thread `i % threads`), the other loops of the nest running in order inside it.
//!   Independent loops may be hoisted out of a contraction (a matmul's `m, k, n` nest becomes
//!   threads over `m × n`, each summing over `k` in the original order), so results do not
//!   change. A nest with no independent loop (the scan's loop over mini-batches) is run by
//!   every thread in step, its body mapped the same way; a store alone becomes a one-iteration
//!   thread loop.
//! - **Barriers.** Between two statements of a block, a [`Stmt::Barrier`] is inserted when the
//!   later one reads or writes a buffer that one since the last barrier wrote, or writes one it
//!   read (buffer granularity; see [`barriers`]), and at the end of a loop's body when its tail
//!   conflicts with its head.
//! - **Memory.** `Local` scratch of a block (the scan's fast weights and temporaries) becomes
//!   `Shared`, densest-used first, while the block's shared memory stays within
//!   [`GpuConfig::shared_bytes`]; the rest becomes a `Global` temporary with one slice per
//!   block (indexed by the block variable).
//!
//! The mapping never changes what an element is computed from, nor the order of any sum.

mod affine;
mod barriers;

use affine::{accesses, independent};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tttc_ir::kernel::{
    verify, Access, BufId, BufferKind, Index, KernelProgram, Layout, MemorySpace, Schedule, Stmt,
    VarId, VerifyError,
};

/// Threads per block used unless configured otherwise.
pub const DEFAULT_THREADS: usize = 256;
/// Static shared memory per block without opting in to more (48 KiB on every NVIDIA GPU since
/// Fermi).
pub const DEFAULT_SHARED_BYTES: usize = 48 << 10;

/// How to map a program onto a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuConfig {
    /// Threads per block (a multiple of 32, at most 1024).
    pub threads: usize,
    /// Shared memory one block may use, in bytes.
    pub shared_bytes: usize,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            threads: DEFAULT_THREADS,
            shared_bytes: DEFAULT_SHARED_BYTES,
        }
    }
}

/// Why a program could not be mapped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GpuScheduleError {
    /// The configuration is unusable.
    #[error("bad GPU configuration: {0}")]
    Config(String),
    /// The program is not a plain kernel program (already GPU-scheduled, or ill-formed).
    #[error("cannot map this kernel program to a GPU: {0}")]
    Unsupported(String),
    /// The program given, or (a bug) the mapped program, breaks a rule of the kernel IR.
    #[error("ill-formed kernel program")]
    Malformed(#[from] VerifyError),
}

/// Maps `p` onto a GPU (see the module documentation). Both `p` and the result are checked with
/// the kernel IR's verifier ([`tttc_ir::kernel::verify`]).
pub fn gpu_schedule(p: &KernelProgram, cfg: &GpuConfig) -> Result<KernelProgram, GpuScheduleError> {
    if cfg.threads == 0 || cfg.threads > 1024 || !cfg.threads.is_multiple_of(32) {
        return Err(GpuScheduleError::Config(format!(
            "{} threads per block (need a multiple of 32, at most 1024)",
            cfg.threads
        )));
    }
    verify(p)?;
    // Kernel functions (CPU outlining) are not kept on the GPU: every statement is mapped at
    // the top level.
    let inlined = tttc_ir::kernel::inline_calls(p);
    let p = &inlined;
    // GPUs run loops only: matrix products become their reference loop nests.
    let expanded = tttc_ir::kernel::expand_gemm(p);
    let p = &expanded;
    if has_gpu_schedule(&p.body) {
        return Err(GpuScheduleError::Unsupported(
            "it already has GPU schedules or barriers".into(),
        ));
    }
    let mut m = Mapper {
        vars: p.vars,
        threads: cfg.threads,
    };
    let mut out = p.clone();
    out.body = Vec::new();
    let mut launches: Vec<(VarId, usize, bool)> = Vec::new();
    for s in &p.body {
        for (launch, from_parallel) in m.launches(s)? {
            if let Stmt::Loop { var, extent, .. } = &launch {
                launches.push((*var, *extent, from_parallel));
            }
            out.body.push(launch);
        }
    }
    out.vars = m.vars;
    place_scratch(&mut out, &launches, cfg)?;
    for s in &mut out.body {
        if let Stmt::Loop { var, body, .. } = s {
            let block = BTreeSet::from([*var]);
            let (b, _) =
                barriers::insert(std::mem::take(body), barriers::Accesses::default(), &block);
            *body = b;
        }
    }
    verify(&out)?;
    Ok(out)
}

fn has_gpu_schedule(body: &[Stmt]) -> bool {
    let mut found = false;
    for s in body {
        s.walk(&mut |s| {
            found |= match s {
                Stmt::Barrier => true,
                Stmt::Loop { schedule, .. } => {
                    matches!(schedule, Schedule::GpuBlock | Schedule::GpuThread)
                }
                Stmt::Store { .. } | Stmt::Gemm(_) | Stmt::Call { .. } => false,
            };
            !found
        });
    }
    found
}

struct Mapper {
    vars: u32,
    threads: usize,
}

/// A perfect nest found in a statement: its loops (outermost first) and the innermost body.
struct Nest<'a> {
    loops: Vec<(VarId, usize, Schedule)>,
    body: &'a [Stmt],
}

fn nest(s: &Stmt) -> Option<Nest<'_>> {
    let Stmt::Loop {
        var,
        extent,
        schedule,
        body,
    } = s
    else {
        return None;
    };
    let mut n = Nest {
        loops: vec![(*var, *extent, *schedule)],
        body,
    };
    while let [Stmt::Loop {
        var,
        extent,
        schedule,
        body,
    }] = n.body
    {
        n.loops.push((*var, *extent, *schedule));
        n.body = body;
    }
    Some(n)
}

impl Mapper {
    fn var(&mut self) -> Result<VarId, GpuScheduleError> {
        let v = VarId(self.vars);
        self.vars = self
            .vars
            .checked_add(1)
            .ok_or_else(|| GpuScheduleError::Unsupported("too many loop variables".into()))?;
        Ok(v)
    }

    /// The launches for top-level statement `s` (none for empty loops and barriers), each with
    /// whether its blocks are the iterations of a `Parallel` loop.
    fn launches(&mut self, s: &Stmt) -> Result<Vec<(Stmt, bool)>, GpuScheduleError> {
        if let Some(pieces) = self.fission(s, &BTreeSet::new()) {
            let mut out = Vec::new();
            for p in &pieces {
                out.extend(self.launches(p)?);
            }
            return Ok(out);
        }
        Ok(self.launch(s)?.into_iter().collect())
    }

    /// The launch for top-level statement `s` (none for empty loops and barriers), and whether
    /// its blocks are the iterations of a `Parallel` loop.
    fn launch(&mut self, s: &Stmt) -> Result<Option<(Stmt, bool)>, GpuScheduleError> {
        match s {
            Stmt::Barrier | Stmt::Loop { extent: 0, .. } => Ok(None),
            Stmt::Gemm(_) => Err(GpuScheduleError::Unsupported(
                "a gemm (expand it into loops first)".into(),
            )),
            Stmt::Call { .. } => Err(GpuScheduleError::Unsupported(
                "a call (kernel functions are inlined first)".into(),
            )),
            Stmt::Loop {
                var,
                extent,
                schedule: Schedule::Parallel,
                body,
            } => {
                let fixed = BTreeSet::from([*var]);
                let body = self.block(body, &fixed)?;
                Ok(Some((
                    gpu_loop(*var, *extent, Schedule::GpuBlock, body),
                    true,
                )))
            }
            s => {
                let fixed = BTreeSet::new();
                if let Some((n, par)) = self.parallel_nest(s, &fixed) {
                    // Threads take the innermost independent loops, up to about a block's worth.
                    let mut split = par.len();
                    let mut count = 1usize;
                    while split > 0 && count < self.threads {
                        split -= 1;
                        count = count.saturating_mul(par[split].1);
                    }
                    let (outer, inner) = par.split_at(split.min(par.len().saturating_sub(1)));
                    let bv = self.var()?;
                    let tv = self.var()?;
                    let mut subst = collapse(bv, outer);
                    subst.extend(collapse(tv, inner));
                    let rest = rebuild(&n, &par, &subst);
                    let thread = gpu_loop(tv, product(inner), Schedule::GpuThread, rest);
                    let launch = gpu_loop(bv, product(outer), Schedule::GpuBlock, vec![thread]);
                    return Ok(Some((launch, false)));
                }
                let bv = self.var()?;
                let body = self.block(std::slice::from_ref(s), &BTreeSet::from([bv]))?;
                Ok(Some((gpu_loop(bv, 1, Schedule::GpuBlock, body), false)))
            }
        }
    }

    /// The collective statements of a block for `body`; `fixed` are the variables every thread
    /// shares.
    fn block(
        &mut self,
        body: &[Stmt],
        fixed: &BTreeSet<VarId>,
    ) -> Result<Vec<Stmt>, GpuScheduleError> {
        let mut out = Vec::new();
        for s in body {
            match s {
                Stmt::Barrier | Stmt::Loop { extent: 0, .. } => {}
                Stmt::Gemm(_) => {
                    return Err(GpuScheduleError::Unsupported(
                        "a gemm (expand it into loops first)".into(),
                    ))
                }
                Stmt::Call { .. } => {
                    return Err(GpuScheduleError::Unsupported(
                        "a call (kernel functions are inlined first)".into(),
                    ))
                }
                Stmt::Store { .. } => {
                    let v = self.var()?;
                    out.push(gpu_loop(v, 1, Schedule::GpuThread, vec![s.clone()]));
                }
                Stmt::Loop {
                    var, extent, body, ..
                } => {
                    if let Some(pieces) = self.fission(s, fixed) {
                        out.extend(self.block(&pieces, fixed)?);
                    } else if let Some((n, par)) = self.parallel_nest(s, fixed) {
                        let tv = self.var()?;
                        let subst = collapse(tv, &par);
                        let rest = rebuild(&n, &par, &subst);
                        out.push(gpu_loop(tv, product(&par), Schedule::GpuThread, rest));
                    } else {
                        let mut inner = fixed.clone();
                        inner.insert(*var);
                        let body = self.block(body, &inner)?;
                        out.push(gpu_loop(*var, *extent, Schedule::Serial, body));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Loop fission, when it gives more threads: a nest whose loops are all independent (or
    /// run once) around several statements becomes one nest per statement. Legal because the
    /// iterations are independent: the only dependences are between statements of the same
    /// iteration, and all of one statement still runs before the next (a barrier between them
    /// when needed). Each piece may then find independent loops inside its statement (a
    /// matmul's zero-initialisation and accumulation over rows become two nests over rows ×
    /// columns).
    fn fission(&self, s: &Stmt, fixed: &BTreeSet<VarId>) -> Option<Vec<Stmt>> {
        let (n, par) = self.parallel_nest(s, fixed)?;
        if n.body.len() < 2
            || n.loops
                .iter()
                .any(|&(v, e, _)| e > 1 && !par.iter().any(|p| p.0 == v))
        {
            return None;
        }
        let wrap = |stmt: &Stmt| {
            let mut body = vec![stmt.clone()];
            for &(v, e, sched) in n.loops.iter().rev() {
                body = vec![gpu_loop(v, e, sched, body)];
            }
            body.pop()
        };
        let pieces: Vec<Stmt> = n.body.iter().filter_map(wrap).collect();
        let before = product(&par);
        let better = pieces.iter().any(|p| {
            self.parallel_nest(p, fixed)
                .is_some_and(|(_, q)| product(&q) > before)
        });
        better.then_some(pieces)
    }

    /// The perfect nest of `s` and its largest jointly independent set of loops (greedily,
    /// outermost first), when there is one.
    fn parallel_nest<'a>(
        &self,
        s: &'a Stmt,
        fixed: &BTreeSet<VarId>,
    ) -> Option<(Nest<'a>, Vec<(VarId, usize)>)> {
        let n = nest(s)?;
        let mut xs: Vec<Access<'_>> = Vec::new();
        let mut extents: HashMap<VarId, usize> = HashMap::new();
        accesses(std::slice::from_ref(s), &mut xs, &mut extents);
        let mut par: Vec<(VarId, usize)> = Vec::new();
        for &(v, e, _) in &n.loops {
            if e < 2 {
                continue;
            }
            let mut trial: Vec<VarId> = par.iter().map(|p| p.0).collect();
            trial.push(v);
            if independent(&xs, &trial, fixed, &extents) {
                par.push((v, e));
            }
        }
        (!par.is_empty()).then_some((n, par))
    }
}

fn gpu_loop(var: VarId, extent: usize, schedule: Schedule, body: Vec<Stmt>) -> Stmt {
    Stmt::Loop {
        var,
        extent,
        schedule,
        body,
    }
}

fn product(vs: &[(VarId, usize)]) -> usize {
    vs.iter().map(|v| v.1).product()
}

/// Each of `vs` (outermost first) as a digit of the collapsed variable `w`.
fn collapse(w: VarId, vs: &[(VarId, usize)]) -> HashMap<VarId, Index> {
    let mut out = HashMap::new();
    let mut inner = 1usize;
    for (i, &(v, e)) in vs.iter().enumerate().rev() {
        let mut ix = Index::Var(w);
        if inner > 1 {
            ix = Index::Div(Box::new(ix), inner as i64);
        }
        if i > 0 {
            ix = Index::Rem(Box::new(ix), e as i64);
        }
        out.insert(v, ix);
        inner = inner.saturating_mul(e);
    }
    out
}

/// The nest without the loops of `par`, its variables replaced by `subst`.
fn rebuild(n: &Nest<'_>, par: &[(VarId, usize)], subst: &HashMap<VarId, Index>) -> Vec<Stmt> {
    let mut body: Vec<Stmt> = n.body.iter().map(|s| subst_stmt(s, subst)).collect();
    for &(v, e, _) in n.loops.iter().rev() {
        if par.iter().any(|p| p.0 == v) {
            continue;
        }
        if e == 1 {
            // A one-iteration loop: its variable is 0.
            let zero = HashMap::from([(v, Index::Const(0))]);
            body = body.iter().map(|s| subst_stmt(s, &zero)).collect();
            continue;
        }
        body = vec![gpu_loop(v, e, Schedule::Serial, body)];
    }
    body
}

/// `s` with every variable in `m` replaced by its index.
fn subst_stmt(s: &Stmt, m: &HashMap<VarId, Index>) -> Stmt {
    s.map_indices(&|ix| ix.substitute(&|v| m.get(&v).cloned()))
}

/// Trip-weighted access counts of every buffer in `body`.
fn weights(body: &[Stmt], trips: f64, out: &mut BTreeMap<BufId, f64>) {
    for s in body {
        match s {
            Stmt::Loop {
                extent,
                schedule,
                body,
                ..
            } => {
                // The launch itself runs once per block: count per block.
                let t = if *schedule == Schedule::GpuBlock {
                    trips
                } else {
                    trips * *extent as f64
                };
                weights(body, t, out);
            }
            Stmt::Store { buf, index, value } => {
                *out.entry(*buf).or_default() += trips;
                value.for_each_load(&mut |b, _| *out.entry(b).or_default() += trips);
                index.for_each_load(&mut |b, _| *out.entry(b).or_default() += trips);
            }
            Stmt::Barrier => {}
            // Expanded before anything is weighed.
            Stmt::Gemm(_) => {}
            Stmt::Call { .. } => {}
        }
    }
}

/// Moves `Local` buffers to shared memory or to per-block slices of global temporaries.
fn place_scratch(
    p: &mut KernelProgram,
    launches: &[(VarId, usize, bool)],
    cfg: &GpuConfig,
) -> Result<(), GpuScheduleError> {
    let elem = p.dtype.size_bytes();
    // Which launches use each Local buffer.
    let mut users: BTreeMap<BufId, BTreeSet<usize>> = BTreeMap::new();
    let mut w: Vec<BTreeMap<BufId, f64>> = Vec::new();
    for (k, s) in p.body.iter().enumerate() {
        let mut m = BTreeMap::new();
        weights(std::slice::from_ref(s), 1.0, &mut m);
        for b in m.keys() {
            if p.buffers.get(b.0 as usize).map(|x| x.space) == Some(MemorySpace::Local) {
                users.entry(*b).or_default().insert(k);
            }
        }
        w.push(m);
    }
    // Per launch: candidates by density, shared while they fit.
    let mut per_block: BTreeMap<BufId, (VarId, usize)> = BTreeMap::new();
    for (k, &(bv, blocks, from_parallel)) in launches.iter().enumerate() {
        let mut cands: Vec<(BufId, f64, usize)> = users
            .iter()
            .filter(|(_, ks)| ks.len() == 1 && ks.contains(&k))
            .filter_map(|(b, _)| {
                let len = p.buffers.get(b.0 as usize)?.len();
                Some((*b, w[k].get(b).copied().unwrap_or(0.0), len))
            })
            .collect();
        cands.sort_by(|a, b| {
            let da = a.1 / a.2.max(1) as f64;
            let db = b.1 / b.2.max(1) as f64;
            db.total_cmp(&da).then(a.0.cmp(&b.0))
        });
        let mut used = 0usize;
        for (b, _, len) in cands {
            let bytes = len.saturating_mul(elem);
            if used.saturating_add(bytes) <= cfg.shared_bytes {
                used += bytes;
                p.buffers[b.0 as usize].space = MemorySpace::Shared;
            } else if from_parallel && blocks > 1 {
                per_block.insert(b, (bv, len));
            } else {
                p.buffers[b.0 as usize].space = MemorySpace::Global;
            }
        }
    }
    // Local buffers used by several launches (or none) live as long as the program.
    for b in &mut p.buffers {
        if b.space == MemorySpace::Local {
            b.space = MemorySpace::Global;
        }
    }
    for (&b, &(bv, len)) in &per_block {
        let blocks = launches
            .iter()
            .find(|l| l.0 == bv)
            .map_or(1, |l| l.1)
            .max(1);
        let buf = &mut p.buffers[b.0 as usize];
        if buf.kind != BufferKind::Temp {
            return Err(GpuScheduleError::Unsupported(format!(
                "scratch buffer b{} (`{}`) is not a temporary",
                b.0, buf.name
            )));
        }
        buf.space = MemorySpace::Global;
        let mut shape = vec![blocks];
        shape.extend(&buf.layout.shape);
        buf.layout = Layout::row_major(&shape);
        buf.name = format!("{} (per block)", buf.name);
        let offset = Index::scaled(Index::Var(bv), len as i64);
        for s in &mut p.body {
            offset_buffer(s, b, &offset);
        }
    }
    Ok(())
}

/// Adds `offset` to every index of buffer `b` in `s`.
fn offset_buffer(s: &mut Stmt, b: BufId, offset: &Index) {
    let shift = |index: &mut Index| {
        *index = Index::sum(offset.clone(), std::mem::replace(index, Index::Const(0)));
    };
    s.walk_mut(&mut |s| {
        if let Stmt::Store { buf, index, value } = s {
            index.for_each_load_mut(&mut |buf, index| {
                if *buf == b {
                    shift(index);
                }
            });
            if *buf == b {
                shift(index);
            }
            value.for_each_load_mut(&mut |buf, index| {
                if *buf == b {
                    shift(index);
                }
            });
        }
        true
    });
}

#[cfg(test)]
mod tests;
