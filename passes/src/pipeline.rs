//! The pass pipeline: a named, ordered list of passes, the IR verifier after every pass, the
//! time each pass took, and (on request) a snapshot of the program after each one — what
//! `tttc inspect --after/--all/--timings` shows.

use crate::{Pass, PassError};
use std::time::{Duration, Instant};
use tttc_ir::verify::verify_program;
use tttc_ir::Program;

/// One pass of the standard pipeline with a line describing it.
pub struct PassInfo {
    /// The pass.
    pub pass: Box<dyn Pass>,
    /// What it does, for `tttc inspect --passes`.
    pub about: &'static str,
}

/// What one pass did.
#[derive(Clone, Debug)]
pub struct StageReport {
    /// The pass's name.
    pub name: &'static str,
    /// Wall time of the pass (verification excluded).
    pub elapsed: Duration,
    /// The program after the pass, when snapshots were requested.
    pub snapshot: Option<Program>,
}

/// Runs `passes` in order on `program`, verifying after each; `snapshots` keeps a copy of the
/// program after every pass. Stops after the pass named `until` when given.
pub fn run_stages(
    program: &mut Program,
    passes: &[PassInfo],
    until: Option<&str>,
    snapshots: bool,
) -> Result<Vec<StageReport>, PassError> {
    verify_program(program).map_err(|source| PassError::Verify {
        pass: "input",
        source,
    })?;
    let mut reports = Vec::with_capacity(passes.len());
    for info in passes {
        let start = Instant::now();
        info.pass.run(program)?;
        let elapsed = start.elapsed();
        verify_program(program).map_err(|source| PassError::Verify {
            pass: info.pass.name(),
            source,
        })?;
        reports.push(StageReport {
            name: info.pass.name(),
            elapsed,
            snapshot: snapshots.then(|| program.clone()),
        });
        if until == Some(info.pass.name()) {
            break;
        }
    }
    Ok(reports)
}

/// The standard pipeline, in order: autodiff, the primal form, the dual form by equality
/// saturation, simplification, fusion.
pub fn standard() -> Vec<PassInfo> {
    vec![
        PassInfo {
            pass: Box::new(crate::Autodiff),
            about: "derive the gradient of every scan's loss w.r.t. its states (reverse mode)",
        },
        PassInfo {
            pass: Box::new(crate::lower_scan::LowerScan),
            about: "lower every scan to one mini-batch step, vectorized; per-token states materialized (primal form)",
        },
        PassInfo {
            pass: Box::new(crate::rewrite::DualForm::default()),
            about: "equality saturation (egg) on every step: linearity, outer products, the dual form",
        },
        PassInfo {
            pass: Box::new(crate::rewrite::Simplify::default()),
            about: "CSE, DCE, constant folding, cancelling transposes and reshapes",
        },
        PassInfo {
            pass: Box::new(crate::fuse::Fuse),
            about: "group the ops of every step into kernels (elementwise chains join their producers)",
        },
    ]
}

/// Names of the stages `tttc inspect --after` accepts: `parse`, then every pass.
pub fn stage_names() -> Vec<&'static str> {
    std::iter::once("parse")
        .chain(standard().iter().map(|p| p.pass.name()))
        .collect()
}
