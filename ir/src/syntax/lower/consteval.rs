//! Compile-time evaluation: the values `for` bounds, `if` conditions and `{NAME}` in tensor
//! names are computed from — literals, configs, loop variables, and a function's parameters and
//! dimension names when they are bound to one of those.

use super::expr::{diag, Env, Val};
use super::Ctx;
use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::shape::Dim;
use crate::syntax::ast::*;
use crate::syntax::diagnostic::{Diagnostic, Span};

/// A value known when the program is compiled: a loop variable, a literal, a config, or a
/// comparison of those. Conditions of `if`, bounds of `for` and name interpolation use them.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ConstVal {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl ConstVal {
    /// What kind of value it is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ConstVal::Int(_) => "an integer",
            ConstVal::Float(_) => "a real number",
            ConstVal::Bool(_) => "a boolean",
            ConstVal::Str(_) => "a string",
        }
    }
}

impl std::fmt::Display for ConstVal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConstVal::Int(n) => write!(f, "{n}"),
            ConstVal::Float(x) => write!(f, "{x:?}"),
            ConstVal::Bool(b) => write!(f, "{b}"),
            ConstVal::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A compile-time integer (a `for` bound).
pub(super) fn const_int(ctx: &Ctx, g: &Graph, env: &Env, e: &Expr) -> Result<i64, Diagnostic> {
    match const_eval(ctx, g, env, e)? {
        ConstVal::Int(n) => Ok(n),
        other => Err(diag(
            env.src,
            format!(
                "a loop bound must be an integer, got {} ({other})",
                other.kind()
            ),
            e.span.clone(),
        )),
    }
}

/// Evaluates a compile-time expression: literals, loop variables, configs, integer arithmetic,
/// comparisons, `!`, `&&`, `||`.
pub(super) fn const_eval(
    ctx: &Ctx,
    g: &Graph,
    env: &Env,
    e: &Expr,
) -> Result<ConstVal, Diagnostic> {
    let src = env.src;
    let fail = |m: String| Err(diag(src, m, e.span.clone()));
    match &e.kind {
        ExprKind::Int(n) => match i64::try_from(*n) {
            Ok(n) => Ok(ConstVal::Int(n)),
            Err(_) => fail(format!("{n} is too large")),
        },
        ExprKind::Float(x) => Ok(ConstVal::Float(*x)),
        ExprKind::Str(s) => Ok(ConstVal::Str(s.clone())),
        ExprKind::Bool(b) => Ok(ConstVal::Bool(*b)),
        ExprKind::Name(n) => {
            if let Some(Val::Const(c)) = env.vars.get(n) {
                return Ok(c.clone());
            }
            // A function parameter bound to a literal or to an integer config's extent.
            if let Some(Val::Tensor(id)) = env.vars.get(n) {
                if let Some(c) = known_scalar(ctx, g, *id) {
                    return Ok(c);
                }
            }
            if env.vars.contains_key(n) || env.base.contains_key(n) {
                return Err(diag(
                    src,
                    format!("`{n}` is a tensor: it is not known when the program is compiled"),
                    e.span.clone(),
                )
                .with_label("conditions, loop bounds and interpolated names need configs, loop variables or literals"));
            }
            match ctx.configs.get(n) {
                Some(crate::ConfigValue::Int(v)) => Ok(ConstVal::Int(*v as i64)),
                Some(crate::ConfigValue::Float(x)) => Ok(ConstVal::Float(*x)),
                Some(crate::ConfigValue::Bool(b)) => Ok(ConstVal::Bool(*b)),
                Some(crate::ConfigValue::Str(s)) => Ok(ConstVal::Str(s.clone())),
                None if matches!(env.dim(ctx, n), Some(Dim::Known(_))) => match env.dim(ctx, n) {
                    Some(Dim::Known(k)) => Ok(ConstVal::Int(k as i64)),
                    _ => fail(format!("dimension `{n}`")),
                },
                None if dim_config(ctx, env, n).is_some() => {
                    Ok(ConstVal::Int(dim_config(ctx, env, n).unwrap_or(0) as i64))
                }
                None if env.dim(ctx, n).is_some() => Err(diag(
                    src,
                    format!("dimension `{n}` is only known once inputs are bound, not when the program is compiled"),
                    e.span.clone(),
                )
                .with_label("use a `config` here")),
                None => Err(diag(src, format!("unknown name `{n}`"), e.span.clone())
                    .with_label("not a config or loop variable")),
            }
        }
        ExprKind::Neg(x) => match const_eval(ctx, g, env, x)? {
            ConstVal::Int(n) => Ok(ConstVal::Int(-n)),
            ConstVal::Float(v) => Ok(ConstVal::Float(-v)),
            other => fail(format!("cannot negate {} ({other})", other.kind())),
        },
        ExprKind::Not(x) => match const_eval(ctx, g, env, x)? {
            ConstVal::Bool(b) => Ok(ConstVal::Bool(!b)),
            other => fail(format!("`!` needs a boolean, got {} ({other})", other.kind())),
        },
        ExprKind::Binary(op, a, b) => {
            let (x, y) = (const_eval(ctx, g, env, a)?, const_eval(ctx, g, env, b)?);
            const_binary(*op, &x, &y).map_err(|m| diag(src, m, e.span.clone()))
        }
        _ => fail("this is not known when the program is compiled (use configs, loop variables and literals)".into()),
    }
}

