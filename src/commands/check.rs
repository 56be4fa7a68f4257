//! `tttc check`: compile a program and summarize it.

use super::{compile, Failure, SettingArgs};
use std::path::PathBuf;
use tttc::Precision;

/// Arguments of `tttc check`.
#[derive(clap::Args)]
pub struct Args {
    /// The .ttt program.
    file: PathBuf,
    #[command(flatten)]
    settings: SettingArgs,
}

/// Runs `tttc check`.
pub fn main(args: &Args) -> Result<(), Failure> {
    let (compiled, _) = compile(&args.file, Precision::F32, &args.settings, None, false)?;
    let program = &compiled.program;
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
    println!("{}: ok", args.file.display());
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
