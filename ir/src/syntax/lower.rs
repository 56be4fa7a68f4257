//! Lowering: checks a parsed file and builds the typed IR, inlining function calls. Every error
//! is a [`Diagnostic`] located in the source.

use super::ast::*;
use super::diagnostic::{CompileError, Diagnostic, Span};
use super::{lexer, parser, PRELUDE, PRELUDE_NAME};
use crate::graph::{Graph, GraphError, NodeId};
use crate::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use crate::program::{ConfigParam, Program};
use crate::scan::{OperandAxes, TttScan};
use crate::shape::{DType, Dim, Shape, TensorType};
use std::collections::{BTreeMap, HashMap};

/// Maximum depth of nested function calls (catches recursion).
const MAX_CALL_DEPTH: usize = 64;

/// Compiles a program from raw file bytes: rejects empty, binary and non-UTF-8 files with a
/// located error, then calls [`compile`].
pub fn compile_bytes(file: &str, bytes: &[u8], dtype: DType) -> Result<Program, CompileError> {
    let fail = |text: String, message: String, at: usize| CompileError {
        file: file.to_string(),
        text,
        diagnostics: vec![Diagnostic::new(message, at..at + 1).with_label("here")],
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            let lossy = String::from_utf8_lossy(&bytes[..at]).into_owned();
            return Err(fail(
                lossy,
                format!("this is not a text file: invalid UTF-8 at byte {at}"),
                at,
            ));
        }
    };
    if let Some(at) = text.find('\0') {
        return Err(fail(
            text[..at].to_string(),
            format!("this looks like a binary file: NUL byte at byte {at}"),
            at,
        ));
    }
    compile(file, text, dtype)
}

/// Compiles program text to IR with every floating-point value of element type `dtype`.
pub fn compile(file: &str, text: &str, dtype: DType) -> Result<Program, CompileError> {
    let wrap = |d: Diagnostic| CompileError {
        file: file.to_string(),
        text: text.to_string(),
        diagnostics: vec![d],
    };
    if text.trim().is_empty() {
        return Err(wrap(
            Diagnostic::new(
                "the file is empty: a program needs an `inner` model and a `main` block",
                0..0,
            )
            .with_label("nothing here"),
        ));
    }
    let tokens = lexer::lex(text).map_err(wrap)?;
    let ast = parser::parse(&tokens).map_err(wrap)?;
    let prelude = parse_prelude().map_err(wrap)?;
    let name = std::path::Path::new(file)
        .file_stem()
        .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned());
    lower_file(&name, &ast, &prelude, dtype).map_err(wrap)
}

fn parse_prelude() -> Result<File, Diagnostic> {
    let in_prelude = |mut d: Diagnostic| {
        d.source = Some(PRELUDE_NAME);
        d
    };
    let tokens = lexer::lex(PRELUDE).map_err(in_prelude)?;
    parser::parse(&tokens).map_err(in_prelude)
}

/// Which file a piece of syntax comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    User,
    Prelude,
}

fn diag(src: Src, message: impl Into<String>, span: Span) -> Diagnostic {
    let mut d = Diagnostic::new(message, span);
    if src == Src::Prelude {
        d.source = Some(PRELUDE_NAME);
    }
    d
}

/// The value of an expression.
#[derive(Clone, Debug)]
enum Val {
    Tensor(NodeId),
    /// A scan's tuple result with its field names.
    Scan {
        node: NodeId,
        fields: Vec<String>,
    },
}

struct Ctx<'a> {
    dtype: DType,
    fns: HashMap<&'a str, (&'a FnDecl, Src)>,
    inners: HashMap<&'a str, &'a InnerDecl>,
    configs: BTreeMap<String, usize>,
}

#[derive(Clone)]
struct Env<'a> {
    /// Local names: parameters and `let`s.
    vars: HashMap<String, Val>,
    /// Names visible in every function of the enclosing inner model (states, parameters).
    base: HashMap<String, Val>,
    /// Functions of the enclosing inner model.
    local_fns: HashMap<&'a str, &'a FnDecl>,
    /// Dimension names already fixed (checked, not rebound, by annotations).
    dims: HashMap<String, Dim>,
    src: Src,
    depth: usize,
}

