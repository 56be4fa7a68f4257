//! `register_tile`: the CPU schedule of small matrix products — register tiles with the
//! contraction outermost, so that a code generator keeps a tile of accumulators in vector
//! registers for the whole contraction instead of loading and storing every element of the
//! result once per term.
//!
//! `lower_kernel` emits every product that is not a library [`Stmt::Gemm`] (those inside scans:
//! the dual form's `16×64·64×64`, `16×16` score blocks, `16×64·64×256`, …) as the nest
//!
//! ```text
//! for i in 0..m {
//!     for j in 0..n { C[c(i, j)] = 0 }
//!     for p in 0..k { for j in 0..n { C[c(i, j)] = C[c(i, j)] + a(i, p) * b(p, j) } }
//! }
//! ```
//!
//! which reads and writes every `C[i, j]` once per `p`. This pass recognizes that shape (any
//! product of any program: nothing here knows a model) and rewrites it as `rows × cols` tiles:
//!
//! ```text
//! for it in 0..m/rows {
//!     for j in 0..n { C[c(i₀, j)] = 0; …; C[c(i₀+rows-1, j)] = 0 }
//!     for jt in 0..n/cols { for p in 0..k { for jj in 0..cols (vector) {
//!         C[c(i₀, j)] += a(i₀, p) * b(p, j); …; C[c(i₀+rows-1, j)] += a(i₀+rows-1, p) * b(p, j)
//!     } } }
//!     (columns n - n%cols.. : the same with a shorter jj loop)
//! }
//! (rows m - m%rows.. : the original nest)
//! ```
//!
//! with `i₀ = it·rows` and `j = jt·cols + jj`: the row loop is unrolled and jammed into the
//! column loop, the contraction sits outside the `cols`-wide column loop, so after the code
//! generator vectorizes `jj` (`cols` is two vectors of the host) the `rows × cols` accumulators
//! of one `(it, jt)` tile are loop-invariant addresses in the `p` loop and stay in registers
//! (LLVM's loop vectorizer, full unroll and LICM promotion do this; Cranelift runs the same
//! loops scalar). [`TileShape::for_host`] picks the tile from the host's vector registers
//! (AVX-512: 8 × 32 f32, AVX2: 4 × 16 f32, else a portable 4 × 8). A product of fewer rows
//! than the tile's spends the accumulators of the missing rows on more columns, and so does a
//! batch of products whose rows each have their own `b` (a decode token's one-row products,
//! a matrix per head: jamming such rows shares no load), tiled one row at a time: one row of
//! AVX-512 f32 gets 16 vectors (256 columns) of independent accumulators and streams each row
//! of its `b` from start to end, where two accumulators made two dependent chains.
//!
//! The row loop may be `Parallel` (`cpu_parallel` spreads a top-level product's rows over
//! threads): the loop over tiles of rows is then `Parallel` instead, each tile writing its own
//! rows of `C` (the row remainder runs on the calling thread).
//!
//! **Results do not change**: every element of `C` is zeroed, then receives the same terms in
//! the same order `p = 0, 1, …, k-1`; only the interleaving between different elements changes.
//! The rewrite applies only when that is safe: `C` is not read by `a` or `b`, and `c(i, j)` is
//! affine in `i` and `j` with strides that make distinct `(i, j)` distinct elements.

use crate::pipeline::KernelPass;
use crate::PassError;
use tttc_ir::kernel::{BufId, Index, KernelProgram, Schedule, Stmt, Value, VarId};
use tttc_ir::{BinaryOp, DType};

/// Setting `TTTC_NO_REGISTER_TILE=1` turns the pass off (for measuring what it buys).
pub const DISABLE_ENV: &str = "TTTC_NO_REGISTER_TILE";

/// The shape of a register tile for one element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileShape {
    /// Rows of the result per tile (unrolled and jammed).
    pub rows: usize,
    /// Elements per vector register of the host for this element type.
    pub lanes: usize,
}

impl TileShape {
    /// Columns per tile: two vectors.
    pub fn cols(self) -> usize {
        2 * self.lanes
    }

