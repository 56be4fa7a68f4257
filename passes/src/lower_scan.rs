//! Lowering a scan to its mini-batch step graph (the primal form).
//!
//! [`LowerScan`] fills [`TttScan::step`] of every `ttt` node: one graph that runs a whole
//! mini-batch of `k` tokens ([`MINI_BATCH_DIM`]), vectorized over the block with
//! [`crate::batch`], with the literal meaning of the update rule (one state per token):
//!
//! ```text
//! G_s       = batched grad(θ, params, loss-arg blocks)          [k, state_s...]
//! eta       = (token_eta[:, None] * lr[None, :]) ⊙ tril          [k, k]
//! θall_s    = θ_s − mix(eta, G_s)                                [k, state_s...]
//! out       = batched out(θall, params, out-arg blocks)          [k, rest...]
//! next_s    = θ_s − mix(eta[k−1, :], G_s)                        [state_s...]
//! ```
//!
//! The lower-triangular mask is `step(i − j + 0.5)` over `iota(k)`, and the last row of `eta`
//! is taken without slicing, as `onehot(k − 1) @ eta` with `onehot[i] = step(i − (k − 1) + 0.5)`.
//! Nothing depends on the inner model: any number of states, params and token arguments of any
//! shapes.
//!
//! Under `momentum_gd` (see `tttc_ir::scan`) the step graph also takes the carries `S_s` (after
//! the states) and `decay` (after `lr`), and computes the chunked form, with `a = 1 − decay`,
//! `η` the momentum, `ρ` the learning rate and `Q^x[i, m] = Π_{m<l<=i} x_l` (lower-triangular,
//! 1 on the diagonal) the segment products:
//!
//! ```text
//! P^a[i]   = Q^a[i, 0] a_0,  P^η[i] = Q^η[i, 0] η_0         [k]   (products from the start)
//! c        = Q^a @ P^η                                      [k]   (the carry's weight)
//! M        = Q^a @ (Q^η ⊙ ρ[None, :])                       [k, k] (lower-triangular)
//! θall_s   = P^a ⊙ θ_s + c ⊙ S_s − mix(M, G_s)
//! next_s   = last rows of the same;  next S_s = P^η[k−1] S_s − mix((Q^η ⊙ ρ)[k−1, :], G_s)
//! ```
//!
//! `M[i, j] = ρ_j Σ_{j<=m<=i} Π_{m<l<=i} a_l Π_{j<l<=m} η_l`: the sum over `m` is the matrix
//! product of the two lower-triangular segment-product matrices. The segment products are
//! running products by Hillis–Steele doubling (`⌈log2 K⌉` rounds of a shift and a multiply on
//! `[k, k]`), never `exp(cumsum(log))`, so momentum and decay factors may be zero or negative.
//! With `η = α = 0`: `Q^a` is the lower mask, `Q^η` the identity, `c = 0`, `M[i, j] = ρ_j`:
//! `minibatch_gd` with `token_eta = 1`.
//!
//! The step graph's inputs are named after the scan's pieces: the states and params, the
//! token arguments (a token `[1, rest...]` becomes a block `[k, rest...]`, reshaped to
//! `[k, 1, rest...]` before the per-token graphs are batched), then `token_eta` and `lr` (a name
//! already taken gets `$` prefixes; only positions matter to the step's users). Its outputs are
//! `out` `[k, rest...]` and `next_<state>` for every state, as [`TttScan::step`] documents.

mod rule;

use std::collections::BTreeMap;
use tttc_ir::scan::DEFAULT_DOUBLING_ROUNDS;
use tttc_ir::{
    BinaryOp, DType, Dim, Graph, GraphError, NodeId, Op, Program, Shape, TensorType, TttScan,
    UnaryOp, MINI_BATCH_DIM,
};

use crate::batch::{batch_graph, BatchError};
use crate::{Pass, PassError};

