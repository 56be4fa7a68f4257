//! The kernel lowering (`tttc_passes::lower_kernel`) op by op: small graphs lowered to kernel
//! IR and run by the kernel executor (`tttc_backends::kernel_interp`) against the graph
//! interpreter, plus the scans of the example programs at the primal stage (with `mix` and
//! `mix_outer`) and after the whole pipeline.
//!
//! Tolerance (f64): 1e-12 relative to max |expected|. The kernels accumulate matmuls,
//! reductions, `sum_to`, `mix` and `mix_outer` in the interpreter's order and evaluate the same
//! scalar functions, so most results are bitwise equal; the bound leaves room for evaluation
//! order changes only. The f32 test asserts bitwise equality: it fails if the executor computed
//! in f64 and rounded.

mod common;
#[path = "common/primal.rs"]
mod primal;

use common::B;
use std::collections::BTreeMap;
use tttc_backends::interp::eval_graph;
use tttc_backends::kernel_interp::run_kernel_program;
use tttc_ir::kernel::{
    print_kernel_program, BufferKind, KernelProgram, MemorySpace, Schedule, Stmt,
};
use tttc_ir::{BinaryOp, DType, Dim, Graph, NodeId, Op, ReduceOp, Shape, TensorType, UnaryOp};
use tttc_passes::lower_kernel::{lower_graph, lower_program, LowerKernelError};
use tttc_runtime::Tensor;

const TOL: f64 = 1e-12;

type Inputs = BTreeMap<String, Tensor>;

/// Random inputs in [lo, hi) for every input of `g`.
fn inputs_for(g: &Graph, seed: u64, lo: f64, hi: f64) -> Inputs {
    g.inputs()
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let name = g.input_name(id).expect("input").to_string();
            let shape = g
                .tensor_type(id)
                .and_then(|t| t.shape.to_known())
                .expect("known shape");
            let t = primal::rand_tensor(seed * 100 + i as u64, &shape, lo, hi);
            let t = match g.tensor_type(id).map(|t| t.dtype) {
                Some(DType::F32) => t.cast(tttc_runtime::ElemType::F32),
                _ => t,
            };
            (name, t)
        })
        .collect()
}

/// Lowers `g`, runs it on `inputs`, and checks every output against the interpreter; returns
/// the kernel program.
fn check_with(g: &Graph, inputs: &Inputs, what: &str) -> KernelProgram {
    let k = lower_graph(what, g).unwrap_or_else(|e| panic!("{what}: lower: {e}"));
    let got = run_kernel_program(&k, inputs)
        .unwrap_or_else(|e| panic!("{what}: run: {e}\n{}", print_kernel_program(&k)));
    let want = eval_graph(g, inputs).unwrap_or_else(|e| panic!("{what}: interp: {e}"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: output names"
    );
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(g.shape(), w.shape(), "{what}: {name}: shape");
        let err = primal::rel_to_max(g, w);
        assert!(
            err <= TOL,
            "{what}: {name}: {err:e} > {TOL:e}\n got  {:?}\n want {:?}\n{}",
            g.to_f64_vec(),
            w.to_f64_vec(),
            print_kernel_program(&k)
        );
    }
    k
}

fn check(g: &Graph, what: &str) -> KernelProgram {
    check_with(g, &inputs_for(g, 7, -1.0, 1.0), what)
}

fn temps(k: &KernelProgram) -> usize {
    k.buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Temp)
        .count()
}

fn op(b: &mut B, op: Op, xs: &[NodeId]) -> NodeId {
    b.op(op, xs)
}

fn shape(dims: &[usize]) -> Shape {
    Shape::known(dims)
}

#[test]
fn every_unary_op() {
    for fun in UnaryOp::ALL {
        let mut b = B::new();
        let x = b.input("x", &[3, 4]);
        let y = b.un(fun, x);
        let g = b.finish("y", y);
        // Positive inputs, so that sqrt, rsqrt and log are defined.
        let ins = inputs_for(&g, 1, 0.1, 2.0);
        check_with(&g, &ins, fun.name());
        let ins = inputs_for(&g, 2, -2.0, 2.0);
        if !matches!(fun, UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Log) {
            check_with(&g, &ins, fun.name());
        }
    }
}

