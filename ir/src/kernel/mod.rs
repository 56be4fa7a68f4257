//! The kernel IR: a program as loops over flat buffers — what every native backend (LLVM for
//! CPU, NVPTX for GPUs, Cranelift) consumes.
//!
//! *What* is computed is [`Stmt`]s over [`Buffer`]s: loops with known extents, stores of
//! [`Value`] expressions at [`Index`] expressions. *How* it is scheduled is separate: every
//! loop carries a [`Schedule`] (serial, parallel across threads, vectorized, unrolled, or mapped
//! to GPU blocks/threads) that a scheduling pass sets and a backend honours; changing a schedule
//! never changes the result beyond floating-point reassociation within a vector.
//!
//! Buffers are flat arrays of the program's element type with a [`Layout`] (shape and strides,
//! for documentation and checking) and a [`MemorySpace`]: `Global` buffers are the program's
//! inputs, outputs and whole-program temporaries; `Local` buffers are private to one iteration of
//! the innermost enclosing parallel loop (per thread: scratch of one scan slice); `Shared` is GPU
//! shared memory. All extents are known: a kernel program is compiled for one set of shapes.
//! An optional [`MemoryPlan`] places `Global` temporaries in one arena (see `memory.rs`).

mod expand;
mod inline;
mod memory;
mod print;
mod verify;
mod walk;

pub use expand::expand_gemm;
pub use inline::inline_calls;
pub use memory::{aliased_params, lifetimes, steps, Lifetime, MemoryPlan, Placement};
pub use print::{describe_stmt, first_statement_id, print_kernel_program, statement_by_id};
pub use verify::{verify, VerifyError, MAX_EXPR_DEPTH, MAX_LOOP_DEPTH};
pub use walk::{buffers_used, vars_used, Access};

use crate::op::{BinaryOp, UnaryOp};
use crate::shape::DType;
use serde::{Deserialize, Serialize};

/// A buffer's index in [`KernelProgram::buffers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BufId(pub u32);

/// A loop variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VarId(pub u32);

/// A kernel function's index in [`KernelProgram::functions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FuncId(pub u32);

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemorySpace {
    /// Visible to the whole program (inputs, outputs, temporaries outside parallel loops).
    Global,
    /// Private to one iteration of the innermost enclosing parallel loop (per-thread scratch).
    Local,
    /// GPU shared memory (per block).
    Shared,
}

impl MemorySpace {
    /// Whether a buffer in this space starts fresh at every iteration of a loop run as
    /// `schedule` (the kernel executor's definition): `Local` at every `Parallel`, `GpuThread`
    /// or `GpuBlock` iteration, `Shared` at every `GpuBlock` iteration, `Global` never.
    pub fn fresh_each_iteration_of(self, schedule: Schedule) -> bool {
        match self {
            MemorySpace::Local => matches!(
                schedule,
                Schedule::Parallel | Schedule::GpuThread | Schedule::GpuBlock
            ),
            MemorySpace::Shared => schedule == Schedule::GpuBlock,
            MemorySpace::Global => false,
        }
    }
}

/// What a buffer is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferKind {
    /// A program input (read only), by name.
    Input(String),
    /// A program output, by name.
    Output(String),
    /// A temporary.
    Temp,
}

/// Shape and element strides of a buffer's logical tensor (row-major unless stated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Extents.
    pub shape: Vec<usize>,
    /// Element strides.
    pub strides: Vec<usize>,
}

