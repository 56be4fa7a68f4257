//! Batching (vmap) of per-token graphs over a mini-batch.
//!
//! [`batch_graph`] copies a graph written for one token into another graph, where some of its
//! inputs now hold a whole block of tokens: a *batched* value has a new **leading** axis of
//! extent `k` (the block), followed by its per-token shape. A node is batched iff it depends on
//! a batched input; every other node is copied unchanged (it is the same for every token).
//!
//! The rules, for a batched node whose per-token result has shape `s` (batched: `[k, s...]`):
//!
//! | op | batched form |
//! | --- | --- |
//! | unary | the same op |
//! | binary | batched operands whose per-token rank is below the result's are reshaped to `[k, 1.., s...]`, so trailing axes stay aligned; unbatched operands are used as they are |
//! | matmul | the same padding; the leading `k` acts as one more batch axis |
//! | transpose | the same op (last two axes) |
//! | permute | `[0] ++ (perm + 1)` |
//! | reduce | axis `+ 1` |
//! | expand | operand padded to the target rank, then expand to `[k, target...]` |
//! | sum_to | `[k, target...]`; when the operand's per-token rank exceeds the target's, sum to `[k, 1.., target...]` and reshape to `[k, target...]` |
//! | reshape | `[k, target...]` (row-major order keeps each token's block contiguous) |
//! | const, extent, iota | never batched |
//! | mix, mix_outer, ttt, get | an error when batched (copied when unbatched) |
//!
//! The destination graph is built only through [`Graph::add`], [`Graph::add_const`] and
//! [`Graph::add_leaf`], so every node's type is inferred and checked as it is created.

use std::collections::BTreeMap;

use tttc_ir::{Dim, Graph, GraphError, NodeId, Op, Shape, TensorType};

/// Why a graph could not be batched.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// `batched_inputs` or `inputs` does not have one entry per input of the source graph.
    #[error("the source graph has {expected} input(s), but {got} {what} were given")]
    InputCount {
        /// What was miscounted (`batching flags`, `destination inputs`).
        what: &'static str,
        /// The number of inputs of the source graph.
        expected: usize,
        /// The number given.
        got: usize,
    },
    /// A destination node given for a source input has the wrong type.
    #[error("input `{name}`: expected a destination node of type {expected}, got {got}")]
    InputType {
        /// The input's name.
        name: String,
        /// The type it must have (`[k, ...]` when batched).
        expected: String,
        /// The type it has.
        got: String,
    },
    /// A batched node has an op that cannot be batched (a nested scan, `get`, `mix`,
    /// `mix_outer`: ops that do not belong in a per-token graph).
    #[error("cannot batch `{op}` (node %{node}): it does not belong in a per-token graph")]
    Unsupported {
        /// The op's name.
        op: &'static str,
        /// The node's index in the source graph.
        node: usize,
    },
    /// Building a node failed (a batching rule produced an ill-typed node, which is a compiler
    /// bug, or the source graph itself is ill-typed).
    #[error("building the batched graph: {0}")]
    Ir(#[from] GraphError),
    /// The source graph violates an IR invariant (a cycle, a tuple where a tensor is needed).
    #[error("malformed source graph: {0}")]
    Malformed(String),
}

/// A source node's copy in the destination graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batched {
    /// The destination node.
    pub node: NodeId,
    /// Whether it carries the leading block axis (`[k, per-token shape...]`).
    pub batched: bool,
}

/// Batches `src` into `dst`: `inputs[i]` is the destination node standing for source input `i`
/// (in `src.inputs()` order), of type `[k, ...]` ++ its per-token shape when
/// `batched_inputs[i]`, else of the per-token type itself. Returns, for every output of `src`
/// (in order), its destination node; every one is batched (`[k, ...]`): an output that does not
/// depend on a batched input is broadcast to the block with `expand`.
pub fn batch_graph(
    src: &Graph,
    batched_inputs: &[bool],
    k: &Dim,
    dst: &mut Graph,
    inputs: &[NodeId],
) -> Result<Vec<NodeId>, BatchError> {
    let outs = batch_outputs(src, batched_inputs, k, dst, inputs)?;
    let mut b = Batcher {
        src,
        dst,
        k: k.clone(),
        map: BTreeMap::new(),
    };
    outs.into_iter().map(|o| b.force(o)).collect()
}

