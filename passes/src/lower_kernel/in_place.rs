//! Next states written over the states they replace.
//!
//! A scan's step writes each `next_<state>` into a `Local` temporary, and the temporary is then
//! copied into the state buffer for the next mini-batch. Where the step's last use of the old
//! state is the very element-wise loop that computes the new one, element by element (as in
//! `W − η·Xᵀ∇` or momentum's `(1 − α)·W + S − …`), that loop can store into the state buffer
//! itself: each element is read and then overwritten by the same iteration, and nothing reads the
//! old state afterwards. [`write_in_place`] checks exactly that on the lowered statements and
//! rewrites the store; the copy (one state-sized write per mini-batch and state) goes away.

use tttc_ir::kernel::{BufId, Stmt};

/// Makes the one store of `next` in `body` store into `state` instead, when that computes the
/// same values, and returns whether it did (else `body` is unchanged and the caller copies
/// `next` into `state` after it). `len` is the number of elements of both buffers (the same
/// shape and layout, viewed from element 0).
///
/// The conditions, all checked on `body`:
/// - `next` is written by exactly one store and never read (its only reader is the copy the
///   caller would add), and no matrix-product statement or call touches `next` or `state`;
/// - that store runs exactly `len` times (the product of its enclosing loops' extents): it
///   writes every element once, since it alone defines all of `next`;
/// - in the top-level statement holding it, `state` is read only by that store's value and
///   only at the element being stored, and written nowhere;
/// - no later top-level statement reads or writes `state`.
pub(super) fn write_in_place(body: &mut [Stmt], next: BufId, state: BufId, len: usize) -> bool {
    let Some(p) = sole_writer(body, next) else {
        return false;
    };
    let reads_next = body.iter().any(|s| {
        let mut read = false;
        s.for_each_access(&mut |a| read |= a.buf == next && !a.write);
        read
    });
    let opaque = body.iter().any(|s| {
        let mut touches = false;
        s.walk(&mut |t| {
            match t {
                Stmt::Gemm(g) => {
                    touches |= [g.a.buf, g.b.buf, g.c.buf]
                        .iter()
                        .any(|&b| b == next || b == state)
                }
                Stmt::Call { .. } => touches = true,
                _ => {}
            }
            true
        });
        touches
    });
    if reads_next || opaque {
        return false;
    }
    if store_trips(&body[p], next, 1) != Some(len as u128) {
        return false;
    }
    if !reads_state_only_where_stored(&body[p], next, state) {
        return false;
    }
    let used_later = body[p + 1..].iter().any(|s| {
        let mut used = false;
        s.for_each_access(&mut |a| used |= a.buf == state);
        used
    });
    if used_later {
        return false;
    }
    body[p].walk_mut(&mut |s| {
        if let Stmt::Store { buf, .. } = s {
            if *buf == next {
                *buf = state;
            }
        }
        true
    });
    true
}

/// The position of the top-level statement of `body` holding the one store to `buf`, or `None`
/// when there is no store to it or more than one.
fn sole_writer(body: &[Stmt], buf: BufId) -> Option<usize> {
    let mut found = None;
    for (p, s) in body.iter().enumerate() {
        let n = s.stores().iter().filter(|(b, _, _)| *b == buf).count();
        match (n, found) {
            (0, _) => {}
            (1, None) => found = Some(p),
            _ => return None,
        }
    }
    found
}

/// How many times the store to `buf` in `s` runs: `outer` times the extents of the loops around
/// it (`None` when `s` holds no store to `buf`).
fn store_trips(s: &Stmt, buf: BufId, outer: u128) -> Option<u128> {
    match s {
        Stmt::Store { buf: b, .. } if *b == buf => Some(outer),
        Stmt::Loop { extent, body, .. } => body
            .iter()
            .find_map(|t| store_trips(t, buf, outer.saturating_mul(*extent as u128))),
        _ => None,
    }
}