#[test]
fn every_binary_op_with_broadcasting() {
    for fun in BinaryOp::ALL {
        let mut b = B::new();
        let x = b.input("x", &[3, 1, 4]);
        let y = b.input("y", &[2, 1]);
        let z = b.bin(fun, x, y);
        let g = b.finish("z", z);
        let ins = inputs_for(&g, 3, 0.1, 2.0);
        check_with(&g, &ins, fun.name());
        // A scalar constant on the left.
        let mut b = B::new();
        let x = b.input("x", &[2, 3]);
        let c = b.c(1.5);
        let z = b.bin(fun, c, x);
        let g = b.finish("z", z);
        check_with(&g, &inputs_for(&g, 4, 0.1, 2.0), fun.name());
    }
}

#[test]
fn leaves_const_extent_iota() {
    let mut b = B::new();
    let x = b.input("x", &[5]);
    let i =
        b.g.add_leaf(Op::Iota { len: Dim::Known(5) }, DType::F64)
            .expect("iota");
    let e =
        b.g.add_leaf(Op::Extent { dim: Dim::Known(7) }, DType::F64)
            .expect("extent");
    let s = b.add(i, e);
    let y = b.mul(s, x);
    let c = b.c(2.5);
    let mut g = b.finish("y", y);
    // A constant and an iota as outputs of their own.
    g.add_output("c", c);
    g.add_output("i", i);
    let k = check(&g, "leaves");
    assert_eq!(temps(&k), 0, "{}", print_kernel_program(&k));
}

#[test]
fn elementwise_chains_are_fused_and_shared_values_materialized() {
    // One user each: a single loop nest, no temporary.
    let mut b = B::new();
    let x = b.input("x", &[4, 3]);
    let e = b.un(UnaryOp::Exp, x);
    let s = b.add_c(e, 1.0);
    let y = b.scale(s, 2.0);
    let g = b.finish("y", y);
    let k = check(&g, "chain");
    assert_eq!(temps(&k), 0, "{}", print_kernel_program(&k));
    assert_eq!(k.body.len(), 1, "{}", print_kernel_program(&k));
    // `e` used twice: computed once, into a temporary.
    let mut b = B::new();
    let x = b.input("x", &[4, 3]);
    let e = b.un(UnaryOp::Exp, x);
    let y = b.mul(e, e);
    let g = b.finish("y", y);
    let k = check(&g, "shared");
    assert_eq!(temps(&k), 1, "{}", print_kernel_program(&k));
    // A value that is also an output is computed into the output buffer and read from there.
    let mut b = B::new();
    let x = b.input("x", &[4, 3]);
    let e = b.un(UnaryOp::Tanh, x);
    let y = b.add_c(e, 3.0);
    let mut g = b.finish("y", y);
    g.add_output("e", e);
    let k = check(&g, "output reused");
    assert_eq!(temps(&k), 0, "{}", print_kernel_program(&k));
}

#[test]
fn matmul_plain_batched_broadcast_and_strided() {
    let mut b = B::new();
    let x = b.input("x", &[2, 3, 4]);
    let w = b.input("w", &[4, 5]);
    let y = b.matmul(x, w);
    check(&b.finish("y", y), "matmul batch x plain");

    let mut b = B::new();
    let x = b.input("x", &[2, 1, 3, 4]);
    let w = b.input("w", &[3, 4, 2]);
    let y = b.matmul(x, w);
    check(&b.finish("y", y), "matmul broadcast batch");

    // Transposed operands are strided views; an elementwise operand is materialized first, and
    // the strided right operand is copied once so the innermost loop reads it contiguously.
    let mut b = B::new();
    let x = b.input("x", &[4, 3]);
    let w = b.input("w", &[5, 4]);
    let xt = b.transpose(x);
    let wt = b.transpose(w);
    let e = b.un(UnaryOp::Sin, xt);
    let y = b.matmul(e, wt);
    let k = check(&b.finish("y", y), "matmul strided");
    assert_eq!(temps(&k), 2, "{}", print_kernel_program(&k));

    // An empty contraction gives zeros.
    let mut b = B::new();
    let x = b.input("x", &[2, 0]);
    let w = b.input("w", &[0, 3]);
    let y = b.matmul(x, w);
    check(&b.finish("y", y), "matmul k=0");
}

