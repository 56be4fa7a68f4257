//! The `tttc` command-line tool.

mod commands;

use clap::{Parser, Subcommand};
use commands::{bench, check, compile, cost, generate, grad, inspect, run, Failure};
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
    /// Vector-Jacobian products of a program: gradients of every floating-point input given
    /// cotangents of its outputs (reverse mode through every scan, with checkpointing).
    Grad(grad::Args),
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

/// Stack of the thread that runs the command. Parsing and lowering a program are recursive;
/// their depth is bounded (see `MAX_NESTING` and `MAX_LOWERING_DEPTH` in `tttc-ir`), and this
/// stack holds the deepest program those bounds allow, in debug builds too. Untouched stack
/// pages cost no memory.
const STACK_BYTES: usize = 256 << 20;

fn main() -> ExitCode {
    let worker = std::thread::Builder::new()
        .name("tttc".into())
        .stack_size(STACK_BYTES)
        .spawn(run_command);
    match worker.map(|w| w.join()) {
        Ok(Ok(code)) => code,
        // A panic has printed its message already.
        Ok(Err(_)) => ExitCode::from(101),
        Err(e) => {
            eprintln!("internal error (please report): cannot start the main thread: {e}");
            ExitCode::from(1)
        }
    }
}

/// Parses the command line and runs the command.
fn run_command() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Failure> = match cli.command {
        Command::Check(args) => check::main(&args),
        Command::Inspect(args) => inspect::main(&args),
        Command::Run(args) => run::main(&args),
        Command::Grad(args) => grad::main(&args),
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
