//! Matrix products: broadcast products for a contraction over one element, a library gemm
//! ([`Stmt::Gemm`]) for large products of the main graph, a single row times a lazy right
//! operand, and the general zero-init + accumulation nest.

use super::*;
use tttc_ir::kernel::{Gemm, MatrixView};

/// Columns per block of a transposing copy (see [`Lowerer::contiguous_rows`]): two vectors of
/// f32 on AVX-512, few enough source rows to stay in a level-1 cache.
const TRANSPOSE_BLOCK: usize = 32;

impl Lowerer {
    /// `a @ b` for node `id` of `shape`: batched over the leading axes (broadcast), the
    /// contraction in the interpreter's order.
    pub(super) fn matmul(
        &mut self,
        sc: &Scope,
        id: NodeId,
        a: Val,
        b: Val,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let (ra, rb, r) = (a.shape.len(), b.shape.len(), shape.len());
        let bad = || sc.invalid_at(id, format!("{:?} @ {:?} -> {shape:?}", a.shape, b.shape));
        if ra < 2 || rb < 2 || r < 2 {
            return Err(bad());
        }
        let (m, k, k2, n) = (
            a.shape[ra - 2],
            a.shape[ra - 1],
            b.shape[rb - 2],
            b.shape[rb - 1],
        );
        let lead = &shape[..r - 2];
        if k != k2
            || shape[r - 2] != m
            || shape[r - 1] != n
            || !broadcasts(&a.shape[..ra - 2], lead)
            || !broadcasts(&b.shape[..rb - 2], lead)
        {
            return Err(bad());
        }
        if k == 1 {
            return Ok(self.outer_product(sc, id, a, b, shape, body));
        }
        if self.wants_gemm(sc, [m, k, n], &b) {
            let a = self.view_of(sc, a, &format!("%{} lhs", id.index()), body);
            let (bv, bshape) = self.view_of(sc, b, &format!("%{} rhs", id.index()), body);
            let dest = self.dest_for(sc, id, shape);
            if let Some(g) = gemm(&a, (&bv, &bshape), &dest, [m, k, n], shape) {
                body.push(Stmt::Gemm(Box::new(g)));
                return Ok(dest.val(shape));
            }
            let b = self.contiguous_rows(sc, id, bv, bshape, n, body);
            return Ok(self.matmul_nest(sc, id, a, &b, [m, k, n], shape, body));
        }
        // A single row times an unmaterialized right operand that is not broadcast reads each of
        // its elements once: compute them inside the product instead of into a buffer.
        if m == 1 && b.as_view().is_none() && b.shape[..rb - 2] == *lead {
            let a = self.view_of(sc, a, &format!("%{} lhs", id.index()), body);
            return Ok(self.matmul_nest(sc, id, a, &b, [m, k, n], shape, body));
        }
        if let Some(v) = self.rows_of_one_transposed(sc, id, &a, &b, [m, k, n], shape, body) {
            return Ok(v);
        }
        if self.options.transposed_products
            && m > 1
            && n > 1
            && !sc.dests.contains_key(&id)
            && self.transposed_pays(sc, id, rows_contiguous(&a), &b, [m, k, n])
        {
            return Ok(self.transposed_matmul(sc, id, a, b, [m, k, n], shape, body));
        }
        let a = self.view_of(sc, a, &format!("%{} lhs", id.index()), body);
        let b = self.contiguous_rhs(sc, id, b, n, body);
        Ok(self.matmul_nest(sc, id, a, &b, [m, k, n], shape, body))
    }

