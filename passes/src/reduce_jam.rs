//! `reduce_jam`: the CPU schedule of row reductions — several rows' accumulations interleaved,
//! so that a code generator runs independent chains side by side instead of one chain of
//! dependent adds per row.
//!
//! `lower_kernel` emits a reduction along the last axis (a LayerNorm's mean and variance, the
//! sums of its backward, a score row's sum) as
//!
//! ```text
//! for i in 0..m {
//!     acc[a(i)] = init(i)
//!     for j in 0..n { acc[a(i)] = op(acc[a(i)], term(i, j)) }
//!     acc[a(i)] = post(acc[a(i)], i)          (zero or more such statements)
//! }
//! ```
//!
//! Each row is a chain of `n` dependent operations (the interpreter's order, which every backend
//! keeps: no reassociation), so the loop runs at one operation per add latency (3–4 cycles) with
//! the floating-point units mostly idle; perf of TTT-Linear's forward put a fifth of its time in
//! such chains. This pass (nothing here knows a model) rewrites the nest as tiles of `rows`
//! rows whose accumulations are jammed into one `j` loop:
//!
//! ```text
//! for it in 0..m/rows {
//!     acc[a(i₀)] = init(i₀); …; acc[a(i₀+rows-1)] = init(i₀+rows-1)
//!     for j in 0..n { acc[a(i₀)] = op(acc[a(i₀)], term(i₀, j)); …  (rows of them) }
//!     post for each row
//! }
//! (rows m - m%rows.. : the original nest, serial)
//! ```
//!
//! A parallel row loop (`cpu_parallel` runs first) gives a parallel tile loop: the rows of one
//! tile are distinct from every other tile's. The 125M model's RMS norms (2048 rows of 768)
//! took 0.86 ms each unjammed.
//!
//! with `i₀ = it·rows`: the `rows` accumulators are loop-invariant addresses in the `j` loop,
//! which the code generator keeps in registers as independent chains.
//!
//! **Results do not change**: every row receives the same terms in the same order; only the
//! interleaving between rows changes. The rewrite applies only when that is safe: the nest
//! writes nothing but `acc`, at `a(i)`, affine in `i` with a non-zero stride (distinct rows,
//! distinct elements) and free of `j`; `init` and `term` do not read `acc`, and the `post`
//! statements read `acc` only at `a(i)`.

use crate::pipeline::KernelPass;
use crate::register_tile::{coefficient, index_reads, reads, rewrite_nests};
use crate::PassError;
use tttc_ir::kernel::{BufId, Index, KernelProgram, Schedule, Stmt, Value, VarId};

/// Setting `TTTC_NO_REDUCE_JAM=1` turns the pass off (for measuring what it buys).
pub const DISABLE_ENV: &str = "TTTC_NO_REDUCE_JAM";

/// Rows per tile: eight chains cover an add's latency on two floating-point pipes.
pub const ROWS: usize = 8;

/// The pass (see the module doc). `rows: None` leaves programs unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReduceJam {
    /// Rows per tile; `None`: off.
    pub rows: Option<usize>,
}

impl ReduceJam {
    /// [`ROWS`] rows, or off when [`DISABLE_ENV`] is set to something other than `0` or the
    /// empty string.
    pub fn from_env() -> ReduceJam {
        let off = crate::pipeline::switched_off(DISABLE_ENV);
        ReduceJam {
            rows: (!off).then_some(ROWS),
        }
    }
}

impl KernelPass for ReduceJam {
    fn name(&self) -> &'static str {
        "reduce_jam"
    }

    fn run(&self, program: &KernelProgram) -> Result<KernelProgram, PassError> {
        let mut out = program.clone();
        let Some(rows) = self.rows.filter(|&r| r >= 2) else {
            return Ok(out);
        };
        rewrite_nests(&mut out, &|s, vars| Some(Rows::of(s)?.jammed(rows, vars)));
        Ok(out)
    }
}

/// A recognized row reduction (see the module doc).
#[derive(Clone, Debug)]
struct Rows {
    /// The row loop's variable and extent.
    i: VarId,
    m: usize,
    /// The row loop's schedule: a parallel row loop (the main graph's, after `cpu_parallel`)
    /// stays parallel over the tiles (distinct tiles write distinct rows).
    schedule: Schedule,
    /// The accumulator's buffer and element `a(i)`.
    acc: BufId,
    at: Index,
    /// The statements before, in and after the reduction loop, in `i` (and `j`).
    init: Value,
    j: VarId,
    n: usize,
    update: Value,
    post: Vec<Value>,
}

