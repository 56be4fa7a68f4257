//! The pipeline to machine code: one named, ordered list of stages, and one runner that calls
//! *instruments* before and after every stage (in the spirit of TVM's pass instruments).
//!
//! The stages, in order ([`Pipeline::new`]; `tttc inspect --passes` prints them):
//!
//! | stage | IR in → out | what it does |
//! | --- | --- | --- |
//! | `autodiff` | graph → graph | the gradient of every scan's loss w.r.t. its states |
//! | `primal` | graph → graph | every scan lowered to one vectorized mini-batch step |
//! | `dual_form` | graph → graph | equality saturation: the dual form |
//! | `simplify` | graph → graph | CSE, DCE, constant folding, cancellations |
//! | `lower_kernel` | graph → kernel IR | loops over buffers; decides fusion (what is inlined) |
//! | `register_tile` | kernel IR → kernel IR | CPU targets only: small matrix products → register tiles |
//! | `reduce_jam` | kernel IR → kernel IR | CPU targets only: row reductions → rows jammed into one loop |
//! | `vector_loops` | kernel IR → kernel IR | CPU targets only: independent innermost loops → vector schedule |
//! | `outline` | kernel IR → kernel IR | CPU targets only: repeated layers → one function, calls |
//! | `memory_plan` | kernel IR → kernel IR | CPU targets only: global temporaries → offsets in one arena |
//! | `gpu_schedule` | kernel IR → kernel IR | GPU targets only: blocks, threads, shared memory |
//! | `codegen` | kernel IR → machine code | supplied by the caller ([`Codegen`]) |
//!
//! The graph stages run on the generic program (symbolic dimensions). `lower_kernel` needs
//! every dimension known: between the two, the caller binds the program to the shapes of the
//! run's tensors (`tttc::bind`, which needs the tensors and the user's settings, so it is not
//! a stage here). [`Pipeline::run`] therefore runs any contiguous [`Span`] of stages on the IR
//! that the stage before the span produced.
//!
//! **Why code generation is supplied by the caller.** The code generators live in
//! `tttc-backends`, which depends on this crate, and each makes something different (an
//! in-process JIT module, an object file, PTX text) with its own typed error. A `Stage` trait
//! here that backends implement would have to erase those types (a `Box<dyn Any>` of code to
//! downcast again) and make every backend depend on the pipeline's shape. Instead the stage
//! list ends at the last IR-to-IR stage and [`Pipeline::generate`] takes a [`Codegen`] — a
//! name and a function from kernel IR to code — and runs it as the last named stage under the
//! same instruments. The result keeps the code generator's own types: `Ok(Ok(code))`,
//! `Ok(Err(codegen error))`, or `Err(PassError)` when a stage before it failed.
//!
//! **Instruments** ([`Instrument`]): [`Verifier`] (always on, outermost: the graph verifier on
//! the input and after every graph stage, the kernel-IR check after every kernel stage — a
//! call site still waiting for the kernel-IR verifier, see `verify_kernel`),
//! [`Timer`] (wall time of each stage), [`Snapshots`] (a copy of the IR after each stage) and
//! [`Dump`] (the IR's text after each stage, one file per stage). `before` hooks run in the
//! order given, `after` hooks in reverse, so the last instrument given is the innermost: give
//! the [`Timer`] last to time the stage alone.

mod instruments;
#[cfg(test)]
mod tests;

pub use instruments::{Dump, Instrument, Snapshots, StageOutput, Timer, Verifier};

use crate::{Pass, PassError};
use tttc_ir::kernel::KernelProgram;
use tttc_ir::Program;

/// The program between two stages: graph IR before `lower_kernel`, kernel IR after.
#[derive(Clone, Debug)]
pub enum Ir {
    /// A graph program.
    Graph(Program),
    /// A kernel program: loops over buffers.
    Kernel(KernelProgram),
}

impl Ir {
    /// The graph program, if this is one.
    pub fn graph(&self) -> Option<&Program> {
        match self {
            Ir::Graph(p) => Some(p),
            Ir::Kernel(_) => None,
        }
    }

    /// The kernel program, if this is one.
    pub fn kernel(&self) -> Option<&KernelProgram> {
        match self {
            Ir::Kernel(k) => Some(k),
            Ir::Graph(_) => None,
        }
    }

    /// Which of the two IRs this is.
    pub fn form(&self) -> IrForm {
        match self {
            Ir::Graph(_) => IrForm::Graph,
            Ir::Kernel(_) => IrForm::Kernel,
        }
    }

