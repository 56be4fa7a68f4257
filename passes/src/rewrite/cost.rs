//! The extraction cost model of the rewriter: FLOPs plus bytes moved, estimated on (possibly symbolic) shapes with size
//! hints ([`SizeHints`]: `$k` = 16 and 64 for other symbols by default).
//!
//! Per node, with `elems` the result's element count and `bytes` its size:
//!
//! | node | FLOPs | bytes |
//! | --- | --- | --- |
//! | input, constant, extent, attribute, opaque | 0 | 0 |
//! | unary, binary, iota | `elems` | `bytes` |
//! | matmul `[.., m, k] @ [.., k, n]` | `2 m n k` per batch element | `bytes` |
//! | reduce, sum_to | one per *operand* element | `bytes` |
//! | mix `w [p,k]`, `x [k, row..]` | `2 p k row` | `k · bytes` |
//! | mix_outer `w [p,k]`, `u [k,m]`, `d [k,n]` | `2 p k m n` | `k · bytes` |
//! | reshape | 0 | 1 |
//! | transpose, permute, expand | 0 | `1 + bytes / 8` |
//!
//! A mix accumulates `k` scaled rows into every result row, so it moves `k` times its result
//! (the reference loop does exactly that; a matmul keeps its accumulators in registers): with
//! equal FLOPs, the matmul forms of the dual form are preferred. Every op node costs at least
//! 1, so the cost is monotonic (a node costs at least the sum of its children, strictly more
//! than each) and a tree-cost extraction is never cyclic.

use super::analysis::{tensor_children, ClassData, TensorGraph};
use super::lang::TensorLang;
use egg::{CostFunction, Id, Language};
use std::collections::BTreeMap;
use tttc_ir::{Dim, Graph, Op, TensorType, MINI_BATCH_DIM};

/// Extents assumed for symbolic dimensions when costing a graph whose dimensions are not bound
/// yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeHints {
    /// The extent of a symbol not listed in `dims`.
    pub default: usize,
    /// Extents of named symbols.
    pub dims: BTreeMap<String, usize>,
}

impl Default for SizeHints {
    /// `$k` (the mini-batch length) = 16, every other symbol 64.
    fn default() -> Self {
        SizeHints {
            default: 64,
            dims: BTreeMap::from([(MINI_BATCH_DIM.to_string(), 16)]),
        }
    }
}

impl SizeHints {
    /// The assumed extent of one dimension.
    pub fn dim(&self, d: &Dim) -> f64 {
        match d {
            Dim::Known(n) => *n as f64,
            Dim::Sym(s) => self.dims.get(s).copied().unwrap_or(self.default) as f64,
        }
    }

    /// The assumed number of elements of a shape.
    pub fn elements(&self, dims: &[Dim]) -> f64 {
        dims.iter().map(|d| self.dim(d)).product()
    }
}

/// FLOPs and bytes of a graph or a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct GraphCost {
    /// Floating-point operations.
    pub flops: f64,
    /// Bytes written (each node's result).
    pub bytes: f64,
}

impl GraphCost {
    /// The scalar the extractor minimizes: FLOPs + bytes.
    pub fn total(&self) -> f64 {
        self.flops + self.bytes
    }
}

impl std::ops::Add for GraphCost {
    type Output = GraphCost;
    fn add(self, o: GraphCost) -> GraphCost {
        GraphCost {
            flops: self.flops + o.flops,
            bytes: self.bytes + o.bytes,
        }
    }
}

impl std::fmt::Display for GraphCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} flops + {:.0} bytes = {:.0}",
            self.flops,
            self.bytes,
            self.total()
        )
    }
}