impl Layout {
    /// The row-major layout of `shape`.
    pub fn row_major(shape: &[usize]) -> Layout {
        let mut strides = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        Layout {
            shape: shape.to_vec(),
            strides,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the layout has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A flat array of the program's element type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffer {
    /// A name for printing (the graph node or tensor it holds).
    pub name: String,
    /// Input, output or temporary.
    pub kind: BufferKind,
    /// Where it lives.
    pub space: MemorySpace,
    /// Its logical tensor.
    pub layout: Layout,
}

impl Buffer {
    /// A buffer of a row-major tensor of `shape`.
    pub fn row_major(name: &str, kind: BufferKind, space: MemorySpace, shape: &[usize]) -> Buffer {
        Buffer {
            name: name.into(),
            kind,
            space,
            layout: Layout::row_major(shape),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.layout.len()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.layout.is_empty()
    }
}

/// Integer index arithmetic (element offsets into buffers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Index {
    /// A constant.
    Const(i64),
    /// A loop variable.
    Var(VarId),
    /// Sum.
    Add(Box<Index>, Box<Index>),
    /// Product with a constant.
    Mul(Box<Index>, i64),
    /// Quotient by a positive constant (rounding towards zero; operands are non-negative).
    Div(Box<Index>, i64),
    /// Remainder by a positive constant.
    Rem(Box<Index>, i64),
    /// A data-dependent index: the element `buf[index]` (a float holding an integer, such as a
    /// token id) truncated towards zero and clamped into `0..bound` (NaN gives 0). Integers in
    /// `0..bound` come out unchanged; anything else is clamped, so an access built on it can be
    /// proven in bounds whatever the data holds (`gather` reads table rows with it).
    Load {
        /// The buffer read.
        buf: BufId,
        /// The element read (it may not itself contain a [`Index::Load`]).
        index: Box<Index>,
        /// The result lies in `0..bound` (positive).
        bound: i64,
    },
}

impl Index {
    /// `a + b`, folding constants.
    pub fn sum(a: Index, b: Index) -> Index {
        match (a, b) {
            (Index::Const(0), x) | (x, Index::Const(0)) => x,
            (Index::Const(x), Index::Const(y)) => Index::Const(x + y),
            (a, b) => Index::Add(Box::new(a), Box::new(b)),
        }
    }

    /// `a * c`, folding constants.
    pub fn scaled(a: Index, c: i64) -> Index {
        match (a, c) {
            (_, 0) => Index::Const(0),
            (x, 1) => x,
            (Index::Const(x), c) => Index::Const(x * c),
            (a, c) => Index::Mul(Box::new(a), c),
        }
    }

    /// The loop variable `v`.
    pub fn var(v: VarId) -> Index {
        Index::Var(v)
    }

    /// `buf[index]` read as an integer in `0..bound` (see [`Index::Load`]).
    pub fn load(buf: BufId, index: Index, bound: i64) -> Index {
        Index::Load {
            buf,
            index: Box::new(index),
            bound,
        }
    }

    /// The integer [`Index::Load`] computes from the element `x` it read: truncated towards
    /// zero and clamped into `0..bound` (NaN gives 0). The one definition every evaluator and
    /// code generator follows.
    pub fn clamp_loaded(x: f64, bound: i64) -> i64 {
        let top = (bound.max(1) - 1) as f64;
        if x.is_nan() || x <= 0.0 {
            0
        } else if x >= top {
            top as i64
        } else {
            x as i64
        }
    }
}

/// A floating-point expression (of the program's element type).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    /// `buf[index]`.
    Load {
        /// The buffer.
        buf: BufId,
        /// The element.
        index: Index,
    },
    /// A constant.
    Const(f64),
    /// An index converted to a float (iotas, extents).
    FromIndex(Index),
    /// An elementwise function.
    Unary(UnaryOp, Box<Value>),
    /// An elementwise function of two values.
    Binary(BinaryOp, Box<Value>, Box<Value>),
}

/// How a loop is executed. Never changes what is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// One iteration after another.
    Serial,
    /// Iterations spread over CPU threads (they must be independent).
    Parallel,
    /// Vectorized by `width` lanes. Its iterations must be independent (no iteration reads or
    /// writes an element another one writes): the LLVM backend tells LLVM so
    /// (`llvm.loop.parallel_accesses`), so that it vectorizes without a dependence proof.
    Vector(u32),
    /// Unrolled by `factor`.
    Unroll(u32),
    /// One GPU block per iteration.
    GpuBlock,
    /// One GPU thread per iteration.
    GpuThread,
}