    /// The tile for this host and element type: with AVX-512 (32 vector registers of 64
    /// bytes) 8 rows × 2 vectors (16 accumulators), with AVX2 (16 registers of 32 bytes) 4 rows
    /// × 2 vectors (8 accumulators), elsewhere 4 rows × 2 vectors of 16 bytes.
    pub fn for_host(dtype: DType) -> TileShape {
        let bytes = match dtype {
            DType::F64 => 8,
            _ => 4,
        };
        let (rows, vector_bytes) = host_vectors();
        TileShape {
            rows,
            lanes: (vector_bytes / bytes).max(1),
        }
    }
}

/// `(rows, vector bytes)` for the host.
fn host_vectors() -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return (8, 64);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return (4, 32);
        }
    }
    (4, 16)
}

/// The host's tile as a settings line (the kernel program depends on it, so the caches of kernel
/// programs must too).
pub fn host_setting() -> String {
    let (rows, bytes) = host_vectors();
    format!("register_tile={rows}x{bytes}B")
}

/// The pass (see the module doc). `tile: None` leaves programs unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterTile {
    /// The tile for f32 programs (f64 programs get half the lanes); `None`: off.
    pub tile: Option<TileShape>,
}

impl RegisterTile {
    /// The host's tile, or off when [`DISABLE_ENV`] is set to something other than `0` or the
    /// empty string.
    pub fn from_env() -> RegisterTile {
        let off = crate::pipeline::switched_off(DISABLE_ENV);
        RegisterTile {
            tile: (!off).then(|| TileShape::for_host(DType::F32)),
        }
    }
}

impl KernelPass for RegisterTile {
    fn name(&self) -> &'static str {
        "register_tile"
    }

    fn run(&self, program: &KernelProgram) -> Result<KernelProgram, PassError> {
        let mut out = program.clone();
        let Some(tile) = self.tile else {
            return Ok(out);
        };
        let tile = match out.dtype {
            DType::F64 => TileShape {
                lanes: (tile.lanes / 2).max(1),
                ..tile
            },
            _ => tile,
        };
        rewrite_nests(&mut out, &|s, vars| Some(Nest::of(s)?.tiled(tile, vars)));
        Ok(out)
    }
}

/// Replaces, in `program`'s body and functions (recursively, outermost first), every statement
/// for which `rewrite` returns statements by them; `rewrite` takes fresh loop variables from the
/// counter it is given, which ends as `program.vars`. The rewritten statements are not visited
/// again.
pub(crate) fn rewrite_nests(
    program: &mut KernelProgram,
    rewrite: &impl Fn(&Stmt, &mut u32) -> Option<Vec<Stmt>>,
) {
    fn walk(
        body: &mut Vec<Stmt>,
        rewrite: &impl Fn(&Stmt, &mut u32) -> Option<Vec<Stmt>>,
        vars: &mut u32,
    ) {
        let mut i = 0;
        while i < body.len() {
            if let Some(new) = rewrite(&body[i], vars) {
                let len = new.len();
                body.splice(i..=i, new);
                i += len;
                continue;
            }
            if let Stmt::Loop { body: inner, .. } = &mut body[i] {
                walk(inner, rewrite, vars);
            }
            i += 1;
        }
    }
    let mut vars = program.vars;
    walk(&mut program.body, rewrite, &mut vars);
    for f in &mut program.functions {
        walk(&mut f.body, rewrite, &mut vars);
    }
    program.vars = vars;
}

/// One product of a nest: `C[c(i, j)] += term(i, p, j)`.
#[derive(Clone, Debug)]
pub(crate) struct Product {
    /// The result buffer and the element `c(i, j)` (in `i`, `j`).
    pub(crate) c: BufId,
    pub(crate) at: Index,
    /// The term `a(i, p) * b(p, j)`.
    pub(crate) term: Value,
}