impl<'a> Env<'a> {
    fn new(src: Src) -> Self {
        Env {
            vars: HashMap::new(),
            base: HashMap::new(),
            local_fns: HashMap::new(),
            dims: HashMap::new(),
            src,
            depth: 0,
        }
    }
}

const BUILTINS: [&str; 8] = [
    "sum",
    "mean",
    "var",
    "max",
    "min",
    "pow",
    "transpose",
    "matmul",
];

fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(&name) || UnaryOp::from_name(name).is_some()
}

fn lower_file(
    name: &str,
    file: &File,
    prelude: &File,
    dtype: DType,
) -> Result<Program, Diagnostic> {
    let mut ctx = Ctx {
        dtype,
        fns: HashMap::new(),
        inners: HashMap::new(),
        configs: BTreeMap::new(),
    };
    for item in &prelude.items {
        if let Item::Fn(f) = item {
            ctx.fns.insert(f.name.name.as_str(), (f, Src::Prelude));
        }
    }
    let mut configs = Vec::new();
    let mut main: Option<&MainDecl> = None;
    let mut user_fns: HashMap<&str, &Span> = HashMap::new();
    for item in &file.items {
        match item {
            Item::Config(c) => {
                if ctx.configs.insert(c.name.name.clone(), c.value).is_some() {
                    return Err(Diagnostic::new(
                        format!("config `{}` is declared twice", c.name.name),
                        c.name.span.clone(),
                    ));
                }
                if c.value == 0 {
                    return Err(Diagnostic::new(
                        format!("config `{}` must be at least 1", c.name.name),
                        c.name.span.clone(),
                    ));
                }
                configs.push(ConfigParam {
                    name: c.name.name.clone(),
                    default: c.value,
                });
            }
            Item::Fn(f) => {
                check_fn_name(f)?;
                if user_fns
                    .insert(f.name.name.as_str(), &f.name.span)
                    .is_some()
                {
                    return Err(Diagnostic::new(
                        format!("function `{}` is defined twice", f.name.name),
                        f.name.span.clone(),
                    ));
                }
                ctx.fns.insert(f.name.name.as_str(), (f, Src::User));
            }
            Item::Inner(i) => {
                if ctx.inners.insert(i.name.name.as_str(), i).is_some() {
                    return Err(Diagnostic::new(
                        format!("inner model `{}` is defined twice", i.name.name),
                        i.name.span.clone(),
                    ));
                }
                check_inner(i)?;
            }
            Item::Main(m) => {
                if main.is_some() {
                    return Err(Diagnostic::new("`main` is defined twice", m.span.clone()));
                }
                main = Some(m);
            }
        }
    }
    let Some(main) = main else {
        let end = file.items.last().map_or(0..0, |_| 0..0);
        return Err(Diagnostic::new(
            "the program has no `main` block: declare its inputs, the `ttt` scan and its outputs there",
            end,
        ));
    };
    // Check every inner model on its own (with its declared dimension names), so that its
    // errors are reported even where `main` does not get that far.
    for item in &file.items {
        if let Item::Inner(inner) = item {
            inner_graph(&ctx, inner, InnerFn::Loss, &HashMap::new())?;
            inner_graph(&ctx, inner, InnerFn::Out, &HashMap::new())?;
        }
    }
    let graph = lower_main(&ctx, main)?;
    Ok(Program {
        name: name.to_string(),
        configs,
        graph,
    })
}

fn check_fn_name(f: &FnDecl) -> Result<(), Diagnostic> {
    if is_builtin(&f.name.name) {
        return Err(Diagnostic::new(
            format!(
                "`{}` is a built-in operation and cannot be redefined",
                f.name.name
            ),
            f.name.span.clone(),
        ));
    }
    Ok(())
}

