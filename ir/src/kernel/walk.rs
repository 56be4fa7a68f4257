//! Walkers over the kernel IR: the one place that knows how [`Stmt`]s, [`Value`]s and
//! [`Index`]es nest. Passes, checkers and code generators visit, collect and rewrite through
//! these instead of matching the trees by hand.
//!
//! Statement walks are pre-order and the visitor decides whether to enter a loop's body (so a
//! caller can skip loops that never run, or stop at GPU thread loops). Value walks are pre-order
//! too, operands left to right, which is the order code generators evaluate them in.

use super::{BufId, Index, Stmt, Value, VarId};
use std::collections::BTreeSet;

/// One element access of a buffer: a load inside a [`Value`], or a [`Stmt::Store`]. (A
/// [`Stmt::Gemm`] reads and writes whole strided views, not elements at an [`Index`]: see
/// [`Stmt::gemm_buffers`]; element-wise walkers skip it.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access<'a> {
    /// The buffer.
    pub buf: BufId,
    /// The element.
    pub index: &'a Index,
    /// Whether it is a store.
    pub write: bool,
}

impl Index {
    /// Calls `f` on every loop variable the index mentions, left to right (repeats included).
    pub fn for_each_var(&self, f: &mut impl FnMut(VarId)) {
        match self {
            Index::Const(_) => {}
            Index::Var(v) => f(*v),
            Index::Add(a, b) => {
                a.for_each_var(f);
                b.for_each_var(f);
            }
            Index::Mul(a, _) | Index::Div(a, _) | Index::Rem(a, _) => a.for_each_var(f),
            Index::Load { index, .. } => index.for_each_var(f),
        }
    }

    /// Calls `f` on every buffer element the index reads ([`Index::Load`]s), inner reads first.
    pub fn for_each_load<'a>(&'a self, f: &mut impl FnMut(BufId, &'a Index)) {
        match self {
            Index::Const(_) | Index::Var(_) => {}
            Index::Add(a, b) => {
                a.for_each_load(f);
                b.for_each_load(f);
            }
            Index::Mul(a, _) | Index::Div(a, _) | Index::Rem(a, _) => a.for_each_load(f),
            Index::Load { buf, index, .. } => {
                index.for_each_load(f);
                f(*buf, index);
            }
        }
    }

    /// Calls `f` on the buffer and index of every [`Index::Load`], which it may rewrite.
    pub fn for_each_load_mut(&mut self, f: &mut impl FnMut(&mut BufId, &mut Index)) {
        match self {
            Index::Const(_) | Index::Var(_) => {}
            Index::Add(a, b) => {
                a.for_each_load_mut(f);
                b.for_each_load_mut(f);
            }
            Index::Mul(a, _) | Index::Div(a, _) | Index::Rem(a, _) => a.for_each_load_mut(f),
            Index::Load { buf, index, .. } => {
                index.for_each_load_mut(f);
                f(buf, index);
            }
        }
    }

    /// Whether the index reads memory (contains an [`Index::Load`]).
    pub fn has_load(&self) -> bool {
        let mut found = false;
        self.for_each_load(&mut |_, _| found = true);
        found
    }

    /// The loop variables the index mentions.
    pub fn vars(&self) -> BTreeSet<VarId> {
        let mut out = BTreeSet::new();
        self.for_each_var(&mut |v| {
            out.insert(v);
        });
        out
    }

    /// Whether the index mentions loop variable `v`.
    pub fn mentions(&self, v: VarId) -> bool {
        match self {
            Index::Const(_) => false,
            Index::Var(w) => *w == v,
            Index::Add(a, b) => a.mentions(v) || b.mentions(v),
            Index::Mul(a, _) | Index::Div(a, _) | Index::Rem(a, _) => a.mentions(v),
            Index::Load { index, .. } => index.mentions(v),
        }
    }

    /// The index with every variable `v` for which `f(v)` is `Some(x)` replaced by `x` (sums and
    /// products with constants folded as [`Index::sum`] and [`Index::scaled`] fold them).
    pub fn substitute(&self, f: &impl Fn(VarId) -> Option<Index>) -> Index {
        match self {
            Index::Const(c) => Index::Const(*c),
            Index::Var(v) => f(*v).unwrap_or(Index::Var(*v)),
            Index::Add(a, b) => Index::sum(a.substitute(f), b.substitute(f)),
            Index::Mul(a, c) => Index::scaled(a.substitute(f), *c),
            Index::Div(a, c) => Index::Div(Box::new(a.substitute(f)), *c),
            Index::Rem(a, c) => Index::Rem(Box::new(a.substitute(f)), *c),
            Index::Load { buf, index, bound } => Index::load(*buf, index.substitute(f), *bound),
        }
    }
}

