//! Proves, before any native code is built (by LLVM or Cranelift), that a kernel program
//! cannot access memory outside a buffer, so the generated code can index without run-time
//! checks.
//!
//! The program's structure is checked first by the kernel IR's own verifier
//! ([`tttc_ir::kernel::verify`]: unknown buffers or loop variables, stores into inputs, inputs or
//! outputs outside global memory or not row-major...). What is native-specific is checked here:
//! buffer sizes (at most [`MAX_BUFFER_BYTES`]) and, above all, that every element access stays
//! inside its buffer. Bounds are proven by interval arithmetic over the loop extents (every loop
//! variable `v` of a loop with extent `n` lies in `0..n`), with checked `i64` arithmetic. The
//! analysis is conservative: an access whose interval leaves its buffer is rejected even if
//! correlations between variables would keep it inside. A data-dependent index
//! ([`Index::Load`], a table row by an id) lies in `0..bound` because the code generators clamp
//! it there; the element it reads is proven in bounds like any load.
//!
//! Where scratch buffers live on the CPU, and which loops run on several threads, is decided in
//! [`crate::scratch`]; its names are re-exported here for the code generators that import them
//! from this module.

/// Why a kernel program cannot be compiled to native code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    /// The program is malformed or could access memory outside a buffer.
    #[error("{0}")]
    Invalid(String),
    /// A bug in the analysis.
    #[error("{0}")]
    Internal(String),
}

pub(crate) use crate::scratch::analyze;
// What the LLVM code generator reads from here.
#[cfg(feature = "llvm")]
pub(crate) use crate::scratch::{cpu_schedule, loop_key, Analysis, CpuSchedule};
#[cfg(feature = "llvm")]
pub(crate) use tttc_ir::kernel::{buffers_used, vars_used};

use tttc_ir::kernel::{verify, BufId, Index, KernelProgram, Stmt, Value, VarId};

/// `p` with its calls inlined ([`tttc_ir::kernel::inline_calls`]) after verifying it, for the
/// code generators without functions of their own (Cranelift); `p` itself when it has none.
#[cfg_attr(not(feature = "cranelift"), allow(dead_code))]
pub(crate) fn inlined(
    p: &KernelProgram,
) -> Result<std::borrow::Cow<'_, KernelProgram>, AnalysisError> {
    if p.functions.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(p));
    }
    verify(p).map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    Ok(std::borrow::Cow::Owned(tttc_ir::kernel::inline_calls(p)))
}

/// Largest buffer accepted, in bytes (keeps every offset and byte count far inside `i64`).
pub(crate) const MAX_BUFFER_BYTES: u64 = 1 << 40;

fn invalid<T>(msg: impl Into<String>) -> Result<T, AnalysisError> {
    Err(AnalysisError::Invalid(msg.into()))
}

/// Verifies `p` and proves every access in bounds; returns the number of elements of every
/// buffer.
pub(crate) fn prove(p: &KernelProgram) -> Result<Vec<u64>, AnalysisError> {
    verify(p).map_err(|e| AnalysisError::Invalid(e.to_string()))?;
    let elem = p.dtype.size_bytes() as u64;
    let mut lens = Vec::with_capacity(p.buffers.len());
    for (i, b) in p.buffers.iter().enumerate() {
        let n = b
            .layout
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .filter(|&n| {
                n.checked_mul(elem)
                    .is_some_and(|bytes| bytes <= MAX_BUFFER_BYTES)
            });
        let Some(n) = n else {
            return invalid(format!(
                "buffer b{i} ({}) with shape {:?} is too large (at most {MAX_BUFFER_BYTES} bytes)",
                b.name, b.layout.shape
            ));
        };
        lens.push(n);
    }
    let mut prover = Prover {
        p,
        lens: &lens,
        scope: Vec::new(),
    };
    // A function's body once, with no loop variable in scope (calls sit at the top level):
    // the verifier checked that every argument has its parameter's layout, so what holds for
    // the parameters holds for every call.
    for f in &p.functions {
        prover.stmts(&f.body)?;
    }
    prover.stmts(&p.body)?;
    Ok(lens)
}

struct Prover<'p> {
    p: &'p KernelProgram,
    lens: &'p [u64],
    /// Loop variables in scope, innermost last, with their largest values.
    scope: Vec<(VarId, i64)>,
}

