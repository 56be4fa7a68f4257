//! From source to machine code through the one pipeline (`tttc_passes::pipeline`): parse and
//! lower the `.ttt` file, run the graph stages ([`optimize`]), and — once the caller has bound
//! the program to its tensors' shapes ([`crate::bind`]) — the kernel stages ([`lower`],
//! [`kernel_program`]) and code generation ([`generate_code`]).

use std::path::Path;
use std::time::Duration;
use tttc_ir::kernel::KernelProgram;
use tttc_ir::syntax::CompileError;
use tttc_ir::{DType, Program, Setting};
use tttc_passes::pipeline::{
    Codegen, Instrument, Ir, IrForm, Pipeline, Snapshots, Span, Target, Timer, CODEGEN,
};
use tttc_passes::PassError;
use tttc_runtime::ElemType;

/// Floating-point precision of a whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Single precision (the default).
    #[default]
    F32,
    /// Double precision.
    F64,
}

impl Precision {
    /// The IR element type.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }

    /// The runtime element type.
    pub fn elem(self) -> ElemType {
        match self {
            Precision::F32 => ElemType::F32,
            Precision::F64 => ElemType::F64,
        }
    }
}

/// Why a program could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The program is malformed.
    #[error("{0}")]
    Compile(#[from] CompileError),
    /// A pass failed (a compiler bug).
    #[error("internal compiler error: {0}")]
    Pass(#[from] tttc_passes::PassError),
    /// The program's gradient program could not be built (`tttc grad`, [`gradient`]).
    #[error("differentiating the program: {0}")]
    Gradient(#[source] tttc_passes::autodiff::AutodiffError),
    /// A `--config` file cannot be used.
    #[error("config file {path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// `--set` and `--config` disagree.
    #[error("conflicting values for `{name}`: {set} from --set, {file} from the config file")]
    Conflict {
        /// The setting.
        name: String,
        /// The `--set` value.
        set: Setting,
        /// The config file's value.
        file: Setting,
    },
}

impl DriverError {
    /// Whether the user can fix it (exit code 2) rather than a compiler bug (exit code 1).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, DriverError::Pass(_))
    }
}

/// Named values from `--set` or a config file: configs (numbers, booleans, strings) and
/// dimensions.
pub type Settings = tttc_ir::Settings;

/// Compiles a `.ttt` file: parse, lower (with `settings` applied to configs), then every graph
/// stage of the pipeline (autodiff, primal form, dual form, simplification), verifying after
/// every stage.
pub fn compile_file(
    path: &Path,
    precision: Precision,
    settings: &Settings,
) -> Result<Program, DriverError> {
    finish(lower_file(path, precision, settings)?)
}

/// Compiles program text (`file` names it in diagnostics and locates its imports).
pub fn compile_source(
    file: &str,
    text: &str,
    precision: Precision,
    settings: &Settings,
) -> Result<Program, DriverError> {
    finish(tttc_ir::syntax::compile(
        file,
        text,
        precision.dtype(),
        settings,
    )?)
}

/// Reads a Hugging Face style `config.json`: the values of keys that name one of `program`'s
/// settings (configs or dimensions) — numbers, booleans (`"share_qk": true`) and strings
/// (`"ttt_layer_type": "mlp"`). Other keys are ignored; a known key with another kind of value
/// (null, a list, an object) is an error. Whether the kind fits the setting is checked when the
/// program is compiled with the settings.
pub fn read_config_file(path: &Path, program: &Program) -> Result<Settings, DriverError> {
    let fail = |message: String| DriverError::Config {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    // Duplicate keys are an error naming the key (a JSON map would keep the last silently).
    let object = tttc_runtime::parse_json_object(&text)
        .map_err(|e| fail(format!("not a valid JSON object: {e}")))?;
    let names = program.setting_names();
    let mut settings = Settings::new();
    for (key, value) in &object.0 {
        if !names.contains(key) {
            continue;
        }
        let setting = match value {
            serde_json::Value::Bool(b) => Setting::Bool(*b),
            serde_json::Value::String(s) => Setting::Text(s.clone()),
            other => Setting::Number(other.as_f64().ok_or_else(|| {
                fail(format!(
                    "`{key}` must be a number, a boolean or a string, got {value}"
                ))
            })?),
        };
        settings.insert(key.clone(), setting);
    }
    Ok(settings)
}

/// `--set` values over a config file's; a name given differently by both is an error.
pub fn merge_settings(set: &Settings, file: &Settings) -> Result<Settings, DriverError> {
    let mut merged = file.clone();
    for (name, value) in set {
        if let Some(other) = file.get(name) {
            if other != value {
                return Err(DriverError::Conflict {
                    name: name.clone(),
                    set: value.clone(),
                    file: other.clone(),
                });
            }
        }
        merged.insert(name.clone(), value.clone());
    }
    Ok(merged)
}

/// Most rounds of [`lower_with_config`]: each round can only bring the names that one more
/// applied setting unlocks (an `if` on a config), so a handful is plenty; more means the
/// program's settings never settle.
const CONFIG_ROUNDS: usize = 8;

/// Lowers `path` with the `--set` values `set` and the settings a config supplies.
///
/// `read_config` returns the config's values for the names the program has (it is given the
/// program lowered so far, as [`read_config_file`] takes it). Lowering again with them applied can
/// bring new names — `ttt_layer_type = "mlp"` brings the dimension `mlp_width` — so this repeats
/// until the settings stop changing, and returns the program lowered with them and the settings.
pub fn lower_with_config<E: From<DriverError>>(
    path: &Path,
    precision: Precision,
    set: &Settings,
    mut read_config: impl FnMut(&Program) -> Result<Settings, E>,
) -> Result<(Program, Settings), E> {
    let mut settings = set.clone();
    let mut lowered = lower_file(path, precision, &settings)?;
    for _ in 0..CONFIG_ROUNDS {
        let merged = merge_settings(set, &read_config(&lowered)?)?;
        if merged == settings {
            return Ok((lowered, settings));
        }
        settings = merged;
        lowered = lower_file(path, precision, &settings)?;
    }
    Err(DriverError::Config {
        path: path.display().to_string(),
        message: format!(
            "the program's settings did not settle after {CONFIG_ROUNDS} rounds of applying the \
             config (each round's settings name new ones)"
        ),
    }
    .into())
}

fn finish(program: Program) -> Result<Program, DriverError> {
    Ok(optimize(program, None, false)?.program)
}

/// What one stage did.
#[derive(Debug, Clone)]
pub struct StageReport {
    /// The stage's name.
    pub name: &'static str,
    /// Its wall time (the verifier and the other instruments excluded).
    pub elapsed: Duration,
    /// The IR after it, when snapshots were requested.
    pub snapshot: Option<Ir>,
}

/// Pairs the [`Timer`]'s times with the [`Snapshots`] (taken of the same stages, in order).
fn reports(timer: Timer, snapshots: Option<Snapshots>) -> Vec<StageReport> {
    let mut taken = snapshots.map(|s| s.after.into_iter());
    timer
        .times
        .into_iter()
        .map(|(name, elapsed)| StageReport {
            name,
            elapsed,
            snapshot: taken.as_mut().and_then(Iterator::next).map(|(_, ir)| ir),
        })
        .collect()
}

/// A program after (some of) the graph stages, with what each stage did.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The program as lowered from the source, before any stage (kept with snapshots).
    pub parsed: Option<Program>,
    /// The program after the last stage run.
    pub program: Program,
    /// One report per stage run.
    pub stages: Vec<StageReport>,
}

/// Runs the graph stages of the pipeline on a lowered program, up to and including `until`
/// (all of them when `None`); `snapshots` keeps the program after every stage.
pub fn optimize(
    program: Program,
    until: Option<&str>,
    snapshots: bool,
) -> Result<Compiled, DriverError> {
    optimize_with(program, until, snapshots, &mut [])
}

/// [`optimize`] with more instruments around every stage (such as
/// [`tttc_passes::pipeline::Dump`]).
pub fn optimize_with(
    program: Program,
    until: Option<&str>,
    snapshots: bool,
    extra: &mut [&mut dyn Instrument],
) -> Result<Compiled, DriverError> {
    run_graph_stages(
        &Pipeline::new(Target::Cpu),
        program,
        until,
        snapshots,
        extra,
    )
}

/// Runs the graph stages of `pipeline` on `program` up to and including `until` (all when
/// `None`; an unknown name is an error listing the stages), keeping the program before them in
/// `parsed` when `snapshots` is set.
fn run_graph_stages(
    pipeline: &Pipeline,
    program: Program,
    until: Option<&str>,
    snapshots: bool,
    extra: &mut [&mut dyn Instrument],
) -> Result<Compiled, DriverError> {
    let graph_stages = pipeline.graph_stage_names();
    let until: &'static str = match until {
        Some(u) => graph_stages
            .iter()
            .copied()
            .find(|s| *s == u)
            .ok_or_else(|| PassError::UnknownStage {
                name: u.to_string(),
                stages: graph_stages.join(", "),
            })?,
        None => graph_stages.last().copied().unwrap_or_default(),
    };
    let parsed = snapshots.then(|| program.clone());
    let (ir, stages) = run_instrumented(
        pipeline,
        Ir::Graph(program),
        Span::until(until),
        snapshots,
        extra,
    )?;
    let Ir::Graph(program) = ir else {
        return Err(DriverError::Pass(PassError::WrongIr {
            stage: until,
            expected: IrForm::Graph,
            found: IrForm::Kernel,
        }));
    };
    Ok(Compiled {
        parsed,
        program,
        stages,
    })
}

