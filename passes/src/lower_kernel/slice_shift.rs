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
        let n = extent_along(sc, id, &x, axis, shape)?;
        if let Some(f) = &fill {
            let mut want = shape.to_vec();
            want[axis] = by;
            if f.shape != want {
                return Err(sc.invalid_at(id, format!("fill {:?}, expected {want:?}", f.shape)));
            }
        }
        // A shift by nothing (a causal convolution's current tap) of a value in memory is that
        // value: no copy.
        if by == 0 && x.as_view().is_some() && !sc.dests.contains_key(&id) {
            return Ok(x);
        }
        let dest = self.dest_for(sc, id, shape);
        let head = by.min(n);
        // The first `by` positions: the fill or zero; then position `t + by` reads `x[t]`.
        self.store_range(&dest, shape, axis, 0..head, body, |idx| {
            fill.as_ref().map_or(Value::Const(0.0), |f| f.emit(idx))
        });
        self.store_range(&dest, shape, axis, head..n, body, |idx| x.emit(idx));
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
        let n = extent_along(sc, id, &x, axis, shape)?;
        let dest = self.dest_for(sc, id, shape);
        let moved = n.saturating_sub(by);
        self.store_range(&dest, shape, axis, 0..moved, body, |idx| {
            let mut from = idx.to_vec();
            from[axis] = Index::sum(idx[axis].clone(), Index::Const(by as i64));
            x.emit(&from)
        });
        self.store_range(&dest, shape, axis, moved..n, body, |_| Value::Const(0.0));
        Ok(dest.val(shape))
    }

    /// A loop nest over `shape` with `axis` restricted to `range` that stores `value(idx)` at
    /// `dest[idx + range.start]` along `axis` (`idx` the loops' indices, from 0); nothing for
    /// an empty range.
    fn store_range(
        &mut self,
        dest: &Dest,
        shape: &[usize],
        axis: usize,
        range: std::ops::Range<usize>,
        body: &mut Vec<Stmt>,
        value: impl Fn(&[Index]) -> Value,
    ) {
        if range.is_empty() {
            return;
        }
        let mut extents = shape.to_vec();
        extents[axis] = range.len();
        let (idx, loops) = self.loops(&extents);
        let mut to = idx.clone();
        if range.start > 0 {
            to[axis] = Index::sum(idx[axis].clone(), Index::Const(range.start as i64));
        }
        let v = value(&idx);
        body.extend(wrap(loops, vec![store(dest.buf, dest.at(shape, &to), v)]));
    }
}

/// The extent of `axis` in `shape`, checking that operand `x` has that shape.
fn extent_along(sc: &Scope, id: NodeId, x: &Val, axis: usize, shape: &[usize]) -> Res<usize> {
    let Some(&n) = shape.get(axis) else {
        return Err(sc.invalid_at(id, format!("axis {axis} out of range")));
    };
    if x.shape != shape {
        return Err(sc.invalid_at(id, format!("operand {:?}", x.shape)));
    }
    Ok(n)
}
