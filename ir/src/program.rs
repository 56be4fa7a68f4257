//! A whole compiled program: its settable configuration and its main graph.

use crate::graph::Graph;
use crate::op::Op;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A settable integer (`config NAME = DEFAULT` in the DSL; `--set NAME=VALUE` on the CLI).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigParam {
    /// Name.
    pub name: String,
    /// Default value.
    pub default: usize,
}

/// A program: configuration parameters and the main graph, whose inputs and outputs are the
/// tensors a user passes and receives by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    /// The program's name (the file stem).
    pub name: String,
    /// Settable configuration values.
    pub configs: Vec<ConfigParam>,
    /// The main graph.
    pub graph: Graph,
}

impl Program {
    /// The configuration with defaults, overridden by `overrides`.
    pub fn config_values(&self, overrides: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
        self.configs
            .iter()
            .map(|c| {
                let v = overrides.get(&c.name).copied().unwrap_or(c.default);
                (c.name.clone(), v)
            })
            .collect()
    }

    /// A copy with every bound symbol replaced by its value, in the main graph and in every
    /// nested graph.
    pub fn specialize(&self, bindings: &BTreeMap<String, usize>) -> Program {
        Program {
            name: self.name.clone(),
            configs: self.configs.clone(),
            graph: specialize_graph(&self.graph, bindings),
        }
    }
}

/// A copy of `graph` with every bound symbol replaced by its value.
pub fn specialize_graph(graph: &Graph, bindings: &BTreeMap<String, usize>) -> Graph {
    let mut g = graph.clone();
    for id in g.node_ids() {
        let Some(node) = g.node_mut(id) else { continue };
        node.ty = match &node.ty {
            crate::NodeType::Tensor(t) => crate::NodeType::Tensor(crate::TensorType::new(
                t.dtype,
                t.shape.substitute(bindings),
            )),
            crate::NodeType::Tuple(ts) => crate::NodeType::Tuple(
                ts.iter()
                    .map(|t| crate::TensorType::new(t.dtype, t.shape.substitute(bindings)))
                    .collect(),
            ),
        };
        match &mut node.op {
            Op::Expand { shape } | Op::SumTo { shape } | Op::Reshape { shape } => {
                *shape = shape.substitute(bindings);
            }
            Op::Ttt(scan) => {
                scan.mini_batch = scan.mini_batch.substitute(bindings);
                scan.loss = specialize_graph(&scan.loss, bindings);
                scan.out = specialize_graph(&scan.out, bindings);
                scan.grad = scan.grad.as_ref().map(|g| specialize_graph(g, bindings));
            }
            _ => {}
        }
    }
    g
}