/// Runs `span` of `pipeline` under a [`Timer`] (innermost), optional [`Snapshots`], and `extra`.
fn run_instrumented(
    pipeline: &Pipeline,
    ir: Ir,
    span: Span<'_>,
    snapshots: bool,
    extra: &mut [&mut dyn Instrument],
) -> Result<(Ir, Vec<StageReport>), PassError> {
    let mut timer = Timer::default();
    let mut snaps = snapshots.then(Snapshots::default);
    let ir = {
        let mut instruments: Vec<&mut dyn Instrument> = Vec::with_capacity(extra.len() + 2);
        for i in extra.iter_mut() {
            instruments.push(&mut **i);
        }
        if let Some(s) = snaps.as_mut() {
            instruments.push(s);
        }
        instruments.push(&mut timer);
        pipeline.run(ir, span, &mut instruments)?
    };
    Ok((ir, reports(timer, snaps)))
}

/// The gradient program of `program` (which went through every graph stage): the
/// vector-Jacobian product for cotangents of its `outputs` with respect to every
/// floating-point input (`tttc_passes::autodiff::grad_program`, a checkpoint every
/// `checkpoint_every` mini-batches), then the graph stages of the gradient pipeline
/// ([`Pipeline::gradient`]: `dual_form` and `simplify` on every scan backward's `step_vjp`,
/// `simplify` on the main graph) up to and including `until` (all when `None`). `parsed`
/// holds the gradient program before those stages when `snapshots` is set.
pub fn gradient(
    program: &Program,
    outputs: &[String],
    checkpoint_every: usize,
    until: Option<&str>,
    snapshots: bool,
) -> Result<Compiled, DriverError> {
    let grad = tttc_passes::autodiff::grad_program(program, outputs, checkpoint_every)
        .map_err(DriverError::Gradient)?;
    run_graph_stages(
        &Pipeline::gradient(Target::Cpu),
        grad,
        until,
        snapshots,
        &mut [],
    )
}

