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

use crate::batch::{batch_graph, batch_outputs, BatchError};
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

/// Builds the token step of `scan` (its graphs already specialized to concrete dimensions)
/// batched over `n` slices. Inputs, in order: `theta.<s>` for every state, `partial.<s>` for
/// every state, `param.<i>`, `loss.<i>`, `out.<i>`, `lr`, `eta`, and `decay` under
/// `momentum_gd` (see [`names`]); outputs `z`, then `partial.<s>` (the updated sums, or the
/// current values under `momentum_gd`) for every state.
pub fn token_step_graph(scan: &TttScan, n: usize) -> Result<Graph, TokenStepError> {
    let model = scan.model.clone();
    let malformed = |message: String| TokenStepError::Malformed {
        model: model.clone(),
        message,
    };
    let ir = |source: GraphError| TokenStepError::Ir {
        model: model.clone(),
        source,
    };
    let batch = |source: BatchError| TokenStepError::Batch {
        model: model.clone(),
        source,
    };
    let grad = scan
        .grad
        .as_ref()
        .ok_or_else(|| TokenStepError::MissingGradient(model.clone()))?;
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

    // One slice.
    let mut one = Graph::new();
    let mut theta = Vec::with_capacity(ns);
    let mut partial = Vec::with_capacity(ns);
    // Every state of the scan (under momentum_gd the carries too, of their state's type).
    for (i, s) in scan.states.iter().enumerate() {
        theta.push(
            one.add_input(&names::theta(s), input_type(grad, i % ns.max(1))?)
                .map_err(ir)?,
        );
    }
    for (i, s) in scan.states.iter().enumerate() {
        partial.push(
            one.add_input(&names::partial(s), input_type(grad, i % ns.max(1))?)
                .map_err(ir)?,
        );
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
    let grads =
        batch_outputs(grad, &flags, &Dim::Known(1), &mut one, &grad_inputs).map_err(batch)?;
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
        let weights = one
            .add(Op::Binary { fun: BinaryOp::Sub }, &[theta[i], step])
            .map_err(ir)?;
        next_partial.push(sum);
        theta_p.push(weights);
    }

    // z = out(θ_p; token).
    let mut out_inputs = theta_p;
    out_inputs.extend(&params);
    out_inputs.extend(&out_args);
    let flags = vec![false; out_inputs.len()];
    let outs =
        batch_outputs(&scan.out, &flags, &Dim::Known(1), &mut one, &out_inputs).map_err(batch)?;
    let z = outs
        .first()
        .ok_or_else(|| malformed("the output graph has no output".into()))?
        .node;
    one.add_output(names::Z, z);
    next_partial.extend(next_carry);
    for (s, &p) in scan.states.iter().zip(&next_partial) {
        one.add_output(&names::partial(s), p);
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
