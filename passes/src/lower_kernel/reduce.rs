//! Reductions along an axis (`sum`, `mean`), `sum_to`, `mix` and `mix_outer`: an
//! initialisation and an accumulation in the interpreter's order.

use super::*;

impl Lowerer {
    /// `dest` (shape of `x` with `axis` set to 1) = the sum or mean of `x` along `axis`,
    /// accumulated in index order.
    pub(super) fn reduce_into(
        &mut self,
        x: &Val,
        axis: usize,
        fun: ReduceOp,
        dest: &Dest,
        body: &mut Vec<Stmt>,
    ) {
        let s = &x.shape;
        let n = s.get(axis).copied().unwrap_or(1);
        let mut out_shape = s.clone();
        if let Some(d) = out_shape.get_mut(axis) {
            *d = 1;
        }
        let (before, after) = (&s[..axis.min(s.len())], &s[(axis + 1).min(s.len())..]);
        let (oidx, oloops) = self.loops(before);
        let (i0, i0loops) = self.loops(after);
        let (pidx, ploops) = self.loops(&[n]);
        let (i1, i1loops) = self.loops(after);
        let out_at = |inner: &[Index]| {
            let mut idx = oidx.clone();
            idx.push(Index::Const(0));
            idx.extend_from_slice(inner);
            dest.at(&out_shape, &idx)
        };
        let mut stmts = wrap(
            i0loops,
            vec![store(dest.buf, out_at(&i0), Value::Const(0.0))],
        );
        let mut xi = oidx.clone();
        xi.push(pidx[0].clone());
        xi.extend(i1.iter().cloned());
        let at = out_at(&i1);
        stmts.extend(wrap(
            ploops,
            wrap(
                i1loops,
                vec![store(
                    dest.buf,
                    at.clone(),
                    bin(BinaryOp::Add, load(dest.buf, at), x.emit(&xi)),
                )],
            ),
        ));
        if fun == ReduceOp::Mean {
            let (i2, i2loops) = self.loops(after);
            let at = out_at(&i2);
            stmts.extend(wrap(
                i2loops,
                vec![store(
                    dest.buf,
                    at.clone(),
                    bin(BinaryOp::Div, load(dest.buf, at), Value::Const(n as f64)),
                )],
            ));
        }
        body.extend(wrap(oloops, stmts));
    }

    /// `sum_to`: the leading extra axes summed one at a time (axis 0 each time), then every
    /// axis the target keeps with extent 1, in order — exactly the interpreter's sequence of
    /// reductions; intermediate sums go to temporaries, the last one to the node's buffer.
    pub(super) fn sum_to(
        &mut self,
        sc: &Scope,
        id: NodeId,
        x: Val,
        target: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let s = x.shape.clone();
        if target.len() > s.len() {
            return Err(sc.invalid_at(id, format!("{target:?} does not broadcast to {s:?}")));
        }
        let lead = s.len() - target.len();
        let mut axes = vec![0usize; lead];
        for (j, &t) in target.iter().enumerate() {
            let d = s[lead + j];
            if d != t {
                if t != 1 {
                    return Err(
                        sc.invalid_at(id, format!("{target:?} does not broadcast to {s:?}"))
                    );
                }
                axes.push(j);
            }
        }
        if axes.is_empty() {
            return Ok(x);
        }
        let mut cur = x;
        let count = axes.len();
        for (i, &axis) in axes.iter().enumerate() {
            let mut out_shape = cur.shape.clone();
            out_shape[axis] = 1;
            let dest = if i + 1 == count {
                self.dest_for(sc, id, target)
            } else {
                self.temp(sc, format!("%{} partial{i}", id.index()), &out_shape)
            };
            self.reduce_into(&cur, axis, ReduceOp::Sum, &dest, body);
            cur = dest.val(&out_shape);
            if i < lead {
                // Drop the summed leading axis.
                cur = Val::view(out_shape[1..].to_vec(), dest.buf, dest.offset);
            }
        }
        Ok(Val {
            shape: target.to_vec(),
            lazy: cur.lazy,
        })
    }

