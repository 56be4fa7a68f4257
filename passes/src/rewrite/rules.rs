//! The rule tables, by family. Every right-hand side is instantiated by the shape-checked
//! applier ([`super::applier::Checked`]): a rewrite whose result would not infer a type, or
//! would change the matched e-class's type, is not applied. Guards add what the shape check
//! cannot see (which axis a `mix` reduces, that a permutation is the identity, ...).
//!
//! There is no associativity or commutativity rule: every rule either shrinks the term,
//! normalizes a layout, or moves a linear op towards the leaves, so saturation terminates on
//! its own; the runner's limits are a safety net.
//!
//! Notation below: `x [k, m]` means `x` has shape `[k, m]`; `w [p, k]` is a row-mixing weight.

use super::analysis::{Attr, ShapeAnalysis};
use super::applier::{var, Checked, Guard, Match};
use super::lang::TensorLang;
use egg::{Pattern, Rewrite, Var};
use tttc_ir::{BinaryOp, Dim};

/// One rewrite rule.
pub type Rule = Rewrite<TensorLang, ShapeAnalysis>;

/// A named list of rules run together by one runner.
pub struct Stage {
    /// The stage's name (in reports).
    pub name: &'static str,
    /// Its rules.
    pub rules: Vec<Rule>,
}

/// A rule: a left-hand-side pattern, a right-hand side instantiated by the shape-checked applier
/// ([`Checked`]), and an optional guard. Errors name the rule and the pattern that does not parse.
pub fn rule(name: &str, lhs: &str, rhs: &str, guard: Option<Guard>) -> Result<Rule, String> {
    let searcher: Pattern<TensorLang> = lhs
        .parse()
        .map_err(|e| format!("rule `{name}`: bad left-hand side `{lhs}`: {e}"))?;
    let applier = Checked::new(rhs, guard).map_err(|e| format!("rule `{name}`: {e}"))?;
    Rewrite::new(name, searcher, applier)
}

