//! Lowering of a specialized program to the kernel IR ([`tttc_ir::kernel`]): loops over flat
//! buffers.
//!
//! Every dimension must be known (bind the program first); every `ttt` scan must have its step
//! graph (the scan-lowering pass fills it in). The result computes what the graph interpreter
//! computes, accumulating in the same order where that is cheap (matmuls, reductions, `mix`,
//! `mix_outer` and `sum_to` bitwise like `tttc_backends::interp`).
//!
//! How values are represented:
//!
//! - program inputs are `Input` buffers (row-major, in graph input order), graph outputs are
//!   `Output` buffers (row-major, in output order), everything else is a temporary;
//! - a node's value is a *view* where possible: a buffer, a base offset and one stride per axis.
//!   `reshape` (when the strides allow it), `transpose`, `permute` and `expand` (stride 0 on
//!   broadcast axes) are free: they only change the view, and binary broadcasting is stride 0;
//! - elementwise nodes (`unary`, `binary`, `const`, `extent`, `iota`) stay expressions and are
//!   inlined into their consumer's loop when they have exactly one user (constants and iotas
//!   always); with more users, or when a consumer reads them more than once per element
//!   (matmul operands, broadcasts), they are materialized into a buffer with a loop nest;
//! - `matmul` is a zero-initialisation and an accumulation over the contraction, with loops
//!   ordered batch, m, k, n (n innermost, contiguous) — or, with
//!   [`LowerOptions::library_gemm`], one [`Stmt::Gemm`] over views of its operands when it is
//!   in the main graph (outside every scan) and `m·n·k` is at least
//!   [`LowerOptions::gemm_min_mnk`]; `sum`/`mean`, `sum_to`, `mix` and
//!   `mix_outer` are an initialisation and an accumulation (the mean divides afterwards);
//! - `gather` stays lazy too: each element loads its table row through a data-dependent index
//!   ([`Index::Load`] of the ids, clamped into the table's rows), so with one use the rows are
//!   read inside the consumer's loop (with more, it is materialized like any costly value,
//!   a copy of the rows); `scatter_add`, its
//!   adjoint, is a zeroed result and one serial accumulation over the operand's rows;
//! - a `ttt` scan is a [`Schedule::Parallel`] loop over its slices (the product of the mapped
//!   extents; an operand's slice is found by decomposing the slice index with `/` and `%`).
//!   Inside it, `Local` state buffers are initialised from the initial states' slices; a serial
//!   loop over the full mini-batches runs the step graph specialized to `$k = K` on views of the
//!   operands at the mini-batch's first token (no copies), then the remainder (`$k = L mod K`,
//!   with `token_eta[0..r]` per position; a per-token `token_eta` is viewed like `lr`) runs once
//!   if there is one. The step's `out` rows are written
//!   straight into the output sequence; its `next_<state>` values go to `Local` temporaries
//!   that are then copied into the state buffers, except where the loop computing one is the
//!   last reader of the old state and reads it only at the element it writes: that loop then
//!   stores into the state buffer itself (`in_place.rs`); at the end the states are copied into the
//!   final-state results. Every temporary inside the slice loop is `Local`;
//! - a scan's backward (`ttt_vjp`) is a [`Schedule::Parallel`] loop over the slices too: the
//!   forward keeps a checkpoint of the state every `G` mini-batches in a `Local` buffer
//!   `[⌈nmb/G⌉, state]`, then the groups run in reverse, each recomputing its states into a
//!   `Local` group buffer `[G, state]` and running `step_vjp` on its mini-batches in reverse
//!   (`scan_vjp.rs`; the interpreter's algorithm, docs/gradients.md).
//!
//! Every loop is [`Schedule::Serial`] except the slice loops; scheduling is a later pass's job.

mod elementwise;
mod gather;
mod graph;
mod in_place;
mod indexing;
mod matmul;
mod reduce;
mod scan;
mod scan_vjp;
mod slice_shift;
mod value;

use graph::*;
use indexing::*;
use value::*;

use std::collections::{BTreeMap, HashMap};
use tttc_ir::kernel::{
    BufId, Buffer, BufferKind, Index, KernelProgram, Layout, MemorySpace, Schedule, Stmt, Value,
    VarId,
};
use tttc_ir::program::specialize_graph;
use tttc_ir::scan::{OperandKind, TokenEtaForm};
use tttc_ir::{
    BinaryOp, DType, Graph, NodeId, NodeType, Op, Program, ReduceOp, TttScan, UnaryOp,
    MINI_BATCH_DIM,
};

