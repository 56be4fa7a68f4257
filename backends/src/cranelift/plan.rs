//! How an innermost loop (a loop whose body is only stores) is compiled: what is hoisted out of
//! it, which accumulators live in registers, and whether it gets a 128-bit SIMD body.
//!
//! Cranelift has no loop optimizer beyond hoisting pure arithmetic, so this does by hand what
//! matters for the kernels tttc lowers to: elementwise loops, the `j` loop of `C[i, j] +=
//! A[i, k] * B[k, j]`, and reductions `acc[i] = acc[i] + f(x[i, j])`. None of it changes what
//! is computed or in which order values are combined: every element is computed by the same
//! operations on the same operands as in the serial loop.
//!
//! - **Hoisting.** Every largest subexpression that does not mention the loop variable and does
//!   not load from a buffer the loop stores to is computed once before the loop (its value is
//!   the same in every iteration, and the loop runs at least once where it is computed).
//! - **Register accumulators.** A buffer the loop stores to, whose every access in the loop is
//!   at one and the same index that does not mention the loop variable, is loaded once before
//!   the loop, kept in a register, and stored once after it. Distinct buffers a loop touches
//!   never overlap (each is its own allocation, a caller tensor, or a memory-plan arena region
//!   that no buffer alive in the same top-level statement overlaps), so no other access can
//!   see the element in between.
//! - **SIMD.** The loop gets a vector body (`f32x4` / `f64x2`) followed by a scalar remainder
//!   when every store's index is `base + v` (coefficient 1 in the loop variable `v`), every load
//!   that is not hoisted is too, and every access of a buffer the loop stores to uses exactly
//!   the same index expression. Then iteration `v` touches element `base + v` of each written
//!   buffer and no other iteration does, so running lanes `v..v+w` statement by statement keeps
//!   every element's sequence of reads and writes. Hoisted values are splatted; functions
//!   without a vector instruction (libm calls, `floor`, `float(index)`) are applied lane by lane.
//! - **Forwarding.** Within one iteration, an element of a written buffer that is accessed at
//!   a single index is loaded at most once and stored once, at the end of the iteration, with
//!   the last value stored to it.
//! - **Unroll and jam** ([`jammable`]). A SIMD loop over `j` that is the whole body of a loop
//!   over `p`, where no written index mentions `p` (`C[i, j] += A[i, p] * B[p, j]`), runs
//!   `U` iterations of `p` inside each iteration of `j`, in order. Each element of a written
//!   buffer is touched only by the iterations with its `j`, and still sees them in increasing
//!   `p`; with forwarding it stays in a register across the `U` updates.

use std::collections::{BTreeMap, BTreeSet};
use tttc_ir::kernel::{BufId, Index, Stmt, Value, VarId};

/// The compilation plan of one innermost loop.
#[derive(Debug, Default)]
pub(crate) struct InnerPlan<'p> {
    /// Largest loop-invariant subexpressions, computed before the loop.
    pub hoisted: Vec<&'p Value>,
    /// Buffers kept in a register, with the one index they are accessed at.
    pub promoted: Vec<(BufId, &'p Index)>,
    /// The other written buffers whose every access in the body is at one index (mentioning
    /// the loop variable): within one iteration, a value stored or loaded there is reused by
    /// later loads instead of reloaded, and stored once at the end of the iteration.
    pub forwarded: Vec<(BufId, &'p Index)>,
    /// Whether the loop gets a SIMD body.
    pub vector: bool,
}

/// The coefficient of `v` in `index` when `index` is affine in `v` (`None` when `v` appears
/// under a division or remainder, or the coefficient overflows).
pub(crate) fn coefficient(index: &Index, v: VarId) -> Option<i64> {
    match index {
        Index::Const(_) => Some(0),
        Index::Var(w) => Some(i64::from(*w == v)),
        Index::Add(a, b) => coefficient(a, v)?.checked_add(coefficient(b, v)?),
        Index::Mul(a, k) => coefficient(a, v)?.checked_mul(*k),
        Index::Div(a, _) | Index::Rem(a, _) | Index::Load { index: a, .. } => {
            if a.mentions(v) {
                None
            } else {
                Some(0)
            }
        }
    }
}

/// Whether some data-dependent index ([`Index::Load`]) in `body` reads a buffer in `written`
/// (then nothing is planned: an id read would depend on the iteration's own stores).
fn index_reads_written(body: &[Stmt], written: &BTreeSet<BufId>) -> bool {
    let mut found = false;
    for s in body {
        s.for_each_index(&mut |i| {
            i.for_each_load(&mut |b, _| found |= written.contains(&b));
        });
    }
    found
}

/// Whether `value` is the same in every iteration of the loop over `v` that stores to
/// `written` (it neither mentions `v` nor loads from a written buffer).
fn invariant(value: &Value, v: VarId, written: &BTreeSet<BufId>) -> bool {
    let mut same = true;
    value.walk(&mut |x| {
        match x {
            Value::Load { buf, index } => {
                same &= !written.contains(buf) && !index.mentions(v);
                index.for_each_load(&mut |b, _| same &= !written.contains(&b));
            }
            Value::FromIndex(i) => {
                same &= !i.mentions(v);
                i.for_each_load(&mut |b, _| same &= !written.contains(&b));
            }
            Value::Const(_) | Value::Unary(..) | Value::Binary(..) => {}
        }
        same
    });
    same
}

/// Collects the largest invariant subexpressions of `value` into `out`.
fn hoist<'p>(value: &'p Value, v: VarId, written: &BTreeSet<BufId>, out: &mut Vec<&'p Value>) {
    value.walk(&mut |x| {
        let hoisted = invariant(x, v, written);
        if hoisted {
            out.push(x);
        }
        !hoisted
    });
}

