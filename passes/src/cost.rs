//! The cost of a bound program, for `tttc cost` and `tttc bench`: FLOPs (a multiply-add
//! counts 2) from the graph, and bytes from the kernel program the lowering really makes.
//!
//! FLOPs count the graph's arithmetic ([`op_flops`] per op; a scan's step graph once per
//! mini-batch and slice). Bytes are what the lowered loops write ([`kernel_bytes`]): every
//! executed store of a materialized value, to a temporary or an output, except the updates of
//! an accumulator in place (`acc[i] = acc[i] + ...`, which a compiled loop keeps in a
//! register). Fusion is decided by `lower_kernel` alone (an elementwise value used once is
//! inlined into its consumer's loop and never stored), so the bytes follow that decision.
//!
//! Not to be confused with the extraction cost of the rewriter
//! ([`crate::rewrite::estimate_graph_cost`]): that one estimates FLOPs + bytes of a graph with
//! symbolic shapes (size hints) before anything is lowered, to choose between equivalent
//! graphs; this one measures a bound program for reporting.

use tttc_ir::kernel::{BufferKind, KernelProgram, Stmt, Value};
use tttc_ir::{
    Graph, NodeType, Op, OperandKind, Program, Shape, TensorType, TttScan, MINI_BATCH_DIM,
};

/// FLOPs and bytes of some computation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cost {
    /// Floating-point operations; a multiply-add counts 2.
    pub flops: u128,
    /// Bytes the lowered program writes (see the module doc).
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

/// FLOPs of one evaluation of `graph` (dimensions known; nested scans counted in full).
pub fn graph_flops(graph: &Graph) -> Result<u128, CostError> {
    let mut total = 0;
    let order = graph
        .topo_order()
        .ok_or_else(|| CostError("the graph has a cycle".into()))?;
    for id in order {
        let node = graph.node(id);
        let operands: Vec<&TensorType> = graph
            .operands(id)
            .iter()
            .filter_map(|&o| graph.tensor_type(o))
            .collect();
        match (&node.op, &node.ty) {
            (Op::Ttt(scan), _) => total += scan_flops(scan, &operands)?,
            (
                Op::TttVjp {
                    scan,
                    checkpoint_every,
                },
                _,
            ) => total += scan_vjp_flops(scan, *checkpoint_every, &operands)?,
            (op, NodeType::Tensor(t)) => total += op_flops(op, &operands, t)?,
            _ => {}
        }
    }
    Ok(total)
}

/// The number of slices (the product of the mapped extents), the sequence length and the
/// mini-batch size of a scan with operands of types `operands`.
fn scan_extents(
    scan: &TttScan,
    operands: &[&TensorType],
) -> Result<(u128, usize, usize), CostError> {
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
    Ok((slices, l, k))
}

/// FLOPs of one evaluation of the live part of `graph` (what its outputs need) with `$k` bound
/// to `k`.
fn step_flops(graph: &Graph, k: usize) -> Result<u128, CostError> {
    let bound = [(MINI_BATCH_DIM.to_string(), k)].into_iter().collect();
    let g = tttc_ir::program::specialize_graph(graph, &bound);
    let mut total = 0;
    let order = g
        .live_order()
        .ok_or_else(|| CostError("the graph has a cycle".into()))?;
    for id in order {
        let operands: Vec<&TensorType> = g
            .operands(id)
            .iter()
            .filter_map(|&o| g.tensor_type(o))
            .collect();
        if let NodeType::Tensor(t) = &g.node(id).ty {
            total += op_flops(&g.node(id).op, &operands, t)?;
        }
    }
    Ok(total)
}