/// Why a program could not be lowered to the kernel IR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LowerKernelError {
    /// A node's type (or a shape in its op) still has a symbolic dimension.
    #[error(
        "graph `{graph}`, {node}: dimension `{symbol}` is unbound; specialize the program \
         (bind every dimension) before lowering it to kernels"
    )]
    UnboundDim {
        /// Which graph (`main`, `main/ttt%9/step[$k=16]`, ...).
        graph: String,
        /// The node, as `%id (op)`.
        node: String,
        /// The symbol.
        symbol: String,
    },
    /// A scan has no step graph.
    #[error(
        "graph `{graph}`, {node}: the ttt scan has no step graph; run the scan-lowering pass \
         (`primal`) first"
    )]
    MissingStep {
        /// Which graph.
        graph: String,
        /// The scan node.
        node: String,
    },
    /// Something this lowering does not handle (a scan inside a scan, mixed element types).
    #[error("graph `{graph}`, {node}: unsupported: {message}")]
    Unsupported {
        /// Which graph.
        graph: String,
        /// The node.
        node: String,
        /// What is not supported.
        message: String,
    },
    /// The graph is ill-formed (operands that do not fit their op, a cycle, a missing node...).
    #[error("ill-formed graph `{graph}`: {message}")]
    Invalid {
        /// Which graph.
        graph: String,
        /// What is wrong.
        message: String,
    },
    /// A bug: the kernel program made breaks a rule of the kernel IR.
    #[error("lowering made an ill-formed kernel program")]
    Malformed(#[from] tttc_ir::kernel::VerifyError),
}

type Res<T> = Result<T, LowerKernelError>;

/// Largest number of elements one value may have (keeps every offset well within `i64`).
const MAX_ELEMENTS: usize = 1 << 48;

/// Smallest `m·n·k` of one matrix product (per batch index) that [`LowerOptions::library`]
/// lowers to a [`Stmt::Gemm`]: 32³.
///
/// How it was chosen: `bench/gemm.sh` times square products `[s, s] @ [s, s]` through
/// `tttc bench` on llvm with the library forced on (`TTTC_GEMM_MIN_MNK=0`) and off
/// (`TTTC_GEMM_MIN_MNK=off`). On the 2-vCPU development machine the library was at least as
/// fast as the loop nest at every size, and faster in every run from `s = 32` on; at `s = 16`
/// both take about a microsecond and the difference is noise (`bench/GEMM.md`). Products
/// smaller than 32³ keep the loop nest, and with it the interpreter's exact summation order.
pub const GEMM_MIN_MNK: u64 = 32 * 32 * 32;

/// The environment variable overriding the CPU's matrix-library threshold
/// ([`LowerOptions::library_from_env`]).
pub const GEMM_MIN_MNK_ENV: &str = "TTTC_GEMM_MIN_MNK";

/// Choices of the lowering that depend on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowerOptions {
    /// Whether large matrix products in the main graph become [`Stmt::Gemm`] statements, which
    /// the CPU JITs (LLVM, Cranelift) run with a BLAS-like library. Off for targets that run
    /// loops only (GPUs); ahead-of-time libraries expand gemms back into loops
    /// ([`tttc_ir::kernel::expand_gemm`]).
    pub library_gemm: bool,
    /// Smallest `m·n·k` of one matrix product lowered to a gemm (see [`GEMM_MIN_MNK`]).
    pub gemm_min_mnk: u64,
    /// Whether a transposed right operand of a matrix product is copied to contiguous rows in
    /// blocks of columns, which keeps a CPU's gathers in its level-1 cache (on for CPU targets;
    /// GPU targets keep the plain row-by-row copy that their schedule maps onto threads).
    pub blocked_transposes: bool,
    /// Whether a product that is only ever read transposed (`transpose(a @ b)` and nothing
    /// else) is computed as `bᵀ @ aᵀ` into row-major memory, so its readers run along
    /// contiguous rows instead of gathering down columns (on for CPU targets). The same
    /// products in the same order: the results are identical.
    pub transposed_products: bool,
}

impl Default for LowerOptions {
    /// Loops only.
    fn default() -> Self {
        LowerOptions {
            library_gemm: false,
            gemm_min_mnk: GEMM_MIN_MNK,
            blocked_transposes: false,
            transposed_products: false,
        }
    }
}

impl LowerOptions {
    /// Matrix products of at least [`GEMM_MIN_MNK`] as gemms, transposes copied in blocks: the
    /// CPU targets.
    pub fn library() -> Self {
        LowerOptions {
            library_gemm: true,
            blocked_transposes: true,
            transposed_products: true,
            ..LowerOptions::default()
        }
    }

    /// [`LowerOptions::library`] unless the environment variable `TTTC_GEMM_MIN_MNK` says
    /// otherwise: `off` (loops only) or a number (the threshold; `0` makes every matrix product
    /// of the main graph a gemm). For benchmarks and measurements of the threshold; anything
    /// else is ignored.
    pub fn library_from_env() -> Self {
        let opts = LowerOptions::library();
        match std::env::var(GEMM_MIN_MNK_ENV) {
            Ok(v) if v.trim() == "off" => LowerOptions {
                library_gemm: false,
                ..opts
            },
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(n) => LowerOptions {
                    gemm_min_mnk: n,
                    ..opts
                },
                Err(_) => opts,
            },
            Err(_) => opts,
        }
    }
}

/// Lowers a specialized program (every dimension known, every scan with its step graph) to the
/// kernel IR with loops only ([`LowerOptions::default`]). See the module documentation for what
/// the result looks like.
pub fn lower_program(program: &Program) -> Result<KernelProgram, LowerKernelError> {
    lower_program_with(program, &LowerOptions::default())
}