#[test]
fn views_transpose_permute_reshape_expand() {
    let mut b = B::new();
    let x = b.input("x", &[2, 3, 4]);
    let p = op(
        &mut b,
        Op::Permute {
            perm: vec![2, 0, 1],
        },
        &[x],
    );
    let t = b.transpose(p);
    let mut g = b.finish("t", t);
    g.add_output("p", p);
    let k = check(&g, "permute/transpose");
    assert_eq!(temps(&k), 0);

    // Reshape of a contiguous view is free; of a permuted one it reads through div/rem.
    let mut b = B::new();
    let x = b.input("x", &[2, 3, 4]);
    let r = op(
        &mut b,
        Op::Reshape {
            shape: shape(&[6, 1, 4]),
        },
        &[x],
    );
    let p = op(
        &mut b,
        Op::Permute {
            perm: vec![1, 0, 2],
        },
        &[x],
    );
    let rp = op(
        &mut b,
        Op::Reshape {
            shape: shape(&[4, 6]),
        },
        &[p],
    );
    let e = b.un(UnaryOp::Exp, rp);
    let re = op(
        &mut b,
        Op::Reshape {
            shape: shape(&[2, 12]),
        },
        &[e],
    );
    let mut g = b.finish("r", r);
    g.add_output("rp", rp);
    g.add_output("re", re);
    check(&g, "reshape");

    // Expand of a view (stride 0) and of an expression; a broadcast expression is
    // materialized before it is read many times.
    let mut b = B::new();
    let x = b.input("x", &[3, 1]);
    let e = op(
        &mut b,
        Op::Expand {
            shape: shape(&[2, 3, 4]),
        },
        &[x],
    );
    let s = b.un(UnaryOp::Cos, x);
    let es = op(
        &mut b,
        Op::Expand {
            shape: shape(&[2, 3, 4]),
        },
        &[s],
    );
    let mut g = b.finish("e", e);
    g.add_output("es", es);
    check(&g, "expand");

    // An output that is an input.
    let mut b = B::new();
    let x = b.input("x", &[2, 2]);
    check(&b.finish("x_out", x), "identity");
}

#[test]
fn reductions_on_every_axis() {
    for fun in [ReduceOp::Sum, ReduceOp::Mean] {
        for axis in 0..3 {
            let mut b = B::new();
            let x = b.input("x", &[2, 3, 4]);
            let e = b.un(UnaryOp::Exp, x);
            let r = b.reduce(fun, e, axis);
            check(&b.finish("r", r), &format!("{} axis {axis}", fun.name()));
        }
    }
}

#[test]
fn sum_to_targets() {
    for target in [
        vec![3, 1],
        vec![1, 4],
        vec![],
        vec![2, 1, 4],
        vec![4],
        vec![2, 3, 4],
    ] {
        let mut b = B::new();
        let x = b.input("x", &[2, 3, 4]);
        let s = b.un(UnaryOp::Tanh, x);
        let r = op(
            &mut b,
            Op::SumTo {
                shape: shape(&target),
            },
            &[s],
        );
        check(&b.finish("r", r), &format!("sum_to {target:?}"));
    }
}

#[test]
fn mix_and_mix_outer() {
    let mut b = B::new();
    let w = b.input("w", &[3, 4]);
    let x = b.input("x", &[4, 2, 3]);
    let y = op(&mut b, Op::Mix, &[w, x]);
    check(&b.finish("y", y), "mix");

    let mut b = B::new();
    let w = b.input("w", &[3, 4]);
    let u = b.input("u", &[4, 2]);
    let d = b.input("d", &[4, 5]);
    let du = b.un(UnaryOp::Exp, d);
    let y = op(&mut b, Op::MixOuter, &[w, u, du]);
    check(&b.finish("y", y), "mix_outer");
}

#[test]
fn layer_norm_graph() {
    let mut b = B::new();
    let x = b.input("x", &[3, 5, 6]);
    let w = b.input("w", &[6]);
    let bias = b.input("b", &[6]);
    let y = b.layer_norm(x, w, bias, 1e-6);
    check(&b.finish("y", y), "layer_norm");
}

