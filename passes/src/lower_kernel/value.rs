//! The value model of lowering: a node's value is a [`Val`] (a shape and a [`Lazy`] way to
//! compute one element: a strided [`View`] of a buffer, a constant, an iota or an elementwise
//! expression), materialized into a [`Dest`] when it must live in memory.

use super::*;

/// A strided window of a buffer: element `idx` is `buf[offset + Σ idx_i strides_i]`.
#[derive(Clone, Debug)]
pub(super) struct View {
    pub(super) buf: BufId,
    pub(super) offset: Index,
    pub(super) strides: Vec<i64>,
}

impl View {
    pub(super) fn at(&self, idx: &[Index]) -> Index {
        address(&self.offset, &self.strides, idx)
    }

    pub(super) fn load(&self, idx: &[Index]) -> Value {
        Value::Load {
            buf: self.buf,
            index: self.at(idx),
        }
    }
}

/// How a value is computed, given the index of one element.
#[derive(Clone, Debug)]
pub(super) enum Lazy {
    /// Stored in a buffer.
    View(View),
    /// The same number everywhere.
    Const(f64),
    /// The index along axis 0.
    Iota,
    /// An elementwise function of a value of the same shape.
    Unary(UnaryOp, Box<Val>),
    /// An elementwise function of two values broadcast to this shape.
    Binary(BinaryOp, Box<Val>, Box<Val>),
    /// Axis `i` is axis `perm[i]` of the operand.
    Permute(Box<Val>, Vec<usize>),
    /// The operand broadcast to this shape.
    Broadcast(Box<Val>),
    /// The operand's row-major elements with this shape.
    Reshape(Box<Val>),
    /// Rows of `table` by `ids` (the first `rank` axes of this value index the ids, the rest
    /// the row): `table[ids[s], h]`, with the id clamped into `0..rows`.
    Gather {
        table: View,
        ids: View,
        rank: usize,
        rows: usize,
    },
}

/// A tensor value: its shape and how it is computed.
#[derive(Clone, Debug)]
pub(super) struct Val {
    pub(super) shape: Vec<usize>,
    pub(super) lazy: Lazy,
}

impl Val {
    /// The row-major contents of `buf` from `offset`.
    pub(super) fn view(shape: Vec<usize>, buf: BufId, offset: Index) -> Val {
        let strides = row_major(&shape);
        Val {
            shape,
            lazy: Lazy::View(View {
                buf,
                offset,
                strides,
            }),
        }
    }

    /// The element at `idx` as an expression.
    pub(super) fn emit(&self, idx: &[Index]) -> Value {
        match &self.lazy {
            Lazy::View(v) => v.load(idx),
            Lazy::Const(c) => Value::Const(*c),
            Lazy::Iota => Value::FromIndex(idx.first().cloned().unwrap_or(Index::Const(0))),
            Lazy::Unary(f, x) => Value::Unary(*f, Box::new(x.emit(&bcast_idx(&x.shape, idx)))),
            Lazy::Binary(f, a, b) => Value::Binary(
                *f,
                Box::new(a.emit(&bcast_idx(&a.shape, idx))),
                Box::new(b.emit(&bcast_idx(&b.shape, idx))),
            ),
            Lazy::Permute(x, perm) => {
                let mut xi = vec![Index::Const(0); perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    if let (Some(slot), Some(v)) = (xi.get_mut(p), idx.get(i)) {
                        *slot = v.clone();
                    }
                }
                x.emit(&xi)
            }
            Lazy::Broadcast(x) => x.emit(&bcast_idx(&x.shape, idx)),
            Lazy::Reshape(x) => x.emit(&reshape_idx(&self.shape, &x.shape, idx)),
            Lazy::Gather {
                table,
                ids,
                rank,
                rows,
            } => {
                let (s, h) = idx.split_at((*rank).min(idx.len()));
                let mut at = vec![Index::load(ids.buf, ids.at(s), *rows as i64)];
                at.extend_from_slice(h);
                table.load(&at)
            }
        }
    }

    /// Whether reading an element costs more than a load or a constant (so that a value used
    /// more than once is better materialized).
    pub(super) fn is_costly(&self) -> bool {
        match &self.lazy {
            Lazy::View(_) | Lazy::Const(_) | Lazy::Iota => false,
            Lazy::Permute(x, _) | Lazy::Broadcast(x) => x.is_costly(),
            // A reshape that only inserts or drops unit axes reads like its operand; others
            // compute digits with `/` and `%`.
            Lazy::Reshape(x) => x.is_costly() || !reshape_is_regrouping(&self.shape, &x.shape),
            Lazy::Unary(_, x) => !x.all_const(),
            Lazy::Binary(_, a, b) => !(a.all_const() && b.all_const()),
            Lazy::Gather { .. } => true,
        }
    }

