//! The checks behind the fuzz targets, as plain functions of their input: a check panics when
//! it finds a bug and returns quietly otherwise (a rejected input is not a bug).
//!
//! They depend on nothing but `tttc` and `std`, so that `tests/fuzz_regressions.rs` runs the
//! same code on the saved findings in the ordinary test suite (it includes this file by path).
//!
//! - [`parse_lower`]: any bytes as a `.ttt` file: compile (parse, lower), print, run the whole
//!   pass pipeline. Errors are fine; a panic, abort or hang is a finding.
//! - [`safetensors_bind`]: any bytes as the inputs file of a fixed program, through what
//!   `tttc run` does (read, bind, run on the interpreter and Cranelift, stream in chunks).
//! - [`differential`]: a generated, well-typed program ([`DiffCase`]) run on every stage of the
//!   pipeline (interpreter), on every built backend, and streamed in chunks: all must agree
//!   within [`TOLERANCE`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tttc::ir::{DType, Dim, Program};
use tttc::runtime::Tensor;
use tttc::{Backend, Precision, Settings};

/// The name fuzzed program text is compiled under: imports resolve from the current directory.
pub const FUZZ_FILE: &str = "fuzz_input.ttt";

/// Compiles `bytes` as a `.ttt` file in f32, prints the lowered program (text and DOT), and runs
/// the whole pass pipeline on it. Compile errors are rendered (with and without colour), pass
/// errors formatted: both are outcomes, not findings.
pub fn parse_lower(bytes: &[u8]) {
    let settings = Settings::new();
    let program = match tttc::ir::syntax::compile_bytes(FUZZ_FILE, bytes, DType::F32, &settings) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.render(false);
            let _ = e.render(true);
            return;
        }
    };
    let _ = tttc::ir::printer::print_program(&program);
    let _ = tttc::ir::dot::program_to_dot(&program);
    match tttc::optimize(program, None, false) {
        Ok(compiled) => {
            let _ = tttc::ir::printer::print_program(&compiled.program);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The program [`safetensors_bind`] binds its inputs to.
pub const BIND_PROGRAM: &str = "examples/ttt_linear.ttt";

/// `BIND_PROGRAM` compiled in f32 and f64, once.
fn bind_programs(root: &Path) -> &'static [(Precision, Program); 2] {
    static PROGRAMS: OnceLock<[(Precision, Program); 2]> = OnceLock::new();
    PROGRAMS.get_or_init(|| {
        let path = root.join(BIND_PROGRAM);
        let compile = |p: Precision| {
            let program = tttc::compile_file(&path, p, &Settings::new())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (p, program)
        };
        [compile(Precision::F32), compile(Precision::F64)]
    })
}

/// A scratch file for this process (the inputs reader takes a path, as `tttc run` does).
fn scratch_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("tttc-fuzz-{}.safetensors", std::process::id()))
    })
}