    /// `mix(w, x)`: `out[i, ..] = Σ_j w[i, j] x[j, ..]`, zero-initialised, then accumulated over
    /// `j` in order.
    pub(super) fn mix(
        &mut self,
        sc: &Scope,
        id: NodeId,
        w: Val,
        x: Val,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let (&[p, k], Some(&k2)) = (w.shape.as_slice(), x.shape.first()) else {
            return Err(sc.invalid_at(id, format!("operands {:?}, {:?}", w.shape, x.shape)));
        };
        let rest = x.shape[1..].to_vec();
        let mut want = vec![p];
        want.extend(&rest);
        if k != k2 || want != shape {
            return Err(sc.invalid_at(id, format!("operands {:?}, {:?}", w.shape, x.shape)));
        }
        let (wv, _) = self.view_of(sc, w, &format!("%{} weights", id.index()), body);
        let (xv, _) = self.view_of(sc, x, &format!("%{} rows", id.index()), body);
        let dest = self.dest_for(sc, id, shape);
        let (iidx, iloops) = self.loops(&[p]);
        let (s0, s0loops) = self.loops(&rest);
        let (jidx, jloops) = self.loops(&[k]);
        let (s1, s1loops) = self.loops(&rest);
        let out_at = |s: &[Index]| {
            let mut idx = vec![iidx[0].clone()];
            idx.extend_from_slice(s);
            dest.at(shape, &idx)
        };
        let mut x_idx = vec![jidx[0].clone()];
        x_idx.extend(s1.iter().cloned());
        let term = bin(
            BinaryOp::Mul,
            wv.load(&[iidx[0].clone(), jidx[0].clone()]),
            xv.load(&x_idx),
        );
        let sum = ZeroThenAccumulate {
            buf: dest.buf,
            zero: (s0loops, out_at(&s0)),
            over: (jloops, s1loops, out_at(&s1)),
        };
        body.extend(wrap(iloops, sum.stmts(term)));
        Ok(dest.val(shape))
    }

    /// `mix_outer(w, u, d)`: `out[i, a, b] = Σ_j w[i, j] u[j, a] d[j, b]`, zero-initialised,
    /// then accumulated over `j` in order.
    pub(super) fn mix_outer(
        &mut self,
        sc: &Scope,
        id: NodeId,
        [w, u, d]: [Val; 3],
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let (&[p, k], &[k1, m], &[k2, n]) =
            (w.shape.as_slice(), u.shape.as_slice(), d.shape.as_slice())
        else {
            return Err(sc.invalid_at(
                id,
                format!("operands {:?}, {:?}, {:?}", w.shape, u.shape, d.shape),
            ));
        };
        if k != k1 || k != k2 || shape != [p, m, n] {
            return Err(sc.invalid_at(
                id,
                format!("operands {:?}, {:?}, {:?}", w.shape, u.shape, d.shape),
            ));
        }
        let (wv, _) = self.view_of(sc, w, &format!("%{} weights", id.index()), body);
        let (uv, _) = self.view_of(sc, u, &format!("%{} u", id.index()), body);
        let (dv, _) = self.view_of(sc, d, &format!("%{} d", id.index()), body);
        let dest = self.dest_for(sc, id, shape);
        let (iidx, iloops) = self.loops(&[p]);
        let (s0, s0loops) = self.loops(&[m, n]);
        let (jidx, jloops) = self.loops(&[k]);
        let (s1, s1loops) = self.loops(&[m, n]);
        let (i, j) = (iidx[0].clone(), jidx[0].clone());
        let out_at = |s: &[Index]| dest.at(shape, &[i.clone(), s[0].clone(), s[1].clone()]);
        let a = bin(
            BinaryOp::Mul,
            wv.load(&[i.clone(), j.clone()]),
            uv.load(&[j.clone(), s1[0].clone()]),
        );
        let term = bin(BinaryOp::Mul, a, dv.load(&[j, s1[1].clone()]));
        let sum = ZeroThenAccumulate {
            buf: dest.buf,
            zero: (s0loops, out_at(&s0)),
            over: (jloops, s1loops, out_at(&s1)),
        };
        body.extend(wrap(iloops, sum.stmts(term)));
        Ok(dest.val(shape))
    }
}

/// A sum into `buf`, zero-initialised over `zero`'s loops at its index, then accumulated in loop
/// order: `buf[at] += term` inside `over`'s outer (summed) and inner loops. `mix` and
/// `mix_outer` are both this shape.
struct ZeroThenAccumulate {
    buf: BufId,
    zero: (Loops, Index),
    over: (Loops, Loops, Index),
}

/// Loop variables with their extents, outermost first (what [`wrap`] takes).
type Loops = Vec<(VarId, usize)>;

impl ZeroThenAccumulate {
    fn stmts(self, term: Value) -> Vec<Stmt> {
        let (zero_loops, zero_at) = self.zero;
        let (outer, inner, at) = self.over;
        let mut stmts = wrap(
            zero_loops,
            vec![store(self.buf, zero_at, Value::Const(0.0))],
        );
        let sum = bin(BinaryOp::Add, load(self.buf, at.clone()), term);
        stmts.extend(wrap(outer, wrap(inner, vec![store(self.buf, at, sum)])));
        stmts
    }
}
