//! Lowering: checks a parsed file and builds the typed IR, inlining function calls. Every error
//! is a [`Diagnostic`] located in one of the sources (the file, the prelude, an import).
//!
//! - this module: sources and imports, top-level items, configs, the `main` block;
//! - [`expr`]: expressions, calls and built-in operations;
//! - [`consteval`]: compile-time values (`for` bounds, `if` conditions, `{NAME}` in names);
//! - [`ttt`]: inner models and the `ttt` scan.

mod consteval;
mod expr;
mod rule;
mod ttt;

use super::ast::*;
use super::diagnostic::{CompileError, Diagnostic, SourceFile, Span};
use super::{lexer, parser, PRELUDE, PRELUDE_NAME};
use crate::graph::Graph;
use crate::program::{
    ConfigParam, ConfigValue, DerivedDim, DimExpr, IntegerInput, Program, Setting, Settings,
};
use crate::shape::{DType, Dim, TensorType};
use consteval::{condition, interpolate, ConstVal};
use expr::{shape_of, tensor, Env, Val};
pub use expr::{MAX_LOWERED_NODES, MAX_LOWERING_DEPTH};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Index of the compiled file among the sources.
const USER: usize = 0;
/// Index of the prelude among the sources.
const PRELUDE_SOURCE: usize = 1;
/// How deep imports may nest.
const MAX_IMPORT_DEPTH: usize = 16;

/// The largest program or imported file read, in bytes: far more than any program needs, and
/// a guard against `import "/dev/zero"` or a huge file given by mistake.
pub const MAX_SOURCE_BYTES: u64 = 16 << 20;

/// Reads a program file: a regular file of at most [`MAX_SOURCE_BYTES`] bytes. A larger one is
/// an [`std::io::ErrorKind::InvalidData`] error, anything but a regular file (a device such as
/// `/dev/zero`, a FIFO, a directory) an [`std::io::ErrorKind::InvalidInput`] one, each saying so.
pub fn read_source(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    // A device such as /dev/zero would be read to the limit, and opening a FIFO could block
    // forever: look before opening.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SOURCE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the file is larger than {} MiB, the limit for a program",
                MAX_SOURCE_BYTES >> 20
            ),
        ));
    }
    Ok(bytes)
}