/// A recognized product nest (see the module doc): one product, or several over the same loops
/// (`sibling_products` merges products that read the same right operand).
#[derive(Clone, Debug)]
pub(crate) struct Nest {
    /// The row loop's variable, extent and schedule (`Parallel` when `cpu_parallel` spread a
    /// top-level product's rows over threads: the tiles of rows are then spread instead).
    pub(crate) i: VarId,
    pub(crate) m: usize,
    pub(crate) schedule: Schedule,
    /// The zeroing column loop's variable.
    pub(crate) j0: VarId,
    /// The contraction's variable and extent.
    pub(crate) p: VarId,
    pub(crate) k: usize,
    /// The accumulating column loop's variable, and the columns.
    pub(crate) j: VarId,
    pub(crate) n: usize,
    /// The products, in the order of their stores.
    pub(crate) products: Vec<Product>,
    /// The original statement (kept for the row remainder).
    pub(crate) original: Stmt,
    /// Whether the rows share the column operand (no load that varies along the columns
    /// mentions the row): jamming rows then reuses each loaded `b(p, j)`. A batch of one-row
    /// products (a decode token's, one matrix per head) has a matrix per row instead.
    pub(crate) rows_share_b: bool,
}

impl Nest {
    /// The nest `s`, when it has the shape of the module doc (with one or more products, each
    /// zeroed and accumulated in the same order) and tiling it is safe.
    pub(crate) fn of(s: &Stmt) -> Option<Nest> {
        let Stmt::Loop {
            var: i,
            extent: m,
            schedule: row_schedule @ (Schedule::Serial | Schedule::Parallel),
            body,
        } = s
        else {
            return None;
        };
        let [zero, acc] = body.as_slice() else {
            return None;
        };
        let (j0, n0, zbody) = serial_loop(zero)?;
        let (p, k, pbody) = serial_loop(acc)?;
        let [jloop] = pbody else { return None };
        let (j, n, jbody) = serial_loop(jloop)?;
        if zbody.len() != jbody.len() || jbody.is_empty() {
            return None;
        }
        let mut products: Vec<Product> = Vec::with_capacity(jbody.len());
        for (zs, js) in zbody.iter().zip(jbody) {
            let Stmt::Store {
                buf: zc,
                index: zat,
                value: Value::Const(z),
            } = zs
            else {
                return None;
            };
            let Stmt::Store {
                buf: c,
                index: at,
                value: Value::Binary(BinaryOp::Add, sum, term),
            } = js
            else {
                return None;
            };
            let Value::Load {
                buf: lc,
                index: lat,
            } = sum.as_ref()
            else {
                return None;
            };
            let Value::Binary(BinaryOp::Mul, _, _) = term.as_ref() else {
                return None;
            };
            let renamed = zat.substitute(&|v| (v == j0).then_some(Index::Var(j)));
            if *z != 0.0
                || z.is_sign_negative()
                || zc != c
                || lc != c
                || lat != at
                || renamed != *at
            {
                return None;
            }
            // Distinct (i, j) must be distinct elements: c affine in both with strides that
            // keep rows (or columns) apart.
            let ci = coefficient(at, *i)?.unsigned_abs();
            let cj = coefficient(at, j)?.unsigned_abs();
            let (m64, n64) = (*m as u64, n as u64);
            if ci == 0 || cj == 0 || (ci < n64.saturating_mul(cj) && cj < m64.saturating_mul(ci)) {
                return None;
            }
            if products.iter().any(|q| q.c == *c) {
                return None;
            }
            products.push(Product {
                c: *c,
                at: at.clone(),
                term: term.as_ref().clone(),
            });
        }
        if n0 != n || *m < 1 || n < 2 || k == 0 {
            return None;
        }
        if products
            .iter()
            .any(|q| products.iter().any(|r| reads(&q.term, r.c)))
        {
            return None;
        }
        let mut rows_share_b = true;
        for q in &products {
            q.term.for_each_load(&mut |_, idx| {
                if idx.mentions(j) && idx.mentions(*i) {
                    rows_share_b = false;
                }
            });
        }
        Some(Nest {
            rows_share_b,
            i: *i,
            m: *m,
            schedule: *row_schedule,
            j0,
            p,
            k,
            j,
            n,
            products,
            original: s.clone(),
        })
    }