impl Prover<'_> {
    fn stmts(&mut self, body: &[Stmt]) -> Result<(), AnalysisError> {
        for s in body {
            match s {
                Stmt::Loop {
                    var, extent, body, ..
                } => {
                    // The verifier checked that the extent fits in i64.
                    let n = *extent as i64;
                    if n == 0 {
                        // Never runs: nothing in it is executed, so nothing needs checking.
                        continue;
                    }
                    self.scope.push((*var, n - 1));
                    let r = self.stmts(body);
                    self.scope.pop();
                    r?;
                }
                Stmt::Store { buf, index, value } => {
                    self.access(*buf, index, "store to")?;
                    let mut r = Ok(());
                    value.walk(&mut |v| {
                        if r.is_err() {
                            return false;
                        }
                        r = match v {
                            Value::Load { buf, index } => self.access(*buf, index, "load from"),
                            Value::FromIndex(i) => self.range(i).map(|_| ()),
                            _ => Ok(()),
                        };
                        true
                    });
                    r?;
                }
                // No memory access.
                Stmt::Barrier => {}
                // A call's function is proven on its own (above).
                Stmt::Call { .. } => {}
                // Every element of its views was proven in bounds by the verifier (offsets and
                // strides are constants, and it is never inside a loop).
                Stmt::Gemm(_) => {}
            }
        }
        Ok(())
    }

    /// Proves one access of `buf` at `index` in bounds.
    fn access(&self, buf: BufId, index: &Index, what: &str) -> Result<(), AnalysisError> {
        let b = &self.p.buffers[buf.0 as usize];
        let len = self.lens[buf.0 as usize] as i64;
        let (lo, hi) = self.range(index)?;
        if lo < 0 || hi >= len {
            return invalid(format!(
                "{what} b{} ({}) at index {index}: the index ranges over {lo}..={hi}, outside \
                 the buffer's {len} element(s)",
                buf.0, b.name
            ));
        }
        Ok(())
    }

    /// The range `lo..=hi` of `index` over every iteration in scope; fails on unbound variables,
    /// non-positive divisors and anything that could overflow `i64`.
    fn range(&self, index: &Index) -> Result<(i64, i64), AnalysisError> {
        let overflow = || AnalysisError::Invalid(format!("index {index} may overflow i64"));
        Ok(match index {
            Index::Const(c) => (*c, *c),
            Index::Var(v) => match self.scope.iter().rev().find(|(var, _)| var == v) {
                Some(&(_, hi)) => (0, hi),
                None => return invalid(format!("loop variable i{} used outside its loop", v.0)),
            },
            Index::Add(a, b) => {
                let (al, ah) = self.range(a)?;
                let (bl, bh) = self.range(b)?;
                (
                    al.checked_add(bl).ok_or_else(overflow)?,
                    ah.checked_add(bh).ok_or_else(overflow)?,
                )
            }
            Index::Mul(a, c) => {
                let (l, h) = self.range(a)?;
                let x = l.checked_mul(*c).ok_or_else(overflow)?;
                let y = h.checked_mul(*c).ok_or_else(overflow)?;
                (x.min(y), x.max(y))
            }
            Index::Div(a, c) => {
                if *c <= 0 {
                    return invalid(format!("index {index} divides by {c}"));
                }
                let (l, h) = self.range(a)?;
                // Truncating division by a positive constant is monotone.
                (l / c, h / c)
            }
            Index::Rem(a, c) => {
                if *c <= 0 {
                    return invalid(format!("index {index} takes a remainder by {c}"));
                }
                let (l, h) = self.range(a)?;
                if l >= 0 {
                    if h < *c {
                        (l, h)
                    } else {
                        (0, c - 1)
                    }
                } else if h <= 0 {
                    if l > -c {
                        (l, h)
                    } else {
                        (-(c - 1), 0)
                    }
                } else {
                    (-(c - 1), c - 1)
                }
            }
            // The element read must be in bounds; the integer made from it is clamped into
            // `0..bound` whatever the buffer holds.
            Index::Load { buf, index, bound } => {
                self.access(*buf, index, "index load from")?;
                if *bound <= 0 {
                    return invalid(format!("index {index} has a non-positive bound {bound}"));
                }
                (0, bound - 1)
            }
        })
    }
}