    /// Whether `a @ b` (node `id`, `m > 1` rows or a batch of `m` single rows) moves fewer
    /// elements through gathers when computed transposed (`bᵀ @ aᵀ`), by at least half. As is:
    /// the copy of a strided `b` to contiguous rows (`k·n`, unless another product of this
    /// graph made it), and, when the result is read only transposed
    /// ([`Scope::read_only_transposed`]), that read (`m·n`). Transposed: the copy of `aᵀ` when
    /// `a`'s rows are contiguous (`a_rows_contiguous`; `m·k`), and, unless the result is read
    /// only transposed, its readers' strided reads (`m·n` each). A step's `gz @ Wᵀ` with 16
    /// rows against a 256×64 weight moves 5 120 elements instead of 16 384; `W @ x` read
    /// transposed, with `W` 256×64 and `x` 64×16, stays as it is (16 384 against 4 096).
    fn transposed_pays(
        &self,
        sc: &Scope,
        id: NodeId,
        a_rows_contiguous: bool,
        b: &Val,
        [m, k, n]: [usize; 3],
    ) -> bool {
        let copied = sc
            .graph
            .operands(id)
            .get(1)
            .is_some_and(|r| sc.contiguous.borrow().contains_key(r));
        let b_strided = b.as_view().is_some_and(|v| v.strides.last() != Some(&1));
        let result = m.saturating_mul(n);
        let users = sc.users.get(&id).copied().unwrap_or(1);
        let (as_is_reads, transposed_reads) = if sc.read_only_transposed(id) {
            (result.saturating_mul(users), 0)
        } else {
            (0, result.saturating_mul(users))
        };
        let as_is = if b_strided && !copied {
            k.saturating_mul(n)
        } else {
            0
        }
        .saturating_add(as_is_reads);
        let transposed = if a_rows_contiguous {
            m.saturating_mul(k)
        } else {
            0
        }
        .saturating_add(transposed_reads);
        transposed.saturating_mul(2) <= as_is
    }

