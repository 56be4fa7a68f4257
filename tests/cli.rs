//! The CLI's commands and formats: `check`, `inspect --format text|json|dot`, `--help`.

mod common;

use common::*;

#[test]
fn inspect_formats() {
    for example in ["examples/ttt_linear.ttt", "examples/ttt_mlp.ttt"] {
        let text_out = tttc(&["inspect", example]);
        assert!(text_out.status.success(), "{}", text(&text_out));
        let printed = String::from_utf8_lossy(&text_out.stdout).into_owned();
        assert!(printed.contains("= ttt "), "the scan is printed");
        assert!(
            printed.contains("grad {"),
            "the derived gradient graph is printed"
        );

        let json_out = tttc(&["inspect", example, "--format", "json", "--precision", "f64"]);
        assert!(json_out.status.success());
        let program: tttc::ir::Program =
            serde_json::from_slice(&json_out.stdout).expect("inspect --format json parses back");
        tttc::ir::verify::verify_program(&program).expect("and verifies");
        assert!(tttc::ir::printer::print_program(&program).contains("f64["));

        let dot_out = tttc(&["inspect", example, "--format", "dot"]);
        assert!(dot_out.status.success());
        let dot = String::from_utf8_lossy(&dot_out.stdout);
        assert!(dot.starts_with("digraph"), "{dot}");
        assert_eq!(dot.matches('{').count(), dot.matches('}').count());
    }
}

