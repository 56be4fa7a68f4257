//! Equality saturation with egg: the dual form and simplification.
//!
//! A graph is loaded into an e-graph over [`TensorLang`] (one e-node kind per IR op, with
//! attributes as leaf e-nodes), whose analysis ([`ShapeAnalysis`]) carries every e-class's
//! element type and symbolic shape and folds scalar constants. Staged rule tables
//! ([`rules`]) are run by egg's runner under explicit [`Limits`]; every rule goes through a
//! shape-checked applier ([`applier::Checked`]), so no rewrite builds an ill-shaped node.
//! Extraction ([`extract`]) picks one e-node per e-class for all outputs at once, minimizing
//! FLOPs + bytes ([`CostModel`], with [`SizeHints`] for symbolic dimensions), and one graph is
//! rebuilt from the choice (CSE and DCE for free).
//!
//! Two choices are built: a greedy DAG extraction refined by local search on the true DAG cost,
//! and egg's tree-cost extraction; the graph with the lower [`estimate_graph_cost`] wins, and the
//! original graph is kept when neither is cheaper, so these passes never increase
//! [`estimate_graph_cost`].
//!
//! Rewriting rebuilds the graph: run it before fusion (kernel assignments are not carried
//! over).
//!
//! Passes:
//! - [`DualForm`] (`dual_form`): rewrites every scan's mini-batch step graph with every rule
//!   table, which turns the primal form's per-token weight copies into the dual form's matmuls.
//! - [`Simplify`] (`simplify`): the simplification table on the main graph (scans and their
//!   results are left as they are) and on every scan's step graph.
//!
//! Output is deterministic (same input, same printed graph) unless the time limit stops a run.

pub mod analysis;
pub mod applier;
pub mod convert;
pub mod cost;
pub mod extract;
pub mod lang;
pub mod rules;

pub use analysis::{ClassData, ShapeAnalysis, TensorGraph};
pub use cost::{estimate_graph_cost, CostModel, GraphCost, SizeHints};
pub use lang::TensorLang;
pub use rules::{dual_form_stages, simplify_stages, Rule, Stage};

use crate::{Pass, PassError};
use egg::Runner;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tttc_ir::verify::{verify_graph, VerifyError};
use tttc_ir::{Graph, GraphError, Op, Program};

/// Why a rewrite failed (a compiler bug in this module, never a property of the user's input).
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// A rule table could not be built.
    #[error("rule table: {0}")]
    Rules(String),
    /// The graph could not be converted to or from the e-graph.
    #[error("graph `{graph}`: {message}")]
    Convert {
        /// Which graph.
        graph: String,
        /// What went wrong.
        message: String,
    },
    /// The extracted terms would form a cycle through nodes kept verbatim (only possible in a
    /// graph with scans); the caller keeps the original graph.
    #[error("graph `{graph}`: the extracted graph would have a cycle")]
    Cycle {
        /// Which graph.
        graph: String,
    },
    /// The rebuilt graph did not type-check.
    #[error("graph `{graph}`: rebuilding the rewritten graph failed: {source}")]
    Build {
        /// Which graph.
        graph: String,
        /// The builder's error.
        #[source]
        source: GraphError,
    },
    /// The rebuilt graph did not verify.
    #[error("the rewritten graph does not verify: {0}")]
    Verify(#[from] VerifyError),
}

/// Passes of the greedy DAG extractor over the e-graph (it stops earlier at a fixed point).
const DAG_PASSES: usize = 64;

/// Sweeps of local improvement of the DAG extraction.
const IMPROVE_SWEEPS: usize = 4;

/// The largest graph (in nodes) that gets the greedy DAG extraction and its local improvement,
/// whose costs grow with the square of the graph's depth (every e-class carries the set of
/// e-classes below it; every tried alternative re-costs the whole DAG), and that gets egg's
/// tree extraction, which sweeps the e-graph as many times as it is deep. Larger graphs (a
/// program of thousands of `let`s) get [`extract::tree_choice_worklist`] only: the same tree
/// cost in O(E log E). Step graphs of TTT models have hundreds of nodes.
pub const DAG_EXTRACTION_MAX_NODES: usize = 2_000;

/// Limits of each equality-saturation run: the node and iteration limits apply to every
/// stage, the time limit to all the stages of one graph together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Stop a stage once the e-graph has more e-nodes than this.
    pub node_limit: usize,
    /// Stop a stage after this many iterations.
    pub iter_limit: usize,
    /// Time budget of one graph's rewrite, all stages together.
    pub time_limit: Duration,
}

