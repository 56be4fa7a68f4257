//! Reverse-mode automatic differentiation as a graph-to-graph transformation.
//!
//! [`gradient_graph`] takes a graph with a scalar output and builds a *new* ordinary IR graph
//! that has the same inputs and whose outputs are the gradients of that scalar with respect to
//! chosen inputs. The new graph is built only through [`Graph::add`], [`Graph::add_input`],
//! [`Graph::add_const`] and [`Graph::add_leaf`], so every node's type is inferred and checked as
//! it is created.
//!
//! The construction is the textbook one:
//!
//! 1. Find the *active* nodes: those on a path from a `wrt` input to the output (ancestors of
//!    the output that depend on a `wrt` input). Only they get adjoints.
//! 2. Seed the output's adjoint with `1` and visit the active nodes in reverse topological
//!    order; each node's adjoint is pushed to its active operands with the op's derivative
//!    rule, written as IR. Contributions to one operand are accumulated with `add`.
//! 3. The forward values a rule needs (an operand `x`, the node's own result `y`) are copied
//!    from the source graph on demand, together with whatever they depend on, and each is copied
//!    once: the gradient graph reuses forward values instead of recomputing them.
//!
//! Broadcasting is undone with `sum_to`: every contribution is reduced to its operand's shape
//! when the shapes differ. Shapes may be symbolic; the only place that needs an extent as a
//! *value* is the mean's divisor, which for a symbolic extent `n` is an `extent n` leaf.
//!
//! The leaves `const`, `extent` and `iota` are constants: they have no operands and no
//! gradient. `step` and `floor` are piecewise constant, so their derivative is taken to be zero
//! (no contribution at all). `permute` is a pure reordering of axes, so its adjoint is `permute`
//! with the inverse permutation.
//!
//! A `wrt` input that the output does not depend on (or that only reaches it through `step` or
//! `floor`, whose derivatives are zero) gets a zero gradient: `expand(0, shape)`.
//! [`untrained_states`] finds the states of a program whose gradient is identically zero (that
//! way, or through terms such as `0 * x`), which training would silently never change.

use std::collections::{BTreeMap, BTreeSet};

use tttc_ir::{
    BinaryOp, DType, Dim, Graph, GraphError, NodeId, Op, Program, ReduceOp, Shape, TensorType,
    TttScan, UnaryOp,
};

/// Why a gradient graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AutodiffError {
    /// The graph has no output of the requested name.
    #[error("the graph has no output named `{0}`")]
    OutputNotFound(String),
    /// The differentiated output is not a scalar (or a one-element tensor).
    #[error("output `{name}` must be a scalar to be differentiated, but it is {ty}")]
    OutputNotScalar {
        /// The output's name.
        name: String,
        /// Its type, as printed.
        ty: String,
    },
    /// A name in `wrt` is not an input of the graph.
    #[error("`{0}` is not an input of the graph, so no gradient can be taken with respect to it")]
    UnknownWrt(String),
    /// A name appears twice in `wrt` (the gradient outputs would share a name).
    #[error("input `{0}` is listed twice in the gradient's inputs")]
    DuplicateWrt(String),
    /// The path from a `wrt` input to the output goes through an op that has no derivative
    /// rule (a nested `ttt` scan, or `get` on its result).
    #[error("cannot differentiate through `{op}` (node %{node})")]
    NotDifferentiable {
        /// The op's name.
        op: &'static str,
        /// The node's index in the source graph.
        node: usize,
    },
    /// Building a node of the gradient graph failed (a derivative rule produced an ill-typed
    /// node, which is a compiler bug, or the source graph itself is malformed).
    #[error("building the gradient graph: {0}")]
    Ir(#[from] GraphError),
    /// The source graph violates an IR invariant (a cycle, a tuple where a tensor is needed).
    #[error("malformed source graph: {0}")]
    Malformed(String),
    /// A scan on the path to a differentiated output has no step graph (run `primal` first).
    #[error(
        "`ttt` node %{node} (inner model `{model}`) has no step graph; differentiate the \
         program after the `primal` stage"
    )]
    ScanWithoutStep {
        /// The `ttt` node's index.
        node: usize,
        /// The inner model's name.
        model: String,
    },
    /// Differentiating the loss of a `ttt` node of a program failed.
    #[error("in the loss of `ttt` node %{node} (inner model `{model}`): {source}")]
    InScan {
        /// The `ttt` node's index in the main graph.
        node: usize,
        /// The inner model's name.
        model: String,
        /// What went wrong.
        #[source]
        source: Box<AutodiffError>,
    },
}

/// A new graph with the same inputs as `graph` (same names, types and order) whose outputs are
/// the gradients of the scalar output `output` with respect to each input named in `wrt`, named
/// `grad_<name>` in that order, each with that input's shape.
///
/// `output` must have a single element: shape `[]`, or a shape whose every extent is the known
/// value `1` (such as the `[1, 1]` a keep-dims `sum` produces). Differentiation is only carried
/// through nodes on a path from a `wrt` input to the output; a nested `ttt` scan on such a
/// path is an error.
pub fn gradient_graph(graph: &Graph, output: &str, wrt: &[String]) -> Result<Graph, AutodiffError> {
    let out_node = graph
        .output_by_name(output)
        .ok_or_else(|| AutodiffError::OutputNotFound(output.to_string()))?;
    let out_ty = graph
        .get(out_node)
        .ok_or_else(|| AutodiffError::Malformed(format!("output `{output}` names a missing node")))?
        .ty
        .clone();
    let out_tensor = match out_ty.tensor() {
        Some(t) if t.shape.0.iter().all(|d| *d == Dim::Known(1)) => t.clone(),
        _ => {
            return Err(AutodiffError::OutputNotScalar {
                name: output.to_string(),
                ty: out_ty.to_string(),
            })
        }
    };

    let wrt_nodes = wrt_input_nodes(graph, wrt.iter())?;

    let mut b = Builder::new(graph)?;
    let order = graph
        .topo_order()
        .ok_or_else(|| AutodiffError::Malformed("the graph has a cycle".into()))?;
    let mut seeds = Vec::new();
    if active_nodes(graph, &order, &[out_node], &wrt_nodes).contains(&out_node) {
        let one = b.dst.add_const(1.0, out_tensor.dtype);
        seeds.push((out_node, b.expand_to(one, &out_tensor.shape)?));
    }
    let grads = b.reverse(&seeds, &wrt_nodes)?;
    let mut dst = b.dst;
    for (name, node) in wrt.iter().zip(grads) {
        dst.add_output(&TttScan::grad_output_name(name), node);
    }
    Ok(dst)
}