/// The kind of work a node does, independent of how the node is represented.
enum Work<'a> {
    /// No work: inputs, constants, attributes, opaque values.
    Free,
    /// A view or layout change: 1 plus an eighth of the result's bytes (cheap, not free).
    View,
    /// A reshape: 1 (row-major data is reinterpreted).
    Reshape,
    /// One FLOP per result element (elementwise ops, iota).
    PerResult,
    /// One FLOP per element of the (first) operand (reductions, `sum_to`).
    PerInput(&'a TensorType),
    /// `2 m n k` per batch element: `k` is the contraction length.
    MatMul(&'a TensorType),
    /// `2 p k row` FLOPs for the operand rows `x [k, row...]`; `k` times the result's bytes
    /// (a mix accumulates `k` scaled rows into every result row).
    Mix(&'a TensorType),
    /// `2 p k m n` FLOPs for the weights `w [p, k]`; `k` times the result's bytes.
    MixOuter(&'a TensorType),
}

fn node_cost(work: Work<'_>, result: &TensorType, hints: &SizeHints) -> GraphCost {
    let elems = hints.elements(&result.shape.0);
    let bytes = elems * result.dtype.size_bytes() as f64;
    let last = |t: &TensorType| t.shape.0.last().map_or(1.0, |d| hints.dim(d));
    let first = |t: &TensorType| t.shape.0.first().map_or(1.0, |d| hints.dim(d));
    let (flops, bytes) = match work {
        Work::Free => (0.0, 0.0),
        Work::View => (0.0, 1.0 + bytes / 8.0),
        Work::Reshape => (0.0, 1.0),
        Work::PerResult => (elems, bytes),
        Work::PerInput(a) => (hints.elements(&a.shape.0), bytes),
        // Result [..., m, n] with contraction k: 2 m n k per batch element.
        Work::MatMul(a) => (2.0 * elems * last(a), bytes),
        // Result [p, row...], contraction over the k rows: k accumulation passes over the
        // result (no blocked kernel), so k times its bytes are moved.
        Work::Mix(x) => (2.0 * elems * first(x), bytes * first(x)),
        // Result [p, m, n], contraction over k (the weights' second axis), k passes as above.
        Work::MixOuter(w) => (2.0 * elems * last(w), bytes * last(w)),
    };
    // Every op node costs at least 1 (monotonic, strictly increasing along edges).
    let floor = if matches!(work, Work::Free) { 0.0 } else { 1.0 };
    let c = GraphCost { flops, bytes };
    if c.total() < floor {
        GraphCost {
            flops,
            bytes: floor,
        }
    } else {
        c
    }
}

fn work_of_ir<'a>(op: &Op, operands: &[&'a TensorType]) -> Work<'a> {
    let first = operands.first().copied();
    match (op, first) {
        (Op::Input { .. } | Op::Const { .. } | Op::Extent { .. } | Op::Get { .. }, _) => Work::Free,
        (Op::Ttt(_) | Op::TttVjp { .. }, _) => Work::Free,
        (Op::Iota { .. } | Op::Unary { .. } | Op::Binary { .. }, _) => Work::PerResult,
        (Op::Transpose | Op::Permute { .. } | Op::Expand { .. }, _) => Work::View,
        (Op::Reshape { .. }, _) => Work::Reshape,
        (Op::Reduce { .. } | Op::SumTo { .. }, Some(a)) => Work::PerInput(a),
        (Op::MatMul, Some(a)) => Work::MatMul(a),
        (Op::Mix, _) => match operands.get(1) {
            Some(x) => Work::Mix(x),
            None => Work::PerResult,
        },
        (Op::MixOuter, Some(w)) => Work::MixOuter(w),
        (Op::ScatterAdd { .. }, Some(a)) => Work::PerInput(a),
        _ => Work::PerResult,
    }
}

/// The cost of one IR node with the given operand types and result type.
pub fn ir_node_cost(
    op: &Op,
    operands: &[&TensorType],
    result: &TensorType,
    hints: &SizeHints,
) -> GraphCost {
    node_cost(work_of_ir(op, operands), result, hints)
}