/// Like [`batch_graph`], but leaves outputs that do not depend on a batched input unbatched
/// (in their per-token shape), and says which are which.
pub fn batch_outputs(
    src: &Graph,
    batched_inputs: &[bool],
    k: &Dim,
    dst: &mut Graph,
    inputs: &[NodeId],
) -> Result<Vec<Batched>, BatchError> {
    let n = src.inputs().len();
    if batched_inputs.len() != n {
        return Err(BatchError::InputCount {
            what: "batching flags",
            expected: n,
            got: batched_inputs.len(),
        });
    }
    if inputs.len() != n {
        return Err(BatchError::InputCount {
            what: "destination inputs",
            expected: n,
            got: inputs.len(),
        });
    }
    let mut b = Batcher {
        src,
        dst,
        k: k.clone(),
        map: BTreeMap::new(),
    };
    for ((&s, &d), &batched) in src.inputs().iter().zip(inputs).zip(batched_inputs) {
        let name = src.input_name(s).unwrap_or("?").to_string();
        let per_token = src_tensor(src, s)?;
        let expected = if batched {
            b.lift_type(&per_token)
        } else {
            per_token
        };
        let got = b
            .dst
            .tensor_type(d)
            .ok_or(GraphError::UnknownNode(d))?
            .clone();
        if got != expected {
            return Err(BatchError::InputType {
                name,
                expected: expected.to_string(),
                got: got.to_string(),
            });
        }
        b.map.insert(s, Batched { node: d, batched });
    }
    let order = src
        .live_order()
        .ok_or_else(|| BatchError::Malformed("the graph has a cycle".into()))?;
    for id in order {
        if b.map.contains_key(&id) {
            continue;
        }
        let v = b.node(id)?;
        b.map.insert(id, v);
    }
    src.outputs()
        .iter()
        .map(|o| {
            b.map.get(&o.node).copied().ok_or_else(|| {
                BatchError::Malformed(format!("output `{}` was not reached", o.name))
            })
        })
        .collect()
}

/// The tensor type of source node `id`.
fn src_tensor(graph: &Graph, id: NodeId) -> Result<TensorType, BatchError> {
    graph
        .tensor_type(id)
        .cloned()
        .ok_or_else(|| BatchError::Malformed(format!("node %{} is not a tensor", id.index())))
}

/// The state of one batching run.
struct Batcher<'a> {
    src: &'a Graph,
    dst: &'a mut Graph,
    k: Dim,
    map: BTreeMap<NodeId, Batched>,
}

