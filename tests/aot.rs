//! The ahead-of-time library and the C example, from a clean checkout: `tttc compile` writes a
//! shared library and header, the C example (examples/c/main.c) is built against them and run,
//! and what it writes equals `tttc run --backend interp` on the same inputs (f32, 1e-5 relative
//! to max |expected|: both compute in f32 with different summation orders and FMA contraction).
#![cfg(feature = "llvm")]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn c_example_runs_the_compiled_library() {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipped: no C compiler `cc`");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sample = root().join("examples/data/ttt_linear_sample.safetensors");
    let lib = d.join("libttt_linear.so");
    let out = tttc(&[
        "compile",
        "examples/ttt_linear.ttt",
        "--target",
        "x86_64",
        "--inputs",
        sample.to_str().expect("utf-8"),
        "-o",
        lib.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let header = std::fs::read_to_string(d.join("ttt_linear.h")).expect("the header is written");
    assert!(
        header.contains("XQ") && header.contains("[1, 2, 64, 16]"),
        "{header}"
    );

    // Inputs as raw f32 files for the C program.
    for (name, t) in load(&sample) {
        let bytes: Vec<u8> = t
            .to_f64_vec()
            .iter()
            .flat_map(|&x| (x as f32).to_le_bytes())
            .collect();
        std::fs::write(d.join(format!("{name}.f32")), bytes).expect("write input");
    }
    let exe = d.join("ttt_linear_c");
    build_c_example(
        d,
        &root().join("examples/c/main.c"),
        "ttt_linear",
        &["-O2"],
        &exe,
    );
    let run = Command::new(&exe)
        .arg(d)
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("wrong shape: rc=2 (XQ: expected shape [1, 2, 64, 16], axis 2 is 32)"),
        "{stdout}"
    );

    let reference = d.join("reference.safetensors");
    let interp = tttc(&[
        "run",
        "examples/ttt_linear.ttt",
        "--inputs",
        sample.to_str().expect("utf-8"),
        "--out",
        reference.to_str().expect("utf-8"),
        "--backend",
        "interp",
    ]);
    assert!(interp.status.success(), "{}", text(&interp));
    for (name, want) in load(&reference) {
        let bytes = std::fs::read(d.join(format!("{name}.f32"))).expect("the C program wrote it");
        let got: Vec<f64> = bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let got = tttc::runtime::Tensor::from_f64(want.shape().to_vec(), got).expect("size");
        let err = rel_error(&got, &want);
        assert!(err <= 1e-5, "{name}: {err:e}");
    }
}

