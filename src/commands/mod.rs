//! The subcommands, and what they share: settings, precision, compiling with the pipeline,
//! loading and binding inputs, and failures with exit codes.

pub mod bench;
pub mod check;
pub mod compile;
mod compile_ptx;
pub mod cost;
pub mod generate;
mod gpu_bench;
pub mod grad;
pub mod inspect;
pub mod progress;
pub mod run;
pub mod tokenizer;

use clap::ValueEnum;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tttc::ir::{Program, Setting};
use tttc::model_dir::ModelDir;
use tttc::runtime::Tensor;
use tttc::{
    bind_owned, lower_file, read_config_file, Bound, Compiled, DriverError, Precision, Settings,
};

/// A failure with its exit code: 2 for user errors, 1 for internal ones.
pub struct Failure {
    /// What to print.
    pub message: String,
    /// The exit code.
    pub code: u8,
}

impl Failure {
    /// A problem the user can fix (exit code 2).
    pub fn user(message: impl std::fmt::Display) -> Self {
        Failure {
            message: format!("error: {message}"),
            code: 2,
        }
    }

    /// A compiler bug (exit code 1).
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Failure {
            message: format!("internal error (please report): {message}"),
            code: 1,
        }
    }
}

impl From<DriverError> for Failure {
    fn from(e: DriverError) -> Self {
        match &e {
            DriverError::Compile(c) => Failure {
                message: c.render(std::io::stderr().is_terminal()),
                code: 2,
            },
            other if other.is_user_error() => Failure::user(other),
            other => Failure::internal(other),
        }
    }
}

impl From<tttc::stream::StreamError> for Failure {
    fn from(e: tttc::stream::StreamError) -> Self {
        if e.is_user_error() {
            Failure::user(e)
        } else {
            Failure::internal(e)
        }
    }
}

impl From<tttc::ExecError> for Failure {
    fn from(e: tttc::ExecError) -> Self {
        if e.is_user_error() {
            Failure::user(e)
        } else {
            Failure::internal(e)
        }
    }
}

/// `--set` and `--config`.
#[derive(clap::Args, Clone)]
pub struct SettingArgs {
    /// Override a config value or fix a dimension: NAME=VALUE (repeatable), e.g.
    /// --set mini_batch_size=8 --set ttt_base_lr=0.1.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_setting)]
    set: Vec<(String, Setting)>,
    /// A Hugging Face style config.json: keys naming a config or dimension of the program are
    /// used (others ignored); a value that differs from --set is an error.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl SettingArgs {
    /// The `--config` file, if given.
    pub fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// These settings with `model`'s `config.json` as the config file (clap rejects `--config`
    /// with `--model`).
    pub fn with_model(&self, model: Option<&ModelDir>) -> SettingArgs {
        let mut args = self.clone();
        if let Some(m) = model {
            args.config = Some(m.config.clone());
        }
        args
    }
}

/// `--model`: a Hugging Face model folder.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// A Hugging Face model folder: DIR/config.json (as with --config) and the weights from
    /// DIR/model.safetensors or from the shards named by DIR/model.safetensors.index.json.
    /// Composes with --inputs (extra tensors such as input_ids). See docs/models.md.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    model: Option<PathBuf>,
}

impl ModelArgs {
    /// The folder's files, checked to exist (a user error naming the missing one).
    pub fn open(&self) -> Result<Option<ModelDir>, Failure> {
        self.model
            .as_deref()
            .map(ModelDir::open)
            .transpose()
            .map_err(Failure::user)
    }
}

/// `--no-cache` and `--cache-stats`: the compile cache (docs/cache.md).
#[derive(clap::Args)]
pub struct CacheArgs {
    /// Compile without the compile cache (nothing read or written). By default the optimized
    /// program and the LLVM backend's native code are kept between runs in TTTC_CACHE_DIR,
    /// else $XDG_CACHE_HOME/tttc, else ~/.cache/tttc; a directory that cannot be written is an
    /// error. See docs/cache.md.
    #[arg(long)]
    no_cache: bool,
    /// Print on stderr what the compile cache did: entries of each kind loaded and stored,
    /// damaged ones replaced.
    #[arg(long)]
    cache_stats: bool,
}