    /// The stable text form: the graph printer, or the kernel-IR printer.
    pub fn to_text(&self) -> String {
        match self {
            Ir::Graph(p) => tttc_ir::printer::print_program(p),
            Ir::Kernel(k) => tttc_ir::kernel::print_kernel_program(k),
        }
    }
}

/// Graph IR or kernel IR: what a stage reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrForm {
    /// The graph IR.
    Graph,
    /// The kernel IR.
    Kernel,
}

impl std::fmt::Display for IrForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IrForm::Graph => "graph IR",
            IrForm::Kernel => "kernel IR",
        })
    }
}

/// A transformation of a kernel program into another (such as the GPU mapping).
pub trait KernelPass {
    /// A short, stable name.
    fn name(&self) -> &'static str;
    /// The transformed program.
    fn run(&self, program: &KernelProgram) -> Result<KernelProgram, PassError>;
}

/// The GPU mapping ([`crate::gpu_schedule`]) as a kernel pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuSchedule(pub crate::gpu_schedule::GpuConfig);

impl KernelPass for GpuSchedule {
    fn name(&self) -> &'static str {
        "gpu_schedule"
    }

    fn run(&self, program: &KernelProgram) -> Result<KernelProgram, PassError> {
        crate::gpu_schedule::gpu_schedule(program, &self.0).map_err(|e| PassError::Failed {
            pass: "gpu_schedule",
            source: Box::new(e),
        })
    }
}

/// What a stage does.
pub enum StageKind {
    /// Graph IR to graph IR.
    Graph(Box<dyn Pass>),
    /// Graph IR to kernel IR ([`crate::lower_kernel::lower_program_with`] with these options);
    /// the program must be bound (every dimension known).
    LowerKernel(crate::lower_kernel::LowerOptions),
    /// Kernel IR to kernel IR.
    Kernel(Box<dyn KernelPass>),
}

/// One stage of the pipeline, with a line describing it.
pub struct Stage {
    /// The stage's name (`tttc inspect --after NAME`).
    pub name: &'static str,
    /// What it does, for `tttc inspect --passes`.
    pub about: &'static str,
    /// How it runs.
    pub kind: StageKind,
}

impl Stage {
    /// A graph pass as a stage named after the pass.
    pub fn graph(pass: Box<dyn Pass>, about: &'static str) -> Stage {
        Stage {
            name: pass.name(),
            about,
            kind: StageKind::Graph(pass),
        }
    }

    /// A kernel pass as a stage named after the pass.
    pub fn kernel(pass: Box<dyn KernelPass>, about: &'static str) -> Stage {
        Stage {
            name: pass.name(),
            about,
            kind: StageKind::Kernel(pass),
        }
    }

    /// The IR the stage reads.
    pub fn input(&self) -> IrForm {
        match self.kind {
            StageKind::Graph(_) | StageKind::LowerKernel(_) => IrForm::Graph,
            StageKind::Kernel(_) => IrForm::Kernel,
        }
    }

    /// The IR the stage writes.
    pub fn output(&self) -> IrForm {
        match self.kind {
            StageKind::Graph(_) => IrForm::Graph,
            StageKind::LowerKernel(_) | StageKind::Kernel(_) => IrForm::Kernel,
        }
    }

    fn run(&self, ir: Ir) -> Result<Ir, PassError> {
        match (&self.kind, ir) {
            (StageKind::Graph(pass), Ir::Graph(mut p)) => {
                pass.run(&mut p)?;
                Ok(Ir::Graph(p))
            }
            (StageKind::LowerKernel(options), Ir::Graph(p)) => {
                crate::lower_kernel::lower_program_with(&p, options)
                    .map(Ir::Kernel)
                    .map_err(|e| PassError::Failed {
                        pass: self.name,
                        source: Box::new(e),
                    })
            }
            (StageKind::Kernel(pass), Ir::Kernel(k)) => pass.run(&k).map(Ir::Kernel),
            (_, ir) => Err(PassError::WrongIr {
                stage: self.name,
                expected: self.input(),
                found: ir.form(),
            }),
        }
    }
}

/// The name of the code-generation stage (`tttc inspect --passes` lists it last).
pub const CODEGEN: &str = "codegen";

/// The last stage, supplied by the caller: kernel IR to machine code (see the module doc for
/// why it is not in the stage list).
pub struct Codegen<'a, C, E> {
    /// The stage's name in instruments' reports (normally [`CODEGEN`]).
    pub name: &'static str,
    /// Makes the code.
    pub generate: &'a dyn Fn(&KernelProgram) -> Result<C, E>,
}

