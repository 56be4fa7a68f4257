//! `tttc bench`: compile once, then time execution only.

use super::run::{default_backend, prepare, BackendArg};
use super::{compile, load_inputs, Failure, PrecisionArg, SettingArgs};
use std::path::PathBuf;
use std::time::Instant;
use tttc::Precision;

/// Arguments of `tttc bench`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt program.
    file: PathBuf,
    /// Safetensors file with the program's inputs.
    #[arg(long)]
    inputs: PathBuf,
    /// Execution backend (default: llvm when built in, else cranelift, else interp).
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendArg,
    /// Number of timed runs (after one warm-up run).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// Precision of the computation.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Print `{"compile_ms": x, "median_ms": x, "min_ms": x, "gflops": x}`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    settings: SettingArgs,
}

/// Runs `tttc bench`.
pub fn main(args: &Args) -> Result<(), Failure> {
    let precision: Precision = args.precision.into();
    let start = Instant::now();
    let (compiled, settings) = compile(&args.file, precision, &args.settings, None, false)?;
    let (bound, _) = load_inputs(&compiled.program, &args.inputs, &settings, precision)?;
    let prepared = prepare(args.backend, &bound.program)?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let flops = tttc::passes::cost::program_cost(&bound.program)
        .map(|c| c.flops as f64)
        .unwrap_or(f64::NAN);
    prepared.run(&bound.inputs).map_err(Failure::internal)?; // warm-up
    let mut times = Vec::with_capacity(args.iters as usize);
    let mut device_times = Vec::new();
    for i in 0..args.iters {
        let t0 = Instant::now();
        prepared.run(&bound.inputs).map_err(Failure::internal)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        device_times.extend(prepared.last_device_ms());
        if !args.json && args.iters >= 20 && (i + 1) % 10 == 0 {
            eprintln!("  {}/{} runs", i + 1, args.iters);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let min = times[0];
    let gflops = flops / (median * 1e-3) / 1e9;
    let device = super::gpu_bench::device_summary(&mut device_times, flops);
    if args.json {
        let mut j = serde_json::json!({"compile_ms": compile_ms, "median_ms": median, "min_ms": min, "gflops": gflops});
        super::gpu_bench::add_json(&mut j, device);
        println!("{j}");
    } else {
        println!("backend   {}", tttc::Backend::from(args.backend).name());
        println!("compile   {compile_ms:.1} ms (pipeline, binding and code generation)");
        println!(
            "median    {median:.3} ms over {} runs (min {min:.3} ms)",
            args.iters
        );
        println!(
            "rate      {gflops:.2} GFLOP/s ({:.3} GFLOP per run, cost model)",
            flops / 1e9
        );
        super::gpu_bench::print_text(device);
    }
    Ok(())
}
