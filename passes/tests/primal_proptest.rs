//! Random inner models inside a `ttt` scan: the interpreter's token-by-token primal form
//! (no step graph) against the step graph the `primal` pass builds.
//!
//! A model has one to three states of random small shapes (matrices, rows, vectors, scalars,
//! a stack of matrices), maybe a parameter, loss arguments `x [1, a]`, `y [1, b]` (and maybe a
//! per-token scalar `w [1]`), output arguments `q [1, a]` (maybe `r [1, b]`). The loss ties every
//! state to a token argument (through a matmul or a broadcast binary op), then applies a random
//! mix of unary ops, broadcasting binary ops, matmuls, transposes and reductions, and ends in
//! the scalar `0.5 Σ (every value)²`. The output graph is built the same way and projected to
//! a row `[1, b]` (or `[1, 1, b]`). The scan runs over a mapped axis `B = 2` with random `L`
//! and `K` (full mini-batches, remainders, `K = 1`, `K > L`).
//!
//! Cases whose token-by-token result is not finite (gradient descent on a random nonconvex
//! loss can diverge) are rejected.
//!
//! Tolerance: ≤ 1e-10 relative to the largest magnitude of each output, f64 (the two forms
//! differ only in summation order, a few ulps).

#[path = "common/primal.rs"]
mod primal;

use primal::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use tttc_ir::{
    BinaryOp, DType, Dim, Graph, NodeId, Op, OperandAxes, Program, ReduceOp, Shape, TensorType,
    TttScan, UnaryOp,
};
use tttc_runtime::Tensor;

const TOL: f64 = 1e-10;

/// A small deterministic generator (the test's randomness comes from proptest's seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// Builds a per-token graph of random ops.
struct Gen<'r> {
    g: Graph,
    rng: &'r mut Rng,
    /// Values so far, with their shapes.
    pool: Vec<(NodeId, Vec<usize>)>,
}

fn shape(d: &[usize]) -> Shape {
    Shape::known(d)
}

fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let s = shape(a).broadcast(&shape(b))?;
    s.to_known()
}

fn matmul_ok(a: &[usize], b: &[usize]) -> bool {
    let (ra, rb) = (a.len(), b.len());
    ra >= 2 && rb >= 2 && a[ra - 1] == b[rb - 2] && broadcast(&a[..ra - 2], &b[..rb - 2]).is_some()
}