impl CacheArgs {
    /// Turns the cache on (in its directory) or off for this process.
    pub fn apply(&self) -> Result<(), Failure> {
        if self.no_cache {
            tttc::cache::disable();
        } else {
            tttc::cache::enable(tttc::cache::default_dir().map_err(Failure::user)?);
        }
        Ok(())
    }

    /// With `--cache-stats`, prints what the cache did.
    pub fn report(&self) {
        if !self.cache_stats {
            return;
        }
        match tttc::cache::directory() {
            None => eprintln!("compile cache: off"),
            Some(dir) => {
                let s = tttc::cache::stats();
                eprintln!(
                    "compile cache: code {} loaded, {} compiled and stored; optimized programs \
                     {} loaded, {} stored; {} damaged replaced; kernel programs {} loaded, {} \
                     stored ({})",
                    s.loaded,
                    s.stored,
                    s.programs_loaded,
                    s.programs_stored,
                    s.rejected,
                    s.kernels_loaded,
                    s.kernels_stored,
                    dir.display()
                );
            }
        }
    }
}

/// Floating-point precision of a run.
#[derive(Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    /// Single precision.
    F32,
    /// Double precision.
    F64,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F64 => Precision::F64,
        }
    }
}

/// `--decode-state`: how a streaming session carries an unfinished mini-batch between tokens.
#[derive(Clone, Copy, ValueEnum)]
pub enum DecodeStateArg {
    /// Per state, whichever form touches fewer bytes per token.
    Auto,
    /// The dense partial gradient sums.
    Dense,
    /// The per-token rows of the gradients' outer products where the gradient is one.
    Factored,
}

impl From<DecodeStateArg> for tttc::stream::DecodeState {
    fn from(d: DecodeStateArg) -> Self {
        match d {
            DecodeStateArg::Auto => tttc::stream::DecodeState::Auto,
            DecodeStateArg::Dense => tttc::stream::DecodeState::Dense,
            DecodeStateArg::Factored => tttc::stream::DecodeState::Factored,
        }
    }
}

/// `--tensor-cores`: matmuls on NVIDIA tensor cores with this input format (f32 accumulation).
#[derive(Clone, Copy, ValueEnum)]
pub enum TensorCoresArg {
    /// TensorFloat-32 operands (10 mantissa bits): stated tolerance 2e-3 relative (measured
    /// ≤ 5.7e-4 on the goldens, in emulation).
    Tf32,
    /// bfloat16 operands (7 mantissa bits): stated tolerance 1.5e-2 relative (measured ≤ 4.4e-3
    /// on the goldens, in emulation).
    Bf16,
}

/// The tensor-core opt-in for `precision`: `None` when not asked for; a user error for f64
/// (tensor cores are an f32 opt-in).
pub fn tensor_cores(
    arg: Option<TensorCoresArg>,
    precision: Precision,
) -> Result<Option<tttc::gpu::TensorCores>, Failure> {
    let Some(arg) = arg else {
        return Ok(None);
    };
    let tc = match arg {
        TensorCoresArg::Tf32 => tttc::gpu::TensorCores::Tf32,
        TensorCoresArg::Bf16 => tttc::gpu::TensorCores::Bf16,
    };
    if precision == Precision::F64 {
        return Err(Failure::user(format!(
            "--tensor-cores {} lowers the precision of f32 matmuls; it cannot be used with --precision f64",
            tc.name()
        )));
    }
    Ok(Some(tc))
}

