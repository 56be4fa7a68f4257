//! Random small graphs over the op set: `simplify` and `dual_form` keep every output's value
//! (f64, 1e-10 relative to its largest magnitude), keep the inputs and outputs, produce graphs
//! that verify, and never increase the cost.
//!
//! The generator is a small random program over a pool of values (the inputs first, with the
//! shapes of a mini-batch step: `k = 3` tokens, `m = 2`, `n = 4`). A step picks an op and
//! operands from the pool; a choice whose operands do not fit falls back to fitting ones or is
//! skipped, so every graph is well-typed by construction (the builder infers every type). Some
//! steps are templates of the primal form (`mix(eta, matmul(transpose(X3), D3))`, `θ − mix`,
//! a query times it, the final state) so that the dual-form rules fire often. Unary ops are the
//! bounded ones (`neg`, `tanh`, `sin`, `sigmoid`) and there is no division, so no value
//! overflows or is NaN.

mod common;

use common::*;
use proptest::prelude::*;
use tttc_ir::verify::verify_graph;
use tttc_ir::{BinaryOp, Graph, NodeId, Op, ReduceOp, Shape, UnaryOp};
use tttc_passes::rewrite::{
    dual_form_graph, estimate_graph_cost, simplify_graph, RewriteConfig, RewriteReport,
};

const TOL: f64 = 1e-10;
const OPS: u8 = 17;

const INPUTS: [(&str, &[usize]); 14] = [
    ("w", &[3, 3]),
    ("wl", &[1, 3]),
    ("x3", &[3, 1, 2]),
    ("d3", &[3, 1, 4]),
    ("q3", &[3, 1, 2]),
    ("th", &[2, 4]),
    ("bias", &[1, 4]),
    ("u", &[3, 2]),
    ("dd", &[3, 4]),
    ("s", &[]),
    ("a", &[2, 2]),
    ("v", &[4]),
    ("r3", &[3, 1, 1]),
    ("cube", &[2, 2, 2]),
];

#[derive(Clone, Debug)]
struct Case {
    /// (op, operand a, operand b, extra).
    steps: Vec<(u8, u16, u16, u8)>,
    /// Extra outputs, as pool positions.
    outputs: Vec<u16>,
    seed: u64,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((0..OPS, any::<u16>(), any::<u16>(), any::<u8>()), 1..12),
        prop::collection::vec(any::<u16>(), 0..3),
        any::<u64>(),
    )
        .prop_map(|(steps, outputs, seed)| Case {
            steps,
            outputs,
            seed,
        })
}

struct Gen {
    b: B,
    pool: Vec<NodeId>,
}

impl Gen {
    fn dims(&self, x: NodeId) -> Vec<usize> {
        dims(&self.b.g.tensor_type(x).expect("tensor").shape)
    }
    fn pick(&self, i: u16) -> NodeId {
        self.pool[i as usize % self.pool.len()]
    }
    /// A pool value of shape `dims` (the latest one), else the input `name`.
    fn of_shape(&self, dims: &[usize], name: &str) -> NodeId {
        self.pool
            .iter()
            .rev()
            .copied()
            .find(|&x| self.dims(x) == dims)
            .unwrap_or_else(|| self.b.g.input_by_name(name).expect("input"))
    }
    /// Adds `op` if it type-checks.
    fn try_op(&mut self, op: Op, xs: &[NodeId]) -> Option<NodeId> {
        let id = self.b.g.add(op, xs).ok()?;
        self.pool.push(id);
        Some(id)
    }
    fn input(&self, name: &str) -> NodeId {
        self.b.g.input_by_name(name).expect("input")
    }