/// Compiles a program from raw file bytes: rejects empty, binary and non-UTF-8 files with a
/// located error, then calls [`compile`].
pub fn compile_bytes(
    file: &str,
    bytes: &[u8],
    dtype: DType,
    settings: &Settings,
) -> Result<Program, CompileError> {
    let fail = |text: String, message: String, at: usize| CompileError {
        sources: vec![SourceFile {
            name: file.to_string(),
            text,
        }],
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
    compile(file, text, dtype, settings)
}

/// Compiles program text to IR with every floating-point value of element type `dtype`.
/// `file` names the text in messages and locates its imports. `settings` override configs
/// (`--set`); names that are not configs are left for binding to check.
pub fn compile(
    file: &str,
    text: &str,
    dtype: DType,
    settings: &Settings,
) -> Result<Program, CompileError> {
    let mut sources = vec![
        SourceFile {
            name: file.to_string(),
            text: text.to_string(),
        },
        SourceFile {
            name: PRELUDE_NAME.to_string(),
            text: PRELUDE.to_string(),
        },
    ];
    let result = compile_sources(&mut sources, dtype, settings);
    result.map_err(|d| CompileError {
        sources,
        diagnostics: vec![d],
    })
}

fn compile_sources(
    sources: &mut Vec<SourceFile>,
    dtype: DType,
    settings: &Settings,
) -> Result<Program, Diagnostic> {
    if sources[USER].text.trim().is_empty() {
        return Err(Diagnostic::new(
            "the file is empty: a program needs an `inner` model and a `main` block",
            0..0,
        )
        .with_label("nothing here"));
    }
    let user = parse_source(&sources[USER].text, USER)?;
    let prelude = parse_source(PRELUDE, PRELUDE_SOURCE)?;
    // Items of the file, its imports (recursively) and the prelude, each with its source.
    let mut items: Vec<(usize, &Item)> = Vec::new();
    let imported = load_imports(sources, &user, USER, 0, &mut BTreeSet::new())?;
    for item in &prelude.items {
        items.push((PRELUDE_SOURCE, item));
    }
    for (src, file) in &imported {
        for item in &file.items {
            if !matches!(item, Item::Main(_)) {
                items.push((*src, item));
            }
        }
    }
    for item in &user.items {
        items.push((USER, item));
    }
    let name = Path::new(&sources[USER].name).file_stem().map_or_else(
        || sources[USER].name.clone(),
        |s| s.to_string_lossy().into_owned(),
    );
    lower_items(&name, &items, dtype, settings)
}

fn parse_source(text: &str, src: usize) -> Result<File, Diagnostic> {
    let tokens = lexer::lex(text).map_err(|d| d.in_source(src))?;
    parser::parse(&tokens).map_err(|d| d.in_source(src))
}

/// Reads and parses the files `file` imports (and theirs), appending them to `sources`.
fn load_imports(
    sources: &mut Vec<SourceFile>,
    file: &File,
    src: usize,
    depth: usize,
    seen: &mut BTreeSet<PathBuf>,
) -> Result<Vec<(usize, File)>, Diagnostic> {
    let mut out = Vec::new();
    for item in &file.items {
        let Item::Import(path, span) = item else {
            continue;
        };
        let here = Path::new(&sources[src].name)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let target = here.join(path);
        let key = target.canonicalize().unwrap_or_else(|_| target.clone());
        if depth >= MAX_IMPORT_DEPTH {
            return Err(
                Diagnostic::new("imports nest too deeply (a cycle?)", span.clone()).in_source(src),
            );
        }
        if !seen.insert(key) {
            continue;
        }
        let cannot = |why: String| {
            Diagnostic::new(
                format!("cannot import {}: {why}", target.display()),
                span.clone(),
            )
            .in_source(src)
        };
        let bytes = read_source(&target).map_err(|e| cannot(e.to_string()))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| cannot(format!("not a text file (invalid UTF-8: {e})")))?;
        if let Some(at) = text.find('\0') {
            return Err(cannot(format!("a binary file (NUL byte at byte {at})")));
        }
        let index = sources.len();
        sources.push(SourceFile {
            name: target.display().to_string(),
            text,
        });
        let parsed = parse_source(&sources[index].text, index)?;
        out.extend(load_imports(sources, &parsed, index, depth + 1, seen)?);
        out.push((index, parsed));
    }
    Ok(out)
}

/// What lowering knows about the whole program.
pub(super) struct Ctx<'a> {
    dtype: DType,
    fns: HashMap<&'a str, (&'a FnDecl, usize)>,
    inners: HashMap<&'a str, (&'a InnerDecl, usize)>,
    /// The update rules written as code, checked, with their source file.
    rules: HashMap<&'a str, (crate::rule::LinearRule, usize)>,
    configs: BTreeMap<String, ConfigValue>,
    /// Dimension names of the program (integer configs, input shapes, `dim`s).
    global_dims: BTreeSet<String>,
    /// How deep [`expr::lower_expr`] is nested right now, function calls inlined.
    expr_depth: std::cell::Cell<usize>,
}