/// Whether the environment variable `name` switches a kernel stage off: set to something other
/// than `0` or the empty string (the one rule of every `TTTC_NO_…` switch).
pub(crate) fn switched_off(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The settings the kernel stages read from the environment, as `NAME=value` lines (unset
/// ones included): with the bound program and the build, everything that decides a kernel
/// program, for the keys of caches of it. A kernel stage that reads another variable must add
/// it here. The last line is the host's register tile (`register_tile` picks it from the host's
/// vector registers, so the kernel program depends on it too).
pub fn kernel_stage_settings() -> String {
    [
        crate::lower_kernel::GEMM_MIN_MNK_ENV,
        crate::outline::DISABLE_ENV,
        crate::memory_plan::DISABLE_ENV,
        crate::register_tile::DISABLE_ENV,
        crate::reduce_jam::DISABLE_ENV,
        crate::vector_loops::DISABLE_ENV,
        crate::sibling_products::DISABLE_ENV,
    ]
    .iter()
    .map(|name| format!("{name}={:?}\n", std::env::var_os(name)))
    .chain([crate::register_tile::host_setting() + "\n"])
    .collect()
}

/// Where the pipeline is aimed: which stages follow `lower_kernel`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// CPUs (LLVM, Cranelift, the AOT library): large matrix products of the main graph are
    /// [`tttc_ir::kernel::Stmt::Gemm`]s ([`crate::lower_kernel::LowerOptions::library_from_env`]),
    /// which the JITs run with a matrix library and an AOT object expands back into loops;
    /// repeated layers are outlined first (`outline`), so that the scheduling stages after it
    /// work on each distinct layer once; independent loop nests run on the thread pool
    /// (`cpu_parallel`); global temporaries share one arena (`memory_plan`); then the kernel
    /// IR goes to code generation.
    #[default]
    Cpu,
    /// NVIDIA GPUs: the kernel IR is mapped onto blocks and threads first (`gpu_schedule`);
    /// matrix products stay loop nests.
    Gpu(crate::gpu_schedule::GpuConfig),
}

/// A contiguous span of stages: from the one after `after` (the first when `None`: the IR is
/// the parsed program) through `until` (the last when `None`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Span<'a> {
    /// The stage that produced the IR given to the runner (`None`: the parsed program).
    pub after: Option<&'a str>,
    /// The last stage to run (`None`: the last of the pipeline).
    pub until: Option<&'a str>,
}

impl<'a> Span<'a> {
    /// Every stage.
    pub fn all() -> Span<'a> {
        Span::default()
    }

    /// From the first stage through `until`.
    pub fn until(until: &'a str) -> Span<'a> {
        Span {
            after: None,
            until: Some(until),
        }
    }

    /// Every stage after the graph stages of `pipeline` (for a bound program).
    pub fn after_graph(pipeline: &Pipeline) -> Span<'static> {
        Span {
            after: pipeline.last_graph_stage(),
            until: None,
        }
    }
}

/// An ordered list of stages, and the runner.
pub struct Pipeline {
    stages: Vec<Stage>,
}

