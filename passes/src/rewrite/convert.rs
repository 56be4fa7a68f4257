//! Conversion between [`tttc_ir::Graph`] and the e-graph.
//!
//! Into the e-graph: every live node of the source graph becomes an e-node (hash-consing merges
//! identical nodes). Nodes the rewriter does not look into (a `ttt` scan, a `get` of its
//! result, anything tuple-valued) are kept *verbatim*: their tensor-valued results enter the
//! e-graph as opaque leaves, and their operands become extra roots.
//!
//! Back: one extractor picks the best e-node of every e-class reachable from the roots, and one
//! new graph is built from them with [`Graph::add`] (so every type is inferred and checked
//! again): shared e-classes become shared nodes (CSE), unreachable nodes are not built (DCE).
//! The inputs are re-created first, with the same names, types and order (unused ones too), and
//! the outputs keep their names and order. Nodes are created in a depth-first post-order from
//! the outputs, so the result does not depend on hash-map iteration order.

use super::analysis::{ir_op, tensor_children, Attr, ShapeAnalysis, TensorGraph};
use super::extract::Choice;
use super::lang::{Elem, TensorLang, Ty};
use super::RewriteError;
use egg::{EGraph, Id};
use std::collections::BTreeMap;
use tttc_ir::{Graph, NodeId, Op};

/// A graph loaded into an e-graph.
pub struct Loaded {
    /// The e-graph.
    pub egraph: TensorGraph,
    /// The e-class of every converted (live, non-verbatim) source node.
    pub class_of: BTreeMap<NodeId, Id>,
    /// Source nodes kept verbatim.
    pub verbatim: Vec<NodeId>,
}

impl Loaded {
    /// The e-classes extraction starts from: the outputs' and the verbatim nodes' operands'.
    pub fn roots(&self, source: &Graph) -> Vec<Id> {
        let mut roots: Vec<Id> = source
            .outputs()
            .iter()
            .filter_map(|o| self.class(o.node))
            .collect();
        for &v in &self.verbatim {
            roots.extend(source.operands(v).into_iter().filter_map(|o| self.class(o)));
        }
        roots
    }

    /// The e-class of the source node `n`, if it is in the e-graph.
    pub fn class(&self, n: NodeId) -> Option<Id> {
        self.class_of.get(&n).map(|&id| self.egraph.find(id))
    }
}

fn is_verbatim(graph: &Graph, id: NodeId) -> bool {
    let node = graph.node(id);
    // Slices, shifts, gathers and scatters have no e-node: the rules never look through them.
    matches!(
        node.op,
        Op::Ttt(_)
            | Op::TttVjp { .. }
            | Op::Get { .. }
            | Op::Slice { .. }
            | Op::Shift { .. }
            | Op::Unshift { .. }
            | Op::Gather
            | Op::ScatterAdd { .. }
    ) || node.ty.tensor().is_none()
}

