//! `cpu_parallel`: the CPU schedule of top-level loop nests, decided once and recorded in the
//! kernel IR. `lower_kernel` emits every loop `Serial` except the scans' loops over slices
//! (`Parallel`); this pass marks a top-level loop `Parallel` when its iterations are provably
//! independent and it has enough work to pay for handing it to the thread pool, and turns a
//! scan's slice loop with too little work (a decode token step) back to `Serial`.
//!
//! Independence is proved per buffer the nest writes: every access to it inside the loop (load
//! or store) must have an affine index `C·v + r(inner variables)` with the same stride `C > 0`
//! for the loop's variable `v`, and the values of every access's `r` over the inner loops'
//! ranges must lie in one window `[lo, lo + C)`, so iteration `v` touches only elements
//! `[C·v + lo, C·v + lo + C)` of that buffer: no two iterations share an element that one of
//! them writes. (A constant offset is allowed: a causal convolution's shifted copy writes row
//! `v + 3` from row `v`.) Loops using scratch (`Local`/`Shared`) buffers, barriers, matrix
//! products (`Stmt::Gemm`, which use the pool themselves) or already parallel loops are left
//! alone. When a top-level loop has extent 1 and a single
//! loop as its body, the inner loop is considered instead (a batch of one).
//!
//! Scheduling never changes results: each element is computed by the same expression in the
//! same order, only on another thread.

use crate::pipeline::KernelPass;
use crate::PassError;
use std::collections::BTreeMap;
use tttc_ir::kernel::{BufId, Index, KernelProgram, MemorySpace, Schedule, Stmt, VarId};

/// Fewer element stores than this per loop nest stay on the calling thread. Handing a loop to
/// the pool and waiting for it costs ~40 µs on a shared 2-vCPU machine (measured with
/// `bench/compare_builds.sh`: a TTT-Linear decode token, 12 heads of f = 64, took 60 µs with
/// its scan's slice loop on the pool and 20 µs on the calling thread), about what ~130k
/// simple stores take.
pub const MIN_PARALLEL_STORES: u64 = 1 << 17;

/// The pass (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuParallel;

impl KernelPass for CpuParallel {
    fn name(&self) -> &'static str {
        "cpu_parallel"
    }

    fn run(&self, program: &KernelProgram) -> Result<KernelProgram, PassError> {
        let mut out = program.clone();
        let bodies =
            std::iter::once(&mut out.body).chain(out.functions.iter_mut().map(|f| &mut f.body));
        for body in bodies {
            for s in body {
                mark(program, s, &mut Vec::new());
            }
        }
        Ok(out)
    }
}

/// Marks top-level statement `s` (or the loop inside a one-iteration loop) parallel when safe
/// and worth it; `outer` are the variables of the enclosing one-iteration loops (always 0).
fn mark(p: &KernelProgram, s: &mut Stmt, outer: &mut Vec<VarId>) {
    let Stmt::Loop {
        var,
        extent,
        schedule,
        body,
    } = s
    else {
        return;
    };
    if *schedule == Schedule::Parallel {
        // A scan's loop over slices (parallel from `lower_kernel`) with too little work, e.g.
        // the token step of decode: its iterations stay independent, the hand-off is not paid.
        if stores(body).saturating_mul(*extent as u64) < MIN_PARALLEL_STORES {
            *schedule = Schedule::Serial;
        }
        return;
    }
    if *schedule != Schedule::Serial {
        return;
    }
    if *extent == 1 {
        if let [inner @ Stmt::Loop { .. }] = body.as_mut_slice() {
            outer.push(*var);
            mark(p, inner, outer);
        }
        return;
    }
    if *extent < 2 || stores(body).saturating_mul(*extent as u64) < MIN_PARALLEL_STORES {
        return;
    }
    if independent(p, *var, body, outer) {
        *schedule = Schedule::Parallel;
    }
}

/// Element stores one iteration of `body` makes.
fn stores(body: &[Stmt]) -> u64 {
    body.iter()
        .map(|s| match s {
            Stmt::Loop { extent, body, .. } => (*extent as u64).saturating_mul(stores(body)),
            Stmt::Store { .. } => 1,
            Stmt::Barrier | Stmt::Gemm(_) | Stmt::Call { .. } => 0,
        })
        .fold(0u64, u64::saturating_add)
}

