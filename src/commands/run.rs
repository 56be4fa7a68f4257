//! `tttc run`: compile, bind the inputs, execute, write the outputs.

use super::progress::Progress;
use super::{
    check_output_path, check_stage, compile, load_tensors, tensor_cores, CacheArgs, DecodeStateArg,
    Failure, ModelArgs, PrecisionArg, SettingArgs, TensorCoresArg,
};
use clap::ValueEnum;
use std::path::PathBuf;
use tttc::Precision;

/// Execution backends.
#[derive(Clone, Copy, ValueEnum)]
pub enum BackendArg {
    /// The reference interpreter (exact, slow; the oracle).
    Interp,
    /// Native CPU code through LLVM, compiled in process (the default when built in).
    Llvm,
    /// Native CPU code through Cranelift: compiles in milliseconds, runs slower than LLVM.
    Cranelift,
    /// NVIDIA GPU: PTX through LLVM, run through the CUDA driver (needs a GPU).
    Ptx,
}

impl From<BackendArg> for tttc::Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Interp => tttc::Backend::Interp,
            BackendArg::Llvm => tttc::Backend::Llvm,
            BackendArg::Cranelift => tttc::Backend::Cranelift,
            BackendArg::Ptx => tttc::Backend::Ptx,
        }
    }
}

/// The default backend: the fastest code this binary can make — LLVM, else Cranelift, else
/// the interpreter.
pub fn default_backend() -> BackendArg {
    if tttc::Backend::Llvm.is_built() {
        BackendArg::Llvm
    } else if tttc::Backend::Cranelift.is_built() {
        BackendArg::Cranelift
    } else {
        BackendArg::Interp
    }
}

/// Compiles a bound program for `backend`, as a user error when the backend is not built in.
pub fn prepare(
    backend: BackendArg,
    program: &tttc::ir::Program,
) -> Result<tttc::Prepared, Failure> {
    let backend: tttc::Backend = backend.into();
    if !backend.is_built() {
        return Err(Failure::user(tttc::ExecError::NotBuilt(backend.feature())));
    }
    tttc::prepare(backend, program).map_err(Failure::from)
}

/// [`prepare`], with matmuls on tensor cores when `tc` is given (`--backend ptx` only: a user
/// error for any other backend).
pub fn prepare_with(
    backend: BackendArg,
    program: &tttc::ir::Program,
    tc: Option<tttc::gpu::TensorCores>,
) -> Result<tttc::Prepared, Failure> {
    let Some(tc) = tc else {
        return prepare(backend, program);
    };
    if !matches!(backend, BackendArg::Ptx) {
        return Err(Failure::user(format!(
            "--tensor-cores {} applies to --backend ptx only",
            tc.name()
        )));
    }
    if !tttc::Backend::Ptx.is_built() {
        return Err(Failure::user(tttc::ExecError::NotBuilt(
            tttc::Backend::Ptx.feature(),
        )));
    }
    tttc::execute::prepare_ptx(program, Some(tc)).map_err(Failure::from)
}

/// Arguments of `tttc run`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt program.
    file: PathBuf,
    /// Safetensors file holding every program input under its name (F32 or F64); with
    /// --model, the inputs that are not among the model's weights (e.g. input_ids).
    #[arg(long, required_unless_present = "model")]
    inputs: Option<PathBuf>,
    /// Where to write the outputs (safetensors, one tensor per program output).
    #[arg(long)]
    out: PathBuf,
    /// Execution backend (default: llvm when built in, else cranelift, else interp).
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendArg,
    /// Precision of the whole computation; outputs are written in it.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// With --backend ptx: run matmuls that fit whole tiles on tensor cores with these input
    /// operands and f32 accumulation (f32 only; default: exact f32). See docs/backends.md.
    #[arg(long, value_enum)]
    tensor_cores: Option<TensorCoresArg>,
    /// Also write the program's intermediates (its `intermediate` outputs, e.g. `aux.*`).
    #[arg(long)]
    dump_intermediates: bool,
    /// Run the program as it is after this pass instead of after the whole pipeline (e.g.
    /// `primal` to run the unoptimized mini-batch form); see `tttc inspect --passes`.
    #[arg(long, value_name = "PASS")]
    stop_after: Option<String>,
    /// Feed the inputs through one streaming session as consecutive chunks of these sizes
    /// (e.g. 5,11,1,1,40; they must add up to the sequence length). The outputs equal a
    /// one-shot run's.
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', value_parser = parse_chunk)]
    chunks: Option<Vec<usize>>,
    /// Stream the inputs as the continuation of a saved session (written by --save-state):
    /// their tokens follow the saved ones. Implies streaming (one chunk unless --chunks).
    #[arg(long, value_name = "FILE")]
    load_state: Option<PathBuf>,
    /// Stream the inputs and save the session's state after them (safetensors: the fast
    /// weights at the start of the unfinished mini-batch, its partial gradient sums (dense, or
    /// factored: see --decode-state), the last inputs of every causal shift, the position), to
    /// continue later with --load-state.
    #[arg(long, value_name = "FILE")]
    save_state: Option<PathBuf>,
    /// When streaming: how an unfinished mini-batch is carried between tokens (see
    /// docs/streaming.md): per state, whichever touches fewer bytes (auto), the dense partial
    /// gradient sums, or the factored per-token rows where the gradient is an outer product.
    #[arg(long, value_enum, default_value_t = DecodeStateArg::Auto)]
    decode_state: DecodeStateArg,
    #[command(flatten)]
    settings: SettingArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