impl Gen<'_> {
    fn add(&mut self, op: Op, xs: &[NodeId]) -> NodeId {
        let id = self
            .g
            .add(op, xs)
            .unwrap_or_else(|e| panic!("test generator: {e}"));
        let s = self.g.tensor_type(id).expect("tensor").shape.to_known();
        self.pool.push((id, s.expect("known")));
        id
    }
    fn input(&mut self, name: &str, d: &[usize]) -> NodeId {
        let id = self
            .g
            .add_input(name, TensorType::new(DType::F64, shape(d)))
            .expect("input");
        self.pool.push((id, d.to_vec()));
        id
    }
    fn konst(&mut self, v: f64) -> NodeId {
        self.g.add_const(v, DType::F64)
    }
    fn shape_of(&self, id: NodeId) -> Vec<usize> {
        self.g
            .tensor_type(id)
            .and_then(|t| t.shape.to_known())
            .expect("known shape")
    }
    /// A pool value, biased towards recent ones.
    fn recent(&mut self) -> (NodeId, Vec<usize>) {
        let n = self.pool.len();
        let back = self.rng.below(n.min(4));
        if self.rng.chance(50) {
            self.pool[n - 1 - back].clone()
        } else {
            self.pool[self.rng.below(n)].clone()
        }
    }

    /// Ties `state` to one of `args` (a matmul if shapes allow, else a broadcast binary op).
    fn tie(&mut self, state: NodeId, args: &[NodeId]) {
        let s = self.shape_of(state);
        for &a in args {
            let sa = self.shape_of(a);
            if matmul_ok(&sa, &s) {
                self.add(Op::MatMul, &[a, state]);
                return;
            }
        }
        for &a in args {
            let sa = self.shape_of(a);
            if broadcast(&sa, &s).is_some() {
                let fun = self
                    .rng
                    .pick(&[BinaryOp::Mul, BinaryOp::Add, BinaryOp::Sub]);
                self.add(Op::Binary { fun }, &[a, state]);
                return;
            }
        }
        // Fall back: a scalar summary of the state times an argument.
        let mut x = state;
        for axis in 0..s.len() {
            x = self.add(
                Op::Reduce {
                    fun: ReduceOp::Sum,
                    axis,
                },
                &[x],
            );
        }
        let x = self.add(
            Op::Reshape {
                shape: Shape::scalar(),
            },
            &[x],
        );
        if let Some(&a) = args.first() {
            self.add(Op::Binary { fun: BinaryOp::Mul }, &[a, x]);
        }
    }

    /// One random op on pool values.
    fn random_op(&mut self) {
        let (a, sa) = self.recent();
        match self.rng.below(6) {
            0 => {
                let fun = self.rng.pick(&[
                    UnaryOp::Neg,
                    UnaryOp::Tanh,
                    UnaryOp::Sigmoid,
                    UnaryOp::Silu,
                    UnaryOp::GeluTanh,
                    UnaryOp::Sin,
                    UnaryOp::Cos,
                    UnaryOp::Relu,
                ]);
                self.add(Op::Unary { fun }, &[a]);
            }
            1 | 2 => {
                let partners: Vec<(NodeId, Vec<usize>)> = self
                    .pool
                    .iter()
                    .filter(|(_, s)| broadcast(&sa, s).is_some())
                    .cloned()
                    .collect();
                let (b, _) = partners[self.rng.below(partners.len())].clone();
                let (x, y) = if self.rng.chance(50) { (a, b) } else { (b, a) };
                match self.rng.below(6) {
                    5 => {
                        // x / (2 + tanh(y)): a denominator in [1, 3].
                        let t = self.add(Op::Unary { fun: UnaryOp::Tanh }, &[y]);
                        let two = self.konst(2.0);
                        let d = self.add(Op::Binary { fun: BinaryOp::Add }, &[t, two]);
                        self.add(Op::Binary { fun: BinaryOp::Div }, &[x, d]);
                    }
                    i => {
                        let fun = [
                            BinaryOp::Add,
                            BinaryOp::Sub,
                            BinaryOp::Mul,
                            BinaryOp::Max,
                            BinaryOp::Min,
                        ][i];
                        self.add(Op::Binary { fun }, &[x, y]);
                    }
                }
            }
            3 => {
                // A matmul with a fitting partner, possibly transposed.
                let mut options = Vec::new();
                for (b, sb) in self.pool.clone() {
                    if matmul_ok(&sa, &sb) {
                        options.push((a, b, false));
                    }
                    if matmul_ok(&sb, &sa) {
                        options.push((b, a, false));
                    }
                    if sb.len() >= 2 {
                        let mut t = sb.clone();
                        let r = t.len();
                        t.swap(r - 1, r - 2);
                        if matmul_ok(&sa, &t) {
                            options.push((a, b, true));
                        }
                    }
                }
                if options.is_empty() {
                    self.add(Op::Unary { fun: UnaryOp::Tanh }, &[a]);
                } else {
                    let (x, y, t) = options[self.rng.below(options.len())];
                    let y = if t { self.add(Op::Transpose, &[y]) } else { y };
                    self.add(Op::MatMul, &[x, y]);
                }
            }
            4 if !sa.is_empty() => {
                let fun = self.rng.pick(&[ReduceOp::Sum, ReduceOp::Mean]);
                let axis = self.rng.below(sa.len());
                self.add(Op::Reduce { fun, axis }, &[a]);
            }
            5 if sa.len() >= 2 => {
                self.add(Op::Transpose, &[a]);
            }
            _ => {
                let c = self.konst(0.5);
                self.add(Op::Binary { fun: BinaryOp::Mul }, &[a, c]);
            }
        }
    }

    /// `Σ_e sum(e²)` over every pool value, as a scalar.
    fn sum_of_squares(&mut self) -> NodeId {
        let mut acc = self.konst(0.0);
        for (e, s) in self.pool.clone() {
            let sq = self
                .g
                .add(Op::Binary { fun: BinaryOp::Mul }, &[e, e])
                .expect("square");
            let mut x = sq;
            for axis in 0..s.len() {
                x = self
                    .g
                    .add(
                        Op::Reduce {
                            fun: ReduceOp::Sum,
                            axis,
                        },
                        &[x],
                    )
                    .expect("sum");
            }
            let x = self
                .g
                .add(
                    Op::Reshape {
                        shape: Shape::scalar(),
                    },
                    &[x],
                )
                .expect("reshape");
            acc = self
                .g
                .add(Op::Binary { fun: BinaryOp::Add }, &[acc, x])
                .expect("add");
        }
        let half = self.konst(0.5);
        self.g
            .add(Op::Binary { fun: BinaryOp::Mul }, &[acc, half])
            .expect("scale")
    }

    /// `Σ_e proj(e)` as a row `[1, b]`: values that broadcast to `[1, b]` as they are, others
    /// by their mean.
    fn row_of(&mut self, b: usize) -> NodeId {
        let zero = self.konst(0.0);
        let mut acc = self
            .g
            .add(
                Op::Expand {
                    shape: shape(&[1, b]),
                },
                &[zero],
            )
            .expect("zeros");
        for (e, s) in self.pool.clone() {
            let x = if shape(&s).broadcasts_to(&shape(&[1, b])) {
                e
            } else {
                let mut x = e;
                for axis in 0..s.len() {
                    x = self
                        .g
                        .add(
                            Op::Reduce {
                                fun: ReduceOp::Mean,
                                axis,
                            },
                            &[x],
                        )
                        .expect("mean");
                }
                self.g
                    .add(
                        Op::Reshape {
                            shape: Shape::scalar(),
                        },
                        &[x],
                    )
                    .expect("reshape")
            };
            acc = self
                .g
                .add(Op::Binary { fun: BinaryOp::Add }, &[acc, x])
                .expect("add");
        }
        acc
    }
}