#[test]
fn f32_programs_compute_in_f32() {
    let tt = |d: &[usize]| TensorType::new(DType::F32, Shape::known(d));
    let mut g = Graph::new();
    let x = g.add_input("x", tt(&[3, 40])).expect("x");
    let w = g.add_input("w", tt(&[40, 2])).expect("w");
    let m = g.add(Op::MatMul, &[x, w]).expect("matmul");
    let s = g
        .add(
            Op::Unary {
                fun: UnaryOp::GeluTanh,
            },
            &[m],
        )
        .expect("gelu");
    let r = g
        .add(
            Op::Reduce {
                fun: ReduceOp::Mean,
                axis: 0,
            },
            &[s],
        )
        .expect("mean");
    g.add_output("r", r);
    g.add_output("m", m);
    let ins = inputs_for(&g, 9, -1.0, 1.0);
    let k = lower_graph("f32", &g).expect("lower");
    assert_eq!(k.dtype, DType::F32);
    let got = run_kernel_program(&k, &ins).expect("run");
    let want = eval_graph(&g, &ins).expect("interp");
    for (name, w) in &want {
        assert_eq!(got[name].elem_type(), tttc_runtime::ElemType::F32);
        assert_eq!(got[name].as_f32(), w.as_f32(), "{name}: not bitwise equal");
    }
}

#[test]
fn unspecialized_graph_is_an_error() {
    let mut g = Graph::new();
    let x = g
        .add_input(
            "x",
            TensorType::new(DType::F64, Shape(vec![Dim::sym("n"), Dim::Known(2)])),
        )
        .expect("x");
    let y = g.add(Op::Unary { fun: UnaryOp::Exp }, &[x]).expect("exp");
    g.add_output("y", y);
    match lower_graph("sym", &g) {
        Err(LowerKernelError::UnboundDim { symbol, .. }) => assert_eq!(symbol, "n"),
        other => panic!("expected an unbound-dimension error, got {other:?}"),
    }
}

#[test]
fn scan_without_step_graph_is_an_error() {
    // Autodiff only: the scans have no step graph yet.
    let p = primal::compile_example("delta_rule.ttt", &[("mini_batch_size", 2.0)]);
    let ins = delta_inputs(1, 2, 5, 2);
    let s = p.specialize(&primal::bind_dims(&p, &ins));
    match lower_program(&s) {
        Err(LowerKernelError::MissingStep { .. }) => {}
        other => panic!("expected a missing-step error, got {other:?}"),
    }
}

fn delta_inputs(b: usize, h: usize, l: usize, k: usize) -> Inputs {
    let (dk, dv) = (3, 2);
    BTreeMap::from([
        (
            "Q".into(),
            primal::rand_tensor(1, &[b, h, l, dk], -1.0, 1.0),
        ),
        (
            "K".into(),
            primal::rand_tensor(2, &[b, h, l, dk], -1.0, 1.0),
        ),
        (
            "V".into(),
            primal::rand_tensor(3, &[b, h, l, dv], -1.0, 1.0),
        ),
        ("W0".into(), primal::rand_tensor(4, &[h, dk, dv], -0.5, 0.5)),
        (
            "position_scale".into(),
            primal::rand_tensor(5, &[k], 0.1, 1.0),
        ),
        ("lr".into(), primal::rand_tensor(6, &[b, h, l], 0.0, 0.5)),
    ])
}

fn mlp_inputs(b: usize, h: usize, l: usize, k: usize) -> Inputs {
    let (f, hid) = (4, 16);
    BTreeMap::from([
        (
            "XQ".into(),
            primal::rand_tensor(11, &[b, h, l, f], -1.0, 1.0),
        ),
        (
            "XK".into(),
            primal::rand_tensor(12, &[b, h, l, f], -1.0, 1.0),
        ),
        (
            "XV".into(),
            primal::rand_tensor(13, &[b, h, l, f], -1.0, 1.0),
        ),
        ("token_eta".into(), primal::rand_tensor(14, &[k], 0.1, 1.0)),
        (
            "ttt_lr_eta".into(),
            primal::rand_tensor(15, &[b, h, l], 0.0, 0.3),
        ),
        (
            "W1".into(),
            primal::rand_tensor(16, &[h, f, hid], -0.5, 0.5),
        ),
        (
            "b1".into(),
            primal::rand_tensor(17, &[h, 1, hid], -0.5, 0.5),
        ),
        (
            "W2".into(),
            primal::rand_tensor(18, &[h, hid, f], -0.5, 0.5),
        ),
        ("b2".into(), primal::rand_tensor(19, &[h, 1, f], -0.5, 0.5)),
        (
            "ln_weight".into(),
            primal::rand_tensor(20, &[h, f], 0.5, 1.5),
        ),
        (
            "ln_bias".into(),
            primal::rand_tensor(21, &[h, f], -0.5, 0.5),
        ),
    ])
}

