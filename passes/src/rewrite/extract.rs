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

/// The same tree-cost extraction as [`tree_choice`] (each e-class's cheapest term, an e-node
/// costing its own cost plus its children's), computed in O(E log E) for E e-nodes by Knuth's
/// generalization of Dijkstra's algorithm: an e-class's cost is final when it is the cheapest
/// one pending, and an e-node is costed once all its children are final. (egg's extractor
/// sweeps all e-classes until nothing changes, which takes as many sweeps as the graph is
/// deep: quadratic on a chain of thousands of `let`s.) Ties go to the lower e-class id and
/// the first e-node, so the result is deterministic.
pub fn tree_choice_worklist(egraph: &TensorGraph, hints: &SizeHints) -> Choice {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    /// A cost ordered by `f64::total_cmp`.
    #[derive(PartialEq)]
    struct Cost(f64);
    impl Eq for Cost {}
    impl PartialOrd for Cost {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Cost {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&other.0)
        }
    }

    let model = CostModel::new(egraph, hints);
    let mut ids: Vec<Id> = egraph.classes().map(|c| c.id).collect();
    ids.sort_unstable();
    // Every e-node with its e-class, canonical children and own cost; the e-nodes using each
    // e-class; how many distinct children of each e-node are not final yet.
    let mut nodes: Vec<(Id, TensorLang, f64)> = Vec::new();
    let mut users: HashMap<Id, Vec<usize>> = HashMap::new();
    let mut waiting: Vec<usize> = Vec::new();
    for &id in &ids {
        for n in &egraph[id].nodes {
            let n = n.clone().map_children(|c| egraph.find(c));
            let mut distinct = n.children().to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            for &c in &distinct {
                users.entry(c).or_default().push(nodes.len());
            }
            waiting.push(distinct.len());
            let own = model.own_cost(&n);
            nodes.push((id, n, own));
        }
    }
    let mut best: HashMap<Id, (f64, usize)> = HashMap::new();
    let mut heap: BinaryHeap<Reverse<(Cost, Id)>> = BinaryHeap::new();
    let propose = |best: &mut HashMap<Id, (f64, usize)>,
                   heap: &mut BinaryHeap<Reverse<(Cost, Id)>>,
                   class: Id,
                   cost: f64,
                   node: usize| {
        let cost = if cost.is_nan() { f64::INFINITY } else { cost };
        if best.get(&class).is_none_or(|&(c, _)| cost < c) {
            best.insert(class, (cost, node));
            heap.push(Reverse((Cost(cost), class)));
        }
    };
    for (i, (class, _, own)) in nodes.iter().enumerate() {
        if waiting[i] == 0 {
            propose(&mut best, &mut heap, *class, *own, i);
        }
    }
    let mut fixed: HashMap<Id, f64> = HashMap::new();
    while let Some(Reverse((Cost(cost), class))) = heap.pop() {
        if fixed.contains_key(&class) || best.get(&class).is_some_and(|&(c, _)| c != cost) {
            continue;
        }
        fixed.insert(class, cost);
        for &user in users.get(&class).map_or(&[][..], Vec::as_slice) {
            waiting[user] -= 1;
            if waiting[user] == 0 {
                let (parent, node, own) = &nodes[user];
                let total = node.children().iter().fold(*own, |acc, c| {
                    acc + fixed.get(c).copied().unwrap_or(f64::INFINITY)
                });
                propose(&mut best, &mut heap, *parent, total, user);
            }
        }
    }
    best.into_iter()
        .map(|(id, (_, i))| (id, nodes[i].1.clone()))
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
