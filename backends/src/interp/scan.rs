//! The test-time-training scan (see the module doc of `tttc_ir::scan`), for every multi-index
//! over the mapped dims, for every mini-batch, in one of two ways:
//!
//! - when the scan has a step graph ([`TttScan::step`], filled in by the scan-lowering pass),
//!   that graph defines the scan: it is specialized with `$k` bound to K (and to the remainder
//!   `L mod K` for the last mini-batch) and run once per mini-batch on blocks of `k` tokens;
//! - otherwise the primal form runs literally, token by token: one gradient per token at the
//!   mini-batch's starting weights, one weight copy per token, one output per token.
//!
//! Both give the same result tuple.

use std::collections::BTreeMap;

use super::value::{numel, Arr, Elem, Value};
use super::{InterpError, KnownType, Plan};
use ndarray::{ArrayViewD, Axis, IxDyn};
use tttc_ir::program::specialize_graph;
use tttc_ir::{Graph, NodeId, OperandAxes, TokenEtaForm, TttScan, UpdateRule, MINI_BATCH_DIM};

/// How one mini-batch is computed.
enum Engine<'h> {
    /// Token by token, with the per-token gradient and output graphs.
    Tokens(Box<TokenPlans<'h>>),
    /// One run of the step graph per mini-batch, specialized per mini-batch length.
    Step(Vec<StepPlan<'h>>),
}

/// The per-token graphs of the token-by-token engine.
struct TokenPlans<'h> {
    grad: Plan<'h>,
    out: Plan<'h>,
    /// Position of `grad_<state>` among the gradient graph's outputs, per state.
    grad_index: Vec<usize>,
}

/// The step graph specialized to one mini-batch length.
struct StepPlan<'h> {
    /// The mini-batch length `$k` is bound to.
    k: usize,
    plan: Plan<'h>,
    /// Position of the output `out`.
    out_index: usize,
    /// Position of `next_<state>` among the outputs, per state.
    next_index: Vec<usize>,
}

/// What the per-slice loop needs to know about the scan.
struct Seq<'p, 'g, 'h> {
    /// The graph holding the scan, for errors.
    plan: &'p Plan<'g>,
    /// The scan node.
    id: NodeId,
    engine: Engine<'h>,
    /// Mini-batch size `K`.
    mini_batch: usize,
    /// How `token_eta` is indexed.
    eta_form: TokenEtaForm,
    /// The update rule.
    rule: UpdateRule,
    /// Number of the inner model's states (the rest of the states are the rule's carries).
    model_states: usize,
    /// The largest mini-batch the step graph is right for ([`TttScan::max_mini_batch`]).
    max_mini_batch: usize,
    /// Number of states, params, loss args and out args.
    counts: [usize; 4],
    /// Sequence length `L` (from the node's type).
    seq_len: usize,
    /// Shape of one token's output, `[1, ...]`.
    z_shape: Vec<usize>,
    /// Shape of each state (mapped axes removed).
    state_shapes: Vec<Vec<usize>>,
}

