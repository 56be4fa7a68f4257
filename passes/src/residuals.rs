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
    let mut bwd = Graph::new();
    let mut bwd_copies: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    let mut residual_nodes: Vec<NodeId> = Vec::new();
    // Forward-side values are where the backward part starts (their operands are not needed),
    // except those it recomputes.
    let needed_by_gradients = reachable(g, gradients.iter().map(|(_, n)| *n), |id| {
        backward_side.contains(&id) || recomputed(g, id)
    });
    for &id in &order {
        if !needed_by_gradients.contains(&id) {
            continue;
        }
        let node = g.node(id);
        let copy = if let Some(name) = g.input_name(id) {
            copy_input(g, id, name, &mut bwd)?
        } else if is_cheap_leaf(&node.op) {
            let dtype = g
                .tensor_type(id)
                .ok_or_else(|| malformed(format!("leaf %{} is not a tensor", id.index())))?
                .dtype;
            bwd.add_leaf(node.op.clone(), dtype)?
        } else if !backward_side.contains(&id) && !recomputed(g, id) {
            // A forward value: a residual when the backward side (or a gradient) reads it.
            let ty = g
                .tensor_type(id)
                .ok_or_else(|| malformed(format!("residual %{} is not a tensor", id.index())))?;
            let name = residual_name(residual_nodes.len());
            residual_nodes.push(id);
            bwd.add_input(&name, ty.clone())?
        } else {
            let operands = g
                .operands(id)
                .iter()
                .map(|o| {
                    bwd_copies
                        .get(o)
                        .copied()
                        .ok_or_else(|| malformed(format!("operand %{} not copied", o.index())))
                })
                .collect::<Result<Vec<_>, _>>()?;
            bwd.add(node.op.clone(), &operands)?
        };
        bwd_copies.insert(id, copy);
    }
    for (name, node) in &gradients {
        bwd.add_output(name, bwd_copies[node]);
    }

    // The forward part: the outputs and the residuals.
    let mut fwd = Graph::new();
    let mut fwd_copies: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    let roots = primal_outputs
        .iter()
        .map(|(_, n)| *n)
        .chain(residual_nodes.iter().copied());
    let needed_by_forward = reachable(g, roots, |_| true);
    for &id in &order {
        if !needed_by_forward.contains(&id) {
            continue;
        }
        let node = g.node(id);
        let copy = if let Some(name) = g.input_name(id) {
            copy_input(g, id, name, &mut fwd)?
        } else {
            let operands = g
                .operands(id)
                .iter()
                .map(|o| fwd_copies[o])
                .collect::<Vec<_>>();
            if operands.is_empty() {
                let dtype = g
                    .tensor_type(id)
                    .ok_or_else(|| malformed(format!("leaf %{} is not a tensor", id.index())))?
                    .dtype;
                fwd.add_leaf(node.op.clone(), dtype)?
            } else {
                fwd.add(node.op.clone(), &operands)?
            }
        };
        fwd_copies.insert(id, copy);
    }
    for (name, node) in &primal_outputs {
        fwd.add_output(name, fwd_copies[node]);
    }
    let residuals: Vec<String> = (0..residual_nodes.len()).map(residual_name).collect();
    for (name, node) in residuals.iter().zip(&residual_nodes) {
        fwd.add_output(name, fwd_copies[node]);
    }

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

/// Input `id` (named `name`) of `g` as an input of `dst`.
fn copy_input(g: &Graph, id: NodeId, name: &str, dst: &mut Graph) -> Result<NodeId, AutodiffError> {
    let ty = g
        .tensor_type(id)
        .ok_or_else(|| malformed(format!("input `{name}` is not a tensor")))?;
    Ok(dst.add_input(name, ty.clone())?)
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