/// Every load in `value` outside the hoisted subexpressions, as `(buffer, index)`.
fn loads<'p>(
    value: &'p Value,
    v: VarId,
    written: &BTreeSet<BufId>,
    out: &mut Vec<(BufId, &'p Index)>,
) {
    value.walk(&mut |x| {
        if invariant(x, v, written) {
            return false;
        }
        if let Value::Load { buf, index } = x {
            out.push((*buf, index));
        }
        true
    });
}

/// The plan for the loop over `v` with `body`, if `body` is only stores (else `None`: the
/// loop is compiled as it stands).
pub(crate) fn plan_inner(v: VarId, body: &[Stmt]) -> Option<InnerPlan<'_>> {
    let mut stores = Vec::new();
    for s in body {
        match s {
            Stmt::Store { buf, index, value } => stores.push((*buf, index, value)),
            Stmt::Loop { .. } | Stmt::Barrier | Stmt::Gemm(_) | Stmt::Call { .. } => return None,
        }
    }
    if stores.is_empty() {
        return None;
    }
    let written: BTreeSet<BufId> = stores.iter().map(|(b, _, _)| *b).collect();
    if index_reads_written(body, &written) {
        return None;
    }
    let mut plan = InnerPlan::default();
    let mut accesses: Vec<(BufId, &Index)> = Vec::new();
    for (buf, index, value) in &stores {
        hoist(value, v, &written, &mut plan.hoisted);
        loads(value, v, &written, &mut accesses);
        accesses.push((*buf, index));
    }
    // Per written buffer: the one index all its accesses use, if there is one.
    let mut single: BTreeMap<BufId, Option<&Index>> = BTreeMap::new();
    for &(buf, index) in &accesses {
        if !written.contains(&buf) {
            continue;
        }
        single
            .entry(buf)
            .and_modify(|s| {
                if s.is_some_and(|i| i != index) {
                    *s = None;
                }
            })
            .or_insert(Some(index));
    }
    for (&buf, index) in &single {
        if let Some(index) = index {
            if index.mentions(v) {
                plan.forwarded.push((buf, index));
            } else {
                plan.promoted.push((buf, index));
            }
        }
    }
    plan.vector = single.values().all(Option::is_some)
        && stores
            .iter()
            .all(|(_, index, _)| coefficient(index, v) == Some(1))
        && accesses
            .iter()
            .all(|(_, index)| coefficient(index, v) == Some(1));
    Some(plan)
}

/// Whether the loop over `v` with `plan` can be jammed into an enclosing loop over `p`: it has
/// a SIMD body, and no index of a buffer it writes mentions `p`.
pub(crate) fn jammable(plan: &InnerPlan<'_>, p: VarId) -> bool {
    plan.vector
        && plan.promoted.is_empty()
        && plan.forwarded.iter().all(|(_, index)| !index.mentions(p))
}