/// The gradient program of `program` for cotangents of `outputs`, also computing the outputs,
/// after the graph stages, cut at its cotangents into a forward part (outputs and residuals)
/// and a backward part (residuals and cotangents → gradients): see
/// [`tttc_passes::residuals`].
pub fn split_gradient(
    program: &Program,
    outputs: &[String],
    checkpoint_every: usize,
) -> Result<tttc_passes::residuals::SplitGradient, DriverError> {
    let grad =
        tttc_passes::autodiff::grad_program_keeping_outputs(program, outputs, checkpoint_every)
            .map_err(DriverError::Gradient)?;
    let optimized =
        run_graph_stages(&Pipeline::gradient(Target::Cpu), grad, None, false, &mut [])?.program;
    let cts = tttc_passes::autodiff::cotangent_input_names(program, outputs);
    tttc_passes::residuals::split_at_cotangents(&optimized, outputs, &cts)
        .map_err(DriverError::Gradient)
}

/// A bound program after (some of) the kernel stages, with what each stage did.
#[derive(Debug, Clone)]
pub struct Lowered {
    /// The kernel program after the last stage run.
    pub program: KernelProgram,
    /// One report per stage run.
    pub stages: Vec<StageReport>,
}

/// Runs the kernel stages for `target` (`lower_kernel`, then `outline` for CPUs or
/// `gpu_schedule` for GPUs) on a bound program (every dimension known: see [`crate::bind`])
/// that went through every graph stage, up to and including `until` (all when `None`).
pub fn lower(
    bound: Program,
    target: Target,
    until: Option<&str>,
    snapshots: bool,
    extra: &mut [&mut dyn Instrument],
) -> Result<Lowered, DriverError> {
    let pipeline = Pipeline::new(target);
    let span = Span {
        until,
        ..Span::after_graph(&pipeline)
    };
    let (ir, stages) = run_instrumented(&pipeline, Ir::Graph(bound), span, snapshots, extra)?;
    match ir {
        Ir::Kernel(program) => Ok(Lowered { program, stages }),
        Ir::Graph(_) => Err(DriverError::Pass(PassError::WrongIr {
            stage: "lower_kernel",
            expected: IrForm::Kernel,
            found: IrForm::Graph,
        })),
    }
}