impl Pipeline {
    /// The whole pipeline for `target`, up to code generation (see the module doc).
    pub fn new(target: Target) -> Pipeline {
        let mut stages = vec![
            Stage::graph(
                Box::new(crate::Autodiff),
                "derive the gradient of every scan's loss w.r.t. its states (reverse mode)",
            ),
            Stage::graph(
                Box::new(crate::lower_scan::LowerScan),
                "lower every scan to one mini-batch step, vectorized; per-token states materialized (primal form)",
            ),
            Stage::graph(
                Box::new(crate::rewrite::DualForm::default()),
                "equality saturation (egg) on every step: linearity, outer products, the dual form",
            ),
            Stage::graph(
                Box::new(crate::rewrite::Simplify::default()),
                "CSE, DCE, constant folding, cancelling transposes and reshapes",
            ),
            Stage {
                name: "lower_kernel",
                about: "loops over buffers for the bound shapes; fusion: a single-use elementwise value is inlined into its consumer's loop",
                kind: StageKind::LowerKernel(match target {
                    Target::Cpu => crate::lower_kernel::LowerOptions::library_from_env(),
                    Target::Gpu(_) => crate::lower_kernel::LowerOptions::default(),
                }),
            },
        ];
        match target {
            Target::Cpu => {
                stages.push(Stage::kernel(
                    Box::new(crate::outline::Outline::from_env()),
                    "CPU targets: runs of statements repeated on other buffers (layers) → one kernel function and a call per repeat (off with TTTC_NO_OUTLINE=1)",
                ));
                stages.push(Stage::kernel(
                    Box::new(crate::cpu_parallel::CpuParallel),
                    "CPU targets: top-level loop nests with independent iterations and enough work run on the thread pool",
                ));
                stages.push(Stage::kernel(
                    Box::new(crate::sibling_products::SiblingProducts::from_env()),
                    "CPU targets: products whose rows each have their own right operand and that read the same one (a decode token's k @ W and q @ W) → one nest, each load feeding both (off with TTTC_NO_SIBLING_PRODUCTS=1)",
                ));
                stages.push(Stage::kernel(
                    Box::new(crate::register_tile::RegisterTile::from_env()),
                    "CPU targets: small matrix products → register tiles, the contraction outside a vectorized column loop with the tile's rows jammed into it (off with TTTC_NO_REGISTER_TILE=1)",
                ));
                stages.push(Stage::kernel(
                    Box::new(crate::reduce_jam::ReduceJam::from_env()),
                    "CPU targets: row reductions → tiles of rows whose accumulations are jammed into one loop, independent chains side by side (off with TTTC_NO_REDUCE_JAM=1)",
                ));
                stages.push(Stage::kernel(
                    Box::new(crate::vector_loops::VectorLoops::from_env()),
                    "CPU targets: innermost loops whose iterations touch distinct elements → vector schedule, their independence stated to the code generator (off with TTTC_NO_VECTOR_LOOPS=1)",
                ));
                stages.push(Stage::kernel(
                    Box::new(crate::memory_plan::MemoryPlanner::from_env()),
                    "CPU targets: global temporaries placed in one arena, sharing memory where lifetimes are disjoint (off with TTTC_NO_MEMORY_PLAN=1)",
                ));
            }
            Target::Gpu(config) => stages.push(Stage::kernel(
                Box::new(GpuSchedule(config)),
                "GPU targets: loops onto blocks and threads, scratch into shared memory, barriers",
            )),
        }
        Pipeline { stages }
    }

    /// The pipeline of a gradient program (`crate::autodiff::grad_program` of a program that
    /// went through the graph stages): no `autodiff` or `primal` (its scans have their steps),
    /// `dual_form` and `simplify` on every scan backward's `step_vjp` (and `simplify` on the
    /// main graph) but not again on the forward steps, then the kernel stages for `target`.
    pub fn gradient(target: Target) -> Pipeline {
        let mut p = Pipeline::new(target);
        p.stages
            .retain(|s| s.name != "autodiff" && s.name != "primal");
        for stage in &mut p.stages {
            match stage.name {
                "dual_form" => {
                    stage.kind = StageKind::Graph(Box::new(crate::rewrite::DualForm::backward()));
                    stage.about = "equality saturation (egg) on every scan backward's step_vjp";
                }
                "simplify" => {
                    stage.kind = StageKind::Graph(Box::new(crate::rewrite::Simplify::backward()));
                    stage.about = "CSE, DCE, constant folding, cancellations on every step_vjp and the main graph";
                }
                _ => {}
            }
        }
        p
    }

    /// Every stage of every target, in order (`outline` for CPUs, then `gpu_schedule` for
    /// GPUs): what `tttc inspect --passes` lists and `--after` accepts. Not for running.
    pub fn every_stage() -> Pipeline {
        let mut p = Pipeline::new(Target::Gpu(Default::default()));
        let cpu = Pipeline::new(Target::Cpu);
        let mut extra: Vec<Stage> = cpu
            .stages
            .into_iter()
            .filter(|s| !p.stages.iter().any(|t| t.name == s.name))
            .collect();
        let at = p.position("lower_kernel").map_or(p.stages.len(), |i| i + 1);
        let tail = p.stages.split_off(at);
        p.stages.append(&mut extra);
        p.stages.extend(tail);
        p
    }

    /// A pipeline of the given stages (for tests and tools that run a few passes).
    pub fn from_stages(stages: Vec<Stage>) -> Pipeline {
        Pipeline { stages }
    }

    /// A pipeline of graph passes, each a stage named after the pass.
    pub fn of_passes(passes: Vec<Box<dyn Pass>>) -> Pipeline {
        Pipeline {
            stages: passes.into_iter().map(|p| Stage::graph(p, "")).collect(),
        }
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// The stages' names, in order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name).collect()
    }

