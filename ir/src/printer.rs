//! The stable text form: one op per line, nodes numbered in a deterministic topological order.

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::program::Program;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Re-exported: the float spelling lives in [`crate::float_text`] (the op and kernel-IR
/// printers use it without depending on this module).
pub use crate::float_text::format_float;

/// Stable numbering of a graph's nodes: position in the topological order.
pub fn numbering(graph: &Graph) -> BTreeMap<NodeId, usize> {
    graph
        .topo_order()
        .unwrap_or_else(|| graph.node_ids())
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect()
}

/// Prints a whole program.
pub fn print_program(program: &Program) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "program {}", program.name);
    for c in &program.configs {
        let _ = writeln!(s, "config {} = {}", c.name, c.value);
    }
    for d in &program.derived_dims {
        let _ = writeln!(s, "dim {} = {}", d.name, d.expr);
    }
    for i in &program.intermediates {
        let _ = writeln!(s, "intermediate {i}");
    }
    for i in &program.integer_inputs {
        match &i.range {
            Some((start, end)) => {
                let _ = writeln!(s, "int input {} in {start}..{end}", i.name);
            }
            None => {
                let _ = writeln!(s, "int input {}", i.name);
            }
        }
    }
    s.push_str("graph main {\n");
    print_graph_into(&mut s, &program.graph, 1);
    s.push_str("}\n");
    s
}

/// Prints one graph (and nested graphs) without a header.
pub fn print_graph(graph: &Graph) -> String {
    let mut s = String::new();
    print_graph_into(&mut s, graph, 0);
    s
}

fn print_graph_into(s: &mut String, graph: &Graph, depth: usize) {
    let pad = "  ".repeat(depth);
    let num = numbering(graph);
    let order = graph.topo_order().unwrap_or_else(|| graph.node_ids());
    for id in order {
        let node = graph.node(id);
        let operands: Vec<String> = graph
            .operands(id)
            .iter()
            .map(|o| format!("%{}", num[o]))
            .collect();
        let args = if operands.is_empty() {
            String::new()
        } else {
            format!(" {}", operands.join(", "))
        };
        let _ = writeln!(s, "{pad}%{} = {}{args} : {}", num[&id], node.op, node.ty);
        if let Op::Ttt(scan) | Op::TttVjp { scan, .. } = &node.op {
            let mut sub = |name: &str, g: &Graph| {
                let _ = writeln!(s, "{pad}  {name} {{");
                print_graph_into(s, g, depth + 2);
                let _ = writeln!(s, "{pad}  }}");
            };
            sub("loss", &scan.loss);
            if let Some(g) = &scan.grad {
                sub("grad", g);
            }
            sub("out", &scan.out);
            if let Some(g) = &scan.step {
                sub("step", g);
            }
            if let Some(g) = &scan.step_vjp {
                sub("step_vjp", g);
            }
        }
    }
    for o in graph.outputs() {
        let _ = writeln!(s, "{pad}output {} = %{}", o.name, num[&o.node]);
    }
}