/// [`lower_program`] with `options`.
pub fn lower_program_with(
    program: &Program,
    options: &LowerOptions,
) -> Result<KernelProgram, LowerKernelError> {
    lower_graph_with(&program.name, &program.graph, options)
}

/// Lowers a specialized graph to a kernel program called `name` (see [`lower_program`]); the
/// result is checked with the kernel IR's verifier ([`tttc_ir::kernel::verify`]).
pub fn lower_graph(name: &str, graph: &Graph) -> Result<KernelProgram, LowerKernelError> {
    lower_graph_with(name, graph, &LowerOptions::default())
}

/// [`lower_graph`] with `options`.
pub fn lower_graph_with(
    name: &str,
    graph: &Graph,
    options: &LowerOptions,
) -> Result<KernelProgram, LowerKernelError> {
    let main = "main".to_string();
    let dtype = graph_dtype(graph).ok_or_else(|| LowerKernelError::Invalid {
        graph: main.clone(),
        message: "the graph has no tensor-typed node".into(),
    })?;
    let mut l = Lowerer {
        options: *options,
        dtype,
        buffers: Vec::new(),
        vars: 0,
    };
    let mut inputs = Vec::with_capacity(graph.inputs().len());
    for &id in graph.inputs() {
        let input_name = graph
            .input_name(id)
            .ok_or_else(|| LowerKernelError::Invalid {
                graph: main.clone(),
                message: format!("%{} is listed as an input", id.index()),
            })?;
        let shape = known_shape(graph, id, &main)?;
        let buf = l.buffer(
            input_name.to_string(),
            BufferKind::Input(input_name.to_string()),
            MemorySpace::Global,
            &shape,
        );
        inputs.push(Val::view(shape, buf, Index::Const(0)));
    }
    let mut dests = Vec::with_capacity(graph.outputs().len());
    let mut seen = std::collections::BTreeSet::new();
    for o in graph.outputs() {
        if !seen.insert(o.name.as_str()) {
            return Err(LowerKernelError::Invalid {
                graph: main,
                message: format!("two outputs are named `{}`", o.name),
            });
        }
        if graph.get(o.node).is_none() {
            return Err(LowerKernelError::Invalid {
                graph: main,
                message: format!("output `{}` names a missing node", o.name),
            });
        }
        let shape = known_shape(graph, o.node, &main)?;
        let buf = l.buffer(
            o.name.clone(),
            BufferKind::Output(o.name.clone()),
            MemorySpace::Global,
            &shape,
        );
        dests.push(Some(Dest {
            buf,
            offset: Index::Const(0),
        }));
    }
    let mut body = Vec::new();
    l.lower_graph(
        GraphJob {
            graph,
            path: main,
            prefix: String::new(),
            space: MemorySpace::Global,
            inputs,
            dests,
        },
        &mut body,
    )?;
    let p = KernelProgram {
        name: name.to_string(),
        dtype,
        buffers: l.buffers,
        vars: l.vars,
        body,
        functions: Vec::new(),
        memory: None,
    };
    tttc_ir::kernel::verify(&p)?;
    Ok(p)
}

/// The element type of the graph's first tensor-typed node.
fn graph_dtype(graph: &Graph) -> Option<DType> {
    graph
        .inputs()
        .iter()
        .chain(&graph.node_ids())
        .find_map(|&id| {
            graph.get(id).and_then(|n| match &n.ty {
                NodeType::Tensor(t) => Some(t.dtype),
                NodeType::Tuple(ts) => ts.first().map(|t| t.dtype),
            })
        })
}

/// `%id (op)`.
fn describe(graph: &Graph, id: NodeId) -> String {
    match graph.get(id) {
        Some(n) => format!("%{} ({})", id.index(), n.op.name()),
        None => format!("%{}", id.index()),
    }
}

/// The known extents of tensor node `id`.
fn known_shape(graph: &Graph, id: NodeId, path: &str) -> Res<Vec<usize>> {
    let Some(t) = graph.get(id).and_then(|n| n.ty.tensor()) else {
        return Err(LowerKernelError::Invalid {
            graph: path.to_string(),
            message: format!("{} is not a tensor", describe(graph, id)),
        });
    };
    known_dims(&t.shape, graph, id, path)
}

fn known_dims(shape: &tttc_ir::Shape, graph: &Graph, id: NodeId, path: &str) -> Res<Vec<usize>> {
    let dims = shape
        .0
        .iter()
        .map(|d| {
            d.known().ok_or_else(|| LowerKernelError::UnboundDim {
                graph: path.to_string(),
                node: describe(graph, id),
                symbol: d.to_string(),
            })
        })
        .collect::<Res<Vec<usize>>>()?;
    if numel(&dims).is_none() {
        return Err(LowerKernelError::Invalid {
            graph: path.to_string(),
            message: format!("{}: shape {dims:?} is too large", describe(graph, id)),
        });
    }
    Ok(dims)
}

/// Number of elements, if not absurdly large.
fn numel(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}
