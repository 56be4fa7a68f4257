//! A gradient program cut in two at its cotangents, for training loops that compute the loss
//! between the forward and the backward (PyTorch's autograd): the **forward part** computes the
//! program's outputs and the *residuals* (every value the backward needs that does not depend on
//! a cotangent); the **backward part** takes the residuals, the cotangents and the inputs it
//! reads, and computes the gradients. Together they compute what the gradient program computes,
//! with the forward values computed once (a `ttt_vjp` still recomputes its scan's states inside
//! each checkpoint group, as in the whole gradient program).
//!
//! The cut is made on a gradient program built by
//! [`grad_program_keeping_outputs`](crate::autodiff::grad_program_keeping_outputs) (which also
//! keeps the program's outputs) after its graph stages: a node is on the backward side when it
//! depends on a cotangent input, else on the forward side. A forward-side value used by the
//! backward side is a residual, except inputs (the backward reads them itself), leaves
//! (constants, iotas, extents: copied) and cheap values of one other value (views, broadcasts,
//! gathers, elementwise ops: recomputed from it, see `recomputed`).

use crate::autodiff::{kept_output_name, AutodiffError};
use std::collections::{BTreeMap, BTreeSet};
use tttc_ir::{Graph, NodeId, Op, Program};

/// The two parts of a gradient program (see the module doc).
#[derive(Clone, Debug)]
pub struct SplitGradient {
    /// The program's inputs → its outputs (under their own names) and the residuals.
    pub forward: Program,
    /// The inputs it reads, the residuals and the cotangents → the gradients.
    pub backward: Program,
    /// The residuals' names: outputs of `forward`, inputs of `backward`.
    pub residuals: Vec<String>,
}

/// The name of residual number `k`.
pub fn residual_name(k: usize) -> String {
    format!("$residual{k}")
}

fn malformed(msg: impl Into<String>) -> AutodiffError {
    AutodiffError::Malformed(msg.into())
}

/// Whether `op` is a leaf the backward part recomputes rather than receives.
fn is_cheap_leaf(op: &Op) -> bool {
    matches!(op, Op::Const { .. } | Op::Iota { .. } | Op::Extent { .. })
}

/// Whether the backward part recomputes forward value `id` instead of receiving it: a view,
/// a broadcast, a gather or an elementwise op with at most one operand that is not an input
/// or a leaf. Its result is no larger than that operand (or is a broadcast of it), so keeping
/// the operand instead never keeps more, and keeps less where the operand is a residual anyway
/// (the transposed or normalized copies of an activation that a backward also reads).
fn recomputed(g: &Graph, id: NodeId) -> bool {
    let op = &g.node(id).op;
    let cheap = matches!(
        op,
        Op::Transpose
            | Op::Permute { .. }
            | Op::Reshape { .. }
            | Op::Expand { .. }
            | Op::Unary { .. }
            | Op::Binary { .. }
            | Op::Slice { .. }
            | Op::Shift { .. }
            | Op::Unshift { .. }
            | Op::Gather
    );
    let free = |o: &NodeId| g.input_name(*o).is_some() || is_cheap_leaf(&g.node(*o).op);
    cheap && g.operands(id).iter().filter(|o| !free(o)).count() <= 1
}

