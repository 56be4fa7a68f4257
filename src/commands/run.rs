//! `tttc run`: compile, bind the inputs, execute, write the outputs.

use super::{check_stage, compile, load_inputs, Failure, PrecisionArg, SettingArgs};
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
    tttc::prepare(backend, program).map_err(|e| {
        if e.is_user_error() {
            Failure::user(e)
        } else {
            Failure::internal(e)
        }
    })
}

/// Arguments of `tttc run`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt program.
    file: PathBuf,
    /// Safetensors file holding every program input under its name (F32 or F64).
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write the outputs (safetensors, one tensor per program output).
    #[arg(long)]
    out: PathBuf,
    /// Execution backend (default: llvm when built in, else cranelift, else interp).
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendArg,
    /// Precision of the whole computation; outputs are written in it.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Also write the program's intermediates (its `intermediate` outputs, e.g. `aux.*`).
    #[arg(long)]
    dump_intermediates: bool,
    /// Run the program as it is after this pass instead of after the whole pipeline (e.g.
    /// `primal` to run the unoptimized mini-batch form); see `tttc inspect --passes`.
    #[arg(long, value_name = "PASS")]
    stop_after: Option<String>,
    #[command(flatten)]
    settings: SettingArgs,
}

/// Runs `tttc run`.
pub fn main(args: &Args) -> Result<(), Failure> {
    let precision: Precision = args.precision.into();
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
        &args.settings,
        args.stop_after.as_deref(),
        false,
    )?;
    let program = &compiled.program;
    let (bound, _) = load_inputs(program, &args.inputs, &settings, precision)?;
    let prepared = prepare(args.backend, &bound.program)?;
    let mut outputs = prepared.run(&bound.inputs).map_err(Failure::internal)?;
    if !args.dump_intermediates {
        outputs.retain(|name, _| !program.intermediates.contains(name));
    }
    tttc::runtime::write_safetensors(&args.out, &outputs).map_err(Failure::user)?;
    let names: Vec<String> = outputs
        .iter()
        .map(|(k, t)| format!("{k} {:?}", t.shape()))
        .collect();
    eprintln!("wrote {}: {}", args.out.display(), names.join(", "));
    Ok(())
}