/// A random model and its main program.
struct Case {
    program: Program,
    inputs: BTreeMap<String, Tensor>,
}

fn build(seed: u64, l: usize, k: usize) -> Case {
    let mut rng = Rng(seed);
    let (a, b, c) = (1 + rng.below(3), 1 + rng.below(3), 1 + rng.below(2));
    let menu: Vec<Vec<usize>> = vec![
        vec![a, b],
        vec![1, b],
        vec![b],
        vec![],
        vec![b, b],
        vec![c, a, b],
        vec![a],
    ];
    let n_states = 1 + rng.below(3);
    let states: Vec<(String, Vec<usize>)> = (0..n_states)
        .map(|i| (format!("s{i}"), menu[rng.below(menu.len())].clone()))
        .collect();
    let params: Vec<(String, Vec<usize>)> = if rng.chance(50) {
        vec![("p".to_string(), rng.pick(&[&[b][..], &[]]).to_vec())]
    } else {
        Vec::new()
    };
    let mut loss_args = vec![("x".to_string(), vec![1, a]), ("y".to_string(), vec![1, b])];
    if rng.chance(30) {
        loss_args.push(("w".to_string(), vec![1]));
    }
    let mut out_args = vec![("q".to_string(), vec![1, a])];
    if rng.chance(30) {
        out_args.push(("r".to_string(), vec![1, b]));
    }

    // The loss.
    let mut gen = Gen {
        g: Graph::new(),
        rng: &mut rng,
        pool: Vec::new(),
    };
    let st: Vec<NodeId> = states.iter().map(|(n, s)| gen.input(n, s)).collect();
    for (n, s) in &params {
        gen.input(n, s);
    }
    let la: Vec<NodeId> = loss_args.iter().map(|(n, s)| gen.input(n, s)).collect();
    for &s in &st {
        gen.tie(s, &la);
    }
    let n_ops = 2 + gen.rng.below(6);
    for _ in 0..n_ops {
        gen.random_op();
    }
    let loss_node = gen.sum_of_squares();
    let mut loss = gen.g;
    loss.add_output("loss", loss_node);

    // The output.
    let mut gen = Gen {
        g: Graph::new(),
        rng: &mut rng,
        pool: Vec::new(),
    };
    let st: Vec<NodeId> = states.iter().map(|(n, s)| gen.input(n, s)).collect();
    for (n, s) in &params {
        gen.input(n, s);
    }
    let oa: Vec<NodeId> = out_args.iter().map(|(n, s)| gen.input(n, s)).collect();
    for &s in &st {
        gen.tie(s, &oa);
    }
    let n_ops = 1 + gen.rng.below(5);
    for _ in 0..n_ops {
        gen.random_op();
    }
    let mut z = gen.row_of(b);
    if gen.rng.chance(30) {
        z = gen
            .g
            .add(
                Op::Reshape {
                    shape: shape(&[1, 1, b]),
                },
                &[z],
            )
            .expect("reshape");
    }
    let mut out = gen.g;
    out.add_output("out", z);

    // The main graph: a scan over B = 2 (states mapped or shared at random).
    let bsz = 2;
    let mut main = Graph::new();
    let mut operands = Vec::new();
    let mut axes = Vec::new();
    let mut inputs = BTreeMap::new();
    let mut seed_n = seed.wrapping_mul(31);
    let mut tensor = |d: &[usize], lo: f64, hi: f64| {
        seed_n = seed_n.wrapping_add(1);
        rand_tensor(seed_n, d, lo, hi)
    };
    for (n, s) in &states {
        let mapped = rng.chance(50);
        let mut d = s.clone();
        let mut per = vec![None; s.len()];
        if mapped {
            d.insert(0, bsz);
            per.insert(0, Some(0));
        }
        let name = format!("{n}_0");
        operands.push(
            main.add_input(&name, TensorType::new(DType::F64, shape(&d)))
                .expect("state"),
        );
        axes.push(OperandAxes { per });
        inputs.insert(name, tensor(&d, -0.5, 0.5));
    }
    for (n, s) in &params {
        operands.push(
            main.add_input(n, TensorType::new(DType::F64, shape(s)))
                .expect("param"),
        );
        axes.push(OperandAxes {
            per: vec![None; s.len()],
        });
        inputs.insert(n.clone(), tensor(s, -1.0, 1.0));
    }
    for (n, s) in loss_args.iter().chain(&out_args) {
        let mut d = vec![bsz, l];
        d.extend(&s[1..]);
        let mut per = vec![Some(0)];
        per.extend(vec![None; s.len()]);
        let name = format!("{n}_seq");
        operands.push(
            main.add_input(&name, TensorType::new(DType::F64, shape(&d)))
                .expect("arg"),
        );
        axes.push(OperandAxes { per });
        inputs.insert(name, tensor(&d, -1.0, 1.0));
    }
    operands.push(
        main.add_input("token_eta", TensorType::new(DType::F64, shape(&[k])))
            .expect("eta"),
    );
    axes.push(OperandAxes { per: vec![None] });
    inputs.insert("token_eta".into(), tensor(&[k], 0.2, 1.0));
    operands.push(
        main.add_input("lr", TensorType::new(DType::F64, shape(&[bsz, l])))
            .expect("lr"),
    );
    axes.push(OperandAxes {
        per: vec![Some(0), None],
    });
    inputs.insert("lr".into(), tensor(&[bsz, l], 0.01, 0.2));

    let scan = TttScan {
        model: "Random".into(),
        per: vec!["B".into()],
        mini_batch: Dim::Known(k),
        states: states.iter().map(|(n, _)| n.clone()).collect(),
        params: params.iter().map(|(n, _)| n.clone()).collect(),
        loss_args: loss_args.iter().map(|(n, _)| n.clone()).collect(),
        out_args: out_args.iter().map(|(n, _)| n.clone()).collect(),
        axes,
        token_eta: Default::default(),
        rule: Default::default(),
        doubling_rounds: None,
        loss,
        out,
        grad: None,
        step: None,
        step_vjp: None,
    };
    let r = main
        .add(Op::Ttt(Box::new(scan)), &operands)
        .unwrap_or_else(|e| panic!("scan: {e}"));
    let z = main.add(Op::Get { index: 0 }, &[r]).expect("get");
    main.add_output("Z", z);
    for (i, (n, _)) in states.iter().enumerate() {
        let s = main.add(Op::Get { index: i + 1 }, &[r]).expect("get");
        main.add_output(&format!("{n}_last"), s);
    }
    let mut program = Program {
        name: "random".into(),
        configs: Vec::new(),
        derived_dims: Vec::new(),
        intermediates: Vec::new(),
        integer_inputs: Vec::new(),
        graph: main,
    };
    tttc_passes::pipeline::Pipeline::of_passes(vec![Box::new(tttc_passes::Autodiff)])
        .run_graph(&mut program)
        .expect("autodiff");
    Case { program, inputs }
}

