//! `tttc grad`: the vector-Jacobian product of a program (reverse mode through the main graph
//! and every scan, with mini-batch checkpointing; docs/gradients.md).

use super::run::{default_backend, prepare, BackendArg};
use super::{check_output_path, compile, Failure, PrecisionArg, SettingArgs};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tttc::Precision;

/// Arguments of `tttc grad`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt program.
    file: PathBuf,
    /// Safetensors file holding every program input under its name.
    #[arg(long)]
    inputs: PathBuf,
    /// Safetensors file holding, for any subset of the program's outputs, a cotangent of that
    /// output's shape under the output's name (outputs not given have a zero cotangent).
    #[arg(long)]
    cotangents: PathBuf,
    /// Where to write the gradients: for every floating-point input, the vector-Jacobian
    /// product under the input's name.
    #[arg(long)]
    out: PathBuf,
    /// Execution backend (default: llvm when built in, else cranelift, else interp).
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendArg,
    /// Precision of the whole computation; gradients are written in it.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Keep the fast-weight state at the start of every G-th mini-batch; the backward
    /// recomputes the states inside each group of G mini-batches.
    #[arg(long, value_name = "G", default_value_t = tttc::passes::autodiff::DEFAULT_CHECKPOINT_EVERY,
          value_parser = clap::value_parser!(usize))]
    checkpoint_every: usize,
    #[command(flatten)]
    settings: SettingArgs,
}

/// Runs `tttc grad`.
pub fn main(args: &Args) -> Result<(), Failure> {
    if args.checkpoint_every == 0 {
        return Err(Failure::user("--checkpoint-every must be at least 1"));
    }
    let mut reads = vec![args.file.as_path(), args.inputs.as_path(), &args.cotangents];
    reads.extend(args.settings.config_file());
    check_output_path(&args.out, "--out", &reads)?;
    let precision: Precision = args.precision.into();
    let (compiled, settings) = compile(&args.file, precision, &args.settings, None, false)?;
    let program = &compiled.program;
    let cts = tttc::runtime::read_safetensors(&args.cotangents)
        .map_err(|e| Failure::user(format!("reading {}: {e}", args.cotangents.display())))?;
    let outputs = program.graph.output_names();
    for name in cts.keys() {
        if !outputs.contains(name) {
            return Err(Failure::user(format!(
                "{}: `{name}` is not an output of {} (its outputs: {})",
                args.cotangents.display(),
                args.file.display(),
                outputs.join(", ")
            )));
        }
    }
    let given: Vec<String> = cts.keys().cloned().collect();
    let grad = tttc::driver::gradient(program, &given, args.checkpoint_every, None, false)?.program;
    let ct_names = tttc::passes::autodiff::cotangent_input_names(program, &given);

    let mut tensors =
        tttc::read_inputs(&grad, &args.inputs, precision.elem()).map_err(Failure::user)?;
    for (name, input) in given.iter().zip(&ct_names) {
        tensors.remove(input);
        tensors.insert(input.clone(), cts[name].cast(precision.elem()));
    }
    // The forward program binds every dimension from the inputs alone, so that a cotangent of
    // the wrong shape is reported under its output's name.
    let forward =
        tttc::bind(program, &tensors, &settings, precision.elem()).map_err(Failure::user)?;
    let want: BTreeMap<&str, Vec<usize>> = forward
        .program
        .graph
        .outputs()
        .iter()
        .filter_map(|o| {
            let t = forward.program.graph.tensor_type(o.node)?;
            let dims = t
                .shape
                .0
                .iter()
                .map(|d| d.known())
                .collect::<Option<Vec<_>>>()?;
            Some((o.name.as_str(), dims))
        })
        .collect();
    for name in &given {
        let got = cts[name].shape();
        if let Some(w) = want.get(name.as_str()) {
            if w.as_slice() != got {
                return Err(Failure::user(format!(
                    "{}: the cotangent `{name}` has shape {got:?}, but the output `{name}` is {w:?}",
                    args.cotangents.display()
                )));
            }
        }
    }
    let bound = tttc::bind(&grad, &tensors, &settings, precision.elem()).map_err(Failure::user)?;
    let prepared = prepare(args.backend, &bound.program)?;
    let outputs = prepared.run(&bound.inputs).map_err(Failure::from)?;
    super::write_outputs(&args.out, &outputs)?;
    Ok(())
}
