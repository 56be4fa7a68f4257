//! Graphviz DOT export.

use crate::graph::Graph;
use crate::op::Op;
use crate::printer::numbering;
use crate::program::Program;
use std::fmt::Write;

/// The program as a DOT digraph; nested scan graphs are clusters.
pub fn program_to_dot(program: &Program) -> String {
    let mut s = format!(
        "digraph \"{}\" {{\n  node [shape=box, fontname=monospace];\n",
        escape(&program.name)
    );
    graph_into(&mut s, &program.graph, "m", 1);
    s.push_str("}\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn graph_into(s: &mut String, graph: &Graph, prefix: &str, depth: usize) {
    let pad = "  ".repeat(depth);
    let num = numbering(graph);
    for (id, n) in &num {
        let node = graph.node(*id);
        let label = escape(&format!("%{n} = {}\n{}", node.op, node.ty));
        let _ = writeln!(s, "{pad}{prefix}{n} [label=\"{label}\"];");
        for (pos, o) in graph.operands(*id).iter().enumerate() {
            let _ = writeln!(
                s,
                "{pad}{prefix}{} -> {prefix}{n} [label=\"{pos}\"];",
                num[o]
            );
        }
        if let Op::Ttt(scan) | Op::TttVjp { scan, .. } = &node.op {
            let mut sub = |name: &str, g: &Graph| {
                let sp = format!("{prefix}{n}{name}_");
                let _ = writeln!(s, "{pad}subgraph cluster_{sp} {{\n{pad}  label=\"{name}\";");
                graph_into(s, g, &sp, depth + 1);
                let _ = writeln!(s, "{pad}}}");
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
        let _ = writeln!(
            s,
            "{pad}\"{prefix}out_{name}\" [label=\"output {name}\", shape=ellipse];\n{pad}{prefix}{} -> \"{prefix}out_{name}\";",
            num[&o.node],
            name = escape(&o.name)
        );
    }
}
