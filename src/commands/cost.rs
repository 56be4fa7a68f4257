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
    let primal_cost = cost_of(primal)?;
    let optimized_cost = cost_of(&compiled.program)?;
    if args.json {
        let json = serde_json::json!({ "primal": primal_cost, "optimized": optimized_cost });
        println!("{json}");
    } else {
        println!("{:<10} {:>16} {:>16}", "", "FLOPs", "bytes");
        for (name, c) in [("primal", primal_cost), ("optimized", optimized_cost)] {
            println!("{name:<10} {:>16} {:>16}", c.flops, c.bytes);
        }
        let ratio = |a: u128, b: u128| a as f64 / b.max(1) as f64;
        println!(
            "ratio      {:>15.2}x {:>15.2}x",
            ratio(primal_cost.flops, optimized_cost.flops),
            ratio(primal_cost.bytes, optimized_cost.bytes)
        );
    }
    Ok(())
}