/// The extraction cost of a graph, estimated with size hints for symbolic dimensions: the sum
/// over its live nodes (each counted once; nested scan graphs are not included). What the
/// rewriter minimizes to choose between equivalent graphs; the cost of a bound program as
/// lowered (for `tttc cost`) is [`crate::cost::program_cost`].
pub fn estimate_graph_cost(graph: &Graph, hints: &SizeHints) -> GraphCost {
    let Some(order) = graph.live_order() else {
        return GraphCost {
            flops: f64::INFINITY,
            bytes: f64::INFINITY,
        };
    };
    let mut total = GraphCost::default();
    for id in order {
        let node = graph.node(id);
        let Some(result) = node.ty.tensor() else {
            continue;
        };
        let operands: Vec<&TensorType> = graph
            .operands(id)
            .into_iter()
            .filter_map(|o| graph.tensor_type(o))
            .collect();
        total = total + ir_node_cost(&node.op, &operands, result, hints);
    }
    total
}

/// The extraction cost function: FLOPs + bytes of the node, plus its children's costs.
pub struct CostModel<'a> {
    egraph: &'a TensorGraph,
    hints: &'a SizeHints,
}

impl<'a> CostModel<'a> {
    /// A cost model reading shapes from `egraph`.
    pub fn new(egraph: &'a TensorGraph, hints: &'a SizeHints) -> Self {
        CostModel { egraph, hints }
    }

    /// The cost of `enode` alone.
    pub fn own_cost(&self, enode: &TensorLang) -> f64 {
        let data = |id: Id| &self.egraph[id].data;
        let Some(result) = enode_result(self.egraph, enode) else {
            // Attributes; an ill-typed node is never picked.
            return if enode.is_attr() { 0.0 } else { f64::INFINITY };
        };
        let operands: Vec<&TensorType> = tensor_children(enode)
            .iter()
            .filter_map(|&c| data(c).tensor())
            .collect();
        let work = match enode {
            TensorLang::Input { .. }
            | TensorLang::Opaque { .. }
            | TensorLang::Const { .. }
            | TensorLang::Extent { .. } => Work::Free,
            TensorLang::ShapeAttr(_) | TensorLang::PermAttr(_) | TensorLang::AxisAttr(_) => {
                Work::Free
            }
            TensorLang::Iota { .. } | TensorLang::Unary(..) | TensorLang::Binary(..) => {
                Work::PerResult
            }
            TensorLang::Transpose(_) | TensorLang::Permute(_) | TensorLang::Expand(_) => Work::View,
            TensorLang::Reshape(_) => Work::Reshape,
            TensorLang::Reduce(..) | TensorLang::SumTo(_) => match operands.first() {
                Some(a) => Work::PerInput(a),
                None => return f64::INFINITY,
            },
            TensorLang::MatMul(_) => match operands.first() {
                Some(a) => Work::MatMul(a),
                None => return f64::INFINITY,
            },
            TensorLang::Mix(_) => match operands.get(1) {
                Some(x) => Work::Mix(x),
                None => return f64::INFINITY,
            },
            TensorLang::MixOuter(_) => match operands.first() {
                Some(w) => Work::MixOuter(w),
                None => return f64::INFINITY,
            },
        };
        node_cost(work, result, self.hints).total()
    }
}

fn enode_result<'a>(egraph: &'a TensorGraph, enode: &TensorLang) -> Option<&'a TensorType> {
    // The node's result type is its e-class's type; find the class through the hashcons.
    let id = egraph.lookup(enode.clone())?;
    match &egraph[id].data {
        ClassData::Tensor { ty, .. } => Some(ty),
        _ => None,
    }
}

impl CostFunction<TensorLang> for CostModel<'_> {
    type Cost = f64;

    fn cost<C>(&mut self, enode: &TensorLang, mut costs: C) -> f64
    where
        C: FnMut(Id) -> f64,
    {
        let own = self.own_cost(enode);
        let total = enode.fold(own, |acc, id| acc + costs(id));
        if total.is_nan() {
            f64::INFINITY
        } else {
            total
        }
    }
}