fn lower_items(
    name: &str,
    items: &[(usize, &Item)],
    dtype: DType,
    settings: &Settings,
) -> Result<Program, Diagnostic> {
    let mut ctx = Ctx {
        dtype,
        fns: HashMap::new(),
        inners: HashMap::new(),
        rules: HashMap::new(),
        configs: BTreeMap::new(),
        global_dims: BTreeSet::new(),
        expr_depth: std::cell::Cell::new(0),
    };
    let mut configs: Vec<ConfigParam> = Vec::new();
    let mut main: Option<&MainDecl> = None;
    let mut fn_sources: HashMap<&str, usize> = HashMap::new();
    for &(src, item) in items {
        match item {
            Item::Config(c) => {
                let param = config_param(c, settings).map_err(|d| d.in_source(src))?;
                if let Some(prev) = configs.iter().find(|p| p.name == param.name) {
                    if prev.default != param.default {
                        return Err(Diagnostic::new(
                            format!(
                                "config `{}` is declared twice with different defaults ({} and {})",
                                param.name, prev.default, param.default
                            ),
                            c.name.span.clone(),
                        )
                        .in_source(src));
                    }
                    continue;
                }
                ctx.configs.insert(param.name.clone(), param.value.clone());
                if let ConfigValue::Int(_) = param.value {
                    ctx.global_dims.insert(param.name.clone());
                }
                configs.push(param);
            }
            Item::Fn(f) => {
                ttt::check_fn_name(f).map_err(|d| d.in_source(src))?;
                if src != PRELUDE_SOURCE {
                    if let Some(prev) = fn_sources.insert(f.name.name.as_str(), src) {
                        if prev != PRELUDE_SOURCE {
                            return Err(Diagnostic::new(
                                format!("function `{}` is defined twice", f.name.name),
                                f.name.span.clone(),
                            )
                            .in_source(src));
                        }
                    }
                } else {
                    fn_sources.insert(f.name.name.as_str(), src);
                }
                ctx.fns.insert(f.name.name.as_str(), (f, src));
            }
            Item::Inner(i) => {
                if ctx.inners.insert(i.name.name.as_str(), (i, src)).is_some() {
                    return Err(Diagnostic::new(
                        format!("inner model `{}` is defined twice", i.name.name),
                        i.name.span.clone(),
                    )
                    .in_source(src));
                }
                ttt::check_inner(i).map_err(|d| d.in_source(src))?;
            }
            Item::Rule(r) => {
                let name = r.name.name.as_str();
                let derived = rule::derive_rule(r, src)?;
                // A rule of the prelude may be replaced, like a function of the prelude.
                let prev = ctx.rules.insert(name, (derived, src));
                if prev.is_some_and(|(_, s)| s != PRELUDE_SOURCE) {
                    return Err(Diagnostic::new(
                        format!("update rule `{name}` is defined twice"),
                        r.name.span.clone(),
                    )
                    .in_source(src));
                }
            }
            Item::Main(m) => {
                if main.is_some() {
                    return Err(
                        Diagnostic::new("`main` is defined twice", m.span.clone()).in_source(src)
                    );
                }
                main = Some(m);
            }
            Item::Import(..) => {}
        }
    }
    let Some(main) = main else {
        return Err(Diagnostic::new(
            "the program has no `main` block: declare its inputs, the `ttt` scan and its outputs there",
            0..0,
        ));
    };
    // Dimension names declared in `main` (in any branch or loop), visible to every function.
    collect_dims(&main.stmts, &mut ctx.global_dims);
    // Check every inner model on its own (with its declared dimension names), so that its
    // errors are reported even where `main` does not use it.
    for (inner, src) in ctx.inners.values() {
        for which in [ttt::InnerFn::Loss, ttt::InnerFn::Out] {
            ttt::inner_graph(&ctx, inner, *src, which, &HashMap::new())?;
        }
    }
    let main = lower_main(&ctx, main)?;
    Ok(Program {
        name: name.to_string(),
        configs,
        derived_dims: main.derived,
        intermediates: main.intermediates,
        integer_inputs: main.integer_inputs,
        graph: main.graph,
    })
}

/// Dimension names that `main`'s input shapes and `dim`s declare, in every branch and loop.
fn collect_dims(stmts: &[MainStmt], dims: &mut BTreeSet<String>) {
    for stmt in stmts {
        match stmt {
            MainStmt::Input(_, shape, _) => {
                for d in &shape.dims {
                    if let DimAst::Sym(s) = d {
                        dims.insert(s.name.clone());
                    }
                }
            }
            MainStmt::Dim(n, _) => {
                dims.insert(n.name.clone());
            }
            MainStmt::For { body, .. } => collect_dims(body, dims),
            MainStmt::If {
                branches,
                otherwise,
            } => {
                for (_, b) in branches {
                    collect_dims(b, dims);
                }
                collect_dims(otherwise, dims);
            }
            _ => {}
        }
    }
}

