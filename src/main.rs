//! The `tttc` command-line tool.

use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tttc::{
    bind, compile_file, merge_settings, read_config_file, DriverError, Precision, Settings,
};

/// tttc: a compiler for Test-Time-Training layers.
///
/// Declare a TTT layer in the .ttt language (docs/language.md); tttc derives the inner
/// gradient, and runs the layer on tensors from a safetensors file.
#[derive(Parser)]
#[command(name = "tttc", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and type-check a program, derive its gradients, and report its inputs and outputs.
    Check {
        /// The .ttt program.
        file: PathBuf,
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// Print the compiled IR (after autodiff) of a program.
    Inspect {
        /// The .ttt program.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Element type of the printed IR.
        #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
        precision: PrecisionArg,
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// Run a program on the tensors of a safetensors file and write its outputs.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The .ttt program.
    file: PathBuf,
    /// Safetensors file holding every program input under its name (F32 or F64).
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write the outputs (safetensors, one tensor per program output).
    #[arg(long)]
    out: PathBuf,
    /// Execution backend.
    #[arg(long, value_enum, default_value_t = Backend::Interp)]
    backend: Backend,
    /// Precision of the whole computation; outputs are written in it.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Also write the program's intermediates (its `intermediate` outputs, e.g. `aux.*`).
    #[arg(long)]
    dump_intermediates: bool,
    #[command(flatten)]
    settings: SettingArgs,
}

#[derive(clap::Args)]
struct SettingArgs {
    /// Override a config value or fix a dimension: NAME=VALUE (repeatable), e.g.
    /// --set mini_batch_size=8 --set ttt_base_lr=0.1.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_setting)]
    set: Vec<(String, f64)>,
    /// A Hugging Face style config.json: keys naming a config or dimension of the program are
    /// used (others ignored); a value that differs from --set is an error.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One op per line.
    Text,
    /// serde JSON (round-trips).
    Json,
    /// Graphviz DOT.
    Dot,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
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

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// The reference interpreter (exact, slow; the oracle).
    Interp,
}

fn parse_setting(s: &str) -> Result<(String, f64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{s}` has no name before `=`"));
    }
    let value: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("`{name}` must be a number, got `{}`", value.trim()))?;
    if value <= 0.0 {
        return Err(format!("`{name}` must be positive, got {value}"));
    }
    Ok((name.to_string(), value))
}

/// A failure with its exit code: 2 for user errors, 1 for internal ones.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn user(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 2,
        }
    }
    fn internal(message: impl Into<String>) -> Self {
        Failure {
            message: format!("internal error (please report): {}", message.into()),
            code: 1,
        }
    }
}

/// Compiles `file` with the settings of `--set` and `--config` applied; returns the program and
/// the merged settings.
fn compile(
    file: &Path,
    precision: Precision,
    args: &SettingArgs,
) -> Result<(tttc::ir::Program, Settings), Failure> {
    let set: Settings = args.set.iter().cloned().collect();
    let program = compile_with(file, precision, &set)?;
    let Some(config) = &args.config else {
        return Ok((program, set));
    };
    // The config file's keys are matched against the program's names, so compile again with
    // them applied.
    let from_file =
        read_config_file(config, &program).map_err(|e| Failure::user(format!("error: {e}")))?;
    let merged =
        merge_settings(&set, &from_file).map_err(|e| Failure::user(format!("error: {e}")))?;
    Ok((compile_with(file, precision, &merged)?, merged))
}

fn compile_with(
    file: &Path,
    precision: Precision,
    settings: &Settings,
) -> Result<tttc::ir::Program, Failure> {
    compile_file(file, precision, settings).map_err(|e| {
        let user = e.is_user_error();
        let message = match &e {
            DriverError::Compile(c) => c.render(std::io::stderr().is_terminal()),
            other => format!("error: {other}"),
        };
        Failure {
            message,
            code: if user { 2 } else { 1 },
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{}", f.message.trim_end());
            ExitCode::from(f.code)
        }
    }
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Check { file, settings } => check(&file, &settings),
        Command::Inspect {
            file,
            format,
            precision,
            settings,
        } => inspect(&file, format, precision.into(), &settings),
        Command::Run(args) => run(&args),
    }
}

fn check(file: &Path, settings: &SettingArgs) -> Result<(), Failure> {
    let (program, _) = compile(file, Precision::F32, settings)?;
    let g = &program.graph;
    let inputs: Vec<String> = g
        .inputs()
        .iter()
        .filter_map(|&i| Some(format!("{}: {}", g.input_name(i)?, g.tensor_type(i)?.shape)))
        .collect();
    let outputs: Vec<String> = g
        .outputs()
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.name, g.tensor_type(o.node)?.shape)))
        .collect();
    println!("{}: ok", file.display());
    for c in &program.configs {
        println!("  config  {} = {}", c.name, c.value);
    }
    for d in &program.derived_dims {
        println!("  dim     {} = {}", d.name, d.expr);
    }
    println!("  inputs  {}", inputs.join(", "));
    println!("  outputs {}", outputs.join(", "));
    Ok(())
}

fn inspect(
    file: &Path,
    format: Format,
    precision: Precision,
    settings: &SettingArgs,
) -> Result<(), Failure> {
    let (program, _) = compile(file, precision, settings)?;
    let text = match format {
        Format::Text => tttc::ir::printer::print_program(&program),
        Format::Json => {
            serde_json::to_string_pretty(&program).map_err(|e| Failure::internal(e.to_string()))?
        }
        Format::Dot => tttc::ir::dot::program_to_dot(&program),
    };
    println!("{}", text.trim_end());
    Ok(())
}

fn run(args: &RunArgs) -> Result<(), Failure> {
    let precision: Precision = args.precision.into();
    let (program, settings) = compile(&args.file, precision, &args.settings)?;
    let tensors = tttc::runtime::read_safetensors(&args.inputs)
        .map_err(|e| Failure::user(format!("error: {e}")))?;
    let unused = tttc::unused_tensors(&program, &tensors);
    if !unused.is_empty() {
        eprintln!(
            "warning: {} has tensors this program does not use (ignored): {}",
            args.inputs.display(),
            unused.join(", ")
        );
    }
    let bound = bind(&program, &tensors, &settings, precision.elem())
        .map_err(|e| Failure::user(format!("error: {e}")))?;
    for w in &bound.warnings {
        eprintln!("warning: {w}");
    }
    let mut outputs = match args.backend {
        Backend::Interp => tttc::backends::interp::run_program(&bound.program, &bound.inputs)
            .map_err(|e| Failure::internal(e.to_string()))?,
    };
    if !args.dump_intermediates {
        outputs.retain(|name, _| !program.intermediates.contains(name));
    }
    tttc::runtime::write_safetensors(&args.out, &outputs)
        .map_err(|e| Failure::user(format!("error: {e}")))?;
    let names: Vec<String> = outputs
        .iter()
        .map(|(k, t)| format!("{k} {:?}", t.shape()))
        .collect();
    eprintln!("wrote {}: {}", args.out.display(), names.join(", "));
    Ok(())
}
