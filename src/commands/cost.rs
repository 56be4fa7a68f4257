//! `tttc cost`: FLOPs and bytes of the primal and the optimized program for given inputs.
//!
//! FLOPs are counted on the graph, bytes on the kernel program the pipeline's `lower_kernel`
//! stage makes of it (see `tttc_passes::cost`).

use super::{compile, load_inputs, Failure, PrecisionArg, SettingArgs};
use std::path::PathBuf;
use tttc::passes::cost::{cost_of, Cost};
use tttc::passes::pipeline::Target;
use tttc::Precision;

/// Arguments of `tttc cost`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt program.
    file: PathBuf,
    /// Safetensors file with the program's inputs (only their shapes matter).
    #[arg(long)]
    inputs: PathBuf,
    /// Element type the bytes are counted in.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Print `{"primal": {"flops": N, "bytes": N}, "optimized": {...}}`.
    #[arg(long)]
    json: bool,
    /// Also count the gradient program (the vector-Jacobian product for cotangents of every
    /// output, `tttc grad`'s: forward and backward): rows `forward` (the optimized program) and
    /// `gradient`, and their ratio.
    #[arg(long)]
    grad: bool,
    /// With --grad: keep the scans' state every G mini-batches.
    #[arg(long, value_name = "G", default_value_t = tttc::passes::autodiff::DEFAULT_CHECKPOINT_EVERY as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    #[command(flatten)]
    settings: SettingArgs,
}

/// Runs `tttc cost`.
pub fn main(args: &Args) -> Result<(), Failure> {
    let precision: Precision = args.precision.into();
    let (compiled, settings) = compile(&args.file, precision, &args.settings, None, true)?;
    let primal = compiled
        .stages
        .iter()
        .find(|s| s.name == "primal")
        .and_then(|s| s.snapshot.as_ref())
        .and_then(|ir| ir.graph())
        .ok_or_else(|| Failure::internal("the pipeline has no `primal` stage"))?;
    let cost_of = |program: &tttc::ir::Program| -> Result<Cost, Failure> {
        let bound = load_inputs(program, &args.inputs, &settings, precision)?;
        let kernels =
            tttc::driver::kernel_program(&bound.program, Target::Cpu).map_err(Failure::internal)?;
        cost_of(&bound.program, &kernels).map_err(Failure::internal)
    };
    if args.grad {
        let outputs = compiled.program.graph.output_names();
        let grad = tttc::driver::gradient(
            &compiled.program,
            &outputs,
            args.checkpoint_every as usize,
            None,
            false,
        )?
        .program;
        let bound =
            super::compile::bind_gradient(&compiled.program, &grad, Some(&args.inputs), &settings)?;
        let kernels =
            tttc::driver::kernel_program(&bound, Target::Cpu).map_err(Failure::internal)?;
        let grad_cost = cost_of_bound(&bound, &kernels)?;
        let forward_cost = cost_of(&compiled.program)?;
        return print_costs(
            args.json,
            [("forward", forward_cost), ("gradient", grad_cost)],
            "gradient/forward",
        );
    }
    let primal_cost = cost_of(primal)?;
    let optimized_cost = cost_of(&compiled.program)?;
    print_costs(
        args.json,
        [("primal", primal_cost), ("optimized", optimized_cost)],
        "ratio",
    )
}

/// FLOPs and bytes of a bound program and its kernel program.
fn cost_of_bound(
    program: &tttc::ir::Program,
    kernels: &tttc::ir::kernel::KernelProgram,
) -> Result<Cost, Failure> {
    cost_of(program, kernels).map_err(Failure::internal)
}

/// Two rows of costs and the ratio of the first to the second (`ratio` names that row), or
/// `{"<first>": {"flops": N, "bytes": N}, "<second>": {...}}` with `json`.
fn print_costs(json: bool, rows: [(&str, Cost); 2], ratio: &str) -> Result<(), Failure> {
    let [(a, ca), (b, cb)] = rows;
    if json {
        let mut j = serde_json::Map::new();
        j.insert(
            a.to_string(),
            serde_json::to_value(ca).map_err(Failure::internal)?,
        );
        j.insert(
            b.to_string(),
            serde_json::to_value(cb).map_err(Failure::internal)?,
        );
        println!("{}", serde_json::Value::Object(j));
        return Ok(());
    }
    let width = ratio.len().max(10);
    println!("{:<width$} {:>16} {:>16}", "", "FLOPs", "bytes");
    for (name, c) in [(a, &ca), (b, &cb)] {
        println!("{name:<width$} {:>16} {:>16}", c.flops, c.bytes);
    }
    let r = |x: u128, y: u128| x as f64 / y.max(1) as f64;
    // The ratio as the larger over the smaller row's order: primal/optimized, gradient/forward.
    let (num, den) = if ratio == "ratio" {
        (&ca, &cb)
    } else {
        (&cb, &ca)
    };
    println!(
        "{ratio:<width$} {:>15.2}x {:>15.2}x",
        r(num.flops, den.flops),
        r(num.bytes, den.bytes)
    );
    Ok(())
}