fn config_param(c: &ConfigDecl, settings: &Settings) -> Result<ConfigParam, Diagnostic> {
    let name = c.name.name.clone();
    let default = match &c.value {
        ConfigLit::Int(0) => {
            return Err(Diagnostic::new(
                format!("config `{name}` must be at least 1"),
                c.name.span.clone(),
            ))
        }
        ConfigLit::Int(n) => ConfigValue::Int(*n),
        ConfigLit::Float(x) => ConfigValue::Float(*x),
        ConfigLit::Bool(b) => ConfigValue::Bool(*b),
        ConfigLit::Str(s) => ConfigValue::Str(s.clone()),
    };
    let bad = |want: &str, x: &Setting| {
        Err(Diagnostic::new(
            format!("setting `{name}` = {x}: `{name}` is {want}"),
            c.name.span.clone(),
        )
        .with_label("declared here"))
    };
    let value = match (&default, settings.get(&name)) {
        (_, None) => default.clone(),
        (ConfigValue::Float(_), Some(Setting::Number(x))) => ConfigValue::Float(*x),
        (ConfigValue::Float(_), Some(x)) => return bad("a real config", x),
        (ConfigValue::Int(_), Some(Setting::Number(x))) => {
            if x.fract() != 0.0 || !(1.0..=1e15).contains(x) {
                return bad("an integer config (at least 1)", &Setting::Number(*x));
            }
            ConfigValue::Int(*x as usize)
        }
        (ConfigValue::Int(_), Some(x)) => return bad("an integer config (at least 1)", x),
        (ConfigValue::Bool(_), Some(Setting::Bool(b))) => ConfigValue::Bool(*b),
        (ConfigValue::Bool(_), Some(x)) => return bad("a boolean config (true or false)", x),
        (ConfigValue::Str(_), Some(Setting::Text(t))) => {
            if !c.choices.is_empty() && !c.choices.contains(t) {
                let allowed: Vec<String> = c.choices.iter().map(|s| format!("{s:?}")).collect();
                return bad(
                    &format!("one of {}", allowed.join(", ")),
                    &Setting::Text(t.clone()),
                );
            }
            ConfigValue::Str(t.clone())
        }
        (ConfigValue::Str(_), Some(x)) => return bad("a string config", x),
    };
    Ok(ConfigParam {
        name,
        default,
        value,
    })
}

/// What lowering `main` produces.
struct MainParts {
    graph: Graph,
    derived: Vec<DerivedDim>,
    intermediates: Vec<String>,
    integer_inputs: Vec<IntegerInput>,
}

/// The state of lowering `main`'s statements.
struct MainState<'a> {
    g: Graph,
    env: Env<'a>,
    names: HashMap<String, Span>,
    parts: MainParts,
}

/// Iterations a `for` may unroll to, all loops together (a guard against typos such as
/// `0..100000`).
const MAX_UNROLLED: i64 = 100_000;

fn lower_main(ctx: &Ctx, main: &MainDecl) -> Result<MainParts, Diagnostic> {
    let mut st = MainState {
        g: Graph::new(),
        env: Env::new(USER),
        names: HashMap::new(),
        parts: MainParts {
            graph: Graph::new(),
            derived: Vec::new(),
            intermediates: Vec::new(),
            integer_inputs: Vec::new(),
        },
    };
    let mut budget = MAX_UNROLLED;
    lower_stmts(ctx, &mut st, &main.stmts, &mut budget)?;
    if st.g.outputs().len() == st.parts.intermediates.len() {
        return Err(Diagnostic::new(
            "`main` declares no `output`",
            main.span.clone(),
        ));
    }
    st.parts.graph = st.g;
    Ok(st.parts)
}

