//! The cost model shared by `tttc cost` and reports: FLOPs (a multiply-add counts 2) and bytes
//! (the summed size of every materialized intermediate) of graphs whose shapes are known.

use tttc_ir::{
    Graph, NodeType, Op, OperandKind, Program, Shape, TensorType, TttScan, MINI_BATCH_DIM,
};

/// FLOPs and bytes of some computation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cost {
    /// Floating-point operations; a multiply-add counts 2.
    pub flops: u128,
    /// Bytes of materialized intermediates.
    pub bytes: u128,
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            flops: self.flops + o.flops,
            bytes: self.bytes + o.bytes,
        }
    }
}

impl std::ops::Mul<u128> for Cost {
    type Output = Cost;
    fn mul(self, n: u128) -> Cost {
        Cost {
            flops: self.flops * n,
            bytes: self.bytes * n,
        }
    }
}

/// Why a cost cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot cost this graph: {0}")]
pub struct CostError(pub String);

fn elements(shape: &Shape) -> Result<u128, CostError> {
    shape
        .to_known()
        .map(|d| d.iter().map(|&x| x as u128).product())
        .ok_or_else(|| CostError(format!("shape {shape} is not fully known")))
}

/// FLOPs of one op with the given operand and result types (all dimensions known).
pub fn op_flops(op: &Op, operands: &[&TensorType], result: &TensorType) -> Result<u128, CostError> {
    let out = elements(&result.shape)?;
    Ok(match op {
        Op::Unary { .. } | Op::Binary { .. } => out,
        Op::MatMul => {
            let a = operands
                .first()
                .ok_or_else(|| CostError("matmul without operands".into()))?;
            let inner = a.shape.0.last().and_then(|d| d.known()).unwrap_or(0) as u128;
            2 * out * inner
        }
        Op::Reduce { .. } | Op::SumTo { .. } => {
            operands.first().map_or(Ok(0), |a| elements(&a.shape))?
        }
        Op::Mix => {
            // out [p, row...], weights [p, k]
            let k = operands
                .first()
                .and_then(|w| w.shape.0.get(1))
                .and_then(|d| d.known())
                .unwrap_or(0) as u128;
            2 * out * k
        }
        Op::MixOuter => {
            let k = operands
                .first()
                .and_then(|w| w.shape.0.get(1))
                .and_then(|d| d.known())
                .unwrap_or(0) as u128;
            2 * out * k
        }
        _ => 0,
    })
}

/// Whether an op's result is a view of its operand or a leaf (costs no bytes).
fn is_view_or_leaf(op: &Op) -> bool {
    matches!(
        op,
        Op::Input { .. }
            | Op::Const { .. }
            | Op::Extent { .. }
            | Op::Reshape { .. }
            | Op::Get { .. }
    )
}

/// Cost of one evaluation of `graph` (dimensions known; nested scans counted in full).
/// When the graph is fused (it has kernels), only nodes used outside their kernel or as outputs
/// are materialized.
pub fn graph_cost(graph: &Graph) -> Result<Cost, CostError> {
    let mut total = Cost::default();
    let order = graph
        .topo_order()
        .ok_or_else(|| CostError("the graph has a cycle".into()))?;
    let outputs: Vec<_> = graph.outputs().iter().map(|o| o.node).collect();
    for id in order {
        let node = graph.node(id);
        let operands: Vec<&TensorType> = graph
            .operands(id)
            .iter()
            .filter_map(|&o| graph.tensor_type(o))
            .collect();
        match (&node.op, &node.ty) {
            (Op::Ttt(scan), _) => total = total + scan_cost(scan, &operands)?,
            (op, NodeType::Tensor(t)) => {
                total.flops += op_flops(op, &operands, t)?;
                let materialized = !is_view_or_leaf(op)
                    && (graph.kernel_of(id).is_none()
                        || outputs.contains(&id)
                        || graph
                            .users(id)
                            .iter()
                            .any(|&u| graph.kernel_of(u) != graph.kernel_of(id)));
                if materialized {
                    total.bytes += elements(&t.shape)? * t.dtype.size_bytes() as u128;
                }
            }
            _ => {}
        }
    }
    Ok(total)
}

/// Cost of a whole scan: its step graph once per mini-batch and mapped slice (the token-by-token
/// graphs when it has no step graph).
fn scan_cost(scan: &TttScan, operands: &[&TensorType]) -> Result<Cost, CostError> {
    let mut slices: u128 = 1;
    let mut seq_len: Option<usize> = None;
    let mut counted = vec![false; scan.per.len()];
    for (i, t) in operands.iter().enumerate() {
        let axes = scan
            .axes
            .get(i)
            .ok_or_else(|| CostError("scan operand without axes".into()))?;
        for (d, p) in t.shape.0.iter().zip(&axes.per) {
            if let Some(p) = *p {
                if !counted[p] {
                    counted[p] = true;
                    slices *= d.known().unwrap_or(1) as u128;
                }
            }
        }
        if matches!(scan.operand_kind(i), OperandKind::LossArg(0)) {
            seq_len = axes.slice_shape(&t.shape).0.first().and_then(|d| d.known());
        }
    }
    let l = seq_len.ok_or_else(|| CostError("unknown sequence length".into()))?;
    let k = scan
        .mini_batch
        .known()
        .ok_or_else(|| CostError("unknown mini-batch size".into()))?;
    let Some(step) = &scan.step else {
        // Token by token: a gradient and an output per token.
        let grad = scan
            .grad
            .as_ref()
            .ok_or_else(|| CostError("the scan has no gradient graph".into()))?;
        let per_token = graph_cost(grad)? + graph_cost(&scan.out)?;
        return Ok(per_token * (l as u128 * slices));
    };
    let mut total = Cost::default();
    for (len, count) in [(k, l / k), (l % k, 1)] {
        if len == 0 || count == 0 {
            continue;
        }
        let bound = [(MINI_BATCH_DIM.to_string(), len)].into_iter().collect();
        let g = tttc_ir::program::specialize_graph(step, &bound);
        total = total + graph_cost(&g)? * count as u128;
    }
    Ok(total * slices)
}

/// Cost of a specialized program's main graph.
pub fn program_cost(program: &Program) -> Result<Cost, CostError> {
    graph_cost(&program.graph)
}