impl Default for Limits {
    /// 20 000 e-nodes, 30 iterations, 1 s.
    fn default() -> Self {
        Limits {
            node_limit: 20_000,
            iter_limit: 30,
            time_limit: Duration::from_secs(1),
        }
    }
}

/// Configuration of the rewrite passes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewriteConfig {
    /// Runner limits.
    pub limits: Limits,
    /// Extents assumed for symbolic dimensions by the cost model.
    pub hints: SizeHints,
}

/// What one runner stage did.
#[derive(Clone, Debug, PartialEq)]
pub struct StageReport {
    /// The stage's name.
    pub name: String,
    /// Iterations run.
    pub iterations: usize,
    /// E-nodes at the end.
    pub egraph_nodes: usize,
    /// E-classes at the end.
    pub egraph_classes: usize,
    /// Why the runner stopped (`Saturated`, `NodeLimit(..)`, `IterationLimit(..)`,
    /// `TimeLimit(..)`).
    pub stop_reason: String,
    /// Time spent.
    pub time: Duration,
    /// How often each rule was applied, by rule name.
    pub applied: Vec<(String, usize)>,
}

/// What rewriting one graph did.
#[derive(Clone, Debug, PartialEq)]
pub struct RewriteReport {
    /// Which graph (`main`, `main/ttt%3/step`).
    pub graph: String,
    /// The runner stages, in order.
    pub stages: Vec<StageReport>,
    /// Cost of the original graph's live nodes.
    pub cost_before: GraphCost,
    /// Cost of the resulting graph.
    pub cost_after: GraphCost,
    /// Nodes of the original graph.
    pub nodes_before: usize,
    /// Nodes of the resulting graph.
    pub nodes_after: usize,
    /// Why the original graph was kept, if it was.
    pub kept_original: Option<String>,
    /// Total time (conversion, runs, extraction, verification).
    pub time: Duration,
}

impl fmt::Display for RewriteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} -> {} nodes, cost {} -> {} ({:.1} ms)",
            self.graph,
            self.nodes_before,
            self.nodes_after,
            self.cost_before,
            self.cost_after,
            self.time.as_secs_f64() * 1e3
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "  stage {}: {} iterations, {} e-nodes, {} e-classes, stop: {} ({:.1} ms)",
                s.name,
                s.iterations,
                s.egraph_nodes,
                s.egraph_classes,
                s.stop_reason,
                s.time.as_secs_f64() * 1e3
            )?;
            if !s.applied.is_empty() {
                let applied: Vec<String> =
                    s.applied.iter().map(|(r, n)| format!("{r} x{n}")).collect();
                writeln!(f, "    applied: {}", applied.join(", "))?;
            }
        }
        if let Some(why) = &self.kept_original {
            writeln!(f, "  kept the original graph: {why}")?;
        }
        Ok(())
    }
}

/// Runs `stages` on `egraph` in order under `limits` (the time limit is shared by all stages).
pub fn run_stages(
    egraph: TensorGraph,
    stages: &[Stage],
    limits: &Limits,
) -> (TensorGraph, Vec<StageReport>) {
    let start = Instant::now();
    let mut egraph = egraph;
    let mut reports = Vec::with_capacity(stages.len());
    for stage in stages {
        let left = limits.time_limit.saturating_sub(start.elapsed());
        let stage_start = Instant::now();
        let runner: Runner<TensorLang, ShapeAnalysis> = Runner::new(ShapeAnalysis)
            .with_egraph(egraph)
            .with_node_limit(limits.node_limit)
            .with_iter_limit(limits.iter_limit)
            .with_time_limit(left)
            .run(&stage.rules);
        let mut applied: BTreeMap<String, usize> = BTreeMap::new();
        for it in &runner.iterations {
            for (rule, n) in &it.applied {
                *applied.entry(rule.to_string()).or_default() += n;
            }
        }
        reports.push(StageReport {
            name: stage.name.to_string(),
            iterations: runner.iterations.len(),
            egraph_nodes: runner.egraph.total_number_of_nodes(),
            egraph_classes: runner.egraph.number_of_classes(),
            stop_reason: runner
                .stop_reason
                .as_ref()
                .map_or_else(|| "none".to_string(), |r| format!("{r:?}")),
            time: stage_start.elapsed(),
            applied: applied.into_iter().collect(),
        });
        egraph = runner.egraph;
    }
    (egraph, reports)
}