    /// A batch of single rows against one strided right operand, `[L, 1, k] @ [k, n]` (a step's
    /// per-token vectors against a transposed weight), computed transposed as one product
    /// `bᵀ @ aᵀ` of `[n, k] @ [k, L]` when that moves fewer elements
    /// ([`Self::transposed_pays`] with `m = L`); the result is a strided view of it. `None`
    /// when the shapes are not of that form.
    #[allow(clippy::too_many_arguments)]
    fn rows_of_one_transposed(
        &mut self,
        sc: &Scope,
        id: NodeId,
        a: &Val,
        b: &Val,
        [m, k, n]: [usize; 3],
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Option<Val> {
        let r = shape.len();
        let (av, bv) = (a.as_view()?, b.as_view()?);
        let rb = b.shape.len();
        // One axis of `a` other than the contraction carries the rows; `b` is not batched; the
        // result has `a`'s axes.
        let row_axes: Vec<usize> = (0..r - 1).filter(|&t| shape[t] > 1).collect();
        let &[row_axis] = row_axes.as_slice() else {
            return None;
        };
        let rows = shape[row_axis];
        if !self.options.transposed_products
            || m != 1
            || n < 2
            || sc.dests.contains_key(&id)
            || a.shape.len() != r
            || a.shape[..r - 1] != shape[..r - 1]
            || b.shape[..rb - 2].iter().any(|&d| d != 1)
            || !self.transposed_pays(sc, id, true, b, [rows, k, n])
        {
            return None;
        }
        let a2 = (
            View {
                buf: av.buf,
                offset: av.offset.clone(),
                strides: vec![av.strides[row_axis], av.strides[r - 1]],
            },
            vec![rows, k],
        );
        let b2 = View {
            buf: bv.buf,
            offset: bv.offset.clone(),
            strides: bv.strides[rb - 2..].to_vec(),
        };
        let lhs = transposed_view(b2, vec![k, n]);
        let (atv, atshape) = transposed_view(a2.0, a2.1);
        let rhs = self.contiguous_rows(sc, id, atv, atshape, rows, body);
        let dest = self.temp(
            sc,
            format!("%{} matmul, transposed", id.index()),
            &[n, rows],
        );
        let buf = dest.buf;
        self.matmul_nest_at(dest, lhs, &rhs, [n, k, rows], &[n, rows], body);
        let mut strides = vec![0i64; r];
        strides[row_axis] = 1;
        strides[r - 1] = rows as i64;
        Some(Val {
            shape: shape.to_vec(),
            lazy: Lazy::View(View {
                buf,
                offset: Index::Const(0),
                strides,
            }),
        })
    }

    /// `a @ b` for node `id` when computing it transposed pays ([`Self::transposed_pays`]):
    /// `bᵀ @ aᵀ` computed into a row-major temporary of the transposed shape, returned as a
    /// transposed view of it (a `transpose` reader then sees contiguous rows). Each element is
    /// the same sum, over the contraction in the same order, of the same products.
    #[allow(clippy::too_many_arguments)]
    fn transposed_matmul(
        &mut self,
        sc: &Scope,
        id: NodeId,
        a: Val,
        b: Val,
        [m, k, n]: [usize; 3],
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Val {
        // Operands are made views first (a lazy operand is computed in its own layout), then
        // read transposed through their strides.
        let (bv, bshape) = self.view_of(sc, b, &format!("%{} rhs", id.index()), body);
        let (av, ashape) = self.view_of(sc, a, &format!("%{} lhs", id.index()), body);
        let lhs = transposed_view(bv, bshape);
        let (atv, atshape) = transposed_view(av, ashape);
        let rhs = self.contiguous_rows(sc, id, atv, atshape, m, body);
        let mut tshape = shape.to_vec();
        tshape.swap(shape.len() - 1, shape.len() - 2);
        let dest = self.temp(sc, format!("%{} matmul, transposed", id.index()), &tshape);
        let out = self.matmul_nest_at(dest, lhs, &rhs, [n, k, m], &tshape, body);
        let mut perm: Vec<usize> = (0..shape.len()).collect();
        perm.swap(shape.len() - 1, shape.len() - 2);
        permute(out, &perm)
    }

    /// The right operand `b` of matmul `id` as a view with contiguous rows
    /// ([`Self::contiguous_rows`]), made once per graph for each operand node
    /// ([`Scope::contiguous`]).
    fn contiguous_rhs(
        &mut self,
        sc: &Scope,
        id: NodeId,
        b: Val,
        n: usize,
        body: &mut Vec<Stmt>,
    ) -> Val {
        let rhs = sc.graph.operands(id).get(1).copied();
        if let Some(v) = rhs.and_then(|r| sc.contiguous.borrow().get(&r).cloned()) {
            if v.shape == b.shape {
                return v;
            }
        }
        let (bv, bshape) = self.view_of(sc, b, &format!("%{} rhs", id.index()), body);
        let v = self.contiguous_rows(sc, id, bv, bshape, n, body);
        let Some(rhs) = rhs else {
            return v;
        };
        sc.contiguous.borrow_mut().insert(rhs, v.clone());
        v
    }

    /// Whether a product of `m·n·k` with right operand `b` becomes a [`Stmt::Gemm`]: the
    /// options allow it, it is large enough, it is in the main graph (gemms run outside every
    /// loop), and it does not pay for materializing a lazy right operand that a single row would
    /// read once per element.
    fn wants_gemm(&self, sc: &Scope, [m, k, n]: [usize; 3], b: &Val) -> bool {
        let mnk = (m as u64).saturating_mul(k as u64).saturating_mul(n as u64);
        self.options.library_gemm
            && mnk >= self.options.gemm_min_mnk
            && sc.space == MemorySpace::Global
            && !(m == 1 && b.as_view().is_none())
    }

    /// A contraction over a single element is a broadcast product: no accumulator and no
    /// buffer, an expression its consumer inlines (an outer product `uᵀ d` added into a sum
    /// becomes one loop).
    fn outer_product(
        &mut self,
        sc: &Scope,
        id: NodeId,
        a: Val,
        b: Val,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Val {
        let what = |side: &str| format!("%{} {side}", id.index());
        let n_out = numel(shape).unwrap_or(0);
        let a = self.cheap_operand(sc, a, n_out, &what("lhs"), body);
        let b = self.cheap_operand(sc, b, n_out, &what("rhs"), body);
        Val {
            shape: shape.to_vec(),
            lazy: Lazy::Binary(
                BinaryOp::Mul,
                Box::new(expand(a, shape)),
                Box::new(expand(b, shape)),
            ),
        }
    }

    /// The right operand `b` (a view of shape `bshape`) with contiguous rows: the innermost loop
    /// runs along them (a transposed weight is copied once instead of gathered k times per row;
    /// with a single row the copy still pays: the accumulation then vectorizes along the row,
    /// which a dot product along the columns cannot without reassociating).
    fn contiguous_rows(
        &mut self,
        sc: &Scope,
        id: NodeId,
        b: View,
        bshape: Vec<usize>,
        n: usize,
        body: &mut Vec<Stmt>,
    ) -> Val {
        let strided = Val {
            shape: bshape,
            lazy: Lazy::View(b.clone()),
        };
        if n <= 1
            || strided
                .as_view()
                .is_some_and(|v| v.strides.last() == Some(&1))
        {
            return strided;
        }
        let dest = self.temp(
            sc,
            format!("%{} rhs, contiguous", id.index()),
            &strided.shape,
        );
        self.materialize_in_source_order(&b, &strided.shape, &dest, body);
        let shape = strided.shape;
        Val {
            lazy: Lazy::View(View {
                buf: dest.buf,
                offset: dest.offset,
                strides: row_major(&shape),
            }),
            shape,
        }
    }

    /// Copies the view `b` of `shape` into the row-major `dest`. When `b` is a transpose (its
    /// rows are strided, its columns contiguous), the copy runs in blocks of
    /// [`TRANSPOSE_BLOCK`] columns: for each block, the rows one after another, the block's
    /// columns innermost. The innermost loop still reads one element per source row (the code
    /// generator gathers), but a block reads only `TRANSPOSE_BLOCK` source rows, whose cache
    /// lines serve the next rows too, where a whole destination row at a time would read every
    /// source row (a 256×64 f32 weight is 64 KiB, more than a level-1 cache) for each
    /// destination row. The copy writes the same values in any order. Only with
    /// [`LowerOptions::blocked_transposes`] (CPU targets).
    fn materialize_in_source_order(
        &mut self,
        b: &View,
        shape: &[usize],
        dest: &Dest,
        body: &mut Vec<Stmt>,
    ) {
        let r = shape.len();
        let n = shape[r - 1];
        let transposed = r >= 2
            && shape[r - 2] > 1
            && b.strides[r - 2].unsigned_abs() < b.strides[r - 1].unsigned_abs();
        let src = Val {
            shape: shape.to_vec(),
            lazy: Lazy::View(b.clone()),
        };
        if !self.options.blocked_transposes || !transposed || n <= TRANSPOSE_BLOCK {
            self.materialize(&src, dest, body);
            return;
        }
        let (lidx, lloops) = self.loops(&shape[..r - 2]);
        let mut blocks = Vec::new();
        // (first column, columns per block, number of blocks)
        let whole = n / TRANSPOSE_BLOCK;
        let mut parts = vec![(0, TRANSPOSE_BLOCK, whole)];
        if !n.is_multiple_of(TRANSPOSE_BLOCK) {
            parts.push((whole * TRANSPOSE_BLOCK, n % TRANSPOSE_BLOCK, 1));
        }
        for (first, width, count) in parts {
            let (bidx, bloops) = self.loops(&[count]);
            let (pidx, ploops) = self.loops(&[shape[r - 2]]);
            let (jidx, jloops) = self.loops(&[width]);
            let col = Index::sum(
                Index::sum(
                    Index::Const(first as i64),
                    Index::scaled(bidx[0].clone(), width as i64),
                ),
                jidx[0].clone(),
            );
            let mut idx = lidx.clone();
            idx.extend([pidx[0].clone(), col]);
            let st = store(dest.buf, dest.at(shape, &idx), src.emit(&idx));
            blocks.extend(wrap(bloops, wrap(ploops, wrap(jloops, vec![st]))));
        }
        body.extend(wrap(lloops, blocks));
    }

    /// `a @ b` into node `id`'s destination: per leading index and row `i`, the row zeroed, then
    /// for each `p` in order `out[i, j] += a[i, p] * b[p, j]` along the row (`j` innermost).
    /// `b` is read once per element it is used for, so it may be lazy.
    #[allow(clippy::too_many_arguments)]
    fn matmul_nest(
        &mut self,
        sc: &Scope,
        id: NodeId,
        (av, ashape): (View, Vec<usize>),
        b: &Val,
        [m, k, n]: [usize; 3],
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Val {
        let dest = self.dest_for(sc, id, shape);
        self.matmul_nest_at(dest, (av, ashape), b, [m, k, n], shape, body)
    }

    /// The loop nest of [`Self::matmul_nest`] into `dest`.
    fn matmul_nest_at(
        &mut self,
        dest: Dest,
        (av, ashape): (View, Vec<usize>),
        b: &Val,
        [m, k, n]: [usize; 3],
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Val {
        let (ra, rb, r) = (ashape.len(), b.shape.len(), shape.len());
        let lead = &shape[..r - 2];
        let (lidx, lloops) = self.loops(lead);
        let (iidx, iloops) = self.loops(&[m]);
        let (j0, j0loops) = self.loops(&[n]);
        let (pidx, ploops) = self.loops(&[k]);
        let (j1, j1loops) = self.loops(&[n]);
        let out_at = |j: &Index| {
            let mut idx = lidx.clone();
            idx.extend([iidx[0].clone(), j.clone()]);
            dest.at(shape, &idx)
        };
        let mut a_idx = bcast_idx(&ashape[..ra - 2], &lidx);
        a_idx.extend([iidx[0].clone(), pidx[0].clone()]);
        let mut b_idx = bcast_idx(&b.shape[..rb - 2], &lidx);
        b_idx.extend([pidx[0].clone(), j1[0].clone()]);
        let mut inner = wrap(
            j0loops,
            vec![store(dest.buf, out_at(&j0[0]), Value::Const(0.0))],
        );
        let acc_at = out_at(&j1[0]);
        inner.extend(wrap(
            ploops,
            wrap(
                j1loops,
                vec![store(
                    dest.buf,
                    acc_at.clone(),
                    bin(
                        BinaryOp::Add,
                        load(dest.buf, acc_at),
                        bin(BinaryOp::Mul, av.load(&a_idx), b.emit(&b_idx)),
                    ),
                )],
            ),
        ));
        body.extend(wrap(lloops, wrap(iloops, inner)));
        dest.val(shape)
    }
}

/// The gemm computing `a @ b` into `dest` (row-major, of `shape`), batched over `shape`'s
/// leading axes (broadcast operands get stride 0; axes of extent 1 are dropped). `None` when an
/// offset is not a constant or the result would overwrite an operand's buffer (the caller then
/// emits the loop nest).
fn gemm(
    (a, ashape): &(View, Vec<usize>),
    (b, bshape): (&View, &[usize]),
    dest: &Dest,
    [m, k, n]: [usize; 3],
    shape: &[usize],
) -> Option<Gemm> {
    if a.buf == dest.buf || b.buf == dest.buf {
        return None;
    }
    let r = shape.len();
    let c_strides = row_major(shape);
    let lead: Vec<usize> = (0..r - 2).filter(|&t| shape[t] > 1).collect();
    let batch_stride = |v: &View, vshape: &[usize], t: usize| -> i64 {
        let skip = r - vshape.len();
        match t.checked_sub(skip) {
            Some(ax) if vshape[ax] > 1 => v.strides[ax],
            _ => 0,
        }
    };
    let view = |v: &View, vshape: &[usize], offset: &Index, rows: i64, cols: i64| {
        Some(MatrixView {
            buf: v.buf,
            offset: constant(offset)?,
            batch_strides: lead.iter().map(|&t| batch_stride(v, vshape, t)).collect(),
            row_stride: rows,
            col_stride: cols,
        })
    };
    let (ra, rb) = (ashape.len(), bshape.len());
    let c = View {
        buf: dest.buf,
        offset: dest.offset.clone(),
        strides: c_strides.clone(),
    };
    Some(Gemm {
        a: view(a, ashape, &a.offset, a.strides[ra - 2], a.strides[ra - 1])?,
        b: view(b, bshape, &b.offset, b.strides[rb - 2], b.strides[rb - 1])?,
        c: view(&c, shape, &c.offset, c_strides[r - 2], c_strides[r - 1])?,
        m,
        n,
        k,
        batch: lead.iter().map(|&t| shape[t]).collect(),
        accumulate: false,
    })
}

/// Whether `v`'s rows are contiguous in memory (a lazy value is made row-major), so that its
/// transpose would be copied to be a right operand.
fn rows_contiguous(v: &Val) -> bool {
    v.as_view()
        .is_none_or(|w| w.strides.last() == Some(&1) || w.strides.len() < 2)
}

/// The view `v` of `shape` with its last two axes swapped (a transpose, through the strides).
fn transposed_view(mut v: View, mut shape: Vec<usize>) -> (View, Vec<usize>) {
    let r = shape.len();
    v.strides.swap(r - 1, r - 2);
    shape.swap(r - 1, r - 2);
    (v, shape)
}

/// The value of an index without loop variables.
fn constant(i: &Index) -> Option<i64> {
    match i {
        Index::Const(c) => Some(*c),
        Index::Var(_) => None,
        Index::Add(a, b) => constant(a)?.checked_add(constant(b)?),
        Index::Mul(a, c) => constant(a)?.checked_mul(*c),
        Index::Div(a, c) => constant(a)?.checked_div(*c),
        Index::Rem(a, c) => constant(a)?.checked_rem(*c),
        Index::Load { .. } => None,
    }
}
