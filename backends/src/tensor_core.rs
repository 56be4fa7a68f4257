//! Tensor cores as an opt-in precision: which loops of a GPU-scheduled kernel program are
//! matrix multiplies that can run as warp-level `mma.sync`, and the rounding of their operands.
//!
//! Used by the PTX backend (which emits the `mma.sync`) and by the kernel executor's emulation
//! of the same numerics (`kernel_interp::run_kernel_program_gpu_tensor_cores`), so both apply
//! the opt-in to exactly the same loops.
//!
//! # What is recognized
//!
//! The GPU mapping turns the accumulation of a matmul into a thread loop over output elements,
//! each summing over the contraction in order:
//!
//! ```text
//! for t in 0..T (GpuThread) { for p in 0..K { d[D(t)] = d[D(t)] + a[A(t, p)] * b[B(t, p)] } }
//! ```
//!
//! with `t` the rows × columns collapsed (`row = t / N`, `col = t % N`). [`recognize`] accepts
//! such a loop when, structurally, `A` reads `t` only as `t / c` with `N | c` (it depends on the
//! row alone), `B` reads `t` only as `t % c` with `c | N` (the column alone), `D` does not
//! depend on `p`, the destination is neither operand, and the extents fit whole tiles: rows a
//! multiple of 16, `N` of 8 and `K` of the tile's `k` (8 for tf32, 16 for bf16). Every other
//! loop, and every loop whose extents leave a remainder, stays on the exact f32 path.
//!
//! Recognizing the mapped loop (rather than marking matmuls when lowering) keeps the kernel IR
//! and every other backend unchanged: the opt-in is a code-generation choice of one backend,
//! and the address of every operand element is the original index expression evaluated at
//! `t = row * N + col`, so no index is re-derived.
//!
//! # Numerics
//!
//! Operands are rounded to the input format (tf32: round to nearest, ties away from zero, to 10
//! mantissa bits — `cvt.rna.tf32.f32`; bf16: round to nearest even to 7 mantissa bits —
//! `cvt.rn.bf16x2.f32`), their products are exact in f32, and accumulation is in f32 starting
//! from the destination's value (the zero the lowering stores first). The order of the additions
//! inside one `mma` is the hardware's.

use tttc_ir::kernel::{BufId, Index, Schedule, Stmt, Value, VarId};
use tttc_ir::BinaryOp;

/// The input format of tensor-core matrix multiplies (accumulation is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorCores {
    /// TensorFloat-32 inputs (`mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`).
    Tf32,
    /// bfloat16 inputs (`mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`).
    Bf16,
}

/// Rows of one `mma` tile (`m`).
pub const TILE_M: usize = 16;
/// Columns of one `mma` tile (`n`).
pub const TILE_N: usize = 8;

impl TensorCores {
    /// The option's name (`tf32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            TensorCores::Tf32 => "tf32",
            TensorCores::Bf16 => "bf16",
        }
    }

    /// By name (`tf32`, `bf16`).
    pub fn parse(s: &str) -> Option<TensorCores> {
        match s {
            "tf32" => Some(TensorCores::Tf32),
            "bf16" => Some(TensorCores::Bf16),
            _ => None,
        }
    }

    /// The contraction length of one `mma` (`k` of the tile).
    pub fn tile_k(self) -> usize {
        match self {
            TensorCores::Tf32 => 8,
            TensorCores::Bf16 => 16,
        }
    }

    /// An f32 operand rounded to this format (and back to f32, exactly).
    pub fn round(self, x: f32) -> f32 {
        match self {
            TensorCores::Tf32 => round_tf32(x),
            TensorCores::Bf16 => round_bf16(x),
        }
    }
}

/// `x` rounded to TensorFloat-32 (10 mantissa bits) to nearest, ties away from zero, as
/// `cvt.rna.tf32.f32` does. NaN and infinities pass through.
pub fn round_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    // Adding half of the last kept place to the magnitude rounds ties away from zero; a carry
    // into the exponent is the correct result (up to infinity).
    let bits = (x.to_bits() + (1 << 12)) & !((1 << 13) - 1);
    f32::from_bits(bits)
}

/// `x` rounded to bfloat16 (7 mantissa bits) to nearest, ties to even, as `cvt.rn.bf16.f32`
/// does. NaN stays NaN; infinities pass through.
pub fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    let lsb = (b >> 16) & 1;
    let bits = (b + 0x7fff + lsb) & 0xffff_0000;
    f32::from_bits(bits)
}