/// Every access in `value`, as `(buffer, index)`.
fn all_loads<'p>(value: &'p Value, out: &mut Vec<(BufId, &'p Index)>) {
    value.for_each_load(&mut |buf, index| out.push((buf, index)));
}

/// Whether the iterations of a loop over `i` with `body` — stores and one innermost loop over
/// `j` — are independent, so that several of them can be interleaved statement by statement
/// (the inner loop's iterations for each of them side by side): every buffer the body writes
/// is accessed at one and the same index everywhere in the body, that index does not mention
/// `j`, and it is affine in `i` with a non-zero coefficient (so different iterations of `i`
/// touch different elements). This is the shape of a row reduction `s[i] = 0; for j { s[i] =
/// s[i] + f(x[i, j]) }; s[i] = s[i] / n`, whose dependent chain of additions then runs for
/// several rows at once.
pub(crate) fn rows_independent(i: VarId, j: VarId, body: &[Stmt]) -> bool {
    let mut stores: Vec<(BufId, &Index)> = Vec::new();
    let mut accesses: Vec<(BufId, &Index)> = Vec::new();
    let mut loops = 0;
    for s in body {
        match s {
            Stmt::Store { buf, index, value } => {
                stores.push((*buf, index));
                all_loads(value, &mut accesses);
            }
            Stmt::Loop { var, body, .. } => {
                loops += 1;
                if *var != j {
                    return false;
                }
                for s in body {
                    match s {
                        Stmt::Store { buf, index, value } => {
                            stores.push((*buf, index));
                            all_loads(value, &mut accesses);
                        }
                        Stmt::Loop { .. } | Stmt::Barrier | Stmt::Gemm(_) | Stmt::Call { .. } => {
                            return false
                        }
                    }
                }
            }
            Stmt::Barrier | Stmt::Gemm(_) | Stmt::Call { .. } => return false,
        }
    }
    if loops != 1 {
        return false;
    }
    let written: BTreeSet<BufId> = stores.iter().map(|(b, _)| *b).collect();
    if index_reads_written(body, &written) {
        return false;
    }
    accesses.extend(stores);
    let mut single: BTreeMap<BufId, &Index> = BTreeMap::new();
    for (buf, index) in accesses {
        if !written.contains(&buf) {
            continue;
        }
        if *single.entry(buf).or_insert(index) != index {
            return false;
        }
    }
    single
        .values()
        .all(|index| !index.mentions(j) && !matches!(coefficient(index, i), None | Some(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tttc_ir::BinaryOp;

    fn ld(buf: u32, index: Index) -> Value {
        Value::Load {
            buf: BufId(buf),
            index,
        }
    }

    fn st(buf: u32, index: Index, value: Value) -> Stmt {
        Stmt::Store {
            buf: BufId(buf),
            index,
            value,
        }
    }

    fn add(a: Value, b: Value) -> Value {
        Value::Binary(BinaryOp::Add, Box::new(a), Box::new(b))
    }

    fn mul(a: Value, b: Value) -> Value {
        Value::Binary(BinaryOp::Mul, Box::new(a), Box::new(b))
    }

    const I: VarId = VarId(0);
    const J: VarId = VarId(1);

    fn row(k: i64, v: VarId) -> Index {
        Index::sum(Index::scaled(Index::Var(I), k), Index::Var(v))
    }

    #[test]
    fn matmul_row_is_vectorized_with_a_hoisted_scalar() {
        // c[i*8 + j] = c[i*8 + j] + a[i] * b[i*8 + j]
        let body = vec![st(
            0,
            row(8, J),
            add(
                ld(0, row(8, J)),
                mul(ld(1, Index::Var(I)), ld(2, row(8, J))),
            ),
        )];
        let p = plan_inner(J, &body).expect("stores only");
        assert!(p.vector);
        assert!(p.promoted.is_empty());
        assert_eq!(p.forwarded, vec![(BufId(0), &row(8, J))]);
        assert_eq!(p.hoisted, vec![&ld(1, Index::Var(I))]);
        // Jammable into a loop over `k` (not mentioned by the written index), not over `i`.
        assert!(jammable(&p, VarId(7)));
        assert!(!jammable(&p, I));
    }

    #[test]
    fn reduction_is_promoted_not_vectorized() {
        // s[i] = s[i] + x[i*8 + j]
        let body = vec![st(
            0,
            Index::Var(I),
            add(ld(0, Index::Var(I)), ld(1, row(8, J))),
        )];
        let p = plan_inner(J, &body).expect("stores only");
        assert!(!p.vector);
        assert_eq!(p.promoted, vec![(BufId(0), &Index::Var(I))]);
    }

    #[test]
    fn shifted_self_read_is_neither() {
        // y[j + 1] = y[j] + 1: a loop-carried dependence.
        let body = vec![st(
            0,
            Index::sum(Index::Var(J), Index::Const(1)),
            add(ld(0, Index::Var(J)), Value::Const(1.0)),
        )];
        let p = plan_inner(J, &body).expect("stores only");
        assert!(!p.vector);
        assert!(p.promoted.is_empty());
    }

    #[test]
    fn strided_or_divided_accesses_are_not_vectorized() {
        let strided = vec![st(0, Index::scaled(Index::Var(J), 2), Value::Const(0.0))];
        assert!(!plan_inner(J, &strided).expect("stores").vector);
        let divided = vec![st(
            0,
            Index::Var(J),
            ld(1, Index::Div(Box::new(Index::Var(J)), 2)),
        )];
        assert!(!plan_inner(J, &divided).expect("stores").vector);
        // A load that does not mention `j` is hoisted, and the loop vectorizes.
        let invariant = vec![st(0, Index::Var(J), ld(1, row(8, I)))];
        assert!(plan_inner(J, &invariant).expect("stores").vector);
        let column = vec![st(0, Index::Var(J), ld(1, Index::scaled(Index::Var(J), 8)))];
        assert!(!plan_inner(J, &column).expect("stores").vector);
    }

    #[test]
    fn invariant_load_of_a_written_buffer_blocks_both() {
        // y[j] = y[0] * 2: y[0] changes in iteration 0.
        let body = vec![st(
            0,
            Index::Var(J),
            mul(ld(0, Index::Const(0)), Value::Const(2.0)),
        )];
        let p = plan_inner(J, &body).expect("stores only");
        assert!(!p.vector);
        assert!(p.promoted.is_empty());
        assert!(p.hoisted.contains(&&Value::Const(2.0)));
        assert_eq!(p.hoisted.len(), 1);
    }

    #[test]
    fn row_reductions_are_independent_rows() {
        let s_i = || Index::Var(I);
        let reduction = |inner: Vec<Stmt>| {
            vec![
                st(0, s_i(), Value::Const(0.0)),
                Stmt::Loop {
                    var: J,
                    extent: 8,
                    schedule: tttc_ir::kernel::Schedule::Serial,
                    body: inner,
                },
                st(0, s_i(), mul(ld(0, s_i()), Value::Const(0.5))),
            ]
        };
        let ok = reduction(vec![st(0, s_i(), add(ld(0, s_i()), ld(1, row(8, J))))]);
        assert!(rows_independent(I, J, &ok));
        // The same element for every row: not independent.
        let shared = vec![Stmt::Loop {
            var: J,
            extent: 8,
            schedule: tttc_ir::kernel::Schedule::Serial,
            body: vec![st(
                0,
                Index::Const(0),
                add(ld(0, Index::Const(0)), ld(1, row(8, J))),
            )],
        }];
        assert!(!rows_independent(I, J, &shared));
        // Written at a second index (the previous row): not independent.
        let previous = reduction(vec![st(
            0,
            s_i(),
            add(ld(0, Index::sum(s_i(), Index::Const(-1))), ld(1, row(8, J))),
        )]);
        assert!(!rows_independent(I, J, &previous));
        // Written per (i, j): excluded (the index mentions `j`).
        let per_element = reduction(vec![st(2, row(8, J), ld(1, row(8, J)))]);
        assert!(!rows_independent(I, J, &per_element));
        // Division by a constant is not injective.
        let halves = vec![Stmt::Loop {
            var: J,
            extent: 8,
            schedule: tttc_ir::kernel::Schedule::Serial,
            body: vec![st(0, Index::Div(Box::new(s_i()), 2), ld(1, row(8, J)))],
        }];
        assert!(!rows_independent(I, J, &halves));
    }

    #[test]
    fn loops_in_the_body_mean_no_plan() {
        let body = vec![Stmt::Loop {
            var: J,
            extent: 2,
            schedule: tttc_ir::kernel::Schedule::Serial,
            body: vec![],
        }];
        assert!(plan_inner(I, &body).is_none());
    }
}
