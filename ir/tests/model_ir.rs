//! The IR pieces whole models add: the `slice` and `shift` ops (type rules and their errors),
//! boolean and string configs and `int` inputs in a program, all through the serde JSON round
//! trip, the printer and DOT.

use std::collections::BTreeMap;
use tttc_ir::printer::print_program;
use tttc_ir::syntax::compile;
use tttc_ir::{dot, DType, Graph, NodeType, Op, Program, Setting, Shape, TensorType};

fn input(g: &mut Graph, name: &str, dims: &[usize]) -> tttc_ir::NodeId {
    g.add_input(name, TensorType::new(DType::F64, Shape::known(dims)))
        .expect("input")
}

fn shape_of(g: &Graph, id: tttc_ir::NodeId) -> Vec<usize> {
    g.tensor_type(id)
        .and_then(|t| t.shape.to_known())
        .expect("known shape")
}

#[test]
fn slice_and_shift_types() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 5, 3]);
    let fill = input(&mut g, "fill", &[2, 2, 3]);
    let s = g
        .add(
            Op::Slice {
                axis: 1,
                start: 3,
                len: 2,
            },
            &[x],
        )
        .expect("slice");
    assert_eq!(shape_of(&g, s), [2, 2, 3]);
    let y = g.add(Op::Shift { axis: 1, by: 2 }, &[x]).expect("shift");
    assert_eq!(shape_of(&g, y), [2, 5, 3]);
    let z = g
        .add(Op::Shift { axis: 1, by: 2 }, &[x, fill])
        .expect("shift with fill");
    assert_eq!(shape_of(&g, z), [2, 5, 3]);
    // Errors, never panics.
    let bad: Vec<(Op, Vec<tttc_ir::NodeId>, &str)> = vec![
        (
            Op::Slice {
                axis: 1,
                start: 4,
                len: 2,
            },
            vec![x],
            "do not exist",
        ),
        (
            Op::Slice {
                axis: 3,
                start: 0,
                len: 1,
            },
            vec![x],
            "out of range",
        ),
        (
            Op::Slice {
                axis: 1,
                start: usize::MAX,
                len: 2,
            },
            vec![x],
            "do not exist",
        ),
        (
            Op::Shift { axis: 1, by: 3 },
            vec![x, fill],
            "the fill must be",
        ),
        (
            Op::Shift { axis: 0, by: 2 },
            vec![x, fill],
            "the fill must be",
        ),
        (Op::Shift { axis: 5, by: 1 }, vec![x], "out of range"),
        (
            Op::Shift { axis: 1, by: 1 },
            vec![x, x, x],
            "1 or 2 operands",
        ),
        (Op::Shift { axis: 1, by: 1 }, vec![], "1 or 2 operands"),
    ];
    for (op, operands, fragment) in bad {
        let tys: Vec<&NodeType> = operands.iter().map(|&o| &g.node(o).ty).collect();
        let err = op.infer(&tys).expect_err("ill-typed");
        assert!(err.0.contains(fragment), "{op}: {err}");
    }
}

#[test]
fn model_program_round_trips() {
    let path = format!("{}/../examples/ttt_lm.ttt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example");
    let settings: BTreeMap<String, Setting> = [
        ("ttt_layer_type".to_string(), Setting::Text("mlp".into())),
        ("share_qk".to_string(), Setting::Bool(true)),
        ("pre_conv".to_string(), Setting::Bool(true)),
        ("num_hidden_layers".to_string(), Setting::Number(2.0)),
    ]
    .into();
    let p = compile(&path, &text, DType::F64, &settings).expect("compiles");
    let printed = print_program(&p);
    assert!(
        printed.contains("config ttt_layer_type = \"mlp\""),
        "{printed}"
    );
    assert!(printed.contains("config share_qk = true"), "{printed}");
    assert!(
        printed.contains("int input input_ids in 0..vocab_size"),
        "{printed}"
    );
    assert!(printed.contains("shift axis=1 by=3"), "{printed}");
    assert!(printed.contains("slice axis=2 start=0 len=1"), "{printed}");
    assert!(p
        .graph
        .input_by_name("model.layers.1.seq_modeling_block.conv_k.weight")
        .is_some());
    assert!(p
        .graph
        .input_by_name("model.layers.1.seq_modeling_block.k_proj.weight")
        .is_none());
    let json = serde_json::to_string(&p).expect("json");
    let back: Program = serde_json::from_str(&json).expect("parse");
    assert!(back == p);
    assert_eq!(print_program(&back), printed);
    assert!(dot::program_to_dot(&p).contains("shift"));
}