/// A matmul accumulation loop that fits whole `mma` tiles (see the module documentation).
#[derive(Clone, Debug)]
pub struct MatmulLoop<'a> {
    /// The thread loop's variable (`t`).
    pub thread_var: VarId,
    /// Output rows (`T / N`), a multiple of [`TILE_M`].
    pub rows: usize,
    /// Output columns (`N`), a multiple of [`TILE_N`].
    pub cols: usize,
    /// The contraction's variable (`p`).
    pub k_var: VarId,
    /// The contraction's length, a multiple of the tile's `k`.
    pub k: usize,
    /// The destination buffer.
    pub dest: BufId,
    /// The destination element, a function of `t`.
    pub dest_index: &'a Index,
    /// The left operand (a function of the row and `p`).
    pub a: (BufId, &'a Index),
    /// The right operand (a function of the column and `p`).
    pub b: (BufId, &'a Index),
}

/// How an index uses the thread variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    /// `t / c`.
    Div(i64),
    /// `t % c`.
    Rem(i64),
    /// `t` itself, or inside anything else.
    Bare,
}

fn uses(ix: &Index, t: VarId, out: &mut Vec<Use>) {
    match ix {
        Index::Const(_) => {}
        Index::Var(v) => {
            if *v == t {
                out.push(Use::Bare);
            }
        }
        Index::Div(a, c) if **a == Index::Var(t) => out.push(Use::Div(*c)),
        Index::Rem(a, c) if **a == Index::Var(t) => out.push(Use::Rem(*c)),
        Index::Add(a, b) => {
            uses(a, t, out);
            uses(b, t, out);
        }
        Index::Mul(a, _) | Index::Div(a, _) | Index::Rem(a, _) => uses(a, t, out),
        Index::Load { index, .. } => {
            if index.mentions(t) {
                out.push(Use::Bare);
            }
        }
    }
}

fn mentions(ix: &Index, v: VarId) -> bool {
    let mut u = Vec::new();
    uses(ix, v, &mut u);
    !u.is_empty()
}

fn load(v: &Value) -> Option<(BufId, &Index)> {
    match v {
        Value::Load { buf, index } => Some((*buf, index)),
        _ => None,
    }
}

/// The matmul loop `s` is, when it is one that `tc` tiles exactly (see the module
/// documentation); `None` for every other statement.
pub fn recognize(s: &Stmt, tc: TensorCores) -> Option<MatmulLoop<'_>> {
    let Stmt::Loop {
        var: t,
        extent: total,
        schedule: Schedule::GpuThread,
        body,
    } = s
    else {
        return None;
    };
    let [Stmt::Loop {
        var: p,
        extent: k,
        schedule,
        body: inner,
    }] = body.as_slice()
    else {
        return None;
    };
    if matches!(schedule, Schedule::GpuBlock | Schedule::GpuThread) {
        return None;
    }
    let [Stmt::Store { buf, index, value }] = inner.as_slice() else {
        return None;
    };
    let Value::Binary(BinaryOp::Add, acc, prod) = value else {
        return None;
    };
    let Value::Binary(BinaryOp::Mul, x, y) = &**prod else {
        return None;
    };
    let (acc, a, b) = (load(acc)?, load(x)?, load(y)?);
    if acc != (*buf, index) || a.0 == *buf || b.0 == *buf || mentions(index, *p) {
        return None;
    }
    // The columns: the largest `t % c` of the destination.
    let mut du = Vec::new();
    uses(index, *t, &mut du);
    let n = du
        .iter()
        .filter_map(|u| match u {
            Use::Rem(c) => Some(*c),
            _ => None,
        })
        .max()?;
    let mut au = Vec::new();
    uses(a.1, *t, &mut au);
    let row_only = au
        .iter()
        .all(|u| matches!(u, Use::Div(c) if *c > 0 && c % n == 0));
    let mut bu = Vec::new();
    uses(b.1, *t, &mut bu);
    let col_only = bu
        .iter()
        .all(|u| matches!(u, Use::Rem(c) if *c > 0 && n % c == 0));
    let cols = usize::try_from(n).ok()?;
    if !row_only || !col_only || cols == 0 || !total.is_multiple_of(cols) {
        return None;
    }
    let rows = total / cols;
    let fits = rows.is_multiple_of(TILE_M)
        && cols.is_multiple_of(TILE_N)
        && k.is_multiple_of(tc.tile_k())
        && *k > 0;
    fits.then_some(MatmulLoop {
        thread_var: *t,
        rows,
        cols,
        k_var: *p,
        k: *k,
        dest: *buf,
        dest_index: index,
        a,
        b,
    })
}

