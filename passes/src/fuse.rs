//! Fusion: groups the ops of each scan's step graph (and of the main graph) into kernels.
//!
//! The rule is the classic one: a kernel starts at every op that is not elementwise (a matmul,
//! a reduction, a mix) and at every elementwise op that cannot join its producer; an
//! elementwise op (unary, binary, expand, reshape, transpose, permute) joins the kernel of its
//! first non-leaf operand when it is that operand's only user, so chains such as
//! `matmul → add bias → gelu` become one kernel whose intermediates never reach memory.
//! Leaves (inputs, constants, extents, iotas) belong to no kernel. Kernel numbers follow the
//! printed order and are visible in `tttc inspect`.

use crate::{Pass, PassError};
use tttc_ir::{Graph, NodeId, Op, Program};

/// The fusion pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fuse;

impl Pass for Fuse {
    fn name(&self) -> &'static str {
        "fuse"
    }

    fn run(&self, program: &mut Program) -> Result<(), PassError> {
        for id in program.graph.node_ids() {
            if let Some(node) = program.graph.node_mut(id) {
                if let Op::Ttt(scan) = &mut node.op {
                    if let Some(step) = &mut scan.step {
                        fuse_graph(step);
                    }
                }
            }
        }
        fuse_graph(&mut program.graph);
        Ok(())
    }
}

fn is_leaf(op: &Op) -> bool {
    matches!(
        op,
        Op::Input { .. } | Op::Const { .. } | Op::Extent { .. } | Op::Iota { .. }
    )
}

fn is_elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary { .. }
            | Op::Binary { .. }
            | Op::Expand { .. }
            | Op::Reshape { .. }
            | Op::Transpose
            | Op::Permute { .. }
    )
}

/// Assigns kernels to the nodes of `graph` (see the module doc).
pub fn fuse_graph(graph: &mut Graph) {
    let Some(order) = graph.topo_order() else {
        return;
    };
    let mut next = 0u32;
    // A map, not a list searched per node: fusing must stay linear in the graph's size.
    let mut assigned: std::collections::BTreeMap<NodeId, u32> = std::collections::BTreeMap::new();
    let kernel_of =
        |assigned: &std::collections::BTreeMap<NodeId, u32>, id: NodeId| assigned.get(&id).copied();
    for id in order {
        let op = &graph.node(id).op;
        if is_leaf(op) || matches!(op, Op::Ttt(_) | Op::Get { .. }) {
            continue;
        }
        let joined = if is_elementwise(op) {
            graph
                .operands(id)
                .into_iter()
                .find(|&o| !is_leaf(&graph.node(o).op))
                .filter(|&o| graph.users(o).iter().all(|&u| u == id))
                .and_then(|o| kernel_of(&assigned, o))
        } else {
            None
        };
        let k = joined.unwrap_or_else(|| {
            next += 1;
            next - 1
        });
        assigned.insert(id, k);
    }
    for (id, k) in assigned {
        graph.set_kernel(id, k);
    }
}
