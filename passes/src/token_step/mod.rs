//! One token of a scan in primal form, for streaming decode: the gradient at the mini-batch's
//! starting weights, added into the partial gradient sum, then the token's output read with the
//! weights updated up to and including it.
//!
//! For one slice (one index of the mapped dims), with `θ0` the states at the start of the
//! unfinished mini-batch, `S` the partial sums `Σ_{j<p} lr_j ∇θ loss_j(θ0)` of its earlier tokens
//! and a token at position `p` inside it:
//!
//! ```text
//! S'  = S + lr · ∇θ loss(θ0; token)
//! θ_p = θ0 − eta · S'                    (eta = token_eta[p], or token_eta[t] per token)
//! z   = out(θ_p; token)
//! ```
//!
//! which is row `p` of the mini-batch's primal form (see `tttc_ir::scan`; `t` is the token's
//! sequence position, for a per-token `token_eta`). Closing a mini-batch (`θ0 ← θ0 − eta_last ·
//! S`, `S ← 0`, with the step size of its last token) is left to the caller. [`token_step_graph`] builds
//! that graph from the scan's own gradient and output graphs and batches it over `n` slices,
//! so nothing depends on the inner model.
//!
//! Under `momentum_gd` the carried states include the momentum buffers, `θ0` holds the
//! mini-batch's starting values and `partial` the *current* values `(W, S)` (equal to `θ0` at a
//! mini-batch boundary); with `g = ∇θ loss(W0; token)`:
//!
//! ```text
//! S' = η S − lr · g,   W' = (1 − α) W + S',   z = out(W'; token)
//! ```
//!
//! and closing a mini-batch is `θ0 ← partial`.

mod factored;
mod invariants;

pub use factored::{choose_forms, state_bytes, DecodeState, StateForm};
pub use invariants::{hoist_invariants, invariant_name};

use crate::batch::{batch_graph, batch_outputs, BatchError};
use factored::{outer_factors, OuterFactors};
use tttc_ir::{BinaryOp, Dim, Graph, GraphError, NodeId, Op, Shape, TensorType, TttScan};

/// Why a token-step graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenStepError {
    /// The scan has no gradient graph (run autodiff first).
    #[error("inner model `{0}` has no gradient graph; run the autodiff pass first")]
    MissingGradient(String),
    /// The scan's graphs do not have the documented form.
    #[error("inner model `{model}`: {message}")]
    Malformed {
        /// The inner model.
        model: String,
        /// What is wrong.
        message: String,
    },
    /// Batching failed.
    #[error("inner model `{model}`, batching the token step: {source}")]
    Batch {
        /// The inner model.
        model: String,
        /// What went wrong.
        #[source]
        source: BatchError,
    },
    /// The dual-form rewrite of a factored step failed.
    #[error("inner model `{model}`, rewriting the factored token step: {source}")]
    Rewrite {
        /// The inner model.
        model: String,
        /// What went wrong.
        #[source]
        source: crate::rewrite::RewriteError,
    },
    /// Building a node failed (a compiler bug).
    #[error("inner model `{model}`, building the token step: {source}")]
    Ir {
        /// The inner model.
        model: String,
        /// What went wrong.
        #[source]
        source: GraphError,
    },
}