    /// Whether every leaf is a constant.
    pub(super) fn all_const(&self) -> bool {
        match &self.lazy {
            Lazy::Const(_) => true,
            Lazy::View(_) | Lazy::Iota | Lazy::Gather { .. } => false,
            Lazy::Unary(_, x) | Lazy::Permute(x, _) | Lazy::Broadcast(x) | Lazy::Reshape(x) => {
                x.all_const()
            }
            Lazy::Binary(_, a, b) => a.all_const() && b.all_const(),
        }
    }

    pub(super) fn as_view(&self) -> Option<&View> {
        match &self.lazy {
            Lazy::View(v) => Some(v),
            _ => None,
        }
    }
}

/// What a node evaluates to.
#[derive(Clone, Debug)]
pub(super) enum NodeVal {
    Tensor(Val),
    Tuple(Vec<Val>),
}

/// Where a materialized value goes: row-major from `offset` of `buf`.
#[derive(Clone, Debug)]
pub(super) struct Dest {
    pub(super) buf: BufId,
    pub(super) offset: Index,
}

impl Dest {
    pub(super) fn at(&self, shape: &[usize], idx: &[Index]) -> Index {
        address(&self.offset, &row_major(shape), idx)
    }

    pub(super) fn val(&self, shape: &[usize]) -> Val {
        Val::view(shape.to_vec(), self.buf, self.offset.clone())
    }

    /// Whether `v` is exactly this destination's contents.
    pub(super) fn holds(&self, v: &Val) -> bool {
        v.as_view().is_some_and(|w| {
            w.buf == self.buf && w.offset == self.offset && w.strides == row_major(&v.shape)
        })
    }
}

/// Loops wrapped around `body`, outermost first.
pub(super) fn wrap(loops: Vec<(VarId, usize)>, body: Vec<Stmt>) -> Vec<Stmt> {
    let mut body = body;
    for (var, extent) in loops.into_iter().rev() {
        body = vec![Stmt::Loop {
            var,
            extent,
            schedule: Schedule::Serial,
            body,
        }];
    }
    body
}

/// `buf[index] = value`.
pub(super) fn store(buf: BufId, index: Index, value: Value) -> Stmt {
    Stmt::store(buf, index, value)
}

/// `buf[index]`.
pub(super) fn load(buf: BufId, index: Index) -> Value {
    Value::load(buf, index)
}

/// `op(a, b)`.
pub(super) fn bin(op: BinaryOp, a: Value, b: Value) -> Value {
    Value::binary(op, a, b)
}

/// Whether `op` broadcasts (numpy rules) to exactly `target`.
pub(super) fn broadcasts(op: &[usize], target: &[usize]) -> bool {
    op.len() <= target.len()
        && op
            .iter()
            .zip(&target[target.len() - op.len()..])
            .all(|(&a, &b)| a == b || a == 1)
}

/// Axis `i` of the result is axis `perm[i]` of `x`.
pub(super) fn permute(x: Val, perm: &[usize]) -> Val {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let lazy = match x.lazy {
        Lazy::View(v) => Lazy::View(View {
            buf: v.buf,
            offset: v.offset,
            strides: perm.iter().map(|&p| v.strides[p]).collect(),
        }),
        Lazy::Const(c) => Lazy::Const(c),
        lazy => Lazy::Permute(
            Box::new(Val {
                shape: x.shape,
                lazy,
            }),
            perm.to_vec(),
        ),
    };
    Val { shape, lazy }
}

/// `x` broadcast to `shape` (checked by the caller).
pub(super) fn expand(x: Val, shape: &[usize]) -> Val {
    let lazy = match x.lazy {
        Lazy::View(v) => {
            let extra = shape.len() - x.shape.len();
            let mut strides = vec![0i64; extra];
            for (j, (&d, &s)) in x.shape.iter().zip(&v.strides).enumerate() {
                strides.push(if d == 1 && shape[extra + j] != 1 {
                    0
                } else {
                    s
                });
            }
            Lazy::View(View {
                buf: v.buf,
                offset: v.offset,
                strides,
            })
        }
        Lazy::Const(c) => Lazy::Const(c),
        lazy => Lazy::Broadcast(Box::new(Val {
            shape: x.shape,
            lazy,
        })),
    };
    Val {
        shape: shape.to_vec(),
        lazy,
    }
}

/// `x`'s row-major elements with `shape` (same size, checked by the caller).
pub(super) fn reshape(x: Val, shape: &[usize]) -> Val {
    let lazy = match x.lazy {
        Lazy::View(v) => match reshape_strides(shape, &x.shape, &v.strides) {
            Some(strides) => Lazy::View(View {
                buf: v.buf,
                offset: v.offset,
                strides,
            }),
            None => Lazy::Reshape(Box::new(Val {
                shape: x.shape,
                lazy: Lazy::View(v),
            })),
        },
        Lazy::Const(c) => Lazy::Const(c),
        lazy => Lazy::Reshape(Box::new(Val {
            shape: x.shape,
            lazy,
        })),
    };
    Val {
        shape: shape.to_vec(),
        lazy,
    }
}
