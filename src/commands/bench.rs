//! `tttc bench`: compile once, then time execution only.

use super::progress::Progress;
use super::run::{default_backend, prepare_with, BackendArg};
use super::{
    compile, load_tensors, tensor_cores, CacheArgs, DecodeStateArg, Failure, ModelArgs,
    PrecisionArg, SettingArgs, TensorCoresArg,
};
use std::path::PathBuf;
use std::time::Instant;
use tttc::Precision;

/// Arguments of `tttc bench`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt program.
    file: PathBuf,
    /// Safetensors file with the program's inputs; with --model, the inputs that are not among
    /// the model's weights (e.g. input_ids).
    #[arg(long, required_unless_present = "model")]
    inputs: Option<PathBuf>,
    /// Execution backend (default: llvm when built in, else cranelift, else interp).
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendArg,
    /// Number of timed runs (after one warm-up run); each writes its outputs into the storage
    /// of the run before it, as a serving loop would, so fresh output pages are not timed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// Precision of the computation.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Print `{"compile_ms": x, "median_ms": x, "min_ms": x, "gflops": x}` (with --decode:
    /// `{"tokens": n, "median_us_per_token": x, "mean_us_per_token": x, ...}`).
    #[arg(long)]
    json: bool,
    /// Time decoding instead of one-shot runs: the whole sequence fed one token at a time
    /// through a streaming session, --iters times; reports the median time per token.
    #[arg(long)]
    decode: bool,
    /// With --decode: how an unfinished mini-batch is carried between tokens (auto: per state,
    /// whichever touches fewer bytes; dense; factored). See docs/streaming.md.
    #[arg(long, value_enum, default_value_t = DecodeStateArg::Auto)]
    decode_state: DecodeStateArg,
    /// With --backend ptx: run matmuls that fit whole tiles on tensor cores with these input
    /// operands and f32 accumulation (f32 only; default: exact f32). See docs/backends.md.
    #[arg(long, value_enum)]
    tensor_cores: Option<TensorCoresArg>,
    /// With --backend llvm: time every top-level statement of the kernel program (each loop
    /// nest; self time) over the timed runs and print the costliest, with the buffers they
    /// write. Adds two clock reads per statement, so the totals run a little slower.
    #[arg(long)]
    profile: bool,
    /// Also time the gradient program (forward and backward: the vector-Jacobian product for
    /// cotangents of ones on every output, `tttc grad`'s) and report its ratio to the forward
    /// and the peak resident memory of each (Linux: VmHWM, reset before each one's warm-up
    /// run). The timed runs alternate forward and gradient.
    #[arg(long, conflicts_with_all = ["decode", "tensor_cores", "profile"])]
    grad: bool,
    /// With --grad: keep the scans' state every G mini-batches.
    #[arg(long, value_name = "G", default_value_t = tttc::passes::autodiff::DEFAULT_CHECKPOINT_EVERY as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    #[command(flatten)]
    settings: SettingArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Runs `tttc bench`.
pub fn main(args: &Args) -> Result<(), Failure> {
    args.cache.apply()?;
    let result = bench(args);
    if result.is_ok() {
        args.cache.report();
    }
    result
}

fn bench(args: &Args) -> Result<(), Failure> {
    let precision: Precision = args.precision.into();
    let tc = tensor_cores(args.tensor_cores, precision)?;
    let model = args.model.open()?;
    let start = Instant::now();
    let settings_args = args.settings.with_model(model.as_ref());
    let (compiled, settings) = compile(&args.file, precision, &settings_args, None, false)?;
    let bound = load_tensors(
        &compiled.program,
        model.as_ref(),
        args.inputs.as_deref(),
        &settings,
        precision,
    )?;
    if args.decode {
        if tc.is_some() {
            return Err(Failure::user(
                "--tensor-cores is not available with --decode",
            ));
        }
        return decode(args, &compiled.program, bound.inputs, &settings, precision);
    }
    if args.grad {
        return bench_grad(args, &compiled.program, bound, &settings, precision);
    }
    set_profile(args, true)?;
    let spinner = Progress::spinner("compiling");
    let prepared = prepare_with(args.backend, &bound.program, tc);
    spinner.finish();
    set_profile(args, false)?;
    let prepared = prepared?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let flops = tttc::passes::cost::program_cost(&bound.program)
        .map(|c| c.flops as f64)
        .unwrap_or(f64::NAN);
    // Each timed run writes its outputs into the previous run's (as a serving loop, or
    // PyTorch's caching allocator, reuses memory): a fresh 262 MB of logits a run cost the
    // 125M model's prefill 64k page faults.
    let mut spare = prepared.run(&bound.inputs).map_err(Failure::internal)?; // warm-up
    take_profile();
    let mut times = Vec::with_capacity(args.iters as usize);
    let mut device_times = Vec::new();
    for i in 0..args.iters {
        let t0 = Instant::now();
        let outputs = prepared
            .run_reusing(&bound.inputs, &mut spare)
            .map_err(Failure::internal)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        spare = outputs;
        device_times.extend(prepared.last_device_ms());
        if !args.json && args.iters >= 20 && (i + 1) % 10 == 0 {
            eprintln!("  {}/{} runs", i + 1, args.iters);
        }
    }
    let (median, min) = median_min(&mut times);
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
    if args.profile {
        print_profile(&bound.program, args.iters)?;
    }
    Ok(())
}

