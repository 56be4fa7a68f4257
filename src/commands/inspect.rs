//! `tttc inspect`: the IR after any stage of the pipeline (graph IR, then kernel IR), the list
//! of stages, and their timings.

use super::{compile_with, Failure, PrecisionArg, SettingArgs};
use clap::ValueEnum;
use std::path::PathBuf;
use tttc::passes::pipeline::{Dump, Instrument, Ir, IrForm, Pipeline, Target, CODEGEN};
use tttc::StageReport;

/// How to print a program.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// One op (graph IR) or statement (kernel IR) per line.
    Text,
    /// serde JSON (round-trips).
    Json,
    /// Graphviz DOT (graph IR only).
    Dot,
}

/// Which stages follow `lower_kernel`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// CPU targets: `outline`, `cpu_parallel`, `sibling_products`, `register_tile`, `reduce_jam`, `vector_loops` and `memory_plan` follow
    /// `lower_kernel`.
    Cpu,
    /// GPU targets: `gpu_schedule` follows `lower_kernel`.
    Gpu,
}

/// Arguments of `tttc inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt program.
    file: PathBuf,
    /// List every stage of the pipeline to machine code, in order, and stop.
    #[arg(long)]
    passes: bool,
    /// Print the program after this stage: `parse`, a graph stage (autodiff, primal,
    /// dual_form, simplify; default: simplify), or a kernel stage (lower_kernel, outline,
    /// cpu_parallel, sibling_products, register_tile, reduce_jam, vector_loops, memory_plan,
    /// gpu_schedule), which needs the shapes (--inputs, or every dimension with --set).
    #[arg(long, value_name = "STAGE", conflicts_with = "all")]
    after: Option<String>,
    /// Print the program after every stage (the kernel stages too when --inputs is given).
    #[arg(long)]
    all: bool,
    /// Print the time each stage took (the kernel stages too when --inputs is given).
    #[arg(long)]
    timings: bool,
    /// Same as --after lower_kernel.
    #[arg(long, conflicts_with_all = ["after", "all"])]
    kernel_ir: bool,
    /// Safetensors file whose tensors' shapes specialize the program for the kernel stages.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// The kernel stages of this target (--after gpu_schedule implies gpu).
    #[arg(long, value_enum, default_value_t = TargetArg::Cpu)]
    target: TargetArg,
    /// Also write the IR after every stage run into this directory, one file per stage
    /// (`01-autodiff.txt`, ...).
    #[arg(long, value_name = "DIR")]
    dump: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Element type of the printed IR.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Print the gradient program instead (the vector-Jacobian product for cotangents of every
    /// output, `tttc grad`'s): `--after parse` (or `autodiff`, `primal`) as differentiated,
    /// `dual_form` and `simplify` after the gradient pipeline's stages, a kernel stage for the
    /// shapes of --inputs (the forward program's inputs).
    #[arg(long)]
    grad: bool,
    /// With --grad: keep the scans' state every G mini-batches.
    #[arg(long, value_name = "G", default_value_t = tttc::passes::autodiff::DEFAULT_CHECKPOINT_EVERY as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    #[command(flatten)]
    settings: SettingArgs,
}

fn render(ir: &Ir, format: Format) -> Result<String, Failure> {
    Ok(match (format, ir) {
        (Format::Text, ir) => ir.to_text(),
        (Format::Json, Ir::Graph(p)) => {
            serde_json::to_string_pretty(p).map_err(Failure::internal)?
        }
        (Format::Json, Ir::Kernel(k)) => {
            serde_json::to_string_pretty(k).map_err(Failure::internal)?
        }
        (Format::Dot, Ir::Graph(p)) => tttc::ir::dot::program_to_dot(p),
        (Format::Dot, Ir::Kernel(_)) => {
            return Err(Failure::user(
                "--format dot prints graph IR; the kernel stages print as text or json",
            ))
        }
    })
}