impl Value {
    /// Visits the expression pre-order, operands left to right; `f` returns whether to visit
    /// the operands of the node it was given.
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Value) -> bool) {
        if !f(self) {
            return;
        }
        match self {
            Value::Load { .. } | Value::Const(_) | Value::FromIndex(_) => {}
            Value::Unary(_, x) => x.walk(f),
            Value::Binary(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
        }
    }

    /// Calls `f` on every load, left to right: a [`Value::Load`] after the loads its index
    /// makes ([`Index::Load`]s, which are included).
    pub fn for_each_load<'a>(&'a self, f: &mut impl FnMut(BufId, &'a Index)) {
        self.walk(&mut |v| {
            match v {
                Value::Load { buf, index } => {
                    index.for_each_load(f);
                    f(*buf, index);
                }
                Value::FromIndex(index) => index.for_each_load(f),
                _ => {}
            }
            true
        });
    }

    /// Calls `f` on every index in the expression (of loads and of [`Value::FromIndex`]; not
    /// the indices inside an [`Index::Load`], which are part of the index given).
    pub fn for_each_index<'a>(&'a self, f: &mut impl FnMut(&'a Index)) {
        self.walk(&mut |v| {
            match v {
                Value::Load { index, .. } | Value::FromIndex(index) => f(index),
                _ => {}
            }
            true
        });
    }

    /// Calls `f` on every load's buffer and index (those of [`Index::Load`]s included, inner
    /// first), which it may rewrite.
    pub fn for_each_load_mut(&mut self, f: &mut impl FnMut(&mut BufId, &mut Index)) {
        match self {
            Value::Load { buf, index } => {
                index.for_each_load_mut(f);
                f(buf, index)
            }
            Value::FromIndex(index) => index.for_each_load_mut(f),
            Value::Const(_) => {}
            Value::Unary(_, x) => x.for_each_load_mut(f),
            Value::Binary(_, a, b) => {
                a.for_each_load_mut(f);
                b.for_each_load_mut(f);
            }
        }
    }

    /// The expression with every index (of loads and of [`Value::FromIndex`]) replaced by
    /// `f(index)`.
    pub fn map_indices(&self, f: &impl Fn(&Index) -> Index) -> Value {
        match self {
            Value::Load { buf, index } => Value::Load {
                buf: *buf,
                index: f(index),
            },
            Value::Const(c) => Value::Const(*c),
            Value::FromIndex(i) => Value::FromIndex(f(i)),
            Value::Unary(op, x) => Value::Unary(*op, Box::new(x.map_indices(f))),
            Value::Binary(op, a, b) => {
                Value::Binary(*op, Box::new(a.map_indices(f)), Box::new(b.map_indices(f)))
            }
        }
    }
}

