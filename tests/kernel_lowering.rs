//! The whole pipeline down to the kernel IR: every golden case, and the general example models,
//! compiled (`lower_file`, `optimize`, `bind`), lowered to kernel IR
//! (`tttc_passes::lower_kernel`) and run by the kernel executor
//! (`tttc_backends::kernel_interp`).
//!
//! Tolerances, relative to max |expected| (the bounds of `golden_inner.rs`/`golden_layer.rs`,
//! for the same reasons): f64 ≤ 1e-9 against the goldens' float64 values (layer: against
//! `output_exact_rope`), f32 ≤ 2e-5 (layer: against `output`). Against the graph interpreter on
//! the same bound program, f64 ≤ 1e-12: the kernels accumulate in the interpreter's order, so
//! the two differ at most by a few ulps where inlining changes nothing but evaluation order.

mod common;

use common::golden::{inner_cases, layer_cases, GoldenCase};
use common::*;
use std::collections::BTreeMap;
use tttc::backends::kernel_interp::run_kernel_program;
use tttc::passes::lower_kernel::lower_program;
use tttc::runtime::Tensor;
use tttc::{Precision, Settings};

const TOL_INTERP: f64 = 1e-12;

/// Compiles `program` with `settings`, binds it to `tensors`, lowers it to kernels and runs it;
/// in f64 also checks the kernels against the graph interpreter. Returns the outputs.
fn run_kernels(
    program: &str,
    settings: &Settings,
    tensors: &BTreeMap<String, Tensor>,
    precision: Precision,
    what: &str,
) -> BTreeMap<String, Tensor> {
    let lowered = tttc::lower_file(&root().join(program), precision, settings)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let compiled = tttc::optimize(lowered, None, false)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .program;
    let bound = tttc::bind(&compiled, tensors, settings, precision.elem())
        .unwrap_or_else(|e| panic!("{what}: bind: {e}"));
    let kernels =
        lower_program(&bound.program).unwrap_or_else(|e| panic!("{what}: lower_kernel: {e}"));
    let got = run_kernel_program(&kernels, &bound.inputs)
        .unwrap_or_else(|e| panic!("{what}: kernel_interp: {e}"));
    if precision == Precision::F64 {
        let want = tttc::backends::interp::run_program(&bound.program, &bound.inputs)
            .unwrap_or_else(|e| panic!("{what}: interp: {e}"));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{what}: output names"
        );
        for (name, w) in &want {
            let err = rel_error(&got[name], w);
            assert!(
                err <= TOL_INTERP,
                "{what}: {name}: kernels vs interpreter {err:e} > {TOL_INTERP:e}"
            );
        }
    }
    got
}

/// Every golden case of one kind in one precision, judged as in common/golden.rs.
fn goldens(cases: Vec<GoldenCase>, precision: Precision, tag: &str) {
    for case in cases {
        let what = format!("{} {tag}", case.stem);
        let got = run_kernels(
            case.program,
            &case.settings,
            &case.inputs(),
            precision,
            &what,
        );
        case.check(tag, &got, &what);
    }
}

#[test]
fn inner_goldens_f64() {
    goldens(inner_cases(), Precision::F64, "f64");
}

#[test]
fn inner_goldens_f32() {
    goldens(inner_cases(), Precision::F32, "f32");
}

#[test]
fn layer_goldens_f64() {
    goldens(layer_cases(), Precision::F64, "f64");
}

#[test]
fn layer_goldens_f32() {
    goldens(layer_cases(), Precision::F32, "f32");
}

/// Deterministic pseudo-random values in [lo, hi).
fn random(seed: u64, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    common::random::xorshift_tensor(seed, shape, lo, hi)
}

/// `examples/delta_rule.ttt` on random inputs: full mini-batches and a remainder, only a
/// remainder (K > L), and K = 1. The check against the interpreter is in `run_kernels`.
#[test]
fn delta_rule_against_interpreter() {
    let (b, h, dk, dv) = (2, 3, 4, 5);
    for (l, k) in [(11, 4), (3, 4), (5, 1), (8, 4)] {
        let tensors = BTreeMap::from([
            ("Q".to_string(), random(1, &[b, h, l, dk], -1.0, 1.0)),
            ("K".to_string(), random(2, &[b, h, l, dk], -1.0, 1.0)),
            ("V".to_string(), random(3, &[b, h, l, dv], -1.0, 1.0)),
            ("W0".to_string(), random(4, &[h, dk, dv], -0.5, 0.5)),
            ("position_scale".to_string(), random(5, &[k], 0.1, 1.0)),
            ("lr".to_string(), random(6, &[b, h, l], 0.0, 0.3)),
        ]);
        let settings = Settings::from([("mini_batch_size".to_string(), (k as f64).into())]);
        let what = format!("delta_rule L={l} K={k}");
        let got = run_kernels(
            "examples/delta_rule.ttt",
            &settings,
            &tensors,
            Precision::F64,
            &what,
        );
        assert_eq!(got["O"].shape(), [b, h, l, dv]);
        assert_eq!(got["W_last"].shape(), [b, h, dk, dv]);
    }
}

