//! `sibling_products`: matrix products that read the same right operand, merged into one loop
//! nest so that every element of the shared operand loaded feeds all of them.
//!
//! A decode token's step multiplies one row by each head's weights several times: TTT-MLP's
//! `k @ W1` (the inner loss's forward) and `q @ W1` (the output's, whose dual form reads the
//! mini-batch's starting weights too) are two batched one-row products over the same `W1`. One
//! row a product cannot reuse a loaded weight (`register_tile` tiles such products one row at a
//! time), so each product streams all the weights: the step's time is the bytes it reads.
//! Merged, one pass over `W1` feeds both rows.
//!
//! The pass looks, in every statement list, for two product nests of `register_tile`'s shape
//! ([`Nest::of`]) with the same loops (extents and schedule), whose rows each have their own
//! right operand (`Nest::rows_share_b` false: where rows share it, `register_tile` already jams
//! rows that reuse each load), and whose loads along the columns in the second are all loads of
//! the first (after renaming the loop variables): the same elements of the same buffer. The
//! second moves up next to the first when that changes no result — neither writes what the
//! other reads or writes, and no statement in between writes what the second reads or touches
//! what it writes — and the two become one nest: the zeroing loop zeroes both results, the
//! accumulation loop accumulates both, each product's terms in the same order as before.
//! Results are bitwise unchanged. `register_tile` then tiles the merged nest with the host's
//! accumulators shared by its products.
//!
//! Nothing here knows a model: any two products of any program that read the same operand
//! this way are merged. `TTTC_NO_SIBLING_PRODUCTS=1` turns the pass off.

use crate::pipeline::KernelPass;
use crate::register_tile::{Nest, Product};
use crate::PassError;
use std::collections::BTreeSet;
use tttc_ir::kernel::{buffers_used, BufId, Index, KernelProgram, Stmt, Value, VarId};
use tttc_ir::BinaryOp;

/// Setting `TTTC_NO_SIBLING_PRODUCTS=1` turns the pass off (for measuring what it buys).
pub const DISABLE_ENV: &str = "TTTC_NO_SIBLING_PRODUCTS";

/// How many statements after a product its sibling is looked for.
pub const WINDOW: usize = 16;

/// The pass (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiblingProducts {
    /// Whether it rewrites anything.
    pub enabled: bool,
}

impl Default for SiblingProducts {
    fn default() -> Self {
        SiblingProducts { enabled: true }
    }
}

impl SiblingProducts {
    /// On, unless [`DISABLE_ENV`] is set to something other than `0` or the empty string.
    pub fn from_env() -> SiblingProducts {
        SiblingProducts {
            enabled: !crate::pipeline::switched_off(DISABLE_ENV),
        }
    }
}

impl KernelPass for SiblingProducts {
    fn name(&self) -> &'static str {
        "sibling_products"
    }

    fn run(&self, program: &KernelProgram) -> Result<KernelProgram, PassError> {
        let mut out = program.clone();
        if self.enabled {
            merge_in(&mut out.body);
            for f in &mut out.functions {
                merge_in(&mut f.body);
            }
        }
        Ok(out)
    }
}

/// Merges sibling products in `body` and, first, in the bodies of its loops.
fn merge_in(body: &mut Vec<Stmt>) {
    for s in body.iter_mut() {
        if let Stmt::Loop { body: inner, .. } = s {
            merge_in(inner);
        }
    }
    let mut i = 0;
    while i < body.len() {
        let merged = Nest::of(&body[i])
            .filter(|first| !first.rows_share_b)
            .and_then(|first| {
                let last = body.len().min(i + 1 + WINDOW);
                (i + 1..last).find_map(|j| {
                    let fused = merged(&first, &body[j])?;
                    let free = independent(&body[i], &body[j])
                        && body[i + 1..j].iter().all(|s| can_pass(&body[j], s));
                    free.then_some((j, fused))
                })
            });
        match merged {
            // Look again from the merged nest: a third sibling may follow.
            Some((j, fused)) => {
                body.remove(j);
                body[i] = fused;
            }
            None => i += 1,
        }
    }
}

