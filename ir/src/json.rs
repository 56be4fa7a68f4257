//! The serde form of a graph: a flat node list in topological order, operands by position.

use crate::graph::{Graph, Node};
use crate::op::Op;
use crate::printer::numbering;
use crate::shape::NodeType;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
struct GraphDoc {
    nodes: Vec<NodeDoc>,
    outputs: Vec<OutputDoc>,
}

#[derive(Serialize, Deserialize)]
struct NodeDoc {
    id: usize,
    #[serde(flatten)]
    op: Op,
    operands: Vec<usize>,
    #[serde(rename = "type")]
    ty: NodeType,
    /// Files written before fusion moved into the kernel lowering carry a fusion group here;
    /// it is read and ignored.
    #[serde(default, skip_serializing, rename = "kernel")]
    _fusion_group: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct OutputDoc {
    name: String,
    node: usize,
}

impl Serialize for Graph {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let num = numbering(self);
        let order = self.topo_order().unwrap_or_else(|| self.node_ids());
        let nodes = order
            .iter()
            .map(|&id| NodeDoc {
                id: num[&id],
                op: self.node(id).op.clone(),
                operands: self.operands(id).iter().map(|o| num[o]).collect(),
                ty: self.node(id).ty.clone(),
                _fusion_group: None,
            })
            .collect();
        let outputs = self
            .outputs()
            .iter()
            .map(|o| OutputDoc {
                name: o.name.clone(),
                node: num[&o.node],
            })
            .collect();
        GraphDoc { nodes, outputs }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Graph {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let doc = GraphDoc::deserialize(deserializer)?;
        let mut graph = Graph::new();
        let mut ids = std::collections::BTreeMap::new();
        for n in doc.nodes {
            let mut operands = Vec::with_capacity(n.operands.len());
            for o in &n.operands {
                operands.push(*ids.get(o).ok_or_else(|| {
                    D::Error::custom(format!("node {} uses %{o} before it is defined", n.id))
                })?);
            }
            let id = graph.add_unchecked(Node { op: n.op, ty: n.ty }, &operands);
            if ids.insert(n.id, id).is_some() {
                return Err(D::Error::custom(format!("duplicate node id {}", n.id)));
            }
        }
        for o in doc.outputs {
            let id = *ids
                .get(&o.node)
                .ok_or_else(|| D::Error::custom(format!("output `{}` names no node", o.name)))?;
            graph.add_output(&o.name, id);
        }
        crate::verify::verify_graph(&graph, "json").map_err(D::Error::custom)?;
        Ok(graph)
    }
}

impl Graph {
    /// The graph's structural identity: its serialized form (nodes renumbered in topological
    /// order; the serialization holds no hash maps, so it is deterministic). Structurally equal
    /// graphs have equal keys, so the key can index a map of graphs already processed. `None`
    /// when the graph cannot be serialized.
    pub fn structural_key(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}

/// Structural equality: two graphs are equal when their [`Graph::structural_key`]s are.
impl PartialEq for Graph {
    fn eq(&self, other: &Self) -> bool {
        self.structural_key() == other.structural_key()
    }
}