/// `bytes` as the inputs file of `BIND_PROGRAM` (`root` is the repository), read and bound
/// in f32 and f64 as `tttc run` does, then — when they bind — run one-shot on the interpreter
/// and Cranelift and streamed in two chunks on the interpreter. Reading and binding errors are
/// outcomes; an error after the inputs bound (the backends run only checked inputs) and any
/// panic are findings.
pub fn safetensors_bind(root: &Path, bytes: &[u8]) {
    let path = scratch_file();
    std::fs::write(path, bytes).expect("the scratch file can be written");
    for (precision, program) in bind_programs(root) {
        let tensors = match tttc::read_inputs(program, path, precision.elem()) {
            Ok(t) => t,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        let _ = tttc::unused_tensors(program, &tensors);
        let settings = Settings::new();
        let bound = match tttc::bind(program, &tensors, &settings, precision.elem()) {
            Ok(b) => b,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        for backend in [Backend::Interp, Backend::Cranelift] {
            if !backend.is_built() {
                continue;
            }
            if let Err(e) =
                tttc::prepare(backend, &bound.program).and_then(|p| p.run(&bound.inputs))
            {
                panic!("{} failed on bound inputs: {e}", backend.name());
            }
        }
        let plan = tttc::stream::plan::plan(program).expect("the example streams");
        let Some(len) = plan.sequence_length(&bound.inputs) else {
            continue;
        };
        let sizes: Vec<usize> = [len / 2, len - len / 2]
            .into_iter()
            .filter(|&n| n > 0)
            .collect();
        if let Err(e) = tttc::stream::run_chunked(
            Backend::Interp,
            program,
            &bound.inputs,
            &settings,
            *precision,
            &sizes,
        ) {
            if !e.is_user_error() {
                panic!("streaming {sizes:?} failed on bound inputs: {e}");
            }
        }
    }
}

/// The largest relative difference [`differential`] accepts between two runs of one program
/// (f64; max |a − b| over max |reference|). The runs differ only in the order of sums (the
/// dual form against the primal form, streamed token steps against whole mini-batches, LLVM's
/// FMA contraction): rounding at 1e-16, carried through a dozen gradient steps of models at
/// most a few layers deep. 1e-9 leaves room for that and nothing else.
pub const TOLERANCE: f64 = 1e-9;

/// Beyond this magnitude a reference output is too ill-conditioned to compare at
/// [`TOLERANCE`] (the random model diverged); the case is skipped.
pub const LARGEST_COMPARED: f64 = 1e6;

/// One differential test case: a program, its dimensions, the seed of its input values and a
/// chunking of its sequence. Its text form ([`DiffCase::to_text`]) is itself a `.ttt` file:
/// the parameters are `#` comments in front of the program.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffCase {
    /// The program (`inputs` per `B`, `H`, `L` and the config `mini_batch_size`).
    pub source: String,
    /// Batch size `B`.
    pub batch: usize,
    /// Heads `H`.
    pub heads: usize,
    /// Sequence length `L`.
    pub len: usize,
    /// Mini-batch size (the config `mini_batch_size`).
    pub mini_batch: usize,
    /// The seed of every input's values.
    pub seed: u64,
    /// Chunk sizes adding up to `len`.
    pub chunks: Vec<usize>,
    /// The native backend that also streams (the interpreter always does).
    pub stream_on: Backend,
}

impl DiffCase {
    /// The case as `.ttt` text with its parameters in a comment header.
    pub fn to_text(&self) -> String {
        format!(
            "# differential case: B H L K = {} {} {} {}\n# seed = {}\n# chunks = {}\n# stream on = {}\n{}",
            self.batch,
            self.heads,
            self.len,
            self.mini_batch,
            self.seed,
            self.chunks
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(","),
            self.stream_on.name(),
            self.source
        )
    }

    /// Reads [`DiffCase::to_text`]'s form back.
    pub fn from_text(text: &str) -> Result<DiffCase, String> {
        let mut lines = text.lines();
        let mut header = |prefix: &str| -> Result<String, String> {
            let line = lines.next().unwrap_or_default();
            line.strip_prefix(prefix)
                .map(str::to_string)
                .ok_or_else(|| format!("expected `{prefix}...`, got `{line}`"))
        };
        let number = |s: &str| s.trim().parse::<usize>().map_err(|e| format!("`{s}`: {e}"));
        let dims: Vec<usize> = header("# differential case: B H L K = ")?
            .split_whitespace()
            .map(number)
            .collect::<Result<_, _>>()?;
        let [batch, heads, len, mini_batch] = dims[..] else {
            return Err(format!("expected 4 dimensions, got {dims:?}"));
        };
        let seed = header("# seed = ")?
            .trim()
            .parse::<u64>()
            .map_err(|e| e.to_string())?;
        let chunks = header("# chunks = ")?
            .split(',')
            .map(number)
            .collect::<Result<_, _>>()?;
        let stream_on = match header("# stream on = ")?.trim() {
            "llvm" => Backend::Llvm,
            "cranelift" => Backend::Cranelift,
            other => return Err(format!("unknown backend `{other}`")),
        };
        let source = text.splitn(5, '\n').nth(4).unwrap_or_default().to_string();
        Ok(DiffCase {
            source,
            batch,
            heads,
            len,
            mini_batch,
            seed,
            chunks,
            stream_on,
        })
    }
}

/// Deterministic values in [-scale, scale) from `seed` (a 64-bit LCG).
fn values(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A salt per input name, so that inputs of the same shape differ.
fn salt(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Inputs for every input of `program`, with `B`, `H`, `L`, `mini_batch_size` from `case`;
/// values in [-0.5, 0.5).
fn case_inputs(program: &Program, case: &DiffCase) -> BTreeMap<String, Tensor> {
    let dims: BTreeMap<&str, usize> = [
        ("B", case.batch),
        ("H", case.heads),
        ("L", case.len),
        ("mini_batch_size", case.mini_batch),
    ]
    .into();
    let g = &program.graph;
    let mut inputs = BTreeMap::new();
    for &id in g.inputs() {
        let (Some(name), Some(ty)) = (g.input_name(id), g.tensor_type(id)) else {
            continue;
        };
        let shape: Vec<usize> = ty
            .shape
            .0
            .iter()
            .map(|d| match d {
                Dim::Known(n) => *n,
                Dim::Sym(s) => *dims
                    .get(s.as_str())
                    .unwrap_or_else(|| panic!("generated input `{name}` has dimension `{s}`")),
            })
            .collect();
        let n = shape.iter().product();
        let t = Tensor::from_f64(shape, values(case.seed ^ salt(name), n, 0.5)).expect("sizes");
        inputs.insert(name.to_string(), t);
    }
    inputs
}

/// max |got − want| / max |want| over every output of `want`; `got` must have the same
/// outputs and shapes.
fn max_rel_error(
    got: &BTreeMap<String, Tensor>,
    want: &BTreeMap<String, Tensor>,
) -> Result<f64, String> {
    let scale = want
        .values()
        .flat_map(|t| t.to_f64_vec())
        .fold(0.0f64, |m, x| m.max(x.abs()));
    let mut worst = 0.0f64;
    for (name, w) in want {
        let g = got
            .get(name)
            .ok_or_else(|| format!("output `{name}` missing"))?;
        if g.shape() != w.shape() {
            return Err(format!(
                "output `{name}`: shape {:?}, expected {:?}",
                g.shape(),
                w.shape()
            ));
        }
        for (a, b) in g.to_f64_vec().iter().zip(w.to_f64_vec()) {
            let d = (a - b).abs();
            if !d.is_finite() {
                return Err(format!("output `{name}`: {a} against {b}"));
            }
            worst = worst.max(d);
        }
    }
    if got.len() != want.len() {
        return Err(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    Ok(worst / scale.max(f64::MIN_POSITIVE))
}

/// Runs `case` (f64): every stage of the pipeline from `autodiff` on the interpreter, the
/// whole pipeline on every built backend, and the whole sequence streamed in `case.chunks` on
/// the interpreter and on `case.stream_on`; every result must equal the interpreter's one-shot
/// result of the whole pipeline within [`TOLERANCE`]. A case whose reference output is not
/// finite or larger than [`LARGEST_COMPARED`] is skipped. Panics on any disagreement, and on
/// any error: the generated programs are valid, so an error is a bug (of the generator or of
/// tttc) too. Returns whether the case was compared.
pub fn differential(case: &DiffCase) -> bool {
    let fail = |what: String| -> ! { panic!("{what}\n--- case ---\n{}", case.to_text()) };
    let settings: Settings = [(
        "mini_batch_size".to_string(),
        (case.mini_batch as f64).into(),
    )]
    .into_iter()
    .collect();
    let lowered =
        tttc::ir::syntax::compile("differential.ttt", &case.source, DType::F64, &settings)
            .unwrap_or_else(|e| {
                fail(format!(
                    "the generated program does not compile:\n{}",
                    e.render(false)
                ))
            });
    let compiled = tttc::optimize(lowered, None, true)
        .unwrap_or_else(|e| fail(format!("the pipeline failed: {e}")));
    let program = &compiled.program;
    let tensors = case_inputs(program, case);
    let elem = Precision::F64.elem();
    let bound = tttc::bind(program, &tensors, &settings, elem)
        .unwrap_or_else(|e| fail(format!("binding failed: {e}")));
    let run = |backend: Backend, p: &Program, inputs: &BTreeMap<String, Tensor>| {
        tttc::prepare(backend, p)
            .and_then(|prepared| prepared.run(inputs))
            .unwrap_or_else(|e| fail(format!("{} failed: {e}", backend.name())))
    };
    let reference = run(Backend::Interp, &bound.program, &bound.inputs);
    let magnitude = reference
        .values()
        .flat_map(|t| t.to_f64_vec())
        .fold(0.0f64, |m, x| {
            if x.is_finite() {
                m.max(x.abs())
            } else {
                f64::INFINITY
            }
        });
    if magnitude > LARGEST_COMPARED {
        return false;
    }
    let check = |what: &str, got: &BTreeMap<String, Tensor>| match max_rel_error(got, &reference) {
        Ok(err) if err <= TOLERANCE => {}
        Ok(err) => fail(format!(
            "{what} differs from the interpreter's one-shot result: {err:e} > {TOLERANCE:e}"
        )),
        Err(e) => fail(format!("{what}: {e}")),
    };
    for stage in &compiled.stages {
        let snapshot = stage
            .snapshot
            .as_ref()
            .and_then(|ir| ir.graph())
            .expect("graph snapshots were asked for");
        let staged = tttc::bind(snapshot, &tensors, &settings, elem)
            .unwrap_or_else(|e| fail(format!("binding after {} failed: {e}", stage.name)));
        let got = run(Backend::Interp, &staged.program, &staged.inputs);
        check(&format!("the interpreter after `{}`", stage.name), &got);
    }
    for backend in [Backend::Cranelift, Backend::Llvm] {
        if backend.is_built() {
            check(backend.name(), &run(backend, &bound.program, &bound.inputs));
        }
    }
    for backend in [Backend::Interp, case.stream_on] {
        if !backend.is_built() {
            continue;
        }
        let got = tttc::stream::run_chunked(
            backend,
            program,
            &bound.inputs,
            &settings,
            Precision::F64,
            &case.chunks,
        )
        .unwrap_or_else(|e| fail(format!("streaming on {} failed: {e}", backend.name())));
        check(
            &format!("{} streamed in chunks {:?}", backend.name(), case.chunks),
            &got,
        );
    }
    true
}