    fn step(&mut self, (op, i, j, e): (u8, u16, u16, u8)) {
        let (x, y) = (self.pick(i), self.pick(j));
        let d = self.dims(x);
        let r = d.len();
        match op {
            0 => {
                let fun =
                    [UnaryOp::Neg, UnaryOp::Tanh, UnaryOp::Sin, UnaryOp::Sigmoid][e as usize % 4];
                self.try_op(Op::Unary { fun }, &[x]);
            }
            1 => {
                let fun = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul][e as usize % 3];
                if self.try_op(Op::Binary { fun }, &[x, y]).is_none() {
                    self.try_op(Op::Binary { fun }, &[x, x]);
                }
            }
            2 => {
                if self.try_op(Op::MatMul, &[x, y]).is_none() && r >= 2 {
                    if let Some(t) = self.try_op(Op::Transpose, &[x]) {
                        self.try_op(Op::MatMul, &[x, t]);
                    }
                }
            }
            3 => {
                self.try_op(Op::Transpose, &[x]);
            }
            4 => {
                let n: usize = d.iter().product();
                let target: Vec<usize> = match e % 4 {
                    0 => vec![n],
                    1 => std::iter::once(1).chain(d.iter().copied()).collect(),
                    2 => d.iter().copied().filter(|&a| a != 1).collect(),
                    _ => d.iter().rev().copied().collect(),
                };
                self.try_op(
                    Op::Reshape {
                        shape: Shape::known(&target),
                    },
                    &[x],
                );
            }
            5 => {
                if r < 2 {
                    return;
                }
                let mut perm: Vec<usize> = (0..r).collect();
                match e % 4 {
                    0 => perm.reverse(),
                    1 => perm.rotate_left(1),
                    2 => perm.swap(r - 1, r - 2),
                    _ => {}
                }
                self.try_op(Op::Permute { perm }, &[x]);
            }
            6 => {
                if r == 0 {
                    return;
                }
                let fun = if e % 2 == 0 {
                    ReduceOp::Sum
                } else {
                    ReduceOp::Mean
                };
                self.try_op(
                    Op::Reduce {
                        fun,
                        axis: e as usize % r,
                    },
                    &[x],
                );
            }
            7 => {
                let lead = 2 + e as usize % 2;
                let target: Vec<usize> = std::iter::once(lead).chain(d.iter().copied()).collect();
                self.try_op(
                    Op::Expand {
                        shape: Shape::known(&target),
                    },
                    &[x],
                );
            }
            8 => {
                if r == 0 {
                    return;
                }
                let target: Vec<usize> = if e % 2 == 0 {
                    d[1..].to_vec()
                } else {
                    std::iter::once(1).chain(d[1..].iter().copied()).collect()
                };
                self.try_op(
                    Op::SumTo {
                        shape: Shape::known(&target),
                    },
                    &[x],
                );
            }
            9 => {
                if self.try_op(Op::Mix, &[x, y]).is_none() {
                    let w = if e % 2 == 0 { "w" } else { "wl" };
                    let w = self.input(w);
                    self.try_op(Op::Mix, &[w, y]);
                }
            }
            10 => {
                let z = self.pick(e as u16);
                if self.try_op(Op::MixOuter, &[x, y, z]).is_none() {
                    let w = if e % 2 == 0 { "w" } else { "wl" };
                    let (w, u, dd) = (self.input(w), self.of_shape(&[3, 2], "u"), self.input("dd"));
                    self.try_op(Op::MixOuter, &[w, u, dd]);
                }
            }
            11 => {
                let c = [0.0, 1.0, 2.0, -0.5][e as usize % 4];
                let c = self.b.c(c);
                let fun = if e % 8 < 4 {
                    BinaryOp::Mul
                } else {
                    BinaryOp::Add
                };
                let xs = if e % 2 == 0 { [x, c] } else { [c, x] };
                self.try_op(Op::Binary { fun }, &xs);
            }
            12 | 13 => {
                // The primal form: per-token outer products mixed by eta.
                let (x3, d3) = (
                    self.of_shape(&[3, 1, 2], "x3"),
                    self.of_shape(&[3, 1, 4], "d3"),
                );
                let Some(xt) = self.try_op(Op::Transpose, &[x3]) else {
                    return;
                };
                let g = if op == 12 {
                    self.try_op(Op::MatMul, &[xt, d3])
                } else {
                    self.try_op(Op::Binary { fun: BinaryOp::Mul }, &[xt, d3])
                };
                let Some(g) = g else { return };
                let th = self.of_shape(&[2, 4], "th");
                if e % 2 == 0 {
                    let w = self.of_shape(&[3, 3], "w");
                    let Some(mixed) = self.try_op(Op::Mix, &[w, g]) else {
                        return;
                    };
                    let Some(all) = self.try_op(Op::Binary { fun: BinaryOp::Sub }, &[th, mixed])
                    else {
                        return;
                    };
                    let q3 = self.of_shape(&[3, 1, 2], "q3");
                    self.try_op(Op::MatMul, &[q3, all]);
                } else {
                    let wl = self.of_shape(&[1, 3], "wl");
                    let Some(mixed) = self.try_op(Op::Mix, &[wl, g]) else {
                        return;
                    };
                    let Some(flat) = self.try_op(
                        Op::Reshape {
                            shape: Shape::known(&[2, 4]),
                        },
                        &[mixed],
                    ) else {
                        return;
                    };
                    self.try_op(Op::Binary { fun: BinaryOp::Sub }, &[th, flat]);
                }
            }
            14 => {
                // Cancelling pairs.
                if let Some(t) = self.try_op(Op::Transpose, &[x]) {
                    self.try_op(Op::Transpose, &[t]);
                }
                if let Some(n) = self.try_op(Op::Unary { fun: UnaryOp::Neg }, &[y]) {
                    self.try_op(Op::Unary { fun: UnaryOp::Neg }, &[n]);
                }
                // Two permutations in a row (they compose; not always to the identity).
                let z = self.of_shape(&[2, 2, 2], "cube");
                let perms: [[usize; 3]; 4] = [[2, 1, 0], [1, 2, 0], [0, 2, 1], [2, 0, 1]];
                let (p1, p2) = (perms[e as usize % 4], perms[(e as usize / 4) % 4]);
                if let Some(a) = self.try_op(Op::Permute { perm: p1.to_vec() }, &[z]) {
                    self.try_op(Op::Permute { perm: p2.to_vec() }, &[a]);
                }
            }
            15 => {
                // A mix of a broadcasting elementwise op (the linearity rules' guards).
                let fun = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul][e as usize % 3];
                let w = self.of_shape(&[3, 3], "w");
                if let Some(z) = self.try_op(Op::Binary { fun }, &[x, y]) {
                    self.try_op(Op::Mix, &[w, z]);
                }
            }
            _ => {
                // Mix of row blocks (the bias path).
                let w = self.of_shape(&[3, 3], "w");
                let d3 = self.of_shape(&[3, 1, 4], "d3");
                if let Some(m) = self.try_op(Op::Mix, &[w, d3]) {
                    let bias = self.input("bias");
                    self.try_op(Op::Binary { fun: BinaryOp::Sub }, &[bias, m]);
                }
            }
        }
    }
}

