//! The inner losses of TTT-Linear and TTT-MLP, written in IR, differentiated and checked
//! against finite differences; the autodiff pass on a program with a `ttt` scan.

mod common;

use common::*;
use std::collections::BTreeMap;
use tttc_ir::{
    DType, Dim, Graph, NodeId, Op, OperandAxes, Program, Shape, TensorType, TttScan, UnaryOp,
};
use tttc_passes::autodiff::{gradient_graph, AutodiffError};
use tttc_passes::pipeline::Pipeline;
use tttc_passes::{Autodiff, Pass, PassError};

const EPS: f64 = 1e-6;

/// `0.5 * sum((LN(k @ W + b) - (v - k))^2)` with a per-row LayerNorm; shapes from `f`.
fn linear_loss(f: Dim) -> Graph {
    let mut bld = B::new();
    let row = Shape(vec![Dim::Known(1), f.clone()]);
    let w = bld.input_shape("W", Shape(vec![f.clone(), f.clone()]));
    let b = bld.input_shape("b", row.clone());
    let ln_w = bld.input_shape("ln_w", Shape(vec![f.clone()]));
    let ln_b = bld.input_shape("ln_b", Shape(vec![f.clone()]));
    let k = bld.input_shape("k", row.clone());
    let v = bld.input_shape("v", row);
    let kw = bld.matmul(k, w);
    let z = bld.add(kw, b);
    let ln = bld.layer_norm(z, ln_w, ln_b, EPS);
    let target = bld.sub(v, k);
    let diff = bld.sub(ln, target);
    let loss = bld.half_sq(diff);
    bld.finish("loss", loss)
}

/// `0.5 * sum((LN(gelu(k @ W1 + b1) @ W2 + b2) - (v - k))^2)`, f = 4, hidden 16; the loss is
/// left as a `[1, 1]` tensor (a keep-dims sum), which autodiff accepts as a scalar.
fn mlp_loss() -> Graph {
    let mut bld = B::new();
    let w1 = bld.input("W1", &[4, 16]);
    let b1 = bld.input("b1", &[1, 16]);
    let w2 = bld.input("W2", &[16, 4]);
    let b2 = bld.input("b2", &[1, 4]);
    let ln_w = bld.input("ln_w", &[4]);
    let ln_b = bld.input("ln_b", &[4]);
    let k = bld.input("k", &[1, 4]);
    let v = bld.input("v", &[1, 4]);
    let h = bld.matmul(k, w1);
    let h = bld.add(h, b1);
    let h = bld.un(UnaryOp::GeluTanh, h);
    let z = bld.matmul(h, w2);
    let z = bld.add(z, b2);
    let ln = bld.layer_norm(z, ln_w, ln_b, EPS);
    let target = bld.sub(v, k);
    let diff = bld.sub(ln, target);
    let sq = bld.mul(diff, diff);
    let s0 = bld.sum(sq, 0);
    let s1 = bld.sum(s0, 1);
    let loss = bld.scale(s1, 0.5);
    bld.finish("loss", loss)
}

/// Random inputs with the weights scaled like an initialized layer and a LayerNorm weight
/// around 1.
fn inputs_for(g: &Graph, seed: u64) -> Inputs {
    let mut ins = random_inputs(g, seed);
    for (name, tensor) in ins.iter_mut() {
        let data = tensor.as_f64().expect("f64").to_vec();
        let data: Vec<f64> = match name.as_str() {
            "ln_w" => data.iter().map(|x| 1.0 + 0.3 * x).collect(),
            n if n.starts_with('W') => data.iter().map(|x| 0.8 * x).collect(),
            _ => data,
        };
        *tensor = t(tensor.shape(), &data);
    }
    ins
}

// Tolerances: these losses are O(1) smooth functions of O(1) inputs; the central-difference
// rounding noise is ~eps·|loss|/h ≈ 1e-10 and the truncation ≈ h^2 f''' ≈ 1e-12 (LayerNorm's
// rsqrt of a variance of order 0.1 keeps f''' moderate), so rel 1e-6 + abs 1e-8 is ~100x the
// expected error.
const REL: f64 = 1e-6;
const ABS: f64 = 1e-8;

#[test]
fn ttt_linear_layer_norm_l2_loss() {
    let g = linear_loss(Dim::Known(4));
    let wrt = input_names(&g); // W, b, ln_w, ln_b, k, v
    for seed in [1, 7, 42] {
        let inputs = inputs_for(&g, seed);
        let loss = scalar(&g, &inputs, "loss");
        check_fd(&g, "loss", &inputs, &wrt, REL, ABS, loss.abs()).unwrap();
    }
}

