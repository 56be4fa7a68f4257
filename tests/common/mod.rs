//! Helpers shared by the integration tests: running the `tttc` binary and comparing tensors.

#![allow(dead_code)]

pub mod compare;
pub mod finite_diff;
pub mod golden;
pub mod random;
pub mod random_model;

// Not every test file uses every helper.
#[allow(unused_imports)]
pub use compare::{assert_close, assert_tensor_close, max_rel_error};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tttc::runtime::{read_safetensors, Tensor};

/// The project root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The compile cache the tests' `tttc` runs share (under cargo's scratch directory for
/// integration tests, never the user's `~/.cache`): it is safe to share (entries are keyed by
/// everything that determines them and written atomically), and sharing it exercises it.
pub fn test_cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tttc-compile-cache")
}

/// The `tttc` binary as a command, run in the project root with the tests' compile cache.
pub fn tttc_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tttc"));
    c.current_dir(root())
        .env("TTTC_CACHE_DIR", test_cache_dir());
    c
}

/// Runs the `tttc` binary with `args`.
pub fn tttc(args: &[&str]) -> Output {
    tttc_command()
        .args(args)
        .output()
        .expect("the tttc binary runs")
}

/// stdout + stderr as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reads a safetensors file that the test expects to be valid.
pub fn load(path: &Path) -> BTreeMap<String, Tensor> {
    read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `tttc run PROGRAM --inputs INPUTS --precision PRECISION --backend BACKEND EXTRA...`, its
/// outputs read back; a failed run fails the calling test with tttc's output.
pub fn run_program(
    program: &Path,
    inputs: &Path,
    backend: &str,
    precision: &str,
    extra: &[&str],
) -> BTreeMap<String, Tensor> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.safetensors");
    let (program_s, inputs_s, out_s) = (
        program.display().to_string(),
        inputs.display().to_string(),
        out.display().to_string(),
    );
    let mut args = vec![
        "run",
        &program_s,
        "--inputs",
        &inputs_s,
        "--out",
        &out_s,
        "--precision",
        precision,
        "--backend",
        backend,
    ];
    args.extend(extra);
    let r = tttc(&args);
    assert!(
        r.status.success(),
        "{program_s} {inputs_s} {backend} {precision} {extra:?}: {}",
        text(&r)
    );
    load(&out)
}

/// Every tensor of `expected` against the output of the same name in `got`, within
/// `tolerance` relative to max |expected| ([`assert_tensor_close`]); a missing output fails.
pub fn assert_outputs_close(
    what: &str,
    got: &BTreeMap<String, Tensor>,
    expected: &BTreeMap<String, Tensor>,
    tolerance: f64,
) {
    for (name, want) in expected {
        let got = got
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no output `{name}`"));
        assert_tensor_close(&format!("{what}: {name}"), got, want, tolerance);
    }
}

/// Streams `chunks` through one session whole, and through another that is saved to `state`
/// after the first two chunks and loaded into a fresh session (which must then stand at
/// `resume_at` tokens); every later chunk's outputs must equal the whole session's bit for bit.
/// Returns the resumed session's outputs of the last chunk.
pub fn assert_resumes_exactly(
    new_session: impl Fn() -> tttc::stream::Session,
    chunks: &[BTreeMap<String, Tensor>],
    state: &Path,
    resume_at: usize,
    what: &str,
) -> BTreeMap<String, Tensor> {
    let (mut whole, mut first) = (new_session(), new_session());
    for chunk in &chunks[..2] {
        whole.feed(chunk).expect("feed");
        first.feed(chunk).expect("feed");
    }
    first.save(state).expect("save");
    drop(first);
    let mut resumed = new_session();
    resumed.load(state).expect("load");
    assert_eq!(resumed.position(), resume_at, "{what}: position after load");
    let mut last = BTreeMap::new();
    for chunk in &chunks[2..] {
        let want = whole.feed(chunk).expect("feed");
        last = resumed.feed(chunk).expect("feed");
        for (name, w) in &want {
            assert_tensor_close(&format!("{what} resumed: {name}"), &last[name], w, 0.0);
        }
    }
    last
}

/// `program` (f64, default settings) streamed on every session backend: `inputs` bound, the
/// token inputs (which must include `streamed`) cut into chunks of `sizes`, saved after the first
/// two chunks and resumed in a fresh session that must stand at `resume_at` tokens and then
/// match the uninterrupted one bit for bit ([`assert_resumes_exactly`]). `check(what, last)`
/// gets a label (`label` and the backend's name) and the resumed session's outputs of the last
/// chunk.
pub fn check_resumed_sessions(
    program: &tttc::ir::Program,
    inputs: &BTreeMap<String, Tensor>,
    (sizes, resume_at): (&[usize], usize),
    (label, streamed): (&str, &[&str]),
    check: impl Fn(&str, &BTreeMap<String, Tensor>),
) {
    let settings = tttc::Settings::default();
    let precision = tttc::Precision::F64;
    let bound = tttc::bind(program, inputs, &settings, precision.elem()).expect("bind");
    let plan = tttc::stream::plan::plan(program).expect("plan");
    for name in streamed {
        assert!(plan.token_inputs.contains_key(*name), "`{name}` streams");
    }
    let (tokens, weights): (BTreeMap<_, _>, BTreeMap<_, _>) = bound
        .inputs
        .into_iter()
        .partition(|(k, _)| plan.token_inputs.contains_key(k));
    let chunks = tttc::stream::split_chunks(&tokens, &plan.token_inputs, sizes).expect("chunks");
    let dir = tempfile::tempdir().expect("tempdir");
    for backend in session_backends() {
        let new_session = || {
            tttc::stream::Session::new(
                backend,
                program.clone(),
                weights.clone(),
                settings.clone(),
                precision,
            )
            .expect("session")
        };
        let what = format!("{label} {}", backend.name()).trim().to_string();
        let state = dir.path().join(format!("{}.state", backend.name()));
        let last = assert_resumes_exactly(new_session, &chunks, &state, resume_at, &what);
        check(&what, &last);
    }
}

/// The built backends that run streaming sessions in process ([`backends`] without `ptx`).
pub fn session_backends() -> Vec<tttc::Backend> {
    backends()
        .into_iter()
        .filter_map(|b| match b {
            "interp" => Some(tttc::Backend::Interp),
            "llvm" => Some(tttc::Backend::Llvm),
            "cranelift" => Some(tttc::Backend::Cranelift),
            _ => None,
        })
        .collect()
}

/// max |got − expected| / max |expected|, in f64. A shape mismatch, or a NaN or an infinity
/// not matched by the same value, fails the calling test (see [`compare`]).
pub fn rel_error(got: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(got.shape(), expected.shape(), "shape mismatch");
    max_rel_error(&got.to_f64_vec(), &expected.to_f64_vec())
        .unwrap_or_else(|why| panic!("{why}"))
        .0
}

/// The backends this build of tttc has, by their `--backend` names. `ptx` needs a GPU, so it
/// joins only when `TTTC_TEST_PTX=1` (as `scripts/gpu_check.sh` sets it), and then alone when
/// `TTTC_TEST_PTX=only`.
pub fn backends() -> Vec<&'static str> {
    let ptx = std::env::var("TTTC_TEST_PTX").unwrap_or_default();
    if ptx == "only" {
        return vec!["ptx"];
    }
    let mut b = vec!["interp"];
    if cfg!(feature = "llvm") {
        b.push("llvm");
    }
    if cfg!(feature = "cranelift") {
        b.push("cranelift");
    }
    if ptx == "1" {
        b.push("ptx");
    }
    b
}
