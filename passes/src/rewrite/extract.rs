//! Choosing one e-node per e-class.
//!
//! Two extractors, both minimizing [`CostModel`] (FLOPs + bytes):
//! - [`tree_choice`]: egg's [`egg::Extractor`], which minimizes the cost of the *term* below
//!   each e-class: a shared sub-term is counted once per use. Exact for trees, never cyclic.
//! - [`dag_choice`]: a greedy DAG extractor (as in extraction-gym's "greedy-dag"): the cost of
//!   an e-node is its own cost plus the own costs of the *distinct* e-classes below it, so a
//!   sub-term that is already computed for another use is free. This is what makes the dual
//!   form win in a two-layer model: the second layer's query `gelu(Ẑ1)` appears twice in its
//!   dual form and would be counted twice by a tree cost.
//!
//! The caller builds a graph from each choice and keeps the cheaper (by [`super::estimate_graph_cost`]).

use super::analysis::TensorGraph;
use super::cost::{CostModel, SizeHints};
use super::lang::TensorLang;
use egg::{Extractor, Id, Language};
use std::collections::BTreeMap;
use std::rc::Rc;

/// The chosen e-node of every e-class (keys are canonical ids).
pub type Choice = BTreeMap<Id, TensorLang>;

/// egg's tree-cost extraction of every e-class.
pub fn tree_choice(egraph: &TensorGraph, hints: &SizeHints) -> Choice {
    let extractor = Extractor::new(egraph, CostModel::new(egraph, hints));
    let mut ids: Vec<Id> = egraph.classes().map(|c| c.id).collect();
    ids.sort_unstable();
    ids.into_iter()
        .map(|id| (id, extractor.find_best_node(id).clone()))
        .collect()
}

struct Best {
    node: TensorLang,
    cost: f64,
    /// The own cost of every e-class of the chosen sub-DAG (this one included).
    below: Rc<BTreeMap<Id, f64>>,
}