fn check(seed: u64, l: usize, k: usize) -> Result<(), TestCaseError> {
    let case = build(seed, l, k);
    let token = tttc_backends::interp::run_program(&case.program, &case.inputs)
        .map_err(|e| TestCaseError::fail(format!("token by token: {e}")))?;
    let stepped = lowered(&case.program);
    prop_assert!(has_steps(&stepped));
    let step = tttc_backends::interp::run_program(&stepped, &case.inputs)
        .map_err(|e| TestCaseError::fail(format!("step: {e}")))?;
    // Gradient descent on a random nonconvex loss may diverge; such cases compare nothing.
    prop_assume!(token
        .values()
        .all(|t| t.to_f64_vec().iter().all(|x| x.is_finite())));
    for (name, want) in &token {
        let e = rel_to_max(&step[name], want);
        prop_assert!(
            e <= TOL,
            "`{name}`: step vs token {e:e}\n{}",
            tttc_ir::printer::print_program(&stepped)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn step_graph_matches_token_by_token(seed in any::<u64>(), l in 1usize..=10, k in 1usize..=4) {
        check(seed, l, k)?;
    }
}

/// A few fixed cases, so that a regression shows up without proptest's search.
#[test]
fn fixed_random_models() {
    let mut rejected = 0;
    for seed in 0..24u64 {
        for (l, k) in [(7, 3), (8, 4), (5, 1), (2, 4)] {
            match check(seed, l, k) {
                Ok(()) => {}
                Err(TestCaseError::Reject(_)) => rejected += 1,
                Err(e) => panic!("seed {seed}, L={l}, K={k}: {e}"),
            }
        }
    }
    assert!(rejected <= 4, "{rejected} of 96 fixed cases diverged");
}
