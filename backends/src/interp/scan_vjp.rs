//! The vector-Jacobian product of a test-time-training scan (`Op::TttVjp`): reverse mode
//! through the mini-batches, with checkpoints (see `docs/gradients.md`).
//!
//! For every multi-index over the mapped dims, on the operands' slices:
//!
//! 1. forward over the mini-batches with the step graph, keeping the state at the start of
//!    every `G`-th mini-batch (`G` = `checkpoint_every`);
//! 2. the groups of `G` mini-batches in reverse: the group's states are recomputed from its
//!    checkpoint, then its mini-batches run in reverse through `step_vjp`, carrying the
//!    cotangent of the state (it starts as the cotangent of the final state), summing those of
//!    the params and of a per-position `token_eta`, and writing the rows of the token
//!    arguments', `lr`'s, a per-token `token_eta`'s and `momentum_gd`'s `decay`'s (its
//!    momentum buffers are scan states, carried like the others).
//!
//! An operand without some mapped axis is shared by those slices: its cotangent is the sum
//! of theirs.

use std::collections::BTreeMap;

use super::scan::{block, slice, step_lengths, unravel};
use super::value::{numel, Arr, Elem, Value};
use super::{InterpError, Plan};
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use tttc_ir::program::specialize_graph;
use tttc_ir::{Graph, NodeId, TokenEtaForm, TttScan, MINI_BATCH_DIM};

/// The step and step-VJP graphs specialized to one mini-batch length.
struct Plans<'h> {
    k: usize,
    step: Plan<'h>,
    vjp: Plan<'h>,
}

