//! The IR verifier: checks that a graph is acyclic, that every node has the right operands and
//! that every stored type is the one its op infers.

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::program::Program;

/// A broken IR invariant (always a compiler bug when it follows a pass).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("IR verification failed in graph `{graph}`{}: {message}", node.map(|n| format!(" at %{}", n.index())).unwrap_or_default())]
pub struct VerifyError {
    /// Which graph (`main`, `main/ttt#3/loss`, ...).
    pub graph: String,
    /// The offending node, if any.
    pub node: Option<NodeId>,
    /// What is wrong.
    pub message: String,
}

/// Verifies a program's main graph and all nested graphs.
pub fn verify_program(program: &Program) -> Result<(), VerifyError> {
    verify_graph(&program.graph, "main")
}

/// Verifies one graph and its nested graphs; `path` names it in errors.
pub fn verify_graph(graph: &Graph, path: &str) -> Result<(), VerifyError> {
    let fail = |node: Option<NodeId>, message: String| VerifyError {
        graph: path.to_string(),
        node,
        message,
    };
    let order = graph
        .topo_order()
        .ok_or_else(|| fail(None, "the graph has a cycle".into()))?;
    for &id in &order {
        let node = graph.node(id);
        let operands = graph.operands(id);
        match &node.op {
            Op::Input { .. } => {
                if !graph.inputs().contains(&id) {
                    return Err(fail(
                        Some(id),
                        "input node missing from the input list".into(),
                    ));
                }
            }
            Op::Const { .. } | Op::Extent { .. } | Op::Iota { .. } => {
                if node.ty.tensor().map(|t| t.shape.clone()) != node.op.leaf_shape() {
                    return Err(fail(
                        Some(id),
                        format!("{} has the wrong shape {}", node.op.name(), node.ty),
                    ));
                }
            }
            op => {
                let tys: Vec<_> = operands.iter().map(|&o| &graph.node(o).ty).collect();
                let inferred = op.infer(&tys).map_err(|e| fail(Some(id), e.0))?;
                if inferred != node.ty {
                    return Err(fail(
                        Some(id),
                        format!("stored type {} but the op infers {inferred}", node.ty),
                    ));
                }
            }
        }
        if let Op::Ttt(scan) | Op::TttVjp { scan, .. } = &node.op {
            let base = format!("{path}/ttt%{}", id.index());
            verify_graph(&scan.loss, &format!("{base}/loss"))?;
            verify_graph(&scan.out, &format!("{base}/out"))?;
            if let Some(g) = &scan.grad {
                verify_graph(g, &format!("{base}/grad"))?;
            }
            if let Some(g) = &scan.step {
                verify_graph(g, &format!("{base}/step"))?;
            }
            if let Some(g) = &scan.step_vjp {
                verify_graph(g, &format!("{base}/step_vjp"))?;
            }
        }
    }
    for &i in graph.inputs() {
        if graph.get(i).is_none() || graph.input_name(i).is_none() {
            return Err(fail(Some(i), "listed input is not an input node".into()));
        }
    }
    for o in graph.outputs() {
        if graph.get(o.node).is_none() {
            return Err(fail(
                None,
                format!("output `{}` names a missing node", o.name),
            ));
        }
    }
    Ok(())
}