#[test]
fn help_for_every_command() {
    for args in [
        vec!["--help"],
        vec!["check", "--help"],
        vec!["inspect", "--help"],
        vec!["run", "--help"],
    ] {
        let out = tttc(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
    let run_help = String::from_utf8_lossy(&tttc(&["run", "--help"]).stdout).into_owned();
    for option in ["--inputs", "--out", "--backend", "--precision", "--set"] {
        assert!(run_help.contains(option), "run --help mentions {option}");
    }
}

#[test]
fn check_reports_inputs_and_outputs() {
    let out = tttc(&["check", "examples/ttt_mlp.ttt"]);
    assert!(out.status.success());
    let s = text(&out);
    assert!(s.contains("W2: [H, h, f]"), "{s}");
    assert!(s.contains("b2_last: [B, H, 1, f]"), "{s}");
}

#[test]
fn inspect_every_stage() {
    let passes = tttc(&["inspect", "examples/ttt_linear.ttt", "--passes"]);
    let listed = String::from_utf8_lossy(&passes.stdout).into_owned();
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        names,
        [
            "autodiff",
            "primal",
            "dual_form",
            "simplify",
            "lower_kernel",
            "outline",
            "cpu_parallel",
            "sibling_products",
            "register_tile",
            "reduce_jam",
            "vector_loops",
            "memory_plan",
            "gpu_schedule",
            "codegen"
        ]
    );

    let after = |stage: &str| {
        let out = tttc(&["inspect", "examples/ttt_linear.ttt", "--after", stage]);
        assert!(out.status.success(), "{stage}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !after("parse").contains("grad {"),
        "no gradient before autodiff"
    );
    assert!(after("autodiff").contains("grad {"));
    assert!(
        after("primal").contains("= mix "),
        "the primal form mixes per-token states"
    );
    let dual = after("dual_form");
    assert!(dual.contains("step {") && !dual.contains("= mix"), "{dual}");
    assert!(after("simplify").contains("step {"), "the last graph stage");

    // register_tile: the scan step's small products (no library gemm inside a scan) become
    // register tiles: a vectorized column loop with the tile's rows jammed into it.
    for (example, h) in [
        ("examples/ttt_linear.ttt", None),
        ("examples/ttt_mlp.ttt", Some("h=64")),
    ] {
        let before = |stage: &str| {
            let mut args = vec!["inspect", example, "--after", stage];
            for d in ["B=1", "H=2", "L=32", "f=16"].into_iter().chain(h) {
                args.extend(["--set", d]);
            }
            let out = tttc(&args);
            assert!(out.status.success(), "{example} {stage}: {}", text(&out));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let lowered = before("cpu_parallel");
        let tiled = before("register_tile");
        assert!(!lowered.contains("(Vector("), "{lowered}");
        assert!(
            tiled.contains("(Vector("),
            "{example}: no register tile\n{tiled}"
        );
    }

    let bad = tttc(&["inspect", "examples/ttt_linear.ttt", "--after", "magic"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad).contains("dual_form"),
        "the error lists the stages"
    );

    let all = tttc(&["inspect", "examples/ttt_mlp.ttt", "--all"]);
    let all = String::from_utf8_lossy(&all.stdout).into_owned();
    for stage in ["parse", "autodiff", "primal", "dual_form", "simplify"] {
        assert!(all.contains(&format!("== after {stage} ==")), "{stage}");
    }
    let json = tttc(&[
        "inspect",
        "examples/ttt_mlp.ttt",
        "--all",
        "--format",
        "json",
    ]);
    let stages: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(stages.as_array().map(Vec::len), Some(5));
    let dot = tttc(&[
        "inspect",
        "examples/ttt_mlp.ttt",
        "--after",
        "primal",
        "--format",
        "dot",
    ]);
    assert!(String::from_utf8_lossy(&dot.stdout).contains("cluster_"));

    let timings = tttc(&["inspect", "examples/ttt_mlp.ttt", "--timings"]);
    let timings = String::from_utf8_lossy(&timings.stdout).into_owned();
    for stage in ["autodiff", "primal", "dual_form", "simplify", "total"] {
        assert!(timings.lines().any(|l| l.starts_with(stage)), "{timings}");
    }
}

/// Writes zero-filled inputs of the given shapes.
fn zeros_file(dir: &std::path::Path, shapes: &[(&str, Vec<usize>)]) -> std::path::PathBuf {
    let tensors = shapes
        .iter()
        .map(|(n, s)| {
            (
                n.to_string(),
                tttc::runtime::Tensor::zeros(s.clone(), tttc::runtime::ElemType::F32),
            )
        })
        .collect();
    let path = dir.join("shapes.safetensors");
    tttc::runtime::write_safetensors(&path, &tensors).expect("write");
    path
}

fn cost_json(program: &str, inputs: &std::path::Path) -> serde_json::Value {
    let out = tttc(&[
        "cost",
        program,
        "--inputs",
        inputs.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("cost --json is JSON")
}

/// The acceptance numbers: at B=1, 12 heads, f=64, K=16, L=2048 the optimized FLOPs are
/// within 1.3x of the hand-derived dual form (per token and head: linear 6f²+6Kf, MLP
/// 56f²+30Kf) and the optimized program materializes at least 4x fewer bytes than the primal.
#[test]
fn cost_meets_the_dual_form_targets() {
    let (b, h, l, f, k) = (1usize, 12usize, 2048usize, 64usize, 16usize);
    let dir = tempfile::tempdir().expect("tempdir");
    let seq = vec![b, h, l, f];
    let common = vec![
        ("XQ", seq.clone()),
        ("XK", seq.clone()),
        ("XV", seq),
        ("token_eta", vec![k]),
        ("ttt_lr_eta", vec![b, h, l]),
        ("ln_weight", vec![h, f]),
        ("ln_bias", vec![h, f]),
    ];
    let mut linear = common.clone();
    linear.extend([("W1", vec![h, f, f]), ("b1", vec![h, 1, f])]);
    let mut mlp = common;
    mlp.extend([
        ("W1", vec![h, f, 4 * f]),
        ("b1", vec![h, 1, 4 * f]),
        ("W2", vec![h, 4 * f, f]),
        ("b2", vec![h, 1, f]),
    ]);
    let tokens = (b * h * l) as f64;
    let (f, k) = (f as f64, k as f64);
    for (program, shapes, per_token) in [
        ("examples/ttt_linear.ttt", linear, 6.0 * f * f + 6.0 * k * f),
        ("examples/ttt_mlp.ttt", mlp, 56.0 * f * f + 30.0 * k * f),
    ] {
        let path = zeros_file(dir.path(), &shapes);
        let cost = cost_json(program, &path);
        let flops = |stage: &str| cost[stage]["flops"].as_f64().expect("flops");
        let bytes = |stage: &str| cost[stage]["bytes"].as_f64().expect("bytes");
        let hand = per_token * tokens;
        let ratio = flops("optimized") / hand;
        assert!(
            ratio <= 1.3,
            "{program}: optimized FLOPs are {ratio:.3}x the hand-derived dual form"
        );
        assert!(
            ratio >= 0.9,
            "{program}: fewer FLOPs than the dual form needs ({ratio:.3}x)?"
        );
        let shrink = bytes("primal") / bytes("optimized");
        assert!(shrink >= 4.0, "{program}: only {shrink:.2}x fewer bytes");
        assert!(flops("primal") > flops("optimized"));
    }
}

/// `update momentum_gd`'s chunked form at the same sizes (TTT-Linear, H = 12, K = 16): the
/// optimized FLOPs within 1.3x of the hand-derived count per token and head (docs/language.md)
/// `10f² + 6Kf + 2K² + 6⌈log2 K⌉K`, and at least 4x fewer bytes than the per-token form
/// (measured 4.07x at H = 4; 3.41x before the update loops of the weights and of their momentum
/// buffers wrote into the state buffers instead of temporaries copied after each mini-batch,
/// `passes/src/lower_kernel/in_place.rs`).
#[test]
fn momentum_cost_meets_its_hand_derived_count() {
    let (b, h, l, f, k) = (1usize, 12usize, 2048usize, 64usize, 16usize);
    let dir = tempfile::tempdir().expect("tempdir");
    let seq = vec![b, h, l, f];
    let shapes = vec![
        ("XQ", seq.clone()),
        ("XK", seq.clone()),
        ("XV", seq),
        ("lr", vec![b, h, l]),
        ("momentum", vec![b, h, l]),
        ("decay", vec![b, h, l]),
        ("ln_weight", vec![h, f]),
        ("ln_bias", vec![h, f]),
        ("W1", vec![h, f, f]),
        ("b1", vec![h, 1, f]),
    ];
    let program = "examples/momentum_linear.ttt";
    let cost = cost_json(program, &zeros_file(dir.path(), &shapes));
    let flops = |stage: &str| cost[stage]["flops"].as_f64().expect("flops");
    let bytes = |stage: &str| cost[stage]["bytes"].as_f64().expect("bytes");
    let (tokens, f, k) = ((b * h * l) as f64, f as f64, k as f64);
    let rounds = k.log2().ceil();
    let hand = (10.0 * f * f + 6.0 * k * f + 2.0 * k * k + 6.0 * rounds * k) * tokens;
    let ratio = flops("optimized") / hand;
    assert!(
        (0.9..=1.3).contains(&ratio),
        "{program}: optimized FLOPs are {ratio:.3}x the hand-derived chunked form"
    );
    let shrink = bytes("primal") / bytes("optimized");
    assert!(shrink >= 4.0, "{program}: only {shrink:.2}x fewer bytes");
}

/// `--after lower_kernel` prints the kernel IR of the given program for the given shapes: its
/// buffers, one loop per axis with the bound extents, and the fused elementwise expression
/// stored once per element (the product is inlined into the exponential, not materialized).
#[test]
fn inspect_after_lower_kernel_prints_the_loops_of_the_program() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("scaled.ttt");
    std::fs::write(
        &file,
        "main {\n  input X: [N, M]\n  input w: [M]\n  output Y = exp(X * w) + 3\n}\n",
    )
    .expect("write");
    let file = file.to_str().expect("utf-8");
    let inputs = zeros_file(dir.path(), &[("X", vec![5, 7]), ("w", vec![7])]);
    let inputs = inputs.to_str().expect("utf-8");
    for args in [
        vec![
            "inspect",
            file,
            "--after",
            "lower_kernel",
            "--inputs",
            inputs,
        ],
        vec![
            "inspect",
            file,
            "--after",
            "lower_kernel",
            "--set",
            "N=5",
            "--set",
            "M=7",
        ],
    ] {
        let out = tttc(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(printed.starts_with("kernel program scaled"), "{printed}");
        assert!(printed.contains("output Y Global [5, 7]"), "{printed}");
        assert!(printed.contains("in 0..5 (Serial)"), "{printed}");
        assert!(printed.contains("in 0..7 (Serial)"), "{printed}");
        let stores: Vec<&str> = printed.lines().filter(|l| l.contains("] = ")).collect();
        assert_eq!(stores.len(), 1, "one fused store:\n{printed}");
        assert!(
            stores[0].trim_start().starts_with("b2[")
                && stores[0].contains("= add(exp(mul(b0[")
                && stores[0].ends_with(", 3)"),
            "{printed}"
        );
    }

    // cpu_parallel: the 5x7 nest is too small for the thread pool; at 512x512 its rows run in
    // parallel (iterations write disjoint rows of Y), and it is no stage of GPU targets.
    let cpu = |n: &str, m: &str| {
        let n_set = format!("N={n}");
        let m_set = format!("M={m}");
        let args = [
            "inspect",
            file,
            "--after",
            "cpu_parallel",
            "--set",
            &n_set,
            "--set",
            &m_set,
        ];
        let out = tttc(&args);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(cpu("5", "7").contains("in 0..5 (Serial)"));
    let big = cpu("512", "512");
    assert!(
        big.contains("in 0..512 (Parallel)") && big.contains("in 0..512 (Serial)"),
        "{big}"
    );
    let refused = tttc(&[
        "inspect",
        file,
        "--after",
        "cpu_parallel",
        "--target",
        "gpu",
        "--set",
        "N=5",
        "--set",
        "M=7",
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));

    // The GPU mapping of the same program: the loops become one block of threads.
    let gpu = tttc(&[
        "inspect",
        file,
        "--after",
        "gpu_schedule",
        "--inputs",
        inputs,
    ]);
    assert!(gpu.status.success(), "{}", text(&gpu));
    let gpu = String::from_utf8_lossy(&gpu.stdout).into_owned();
    assert!(
        gpu.contains("(GpuBlock)") && gpu.contains("(GpuThread)"),
        "{gpu}"
    );

    // --all and --timings run the kernel stages when the shapes are given.
    let all = tttc(&["inspect", file, "--all", "--inputs", inputs]);
    let all = String::from_utf8_lossy(&all.stdout).into_owned();
    assert!(all.contains("== after simplify ==\n"), "{all}");
    assert!(
        all.contains("== after lower_kernel ==\nkernel program scaled"),
        "{all}"
    );
    let timings = tttc(&["inspect", file, "--timings", "--inputs", inputs]);
    let timings = String::from_utf8_lossy(&timings.stdout).into_owned();
    assert!(
        timings.lines().any(|l| l.starts_with("lower_kernel ")),
        "{timings}"
    );

    // --dump writes one file per stage run, numbered in order.
    let dump = dir.path().join("dump");
    let out = tttc(&[
        "inspect",
        file,
        "--after",
        "lower_kernel",
        "--inputs",
        inputs,
        "--dump",
        dump.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let mut files: Vec<String> = std::fs::read_dir(&dump)
        .expect("dump dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "01-autodiff.txt",
            "02-primal.txt",
            "03-dual_form.txt",
            "04-simplify.txt",
            "05-lower_kernel.txt"
        ]
    );

    // Without shapes a kernel stage is a user error naming what to give; so is codegen.
    let missing = tttc(&["inspect", file, "--after", "lower_kernel"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("--inputs"), "{}", text(&missing));
    let codegen = tttc(&["inspect", file, "--after", "codegen"]);
    assert_eq!(codegen.status.code(), Some(2), "{}", text(&codegen));
}

/// `--passes` lists every stage to machine code, and `--help` and docs/pipeline.md name the
/// same stages.
#[test]
fn passes_lists_every_stage_to_machine_code() {
    let out = tttc(&["inspect", "examples/ttt_mlp.ttt", "--passes"]);
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let names: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    let pipeline = tttc::passes::pipeline::Pipeline::every_stage();
    let mut expected: Vec<&str> = pipeline.stage_names();
    assert!(expected.contains(&"cpu_parallel") && expected.contains(&"gpu_schedule"));
    expected.push(tttc::passes::pipeline::CODEGEN);
    assert_eq!(names, expected);
    let help = String::from_utf8_lossy(&tttc(&["inspect", "--help"]).stdout).into_owned();
    let doc = std::fs::read_to_string(common::root().join("docs/pipeline.md")).expect("doc");
    for name in &names {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "docs/pipeline.md has no row for `{name}`"
        );
        if name != "codegen" {
            assert!(
                help.contains(name.as_str()),
                "inspect --help names `{name}`"
            );
        }
    }
}

/// `bench --profile` times the kernel program's top-level statements: the table lists
/// statements of the program (the scan's loop nest writes the scan's outputs), its shares add
/// up to at most 100%, and other backends are refused with a user error.
#[test]
#[cfg(feature = "llvm")]
fn bench_profile_lists_the_costliest_statements() {
    // Large enough (4 heads of a 64x64 state over 16 mini-batches) for the scan's slice loop
    // to stay on the thread pool (cpu_parallel::MIN_PARALLEL_STORES), so a worker is named.
    let (b, h, l, f, k) = (1usize, 4usize, 256usize, 64usize, 16usize);
    let dir = tempfile::tempdir().expect("tempdir");
    let seq = vec![b, h, l, f];
    let path = zeros_file(
        dir.path(),
        &[
            ("XQ", seq.clone()),
            ("XK", seq.clone()),
            ("XV", seq),
            ("token_eta", vec![k]),
            ("ttt_lr_eta", vec![b, h, l]),
            ("ln_weight", vec![h, f]),
            ("ln_bias", vec![h, f]),
            ("W1", vec![h, f, f]),
            ("b1", vec![h, 1, f]),
        ],
    );
    let inputs = path.to_str().expect("utf-8");
    let args = ["bench", "examples/ttt_linear.ttt", "--inputs", inputs];
    let out = tttc(&[&args[..], &["--iters", "2", "--profile"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("top-level statements"), "{err}");
    let rows: Vec<&str> = err.lines().filter(|l| l.contains(" #")).collect();
    assert!(!rows.is_empty(), "{err}");
    assert!(rows.iter().any(|r| r.contains("ttt")), "{err}");
    let last_cumul: f64 = rows
        .last()
        .and_then(|r| r.split('%').nth(1))
        .and_then(|c| c.trim().parse().ok())
        .expect("a cumulative share");
    assert!(last_cumul <= 100.0 + 1e-6, "{err}");
    // TTTC_PERF_MAP=1 names the JIT's functions for perf in /tmp/perf-PID.map (the scan runs
    // in the first parallel loop's worker).
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tttc"))
        .args(args)
        .args(["--iters", "1", "--no-cache"])
        .env("TTTC_PERF_MAP", "1")
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tttc runs");
    let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", child.id()));
    let status = child.wait_with_output().expect("tttc ends").status;
    assert!(status.success());
    let listed = std::fs::read_to_string(&map).expect("the perf map");
    let _ = std::fs::remove_file(&map);
    assert!(
        listed.lines().any(|l| l.ends_with(" tttc.worker.0")),
        "{listed}"
    );
    let refused = tttc(&[&args[..], &["--backend", "cranelift", "--profile"]].concat());
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("--profile needs --backend llvm"));
}
