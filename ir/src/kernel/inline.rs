//! Inlining kernel functions: the definition of what a [`Stmt::Call`] computes, and how the
//! backends without functions of their own (the kernel executor, Cranelift, PTX, the GPU
//! mapping) run programs that have them.

use super::{BufId, KernelProgram, Stmt};
use std::collections::HashMap;

/// `p` with every call replaced by its function's body, each parameter buffer renamed to the
/// call's argument, and no functions left. Loop variables are kept: a call sits at the top
/// level (see [`super::verify`]), so no enclosing loop binds the body's variables.
///
/// A call to a function that does not exist is dropped; verify `p` first.
pub fn inline_calls(p: &KernelProgram) -> KernelProgram {
    let mut out = p.clone();
    if p.functions.is_empty() {
        return out;
    }
    out.functions = Vec::new();
    out.body = Vec::with_capacity(p.body.len());
    for s in &p.body {
        match s {
            Stmt::Call { func, args } => {
                let Some(f) = p.function(*func) else {
                    continue;
                };
                let rename: HashMap<BufId, BufId> =
                    f.params.iter().copied().zip(args.iter().copied()).collect();
                out.body
                    .extend(f.body.iter().map(|s| rename_buffers(s, &rename)));
            }
            s => out.body.push(s.clone()),
        }
    }
    out
}

/// `s` with every buffer `b` in `rename` replaced by `rename[b]`.
pub(crate) fn rename_buffers(s: &Stmt, rename: &HashMap<BufId, BufId>) -> Stmt {
    let to = |b: &BufId| rename.get(b).copied().unwrap_or(*b);
    let mut s = s.clone();
    s.walk_mut(&mut |s| {
        match s {
            Stmt::Store { buf, index, value } => {
                *buf = to(buf);
                index.for_each_load_mut(&mut |b, _| *b = to(b));
                value.for_each_load_mut(&mut |b, _| *b = to(b));
            }
            Stmt::Gemm(g) => {
                for v in [&mut g.a, &mut g.b, &mut g.c] {
                    v.buf = to(&v.buf);
                }
            }
            Stmt::Call { args, .. } => args.iter_mut().for_each(|b| *b = to(b)),
            Stmt::Loop { .. } | Stmt::Barrier => {}
        }
        true
    });
    s
}