/// Declaration-level checks of an inner model.
fn check_inner(inner: &InnerDecl) -> Result<(), Diagnostic> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    let mut claim = |id: &Ident, role: &'static str| -> Result<(), Diagnostic> {
        if let Some(prev) = seen.insert(id.name.clone(), role) {
            return Err(Diagnostic::new(
                format!(
                    "`{}` is already a {prev} of `{}`: states, parameters and token arguments are bound by name, so their names must differ",
                    id.name, inner.name.name
                ),
                id.span.clone(),
            ));
        }
        Ok(())
    };
    for s in &inner.states {
        claim(&s.name, "state")?;
    }
    for p in &inner.params {
        claim(&p.name, "parameter")?;
    }
    let Some(loss) = &inner.loss else {
        return Err(Diagnostic::new(
            format!("inner model `{}` has no `loss`", inner.name.name),
            inner.name.span.clone(),
        )
        .with_label("add `loss(k: [1, f], v: [1, f]) = ...`"));
    };
    let Some(out) = &inner.out else {
        return Err(Diagnostic::new(
            format!("inner model `{}` has no `out`", inner.name.name),
            inner.name.span.clone(),
        )
        .with_label("add `out(q: [1, f]) = ...`"));
    };
    if inner.states.is_empty() {
        return Err(Diagnostic::new(
            format!(
                "inner model `{}` has no `state`: there is nothing to train",
                inner.name.name
            ),
            inner.name.span.clone(),
        ));
    }
    for (f, role) in [(loss, "loss argument"), (out, "output argument")] {
        for p in &f.params {
            claim(&p.name, role)?;
            let Some(shape) = &p.shape else {
                return Err(Diagnostic::new(
                    format!(
                        "token argument `{}` needs a shape such as [1, f]",
                        p.name.name
                    ),
                    p.name.span.clone(),
                ));
            };
            if !matches!(shape.dims.first(), Some(DimAst::Int(1, _))) {
                return Err(Diagnostic::new(
                    "a token argument is one row of the sequence: its shape must start with 1, as in [1, f]",
                    shape.span.clone(),
                ));
            }
        }
    }
    for f in &inner.fns {
        check_fn_name(f)?;
    }
    Ok(())
}