/// A statement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stmt {
    /// `for var in 0..extent { body }`.
    Loop {
        /// The loop variable.
        var: VarId,
        /// Number of iterations.
        extent: usize,
        /// How it runs.
        schedule: Schedule,
        /// The body.
        body: Vec<Stmt>,
    },
    /// `buf[index] = value`.
    Store {
        /// The buffer written.
        buf: BufId,
        /// The element.
        index: Index,
        /// The value.
        value: Value,
    },
    /// All threads of a GPU block wait here until every one has arrived, and the memory
    /// writes each made before it are visible to all after it (`bar.sync 0`). Only meaningful
    /// directly inside a [`Schedule::GpuBlock`] loop's body, outside any
    /// [`Schedule::GpuThread`] loop (where every thread of the block reaches it); CPU backends
    /// and the plain kernel executor run statements in order and treat it as a no-op.
    Barrier,
    /// A dense (batched) matrix product over strided views of buffers: `C (+)= A @ B` (see
    /// [`Gemm`]). Only at the top level of a program, outside every loop (so CPU backends may
    /// run it on all threads); GPU targets never see one ([`expand_gemm`] turns it into the
    /// equivalent loop nest).
    Gemm(Box<Gemm>),
    /// Runs the body of function `func` with every parameter buffer read as the argument in
    /// its place (`args[i]` for [`KernelFunction::params`]`[i]`): exactly what inlining the
    /// body with the buffers renamed would compute ([`inline_calls`] is the definition). Only
    /// at the top level of [`KernelProgram::body`] (see [`verify`]).
    Call {
        /// The function.
        func: FuncId,
        /// One `Global` buffer per parameter, pairwise distinct, each with its parameter's
        /// layout.
        args: Vec<BufId>,
    },
}

/// One operand of a [`Gemm`]: a strided view of a buffer as a batch of matrices. Element
/// `(b₀, …, r, c)` is `buf[offset + Σ bᵢ·batch_strides[i] + r·row_stride + c·col_stride]`.
/// Strides may be zero (a broadcast) or negative.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixView {
    /// The buffer.
    pub buf: BufId,
    /// Element offset of element `(0, …, 0, 0)`.
    pub offset: i64,
    /// One element stride per batch axis of the [`Gemm`].
    pub batch_strides: Vec<i64>,
    /// Element stride between rows.
    pub row_stride: i64,
    /// Element stride between columns.
    pub col_stride: i64,
}

impl MatrixView {
    /// The element index of `(batch, row, col)`, if it does not overflow `i64`.
    pub fn at(&self, batch: &[usize], row: usize, col: usize) -> Option<i64> {
        let mut i = self.offset;
        for (&b, &s) in batch.iter().zip(&self.batch_strides) {
            i = i.checked_add(i64::try_from(b).ok()?.checked_mul(s)?)?;
        }
        i = i.checked_add(i64::try_from(row).ok()?.checked_mul(self.row_stride)?)?;
        i.checked_add(i64::try_from(col).ok()?.checked_mul(self.col_stride)?)
    }
}

/// A dense matrix product `C[b] = A[b] @ B[b]` (or `C[b] += A[b] @ B[b]` when `accumulate`) for
/// every batch index `b` in `batch` (row-major order), where `A[b]` is `m × k`, `B[b]` is
/// `k × n` and `C[b]` is `m × n`, each a [`MatrixView`] with one batch stride per batch axis.
///
/// Its meaning is the reference loop nest (which the kernel interpreter runs and
/// [`expand_gemm`] emits): per batch index and row `i`, the row is zeroed unless accumulating,
/// then for `p` in `0..k` in order, for every `j`, `C[i, j] = C[i, j] + A[i, p] * B[p, j]`.
/// A code generator may compute it in another summation order (a BLAS-like library); results
/// then differ by rounding only.
///
/// The verifier checks every element of every view in bounds, `C` distinct from `A` and `B`,
/// `C`'s elements distinct (no two batch/row/column triples share one) and `C` not an input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gemm {
    /// The left operand, `m × k` per batch index.
    pub a: MatrixView,
    /// The right operand, `k × n` per batch index.
    pub b: MatrixView,
    /// The result, `m × n` per batch index.
    pub c: MatrixView,
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// The contraction: columns of `A`, rows of `B`.
    pub k: usize,
    /// Extents of the batch axes (empty: one product).
    pub batch: Vec<usize>,
    /// Whether the product is added to `C` (else `C` is overwritten).
    pub accumulate: bool,
}

