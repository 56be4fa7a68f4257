//! Expressions: names, operators, calls (inlined), built-in operations.

use super::consteval::{condition, const_eval, const_int, interpolate, ConstVal};
use super::{Ctx, PRELUDE_SOURCE};
use crate::graph::{Graph, GraphError, NodeId};
use crate::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use crate::shape::{Dim, Shape};
use crate::syntax::ast::*;
use crate::syntax::diagnostic::{Diagnostic, Span};
use std::collections::HashMap;

/// Maximum depth of nested function calls (catches recursion).
const MAX_CALL_DEPTH: usize = 64;

/// How deep expressions may nest once function calls are inlined: each function body is
/// bounded by the parser's [`crate::syntax::parser::MAX_NESTING`], but calls stack them up.
/// Lowering is recursive, so deeper programs are rejected with a located error instead of
/// overflowing the stack.
pub const MAX_LOWERING_DEPTH: usize = 1024;

/// How many operations a program may lower to (function calls are inlined, so calls nested
/// in calls multiply): a guard against programs that would take hours to compile.
pub const MAX_LOWERED_NODES: usize = 1_000_000;

/// One level of [`lower_expr`]'s nesting, left when dropped.
struct Nesting<'c, 'a>(&'c Ctx<'a>);

impl<'c, 'a> Nesting<'c, 'a> {
    /// Enters one level for `e`; an error located at `e` past [`MAX_LOWERING_DEPTH`].
    fn enter(ctx: &'c Ctx<'a>, e: &Expr, src: usize) -> Result<Self, Diagnostic> {
        let depth = ctx.expr_depth.get() + 1;
        if depth > MAX_LOWERING_DEPTH {
            return Err(diag(
                src,
                format!(
                    "expressions nest deeper than {MAX_LOWERING_DEPTH} levels once function \
                     calls are inlined: split them with `let`"
                ),
                e.span.clone(),
            )
            .with_label("too deep"));
        }
        ctx.expr_depth.set(depth);
        Ok(Nesting(ctx))
    }
}

impl Drop for Nesting<'_, '_> {
    fn drop(&mut self) {
        self.0.expr_depth.set(self.0.expr_depth.get() - 1);
    }
}

/// Built-in operations other than the unary functions.
const BUILTINS: [&str; 14] = [
    "gather",
    "slice",
    "shift",
    "sum",
    "mean",
    "var",
    "max",
    "min",
    "pow",
    "transpose",
    "matmul",
    "reshape",
    "permute",
    "iota",
];

/// Whether `name` is a built-in operation.
pub(super) fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(&name) || UnaryOp::from_name(name).is_some()
}

/// A diagnostic in source `src`.
pub(super) fn diag(src: usize, message: impl Into<String>, span: Span) -> Diagnostic {
    Diagnostic::new(message, span).in_source(src)
}

/// The value of an expression.
#[derive(Clone, Debug)]
pub(super) enum Val {
    Tensor(NodeId),
    /// A compile-time value.
    Const(ConstVal),
    /// A scan's tuple result with its field names.
    Scan {
        node: NodeId,
        fields: Vec<String>,
    },
}

/// Names in scope while lowering one body.
#[derive(Clone)]
pub(super) struct Env<'a> {
    /// Local names: parameters and `let`s.
    pub vars: HashMap<String, Val>,
    /// Names visible in every function of the enclosing inner model (states, parameters).
    pub base: HashMap<String, Val>,
    /// Functions of the enclosing inner model.
    pub local_fns: HashMap<&'a str, &'a FnDecl>,
    /// Dimension names bound here (by annotations, or an inner model's binding).
    pub dims: HashMap<String, Dim>,
    /// The source the body is written in.
    pub src: usize,
    /// Inside an inner model (its loss, output or helpers, and what they call).
    pub in_inner: bool,
    depth: usize,
}