/// Prints every stage of the pipeline to machine code (CPU and GPU targets' stages).
fn list_stages() {
    let mut n = 0;
    for stage in Pipeline::every_stage().stages() {
        n += 1;
        println!("{n:>2}. {:<13} {}", stage.name, stage.about);
    }
    println!(
        "{:>2}. {CODEGEN:<13} machine code from the kernel IR: LLVM (CPU JIT, AOT library), Cranelift (CPU JIT) or PTX (GPU)",
        n + 1
    );
}

/// Runs `tttc inspect`.
pub fn main(args: &Args) -> Result<(), Failure> {
    if args.passes {
        list_stages();
        return Ok(());
    }
    let after = match (args.kernel_ir, args.after.as_deref()) {
        (true, _) => Some("lower_kernel"),
        (false, after) => after,
    };
    if let (TargetArg::Gpu, Some(stage)) = (args.target, after) {
        let on_gpu = Pipeline::new(Target::Gpu(Default::default())).stage_names();
        if !on_gpu.contains(&stage) && Pipeline::new(Target::Cpu).stage_names().contains(&stage) {
            return Err(Failure::user(format!(
                "`{stage}` is a stage of CPU targets; drop --target gpu"
            )));
        }
    }
    let gpu = args.target == TargetArg::Gpu || after == Some("gpu_schedule");
    let target = if gpu {
        Target::Gpu(Default::default())
    } else {
        Target::Cpu
    };
    let pipeline = Pipeline::new(target);
    if let Some(stage) = after {
        check_inspect_stage(stage)?;
    }
    let kernel_stage = after.is_some_and(|s| {
        pipeline
            .stages()
            .iter()
            .any(|st| st.name == s && st.output() == IrForm::Kernel)
    });
    let run_kernel_stages =
        kernel_stage || ((args.all || args.timings) && after.is_none() && args.inputs.is_some());
    let graph_until = match after {
        Some("parse") | None => None,
        Some(_) if kernel_stage => None,
        Some(stage) => Some(stage),
    };
    if args.grad {
        return inspect_gradient(args, after, kernel_stage, run_kernel_stages, target);
    }
    let snapshots = args.all || after == Some("parse");
    let precision = args.precision.into();
    let mut dump = args.dump.as_ref().map(Dump::new);
    let mut extra: Vec<&mut dyn Instrument> = Vec::new();
    if let Some(d) = dump.as_mut() {
        extra.push(d);
    }
    let (compiled, settings) = compile_with(
        &args.file,
        precision,
        &args.settings,
        graph_until,
        snapshots,
        &mut extra,
    )?;
    let mut stages: Vec<StageReport> = compiled.stages.clone();
    let mut last = Ir::Graph(compiled.program.clone());
    if run_kernel_stages {
        let bound = super::compile::bind_program(
            &compiled.program,
            args.inputs.as_deref(),
            &settings,
            precision,
        )?;
        let until = if kernel_stage { after } else { None };
        let lowered = tttc::driver::lower(bound, target, until, args.all, &mut extra)?;
        stages.extend(lowered.stages);
        last = Ir::Kernel(lowered.program);
    }
    let mut printed: Vec<(String, String)> = Vec::new();
    if args.all {
        if let Some(parsed) = &compiled.parsed {
            printed.push((
                "parse".into(),
                render(&Ir::Graph(parsed.clone()), args.format)?,
            ));
        }
        for stage in &stages {
            if let Some(ir) = &stage.snapshot {
                printed.push((stage.name.to_string(), render(ir, args.format)?));
            }
        }
    } else if after == Some("parse") {
        if let Some(parsed) = &compiled.parsed {
            printed.push((
                "parse".into(),
                render(&Ir::Graph(parsed.clone()), args.format)?,
            ));
        }
    } else if !args.timings || after.is_some() {
        let name = stages.last().map_or("parse", |s| s.name);
        printed.push((name.to_string(), render(&last, args.format)?));
    }
    print_stages(&printed, args.format, args.all)?;
    if args.timings {
        print_timings(&stages);
    }
    Ok(())
}