/// An index as `Σ coeff·var + constant`.
#[derive(Clone, Debug, Default, PartialEq)]
struct Affine {
    coeffs: BTreeMap<VarId, i64>,
    constant: i64,
}

/// `index` as an affine form, or `None` (division, remainder, an index read from memory,
/// overflow).
fn affine(index: &Index) -> Option<Affine> {
    match index {
        Index::Const(c) => Some(Affine {
            coeffs: BTreeMap::new(),
            constant: *c,
        }),
        Index::Var(v) => Some(Affine {
            coeffs: BTreeMap::from([(*v, 1)]),
            constant: 0,
        }),
        Index::Add(a, b) => {
            let (mut a, b) = (affine(a)?, affine(b)?);
            for (v, c) in b.coeffs {
                let e = a.coeffs.entry(v).or_insert(0);
                *e = e.checked_add(c)?;
            }
            a.constant = a.constant.checked_add(b.constant)?;
            Some(a)
        }
        Index::Mul(a, k) => {
            let mut a = affine(a)?;
            for c in a.coeffs.values_mut() {
                *c = c.checked_mul(*k)?;
            }
            a.constant = a.constant.checked_mul(*k)?;
            Some(a)
        }
        Index::Div(..) | Index::Rem(..) | Index::Load { .. } => None,
    }
}