    /// The names of the stages whose result is graph IR, in order.
    pub fn graph_stage_names(&self) -> Vec<&'static str> {
        self.stages
            .iter()
            .filter(|s| s.output() == IrForm::Graph)
            .map(|s| s.name)
            .collect()
    }

    /// The last stage whose result is graph IR: where the caller binds shapes before
    /// `lower_kernel`.
    pub fn last_graph_stage(&self) -> Option<&'static str> {
        self.graph_stage_names().last().copied()
    }

    fn position(&self, name: &str) -> Result<usize, PassError> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| PassError::UnknownStage {
                name: name.to_string(),
                stages: self.stage_names().join(", "),
            })
    }

    /// The stages of `span`, in order.
    fn span(&self, span: Span<'_>) -> Result<&[Stage], PassError> {
        let start = match span.after {
            Some(a) => self.position(a)? + 1,
            None => 0,
        };
        let end = match span.until {
            Some(u) => self.position(u)? + 1,
            None => self.stages.len(),
        };
        Ok(self.stages.get(start..end).unwrap_or(&[]))
    }

    /// Runs the stages of `span` on `ir` (what the stage before the span produced) with the
    /// [`Verifier`] and then `instruments` around each; returns the IR after the last one.
    pub fn run(
        &self,
        ir: Ir,
        span: Span<'_>,
        instruments: &mut [&mut dyn Instrument],
    ) -> Result<Ir, PassError> {
        self.run_span(ir, span, &mut Verifier::default(), instruments)
    }

    /// Runs a graph program through every stage in place (graph stages only; for pipelines of
    /// graph passes such as [`Pipeline::of_passes`]), verifying it before and after each.
    pub fn run_graph(&self, program: &mut Program) -> Result<(), PassError> {
        let ir = Ir::Graph(program.clone());
        match self.run(ir, Span::all(), &mut [])? {
            Ir::Graph(p) => {
                *program = p;
                Ok(())
            }
            Ir::Kernel(_) => Err(PassError::WrongIr {
                stage: "run_graph",
                expected: IrForm::Graph,
                found: IrForm::Kernel,
            }),
        }
    }

    /// Runs every stage after `after` (see [`Span`]), then `codegen` as the last stage, all under
    /// the [`Verifier`] and `instruments`. The outer error is a stage's, the inner the code
    /// generator's.
    pub fn generate<C, E>(
        &self,
        ir: Ir,
        after: Option<&str>,
        codegen: &Codegen<'_, C, E>,
        instruments: &mut [&mut dyn Instrument],
    ) -> Result<Result<C, E>, PassError> {
        let mut verifier = Verifier::default();
        let span = Span { after, until: None };
        let ir = self.run_span(ir, span, &mut verifier, instruments)?;
        let Ir::Kernel(kernels) = &ir else {
            return Err(PassError::WrongIr {
                stage: codegen.name,
                expected: IrForm::Kernel,
                found: ir.form(),
            });
        };
        before_stage(&mut verifier, instruments, codegen.name, &ir)?;
        let code = (codegen.generate)(kernels);
        after_stage(&mut verifier, instruments, codegen.name, StageOutput::Code)?;
        Ok(code)
    }

    fn run_span(
        &self,
        mut ir: Ir,
        span: Span<'_>,
        verifier: &mut Verifier,
        instruments: &mut [&mut dyn Instrument],
    ) -> Result<Ir, PassError> {
        for stage in self.span(span)? {
            before_stage(verifier, instruments, stage.name, &ir)?;
            ir = stage.run(ir)?;
            after_stage(verifier, instruments, stage.name, StageOutput::Ir(&ir))?;
        }
        Ok(ir)
    }
}

fn before_stage(
    verifier: &mut Verifier,
    instruments: &mut [&mut dyn Instrument],
    stage: &'static str,
    ir: &Ir,
) -> Result<(), PassError> {
    verifier.before(stage, ir)?;
    for i in instruments.iter_mut() {
        i.before(stage, ir)?;
    }
    Ok(())
}

fn after_stage(
    verifier: &mut Verifier,
    instruments: &mut [&mut dyn Instrument],
    stage: &'static str,
    output: StageOutput<'_>,
) -> Result<(), PassError> {
    for i in instruments.iter_mut().rev() {
        i.after(stage, output)?;
    }
    verifier.after(stage, output)
}

/// The stages `tttc run --stop-after` accepts: `parse`, then every graph stage (the
/// interpreter runs graph IR).
pub fn graph_stage_names() -> Vec<&'static str> {
    std::iter::once("parse")
        .chain(Pipeline::new(Target::Cpu).graph_stage_names())
        .collect()
}