/// `NAME=VALUE`: a positive number, `true`/`false`, or (for string configs) any other text.
fn parse_setting(s: &str) -> Result<(String, Setting), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{s}` has no name before `=`"));
    }
    let text = value.trim();
    let setting = match text {
        "true" => Setting::Bool(true),
        "false" => Setting::Bool(false),
        _ => match text.parse::<f64>() {
            Ok(v) if !v.is_finite() => {
                return Err(format!("`{name}` must be a number, got `{text}`"))
            }
            Ok(v) if v <= 0.0 => return Err(format!("`{name}` must be positive, got {v}")),
            Ok(v) => Setting::Number(v),
            // Text starting like a number is a typo, not a string config's value.
            Err(_)
                if text.is_empty()
                    || text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') =>
            {
                return Err(format!("`{name}` must be a number, got `{text}`"))
            }
            Err(_) => Setting::Text(text.to_string()),
        },
    };
    Ok((name.to_string(), setting))
}

/// Lowers `file` with `--set`/`--config` applied, then runs the pipeline up to `until` (all of
/// it when `None`), keeping snapshots when asked. Returns the result and the merged settings.
pub fn compile(
    file: &Path,
    precision: Precision,
    args: &SettingArgs,
    until: Option<&str>,
    snapshots: bool,
) -> Result<(Compiled, Settings), Failure> {
    compile_with(file, precision, args, until, snapshots, &mut [])
}

/// [`compile`] with more instruments around every stage (`tttc inspect --dump`).
pub fn compile_with(
    file: &Path,
    precision: Precision,
    args: &SettingArgs,
    until: Option<&str>,
    snapshots: bool,
    extra: &mut [&mut dyn tttc::passes::pipeline::Instrument],
) -> Result<(Compiled, Settings), Failure> {
    let set: Settings = args.set.iter().cloned().collect();
    let (lowered, settings) = match &args.config {
        // The config file's keys are matched against the program's names, until applying them
        // brings no new ones.
        Some(config) => tttc::lower_with_config(file, precision, &set, |program| {
            read_config_file(config, program)
        })?,
        None => (lower_file(file, precision, &set)?, set),
    };
    // A failure here is reported by the pipeline's own autodiff pass just below.
    if let Ok(untrained) = tttc::passes::autodiff::untrained_states(&lowered) {
        for state in untrained {
            eprintln!("warning: {state}");
        }
    }
    // Every graph stage, nothing watching them: the optimized program may come from the
    // compile cache (when a command turned it on: docs/cache.md).
    if let (None, false, true, Some(dir)) =
        (until, snapshots, extra.is_empty(), tttc::cache::directory())
    {
        return Ok((optimize_cached(&dir, lowered)?, settings));
    }
    Ok((
        tttc::driver::optimize_with(lowered, until, snapshots, extra)?,
        settings,
    ))
}

/// Every graph stage of `lowered`, or their result from the compile cache in `dir`.
fn optimize_cached(dir: &Path, lowered: Program) -> Result<Compiled, Failure> {
    use tttc::cache;
    let key = cache::program_key(&lowered).map_err(Failure::internal)?;
    let path = cache::entry_path(dir, "graph", &key);
    if let Some(program) = cache::load_program(&path, &key) {
        return Ok(Compiled {
            parsed: None,
            program,
            stages: Vec::new(),
        });
    }
    cache::create_dir(dir).map_err(Failure::user)?;
    let compiled = tttc::driver::optimize(lowered, None, false)?;
    cache::store_program(&path, &key, &compiled.program).map_err(Failure::user)?;
    Ok(compiled)
}

/// Reads the inputs file, warns about tensors the program does not take, and binds the rest.
pub fn load_inputs(
    program: &Program,
    inputs: &Path,
    settings: &Settings,
    precision: Precision,
) -> Result<Bound, Failure> {
    load_tensors(program, None, Some(inputs), settings, precision)
}

/// The tensors of a model folder's weights and of an inputs file (either may be absent; a
/// tensor in both is an error), bound as [`load_inputs`] binds them. The tensors move into
/// the binding (a model's weights are never held twice).
pub fn load_tensors(
    program: &Program,
    model: Option<&ModelDir>,
    inputs: Option<&Path>,
    settings: &Settings,
    precision: Precision,
) -> Result<Bound, Failure> {
    let mut tensors = match model {
        Some(m) => read_model_weights(m, program, precision)?,
        None => BTreeMap::new(),
    };
    let mut sources: Vec<String> = model.iter().map(|m| m.dir.display().to_string()).collect();
    if let Some(path) = inputs {
        let extra = tttc::read_inputs(program, path, precision.elem()).map_err(Failure::user)?;
        if let Some(both) = extra.keys().find(|k| tensors.contains_key(*k)) {
            return Err(Failure::user(format!(
                "`{both}` is both in the model folder's weights ({}) and in {}; remove it from one",
                sources.join(""),
                path.display()
            )));
        }
        tensors.extend(extra);
        sources.push(path.display().to_string());
    }
    let unused = tttc::unused_tensors(program, &tensors);
    if !unused.is_empty() {
        eprintln!(
            "warning: {} has tensors this program does not use (ignored): {}",
            sources.join(" and "),
            unused.join(", ")
        );
    }
    let bound = bind_owned(program, tensors, settings, precision.elem()).map_err(Failure::user)?;
    for w in &bound.warnings {
        eprintln!("warning: {w}");
    }
    Ok(bound)
}

/// A model folder's weights for `program`, with a progress bar over the files on a terminal.
pub fn read_model_weights(
    model: &ModelDir,
    program: &Program,
    precision: Precision,
) -> Result<BTreeMap<String, Tensor>, Failure> {
    let bar = progress::Progress::bar(&format!("loading {}", model.dir.display()));
    let read = model.read_weights(program, precision.elem(), &mut |done, total| {
        bar.set(done, total)
    });
    bar.finish();
    let (weights, copied) = read.map_err(Failure::user)?;
    if let Some(first) = copied.first() {
        // Weights are read in place from the mapped files; unaligned ones cannot be.
        eprintln!(
            "note: {} of {}'s {} weight tensor(s) are not aligned in their file and were copied \
             into memory instead of read in place (the first: `{first}`)",
            copied.len(),
            model.dir.display(),
            weights.len(),
        );
    }
    Ok(weights)
}

/// Whether `a` and `b` name the same existing file (through links, `..` or hard links).
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
            return true;
        }
    }
    let _ = (ma, mb);
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// A user error when the output file `out` (given with `option`) is one of the files the
/// command reads: writing it would destroy that input.
pub fn check_output_path(out: &Path, option: &str, reads: &[&Path]) -> Result<(), Failure> {
    match reads.iter().find(|r| same_file(out, r)) {
        Some(read) => Err(Failure::user(format!(
            "{option} {} is {}, which this command reads: writing it would overwrite it; \
             choose another output file",
            out.display(),
            read.display()
        ))),
        None => Ok(()),
    }
}

/// Checks a stage name given to `--stop-after`: `parse` or a graph stage (what the interpreter
/// runs).
pub fn check_stage(name: &str) -> Result<(), Failure> {
    let names = tttc::passes::pipeline::graph_stage_names();
    if names.contains(&name) {
        Ok(())
    } else {
        Err(Failure::user(format!(
            "unknown stage `{name}`; the stages are: {}",
            names.join(", ")
        )))
    }
}

/// Writes `outputs` to the safetensors file `path` and says so on stderr (names and shapes).
pub(crate) fn write_outputs(
    path: &std::path::Path,
    outputs: &std::collections::BTreeMap<String, tttc::runtime::Tensor>,
) -> Result<(), Failure> {
    tttc::runtime::write_safetensors(path, outputs).map_err(Failure::user)?;
    let names: Vec<String> = outputs
        .iter()
        .map(|(k, t)| format!("{k} {:?}", t.shape()))
        .collect();
    eprintln!("wrote {}: {}", path.display(), names.join(", "));
    Ok(())
}
