//! What a token step computes from the mini-batch's starting states and the params alone is
//! the same for every token of the mini-batch: hoisted into a program of its own that a session
//! runs once per mini-batch.
//!
//! Only transposes (and permutes) read as the right operand of a product are hoisted: the
//! kernel lowering would copy them to contiguous rows on every token (the backward of every
//! `x @ W` has a `δ @ Wᵀ`, whose `Wᵀ` is a copy of the whole weight per token, the largest cost
//! of TTT-MLP's step). Everything else the step reads from its states it reads in place.

use std::collections::{BTreeMap, HashSet};
use tttc_ir::{Graph, GraphError, NodeId, Op};

/// The input name of hoisted value `j`.
pub fn invariant_name(j: usize) -> String {
    format!("inv.{j}")
}

/// Whether a token-step input holds the same value for every token of a mini-batch: the
/// states at its start (`theta.<s>`) and the params (`param.<i>`).
fn is_invariant_input(name: &str) -> bool {
    name.starts_with("theta.") || name.starts_with("param.")
}

/// `step` with its hoistable values ([module doc](self)) read from new inputs `inv.<j>`, and
/// the graph computing them (inputs: the `theta.<s>`/`param.<i>` inputs it reads; outputs
/// `inv.<j>`), or `None` (and `step` as it is) when there is nothing to hoist.
pub fn hoist_invariants(step: &Graph) -> Result<(Graph, Option<Graph>), GraphError> {
    let Some(order) = step.topo_order() else {
        return Ok((step.clone(), None));
    };
    let mut invariant: HashSet<NodeId> = HashSet::new();
    for &id in &order {
        let yes = match &step.node(id).op {
            Op::Input { name } => is_invariant_input(name),
            _ => step.operands(id).iter().all(|o| invariant.contains(o)),
        };
        if yes {
            invariant.insert(id);
        }
    }
    let mut hoisted: BTreeMap<NodeId, String> = BTreeMap::new();
    let mut outputs = Vec::new();
    for &id in &order {
        let is_view = matches!(step.node(id).op, Op::Transpose | Op::Permute { .. });
        let read_as_rhs = step.users(id).into_iter().any(|u| {
            matches!(step.node(u).op, Op::MatMul)
                && !invariant.contains(&u)
                && step.operands(u).get(1) == Some(&id)
        });
        if is_view && invariant.contains(&id) && read_as_rhs {
            let name = invariant_name(hoisted.len());
            outputs.push((name.clone(), id));
            hoisted.insert(id, name);
        }
    }
    if hoisted.is_empty() {
        return Ok((step.clone(), None));
    }
    let step_outputs: Vec<(String, NodeId)> = step
        .outputs()
        .iter()
        .map(|o| (o.name.clone(), o.node))
        .collect();
    let new_step = copy_live(step, &order, &hoisted, &step_outputs, true)?;
    let invariants = copy_live(step, &order, &BTreeMap::new(), &outputs, false)?;
    Ok((new_step, Some(invariants)))
}

/// A copy of what `outputs` (named nodes of `src`) need, every node of `as_inputs` read from an
/// input of that name instead of computed. Inputs keep their order (every one of them with
/// `all_inputs`, else those used); new ones come last.
fn copy_live(
    src: &Graph,
    order: &[NodeId],
    as_inputs: &BTreeMap<NodeId, String>,
    outputs: &[(String, NodeId)],
    all_inputs: bool,
) -> Result<Graph, GraphError> {
    // Live: reachable from the outputs, not through a replaced node.
    let mut live: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = outputs.iter().map(|(_, id)| *id).collect();
    while let Some(id) = stack.pop() {
        if !live.insert(id) || as_inputs.contains_key(&id) {
            continue;
        }
        stack.extend(src.operands(id));
    }
    let mut g = Graph::new();
    let mut map: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    let type_of = |id: NodeId| {
        src.tensor_type(id)
            .cloned()
            .ok_or(GraphError::UnknownNode(id))
    };
    for &id in src.inputs() {
        if all_inputs || live.contains(&id) {
            let name = src.input_name(id).unwrap_or_default();
            map.insert(id, g.add_input(name, type_of(id)?)?);
        }
    }
    for (&id, name) in as_inputs {
        if live.contains(&id) {
            map.insert(id, g.add_input(name, type_of(id)?)?);
        }
    }
    for &id in order {
        if !live.contains(&id) || map.contains_key(&id) {
            continue;
        }
        let op = src.node(id).op.clone();
        let operands = src
            .operands(id)
            .iter()
            .map(|o| map.get(o).copied().ok_or(GraphError::UnknownNode(*o)))
            .collect::<Result<Vec<_>, _>>()?;
        let copy = match op {
            Op::Const { value } => g.add_const(value, type_of(id)?.dtype),
            _ if operands.is_empty() => g.add_leaf(op, type_of(id)?.dtype)?,
            _ => g.add(op, &operands)?,
        };
        map.insert(id, copy);
    }
    for (name, id) in outputs {
        let node = map.get(id).copied().ok_or(GraphError::UnknownNode(*id))?;
        g.add_output(name, node);
    }
    Ok(g)
}