/// `tttc inspect --grad`: the gradient program of every output after the stages of the
/// gradient pipeline (`Pipeline::gradient`).
fn inspect_gradient(
    args: &Args,
    after: Option<&str>,
    kernel_stage: bool,
    run_kernel_stages: bool,
    target: Target,
) -> Result<(), Failure> {
    if args.dump.is_some() {
        return Err(Failure::user("--dump is not available with --grad"));
    }
    let precision = args.precision.into();
    let (compiled, settings) = super::compile(&args.file, precision, &args.settings, None, false)?;
    let outputs = compiled.program.graph.output_names();
    let grad = tttc::driver::gradient(
        &compiled.program,
        &outputs,
        args.checkpoint_every as usize,
        None,
        true,
    )?;
    let differentiated = grad
        .parsed
        .clone()
        .ok_or_else(|| Failure::internal("no snapshot of the gradient program"))?;
    let mut stages: Vec<StageReport> = grad.stages.clone();
    let mut last = Ir::Graph(grad.program.clone());
    if run_kernel_stages {
        let bound = super::compile::bind_gradient(
            &compiled.program,
            &grad.program,
            args.inputs.as_deref(),
            &settings,
        )?;
        let until = if kernel_stage { after } else { None };
        let lowered = tttc::driver::lower(bound, target, until, args.all, &mut [])?;
        stages.extend(lowered.stages);
        last = Ir::Kernel(lowered.program);
    }
    let mut printed: Vec<(String, String)> = Vec::new();
    let before_stages = matches!(after, Some("parse" | "autodiff" | "primal"));
    if args.all {
        printed.push((
            "differentiation".into(),
            render(&Ir::Graph(differentiated), args.format)?,
        ));
        for stage in &stages {
            if let Some(ir) = &stage.snapshot {
                printed.push((stage.name.to_string(), render(ir, args.format)?));
            }
        }
    } else if before_stages {
        printed.push((
            "differentiation".into(),
            render(&Ir::Graph(differentiated), args.format)?,
        ));
    } else if let Some(stage) = after.filter(|_| !kernel_stage) {
        let ir = stages
            .iter()
            .find(|s| s.name == stage)
            .and_then(|s| s.snapshot.as_ref())
            .ok_or_else(|| Failure::internal(format!("no snapshot after `{stage}`")))?;
        printed.push((stage.to_string(), render(ir, args.format)?));
    } else if !args.timings || after.is_some() {
        let name = stages.last().map_or("simplify", |s| s.name);
        printed.push((name.to_string(), render(&last, args.format)?));
    }
    print_stages(&printed, args.format, args.all)?;
    if args.timings {
        print_timings(&stages);
    }
    Ok(())
}

/// Checks a stage name given to `--after`: `parse` or a stage of the pipeline (code generation
/// makes machine code, which `inspect` does not print).
fn check_inspect_stage(name: &str) -> Result<(), Failure> {
    let names: Vec<&str> = std::iter::once("parse")
        .chain(Pipeline::every_stage().stage_names())
        .collect();
    if name == CODEGEN {
        return Err(Failure::user(
            "`codegen` makes machine code, which inspect does not print; see `tttc compile` \
             (and --after lower_kernel or gpu_schedule for the kernel IR it compiles)",
        ));
    }
    if names.contains(&name) {
        Ok(())
    } else {
        Err(Failure::user(format!(
            "unknown stage `{name}`; the stages are: {}",
            names.join(", ")
        )))
    }
}

fn print_stages(printed: &[(String, String)], format: Format, all: bool) -> Result<(), Failure> {
    match (format, all) {
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
            for (name, text) in printed {
                println!("== after {name} ==\n{}", text.trim_end());
            }
        }
        _ => {
            for (_, text) in printed {
                println!("{}", text.trim_end());
            }
        }
    }
    Ok(())
}

fn print_timings(stages: &[StageReport]) {
    let total: f64 = stages.iter().map(|s| s.elapsed.as_secs_f64()).sum();
    println!("stage          time (ms)");
    for stage in stages {
        println!(
            "{:<13} {:>10.3}",
            stage.name,
            stage.elapsed.as_secs_f64() * 1e3
        );
    }
    println!("{:<13} {:>10.3}", "total", total * 1e3);
}