/// The scan-lowering pass (`"primal"`): builds [`TttScan::step`] for every `ttt` node of the
/// main graph (see the module doc). Needs the gradient graphs (run [`crate::Autodiff`] first).
#[derive(Clone, Copy, Debug, Default)]
pub struct LowerScan;

/// Why a scan could not be lowered.
#[derive(Debug, thiserror::Error)]
pub enum LowerScanError {
    /// The scan has no gradient graph.
    #[error(
        "`ttt` node %{node} (inner model `{model}`) has no gradient graph; run the autodiff \
         pass before `primal`"
    )]
    MissingGradient {
        /// The `ttt` node's index in the main graph.
        node: usize,
        /// The inner model's name.
        model: String,
    },
    /// The scan's inner graphs do not have the documented form.
    #[error("`ttt` node %{node} (inner model `{model}`): {message}")]
    Malformed {
        /// The `ttt` node's index in the main graph.
        node: usize,
        /// The inner model's name.
        model: String,
        /// What is wrong.
        message: String,
    },
    /// Batching an inner graph failed.
    #[error("`ttt` node %{node} (inner model `{model}`), batching the {graph} graph: {source}")]
    Batch {
        /// The `ttt` node's index in the main graph.
        node: usize,
        /// The inner model's name.
        model: String,
        /// Which inner graph (`grad`, `out`).
        graph: &'static str,
        /// What went wrong.
        #[source]
        source: BatchError,
    },
    /// Building a node of the step graph failed (a compiler bug).
    #[error("`ttt` node %{node} (inner model `{model}`), building the step graph: {source}")]
    Ir {
        /// The `ttt` node's index in the main graph.
        node: usize,
        /// The inner model's name.
        model: String,
        /// What went wrong.
        #[source]
        source: GraphError,
    },
}

impl Pass for LowerScan {
    fn name(&self) -> &'static str {
        "primal"
    }

    fn run(&self, program: &mut Program) -> Result<(), PassError> {
        lower_scans(program).map_err(|e| PassError::Failed {
            pass: "primal",
            source: Box::new(e),
        })
    }
}

/// Fills [`TttScan::step`] of every `ttt` node of `program.graph` (see the module doc).
pub fn lower_scans(program: &mut Program) -> Result<(), LowerScanError> {
    let configs = program.int_configs();
    for id in program.graph.node_ids() {
        let Some(node) = program.graph.get(id) else {
            continue;
        };
        let Op::Ttt(scan) = &node.op else { continue };
        let rounds = doubling_rounds(&scan.mini_batch, &configs);
        let step = step_graph(scan, id.index(), rounds)?;
        if let Some(Op::Ttt(scan)) = program.graph.node_mut(id).map(|n| &mut n.op) {
            scan.step = Some(step);
            if scan.rule.has_carries() {
                scan.doubling_rounds = Some(rounds);
            }
        }
    }
    Ok(())
}

/// Builds the step graph of one scan (`node` names the scan in errors); `momentum_gd`'s
/// segment products take `rounds` doubling rounds ([`doubling_rounds`]; the caller records
/// them in [`TttScan::doubling_rounds`]).
pub fn step_graph(scan: &TttScan, node: usize, rounds: usize) -> Result<Graph, LowerScanError> {
    let grad = scan
        .grad
        .as_ref()
        .ok_or_else(|| LowerScanError::MissingGradient {
            node,
            model: scan.model.clone(),
        })?;
    let mut b = StepBuilder {
        scan,
        node,
        g: Graph::new(),
        k: Dim::sym(MINI_BATCH_DIM),
        rounds,
    };
    b.build(grad)?;
    Ok(b.g)
}

/// Builds one step graph.
struct StepBuilder<'a> {
    scan: &'a TttScan,
    /// The scan's index in the main graph, for errors.
    node: usize,
    g: Graph,
    k: Dim,
    /// Doubling rounds of the segment products.
    rounds: usize,
}

