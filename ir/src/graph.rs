//! Dataflow graphs of [`Op`]s on petgraph, with a type on every node.

use crate::op::{Op, TypeError};
use crate::shape::{NodeType, TensorType};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Identifies a node of a [`Graph`].
pub type NodeId = NodeIndex<u32>;

/// One operation and the type of its result.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// The result type, inferred when the node is added (declared for inputs and constants).
    pub ty: NodeType,
}

/// A named result of a graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphOutput {
    /// The output's name.
    pub name: String,
    /// The node that produces it.
    pub node: NodeId,
}

/// A dataflow graph: edges run from producer to consumer and carry the operand position.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    graph: StableDiGraph<Node, usize>,
    inputs: Vec<NodeId>,
    outputs: Vec<GraphOutput>,
}

/// An error building a graph.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// The op does not accept its operands.
    #[error(transparent)]
    Type(#[from] TypeError),
    /// An operand id does not name a node of this graph.
    #[error("operand {0:?} is not a node of this graph")]
    UnknownNode(NodeId),
    /// Two inputs share a name.
    #[error("duplicate input name `{0}`")]
    DuplicateInput(String),
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a named input of the given type.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> Result<NodeId, GraphError> {
        if self.input_by_name(name).is_some() {
            return Err(GraphError::DuplicateInput(name.to_string()));
        }
        let id = self.graph.add_node(Node {
            op: Op::Input {
                name: name.to_string(),
            },
            ty: NodeType::Tensor(ty),
        });
        self.inputs.push(id);
        Ok(id)
    }

    /// Adds a scalar constant of the given element type.
    pub fn add_const(&mut self, value: f64, dtype: crate::DType) -> NodeId {
        self.graph.add_node(Node {
            op: Op::Const { value },
            ty: NodeType::Tensor(TensorType::new(dtype, crate::Shape::scalar())),
        })
    }

    /// Adds a leaf op (`const`, `extent`, `iota`) of the given element type.
    pub fn add_leaf(&mut self, op: Op, dtype: crate::DType) -> Result<NodeId, GraphError> {
        let shape = op.leaf_shape().ok_or_else(|| {
            GraphError::Type(TypeError(format!("{} is not a leaf op", op.name())))
        })?;
        Ok(self.graph.add_node(Node {
            op,
            ty: NodeType::Tensor(TensorType::new(dtype, shape)),
        }))
    }

    /// Adds an op applied to `operands`, inferring its type.
    pub fn add(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId, GraphError> {
        let mut tys = Vec::with_capacity(operands.len());
        for &o in operands {
            tys.push(
                &self
                    .graph
                    .node_weight(o)
                    .ok_or(GraphError::UnknownNode(o))?
                    .ty,
            );
        }
        let ty = op.infer(&tys)?;
        let id = self.graph.add_node(Node { op, ty });
        for (pos, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o, id, pos);
        }
        Ok(id)
    }

    /// Adds a node with an explicit type and no inference (used by deserialization and
    /// specialization; the verifier checks the result).
    pub(crate) fn add_unchecked(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        let is_input = matches!(node.op, Op::Input { .. });
        let id = self.graph.add_node(node);
        for (pos, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o, id, pos);
        }
        if is_input {
            self.inputs.push(id);
        }
        id
    }

    /// Declares `node` as the graph output `name`.
    pub fn add_output(&mut self, name: &str, node: NodeId) {
        self.outputs.push(GraphOutput {
            name: name.to_string(),
            node,
        });
    }

    /// The node `id`. Panics on an id from another graph (a compiler bug, not a user error).
    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id]
    }

    /// The node `id`, if it exists.
    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.graph.node_weight(id)
    }

    /// The tensor type of node `id` (`None` for tuple-valued nodes).
    pub fn tensor_type(&self, id: NodeId) -> Option<&TensorType> {
        self.graph.node_weight(id).and_then(|n| n.ty.tensor())
    }

    /// The operands of `id`, in order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(usize, NodeId)> = self
            .graph
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable_by_key(|(pos, _)| *pos);
        edges.into_iter().map(|(_, src)| src).collect()
    }

    /// The nodes that use `id` (with repetition when used twice).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        self.graph
            .edges_directed(id, Direction::Outgoing)
            .map(|e| e.target())
            .collect()
    }

    /// Input nodes, in declaration order.
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    /// The input named `name`.
    pub fn input_by_name(&self, name: &str) -> Option<NodeId> {
        self.inputs
            .iter()
            .copied()
            .find(|&id| matches!(&self.graph[id].op, Op::Input { name: n } if n == name))
    }

    /// Name of an input node.
    pub fn input_name(&self, id: NodeId) -> Option<&str> {
        match &self.graph.node_weight(id)?.op {
            Op::Input { name } => Some(name),
            _ => None,
        }
    }

    /// Every named input's concrete shape once `dims` binds the symbolic dimensions. The
    /// first input whose shape still names an unbound dimension is the error: `(input,
    /// dimension)`, for the caller to say how that dimension is given.
    pub fn input_shapes(
        &self,
        dims: &BTreeMap<String, usize>,
    ) -> Result<BTreeMap<String, Vec<usize>>, (String, String)> {
        let mut out = BTreeMap::new();
        for &id in &self.inputs {
            let (Some(name), Some(ty)) = (self.input_name(id), self.tensor_type(id)) else {
                continue;
            };
            let shape = ty.shape.substitute(dims);
            match shape.symbols().next() {
                Some(unbound) => return Err((name.to_string(), unbound.to_string())),
                None => out.insert(name.to_string(), shape.to_known().unwrap_or_default()),
            };
        }
        Ok(out)
    }

    /// Named outputs, in declaration order.
    pub fn outputs(&self) -> &[GraphOutput] {
        &self.outputs
    }

    /// The names of the graph's outputs, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.outputs().iter().map(|o| o.name.clone()).collect()
    }

    /// Keeps only the outputs for which `keep` is true (in order); nodes only they used become
    /// dead ([`Graph::live_order`] leaves them out).
    pub fn retain_outputs(&mut self, keep: impl FnMut(&GraphOutput) -> bool) {
        self.outputs.retain(keep);
    }

    /// The output named `name`.
    pub fn output_by_name(&self, name: &str) -> Option<NodeId> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.node)
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    /// All node ids in insertion order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.graph.node_indices().collect()
    }

    /// Nodes in a topological order that is deterministic (ties broken by insertion order).
    /// Returns `None` if the graph has a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let mut indegree: BTreeMap<NodeId, usize> = self
            .graph
            .node_indices()
            .map(|n| (n, self.graph.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: std::collections::BTreeSet<NodeId> = indegree
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| n)
            .collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let d = indegree.get_mut(&e.target())?;
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        (order.len() == self.graph.node_count()).then_some(order)
    }

    /// The nodes that some output depends on, in topological order.
    pub fn live_order(&self) -> Option<Vec<NodeId>> {
        let mut live = std::collections::BTreeSet::new();
        let mut stack: Vec<NodeId> = self.outputs.iter().map(|o| o.node).collect();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(self.operands(n));
            }
        }
        Some(
            self.topo_order()?
                .into_iter()
                .filter(|n| live.contains(n))
                .collect(),
        )
    }

    /// Whether an output depends on the input `name`.
    pub fn depends_on_input(&self, name: &str) -> bool {
        let Some(input) = self.input_by_name(name) else {
            return false;
        };
        self.live_order()
            .is_some_and(|order| order.contains(&input))
    }

    /// Mutable access to a node's op and type (for passes that rewrite in place, such as
    /// specialization). Callers must keep the graph well-typed; the verifier checks it.
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.graph.node_weight_mut(id)
    }
}