/// `tttc bench --grad`: the forward program and its gradient program (cotangents of ones on
/// every output), each compiled once and timed `--iters` times after a warm-up run.
fn bench_grad(
    args: &Args,
    program: &tttc::ir::Program,
    bound: tttc::Bound,
    settings: &tttc::Settings,
    precision: Precision,
) -> Result<(), Failure> {
    let outputs = program.graph.output_names();
    let start = Instant::now();
    let grad = tttc::driver::gradient(
        program,
        &outputs,
        args.checkpoint_every as usize,
        None,
        false,
    )?
    .program;
    let ct_names = tttc::passes::autodiff::cotangent_input_names(program, &outputs);
    let mut tensors = bound.inputs.clone();
    for (name, input) in outputs.iter().zip(&ct_names) {
        let shape = bound
            .program
            .graph
            .output_by_name(name)
            .and_then(|id| bound.program.graph.tensor_type(id))
            .and_then(|t| t.shape.to_known())
            .ok_or_else(|| Failure::internal(format!("output `{name}` has no known shape")))?;
        let n: usize = shape.iter().product();
        let ones = tttc::runtime::Tensor::from_f64(shape, vec![1.0; n])
            .map_err(Failure::internal)?
            .cast(precision.elem());
        tensors.insert(input.clone(), ones);
    }
    let gbound = tttc::bind(&grad, &tensors, settings, precision.elem()).map_err(Failure::user)?;
    let spinner = Progress::spinner("compiling");
    let forward = super::run::prepare(args.backend, &bound.program);
    let backward = super::run::prepare(args.backend, &gbound.program);
    spinner.finish();
    let (forward, backward) = (forward?, backward?);
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    // The warm-up run of each gives its peak memory; the timed runs alternate forward and
    // gradient, so that both see the same conditions on a shared machine (run one after the
    // other, a burst of load on one phase moved their ratio by 15%).
    let warm_up = |p: &tttc::Prepared, inputs| -> Result<Option<f64>, Failure> {
        reset_peak_memory();
        p.run(inputs).map_err(Failure::internal)?;
        Ok(peak_memory_mb())
    };
    let fwd_peak = warm_up(&forward, &bound.inputs)?;
    let grad_peak = warm_up(&backward, &gbound.inputs)?;
    let timed = |p: &tttc::Prepared, inputs, times: &mut Vec<f64>| -> Result<(), Failure> {
        let t0 = Instant::now();
        p.run(inputs).map_err(Failure::internal)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        Ok(())
    };
    let (mut fwd_times, mut grad_times) = (Vec::new(), Vec::new());
    for _ in 0..args.iters {
        timed(&forward, &bound.inputs, &mut fwd_times)?;
        timed(&backward, &gbound.inputs, &mut grad_times)?;
    }
    let (fwd_median, fwd_min) = median_min(&mut fwd_times);
    let (grad_median, grad_min) = median_min(&mut grad_times);
    let ratio = grad_median / fwd_median;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"compile_ms": compile_ms, "forward_median_ms": fwd_median,
                "forward_min_ms": fwd_min, "grad_median_ms": grad_median, "grad_min_ms": grad_min,
                "grad_over_forward": ratio, "forward_peak_mb": fwd_peak, "grad_peak_mb": grad_peak,
                "checkpoint_every": args.checkpoint_every})
        );
    } else {
        let mb = |m: Option<f64>| m.map_or("unknown".to_string(), |m| format!("{m:.0} MB"));
        println!("backend   {}", tttc::Backend::from(args.backend).name());
        println!("compile   {compile_ms:.1} ms (forward and gradient programs)");
        println!(
            "forward   {fwd_median:.3} ms median over {} runs (min {fwd_min:.3} ms), peak {}",
            args.iters,
            mb(fwd_peak)
        );
        println!(
            "gradient  {grad_median:.3} ms median (forward + backward, G = {}; min {grad_min:.3} ms), peak {}",
            args.checkpoint_every as usize,
            mb(grad_peak)
        );
        println!("ratio     {ratio:.2}x the forward");
    }
    Ok(())
}

/// Resets the process's peak resident memory (Linux: `/proc/self/clear_refs`; elsewhere a
/// no-op).
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory since the last reset, in MB (Linux `VmHWM`).
fn peak_memory_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Turns the statement profile on or off for the code about to be compiled, when `--profile`
/// asks for it (LLVM only).
fn set_profile(args: &Args, on: bool) -> Result<(), Failure> {
    if !args.profile {
        return Ok(());
    }
    #[cfg(feature = "llvm")]
    if tttc::Backend::from(args.backend) == tttc::Backend::Llvm && !args.decode {
        tttc::backends::llvm::profile::set_statement_profile(on);
        if on {
            // Bracketed code is never stored (its key differs too: `host_fingerprint`).
            tttc::cache::disable();
        }
        return Ok(());
    }
    let _ = on;
    Err(Failure::user(
        "--profile needs --backend llvm and one-shot runs (not --decode)",
    ))
}

