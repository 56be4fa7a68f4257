//! Update rules written in the language (issue 21 item 3): `examples/momentum_weight_decay.ttt`
//! (momentum without forgetting plus a per-head weight decay, a rule neither built-in covers)
//! against vectors of an independent hand-derived NumPy per-token loop (`tools/rule_ref.py`,
//! `tests/golden/rules`): L = 37 tokens in mini-batches of 16 (a remainder of 5), momentum
//! values with exact zeros and a negative one. And `momentum_gd` written as a rule against
//! `momentum_gd`'s own vectors (`tests/golden/momentum`): the derived chunked form is the
//! built-in's.
//!
//! Tolerances, relative to max |expected| (tests/common/compare.rs): f64 1e-9 (measured
//! ~1e-15: the chunked form's sums in another order than the loop's); f32 2e-5 against the
//! float64 loop (measured ~4e-7). One-shot, token by token (the interpreter's literal
//! recurrence), streamed in random chunks and saved/resumed mid-mini-batch, on every built
//! backend; gradients through the scan against central finite differences. The diagnostics of
//! malformed rules: tests/errors.rs.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tttc::runtime::Tensor;
use tttc::Precision;

const PROGRAM: &str = "examples/momentum_weight_decay.ttt";
const STEM: &str = "momentum_weight_decay_B1_H2_L37_f8_K16";

fn file(dir: &str, stem: &str, suffix: &str) -> PathBuf {
    root()
        .join("tests/golden")
        .join(dir)
        .join(format!("{stem}{suffix}"))
}

fn tolerance(precision: &str) -> f64 {
    if precision == "f64" {
        1e-9
    } else {
        2e-5
    }
}

/// Every tensor of the reference `expected` in `got`.
fn check(expected: &Path, precision: &str, got: &BTreeMap<String, Tensor>, what: &str) {
    let expected = load(expected);
    assert!(expected.contains_key("Z") && expected.len() >= 5);
    assert_outputs_close(what, got, &expected, tolerance(precision));
}

#[test]
fn a_rule_as_code_matches_the_numpy_loop_on_every_backend() {
    let inputs = file("rules", STEM, ".inputs.safetensors");
    let expected = file("rules", STEM, ".expected.safetensors");
    for backend in backends() {
        for precision in ["f64", "f32"] {
            let got = run_program(&root().join(PROGRAM), &inputs, backend, precision, &[]);
            check(
                &expected,
                precision,
                &got,
                &format!("{STEM} {backend} {precision}"),
            );
        }
    }
    // Token by token: the interpreter after `autodiff` runs the literal recurrence (no step
    // graph, no chunked form).
    let got = run_program(
        &root().join(PROGRAM),
        &inputs,
        "interp",
        "f64",
        &["--stop-after", "autodiff"],
    );
    check(&expected, "f64", &got, "token by token");
}

/// Random chunkings (single tokens, pieces inside and across mini-batches): whole mini-batches
/// by the step graph, the rest by the token step.
#[test]
fn a_rule_as_code_streams_in_random_chunks_on_every_backend() {
    let inputs = file("rules", STEM, ".inputs.safetensors");
    let expected = file("rules", STEM, ".expected.safetensors");
    let len = load(&inputs)["XQ"].shape()[2];
    for (j, backend) in backends().into_iter().enumerate() {
        let mut rng = common::random::Lcg(j as u64 + 5);
        let mut sizes = Vec::new();
        let mut left = len;
        while left > 0 {
            let x = rng.next_u64();
            let n = match (x >> 33) % 3 {
                0 => 1,
                1 => 1 + (x >> 40) as usize % 7,
                _ => 16 + (x >> 40) as usize % 20,
            }
            .min(left);
            sizes.push(n.to_string());
            left -= n;
        }
        let chunks = sizes.join(",");
        let got = run_program(
            &root().join(PROGRAM),
            &inputs,
            backend,
            "f64",
            &["--chunks", &chunks],
        );
        check(
            &expected,
            "f64",
            &got,
            &format!("{backend} --chunks {chunks}"),
        );
    }
}

