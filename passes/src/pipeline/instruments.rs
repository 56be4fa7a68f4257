//! The instruments the pipeline's runner calls around every stage: the [`Instrument`] hooks,
//! and the four the compiler uses — [`Verifier`], [`Timer`], [`Snapshots`], [`Dump`].

use super::Ir;
use crate::PassError;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tttc_ir::kernel::KernelProgram;
use tttc_ir::verify::verify_program;

/// What a stage produced, as instruments see it.
#[derive(Clone, Copy, Debug)]
pub enum StageOutput<'a> {
    /// A graph or kernel program.
    Ir(&'a Ir),
    /// Machine code (in the code generator's own type: instruments only see that it was made).
    Code,
}

/// Hooks the runner calls around every stage. A hook that fails stops the pipeline.
pub trait Instrument {
    /// Called before `stage` runs on `ir`.
    fn before(&mut self, stage: &'static str, ir: &Ir) -> Result<(), PassError> {
        let _ = (stage, ir);
        Ok(())
    }

    /// Called after `stage` produced `output`.
    fn after(&mut self, stage: &'static str, output: StageOutput<'_>) -> Result<(), PassError> {
        let _ = (stage, output);
        Ok(())
    }
}

/// Checks the IR: the graph verifier ([`tttc_ir::verify::verify_program`]) on the input and
/// after every graph stage, the kernel-IR check after every kernel stage. The runner always
/// runs it, outermost.
#[derive(Debug, Default)]
pub struct Verifier {
    checked_input: bool,
}

impl Verifier {
    fn check(stage: &'static str, ir: &Ir) -> Result<(), PassError> {
        match ir {
            Ir::Graph(p) => verify_program(p).map_err(|source| PassError::Verify {
                pass: stage,
                source,
            }),
            Ir::Kernel(k) => verify_kernel(stage, k),
        }
    }
}

/// The kernel-IR check after a kernel stage: [`tttc_ir::kernel::verify`], its error naming
/// `stage`.
fn verify_kernel(stage: &'static str, program: &KernelProgram) -> Result<(), PassError> {
    tttc_ir::kernel::verify(program).map_err(|source| PassError::KernelVerify { stage, source })
}

impl Instrument for Verifier {
    fn before(&mut self, _: &'static str, ir: &Ir) -> Result<(), PassError> {
        if !self.checked_input {
            self.checked_input = true;
            Self::check("input", ir)?;
        }
        Ok(())
    }

    fn after(&mut self, stage: &'static str, output: StageOutput<'_>) -> Result<(), PassError> {
        match output {
            StageOutput::Ir(ir) => Self::check(stage, ir),
            StageOutput::Code => Ok(()),
        }
    }
}

/// Records the wall time of every stage.
#[derive(Debug, Default)]
pub struct Timer {
    started: Option<Instant>,
    /// Each stage run, with its time, in order.
    pub times: Vec<(&'static str, Duration)>,
}

impl Instrument for Timer {
    fn before(&mut self, _: &'static str, _: &Ir) -> Result<(), PassError> {
        self.started = Some(Instant::now());
        Ok(())
    }

    fn after(&mut self, stage: &'static str, _: StageOutput<'_>) -> Result<(), PassError> {
        let elapsed = self.started.take().map_or(Duration::ZERO, |t| t.elapsed());
        self.times.push((stage, elapsed));
        Ok(())
    }
}

/// Keeps a copy of the IR after every stage that produces IR.
#[derive(Debug, Default)]
pub struct Snapshots {
    /// Each stage's result, in order.
    pub after: Vec<(&'static str, Ir)>,
}

impl Instrument for Snapshots {
    fn after(&mut self, stage: &'static str, output: StageOutput<'_>) -> Result<(), PassError> {
        if let StageOutput::Ir(ir) = output {
            self.after.push((stage, ir.clone()));
        }
        Ok(())
    }
}

/// Writes the IR's text after every stage into a directory, as `NN-STAGE.txt` numbered from 1
/// in the order run (code generation writes nothing: its output is the backend's).
#[derive(Debug)]
pub struct Dump {
    dir: PathBuf,
    written: Vec<PathBuf>,
}

impl Dump {
    /// Dumps into `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Dump {
        Dump {
            dir: dir.into(),
            written: Vec::new(),
        }
    }

    /// The files written so far, in order.
    pub fn written(&self) -> &[PathBuf] {
        &self.written
    }
}

impl Instrument for Dump {
    fn after(&mut self, stage: &'static str, output: StageOutput<'_>) -> Result<(), PassError> {
        let StageOutput::Ir(ir) = output else {
            return Ok(());
        };
        let path = self
            .dir
            .join(format!("{:02}-{stage}.txt", self.written.len() + 1));
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&path, ir.to_text()))
            .map_err(|source| PassError::Dump {
                path: path.display().to_string(),
                source,
            })?;
        self.written.push(path);
        Ok(())
    }
}