impl Batcher<'_> {
    /// `[k] ++ t.shape`.
    fn lift_type(&self, t: &TensorType) -> TensorType {
        TensorType::new(t.dtype, self.lift(&t.shape))
    }

    /// `[k] ++ shape`.
    fn lift(&self, shape: &Shape) -> Shape {
        let mut dims = Vec::with_capacity(shape.rank() + 1);
        dims.push(self.k.clone());
        dims.extend(shape.0.iter().cloned());
        Shape(dims)
    }

    /// The per-token shape of a source node.
    fn per_token(&self, id: NodeId) -> Result<Shape, BatchError> {
        Ok(src_tensor(self.src, id)?.shape)
    }

    /// A batched destination node `[k, s...]` (per-token shape `s`) reshaped to
    /// `[k, 1 (rank - rank(s) times), s...]`.
    fn pad(&mut self, node: NodeId, s: &Shape, rank: usize) -> Result<NodeId, BatchError> {
        if s.rank() >= rank {
            return Ok(node);
        }
        let mut dims = vec![self.k.clone()];
        dims.resize(1 + rank - s.rank(), Dim::Known(1));
        dims.extend(s.0.iter().cloned());
        Ok(self.dst.add(Op::Reshape { shape: Shape(dims) }, &[node])?)
    }

    /// The destination node of an output, broadcast to the block when it is unbatched.
    fn force(&mut self, v: Batched) -> Result<NodeId, BatchError> {
        if v.batched {
            return Ok(v.node);
        }
        let t = self
            .dst
            .tensor_type(v.node)
            .ok_or(GraphError::UnknownNode(v.node))?
            .clone();
        let shape = self.lift(&t.shape);
        Ok(self.dst.add(Op::Expand { shape }, &[v.node])?)
    }

    /// Batches (or copies) one non-input source node whose operands are already mapped.
    fn node(&mut self, id: NodeId) -> Result<Batched, BatchError> {
        let node = self
            .src
            .get(id)
            .ok_or_else(|| BatchError::Malformed(format!("node %{} is missing", id.index())))?;
        let operands = self.src.operands(id);
        let mut args = Vec::with_capacity(operands.len());
        for o in &operands {
            args.push(*self.map.get(o).ok_or_else(|| {
                BatchError::Malformed(format!(
                    "operand %{} of %{} was not visited first",
                    o.index(),
                    id.index()
                ))
            })?);
        }
        let unbatched = |node| Batched {
            node,
            batched: false,
        };
        let batched = |node| Batched {
            node,
            batched: true,
        };
        // Leaves: copied.
        match &node.op {
            Op::Input { name } => {
                return Err(BatchError::Malformed(format!(
                    "input `{name}` (%{}) is not in the input list",
                    id.index()
                )))
            }
            Op::Const { value } => {
                let dtype = src_tensor(self.src, id)?.dtype;
                return Ok(unbatched(self.dst.add_const(*value, dtype)));
            }
            op @ (Op::Extent { .. } | Op::Iota { .. }) => {
                let dtype = src_tensor(self.src, id)?.dtype;
                return Ok(unbatched(self.dst.add_leaf(op.clone(), dtype)?));
            }
            _ => {}
        }
        let nodes: Vec<NodeId> = args.iter().map(|a| a.node).collect();
        // Nothing batched: a plain copy.
        if args.iter().all(|a| !a.batched) {
            return Ok(unbatched(self.dst.add(node.op.clone(), &nodes)?));
        }
        let out = match &node.op {
            Op::Unary { .. } | Op::Transpose => self.dst.add(node.op.clone(), &nodes)?,
            Op::Binary { .. } | Op::MatMul => {
                // Align the per-token ranks of batched operands so that trailing axes (and
                // the matmul's batch axes) line up after the leading `k`.
                let shapes = operands
                    .iter()
                    .map(|&o| self.per_token(o))
                    .collect::<Result<Vec<_>, _>>()?;
                let rank = shapes.iter().map(Shape::rank).max().unwrap_or(0);
                let mut padded = Vec::with_capacity(args.len());
                for (a, s) in args.iter().zip(&shapes) {
                    padded.push(if a.batched {
                        self.pad(a.node, s, rank)?
                    } else {
                        a.node
                    });
                }
                self.dst.add(node.op.clone(), &padded)?
            }
            Op::Permute { perm } => {
                let mut p = Vec::with_capacity(perm.len() + 1);
                p.push(0);
                p.extend(perm.iter().map(|&i| i + 1));
                self.dst.add(Op::Permute { perm: p }, &nodes)?
            }
            Op::Reduce { fun, axis } => self.dst.add(
                Op::Reduce {
                    fun: *fun,
                    axis: axis + 1,
                },
                &nodes,
            )?,
            Op::Expand { shape } => {
                let s = self.per_token(operands[0])?;
                let x = self.pad(nodes[0], &s, shape.rank())?;
                let target = self.lift(shape);
                self.dst.add(Op::Expand { shape: target }, &[x])?
            }
            Op::SumTo { shape } => {
                let s = self.per_token(operands[0])?;
                let target = self.lift(shape);
                if s.rank() > shape.rank() {
                    let mut dims = vec![self.k.clone()];
                    dims.resize(1 + s.rank() - shape.rank(), Dim::Known(1));
                    dims.extend(shape.0.iter().cloned());
                    let summed = self.dst.add(Op::SumTo { shape: Shape(dims) }, &nodes)?;
                    self.dst.add(Op::Reshape { shape: target }, &[summed])?
                } else {
                    self.dst.add(Op::SumTo { shape: target }, &nodes)?
                }
            }
            Op::Reshape { shape } => {
                let target = self.lift(shape);
                self.dst.add(Op::Reshape { shape: target }, &nodes)?
            }
            Op::Slice { axis, start, len } => self.dst.add(
                Op::Slice {
                    axis: axis + 1,
                    start: *start,
                    len: *len,
                },
                &nodes,
            )?,
            Op::Shift { axis, by } if args.iter().all(|a| a.batched) => self.dst.add(
                Op::Shift {
                    axis: axis + 1,
                    by: *by,
                },
                &nodes,
            )?,
            Op::Unshift { axis, by } => self.dst.add(
                Op::Unshift {
                    axis: axis + 1,
                    by: *by,
                },
                &nodes,
            )?,
            op @ (Op::Mix
            | Op::MixOuter
            | Op::Ttt(_)
            | Op::TttVjp { .. }
            | Op::Get { .. }
            | Op::Shift { .. }
            | Op::Gather
            | Op::ScatterAdd { .. }) => {
                return Err(BatchError::Unsupported {
                    op: op.name(),
                    node: id.index(),
                })
            }
            Op::Input { .. } | Op::Const { .. } | Op::Extent { .. } | Op::Iota { .. } => {
                return Err(BatchError::Malformed(format!(
                    "leaf %{} has operands",
                    id.index()
                )))
            }
        };
        Ok(batched(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tttc_ir::{BinaryOp, DType, UnaryOp};

    fn f64t(dims: &[usize]) -> TensorType {
        TensorType::new(DType::F64, Shape::known(dims))
    }

    #[test]
    fn scalar_times_vector_pads_the_scalar() {
        // per token: a [] * b [3] -> [3]; a batched -> [k, 1] * [3] -> [k, 3].
        let mut src = Graph::new();
        let a = src.add_input("a", f64t(&[])).unwrap();
        let b = src.add_input("b", f64t(&[3])).unwrap();
        let m = src.add(Op::Binary { fun: BinaryOp::Mul }, &[a, b]).unwrap();
        src.add_output("m", m);
        let k = Dim::sym("$k");
        let mut dst = Graph::new();
        let da = dst
            .add_input("a", TensorType::new(DType::F64, Shape(vec![k.clone()])))
            .unwrap();
        let db = dst.add_input("b", f64t(&[3])).unwrap();
        let outs = batch_graph(&src, &[true, false], &k, &mut dst, &[da, db]).unwrap();
        assert_eq!(
            dst.tensor_type(outs[0]).unwrap().shape,
            Shape(vec![k, Dim::Known(3)])
        );
    }

    #[test]
    fn wrong_input_type_is_an_error() {
        let mut src = Graph::new();
        let a = src.add_input("a", f64t(&[2])).unwrap();
        let e = src.add(Op::Unary { fun: UnaryOp::Exp }, &[a]).unwrap();
        src.add_output("e", e);
        let mut dst = Graph::new();
        let da = dst.add_input("a", f64t(&[2])).unwrap();
        let r = batch_graph(&src, &[true], &Dim::Known(4), &mut dst, &[da]);
        assert!(matches!(r, Err(BatchError::InputType { .. })), "{r:?}");
        let r = batch_graph(&src, &[true, false], &Dim::Known(4), &mut dst, &[da]);
        assert!(matches!(r, Err(BatchError::InputCount { .. })), "{r:?}");
    }

    #[test]
    fn unbatched_outputs_are_expanded() {
        let mut src = Graph::new();
        let a = src.add_input("a", f64t(&[2])).unwrap();
        let b = src.add_input("b", f64t(&[2])).unwrap();
        let e = src.add(Op::Unary { fun: UnaryOp::Exp }, &[b]).unwrap();
        src.add_output("a", a);
        src.add_output("e", e);
        let mut dst = Graph::new();
        let da = dst.add_input("a", f64t(&[5, 2])).unwrap();
        let db = dst.add_input("b", f64t(&[2])).unwrap();
        let lazy =
            batch_outputs(&src, &[true, false], &Dim::Known(5), &mut dst, &[da, db]).unwrap();
        assert!(lazy[0].batched && !lazy[1].batched);
        let outs = batch_graph(&src, &[true, false], &Dim::Known(5), &mut dst, &[da, db]).unwrap();
        assert_eq!(dst.tensor_type(outs[1]).unwrap(), &f64t(&[5, 2]));
    }
}