/// FLOPs of a scan's backward (`ttt_vjp`) as the kernels run it: per slice, the forward to the
/// last checkpoint and the recomputation inside each group (the step's `next_<state>`
/// outputs only), and `step_vjp` once per mini-batch.
fn scan_vjp_flops(
    scan: &TttScan,
    checkpoint_every: usize,
    operands: &[&TensorType],
) -> Result<u128, CostError> {
    let n = scan.operand_count().min(operands.len());
    let (slices, l, k) = scan_extents(scan, &operands[..n])?;
    let (Some(step), Some(step_vjp)) = (&scan.step, &scan.step_vjp) else {
        return Err(CostError("the scan has no step or step_vjp graph".into()));
    };
    if k == 0 || l == 0 {
        return Ok(0);
    }
    let (full, rem) = (l / k, l % k);
    let nmb = full + usize::from(rem > 0);
    let group = checkpoint_every.max(1);
    let ngroups = nmb.div_ceil(group);
    // Forward to the last group's start, then every mini-batch of a group but its last again.
    let forward_steps = (ngroups - 1) * group;
    let recomputed = nmb - ngroups;
    let mut next_only = step.clone();
    let names: Vec<String> = scan
        .states
        .iter()
        .map(|s| TttScan::next_output_name(s))
        .collect();
    next_only.retain_outputs(|o| names.contains(&o.name));
    let mut total = step_flops(&next_only, k)? * (forward_steps + recomputed) as u128;
    total += step_flops(step_vjp, k)? * full as u128;
    if rem > 0 {
        total += step_flops(step_vjp, rem)?;
    }
    Ok(total * slices)
}

/// FLOPs of a whole scan: its step graph once per mini-batch and mapped slice (the
/// token-by-token graphs when it has no step graph).
fn scan_flops(scan: &TttScan, operands: &[&TensorType]) -> Result<u128, CostError> {
    let (slices, l, k) = scan_extents(scan, operands)?;
    let Some(step) = &scan.step else {
        // Token by token: a gradient and an output per token.
        let grad = scan
            .grad
            .as_ref()
            .ok_or_else(|| CostError("the scan has no gradient graph".into()))?;
        let per_token = graph_flops(grad)? + graph_flops(&scan.out)?;
        return Ok(per_token * (l as u128 * slices));
    };
    let mut total = 0;
    for (len, count) in [(k, l / k), (l % k, 1)] {
        if len == 0 || count == 0 {
            continue;
        }
        let bound = [(MINI_BATCH_DIM.to_string(), len)].into_iter().collect();
        let g = tttc_ir::program::specialize_graph(step, &bound);
        total += graph_flops(&g)? * count as u128;
    }
    Ok(total * slices)
}

/// Bytes the kernel program writes in one run: every executed store to a temporary or an
/// output, times the element size, except in-place accumulator updates (a store whose value
/// reads the same element of the same buffer).
pub fn kernel_bytes(program: &KernelProgram) -> u128 {
    fn stores(p: &KernelProgram, body: &[Stmt], times: u128) -> u128 {
        body.iter()
            .map(|s| match s {
                Stmt::Loop { extent, body, .. } => stores(p, body, times * *extent as u128),
                Stmt::Store { buf, index, value } => {
                    let written = p
                        .buffer(*buf)
                        .is_some_and(|b| !matches!(b.kind, BufferKind::Input(_)));
                    let accumulates = match value {
                        Value::Binary(_, a, b) => [a, b].iter().any(|v| {
                            matches!(&***v, Value::Load { buf: lb, index: li } if lb == buf && li == index)
                        }),
                        _ => false,
                    };
                    if written && !accumulates {
                        times
                    } else {
                        0
                    }
                }
                Stmt::Barrier => 0,
                // As its reference loop nest: the zeroing stores count, the accumulating ones
                // do not.
                Stmt::Gemm(g) if !g.accumulate => {
                    times * g.batch_count() as u128 * (g.m as u128 * g.n as u128)
                }
                Stmt::Gemm(_) => 0,
                Stmt::Call { func, .. } => p
                    .function(*func)
                    .map_or(0, |f| stores(p, &f.body, times)),
            })
            .sum()
    }
    stores(program, &program.body, 1) * program.dtype.size_bytes() as u128
}

/// The cost of a bound program whose lowering is `kernels` (FLOPs from the graph, bytes from
/// the kernel program).
pub fn cost_of(program: &Program, kernels: &KernelProgram) -> Result<Cost, CostError> {
    Ok(Cost {
        flops: graph_flops(&program.graph)?,
        bytes: kernel_bytes(kernels),
    })
}

/// The cost of a bound program (every dimension known, every scan with its step graph),
/// lowering it to the kernel IR for the bytes.
pub fn program_cost(program: &Program) -> Result<Cost, CostError> {
    let kernels = crate::lower_kernel::lower_program(program)
        .map_err(|e| CostError(format!("lowering to kernel IR: {e}")))?;
    cost_of(program, &kernels)
}
