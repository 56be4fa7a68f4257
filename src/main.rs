//! The `tttc` command-line tool.

mod commands;

use clap::{Parser, Subcommand};
use commands::{bench, check, compile, cost, generate, inspect, run, Failure};
use std::process::ExitCode;

/// tttc: a compiler for Test-Time-Training layers.
///
/// Declare a TTT layer in the .ttt language (docs/language.md); tttc derives the inner
/// gradient, rewrites the inner loop into its dual form, fuses it into kernels, and runs the
/// layer on tensors from a safetensors file.
#[derive(Parser)]
#[command(name = "tttc", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and type-check a program, run the pipeline, and report its inputs and outputs.
    Check(check::Args),
    /// Print the IR of a program at any stage of the pipeline, the passes, and their timings.
    Inspect(inspect::Args),
    /// Run a program on the tensors of a safetensors file and write its outputs.
    Run(run::Args),
    /// FLOPs and bytes of the primal and the optimized program for given inputs' shapes.
    Cost(cost::Args),
    /// Compile once, then time execution only (compile time reported separately).
    Bench(bench::Args),
    /// Write an ahead-of-time shared library with a C ABI and a C header.
    Compile(compile::Args),
    /// Generate text with a language model program: prefill a prompt, then decode token by
    /// token through a streaming session.
    Generate(generate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Failure> = match cli.command {
        Command::Check(args) => check::main(&args),
        Command::Inspect(args) => inspect::main(&args),
        Command::Run(args) => run::main(&args),
        Command::Cost(args) => cost::main(&args),
        Command::Bench(args) => bench::main(&args),
        Command::Compile(args) => compile::main(&args),
        Command::Generate(args) => generate::main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{}", f.message.trim_end());
            ExitCode::from(f.code)
        }
    }
}