/// The vector-Jacobian product of `graph`: a new graph whose inputs are `graph`'s inputs (same
/// names, types and order) followed by one cotangent per name in `outputs` (named
/// `ct_<output>`, with `$` prefixes when that name is taken), and whose outputs are
/// `d_<input>` ([`TttScan::vjp_output_name`]) for every input named in `wrt`, in that order:
/// the gradient of `Σ_o ⟨ct_o, o⟩` with respect to that input.
///
/// Every op of the graph IR but `ttt_vjp` has a derivative rule (a `ttt` scan becomes a
/// `ttt_vjp` node with [`DEFAULT_CHECKPOINT_EVERY`]), so a VJP graph can itself be
/// differentiated again: autodiff is closed over the ops it emits.
pub fn vjp_graph(
    graph: &Graph,
    outputs: &[String],
    wrt: &[String],
) -> Result<Graph, AutodiffError> {
    let named_outputs: Vec<(String, String)> = outputs
        .iter()
        .cloned()
        .zip(cotangent_names(graph, outputs))
        .collect();
    let named_wrt: Vec<(String, String)> = wrt
        .iter()
        .map(|w| (w.clone(), TttScan::vjp_output_name(w)))
        .collect();
    vjp_with(graph, &named_outputs, &named_wrt, DEFAULT_CHECKPOINT_EVERY)
}

/// Mini-batches per checkpoint group of a scan's backward when nothing else is asked
/// (as ttt-lm-jax's `jax.remat` over groups of 4 mini-batches).
pub const DEFAULT_CHECKPOINT_EVERY: usize = 4;

/// [`vjp_graph`] with explicit names: `outputs` pairs each differentiated output with its
/// cotangent input's name, `wrt` each input with its gradient output's name;
/// `checkpoint_every` is the checkpoint group of every scan's backward.
pub fn vjp_with(
    graph: &Graph,
    outputs: &[(String, String)],
    wrt: &[(String, String)],
    checkpoint_every: usize,
) -> Result<Graph, AutodiffError> {
    vjp_keeping(graph, outputs, wrt, checkpoint_every, false)
}

/// [`vjp_with`], also keeping (with `keep_outputs`) every output in `outputs` under
/// [`kept_output_name`], computed from the same forward values the backward reads.
fn vjp_keeping(
    graph: &Graph,
    outputs: &[(String, String)],
    wrt: &[(String, String)],
    checkpoint_every: usize,
    keep_outputs: bool,
) -> Result<Graph, AutodiffError> {
    let wrt_nodes = wrt_input_nodes(graph, wrt.iter().map(|(name, _)| name))?;
    let mut b = Builder::new(graph)?;
    b.checkpoint_every = checkpoint_every.max(1);
    let mut seeds = Vec::with_capacity(outputs.len());
    for (output, ct_name) in outputs {
        let node = graph
            .output_by_name(output)
            .ok_or_else(|| AutodiffError::OutputNotFound(output.clone()))?;
        let ty = src_tensor(graph, node)?;
        let ct = b.dst.add_input(ct_name, ty)?;
        seeds.push((node, ct));
    }
    let grads = b.reverse(&seeds, &wrt_nodes)?;
    let mut kept = Vec::new();
    if keep_outputs {
        for (output, _) in outputs {
            let node = graph
                .output_by_name(output)
                .ok_or_else(|| AutodiffError::OutputNotFound(output.clone()))?;
            kept.push((kept_output_name(output), b.fwd(node)?));
        }
    }
    let mut dst = b.dst;
    for ((_, out_name), node) in wrt.iter().zip(grads) {
        dst.add_output(out_name, node);
    }
    for (name, node) in kept {
        dst.add_output(&name, node);
    }
    Ok(dst)
}

/// The name under which [`grad_program_keeping_outputs`] keeps the program's output `output`
/// (`$` cannot start a name in the language, so it never clashes with an input's).
pub fn kept_output_name(output: &str) -> String {
    format!("$output.{output}")
}

/// Fills `scan.grad = gradient_graph(&scan.loss, "loss", scan.model_states())` for every `ttt`
/// node of `program.graph` (a rule's carries are not inputs of the loss).
pub fn derive_gradients(program: &mut Program) -> Result<(), AutodiffError> {
    for id in program.graph.node_ids() {
        let Some(node) = program.graph.get(id) else {
            continue;
        };
        let Op::Ttt(scan) = &node.op else { continue };
        let grad = gradient_graph(&scan.loss, "loss", scan.model_states()).map_err(|e| {
            AutodiffError::InScan {
                node: id.index(),
                model: scan.model.clone(),
                source: Box::new(e),
            }
        })?;
        if let Some(Op::Ttt(scan)) = program.graph.node_mut(id).map(|n| &mut n.op) {
            scan.grad = Some(grad);
        }
    }
    Ok(())
}

/// A state of a `ttt` scan that training can never change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UntrainedState {
    /// The inner model's name.
    pub model: String,
    /// The state's name.
    pub state: String,
}

impl std::fmt::Display for UntrainedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "state `{}` of inner model `{}` is never trained: the gradient of `loss` with respect \
             to it is identically zero (it reaches the loss only through terms whose derivative \
             is zero, such as `0 * ...`, `step` or `floor`)",
            self.state, self.model
        )
    }
}