/// Cuts `grad`, a gradient program that keeps the outputs `outputs` of its primal program
/// (under [`kept_output_name`]) and takes the cotangent inputs `cotangents`, into its forward
/// and backward parts. Every other output of `grad` is a gradient and goes to the backward.
pub fn split_at_cotangents(
    grad: &Program,
    outputs: &[String],
    cotangents: &[String],
) -> Result<SplitGradient, AutodiffError> {
    let g = &grad.graph;
    let order = g
        .topo_order()
        .ok_or_else(|| malformed("the gradient graph has a cycle"))?;
    let cts: BTreeSet<&str> = cotangents.iter().map(String::as_str).collect();
    // Which nodes depend on a cotangent.
    let mut backward_side: BTreeSet<NodeId> = BTreeSet::new();
    for &id in &order {
        let is_ct = g.input_name(id).is_some_and(|n| cts.contains(n));
        if is_ct || g.operands(id).iter().any(|o| backward_side.contains(o)) {
            backward_side.insert(id);
        }
    }
    let kept: BTreeMap<String, &String> =
        outputs.iter().map(|o| (kept_output_name(o), o)).collect();
    let (mut primal_outputs, mut gradients) = (Vec::new(), Vec::new());
    for out in g.outputs() {
        match kept.get(&out.name) {
            Some(name) => primal_outputs.push(((*name).clone(), out.node)),
            None => gradients.push((out.name.clone(), out.node)),
        }
    }
    if primal_outputs.len() != outputs.len() {
        return Err(malformed("the gradient program does not keep every output"));
    }
    if let Some((name, _)) = primal_outputs
        .iter()
        .find(|(_, n)| backward_side.contains(n))
    {
        return Err(malformed(format!(
            "the output `{name}` depends on a cotangent"
        )));
    }

    // The backward part: the nodes that the gradients need, forward-side values as inputs.
    let mut bwd = Copier::new(g);
    let mut residual_nodes: Vec<NodeId> = Vec::new();
    // Forward-side values are where the backward part starts (their operands are not needed),
    // except those it recomputes.
    let needed_by_gradients = reachable(g, gradients.iter().map(|(_, n)| *n), |id| {
        backward_side.contains(&id) || recomputed(g, id)
    });
    for &id in order.iter().filter(|id| needed_by_gradients.contains(id)) {
        let node = g.node(id);
        if g.input_name(id).is_some() || is_cheap_leaf(&node.op) {
            bwd.copy(id)?;
        } else if !backward_side.contains(&id) && !recomputed(g, id) {
            // A forward value: a residual when the backward side (or a gradient) reads it.
            let ty = g
                .tensor_type(id)
                .ok_or_else(|| malformed(format!("residual %{} is not a tensor", id.index())))?;
            let name = residual_name(residual_nodes.len());
            residual_nodes.push(id);
            let input = bwd.dst.add_input(&name, ty.clone())?;
            bwd.copies.insert(id, input);
        } else {
            bwd.copy(id)?;
        }
    }
    for (name, node) in &gradients {
        let copy = bwd.get(*node)?;
        bwd.dst.add_output(name, copy);
    }

    // The forward part: the outputs and the residuals.
    let mut fwd = Copier::new(g);
    let roots = primal_outputs
        .iter()
        .map(|(_, n)| *n)
        .chain(residual_nodes.iter().copied());
    let needed_by_forward = reachable(g, roots, |_| true);
    for &id in order.iter().filter(|id| needed_by_forward.contains(id)) {
        fwd.copy(id)?;
    }
    for (name, node) in &primal_outputs {
        let copy = fwd.get(*node)?;
        fwd.dst.add_output(name, copy);
    }
    let residuals: Vec<String> = (0..residual_nodes.len()).map(residual_name).collect();
    for (name, node) in residuals.iter().zip(&residual_nodes) {
        let copy = fwd.get(*node)?;
        fwd.dst.add_output(name, copy);
    }
    let (fwd, bwd) = (fwd.dst, bwd.dst);

    let base = grad.name.strip_suffix(".grad").unwrap_or(&grad.name);
    let part = |name: String, graph: Graph| {
        let integer_inputs = grad
            .integer_inputs
            .iter()
            .filter(|i| graph.input_by_name(&i.name).is_some())
            .cloned()
            .collect();
        Program {
            name,
            configs: grad.configs.clone(),
            derived_dims: grad.derived_dims.clone(),
            intermediates: Vec::new(),
            integer_inputs,
            graph,
        }
    };
    Ok(SplitGradient {
        forward: part(format!("{base}.forward"), fwd),
        backward: part(format!("{base}.backward"), bwd),
        residuals,
    })
}

/// Nodes of a source graph copied into a new one, each once, operands first.
struct Copier<'a> {
    src: &'a Graph,
    dst: Graph,
    /// Source node → its copy.
    copies: BTreeMap<NodeId, NodeId>,
}

impl<'a> Copier<'a> {
    fn new(src: &'a Graph) -> Self {
        Copier {
            src,
            dst: Graph::new(),
            copies: BTreeMap::new(),
        }
    }

    /// The copy of source node `id`.
    fn get(&self, id: NodeId) -> Result<NodeId, AutodiffError> {
        self.copies
            .get(&id)
            .copied()
            .ok_or_else(|| malformed(format!("%{} is used before it is copied", id.index())))
    }

    /// Copies source node `id` (an input by its name, a leaf, or an op of copied operands).
    fn copy(&mut self, id: NodeId) -> Result<NodeId, AutodiffError> {
        let g = self.src;
        let node = g.node(id);
        let what = || malformed(format!("%{} is not a tensor", id.index()));
        let copy = if let Some(name) = g.input_name(id) {
            let ty = g.tensor_type(id).ok_or_else(what)?;
            self.dst.add_input(name, ty.clone())?
        } else {
            let operands = g
                .operands(id)
                .into_iter()
                .map(|o| self.get(o))
                .collect::<Result<Vec<_>, _>>()?;
            if operands.is_empty() {
                let dtype = g.tensor_type(id).ok_or_else(what)?.dtype;
                self.dst.add_leaf(node.op.clone(), dtype)?
            } else {
                self.dst.add(node.op.clone(), &operands)?
            }
        };
        self.copies.insert(id, copy);
        Ok(copy)
    }
}

/// The nodes `roots` depend on, themselves included, following the operands only of the nodes
/// for which `expand` holds.
fn reachable(
    g: &Graph,
    roots: impl Iterator<Item = NodeId>,
    expand: impl Fn(NodeId) -> bool,
) -> BTreeSet<NodeId> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<NodeId> = roots.collect();
    while let Some(id) = stack.pop() {
        if seen.insert(id) && expand(id) {
            stack.extend(g.operands(id));
        }
    }
    seen
}
