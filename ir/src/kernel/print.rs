//! The kernel IR as text: `Display` for indices and values, and the whole-program printer.

use super::{BufferKind, Gemm, Index, KernelProgram, MatrixView, Stmt, Value};
use std::fmt::{self, Write};

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Index::Const(c) => write!(f, "{c}"),
            Index::Var(v) => write!(f, "i{}", v.0),
            Index::Add(a, b) => write!(f, "{a} + {b}"),
            Index::Mul(a, c) => match **a {
                Index::Add(..) => write!(f, "({a})*{c}"),
                _ => write!(f, "{a}*{c}"),
            },
            Index::Div(a, c) => write!(f, "({a})/{c}"),
            Index::Rem(a, c) => write!(f, "({a})%{c}"),
            Index::Load { buf, index, bound } => write!(f, "int(b{}[{index}], {bound})", buf.0),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Load { buf, index } => write!(f, "b{}[{index}]", buf.0),
            Value::Const(c) => write!(f, "{}", crate::float_text::format_float(*c)),
            Value::FromIndex(i) => write!(f, "float({i})"),
            Value::Unary(op, x) => write!(f, "{}({x})", op.name()),
            Value::Binary(op, a, b) => write!(f, "{}({a}, {b})", op.name()),
        }
    }
}

impl fmt::Display for MatrixView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}[{}", self.buf.0, self.offset)?;
        for s in &self.batch_strides {
            write!(f, "; {s}")?;
        }
        write!(f, "; {}, {}]", self.row_stride, self.col_stride)
    }
}

/// One line: `gemm[batch] m×n×k: C (+)= A @ B`, each view as `b<buf>[offset; batch strides;
/// row stride, column stride]`.
impl fmt::Display for Gemm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.accumulate { "+=" } else { "=" };
        write!(
            f,
            "gemm{:?} {}x{}x{}: {} {op} {} @ {}",
            self.batch, self.m, self.n, self.k, self.c, self.a, self.b
        )
    }
}

/// Prints a kernel program: buffers (with their arena offsets when there is a memory plan),
/// the arena's length, then one statement per line.
pub fn print_kernel_program(p: &KernelProgram) -> String {
    let mut s = format!("kernel program {} ({})\n", p.name, p.dtype);
    for (i, b) in p.buffers.iter().enumerate() {
        let kind = match &b.kind {
            BufferKind::Input(n) => format!("input {n}"),
            BufferKind::Output(n) => format!("output {n}"),
            BufferKind::Temp => "temp".to_string(),
        };
        let placed = p
            .memory
            .as_ref()
            .and_then(|m| m.offset_of(super::BufId(i as u32)))
            .map_or(String::new(), |o| format!(" at arena+{o}"));
        let _ = writeln!(
            s,
            "buffer b{i} {kind} {:?} {:?} strides {:?}{placed}  # {}",
            b.space, b.layout.shape, b.layout.strides, b.name
        );
    }
    if let Some(m) = &p.memory {
        let _ = writeln!(
            s,
            "arena {} elements for {} buffers",
            m.arena_len,
            m.placements.len()
        );
    }
    fn stmts(s: &mut String, body: &[Stmt], depth: usize) {
        let pad = "  ".repeat(depth);
        for st in body {
            match st {
                Stmt::Loop {
                    var,
                    extent,
                    schedule,
                    body,
                } => {
                    let _ = writeln!(s, "{pad}for i{} in 0..{extent} ({schedule:?}) {{", var.0);
                    stmts(s, body, depth + 1);
                    let _ = writeln!(s, "{pad}}}");
                }
                Stmt::Store { buf, index, value } => {
                    let _ = writeln!(s, "{pad}b{}[{index}] = {value}", buf.0);
                }
                Stmt::Barrier => {
                    let _ = writeln!(s, "{pad}barrier");
                }
                Stmt::Gemm(g) => {
                    let _ = writeln!(s, "{pad}{g}");
                }
                Stmt::Call { func, args } => {
                    let _ = writeln!(s, "{pad}call f{}({})", func.0, buf_list(args));
                }
            }
        }
    }
    fn buf_list(bufs: &[super::BufId]) -> String {
        let names: Vec<String> = bufs.iter().map(|b| format!("b{}", b.0)).collect();
        names.join(", ")
    }
    for (i, f) in p.functions.iter().enumerate() {
        let _ = writeln!(s, "function f{i} {}({}) {{", f.name, buf_list(&f.params));
        stmts(&mut s, &f.body, 1);
        let _ = writeln!(s, "}}");
    }
    stmts(&mut s, &p.body, 0);
    s
}

