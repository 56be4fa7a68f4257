//! Checking a `rule` declaration and deriving its recurrence ([`LinearRule`]): the transition
//! `T_t`, the gradient's weights `b_t`, the read `u_t` and the end map `E` (from the `end`
//! statements), every entry a polynomial in the rule's coefficients. A rule is linear in
//! (`state`, its carries, `grad`); anything else is a located error.

use super::expr::diag;
use crate::rule::{LinearRule, Poly};
use crate::syntax::ast::*;
use crate::syntax::diagnostic::Diagnostic;

/// The value of a rule expression: a scalar polynomial in the coefficients, or a linear form
/// over the rule's vector entries (`state`, carries) and `grad` (the last entry).
#[derive(Clone, Debug)]
enum RVal {
    Scalar(Poly),
    Linear(Vec<Poly>),
}

/// Checks `decl` and derives its recurrence (`src`: the source file, for diagnostics).
pub(super) fn derive_rule(decl: &RuleDecl, src: usize) -> Result<LinearRule, Diagnostic> {
    let err = |m: String, span: &crate::syntax::diagnostic::Span| diag(src, m, span.clone());
    let rule = &decl.name.name;
    // The body's names of the coefficients, and the arguments' names.
    let mut coefficients: Vec<String> = Vec::new();
    let mut arguments: Vec<String> = Vec::new();
    for param in &decl.params {
        let p = param.body_name();
        let taken = coefficients.contains(&p.name)
            || arguments.contains(&param.name.name)
            || param.name.name == "size"
            || ["grad", "state"].contains(&p.name.as_str());
        if taken {
            return Err(err(
                format!(
                    "rule `{rule}`: `{}` cannot be a coefficient (listed twice, or `size`, `grad` or `state`, which the rule has already)",
                    p.name
                ),
                &p.span,
            ));
        }
        coefficients.push(p.name.clone());
        arguments.push(param.name.name.clone());
    }
    // The vector's entries: `state`, then the carries in order of declaration.
    let mut entries: Vec<String> = vec!["state".to_string()];
    for s in &decl.stmts {
        if let RuleStmt::Carry(name, init) = s {
            if entries.contains(&name.name) || coefficients.contains(&name.name) {
                return Err(err(
                    format!(
                        "rule `{rule}`: `{}` is already a coefficient or carry",
                        name.name
                    ),
                    &name.span,
                ));
            }
            let zero = matches!(init.kind, ExprKind::Int(0))
                || matches!(init.kind, ExprKind::Float(x) if x == 0.0);
            if !zero {
                return Err(err(
                    format!(
                        "rule `{rule}`: a carry starts at zero: write `carry {} = 0`",
                        name.name
                    ),
                    &init.span,
                ));
            }
            entries.push(name.name.clone());
        }
    }
    let n = entries.len();
    // Linear forms are over x_{t−1} (n entries) and grad (entry n).
    let unit = |i: usize| unit_form(n, i);
    let mut current: Vec<Vec<Poly>> = (0..n).map(unit).collect();
    let mut read: Option<Vec<Poly>> = None;
    let mut assigned = vec![false; n];
    // The end map's rows, over x_{k−1} (the `grad` entry stays zero); `None` until an `end`.
    let mut end: Option<Vec<Vec<Poly>>> = None;
    for s in &decl.stmts {
        let per_token = matches!(s, RuleStmt::Assign(..) | RuleStmt::Read(..));
        if let (true, Some(_)) = (per_token, &end) {
            let span = match s {
                RuleStmt::Assign(t, _) => &t.span,
                RuleStmt::Read(_, span) => span,
                _ => &decl.span,
            };
            return Err(err(
                format!(
                    "rule `{rule}`: the per-token statements and `read` come before the `end` statements"
                ),
                span,
            ));
        }
        match s {
            RuleStmt::Carry(..) => {}
            RuleStmt::End(target, e, _) => {
                let Some(i) = entries.iter().position(|x| *x == target.name) else {
                    return Err(err(
                        format!(
                            "rule `{rule}`: `end {}` sets neither `state` nor a carry",
                            target.name
                        ),
                        &target.span,
                    ));
                };
                let rows = end.get_or_insert_with(|| (0..n).map(unit).collect());
                let v = {
                    let names = names_as(&entries, |j| rows[j].clone());
                    eval(e, rule, &coefficients, &names, src)?
                };
                assigned[i] = true;
                rows[i] = match v {
                    RVal::Linear(v) if !v[n].is_zero() => {
                        return Err(err(
                            format!(
                                "rule `{rule}`: an `end` statement runs after the mini-batch's last token and cannot read `grad`"
                            ),
                            &e.span,
                        ))
                    }
                    RVal::Linear(v) => v,
                    RVal::Scalar(p) if p.is_zero() => vec![Poly::zero(); n + 1],
                    RVal::Scalar(_) => {
                        return Err(err(
                            format!(
                                "rule `{rule}`: `end {}` must be linear in the state and the carries; this is a coefficient alone (a constant term)",
                                target.name
                            ),
                            &e.span,
                        ))
                    }
                };
            }
            RuleStmt::Assign(target, e) => {
                let Some(i) = entries.iter().position(|x| *x == target.name) else {
                    return Err(err(
                        format!(
                            "rule `{rule}` assigns `{}`, which is neither `state` nor a carry (declare it with `carry {} = 0`)",
                            target.name, target.name
                        ),
                        &target.span,
                    ));
                };
                let v = {
                    let names = names_as(&entries, |j| current[j].clone());
                    eval(e, rule, &coefficients, &names, src)?
                };
                current[i] = match v {
                    RVal::Linear(v) => v,
                    RVal::Scalar(p) if p.is_zero() => vec![Poly::zero(); n + 1],
                    RVal::Scalar(_) => {
                        return Err(err(
                            format!(
                                "rule `{rule}`: `{}` must be linear in the state, the carries and `grad`; this is a coefficient alone (a constant term)",
                                target.name
                            ),
                            &e.span,
                        ))
                    }
                };
                assigned[i] = true;
            }
            RuleStmt::Read(e, span) => {
                if read.is_some() {
                    return Err(err(format!("rule `{rule}` has two `read`s"), span));
                }
                // The read is over x_t: the entries' new values.
                let names = names_as(&entries, unit);
                let v = eval(e, rule, &coefficients, &names, src)?;
                let RVal::Linear(v) = v else {
                    return Err(err(
                        format!(
                            "rule `{rule}`: `read` must be linear in the state and the carries"
                        ),
                        &e.span,
                    ));
                };
                if !v[n].is_zero() {
                    return Err(err(
                        format!(
                            "rule `{rule}`: `read` reads the state and the carries, not `grad`"
                        ),
                        &e.span,
                    ));
                }
                read = Some(v[..n].to_vec());
            }
        }
    }
    let Some(read) = read else {
        return Err(err(
            format!("rule `{rule}` has no `read` (write `read state` for the updated state)"),
            &decl.name.span,
        ));
    };
    if !assigned[0] {
        return Err(err(
            format!("rule `{rule}` never assigns `state` (per token or in an `end` statement)"),
            &decl.name.span,
        ));
    }
    let transition: Vec<Vec<Poly>> = current.iter().map(|row| row[..n].to_vec()).collect();
    let gradient: Vec<Poly> = current.iter().map(|row| row[n].clone()).collect();
    if gradient.iter().all(Poly::is_zero) {
        return Err(err(
            format!("rule `{rule}` never uses `grad`: nothing would be learned"),
            &decl.name.span,
        ));
    }
    let out = LinearRule {
        name: rule.clone(),
        coefficients: arguments,
        carries: entries[1..].to_vec(),
        transition,
        gradient,
        read,
        end: end.map(|rows| rows.iter().map(|row| row[..n].to_vec()).collect()),
    };
    out.check().map_err(|m| err(m, &decl.span))?;
    Ok(out)
}