impl Gemm {
    /// Number of matrix products (the product of the batch extents).
    pub fn batch_count(&self) -> usize {
        self.batch.iter().product()
    }

    /// The batch indices in row-major order, `batch_count` of them.
    pub fn batch_indices(&self) -> impl Iterator<Item = Vec<usize>> + '_ {
        let count = self.batch_count();
        (0..count).map(move |mut flat| {
            let mut idx = vec![0; self.batch.len()];
            for (slot, &e) in idx.iter_mut().zip(&self.batch).rev() {
                *slot = flat % e;
                flat /= e;
            }
            idx
        })
    }

    /// The operands as `(name, view, rows, cols)`: `a`, `b`, then `c`.
    pub fn operands(&self) -> [(&'static str, &MatrixView, usize, usize); 3] {
        [
            ("a", &self.a, self.m, self.k),
            ("b", &self.b, self.k, self.n),
            ("c", &self.c, self.m, self.n),
        ]
    }
}

/// A piece of a kernel program run several times on different buffers (the layers of a model),
/// compiled once by the native backends and called with [`Stmt::Call`].
///
/// The body is ordinary kernel IR over the program's own buffers and loop variables: its
/// parameters are program buffers too (those of the first place it came from), each standing
/// for the argument a call passes in its place. Every `Global` buffer the body touches is a
/// parameter; `Local` and `Shared` buffers in it are its own scratch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelFunction {
    /// A name for printing and for the generated code.
    pub name: String,
    /// The parameters: distinct `Global` buffers of the program.
    pub params: Vec<BufId>,
    /// The statements, in order (no calls inside).
    pub body: Vec<Stmt>,
}

/// A whole program at loop level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelProgram {
    /// The program's name.
    pub name: String,
    /// Element type of every buffer.
    pub dtype: DType,
    /// Buffers, indexed by [`BufId`].
    pub buffers: Vec<Buffer>,
    /// Number of loop variables used ([`VarId`]s are `0..vars`).
    pub vars: u32,
    /// The statements, in order.
    pub body: Vec<Stmt>,
    /// Functions the body calls ([`Stmt::Call`]), indexed by [`FuncId`]; empty unless a pass
    /// outlined repeated statements (absent in JSON means none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<KernelFunction>,
    /// Where the `Global` temporaries live: offsets into one arena, so that temporaries with
    /// disjoint lifetimes share memory (set by the CPU pipeline's `memory_plan` stage; absent
    /// means each temporary is allocated on its own). See [`MemoryPlan`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryPlan>,
}

impl KernelProgram {
    /// The function `id`.
    pub fn function(&self, id: FuncId) -> Option<&KernelFunction> {
        self.functions.get(id.0 as usize)
    }

    /// The inputs' buffers in declaration order, with their names.
    pub fn inputs(&self) -> Vec<(BufId, &str)> {
        self.buffers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match &b.kind {
                BufferKind::Input(n) => Some((BufId(i as u32), n.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The outputs' buffers in declaration order, with their names.
    pub fn outputs(&self) -> Vec<(BufId, &str)> {
        self.buffers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match &b.kind {
                BufferKind::Output(n) => Some((BufId(i as u32), n.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The buffer `id`.
    pub fn buffer(&self, id: BufId) -> Option<&Buffer> {
        self.buffers.get(id.0 as usize)
    }
}

impl Stmt {
    /// `buf[index] = value`.
    pub fn store(buf: BufId, index: Index, value: Value) -> Stmt {
        Stmt::Store { buf, index, value }
    }

    /// `for var in 0..extent { body }`, run as `schedule`.
    pub fn counted_loop(var: VarId, extent: usize, schedule: Schedule, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop {
            var,
            extent,
            schedule,
            body,
        }
    }
}

impl Value {
    /// `buf[index]`.
    pub fn load(buf: BufId, index: Index) -> Value {
        Value::Load { buf, index }
    }

    /// `op(a, b)`.
    pub fn binary(op: BinaryOp, a: Value, b: Value) -> Value {
        Value::Binary(op, Box::new(a), Box::new(b))
    }
}