/// Rewrites one graph: loads it, runs `stages`, extracts and rebuilds it. The result has the
/// same inputs and outputs; it is the original graph when rewriting would not lower its cost.
/// `label` names the graph in errors and in the report.
pub fn rewrite_graph(
    graph: &Graph,
    stages: &[Stage],
    config: &RewriteConfig,
    label: &str,
) -> Result<(Graph, RewriteReport), RewriteError> {
    let start = Instant::now();
    let cost_before = estimate_graph_cost(graph, &config.hints);
    let loaded = convert::load(graph, label)?;
    let (egraph, stage_reports) = run_stages(loaded.egraph, stages, &config.limits);
    let loaded = convert::Loaded { egraph, ..loaded };
    // Two extractions (greedy DAG, then egg's tree cost); the cheaper graph that verifies wins,
    // and the original graph unless one is cheaper than it.
    let roots = loaded.roots(graph);
    let mut choices = Vec::with_capacity(2);
    if graph.node_count() <= DAG_EXTRACTION_MAX_NODES {
        let dag = extract::dag_choice(&loaded.egraph, &config.hints, DAG_PASSES);
        choices.push(extract::improve(
            &loaded.egraph,
            &config.hints,
            &dag,
            &roots,
            IMPROVE_SWEEPS,
        ));
    }
    choices.push(if graph.node_count() <= DAG_EXTRACTION_MAX_NODES {
        extract::tree_choice(&loaded.egraph, &config.hints)
    } else {
        extract::tree_choice_worklist(&loaded.egraph, &config.hints)
    });
    let mut best: Option<(Graph, GraphCost)> = None;
    let mut failures = Vec::new();
    for choice in &choices {
        match convert::extract(graph, &loaded, choice, label) {
            Ok(g) => {
                verify_graph(&g, label)?;
                let cost = estimate_graph_cost(&g, &config.hints);
                if best.as_ref().is_none_or(|(_, c)| cost.total() < c.total()) {
                    best = Some((g, cost));
                }
            }
            // Only verbatim (scan) nodes can make a choice cyclic.
            Err(e @ RewriteError::Cycle { .. }) => failures.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    let mut kept_original = None;
    let rebuilt = match best {
        Some((g, cost)) if cost.total() <= cost_before.total() => g,
        Some((_, cost)) => {
            kept_original = Some(format!(
                "the extracted graph costs more ({} > {})",
                cost.total(),
                cost_before.total()
            ));
            graph.clone()
        }
        None => {
            kept_original = Some(failures.join("; "));
            graph.clone()
        }
    };
    let report = RewriteReport {
        graph: label.to_string(),
        stages: stage_reports,
        cost_before,
        cost_after: estimate_graph_cost(&rebuilt, &config.hints),
        nodes_before: graph.node_count(),
        nodes_after: rebuilt.node_count(),
        kept_original,
        time: start.elapsed(),
    };
    Ok((rebuilt, report))
}

/// Whether `stages` prove outputs `a` and `b` of `graph` equal (they end in one e-class).
/// A testing and debugging aid: `false` means "not proven", not "different".
pub fn prove_equal(
    graph: &Graph,
    a: &str,
    b: &str,
    stages: &[Stage],
    limits: &Limits,
) -> Result<bool, RewriteError> {
    let fail = |message: String| RewriteError::Convert {
        graph: "prove_equal".into(),
        message,
    };
    let loaded = convert::load(graph, "prove_equal")?;
    let (na, nb) = (
        graph
            .output_by_name(a)
            .ok_or_else(|| fail(format!("no output `{a}`")))?,
        graph
            .output_by_name(b)
            .ok_or_else(|| fail(format!("no output `{b}`")))?,
    );
    let (ca, cb) = (
        loaded
            .class(na)
            .ok_or_else(|| fail(format!("output `{a}` is not in the e-graph")))?,
        loaded
            .class(nb)
            .ok_or_else(|| fail(format!("output `{b}` is not in the e-graph")))?,
    );
    let (egraph, _) = run_stages(loaded.egraph, stages, limits);
    Ok(egraph.find(ca) == egraph.find(cb))
}

/// Rewrites a graph into its dual form with [`dual_form_stages`].
pub fn dual_form_graph(
    graph: &Graph,
    config: &RewriteConfig,
    label: &str,
) -> Result<(Graph, RewriteReport), RewriteError> {
    let stages = dual_form_stages().map_err(RewriteError::Rules)?;
    rewrite_graph(graph, &stages, config, label)
}

/// Simplifies a graph with [`simplify_stages`].
pub fn simplify_graph(
    graph: &Graph,
    config: &RewriteConfig,
    label: &str,
) -> Result<(Graph, RewriteReport), RewriteError> {
    let stages = simplify_stages().map_err(RewriteError::Rules)?;
    rewrite_graph(graph, &stages, config, label)
}

/// Which of the scans' graphs a rewrite stage works on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScanGraphs {
    /// Every forward scan's `step` and every backward scan's `step_vjp` (the pipeline from
    /// source).
    #[default]
    All,
    /// Only the backward scans' `step_vjp` graphs: the gradient pipeline
    /// ([`crate::pipeline::Pipeline::gradient`]), whose forward scans were optimized already.
    Backward,
}

/// Rewrites the step graph of every scan of `graph` (with [`ScanGraphs::All`]) and the
/// `step_vjp` graph of every scan's backward (`ttt_vjp`) in place with `stages`.
///
/// Each distinct graph is rewritten once: a model's layers unroll into one scan per layer
/// whose step graphs are equal ([`Graph::structural_key`]; the layers differ only
/// in the weights the scans read), and equality saturation on each again would make the
/// compile time grow with depth for nothing. A repeat gets the first one's result (a copy of
/// its report, under the repeat's label, with the time the lookup took).
fn rewrite_steps(
    graph: &mut Graph,
    stages: &[Stage],
    config: &RewriteConfig,
    path: &str,
    which: ScanGraphs,
) -> Result<Vec<RewriteReport>, RewriteError> {
    let mut reports = Vec::new();
    // Every distinct graph rewritten so far, by its structural key: the graph after and the
    // report.
    let mut done: std::collections::HashMap<String, (Graph, RewriteReport)> =
        std::collections::HashMap::new();
    for id in graph.node_ids() {
        let Some(node) = graph.node_mut(id) else {
            continue;
        };
        let (slot, label) = match &mut node.op {
            Op::Ttt(scan) if which == ScanGraphs::All => {
                (&mut scan.step, format!("{path}/ttt%{}/step", id.index()))
            }
            Op::TttVjp { scan, .. } => (
                &mut scan.step_vjp,
                format!("{path}/ttt_vjp%{}/step_vjp", id.index()),
            ),
            _ => continue,
        };
        let Some(step) = slot.as_ref() else {
            continue;
        };
        let start = std::time::Instant::now();
        let key = step.structural_key();
        if let Some((after, report)) = key.as_ref().and_then(|k| done.get(k)) {
            let mut report = report.clone();
            report.graph = label;
            report.time = start.elapsed();
            *slot = Some(after.clone());
            reports.push(report);
            continue;
        }
        let (new_step, report) = rewrite_graph(step, stages, config, &label)?;
        if let Some(key) = key {
            done.insert(key, (new_step.clone(), report.clone()));
        }
        *slot = Some(new_step);
        reports.push(report);
    }
    Ok(reports)
}

/// Runs the dual-form rewrite on every scan's step graph of `program` (scans without a step
/// graph, and the rest of the program, are left alone) and on every `step_vjp` graph.
/// Returns one report per graph rewritten.
pub fn dual_form_program(
    program: &mut Program,
    config: &RewriteConfig,
) -> Result<Vec<RewriteReport>, RewriteError> {
    dual_form_program_of(program, config, ScanGraphs::All)
}

/// [`dual_form_program`] on the scans' graphs `which`.
pub fn dual_form_program_of(
    program: &mut Program,
    config: &RewriteConfig,
    which: ScanGraphs,
) -> Result<Vec<RewriteReport>, RewriteError> {
    let stages = dual_form_stages().map_err(RewriteError::Rules)?;
    rewrite_steps(&mut program.graph, &stages, config, "main", which)
}

/// Simplifies every scan's step graph (and every `step_vjp`), then the main graph around its
/// scans. Returns one report per graph rewritten (the main graph's last).
pub fn simplify_program(
    program: &mut Program,
    config: &RewriteConfig,
) -> Result<Vec<RewriteReport>, RewriteError> {
    simplify_program_of(program, config, ScanGraphs::All)
}

/// [`simplify_program`] on the scans' graphs `which` (and the main graph).
pub fn simplify_program_of(
    program: &mut Program,
    config: &RewriteConfig,
    which: ScanGraphs,
) -> Result<Vec<RewriteReport>, RewriteError> {
    let stages = simplify_stages().map_err(RewriteError::Rules)?;
    let mut reports = rewrite_steps(&mut program.graph, &stages, config, "main", which)?;
    let (graph, report) = rewrite_graph(&program.graph, &stages, config, "main")?;
    program.graph = graph;
    reports.push(report);
    Ok(reports)
}

/// A shared view of the reports a pass instance wrote on its last run: clone it before the
/// pass is boxed into a pipeline, read it after the pipeline ran.
#[derive(Clone, Debug, Default)]
pub struct ReportHandle(Arc<Mutex<Vec<RewriteReport>>>);

impl ReportHandle {
    /// The reports of the last run (empty before the first).
    pub fn reports(&self) -> Vec<RewriteReport> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn store(&self, reports: Vec<RewriteReport>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = reports;
    }
}

/// The `dual_form` pass: equality saturation of every scan's step graph with every rule table
/// (see [`dual_form_program`]). The reports of its last run are kept for display.
#[derive(Debug, Default)]
pub struct DualForm {
    /// Limits and size hints.
    pub config: RewriteConfig,
    /// Which of the scans' graphs it rewrites.
    pub graphs: ScanGraphs,
    reports: ReportHandle,
}

impl DualForm {
    /// The pass with the given configuration.
    pub fn new(config: RewriteConfig) -> Self {
        DualForm {
            config,
            graphs: ScanGraphs::All,
            reports: ReportHandle::default(),
        }
    }

    /// The pass of the gradient pipeline: the `step_vjp` graphs only ([`ScanGraphs::Backward`]).
    pub fn backward() -> Self {
        DualForm {
            graphs: ScanGraphs::Backward,
            ..DualForm::default()
        }
    }

    /// The reports of the last run (one per step graph).
    pub fn reports(&self) -> Vec<RewriteReport> {
        self.reports.reports()
    }

    /// A handle on the reports that stays valid after the pass is moved into a pipeline.
    pub fn report_handle(&self) -> ReportHandle {
        self.reports.clone()
    }
}

impl Pass for DualForm {
    fn name(&self) -> &'static str {
        "dual_form"
    }

    fn run(&self, program: &mut Program) -> Result<(), PassError> {
        let reports = dual_form_program_of(program, &self.config, self.graphs).map_err(|e| {
            PassError::Failed {
                pass: "dual_form",
                source: Box::new(e),
            }
        })?;
        self.reports.store(reports);
        Ok(())
    }
}