impl Stmt {
    /// Visits the statement and, where `f` returns `true` for a loop, its body, pre-order.
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Stmt) -> bool) {
        if f(self) {
            if let Stmt::Loop { body, .. } = self {
                for s in body {
                    s.walk(f);
                }
            }
        }
    }

    /// [`Stmt::walk`] with mutable access: `f` may rewrite the statement it is given before its
    /// body (the rewritten one's) is visited.
    pub fn walk_mut(&mut self, f: &mut impl FnMut(&mut Stmt) -> bool) {
        if f(self) {
            if let Stmt::Loop { body, .. } = self {
                for s in body {
                    s.walk_mut(f);
                }
            }
        }
    }

    /// Calls `f` on every access in the statement (in a loop, in its whole body): for a store,
    /// the loads of its value left to right, the loads of its index ([`Index::Load`]), then the
    /// store.
    pub fn for_each_access<'a>(&'a self, f: &mut impl FnMut(Access<'a>)) {
        self.walk(&mut |s| {
            if let Stmt::Store { buf, index, value } = s {
                let mut read = |buf, index| {
                    f(Access {
                        buf,
                        index,
                        write: false,
                    })
                };
                value.for_each_load(&mut read);
                index.for_each_load(&mut read);
                f(Access {
                    buf: *buf,
                    index,
                    write: true,
                });
            }
            true
        });
    }

    /// Calls `f` on every index of the statement (stores' and their values'; in a loop, in its
    /// whole body).
    pub fn for_each_index<'a>(&'a self, f: &mut impl FnMut(&'a Index)) {
        self.walk(&mut |s| {
            if let Stmt::Store { index, value, .. } = s {
                f(index);
                value.for_each_index(f);
            }
            true
        });
    }

    /// The stores in the statement (in a loop, in its whole body), in order.
    pub fn stores(&self) -> Vec<(BufId, &Index, &Value)> {
        let mut out = Vec::new();
        self.walk(&mut |s| {
            if let Stmt::Store { buf, index, value } = s {
                out.push((*buf, index, value));
            }
            true
        });
        out
    }

    /// The statement with every index replaced by `f(index)` (loops and barriers kept).
    pub fn map_indices(&self, f: &impl Fn(&Index) -> Index) -> Stmt {
        match self {
            Stmt::Loop {
                var,
                extent,
                schedule,
                body,
            } => Stmt::Loop {
                var: *var,
                extent: *extent,
                schedule: *schedule,
                body: body.iter().map(|s| s.map_indices(f)).collect(),
            },
            Stmt::Store { buf, index, value } => Stmt::Store {
                buf: *buf,
                index: f(index),
                value: value.map_indices(f),
            },
            Stmt::Barrier => Stmt::Barrier,
            // Its offsets are constants: no index to map.
            Stmt::Gemm(g) => Stmt::Gemm(g.clone()),
            Stmt::Call { .. } => self.clone(),
        }
    }

    /// For a [`Stmt::Gemm`], the buffers it reads (`A`, then `B`) and the one it writes (`C`);
    /// `None` for other statements.
    pub fn gemm_buffers(&self) -> Option<([BufId; 2], BufId)> {
        match self {
            Stmt::Gemm(g) => Some(([g.a.buf, g.b.buf], g.c.buf)),
            _ => None,
        }
    }

    /// Whether the statement is or contains a [`Stmt::Barrier`].
    pub fn has_barrier(&self) -> bool {
        let mut found = false;
        self.walk(&mut |s| {
            found |= matches!(s, Stmt::Barrier);
            !found
        });
        found
    }
}

/// Calls `f` on every statement of `body` that runs (loops of extent 0 are not entered), with
/// [`Stmt::walk`].
fn walk_running<'a>(body: &'a [Stmt], f: &mut impl FnMut(&'a Stmt)) {
    for s in body {
        s.walk(&mut |s| {
            f(s);
            !matches!(s, Stmt::Loop { extent: 0, .. })
        });
    }
}

/// Buffers read or written anywhere in `body` (outside loops that never run), in id order; a
/// [`Stmt::Call`] uses its arguments.
pub fn buffers_used(body: &[Stmt]) -> BTreeSet<BufId> {
    let mut out = BTreeSet::new();
    walk_running(body, &mut |s| match s {
        Stmt::Store { buf, index, value } => {
            out.insert(*buf);
            value.for_each_load(&mut |b, _| {
                out.insert(b);
            });
            index.for_each_load(&mut |b, _| {
                out.insert(b);
            });
        }
        Stmt::Gemm(g) => {
            out.extend([g.a.buf, g.b.buf, g.c.buf]);
        }
        Stmt::Call { args, .. } => out.extend(args.iter().copied()),
        Stmt::Loop { .. } | Stmt::Barrier => {}
    });
    out
}