/// Whether the iterations of a loop over `v` with body `body` touch disjoint elements of every
/// buffer the body writes (module doc); `outer` variables are 0.
fn independent(p: &KernelProgram, v: VarId, body: &[Stmt], outer: &[VarId]) -> bool {
    let mut ok = true;
    let mut written = Vec::new();
    let mut ranges: BTreeMap<VarId, i64> = outer.iter().map(|&w| (w, 1)).collect();
    for s in body {
        s.walk(&mut |t| {
            match t {
                Stmt::Loop {
                    var,
                    extent,
                    schedule,
                    ..
                } => {
                    ok &= *schedule == Schedule::Serial;
                    ranges.insert(*var, i64::try_from(*extent).unwrap_or(i64::MAX));
                }
                Stmt::Store { buf, .. } => written.push(*buf),
                // Barriers order threads; a matrix product runs on the pool itself (and only at
                // the top level).
                Stmt::Barrier | Stmt::Gemm(_) | Stmt::Call { .. } => ok = false,
            }
            ok
        });
    }
    if !ok {
        return false;
    }
    let global = |b: BufId| {
        p.buffer(b)
            .is_some_and(|buf| buf.space == MemorySpace::Global)
    };
    let mut strides: BTreeMap<BufId, i64> = BTreeMap::new();
    // Per written buffer, the lowest and highest element offset from `C·v` any access reaches.
    let mut windows: BTreeMap<BufId, (i64, i64)> = BTreeMap::new();
    let mut check = |buf: BufId, index: &Index| -> bool {
        if !global(buf) {
            return false;
        }
        if !written.contains(&buf) {
            return true;
        }
        let Some(a) = affine(index) else {
            return false;
        };
        let c = a.coeffs.get(&v).copied().unwrap_or(0);
        if c <= 0 || *strides.entry(buf).or_insert(c) != c {
            return false;
        }
        let (mut lo, mut hi) = (a.constant, a.constant);
        for (w, k) in &a.coeffs {
            if *w == v {
                continue;
            }
            let Some(&n) = ranges.get(w) else {
                return false;
            };
            let span = k.saturating_mul(n.saturating_sub(1));
            if span < 0 {
                lo = lo.saturating_add(span);
            } else {
                hi = hi.saturating_add(span);
            }
        }
        let w = windows.entry(buf).or_insert((lo, hi));
        *w = (w.0.min(lo), w.1.max(hi));
        w.1.saturating_sub(w.0) < c
    };
    for s in body {
        s.walk(&mut |t| {
            if let Stmt::Store { buf, index, value } = t {
                ok &= check(*buf, index);
                index.for_each_load(&mut |b, i| ok &= check(b, i));
                value.for_each_load(&mut |b, i| ok &= check(b, i));
            }
            ok
        });
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use tttc_ir::kernel::{Buffer, BufferKind, Value};
    use tttc_ir::{BinaryOp, DType};

    fn buf(name: &str, kind: BufferKind, space: MemorySpace, shape: &[usize]) -> Buffer {
        Buffer::row_major(name, kind, space, shape)
    }

    /// `out[i, j] = f(x[i, j])` over `[n, m]`, with `body` built by the caller.
    fn program(n: usize, m: usize, body: Vec<Stmt>, extra: Vec<Buffer>) -> KernelProgram {
        let mut buffers = vec![
            buf(
                "x",
                BufferKind::Input("x".into()),
                MemorySpace::Global,
                &[n, m],
            ),
            buf(
                "out",
                BufferKind::Output("out".into()),
                MemorySpace::Global,
                &[n, m],
            ),
        ];
        buffers.extend(extra);
        KernelProgram {
            name: "t".into(),
            dtype: DType::F32,
            buffers,
            vars: 3,
            functions: Vec::new(),
            memory: None,
            body,
        }
    }

    fn row_major(i: VarId, j: VarId, m: usize) -> Index {
        Index::sum(Index::scaled(Index::var(i), m as i64), Index::var(j))
    }

    /// `for i in 0..n { for j in 0..m { store } }`, serial.
    fn nest(n: usize, m: usize, store: Stmt) -> Stmt {
        Stmt::counted_loop(
            I,
            n,
            Schedule::Serial,
            vec![Stmt::counted_loop(J, m, Schedule::Serial, vec![store])],
        )
    }

    fn schedule(p: &KernelProgram) -> Schedule {
        match &p.body[0] {
            Stmt::Loop { schedule, .. } => *schedule,
            _ => panic!("a loop"),
        }
    }

    const I: VarId = VarId(0);
    const J: VarId = VarId(1);

    #[test]
    fn an_elementwise_nest_runs_in_parallel() {
        let (n, m) = (512, 512);
        let idx = row_major(I, J, m);
        let store = Stmt::store(
            BufId(1),
            idx.clone(),
            Value::binary(BinaryOp::Mul, Value::load(BufId(0), idx), Value::Const(2.0)),
        );
        let body = vec![nest(n, m, store)];
        let p = program(n, m, body, vec![]);
        assert_eq!(schedule(&CpuParallel.run(&p).unwrap()), Schedule::Parallel);
    }

    #[test]
    fn small_nests_stay_serial() {
        let (n, m) = (4, 8);
        let idx = row_major(I, J, m);
        let store = Stmt::store(BufId(1), idx.clone(), Value::load(BufId(0), idx));
        let body = vec![nest(n, m, store)];
        let p = program(n, m, body, vec![]);
        assert_eq!(schedule(&CpuParallel.run(&p).unwrap()), Schedule::Serial);
    }

    #[test]
    fn a_buffer_shared_by_iterations_keeps_the_loop_serial() {
        // tmp[j] is written by every iteration i, then read: iterations are not independent.
        let (n, m) = (512, 512);
        let tmp = buf("tmp", BufferKind::Temp, MemorySpace::Global, &[m]);
        let body = vec![Stmt::counted_loop(
            I,
            n,
            Schedule::Serial,
            vec![
                Stmt::counted_loop(
                    J,
                    m,
                    Schedule::Serial,
                    vec![Stmt::store(
                        BufId(2),
                        Index::var(J),
                        Value::load(BufId(0), row_major(I, J, m)),
                    )],
                ),
                Stmt::counted_loop(
                    VarId(2),
                    m,
                    Schedule::Serial,
                    vec![Stmt::store(
                        BufId(1),
                        row_major(I, VarId(2), m),
                        Value::load(BufId(2), Index::var(VarId(2))),
                    )],
                ),
            ],
        )];
        let p = program(n, m, body, vec![tmp]);
        assert_eq!(schedule(&CpuParallel.run(&p).unwrap()), Schedule::Serial);
    }

    #[test]
    fn overlapping_rows_keep_the_loop_serial() {
        // out[i * 1 + j]: rows overlap (stride 1 < row length), so iterations collide.
        let (n, m) = (512, 512);
        let store = Stmt::store(
            BufId(1),
            Index::sum(Index::var(I), Index::var(J)),
            Value::load(BufId(0), row_major(I, J, m)),
        );
        let body = vec![nest(n, m, store)];
        let p = program(n, m, body, vec![]);
        assert_eq!(schedule(&CpuParallel.run(&p).unwrap()), Schedule::Serial);
    }

    /// `out[(i + shift)·m + j] = x[i·m + j]` for `i` in `0..n - 3`, plus, when `reads_out`, a
    /// read of `out[i·m + j]` in the same statement.
    fn shifted_rows(shift: i64, reads_out: bool) -> KernelProgram {
        let (n, m) = (512, 512);
        let at = Index::sum(
            Index::scaled(Index::sum(Index::var(I), Index::Const(shift)), m as i64),
            Index::var(J),
        );
        let mut value = Value::load(BufId(0), row_major(I, J, m));
        if reads_out {
            value = Value::binary(
                BinaryOp::Add,
                value,
                Value::load(BufId(1), row_major(I, J, m)),
            );
        }
        let body = vec![nest(n - 3, m, Stmt::store(BufId(1), at, value))];
        program(n, m, body, vec![])
    }

    #[test]
    fn rows_written_at_a_constant_offset_run_in_parallel() {
        // A causal convolution's shifted copy: iteration i writes row i + 3 only.
        let p = CpuParallel.run(&shifted_rows(3, false)).unwrap();
        assert_eq!(schedule(&p), Schedule::Parallel);
    }

    #[test]
    fn a_shifted_write_of_a_row_another_iteration_reads_keeps_the_loop_serial() {
        // Iteration i writes row i + 3 and reads row i, which iteration i - 3 writes.
        for shift in [1, 3] {
            let p = CpuParallel.run(&shifted_rows(shift, true)).unwrap();
            assert_eq!(schedule(&p), Schedule::Serial, "shift {shift}");
        }
        // Row i written and read at the same row: independent.
        let p = CpuParallel.run(&shifted_rows(0, true)).unwrap();
        assert_eq!(schedule(&p), Schedule::Parallel);
    }

    #[test]
    fn a_batch_of_one_parallelizes_the_loop_inside() {
        let (n, m) = (512, 512);
        let idx = row_major(I, J, m);
        let store = Stmt::store(BufId(1), idx.clone(), Value::load(BufId(0), idx));
        let body = vec![Stmt::counted_loop(
            VarId(2),
            1,
            Schedule::Serial,
            vec![nest(n, m, store)],
        )];
        let p = CpuParallel.run(&program(n, m, body, vec![])).unwrap();
        let Stmt::Loop { body, schedule, .. } = &p.body[0] else {
            panic!("a loop")
        };
        assert_eq!(*schedule, Schedule::Serial);
        assert!(matches!(
            &body[0],
            Stmt::Loop {
                schedule: Schedule::Parallel,
                ..
            }
        ));
    }

    /// A loop already `Parallel` (a scan's slices from `lower_kernel`) over `[n, m]` rows.
    fn parallel_rows(n: usize, m: usize) -> KernelProgram {
        let idx = row_major(I, J, m);
        let store = Stmt::store(BufId(1), idx.clone(), Value::load(BufId(0), idx));
        let body = vec![Stmt::counted_loop(
            I,
            n,
            Schedule::Parallel,
            vec![Stmt::counted_loop(J, m, Schedule::Serial, vec![store])],
        )];
        program(n, m, body, vec![])
    }

    #[test]
    fn a_scan_loop_with_little_work_runs_on_the_calling_thread() {
        // 12 slices of a 64x64 state (a decode token step): below the pool's threshold.
        let p = CpuParallel.run(&parallel_rows(12, 64 * 64)).unwrap();
        assert_eq!(schedule(&p), Schedule::Serial);
        // 12 slices of 256x64 each: enough work, stays on the pool.
        let p = CpuParallel.run(&parallel_rows(12, 256 * 64)).unwrap();
        assert_eq!(schedule(&p), Schedule::Parallel);
    }
}