    /// The tiled statements replacing the nest.
    fn tiled(&self, tile: TileShape, vars: &mut u32) -> Vec<Stmt> {
        let mut fresh = || {
            let v = VarId(*vars);
            *vars += 1;
            v
        };
        // Rows that share no loads gain nothing from being jammed but independent chains: one
        // row a tile then, with all the accumulators along its columns, streaming each row of
        // its `b` from start to end.
        // Accumulators (in vectors) a tile holds: the host tile's rows × two vectors, shared
        // by the products of the nest.
        let budget = (tile.cols() / tile.lanes) * tile.rows;
        let products = self.products.len();
        let rows = if self.rows_share_b {
            tile.rows.min(self.m).min((budget / (2 * products)).max(1))
        } else {
            1
        };
        // Columns per tile: the host's accumulators (`tile.rows` × two vectors) shared by the
        // tile's rows — two vectors a row for a full tile, more for products of fewer rows
        // (a one-row product, a decode token's, gets 16 independent accumulators instead of
        // two dependent chains) — or as many whole vectors as there are columns.
        let vectors = (budget / (rows * products)).max(1);
        let cols = if self.n >= vectors * tile.lanes {
            vectors * tile.lanes
        } else if self.n >= tile.lanes {
            self.n / tile.lanes * tile.lanes
        } else {
            self.n
        };
        let (tiles_i, tiles_j) = (self.m / rows, self.n / cols);
        let it = self.i;
        let row = |r: usize| {
            Index::sum(
                Index::scaled(Index::Var(it), rows as i64),
                Index::Const(r as i64),
            )
        };
        // One accumulation `C[c(i, j)] += term(i, p, j)` per row of the tile, at column `col`
        // and contraction index `p`.
        let jam = |col: &Index, p: VarId| -> Vec<Stmt> {
            (0..rows)
                .flat_map(|r| self.products.iter().map(move |q| (r, q)))
                .map(|(r, q)| {
                    let f = |v: VarId| {
                        if v == self.i {
                            Some(row(r))
                        } else if v == self.j {
                            Some(col.clone())
                        } else if v == self.p {
                            Some(Index::Var(p))
                        } else {
                            None
                        }
                    };
                    let at = q.at.substitute(&f);
                    let term = q.term.map_indices(&|x| x.substitute(&f));
                    Stmt::store(
                        q.c,
                        at.clone(),
                        Value::binary(BinaryOp::Add, Value::load(q.c, at), term),
                    )
                })
                .collect()
        };
        let mut tile_body = Vec::new();
        // Zero the tile's rows (one column loop, the rows jammed).
        let zeros = (0..rows)
            .flat_map(|r| self.products.iter().map(move |q| (r, q)))
            .map(|(r, q)| {
                let f = |v: VarId| {
                    if v == self.i {
                        Some(row(r))
                    } else if v == self.j {
                        Some(Index::Var(self.j0))
                    } else {
                        None
                    }
                };
                Stmt::store(q.c, q.at.substitute(&f), Value::Const(0.0))
            })
            .collect();
        tile_body.push(Stmt::counted_loop(self.j0, self.n, Schedule::Serial, zeros));
        let vector = Schedule::Vector(tile.lanes.min(cols) as u32);
        if tiles_j > 0 {
            let jt = fresh();
            let jj = self.j;
            let col = Index::sum(Index::scaled(Index::Var(jt), cols as i64), Index::Var(jj));
            let inner = Stmt::counted_loop(jj, cols, vector, jam(&col, self.p));
            let ploop = Stmt::counted_loop(self.p, self.k, Schedule::Serial, vec![inner]);
            tile_body.push(Stmt::counted_loop(
                jt,
                tiles_j,
                Schedule::Serial,
                vec![ploop],
            ));
        }
        let rest = self.n - tiles_j * cols;
        if rest > 0 {
            let (p, jj) = (fresh(), fresh());
            let col = Index::sum(Index::Const((tiles_j * cols) as i64), Index::Var(jj));
            let inner = Stmt::counted_loop(jj, rest, vector, jam(&col, p));
            tile_body.push(Stmt::counted_loop(p, self.k, Schedule::Serial, vec![inner]));
        }
        // Tiles of rows are as independent as the rows were (each writes its own rows of C).
        let mut out = vec![Stmt::counted_loop(it, tiles_i, self.schedule, tile_body)];
        let rest_rows = self.m - tiles_i * rows;
        if rest_rows > 0 {
            out.push(self.rest_rows(tiles_i * rows, rest_rows, &mut fresh));
        }
        out
    }