/// Evaluates the `ttt_vjp` node `id` of `plan` on its operands (the scan's operands, then the
/// cotangents of its results).
pub(super) fn eval_ttt_vjp<T: Elem>(
    plan: &Plan<'_>,
    id: NodeId,
    scan: &TttScan,
    checkpoint_every: usize,
    args: &[&Arr<T>],
) -> Result<Value, InterpError> {
    let inv = |m: String| plan.invalid_at(id, m);
    let ns = scan.states.len();
    let n = scan.operand_count();
    if args.len() != n + 1 + ns || scan.axes.len() != n {
        return Err(inv(format!(
            "{} operand(s), expected {}",
            args.len(),
            n + 1 + ns
        )));
    }
    let (Some(step), Some(step_vjp)) = (&scan.step, &scan.step_vjp) else {
        return Err(inv("the scan has no step or step_vjp graph".into()));
    };
    if step.inputs().len() != n || step_vjp.inputs().len() != n + 1 + ns {
        return Err(inv(format!(
            "the step graphs take {} and {} input(s), expected {n} and {}",
            step.inputs().len(),
            step_vjp.inputs().len(),
            n + 1 + ns
        )));
    }
    if step_vjp.outputs().len() != n {
        return Err(inv(format!(
            "step_vjp has {} output(s), expected {n}",
            step_vjp.outputs().len()
        )));
    }
    let mini_batch = scan
        .mini_batch
        .known()
        .ok_or_else(|| inv("the mini-batch size is unbound".into()))?;
    let group = checkpoint_every.max(1);
    let (operands, cts) = args.split_at(n);

    // Extents of the mapped dims.
    let mut per_ext: Vec<Option<usize>> = vec![None; scan.per.len()];
    for (i, (a, axes)) in operands.iter().zip(&scan.axes).enumerate() {
        if axes.per.len() != a.shape.len() {
            return Err(inv(format!("operand {i} does not fit its axis map")));
        }
        for (&d, p) in a.shape.iter().zip(&axes.per) {
            let Some(p) = *p else { continue };
            match per_ext.get_mut(p) {
                Some(slot @ None) => *slot = Some(d),
                Some(Some(prev)) if *prev == d => {}
                _ => return Err(inv(format!("operand {i}: inconsistent mapped axes"))),
            }
        }
    }
    let per_ext = per_ext
        .into_iter()
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| inv("a mapped dim is in no operand".into()))?;
    let nper = per_ext.len();
    let count = numel(&per_ext).map_err(inv)?;
    let lr_operand = operands[n - 1];
    let seq_len = {
        let mut lr_axes = scan.axes[n - 1].per.iter().zip(&lr_operand.shape);
        lr_axes
            .find(|(p, _)| p.is_none())
            .map(|(_, &d)| d)
            .ok_or_else(|| inv("lr has no sequence axis".into()))?
    };

    let base = format!("{}/ttt_vjp%{}", plan.path, id.index());
    let specialized: Vec<(usize, Graph, Graph)> = step_lengths(seq_len, mini_batch)
        .into_iter()
        .map(|k| {
            let bind = BTreeMap::from([(MINI_BATCH_DIM.to_string(), k)]);
            (
                k,
                specialize_graph(step, &bind),
                specialize_graph(step_vjp, &bind),
            )
        })
        .collect();
    let plans = specialized
        .iter()
        .map(|(k, s, v)| {
            Ok(Plans {
                k: *k,
                step: Plan::new(s, format!("{base}/step[$k={k}]"))?,
                vjp: Plan::new(v, format!("{base}/step_vjp[$k={k}]"))?,
            })
        })
        .collect::<Result<Vec<_>, InterpError>>()?;
    let next_index = scan
        .states
        .iter()
        .map(|s| {
            let name = TttScan::next_output_name(s);
            step.outputs()
                .iter()
                .position(|o| o.name == name)
                .ok_or_else(|| inv(format!("the step graph has no output `{name}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let run = Backward {
        plan,
        id,
        plans,
        next_index,
        counts: [
            scan.states.len(),
            scan.params.len(),
            scan.loss_args.len(),
            scan.out_args.len(),
        ],
        mini_batch,
        seq_len,
        group,
        eta_per_token: scan.token_eta == TokenEtaForm::PerToken,
        has_decay: scan.rule.has_carries(),
    };

    let mut grads: Vec<ArrayD<T>> = operands
        .iter()
        .map(|a| ArrayD::from_elem(IxDyn(&a.shape), T::ZERO))
        .collect();
    let mut index = vec![0usize; nper];
    for c in 0..count {
        unravel(c, &per_ext, &mut index);
        let slices = operands
            .iter()
            .zip(&scan.axes)
            .map(|(a, axes)| slice(a, axes, &index))
            .collect::<Result<Vec<_>, _>>()
            .map_err(inv)?;
        let ct_slices = cts
            .iter()
            .map(|a| leading(a, &index))
            .collect::<Result<Vec<_>, _>>()
            .map_err(inv)?;
        let slice_grads = run.slice(slices, ct_slices)?;
        for ((g, axes), sg) in grads.iter_mut().zip(&scan.axes).zip(slice_grads) {
            let mut view = g.view_mut();
            for (axis, p) in axes.per.iter().enumerate().rev() {
                if let Some(p) = *p {
                    view = view.index_axis_move(Axis(axis), index[p]);
                }
            }
            let sg = ArrayViewD::from_shape(IxDyn(&sg.shape), &sg.data)
                .map_err(|e| inv(format!("internal: {e}")))?;
            if view.shape() != sg.shape() {
                return Err(inv(format!(
                    "a slice's cotangent is {:?}, expected {:?}",
                    sg.shape(),
                    view.shape()
                )));
            }
            view.zip_mut_with(&sg, |a, &b| *a = *a + b);
        }
    }
    let parts = grads
        .into_iter()
        .map(|g| {
            let shape = g.shape().to_vec();
            let data = g.into_iter().collect();
            Arr::new(shape, data).map(T::wrap).map_err(inv)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Tuple(parts))
}

/// The sub-array of `a` at `index` over its leading axes (a scan result's mapped axes come
/// first).
fn leading<T: Elem>(a: &Arr<T>, index: &[usize]) -> Result<Arr<T>, String> {
    if a.shape.len() < index.len()
        || a.shape[..index.len()]
            .iter()
            .zip(index)
            .any(|(d, i)| i >= d)
    {
        return Err(format!("mapped index out of range for {:?}", a.shape));
    }
    let rest = a.shape[index.len()..].to_vec();
    let size = numel(&rest)?;
    let mut offset = 0;
    for (d, i) in a.shape.iter().zip(index) {
        offset = offset * d + i;
    }
    let data = a
        .data
        .get(offset * size..(offset + 1) * size)
        .ok_or_else(|| format!("mapped index out of range for {:?}", a.shape))?;
    Arr::new(rest, data.to_vec())
}

/// The backward over one slice.
struct Backward<'p, 'g, 'h> {
    plan: &'p Plan<'g>,
    id: NodeId,
    plans: Vec<Plans<'h>>,
    /// Position of `next_<state>` among the step's outputs, per state.
    next_index: Vec<usize>,
    /// Number of states, params, loss args and out args.
    counts: [usize; 4],
    mini_batch: usize,
    seq_len: usize,
    group: usize,
    /// Whether `token_eta` has a value per token (sliced like `lr`) rather than per position.
    eta_per_token: bool,
    /// Whether a per-token `decay` operand follows `lr` (`momentum_gd`).
    has_decay: bool,
}

impl Backward<'_, '_, '_> {
    fn invalid(&self, message: impl std::fmt::Display) -> InterpError {
        self.plan.invalid_at(self.id, message)
    }

    fn plans(&self, k: usize) -> Result<&Plans<'_>, InterpError> {
        self.plans
            .iter()
            .find(|p| p.k == k)
            .ok_or_else(|| self.invalid(format!("internal: no step graph for k = {k}")))
    }

    /// The step's inputs for mini-batch `m` from state `theta`.
    fn step_inputs<T: Elem>(
        &self,
        m: usize,
        theta: &[Arr<T>],
        slices: &[Arr<T>],
    ) -> Result<(usize, Vec<Value>), InterpError> {
        let [ns, np, nl, no] = self.counts;
        let start = m * self.mini_batch;
        let k = self.mini_batch.min(self.seq_len - start);
        let inv = |e: String| self.invalid(e);
        let mut inputs: Vec<Value> = theta.iter().cloned().map(T::wrap).collect();
        inputs.extend(slices[ns..ns + np].iter().cloned().map(T::wrap));
        for a in &slices[ns + np..ns + np + nl + no] {
            inputs.push(T::wrap(block(a, start, k).map_err(inv)?));
        }
        let (eta, lr) = (&slices[ns + np + nl + no], &slices[ns + np + nl + no + 1]);
        let eta_start = if self.eta_per_token { start } else { 0 };
        inputs.push(T::wrap(block(eta, eta_start, k).map_err(inv)?));
        inputs.push(T::wrap(block(lr, start, k).map_err(inv)?));
        if self.has_decay {
            let decay = slices
                .get(ns + np + nl + no + 2)
                .ok_or_else(|| self.invalid("no decay operand"))?;
            inputs.push(T::wrap(block(decay, start, k).map_err(inv)?));
        }
        Ok((k, inputs))
    }

    /// The state after mini-batch `m` from `theta`.
    fn forward<T: Elem>(
        &self,
        m: usize,
        theta: &[Arr<T>],
        slices: &[Arr<T>],
    ) -> Result<Vec<Arr<T>>, InterpError> {
        let (k, inputs) = self.step_inputs(m, theta, slices)?;
        let outs = self.plans(k)?.step.run(inputs)?;
        self.next_index
            .iter()
            .zip(theta)
            .map(|(&p, th)| {
                outs.get(p)
                    .and_then(T::unwrap)
                    .filter(|t| t.shape == th.shape)
                    .cloned()
                    .ok_or_else(|| self.invalid("the step graph's next state has the wrong type"))
            })
            .collect()
    }

    /// The cotangents of one slice's operands, given its operands and the cotangents of its
    /// results (stacked outputs `[L, ...]`, final states).
    fn slice<T: Elem>(
        &self,
        slices: Vec<Arr<T>>,
        cts: Vec<Arr<T>>,
    ) -> Result<Vec<Arr<T>>, InterpError> {
        let [ns, np, nl, no] = self.counts;
        let (k_max, l) = (self.mini_batch, self.seq_len);
        if k_max == 0 && l > 0 {
            return Err(self.invalid("the mini-batch size is 0"));
        }
        let nmb = l.div_ceil(k_max.max(1));
        let mut grads: Vec<Arr<T>> = slices
            .iter()
            .map(|a| Arr {
                shape: a.shape.clone(),
                data: vec![T::ZERO; a.data.len()],
            })
            .collect();
        let mut cts = cts.into_iter();
        let ct_out = cts
            .next()
            .ok_or_else(|| self.invalid("no cotangent of the outputs"))?;
        let mut d_theta: Vec<Arr<T>> = cts.collect();

        // Forward: the state at the start of every group.
        let mut checkpoints: Vec<Vec<Arr<T>>> = Vec::with_capacity(nmb.div_ceil(self.group));
        let mut theta: Vec<Arr<T>> = slices[..ns].to_vec();
        for m in 0..nmb {
            if m % self.group == 0 {
                checkpoints.push(theta.clone());
            }
            if m + 1 < nmb {
                theta = self.forward(m, &theta, &slices)?;
            }
        }

        for (g, checkpoint) in checkpoints.into_iter().enumerate().rev() {
            let m0 = g * self.group;
            let m1 = (m0 + self.group).min(nmb);
            let mut states = vec![checkpoint];
            for m in m0..m1 - 1 {
                let next = self.forward(m, &states[m - m0], &slices)?;
                states.push(next);
            }
            for m in (m0..m1).rev() {
                let (k, mut inputs) = self.step_inputs(m, &states[m - m0], &slices)?;
                let start = m * k_max;
                inputs.push(T::wrap(
                    block(&ct_out, start, k).map_err(|e| self.invalid(e))?,
                ));
                inputs.extend(d_theta.iter().cloned().map(T::wrap));
                let outs = self.plans(k)?.vjp.run(inputs)?;
                let get = |i: usize| -> Result<&Arr<T>, InterpError> {
                    outs.get(i)
                        .and_then(T::unwrap)
                        .ok_or_else(|| self.invalid(format!("step_vjp output {i} is missing")))
                };
                for (s, d) in d_theta.iter_mut().enumerate() {
                    *d = get(s)?.clone();
                }
                for (p, grad) in grads.iter_mut().enumerate().skip(ns).take(np) {
                    add_into(&mut grad.data, 0, &get(p)?.data, self.invalid("param"))?;
                }
                let first_arg = ns + np;
                for (a, grad) in grads.iter_mut().enumerate().skip(first_arg).take(nl + no) {
                    let d = get(a)?;
                    let row = d.data.len() / k.max(1);
                    add_into(&mut grad.data, start * row, &d.data, self.invalid("arg"))?;
                }
                let eta = first_arg + nl + no;
                add_into(
                    &mut grads[eta].data,
                    if self.eta_per_token { start } else { 0 },
                    &get(eta)?.data,
                    self.invalid("eta"),
                )?;
                let lr = eta + 1;
                add_into(
                    &mut grads[lr].data,
                    start,
                    &get(lr)?.data,
                    self.invalid("lr"),
                )?;
                if self.has_decay {
                    let decay = lr + 1;
                    add_into(
                        &mut grads[decay].data,
                        start,
                        &get(decay)?.data,
                        self.invalid("decay"),
                    )?;
                }
            }
        }
        for (grad, d) in grads.iter_mut().zip(d_theta) {
            if grad.shape != d.shape {
                return Err(self.invalid("a state's cotangent has the wrong shape"));
            }
            grad.data = d.data;
        }
        Ok(grads)
    }
}

/// `dst[offset..offset + src.len()] += src`.
fn add_into<T: Elem>(
    dst: &mut [T],
    offset: usize,
    src: &[T],
    err: InterpError,
) -> Result<(), InterpError> {
    let Some(d) = dst.get_mut(offset..offset + src.len()) else {
        return Err(err);
    };
    for (a, &b) in d.iter_mut().zip(src) {
        *a = *a + b;
    }
    Ok(())
}