#[test]
fn compile_takes_shapes_from_set_and_checks_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = dir.path().join("libttt_linear.so");
    let lib = lib.to_str().expect("utf-8");
    let base = ["compile", "examples/ttt_linear.ttt", "-o", lib];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        tttc(&args)
    };
    let ok = with(&[
        "--set", "B=1", "--set", "H=2", "--set", "L=40", "--set", "f=8",
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    let header = std::fs::read_to_string(dir.path().join("ttt_linear.h")).expect("header");
    assert!(header.contains("[1, 2, 40, 8]"), "{header}");
    let missing = with(&["--set", "B=1", "--set", "H=2"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing).contains("needs dimension `L`"),
        "{}",
        text(&missing)
    );
    let huge = with(&[
        "--set",
        "B=1",
        "--set",
        "H=2",
        "--set",
        "L=100000000000000",
        "--set",
        "f=16",
    ]);
    assert_eq!(huge.status.code(), Some(2), "{}", text(&huge));
    assert!(text(&huge).contains("`XQ`"), "{}", text(&huge));
}

/// `tttc compile examples/ttt_lm.ttt --session` for golden model `case` in `precision` into
/// `lib`, with `extra` arguments.
fn compile_session(
    case: &str,
    precision: &str,
    lib: &Path,
    extra: &[&str],
) -> std::process::Output {
    let golden = root().join("tests/golden");
    let config = golden.join(format!("{case}.config.json"));
    let weights = golden.join(format!("{case}.inputs.safetensors"));
    let mut args = vec![
        "compile",
        "examples/ttt_lm.ttt",
        "--config",
        config.to_str().expect("utf-8"),
        "--weights",
        weights.to_str().expect("utf-8"),
        "--target",
        "x86_64",
        "--session",
        "--precision",
        precision,
        "-o",
        lib.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    tttc(&args)
}

/// `tttc compile --session` for the golden language model `case` (its config, and its weights
/// for the dimensions a config does not give) into `dir`, and `examples/c/NAME.c` built
/// against it; returns the executable.
fn session_library(
    dir: &std::path::Path,
    case: &str,
    c_examples: &[&str],
    precision: &str,
    extra: &[&str],
) -> Vec<std::path::PathBuf> {
    let lib = dir.join("libttt_lm.so");
    let out = compile_session(case, precision, &lib, extra);
    assert!(out.status.success(), "{}", text(&out));
    if let Ok(ldd) = Command::new("ldd").arg(&lib).output() {
        let deps = String::from_utf8_lossy(&ldd.stdout);
        assert!(!deps.contains("LLVM"), "the library links LLVM:\n{deps}");
    }
    let mut exes = Vec::new();
    for name in c_examples {
        let exe = dir.join(name);
        build_c_example(
            dir,
            &root().join(format!("examples/c/{name}.c")),
            "ttt_lm",
            &["-O2", "-Wall", "-Werror", "-pthread"],
            &exe,
        );
        exes.push(exe);
    }
    exes
}

/// Greedy generation through the session library (examples/c/generate.c) gives the tokens
/// `tttc generate` gives (JIT session, llvm) on golden model `case`: a prompt of 23 tokens (one
/// whole mini-batch of 16 and 7 single tokens), then 24 tokens one by one; and the same again
/// when the session is saved after the prompt and a new one loads it. Token equality is exact
/// (greedy picks); both compute in f32 from the same pieces, in other summation orders.
fn check_generation(case: &str) -> tempfile::TempDir {
    check_generation_in(case, "f32", &["generate", "session_errors"])
}

/// [`check_generation`] in `precision` (the library's `tttc_real` and `tttc generate
/// --precision`), building the C examples `c_examples` (`generate` first).
fn check_generation_in(case: &str, precision: &str, c_examples: &[&str]) -> tempfile::TempDir {
    if Command::new("cc").arg("--version").output().is_err() {
        panic!("a C compiler `cc` is needed");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exes = session_library(dir.path(), case, c_examples, precision, &[]);
    let weights = root().join(format!("tests/golden/{case}.inputs.safetensors"));
    let prompt = "5,90,33,2,71,8,8,40,12,60,3,77,19,25,50,1,96,44,30,9,10,11,13";
    let want = jit_generate(case, prompt, 24, precision);
    let state = dir.path().join("state.safetensors");
    for extra in [None, Some(state.as_path())] {
        let got = run_generate(&exes[0], &weights, prompt, 24, extra);
        assert_eq!(
            got,
            std::slice::from_ref(&want),
            "{case} {precision}, state file {extra:?}"
        );
    }
    std::fs::write(dir.path().join("tokens.txt"), &want).expect("write");
    dir
}

/// Runs examples/c/generate.c's executable `exe` on `prompts` (rows separated by `;`) for
/// `new_tokens` tokens, saving and resuming through `state` when given; the ids of each row.
fn run_generate(
    exe: &Path,
    weights: &Path,
    prompts: &str,
    new_tokens: usize,
    state: Option<&Path>,
) -> Vec<String> {
    let mut c = Command::new(exe);
    c.arg(weights).arg(prompts).arg(new_tokens.to_string());
    if let Some(s) = state {
        c.arg(s);
    }
    let run = c.output().expect("generate runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// The ids `tttc generate` (JIT session, llvm) picks on golden model `case` after `prompt`.
fn jit_generate(case: &str, prompt: &str, new_tokens: usize, precision: &str) -> String {
    let golden = root().join("tests/golden");
    let config = golden.join(format!("{case}.config.json"));
    let weights = golden.join(format!("{case}.inputs.safetensors"));
    let jit = tttc(&[
        "generate",
        "examples/ttt_lm.ttt",
        "--config",
        config.to_str().expect("utf-8"),
        "--weights",
        weights.to_str().expect("utf-8"),
        "--prompt-ids",
        prompt,
        "--max-new-tokens",
        &new_tokens.to_string(),
        "--precision",
        precision,
    ]);
    assert!(jit.status.success(), "{}", text(&jit));
    let want = String::from_utf8_lossy(&jit.stdout).trim().to_string();
    assert_eq!(want.split(' ').count(), new_tokens, "{want}");
    want
}

/// A library compiled for batch sizes 1 and 3 (`--batch 1,3`) runs three prompts side by side
/// (examples/c/generate.c, prompts separated by `;`): each row gives the tokens `tttc
/// generate` gives for its prompt alone (an independent path: the JIT session at batch 1),
/// also when the batch-3 session is saved after the prompt and resumed; a batch of 2, not
/// compiled, is refused with a message naming the compiled sizes.
#[test]
fn session_library_runs_every_compiled_batch_size() {
    let case = "model_mlp_M";
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let exes = session_library(d, case, &["generate"], "f32", &["--batch", "1,3"]);
    let header = std::fs::read_to_string(d.join("ttt_lm.h")).expect("header");
    assert!(
        header.contains("tttc_batch_sizes[TTTC_N_BATCH_SIZES] = {1, 3};"),
        "{header}"
    );
    let weights = root().join(format!("tests/golden/{case}.inputs.safetensors"));
    let prompts = [
        "5,90,33,2,71,8,8,40,12,60,3,77,19,25,50,1,96,44,30,9,10,11,13",
        "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23",
        "50,40,30,20,10,9,8,7,6,5,4,3,2,1,60,61,62,63,64,65,66,67,68",
    ];
    let want: Vec<String> = prompts
        .iter()
        .map(|p| jit_generate(case, p, 12, "f32"))
        .collect();
    let state = d.join("state.safetensors");
    for extra in [None, Some(state.as_path())] {
        let got = run_generate(&exes[0], &weights, &prompts.join(";"), 12, extra);
        assert_eq!(got, want, "state file {extra:?}");
    }
    let two = Command::new(&exes[0])
        .arg(&weights)
        .arg(prompts[..2].join(";"))
        .arg("2")
        .output()
        .expect("generate runs");
    let err = String::from_utf8_lossy(&two.stderr);
    assert!(!two.status.success(), "{err}");
    assert!(
        err.contains("tttc_session_set_batch failed (code 2)")
            && err.contains("compiled for batch 1, 3"),
        "{err}"
    );
}

/// ... and the state the library saved after the prompt is the file `tttc run --save-state`
/// writes: `tttc run --load-state` continues from it with the first generated token and picks
/// the second.
/// A library built with `--precision f64` (its header's `tttc_real` is `double`) generates the
/// tokens `tttc generate --precision f64` does, also through save/load.
#[test]
fn f64_session_library_generates_like_tttc_generate() {
    let dir = check_generation_in("model_linear_T", "f64", &["generate"]);
    let header = std::fs::read_to_string(dir.path().join("ttt_lm.h")).expect("header");
    assert!(header.contains("typedef double tttc_real;"), "{header}");
}

#[test]
fn session_library_generates_like_tttc_generate_linear() {
    let dir = check_generation("model_linear_T");
    let d = dir.path();
    let golden = root().join("tests/golden/model_linear_T");
    let weights =
        tttc::runtime::read_safetensors_with_ints(&golden.with_extension("inputs.safetensors"))
            .expect("golden weights")
            .floats;
    let tokens: Vec<i64> = std::fs::read_to_string(d.join("tokens.txt"))
        .expect("tokens")
        .split_whitespace()
        .map(|t| t.parse().expect("an id"))
        .collect();
    let ids = tttc::runtime::IntTensor {
        shape: vec![1, 1],
        values: vec![tokens[0]],
        dtype: "I64",
    };
    let inputs = d.join("next.safetensors");
    tttc::runtime::write_safetensors_with_ints(
        &inputs,
        &weights,
        &std::collections::BTreeMap::from([("input_ids".to_string(), ids)]),
    )
    .expect("write");
    let out = d.join("next_out.safetensors");
    let run = tttc(&[
        "run",
        "examples/ttt_lm.ttt",
        "--config",
        golden
            .with_extension("config.json")
            .to_str()
            .expect("utf-8"),
        "--inputs",
        inputs.to_str().expect("utf-8"),
        "--load-state",
        d.join("state.safetensors").to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let logits = load(&out).remove("logits").expect("logits").to_f64_vec();
    let best = logits
        .iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > logits[b] { i } else { b });
    assert_eq!(best as i64, tokens[1], "{logits:?}");
}

/// The MLP golden model (conv layers: histories carried between chunks) generates like `tttc
/// generate`; and every error code of the C API comes with its message, never an abort
/// (examples/c/session_errors.c): a missing weights file, a NULL path, a weights file without
/// a tensor or with a tensor of another shape, weight buffers of the wrong length, a NULL
/// session, zero tokens, an input of the wrong length, a token id out of range (in the first
/// chunk and in a later one, which leaves the session unchanged), a state saved
/// by another program, a missing state file, an unwritable path; the session still works
/// after them. Two sessions on two threads at once generate what one generates alone.
#[test]
fn session_library_generates_like_tttc_generate_mlp_and_reports_errors() {
    let dir = check_generation("model_mlp_M");
    let d = dir.path();
    let golden = root().join("tests/golden/model_mlp_M.inputs.safetensors");
    let weights = tttc::runtime::read_safetensors_with_ints(&golden)
        .expect("golden weights")
        .floats;
    let mut missing = weights.clone();
    missing.remove("model.norm.weight");
    tttc::runtime::write_safetensors(&d.join("missing.safetensors"), &missing).expect("write");
    let mut wrong = weights;
    wrong.insert(
        "model.norm.weight".into(),
        tttc::runtime::Tensor::zeros(vec![65], tttc::runtime::ElemType::F32),
    );
    tttc::runtime::write_safetensors(&d.join("wrong.safetensors"), &wrong).expect("write");
    let other = d.join("other_state.safetensors");
    let sample = root().join("examples/data/ttt_linear_sample.safetensors");
    let run = tttc(&[
        "run",
        "examples/ttt_linear.ttt",
        "--inputs",
        sample.to_str().expect("utf-8"),
        "--out",
        d.join("o.safetensors").to_str().expect("utf-8"),
        "--save-state",
        other.to_str().expect("utf-8"),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let errs = Command::new(d.join("session_errors"))
        .arg(&golden)
        .arg(d.join("missing.safetensors"))
        .arg(d.join("wrong.safetensors"))
        .arg(&other)
        .output()
        .expect("session_errors runs");
    let out = String::from_utf8_lossy(&errs.stdout).into_owned();
    assert!(
        errs.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&errs.stderr)
    );
    let code = |case: &str| -> (i32, String) {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{case} ")))
            .unwrap_or_else(|| panic!("no case {case} in\n{out}"));
        let mut parts = line.splitn(3, ' ');
        parts.next();
        let code = parts.next().and_then(|c| c.parse().ok()).expect("a code");
        (code, parts.next().unwrap_or_default().to_string())
    };
    for (case, want, says) in [
        ("new_no_file", 5, "/nonexistent/weights.safetensors"),
        ("new_null_path", 1, "NULL"),
        ("new_missing_tensor", 3, "`model.norm.weight` is missing"),
        ("new_wrong_shape", 3, "has shape [65]"),
        ("new_buffers_wrong_length", 3, "holds 1 elements"),
        ("feed_null_session", 1, "NULL"),
        ("new_good", 0, ""),
        ("set_batch_null_session", 1, "NULL"),
        ("set_batch_not_compiled", 2, "compiled for batch 1"),
        ("set_batch_compiled", 0, ""),
        ("feed_zero_tokens", 1, "at least one token"),
        ("feed_wrong_length", 2, "`input_ids` holds 2 elements"),
        ("feed_id_out_of_range", 2, "out of its range"),
        ("feed_good", 0, ""),
        ("set_batch_after_first_token", 1, "before the first token"),
        ("feed_id_out_of_range_later", 2, "out of its range"),
        ("position", 3, ""),
        ("load_other_program", 4, "saved by program `ttt_linear`"),
        ("load_no_file", 5, "/nonexistent/state.safetensors"),
        ("save_unwritable", 5, "/nonexistent/dir/state.safetensors"),
        ("feed_after_errors", 0, ""),
        ("threads", 0, ""),
    ] {
        let (got, message) = code(case);
        assert_eq!(got, want, "{case}: {message}\n{out}");
        assert!(message.contains(says), "{case}: {message}");
    }
}

/// Compiles the C program `source` with `flags` against `lib{lib}.so` and the header in `dir`
/// into `exe` (found at run time through an rpath); a compile error fails the test.
fn build_c_example(dir: &Path, source: &Path, lib: &str, flags: &[&str], exe: &Path) {
    let cc = Command::new("cc")
        .args(flags)
        .arg("-I")
        .arg(dir)
        .arg(source)
        .arg("-L")
        .arg(dir)
        .arg(format!("-l{lib}"))
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-o")
        .arg(exe)
        .output()
        .expect("cc runs");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
}

/// A batch too large to allocate, given on the command line, is a user error (exit 2) that
/// says so, not a capacity-overflow panic of the recording session.
#[test]
fn session_library_of_an_unallocatable_batch_is_a_user_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("libx.so");
    let r = compile_session(
        "model_linear_T",
        "f32",
        &out,
        &["--set", "B=4611686018427387904"],
    );
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        text(&r).contains("cannot allocate a tensor"),
        "{}",
        text(&r)
    );
    assert!(!out.exists());
}

/// `tttc_session_new_borrowing_buffers` reads the caller's weight buffers in place
/// (tests/c/borrowing.c): a prompt gives the copying constructor's outputs bit for bit; after
/// the caller zeroes its buffers, the borrowing session's next outputs change (it reads the
/// caller's memory, no copy) while a session over buffers one byte off alignment does not
/// (the library copies those).
#[test]
fn session_library_borrows_weight_buffers_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    session_library(d, "model_linear_T", &[], "f32", &[]);
    let header = std::fs::read_to_string(d.join("ttt_lm.h")).expect("header");
    // The weights' order: the header's " *   [i] name [shape]" lines after "Weights, in the order".
    let order: Vec<String> = header
        .split("Weights, in the order")
        .nth(1)
        .expect("a weights list in the header")
        .lines()
        .take_while(|l| !l.trim_start().starts_with("*/"))
        .filter_map(|l| l.trim_start().strip_prefix("*   ["))
        .map(|l| l.split_whitespace().nth(1).expect("a name").to_string())
        .collect();
    assert!(!order.is_empty(), "{header}");
    let golden = root().join("tests/golden/model_linear_T.inputs.safetensors");
    let weights = tttc::runtime::read_safetensors_with_ints(&golden)
        .expect("golden weights")
        .floats;
    for (i, name) in order.iter().enumerate() {
        let t = weights
            .get(name)
            .unwrap_or_else(|| panic!("weight {name}"))
            .cast(tttc::runtime::ElemType::F32);
        let bytes: Vec<u8> = t
            .as_f32()
            .expect("f32")
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(d.join(format!("w{i}.bin")), bytes).expect("write");
    }
    let exe = d.join("borrowing");
    build_c_example(
        d,
        &root().join("tests/c/borrowing.c"),
        "ttt_lm",
        &["-O2", "-Wall", "-Werror"],
        &exe,
    );
    let run = Command::new(&exe).arg(d).output().expect("borrowing runs");
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for check in [
        "created",
        "same_outputs",
        "borrowed_reads_in_place",
        "unaligned_is_copied",
    ] {
        assert!(
            out.lines().any(|l| l == format!("{check} 1")),
            "{check} does not hold:\n{out}"
        );
    }
}

/// `--batch` mistakes are user errors (exit 2) that say what is wrong, and write nothing: a
/// size of 0, and a batch given both by `--batch` and by `--set B=...`.
#[test]
fn session_library_batch_flags_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("libx.so");
    for (extra, says) in [
        (&["--batch", "0"][..], "a batch size is at least 1"),
        (
            &["--batch", "1,2", "--set", "B=2"][..],
            "--batch and --set B=... both give the batch",
        ),
    ] {
        let r = compile_session("model_linear_T", "f32", &out, extra);
        assert_eq!(r.status.code(), Some(2), "{extra:?}: {}", text(&r));
        assert!(text(&r).contains(says), "{extra:?}: {}", text(&r));
        assert!(!out.exists());
    }
}
