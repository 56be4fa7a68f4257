//! The gradient interfaces besides `tttc grad` (docs/gradients.md): `tttc inspect --grad`,
//! `tttc cost --grad`, `tttc bench --grad`, and the library entry point `tttc::GradProgram`
//! (against the TTT-Linear inner-loop VJP golden, f64 ≤ 1e-8 as in `golden_grad.rs`, and its
//! typed errors). Small: the golden's 2 heads, 40 tokens, f = 16.

mod common;

use common::compare::assert_tensor_close;
use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tttc::runtime::Tensor;

const STEM: &str = "grad_inner_linear_B1_nh2_f16_K16_L40";

fn file(suffix: &str) -> PathBuf {
    root().join(format!("tests/golden/grad/{STEM}{suffix}"))
}

fn program() -> String {
    root().join("examples/ttt_linear.ttt").display().to_string()
}

fn inputs() -> String {
    file(".inputs.safetensors").display().to_string()
}

#[test]
fn inspect_grad_prints_the_backward_at_every_stage() {
    let (p, i) = (program(), inputs());
    let base = ["inspect", &p, "--grad", "--set", "mini_batch_size=16"];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = tttc(&args);
        assert!(out.status.success(), "{extra:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let last = run(&[]);
    assert!(last.contains("ttt_vjp"), "{last}");
    assert!(last.contains("step_vjp"), "{last}");
    assert!(run(&["--after", "parse"]).contains("ttt_vjp"));
    assert!(run(&["--after", "dual_form"]).contains("step_vjp"));
    let kernels = run(&["--after", "lower_kernel", "--inputs", &i]);
    assert!(kernels.contains("checkpoints_W1"), "{kernels}");
    assert!(kernels.contains("group_W1"), "{kernels}");
    let all = run(&["--all", "--inputs", &i]);
    for stage in [
        "differentiation",
        "dual_form",
        "simplify",
        "lower_kernel",
        "memory_plan",
    ] {
        assert!(all.contains(&format!("== after {stage} ==")), "{stage}");
    }
}

/// A language model's inputs hold integer token ids (`input_ids`, I64): `inspect --grad` and
/// `cost --grad` read their shapes as `run` and `grad` do (they used to reject the file), and
/// the kernel program of the backward has no `[L, L]` buffer (the causal convolutions'
/// cotangents are unshifts, linear in L, not products with a selection matrix).
#[test]
fn grad_inspection_and_cost_read_integer_inputs() {
    let stem = "tests/golden/grad/grad_model_linear_T";
    let p = root().join("examples/ttt_lm.ttt").display().to_string();
    let i = root()
        .join(format!("{stem}.inputs.safetensors"))
        .display()
        .to_string();
    let c = root()
        .join(format!("{stem}.config.json"))
        .display()
        .to_string();
    let out = tttc(&[
        "inspect",
        &p,
        "--grad",
        "--config",
        &c,
        "--inputs",
        &i,
        "--kernel-ir",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let kernels = String::from_utf8_lossy(&out.stdout);
    let ids = tttc::runtime::read_safetensors_with_ints(std::path::Path::new(&i)).expect("inputs");
    let l = ids.ints["input_ids"].shape[1];
    assert!(kernels.contains("kernel program"), "{kernels}");
    assert!(
        !kernels.contains(&format!("[{l}, {l}]")),
        "an [L, L] buffer in the backward (L = {l})"
    );
    let out = tttc(&[
        "cost", &p, "--grad", "--config", &c, "--inputs", &i, "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn cost_grad_counts_forward_and_backward() {
    let (p, i) = (program(), inputs());
    let out = tttc(&[
        "cost",
        &p,
        "--grad",
        "--inputs",
        &i,
        "--set",
        "mini_batch_size=16",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let flops = |row: &str| j[row]["flops"].as_f64().expect("flops");
    let bytes = |row: &str| j[row]["bytes"].as_f64().expect("bytes");
    // The backward recomputes the forward and differentiates it: more than twice the work,
    // and not absurdly more (a step's VJP costs a small multiple of the step).
    let ratio = flops("gradient") / flops("forward");
    assert!(
        (2.0..10.0).contains(&ratio),
        "gradient/forward FLOPs {ratio}"
    );
    assert!(bytes("gradient") > bytes("forward"));
}

#[test]
fn bench_grad_times_forward_and_gradient() {
    let (p, i) = (program(), inputs());
    let backend = backends().into_iter().find(|b| *b != "ptx" && *b != "llvm");
    let backend = backend.unwrap_or("interp");
    let out = tttc(&[
        "bench",
        &p,
        "--grad",
        "--inputs",
        &i,
        "--set",
        "mini_batch_size=16",
        "--iters",
        "2",
        "--json",
        "--backend",
        backend,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for key in ["forward_median_ms", "grad_median_ms", "grad_over_forward"] {
        assert!(j[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {j}");
    }
    if cfg!(target_os = "linux") {
        assert!(j["grad_peak_mb"].as_f64().is_some_and(|x| x > 0.0), "{j}");
    }
}

/// `GradProgram`: names in, names out, on every backend this build has.
#[test]
fn library_entry_point_matches_the_golden() {
    let settings: tttc::Settings = [("mini_batch_size".to_string(), 16.0.into())]
        .into_iter()
        .collect();
    let inputs = load(&file(".inputs.safetensors"));
    let cts = load(&file(".cotangents.safetensors"));
    let expected = load(&file(".expected_grad_f64.safetensors"));
    let mut built = vec![tttc::Backend::Interp];
    if cfg!(feature = "cranelift") {
        built.push(tttc::Backend::Cranelift);
    }
    for backend in built {
        let g = tttc::GradProgram::from_file(
            &root().join("examples/ttt_linear.ttt"),
            tttc::Precision::F64,
            &settings,
            backend,
            4,
        )
        .expect("compile");
        assert!(g.outputs().contains(&"Z"));
        assert!(g.differentiable_inputs().contains(&"W1"));
        // Twice: the second call reuses the compiled code.
        for _ in 0..2 {
            let got = g.vjp(&inputs, &cts).expect("vjp");
            for (name, exp) in &expected {
                assert_tensor_close(&format!("{backend:?} d{name}"), &got[name], exp, 1e-8);
            }
        }

        let mut unknown = cts.clone();
        unknown.insert("nope".into(), cts["Z"].clone());
        let e = g.vjp(&inputs, &unknown).expect_err("unknown cotangent");
        assert!(e.is_user_error() && e.to_string().contains("`nope`"), "{e}");

        let wrong: BTreeMap<String, Tensor> = [(
            "Z".to_string(),
            Tensor::from_f64(vec![3], vec![0.0; 3]).expect("tensor"),
        )]
        .into();
        let e = g.vjp(&inputs, &wrong).expect_err("wrong shape");
        assert!(
            matches!(e, tttc::GradError::CotangentShape { ref name, .. } if name == "Z"),
            "{e}"
        );

        let mut missing = inputs.clone();
        missing.remove("XK");
        let e = g.vjp(&missing, &cts).expect_err("missing input");
        assert!(e.is_user_error() && e.to_string().contains("XK"), "{e}");
    }
    let e = tttc::GradProgram::from_file(
        &root().join("examples/ttt_linear.ttt"),
        tttc::Precision::F64,
        &settings,
        tttc::Backend::Interp,
        0,
    )
    .err()
    .expect("G = 0");
    assert!(e.is_user_error(), "{e}");
}

/// The library's forward that keeps what the backward needs, then the backward from it
/// (`GradProgram::forward` / `GradProgram::backward`, a training step's two halves), on the
/// whole 2-layer language model golden: the gradients equal torch autograd's (f64 ≤ 1e-8, as
/// `golden_grad.rs`), the logits equal the forward program's own run (`tttc run`; ≤ 1e-12),
/// twice (compiled code reused), on the interpreter and on every native backend built; a
/// missing residual is an error, not a crash.
#[test]
fn forward_then_backward_matches_the_golden_language_model() {
    let stem = root().join("tests/golden/grad/grad_model_linear_T");
    let path = |suffix: &str| PathBuf::from(format!("{}{suffix}", stem.display()));
    let program = root().join("examples/ttt_lm.ttt");
    let config = path(".config.json");
    let (_, settings) = tttc::lower_with_config(
        &program,
        tttc::Precision::F64,
        &tttc::Settings::new(),
        |p| tttc::read_config_file(&config, p),
    )
    .expect("config");
    let file =
        tttc::runtime::read_safetensors_with_ints(&path(".inputs.safetensors")).expect("inputs");
    let mut inputs = file.floats.clone();
    for (name, ids) in &file.ints {
        let values: Vec<f64> = ids.values.iter().map(|&v| v as f64).collect();
        inputs.insert(
            name.clone(),
            Tensor::from_f64(ids.shape.clone(), values).expect("ids"),
        );
    }
    let cts = load(&path(".cotangents.safetensors"));
    let expected = load(&path(".expected_grad_f64.safetensors"));
    let logits = run_program(
        &program,
        &path(".inputs.safetensors"),
        "interp",
        "f64",
        &["--config", config.to_str().expect("utf-8")],
    );
    // The cut: no costly forward work is done again in the backward part (every node there
    // that is not an input or a leaf and does not depend on a cotangent is a cheap recomputed
    // view or elementwise op, never a product, a reduction or a scan), and no input is a
    // residual.
    let optimized = tttc::compile_file(&program, tttc::Precision::F64, &settings).expect("compile");
    let outputs = optimized.graph.output_names();
    let split = tttc::driver::split_gradient(&optimized, &outputs, 4).expect("split");
    let backward = &split.backward.graph;
    let ct_names = tttc::passes::autodiff::cotangent_input_names(&optimized, &outputs);
    let mut on_backward_side = std::collections::BTreeSet::new();
    for id in backward.topo_order().expect("acyclic") {
        let name = backward.input_name(id);
        if name.is_some_and(|n| ct_names.iter().any(|c| c == n)) {
            on_backward_side.insert(id);
            continue;
        }
        let operands = backward.operands(id);
        if name.is_some() || operands.is_empty() {
            continue;
        }
        let op = backward.node(id).op.name();
        if operands.iter().any(|o| on_backward_side.contains(o)) {
            on_backward_side.insert(id);
        } else {
            let cheap = [
                "gather",
                "transpose",
                "permute",
                "reshape",
                "expand",
                "slice",
                "shift",
                "unshift",
            ];
            let elementwise = backward.node(id).op.arity().is_some_and(|n| n <= 2)
                && matches!(
                    backward.node(id).op,
                    tttc::ir::Op::Unary { .. } | tttc::ir::Op::Binary { .. }
                );
            assert!(
                cheap.contains(&op) || elementwise,
                "%{} ({op}) of the backward part is costly forward work",
                id.index()
            );
        }
    }
    for name in &split.residuals {
        assert!(split.forward.graph.output_by_name(name).is_some(), "{name}");
        assert!(backward.input_by_name(name).is_some(), "{name}");
    }

    let mut built = vec![tttc::Backend::Interp];
    if cfg!(feature = "cranelift") {
        built.push(tttc::Backend::Cranelift);
    }
    if cfg!(feature = "llvm") {
        built.push(tttc::Backend::Llvm);
    }
    for backend in built {
        let g = tttc::GradProgram::from_file(&program, tttc::Precision::F64, &settings, backend, 4)
            .expect("compile");
        for _ in 0..2 {
            let (outputs, residuals) = g.forward(inputs.clone()).expect("forward");
            assert!(residuals.bytes() > 0);
            for (name, want) in &logits {
                let got = outputs
                    .get(name)
                    .unwrap_or_else(|| panic!("{backend:?}: no output `{name}`"));
                assert_tensor_close(&format!("{backend:?} {name}"), got, want, 1e-12);
            }
            let residuals_kept = residuals.tensors().clone();
            let mut fewer = residuals_kept.clone();
            let grads = g
                .backward(inputs.clone(), residuals, &cts)
                .expect("backward");
            for (name, exp) in &expected {
                let got = grads
                    .get(name)
                    .unwrap_or_else(|| panic!("{backend:?}: no gradient for `{name}`"));
                assert_tensor_close(&format!("{backend:?} d{name}"), got, exp, 1e-8);
            }
            let first = fewer.keys().next().cloned().expect("a residual");
            fewer.remove(&first);
            let e = g
                .backward(inputs.clone(), tttc::Residuals::from_tensors(fewer), &cts)
                .expect_err("a residual missing");
            assert!(e.is_user_error() && e.to_string().contains(&first), "{e}");
            let mut more = residuals_kept.clone();
            more.insert(
                "$residual_extra".into(),
                Tensor::from_f64(vec![1], vec![0.0]).expect("t"),
            );
            let e = g
                .backward(inputs.clone(), tttc::Residuals::from_tensors(more), &cts)
                .expect_err("an extra residual");
            assert!(
                matches!(e, tttc::GradError::UnknownResidual(ref n) if n == "$residual_extra"),
                "{e}"
            );
        }
    }
}