/// Every statement of `body` (recursively) that [`recognize`] accepts for `tc`.
pub fn matmul_loops(body: &[Stmt], tc: TensorCores) -> Vec<MatmulLoop<'_>> {
    let mut out = Vec::new();
    for s in body {
        if let Some(m) = recognize(s, tc) {
            out.push(m);
        } else if let Stmt::Loop { body, .. } = s {
            out.extend(matmul_loops(body, tc));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_rounds_to_nearest_ties_away() {
        // 1 + 2^-11 is half way between 1 and 1 + 2^-10: away from zero.
        let tie = 1.0 + f32::powi(2.0, -11);
        assert_eq!(round_tf32(tie), 1.0 + f32::powi(2.0, -10));
        assert_eq!(round_tf32(-tie), -(1.0 + f32::powi(2.0, -10)));
        // Just below the tie rounds down.
        assert_eq!(round_tf32(f32::from_bits(tie.to_bits() - 1)), 1.0);
        assert_eq!(round_tf32(1.5), 1.5);
        assert!(round_tf32(f32::NAN).is_nan());
        assert_eq!(round_tf32(f32::MAX), f32::INFINITY);
        let x = 0.123_456_79_f32;
        assert!(((round_tf32(x) - x) / x).abs() <= f32::powi(2.0, -11));
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let ulp = f32::powi(2.0, -7);
        // 1 + ulp/2 is a tie between 1 (even) and 1 + ulp: to even.
        assert_eq!(round_bf16(1.0 + ulp / 2.0), 1.0);
        // 1 + 3 ulp/2 is a tie between 1 + ulp (odd) and 1 + 2 ulp: to even.
        assert_eq!(round_bf16(1.0 + 1.5 * ulp), 1.0 + 2.0 * ulp);
        assert_eq!(round_bf16(-3.0), -3.0);
        assert!(round_bf16(f32::NAN).is_nan());
    }

    fn matmul(n: i64, a_index: Index, b_index: Index) -> Stmt {
        let (t, p) = (VarId(0), VarId(1));
        let row = Index::Div(Box::new(Index::Var(t)), n);
        let col = Index::Rem(Box::new(Index::Var(t)), n);
        let d = Index::sum(Index::scaled(row, n), col);
        let ld = |buf: u32, index: Index| Value::Load {
            buf: BufId(buf),
            index,
        };
        let value = Value::Binary(
            BinaryOp::Add,
            Box::new(ld(0, d.clone())),
            Box::new(Value::Binary(
                BinaryOp::Mul,
                Box::new(ld(1, a_index)),
                Box::new(ld(2, b_index)),
            )),
        );
        Stmt::Loop {
            var: t,
            extent: 32 * n as usize,
            schedule: Schedule::GpuThread,
            body: vec![Stmt::Loop {
                var: p,
                extent: 16,
                schedule: Schedule::Serial,
                body: vec![Stmt::Store {
                    buf: BufId(0),
                    index: d,
                    value,
                }],
            }],
        }
    }

    #[test]
    fn recognizes_a_mapped_matmul_and_only_that() {
        let (t, p) = (VarId(0), VarId(1));
        let row = |n| Index::Div(Box::new(Index::Var(t)), n);
        let col = |n| Index::Rem(Box::new(Index::Var(t)), n);
        let a = Index::sum(Index::scaled(row(8), 16), Index::Var(p));
        let b = Index::sum(Index::scaled(Index::Var(p), 8), col(8));
        let s = matmul(8, a.clone(), b.clone());
        let m = recognize(&s, TensorCores::Tf32).expect("a matmul");
        assert_eq!((m.rows, m.cols, m.k), (32, 8, 16));
        assert!(recognize(&s, TensorCores::Bf16).is_some());
        // The left operand depending on the column is not a matmul's.
        let bad = matmul(8, Index::sum(a.clone(), col(8)), b.clone());
        assert!(recognize(&bad, TensorCores::Tf32).is_none());
        // Nor is the right one depending on the row.
        let bad = matmul(8, a, Index::sum(b, row(8)));
        assert!(recognize(&bad, TensorCores::Tf32).is_none());
        // Columns that are not whole tiles stay exact.
        let a = Index::sum(Index::scaled(row(4), 16), Index::Var(p));
        let b = Index::sum(Index::scaled(Index::Var(p), 4), col(4));
        assert!(recognize(&matmul(4, a, b), TensorCores::Tf32).is_none());
    }
}