fn shape_of(shape: &ShapeAst, dims: &HashMap<String, Dim>) -> Shape {
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

fn show_pattern(shape: &ShapeAst) -> String {
    let parts: Vec<String> = shape
        .dims
        .iter()
        .map(|d| match d {
            DimAst::Int(n, _) => n.to_string(),
            DimAst::Sym(s) => s.name.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Matches a shape annotation against an actual shape, binding unbound names.
fn unify(
    pattern: &ShapeAst,
    actual: &Shape,
    dims: &mut HashMap<String, Dim>,
) -> Result<(), String> {
    let mismatch = || format!("expected {} but got {actual}", show_pattern(pattern));
    if pattern.dims.len() != actual.rank() {
        return Err(mismatch());
    }
    for (p, a) in pattern.dims.iter().zip(&actual.0) {
        match p {
            DimAst::Int(n, _) => {
                if a != &Dim::Known(*n) {
                    return Err(mismatch());
                }
            }
            DimAst::Sym(s) => match dims.get(&s.name) {
                Some(d) if d == a => {}
                Some(d) => {
                    return Err(format!("{} (`{}` is {d} here)", mismatch(), s.name));
                }
                None => {
                    dims.insert(s.name.clone(), a.clone());
                }
            },
        }
    }
    Ok(())
}

fn lower_main(ctx: &Ctx, main: &MainDecl) -> Result<Graph, Diagnostic> {
    let mut g = Graph::new();
    let mut env = Env::new(Src::User);
    let mut outputs: HashMap<String, Span> = HashMap::new();
    for stmt in &main.stmts {
        match stmt {
            MainStmt::Input(names, shape) => {
                let ty = TensorType::new(ctx.dtype, shape_of(shape, &HashMap::new()));
                for n in names {
                    let id = g.add_input(&n.name, ty.clone()).map_err(|_| {
                        Diagnostic::new(
                            format!("input `{}` is declared twice", n.name),
                            n.span.clone(),
                        )
                    })?;
                    env.vars.insert(n.name.clone(), Val::Tensor(id));
                }
            }
            MainStmt::Let(n, e) => {
                let v = lower_expr(ctx, &mut g, &env, e)?;
                env.vars.insert(n.name.clone(), v);
            }
            MainStmt::Output(n, e) => {
                let id = tensor(ctx, &mut g, &env, e)?;
                if outputs.insert(n.name.clone(), n.span.clone()).is_some() {
                    return Err(Diagnostic::new(
                        format!("output `{}` is declared twice", n.name),
                        n.span.clone(),
                    ));
                }
                g.add_output(&n.name, id);
            }
        }
    }
    if g.outputs().is_empty() {
        return Err(Diagnostic::new(
            "`main` declares no `output`",
            main.span.clone(),
        ));
    }
    Ok(g)
}

fn add(
    g: &mut Graph,
    op: Op,
    operands: &[NodeId],
    span: &Span,
    src: Src,
) -> Result<NodeId, Diagnostic> {
    g.add(op, operands).map_err(|e| match e {
        GraphError::Type(t) => diag(src, t.0, span.clone()).with_label("shapes do not fit"),
        other => diag(src, other.to_string(), span.clone()),
    })
}

fn tensor(ctx: &Ctx, g: &mut Graph, env: &Env, e: &Expr) -> Result<NodeId, Diagnostic> {
    match lower_expr(ctx, g, env, e)? {
        Val::Tensor(id) => Ok(id),
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

fn lower_expr(ctx: &Ctx, g: &mut Graph, env: &Env, e: &Expr) -> Result<Val, Diagnostic> {
    let src = env.src;
    let t = |id| Ok(Val::Tensor(id));
    match &e.kind {
        ExprKind::Int(n) => t(g.add_const(*n as f64, ctx.dtype)),
        ExprKind::Float(x) => t(g.add_const(*x, ctx.dtype)),
        ExprKind::Name(n) => {
            if let Some(v) = env.vars.get(n).or_else(|| env.base.get(n)) {
                return Ok(v.clone());
            }
            let hint = if ctx.configs.contains_key(n) {
                format!("`{n}` is a config value: it can size tensors but is not a tensor itself")
            } else if ctx.fns.contains_key(n.as_str()) || is_builtin(n) {
                format!("`{n}` is a function: call it with arguments")
            } else {
                format!("unknown name `{n}`")
            };
            Err(diag(src, hint, e.span.clone()).with_label("not defined here"))
        }
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
            };
            t(add(g, op, &[lhs, rhs], &e.span, src)?)
        }
        ExprKind::Field(x, field) => match lower_expr(ctx, g, env, x)? {
            Val::Tensor(id) if field.name == "T" => t(add(g, Op::Transpose, &[id], &e.span, src)?),
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
        },
        ExprKind::Call(name, args) => lower_call(ctx, g, env, name, args, &e.span),
        ExprKind::Ttt(ttt) => lower_ttt(ctx, g, env, ttt, &e.span),
    }
}

fn positional<'e>(
    src: Src,
    name: &Ident,
    args: &'e [Arg],
    min: usize,
    max: usize,
    allowed_named: &[&str],
) -> Result<Vec<(&'e Expr, Option<&'e str>)>, Diagnostic> {
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
            n => Ok((&a.value, n.as_ref().map(|n| n.name.as_str()))),
        })
        .collect()
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
        let x = tensor(ctx, g, env, a[0].0)?;
        return Ok(Val::Tensor(add(g, Op::Unary { fun }, &[x], span, src)?));
    }
    match n {
        "max" | "min" | "pow" | "matmul" => {
            let a = positional(src, name, args, 2, 2, &[])?;
            let x = tensor(ctx, g, env, a[0].0)?;
            let y = tensor(ctx, g, env, a[1].0)?;
            let op = match n {
                "max" => Op::Binary { fun: BinaryOp::Max },
                "min" => Op::Binary { fun: BinaryOp::Min },
                "pow" => Op::Binary { fun: BinaryOp::Pow },
                _ => Op::MatMul,
            };
            return Ok(Val::Tensor(add(g, op, &[x, y], span, src)?));
        }
        "transpose" => {
            let a = positional(src, name, args, 1, 1, &[])?;
            let x = tensor(ctx, g, env, a[0].0)?;
            return Ok(Val::Tensor(add(g, Op::Transpose, &[x], span, src)?));
        }
        "sum" | "mean" | "var" => {
            let a = positional(src, name, args, 1, 2, &["axis"])?;
            let x = tensor(ctx, g, env, a[0].0)?;
            let rank = g.tensor_type(x).map_or(0, |t| t.shape.rank());
            let axis = match a.get(1) {
                None => None,
                Some((ax, _)) => {
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
            return Ok(Val::Tensor(reduce(ctx, g, n, x, axis, span, src)?));
        }
        _ => {}
    }
    let (decl, callee_src, local) = if let Some(f) = env.local_fns.get(n) {
        (*f, Src::User, true)
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
                let s = next;
                next += 1;
                s
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
    if local {
        // A function of an inner model sees the model's states and parameters.
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
                unify(shape, &actual, &mut callee.dims).map_err(|m| {
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
        Err(d) if callee_src == Src::Prelude && src == Src::User => Err(Diagnostic::new(
            format!("in the prelude function `{n}`: {}", d.message),
            span.clone(),
        )),
        other => other,
    }
}

fn lower_body(
    ctx: &Ctx,
    g: &mut Graph,
    env: &mut Env,
    body: &Body,
    ret: Option<&ShapeAst>,
    what: &str,
) -> Result<Val, Diagnostic> {
    for (n, e) in &body.lets {
        let v = lower_expr(ctx, g, env, e)?;
        env.vars.insert(n.name.clone(), v);
    }
    let v = lower_expr(ctx, g, env, &body.result)?;
    if let (Some(ret), Val::Tensor(id)) = (ret, &v) {
        if let Some(ty) = g.tensor_type(*id) {
            let actual = ty.shape.clone();
            unify(ret, &actual, &mut env.dims).map_err(|m| {
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

fn reduce(
    ctx: &Ctx,
    g: &mut Graph,
    which: &str,
    x: NodeId,
    axis: Option<usize>,
    span: &Span,
    src: Src,
) -> Result<NodeId, Diagnostic> {
    let rank = g.tensor_type(x).map_or(0, |t| t.shape.rank());
    let axes: Vec<usize> = axis.map_or_else(|| (0..rank).collect(), |a| vec![a]);
    let fun = if which == "sum" {
        ReduceOp::Sum
    } else {
        ReduceOp::Mean
    };
    let reduce_axes = |g: &mut Graph, mut v: NodeId, fun: ReduceOp| -> Result<NodeId, Diagnostic> {
        for &a in &axes {
            v = add(g, Op::Reduce { fun, axis: a }, &[v], span, src)?;
        }
        Ok(v)
    };
    let mut v = if which == "var" {
        let mu = reduce_axes(g, x, ReduceOp::Mean)?;
        let c = add(g, Op::Binary { fun: BinaryOp::Sub }, &[x, mu], span, src)?;
        let sq = add(g, Op::Binary { fun: BinaryOp::Mul }, &[c, c], span, src)?;
        reduce_axes(g, sq, ReduceOp::Mean)?
    } else {
        reduce_axes(g, x, fun)?
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
    let _ = ctx;
    Ok(v)
}

/// The roles of a scan's bindings, in operand order.
struct ScanBindings<'a> {
    states: Vec<&'a TensorDecl>,
    params: Vec<&'a TensorDecl>,
    loss_args: Vec<&'a ParamAst>,
    out_args: Vec<&'a ParamAst>,
}

fn lower_ttt(
    ctx: &Ctx,
    g: &mut Graph,
    env: &Env,
    ttt: &TttExpr,
    span: &Span,
) -> Result<Val, Diagnostic> {
    let src = env.src;
    let Some(inner) = ctx.inners.get(ttt.model.name.as_str()) else {
        let known: Vec<&str> = ctx.inners.keys().copied().collect();
        return Err(diag(
            src,
            format!(
                "unknown inner model `{}` (defined: {})",
                ttt.model.name,
                known.join(", ")
            ),
            ttt.model.span.clone(),
        ));
    };
    let (Some(loss), Some(out)) = (&inner.loss, &inner.out) else {
        return Err(diag(
            src,
            "inner model lacks `loss` or `out`",
            ttt.model.span.clone(),
        ));
    };
    let roles = ScanBindings {
        states: inner.states.iter().collect(),
        params: inner.params.iter().collect(),
        loss_args: loss.params.iter().collect(),
        out_args: out.params.iter().collect(),
    };
    // Named bindings.
    let mut given: HashMap<&str, &Arg> = HashMap::new();
    for a in &ttt.args {
        let Some(n) = &a.name else {
            return Err(diag(
                src,
                "`ttt` arguments are named: write `state_or_argument = value`",
                a.value.span.clone(),
            ));
        };
        if given.insert(n.name.as_str(), a).is_some() {
            return Err(diag(
                src,
                format!("`{}` is bound twice", n.name),
                n.span.clone(),
            ));
        }
    }
    let all_names: Vec<&Ident> = roles
        .states
        .iter()
        .map(|s| &s.name)
        .chain(roles.params.iter().map(|p| &p.name))
        .chain(roles.loss_args.iter().map(|p| &p.name))
        .chain(roles.out_args.iter().map(|p| &p.name))
        .collect();
    for a in &ttt.args {
        if let Some(n) = &a.name {
            if !all_names.iter().any(|x| x.name == n.name) {
                let names: Vec<&str> = all_names.iter().map(|x| x.name.as_str()).collect();
                return Err(diag(
                    src,
                    format!(
                        "`{}` has no state, parameter or token argument named `{}` (it has: {})",
                        inner.name.name,
                        n.name,
                        names.join(", ")
                    ),
                    n.span.clone(),
                ));
            }
        }
    }
    // Mapped dims.
    let per: Vec<String> = ttt.per.iter().map(|p| p.name.clone()).collect();
    for (i, p) in ttt.per.iter().enumerate() {
        if per[..i].contains(&p.name) {
            return Err(diag(
                src,
                format!("`{}` is listed twice in `per`", p.name),
                p.span.clone(),
            ));
        }
    }
    let axes_of = |id: NodeId, at: &Span, g: &Graph| -> Result<(OperandAxes, Shape), Diagnostic> {
        let ty = g
            .tensor_type(id)
            .ok_or_else(|| diag(src, "expected a tensor", at.clone()))?;
        let mut mapped = Vec::new();
        for d in &ty.shape.0 {
            let p = match d {
                Dim::Sym(s) => per.iter().position(|x| x == s),
                Dim::Known(_) => None,
            };
            if let Some(p) = p {
                if mapped.contains(&Some(p)) {
                    return Err(diag(
                        src,
                        format!(
                            "dimension `{}` appears twice in this operand's shape {}",
                            per[p], ty.shape
                        ),
                        at.clone(),
                    ));
                }
            }
            mapped.push(p);
        }
        let axes = OperandAxes { per: mapped };
        let slice = axes.slice_shape(&ty.shape);
        Ok((axes, slice))
    };
    let mut dims: HashMap<String, Dim> = HashMap::new();
    let mut operands = Vec::new();
    let mut axes = Vec::new();
    let mut bind = |g: &mut Graph,
                    dims: &mut HashMap<String, Dim>,
                    name: &Ident,
                    declared: &ShapeAst,
                    token: bool|
     -> Result<(), Diagnostic> {
        let Some(arg) = given.get(name.name.as_str()) else {
            return Err(diag(
                src,
                format!(
                    "`{}` of `{}` is not bound: add `{} = ...`",
                    name.name, inner.name.name, name.name
                ),
                ttt.model.span.clone(),
            ));
        };
        let id = tensor(ctx, g, env, &arg.value)?;
        let (ax, slice) = axes_of(id, &arg.value.span, g)?;
        let check = if token {
            // [L, rest...] against [1, rest...]
            if slice.rank() != declared.dims.len() {
                Err(format!(
                    "after removing the `per` dims it is {slice}, but one token of `{}` is {} so the sequence must be [L{}]",
                    name.name,
                    show_pattern(declared),
                    declared.dims[1..].iter().map(|d| match d { DimAst::Int(n, _) => format!(", {n}"), DimAst::Sym(s) => format!(", {}", s.name) }).collect::<String>()
                ))
            } else {
                let rest = ShapeAst {
                    dims: declared.dims[1..].to_vec(),
                    span: declared.span.clone(),
                };
                unify(&rest, &Shape(slice.0[1..].to_vec()), dims)
            }
        } else {
            unify(declared, &slice, dims).map_err(|m| format!("{m} after removing the `per` dims"))
        };
        check.map_err(|m| {
            diag(
                src,
                format!("binding `{}`: {m}", name.name),
                arg.value.span.clone(),
            )
        })?;
        operands.push(id);
        axes.push(ax);
        Ok(())
    };
    for s in &roles.states {
        bind(g, &mut dims, &s.name, &s.shape, false)?;
    }
    for p in &roles.params {
        bind(g, &mut dims, &p.name, &p.shape, false)?;
    }
    for p in roles.loss_args.iter().chain(&roles.out_args) {
        if let Some(shape) = &p.shape {
            bind(g, &mut dims, &p.name, shape, true)?;
        }
    }
    // The update rule.
    if ttt.rule.name != "minibatch_gd" {
        return Err(diag(
            src,
            format!(
                "unknown update rule `{}` (known: minibatch_gd)",
                ttt.rule.name
            ),
            ttt.rule.span.clone(),
        ));
    }
    let mut size: Option<Dim> = None;
    let mut token_eta = None;
    let mut lr = None;
    for a in &ttt.rule_args {
        let Some(n) = &a.name else {
            return Err(diag(
                src,
                "update rule arguments are named: size, token_eta, lr",
                a.value.span.clone(),
            ));
        };
        match n.name.as_str() {
            "size" => {
                size = Some(match &a.value.kind {
                    ExprKind::Int(v) if *v >= 1 => Dim::Known(*v as usize),
                    ExprKind::Name(s) => Dim::Sym(s.clone()),
                    _ => {
                        return Err(diag(
                            src,
                            "the mini-batch size must be a positive integer or a config name",
                            a.value.span.clone(),
                        ))
                    }
                })
            }
            "token_eta" => token_eta = Some(&a.value),
            "lr" => lr = Some(&a.value),
            other => {
                return Err(diag(
                    src,
                    format!(
                        "`minibatch_gd` has no argument `{other}` (it takes size, token_eta, lr)"
                    ),
                    n.span.clone(),
                ))
            }
        }
    }
    let missing = |what: &str| {
        diag(
            src,
            format!("`minibatch_gd` needs `{what} = ...`"),
            ttt.rule.span.clone(),
        )
    };
    let size = size.ok_or_else(|| missing("size"))?;
    for e in [
        token_eta.ok_or_else(|| missing("token_eta"))?,
        lr.ok_or_else(|| missing("lr"))?,
    ] {
        let id = tensor(ctx, g, env, e)?;
        let (ax, _) = axes_of(id, &e.span, g)?;
        operands.push(id);
        axes.push(ax);
    }
    // The inner graphs, with the inner model's dimension names replaced by the bound ones.
    let loss_graph = inner_graph(ctx, inner, InnerFn::Loss, &dims)?;
    let out_graph = inner_graph(ctx, inner, InnerFn::Out, &dims)?;
    let mut fields = vec!["out".to_string()];
    fields.extend(roles.states.iter().map(|s| s.name.name.clone()));
    let scan = TttScan {
        model: inner.name.name.clone(),
        per,
        mini_batch: size,
        states: roles.states.iter().map(|s| s.name.name.clone()).collect(),
        params: roles.params.iter().map(|s| s.name.name.clone()).collect(),
        loss_args: roles
            .loss_args
            .iter()
            .map(|s| s.name.name.clone())
            .collect(),
        out_args: roles.out_args.iter().map(|s| s.name.name.clone()).collect(),
        axes,
        loss: loss_graph,
        out: out_graph,
        grad: None,
    };
    let node = add(g, Op::Ttt(Box::new(scan)), &operands, span, src)?;
    Ok(Val::Scan { node, fields })
}

/// Which function of an inner model.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InnerFn {
    Loss,
    Out,
}

/// Builds the graph of an inner model's `loss` or `out`: inputs are the states, the parameters
/// and the function's token arguments, in that order; `dims` renames the model's dimensions.
fn inner_graph(
    ctx: &Ctx,
    inner: &InnerDecl,
    which: InnerFn,
    dims: &HashMap<String, Dim>,
) -> Result<Graph, Diagnostic> {
    let f = match which {
        InnerFn::Loss => inner.loss.as_ref(),
        InnerFn::Out => inner.out.as_ref(),
    }
    .ok_or_else(|| Diagnostic::new("inner model lacks `loss` or `out`", inner.name.span.clone()))?;
    let mut sub = Graph::new();
    let mut e = Env::new(Src::User);
    e.local_fns = inner
        .fns
        .iter()
        .map(|f| (f.name.name.as_str(), f))
        .collect();
    e.dims = dims.clone();
    let decls = inner
        .states
        .iter()
        .chain(&inner.params)
        .map(|t| (&t.name, Some(&t.shape), true))
        .chain(f.params.iter().map(|p| (&p.name, p.shape.as_ref(), false)));
    for (name, shape, shared) in decls {
        let Some(shape) = shape else { continue };
        let ty = TensorType::new(ctx.dtype, shape_of(shape, dims));
        let id = sub
            .add_input(&name.name, ty)
            .map_err(|err| Diagnostic::new(err.to_string(), name.span.clone()))?;
        let scope = if shared { &mut e.base } else { &mut e.vars };
        scope.insert(name.name.clone(), Val::Tensor(id));
    }
    let v = lower_body(ctx, &mut sub, &mut e, &f.body, f.ret.as_ref(), &f.name.name)?;
    let Val::Tensor(id) = v else {
        return Err(Diagnostic::new(
            "expected a tensor",
            f.body.result.span.clone(),
        ));
    };
    let shape = sub
        .tensor_type(id)
        .map(|t| t.shape.clone())
        .unwrap_or_default();
    if which == InnerFn::Loss && shape.rank() != 0 {
        return Err(Diagnostic::new(
            format!("the loss must be a scalar (shape []), but this is {shape}: reduce it, e.g. with sum(...)"),
            f.body.result.span.clone(),
        )
        .with_label("not a scalar"));
    }
    if which == InnerFn::Out && shape.0.first() != Some(&Dim::Known(1)) {
        return Err(Diagnostic::new(
            format!("`out` returns one token's output, a row [1, ...], but this is {shape}"),
            f.body.result.span.clone(),
        )
        .with_label("not a row"));
    }
    sub.add_output(
        if which == InnerFn::Loss {
            "loss"
        } else {
            "out"
        },
        id,
    );
    if which == InnerFn::Loss {
        for st in &inner.states {
            if !sub.depends_on_input(&st.name.name) {
                return Err(Diagnostic::new(
                    format!(
                        "state `{}` is never used by `loss`: its gradient would always be zero, so it would never be trained",
                        st.name.name
                    ),
                    st.name.span.clone(),
                )
                .with_label("unused state"));
            }
        }
    }
    Ok(sub)
}