/// The linear form of entry `i` over the rule's `n` vector entries and `grad` (entry `n`).
fn unit_form(n: usize, i: usize) -> Vec<Poly> {
    let mut v = vec![Poly::zero(); n + 1];
    v[i] = Poly::constant(1.0);
    v
}

/// Resolves the names a rule expression may use besides coefficients: `grad` (its own entry,
/// the last of a linear form) and the vector's `entries` (`state`, the carries), entry `j` as
/// `value(j)` — their values at that point of the statements.
fn names_as<'a>(
    entries: &'a [String],
    value: impl Fn(usize) -> Vec<Poly> + 'a,
) -> impl Fn(&str) -> Option<RVal> + 'a {
    let n = entries.len();
    move |name| {
        if name == "grad" {
            return Some(RVal::Linear(unit_form(n, n)));
        }
        entries
            .iter()
            .position(|x| x == name)
            .map(|j| RVal::Linear(value(j)))
    }
}

/// Evaluates a rule expression; `names` resolves `state`, carries and `grad`.
fn eval(
    e: &Expr,
    rule: &str,
    coefficients: &[String],
    names: &dyn Fn(&str) -> Option<RVal>,
    src: usize,
) -> Result<RVal, Diagnostic> {
    let err = |m: String| diag(src, m, e.span.clone());
    let nonlinear = || {
        err(format!(
            "rule `{rule}` is not linear in (state, carries, grad): this multiplies two of them"
        ))
    };
    match &e.kind {
        ExprKind::Int(v) => Ok(RVal::Scalar(Poly::constant(*v as f64))),
        ExprKind::Float(v) => Ok(RVal::Scalar(Poly::constant(*v))),
        ExprKind::Name(name) => {
            if let Some(i) = coefficients.iter().position(|c| c == name) {
                return Ok(RVal::Scalar(Poly::coefficient(i)));
            }
            names(name).ok_or_else(|| {
                err(format!(
                    "rule `{rule}` has no coefficient, carry or `state`/`grad` named `{name}` (its coefficients: {})",
                    coefficients.join(", ")
                ))
            })
        }
        ExprKind::Neg(a) => Ok(match eval(a, rule, coefficients, names, src)? {
            RVal::Scalar(p) => RVal::Scalar(p.scale(-1.0)),
            RVal::Linear(v) => RVal::Linear(v.iter().map(|p| p.scale(-1.0)).collect()),
        }),
        ExprKind::Binary(op, a, b) => {
            let a = eval(a, rule, coefficients, names, src)?;
            let b = eval(b, rule, coefficients, names, src)?;
            match (op, a, b) {
                (BinOp::Add | BinOp::Sub, RVal::Scalar(x), RVal::Scalar(y)) => {
                    let y = if *op == BinOp::Sub { y.scale(-1.0) } else { y };
                    Ok(RVal::Scalar(x.add(&y)))
                }
                (BinOp::Add | BinOp::Sub, RVal::Linear(x), RVal::Linear(y)) => {
                    let s = if *op == BinOp::Sub { -1.0 } else { 1.0 };
                    Ok(RVal::Linear(
                        x.iter().zip(&y).map(|(p, q)| p.add(&q.scale(s))).collect(),
                    ))
                }
                (BinOp::Add | BinOp::Sub, RVal::Scalar(c), RVal::Linear(v)) if c.is_zero() => {
                    let s = if *op == BinOp::Sub { -1.0 } else { 1.0 };
                    Ok(RVal::Linear(v.iter().map(|p| p.scale(s)).collect()))
                }
                (BinOp::Add | BinOp::Sub, RVal::Linear(v), RVal::Scalar(c)) if c.is_zero() => {
                    Ok(RVal::Linear(v))
                }
                (BinOp::Add | BinOp::Sub, _, _) => Err(err(format!(
                    "rule `{rule}` is not linear in (state, carries, grad): this adds a term without any of them"
                ))),
                (BinOp::Mul, RVal::Scalar(x), RVal::Scalar(y)) => Ok(RVal::Scalar(x.mul(&y))),
                (BinOp::Mul, RVal::Scalar(c), RVal::Linear(v))
                | (BinOp::Mul, RVal::Linear(v), RVal::Scalar(c)) => {
                    Ok(RVal::Linear(v.iter().map(|p| p.mul(&c)).collect()))
                }
                (BinOp::Mul, RVal::Linear(_), RVal::Linear(_)) => Err(nonlinear()),
                (BinOp::Div, x, RVal::Scalar(y)) => {
                    // Only by a nonzero number: the recurrence stays polynomial.
                    let c = match y.0.as_slice() {
                        [(c, m)] if m.is_empty() && *c != 0.0 => *c,
                        _ => {
                            return Err(err(format!(
                                "rule `{rule}` divides only by a nonzero number"
                            )))
                        }
                    };
                    Ok(match x {
                        RVal::Scalar(p) => RVal::Scalar(p.scale(1.0 / c)),
                        RVal::Linear(v) => {
                            RVal::Linear(v.iter().map(|p| p.scale(1.0 / c)).collect())
                        }
                    })
                }
                (BinOp::Div, _, RVal::Linear(_)) => Err(nonlinear()),
                _ => Err(err(format!(
                    "rule `{rule}`: only +, −, * and division by a number are allowed in a rule"
                ))),
            }
        }
        _ => Err(err(format!(
            "rule `{rule}`: only coefficients, `state`, carries, `grad`, numbers, +, −, * and / are allowed in a rule"
        ))),
    }
}