    /// The original nest over rows `first..first + count`, with fresh loop variables.
    fn rest_rows(&self, first: usize, count: usize, fresh: &mut impl FnMut() -> VarId) -> Stmt {
        let (i, j0, p, j) = (fresh(), fresh(), fresh(), fresh());
        let f = |v: VarId| {
            if v == self.i {
                Some(Index::sum(Index::Const(first as i64), Index::Var(i)))
            } else if v == self.j0 {
                Some(Index::Var(j0))
            } else if v == self.p {
                Some(Index::Var(p))
            } else if v == self.j {
                Some(Index::Var(j))
            } else {
                None
            }
        };
        let body = match self.original.map_indices(&|x| x.substitute(&f)) {
            Stmt::Loop { body, .. } => body,
            other => vec![other],
        };
        let rename = |s: Stmt| -> Stmt {
            let Stmt::Loop {
                var,
                extent,
                schedule,
                body,
            } = s
            else {
                return s;
            };
            let var = if var == self.j0 { j0 } else { p };
            let body = body
                .into_iter()
                .map(|inner| match inner {
                    Stmt::Loop {
                        extent,
                        schedule,
                        body,
                        ..
                    } => Stmt::counted_loop(j, extent, schedule, body),
                    other => other,
                })
                .collect();
            Stmt::counted_loop(var, extent, schedule, body)
        };
        Stmt::counted_loop(
            i,
            count,
            Schedule::Serial,
            body.into_iter().map(rename).collect(),
        )
    }
}

/// `(var, extent, body)` of a serial loop.
fn serial_loop(s: &Stmt) -> Option<(VarId, usize, &[Stmt])> {
    match s {
        Stmt::Loop {
            var,
            extent,
            schedule: Schedule::Serial,
            body,
        } => Some((*var, *extent, body.as_slice())),
        _ => None,
    }
}

/// Whether `v` reads buffer `buf` (as a value or inside an index).
pub(crate) fn reads(v: &Value, buf: BufId) -> bool {
    let mut found = false;
    v.for_each_load(&mut |b, idx| {
        found |= b == buf || index_reads(idx, buf);
    });
    let mut in_index = false;
    v.for_each_index(&mut |idx| in_index |= index_reads(idx, buf));
    found || in_index
}

/// Whether an index reads `buf` through an [`Index::Load`].
pub(crate) fn index_reads(i: &Index, buf: BufId) -> bool {
    match i {
        Index::Const(_) | Index::Var(_) => false,
        Index::Add(a, b) => index_reads(a, buf) || index_reads(b, buf),
        Index::Mul(a, _) | Index::Div(a, _) | Index::Rem(a, _) => index_reads(a, buf),
        Index::Load { buf: b, index, .. } => *b == buf || index_reads(index, buf),
    }
}

/// The coefficient of `v` in `i` when `i` is affine in `v` (it appears only under sums and
/// products with constants), else `None`.
pub(crate) fn coefficient(i: &Index, v: VarId) -> Option<i64> {
    match i {
        Index::Const(_) => Some(0),
        Index::Var(w) => Some(i64::from(*w == v)),
        Index::Add(a, b) => coefficient(a, v)?.checked_add(coefficient(b, v)?),
        Index::Mul(a, c) => coefficient(a, v)?.checked_mul(*c),
        Index::Div(..) | Index::Rem(..) | Index::Load { .. } => (!i.mentions(v)).then_some(0),
    }
}