impl Seq<'_, '_, '_> {
    fn invalid(&self, message: impl std::fmt::Display) -> InterpError {
        self.plan.invalid_at(self.id, message)
    }

    /// Runs the scan over one slice: the operands with their mapped axes removed. Returns the
    /// stacked per-token outputs (row-major `[L, ...]`) and the final states.
    fn run<T: Elem>(&self, slices: Vec<Arr<T>>) -> Result<(Vec<T>, Vec<Arr<T>>), InterpError> {
        let [ns, np, nl, no] = self.counts;
        let mut it = slices.into_iter();
        let theta0: Vec<Arr<T>> = it.by_ref().take(ns).collect();
        let params: Vec<Arr<T>> = it.by_ref().take(np).collect();
        let loss_args: Vec<Arr<T>> = it.by_ref().take(nl).collect();
        let out_args: Vec<Arr<T>> = it.by_ref().take(no).collect();
        let coefficients: Vec<Arr<T>> = it.collect();
        let momentum = self.rule.has_carries();
        let (eta, lr, decay) = match (momentum, &coefficients[..]) {
            (false, [eta, lr]) => (eta.clone(), lr.clone(), None),
            (true, [eta, lr, decay]) => (eta.clone(), lr.clone(), Some(decay.clone())),
            _ => return Err(self.invalid("wrong number of operands")),
        };
        if let Some(decay) = &decay {
            if decay.shape != [self.seq_len] {
                return Err(self.invalid(format!(
                    "decay slices to {:?}, expected [{}]",
                    decay.shape, self.seq_len
                )));
            }
            if matches!(self.engine, Engine::Step(_)) && self.mini_batch > self.max_mini_batch {
                return Err(self.invalid(format!(
                    "this momentum_gd step runs mini-batches of at most {} tokens, not {}",
                    self.max_mini_batch, self.mini_batch
                )));
            }
        }
        let (k_max, l) = (self.mini_batch, self.seq_len);
        let eta_len = match self.eta_form {
            TokenEtaForm::PerPosition => k_max,
            TokenEtaForm::PerToken => l,
        };
        if eta.shape != [eta_len] {
            return Err(self.invalid(format!(
                "token_eta slices to {:?}, expected [{eta_len}]",
                eta.shape
            )));
        }
        if lr.shape != [l] {
            return Err(self.invalid(format!("lr slices to {:?}, expected [{l}]", lr.shape)));
        }
        for a in loss_args.iter().chain(&out_args) {
            if a.shape.first() != Some(&l) {
                return Err(self.invalid(format!(
                    "a token argument slices to {:?}, expected [{l}, ...]",
                    a.shape
                )));
            }
        }
        for (s, (t, want)) in theta0.iter().zip(&self.state_shapes).enumerate() {
            if &t.shape != want {
                return Err(self.invalid(format!(
                    "state {s} slices to {:?}, but the result type says {want:?}",
                    t.shape
                )));
            }
        }
        if k_max == 0 && l > 0 {
            return Err(self.invalid("the mini-batch size is 0"));
        }

        let (grad_plan, out_plan, grad_index) = match &self.engine {
            Engine::Tokens(t) => (&t.grad, &t.out, &t.grad_index),
            Engine::Step(steps) => {
                let coefficients = [Some(&eta), Some(&lr), decay.as_ref()];
                return self.run_steps(steps, theta0, &params, &loss_args, &out_args, coefficients);
            }
        };
        if let Some(decay) = &decay {
            let args = TokenArgs {
                params: &params,
                loss_args: &loss_args,
                out_args: &out_args,
            };
            return self.run_momentum_tokens(
                grad_plan,
                out_plan,
                grad_index,
                theta0,
                args,
                [&eta, &lr, decay],
            );
        }
        let mut theta = theta0;
        let mut z_all: Vec<T> = Vec::new();
        let mut start = 0;
        while start < l {
            let k = k_max.min(l - start);
            // S_i = Σ_{j<=i} lr[j] g_j, and θ_i = θ − token_eta[i] S_i.
            let mut sums: Vec<Vec<T>> = theta.iter().map(|t| vec![T::ZERO; t.data.len()]).collect();
            let mut theta_i = theta.clone();
            for i in 0..k {
                let t = start + i;
                let eta_i = eta
                    .data
                    .get(self.eta_start(start) + i)
                    .copied()
                    .ok_or_else(|| self.invalid("token_eta index"))?;
                let lr_t = lr
                    .data
                    .get(t)
                    .copied()
                    .ok_or_else(|| self.invalid("lr index"))?;
                // g_t, at the mini-batch's starting weights θ.
                let mut inputs: Vec<Value> = theta.iter().cloned().map(T::wrap).collect();
                inputs.extend(params.iter().cloned().map(T::wrap));
                for a in &loss_args {
                    inputs.push(T::wrap(token(a, t).map_err(|m| self.invalid(m))?));
                }
                let grads = grad_plan.run(inputs)?;
                for (s, ((sum, th), th_i)) in
                    sums.iter_mut().zip(&theta).zip(&mut theta_i).enumerate()
                {
                    let g = grad_index.get(s).and_then(|&p| grads.get(p));
                    let g = g.and_then(T::unwrap).filter(|g| g.shape == th.shape);
                    let Some(g) = g else {
                        return Err(self.invalid(format!(
                            "the gradient of state {s} is not a {}{:?} tensor",
                            T::DTYPE,
                            th.shape
                        )));
                    };
                    for (((acc, &ge), &w), wi) in sum
                        .iter_mut()
                        .zip(&g.data)
                        .zip(&th.data)
                        .zip(&mut th_i.data)
                    {
                        *acc = *acc + lr_t * ge;
                        *wi = w - eta_i * *acc;
                    }
                }
                // z_t = out(θ_i; token t).
                self.push_output_token(out_plan, &theta_i, &params, &out_args, t, &mut z_all)?;
            }
            theta = theta_i;
            start += k;
        }
        Ok((z_all, theta))
    }

    /// `momentum_gd` token by token, literally (see the module doc of `tttc_ir::scan`): the
    /// gradients of a mini-batch at its starting weights `W0`; per token `S ← η S − ρ g`,
    /// `W ← (1 − α) W + S`, then the token's output at `W`. `theta0` holds the model's states,
    /// then their carries.
    #[allow(clippy::too_many_arguments)]
    fn run_momentum_tokens<T: Elem>(
        &self,
        grad_plan: &Plan<'_>,
        out_plan: &Plan<'_>,
        grad_index: &[usize],
        theta0: Vec<Arr<T>>,
        args: TokenArgs<'_, T>,
        [eta, lr, decay]: [&Arr<T>; 3],
    ) -> Result<(Vec<T>, Vec<Arr<T>>), InterpError> {
        let nm = self.model_states;
        let (k_max, l) = (self.mini_batch, self.seq_len);
        let mut theta = theta0;
        if theta.len() != 2 * nm {
            return Err(self.invalid("momentum_gd needs one carry per state"));
        }
        let coefficient = |a: &Arr<T>, t: usize, what: &str| {
            a.data
                .get(t)
                .copied()
                .ok_or_else(|| self.invalid(format!("{what} index")))
        };
        let mut z_all: Vec<T> = Vec::new();
        let mut start = 0;
        while start < l {
            let k = k_max.min(l - start);
            let w0: Vec<Arr<T>> = theta[..nm].to_vec();
            for t in start..start + k {
                let (e, r, d) = (
                    coefficient(eta, self.eta_start(start) + t - start, "momentum")?,
                    coefficient(lr, t, "lr")?,
                    coefficient(decay, t, "decay")?,
                );
                let a = T::ONE - d;
                // A rule written as code: its T_t, b_t, u_t at this token.
                let linear = self.rule.linear().map(|rule| {
                    let values = [e.to_f64(), r.to_f64(), d.to_f64()];
                    let at = |p: &tttc_ir::Poly| T::from_f64(p.eval(&values));
                    let t: Vec<Vec<T>> = rule
                        .transition
                        .iter()
                        .map(|row| row.iter().map(at).collect())
                        .collect();
                    let b: Vec<T> = rule.gradient.iter().map(at).collect();
                    let u: Vec<T> = rule.read.iter().map(at).collect();
                    (t, b, u)
                });
                let mut inputs: Vec<Value> = w0.iter().cloned().map(T::wrap).collect();
                inputs.extend(args.params.iter().cloned().map(T::wrap));
                for a in args.loss_args {
                    inputs.push(T::wrap(token(a, t).map_err(|m| self.invalid(m))?));
                }
                let grads = grad_plan.run(inputs)?;
                let mut reads: Vec<Arr<T>> = Vec::new();
                let (w, s) = theta.split_at_mut(nm);
                for (i, (w, s)) in w.iter_mut().zip(s.iter_mut()).enumerate() {
                    let g = grad_index.get(i).and_then(|&p| grads.get(p));
                    let g = g.and_then(T::unwrap).filter(|g| g.shape == w.shape);
                    let Some(g) = g else {
                        return Err(self.invalid(format!(
                            "the gradient of state {i} is not a {}{:?} tensor",
                            T::DTYPE,
                            w.shape
                        )));
                    };
                    if s.shape != w.shape {
                        return Err(self.invalid(format!("carry {i} has the wrong shape")));
                    }
                    if let Some((tm, b, u)) = &linear {
                        // x_t = T_t x_{t−1} + b_t g_t; the token reads u_t · x_t.
                        if tm.len() != 2 || b.len() != 2 || u.len() != 2 {
                            return Err(self.invalid("a scan runs rules of one carry"));
                        }
                        let mut read = w.clone();
                        for (((wv, sv), &gv), rv) in w
                            .data
                            .iter_mut()
                            .zip(&mut s.data)
                            .zip(&g.data)
                            .zip(&mut read.data)
                        {
                            let (w0, s0) = (*wv, *sv);
                            *wv = tm[0][0] * w0 + tm[0][1] * s0 + b[0] * gv;
                            *sv = tm[1][0] * w0 + tm[1][1] * s0 + b[1] * gv;
                            *rv = u[0] * *wv + u[1] * *sv;
                        }
                        reads.push(read);
                        continue;
                    }
                    for ((wv, sv), &gv) in w.data.iter_mut().zip(&mut s.data).zip(&g.data) {
                        *sv = e * *sv - r * gv;
                        *wv = a * *wv + *sv;
                    }
                }
                let states = if linear.is_some() {
                    &reads[..]
                } else {
                    &theta[..nm]
                };
                self.push_output_token(
                    out_plan,
                    states,
                    args.params,
                    args.out_args,
                    t,
                    &mut z_all,
                )?;
            }
            // A rule's end map on the mini-batch's last token: x ← E x.
            if let Some(end) = self.rule.linear().and_then(|r| r.end.as_ref()) {
                let t = start + k - 1;
                let values = [
                    coefficient(eta, self.eta_start(start) + t - start, "momentum")?.to_f64(),
                    coefficient(lr, t, "lr")?.to_f64(),
                    coefficient(decay, t, "decay")?.to_f64(),
                ];
                let e: Vec<Vec<T>> = end
                    .iter()
                    .map(|row| row.iter().map(|p| T::from_f64(p.eval(&values))).collect())
                    .collect();
                let [e0, e1] = e.as_slice() else {
                    return Err(self.invalid("a scan runs rules of one carry"));
                };
                let (w, s) = theta.split_at_mut(nm);
                for (w, s) in w.iter_mut().zip(s.iter_mut()) {
                    for (wv, sv) in w.data.iter_mut().zip(&mut s.data) {
                        let (w0, s0) = (*wv, *sv);
                        *wv = e0[0] * w0 + e0[1] * s0;
                        *sv = e1[0] * w0 + e1[1] * s0;
                    }
                }
            }
            start += k;
        }
        Ok((z_all, theta))
    }

    /// Appends to `z_all` token `t`'s output `out(states; params, token t of out_args)`,
    /// checked to be a `z_shape` tensor.
    fn push_output_token<T: Elem>(
        &self,
        out_plan: &Plan<'_>,
        states: &[Arr<T>],
        params: &[Arr<T>],
        out_args: &[Arr<T>],
        t: usize,
        z_all: &mut Vec<T>,
    ) -> Result<(), InterpError> {
        let mut inputs: Vec<Value> = states.iter().cloned().map(T::wrap).collect();
        inputs.extend(params.iter().cloned().map(T::wrap));
        for a in out_args {
            inputs.push(T::wrap(token(a, t).map_err(|m| self.invalid(m))?));
        }
        let z = out_plan.run(inputs)?.into_iter().next();
        let z = z
            .as_ref()
            .and_then(T::unwrap)
            .filter(|z| z.shape == self.z_shape);
        let Some(z) = z else {
            return Err(self.invalid(format!(
                "the output graph does not produce a {}{:?} token",
                T::DTYPE,
                self.z_shape
            )));
        };
        z_all.extend_from_slice(&z.data);
        Ok(())
    }

    /// Where the step sizes of the mini-batch starting at token `start` begin in `token_eta`.
    fn eta_start(&self, start: usize) -> usize {
        match self.eta_form {
            TokenEtaForm::PerPosition => 0,
            TokenEtaForm::PerToken => start,
        }
    }

    /// The scan over one slice with the step graph: one run per mini-batch of `k` tokens, on
    /// the blocks of rows `start..start + k` of every token argument, its `k` step sizes
    /// (`token_eta[0..k]` per position, `token_eta[start..start + k]` per token),
    /// `lr[start..start + k]` and, under `momentum_gd`, `decay[start..start + k]`.
    #[allow(clippy::too_many_arguments)]
    fn run_steps<T: Elem>(
        &self,
        steps: &[StepPlan<'_>],
        theta0: Vec<Arr<T>>,
        params: &[Arr<T>],
        loss_args: &[Arr<T>],
        out_args: &[Arr<T>],
        [eta, lr, decay]: [Option<&Arr<T>>; 3],
    ) -> Result<(Vec<T>, Vec<Arr<T>>), InterpError> {
        let (Some(eta), Some(lr)) = (eta, lr) else {
            return Err(self.invalid("no token_eta or lr"));
        };
        let (k_max, l) = (self.mini_batch, self.seq_len);
        let mut theta = theta0;
        let mut z_all: Vec<T> = Vec::new();
        let mut z_block = self.z_shape.clone();
        let mut start = 0;
        while start < l {
            let k = k_max.min(l - start);
            let Some(step) = steps.iter().find(|s| s.k == k) else {
                return Err(self.invalid(format!("internal: no step graph for k = {k}")));
            };
            let inv = |m: String| self.invalid(m);
            let mut inputs: Vec<Value> = theta.into_iter().map(T::wrap).collect();
            inputs.extend(params.iter().cloned().map(T::wrap));
            for a in loss_args.iter().chain(out_args) {
                inputs.push(T::wrap(block(a, start, k).map_err(inv)?));
            }
            inputs.push(T::wrap(block(eta, self.eta_start(start), k).map_err(inv)?));
            inputs.push(T::wrap(block(lr, start, k).map_err(inv)?));
            if let Some(decay) = decay {
                inputs.push(T::wrap(block(decay, start, k).map_err(inv)?));
            }
            let outs = step.plan.run(inputs)?;
            if let Some(first) = z_block.first_mut() {
                *first = k;
            }
            let z = outs
                .get(step.out_index)
                .and_then(T::unwrap)
                .filter(|z| z.shape == z_block);
            let Some(z) = z else {
                return Err(self.invalid(format!(
                    "the step graph does not produce a {}{z_block:?} block of outputs",
                    T::DTYPE
                )));
            };
            z_all.extend_from_slice(&z.data);
            theta = Vec::with_capacity(step.next_index.len());
            for (s, (&p, want)) in step.next_index.iter().zip(&self.state_shapes).enumerate() {
                let next = outs.get(p).and_then(T::unwrap).filter(|t| &t.shape == want);
                let Some(next) = next else {
                    return Err(self.invalid(format!(
                        "the step graph's next value of state {s} is not a {}{want:?} tensor",
                        T::DTYPE
                    )));
                };
                theta.push(next.clone());
            }
            start += k;
        }
        Ok((z_all, theta))
    }
}