/// Boxes a guard closure (gives the closure its higher-ranked signature).
pub fn guard(f: impl Fn(&Match<'_>) -> Option<Vec<(Var, Attr)>> + Send + Sync + 'static) -> Guard {
    Box::new(f)
}

/// `rw!(name; lhs => rhs)` or `rw!(name; lhs => rhs, if guard)`: a shape-checked rule.
macro_rules! rw {
    ($name:literal; $lhs:literal => $rhs:literal) => {
        rule($name, $lhs, $rhs, None)?
    };
    ($name:literal; $lhs:literal => $rhs:literal, if $guard:expr) => {
        rule($name, $lhs, $rhs, Some(guard($guard)))?
    };
}

fn accept(b: bool) -> Option<Vec<(Var, Attr)>> {
    b.then(Vec::new)
}

const ONE: Dim = Dim::Known(1);

/// Whether every extent is 1 (a single element, however many axes).
fn single_element(dims: &[Dim]) -> bool {
    dims.iter().all(|d| *d == ONE)
}

/// Simplification: identities that only shrink the term. (Constant folding of scalar
/// constants is done by the analysis itself, in every stage.)
///
/// - `transpose-transpose`: `transpose(transpose x) → x`
/// - `permute-permute`: `permute(p, permute(q, x)) → permute(q∘p, x)`
/// - `permute-identity`: `permute(id, x) → x`
/// - `reshape-reshape`: `reshape(s, reshape(t, x)) → reshape(s, x)`
/// - `reshape-identity`, `expand-identity`, `sum_to-identity`: to the operand's own shape `→ x`
/// - `mul-one-right`, `mul-one-left`, `div-one`: `x * 1`, `1 * x`, `x / 1 → x`
/// - `add-zero-right`, `add-zero-left`, `sub-zero`: `x + 0`, `0 + x`, `x - 0 → x`
/// - `neg-neg`: `neg(neg x) → x`
/// - `expand-into-<op>-{left,right}`: `f(expand(a), b) → f(a, b)` for every binary `f` (it
///   broadcasts by itself)
///
/// (The identities with a constant apply only where the result keeps `x`'s shape: `x * 1`
/// with a `1` that broadcasts `x` to a larger shape stays.)
pub fn simplify_rules() -> Result<Vec<Rule>, String> {
    let (c, p, q, r) = (var("?c"), var("?p"), var("?q"), var("?r"));
    let is = move |value: f64| move |m: &Match<'_>| accept(m.konst(c) == Some(value));
    let mut rules = vec![
        rw!("transpose-transpose"; "(transpose (transpose ?x))" => "?x"),
        rw!("permute-permute"; "(permute ?p (permute ?q ?x))" => "(permute ?r ?x)", if move |m| {
            let (outer, inner) = (m.perm(p)?, m.perm(q)?);
            if outer.len() != inner.len() {
                return None;
            }
            // Result axis i is inner axis outer[i], which is x's axis inner[outer[i]].
            let composed = outer
                .iter()
                .map(|&i| inner.get(i).copied())
                .collect::<Option<Vec<_>>>()?;
            Some(vec![(r, Attr::Perm(composed))])
        }),
        rw!("permute-identity"; "(permute ?p ?x)" => "?x", if move |m| {
            accept(m.perm(p)?.iter().enumerate().all(|(i, &a)| i == a))
        }),
        rw!("reshape-reshape"; "(reshape ?s (reshape ?t ?x))" => "(reshape ?s ?x)"),
        rw!("reshape-identity"; "(reshape ?s ?x)" => "?x"),
        rw!("expand-identity"; "(expand ?s ?x)" => "?x"),
        rw!("sum_to-identity"; "(sum_to ?s ?x)" => "?x"),
        rw!("mul-one-right"; "(mul ?x ?c)" => "?x", if is(1.0)),
        rw!("mul-one-left"; "(mul ?c ?x)" => "?x", if is(1.0)),
        rw!("div-one"; "(div ?x ?c)" => "?x", if is(1.0)),
        rw!("add-zero-right"; "(add ?x ?c)" => "?x", if is(0.0)),
        rw!("add-zero-left"; "(add ?c ?x)" => "?x", if is(0.0)),
        rw!("sub-zero"; "(sub ?x ?c)" => "?x", if is(0.0)),
        rw!("neg-neg"; "(neg (neg ?x))" => "?x"),
    ];
    // An elementwise op broadcasts by itself: `f(expand(a), b) → f(a, b)` where the result
    // keeps its shape.
    for fun in BinaryOp::ALL {
        let op = fun.name();
        rules.push(rule(
            &format!("expand-into-{op}-left"),
            &format!("({op} (expand ?s ?a) ?b)"),
            &format!("({op} ?a ?b)"),
            None,
        )?);
        rules.push(rule(
            &format!("expand-into-{op}-right"),
            &format!("({op} ?a (expand ?s ?b))"),
            &format!("({op} ?a ?b)"),
            None,
        )?);
    }
    Ok(rules)
}

/// Layout normalization: one spelling for the same data.
///
/// - `transpose-of-vector-is-reshape`: `transpose(x [..., 1, m]) → reshape(x, [..., m, 1])`
///   (and `[..., m, 1]` to `[..., 1, m]`): swapping an axis of extent 1 moves no data.
/// - `permute-swap-last-is-transpose`: a permutation that swaps only the last two axes is a
///   transpose.
pub fn layout_rules() -> Result<Vec<Rule>, String> {
    let (x, p, s) = (var("?x"), var("?p"), var("?s"));
    Ok(vec![
        rw!("transpose-of-vector-is-reshape"; "(transpose ?x)" => "(reshape ?s ?x)", if move |m| {
            let dims = m.dims(x)?;
            let r = dims.len();
            if r < 2 || (dims[r - 1] != ONE && dims[r - 2] != ONE) {
                return None;
            }
            let mut swapped = dims.to_vec();
            swapped.swap(r - 1, r - 2);
            Some(vec![(s, Attr::Shape(swapped))])
        }),
        rw!("permute-swap-last-is-transpose"; "(permute ?p ?x)" => "(transpose ?x)", if move |m| {
            let perm = m.perm(p)?;
            let r = perm.len();
            accept(
                r >= 2
                    && perm[r - 1] == r - 2
                    && perm[r - 2] == r - 1
                    && perm[..r - 2].iter().enumerate().all(|(i, &a)| i == a),
            )
        }),
    ])
}

/// Linearity: matmul and mix distribute over `+`, `-`, negation and scalar scaling.
///
/// - `matmul-{sub,add}-{right,left}`: `a @ (x ± y) → a @ x ± a @ y`, `(x ± y) @ b → ...`.
///   Broadcasting in `x ± y` is along batch axes or the non-contracted matrix axis (a broadcast
///   along the contracted axis makes `a @ x` ill-shaped, so the shape check refuses it), and
///   matmul commutes with both: `matmul(Q3 [k,1,m], θ [m,n] − M [k,m,n])` becomes
///   `matmul(Q3, θ) − matmul(Q3, M)`, both `[k,1,n]`.
/// - `matmul-neg-{right,left}`: `a @ (−x) → −(a @ x)`.
/// - `matmul-scale-*`: `a @ (c * x) → c * (a @ x)` for a single-element `c`.
/// - `matmul-batch-scale-*`: the same for a scale `c [..., 1, 1]` of the batch axes only (one
///   scalar per matrix): `q_i (c_i W) = c_i (q_i W)`, the per-token decayed state of
///   `momentum_gd` (`P^a ⊙ W` with `P^a [k, 1, 1]`) read without a `[k, m, n]` tensor.
/// - `matmul-expand-{right,left}`: `a @ expand(x) → a @ x` where the result keeps its shape
///   (the expand only broadcast batch axes).
/// - `mix-{sub,add}`: `mix(w, x ± y) → mix(w, x) ± mix(w, y)` when `x` and `y` both have the
///   rows axis first (same rank, first extent `k`), so that broadcasting never aligns another
///   axis with the mixed one.
/// - `mix-neg`, `mix-scale-*` (single-element `c` of no higher rank than `x`).
/// - `mix-row-scale-*`: `mix(w, s * x) → mix(w ⊙ sᵀ, x)` for per-row scales `s [k, 1, ..., 1]`.
pub fn linearity_rules() -> Result<Vec<Rule>, String> {
    let (w, x, y, c, s, s1k) = (
        var("?w"),
        var("?x"),
        var("?y"),
        var("?c"),
        var("?s"),
        var("?s1k"),
    );
    let scalar = move |m: &Match<'_>| accept(single_element(m.dims(c)?));
    let batch_scale = move |m: &Match<'_>| {
        let cd = m.dims(c)?;
        accept(cd.len() >= 3 && single_element(&cd[cd.len() - 2..]) && !single_element(cd))
    };
    let mix_scalar = move |m: &Match<'_>| {
        let (cd, xd) = (m.dims(c)?, m.dims(x)?);
        accept(single_element(cd) && cd.len() <= xd.len())
    };
    let rows_aligned = move |m: &Match<'_>| {
        let k = m.dims(w)?.get(1)?;
        let (xd, yd) = (m.dims(x)?, m.dims(y)?);
        accept(xd.len() == yd.len() && xd.first() == Some(k) && yd.first() == Some(k))
    };
    let row_scale = move |m: &Match<'_>| {
        let k = m.dims(w)?.get(1)?.clone();
        let (sd, xd) = (m.dims(s)?, m.dims(x)?);
        let ok = sd.len() == xd.len()
            && sd.first() == Some(&k)
            && xd.first() == Some(&k)
            && single_element(&sd[1..]);
        ok.then(|| vec![(s1k, Attr::Shape(vec![ONE, k]))])
    };
    Ok(vec![
        rw!("matmul-sub-right"; "(matmul ?a (sub ?x ?y))" => "(sub (matmul ?a ?x) (matmul ?a ?y))"),
        rw!("matmul-add-right"; "(matmul ?a (add ?x ?y))" => "(add (matmul ?a ?x) (matmul ?a ?y))"),
        rw!("matmul-sub-left"; "(matmul (sub ?x ?y) ?b)" => "(sub (matmul ?x ?b) (matmul ?y ?b))"),
        rw!("matmul-add-left"; "(matmul (add ?x ?y) ?b)" => "(add (matmul ?x ?b) (matmul ?y ?b))"),
        rw!("matmul-neg-right"; "(matmul ?a (neg ?x))" => "(neg (matmul ?a ?x))"),
        rw!("matmul-neg-left"; "(matmul (neg ?x) ?b)" => "(neg (matmul ?x ?b))"),
        rw!("matmul-scale-right-l"; "(matmul ?a (mul ?c ?x))" => "(mul ?c (matmul ?a ?x))", if scalar),
        rw!("matmul-scale-right-r"; "(matmul ?a (mul ?x ?c))" => "(mul (matmul ?a ?x) ?c)", if scalar),
        rw!("matmul-scale-left-l"; "(matmul (mul ?c ?x) ?b)" => "(mul ?c (matmul ?x ?b))", if scalar),
        rw!("matmul-scale-left-r"; "(matmul (mul ?x ?c) ?b)" => "(mul (matmul ?x ?b) ?c)", if scalar),
        rw!("matmul-batch-scale-right-l"; "(matmul ?a (mul ?c ?x))" => "(mul ?c (matmul ?a ?x))", if batch_scale),
        rw!("matmul-batch-scale-right-r"; "(matmul ?a (mul ?x ?c))" => "(mul (matmul ?a ?x) ?c)", if batch_scale),
        rw!("matmul-batch-scale-left-l"; "(matmul (mul ?c ?x) ?b)" => "(mul ?c (matmul ?x ?b))", if batch_scale),
        rw!("matmul-batch-scale-left-r"; "(matmul (mul ?x ?c) ?b)" => "(mul (matmul ?x ?b) ?c)", if batch_scale),
        rw!("matmul-expand-right"; "(matmul ?a (expand ?s ?x))" => "(matmul ?a ?x)"),
        rw!("matmul-expand-left"; "(matmul (expand ?s ?x) ?b)" => "(matmul ?x ?b)"),
        rw!("mix-sub"; "(mix ?w (sub ?x ?y))" => "(sub (mix ?w ?x) (mix ?w ?y))", if rows_aligned),
        rw!("mix-add"; "(mix ?w (add ?x ?y))" => "(add (mix ?w ?x) (mix ?w ?y))", if rows_aligned),
        rw!("mix-neg"; "(mix ?w (neg ?x))" => "(neg (mix ?w ?x))"),
        rw!("mix-scale-l"; "(mix ?w (mul ?c ?x))" => "(mul ?c (mix ?w ?x))", if mix_scalar),
        rw!("mix-scale-r"; "(mix ?w (mul ?x ?c))" => "(mul (mix ?w ?x) ?c)", if mix_scalar),
        rw!("mix-row-scale-l"; "(mix ?w (mul ?s ?x))" => "(mix (mul ?w (reshape ?s1k ?s)) ?x)", if row_scale),
        rw!("mix-row-scale-r"; "(mix ?w (mul ?x ?s))" => "(mix (mul ?w (reshape ?s1k ?s)) ?x)", if row_scale),
    ])
}