/// `first` and the nest `s` as one nest, when `s` is a product nest over the same loops whose
/// loads along the columns are all loads of `first`'s (module doc).
fn merged(first: &Nest, s: &Stmt) -> Option<Stmt> {
    let second = Nest::of(s)?;
    if second.rows_share_b
        || (second.m, second.n, second.k, second.schedule)
            != (first.m, first.n, first.k, first.schedule)
    {
        return None;
    }
    let rename = |v: VarId| {
        let to = if v == second.i {
            first.i
        } else if v == second.j {
            first.j
        } else if v == second.p {
            first.p
        } else if v == second.j0 {
            first.j0
        } else {
            return None;
        };
        Some(Index::Var(to))
    };
    let renamed: Vec<Product> = second
        .products
        .iter()
        .map(|q| Product {
            c: q.c,
            at: q.at.substitute(&rename),
            term: q.term.map_indices(&|x| x.substitute(&rename)),
        })
        .collect();
    let column_loads = |products: &[Product]| {
        let mut loads: Vec<(BufId, Index)> = Vec::new();
        for q in products {
            q.term.for_each_load(&mut |b, idx| {
                if idx.mentions(first.j) {
                    loads.push((b, idx.clone()));
                }
            });
        }
        loads
    };
    let shared = column_loads(&first.products);
    let theirs = column_loads(&renamed);
    if theirs.is_empty() || !theirs.iter().all(|l| shared.contains(l)) {
        return None;
    }
    let products: Vec<&Product> = first.products.iter().chain(&renamed).collect();
    let zeros = products
        .iter()
        .map(|q| {
            let at =
                q.at.substitute(&|v| (v == first.j).then_some(Index::Var(first.j0)));
            Stmt::store(q.c, at, Value::Const(0.0))
        })
        .collect();
    let sums = products
        .iter()
        .map(|q| {
            let sum = Value::binary(
                BinaryOp::Add,
                Value::load(q.c, q.at.clone()),
                q.term.clone(),
            );
            Stmt::store(q.c, q.at.clone(), sum)
        })
        .collect();
    let serial = tttc_ir::kernel::Schedule::Serial;
    let columns = Stmt::counted_loop(first.j, first.n, serial, sums);
    Some(Stmt::counted_loop(
        first.i,
        first.m,
        first.schedule,
        vec![
            Stmt::counted_loop(first.j0, first.n, serial, zeros),
            Stmt::counted_loop(first.p, first.k, serial, vec![columns]),
        ],
    ))
}

/// Buffers `s` may write: stored elements, a matrix product's result, a call's arguments.
fn written(s: &Stmt) -> BTreeSet<BufId> {
    let mut out = BTreeSet::new();
    s.walk(&mut |s| {
        match s {
            Stmt::Store { buf, .. } => {
                out.insert(*buf);
            }
            Stmt::Gemm(g) => {
                out.insert(g.c.buf);
            }
            Stmt::Call { args, .. } => out.extend(args.iter().copied()),
            Stmt::Loop { .. } | Stmt::Barrier => {}
        }
        true
    });
    out
}

/// Whether neither of `a` and `b` writes a buffer the other uses.
fn independent(a: &Stmt, b: &Stmt) -> bool {
    let (used_a, used_b) = (
        buffers_used(std::slice::from_ref(a)),
        buffers_used(std::slice::from_ref(b)),
    );
    written(a).is_disjoint(&used_b) && written(b).is_disjoint(&used_a)
}

/// Whether `moving` may move up past `s`: `s` writes nothing `moving` uses and uses nothing
/// `moving` writes, and neither is a barrier.
fn can_pass(moving: &Stmt, s: &Stmt) -> bool {
    let mut barrier = false;
    s.walk(&mut |s| {
        barrier |= matches!(s, Stmt::Barrier);
        true
    });
    !barrier && independent(moving, s)
}