/// The per-token operands of one slice the token-by-token engine reads.
struct TokenArgs<'a, T> {
    params: &'a [Arr<T>],
    loss_args: &'a [Arr<T>],
    out_args: &'a [Arr<T>],
}

/// The row-major multi-index of flat position `c` over `extents`, written into `index`.
pub(super) fn unravel(mut c: usize, extents: &[usize], index: &mut [usize]) {
    for p in (0..extents.len()).rev() {
        index[p] = c % extents[p];
        c /= extents[p];
    }
}

/// Rows `start..start + k` of `a` (`[n, ...]`), as a block `[k, ...]`.
pub(super) fn block<T: Elem>(a: &Arr<T>, start: usize, k: usize) -> Result<Arr<T>, String> {
    let n = a.shape.first().copied().unwrap_or(0);
    let end = start.checked_add(k).filter(|&e| e <= n);
    let Some(end) = end else {
        return Err(format!(
            "rows {start}..{start}+{k} out of range for {:?}",
            a.shape
        ));
    };
    let row = a.data.len().checked_div(n).unwrap_or(0);
    let mut shape = a.shape.clone();
    match shape.first_mut() {
        Some(first) => *first = k,
        None => return Err("a block of a scalar".into()),
    }
    let data = a
        .data
        .get(start * row..end * row)
        .ok_or_else(|| format!("rows {start}..{end} out of range for {:?}", a.shape))?;
    Arr::new(shape, data.to_vec())
}