fn parse_chunk(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive number of tokens")),
    }
}

/// Runs `tttc run`.
pub fn main(args: &Args) -> Result<(), Failure> {
    args.cache.apply()?;
    let model = args.model.open()?;
    let settings_args = args.settings.with_model(model.as_ref());
    // No output may overwrite an input. Saving the state over the state file it loads is
    // allowed (it is read in full first).
    let weight_files = match &model {
        Some(m) => m.weight_files().map_err(Failure::user)?,
        None => Vec::new(),
    };
    let mut reads = vec![args.file.as_path()];
    reads.extend(args.inputs.as_deref());
    reads.extend(settings_args.config_file());
    reads.extend(weight_files.iter().map(PathBuf::as_path));
    if let Some(save) = &args.save_state {
        check_output_path(
            save,
            "--save-state",
            &[&reads[..], &[args.out.as_path()]].concat(),
        )?;
    }
    reads.extend(args.load_state.as_deref());
    check_output_path(&args.out, "--out", &reads)?;
    let precision: Precision = args.precision.into();
    let tc = tensor_cores(args.tensor_cores, precision)?;
    if let Some(stage) = &args.stop_after {
        check_stage(stage)?;
        if stage == "parse" {
            return Err(Failure::user(
                "a program must be differentiated to run: stop after `autodiff` or later",
            ));
        }
    }
    let (compiled, settings) = compile(
        &args.file,
        precision,
        &settings_args,
        args.stop_after.as_deref(),
        false,
    )?;
    let program = &compiled.program;
    let bound = load_tensors(
        program,
        model.as_ref(),
        args.inputs.as_deref(),
        &settings,
        precision,
    )?;
    let streaming = args.chunks.is_some() || args.load_state.is_some() || args.save_state.is_some();
    if streaming && tc.is_some() {
        return Err(Failure::user(
            "--tensor-cores is not available when streaming (--chunks, --load-state, --save-state)",
        ));
    }
    let mut outputs = match streaming {
        true => {
            let backend: tttc::Backend = args.backend.into();
            let sizes = match &args.chunks {
                Some(sizes) => sizes.clone(),
                None => vec![sequence_length(program, &bound.inputs)?],
            };
            tttc::stream::run_chunked_with_state(
                backend,
                program,
                &bound.inputs,
                &settings,
                precision,
                &sizes,
                args.load_state.as_deref(),
                args.save_state.as_deref(),
                args.decode_state.into(),
            )?
        }
        false => {
            // Intermediates not asked for are dropped from the program before it is lowered:
            // nothing computes or stores what only they need (their memory counts in the peak).
            let mut run_program = std::borrow::Cow::Borrowed(&bound.program);
            if !args.dump_intermediates && !program.intermediates.is_empty() {
                run_program
                    .to_mut()
                    .graph
                    .retain_outputs(|o| !program.intermediates.contains(&o.name));
            }
            let spinner = Progress::spinner("compiling");
            let prepared = prepare_with(args.backend, &run_program, tc)?;
            spinner.finish();
            prepared.run(&bound.inputs).map_err(Failure::from)?
        }
    };
    if !args.dump_intermediates {
        outputs.retain(|name, _| !program.intermediates.contains(name));
    }
    super::write_outputs(&args.out, &outputs)?;
    args.cache.report();
    Ok(())
}

/// The number of tokens in `inputs` (along the program's sequence axis).
fn sequence_length(
    program: &tttc::ir::Program,
    inputs: &std::collections::BTreeMap<String, tttc::runtime::Tensor>,
) -> Result<usize, Failure> {
    let plan = tttc::stream::plan::plan(program).map_err(Failure::user)?;
    plan.sequence_length(inputs)
        .ok_or_else(|| Failure::user("the program has no per-token input to stream"))
}