/// Whether in `s` every access to `state` is a load inside the value of the store to `next`,
/// at the index that store writes.
fn reads_state_only_where_stored(s: &Stmt, next: BufId, state: BufId) -> bool {
    let mut ok = true;
    s.walk(&mut |t| {
        if let Stmt::Store { buf, index, value } = t {
            if *buf == state {
                ok = false;
            }
            index.for_each_load(&mut |b, _| ok &= b != state);
            value.for_each_load(&mut |b, at| ok &= b != state || (*buf == next && at == index));
        }
        true
    });
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use tttc_ir::kernel::{Index, Schedule, Value, VarId};
    use tttc_ir::BinaryOp;

    const W: BufId = BufId(0);
    const NEXT: BufId = BufId(1);
    const G: BufId = BufId(2);

    fn at(v: u32) -> Index {
        Index::var(VarId(v))
    }

    /// `for i in 0..4: dst[i] = value(i)`.
    fn elementwise(dst: BufId, value: Value) -> Stmt {
        Stmt::counted_loop(
            VarId(0),
            4,
            Schedule::Serial,
            vec![Stmt::store(dst, at(0), value)],
        )
    }

    fn w_minus_g(w_index: Index) -> Value {
        Value::binary(
            BinaryOp::Sub,
            Value::load(W, w_index),
            Value::load(G, at(0)),
        )
    }

    #[test]
    fn the_update_loop_stores_into_the_state() {
        let mut body = vec![elementwise(NEXT, w_minus_g(at(0)))];
        assert!(write_in_place(&mut body, NEXT, W, 4));
        assert_eq!(body, vec![elementwise(W, w_minus_g(at(0)))]);
    }

    #[test]
    fn a_read_of_another_element_keeps_the_copy() {
        // next[i] = w[3 - i] - g[i]: iteration 3 would read w[0], already overwritten.
        let reversed = Index::sum(Index::Const(3), Index::scaled(at(0), -1));
        let mut body = vec![elementwise(NEXT, w_minus_g(reversed))];
        let before = body.clone();
        assert!(!write_in_place(&mut body, NEXT, W, 4));
        assert_eq!(body, before);
    }

    #[test]
    fn a_later_read_of_the_state_keeps_the_copy() {
        let mut body = vec![
            elementwise(NEXT, w_minus_g(at(0))),
            elementwise(G, Value::load(W, at(0))),
        ];
        assert!(!write_in_place(&mut body, NEXT, W, 4));
    }

    #[test]
    fn a_partial_or_repeated_write_keeps_the_copy() {
        let mut body = vec![elementwise(NEXT, w_minus_g(at(0)))];
        // Four stores cannot define eight elements, nor eight stores four elements once each.
        assert!(!write_in_place(&mut body, NEXT, W, 8));
        let mut twice = vec![Stmt::counted_loop(
            VarId(1),
            2,
            Schedule::Serial,
            vec![elementwise(NEXT, w_minus_g(at(0)))],
        )];
        assert!(!write_in_place(&mut twice, NEXT, W, 4));
    }

    #[test]
    fn a_read_of_next_or_a_second_writer_keeps_the_copy() {
        let mut read = vec![
            elementwise(NEXT, w_minus_g(at(0))),
            elementwise(G, Value::load(NEXT, at(0))),
        ];
        assert!(!write_in_place(&mut read, NEXT, W, 4));
        let mut two = vec![
            elementwise(NEXT, w_minus_g(at(0))),
            elementwise(NEXT, Value::load(G, at(0))),
        ];
        assert!(!write_in_place(&mut two, NEXT, W, 4));
    }

    #[test]
    fn earlier_reads_of_the_state_are_fine() {
        let mut body = vec![
            elementwise(G, Value::load(W, at(0))),
            elementwise(NEXT, w_minus_g(at(0))),
        ];
        assert!(write_in_place(&mut body, NEXT, W, 4));
        assert_eq!(body[1], elementwise(W, w_minus_g(at(0))));
    }
}