/// Token `t` of a sequence argument `[L, ...]`, as a row `[1, ...]`.
fn token<T: Elem>(a: &Arr<T>, t: usize) -> Result<Arr<T>, String> {
    let l = a.shape.first().copied().unwrap_or(0);
    if t >= l {
        return Err(format!("token {t} out of range for {:?}", a.shape));
    }
    let row = a.data.len() / l;
    let mut shape = a.shape.clone();
    shape[0] = 1;
    let data = a
        .data
        .get(t * row..(t + 1) * row)
        .ok_or_else(|| format!("token {t} out of range for {:?}", a.shape))?;
    Arr::new(shape, data.to_vec())
}

/// The slice of operand `a` at multi-index `index` over the mapped dims.
pub(super) fn slice<T: Elem>(
    a: &Arr<T>,
    axes: &OperandAxes,
    index: &[usize],
) -> Result<Arr<T>, String> {
    let mut v =
        ArrayViewD::from_shape(IxDyn(&a.shape), &a.data).map_err(|e| format!("internal: {e}"))?;
    for (axis, p) in axes.per.iter().enumerate().rev() {
        if let Some(p) = *p {
            let i = index.get(p).copied().unwrap_or(usize::MAX);
            if axis >= v.ndim() || i >= v.shape()[axis] {
                return Err(format!("mapped index out of range for {:?}", a.shape));
            }
            v = v.index_axis_move(Axis(axis), i);
        }
    }
    Arr::new(v.shape().to_vec(), v.iter().copied().collect())
}