/// The states of `program`'s `ttt` scans whose loss gradient is identically zero once zeros
/// are propagated (`0 * x`, `x @ 0`, sums and reshapes of zeros...): gradient descent leaves
/// them as they are, which is worth a warning. The gradients are derived here on their own
/// (the program is not changed).
pub fn untrained_states(program: &Program) -> Result<Vec<UntrainedState>, AutodiffError> {
    let mut out = Vec::new();
    for id in program.graph.node_ids() {
        let Some(Op::Ttt(scan)) = program.graph.get(id).map(|n| &n.op) else {
            continue;
        };
        let grad = gradient_graph(&scan.loss, "loss", scan.model_states())?;
        let zeros = zero_nodes(&grad)?;
        for state in scan.model_states() {
            let name = TttScan::grad_output_name(state);
            if grad
                .output_by_name(&name)
                .is_some_and(|g| zeros.contains(&g))
            {
                out.push(UntrainedState {
                    model: scan.model.clone(),
                    state: state.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// The nodes of `graph` that are zero whatever the inputs: constant zeros, and what ops that
/// preserve zeros (products, sums, negation, reshaping, broadcasting...) make of them. One
/// pass in topological order, so linear in the graph's size.
fn zero_nodes(graph: &Graph) -> Result<BTreeSet<NodeId>, AutodiffError> {
    let order = graph
        .topo_order()
        .ok_or_else(|| AutodiffError::Malformed("the graph has a cycle".into()))?;
    let mut zeros = BTreeSet::new();
    for id in order {
        let Some(node) = graph.get(id) else { continue };
        let operands = graph.operands(id);
        let zero = |i: usize| operands.get(i).is_some_and(|o| zeros.contains(o));
        let is_zero = match &node.op {
            Op::Const { value } => *value == 0.0,
            Op::Binary { fun: BinaryOp::Mul } | Op::MatMul | Op::Mix => zero(0) || zero(1),
            Op::MixOuter => zero(0) || zero(1) || zero(2),
            Op::Binary {
                fun: BinaryOp::Add | BinaryOp::Sub,
            } => zero(0) && zero(1),
            Op::Binary { fun: BinaryOp::Div } => zero(0),
            Op::Unary { fun: UnaryOp::Neg }
            | Op::Transpose
            | Op::Permute { .. }
            | Op::Reduce { .. }
            | Op::Expand { .. }
            | Op::SumTo { .. }
            | Op::Reshape { .. }
            | Op::Slice { .. }
            | Op::Unshift { .. }
            | Op::Gather
            | Op::ScatterAdd { .. } => zero(0),
            Op::Shift { .. } => zero(0) && (operands.len() < 2 || zero(1)),
            _ => false,
        };
        if is_zero {
            zeros.insert(id);
        }
    }
    Ok(zeros)
}

/// The nodes on a path from one of `wrt` to one of `outputs`.
fn active_nodes(
    graph: &Graph,
    order: &[NodeId],
    outputs: &[NodeId],
    wrt: &[NodeId],
) -> BTreeSet<NodeId> {
    let mut ancestors = BTreeSet::new();
    let mut stack = outputs.to_vec();
    while let Some(n) = stack.pop() {
        if ancestors.insert(n) {
            stack.extend(graph.operands(n));
        }
    }
    let mut active: BTreeSet<NodeId> = BTreeSet::new();
    for &n in order {
        if !ancestors.contains(&n) {
            continue;
        }
        if wrt.contains(&n) || graph.operands(n).iter().any(|o| active.contains(o)) {
            active.insert(n);
        }
    }
    active
}

fn src_tensor(graph: &Graph, id: NodeId) -> Result<TensorType, AutodiffError> {
    graph
        .tensor_type(id)
        .cloned()
        .ok_or_else(|| AutodiffError::Malformed(format!("node %{} is not a tensor", id.index())))
}

/// Builds the gradient graph: the destination graph, and the map from source nodes to their
/// copies in it.
struct Builder<'a> {
    src: &'a Graph,
    dst: Graph,
    copies: BTreeMap<NodeId, NodeId>,
    /// Mini-batches per checkpoint group of the `ttt_vjp` nodes made for scans.
    checkpoint_every: usize,
}

impl<'a> Builder<'a> {
    /// A destination graph with the inputs of `src`.
    fn new(src: &'a Graph) -> Result<Self, AutodiffError> {
        let mut dst = Graph::new();
        let mut copies = BTreeMap::new();
        for &id in src.inputs() {
            let name = src.input_name(id).ok_or_else(|| {
                AutodiffError::Malformed(format!("listed input %{} is not an input", id.index()))
            })?;
            let ty = src_tensor(src, id)?;
            copies.insert(id, dst.add_input(name, ty)?);
        }
        Ok(Builder {
            src,
            dst,
            copies,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
        })
    }

    /// Reverse mode from `seeds` (a source output node and its cotangent in the destination
    /// graph; adjoints of one node add up): the adjoint of every node of `wrt` (a zero of its
    /// shape when no seed reaches it), in order.
    fn reverse(
        &mut self,
        seeds: &[(NodeId, NodeId)],
        wrt: &[NodeId],
    ) -> Result<Vec<NodeId>, AutodiffError> {
        let graph = self.src;
        let order = graph
            .topo_order()
            .ok_or_else(|| AutodiffError::Malformed("the graph has a cycle".into()))?;
        let outputs: Vec<NodeId> = seeds.iter().map(|(o, _)| *o).collect();
        let active = active_nodes(graph, &order, &outputs, wrt);
        let mut adjoints: BTreeMap<NodeId, NodeId> = BTreeMap::new();
        // Adjoints of the elements of tuple-valued nodes (a scan's results), by element.
        let mut tuple_adjoints: BTreeMap<(NodeId, usize), NodeId> = BTreeMap::new();
        for &(node, ct) in seeds {
            if !active.contains(&node) {
                continue;
            }
            let acc = match adjoints.get(&node) {
                Some(&prev) => self.binary(BinaryOp::Add, prev, ct)?,
                None => ct,
            };
            adjoints.insert(node, acc);
        }
        for &id in order.iter().rev() {
            if !active.contains(&id) {
                continue;
            }
            let operands = graph.operands(id);
            let node = graph.get(id).ok_or_else(|| {
                AutodiffError::Malformed(format!("node %{} is missing", id.index()))
            })?;
            let contributions = match &node.op {
                Op::Get { index } => {
                    let Some(&g) = adjoints.get(&id) else {
                        continue;
                    };
                    let [tuple] = operands[..] else {
                        return Err(arity(id));
                    };
                    let acc = match tuple_adjoints.get(&(tuple, *index)) {
                        Some(&prev) => self.binary(BinaryOp::Add, prev, g)?,
                        None => g,
                    };
                    tuple_adjoints.insert((tuple, *index), acc);
                    continue;
                }
                Op::Ttt(scan) => {
                    let cts: Vec<Option<NodeId>> = (0..=scan.states.len())
                        .map(|i| tuple_adjoints.get(&(id, i)).copied())
                        .collect();
                    if cts.iter().all(Option::is_none) {
                        continue;
                    }
                    self.scan_vjp(id, scan, &operands, &cts, &active)?
                }
                _ => {
                    let Some(&g) = adjoints.get(&id) else {
                        continue;
                    };
                    self.backprop(id, &operands, g, &active)?
                }
            };
            for (operand, contrib) in contributions {
                let acc = match adjoints.get(&operand) {
                    Some(&prev) => self.binary(BinaryOp::Add, prev, contrib)?,
                    None => contrib,
                };
                adjoints.insert(operand, acc);
            }
        }
        let mut grads = Vec::with_capacity(wrt.len());
        for &src_id in wrt {
            let grad = match adjoints.get(&src_id) {
                Some(&g) => g,
                None => {
                    let ty = src_tensor(graph, src_id)?;
                    let zero = self.dst.add_const(0.0, ty.dtype);
                    self.expand_to(zero, &ty.shape)?
                }
            };
            grads.push(grad);
        }
        Ok(grads)
    }

    /// The contributions of the cotangents `cts` of the results of scan `id` (the stacked
    /// outputs, then every final state; `None` is zero) to its active operands: one `ttt_vjp`
    /// node whose scan carries the vector-Jacobian product of its step graph.
    fn scan_vjp(
        &mut self,
        id: NodeId,
        scan: &TttScan,
        operands: &[NodeId],
        cts: &[Option<NodeId>],
        active: &BTreeSet<NodeId>,
    ) -> Result<Vec<(NodeId, NodeId)>, AutodiffError> {
        let in_scan = |e: AutodiffError| AutodiffError::InScan {
            node: id.index(),
            model: scan.model.clone(),
            source: Box::new(e),
        };
        let step = scan.step.as_ref().ok_or(AutodiffError::ScanWithoutStep {
            node: id.index(),
            model: scan.model.clone(),
        })?;
        let mut outputs = vec!["out".to_string()];
        outputs.extend(scan.states.iter().map(|s| TttScan::next_output_name(s)));
        let inputs: Vec<String> = step
            .inputs()
            .iter()
            .filter_map(|&i| step.input_name(i).map(str::to_string))
            .collect();
        let step_vjp = vjp_graph(step, &outputs, &inputs).map_err(in_scan)?;
        let mut vjp_scan = scan.clone();
        vjp_scan.step_vjp = Some(step_vjp);
        let result_types = match &self.src.node(id).ty {
            tttc_ir::NodeType::Tuple(ts) => ts.clone(),
            tttc_ir::NodeType::Tensor(_) => {
                return Err(AutodiffError::Malformed(format!(
                    "scan %{} has a tensor type",
                    id.index()
                )))
            }
        };
        let mut args = Vec::with_capacity(operands.len() + cts.len());
        for &o in operands {
            args.push(self.fwd(o)?);
        }
        for (ct, ty) in cts.iter().zip(&result_types) {
            let ct = match ct {
                Some(ct) => *ct,
                None => {
                    let zero = self.dst.add_const(0.0, ty.dtype);
                    self.expand_to(zero, &ty.shape)?
                }
            };
            args.push(ct);
        }
        let vjp = self.dst.add(
            Op::TttVjp {
                scan: Box::new(vjp_scan),
                checkpoint_every: self.checkpoint_every,
            },
            &args,
        )?;
        let mut out = Vec::new();
        for (i, &o) in operands.iter().enumerate() {
            if active.contains(&o) {
                out.push((o, self.dst.add(Op::Get { index: i }, &[vjp])?));
            }
        }
        Ok(out)
    }

    /// The copy of source node `id` in the gradient graph (copying it, and whatever it depends
    /// on, the first time).
    fn fwd(&mut self, id: NodeId) -> Result<NodeId, AutodiffError> {
        if let Some(&c) = self.copies.get(&id) {
            return Ok(c);
        }
        // Iterative post-order copy (graphs can be deep chains).
        let mut stack = vec![(id, false)];
        while let Some((n, expanded)) = stack.pop() {
            if self.copies.contains_key(&n) {
                continue;
            }
            let operands = self.src.operands(n);
            if !expanded {
                stack.push((n, true));
                for &o in operands.iter().rev() {
                    if !self.copies.contains_key(&o) {
                        stack.push((o, false));
                    }
                }
                continue;
            }
            let node = self.src.get(n).ok_or_else(|| {
                AutodiffError::Malformed(format!("node %{} is missing", n.index()))
            })?;
            let copy = match &node.op {
                Op::Input { name } => {
                    return Err(AutodiffError::Malformed(format!(
                        "input `{name}` (%{}) is not in the input list",
                        n.index()
                    )))
                }
                Op::Const { value } => {
                    let dtype = src_tensor(self.src, n)?.dtype;
                    self.dst.add_const(*value, dtype)
                }
                op @ (Op::Extent { .. } | Op::Iota { .. }) => {
                    let dtype = src_tensor(self.src, n)?.dtype;
                    self.dst.add_leaf(op.clone(), dtype)?
                }
                op => {
                    let mut mapped = Vec::with_capacity(operands.len());
                    for o in &operands {
                        let c = self.copies.get(o).copied().ok_or_else(|| {
                            AutodiffError::Malformed(format!(
                                "node %{} uses %{} before it is defined (cycle)",
                                n.index(),
                                o.index()
                            ))
                        })?;
                        mapped.push(c);
                    }
                    self.dst.add(op.clone(), &mapped)?
                }
            };
            self.copies.insert(n, copy);
        }
        self.copies
            .get(&id)
            .copied()
            .ok_or_else(|| AutodiffError::Malformed(format!("could not copy %{}", id.index())))
    }

    /// The tensor type of a node of the gradient graph.
    fn ty(&self, id: NodeId) -> Result<TensorType, AutodiffError> {
        self.dst.tensor_type(id).cloned().ok_or_else(|| {
            AutodiffError::Malformed(format!("gradient node %{} is not a tensor", id.index()))
        })
    }

    fn constant(&mut self, value: f64, like: NodeId) -> Result<NodeId, AutodiffError> {
        let dtype: DType = self.ty(like)?.dtype;
        Ok(self.dst.add_const(value, dtype))
    }

    fn unary(&mut self, fun: UnaryOp, x: NodeId) -> Result<NodeId, AutodiffError> {
        Ok(self.dst.add(Op::Unary { fun }, &[x])?)
    }

    fn binary(&mut self, fun: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId, AutodiffError> {
        Ok(self.dst.add(Op::Binary { fun }, &[a, b])?)
    }

    fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, AutodiffError> {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// `x * value`.
    fn scale(&mut self, x: NodeId, value: f64) -> Result<NodeId, AutodiffError> {
        let c = self.constant(value, x)?;
        self.mul(x, c)
    }

    /// `value - x`.
    fn rsub(&mut self, value: f64, x: NodeId) -> Result<NodeId, AutodiffError> {
        let c = self.constant(value, x)?;
        self.binary(BinaryOp::Sub, c, x)
    }

    /// `x + value`.
    fn add_scalar(&mut self, x: NodeId, value: f64) -> Result<NodeId, AutodiffError> {
        let c = self.constant(value, x)?;
        self.binary(BinaryOp::Add, x, c)
    }

    /// `x` broadcast to `shape` (no node when it already has that shape).
    fn expand_to(&mut self, x: NodeId, shape: &Shape) -> Result<NodeId, AutodiffError> {
        if &self.ty(x)?.shape == shape {
            return Ok(x);
        }
        Ok(self.dst.add(
            Op::Expand {
                shape: shape.clone(),
            },
            &[x],
        )?)
    }

    /// `x` summed down to `shape` (no node when it already has that shape): undoes
    /// broadcasting.
    fn sum_to(&mut self, x: NodeId, shape: &Shape) -> Result<NodeId, AutodiffError> {
        if &self.ty(x)?.shape == shape {
            return Ok(x);
        }
        Ok(self.dst.add(
            Op::SumTo {
                shape: shape.clone(),
            },
            &[x],
        )?)
    }

    /// `x` reshaped to `dims` (no node when it already has that shape).
    fn reshape(&mut self, x: NodeId, dims: Vec<Dim>) -> Result<NodeId, AutodiffError> {
        let shape = Shape(dims);
        if self.ty(x)?.shape == shape {
            return Ok(x);
        }
        Ok(self.dst.add(Op::Reshape { shape }, &[x])?)
    }

    /// `dw[i, j] = Σ_s g[i, s] x[j, s]` for `g [p, s...]`, `x [k, s...]`: the adjoint of the
    /// weights of `mix`.
    fn mix_weight_adjoint(&mut self, g: NodeId, x: NodeId) -> Result<NodeId, AutodiffError> {
        let (gt, xt) = (self.ty(g)?, self.ty(x)?);
        let (Some(p), Some(k)) = (gt.shape.0.first().cloned(), xt.shape.0.first().cloned()) else {
            return Err(AutodiffError::Malformed("mix of scalars".into()));
        };
        let rest = &gt.shape.0[1..];
        let mut gd = vec![p.clone(), Dim::Known(1)];
        gd.extend(rest.iter().cloned());
        let mut xd = vec![Dim::Known(1), k.clone()];
        xd.extend(rest.iter().cloned());
        let g3 = self.reshape(g, gd)?;
        let x3 = self.reshape(x, xd)?;
        let mut prod = self.mul(g3, x3)?;
        for axis in 2..2 + rest.len() {
            prod = self.dst.add(
                Op::Reduce {
                    fun: ReduceOp::Sum,
                    axis,
                },
                &[prod],
            )?;
        }
        self.reshape(prod, vec![p, k])
    }

    /// `v` (extent `len` on `axis`) placed at `start .. start + len` of a tensor of shape
    /// `shape` (extent `n` on `axis`), zeros elsewhere: `shift` with `v` as the fill of a zero
    /// tensor puts it at `0 .. len`, a second `shift` moves it to `start`. Linear in the size,
    /// unlike a selection matrix.
    fn pad_along(
        &mut self,
        v: NodeId,
        shape: &Shape,
        axis: usize,
        start: usize,
        len: usize,
        n: usize,
    ) -> Result<NodeId, AutodiffError> {
        if start == 0 && len == n {
            return Ok(v);
        }
        let zero = self.constant(0.0, v)?;
        let zeros = self.expand_to(zero, shape)?;
        let mut d = if len == 0 {
            zeros
        } else {
            self.dst.add(Op::Shift { axis, by: len }, &[zeros, v])?
        };
        if start > 0 {
            d = self.dst.add(Op::Shift { axis, by: start }, &[d])?;
        }
        Ok(d)
    }

    /// The 0/1 matrix `M [rows, cols]` with `M[r, c] = [sign (r − c) − offset = 0]`, built from
    /// `iota`s (`step(v + ½) step(½ − v)` is 1 exactly where the integer `v` is 0).
    fn selection(
        &mut self,
        rows: &Dim,
        cols: &Dim,
        sign: f64,
        offset: f64,
        dtype: DType,
    ) -> Result<NodeId, AutodiffError> {
        let r = self.dst.add_leaf(Op::Iota { len: rows.clone() }, dtype)?;
        let r = self.reshape(r, vec![rows.clone(), Dim::Known(1)])?;
        let c = self.dst.add_leaf(Op::Iota { len: cols.clone() }, dtype)?;
        let c = self.reshape(c, vec![Dim::Known(1), cols.clone()])?;
        let diff = self.binary(BinaryOp::Sub, r, c)?;
        let v = self.scale(diff, sign)?;
        let v = self.add_scalar(v, -offset)?;
        let lo = self.add_scalar(v, 0.5)?;
        let lo = self.unary(UnaryOp::Step, lo)?;
        let hi = self.rsub(0.5, v)?;
        let hi = self.unary(UnaryOp::Step, hi)?;
        self.mul(lo, hi)
    }

    /// `y[.., r, ..] = Σ_c m[r, c] x[.., c, ..]` along `axis` of `x` (a `mix` with the axis
    /// moved to the front and back).
    fn along_axis(&mut self, m: NodeId, x: NodeId, axis: usize) -> Result<NodeId, AutodiffError> {
        let rank = self.ty(x)?.shape.rank();
        if axis == 0 {
            return Ok(self.dst.add(Op::Mix, &[m, x])?);
        }
        let mut perm: Vec<usize> = vec![axis];
        perm.extend((0..rank).filter(|&a| a != axis));
        let inv = inverse_permutation(&perm)
            .ok_or_else(|| AutodiffError::Malformed("bad axis".into()))?;
        let xp = self.dst.add(Op::Permute { perm }, &[x])?;
        let y = self.dst.add(Op::Mix, &[m, xp])?;
        Ok(self.dst.add(Op::Permute { perm: inv }, &[y])?)
    }

    /// The extent `dim` as a scalar: a constant when known, else an `extent` leaf (its value
    /// once dimensions are bound).
    fn extent(&mut self, dim: &Dim, dtype: DType) -> Result<NodeId, AutodiffError> {
        match dim {
            Dim::Known(n) => Ok(self.dst.add_const(*n as f64, dtype)),
            Dim::Sym(_) => Ok(self.dst.add_leaf(Op::Extent { dim: dim.clone() }, dtype)?),
        }
    }

    /// The contributions of adjoint `g` (of source node `id`) to the adjoints of its active
    /// operands, each in its operand's shape.
    fn backprop(
        &mut self,
        id: NodeId,
        operands: &[NodeId],
        g: NodeId,
        active: &BTreeSet<NodeId>,
    ) -> Result<Vec<(NodeId, NodeId)>, AutodiffError> {
        let src = self.src;
        let node = src
            .get(id)
            .ok_or_else(|| AutodiffError::Malformed(format!("node %{} is missing", id.index())))?;
        let is_active = |o: &NodeId| active.contains(o);
        let mut out = Vec::new();
        match &node.op {
            Op::Input { .. } | Op::Const { .. } | Op::Extent { .. } | Op::Iota { .. } => {}
            // Handled by `reverse` (tuples), or not differentiable (a third order).
            Op::Ttt(_) | Op::Get { .. } | Op::TttVjp { .. } => {
                return Err(AutodiffError::NotDifferentiable {
                    op: node.op.name(),
                    node: id.index(),
                })
            }
            // y = mix(w, x): dx = mix(wᵀ, g); dw[i, j] = Σ_s g[i, s] x[j, s].
            Op::Mix => {
                let [w, x] = operands else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    let wf = self.fwd(*w)?;
                    let wt = self.dst.add(Op::Transpose, &[wf])?;
                    out.push((*x, self.dst.add(Op::Mix, &[wt, g])?));
                }
                if is_active(w) {
                    let xf = self.fwd(*x)?;
                    let dw = self.mix_weight_adjoint(g, xf)?;
                    out.push((*w, dw));
                }
            }
            // y[i] = Σ_j w[i, j] u[j]ᵀ d[j] with u [k, m], d [k, n]; H = mix(wᵀ, g) [k, m, n]:
            // du[j] = H[j] d[j], dd[j] = u[j] H[j], dw[i, j] = Σ_m (g[i] d[j]ᵀ)[m] u[j, m].
            Op::MixOuter => {
                let [w, u, d] = operands else {
                    return Err(arity(id));
                };
                let (wf, uf, df) = (self.fwd(*w)?, self.fwd(*u)?, self.fwd(*d)?);
                let (ut, dt) = (self.ty(uf)?, self.ty(df)?);
                let ([k, m], [_, n]) = (ut.shape.0.as_slice(), dt.shape.0.as_slice()) else {
                    return Err(AutodiffError::Malformed(format!(
                        "node %{}: mix_outer operands of the wrong rank",
                        id.index()
                    )));
                };
                let (k, m, n) = (k.clone(), m.clone(), n.clone());
                if is_active(u) || is_active(d) {
                    let wt = self.dst.add(Op::Transpose, &[wf])?;
                    let h = self.dst.add(Op::Mix, &[wt, g])?;
                    if is_active(u) {
                        let dcol = self.reshape(df, vec![k.clone(), n.clone(), Dim::Known(1)])?;
                        let p = self.dst.add(Op::MatMul, &[h, dcol])?;
                        out.push((*u, self.reshape(p, vec![k.clone(), m.clone()])?));
                    }
                    if is_active(d) {
                        let urow = self.reshape(uf, vec![k.clone(), Dim::Known(1), m.clone()])?;
                        let p = self.dst.add(Op::MatMul, &[urow, h])?;
                        out.push((*d, self.reshape(p, vec![k.clone(), n.clone()])?));
                    }
                }
                if is_active(w) {
                    let dtr = self.dst.add(Op::Transpose, &[df])?;
                    let t = self.dst.add(Op::MatMul, &[g, dtr])?; // [p, m, k]
                    let utr = self.dst.add(Op::Transpose, &[uf])?; // [m, k]
                    let prod = self.mul(t, utr)?;
                    let s = self.dst.add(
                        Op::Reduce {
                            fun: ReduceOp::Sum,
                            axis: 1,
                        },
                        &[prod],
                    )?;
                    let p = src_tensor(src, *w)?.shape;
                    out.push((*w, self.reshape(s, p.0)?));
                }
            }
            // y = x[start .. start + len] along `axis`: dx = g padded with zeros to x's extent
            // (linear, two shifts) when that extent is known; else Sᵀ g with the selection
            // matrix S[i, j] = [j = i + start], applied along the axis with `mix`.
            Op::Slice { axis, start, len } => {
                let [x] = operands else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    let xt = src_tensor(src, *x)?;
                    let d = match xt.shape.0[*axis] {
                        Dim::Known(n) => self.pad_along(g, &xt.shape, *axis, *start, *len, n)?,
                        ref n => {
                            let gt = self.ty(g)?;
                            let len = gt.shape.0[*axis].clone();
                            // M[r, c] = [r - c - start = 0], r over x's extent, c over the
                            // slice's.
                            let sel = self.selection(n, &len, 1.0, *start as f64, xt.dtype)?;
                            self.along_axis(sel, g, *axis)?
                        }
                    };
                    out.push((*x, d));
                }
            }
            // y[t] = x[t - by] (t >= by), fill[t] (t < by): dx[s] = g[s + by] for s + by < n
            // (an unshift, linear whatever n is); dfill = g[0 .. by].
            Op::Shift { axis, by } => {
                let Some(x) = operands.first() else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    let d = if *by == 0 {
                        g
                    } else {
                        self.dst.add(
                            Op::Unshift {
                                axis: *axis,
                                by: *by,
                            },
                            &[g],
                        )?
                    };
                    out.push((*x, d));
                }
                if let Some(fill) = operands.get(1) {
                    if is_active(fill) {
                        let d = self.dst.add(
                            Op::Slice {
                                axis: *axis,
                                start: 0,
                                len: *by,
                            },
                            &[g],
                        )?;
                        out.push((*fill, d));
                    }
                }
            }
            // y[t] = x[t + by] (t + by < n), 0 after: dx = g shifted back, zero-filled.
            Op::Unshift { axis, by } => {
                let [x] = operands else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    let d = self.dst.add(
                        Op::Shift {
                            axis: *axis,
                            by: *by,
                        },
                        &[g],
                    )?;
                    out.push((*x, d));
                }
            }
            Op::Unary { fun } => {
                let [x] = operands else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    if let Some(d) = self.unary_rule(*fun, id, *x, g)? {
                        out.push((*x, d));
                    }
                }
            }
            Op::Binary { fun } => {
                let [a, b] = operands else {
                    return Err(arity(id));
                };
                let (need_a, need_b) = (is_active(a), is_active(b));
                let (da, db) = self.binary_rule(*fun, id, *a, *b, g, need_a, need_b)?;
                if let (true, Some(da)) = (need_a, da) {
                    let shape = src_tensor(src, *a)?.shape;
                    out.push((*a, self.sum_to(da, &shape)?));
                }
                if let (true, Some(db)) = (need_b, db) {
                    let shape = src_tensor(src, *b)?.shape;
                    out.push((*b, self.sum_to(db, &shape)?));
                }
            }
            Op::MatMul => {
                let [a, b] = operands else {
                    return Err(arity(id));
                };
                if is_active(a) {
                    // dA = dC @ B^T
                    let bf = self.fwd(*b)?;
                    let bt = self.dst.add(Op::Transpose, &[bf])?;
                    let da = self.dst.add(Op::MatMul, &[g, bt])?;
                    let shape = src_tensor(src, *a)?.shape;
                    out.push((*a, self.sum_to(da, &shape)?));
                }
                if is_active(b) {
                    // dB = A^T @ dC
                    let af = self.fwd(*a)?;
                    let at = self.dst.add(Op::Transpose, &[af])?;
                    let db = self.dst.add(Op::MatMul, &[at, g])?;
                    let shape = src_tensor(src, *b)?.shape;
                    out.push((*b, self.sum_to(db, &shape)?));
                }
            }
            Op::Transpose => {
                let [x] = operands else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    out.push((*x, self.dst.add(Op::Transpose, &[g])?));
                }
            }
            Op::Permute { perm } => {
                let [x] = operands else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    // y[i] = x[perm[i]], so dx[perm[i]] = dy[i]: dx = permute(dy, perm^-1).
                    let inv = inverse_permutation(perm).ok_or_else(|| {
                        AutodiffError::Malformed(format!(
                            "node %{}: {perm:?} is not a permutation",
                            id.index()
                        ))
                    })?;
                    out.push((*x, self.dst.add(Op::Permute { perm: inv }, &[g])?));
                }
            }
            Op::Reduce { fun, axis } => {
                let [x] = operands else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    let xt = src_tensor(src, *x)?;
                    let g = match fun {
                        ReduceOp::Sum => g,
                        ReduceOp::Mean => {
                            let dim = xt.shape.0.get(*axis).ok_or_else(|| {
                                AutodiffError::Malformed(format!(
                                    "node %{}: axis {axis} out of range",
                                    id.index()
                                ))
                            })?;
                            let n = self.extent(dim, xt.dtype)?;
                            self.binary(BinaryOp::Div, g, n)?
                        }
                    };
                    out.push((*x, self.expand_to(g, &xt.shape)?));
                }
            }
            Op::Expand { .. } => {
                let [x] = operands else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    let shape = src_tensor(src, *x)?.shape;
                    out.push((*x, self.sum_to(g, &shape)?));
                }
            }
            Op::SumTo { .. } => {
                let [x] = operands else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    let shape = src_tensor(src, *x)?.shape;
                    out.push((*x, self.expand_to(g, &shape)?));
                }
            }
            Op::Reshape { .. } => {
                let [x] = operands else {
                    return Err(arity(id));
                };
                if is_active(x) {
                    let shape = src_tensor(src, *x)?.shape;
                    let d = if self.ty(g)?.shape == shape {
                        g
                    } else {
                        self.dst.add(Op::Reshape { shape }, &[g])?
                    };
                    out.push((*x, d));
                }
            }
            // Rows of the table: their adjoint sums the rows of `g` back by id (repeated ids
            // add up). The ids are integers: no gradient.
            Op::Gather => {
                let [table, ids] = operands else {
                    return Err(arity(id));
                };
                if is_active(table) {
                    let shape = src_tensor(src, *table)?.shape;
                    let rows = shape.0.first().cloned().ok_or_else(|| {
                        AutodiffError::Malformed(format!(
                            "node %{}: a table without axes",
                            id.index()
                        ))
                    })?;
                    let ids = self.fwd(*ids)?;
                    out.push((*table, self.dst.add(Op::ScatterAdd { rows }, &[g, ids])?));
                }
            }
            // Linear in the rows, and its adjoint is the gather by the same ids.
            Op::ScatterAdd { .. } => {
                let [rows, ids] = operands else {
                    return Err(arity(id));
                };
                if is_active(rows) {
                    let ids = self.fwd(*ids)?;
                    out.push((*rows, self.dst.add(Op::Gather, &[g, ids])?));
                }
            }
        }
        Ok(out)
    }

    /// `g * f'(x)` for `y = f(x)` (source nodes `y_src`, `x_src`); `None` when the derivative
    /// is zero.
    fn unary_rule(
        &mut self,
        fun: UnaryOp,
        y_src: NodeId,
        x_src: NodeId,
        g: NodeId,
    ) -> Result<Option<NodeId>, AutodiffError> {
        let d = match fun {
            UnaryOp::Neg => self.unary(UnaryOp::Neg, g)?,
            UnaryOp::Sqrt => {
                // d sqrt(x) = 0.5 / sqrt(x)
                let y = self.fwd(y_src)?;
                let gy = self.binary(BinaryOp::Div, g, y)?;
                self.scale(gy, 0.5)?
            }
            UnaryOp::Rsqrt => {
                // d x^-1/2 = -0.5 x^-3/2 = -0.5 r^3
                let r = self.fwd(y_src)?;
                let r2 = self.mul(r, r)?;
                let r3 = self.mul(r2, r)?;
                let k = self.scale(r3, -0.5)?;
                self.mul(g, k)?
            }
            UnaryOp::Exp => {
                let y = self.fwd(y_src)?;
                self.mul(g, y)?
            }
            UnaryOp::Log => {
                let x = self.fwd(x_src)?;
                self.binary(BinaryOp::Div, g, x)?
            }
            UnaryOp::Tanh => {
                // 1 - t^2
                let t = self.fwd(y_src)?;
                let t2 = self.mul(t, t)?;
                let k = self.rsub(1.0, t2)?;
                self.mul(g, k)?
            }
            UnaryOp::Sigmoid => {
                // s (1 - s)
                let s = self.fwd(y_src)?;
                let one_minus = self.rsub(1.0, s)?;
                let k = self.mul(s, one_minus)?;
                self.mul(g, k)?
            }
            UnaryOp::Silu => {
                // s (1 + x (1 - s)), s = sigmoid(x)
                let x = self.fwd(x_src)?;
                let s = self.unary(UnaryOp::Sigmoid, x)?;
                let one_minus = self.rsub(1.0, s)?;
                let xm = self.mul(x, one_minus)?;
                let inner = self.add_scalar(xm, 1.0)?;
                let k = self.mul(s, inner)?;
                self.mul(g, k)?
            }
            UnaryOp::Relu => {
                let x = self.fwd(x_src)?;
                let k = self.unary(UnaryOp::Step, x)?;
                self.mul(g, k)?
            }
            UnaryOp::GeluTanh => {
                // f(x)  = 0.5 x (1 + t),  t = tanh(c (x + a x^3)),  c = sqrt(2/pi)
                // f'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)
                const A: f64 = 0.044715;
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let x = self.fwd(x_src)?;
                let x2 = self.mul(x, x)?;
                let x3 = self.mul(x2, x)?;
                let ax3 = self.scale(x3, A)?;
                let inner = self.binary(BinaryOp::Add, x, ax3)?;
                let u = self.scale(inner, c)?;
                let t = self.unary(UnaryOp::Tanh, u)?;
                let one_plus_t = self.add_scalar(t, 1.0)?;
                let left = self.scale(one_plus_t, 0.5)?;
                let t2 = self.mul(t, t)?;
                let sech2 = self.rsub(1.0, t2)?;
                let x2a = self.scale(x2, 3.0 * A)?;
                let du = self.add_scalar(x2a, 1.0)?;
                let du = self.scale(du, c)?;
                let hx = self.scale(x, 0.5)?;
                let right = self.mul(hx, sech2)?;
                let right = self.mul(right, du)?;
                let k = self.binary(BinaryOp::Add, left, right)?;
                self.mul(g, k)?
            }
            UnaryOp::Sin => {
                let x = self.fwd(x_src)?;
                let k = self.unary(UnaryOp::Cos, x)?;
                self.mul(g, k)?
            }
            UnaryOp::Cos => {
                let x = self.fwd(x_src)?;
                let s = self.unary(UnaryOp::Sin, x)?;
                let k = self.unary(UnaryOp::Neg, s)?;
                self.mul(g, k)?
            }
            UnaryOp::Abs => {
                // sign(x) = step(x) - step(-x): 0 at 0, like torch.sign
                let x = self.fwd(x_src)?;
                let pos = self.unary(UnaryOp::Step, x)?;
                let neg_x = self.unary(UnaryOp::Neg, x)?;
                let neg = self.unary(UnaryOp::Step, neg_x)?;
                let sign = self.binary(BinaryOp::Sub, pos, neg)?;
                self.mul(g, sign)?
            }
            UnaryOp::Softplus => {
                // sigmoid(x)
                let x = self.fwd(x_src)?;
                let k = self.unary(UnaryOp::Sigmoid, x)?;
                self.mul(g, k)?
            }
            // Piecewise constant: zero derivative wherever it exists.
            UnaryOp::Step | UnaryOp::Floor => return Ok(None),
        };
        Ok(Some(d))
    }

    /// Contributions `(da, db)` for `y = a ∘ b`, in the broadcast result's shape (the caller
    /// sums them down to the operands' shapes); only the requested ones are built.
    #[allow(clippy::too_many_arguments)]
    fn binary_rule(
        &mut self,
        fun: BinaryOp,
        y_src: NodeId,
        a_src: NodeId,
        b_src: NodeId,
        g: NodeId,
        need_a: bool,
        need_b: bool,
    ) -> Result<(Option<NodeId>, Option<NodeId>), AutodiffError> {
        let mut da = None;
        let mut db = None;
        match fun {
            BinaryOp::Add => {
                da = need_a.then_some(g);
                db = need_b.then_some(g);
            }
            BinaryOp::Sub => {
                da = need_a.then_some(g);
                if need_b {
                    db = Some(self.unary(UnaryOp::Neg, g)?);
                }
            }
            BinaryOp::Mul => {
                if need_a {
                    let b = self.fwd(b_src)?;
                    da = Some(self.mul(g, b)?);
                }
                if need_b {
                    let a = self.fwd(a_src)?;
                    db = Some(self.mul(g, a)?);
                }
            }
            BinaryOp::Div => {
                // y = a / b: da = g / b, db = -g a / b^2 = -(g y) / b
                let b = self.fwd(b_src)?;
                if need_a {
                    da = Some(self.binary(BinaryOp::Div, g, b)?);
                }
                if need_b {
                    let y = self.fwd(y_src)?;
                    let gy = self.mul(g, y)?;
                    let q = self.binary(BinaryOp::Div, gy, b)?;
                    db = Some(self.unary(UnaryOp::Neg, q)?);
                }
            }
            BinaryOp::Pow => {
                // y = a^b: da = g b a^(b-1), db = g y ln a
                if need_a {
                    let a = self.fwd(a_src)?;
                    let b = self.fwd(b_src)?;
                    let bm1 = self.add_scalar(b, -1.0)?;
                    let p = self.binary(BinaryOp::Pow, a, bm1)?;
                    let k = self.mul(b, p)?;
                    da = Some(self.mul(g, k)?);
                }
                if need_b {
                    let a = self.fwd(a_src)?;
                    let y = self.fwd(y_src)?;
                    let ln = self.unary(UnaryOp::Log, a)?;
                    let k = self.mul(y, ln)?;
                    db = Some(self.mul(g, k)?);
                }
            }
            BinaryOp::Max | BinaryOp::Min => {
                // The gradient goes to the operand that was selected; ties go to `a`.
                // max: b wins iff b - a > 0, i.e. step(b - a);  min: b wins iff step(a - b).
                let a = self.fwd(a_src)?;
                let b = self.fwd(b_src)?;
                let diff = match fun {
                    BinaryOp::Max => self.binary(BinaryOp::Sub, b, a)?,
                    _ => self.binary(BinaryOp::Sub, a, b)?,
                };
                let b_wins = self.unary(UnaryOp::Step, diff)?;
                if need_a {
                    let a_wins = self.rsub(1.0, b_wins)?;
                    da = Some(self.mul(g, a_wins)?);
                }
                if need_b {
                    db = Some(self.mul(g, b_wins)?);
                }
            }
        }
        Ok((da, db))
    }
}