/// Greedy DAG extraction of every e-class, iterated to a fixed point (at most `max_passes`
/// passes over the e-graph; e-classes are visited in id order, so the result is
/// deterministic).
pub fn dag_choice(egraph: &TensorGraph, hints: &SizeHints, max_passes: usize) -> Choice {
    let model = CostModel::new(egraph, hints);
    let mut ids: Vec<Id> = egraph.classes().map(|c| c.id).collect();
    ids.sort_unstable();
    // Own cost of every e-node, once.
    let nodes: BTreeMap<Id, Vec<(TensorLang, f64)>> = ids
        .iter()
        .map(|&id| {
            let ns = egraph[id]
                .nodes
                .iter()
                .map(|n| {
                    let n = n.clone().map_children(|c| egraph.find(c));
                    let own = model.own_cost(&n);
                    (n, own)
                })
                .collect();
            (id, ns)
        })
        .collect();
    let mut best: BTreeMap<Id, Best> = BTreeMap::new();
    for _ in 0..max_passes.max(1) {
        let mut changed = false;
        for (&id, candidates) in &nodes {
            for (node, own) in candidates {
                let Some((cost, below)) = dag_cost(id, node, *own, &best) else {
                    continue;
                };
                let better = best.get(&id).is_none_or(|b| cost < b.cost);
                if better {
                    best.insert(
                        id,
                        Best {
                            node: node.clone(),
                            cost,
                            below,
                        },
                    );
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    best.into_iter().map(|(id, b)| (id, b.node)).collect()
}

/// The DAG cost of choosing `node` for e-class `id`, from the children's current choices;
/// `None` when a child has no choice yet or already depends on `id` (a cycle).
fn dag_cost(
    id: Id,
    node: &TensorLang,
    own: f64,
    best: &BTreeMap<Id, Best>,
) -> Option<(f64, Rc<BTreeMap<Id, f64>>)> {
    let children = node.children();
    let mut below: Option<Rc<BTreeMap<Id, f64>>> = None;
    for &c in children {
        let b = best.get(&c)?;
        if b.below.contains_key(&id) {
            return None;
        }
        below = Some(match below {
            None => Rc::clone(&b.below),
            Some(acc) if Rc::ptr_eq(&acc, &b.below) => acc,
            Some(acc) => {
                let (big, small) = if acc.len() >= b.below.len() {
                    (acc, &b.below)
                } else {
                    (Rc::clone(&b.below), &acc)
                };
                if small.keys().all(|k| big.contains_key(k)) {
                    big
                } else {
                    let mut merged = (*big).clone();
                    for (k, v) in small.iter() {
                        merged.entry(*k).or_insert(*v);
                    }
                    Rc::new(merged)
                }
            }
        });
    }
    let mut set = match below {
        Some(b) => (*b).clone(),
        None => BTreeMap::new(),
    };
    set.insert(id, own);
    // Summed in id order: deterministic.
    let cost: f64 = set.values().sum();
    Some((cost, Rc::new(set)))
}

/// The summed own cost of the e-classes reachable from `roots` under `choice`; `None` if the
/// choice is cyclic or incomplete there.
fn reachable_cost(
    choice: &BTreeMap<Id, (TensorLang, f64)>,
    roots: &[Id],
    egraph: &TensorGraph,
) -> Option<f64> {
    // Iterative DFS with colors: false = on the stack, true = done.
    let mut state: BTreeMap<Id, bool> = BTreeMap::new();
    let mut total = 0.0;
    for &root in roots {
        let root = egraph.find(root);
        if state.contains_key(&root) {
            continue;
        }
        let mut stack: Vec<(Id, usize)> = vec![(root, 0)];
        state.insert(root, false);
        while let Some(&mut (id, ref mut next)) = stack.last_mut() {
            let (node, own) = choice.get(&id)?;
            if let Some(&c) = node.children().get(*next) {
                *next += 1;
                let c = egraph.find(c);
                match state.get(&c) {
                    Some(true) => {}
                    Some(false) => return None,
                    None => {
                        state.insert(c, false);
                        stack.push((c, 0));
                    }
                }
            } else {
                total += own;
                state.insert(id, true);
                stack.pop();
            }
        }
    }
    Some(total)
}

/// Local improvement of a choice by its true DAG cost from `roots`: every reachable e-class
/// tries each of its other e-nodes, and a change is kept when the summed cost of everything
/// reachable goes down (and stays acyclic). At most `max_sweeps` sweeps, in id order.
pub fn improve(
    egraph: &TensorGraph,
    hints: &SizeHints,
    choice: &Choice,
    roots: &[Id],
    max_sweeps: usize,
) -> Choice {
    let model = CostModel::new(egraph, hints);
    let mut current: BTreeMap<Id, (TensorLang, f64)> = choice
        .iter()
        .map(|(&id, n)| (id, (n.clone(), model.own_cost(n))))
        .collect();
    let Some(mut cost) = reachable_cost(&current, roots, egraph) else {
        return choice.clone();
    };
    for _ in 0..max_sweeps {
        let mut improved = false;
        let mut reachable: Vec<Id> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut stack: Vec<Id> = roots.iter().map(|&r| egraph.find(r)).collect();
        while let Some(id) = stack.pop() {
            if seen.insert(id) {
                reachable.push(id);
                if let Some((node, _)) = current.get(&id) {
                    stack.extend(node.children().iter().map(|&c| egraph.find(c)));
                }
            }
        }
        reachable.sort_unstable();
        for id in reachable {
            for alt in &egraph[id].nodes {
                let alt = alt.clone().map_children(|c| egraph.find(c));
                if current.get(&id).is_some_and(|(n, _)| *n == alt) {
                    continue;
                }
                let own = model.own_cost(&alt);
                if !own.is_finite() {
                    continue;
                }
                let old = current.insert(id, (alt, own));
                match reachable_cost(&current, roots, egraph) {
                    Some(c) if c < cost => {
                        cost = c;
                        improved = true;
                    }
                    _ => {
                        if let Some(old) = old {
                            current.insert(id, old);
                        }
                    }
                }
            }
        }
        if !improved {
            break;
        }
    }
    current.into_iter().map(|(id, (n, _))| (id, n)).collect()
}