/// The profile id of the first statement of function `func`: the program's top-level
/// statements are numbered from 0, then each function's, in function order.
pub fn first_statement_id(p: &KernelProgram, func: super::FuncId) -> usize {
    p.body.len()
        + p.functions
            .iter()
            .take(func.0 as usize)
            .map(|f| f.body.len())
            .sum::<usize>()
}

/// The statement with profile id `id` (numbering: [`first_statement_id`]) and the function it
/// belongs to (`None`: the program's body).
pub fn statement_by_id(p: &KernelProgram, id: usize) -> Option<(Option<super::FuncId>, &Stmt)> {
    if let Some(s) = p.body.get(id) {
        return Some((None, s));
    }
    let mut rest = id - p.body.len();
    for (k, f) in p.functions.iter().enumerate() {
        if let Some(s) = f.body.get(rest) {
            return Some((Some(super::FuncId(k as u32)), s));
        }
        rest -= f.body.len();
    }
    None
}

/// A one-line summary of statement `s` of `p` for profiles: its outermost loop nest's extents
/// and schedules down to the first statement that is not a lone loop, and the buffers it
/// stores to, the first three of them (`loop 12×64 parallel·serial → b74 %96 matmul, b75 %96
/// rhs`); a matrix product as `gemm [2048×768]·[768×768] → b74 %96 matmul`, a call by its
/// function (whose statements the profile counts as the call's).
pub fn describe_stmt(p: &KernelProgram, s: &Stmt) -> String {
    if let Stmt::Call { func, args } = s {
        let name = p.function(*func).map_or("?", |f| f.name.as_str());
        return format!("call f{} {name} ({} buffers)", func.0, args.len());
    }
    if let Stmt::Gemm(g) = s {
        let name = p.buffer(g.c.buf).map_or("", |b| b.name.as_str());
        let batch: String = g.batch.iter().map(|e| format!("{e}×")).collect();
        return format!(
            "gemm {batch}[{}×{}]·[{}×{}] → b{} {name}",
            g.m, g.k, g.k, g.n, g.c.buf.0
        );
    }
    let mut extents = Vec::new();
    let mut schedules = Vec::new();
    let mut cur = s;
    while let Stmt::Loop {
        extent,
        schedule,
        body,
        ..
    } = cur
    {
        extents.push(extent.to_string());
        schedules.push(format!("{schedule:?}").to_lowercase());
        match body.as_slice() {
            [only] => cur = only,
            _ => break,
        }
    }
    let mut written = Vec::new();
    s.walk(&mut |t| {
        if let Stmt::Store { buf, .. } = t {
            if !written.contains(buf) {
                written.push(*buf);
            }
        }
        true
    });
    const SHOWN: usize = 3;
    let mut names: Vec<String> = written
        .iter()
        .take(SHOWN)
        .map(|b| match p.buffer(*b) {
            Some(buf) => format!("b{} {}", b.0, buf.name),
            None => format!("b{}", b.0),
        })
        .collect();
    if written.len() > SHOWN {
        names.push(format!("… {} more", written.len() - SHOWN));
    }
    let nest = if extents.is_empty() {
        "statement".to_string()
    } else {
        format!("loop {} {}", extents.join("×"), schedules.join("·"))
    };
    format!("{nest} → {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{BufId, Buffer, MemorySpace, Schedule, VarId};
    use crate::shape::DType;

    #[test]
    fn statements_are_described_by_their_nest_and_the_buffers_they_write() {
        let buffers = (0..5)
            .map(|i| {
                Buffer::row_major(
                    &format!("%{i} t"),
                    BufferKind::Temp,
                    MemorySpace::Global,
                    &[8, 8],
                )
            })
            .collect();
        let p = KernelProgram {
            name: "p".into(),
            dtype: DType::F32,
            buffers,
            vars: 2,
            functions: Vec::new(),
            memory: None,
            body: vec![],
        };
        let stores: Vec<Stmt> = (0..5)
            .map(|b| Stmt::store(BufId(b), Index::Var(VarId(1)), Value::Const(0.0)))
            .collect();
        let nest = Stmt::counted_loop(
            VarId(0),
            8,
            Schedule::Parallel,
            vec![Stmt::counted_loop(VarId(1), 8, Schedule::Serial, stores)],
        );
        assert_eq!(
            describe_stmt(&p, &nest),
            "loop 8×8 parallel·serial → b0 %0 t, b1 %1 t, b2 %2 t, … 2 more"
        );
    }
}