/// The scan of `file` at the primal stage (step graph with `mix`/`mix_outer`) and after the
/// whole pipeline, lowered to kernels, against the interpreter on the same program.
fn check_scan(file: &str, k: usize, ins: &Inputs, what: &str) {
    let p = primal::compile_example(file, &[("mini_batch_size", k as f64)]);
    let primal_form = primal::lowered(&p);
    let full = tttc_ir::syntax::compile(
        file,
        &std::fs::read_to_string(primal::repo_root().join("examples").join(file)).expect("file"),
        DType::F64,
        &BTreeMap::from([("mini_batch_size".to_string(), (k as f64).into())]),
    )
    .expect("compile");
    let pipeline = tttc_passes::pipeline::Pipeline::new(tttc_passes::pipeline::Target::Cpu);
    let graph_stages = tttc_passes::pipeline::Span::until("simplify");
    let full = match pipeline.run(
        tttc_passes::pipeline::Ir::Graph(full),
        graph_stages,
        &mut [],
    ) {
        Ok(tttc_passes::pipeline::Ir::Graph(p)) => p,
        other => panic!("the graph stages: {other:?}"),
    };
    for (stage, prog) in [("primal", &primal_form), ("optimized", &full)] {
        let s = prog.specialize(&primal::bind_dims(prog, ins));
        let what = format!("{what} ({stage})");
        let kp = check_with(&s.graph, ins, &what);
        // The slice loop is parallel and everything it allocates is Local.
        let Some(Stmt::Loop { schedule, body, .. }) = kp.body.iter().find(|s| {
            matches!(
                s,
                Stmt::Loop {
                    schedule: Schedule::Parallel,
                    ..
                }
            )
        }) else {
            panic!("{what}: no parallel loop\n{}", print_kernel_program(&kp))
        };
        assert_eq!(*schedule, Schedule::Parallel);
        let mut stored = Vec::new();
        collect_stores(body, &mut stored);
        for b in stored {
            let buf = &kp.buffers[b as usize];
            assert!(
                buf.space == MemorySpace::Local || buf.kind != BufferKind::Temp,
                "{what}: temp `{}` written in the slice loop is {:?}",
                buf.name,
                buf.space
            );
        }
    }
}

fn collect_stores(body: &[Stmt], out: &mut Vec<u32>) {
    for s in body {
        match s {
            Stmt::Loop { body, .. } => collect_stores(body, out),
            Stmt::Store { buf, .. } => out.push(buf.0),
            Stmt::Gemm(g) => out.push(g.c.buf.0),
            Stmt::Barrier | Stmt::Call { .. } => {}
        }
    }
}

#[test]
fn delta_rule_scans() {
    // Full mini-batches with a remainder, only full ones, only a remainder, K = 1.
    for (b, h, l, k) in [(2, 3, 7, 3), (1, 2, 6, 3), (2, 1, 2, 4), (1, 2, 3, 1)] {
        let ins = delta_inputs(b, h, l, k);
        check_scan(
            "delta_rule.ttt",
            k,
            &ins,
            &format!("delta_rule B{b} H{h} L{l} K{k}"),
        );
    }
}

#[test]
fn ttt_mlp_scans() {
    for (b, h, l, k) in [(2, 2, 7, 4), (1, 1, 4, 4)] {
        let ins = mlp_inputs(b, h, l, k);
        check_scan(
            "ttt_mlp.ttt",
            k,
            &ins,
            &format!("ttt_mlp B{b} H{h} L{l} K{k}"),
        );
    }
}