fn lower_stmts(
    ctx: &Ctx,
    st: &mut MainState,
    stmts: &[MainStmt],
    budget: &mut i64,
) -> Result<(), Diagnostic> {
    for stmt in stmts {
        match stmt {
            MainStmt::Input(inputs, shape, int) => {
                let ty = TensorType::new(ctx.dtype, shape_of(shape, &HashMap::new()));
                for n in inputs {
                    let name = interpolate(ctx, &st.g, &st.env, &n.name, &n.span)?;
                    let id = st.g.add_input(&name, ty.clone()).map_err(|_| {
                        Diagnostic::new(format!("input `{name}` is declared twice"), n.span.clone())
                    })?;
                    st.env.vars.insert(name.clone(), Val::Tensor(id));
                    if let Some(int) = int {
                        let range = int.range.as_ref().map(|(start, end)| {
                            let end = match end {
                                DimAst::Int(k, _) => Dim::Known(*k),
                                DimAst::Sym(s) => Dim::Sym(s.name.clone()),
                            };
                            (*start, end)
                        });
                        st.parts.integer_inputs.push(IntegerInput { name, range });
                    }
                }
            }
            MainStmt::Dim(n, e) => {
                let expr = dim_expr(ctx, e)?;
                if !st
                    .parts
                    .derived
                    .iter()
                    .any(|d| d.name == n.name && d.expr == expr)
                {
                    st.parts.derived.push(DerivedDim {
                        name: n.name.clone(),
                        expr,
                    });
                }
            }
            MainStmt::Let(n, e) => {
                let v = expr::lower_expr(ctx, &mut st.g, &st.env, e)?;
                st.env.vars.insert(n.name.clone(), v);
            }
            MainStmt::Output(n, e) | MainStmt::Intermediate(n, e) => {
                let id = tensor(ctx, &mut st.g, &st.env, e)?;
                let name = interpolate(ctx, &st.g, &st.env, &n.name, &n.span)?;
                if st.names.insert(name.clone(), n.span.clone()).is_some() {
                    return Err(Diagnostic::new(
                        format!("output `{name}` is declared twice"),
                        n.span.clone(),
                    ));
                }
                st.g.add_output(&name, id);
                if matches!(stmt, MainStmt::Intermediate(..)) {
                    st.parts.intermediates.push(name);
                }
            }
            MainStmt::For {
                var,
                start,
                end,
                body,
            } => {
                let (from, to) = (
                    consteval::const_int(ctx, &st.g, &st.env, start)?,
                    consteval::const_int(ctx, &st.g, &st.env, end)?,
                );
                *budget -= (to - from).max(0);
                if *budget < 0 {
                    return Err(Diagnostic::new(
                        format!("`for` loops would unroll to more than {MAX_UNROLLED} iterations"),
                        var.span.clone(),
                    ));
                }
                let saved = st.env.vars.get(&var.name).cloned();
                for i in from..to {
                    st.env
                        .vars
                        .insert(var.name.clone(), Val::Const(ConstVal::Int(i)));
                    lower_stmts(ctx, st, body, budget)
                        .map_err(|d| consteval::in_iteration(d, &var.name, i))?;
                }
                match saved {
                    Some(v) => st.env.vars.insert(var.name.clone(), v),
                    None => st.env.vars.remove(&var.name),
                };
            }
            MainStmt::If {
                branches,
                otherwise,
            } => {
                let mut chosen = otherwise;
                for (cond, body) in branches {
                    if condition(ctx, &st.g, &st.env, cond)? {
                        chosen = body;
                        break;
                    }
                }
                lower_stmts(ctx, st, chosen, budget)?;
            }
        }
    }
    Ok(())
}

/// A `dim` definition: integers, dimension names, `*` and `/`.
fn dim_expr(ctx: &Ctx, e: &Expr) -> Result<DimExpr, Diagnostic> {
    match &e.kind {
        ExprKind::Int(n) => Ok(DimExpr::Dim(Dim::Known(*n as usize))),
        ExprKind::Name(n) if ctx.global_dims.contains(n) => Ok(DimExpr::Dim(Dim::Sym(n.clone()))),
        ExprKind::Name(n) => Err(Diagnostic::new(
            format!("`{n}` is not a dimension (declare it in an input's shape, a `dim` or an integer `config`)"),
            e.span.clone(),
        )),
        ExprKind::Binary(BinOp::Mul, a, b) => {
            Ok(DimExpr::Mul(Box::new(dim_expr(ctx, a)?), Box::new(dim_expr(ctx, b)?)))
        }
        ExprKind::Binary(BinOp::Div, a, b) => {
            Ok(DimExpr::Div(Box::new(dim_expr(ctx, a)?), Box::new(dim_expr(ctx, b)?)))
        }
        _ => Err(Diagnostic::new(
            "a dimension is computed from integers and dimension names with `*` and `/`",
            e.span.clone(),
        )),
    }
}