/// Loads the live part of `graph` into a fresh e-graph.
pub fn load(graph: &Graph, label: &str) -> Result<Loaded, RewriteError> {
    let fail = |message: String| RewriteError::Convert {
        graph: label.to_string(),
        message,
    };
    let order = graph
        .live_order()
        .ok_or_else(|| fail("the graph has a cycle".into()))?;
    let mut egraph = EGraph::new(ShapeAnalysis);
    let mut class_of = BTreeMap::new();
    let mut verbatim = Vec::new();
    for id in order {
        let node = graph.node(id);
        if is_verbatim(graph, id) {
            verbatim.push(id);
            if let Some(t) = node.ty.tensor() {
                let leaf = TensorLang::Opaque {
                    index: id.index() as u32,
                    ty: Ty::from(t),
                };
                class_of.insert(id, egraph.add(leaf));
            }
            continue;
        }
        let Some(ty) = node.ty.tensor() else {
            return Err(fail(format!("%{} is not tensor-valued", id.index())));
        };
        let elem = Elem::from(ty.dtype);
        let operands: Vec<Id> = graph
            .operands(id)
            .into_iter()
            .map(|o| {
                class_of.get(&o).copied().ok_or_else(|| {
                    fail(format!(
                        "operand %{} of %{} is not a tensor",
                        o.index(),
                        id.index()
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let attr = |egraph: &mut TensorGraph, a: Attr| egraph.add(a.node());
        let arg = |i: usize| {
            operands
                .get(i)
                .copied()
                .ok_or_else(|| fail(format!("%{} lacks operand {i}", id.index())))
        };
        let enode = match &node.op {
            Op::Input { name } => TensorLang::Input {
                name: name.clone(),
                ty: Ty::from(ty),
            },
            Op::Const { value } => TensorLang::constant(*value, elem),
            Op::Extent { dim } => TensorLang::Extent {
                dim: dim.clone(),
                elem,
            },
            Op::Iota { len } => TensorLang::Iota {
                len: len.clone(),
                elem,
            },
            Op::Unary { fun } => TensorLang::Unary(super::lang::Un(*fun), [arg(0)?]),
            Op::Binary { fun } => TensorLang::Binary(super::lang::Bin(*fun), [arg(0)?, arg(1)?]),
            Op::MatMul => TensorLang::MatMul([arg(0)?, arg(1)?]),
            Op::Transpose => TensorLang::Transpose([arg(0)?]),
            Op::Permute { perm } => {
                let p = attr(&mut egraph, Attr::Perm(perm.clone()));
                TensorLang::Permute([p, arg(0)?])
            }
            Op::Reduce { fun, axis } => {
                let a = attr(&mut egraph, Attr::Axis(*axis));
                TensorLang::Reduce(super::lang::Red(*fun), [a, arg(0)?])
            }
            Op::Expand { shape } => {
                let s = attr(&mut egraph, Attr::Shape(shape.0.clone()));
                TensorLang::Expand([s, arg(0)?])
            }
            Op::SumTo { shape } => {
                let s = attr(&mut egraph, Attr::Shape(shape.0.clone()));
                TensorLang::SumTo([s, arg(0)?])
            }
            Op::Reshape { shape } => {
                let s = attr(&mut egraph, Attr::Shape(shape.0.clone()));
                TensorLang::Reshape([s, arg(0)?])
            }
            Op::Mix => TensorLang::Mix([arg(0)?, arg(1)?]),
            Op::MixOuter => TensorLang::MixOuter([arg(0)?, arg(1)?, arg(2)?]),
            Op::Ttt(_)
            | Op::TttVjp { .. }
            | Op::Get { .. }
            | Op::Slice { .. }
            | Op::Shift { .. }
            | Op::Unshift { .. }
            | Op::Gather
            | Op::ScatterAdd { .. } => {
                return Err(fail(format!("%{} should be verbatim", id.index())))
            }
        };
        let class = egraph.add(enode);
        if let super::analysis::ClassData::Invalid(m) = &egraph[class].data {
            return Err(fail(format!("%{} ({}): {m}", id.index(), node.op)));
        }
        class_of.insert(id, class);
    }
    egraph.rebuild();
    Ok(Loaded {
        egraph,
        class_of,
        verbatim,
    })
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Item {
    Class(Id),
    Verbatim(NodeId),
}

/// Builds one graph from the chosen e-node of every e-class reachable from the outputs. Fails
/// on a choice that is cyclic ([`RewriteError::Cycle`]) and on any node that does not
/// type-check (a bug).
pub fn extract(
    source: &Graph,
    loaded: &Loaded,
    choice: &Choice,
    label: &str,
) -> Result<Graph, RewriteError> {
    let fail = |message: String| RewriteError::Convert {
        graph: label.to_string(),
        message,
    };
    let egraph = &loaded.egraph;
    let best = |id: Id| -> Result<&TensorLang, RewriteError> {
        choice
            .get(&egraph.find(id))
            .ok_or_else(|| fail(format!("e-class {id} has no extracted node")))
    };
    let verbatim: std::collections::BTreeSet<NodeId> = loaded.verbatim.iter().copied().collect();
    let item_of = |n: NodeId| -> Result<Item, RewriteError> {
        if verbatim.contains(&n) {
            Ok(Item::Verbatim(n))
        } else {
            loaded
                .class(n)
                .map(Item::Class)
                .ok_or_else(|| fail(format!("%{} was not converted", n.index())))
        }
    };
    let deps = |item: Item| -> Result<Vec<Item>, RewriteError> {
        match item {
            Item::Class(id) => {
                let node = best(id)?;
                match node {
                    TensorLang::Opaque { index, .. } => {
                        Ok(vec![Item::Verbatim(NodeId::new(*index as usize))])
                    }
                    _ => Ok(tensor_children(node)
                        .iter()
                        .map(|&c| Item::Class(egraph.find(c)))
                        .collect()),
                }
            }
            Item::Verbatim(n) => source.operands(n).into_iter().map(item_of).collect(),
        }
    };

    // Depth-first post-order from the outputs, with cycle detection.
    let roots: Vec<Item> = source
        .outputs()
        .iter()
        .map(|o| item_of(o.node))
        .collect::<Result<_, _>>()?;
    let mut state: BTreeMap<Item, bool> = BTreeMap::new(); // false: on the stack, true: done
    let mut order: Vec<Item> = Vec::new();
    for &root in &roots {
        if state.contains_key(&root) {
            continue;
        }
        let mut stack: Vec<(Item, Vec<Item>, usize)> = vec![(root, deps(root)?, 0)];
        state.insert(root, false);
        while let Some((item, children, next)) = stack.last_mut() {
            if let Some(&child) = children.get(*next) {
                *next += 1;
                match state.get(&child) {
                    Some(true) => {}
                    Some(false) => {
                        return Err(RewriteError::Cycle {
                            graph: label.to_string(),
                        });
                    }
                    None => {
                        state.insert(child, false);
                        let d = deps(child)?;
                        stack.push((child, d, 0));
                    }
                }
            } else {
                let done = *item;
                state.insert(done, true);
                order.push(done);
                stack.pop();
            }
        }
    }

    // Build.
    let mut out = Graph::new();
    let mut inputs: BTreeMap<String, NodeId> = BTreeMap::new();
    for &i in source.inputs() {
        let (Some(name), Some(ty)) = (source.input_name(i), source.tensor_type(i)) else {
            return Err(fail(format!("input %{} is malformed", i.index())));
        };
        let id = out
            .add_input(name, ty.clone())
            .map_err(|e| RewriteError::Build {
                graph: label.to_string(),
                source: e,
            })?;
        inputs.insert(name.to_string(), id);
    }
    let build_err = |e| RewriteError::Build {
        graph: label.to_string(),
        source: e,
    };
    let mut built: BTreeMap<Item, NodeId> = BTreeMap::new();
    for item in order {
        let id = match item {
            Item::Verbatim(n) => {
                let operands: Vec<NodeId> = source
                    .operands(n)
                    .into_iter()
                    .map(|o| item_of(o).and_then(|it| lookup(&built, it, &fail)))
                    .collect::<Result<_, _>>()?;
                out.add(source.node(n).op.clone(), &operands)
                    .map_err(build_err)?
            }
            Item::Class(class) => {
                let node = best(class)?;
                match node {
                    TensorLang::Input { name, .. } => *inputs
                        .get(name)
                        .ok_or_else(|| fail(format!("unknown input `{name}`")))?,
                    TensorLang::Opaque { index, .. } => {
                        lookup(&built, Item::Verbatim(NodeId::new(*index as usize)), &fail)?
                    }
                    TensorLang::Const { bits, elem } => {
                        out.add_const(f64::from_bits(*bits), (*elem).into())
                    }
                    TensorLang::Extent { dim, elem } => out
                        .add_leaf(Op::Extent { dim: dim.clone() }, (*elem).into())
                        .map_err(build_err)?,
                    TensorLang::Iota { len, elem } => out
                        .add_leaf(Op::Iota { len: len.clone() }, (*elem).into())
                        .map_err(build_err)?,
                    TensorLang::ShapeAttr(_)
                    | TensorLang::PermAttr(_)
                    | TensorLang::AxisAttr(_) => {
                        return Err(fail("an attribute is used as a tensor".into()))
                    }
                    op_node => {
                        let op = ir_op(op_node, |c| &egraph[c].data)
                            .map_err(fail)?
                            .ok_or_else(|| fail(format!("{} is not an op", op_node.op_name())))?;
                        let operands: Vec<NodeId> = tensor_children(op_node)
                            .iter()
                            .map(|&c| lookup(&built, Item::Class(egraph.find(c)), &fail))
                            .collect::<Result<_, _>>()?;
                        out.add(op, &operands).map_err(build_err)?
                    }
                }
            }
        };
        built.insert(item, id);
    }
    for (o, root) in source.outputs().iter().zip(&roots) {
        out.add_output(&o.name, lookup(&built, *root, &fail)?);
    }
    Ok(out)
}

fn lookup(
    built: &BTreeMap<Item, NodeId>,
    item: Item,
    fail: &impl Fn(String) -> RewriteError,
) -> Result<NodeId, RewriteError> {
    built
        .get(&item)
        .copied()
        .ok_or_else(|| fail(format!("{item:?} was not built before its use")))
}