#[test]
fn slices_shifts_and_unshifts() {
    // Slices of an input, of a permuted view (strided) and of a computed value, on every axis.
    for axis in 0..3 {
        let mut b = B::new();
        let x = b.input("x", &[3, 4, 5]);
        let s = op(
            &mut b,
            Op::Slice {
                axis,
                start: 1,
                len: 2,
            },
            &[x],
        );
        let p = op(
            &mut b,
            Op::Permute {
                perm: vec![2, 0, 1],
            },
            &[x],
        );
        let sp = op(
            &mut b,
            Op::Slice {
                axis,
                start: 2,
                len: 1,
            },
            &[p],
        );
        let e = b.un(UnaryOp::Exp, x);
        let se = op(
            &mut b,
            Op::Slice {
                axis,
                start: 0,
                len: 3,
            },
            &[e],
        );
        let mut g = b.finish("s", s);
        g.add_output("sp", sp);
        g.add_output("se", se);
        check(&g, &format!("slice axis {axis}"));
    }
    // Shifts without and with a fill, by less than, exactly and more than the extent.
    for axis in 0..3 {
        for by in [0, 1, 3, 4, 6] {
            let mut b = B::new();
            let x = b.input("x", &[2, 4, 3]);
            let mut fill_dims = vec![2, 4, 3];
            fill_dims[axis] = by;
            let fill = b.input("fill", &fill_dims);
            let y = op(&mut b, Op::Shift { axis, by }, &[x]);
            let xe = b.un(UnaryOp::Tanh, x);
            let z = op(&mut b, Op::Shift { axis, by }, &[xe, fill]);
            // A shift read by an elementwise op only (by 0: the operand itself, not copied).
            let inner = op(&mut b, Op::Shift { axis, by }, &[x]);
            let w = b.add(inner, xe);
            let mut g = b.finish("y", y);
            g.add_output("z", z);
            g.add_output("w", w);
            check(&g, &format!("shift axis {axis} by {by}"));
        }
    }
    // Unshifts (the shift back of reverse mode) of an input and of a computed value.
    for axis in 0..3 {
        for by in [0, 1, 3, 4, 6] {
            let mut b = B::new();
            let x = b.input("x", &[2, 4, 3]);
            let y = op(&mut b, Op::Unshift { axis, by }, &[x]);
            let xe = b.un(UnaryOp::Tanh, x);
            let z = op(&mut b, Op::Unshift { axis, by }, &[xe]);
            let mut g = b.finish("y", y);
            g.add_output("z", z);
            check(&g, &format!("unshift axis {axis} by {by}"));
        }
    }
}

/// `gather` (lazy: fused into a consumer, and materialized when used twice) and `scatter_add`
/// (a zeroed result and a serial accumulation), with repeated ids and ids of rank 0, 1 and 2.
#[test]
fn gather_and_scatter_add() {
    let ids_for = |n: usize| -> Vec<f64> { (0..n).map(|i| ((i * 7 + 3) % 4) as f64).collect() };
    for ids_dims in [vec![], vec![6], vec![2, 3]] {
        let n: usize = ids_dims.iter().product();
        let mut b = B::new();
        let table = b.input("table", &[4, 3, 2]);
        let ids = b.input("ids", &ids_dims);
        let rows = op(&mut b, Op::Gather, &[table, ids]);
        // One use, fused into an elementwise consumer; the sum reads it again.
        let fused = b.un(UnaryOp::Tanh, rows);
        let twice = b.add(rows, rows);
        let mut grad_dims = ids_dims.clone();
        grad_dims.extend([3, 2]);
        let grad = b.input("grad", &grad_dims);
        let scattered = op(
            &mut b,
            Op::ScatterAdd {
                rows: Dim::Known(4),
            },
            &[grad, ids],
        );
        let mut g = b.finish("rows", rows);
        g.add_output("fused", fused);
        g.add_output("twice", twice);
        g.add_output("scattered", scattered);
        let mut inputs = inputs_for(&g, 3, -1.0, 1.0);
        inputs.insert(
            "ids".into(),
            Tensor::from_f64(ids_dims.clone(), ids_for(n)).expect("ids"),
        );
        let k = check_with(&g, &inputs, &format!("gather ids {ids_dims:?}"));
        assert!(
            print_kernel_program(&k).contains("int(b"),
            "a data-dependent index"
        );
    }
}

/// A gather with one use is fused: its consumer's loop reads the table through the id (no
/// temporary holds the rows), and the result still matches the interpreter.
#[test]
fn a_gather_used_once_fuses_into_its_consumer() {
    let mut b = B::new();
    let table = b.input("table", &[5, 4]);
    let ids = b.input("ids", &[3]);
    let rows = op(&mut b, Op::Gather, &[table, ids]);
    let y = b.un(UnaryOp::Tanh, rows);
    let g = b.finish("y", y);
    let mut inputs = inputs_for(&g, 5, -1.0, 1.0);
    inputs.insert(
        "ids".into(),
        Tensor::from_f64(vec![3], vec![4.0, 0.0, 4.0]).expect("ids"),
    );
    let k = check_with(&g, &inputs, "fused gather");
    let temps = k
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Temp)
        .count();
    assert_eq!(temps, 0, "{}", print_kernel_program(&k));
    assert!(print_kernel_program(&k).contains("tanh(b0[int(b1["));
}
