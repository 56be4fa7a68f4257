//! Inner models and the `ttt` scan.

use super::expr::{
    add, diag, is_builtin, lower_body, shape_of, show_pattern, tensor, unify, Env, Val,
};
use super::Ctx;
use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::rule::{LinearRule, Poly};
use crate::scan::{OperandAxes, TokenEtaForm, TttScan, UpdateRule};
use crate::shape::{Dim, Shape, TensorType};
use crate::syntax::ast::*;
use crate::syntax::diagnostic::{Diagnostic, Span};
use std::collections::HashMap;

/// Rejects a function named like a built-in operation.
pub(super) fn check_fn_name(f: &FnDecl) -> Result<(), Diagnostic> {
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
pub(super) fn check_inner(inner: &InnerDecl) -> Result<(), Diagnostic> {
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

/// The roles of a scan's bindings, in operand order.
struct ScanBindings<'a> {
    states: Vec<&'a TensorDecl>,
    params: Vec<&'a TensorDecl>,
    loss_args: Vec<&'a ParamAst>,
    out_args: Vec<&'a ParamAst>,
}

/// Lowers a `ttt` scan.
pub(super) fn lower_ttt(
    ctx: &Ctx,
    g: &mut Graph,
    env: &Env,
    ttt: &TttExpr,
    span: &Span,
) -> Result<Val, Diagnostic> {
    let src = env.src;
    let Some(&(inner, inner_src)) = ctx.inners.get(ttt.model.name.as_str()) else {
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
                    show_pattern(&declared.dims),
                    declared.dims[1..].iter().map(|d| match d { DimAst::Int(n, _) => format!(", {n}"), DimAst::Sym(s) => format!(", {}", s.name) }).collect::<String>()
                ))
            } else {
                let rest = ShapeAst {
                    dims: declared.dims[1..].to_vec(),
                    span: declared.span.clone(),
                };
                unify(&rest.dims, &Shape(slice.0[1..].to_vec()), dims)
            }
        } else {
            unify(&declared.dims, &slice, dims)
                .map_err(|m| format!("{m} after removing the `per` dims"))
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
    // The update rule, written as code (`rule NAME(...) { ... }`; the prelude's
    // `minibatch_gd` and `momentum_gd` too). A rule of `minibatch_gd`'s form is lowered as
    // the built-in mini-batch GD (operands `token_eta, lr`; its partial sum, zeroed at every
    // mini-batch's end, is no scan state); one of `momentum_gd`'s form gets its operand order
    // (momentum, lr, decay) and the rule's carry name.
    let mut recognized: Option<(Vec<&str>, String)> = None;
    let other = ttt.rule.name.as_str();
    let (rule, arg_names): (UpdateRule, Vec<&str>) = match ctx.rules.get(other) {
        Some((r, _)) => {
            let mut names = vec!["size"];
            names.extend(r.coefficients.iter().map(String::as_str));
            let c = |i: usize| r.coefficients[i].as_str();
            if let Some([e, l]) = minibatch_structure(r) {
                // `minibatch_gd`'s recurrence: the built-in mini-batch GD.
                recognized = Some((vec![c(e), c(l)], r.carries[0].clone()));
                (UpdateRule::MinibatchGd, names)
            } else if r.carries.len() != 1 || r.coefficients.len() > 3 {
                return Err(diag(
                    src,
                    format!(
                        "update rule `{other}` has {} carries and {} coefficients; a scan runs \
                             rules of one carry and at most 3 coefficients for now",
                        r.carries.len(),
                        r.coefficients.len()
                    ),
                    ttt.rule.span.clone(),
                ));
            } else if let Some([l, m, d]) = momentum_structure(r) {
                // `momentum_gd`'s recurrence: its hand-built chunked form (the derived one
                // costs a little more, docs/language.md), the same graph.
                recognized = Some((vec![c(m), c(l), c(d)], r.carries[0].clone()));
                (UpdateRule::MomentumGd, names)
            } else {
                (UpdateRule::Linear(Box::new(r.clone())), names)
            }
        }
        None => {
            let mut known: Vec<&str> = ctx.rules.keys().copied().collect();
            known.sort_unstable();
            return Err(diag(
                src,
                format!(
                    "unknown update rule `{other}` (known: {})",
                    known.join(", ")
                ),
                ttt.rule.span.clone(),
            ));
        }
    };
    let rule_name = ttt.rule.name.as_str();
    let mut size: Option<Dim> = None;
    let mut values: HashMap<&str, &Expr> = HashMap::new();
    for a in &ttt.rule_args {
        let Some(n) = &a.name else {
            return Err(diag(
                src,
                format!("update rule arguments are named: {}", arg_names.join(", ")),
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
            other if arg_names.contains(&other) => {
                if values.insert(other, &a.value).is_some() {
                    return Err(diag(
                        src,
                        format!("`{other}` is given twice"),
                        n.span.clone(),
                    ));
                }
            }
            other => {
                return Err(diag(
                    src,
                    format!(
                        "`{rule_name}` has no argument `{other}` (it takes {})",
                        arg_names.join(", ")
                    ),
                    n.span.clone(),
                ))
            }
        }
    }
    let missing = |what: &str| {
        diag(
            src,
            format!("`{rule_name}` needs `{what} = ...`"),
            ttt.rule.span.clone(),
        )
    };
    let size = size.ok_or_else(|| missing("size"))?;
    // The coefficient operands, in operand order: `token_eta, lr`, `momentum, lr, decay`, or
    // a rule's coefficients in its order (padded with zeros to three below).
    let order: Vec<&str> = match (&rule, &recognized) {
        (_, Some((order, _))) => order.clone(),
        _ => arg_names[1..].to_vec(),
    };
    let mut slices = Vec::with_capacity(order.len());
    let mut coefficients = Vec::with_capacity(order.len());
    for &name in &order {
        let e = *values.get(name).ok_or_else(|| missing(name))?;
        let id = tensor(ctx, g, env, e)?;
        let (ax, slice) = axes_of(id, &e.span, g)?;
        coefficients.push((id, ax));
        slices.push((slice, e));
    }
    // A rule's coefficient may be a value per position in the mini-batch (`[size]`, like
    // `minibatch_gd`'s `token_eta`): one at most, moved to the scan's first coefficient slot,
    // the one that may hold such values.
    let mut order = order;
    let mut rule = rule;
    let mut per_position = false;
    if let UpdateRule::Linear(r) = &rule {
        let positional = Shape(vec![size.clone()]);
        let found: Vec<usize> = (0..slices.len())
            .filter(|&i| slices[i].0 == positional)
            .collect();
        if let [first, second, ..] = found[..] {
            return Err(diag(
                src,
                format!(
                    "`{}` is a value per position in the mini-batch ([{size}]), and so is `{}`: \
                     a rule takes at most one such coefficient",
                    order[second], order[first]
                ),
                slices[second].1.span.clone(),
            ));
        }
        if let Some(&p) = found.first() {
            let moved = r.with_coefficient_first(p);
            rule = UpdateRule::Linear(Box::new(moved));
            let c = coefficients.remove(p);
            coefficients.insert(0, c);
            let sl = slices.remove(p);
            slices.insert(0, sl);
            let name = order.remove(p);
            order.insert(0, name);
            per_position = true;
        }
    }
    let rule = rule;
    // The per-token coefficients start here.
    let per_token_from = usize::from(per_position);
    // A rule's coefficient that is a scalar after removing the `per` dims (one value per head,
    // or a constant) is broadcast to a value per token, the shape of its first per-token one.
    if rule != UpdateRule::MinibatchGd {
        broadcast_coefficients(
            g,
            &mut coefficients[per_token_from..],
            &mut slices[per_token_from..],
            &order[per_token_from..],
            src,
        )?;
    }
    let token_eta_form = match (&rule, slices.as_slice()) {
        (UpdateRule::MinibatchGd, [(eta, _), _]) if *eta == Shape(vec![size.clone()]) => {
            TokenEtaForm::PerPosition
        }
        (UpdateRule::MinibatchGd, [(eta, _), (lr, _)]) if eta == lr => TokenEtaForm::PerToken,
        (UpdateRule::MinibatchGd, [(eta, e), (lr, _)]) => {
            let (eta_name, lr_name) = (order[0], order[1]);
            return Err(diag(
                src,
                format!(
                    "after removing the `per` dims `{eta_name}` is {eta}: it must be [{size}] (a \
                     step size per position in the mini-batch) or the shape of `{lr_name}`, {lr} \
                     (a step size per token)"
                ),
                e.span.clone(),
            ));
        }
        (UpdateRule::MomentumGd, [(m, me), (lr, le), (d, de)]) => {
            let lr_name = order[1];
            if lr.rank() != 1 {
                return Err(diag(
                    src,
                    format!(
                        "after removing the `per` dims `{lr_name}` is {lr}: `{rule_name}` takes a \
                         learning rate per token, [L]"
                    ),
                    le.span.clone(),
                ));
            }
            for (name, shape, e) in [(order[0], m, me), (order[2], d, de)] {
                if shape != lr {
                    return Err(diag(
                        src,
                        format!(
                            "after removing the `per` dims `{name}` is {shape}: it must have the \
                             shape of `{lr_name}`, {lr} (a value per token)"
                        ),
                        e.span.clone(),
                    ));
                }
            }
            TokenEtaForm::PerToken
        }
        (UpdateRule::Linear(_), all) => {
            let Some((first, fe)) = all.get(per_token_from) else {
                return Err(diag(
                    src,
                    format!(
                        "`{rule_name}` needs a coefficient with a value per token ([L] after \
                         removing the `per` dims) besides its value per position"
                    ),
                    ttt.rule.span.clone(),
                ));
            };
            let first_name = order[per_token_from];
            if first.rank() != 1 {
                return Err(diag(
                    src,
                    format!(
                        "after removing the `per` dims `{first_name}` is {first}: the coefficients \
                         of `{rule_name}` are per-token values, [L] (or one of them a value per \
                         position in the mini-batch, [{size}])"
                    ),
                    fe.span.clone(),
                ));
            }
            let rest = &all[per_token_from + 1..];
            for ((shape, e), name) in rest.iter().zip(&order[per_token_from + 1..]) {
                if shape != first {
                    return Err(diag(
                        src,
                        format!(
                            "after removing the `per` dims `{name}` is {shape}: it must have the \
                             shape of `{first_name}`, {first} (a value per token)"
                        ),
                        e.span.clone(),
                    ));
                }
            }
            if per_position {
                TokenEtaForm::PerPosition
            } else {
                TokenEtaForm::PerToken
            }
        }
        _ => return Err(missing(order.first().copied().unwrap_or("size"))),
    };
    // A rule with fewer than three coefficients gets zero operands for the rest (the scan's
    // operand layout is `momentum_gd`'s).
    if let UpdateRule::Linear(_) = &rule {
        let (first, ax) = coefficients[per_token_from].clone();
        while coefficients.len() < 3 {
            let ty = g
                .tensor_type(first)
                .cloned()
                .ok_or_else(|| diag(src, "expected a tensor", ttt.rule.span.clone()))?;
            let zero = g.add_const(0.0, ty.dtype);
            let zero = add(
                g,
                Op::Expand { shape: ty.shape },
                &[zero],
                &ttt.rule.span,
                src,
            )?;
            coefficients.push((zero, ax.clone()));
        }
    }
    // Under momentum_gd every state carries a momentum buffer, a scan state starting at zero:
    // its initial operand is a zero of the state's bound shape, mapped like the state.
    let n_model = roles.states.len();
    let mut states: Vec<String> = roles.states.iter().map(|s| s.name.name.clone()).collect();
    if rule.has_carries() {
        let mut carries = Vec::with_capacity(n_model);
        let mut carry_axes = Vec::with_capacity(n_model);
        for s in 0..n_model {
            let (init, ax): (NodeId, OperandAxes) = (operands[s], axes[s].clone());
            let ty = g
                .tensor_type(init)
                .cloned()
                .ok_or_else(|| diag(src, "expected a tensor", ttt.model.span.clone()))?;
            let zero = g.add_const(0.0, ty.dtype);
            let zero = add(
                g,
                Op::Expand {
                    shape: ty.shape.clone(),
                },
                &[zero],
                &ttt.rule.span,
                src,
            )?;
            carries.push(zero);
            carry_axes.push(ax);
        }
        let carry_names: Vec<String> = match (&rule, &recognized) {
            (UpdateRule::Linear(r), _) => states
                .iter()
                .map(|s| format!("{s}_{}", r.carries[0]))
                .collect(),
            (_, Some((_, carry))) => states.iter().map(|s| format!("{s}_{carry}")).collect(),
            _ => states.iter().map(|s| TttScan::carry_name(s)).collect(),
        };
        if let Some(taken) = carry_names
            .iter()
            .find(|c| all_names.iter().any(|n| n.name == **c))
        {
            return Err(diag(
                src,
                format!(
                    "`{rule_name}` carries a {} `{taken}` for a state, but `{}` \
                     already has a state, parameter or token argument of that name",
                    if rule == UpdateRule::MomentumGd {
                        "momentum buffer"
                    } else {
                        "buffer"
                    },
                    inner.name.name
                ),
                ttt.rule.span.clone(),
            ));
        }
        // Insert after the model states.
        let tail_ops = operands.split_off(n_model);
        let tail_axes = axes.split_off(n_model);
        operands.extend(carries);
        operands.extend(tail_ops);
        axes.extend(carry_axes);
        axes.extend(tail_axes);
        states.extend(carry_names);
    }
    for (id, ax) in coefficients {
        operands.push(id);
        axes.push(ax);
    }
    // The inner graphs, with the inner model's dimension names replaced by the bound ones.
    let loss_graph = inner_graph(ctx, inner, inner_src, InnerFn::Loss, &dims)?;
    let out_graph = inner_graph(ctx, inner, inner_src, InnerFn::Out, &dims)?;
    let mut fields = vec!["out".to_string()];
    fields.extend(states.iter().cloned());
    let scan = TttScan {
        model: inner.name.name.clone(),
        per,
        mini_batch: size,
        states,
        params: roles.params.iter().map(|s| s.name.name.clone()).collect(),
        loss_args: roles
            .loss_args
            .iter()
            .map(|s| s.name.name.clone())
            .collect(),
        out_args: roles.out_args.iter().map(|s| s.name.name.clone()).collect(),
        axes,
        token_eta: token_eta_form,
        rule,
        doubling_rounds: None,
        loss: loss_graph,
        out: out_graph,
        grad: None,
        step: None,
        step_vjp: None,
    };
    let node = add(g, Op::Ttt(Box::new(scan)), &operands, span, src)?;
    Ok(Val::Scan { node, fields })
}

/// Which function of an inner model.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum InnerFn {
    Loss,
    Out,
}

/// Builds the graph of an inner model's `loss` or `out`: inputs are the states, the parameters
/// and the function's token arguments, in that order; `dims` renames the model's dimensions.
pub(super) fn inner_graph(
    ctx: &Ctx,
    inner: &InnerDecl,
    src: usize,
    which: InnerFn,
    dims: &HashMap<String, Dim>,
) -> Result<Graph, Diagnostic> {
    let f = match which {
        InnerFn::Loss => inner.loss.as_ref(),
        InnerFn::Out => inner.out.as_ref(),
    }
    .ok_or_else(|| {
        diag(
            src,
            "inner model lacks `loss` or `out`",
            inner.name.span.clone(),
        )
    })?;
    let mut sub = Graph::new();
    let mut e = Env::new(src);
    e.in_inner = true;
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
            .map_err(|err| diag(src, err.to_string(), name.span.clone()))?;
        let scope = if shared { &mut e.base } else { &mut e.vars };
        scope.insert(name.name.clone(), Val::Tensor(id));
    }
    let v = lower_body(ctx, &mut sub, &mut e, &f.body, f.ret.as_ref(), &f.name.name)?;
    let Val::Tensor(id) = v else {
        return Err(diag(src, "expected a tensor", f.body.result.span.clone()));
    };
    let shape = sub
        .tensor_type(id)
        .map(|t| t.shape.clone())
        .unwrap_or_default();
    if which == InnerFn::Loss && shape.rank() != 0 {
        return Err(diag(src,
            format!("the loss must be a scalar (shape []), but this is {shape}: reduce it, e.g. with sum(...)"),
            f.body.result.span.clone(),
        )
        .with_label("not a scalar"));
    }
    if which == InnerFn::Out && shape.0.first() != Some(&Dim::Known(1)) {
        return Err(diag(
            src,
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
                return Err(diag(src,
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

/// Whether a rule's recurrence is `minibatch_gd`'s — `x = [W; A]`, `T = I`, `b = [0; ρ]`, `u =
/// [1, −e]`, `E = [[1, −e], [0, 0]]` (a partial sum `A` of `ρ g`, read as `W − e A`, folded
/// into `W` and zeroed at the mini-batch's end), whatever the names — and if so the indices of
/// its coefficients `[e, ρ]` (`token_eta`, `lr`).
fn minibatch_structure(r: &LinearRule) -> Option<[usize; 2]> {
    if r.coefficients.len() != 2 || r.size() != 2 {
        return None;
    }
    let c = |i: usize| Poly::coefficient(i);
    let (one, zero) = (Poly::constant(1.0), Poly::zero());
    let identity = vec![
        vec![one.clone(), zero.clone()],
        vec![zero.clone(), one.clone()],
    ];
    for (e, l) in [(0, 1), (1, 0)] {
        let b = vec![zero.clone(), c(l)];
        let u = vec![one.clone(), c(e).scale(-1.0)];
        let end = vec![u.clone(), vec![zero.clone(), zero.clone()]];
        if r.transition == identity && r.gradient == b && r.read == u && r.end == Some(end) {
            return Some([e, l]);
        }
    }
    None
}

/// The coefficient indices `[ρ, η, α]` if `r` is `momentum_gd`'s recurrence (language.md):
/// `T = [[1 − α, η], [0, η]]`, `b = [−ρ, −ρ]`, `u = [1, 0]`, no end map, three distinct
/// coefficients.
fn momentum_structure(r: &LinearRule) -> Option<[usize; 3]> {
    if r.coefficients.len() != 3 || r.size() != 2 || r.end.is_some() {
        return None;
    }
    let c = |i: usize| Poly::coefficient(i);
    let one = Poly::constant(1.0);
    for l in 0..3 {
        for m in 0..3 {
            if l == m {
                continue;
            }
            let d = 3 - l - m; // the third index (l + m ≤ 3 for distinct l, m < 3)
            let t = vec![
                vec![one.add(&c(d).scale(-1.0)), c(m)],
                vec![Poly::zero(), c(m)],
            ];
            let b = vec![c(l).scale(-1.0), c(l).scale(-1.0)];
            let u = vec![one.clone(), Poly::zero()];
            if r.transition == t && r.gradient == b && r.read == u {
                return Some([l, m, d]);
            }
        }
    }
    None
}

/// Broadcasts every coefficient whose slice is a scalar (its axes, if any, all `per` dims) to
/// the shape and axes of the first per-token one (`[..., L]`), keeping its axes' order; `order`
/// names them for errors.
fn broadcast_coefficients(
    g: &mut Graph,
    coefficients: &mut [(NodeId, OperandAxes)],
    slices: &mut [(Shape, &Expr)],
    order: &[&str],
    src: usize,
) -> Result<(), Diagnostic> {
    let Some(r) = slices.iter().position(|(s, _)| s.rank() == 1) else {
        return Ok(());
    };
    let (ref_id, ref_ax) = coefficients[r].clone();
    let (ref_slice, ref_expr) = (slices[r].0.clone(), slices[r].1);
    let Some(ref_ty) = g.tensor_type(ref_id).cloned() else {
        return Err(diag(src, "expected a tensor", ref_expr.span.clone()));
    };
    for i in 0..coefficients.len() {
        if slices[i].0.rank() != 0 {
            continue;
        }
        let (id, ax) = coefficients[i].clone();
        let e = slices[i].1;
        let Some(ty) = g.tensor_type(id).cloned() else {
            return Err(diag(src, "expected a tensor", e.span.clone()));
        };
        let mapped: Vec<usize> = ax.per.iter().filter_map(|p| *p).collect();
        let in_ref: Vec<usize> = ref_ax
            .per
            .iter()
            .filter_map(|p| *p)
            .filter(|p| mapped.contains(p))
            .collect();
        if mapped != in_ref {
            return Err(diag(
                src,
                format!(
                    "`{}` is one value per {}: its axes must come in the order they have in `{}` ({})",
                    order[i], ty.shape, order[r], ref_ty.shape
                ),
                e.span.clone(),
            ));
        }
        let own: HashMap<usize, Dim> = ax
            .per
            .iter()
            .zip(&ty.shape.0)
            .filter_map(|(p, d)| p.map(|p| (p, d.clone())))
            .collect();
        let dims: Vec<Dim> = ref_ax
            .per
            .iter()
            .map(|p| {
                p.and_then(|p| own.get(&p).cloned())
                    .unwrap_or(Dim::Known(1))
            })
            .collect();
        let reshaped = add(g, Op::Reshape { shape: Shape(dims) }, &[id], &e.span, src)?;
        let expanded = add(
            g,
            Op::Expand {
                shape: ref_ty.shape.clone(),
            },
            &[reshaped],
            &e.span,
            src,
        )?;
        coefficients[i] = (expanded, ref_ax.clone());
        slices[i].0 = ref_slice.clone();
    }
    Ok(())
}