/// The inverse of `perm` (`inv[perm[i]] = i`), or `None` if `perm` is not a permutation of
/// `0..perm.len()`.
fn inverse_permutation(perm: &[usize]) -> Option<Vec<usize>> {
    let mut inv = vec![usize::MAX; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        let slot = inv.get_mut(p)?;
        if *slot != usize::MAX {
            return None;
        }
        *slot = i;
    }
    Some(inv)
}

fn arity(id: NodeId) -> AutodiffError {
    AutodiffError::Malformed(format!(
        "node %{} has the wrong number of operands",
        id.index()
    ))
}

/// The gradient program of `program` (differentiated after the `primal` stage, so that every
/// scan has its step graph): its inputs are `program`'s inputs followed by one cotangent per
/// name in `outputs` (see [`cotangent_input_names`]), its outputs the vector-Jacobian product
/// `d/d(input) Σ_o ⟨ct_o, o⟩` for every input that is not declared `int`, each under the
/// input's own name. Scans become `ttt_vjp` nodes that keep a checkpoint every
/// `checkpoint_every` mini-batches. Forward values are computed once and shared by everything
/// that needs them.
pub fn grad_program(
    program: &Program,
    outputs: &[String],
    checkpoint_every: usize,
) -> Result<Program, AutodiffError> {
    grad_program_with(program, outputs, checkpoint_every, false)
}