/// The kernel program of a bound, optimized program for `target`: the kernel stages of the
/// pipeline, verified after each.
pub fn kernel_program(bound: &Program, target: Target) -> Result<KernelProgram, PassError> {
    let pipeline = Pipeline::new(target);
    let ir = pipeline.run(
        Ir::Graph(bound.clone()),
        Span::after_graph(&pipeline),
        &mut [],
    )?;
    match ir {
        Ir::Kernel(k) => Ok(k),
        Ir::Graph(_) => Err(PassError::WrongIr {
            stage: "lower_kernel",
            expected: IrForm::Kernel,
            found: IrForm::Graph,
        }),
    }
}

/// Machine code for a bound, optimized program: the kernel stages for `target`, then
/// `generate` as the pipeline's last stage ([`CODEGEN`]). The outer error is a stage's (a
/// compiler bug), the inner the code generator's.
pub fn generate_code<C, E>(
    bound: &Program,
    target: Target,
    generate: &dyn Fn(&KernelProgram) -> Result<C, E>,
) -> Result<Result<C, E>, PassError> {
    let pipeline = Pipeline::new(target);
    let codegen = Codegen {
        name: CODEGEN,
        generate,
    };
    pipeline.generate(
        Ir::Graph(bound.clone()),
        pipeline.last_graph_stage(),
        &codegen,
        &mut [],
    )
}

/// Parses and lowers a `.ttt` file without running any pass.
pub fn lower_file(
    path: &Path,
    precision: Precision,
    settings: &Settings,
) -> Result<Program, DriverError> {
    let bytes = tttc_ir::syntax::read_source(path).map_err(|source| DriverError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let name = path.display().to_string();
    Ok(tttc_ir::syntax::compile_bytes(
        &name,
        &bytes,
        precision.dtype(),
        settings,
    )?)
}
