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
//! The step graph's inputs are named after the scan's pieces: the states and params, the
//! token arguments (a token `[1, rest...]` becomes a block `[k, rest...]`, reshaped to
//! `[k, 1, rest...]` before the per-token graphs are batched), then `token_eta` and `lr` (a name
//! already taken gets `$` prefixes; only positions matter to the step's users). Its outputs are
//! `out` `[k, rest...]` and `next_<state>` for every state, as [`TttScan::step`] documents.

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
    for id in program.graph.node_ids() {
        let Some(node) = program.graph.get(id) else {
            continue;
        };
        let Op::Ttt(scan) = &node.op else { continue };
        let step = step_graph(scan, id.index())?;
        if let Some(Op::Ttt(scan)) = program.graph.node_mut(id).map(|n| &mut n.op) {
            scan.step = Some(step);
        }
    }
    Ok(())
}

/// Builds the step graph of one scan (`node` names the scan in errors).
pub fn step_graph(scan: &TttScan, node: usize) -> Result<Graph, LowerScanError> {
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
            scan.states.len(),
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
        let k = self.k.clone();

        // Inputs: states, params (their per-token types, as the gradient graph has them).
        let mut states = Vec::with_capacity(ns);
        let mut state_types = Vec::with_capacity(ns);
        let mut params = Vec::with_capacity(np);
        for (i, name) in scan.states.iter().chain(&scan.params).enumerate() {
            let ty = self.input_type(grad, "gradient", i)?;
            let out_ty = self.input_type(&scan.out, "output", i)?;
            if ty != out_ty {
                return Err(self.malformed(format!(
                    "`{name}` is {ty} in the gradient graph but {out_ty} in the output graph"
                )));
            }
            let id = self.input(name, ty.clone())?;
            if i < ns {
                states.push(id);
                state_types.push(ty);
            } else {
                params.push(id);
            }
        }
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
        let name = self.free_name("token_eta");
        let token_eta = self.input(&name, rate.clone())?;
        let name = self.free_name("lr");
        let lr = self.input(&name, rate)?;

        // G_s: every state's gradient, one row per token, all at the same θ.
        let mut grad_inputs = states.clone();
        grad_inputs.extend(&params);
        grad_inputs.extend(&loss_rows);
        let mut flags = vec![false; ns + np];
        flags.resize(ns + np + nl, true);
        let grads_all = batch_graph(grad, &flags, &k, &mut self.g, &grad_inputs)
            .map_err(|e| self.batch_err("grad", e))?;
        let mut grads = Vec::with_capacity(ns);
        for s in &scan.states {
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

        // eta[i, j] = token_eta[i] * lr[j] for j <= i, else 0.
        let col = self.reshape(token_eta, vec![k.clone(), Dim::Known(1)])?;
        let row = self.reshape(lr, vec![Dim::Known(1), k.clone()])?;
        let rates = self.binary(BinaryOp::Mul, col, row)?;
        let iota = self.leaf(Op::Iota { len: k.clone() }, dtype)?;
        let i_col = self.reshape(iota, vec![k.clone(), Dim::Known(1)])?;
        let j_row = self.reshape(iota, vec![Dim::Known(1), k.clone()])?;
        let diff = self.binary(BinaryOp::Sub, i_col, j_row)?;
        let mask = self.step_plus(diff, 0.5, dtype)?;
        let eta = self.binary(BinaryOp::Mul, rates, mask)?;

        // θ_i for every token: θ − Σ_j eta[i, j] g_j.
        let mut theta_all = Vec::with_capacity(ns);
        for (&theta, &g) in states.iter().zip(&grads) {
            let mixed = self.add(Op::Mix, &[eta, g])?;
            theta_all.push(self.binary(BinaryOp::Sub, theta, mixed)?);
        }

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

        // The next state: θ − Σ_j eta[k−1, j] g_j, the last row taken as onehot(k−1) @ eta.
        let extent = self.leaf(Op::Extent { dim: k.clone() }, dtype)?;
        let from_last = self.binary(BinaryOp::Sub, iota, extent)?;
        let onehot = self.step_plus(from_last, 1.5, dtype)?;
        let onehot = self.reshape(onehot, vec![Dim::Known(1), k.clone()])?;
        let last = self.add(Op::MatMul, &[onehot, eta])?;
        for ((s, &theta), (&g, ty)) in scan
            .states
            .iter()
            .zip(&states)
            .zip(grads.iter().zip(&state_types))
        {
            let mixed = self.add(Op::Mix, &[last, g])?;
            let mixed = self.reshape(mixed, ty.shape.0.clone())?;
            let next = self.binary(BinaryOp::Sub, theta, mixed)?;
            self.g.add_output(&TttScan::next_output_name(s), next);
        }
        Ok(())
    }
}