/// The value of dimension `n` here when it is an integer config (a function's dimension name
/// bound to a config by a call, such as `k` bound to `conv_kernel`).
fn dim_config(ctx: &Ctx, env: &Env, n: &str) -> Option<usize> {
    match env.dim(ctx, n)? {
        Dim::Sym(s) => match ctx.configs.get(&s) {
            Some(crate::ConfigValue::Int(v)) => Some(*v),
            _ => None,
        },
        Dim::Known(k) => Some(k),
    }
}

/// The value of a scalar node known when compiling: a constant, or the extent of an integer
/// config.
fn known_scalar(ctx: &Ctx, g: &Graph, id: NodeId) -> Option<ConstVal> {
    match &g.get(id)?.op {
        Op::Const { value } if value.fract() == 0.0 && value.abs() < 9e15 => {
            Some(ConstVal::Int(*value as i64))
        }
        Op::Const { value } => Some(ConstVal::Float(*value)),
        Op::Extent { dim: Dim::Known(k) } => Some(ConstVal::Int(*k as i64)),
        Op::Extent { dim: Dim::Sym(s) } => match ctx.configs.get(s) {
            Some(crate::ConfigValue::Int(v)) => Some(ConstVal::Int(*v as i64)),
            _ => None,
        },
        _ => None,
    }
}

/// One binary operator on compile-time values.
fn const_binary(op: BinOp, x: &ConstVal, y: &ConstVal) -> Result<ConstVal, String> {
    use ConstVal::*;
    let real = |v: &ConstVal| match v {
        Int(n) => Some(*n as f64),
        Float(f) => Some(*f),
        _ => None,
    };
    let mismatch = || {
        format!(
            "`{}` cannot combine {} ({x}) and {} ({y})",
            op.symbol(),
            x.kind(),
            y.kind()
        )
    };
    Ok(match op {
        BinOp::And | BinOp::Or => match (x, y) {
            (Bool(a), Bool(b)) => Bool(if op == BinOp::And { *a && *b } else { *a || *b }),
            _ => return Err(mismatch()),
        },
        BinOp::Eq | BinOp::Ne => {
            let same = match (x, y) {
                (Str(a), Str(b)) => a == b,
                (Bool(a), Bool(b)) => a == b,
                _ => match (real(x), real(y)) {
                    (Some(a), Some(b)) => a == b,
                    _ => return Err(mismatch()),
                },
            };
            Bool(same == (op == BinOp::Eq))
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let (Some(a), Some(b)) = (real(x), real(y)) else {
                return Err(mismatch());
            };
            Bool(match op {
                BinOp::Lt => a < b,
                BinOp::Le => a <= b,
                BinOp::Gt => a > b,
                _ => a >= b,
            })
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul => match (x, y) {
            (Int(a), Int(b)) => {
                let r = match op {
                    BinOp::Add => a.checked_add(*b),
                    BinOp::Sub => a.checked_sub(*b),
                    _ => a.checked_mul(*b),
                };
                Int(r.ok_or_else(|| format!("{a} {} {b} overflows", op.symbol()))?)
            }
            _ => return Err(mismatch()),
        },
        BinOp::Div | BinOp::MatMul | BinOp::Pow => {
            return Err(format!(
                "`{}` is not available on compile-time values (integers have `+ - *`)",
                op.symbol()
            ))
        }
    })
}

/// `d` raised while unrolling a loop, saying in which iteration (the location stays where the
/// problem is written).
pub(super) fn in_iteration(mut d: Diagnostic, var: &str, i: i64) -> Diagnostic {
    d.message = format!("{} (in the loop iteration with `{var}` = {i})", d.message);
    d
}

/// A compile-time condition: must be a boolean.
pub(super) fn condition(ctx: &Ctx, g: &Graph, env: &Env, e: &Expr) -> Result<bool, Diagnostic> {
    match const_eval(ctx, g, env, e)? {
        ConstVal::Bool(b) => Ok(b),
        other => Err(diag(
            env.src,
            format!(
                "a condition must be a boolean, got {} ({other})",
                other.kind()
            ),
            e.span.clone(),
        )
        .with_label("compare it, e.g. `ttt_layer_type == \"mlp\"`")),
    }
}

/// A tensor name with every `{NAME}` part replaced by the compile-time value of `NAME` (an
/// integer or a string): `model.layers.{i}.mlp` -> `model.layers.0.mlp`.
pub(super) fn interpolate(
    ctx: &Ctx,
    g: &Graph,
    env: &Env,
    name: &str,
    span: &Span,
) -> Result<String, Diagnostic> {
    if !name.contains('{') {
        return Ok(name.to_string());
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').unwrap_or(after.len());
        let var = &after[..close];
        let e = Expr {
            kind: ExprKind::Name(var.to_string()),
            span: span.clone(),
        };
        match const_eval(ctx, g, env, &e) {
            Ok(ConstVal::Int(n)) => out.push_str(&n.to_string()),
            Ok(ConstVal::Str(s)) => out.push_str(&s),
            Ok(other) => {
                return Err(diag(
                    env.src,
                    format!(
                        "`{{{var}}}` in a name must be an integer or a string, got {} ({other})",
                        other.kind()
                    ),
                    span.clone(),
                ))
            }
            Err(d) => {
                return Err(diag(
                    env.src,
                    format!("`{{{var}}}` in `{name}`: {}", d.message),
                    span.clone(),
                ))
            }
        }
        rest = after.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    Ok(out)
}
