//! `slice` (a view moved along one axis), `shift` (two loop nests: the fill, then the
//! operand moved by `by`) and `unshift` (the operand moved back, then the zeros).

use super::*;

impl Lowerer {
    /// `x[.., start .. start + len, ..]` along `axis`: a view of `x` (materialized first
    /// unless it is one) moved by `start` elements of that axis.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn slice(
        &mut self,
        sc: &Scope,
        id: NodeId,
        x: Val,
        axis: usize,
        start: usize,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let fits = x.shape.len() == shape.len()
            && x.shape.get(axis).is_some_and(|&n| {
                shape
                    .get(axis)
                    .is_some_and(|&len| start.checked_add(len).is_some_and(|e| e <= n))
            })
            && (0..shape.len()).all(|a| a == axis || x.shape[a] == shape[a]);
        if !fits {
            return Err(sc.invalid_at(id, format!("a slice of {:?} to {shape:?}", x.shape)));
        }
        let (w, _) = self.view_of(sc, x, &format!("%{} operand", id.index()), body);
        let offset = Index::sum(
            w.offset.clone(),
            Index::Const(start as i64 * w.strides[axis]),
        );
        Ok(Val {
            shape: shape.to_vec(),
            lazy: Lazy::View(View {
                buf: w.buf,
                offset,
                strides: w.strides,
            }),
        })
    }

    /// `y[t] = x[t - by]` along `axis`, and `fill[t]` (or zero) for `t < by`: two loop nests,
    /// one over the first `by` positions and one over the rest, so no conditionals.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn shift(
        &mut self,
        sc: &Scope,
        id: NodeId,
        x: Val,
        fill: Option<Val>,
        axis: usize,
        by: usize,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let Some(&n) = shape.get(axis) else {
            return Err(sc.invalid_at(id, format!("axis {axis} out of range")));
        };
        if x.shape != shape {
            return Err(sc.invalid_at(id, format!("operand {:?}", x.shape)));
        }
        if let Some(f) = &fill {
            let mut want = shape.to_vec();
            want[axis] = by;
            if f.shape != want {
                return Err(sc.invalid_at(id, format!("fill {:?}, expected {want:?}", f.shape)));
            }
        }
        let dest = self.dest_for(sc, id, shape);
        let head = by.min(n);
        if head > 0 {
            let mut extents = shape.to_vec();
            extents[axis] = head;
            let (idx, loops) = self.loops(&extents);
            let value = fill.as_ref().map_or(Value::Const(0.0), |f| f.emit(&idx));
            body.extend(wrap(
                loops,
                vec![store(dest.buf, dest.at(shape, &idx), value)],
            ));
        }
        if n > head {
            let mut extents = shape.to_vec();
            extents[axis] = n - head;
            let (idx, loops) = self.loops(&extents);
            let mut to = idx.clone();
            to[axis] = Index::sum(idx[axis].clone(), Index::Const(by as i64));
            body.extend(wrap(
                loops,
                vec![store(dest.buf, dest.at(shape, &to), x.emit(&idx))],
            ));
        }
        Ok(dest.val(shape))
    }

    /// `y[t] = x[t + by]` along `axis` for `t + by < n`, and zero for the last `by` positions:
    /// two loop nests, as [`Lowerer::shift`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn unshift(
        &mut self,
        sc: &Scope,
        id: NodeId,
        x: Val,
        axis: usize,
        by: usize,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let Some(&n) = shape.get(axis) else {
            return Err(sc.invalid_at(id, format!("axis {axis} out of range")));
        };
        if x.shape != shape {
            return Err(sc.invalid_at(id, format!("operand {:?}", x.shape)));
        }
        let dest = self.dest_for(sc, id, shape);
        let moved = n.saturating_sub(by);
        if moved > 0 {
            let mut extents = shape.to_vec();
            extents[axis] = moved;
            let (idx, loops) = self.loops(&extents);
            let mut from = idx.clone();
            from[axis] = Index::sum(idx[axis].clone(), Index::Const(by as i64));
            body.extend(wrap(
                loops,
                vec![store(dest.buf, dest.at(shape, &idx), x.emit(&from))],
            ));
        }
        if n > moved {
            let mut extents = shape.to_vec();
            extents[axis] = n - moved;
            let (idx, loops) = self.loops(&extents);
            let mut to = idx.clone();
            to[axis] = Index::sum(idx[axis].clone(), Index::Const(moved as i64));
            body.extend(wrap(
                loops,
                vec![store(dest.buf, dest.at(shape, &to), Value::Const(0.0))],
            ));
        }
        Ok(dest.val(shape))
    }
}