/// Outer products: per-token gradients of a weight used as `x @ W` are outer products, and a
/// mix of outer products is a `mix_outer`.
///
/// - `mix-of-outer-products`: `mix(w [p,k], matmul(a [k,m,1], d [k,1,n])) →
///   mix_outer(w, reshape(a, [k,m]), reshape(d, [k,n]))` (the primal pass's
///   `matmul(transpose(X3 [k,1,m]), D3 [k,1,n])` reaches this form through the layout rules).
/// - `outer-mul-is-matmul` (and `-swapped`): `a [..., m, 1] * b [..., 1, n] → a @ b`.
/// - `sum-of-outer-products-is-matmul`: `sum_to([m,n], matmul(a [k,m,1], d [k,1,n])) →
///   transpose(reshape(a, [k,m])) @ reshape(d, [k,n])`: a weight's cotangent summed over the
///   tokens of a mini-batch (what reverse mode gives for `x @ W` applied per token) is one
///   `[m,k] @ [k,n]` product, which the CPU schedule register-tiles, instead of `k` outer
///   products written to a `[k,m,n]` temporary and summed (the same terms in the same order).
pub fn outer_rules() -> Result<Vec<Rule>, String> {
    let (w, a, d, x, y, su, sd) = (
        var("?w"),
        var("?a"),
        var("?d"),
        var("?x"),
        var("?y"),
        var("?su"),
        var("?sd"),
    );
    let column = |dims: &[Dim]| dims.len() >= 2 && dims[dims.len() - 1] == ONE;
    let row = |dims: &[Dim]| dims.len() >= 2 && dims[dims.len() - 2] == ONE;
    Ok(vec![
        rw!("mix-of-outer-products";
        "(mix ?w (matmul ?a ?d))" => "(mix_outer ?w (reshape ?su ?a) (reshape ?sd ?d))",
        if move |m| {
            let (wd, ad, dd) = (m.dims(w)?, m.dims(a)?, m.dims(d)?);
            let ([_, k], [k1, mm, one1], [k2, one2, n]) = (wd, ad, dd) else {
                return None;
            };
            let ok = k == k1 && k == k2 && *one1 == ONE && *one2 == ONE;
            ok.then(|| {
                vec![
                    (su, Attr::Shape(vec![k.clone(), mm.clone()])),
                    (sd, Attr::Shape(vec![k.clone(), n.clone()])),
                ]
            })
        }),
        rw!("sum-of-outer-products-is-matmul";
        "(sum_to ?s (matmul ?a ?d))"
            => "(matmul (transpose (reshape ?su ?a)) (reshape ?sd ?d))",
        if move |m| {
            let target = m.egraph[m.eclass].data.tensor()?.shape.0.as_slice();
            let (ad, dd) = (m.dims(a)?, m.dims(d)?);
            let ([k1, mm, one1], [k2, one2, n], [tm, tn]) = (ad, dd, target) else {
                return None;
            };
            let ok = k1 == k2 && *one1 == ONE && *one2 == ONE && tm == mm && tn == n;
            ok.then(|| {
                vec![
                    (su, Attr::Shape(vec![k1.clone(), mm.clone()])),
                    (sd, Attr::Shape(vec![k1.clone(), n.clone()])),
                ]
            })
        }),
        rw!("outer-mul-is-matmul"; "(mul ?x ?y)" => "(matmul ?x ?y)", if move |m| {
            accept(column(m.dims(x)?) && row(m.dims(y)?))
        }),
        rw!("outer-mul-is-matmul-swapped"; "(mul ?x ?y)" => "(matmul ?y ?x)", if move |m| {
            accept(column(m.dims(y)?) && row(m.dims(x)?))
        }),
    ])
}

