//! [`expand_gemm`]: every [`Stmt::Gemm`] as the reference loop nest that defines it, for
//! targets that cannot call a matrix library (GPUs, ahead-of-time libraries).

use super::{Gemm, Index, KernelProgram, MatrixView, Schedule, Stmt, Value, VarId};
use crate::op::BinaryOp;

/// `p` with every [`Stmt::Gemm`] replaced by its reference loop nest (see [`Gemm`]): per batch
/// index and row, the row zeroed unless accumulating, then for each `p` in order, for each `j`,
/// `C[i, j] = C[i, j] + A[i, p] * B[p, j]`. The loops are [`Schedule::Serial`] and use fresh
/// loop variables. A program without a gemm comes back unchanged.
pub fn expand_gemm(p: &KernelProgram) -> KernelProgram {
    let mut out = p.clone();
    if !p.body.iter().any(|s| matches!(s, Stmt::Gemm(_))) {
        return out;
    }
    let mut vars = p.vars;
    let mut fresh = || {
        vars += 1;
        VarId(vars - 1)
    };
    let mut body = Vec::with_capacity(p.body.len());
    for s in &p.body {
        match s {
            Stmt::Gemm(g) => body.extend(nest(g, &mut fresh)),
            other => body.push(other.clone()),
        }
    }
    out.body = body;
    out.vars = vars;
    out
}

/// The loop nest of `g`.
fn nest(g: &Gemm, fresh: &mut impl FnMut() -> VarId) -> Vec<Stmt> {
    let batch: Vec<(VarId, usize)> = g.batch.iter().map(|&e| (fresh(), e)).collect();
    let (i, j0, p, j1) = (fresh(), fresh(), fresh(), fresh());
    let at = |v: &MatrixView, row: VarId, col: VarId| {
        let mut idx = Index::Const(v.offset);
        for (&(b, _), &s) in batch.iter().zip(&v.batch_strides) {
            idx = Index::sum(idx, Index::scaled(Index::var(b), s));
        }
        idx = Index::sum(idx, Index::scaled(Index::var(row), v.row_stride));
        Index::sum(idx, Index::scaled(Index::var(col), v.col_stride))
    };
    let c_acc = at(&g.c, i, j1);
    let accumulate = Stmt::store(
        g.c.buf,
        c_acc.clone(),
        Value::binary(
            BinaryOp::Add,
            Value::load(g.c.buf, c_acc),
            Value::binary(
                BinaryOp::Mul,
                Value::load(g.a.buf, at(&g.a, i, p)),
                Value::load(g.b.buf, at(&g.b, p, j1)),
            ),
        ),
    );
    let mut row = Vec::new();
    if !g.accumulate {
        row.push(Stmt::counted_loop(
            j0,
            g.n,
            Schedule::Serial,
            vec![Stmt::store(g.c.buf, at(&g.c, i, j0), Value::Const(0.0))],
        ));
    }
    row.push(Stmt::counted_loop(
        p,
        g.k,
        Schedule::Serial,
        vec![Stmt::counted_loop(
            j1,
            g.n,
            Schedule::Serial,
            vec![accumulate],
        )],
    ));
    let mut body = vec![Stmt::counted_loop(i, g.m, Schedule::Serial, row)];
    for &(b, e) in batch.iter().rev() {
        body = vec![Stmt::counted_loop(b, e, Schedule::Serial, body)];
    }
    body
}