/// [`grad_program`] that also computes the program's outputs `outputs`, each under
/// [`kept_output_name`]: the program that [`crate::residuals::split_at_cotangents`] cuts into a
/// forward part and a backward part.
pub fn grad_program_keeping_outputs(
    program: &Program,
    outputs: &[String],
    checkpoint_every: usize,
) -> Result<Program, AutodiffError> {
    grad_program_with(program, outputs, checkpoint_every, true)
}

fn grad_program_with(
    program: &Program,
    outputs: &[String],
    checkpoint_every: usize,
    keep_outputs: bool,
) -> Result<Program, AutodiffError> {
    let graph = &program.graph;
    let cts = cotangent_input_names(program, outputs);
    let named_outputs: Vec<(String, String)> = outputs.iter().cloned().zip(cts).collect();
    let wrt: Vec<(String, String)> = graph
        .inputs()
        .iter()
        .filter_map(|&i| graph.input_name(i))
        .filter(|name| !program.integer_inputs.iter().any(|ii| ii.name == *name))
        .map(|name| (name.to_string(), name.to_string()))
        .collect();
    let grad = vjp_keeping(graph, &named_outputs, &wrt, checkpoint_every, keep_outputs)?;
    Ok(Program {
        name: format!("{}.grad", program.name),
        configs: program.configs.clone(),
        derived_dims: program.derived_dims.clone(),
        intermediates: Vec::new(),
        integer_inputs: program.integer_inputs.clone(),
        graph: grad,
    })
}