/// The dual form (docs/pipeline.md, "The dual form by equality saturation"): products with a `mix_outer` become matmuls of `[k, k]` and
/// `[k, n]` blocks.
///
/// - `dual-form-query`: `matmul(q [p,1,m], mix_outer(w [p,k], u [k,m], d [k,n])) →
///   reshape(((reshape(q, [p,m]) @ uᵀ) ⊙ w) @ d, [p,1,n])`: row `i` is
///   `Σ_j w[i,j] (q_i · u_j) d_j`. `q` may also be one shared row (`[1,1,m]` or `[1,m]`).
/// - `dual-form-state`: `mix_outer(w [1,k], u [k,m], d [k,n]) →
///   reshape((u ⊙ wᵀ)ᵀ @ d, [1,m,n])`: the final state's update `Σ_j w_j u_jᵀ d_j`.
pub fn dual_rules() -> Result<Vec<Rule>, String> {
    let (q, w, u, d, sq, sout, s) = (
        var("?q"),
        var("?w"),
        var("?u"),
        var("?d"),
        var("?sq"),
        var("?sout"),
        var("?s"),
    );
    Ok(vec![
        rw!("dual-form-query";
        "(matmul ?q (mix_outer ?w ?u ?d))"
            => "(reshape ?sout (matmul (mul (matmul (reshape ?sq ?q) (transpose ?u)) ?w) ?d))",
        if move |m| {
            let (qd, wd, dd) = (m.dims(q)?, m.dims(w)?, m.dims(d)?);
            let ([p, _], [_, n]) = (wd, dd) else {
                return None;
            };
            let (rows, qm) = match qd {
                [rows, one, qm] if *one == ONE => (rows.clone(), qm.clone()),
                [one, qm] if *one == ONE => (ONE, qm.clone()),
                _ => return None,
            };
            if rows != *p && rows != ONE {
                return None;
            }
            Some(vec![
                (sq, Attr::Shape(vec![rows, qm])),
                (sout, Attr::Shape(vec![p.clone(), ONE, n.clone()])),
            ])
        }),
        rw!("dual-form-state";
        "(mix_outer ?w ?u ?d)"
            => "(reshape ?s (matmul (transpose (mul ?u (transpose ?w))) ?d))",
        if move |m| {
            let (wd, ud, dd) = (m.dims(w)?, m.dims(u)?, m.dims(d)?);
            let ([one, _], [_, mm], [_, n]) = (wd, ud, dd) else {
                return None;
            };
            (*one == ONE).then(|| vec![(s, Attr::Shape(vec![ONE, mm.clone(), n.clone()]))])
        }),
    ])
}