/// Loop variables mentioned by an index anywhere in `body` (outside loops that never run), in
/// id order.
pub fn vars_used(body: &[Stmt]) -> BTreeSet<VarId> {
    let mut out = BTreeSet::new();
    walk_running(body, &mut |s| {
        if let Stmt::Store { index, value, .. } = s {
            index.for_each_var(&mut |v| {
                out.insert(v);
            });
            value.for_each_index(&mut |i| {
                i.for_each_var(&mut |v| {
                    out.insert(v);
                })
            });
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Schedule;
    use crate::BinaryOp;

    fn ld(buf: u32, index: Index) -> Value {
        Value::Load {
            buf: BufId(buf),
            index,
        }
    }

    fn lp(var: u32, extent: usize, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop {
            var: VarId(var),
            extent,
            schedule: Schedule::Serial,
            body,
        }
    }

    fn st(buf: u32, index: Index, value: Value) -> Stmt {
        Stmt::Store {
            buf: BufId(buf),
            index,
            value,
        }
    }

    fn v(i: u32) -> Index {
        Index::Var(VarId(i))
    }

    #[test]
    fn accesses_come_loads_first_then_the_store() {
        let s = lp(
            0,
            4,
            vec![st(
                2,
                v(0),
                Value::Binary(
                    BinaryOp::Add,
                    Box::new(ld(0, v(0))),
                    Box::new(ld(1, Index::Const(3))),
                ),
            )],
        );
        let mut seen = Vec::new();
        s.for_each_access(&mut |a| seen.push((a.buf.0, a.write)));
        assert_eq!(seen, vec![(0, false), (1, false), (2, true)]);
    }

    #[test]
    fn loops_that_never_run_are_skipped_by_the_use_sets() {
        let body = vec![
            lp(0, 0, vec![st(7, v(5), ld(8, v(6)))]),
            lp(1, 2, vec![st(1, v(1), ld(0, Index::scaled(v(1), 2)))]),
        ];
        assert_eq!(buffers_used(&body), BTreeSet::from([BufId(0), BufId(1)]));
        assert_eq!(vars_used(&body), BTreeSet::from([VarId(1)]));
    }

    #[test]
    fn substitution_folds_constants() {
        let i = Index::sum(Index::scaled(v(0), 4), v(1));
        let zero = i.substitute(&|w| (w == VarId(0)).then_some(Index::Const(0)));
        assert_eq!(zero, v(1));
        assert!(i.mentions(VarId(0)) && !zero.mentions(VarId(0)));
        assert_eq!(i.vars(), BTreeSet::from([VarId(0), VarId(1)]));
    }

    #[test]
    fn data_dependent_indices_are_accesses_and_mention_their_variables() {
        // out[int(ids[i0]) * 2 + i1] = table[int(ids[i0], 3) * 2 + i1]
        let row = Index::load(BufId(0), v(0), 3);
        let at = Index::sum(Index::scaled(row, 2), v(1));
        let s = lp(
            0,
            4,
            vec![lp(1, 2, vec![st(2, at.clone(), ld(1, at.clone()))])],
        );
        let mut seen = Vec::new();
        s.for_each_access(&mut |a| seen.push((a.buf.0, a.write)));
        assert_eq!(
            seen,
            vec![(0, false), (1, false), (0, false), (2, true)],
            "the id reads of the load, then of the store, then the store"
        );
        assert_eq!(
            buffers_used(std::slice::from_ref(&s)),
            BTreeSet::from([BufId(0), BufId(1), BufId(2)])
        );
        assert!(at.mentions(VarId(0)) && at.has_load());
        assert_eq!(at.vars(), BTreeSet::from([VarId(0), VarId(1)]));
        let moved = at.substitute(&|w| (w == VarId(0)).then_some(Index::Const(5)));
        assert_eq!(
            moved,
            Index::sum(
                Index::scaled(Index::load(BufId(0), Index::Const(5), 3), 2),
                v(1)
            )
        );
        let mut value = ld(1, at);
        value.for_each_load_mut(&mut |b, _| *b = BufId(b.0 + 10));
        let mut bufs = Vec::new();
        value.for_each_load(&mut |b, _| bufs.push(b.0));
        assert_eq!(bufs, vec![10, 11]);
    }

    #[test]
    fn the_clamp_of_a_loaded_index() {
        let c = |x| Index::clamp_loaded(x, 5);
        assert_eq!(
            [
                c(0.0),
                c(3.0),
                c(4.0),
                c(2.7),
                c(-0.5),
                c(-7.0),
                c(5.0),
                c(1e300)
            ],
            [0, 3, 4, 2, 0, 0, 4, 4]
        );
        assert_eq!(
            [c(f64::NAN), c(f64::INFINITY), c(f64::NEG_INFINITY)],
            [0, 4, 0]
        );
    }

    #[test]
    fn barriers_are_found_at_any_depth() {
        assert!(lp(0, 1, vec![lp(1, 1, vec![Stmt::Barrier])]).has_barrier());
        assert!(!lp(0, 1, vec![st(0, v(0), Value::Const(0.0))]).has_barrier());
    }
}