/// Evaluates the scan node `id` of `plan` on its operands.
pub(super) fn eval_ttt<T: Elem>(
    plan: &Plan<'_>,
    id: NodeId,
    scan: &TttScan,
    args: &[&Arr<T>],
) -> Result<Value, InterpError> {
    let inv = |m: String| plan.invalid_at(id, m);
    let counts = [
        scan.states.len(),
        scan.params.len(),
        scan.loss_args.len(),
        scan.out_args.len(),
    ];
    let ns = counts[0];
    let n_ops = scan.operand_count();
    if args.len() != n_ops || scan.axes.len() != n_ops {
        return Err(inv(format!(
            "{} operand(s) and {} axis map(s), expected {n_ops}",
            args.len(),
            scan.axes.len()
        )));
    }
    let mini_batch = scan
        .mini_batch
        .known()
        .ok_or_else(|| InterpError::UnboundDim {
            graph: plan.path.clone(),
            node: plan.describe(id),
            symbol: scan.mini_batch.to_string(),
        })?;

    if scan.out.outputs().is_empty() {
        return Err(inv("the output graph has no output".into()));
    }

    // Extents of the mapped dims.
    let mut per_ext: Vec<Option<usize>> = vec![None; scan.per.len()];
    for (i, (a, axes)) in args.iter().zip(&scan.axes).enumerate() {
        if axes.per.len() != a.shape.len() {
            return Err(inv(format!(
                "operand {i} has shape {:?} but an axis map of rank {}",
                a.shape,
                axes.per.len()
            )));
        }
        for (&d, p) in a.shape.iter().zip(&axes.per) {
            let Some(p) = *p else { continue };
            let Some(slot) = per_ext.get_mut(p) else {
                return Err(inv(format!("operand {i} maps an axis to unknown dim {p}")));
            };
            match slot {
                None => *slot = Some(d),
                Some(prev) if *prev == d => {}
                Some(prev) => {
                    return Err(inv(format!(
                        "mapped dim `{}` is {prev} in one operand and {d} in operand {i}",
                        scan.per[p]
                    )))
                }
            }
        }
    }
    let per_ext = per_ext
        .into_iter()
        .enumerate()
        .map(|(p, e)| {
            e.ok_or_else(|| inv(format!("mapped dim `{}` is in no operand", scan.per[p])))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let count = numel(&per_ext).map_err(inv)?;
    let nper = per_ext.len();

    // The result type, split into the mapped extents and the per-slice shapes.
    let Some(KnownType::Tuple(result_ty)) = plan.types.get(&id) else {
        return Err(inv("the scan's type is not a tuple".into()));
    };
    if result_ty.len() != 1 + ns {
        return Err(inv(format!(
            "the scan's type has {} element(s), expected {}",
            result_ty.len(),
            1 + ns
        )));
    }
    let split = |shape: &[usize], min_rest: usize| -> Option<Vec<usize>> {
        (shape.len() >= nper + min_rest && shape[..nper] == per_ext[..])
            .then(|| shape[nper..].to_vec())
    };
    let Some(out_rest) = split(&result_ty[0].1, 1) else {
        return Err(inv(format!(
            "output type {:?} does not start with the mapped extents {per_ext:?} and L",
            result_ty[0].1
        )));
    };
    let seq_len = out_rest[0];
    let mut z_shape = out_rest;
    z_shape[0] = 1;
    let state_shapes = result_ty[1..]
        .iter()
        .map(|t| {
            split(&t.1, 0).ok_or_else(|| {
                inv(format!(
                    "state type {:?} does not start with the mapped extents {per_ext:?}",
                    t.1
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    // How a mini-batch is computed: the step graph, specialized to the (at most two)
    // mini-batch lengths of this sequence, or the per-token graphs.
    let base = format!("{}/ttt%{}", plan.path, id.index());
    let specialized: Vec<(usize, Graph)> = match &scan.step {
        Some(step) => step_lengths(seq_len, mini_batch)
            .into_iter()
            .map(|k| {
                let bind = BTreeMap::from([(MINI_BATCH_DIM.to_string(), k)]);
                (k, specialize_graph(step, &bind))
            })
            .collect(),
        None => Vec::new(),
    };
    let engine = match &scan.step {
        Some(step) => step_engine(plan, id, scan, step, &specialized, &base)?,
        None => token_engine(plan, id, scan, &base)?,
    };

    let seq = Seq {
        plan,
        id,
        engine,
        mini_batch,
        eta_form: scan.token_eta,
        rule: scan.rule.clone(),
        model_states: scan.model_state_count(),
        max_mini_batch: scan.max_mini_batch(),
        counts,
        seq_len,
        z_shape,
        state_shapes,
    };

    // One independent scan per multi-index over the mapped dims, in row-major order, so the
    // per-slice results concatenate into the row-major `[per..., ...]` results.
    let mut out_data: Vec<T> = Vec::new();
    let mut state_data: Vec<Vec<T>> = vec![Vec::new(); ns];
    let mut index = vec![0usize; nper];
    for c in 0..count {
        unravel(c, &per_ext, &mut index);
        let slices = args
            .iter()
            .zip(&scan.axes)
            .map(|(a, axes)| slice(a, axes, &index))
            .collect::<Result<Vec<_>, _>>()
            .map_err(inv)?;
        let (z, finals) = seq.run(slices)?;
        out_data.extend(z);
        for (data, f) in state_data.iter_mut().zip(finals) {
            data.extend(f.data);
        }
    }

    let mut parts = Vec::with_capacity(1 + ns);
    parts.push(T::wrap(
        Arr::new(result_ty[0].1.clone(), out_data).map_err(inv)?,
    ));
    for (t, data) in result_ty[1..].iter().zip(state_data) {
        parts.push(T::wrap(Arr::new(t.1.clone(), data).map_err(inv)?));
    }
    Ok(Value::Tuple(parts))
}

/// The mini-batch lengths of a sequence of `seq_len` tokens cut into mini-batches of
/// `mini_batch`: K if there is a full one, and the remainder `L mod K` if it is not zero.
pub(super) fn step_lengths(seq_len: usize, mini_batch: usize) -> Vec<usize> {
    if mini_batch == 0 {
        return Vec::new();
    }
    let mut lengths = Vec::with_capacity(2);
    if seq_len >= mini_batch {
        lengths.push(mini_batch);
    }
    let remainder = seq_len % mini_batch;
    if remainder > 0 {
        lengths.push(remainder);
    }
    lengths
}

/// The token-by-token engine: the gradient and output graphs, checked.
fn token_engine<'h>(
    plan: &Plan<'_>,
    id: NodeId,
    scan: &'h TttScan,
    base: &str,
) -> Result<Engine<'h>, InterpError> {
    let inv = |m: String| plan.invalid_at(id, m);
    let [ns, np, nl, no] = [
        scan.model_state_count(),
        scan.params.len(),
        scan.loss_args.len(),
        scan.out_args.len(),
    ];
    let grad = scan
        .grad
        .as_ref()
        .ok_or_else(|| InterpError::MissingGradient {
            graph: plan.path.clone(),
            node: plan.describe(id),
        })?;
    let grad_plan = Plan::new(grad, format!("{base}/grad"))?;
    let out_plan = Plan::new(&scan.out, format!("{base}/out"))?;
    if grad.inputs().len() != ns + np + nl {
        return Err(inv(format!(
            "the gradient graph takes {} input(s), expected {} (states, params, loss args)",
            grad.inputs().len(),
            ns + np + nl
        )));
    }
    if scan.out.inputs().len() != ns + np + no {
        return Err(inv(format!(
            "the output graph takes {} input(s), expected {} (states, params, out args)",
            scan.out.inputs().len(),
            ns + np + no
        )));
    }
    let grad_index = scan
        .model_states()
        .iter()
        .map(|s| {
            let name = TttScan::grad_output_name(s);
            grad.outputs()
                .iter()
                .position(|o| o.name == name)
                .ok_or_else(|| inv(format!("the gradient graph has no output `{name}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Engine::Tokens(Box::new(TokenPlans {
        grad: grad_plan,
        out: out_plan,
        grad_index,
    })))
}

/// The step engine: the step graph's specializations, checked.
fn step_engine<'h>(
    plan: &Plan<'_>,
    id: NodeId,
    scan: &TttScan,
    step: &Graph,
    specialized: &'h [(usize, Graph)],
    base: &str,
) -> Result<Engine<'h>, InterpError> {
    let inv = |m: String| plan.invalid_at(id, m);
    let n_inputs = scan.operand_count();
    if step.inputs().len() != n_inputs {
        return Err(inv(format!(
            "the step graph takes {} input(s), expected {n_inputs} (states, params, loss args, \
             out args, token_eta, lr)",
            step.inputs().len()
        )));
    }
    let position = |name: &str| {
        step.outputs()
            .iter()
            .position(|o| o.name == name)
            .ok_or_else(|| inv(format!("the step graph has no output `{name}`")))
    };
    let out_index = position("out")?;
    let next_index = scan
        .states
        .iter()
        .map(|s| position(&TttScan::next_output_name(s)))
        .collect::<Result<Vec<_>, _>>()?;
    let plans = specialized
        .iter()
        .map(|(k, g)| {
            Ok(StepPlan {
                k: *k,
                plan: Plan::new(g, format!("{base}/step[$k={k}]"))?,
                out_index,
                next_index: next_index.clone(),
            })
        })
        .collect::<Result<Vec<_>, InterpError>>()?;
    Ok(Engine::Step(plans))
}