fn build(case: &Case) -> Graph {
    let mut g = Gen {
        b: B::new(),
        pool: Vec::new(),
    };
    for (name, dims) in INPUTS {
        let id = g.b.input(name, dims);
        g.pool.push(id);
    }
    for &s in &case.steps {
        g.step(s);
    }
    let last = *g.pool.last().expect("pool");
    g.b.g.add_output("last", last);
    for (i, &o) in case.outputs.iter().enumerate() {
        let node = g.pick(o);
        g.b.g.add_output(&format!("o{i}"), node);
    }
    g.b.g
}

fn check(g: &Graph, r: &Graph, report: &RewriteReport, seed: u64) -> Result<(), TestCaseError> {
    if std::env::var("REWRITE_PROPTEST_DUMP").is_ok() {
        println!("{report}{}", tttc_ir::printer::print_graph(g));
    }
    let p = || {
        format!(
            "{report}\nbefore:\n{}\nafter:\n{}",
            tttc_ir::printer::print_graph(g),
            tttc_ir::printer::print_graph(r)
        )
    };
    prop_assert!(verify_graph(r, "rewritten").is_ok(), "{}", p());
    prop_assert_eq!(input_names(g), input_names(r));
    let outs = |g: &Graph| {
        g.outputs()
            .iter()
            .map(|o| (o.name.clone(), g.tensor_type(o.node).cloned()))
            .collect::<Vec<_>>()
    };
    prop_assert_eq!(outs(g), outs(r));
    let ins = random_inputs(g, seed);
    let (want, got) = (all_outputs(g, &ins), all_outputs(r, &ins));
    for (name, w) in &want {
        let err = rel_err(&got[name], w);
        prop_assert!(err <= TOL, "`{}`: relative error {:e}\n{}", name, err, p());
    }
    let hints = RewriteConfig::default().hints;
    let (before, after) = (
        estimate_graph_cost(g, &hints),
        estimate_graph_cost(r, &hints),
    );
    prop_assert!(
        after.total() <= before.total(),
        "cost {} > {}\n{}",
        after,
        before,
        p()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn simplify_preserves_values_and_never_costs_more(case in case_strategy()) {
        let g = build(&case);
        let (r, report) = simplify_graph(&g, &RewriteConfig::default(), "random")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(&g, &r, &report, case.seed % 1000)?;
    }

    #[test]
    fn dual_form_preserves_values_and_never_costs_more(case in case_strategy()) {
        let g = build(&case);
        let (r, report) = dual_form_graph(&g, &RewriteConfig::default(), "random")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(&g, &r, &report, case.seed % 1000)?;
    }
}
