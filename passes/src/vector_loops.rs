//! `vector_loops`: innermost loops whose iterations are independent are marked
//! [`Schedule::Vector`], so that the code generator says so and the loop vectorizes without a
//! dependence proof.
//!
//! LLVM vectorizes an elementwise loop only when it can prove or check at run time that its
//! stores do not overlap its loads; temporaries of one memory arena, or many operands (each pair
//! a run-time check, past LLVM's limit), defeat that, and such a loop runs one element at a
//! time: TTT-MLP's decode step spent a sixth of its time in one scalar GELU loop over 1 536
//! elements. The kernel IR knows more: distinct buffers never overlap while both are live (the
//! memory plan shares memory only between disjoint lifetimes), so a loop is independent when
//! every store's element is distinct per iteration and no iteration reads what another writes:
//!
//! - the body is stores only (no nested loop, call, gemm or barrier);
//! - each store's index is affine in the loop variable with a non-zero coefficient (distinct
//!   iterations, distinct elements), and a buffer is stored at one index only;
//! - a buffer the body stores is read only at that same index (its own element), never through
//!   a data-dependent index.
//!
//! Nothing is reordered within an iteration and nothing is carried between iterations, so the
//! results do not change. Loops already scheduled (parallel, vector, unrolled) are left alone.

use crate::pipeline::KernelPass;
use crate::register_tile::{coefficient, index_reads, TileShape};
use crate::PassError;
use std::collections::BTreeMap;
use tttc_ir::kernel::{BufId, Index, KernelProgram, Schedule, Stmt, Value, VarId};

/// Setting `TTTC_NO_VECTOR_LOOPS=1` turns the pass off (for measuring what it buys).
pub const DISABLE_ENV: &str = "TTTC_NO_VECTOR_LOOPS";

/// The pass (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct VectorLoops {
    /// Off: programs are left unchanged.
    pub off: bool,
}

impl VectorLoops {
    /// On, unless [`DISABLE_ENV`] is set to something other than `0` or the empty string.
    pub fn from_env() -> VectorLoops {
        VectorLoops {
            off: crate::pipeline::switched_off(DISABLE_ENV),
        }
    }
}

impl KernelPass for VectorLoops {
    fn name(&self) -> &'static str {
        "vector_loops"
    }

    fn run(&self, program: &KernelProgram) -> Result<KernelProgram, PassError> {
        let mut out = program.clone();
        if self.off {
            return Ok(out);
        }
        let lanes = TileShape::for_host(program.dtype).lanes as u32;
        let mut mark = |s: &mut Stmt| {
            if let Stmt::Loop {
                var,
                schedule: schedule @ Schedule::Serial,
                body,
                ..
            } = s
            {
                if independent(*var, body) {
                    *schedule = Schedule::Vector(lanes);
                }
            }
            true
        };
        for s in &mut out.body {
            s.walk_mut(&mut mark);
        }
        for f in &mut out.functions {
            for s in &mut f.body {
                s.walk_mut(&mut mark);
            }
        }
        Ok(out)
    }
}

/// Whether the iterations of `for var { body }` are independent (see the module doc).
fn independent(var: VarId, body: &[Stmt]) -> bool {
    // The one index of every buffer stored.
    let mut stored: BTreeMap<BufId, &Index> = BTreeMap::new();
    for s in body {
        let Stmt::Store { buf, index, .. } = s else {
            return false;
        };
        if !matches!(coefficient(index, var), Some(c) if c != 0) {
            return false;
        }
        if stored.insert(*buf, index).is_some_and(|i| i != index) {
            return false;
        }
    }
    body.iter().all(|s| {
        let Stmt::Store { index, value, .. } = s else {
            return false;
        };
        stored.keys().all(|&b| !index_reads(index, b)) && reads_only_own(value, &stored)
    })
}

/// Whether `v` reads every buffer of `stored` only at its stored index, and none of them
/// through a data-dependent index.
fn reads_only_own(v: &Value, stored: &BTreeMap<BufId, &Index>) -> bool {
    let mut ok = true;
    v.walk(&mut |x| {
        let bad = match x {
            Value::Load { buf, index } => {
                stored.get(buf).is_some_and(|own| *own != index)
                    || stored.keys().any(|&b| index_reads(index, b))
            }
            Value::FromIndex(index) => stored.keys().any(|&b| index_reads(index, b)),
            _ => false,
        };
        ok &= !bad;
        ok
    });
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use tttc_ir::BinaryOp;

    fn load(buf: u32, index: Index) -> Value {
        Value::load(BufId(buf), index)
    }

    fn store(buf: u32, index: Index, value: Value) -> Stmt {
        Stmt::store(BufId(buf), index, value)
    }

    #[test]
    fn a_map_over_distinct_elements_is_independent() {
        let i = VarId(0);
        let x = Index::Var(i);
        let body = [store(
            1,
            x.clone(),
            Value::Binary(
                BinaryOp::Add,
                Box::new(load(0, x.clone())),
                Box::new(load(1, x)),
            ),
        )];
        assert!(independent(i, &body));
    }

    #[test]
    fn accumulations_and_shifted_reads_are_not() {
        let i = VarId(0);
        let x = Index::Var(i);
        // acc[0] += a[i]: every iteration writes the same element.
        let acc = [store(
            1,
            Index::Const(0),
            Value::Binary(
                BinaryOp::Add,
                Box::new(load(1, Index::Const(0))),
                Box::new(load(0, x.clone())),
            ),
        )];
        assert!(!independent(i, &acc));
        // b[i] = b[i + 1]: reads what another iteration writes.
        let shifted = [store(
            1,
            x.clone(),
            load(1, Index::sum(x.clone(), Index::Const(1))),
        )];
        assert!(!independent(i, &shifted));
        // b[i / 2] = a[i]: two iterations, one element.
        let halved = [store(1, Index::Div(Box::new(x.clone()), 2), load(0, x))];
        assert!(!independent(i, &halved));
    }
}