#[test]
fn ttt_mlp_gelu_layer_norm_l2_loss() {
    let g = mlp_loss();
    let wrt = input_names(&g);
    for seed in [3, 11] {
        let inputs = inputs_for(&g, seed);
        let loss = scalar(&g, &inputs, "loss");
        check_fd(&g, "loss", &inputs, &wrt, REL, ABS, loss.abs()).unwrap();
    }
}

/// A program with one TTT-Linear scan, `f`, `K` and `L` symbolic.
fn linear_program() -> Program {
    let f = Dim::sym("f");
    let (kk, l) = (Dim::sym("K"), Dim::sym("L"));
    let loss = linear_loss(f.clone());
    // out(q) = q + LN(q @ W + b)
    let mut ob = B::new();
    let row = Shape(vec![Dim::Known(1), f.clone()]);
    let w = ob.input_shape("W", Shape(vec![f.clone(), f.clone()]));
    let b = ob.input_shape("b", row.clone());
    let ln_w = ob.input_shape("ln_w", Shape(vec![f.clone()]));
    let ln_b = ob.input_shape("ln_b", Shape(vec![f.clone()]));
    let q = ob.input_shape("q", row.clone());
    let qw = ob.matmul(q, w);
    let z = ob.add(qw, b);
    let ln = ob.layer_norm(z, ln_w, ln_b, EPS);
    let o = ob.add(q, ln);
    let out = ob.finish("out", o);

    let shapes: Vec<(&str, Shape)> = vec![
        ("W0", Shape(vec![f.clone(), f.clone()])),
        ("b0", row),
        ("ln_w", Shape(vec![f.clone()])),
        ("ln_b", Shape(vec![f.clone()])),
        ("XK", Shape(vec![l.clone(), f.clone()])),
        ("XV", Shape(vec![l.clone(), f.clone()])),
        ("XQ", Shape(vec![l.clone(), f.clone()])),
        ("token_eta", Shape(vec![kk.clone()])),
        ("lr", Shape(vec![l])),
    ];
    let mut main = Graph::new();
    let operands: Vec<NodeId> = shapes
        .iter()
        .map(|(n, s)| {
            main.add_input(n, TensorType::new(DType::F64, s.clone()))
                .unwrap()
        })
        .collect();
    let scan = TttScan {
        model: "TTTLinear".into(),
        per: vec![],
        mini_batch: kk,
        states: vec!["W".into(), "b".into()],
        params: vec!["ln_w".into(), "ln_b".into()],
        loss_args: vec!["k".into(), "v".into()],
        out_args: vec!["q".into()],
        axes: shapes
            .iter()
            .map(|(_, s)| OperandAxes {
                per: vec![None; s.rank()],
            })
            .collect(),
        token_eta: Default::default(),
        rule: Default::default(),
        doubling_rounds: None,
        loss,
        out,
        grad: None,
        step: None,
        step_vjp: None,
    };
    let ttt = main.add(Op::Ttt(Box::new(scan)), &operands).unwrap();
    let z = main.add(Op::Get { index: 0 }, &[ttt]).unwrap();
    main.add_output("Z", z);
    Program {
        name: "linear".into(),
        configs: vec![],
        derived_dims: vec![],
        intermediates: vec![],
        integer_inputs: vec![],
        graph: main,
    }
}

fn scan_of(p: &Program) -> &TttScan {
    p.graph
        .node_ids()
        .into_iter()
        .find_map(|id| match &p.graph.node(id).op {
            Op::Ttt(s) => Some(&**s),
            _ => None,
        })
        .expect("a ttt node")
}

#[test]
fn autodiff_pass_fills_the_scan_gradient_for_symbolic_shapes() {
    let mut program = linear_program();
    Pipeline::of_passes(vec![Box::new(Autodiff)])
        .run_graph(&mut program)
        .unwrap();
    let scan = scan_of(&program);
    let grad = scan.grad.as_ref().expect("gradient filled in");
    let outs: Vec<&str> = grad.outputs().iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, ["grad_W", "grad_b"]);
    let f = Dim::sym("f");
    assert_eq!(
        grad.tensor_type(grad.outputs()[0].node).unwrap().shape,
        Shape(vec![f.clone(), f.clone()])
    );
    assert_eq!(
        grad.tensor_type(grad.outputs()[1].node).unwrap().shape,
        Shape(vec![Dim::Known(1), f])
    );

    // Bind the symbols and check the derived gradient numerically.
    let bind = BTreeMap::from([
        ("f".to_string(), 4usize),
        ("K".to_string(), 2),
        ("L".to_string(), 4),
    ]);
    let spec = program.specialize(&bind);
    tttc_ir::verify::verify_program(&spec).unwrap();
    let scan = scan_of(&spec);
    let grad = scan.grad.as_ref().unwrap();
    let inputs = inputs_for(&scan.loss, 5);
    let outs = eval(grad, &inputs);
    let wrt = vec!["W".to_string(), "b".to_string()];
    for name in &wrt {
        let ad = outs[&format!("grad_{name}")].as_f64().unwrap().to_vec();
        let fd = finite_diff(&scan.loss, "loss", &inputs, name, H);
        let loss = scalar(&scan.loss, &inputs, "loss");
        for (a, d) in ad.iter().zip(&fd) {
            assert!(
                (a - d).abs() <= REL * d.abs() + ABS * (1.0 + loss.abs()),
                "grad_{name}: {ad:?} vs {fd:?}"
            );
        }
    }
}