impl StepBuilder<'_> {
    fn malformed(&self, message: impl Into<String>) -> LowerScanError {
        LowerScanError::Malformed {
            node: self.node,
            model: self.scan.model.clone(),
            message: message.into(),
        }
    }

    fn ir(&self, source: GraphError) -> LowerScanError {
        LowerScanError::Ir {
            node: self.node,
            model: self.scan.model.clone(),
            source,
        }
    }

    fn batch_err(&self, graph: &'static str, source: BatchError) -> LowerScanError {
        LowerScanError::Batch {
            node: self.node,
            model: self.scan.model.clone(),
            graph,
            source,
        }
    }

    fn add(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId, LowerScanError> {
        self.g.add(op, operands).map_err(|e| self.ir(e))
    }

    fn leaf(&mut self, op: Op, dtype: DType) -> Result<NodeId, LowerScanError> {
        self.g.add_leaf(op, dtype).map_err(|e| self.ir(e))
    }

    fn input(&mut self, name: &str, ty: TensorType) -> Result<NodeId, LowerScanError> {
        self.g.add_input(name, ty).map_err(|e| self.ir(e))
    }

    fn binary(&mut self, fun: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId, LowerScanError> {
        self.add(Op::Binary { fun }, &[a, b])
    }

    fn reshape(&mut self, x: NodeId, dims: Vec<Dim>) -> Result<NodeId, LowerScanError> {
        self.add(Op::Reshape { shape: Shape(dims) }, &[x])
    }

    /// `step(x + c)`.
    fn step_plus(&mut self, x: NodeId, c: f64, dtype: DType) -> Result<NodeId, LowerScanError> {
        let c = self.g.add_const(c, dtype);
        let s = self.binary(BinaryOp::Add, x, c)?;
        self.add(Op::Unary { fun: UnaryOp::Step }, &[s])
    }

    /// The type of input `i` of an inner graph.
    fn input_type(
        &self,
        graph: &Graph,
        which: &str,
        i: usize,
    ) -> Result<TensorType, LowerScanError> {
        graph
            .inputs()
            .get(i)
            .and_then(|&id| graph.tensor_type(id))
            .cloned()
            .ok_or_else(|| self.malformed(format!("the {which} graph lacks input #{i}")))
    }

    /// A block input `[k, rest...]` for a token argument of per-token type `[1, rest...]`,
    /// and that block reshaped to `[k, 1, rest...]` (the batched form of one token).
    fn token_block(
        &mut self,
        name: &str,
        token: &TensorType,
    ) -> Result<(NodeId, NodeId), LowerScanError> {
        let Some((first, rest)) = token.shape.0.split_first() else {
            return Err(self.malformed(format!(
                "token argument `{name}` is a scalar, not a row [1, ...]"
            )));
        };
        if *first != Dim::Known(1) {
            return Err(self.malformed(format!(
                "token argument `{name}` has shape {}, not a row [1, ...]",
                token.shape
            )));
        }
        let mut block = vec![self.k.clone()];
        block.extend(rest.iter().cloned());
        // The DSL keeps token-argument names distinct; a hand-built scan might not.
        let unique = self.free_name(name);
        let input = self.input(&unique, TensorType::new(token.dtype, Shape(block)))?;
        let mut rows = vec![self.k.clone()];
        rows.extend(token.shape.0.iter().cloned());
        let rows = self.reshape(input, rows)?;
        Ok((input, rows))
    }

    /// `preferred`, or `preferred` behind as many `$` as it takes to name no input yet.
    fn free_name(&self, preferred: &str) -> String {
        let mut name = preferred.to_string();
        while self.g.input_by_name(&name).is_some() {
            name = format!("${name}");
        }
        name
    }

    fn build(&mut self, grad: &Graph) -> Result<(), LowerScanError> {
        let scan = self.scan;
        let (ns, np, nl, no) = (
            scan.model_state_count(),
            scan.params.len(),
            scan.loss_args.len(),
            scan.out_args.len(),
        );
        if grad.inputs().len() != ns + np + nl {
            return Err(self.malformed(format!(
                "the gradient graph takes {} input(s), expected {} (states, params, loss args)",
                grad.inputs().len(),
                ns + np + nl
            )));
        }
        if scan.out.inputs().len() != ns + np + no {
            return Err(self.malformed(format!(
                "the output graph takes {} input(s), expected {} (states, params, out args)",
                scan.out.inputs().len(),
                ns + np + no
            )));
        }
        let momentum = scan.rule.has_carries();
        if momentum && scan.states.len() != 2 * ns {
            return Err(self.malformed("a rule with carries needs one carry per state"));
        }
        let k = self.k.clone();

        // Inputs: the model's states, the rule's carries, params (their per-token types, as the
        // gradient graph has them).
        let mut states = Vec::with_capacity(ns);
        let mut state_types = Vec::with_capacity(ns);
        let mut params = Vec::with_capacity(np);
        let model_states = scan.model_states();
        for (i, name) in model_states.iter().chain(&scan.params).enumerate() {
            let ty = self.input_type(grad, "gradient", i)?;
            let out_ty = self.input_type(&scan.out, "output", i)?;
            if ty != out_ty {
                return Err(self.malformed(format!(
                    "`{name}` is {ty} in the gradient graph but {out_ty} in the output graph"
                )));
            }
            if i == ns && momentum {
                for (carry, ty) in scan.states[ns..].iter().zip(state_types.clone()) {
                    let id = self.input(carry, ty)?;
                    states.push(id);
                }
            }
            let id = self.input(name, ty.clone())?;
            if i < ns {
                states.push(id);
                state_types.push(ty);
            } else {
                params.push(id);
            }
        }
        if momentum && np == 0 {
            for (carry, ty) in scan.states[ns..].iter().zip(state_types.clone()) {
                let id = self.input(carry, ty)?;
                states.push(id);
            }
        }
        let (states, carries) = states.split_at(ns);
        let (states, carries) = (states.to_vec(), carries.to_vec());
        let dtype = match grad.inputs().first().and_then(|&i| grad.tensor_type(i)) {
            Some(t) => t.dtype,
            None => return Err(self.malformed("the gradient graph has no input")),
        };
        // Token-argument blocks.
        let mut loss_rows = Vec::with_capacity(nl);
        for (i, name) in scan.loss_args.iter().enumerate() {
            let token = self.input_type(grad, "gradient", ns + np + i)?;
            loss_rows.push(self.token_block(name, &token)?.1);
        }
        let mut out_rows = Vec::with_capacity(no);
        for (i, name) in scan.out_args.iter().enumerate() {
            let token = self.input_type(&scan.out, "output", ns + np + i)?;
            out_rows.push(self.token_block(name, &token)?.1);
        }
        let rate = TensorType::new(dtype, Shape(vec![k.clone()]));
        let name = self.free_name(if momentum { "momentum" } else { "token_eta" });
        let token_eta = self.input(&name, rate.clone())?;
        let name = self.free_name("lr");
        let lr = self.input(&name, rate.clone())?;
        let decay = if momentum {
            let name = self.free_name("decay");
            Some(self.input(&name, rate)?)
        } else {
            None
        };

        // G_s: every state's gradient, one row per token, all at the same θ.
        let mut grad_inputs = states.clone();
        grad_inputs.extend(&params);
        grad_inputs.extend(&loss_rows);
        let mut flags = vec![false; ns + np];
        flags.resize(ns + np + nl, true);
        let grads_all = batch_graph(grad, &flags, &k, &mut self.g, &grad_inputs)
            .map_err(|e| self.batch_err("grad", e))?;
        let mut grads = Vec::with_capacity(ns);
        for s in model_states {
            let name = TttScan::grad_output_name(s);
            let pos = grad
                .outputs()
                .iter()
                .position(|o| o.name == name)
                .ok_or_else(|| self.malformed(format!("the gradient graph has no `{name}`")))?;
            let g = grads_all[pos];
            let want = TensorType::new(dtype, {
                let mut dims = vec![k.clone()];
                dims.extend(state_types[grads.len()].shape.0.iter().cloned());
                Shape(dims)
            });
            if self.g.tensor_type(g) != Some(&want) {
                return Err(self.malformed(format!(
                    "`{name}` is not of the state's type (batched: {want})"
                )));
            }
            grads.push(g);
        }

        // The per-token states; under minibatch_gd the next states are built after the
        // outputs (the order of the step graph's nodes, as the snapshots show it).
        let (theta_all, rule) = match (decay, scan.rule.linear()) {
            (None, _) => {
                let (theta_all, eta, iota) =
                    self.gd_states(&states, &grads, token_eta, lr, dtype)?;
                (theta_all, Pending::Gd { eta, iota })
            }
            (Some(decay), Some(rule)) => {
                let (theta_all, nexts) = self.rule_states(
                    rule,
                    &states,
                    &carries,
                    &grads,
                    &state_types,
                    &[token_eta, lr, decay],
                    dtype,
                )?;
                (theta_all, Pending::Done(nexts))
            }
            (Some(decay), None) => {
                let iota = self.leaf(Op::Iota { len: k.clone() }, dtype)?;
                let onehot = self.last_row_selector(iota, dtype)?;
                let c = Coefficients {
                    momentum: token_eta,
                    lr,
                    decay,
                    iota,
                    onehot,
                    dtype,
                };
                let (theta_all, nexts) =
                    self.momentum_states(&states, &carries, &grads, &state_types, c)?;
                (theta_all, Pending::Done(nexts))
            }
        };

        // z_i = out(θ_i; token i).
        let mut out_inputs = theta_all;
        out_inputs.extend(&params);
        out_inputs.extend(&out_rows);
        let mut flags = vec![true; ns];
        flags.resize(ns + np, false);
        flags.resize(ns + np + no, true);
        let outs = batch_graph(&scan.out, &flags, &k, &mut self.g, &out_inputs)
            .map_err(|e| self.batch_err("out", e))?;
        let Some(&z) = outs.first() else {
            return Err(self.malformed("the output graph has no output"));
        };
        let z_ty = self
            .g
            .tensor_type(z)
            .cloned()
            .ok_or_else(|| self.malformed("the output is not a tensor"))?;
        // [k, 1, rest...] -> [k, rest...].
        if z_ty.shape.0.get(1) != Some(&Dim::Known(1)) {
            return Err(self.malformed(format!(
                "a token's output must be a row [1, ...], got {}",
                Shape(z_ty.shape.0[1..].to_vec())
            )));
        }
        let mut dims = vec![k.clone()];
        dims.extend(z_ty.shape.0[2..].iter().cloned());
        let z = self.reshape(z, dims)?;
        self.g.add_output("out", z);
        let nexts = match rule {
            Pending::Gd { eta, iota } => {
                let onehot = self.last_row_selector(iota, dtype)?;
                self.gd_next(&states, &grads, &state_types, eta, onehot)?
            }
            Pending::Done(nexts) => nexts,
        };
        for (s, next) in scan.states.iter().zip(nexts) {
            self.g.add_output(&TttScan::next_output_name(s), next);
        }
        Ok(())
    }

    /// `minibatch_gd`: the per-token states `θ − mix(eta, G)` with `eta[i, j] = token_eta[i]
    /// lr[j]` for `j <= i`, `eta` and `iota(k)`.
    fn gd_states(
        &mut self,
        states: &[NodeId],
        grads: &[NodeId],
        token_eta: NodeId,
        lr: NodeId,
        dtype: DType,
    ) -> Result<(Vec<NodeId>, NodeId, NodeId), LowerScanError> {
        let k = self.k.clone();
        // eta[i, j] = token_eta[i] * lr[j] for j <= i, else 0.
        let col = self.reshape(token_eta, vec![k.clone(), Dim::Known(1)])?;
        let row = self.reshape(lr, vec![Dim::Known(1), k.clone()])?;
        let rates = self.binary(BinaryOp::Mul, col, row)?;
        let iota = self.leaf(Op::Iota { len: k.clone() }, dtype)?;
        let diff = self.index_diff(iota)?;
        let mask = self.step_plus(diff, 0.5, dtype)?;
        let eta = self.binary(BinaryOp::Mul, rates, mask)?;

        // θ_i for every token: θ − Σ_j eta[i, j] g_j.
        let mut theta_all = Vec::with_capacity(states.len());
        for (&theta, &g) in states.iter().zip(grads) {
            let mixed = self.add(Op::Mix, &[eta, g])?;
            theta_all.push(self.binary(BinaryOp::Sub, theta, mixed)?);
        }
        Ok((theta_all, eta, iota))
    }

    /// `minibatch_gd`'s next states: `θ − Σ_j eta[k−1, j] g_j`.
    fn gd_next(
        &mut self,
        states: &[NodeId],
        grads: &[NodeId],
        state_types: &[TensorType],
        eta: NodeId,
        onehot: NodeId,
    ) -> Result<Vec<NodeId>, LowerScanError> {
        let last = self.add(Op::MatMul, &[onehot, eta])?;
        let mut nexts = Vec::with_capacity(states.len());
        for ((&theta, &g), ty) in states.iter().zip(grads).zip(state_types) {
            let mixed = self.add(Op::Mix, &[last, g])?;
            let mixed = self.reshape(mixed, ty.shape.0.clone())?;
            nexts.push(self.binary(BinaryOp::Sub, theta, mixed)?);
        }
        Ok(nexts)
    }

    /// The last row of a `[k, n]` matrix is taken without slicing, as `onehot(k − 1) @ m` with
    /// `onehot[i] = step(i − (k − 1) + 0.5)`: this `[1, k]` selector.
    fn last_row_selector(&mut self, iota: NodeId, dtype: DType) -> Result<NodeId, LowerScanError> {
        let k = self.k.clone();
        let extent = self.leaf(Op::Extent { dim: k.clone() }, dtype)?;
        let from_last = self.binary(BinaryOp::Sub, iota, extent)?;
        let onehot = self.step_plus(from_last, 1.5, dtype)?;
        self.reshape(onehot, vec![Dim::Known(1), k])
    }

    /// `i − j` over `[k, k]` (exact small integers).
    fn index_diff(&mut self, iota: NodeId) -> Result<NodeId, LowerScanError> {
        let k = self.k.clone();
        let i_col = self.reshape(iota, vec![k.clone(), Dim::Known(1)])?;
        let j_row = self.reshape(iota, vec![Dim::Known(1), k])?;
        self.binary(BinaryOp::Sub, i_col, j_row)
    }

    /// The segment products of `x [k]`: `Q[i, m] = Π_{m < l <= i} x_l` for `m <= i` (1 on the
    /// diagonal), 0 above it, as running products: column `m` is the inclusive prefix product
    /// over `i` of `y[i, m] = x_i` (`i > m`), `1` (`i <= m`), by Hillis–Steele doubling
    /// (`y ← y ⊙ shift(y, by = 1, 2, 4, ...)`, the shifted-in rows 1). Only multiplications by
    /// the factors and by exact 0/1 masks: zero and negative factors are fine (no `exp ∘ log`).
    /// `self.rounds` ([`doubling_rounds`]) cover the mini-batch; a round whose shift is at least `k`
    /// multiplies by 1.
    fn segment_products(
        &mut self,
        x: NodeId,
        iota: NodeId,
        dtype: DType,
    ) -> Result<NodeId, LowerScanError> {
        let k = self.k.clone();
        let diff = self.index_diff(iota)?;
        let above = self.step_plus(diff, -0.5, dtype)?; // i > m
        let lower = self.step_plus(diff, 0.5, dtype)?; // i >= m
        let one = self.g.add_const(1.0, dtype);
        let not_above = self.binary(BinaryOp::Sub, one, above)?;
        let x_col = self.reshape(x, vec![k.clone(), Dim::Known(1)])?;
        let picked = self.binary(BinaryOp::Mul, above, x_col)?;
        let mut y = self.binary(BinaryOp::Add, picked, not_above)?;
        let i_col = self.reshape(iota, vec![k.clone(), Dim::Known(1)])?;
        for r in 0..self.rounds {
            let by = 1usize << r;
            let shifted = self.add(Op::Shift { axis: 0, by }, &[y])?;
            // Rows i < by are shifted in as 0; make them 1: shifted + (1 − [i >= by]).
            let inside = self.step_plus(i_col, 0.5 - by as f64, dtype)?;
            let outside = self.binary(BinaryOp::Sub, one, inside)?;
            let shifted = self.binary(BinaryOp::Add, shifted, outside)?;
            y = self.binary(BinaryOp::Mul, y, shifted)?;
        }
        self.binary(BinaryOp::Mul, y, lower)
    }

    /// `x [k]` as per-row scales of a per-token state: `[k, 1, ..., 1]` with the state's rank.
    fn row_scale(&mut self, x: NodeId, ty: &TensorType) -> Result<NodeId, LowerScanError> {
        let mut dims = vec![self.k.clone()];
        dims.extend(std::iter::repeat_n(Dim::Known(1), ty.shape.rank()));
        self.reshape(x, dims)
    }

    /// `onehot(k − 1) @ x` for `x [k, 1]`, as a scalar `[]`.
    fn last_scalar(&mut self, onehot: NodeId, x: NodeId) -> Result<NodeId, LowerScanError> {
        let last = self.add(Op::MatMul, &[onehot, x])?;
        self.reshape(last, Vec::new())
    }

    /// `momentum_gd` in chunked form (see the module doc): the per-token states and the next
    /// states and carries.
    fn momentum_states(
        &mut self,
        states: &[NodeId],
        carries: &[NodeId],
        grads: &[NodeId],
        state_types: &[TensorType],
        c: Coefficients,
    ) -> Result<(Vec<NodeId>, Vec<NodeId>), LowerScanError> {
        let k = self.k.clone();
        let dtype = c.dtype;
        let one = self.g.add_const(1.0, dtype);
        let keep = self.binary(BinaryOp::Sub, one, c.decay)?; // a = 1 − α
        let qa = self.segment_products(keep, c.iota, dtype)?;
        let qe = self.segment_products(c.momentum, c.iota, dtype)?;
        // Column 0 times the first factor: P^x(0..i) = x_0 Q^x[i, 0].
        let neg_iota = self.add(Op::Unary { fun: UnaryOp::Neg }, &[c.iota])?;
        let first_only = self.step_plus(neg_iota, 0.5, dtype)?; // 1 at i = 0
        let a0 = self.binary(BinaryOp::Mul, keep, first_only)?;
        let a0 = self.reshape(a0, vec![k.clone(), Dim::Known(1)])?;
        let pa = self.add(Op::MatMul, &[qa, a0])?; // [k, 1]: P^a(0..i)
        let e0 = self.binary(BinaryOp::Mul, c.momentum, first_only)?;
        let e0 = self.reshape(e0, vec![k.clone(), Dim::Known(1)])?;
        let pe = self.add(Op::MatMul, &[qe, e0])?; // [k, 1]: P^η(0..i)
        let carry = self.add(Op::MatMul, &[qa, pe])?; // [k, 1]: c_i
        let lr_row = self.reshape(c.lr, vec![Dim::Known(1), k.clone()])?;
        let qe_lr = self.binary(BinaryOp::Mul, qe, lr_row)?; // P^η(j+1..m) ρ_j
        let mixing = self.add(Op::MatMul, &[qa, qe_lr])?; // M[i, j]

        let mut theta_all = Vec::with_capacity(states.len());
        for (((&w, &s), &g), ty) in states.iter().zip(carries).zip(grads).zip(state_types) {
            let pa_rows = self.row_scale(pa, ty)?;
            let c_rows = self.row_scale(carry, ty)?;
            let decayed = self.binary(BinaryOp::Mul, pa_rows, w)?;
            let carried = self.binary(BinaryOp::Mul, c_rows, s)?;
            let start = self.binary(BinaryOp::Add, decayed, carried)?;
            let mixed = self.add(Op::Mix, &[mixing, g])?;
            theta_all.push(self.binary(BinaryOp::Sub, start, mixed)?);
        }

        // The last row: W' = P^a(0..k−1) W + c_{k−1} S − Σ_j M[k−1, j] g_j and
        // S' = P^η(0..k−1) S − Σ_j P^η(j+1..k−1) ρ_j g_j.
        let pa_last = self.last_scalar(c.onehot, pa)?;
        let c_last = self.last_scalar(c.onehot, carry)?;
        let pe_last = self.last_scalar(c.onehot, pe)?;
        let m_last = self.add(Op::MatMul, &[c.onehot, mixing])?;
        let s_last = self.add(Op::MatMul, &[c.onehot, qe_lr])?;
        let mut next_w = Vec::with_capacity(states.len());
        let mut next_s = Vec::with_capacity(states.len());
        for (((&w, &s), &g), ty) in states.iter().zip(carries).zip(grads).zip(state_types) {
            let decayed = self.binary(BinaryOp::Mul, pa_last, w)?;
            let carried = self.binary(BinaryOp::Mul, c_last, s)?;
            let start = self.binary(BinaryOp::Add, decayed, carried)?;
            let mixed = self.add(Op::Mix, &[m_last, g])?;
            let mixed = self.reshape(mixed, ty.shape.0.clone())?;
            next_w.push(self.binary(BinaryOp::Sub, start, mixed)?);
            let kept = self.binary(BinaryOp::Mul, pe_last, s)?;
            let mixed = self.add(Op::Mix, &[s_last, g])?;
            let mixed = self.reshape(mixed, ty.shape.0.clone())?;
            next_s.push(self.binary(BinaryOp::Sub, kept, mixed)?);
        }
        next_w.extend(next_s);
        Ok((theta_all, next_w))
    }
}

/// What is left to build after the outputs: `minibatch_gd`'s next states (from `eta`), or
/// nothing (`momentum_gd`'s are built with its per-token states).
enum Pending {
    /// `minibatch_gd`: its step sizes `eta [k, k]`, whose last row gives the next states, and
    /// `iota(k)`.
    Gd { eta: NodeId, iota: NodeId },
    /// `momentum_gd`: the next states and buffers, already built.
    Done(Vec<NodeId>),
}

/// The per-token coefficient blocks of `momentum_gd` in a step graph, and helpers.
struct Coefficients {
    /// `η [k]`.
    momentum: NodeId,
    /// `ρ [k]`.
    lr: NodeId,
    /// `α [k]`.
    decay: NodeId,
    /// `iota(k)`.
    iota: NodeId,
    /// `onehot(k − 1)` as `[1, k]`.
    onehot: NodeId,
    dtype: DType,
}

/// How many doubling rounds the segment products of `momentum_gd` take: enough for a mini-batch
/// of `K` tokens (`2^rounds >= K`) when `K` is known when the step graph is built (a number, or
/// an integer config of the program: `configs` holds their values), else
/// [`DEFAULT_DOUBLING_ROUNDS`] (a larger `K` is refused where the step runs: the interpreter
/// and the kernel lowering check [`TttScan::max_mini_batch`]). A round costs about `3K²`
/// operations on `[K, K]`.
pub fn doubling_rounds(mini_batch: &Dim, configs: &BTreeMap<String, usize>) -> usize {
    let known = match mini_batch {
        Dim::Sym(name) => configs.get(name).copied(),
        d => d.known(),
    };
    match known {
        Some(k) => {
            let mut r = 0;
            while (1usize << r) < k {
                r += 1;
            }
            r
        }
        None => DEFAULT_DOUBLING_ROUNDS,
    }
}
