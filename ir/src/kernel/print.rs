//! The kernel IR as text: `Display` for indices and values, and the whole-program printer.

use super::{BufferKind, Index, KernelProgram, Stmt, Value};
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

/// Prints a kernel program: buffers, then one statement per line.
pub fn print_kernel_program(p: &KernelProgram) -> String {
    let mut s = format!("kernel program {} ({})\n", p.name, p.dtype);
    for (i, b) in p.buffers.iter().enumerate() {
        let kind = match &b.kind {
            BufferKind::Input(n) => format!("input {n}"),
            BufferKind::Output(n) => format!("output {n}"),
            BufferKind::Temp => "temp".to_string(),
        };
        let _ = writeln!(
            s,
            "buffer b{i} {kind} {:?} {:?} strides {:?}  # {}",
            b.space, b.layout.shape, b.layout.strides, b.name
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
