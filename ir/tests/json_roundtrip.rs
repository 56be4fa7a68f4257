//! The serde JSON form round-trips: random graphs and the shipped examples come back equal,
//! print identically, and re-verify.

use proptest::prelude::*;
use tttc_ir::printer::{print_graph, print_program};
use tttc_ir::syntax::compile;
use tttc_ir::*;

/// One step of building a random graph: an op and operand picks (indices mod live nodes).
#[derive(Debug, Clone)]
enum Step {
    Unary(usize, usize),
    Binary(usize, usize, usize),
    MatMul(usize, usize),
    Transpose(usize),
    Reduce(usize, bool, usize),
    Const(i32),
    SumTo(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..UnaryOp::ALL.len(), any::<usize>()).prop_map(|(o, a)| Step::Unary(o, a)),
        (0..BinaryOp::ALL.len(), any::<usize>(), any::<usize>())
            .prop_map(|(o, a, b)| Step::Binary(o, a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Step::MatMul(a, b)),
        any::<usize>().prop_map(Step::Transpose),
        (any::<usize>(), any::<bool>(), 0..2usize).prop_map(|(a, m, x)| Step::Reduce(a, m, x)),
        (-50..50i32).prop_map(Step::Const),
        any::<usize>().prop_map(Step::SumTo),
    ]
}

/// Builds a graph from steps, skipping steps whose operands do not fit (the type checker
/// decides).
fn build(dtype: DType, steps: &[Step]) -> Graph {
    let mut g = Graph::new();
    let f = Dim::sym("f");
    let mut live = vec![
        g.add_input(
            "a",
            TensorType::new(dtype, Shape(vec![Dim::Known(1), f.clone()])),
        )
        .unwrap(),
        g.add_input(
            "b",
            TensorType::new(dtype, Shape(vec![f.clone(), f.clone()])),
        )
        .unwrap(),
        g.add_input("c", TensorType::new(dtype, Shape::known(&[3, 4])))
            .unwrap(),
    ];
    for s in steps {
        let pick = |i: usize| live[i % live.len()];
        let r = match s {
            Step::Unary(o, a) => g.add(
                Op::Unary {
                    fun: UnaryOp::ALL[*o],
                },
                &[pick(*a)],
            ),
            Step::Binary(o, a, b) => g.add(
                Op::Binary {
                    fun: BinaryOp::ALL[*o],
                },
                &[pick(*a), pick(*b)],
            ),
            Step::MatMul(a, b) => g.add(Op::MatMul, &[pick(*a), pick(*b)]),
            Step::Transpose(a) => g.add(Op::Transpose, &[pick(*a)]),
            Step::Reduce(a, mean, axis) => g.add(
                Op::Reduce {
                    fun: if *mean { ReduceOp::Mean } else { ReduceOp::Sum },
                    axis: *axis,
                },
                &[pick(*a)],
            ),
            Step::Const(v) => Ok(g.add_const(f64::from(*v) / 8.0, dtype)),
            Step::SumTo(a) => g.add(
                Op::SumTo {
                    shape: Shape::known(&[1, 4]),
                },
                &[pick(*a)],
            ),
        };
        if let Ok(id) = r {
            live.push(id);
        }
    }
    let last = *live.last().unwrap();
    g.add_output("result", last);
    g.add_output("first", live[0]);
    g
}

proptest! {
    #[test]
    fn random_graphs_round_trip(f64_: bool, steps in proptest::collection::vec(step(), 0..40)) {
        let g = build(if f64_ { DType::F64 } else { DType::F32 }, &steps);
        verify::verify_graph(&g, "random").unwrap();
        let json = serde_json::to_string(&g).unwrap();
        let back: Graph = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(print_graph(&back), print_graph(&g));
        prop_assert!(back == g);
        prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }
}

#[test]
fn examples_round_trip() {
    for name in ["ttt_linear.ttt", "ttt_mlp.ttt"] {
        let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        let p = compile(name, &text, DType::F64, &Default::default()).unwrap();
        let json = serde_json::to_string_pretty(&p).unwrap();
        let back: Program = serde_json::from_str(&json).unwrap();
        assert_eq!(print_program(&back), print_program(&p));
        assert!(back == p);
        let dot = dot::program_to_dot(&p);
        assert!(dot.starts_with("digraph"));
        assert!(
            dot.contains("cluster_"),
            "nested scan graphs are drawn as clusters"
        );
    }
}

#[test]
fn corrupt_json_is_rejected_not_trusted() {
    let mut g = Graph::new();
    let a = g
        .add_input("a", TensorType::new(DType::F32, Shape::known(&[2, 3])))
        .unwrap();
    let t = g.add(Op::Transpose, &[a]).unwrap();
    g.add_output("t", t);
    let json = serde_json::to_string(&g).unwrap();
    // Claim the transpose keeps the shape: the verifier must refuse it.
    let bad = json.replace("[3,2]", "[2,3]");
    assert_ne!(bad, json);
    assert!(serde_json::from_str::<Graph>(&bad).is_err());
    // A forward reference.
    let fwd = json.replace("\"operands\":[0]", "\"operands\":[7]");
    assert!(serde_json::from_str::<Graph>(&fwd).is_err());
}