/// A session saved in the middle of a mini-batch (the carries and the mini-batch start in the
/// state file) resumes exactly as if uninterrupted and ends at the reference.
#[test]
fn a_rule_session_saved_mid_mini_batch_resumes_on_every_backend() {
    let settings = tttc::Settings::default();
    let program = tttc::compile_file(&root().join(PROGRAM), Precision::F64, &settings).unwrap();
    let inputs = load(&file("rules", STEM, ".inputs.safetensors"));
    let expected = load(&file("rules", STEM, ".expected.safetensors"));
    // 21 tokens (position 5 of the second mini-batch), save, then across the boundary.
    check_resumed_sessions(
        &program,
        &inputs,
        (&[17, 4, 3, 9, 4], 21),
        ("", &[]),
        |what, last| {
            for name in ["W1_last", "W1_S", "b1_S"] {
                assert_tensor_close(
                    &format!("{what} resumed: final {name}"),
                    &last[name],
                    &expected[name],
                    1e-9,
                );
            }
        },
    );
}

/// `momentum_gd` written as a rule (`examples/momentum_linear.ttt` with its `update` replaced)
/// reproduces `momentum_gd`'s reference vectors on every backend, one-shot and token by token.
/// Its coefficient is `keep = 1 − decay`, so the rule is not of `momentum_gd`'s literal form
/// and the compiler derives its chunked form (the triangular path) instead of building the
/// built-in's.
#[test]
fn momentum_gd_written_as_a_rule_matches_its_vectors() {
    let text = std::fs::read_to_string(root().join("examples/momentum_linear.ttt")).unwrap();
    let builtin =
        "update momentum_gd(size = mini_batch_size, lr = lr, momentum = momentum, decay = decay)";
    assert!(text.contains(builtin));
    let text = text.replacen(
        builtin,
        "update titans(size = mini_batch_size, lr = lr, eta = momentum, keep = 1 - decay)",
        1,
    ) + "\nrule titans(lr, eta, keep) {\n  carry momentum = 0\n  \
         momentum = eta * momentum - lr * grad\n  state = keep * state + momentum\n  \
         read state\n}\n";
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("titans.ttt");
    std::fs::write(&program, text).unwrap();
    std::fs::copy(
        root().join("examples/ttt_linear.ttt"),
        dir.path().join("ttt_linear.ttt"),
    )
    .unwrap();
    let stem = "momentum_linear_B1_H2_L37_f8_K16";
    let inputs = file("momentum", stem, ".inputs.safetensors");
    let expected = file("momentum", stem, ".expected.safetensors");
    for backend in backends() {
        let got = run_program(&program, &inputs, backend, "f64", &[]);
        check(&expected, "f64", &got, &format!("titans {backend}"));
    }
    let got = run_program(
        &program,
        &inputs,
        "interp",
        "f64",
        &["--stop-after", "autodiff"],
    );
    check(&expected, "f64", &got, "titans token by token");
}

/// The prelude's `momentum_gd` is a rule; a user rule of its literal form (any names) builds
/// the same program — the built-in's hand-built chunked form — while the same recurrence with
/// `keep = 1 − decay` as a coefficient goes the derived way (the test above).
#[test]
fn a_rule_of_momentum_gds_form_builds_the_builtin_program() {
    let text = std::fs::read_to_string(root().join("examples/momentum_linear.ttt")).unwrap();
    let builtin =
        "update momentum_gd(size = mini_batch_size, lr = lr, momentum = momentum, decay = decay)";
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("examples/ttt_linear.ttt"),
        dir.path().join("ttt_linear.ttt"),
    )
    .unwrap();
    let settings = tttc::Settings::default();
    let compile = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        tttc::compile_file(&path, Precision::F64, &settings).unwrap()
    };
    let reference = compile("builtin.ttt", text.clone());
    let literal = compile(
        "literal.ttt",
        text.replacen(
            builtin,
            "update mine(size = mini_batch_size, rho = lr, m = momentum, a = decay)",
            1,
        ) + "\nrule mine(rho, m, a) {\n  carry momentum = 0\n  \
             momentum = m * momentum - rho * grad\n  state = (1 - a) * state + momentum\n  \
             read state\n}\n",
    );
    // The programs differ in their names only.
    assert!(
        reference.graph == literal.graph,
        "a rule of momentum_gd's form builds another program"
    );
    let derived = compile(
        "derived.ttt",
        text.replacen(
            builtin,
            "update mine(size = mini_batch_size, rho = lr, m = momentum, keep = 1 - decay)",
            1,
        ) + "\nrule mine(rho, m, keep) {\n  carry momentum = 0\n  \
             momentum = m * momentum - rho * grad\n  state = keep * state + momentum\n  \
             read state\n}\n",
    );
    assert!(reference.graph != derived.graph);
}