/// `examples/mlp3_silu.ttt` on random inputs with a remainder.
#[test]
fn mlp3_silu_against_interpreter() {
    let (b, h, d, hid) = (1, 2, 4, 6);
    for (l, k) in [(10, 4), (7, 8)] {
        let tensors = BTreeMap::from([
            ("Q".to_string(), random(11, &[b, h, l, d], -1.0, 1.0)),
            ("K".to_string(), random(12, &[b, h, l, d], -1.0, 1.0)),
            ("V".to_string(), random(13, &[b, h, l, d], -1.0, 1.0)),
            ("W1".to_string(), random(14, &[h, d, hid], -0.5, 0.5)),
            ("W2".to_string(), random(15, &[h, hid, hid], -0.5, 0.5)),
            ("W3".to_string(), random(16, &[h, hid, d], -0.5, 0.5)),
            ("position_scale".to_string(), random(17, &[k], 0.1, 1.0)),
            ("lr".to_string(), random(18, &[b, h, l], 0.0, 0.3)),
        ]);
        let settings = Settings::from([("mini_batch_size".to_string(), (k as f64).into())]);
        let what = format!("mlp3_silu L={l} K={k}");
        let got = run_kernels(
            "examples/mlp3_silu.ttt",
            &settings,
            &tensors,
            Precision::F64,
            &what,
        );
        assert_eq!(got["O"].shape(), [b, h, l, d]);
    }
}

/// The kernel program of TTT-Linear: one parallel slice loop, `Local` scratch inside it, and
/// the shape of what the lowering promises.
#[test]
fn ttt_linear_kernel_program_shape() {
    use tttc::ir::kernel::{print_kernel_program, BufferKind, MemorySpace, Schedule, Stmt};
    let stem = "inner_linear_B2_nh2_f16_K16_L40";
    let tensors = load(&root().join(format!("tests/golden/{stem}.inputs.safetensors")));
    let settings = Settings::from([("mini_batch_size".to_string(), 16.0.into())]);
    let lowered = tttc::lower_file(
        &root().join("examples/ttt_linear.ttt"),
        Precision::F64,
        &settings,
    )
    .expect("lower");
    let compiled = tttc::optimize(lowered, None, false)
        .expect("optimize")
        .program;
    let bound = tttc::bind(&compiled, &tensors, &settings, Precision::F64.elem()).expect("bind");
    let k = lower_program(&bound.program).expect("lower_kernel");
    let text = print_kernel_program(&k);
    if std::env::var_os("TTTC_PRINT_KERNELS").is_some() {
        println!("{text}");
    }
    // Inputs in graph order, then outputs in output order.
    let inputs: Vec<&str> = k.inputs().into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        inputs,
        [
            "XQ",
            "XK",
            "XV",
            "token_eta",
            "ttt_lr_eta",
            "W1",
            "b1",
            "ln_weight",
            "ln_bias"
        ]
    );
    let outputs: Vec<&str> = k.outputs().into_iter().map(|(_, n)| n).collect();
    assert_eq!(outputs, ["Z", "W1_last", "b1_last"]);
    // One top-level statement: the parallel loop over B * H slices, writing straight into
    // the outputs (no copies after it).
    assert_eq!(k.body.len(), 1, "{text}");
    let Stmt::Loop {
        extent,
        schedule,
        body,
        ..
    } = &k.body[0]
    else {
        panic!("not a loop:\n{text}")
    };
    assert_eq!((*extent, *schedule), (4, Schedule::Parallel));
    // Inside: init of the two states, the serial loop over 2 full mini-batches, the
    // remainder's statements, and the final copies.
    let serial: Vec<usize> = body
        .iter()
        .filter_map(|s| match s {
            Stmt::Loop {
                extent,
                schedule: Schedule::Serial,
                body,
                ..
            } if body.len() > 10 => Some(*extent),
            _ => None,
        })
        .collect();
    assert_eq!(serial, [2], "{text}");
    // Every temporary is Local (the slice loop is the whole program), and no buffer outside
    // the inputs and outputs is Global.
    for b in &k.buffers {
        if b.kind == BufferKind::Temp {
            assert_eq!(b.space, MemorySpace::Local, "{}", b.name);
        } else {
            assert_eq!(b.space, MemorySpace::Global, "{}", b.name);
        }
    }
}