impl Rows {
    /// The nest `s`, when it has the shape of the module doc and jamming it is safe.
    fn of(s: &Stmt) -> Option<Rows> {
        let Stmt::Loop {
            var: i,
            extent: m,
            schedule: schedule @ (Schedule::Serial | Schedule::Parallel),
            body,
        } = s
        else {
            return None;
        };
        let [Stmt::Store {
            buf: acc,
            index: at,
            value: init,
        }, Stmt::Loop {
            var: j,
            extent: n,
            schedule: Schedule::Serial,
            body: inner,
        }, post @ ..] = body.as_slice()
        else {
            return None;
        };
        let [Stmt::Store {
            buf: acc2,
            index: at2,
            value: update @ Value::Binary(_, first, term),
        }] = inner.as_slice()
        else {
            return None;
        };
        let reads_acc_at = |v: &Value| -> bool {
            let mut ok = true;
            v.for_each_load(&mut |b, idx| {
                ok &= (b != *acc || idx == at) && !index_reads(idx, *acc)
            });
            ok
        };
        let loads_acc =
            matches!(first.as_ref(), Value::Load { buf, index } if buf == acc && index == at);
        let mut post_values = Vec::new();
        for p in post {
            let Stmt::Store { buf, index, value } = p else {
                return None;
            };
            if buf != acc || index != at || !reads_acc_at(value) {
                return None;
            }
            post_values.push(value.clone());
        }
        let stride = coefficient(at, *i)?;
        if *m < 2
            || acc2 != acc
            || at2 != at
            || !loads_acc
            || stride == 0
            || at.mentions(*j)
            || reads(init, *acc)
            || reads(term, *acc)
            || index_reads(at, *acc)
        {
            return None;
        }
        Some(Rows {
            i: *i,
            m: *m,
            schedule: *schedule,
            acc: *acc,
            at: at.clone(),
            init: init.clone(),
            j: *j,
            n: *n,
            update: update.clone(),
            post: post_values,
        })
    }

    /// The statements of row `row` (an index), with `j` renamed to `j`.
    fn row_parts(&self, row: &Index, j: VarId) -> (Stmt, Stmt, Vec<Stmt>) {
        let f = |v: VarId| {
            if v == self.i {
                Some(row.clone())
            } else if v == self.j {
                Some(Index::Var(j))
            } else {
                None
            }
        };
        let at = self.at.substitute(&f);
        let value = |v: &Value| v.map_indices(&|x| x.substitute(&f));
        let init = Stmt::store(self.acc, at.clone(), value(&self.init));
        let update = Stmt::store(self.acc, at.clone(), value(&self.update));
        let post = self
            .post
            .iter()
            .map(|p| Stmt::store(self.acc, at.clone(), value(p)))
            .collect();
        (init, update, post)
    }

    /// The jammed statements replacing the nest.
    fn jammed(&self, rows: usize, vars: &mut u32) -> Vec<Stmt> {
        let mut fresh = || {
            let v = VarId(*vars);
            *vars += 1;
            v
        };
        let rows = rows.min(self.m);
        let tiles = self.m / rows;
        let it = self.i;
        let mut inits = Vec::new();
        let mut updates = Vec::new();
        let mut posts = Vec::new();
        for r in 0..rows {
            let row = Index::sum(
                Index::scaled(Index::Var(it), rows as i64),
                Index::Const(r as i64),
            );
            let (init, update, post) = self.row_parts(&row, self.j);
            inits.push(init);
            updates.push(update);
            posts.extend(post);
        }
        let mut tile = inits;
        tile.push(Stmt::counted_loop(
            self.j,
            self.n,
            Schedule::Serial,
            updates,
        ));
        tile.extend(posts);
        let mut out = vec![Stmt::counted_loop(it, tiles, self.schedule, tile)];
        let rest = self.m - tiles * rows;
        if rest > 0 {
            let (i, j) = (fresh(), fresh());
            let row = Index::sum(Index::Const((tiles * rows) as i64), Index::Var(i));
            let (init, update, post) = self.row_parts(&row, j);
            let mut body = vec![
                init,
                Stmt::counted_loop(j, self.n, Schedule::Serial, vec![update]),
            ];
            body.extend(post);
            out.push(Stmt::counted_loop(i, rest, Schedule::Serial, body));
        }
        out
    }
}