/// Names of the token-step graph's inputs and outputs, shared by the builder and its users.
pub mod names {
    /// The state `s` at the start of the unfinished mini-batch: `[n, state...]`.
    pub fn theta(state: &str) -> String {
        format!("theta.{state}")
    }
    /// The partial gradient sum of state `s`: `[n, state...]` (an input and an output).
    pub fn partial(state: &str) -> String {
        format!("partial.{state}")
    }
    /// Outer parameter `i`: `[n, param...]`.
    pub fn param(i: usize) -> String {
        format!("param.{i}")
    }
    /// Loss token argument `i`: `[n, 1, rest...]`.
    pub fn loss_arg(i: usize) -> String {
        format!("loss.{i}")
    }
    /// Output token argument `i`: `[n, 1, rest...]`.
    pub fn out_arg(i: usize) -> String {
        format!("out.{i}")
    }
    /// The token's learning rate: `[n]`.
    pub const LR: &str = "lr";
    /// `token_eta` at the token's position (`momentum_gd`: the token's momentum): `[n]`.
    pub const ETA: &str = "eta";
    /// `momentum_gd`'s decay of the token: `[n]`.
    pub const DECAY: &str = "decay";
    /// The token's output: `[n, 1, rest...]`.
    pub const Z: &str = "z";
    /// The left factors of state `s`'s gradients so far, factored form, one column per token
    /// (`Uᵀ`, so that a token's `x Uᵀ` reads rows): `[n, m, K]`.
    pub fn factor_u(state: &str) -> String {
        format!("factor_u.{state}")
    }
    /// The right factors (scaled by their tokens' `lr`) so far, factored form: `[n, K, n']`.
    pub fn factor_d(state: &str) -> String {
        format!("factor_d.{state}")
    }
    /// The token's left factor (an output, factored form): `[n, 1, m]`.
    pub fn row_u(state: &str) -> String {
        format!("row_u.{state}")
    }
    /// The token's right factor times its `lr` (an output, factored form): `[n, 1, n']`.
    pub fn row_d(state: &str) -> String {
        format!("row_d.{state}")
    }
    /// `Uᵀ D` of state `s`, the output of [`super::factor_sum_graph`]: `[n, m, n']`.
    pub fn sum(state: &str) -> String {
        format!("sum.{state}")
    }
}

/// `Σ terms`, or `0 · like` when there is none.
fn sum_nodes(
    g: &mut Graph,
    terms: Vec<NodeId>,
    like: NodeId,
    dtype: tttc_ir::DType,
) -> Result<NodeId, GraphError> {
    let mut it = terms.into_iter();
    let Some(mut sum) = it.next() else {
        let zero = g.add_const(0.0, dtype);
        return g.add(Op::Binary { fun: BinaryOp::Mul }, &[like, zero]);
    };
    for t in it {
        sum = g.add(Op::Binary { fun: BinaryOp::Add }, &[sum, t])?;
    }
    Ok(sum)
}

/// A `[1, k]` row of ones.
fn ones(g: &mut Graph, k: usize, dtype: tttc_ir::DType) -> Result<NodeId, GraphError> {
    let one = g.add_const(1.0, dtype);
    let one = g.add(
        Op::Reshape {
            shape: Shape::known(&[1, 1]),
        },
        &[one],
    )?;
    g.add(
        Op::Expand {
            shape: Shape::known(&[1, k]),
        },
        &[one],
    )
}

/// `x` with a leading axis of extent 1.
fn with_leading_one(g: &mut Graph, x: NodeId) -> Result<NodeId, GraphError> {
    let mut dims = vec![Dim::Known(1)];
    dims.extend(
        g.tensor_type(x)
            .map(|t| t.shape.0.clone())
            .unwrap_or_default(),
    );
    g.add(Op::Reshape { shape: Shape(dims) }, &[x])
}

/// `x [1, rest...]` as `[rest...]`.
fn drop_leading_one(g: &mut Graph, x: NodeId) -> Result<NodeId, GraphError> {
    let dims = g
        .tensor_type(x)
        .map(|t| t.shape.0.iter().skip(1).cloned().collect())
        .unwrap_or_default();
    g.add(Op::Reshape { shape: Shape(dims) }, &[x])
}

/// Builds the token step of `scan` (its graphs already specialized to concrete dimensions)
/// batched over `n` slices. Inputs, in order: `theta.<s>` for every state, `partial.<s>` for
/// every state, `param.<i>`, `loss.<i>`, `out.<i>`, `lr`, `eta`, and `decay` under
/// `momentum_gd` (see [`names`]); outputs `z`, then `partial.<s>` (the updated sums, or the
/// current values under `momentum_gd`) for every state.
pub fn token_step_graph(scan: &TttScan, n: usize) -> Result<Graph, TokenStepError> {
    token_step_graph_with(scan, n, &[])
}

