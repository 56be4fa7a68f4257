//! `tttc inspect`: the IR at any stage, the list of passes, and their timings.

use super::{check_stage, compile, load_inputs, Failure, PrecisionArg, SettingArgs};
use clap::ValueEnum;
use std::path::PathBuf;
use tttc::ir::Program;

/// How to print a program.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// One op per line.
    Text,
    /// serde JSON (round-trips).
    Json,
    /// Graphviz DOT.
    Dot,
}

/// Arguments of `tttc inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt program.
    file: PathBuf,
    /// List the passes of the pipeline, in order, and stop.
    #[arg(long)]
    passes: bool,
    /// Print the program after this stage (`parse` or a pass name; default: the last pass).
    #[arg(long, value_name = "STAGE", conflicts_with = "all")]
    after: Option<String>,
    /// Print the program after every stage.
    #[arg(long)]
    all: bool,
    /// Print the time each pass took.
    #[arg(long)]
    timings: bool,
    /// Print the kernel IR (loops over buffers) the native backends compile, for the shapes of
    /// the tensors in --inputs.
    #[arg(long, requires = "inputs")]
    kernel_ir: bool,
    /// Safetensors file whose tensors' shapes specialize the program (for --kernel-ir).
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Element type of the printed IR.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    #[command(flatten)]
    settings: SettingArgs,
}

fn render(program: &Program, format: Format) -> Result<String, Failure> {
    Ok(match format {
        Format::Text => tttc::ir::printer::print_program(program),
        Format::Json => serde_json::to_string_pretty(program).map_err(Failure::internal)?,
        Format::Dot => tttc::ir::dot::program_to_dot(program),
    })
}

/// Runs `tttc inspect`.
pub fn main(args: &Args) -> Result<(), Failure> {
    if args.passes {
        for (i, info) in tttc::passes::pipeline::standard().iter().enumerate() {
            println!("{:>2}. {:<10} {}", i + 1, info.pass.name(), info.about);
        }
        return Ok(());
    }
    if args.kernel_ir {
        let precision = args.precision.into();
        let (compiled, settings) = compile(&args.file, precision, &args.settings, None, false)?;
        let inputs = args
            .inputs
            .as_deref()
            .ok_or_else(|| Failure::user("--kernel-ir needs --inputs"))?;
        let (bound, _) = load_inputs(&compiled.program, inputs, &settings, precision)?;
        let kernels =
            tttc::passes::lower_kernel::lower_program(&bound.program).map_err(Failure::internal)?;
        let text = match args.format {
            Format::Json => serde_json::to_string_pretty(&kernels).map_err(Failure::internal)?,
            _ => tttc::ir::kernel::print_kernel_program(&kernels),
        };
        println!("{}", text.trim_end());
        return Ok(());
    }
    if let Some(stage) = &args.after {
        check_stage(stage)?;
    }
    let until = args.after.as_deref().filter(|s| *s != "parse");
    let snapshots = args.all || args.after.as_deref() == Some("parse");
    let (compiled, _) = compile(
        &args.file,
        args.precision.into(),
        &args.settings,
        until,
        snapshots,
    )?;
    let mut printed: Vec<(String, String)> = Vec::new();
    if args.all {
        if let Some(parsed) = &compiled.parsed {
            printed.push(("parse".into(), render(parsed, args.format)?));
        }
        for stage in &compiled.stages {
            if let Some(p) = &stage.snapshot {
                printed.push((stage.name.to_string(), render(p, args.format)?));
            }
        }
    } else if args.after.as_deref() == Some("parse") {
        if let Some(parsed) = &compiled.parsed {
            printed.push(("parse".into(), render(parsed, args.format)?));
        }
    } else if !args.timings || args.after.is_some() {
        let last = compiled.stages.last().map_or("parse", |s| s.name);
        printed.push((last.to_string(), render(&compiled.program, args.format)?));
    }
    match (args.format, args.all) {
        (Format::Json, true) => {
            let stages: Vec<serde_json::Value> = printed
                .iter()
                .map(|(name, text)| {
                    let program: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                    serde_json::json!({ "stage": name, "program": program })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&stages).map_err(Failure::internal)?
            );
        }
        (_, true) => {
            for (name, text) in &printed {
                println!("== after {name} ==\n{}", text.trim_end());
            }
        }
        _ => {
            for (_, text) in &printed {
                println!("{}", text.trim_end());
            }
        }
    }
    if args.timings {
        let total: f64 = compiled
            .stages
            .iter()
            .map(|s| s.elapsed.as_secs_f64())
            .sum();
        println!("pass        time (ms)");
        for stage in &compiled.stages {
            println!(
                "{:<10} {:>10.3}",
                stage.name,
                stage.elapsed.as_secs_f64() * 1e3
            );
        }
        println!("{:<10} {:>10.3}", "total", total * 1e3);
    }
    Ok(())
}