impl Env<'_> {
    /// An empty scope in source `src`.
    pub fn new(src: usize) -> Self {
        Env {
            vars: HashMap::new(),
            base: HashMap::new(),
            local_fns: HashMap::new(),
            dims: HashMap::new(),
            src,
            in_inner: false,
            depth: 0,
        }
    }

    /// The dimension `name` means here, if any.
    pub(super) fn dim(&self, ctx: &Ctx, name: &str) -> Option<Dim> {
        self.dims.get(name).cloned().or_else(|| {
            ctx.global_dims
                .contains(name)
                .then(|| Dim::Sym(name.to_string()))
        })
    }
}

/// The shape an annotation denotes, with `dims` renaming dimension names.
pub(super) fn shape_of(shape: &ShapeAst, dims: &HashMap<String, Dim>) -> Shape {
    Shape(
        shape
            .dims
            .iter()
            .map(|d| match d {
                DimAst::Int(n, _) => Dim::Known(*n),
                DimAst::Sym(s) => dims
                    .get(&s.name)
                    .cloned()
                    .unwrap_or_else(|| Dim::Sym(s.name.clone())),
            })
            .collect(),
    )
}

/// `[1, f]` as written.
pub(super) fn show_pattern(dims: &[DimAst]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            DimAst::Int(n, _) => n.to_string(),
            DimAst::Sym(s) => s.name.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Matches a shape annotation against an actual shape, binding unbound names.
pub(super) fn unify(
    pattern: &[DimAst],
    actual: &Shape,
    dims: &mut HashMap<String, Dim>,
) -> Result<(), String> {
    let mismatch = || format!("expected {} but got {actual}", show_pattern(pattern));
    if pattern.len() != actual.rank() {
        return Err(mismatch());
    }
    for (p, a) in pattern.iter().zip(&actual.0) {
        match p {
            DimAst::Int(n, _) => {
                if a != &Dim::Known(*n) {
                    return Err(mismatch());
                }
            }
            DimAst::Sym(s) => match dims.get(&s.name) {
                Some(d) if d == a => {}
                Some(d) => return Err(format!("{} (`{}` is {d} here)", mismatch(), s.name)),
                None => {
                    dims.insert(s.name.clone(), a.clone());
                }
            },
        }
    }
    Ok(())
}

/// Adds an op, turning a type error into a diagnostic at `span`.
pub(super) fn add(
    g: &mut Graph,
    op: Op,
    operands: &[NodeId],
    span: &Span,
    src: usize,
) -> Result<NodeId, Diagnostic> {
    g.add(op, operands).map_err(|e| match e {
        GraphError::Type(t) => diag(src, t.0, span.clone()).with_label("shapes do not fit"),
        other => diag(src, other.to_string(), span.clone()),
    })
}

fn leaf(ctx: &Ctx, g: &mut Graph, op: Op, span: &Span, src: usize) -> Result<NodeId, Diagnostic> {
    g.add_leaf(op, ctx.dtype)
        .map_err(|e| diag(src, e.to_string(), span.clone()))
}

/// Lowers `e`, which must be a tensor.
pub(super) fn tensor(ctx: &Ctx, g: &mut Graph, env: &Env, e: &Expr) -> Result<NodeId, Diagnostic> {
    match lower_expr(ctx, g, env, e)? {
        Val::Tensor(id) => Ok(id),
        Val::Const(ConstVal::Int(n)) => Ok(g.add_const(n as f64, ctx.dtype)),
        Val::Const(ConstVal::Float(x)) => Ok(g.add_const(x, ctx.dtype)),
        Val::Const(c) => Err(diag(
            env.src,
            format!(
                "this is {} ({c}), known when compiling, not a tensor: use it in an `if` condition",
                c.kind()
            ),
            e.span.clone(),
        )),
        Val::Scan { fields, .. } => Err(diag(
            env.src,
            format!(
                "this is a `ttt` result, not a tensor: use one of its fields ({})",
                fields
                    .iter()
                    .map(|f| format!(".{f}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            e.span.clone(),
        )),
    }
}

/// An integer literal such as `-1` (axes).
fn int_literal(e: &Expr) -> Option<i64> {
    match &e.kind {
        ExprKind::Int(n) => i64::try_from(*n).ok(),
        ExprKind::Neg(inner) => int_literal(inner).map(|n| -n),
        _ => None,
    }
}

/// `a.b.c` as a dotted name, if `e` is a chain of names and fields.
fn dotted_path(e: &Expr) -> Option<String> {
    match &e.kind {
        ExprKind::Name(n) => Some(n.clone()),
        ExprKind::Field(inner, f) => dotted_path(inner).map(|p| format!("{p}.{}", f.name)),
        _ => None,
    }
}

/// A constant `x` in the program's element type; an error located at `span` when `x` is not
/// finite there (`1e39` overflows f32 to infinity, which would make every result NaN).
fn number(ctx: &Ctx, g: &mut Graph, x: f64, span: &Span, src: usize) -> Result<NodeId, Diagnostic> {
    let finite = match ctx.dtype {
        crate::shape::DType::F32 => (x as f32).is_finite(),
        crate::shape::DType::F64 => x.is_finite(),
    };
    if !finite {
        return Err(diag(
            src,
            format!("{x:e} is too large for {}: it would be infinity", ctx.dtype),
            span.clone(),
        )
        .with_label("overflows"));
    }
    Ok(g.add_const(x, ctx.dtype))
}

/// Looks up a name: variables, then the inner model's states and parameters, then dimensions
/// (their extent as a scalar) and configs.
fn lookup(
    ctx: &Ctx,
    g: &mut Graph,
    env: &Env,
    n: &str,
    span: &Span,
) -> Result<Option<Val>, Diagnostic> {
    if let Some(v) = env.vars.get(n).or_else(|| env.base.get(n)) {
        return Ok(Some(v.clone()));
    }
    match ctx.configs.get(n) {
        Some(crate::ConfigValue::Float(x)) => {
            return Ok(Some(Val::Tensor(number(ctx, g, *x, span, env.src)?)))
        }
        Some(crate::ConfigValue::Bool(b)) => return Ok(Some(Val::Const(ConstVal::Bool(*b)))),
        Some(crate::ConfigValue::Str(s)) => return Ok(Some(Val::Const(ConstVal::Str(s.clone())))),
        _ => {}
    }
    if let Some(dim) = env.dim(ctx, n) {
        return Ok(Some(Val::Tensor(leaf(
            ctx,
            g,
            Op::Extent { dim },
            span,
            env.src,
        )?)));
    }
    Ok(None)
}

/// Lowers one expression.
pub(super) fn lower_expr(ctx: &Ctx, g: &mut Graph, env: &Env, e: &Expr) -> Result<Val, Diagnostic> {
    let _nesting = Nesting::enter(ctx, e, env.src)?;
    if g.node_count() > MAX_LOWERED_NODES {
        return Err(diag(
            env.src,
            format!(
                "the program grows past {MAX_LOWERED_NODES} operations once function calls are \
                 inlined and loops unrolled"
            ),
            e.span.clone(),
        )
        .with_label("while lowering this"));
    }
    lower_expr_at_depth(ctx, g, env, e)
}

/// [`lower_expr`] once its nesting is counted.
fn lower_expr_at_depth(ctx: &Ctx, g: &mut Graph, env: &Env, e: &Expr) -> Result<Val, Diagnostic> {
    let src = env.src;
    let t = |id| Ok(Val::Tensor(id));
    match &e.kind {
        ExprKind::Int(n) => t(number(ctx, g, *n as f64, &e.span, src)?),
        ExprKind::Float(x) => t(number(ctx, g, *x, &e.span, src)?),
        ExprKind::Str(_) | ExprKind::Bool(_) | ExprKind::Not(_) => {
            Ok(Val::Const(const_eval(ctx, g, env, e)?))
        }
        ExprKind::Binary(op, ..) if op.is_compile_time() => {
            Ok(Val::Const(const_eval(ctx, g, env, e)?))
        }
        ExprKind::If(cond, then, otherwise) => {
            let body = if condition(ctx, g, env, cond)? {
                then
            } else {
                otherwise
            };
            let mut scope = env.clone();
            lower_body(ctx, g, &mut scope, body, None, "if")
        }
        ExprKind::Name(n) => match lookup(ctx, g, env, n, &e.span)? {
            Some(v) => Ok(v),
            None => {
                let hint = if ctx.fns.contains_key(n.as_str()) || is_builtin(n) {
                    format!("`{n}` is a function: call it with arguments")
                } else {
                    format!("unknown name `{n}`")
                };
                Err(diag(src, hint, e.span.clone()).with_label("not defined here"))
            }
        },
        ExprKind::List(_) => Err(diag(
            src,
            "a list of dimensions is only an argument of `reshape` or `permute`",
            e.span.clone(),
        )),
        ExprKind::Neg(x) => {
            let x = tensor(ctx, g, env, x)?;
            t(add(g, Op::Unary { fun: UnaryOp::Neg }, &[x], &e.span, src)?)
        }
        ExprKind::Binary(op, a, b) => {
            let lhs = tensor(ctx, g, env, a)?;
            if *op == BinOp::Pow && int_literal(b) == Some(2) {
                return t(add(
                    g,
                    Op::Binary { fun: BinaryOp::Mul },
                    &[lhs, lhs],
                    &e.span,
                    src,
                )?);
            }
            let rhs = tensor(ctx, g, env, b)?;
            let op = match op {
                BinOp::Add => Op::Binary { fun: BinaryOp::Add },
                BinOp::Sub => Op::Binary { fun: BinaryOp::Sub },
                BinOp::Mul => Op::Binary { fun: BinaryOp::Mul },
                BinOp::Div => Op::Binary { fun: BinaryOp::Div },
                BinOp::Pow => Op::Binary { fun: BinaryOp::Pow },
                BinOp::MatMul => Op::MatMul,
                // Handled above: compile-time values only.
                BinOp::Eq
                | BinOp::Ne
                | BinOp::Lt
                | BinOp::Le
                | BinOp::Gt
                | BinOp::Ge
                | BinOp::And
                | BinOp::Or => return Ok(Val::Const(const_eval(ctx, g, env, e)?)),
            };
            t(add(g, op, &[lhs, rhs], &e.span, src)?)
        }
        ExprKind::Field(x, field) => {
            // A dotted name such as `q_proj.weight` is one variable.
            if let Some(path) = dotted_path(e) {
                let path = interpolate(ctx, g, env, &path, &e.span)?;
                if let Some(v) = env.vars.get(&path).or_else(|| env.base.get(&path)) {
                    return Ok(v.clone());
                }
            }
            if field.name.starts_with('{') {
                return Err(diag(
                    src,
                    format!(
                        "unknown name `{}`",
                        interpolate(ctx, g, env, &dotted_path(e).unwrap_or_default(), &e.span)?
                    ),
                    e.span.clone(),
                )
                .with_label("no input or variable has this name"));
            }
            match lower_expr(ctx, g, env, x)? {
                Val::Tensor(id) if field.name == "T" => {
                    t(add(g, Op::Transpose, &[id], &e.span, src)?)
                }
                Val::Const(c) => Err(diag(
                    src,
                    format!("{} ({c}) has no field `{}`", c.kind(), field.name),
                    field.span.clone(),
                )),
                Val::Tensor(_) => Err(diag(
                    src,
                    format!(
                        "a tensor has no field `{}` (only `.T`, the transpose)",
                        field.name
                    ),
                    field.span.clone(),
                )),
                Val::Scan { node, fields } => match fields.iter().position(|f| *f == field.name) {
                    Some(index) => t(add(g, Op::Get { index }, &[node], &e.span, src)?),
                    None => Err(diag(
                        src,
                        format!(
                            "a `ttt` result has no field `{}`; its fields are {}",
                            field.name,
                            fields.join(", ")
                        ),
                        field.span.clone(),
                    )),
                },
            }
        }
        ExprKind::Call(name, args) => lower_call(ctx, g, env, name, args, &e.span),
        ExprKind::Ttt(ttt) => super::ttt::lower_ttt(ctx, g, env, ttt, &e.span),
    }
}

/// Checks a built-in's argument count and names.
fn positional<'e>(
    src: usize,
    name: &Ident,
    args: &'e [Arg],
    min: usize,
    max: usize,
    allowed_named: &[&str],
) -> Result<Vec<&'e Expr>, Diagnostic> {
    let count = args.len();
    if count < min || count > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(diag(
            src,
            format!("`{}` takes {want} argument(s), got {count}", name.name),
            name.span.clone(),
        ));
    }
    args.iter()
        .map(|a| match &a.name {
            Some(n) if !allowed_named.contains(&n.name.as_str()) => Err(diag(
                src,
                format!("`{}` has no argument named `{}`", name.name, n.name),
                n.span.clone(),
            )),
            _ => Ok(&a.value),
        })
        .collect()
}

/// The dimension list argument of `reshape` / `iota`.
fn dims_arg(ctx: &Ctx, env: &Env, e: &Expr) -> Result<Shape, Diagnostic> {
    let one = |d: &DimAst| match d {
        DimAst::Int(n, _) => Ok(Dim::Known(*n)),
        DimAst::Sym(s) => env.dim(ctx, &s.name).ok_or_else(|| {
            diag(
                env.src,
                format!("unknown dimension `{}`", s.name),
                s.span.clone(),
            )
        }),
    };
    match &e.kind {
        ExprKind::List(dims) => Ok(Shape(dims.iter().map(one).collect::<Result<_, _>>()?)),
        _ => Err(diag(
            env.src,
            "expected a list of dimensions such as [B, L, f]",
            e.span.clone(),
        )),
    }
}

fn lower_call(
    ctx: &Ctx,
    g: &mut Graph,
    env: &Env,
    name: &Ident,
    args: &[Arg],
    span: &Span,
) -> Result<Val, Diagnostic> {
    let src = env.src;
    let n = name.name.as_str();
    if let Some(fun) = UnaryOp::from_name(n) {
        let a = positional(src, name, args, 1, 1, &[])?;
        let x = tensor(ctx, g, env, a[0])?;
        return Ok(Val::Tensor(add(g, Op::Unary { fun }, &[x], span, src)?));
    }
    let tensor_result = |id| Ok(Val::Tensor(id));
    match n {
        "max" | "min" | "pow" | "matmul" => {
            let a = positional(src, name, args, 2, 2, &[])?;
            let x = tensor(ctx, g, env, a[0])?;
            let y = tensor(ctx, g, env, a[1])?;
            let op = match n {
                "max" => Op::Binary { fun: BinaryOp::Max },
                "min" => Op::Binary { fun: BinaryOp::Min },
                "pow" => Op::Binary { fun: BinaryOp::Pow },
                _ => Op::MatMul,
            };
            return tensor_result(add(g, op, &[x, y], span, src)?);
        }
        "transpose" => {
            let a = positional(src, name, args, 1, 1, &[])?;
            let x = tensor(ctx, g, env, a[0])?;
            return tensor_result(add(g, Op::Transpose, &[x], span, src)?);
        }
        "reshape" => {
            let a = positional(src, name, args, 2, 2, &[])?;
            let x = tensor(ctx, g, env, a[0])?;
            let shape = dims_arg(ctx, env, a[1])?;
            return tensor_result(add(g, Op::Reshape { shape }, &[x], span, src)?);
        }
        "permute" => {
            let a = positional(src, name, args, 2, 2, &[])?;
            let x = tensor(ctx, g, env, a[0])?;
            let perm = match &a[1].kind {
                ExprKind::List(dims) => dims
                    .iter()
                    .map(|d| match d {
                        DimAst::Int(i, _) => Ok(*i),
                        DimAst::Sym(s) => {
                            Err(diag(src, "permute takes axis numbers", s.span.clone()))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => {
                    return Err(diag(
                        src,
                        "expected axis numbers such as [0, 2, 1, 3]",
                        a[1].span.clone(),
                    ))
                }
            };
            return tensor_result(add(g, Op::Permute { perm }, &[x], span, src)?);
        }
        "iota" => {
            let a = positional(src, name, args, 1, 1, &[])?;
            let len = match &a[0].kind {
                ExprKind::Int(k) => Dim::Known(*k as usize),
                ExprKind::Name(d) => env.dim(ctx, d).ok_or_else(|| {
                    diag(src, format!("`{d}` is not a dimension"), a[0].span.clone())
                })?,
                _ => {
                    return Err(diag(
                        src,
                        "iota takes a dimension or an integer",
                        a[0].span.clone(),
                    ))
                }
            };
            return tensor_result(leaf(ctx, g, Op::Iota { len }, span, src)?);
        }
        "gather" => {
            if env.in_inner {
                return Err(diag(
                    src,
                    "`gather` cannot be used inside an inner model: the mini-batch form has no \
                     rule for it yet",
                    name.span.clone(),
                )
                .with_label("use it outside the `ttt` scan, in `main`"));
            }
            let a = positional(src, name, args, 2, 2, &[])?;
            let table = tensor(ctx, g, env, a[0])?;
            let ids = tensor(ctx, g, env, a[1])?;
            if g.tensor_type(table).is_some_and(|t| t.shape.rank() == 0) {
                return Err(diag(
                    src,
                    "gather needs a table with 1 or more axes (its rows first), got a scalar",
                    a[0].span.clone(),
                ));
            }
            return tensor_result(add(g, Op::Gather, &[table, ids], span, src)?);
        }
        "slice" | "shift" => {
            if env.in_inner {
                return Err(diag(
                    src,
                    format!("`{n}` cannot be used inside an inner model: tttc has no gradient for it yet"),
                    name.span.clone(),
                )
                .with_label("use it outside the `ttt` scan, in `main`"));
            }
            let (min, max) = if n == "slice" { (4, 4) } else { (3, 4) };
            let a = positional(src, name, args, min, max, &[])?;
            let x = tensor(ctx, g, env, a[0])?;
            let rank = g.tensor_type(x).map_or(0, |t| t.shape.rank());
            let axis = axis_arg(src, a[1], rank)?;
            let count = |e: &Expr| -> Result<usize, Diagnostic> {
                match const_eval(ctx, g, env, e)? {
                    ConstVal::Int(v) if v >= 0 => Ok(v as usize),
                    other => Err(diag(
                        src,
                        format!(
                            "expected a non-negative integer known when compiling, got {other}"
                        ),
                        e.span.clone(),
                    )),
                }
            };
            let (op, operands) = if n == "slice" {
                let (start, len) = (count(a[2])?, count(a[3])?);
                (Op::Slice { axis, start, len }, vec![x])
            } else {
                let by = count(a[2])?;
                let mut operands = vec![x];
                if let Some(fill) = a.get(3) {
                    operands.push(tensor(ctx, g, env, fill)?);
                }
                (Op::Shift { axis, by }, operands)
            };
            return tensor_result(add(g, op, &operands, span, src)?);
        }
        "sum" | "mean" | "var" => {
            let a = positional(src, name, args, 1, 2, &["axis"])?;
            let x = tensor(ctx, g, env, a[0])?;
            let rank = g.tensor_type(x).map_or(0, |t| t.shape.rank());
            let axis = match a.get(1) {
                None => None,
                Some(ax) => {
                    let Some(v) = int_literal(ax) else {
                        return Err(diag(
                            src,
                            "the axis must be an integer literal such as -1",
                            ax.span.clone(),
                        ));
                    };
                    let r = rank as i64;
                    if v < -r || v >= r {
                        return Err(diag(
                            src,
                            format!("axis {v} is out of range for a tensor with {rank} axes"),
                            ax.span.clone(),
                        ));
                    }
                    Some(v.rem_euclid(r.max(1)) as usize)
                }
            };
            return tensor_result(reduce(g, n, x, axis, span, src)?);
        }
        _ => {}
    }
    inline_call(ctx, g, env, name, args, span)
}

/// An axis argument: an integer literal, negative counting from the end.
fn axis_arg(src: usize, e: &Expr, rank: usize) -> Result<usize, Diagnostic> {
    let Some(v) = int_literal(e) else {
        return Err(diag(
            src,
            "the axis must be an integer literal such as -1",
            e.span.clone(),
        ));
    };
    let r = rank as i64;
    if v < -r || v >= r {
        return Err(diag(
            src,
            format!("axis {v} is out of range for a tensor with {rank} axes"),
            e.span.clone(),
        ));
    }
    Ok(v.rem_euclid(r.max(1)) as usize)
}

/// Inlines a call of a user or prelude function.
fn inline_call(
    ctx: &Ctx,
    g: &mut Graph,
    env: &Env,
    name: &Ident,
    args: &[Arg],
    span: &Span,
) -> Result<Val, Diagnostic> {
    let src = env.src;
    let n = name.name.as_str();
    let (decl, callee_src, local) = if let Some(f) = env.local_fns.get(n) {
        (*f, src, true)
    } else if let Some((f, s)) = ctx.fns.get(n) {
        (*f, *s, false)
    } else {
        return Err(
            diag(src, format!("unknown function `{n}`"), name.span.clone())
                .with_label("not a built-in, a prelude function or a function of this program"),
        );
    };
    if env.depth >= MAX_CALL_DEPTH {
        return Err(diag(
            src,
            format!("calls nest deeper than {MAX_CALL_DEPTH}: is `{n}` recursive?"),
            name.span.clone(),
        ));
    }
    // Match arguments to parameters.
    let mut bound: Vec<Option<&Expr>> = vec![None; decl.params.len()];
    let mut next = 0;
    for a in args {
        let slot = match &a.name {
            Some(an) => decl
                .params
                .iter()
                .position(|p| p.name.name == an.name)
                .ok_or_else(|| {
                    diag(
                        src,
                        format!("`{n}` has no parameter named `{}`", an.name),
                        an.span.clone(),
                    )
                })?,
            None => {
                next += 1;
                next - 1
            }
        };
        if slot >= bound.len() {
            return Err(diag(
                src,
                format!(
                    "`{n}` takes {} argument(s), got {}",
                    decl.params.len(),
                    args.len()
                ),
                a.value.span.clone(),
            ));
        }
        if bound[slot].is_some() {
            return Err(diag(
                src,
                format!(
                    "parameter `{}` of `{n}` is given twice",
                    decl.params[slot].name.name
                ),
                a.value.span.clone(),
            ));
        }
        bound[slot] = Some(&a.value);
    }
    let mut callee = Env::new(callee_src);
    callee.depth = env.depth + 1;
    callee.in_inner = env.in_inner;
    if local {
        // A function of an inner model sees the model's states, parameters and dimensions.
        callee.local_fns = env.local_fns.clone();
        callee.dims = env.dims.clone();
        callee.base = env.base.clone();
    }
    for (p, arg) in decl.params.iter().zip(&bound) {
        let Some(arg) = arg else {
            return Err(diag(
                src,
                format!("missing argument `{}` of `{n}`", p.name.name),
                span.clone(),
            ));
        };
        let v = lower_expr(ctx, g, env, arg)?;
        if let (Some(shape), Val::Tensor(id)) = (&p.shape, &v) {
            if let Some(ty) = g.tensor_type(*id) {
                let actual = ty.shape.clone();
                unify(&shape.dims, &actual, &mut callee.dims).map_err(|m| {
                    diag(
                        src,
                        format!("argument `{}` of `{n}`: {m}", p.name.name),
                        arg.span.clone(),
                    )
                })?;
            }
        }
        callee.vars.insert(p.name.name.clone(), v);
    }
    let result = lower_body(ctx, g, &mut callee, &decl.body, decl.ret.as_ref(), n);
    match result {
        // Report a problem inside the prelude at the user's call.
        Err(d) if callee_src == PRELUDE_SOURCE && src != PRELUDE_SOURCE => Err(diag(
            src,
            format!("in the prelude function `{n}`: {}", d.message),
            span.clone(),
        )),
        other => other,
    }
}

/// Lowers the `let`s and unrolls the `for`s of a body.
fn lower_body_stmts(
    ctx: &Ctx,
    g: &mut Graph,
    env: &mut Env,
    stmts: &[BodyStmt],
) -> Result<(), Diagnostic> {
    for stmt in stmts {
        match stmt {
            BodyStmt::Let(n, e) => {
                let v = lower_expr(ctx, g, env, e)?;
                env.vars.insert(n.name.clone(), v);
            }
            BodyStmt::For {
                var,
                start,
                end,
                body,
            } => {
                let (from, to) = (const_int(ctx, g, env, start)?, const_int(ctx, g, env, end)?);
                if to - from > MAX_LOOP {
                    return Err(diag(
                        env.src,
                        format!(
                            "this loop would unroll to {} iterations (at most {MAX_LOOP})",
                            to - from
                        ),
                        var.span.clone(),
                    ));
                }
                let saved = env.vars.get(&var.name).cloned();
                for i in from..to {
                    env.vars
                        .insert(var.name.clone(), Val::Const(ConstVal::Int(i)));
                    lower_body_stmts(ctx, g, env, body)
                        .map_err(|d| super::consteval::in_iteration(d, &var.name, i))?;
                }
                match saved {
                    Some(v) => env.vars.insert(var.name.clone(), v),
                    None => env.vars.remove(&var.name),
                };
            }
        }
    }
    Ok(())
}

/// Iterations one `for` in a function may unroll to.
const MAX_LOOP: i64 = 100_000;

/// Lowers `let`s and the result of a body; checks the declared result shape.
pub(super) fn lower_body(
    ctx: &Ctx,
    g: &mut Graph,
    env: &mut Env,
    body: &Body,
    ret: Option<&ShapeAst>,
    what: &str,
) -> Result<Val, Diagnostic> {
    lower_body_stmts(ctx, g, env, &body.lets)?;
    let v = lower_expr(ctx, g, env, &body.result)?;
    if let (Some(ret), Val::Tensor(id)) = (ret, &v) {
        if let Some(ty) = g.tensor_type(*id) {
            let actual = ty.shape.clone();
            unify(&ret.dims, &actual, &mut env.dims).map_err(|m| {
                diag(
                    env.src,
                    format!("result of `{what}`: {m}"),
                    body.result.span.clone(),
                )
            })?;
        }
    }
    Ok(v)
}

/// `sum`, `mean`, `var` over one axis (kept) or all axes (to a scalar).
fn reduce(
    g: &mut Graph,
    which: &str,
    x: NodeId,
    axis: Option<usize>,
    span: &Span,
    src: usize,
) -> Result<NodeId, Diagnostic> {
    let rank = g.tensor_type(x).map_or(0, |t| t.shape.rank());
    let axes: Vec<usize> = axis.map_or_else(|| (0..rank).collect(), |a| vec![a]);
    let reduce_axes = |g: &mut Graph, mut v: NodeId, fun: ReduceOp| -> Result<NodeId, Diagnostic> {
        for &a in &axes {
            v = add(g, Op::Reduce { fun, axis: a }, &[v], span, src)?;
        }
        Ok(v)
    };
    let mut v = match which {
        "var" => {
            let mu = reduce_axes(g, x, ReduceOp::Mean)?;
            let c = add(g, Op::Binary { fun: BinaryOp::Sub }, &[x, mu], span, src)?;
            let sq = add(g, Op::Binary { fun: BinaryOp::Mul }, &[c, c], span, src)?;
            reduce_axes(g, sq, ReduceOp::Mean)?
        }
        "sum" => reduce_axes(g, x, ReduceOp::Sum)?,
        _ => reduce_axes(g, x, ReduceOp::Mean)?,
    };
    if axis.is_none() && rank > 0 {
        v = add(
            g,
            Op::Reshape {
                shape: Shape::scalar(),
            },
            &[v],
            span,
            src,
        )?;
    }
    Ok(v)
}