/// The constructors of the two errors every graph builder here reports — a malformed scan and
/// an IR error — naming `scan`'s model.
fn scan_errors(
    scan: &TttScan,
) -> (
    impl Fn(String) -> TokenStepError + Copy + '_,
    impl Fn(GraphError) -> TokenStepError + Copy + '_,
) {
    let malformed = |message: String| TokenStepError::Malformed {
        model: scan.model.clone(),
        message,
    };
    let ir = |source: GraphError| TokenStepError::Ir {
        model: scan.model.clone(),
        source,
    };
    (malformed, ir)
}

/// The scan's inner gradient graph (from `autodiff`), an error when it has none.
fn inner_gradient(scan: &TttScan) -> Result<&Graph, TokenStepError> {
    scan.grad
        .as_ref()
        .ok_or_else(|| TokenStepError::MissingGradient(scan.model.clone()))
}

/// [`token_step_graph`] with the form of every model state's partial sum (`forms[i]` for
/// [`TttScan::model_states`]' `i`; missing entries are dense; see [`choose_forms`]). A
/// [`StateForm::Factored`] state takes `factor_u.<s>` `[n, m, K]` and `factor_d.<s>` `[n, K, n']`
/// in place of `partial.<s>` and gives `row_u.<s>` `[n, 1, m]` and `row_d.<s>` `[n, 1, n']` in
/// place of its updated sum (the module [`factored`]'s doc says how the token reads them).
pub fn token_step_graph_with(
    scan: &TttScan,
    n: usize,
    forms: &[StateForm],
) -> Result<Graph, TokenStepError> {
    let model = scan.model.clone();
    let (malformed, ir) = scan_errors(scan);
    let batch = |source: BatchError| TokenStepError::Batch {
        model: model.clone(),
        source,
    };
    let grad = inner_gradient(scan)?;
    let momentum = scan.rule.has_carries();
    let (ns, np, nl, no) = (
        scan.model_state_count(),
        scan.params.len(),
        scan.loss_args.len(),
        scan.out_args.len(),
    );
    if grad.inputs().len() != ns + np + nl || scan.out.inputs().len() != ns + np + no {
        return Err(malformed(
            "the gradient or output graph does not take states, params and token arguments".into(),
        ));
    }
    let input_type = |g: &Graph, i: usize| -> Result<TensorType, TokenStepError> {
        g.inputs()
            .get(i)
            .and_then(|&id| g.tensor_type(id))
            .cloned()
            .ok_or_else(|| malformed(format!("inner graph input #{i} is not a tensor")))
    };
    let dtype = input_type(grad, 0)?.dtype;
    let form = |i: usize| forms.get(i).copied().unwrap_or(StateForm::Dense);
    let any_factored = (0..ns).any(|i| form(i) == StateForm::Factored);
    if any_factored && (momentum || scan.rule.linear().is_some()) {
        return Err(malformed(
            "only minibatch_gd carries a mini-batch in factored form".into(),
        ));
    }
    // Where each factored state's gradient factors are (checked before anything is built).
    let mut factor_sites: Vec<Option<OuterFactors>> = vec![None; ns];
    for (i, s) in scan.model_states().iter().enumerate() {
        if form(i) == StateForm::Factored {
            factor_sites[i] = Some(outer_factors(grad, s).ok_or_else(|| {
                malformed(format!("the gradient of `{s}` is not an outer product"))
            })?);
        }
    }
    let k = scan.mini_batch.known();

    // One slice.
    let mut one = Graph::new();
    let mut theta = Vec::with_capacity(ns);
    let mut partial = Vec::with_capacity(ns);
    // The factored rows so far, `(U [K, m], D [K, n])`, of each factored state.
    let mut factor_rows: Vec<Option<(NodeId, NodeId)>> = vec![None; ns];
    // Every state of the scan (under momentum_gd the carries too, of their state's type).
    for (i, s) in scan.states.iter().enumerate() {
        theta.push(
            one.add_input(&names::theta(s), input_type(grad, i % ns.max(1))?)
                .map_err(ir)?,
        );
    }
    for (i, s) in scan.states.iter().enumerate() {
        let ty = input_type(grad, i % ns.max(1))?;
        if i < ns && form(i) == StateForm::Factored {
            let (Some(k), [m, n]) = (k, ty.shape.0.as_slice()) else {
                return Err(malformed(format!(
                    "a factored state `{s}` needs a known mini-batch size and two axes"
                )));
            };
            let matrix =
                |a: &Dim, b: &Dim| TensorType::new(dtype, Shape(vec![a.clone(), b.clone()]));
            let ut = one
                .add_input(&names::factor_u(s), matrix(m, &Dim::Known(k)))
                .map_err(ir)?;
            let d = one
                .add_input(&names::factor_d(s), matrix(&Dim::Known(k), n))
                .map_err(ir)?;
            let u = one.add(Op::Transpose, &[ut]).map_err(ir)?;
            factor_rows[i] = Some((u, d));
            // Never read: a factored state has no dense sum.
            partial.push(u);
            continue;
        }
        partial.push(one.add_input(&names::partial(s), ty).map_err(ir)?);
    }
    let mut params = Vec::with_capacity(np);
    for i in 0..np {
        params.push(
            one.add_input(&names::param(i), input_type(grad, ns + i)?)
                .map_err(ir)?,
        );
    }
    let mut loss_args = Vec::with_capacity(nl);
    for i in 0..nl {
        loss_args.push(
            one.add_input(&names::loss_arg(i), input_type(grad, ns + np + i)?)
                .map_err(ir)?,
        );
    }
    let mut out_args = Vec::with_capacity(no);
    for i in 0..no {
        out_args.push(
            one.add_input(&names::out_arg(i), input_type(&scan.out, ns + np + i)?)
                .map_err(ir)?,
        );
    }
    let scalar = TensorType::new(dtype, Shape::scalar());
    let lr = one.add_input(names::LR, scalar.clone()).map_err(ir)?;
    let eta = one.add_input(names::ETA, scalar.clone()).map_err(ir)?;
    let (keep, decay) = if momentum {
        let decay = one.add_input(names::DECAY, scalar).map_err(ir)?;
        let one_c = one.add_const(1.0, dtype);
        let keep = one
            .add(Op::Binary { fun: BinaryOp::Sub }, &[one_c, decay])
            .map_err(ir)?;
        (Some(keep), Some(decay))
    } else {
        (None, None)
    };
    // A rule written as code: its recurrence's entries over the coefficients (eta, lr, decay
    // slots), each a scalar node (None: zero).
    let linear = match (scan.rule.linear(), decay) {
        (Some(rule), Some(decay)) => {
            let coefs = [eta, lr, decay];
            let mut poly = |p: &tttc_ir::Poly| -> Result<Option<NodeId>, TokenStepError> {
                let mut sum: Option<NodeId> = None;
                for (c, m) in &p.0 {
                    let mut term = one.add_const(*c, dtype);
                    for &i in m {
                        let x = *coefs
                            .get(i)
                            .ok_or_else(|| malformed(format!("the rule uses coefficient #{i}")))?;
                        term = one
                            .add(Op::Binary { fun: BinaryOp::Mul }, &[term, x])
                            .map_err(ir)?;
                    }
                    sum = Some(match sum {
                        None => term,
                        Some(s) => one
                            .add(Op::Binary { fun: BinaryOp::Add }, &[s, term])
                            .map_err(ir)?,
                    });
                }
                Ok(sum)
            };
            let mut t = Vec::new();
            for row in &rule.transition {
                let mut r = Vec::new();
                for p in row {
                    r.push(poly(p)?);
                }
                t.push(r);
            }
            let mut b = Vec::new();
            for p in &rule.gradient {
                b.push(poly(p)?);
            }
            let mut u = Vec::new();
            for p in &rule.read {
                u.push(poly(p)?);
            }
            if t.len() != 2 {
                return Err(malformed("a scan runs rules of one carry".into()));
            }
            Some((t, b, u))
        }
        _ => None,
    };

    // g = ∇θ loss(θ0; token): the gradient graph inlined (nothing batched).
    let mut grad_inputs = theta[..ns].to_vec();
    grad_inputs.extend(&params);
    grad_inputs.extend(&loss_args);
    let flags = vec![false; grad_inputs.len()];
    // A factored state's factors become outputs of the gradient graph (a column read as a row).
    let mut grad_src = grad.clone();
    for (s, site) in scan.model_states().iter().zip(&factor_sites) {
        let Some(site) = site else { continue };
        let u = if site.column {
            let m = grad_src
                .tensor_type(site.u)
                .and_then(|t| t.shape.0.first().cloned())
                .ok_or_else(|| malformed(format!("the factor of `{s}` has no shape")))?;
            grad_src
                .add(
                    Op::Reshape {
                        shape: Shape(vec![Dim::Known(1), m]),
                    },
                    &[site.u],
                )
                .map_err(ir)?
        } else {
            site.u
        };
        grad_src.add_output(&names::row_u(s), u);
        grad_src.add_output(&names::row_d(s), site.d);
    }
    let grads =
        batch_outputs(&grad_src, &flags, &Dim::Known(1), &mut one, &grad_inputs).map_err(batch)?;
    let grad_node = |name: &str| -> Result<NodeId, TokenStepError> {
        grad_src
            .outputs()
            .iter()
            .position(|o| o.name == name)
            .map(|p| grads[p].node)
            .ok_or_else(|| malformed(format!("the gradient graph has no `{name}`")))
    };
    // The rows a factored state's token hands back: (u, lr · d).
    let mut new_rows: Vec<Option<(NodeId, NodeId)>> = vec![None; ns];
    let mul =
        |g: &mut Graph, a: NodeId, b: NodeId| g.add(Op::Binary { fun: BinaryOp::Mul }, &[a, b]);
    let mut next_partial = Vec::with_capacity(ns);
    let mut next_carry = Vec::with_capacity(ns);
    let mut theta_p = Vec::with_capacity(ns);
    for (i, s) in scan.model_states().iter().enumerate() {
        let name = TttScan::grad_output_name(s);
        let pos = grad
            .outputs()
            .iter()
            .position(|o| o.name == name)
            .ok_or_else(|| malformed(format!("the gradient graph has no `{name}`")))?;
        let g = grads[pos].node;
        if let Some((t, b, u)) = &linear {
            // x' = T x + b g on the current values; the token reads u · x'.
            let x = [
                partial[i],
                partial
                    .get(ns + i)
                    .copied()
                    .ok_or_else(|| malformed("a rule needs one carry per state".into()))?,
            ];
            let mut new = Vec::with_capacity(2);
            for (row, bp) in t.iter().zip(b) {
                let mut terms: Vec<NodeId> = Vec::new();
                for (w, &xq) in row.iter().zip(&x) {
                    if let Some(w) = *w {
                        terms.push(mul(&mut one, w, xq).map_err(ir)?);
                    }
                }
                if let Some(bp) = *bp {
                    terms.push(mul(&mut one, bp, g).map_err(ir)?);
                }
                new.push(sum_nodes(&mut one, terms, x[0], dtype).map_err(ir)?);
            }
            let mut terms: Vec<NodeId> = Vec::new();
            for (w, &xn) in u.iter().zip(&new) {
                if let Some(w) = *w {
                    terms.push(mul(&mut one, w, xn).map_err(ir)?);
                }
            }
            let read = sum_nodes(&mut one, terms, x[0], dtype).map_err(ir)?;
            next_partial.push(new[0]);
            next_carry.push(new[1]);
            theta_p.push(read);
            continue;
        }
        if let (Some((u_rows, d_rows)), Some(k)) = (factor_rows[i], k) {
            // θ_p = θ0 − eta (Σ_{j<p} u_jᵀ D_j + u_pᵀ (lr d_p)), as mixed outer products the
            // dual-form rewrite multiplies out (see `factored`).
            let u = grad_node(&names::row_u(s))?;
            let d = grad_node(&names::row_d(s))?;
            let d = mul(&mut one, lr, d).map_err(ir)?;
            let ones_k = ones(&mut one, k, dtype).map_err(ir)?;
            let ones_1 = ones(&mut one, 1, dtype).map_err(ir)?;
            let earlier = one
                .add(Op::MixOuter, &[ones_k, u_rows, d_rows])
                .map_err(ir)?;
            let this = one.add(Op::MixOuter, &[ones_1, u, d]).map_err(ir)?;
            let sum = one
                .add(Op::Binary { fun: BinaryOp::Add }, &[earlier, this])
                .map_err(ir)?;
            let step = mul(&mut one, eta, sum).map_err(ir)?;
            let weights = one
                .add(Op::Binary { fun: BinaryOp::Sub }, &[theta[i], step])
                .map_err(ir)?;
            new_rows[i] = Some((u, d));
            next_partial.push(u);
            theta_p.push(weights);
            continue;
        }
        let scaled = mul(&mut one, lr, g).map_err(ir)?;
        if let Some(keep) = keep {
            // S' = η S − ρ g, W' = (1 − α) W + S' on the current values.
            let carry = partial
                .get(ns + i)
                .copied()
                .ok_or_else(|| malformed("momentum_gd needs one carry per state".into()))?;
            let kept = mul(&mut one, eta, carry).map_err(ir)?;
            let s_next = one
                .add(Op::Binary { fun: BinaryOp::Sub }, &[kept, scaled])
                .map_err(ir)?;
            let decayed = mul(&mut one, keep, partial[i]).map_err(ir)?;
            let w_next = one
                .add(Op::Binary { fun: BinaryOp::Add }, &[decayed, s_next])
                .map_err(ir)?;
            next_partial.push(w_next);
            next_carry.push(s_next);
            theta_p.push(w_next);
            continue;
        }
        let sum = one
            .add(Op::Binary { fun: BinaryOp::Add }, &[partial[i], scaled])
            .map_err(ir)?;
        let step = mul(&mut one, eta, sum).map_err(ir)?;
        let mut weights = one
            .add(Op::Binary { fun: BinaryOp::Sub }, &[theta[i], step])
            .map_err(ir)?;
        if any_factored {
            // The output graph runs on a block of one token (below).
            weights = with_leading_one(&mut one, weights).map_err(ir)?;
        }
        next_partial.push(sum);
        theta_p.push(weights);
    }

    // z = out(θ_p; token). With a factored state, on a block of one token, the form the
    // dual-form rules know (the per-token weights `[1, state...]`), then rewritten by them.
    let mut out_inputs = theta_p;
    out_inputs.extend(&params);
    let mut flags = vec![any_factored; ns];
    flags.resize(ns + np, false);
    for &a in &out_args {
        out_inputs.push(if any_factored {
            with_leading_one(&mut one, a).map_err(ir)?
        } else {
            a
        });
        flags.push(any_factored);
    }
    let outs =
        batch_outputs(&scan.out, &flags, &Dim::Known(1), &mut one, &out_inputs).map_err(batch)?;
    let out = outs
        .first()
        .ok_or_else(|| malformed("the output graph has no output".into()))?;
    let z = if out.batched {
        drop_leading_one(&mut one, out.node).map_err(ir)?
    } else {
        out.node
    };
    one.add_output(names::Z, z);
    next_partial.extend(next_carry);
    for (i, (s, &p)) in scan.states.iter().zip(&next_partial).enumerate() {
        match new_rows.get(i).copied().flatten() {
            Some((u, d)) => {
                one.add_output(&names::row_u(s), u);
                one.add_output(&names::row_d(s), d);
            }
            None => one.add_output(&names::partial(s), p),
        }
    }
    if any_factored {
        one = crate::rewrite::dual_form_graph(
            &one,
            &crate::rewrite::RewriteConfig::default(),
            &format!("{model}/token_step"),
        )
        .map_err(|source| TokenStepError::Rewrite {
            model: model.clone(),
            source,
        })?
        .0;
    }

    // Batched over the slices.
    let mut all = Graph::new();
    let n = Dim::Known(n);
    let mut inputs = Vec::with_capacity(one.inputs().len());
    for &id in one.inputs() {
        let name = one.input_name(id).unwrap_or("?").to_string();
        let ty = input_type(&one, inputs.len())?;
        let mut dims = vec![n.clone()];
        dims.extend(ty.shape.0.iter().cloned());
        inputs.push(
            all.add_input(&name, TensorType::new(ty.dtype, Shape(dims)))
                .map_err(ir)?,
        );
    }
    let flags = vec![true; inputs.len()];
    let outs = batch_graph(&one, &flags, &n, &mut all, &inputs).map_err(batch)?;
    for (o, node) in one.outputs().iter().zip(outs) {
        all.add_output(&o.name, node);
    }
    Ok(all)
}