/// The input nodes of `graph` named `names`, in order: an unknown or repeated name is an error.
fn wrt_input_nodes<'a>(
    graph: &Graph,
    names: impl Iterator<Item = &'a String>,
) -> Result<Vec<NodeId>, AutodiffError> {
    let mut nodes = Vec::new();
    let mut seen = BTreeSet::new();
    for name in names {
        if !seen.insert(name.as_str()) {
            return Err(AutodiffError::DuplicateWrt(name.clone()));
        }
        let id = graph
            .input_by_name(name)
            .ok_or_else(|| AutodiffError::UnknownWrt(name.clone()))?;
        nodes.push(id);
    }
    Ok(nodes)
}

/// The names of the cotangent inputs [`grad_program`] gives the program outputs `outputs`:
/// `ct_<output>`, with `$` prefixes while the name is taken by an input or another cotangent.
pub fn cotangent_input_names(program: &Program, outputs: &[String]) -> Vec<String> {
    cotangent_names(&program.graph, outputs)
}

/// `ct_<output>` for every output, with `$` prefixes while the name is taken by an input of
/// `graph` or another cotangent.
fn cotangent_names(graph: &Graph, outputs: &[String]) -> Vec<String> {
    let mut taken: BTreeSet<String> = graph
        .inputs()
        .iter()
        .filter_map(|&i| graph.input_name(i).map(str::to_string))
        .collect();
    outputs
        .iter()
        .map(|o| {
            let mut name = format!("ct_{o}");
            while taken.contains(&name) {
                name.insert(0, '$');
            }
            taken.insert(name.clone());
            name
        })
        .collect()
}