/// The `simplify` pass: the simplification rules on the main graph (around its scans) and on
/// every scan's step graph (see [`simplify_program`]). The reports of its last run are kept.
#[derive(Debug, Default)]
pub struct Simplify {
    /// Limits and size hints.
    pub config: RewriteConfig,
    /// Which of the scans' graphs it rewrites.
    pub graphs: ScanGraphs,
    reports: ReportHandle,
}

impl Simplify {
    /// The pass with the given configuration.
    pub fn new(config: RewriteConfig) -> Self {
        Simplify {
            config,
            graphs: ScanGraphs::All,
            reports: ReportHandle::default(),
        }
    }

    /// The pass of the gradient pipeline: the `step_vjp` graphs only ([`ScanGraphs::Backward`]).
    pub fn backward() -> Self {
        Simplify {
            graphs: ScanGraphs::Backward,
            ..Simplify::default()
        }
    }

    /// The reports of the last run (step graphs first, then the main graph).
    pub fn reports(&self) -> Vec<RewriteReport> {
        self.reports.reports()
    }

    /// A handle on the reports that stays valid after the pass is moved into a pipeline.
    pub fn report_handle(&self) -> ReportHandle {
        self.reports.clone()
    }
}

impl Pass for Simplify {
    fn name(&self) -> &'static str {
        "simplify"
    }

    fn run(&self, program: &mut Program) -> Result<(), PassError> {
        let reports = simplify_program_of(program, &self.config, self.graphs).map_err(|e| {
            PassError::Failed {
                pass: "simplify",
                source: Box::new(e),
            }
        })?;
        self.reports.store(reports);
        Ok(())
    }
}