/// The gradient sums of the factored states of `scan` from their rows, batched over `n`
/// slices: inputs `factor_u.<s>` `[n, m, K]` and `factor_d.<s>` `[n, K, n']`, outputs
/// `sum.<s>` `= Uᵀ D` `[n, m, n']`, for every state `forms` marks [`StateForm::Factored`] (in
/// [`TttScan::model_states`]' order). What closing a mini-batch (`θ0 − η_last Uᵀ D`) and the
/// states after a chunk that ends inside one need.
pub fn factor_sum_graph(
    scan: &TttScan,
    n: usize,
    forms: &[StateForm],
) -> Result<Graph, TokenStepError> {
    let (malformed, ir) = scan_errors(scan);
    let grad = inner_gradient(scan)?;
    let k = scan
        .mini_batch
        .known()
        .ok_or_else(|| malformed("the mini-batch size is unbound".into()))?;
    let mut g = Graph::new();
    let mut sums = Vec::new();
    for (i, s) in scan.model_states().iter().enumerate() {
        if forms.get(i) != Some(&StateForm::Factored) {
            continue;
        }
        let ty = grad
            .inputs()
            .get(i)
            .and_then(|&id| grad.tensor_type(id))
            .cloned()
            .ok_or_else(|| malformed(format!("state `{s}` has no type")))?;
        let [m, w] = ty.shape.0.as_slice() else {
            return Err(malformed(format!("a factored state `{s}` has two axes")));
        };
        let matrix = |a: &Dim, b: &Dim| {
            TensorType::new(ty.dtype, Shape(vec![Dim::Known(n), a.clone(), b.clone()]))
        };
        let ut = g
            .add_input(&names::factor_u(s), matrix(m, &Dim::Known(k)))
            .map_err(ir)?;
        let d = g
            .add_input(&names::factor_d(s), matrix(&Dim::Known(k), w))
            .map_err(ir)?;
        sums.push((s, g.add(Op::MatMul, &[ut, d]).map_err(ir)?));
    }
    for (s, sum) in sums {
        g.add_output(&names::sum(s), sum);
    }
    Ok(g)
}