/// Gradients through a rule written as code: the gradient program of the example against
/// central finite differences along a random direction per input (weights, tokens, the
/// per-token `lr` and `momentum`, the per-head `wd`), on the interpreter in f64. Tolerance:
/// 1e-6 of the pairing's scale.
#[test]
fn a_rule_as_code_gradients_match_finite_differences() {
    let inputs = load(&file("rules", STEM, ".inputs.safetensors"));
    assert_gradients_match_finite_differences(&root().join(PROGRAM), &inputs, 23);
}

/// The gradient program of `path` (its outputs paired with random cotangents) against central
/// finite differences along a random direction per input, on the interpreter in f64.
fn assert_gradients_match_finite_differences(
    path: &Path,
    inputs: &BTreeMap<String, Tensor>,
    seed: u64,
) {
    let text = std::fs::read_to_string(path).expect("program");
    let settings = tttc::Settings::default();
    let name = path.to_string_lossy();
    let lowered = tttc::ir::syntax::compile(&name, &text, tttc::ir::DType::F64, &settings)
        .unwrap_or_else(|e| panic!("{}", e.render(false)));
    let program = tttc::optimize(lowered, None, false)
        .expect("optimize")
        .program;
    let inputs: BTreeMap<String, Tensor> = inputs
        .iter()
        .map(|(name, t)| {
            let t64 = Tensor::from_f64(t.shape().to_vec(), t.to_f64_vec()).expect("sizes");
            (name.clone(), t64)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let inputs_path = dir.path().join("inputs.safetensors");
    tttc::runtime::write_safetensors(&inputs_path, &inputs).unwrap();
    let outputs = run_program(path, &inputs_path, "interp", "f64", &[]);
    let mut rng = common::random::Lcg(seed);
    let cts: BTreeMap<String, Tensor> = outputs
        .iter()
        .map(|(name, t)| {
            let v = rng.vec(t.len(), 1.0);
            (
                name.clone(),
                Tensor::from_f64(t.shape().to_vec(), v).expect("sizes"),
            )
        })
        .collect();
    let f = common::finite_diff::pairing(&program, &inputs, &cts, &settings).expect("forward");
    let grads =
        common::finite_diff::gradients(&program, &inputs, &cts, &settings, 1).expect("grad");
    for name in inputs.keys() {
        let g = grads
            .get(name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let v = rng.vec(g.len(), 1.0);
        let check =
            common::finite_diff::directional(&program, &inputs, &cts, &settings, name, g, &v)
                .expect("finite differences");
        let tol = 1e-6 * check.scale + 1e-8 * (1.0 + f.abs());
        assert!(
            (check.autodiff - check.finite_differences).abs() <= tol,
            "d{name}: autodiff {:e}, finite differences {:e} (tol {tol:e})",
            check.autodiff,
            check.finite_differences
        );
    }
}

/// Plain mini-batch GD written as a rule (a carry that stays zero, `state = state − lr · grad`)
/// is `minibatch_gd` with `token_eta = 1`: `examples/ttt_linear.ttt` both ways on the same
/// tokens, weights and learning rates (interp, f64; 1e-12: the same update up to the order of
/// sums). `minibatch_gd`'s per-position `token_eta` has no rule form (language.md, limits).
#[test]
fn minibatch_gd_with_unit_token_eta_written_as_a_rule_is_the_builtin() {
    let text = std::fs::read_to_string(root().join("examples/ttt_linear.ttt")).unwrap();
    let builtin =
        "update minibatch_gd(size = mini_batch_size, token_eta = token_eta, lr = ttt_lr_eta)";
    assert!(text.contains(builtin));
    let rule_text = text
        .replacen(
            builtin,
            "update sgd(size = mini_batch_size, lr = ttt_lr_eta)",
            1,
        )
        .replacen("  input token_eta: [mini_batch_size]\n", "", 1)
        + "\nrule sgd(lr) {\n  carry unused = 0\n  state = state - lr * grad\n  read state\n}\n";
    let dir = tempfile::tempdir().unwrap();
    let rule_program = dir.path().join("sgd.ttt");
    std::fs::write(&rule_program, rule_text).unwrap();
    let inputs = load(&file(
        "momentum",
        "momentum_linear_B1_H2_L37_f8_K16",
        ".inputs.safetensors",
    ));
    let mut rule_inputs: BTreeMap<String, Tensor> = inputs
        .iter()
        .filter(|(k, _)| !["lr", "momentum", "decay"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    rule_inputs.insert("ttt_lr_eta".into(), inputs["lr"].clone());
    let mut gd_inputs = rule_inputs.clone();
    gd_inputs.insert(
        "token_eta".into(),
        Tensor::from_f64(vec![16], vec![1.0; 16]).unwrap(),
    );
    let (rule_path, gd_path) = (
        dir.path().join("rule.safetensors"),
        dir.path().join("gd.safetensors"),
    );
    tttc::runtime::write_safetensors(&rule_path, &rule_inputs).unwrap();
    tttc::runtime::write_safetensors(&gd_path, &gd_inputs).unwrap();
    let a = run_program(&rule_program, &rule_path, "interp", "f64", &[]);
    let b = run_program(
        &root().join("examples/ttt_linear.ttt"),
        &gd_path,
        "interp",
        "f64",
        &[],
    );
    for name in ["Z", "W1_last", "b1_last"] {
        assert_tensor_close(
            &format!("{name}: sgd rule vs minibatch_gd"),
            &a[name],
            &b[name],
            1e-12,
        );
    }
}

/// `examples/ttt_linear.ttt` with a step size `eta` of shape `eta_shape` (`[B, H, L]` per token,
/// `[mini_batch_size]` per position) and its `update` replaced by `update`, plus `rule` (none:
/// the prelude's `minibatch_gd`).
fn gd_program(dir: &Path, name: &str, eta_shape: &str, update: &str, rule: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("examples/ttt_linear.ttt")).unwrap();
    let builtin =
        "update minibatch_gd(size = mini_batch_size, token_eta = token_eta, lr = ttt_lr_eta)";
    let declared = "  input token_eta: [mini_batch_size]\n";
    assert!(text.contains(builtin) && text.contains(declared));
    let text = text.replacen(builtin, update, 1).replacen(
        declared,
        &format!("  input eta: {eta_shape}\n"),
        1,
    ) + rule;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `minibatch_gd`'s recurrence written with the partial sum's sign flipped (`sum = sum − lr ·
/// grad`, read `state + eta · sum`, folded in and zeroed by `end` statements) is not the
/// literal form the compiler lowers as the built-in, so it goes the derived way: chunked form
/// with the end map, the interpreter's literal token-by-token recurrence, the streaming token
/// step and its end map at every mini-batch boundary and at a chunk's end. With a per-token step
/// size, and with one per position (the rule's coefficient moved to the scan's first slot, which
/// the rule lists second), it must give the built-in `minibatch_gd`'s results (f64, 1e-10: the same sums, the
/// weights multiplied in another order; L = 37, K = 16, so a remainder mini-batch ends the
/// sequence and the last chunks), one-shot and token by token, streamed in random chunks on every
/// backend, and a session saved mid-mini-batch resumes bit for bit; its gradients match finite
/// differences.
#[test]
fn a_rule_with_an_end_map_matches_minibatch_gd_the_derived_way() {
    let source = load(&file(
        "momentum",
        "momentum_linear_B1_H2_L37_f8_K16",
        ".inputs.safetensors",
    ));
    // Per token: the momentum vectors' per-token `momentum` (zeros and a negative value among
    // them) as the step size; per position: 1 / (i + 1) as ttt-lm-pytorch's, one negated.
    let per_position: Vec<f64> = (0..16)
        .map(|i| {
            if i == 3 {
                -0.25
            } else {
                1.0 / (i as f64 + 1.0)
            }
        })
        .collect();
    for (eta_shape, eta) in [
        ("[B, H, L]", source["momentum"].clone()),
        (
            "[mini_batch_size]",
            Tensor::from_f64(vec![16], per_position).unwrap(),
        ),
    ] {
        flipped_gd_matches_minibatch_gd(&source, eta_shape, eta);
    }
}

/// The body of the test above for one form of the step size.
fn flipped_gd_matches_minibatch_gd(
    source: &BTreeMap<String, Tensor>,
    eta_shape: &str,
    eta: Tensor,
) {
    let dir = tempfile::tempdir().unwrap();
    let builtin = gd_program(
        dir.path(),
        "builtin.ttt",
        eta_shape,
        "update minibatch_gd(size = mini_batch_size, token_eta = eta, lr = ttt_lr_eta)",
        "",
    );
    let derived = gd_program(
        dir.path(),
        "derived.ttt",
        eta_shape,
        "update flipped(size = mini_batch_size, lr = ttt_lr_eta, eta = eta)",
        "\nrule flipped(lr, eta) {\n  carry sum = 0\n  sum = sum - lr * grad\n  \
         read state + eta * sum\n  end state = state + eta * sum\n  end sum = 0\n}\n",
    );
    let settings = tttc::Settings::default();
    let program = tttc::compile_file(&derived, Precision::F64, &settings).unwrap();
    let header = program
        .graph
        .node_ids()
        .into_iter()
        .find_map(|id| match &program.graph.node(id).op {
            tttc::ir::Op::Ttt(s) => Some(s.header()),
            _ => None,
        })
        .expect("a scan");
    assert!(header.contains("rule=flipped"), "{header}");
    let what = |how: String| format!("eta {eta_shape}, {how}");

    // The momentum vectors' tokens, weights and per-token `lr`.
    let mut inputs: BTreeMap<String, Tensor> = source
        .iter()
        .filter(|(k, _)| !["lr", "momentum", "decay"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    inputs.insert("ttt_lr_eta".into(), source["lr"].clone());
    inputs.insert("eta".into(), eta);
    let inputs_path = dir.path().join("inputs.safetensors");
    tttc::runtime::write_safetensors(&inputs_path, &inputs).unwrap();
    let expected = run_program(&builtin, &inputs_path, "interp", "f64", &[]);
    assert!(expected.contains_key("Z") && expected.contains_key("W1_last"));
    let len = inputs["XQ"].shape()[2];
    for (j, backend) in backends().into_iter().enumerate() {
        let got = run_program(&derived, &inputs_path, backend, "f64", &[]);
        assert_outputs_close(&what(format!("{backend} one-shot")), &got, &expected, 1e-10);
        let mut rng = common::random::Lcg(j as u64 + 11);
        let mut sizes = Vec::new();
        let mut left = len;
        while left > 0 {
            let n = (1 + rng.next_u64() as usize % 20).min(left);
            sizes.push(n.to_string());
            left -= n;
        }
        let chunks = sizes.join(",");
        let got = run_program(
            &derived,
            &inputs_path,
            backend,
            "f64",
            &["--chunks", &chunks],
        );
        let how = what(format!("{backend} --chunks {chunks}"));
        assert_outputs_close(&how, &got, &expected, 1e-10);
    }
    let got = run_program(
        &derived,
        &inputs_path,
        "interp",
        "f64",
        &["--stop-after", "autodiff"],
    );
    assert_outputs_close(&what("token by token".into()), &got, &expected, 1e-10);
    // Gradients through the end map: from the step graph, like every rule's.
    assert_gradients_match_finite_differences(&derived, &inputs, 29);

    // Saved at token 21 (position 5 of the second mini-batch), resumed across the boundary.
    check_resumed_sessions(
        &program,
        &inputs,
        (&[17, 4, 3, 9, 4], 21),
        (&what(String::new()), &[]),
        |how, last| {
            for name in ["W1_last", "b1_last"] {
                assert_tensor_close(
                    &format!("{how} resumed: final {name}"),
                    &last[name],
                    &expected[name],
                    1e-10,
                );
            }
        },
    );
}

/// The prelude's `minibatch_gd` is a rule; one of its literal form under other names builds
/// the same program as `update minibatch_gd(...)` — the built-in mini-batch GD, per-position
/// `token_eta` included — and the flipped-sign form above another one.
#[test]
fn a_rule_of_minibatch_gds_form_builds_the_builtin_program() {
    let text = std::fs::read_to_string(root().join("examples/ttt_linear.ttt")).unwrap();
    let builtin =
        "update minibatch_gd(size = mini_batch_size, token_eta = token_eta, lr = ttt_lr_eta)";
    let settings = tttc::Settings::default();
    let dir = tempfile::tempdir().unwrap();
    let compile = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        tttc::compile_file(&path, Precision::F64, &settings).unwrap()
    };
    let reference = compile("builtin.ttt", text.clone());
    let rule = |body: &str| {
        text.replacen(
            builtin,
            "update step(size = mini_batch_size, rate = ttt_lr_eta, e = token_eta)",
            1,
        ) + &format!("\nrule step(rate, e) {{\n  carry acc = 0\n{body}}}\n")
    };
    let literal = compile(
        "literal.ttt",
        rule(
            "  acc = acc + rate * grad\n  read state - e * acc\n  \
              end state = state - e * acc\n  end acc = 0\n",
        ),
    );
    assert!(
        reference.graph == literal.graph,
        "a rule of minibatch_gd's form builds another program"
    );
}