#[test]
fn nested_ttt_on_the_path_is_not_differentiable() {
    let mut program = linear_program();
    let g = &mut program.graph;
    let ttt = g
        .node_ids()
        .into_iter()
        .find(|&id| matches!(g.node(id).op, Op::Ttt(_)))
        .unwrap();
    let w_last = g.add(Op::Get { index: 1 }, &[ttt]).unwrap();
    let s0 = g
        .add(
            Op::Reduce {
                fun: tttc_ir::ReduceOp::Sum,
                axis: 0,
            },
            &[w_last],
        )
        .unwrap();
    let s1 = g
        .add(
            Op::Reduce {
                fun: tttc_ir::ReduceOp::Sum,
                axis: 1,
            },
            &[s0],
        )
        .unwrap();
    g.add_output("loss", s1);
    // A scan is differentiated through its step graph (`ttt_vjp`, docs/gradients.md); before
    // the `primal` stage it has none, which is a typed error naming it.
    let err = gradient_graph(g, "loss", &["W0".to_string()]).unwrap_err();
    assert!(
        matches!(err, AutodiffError::ScanWithoutStep { .. }),
        "{err}"
    );
    // Off the path (wrt `s` only, loss2 = s1 * s) the scan is merely a forward value that the
    // gradient needs (d loss2 / ds = s1): it is copied, not differentiated.
    let mut g2 = g.clone();
    let extra = g2
        .add_input("s", TensorType::new(DType::F64, Shape::scalar()))
        .unwrap();
    let prod = g2
        .add(
            Op::Binary {
                fun: tttc_ir::BinaryOp::Mul,
            },
            &[s1, extra],
        )
        .unwrap();
    g2.add_output("loss2", prod);
    let grad = gradient_graph(&g2, "loss2", &["s".to_string()]).unwrap();
    tttc_ir::verify::verify_graph(&grad, "grad").unwrap();
    assert!(grad
        .node_ids()
        .into_iter()
        .any(|id| matches!(grad.node(id).op, Op::Ttt(_))));

    // Inside a program, the error names the scan.
    let mut outer = linear_program();
    let nested = program.graph.clone();
    let ttt_id = outer
        .graph
        .node_ids()
        .into_iter()
        .find(|&id| matches!(outer.graph.node(id).op, Op::Ttt(_)))
        .unwrap();
    if let Some(Op::Ttt(scan)) = outer.graph.node_mut(ttt_id).map(|n| &mut n.op) {
        // A loss whose inputs are not the scan's (the pass does not check that): it only needs
        // a `loss` output on a path through a nested scan.
        scan.loss = nested;
        scan.states = vec!["W0".into()];
    }
    let err = Autodiff.run(&mut outer).unwrap_err();
    assert!(
        matches!(&err, PassError::Autodiff(AutodiffError::InScan { source, .. })
            if matches!(**source, AutodiffError::ScanWithoutStep { .. })),
        "{err}"
    );
}

struct Breaker;

impl Pass for Breaker {
    fn name(&self) -> &'static str {
        "breaker"
    }
    fn run(&self, program: &mut Program) -> Result<(), PassError> {
        let id = program.graph.output_by_name("Z").expect("output Z");
        if let Some(node) = program.graph.node_mut(id) {
            node.ty = tttc_ir::NodeType::Tensor(TensorType::new(DType::F32, Shape::scalar()));
        }
        Ok(())
    }
}

#[test]
fn pipeline_verifies_after_every_pass() {
    let mut program = linear_program();
    let before = program.clone();
    let err = Pipeline::of_passes(vec![Box::new(Autodiff), Box::new(Breaker)])
        .run_graph(&mut program)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PassError::Verify {
                pass: "breaker",
                ..
            }
        ),
        "{err}"
    );
    // A failed pipeline leaves the program as it was (no gradient, although autodiff ran).
    assert!(scan_of(&program).grad.is_none());
    assert_eq!(program, before);
}