/// Mixes of plain rows are matmuls.
///
/// - `mix-rows-as-matmul`: `mix(w, x [k, n]) → w @ x`.
/// - `mix-row-blocks`: `mix(w [p,k], x [k, 1, ..., n, ..., 1]) →
///   reshape(w @ reshape(x, [k, n]), [p, 1, ..., n, ..., 1])` (the bias path: `x [k,1,n]`).
pub fn mix_rules() -> Result<Vec<Rule>, String> {
    let (w, x, sp, sf) = (var("?w"), var("?x"), var("?sp"), var("?sf"));
    Ok(vec![
        rw!("mix-rows-as-matmul"; "(mix ?w ?x)" => "(matmul ?w ?x)", if move |m| {
            accept(m.dims(x)?.len() == 2)
        }),
        rw!("mix-row-blocks"; "(mix ?w ?x)" => "(reshape ?sp (matmul ?w (reshape ?sf ?x)))",
        if move |m| {
            let (wd, xd) = (m.dims(w)?, m.dims(x)?);
            let ([p, k], [_, rest @ ..]) = (wd, xd) else {
                return None;
            };
            if rest.len() < 2 {
                return None;
            }
            let mut wide = rest.iter().filter(|d| **d != ONE);
            let flat = match (wide.next(), wide.next()) {
                (None, _) => ONE,
                (Some(n), None) => n.clone(),
                _ => return None,
            };
            let mut out = vec![p.clone()];
            out.extend(rest.iter().cloned());
            Some(vec![
                (sf, Attr::Shape(vec![k.clone(), flat])),
                (sp, Attr::Shape(out)),
            ])
        }),
    ])
}

/// The stages of the `simplify` pass: the simplification table alone.
pub fn simplify_stages() -> Result<Vec<Stage>, String> {
    Ok(vec![Stage {
        name: "simplify",
        rules: simplify_rules()?,
    }])
}

/// The stages of the `dual_form` pass: first simplification and layout normalization, then
/// every table together (simplification, layout, linearity, outer products, dual form, mixes).
pub fn dual_form_stages() -> Result<Vec<Stage>, String> {
    let mut normalize = simplify_rules()?;
    normalize.extend(layout_rules()?);
    let mut all = simplify_rules()?;
    all.extend(layout_rules()?);
    all.extend(linearity_rules()?);
    all.extend(outer_rules()?);
    all.extend(dual_rules()?);
    all.extend(mix_rules()?);
    Ok(vec![
        Stage {
            name: "normalize",
            rules: normalize,
        },
        Stage {
            name: "dual",
            rules: all,
        },
    ])
}