/// The statement profile so far, clearing it (empty without LLVM).
fn take_profile() -> Vec<(std::time::Duration, u64)> {
    #[cfg(feature = "llvm")]
    return tttc::backends::llvm::profile::take_statement_profile();
    #[cfg(not(feature = "llvm"))]
    Vec::new()
}

/// The costliest top-level statements of the timed runs (`--profile`), on stderr.
fn print_profile(program: &tttc::ir::Program, runs: u32) -> Result<(), Failure> {
    let totals = take_profile();
    let kernel = tttc::driver::kernel_program(program, tttc::passes::pipeline::Target::Cpu)
        .map_err(Failure::internal)?;
    let all: f64 = totals.iter().map(|(d, _)| d.as_secs_f64()).sum();
    let mut rows: Vec<(usize, f64)> = totals
        .iter()
        .enumerate()
        .map(|(k, (d, _))| (k, d.as_secs_f64()))
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!(
        "profile: {} top-level statements and {} function(s), {:.1} ms per run in all (self \
         time: a call counts only what its function's statements do not); the costliest:",
        kernel.body.len(),
        kernel.functions.len(),
        all * 1e3 / f64::from(runs)
    );
    eprintln!("  ms/run  share  cumul  statement");
    let mut cumul = 0.0;
    for &(k, t) in rows.iter().take(25) {
        cumul += t;
        let what = match tttc::ir::kernel::statement_by_id(&kernel, k) {
            Some((None, s)) => tttc::ir::kernel::describe_stmt(&kernel, s),
            Some((Some(f), s)) => format!(
                "in f{}: {}",
                f.0,
                tttc::ir::kernel::describe_stmt(&kernel, s)
            ),
            None => "?".to_string(),
        };
        eprintln!(
            "{:8.2} {:5.1}% {:5.1}%  #{k} {what}",
            t * 1e3 / f64::from(runs),
            100.0 * t / all.max(f64::MIN_POSITIVE),
            100.0 * cumul / all.max(f64::MIN_POSITIVE),
        );
    }
    Ok(())
}

/// The median and the minimum of `times` (not empty).
fn median_min(times: &mut [f64]) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    (median, times[0])
}

/// `tttc bench --decode`: every token fed on its own through one session.
fn decode(
    args: &Args,
    program: &tttc::ir::Program,
    inputs: std::collections::BTreeMap<String, tttc::runtime::Tensor>,
    settings: &tttc::Settings,
    precision: Precision,
) -> Result<(), Failure> {
    let plan = tttc::stream::plan::plan(program)?;
    let (tokens, weights): (std::collections::BTreeMap<_, _>, _) = inputs
        .into_iter()
        .partition(|(k, _)| plan.token_inputs.contains_key(k));
    let len = plan.sequence_length(&tokens).unwrap_or(0);
    let singles = tttc::stream::split_chunks(&tokens, &plan.token_inputs, &vec![1; len])?;
    let backend: tttc::Backend = args.backend.into();
    let start = Instant::now();
    let mut session = tttc::stream::Session::new(
        backend,
        program.clone(),
        weights,
        settings.clone(),
        precision,
    )?;
    session.set_final_outputs(false);
    session.set_decode_state(args.decode_state.into());
    // Warm-up: one token (compiles the pieces a token needs).
    if let Some(first) = singles.first() {
        session.feed(first)?;
    }
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut times = Vec::with_capacity(len * args.iters as usize);
    let mut totals = Vec::with_capacity(args.iters as usize);
    for i in 0..args.iters {
        let pass = Instant::now();
        for chunk in &singles {
            let t0 = Instant::now();
            session.feed(chunk)?;
            times.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        totals.push(pass.elapsed().as_secs_f64() * 1e6 / len.max(1) as f64);
        if !args.json && args.iters >= 5 {
            eprintln!("  {}/{} passes over {len} tokens", i + 1, args.iters);
        }
    }
    if times.is_empty() {
        return Err(Failure::user("the sequence is empty: nothing to decode"));
    }
    let (median, min) = median_min(&mut times);
    let (mean, _) = median_min(&mut totals);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"tokens": len, "passes": args.iters, "warmup_ms": compile_ms,
                "median_us_per_token": median, "min_us_per_token": min,
                "mean_us_per_token": mean})
        );
    } else {
        println!("backend   {} (decode: one token per feed)", backend.name());
        println!("warm-up   {compile_ms:.1} ms (first token, compiling what decoding needs)");
        println!(
            "per token {median:.2} µs median over {} tokens x {} passes (min {min:.2} µs; median pass mean {mean:.2} µs)",
            len, args.iters
        );
    }
    Ok(())
}
