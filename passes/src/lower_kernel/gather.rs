//! `gather` (a lazy value: each element loads its table row through a data-dependent index,
//! so with one use it fuses into its consumer like an elementwise value) and `scatter_add` (its adjoint: a
//! zeroed result and one serial accumulation over the rows of the operand).

use super::*;

impl Lowerer {
    /// `table [V, h...]` by `ids [s...]`: rows `ids[s]` of the table, read where consumed. The
    /// table and the ids are views (materialized first unless they are).
    pub(super) fn gather(
        &mut self,
        sc: &Scope,
        id: NodeId,
        table: Val,
        ids: Val,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let Some((&rows, row)) = table.shape.split_first() else {
            return Err(sc.invalid_at(id, "a table without axes"));
        };
        let mut want = ids.shape.clone();
        want.extend_from_slice(row);
        if want != shape || rows == 0 && numel(shape) != Some(0) {
            return Err(sc.invalid_at(
                id,
                format!(
                    "table {:?} and ids {:?} for {shape:?}",
                    table.shape, ids.shape
                ),
            ));
        }
        let rank = ids.shape.len();
        let (table, _) = self.view_of(sc, table, &format!("%{} table", id.index()), body);
        let (ids, _) = self.view_of(sc, ids, &format!("%{} ids", id.index()), body);
        Ok(Val {
            shape: shape.to_vec(),
            lazy: Lazy::Gather {
                table,
                ids,
                rank,
                rows,
            },
        })
    }

    /// `grad [s..., h...]` summed by `ids [s...]` into `[rows, h...]`: zeroed, then one serial
    /// loop nest over the operand adds each of its rows into row `ids[s]` (in index order, as
    /// the graph interpreter does).
    pub(super) fn scatter_add(
        &mut self,
        sc: &Scope,
        id: NodeId,
        grad: Val,
        ids: Val,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let rank = ids.shape.len();
        let fits = grad.shape.len() >= rank
            && grad.shape[..rank] == ids.shape[..]
            && !shape.is_empty()
            && shape[1..] == grad.shape[rank..];
        if !fits {
            return Err(sc.invalid_at(
                id,
                format!(
                    "rows {:?} and ids {:?} for {shape:?}",
                    grad.shape, ids.shape
                ),
            ));
        }
        let rows = shape[0];
        let dest = self.dest_for(sc, id, shape);
        let zero = Val {
            shape: shape.to_vec(),
            lazy: Lazy::Const(0.0),
        };
        self.materialize(&zero, &dest, body);
        if rows == 0 || numel(&grad.shape) == Some(0) {
            return Ok(dest.val(shape));
        }
        let (ids, _) = self.view_of(sc, ids, &format!("%{} ids", id.index()), body);
        let (idx, loops) = self.loops(&grad.shape);
        let row = Index::load(ids.buf, ids.at(&idx[..rank]), rows as i64);
        let mut at = vec![row];
        at.extend_from_slice(&idx[rank..]);
        let at = dest.at(shape, &at);
        let sum = bin(BinaryOp::Add, load(dest.buf, at.clone()), grad.emit(&idx));
        body.extend(wrap(loops, vec![store(dest.buf, at, sum)]));
        Ok(dest.val(shape))
    }
}
