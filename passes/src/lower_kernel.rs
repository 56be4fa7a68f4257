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
//!   ordered batch, m, k, n (n innermost, contiguous); `sum`/`mean`, `sum_to`, `mix` and
//!   `mix_outer` are an initialisation and an accumulation (the mean divides afterwards);
//! - a `ttt` scan is a [`Schedule::Parallel`] loop over its slices (the product of the mapped
//!   extents; an operand's slice is found by decomposing the slice index with `/` and `%`).
//!   Inside it, `Local` state buffers are initialised from the initial states' slices; a serial
//!   loop over the full mini-batches runs the step graph specialized to `$k = K` on views of the
//!   operands at the mini-batch's first token (no copies), then the remainder (`$k = L mod K`,
//!   with `token_eta[0..r]`) runs once if there is one. The step's `out` rows are written
//!   straight into the output sequence; its `next_<state>` values go to `Local` temporaries
//!   that are then copied into the state buffers; at the end the states are copied into the
//!   final-state results. Every temporary inside the slice loop is `Local`.
//!
//! Every loop is [`Schedule::Serial`] except the slice loops; scheduling is a later pass's job.

use std::collections::{BTreeMap, HashMap};
use tttc_ir::kernel::{
    BufId, Buffer, BufferKind, Index, KernelProgram, Layout, MemorySpace, Schedule, Stmt, Value,
    VarId,
};
use tttc_ir::program::specialize_graph;
use tttc_ir::scan::OperandKind;
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

/// Lowers a specialized program (every dimension known, every scan with its step graph) to the
/// kernel IR. See the module documentation for what the result looks like.
pub fn lower_program(program: &Program) -> Result<KernelProgram, LowerKernelError> {
    lower_graph(&program.name, &program.graph)
}

/// Lowers a specialized graph to a kernel program called `name` (see [`lower_program`]); the
/// result is checked with the kernel IR's verifier ([`tttc_ir::kernel::verify`]).
pub fn lower_graph(name: &str, graph: &Graph) -> Result<KernelProgram, LowerKernelError> {
    let main = "main".to_string();
    let dtype = graph_dtype(graph).ok_or_else(|| LowerKernelError::Invalid {
        graph: main.clone(),
        message: "the graph has no tensor-typed node".into(),
    })?;
    let mut l = Lowerer {
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

/// Row-major element strides of `shape`.
fn row_major(shape: &[usize]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1] as i64;
    }
    strides
}

/// `a / c`, folding constants and `c == 1`. A non-positive `c` only arises for values with no
/// elements (which are never read) and gives 0.
fn ix_div(a: Index, c: i64) -> Index {
    match a {
        _ if c <= 0 => Index::Const(0),
        _ if c == 1 => a,
        Index::Const(x) => Index::Const(x / c),
        a => Index::Div(Box::new(a), c),
    }
}

/// `a % c`, folding constants and `c == 1` (a non-positive `c` gives 0, as for [`ix_div`]).
fn ix_rem(a: Index, c: i64) -> Index {
    match a {
        _ if c <= 1 => Index::Const(0),
        Index::Const(x) => Index::Const(x % c),
        a => Index::Rem(Box::new(a), c),
    }
}

/// `a * c`, folding constants and products of products.
fn ix_mul(a: Index, c: i64) -> Index {
    match a {
        Index::Mul(x, c1) => match c1.checked_mul(c) {
            Some(cc) => Index::scaled(*x, cc),
            None => Index::Mul(Box::new(Index::Mul(x, c1)), c),
        },
        a => Index::scaled(a, c),
    }
}

/// `offset + Σ idx_i strides_i`.
fn address(offset: &Index, strides: &[i64], idx: &[Index]) -> Index {
    strides
        .iter()
        .zip(idx)
        .fold(offset.clone(), |acc, (&s, i)| {
            Index::sum(acc, ix_mul(i.clone(), s))
        })
}

/// The index into an operand of shape `op_shape` broadcast (numpy rules) to a value indexed by
/// `idx`: trailing axes aligned, extent-1 axes read at 0.
fn bcast_idx(op_shape: &[usize], idx: &[Index]) -> Vec<Index> {
    let (r, big) = (op_shape.len(), idx.len());
    op_shape
        .iter()
        .enumerate()
        .map(|(j, &d)| {
            if d == 1 || big + j < r {
                Index::Const(0)
            } else {
                idx[big + j - r].clone()
            }
        })
        .collect()
}

/// Groups of axes of two shapes with the same number of elements, pairing the non-unit axes of
/// `new` and `old` into runs with equal products (the finest common refinement of a reshape).
/// `None` when the products never meet (different sizes) or an extent is 0.
fn reshape_groups(new: &[usize], old: &[usize]) -> Option<Vec<(Vec<usize>, Vec<usize>)>> {
    if new.contains(&0) || old.contains(&0) {
        return None;
    }
    let n: Vec<usize> = (0..new.len()).filter(|&i| new[i] != 1).collect();
    let o: Vec<usize> = (0..old.len()).filter(|&j| old[j] != 1).collect();
    let (mut i, mut j) = (0, 0);
    let mut groups = Vec::new();
    while i < n.len() || j < o.len() {
        let (&first_n, &first_o) = (n.get(i)?, o.get(j)?);
        let mut gn = vec![first_n];
        let mut go = vec![first_o];
        let (mut pn, mut po) = (new[first_n], old[first_o]);
        i += 1;
        j += 1;
        while pn != po {
            if pn < po {
                let &a = n.get(i)?;
                pn = pn.checked_mul(new[a])?;
                gn.push(a);
                i += 1;
            } else {
                let &b = o.get(j)?;
                po = po.checked_mul(old[b])?;
                go.push(b);
                j += 1;
            }
        }
        groups.push((gn, go));
    }
    Some(groups)
}

/// Whether a reshape from `old` to `new` only inserts or drops unit axes (every non-unit axis
/// maps to one non-unit axis), or has no elements.
fn reshape_is_regrouping(new: &[usize], old: &[usize]) -> bool {
    if new.contains(&0) || old.contains(&0) {
        return true;
    }
    reshape_groups(new, old)
        .is_some_and(|gs| gs.iter().all(|(gn, go)| gn.len() == 1 && go.len() == 1))
}

/// The index into a value of shape `old` read through a reshape to `new` at `idx`.
fn reshape_idx(new: &[usize], old: &[usize], idx: &[Index]) -> Vec<Index> {
    let mut out = vec![Index::Const(0); old.len()];
    // Without a finer grouping (sizes are checked when the node is lowered, and an empty value
    // is never read), everything is one group.
    let groups = reshape_groups(new, old)
        .unwrap_or_else(|| vec![((0..new.len()).collect(), (0..old.len()).collect())]);
    for (gn, go) in groups {
        if let ([a], [b]) = (gn.as_slice(), go.as_slice()) {
            out[*b] = idx.get(*a).cloned().unwrap_or(Index::Const(0));
            continue;
        }
        // Linear position within the group, then its digits in the old axes.
        let mut linear = Index::Const(0);
        let mut stride = 1i64;
        for &a in gn.iter().rev() {
            let i = idx.get(a).cloned().unwrap_or(Index::Const(0));
            linear = Index::sum(linear, Index::scaled(i, stride));
            stride *= new[a] as i64;
        }
        let mut stride = 1i64;
        for (pos, &b) in go.iter().enumerate().rev() {
            let digit = ix_div(linear.clone(), stride);
            out[b] = if pos == 0 {
                digit
            } else {
                ix_rem(digit, old[b] as i64)
            };
            stride *= old[b] as i64;
        }
    }
    out
}

/// The strides of a view of shape `old` with `strides`, reshaped to `new` without copying, if
/// possible (each group of axes contiguous in itself).
fn reshape_strides(new: &[usize], old: &[usize], strides: &[i64]) -> Option<Vec<i64>> {
    if numel(new)? == 0 {
        return Some(vec![0; new.len()]);
    }
    let mut out = vec![0i64; new.len()];
    for (gn, go) in reshape_groups(new, old)? {
        for w in go.windows(2) {
            if strides[w[0]] != strides[w[1]] * old[w[1]] as i64 {
                return None;
            }
        }
        let mut s = strides[*go.last()?];
        for &a in gn.iter().rev() {
            out[a] = s;
            s *= new[a] as i64;
        }
    }
    Some(out)
}

/// A strided window of a buffer: element `idx` is `buf[offset + Σ idx_i strides_i]`.
#[derive(Clone, Debug)]
struct View {
    buf: BufId,
    offset: Index,
    strides: Vec<i64>,
}

impl View {
    fn at(&self, idx: &[Index]) -> Index {
        address(&self.offset, &self.strides, idx)
    }

    fn load(&self, idx: &[Index]) -> Value {
        Value::Load {
            buf: self.buf,
            index: self.at(idx),
        }
    }
}

/// How a value is computed, given the index of one element.
#[derive(Clone, Debug)]
enum Lazy {
    /// Stored in a buffer.
    View(View),
    /// The same number everywhere.
    Const(f64),
    /// The index along axis 0.
    Iota,
    /// An elementwise function of a value of the same shape.
    Unary(UnaryOp, Box<Val>),
    /// An elementwise function of two values broadcast to this shape.
    Binary(BinaryOp, Box<Val>, Box<Val>),
    /// Axis `i` is axis `perm[i]` of the operand.
    Permute(Box<Val>, Vec<usize>),
    /// The operand broadcast to this shape.
    Broadcast(Box<Val>),
    /// The operand's row-major elements with this shape.
    Reshape(Box<Val>),
}

/// A tensor value: its shape and how it is computed.
#[derive(Clone, Debug)]
struct Val {
    shape: Vec<usize>,
    lazy: Lazy,
}

impl Val {
    /// The row-major contents of `buf` from `offset`.
    fn view(shape: Vec<usize>, buf: BufId, offset: Index) -> Val {
        let strides = row_major(&shape);
        Val {
            shape,
            lazy: Lazy::View(View {
                buf,
                offset,
                strides,
            }),
        }
    }

    /// The element at `idx` as an expression.
    fn emit(&self, idx: &[Index]) -> Value {
        match &self.lazy {
            Lazy::View(v) => v.load(idx),
            Lazy::Const(c) => Value::Const(*c),
            Lazy::Iota => Value::FromIndex(idx.first().cloned().unwrap_or(Index::Const(0))),
            Lazy::Unary(f, x) => Value::Unary(*f, Box::new(x.emit(&bcast_idx(&x.shape, idx)))),
            Lazy::Binary(f, a, b) => Value::Binary(
                *f,
                Box::new(a.emit(&bcast_idx(&a.shape, idx))),
                Box::new(b.emit(&bcast_idx(&b.shape, idx))),
            ),
            Lazy::Permute(x, perm) => {
                let mut xi = vec![Index::Const(0); perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    if let (Some(slot), Some(v)) = (xi.get_mut(p), idx.get(i)) {
                        *slot = v.clone();
                    }
                }
                x.emit(&xi)
            }
            Lazy::Broadcast(x) => x.emit(&bcast_idx(&x.shape, idx)),
            Lazy::Reshape(x) => x.emit(&reshape_idx(&self.shape, &x.shape, idx)),
        }
    }

    /// Whether reading an element costs more than a load or a constant (so that a value used
    /// more than once is better materialized).
    fn is_costly(&self) -> bool {
        match &self.lazy {
            Lazy::View(_) | Lazy::Const(_) | Lazy::Iota => false,
            Lazy::Permute(x, _) | Lazy::Broadcast(x) => x.is_costly(),
            // A reshape that only inserts or drops unit axes reads like its operand; others
            // compute digits with `/` and `%`.
            Lazy::Reshape(x) => x.is_costly() || !reshape_is_regrouping(&self.shape, &x.shape),
            Lazy::Unary(_, x) => !x.all_const(),
            Lazy::Binary(_, a, b) => !(a.all_const() && b.all_const()),
        }
    }

    /// Whether every leaf is a constant.
    fn all_const(&self) -> bool {
        match &self.lazy {
            Lazy::Const(_) => true,
            Lazy::View(_) | Lazy::Iota => false,
            Lazy::Unary(_, x) | Lazy::Permute(x, _) | Lazy::Broadcast(x) | Lazy::Reshape(x) => {
                x.all_const()
            }
            Lazy::Binary(_, a, b) => a.all_const() && b.all_const(),
        }
    }

    fn as_view(&self) -> Option<&View> {
        match &self.lazy {
            Lazy::View(v) => Some(v),
            _ => None,
        }
    }
}

/// What a node evaluates to.
#[derive(Clone, Debug)]
enum NodeVal {
    Tensor(Val),
    Tuple(Vec<Val>),
}

/// Where a materialized value goes: row-major from `offset` of `buf`.
#[derive(Clone, Debug)]
struct Dest {
    buf: BufId,
    offset: Index,
}

impl Dest {
    fn at(&self, shape: &[usize], idx: &[Index]) -> Index {
        address(&self.offset, &row_major(shape), idx)
    }

    fn val(&self, shape: &[usize]) -> Val {
        Val::view(shape.to_vec(), self.buf, self.offset.clone())
    }

    /// Whether `v` is exactly this destination's contents.
    fn holds(&self, v: &Val) -> bool {
        v.as_view().is_some_and(|w| {
            w.buf == self.buf && w.offset == self.offset && w.strides == row_major(&v.shape)
        })
    }
}

/// Loops wrapped around `body`, outermost first.
fn wrap(loops: Vec<(VarId, usize)>, body: Vec<Stmt>) -> Vec<Stmt> {
    let mut body = body;
    for (var, extent) in loops.into_iter().rev() {
        body = vec![Stmt::Loop {
            var,
            extent,
            schedule: Schedule::Serial,
            body,
        }];
    }
    body
}

/// `buf[index] = value`.
fn store(buf: BufId, index: Index, value: Value) -> Stmt {
    Stmt::Store { buf, index, value }
}

fn load(buf: BufId, index: Index) -> Value {
    Value::Load { buf, index }
}

fn bin(op: BinaryOp, a: Value, b: Value) -> Value {
    Value::Binary(op, Box::new(a), Box::new(b))
}

/// One graph to lower: its inputs' values and where its outputs go.
struct GraphJob<'g> {
    graph: &'g Graph,
    /// The graph's name in errors.
    path: String,
    /// Prefix of its temporaries' names.
    prefix: String,
    /// Where its temporaries live.
    space: MemorySpace,
    /// One value per graph input.
    inputs: Vec<Val>,
    /// Per graph output: where it must end up (row-major), if anywhere.
    dests: Vec<Option<Dest>>,
}

/// The state of lowering one graph.
struct Scope<'g> {
    graph: &'g Graph,
    path: String,
    prefix: String,
    space: MemorySpace,
    vals: HashMap<NodeId, NodeVal>,
    users: HashMap<NodeId, usize>,
    dests: HashMap<NodeId, Dest>,
}

impl Scope<'_> {
    fn invalid(&self, message: impl Into<String>) -> LowerKernelError {
        LowerKernelError::Invalid {
            graph: self.path.clone(),
            message: message.into(),
        }
    }

    fn invalid_at(&self, id: NodeId, message: impl std::fmt::Display) -> LowerKernelError {
        self.invalid(format!("{}: {message}", describe(self.graph, id)))
    }

    fn shape(&self, id: NodeId) -> Res<Vec<usize>> {
        known_shape(self.graph, id, &self.path)
    }

    fn tensor(&self, id: NodeId, user: NodeId) -> Res<Val> {
        match self.vals.get(&id) {
            Some(NodeVal::Tensor(v)) => Ok(v.clone()),
            Some(NodeVal::Tuple(_)) => {
                Err(self.invalid_at(user, format!("operand %{} is a tuple", id.index())))
            }
            None => Err(self.invalid_at(user, format!("operand %{} was not lowered", id.index()))),
        }
    }
}

/// The program being built.
struct Lowerer {
    dtype: DType,
    buffers: Vec<Buffer>,
    vars: u32,
}

impl Lowerer {
    fn buffer(
        &mut self,
        name: String,
        kind: BufferKind,
        space: MemorySpace,
        shape: &[usize],
    ) -> BufId {
        self.buffers.push(Buffer {
            name,
            kind,
            space,
            layout: Layout::row_major(shape),
        });
        BufId(self.buffers.len() as u32 - 1)
    }

    fn var(&mut self) -> VarId {
        self.vars += 1;
        VarId(self.vars - 1)
    }

    /// One loop per extent, except that extent-1 axes get the constant index 0 and no loop.
    fn loops(&mut self, extents: &[usize]) -> (Vec<Index>, Vec<(VarId, usize)>) {
        let mut idx = Vec::with_capacity(extents.len());
        let mut loops = Vec::new();
        for &e in extents {
            if e == 1 {
                idx.push(Index::Const(0));
            } else {
                let v = self.var();
                idx.push(Index::Var(v));
                loops.push((v, e));
            }
        }
        (idx, loops)
    }

    /// A fresh row-major temporary in the scope's memory space.
    fn temp(&mut self, sc: &Scope, name: String, shape: &[usize]) -> Dest {
        let buf = self.buffer(
            format!("{}{name}", sc.prefix),
            BufferKind::Temp,
            sc.space,
            shape,
        );
        Dest {
            buf,
            offset: Index::Const(0),
        }
    }

    /// Where node `id` is computed: its output destination, or a fresh temporary.
    fn dest_for(&mut self, sc: &Scope, id: NodeId, shape: &[usize]) -> Dest {
        match sc.dests.get(&id) {
            Some(d) => d.clone(),
            None => {
                let name = format!("%{} {}", id.index(), sc.graph.node(id).op.name());
                self.temp(sc, name, shape)
            }
        }
    }

    /// Stores every element of `v` into `dest` with a loop nest.
    fn materialize(&mut self, v: &Val, dest: &Dest, body: &mut Vec<Stmt>) {
        let (idx, loops) = self.loops(&v.shape);
        let st = store(dest.buf, dest.at(&v.shape, &idx), v.emit(&idx));
        body.extend(wrap(loops, vec![st]));
    }

    /// `v` as a view, materializing it into a temporary unless it is one.
    fn view_of(
        &mut self,
        sc: &Scope,
        v: Val,
        what: &str,
        body: &mut Vec<Stmt>,
    ) -> (View, Vec<usize>) {
        if let Lazy::View(w) = v.lazy {
            return (w, v.shape);
        }
        let dest = self.temp(sc, what.to_string(), &v.shape);
        self.materialize(&v, &dest, body);
        let shape = v.shape;
        let strides = row_major(&shape);
        (
            View {
                buf: dest.buf,
                offset: dest.offset,
                strides,
            },
            shape,
        )
    }

    /// `v` materialized when it is costly to read and would be read more than once per element
    /// of a value of `n` elements.
    fn cheap_operand(
        &mut self,
        sc: &Scope,
        v: Val,
        n: usize,
        what: &str,
        body: &mut Vec<Stmt>,
    ) -> Val {
        if v.is_costly() && numel(&v.shape).is_some_and(|m| m < n) {
            let (w, shape) = self.view_of(sc, v, what, body);
            Val {
                shape,
                lazy: Lazy::View(w),
            }
        } else {
            v
        }
    }

    /// Lowers one graph, appending its statements to `body`; every output with a destination
    /// ends up there.
    fn lower_graph(&mut self, job: GraphJob<'_>, body: &mut Vec<Stmt>) -> Res<()> {
        let graph = job.graph;
        let mut sc = Scope {
            graph,
            path: job.path,
            prefix: job.prefix,
            space: job.space,
            vals: HashMap::new(),
            users: HashMap::new(),
            dests: HashMap::new(),
        };
        if job.inputs.len() != graph.inputs().len() {
            return Err(sc.invalid(format!(
                "the graph takes {} input(s), {} given",
                graph.inputs().len(),
                job.inputs.len()
            )));
        }
        if job.dests.len() != graph.outputs().len() {
            return Err(sc.invalid("internal: one destination per output expected"));
        }
        for o in graph.outputs() {
            if graph.get(o.node).is_none() {
                return Err(sc.invalid(format!("output `{}` names a missing node", o.name)));
            }
        }
        let order = graph
            .live_order()
            .ok_or_else(|| sc.invalid("the graph has a cycle"))?;
        for &id in &order {
            for o in graph.operands(id) {
                *sc.users.entry(o).or_insert(0) += 1;
            }
        }
        for o in graph.outputs() {
            *sc.users.entry(o.node).or_insert(0) += 1;
        }
        for (o, d) in graph.outputs().iter().zip(&job.dests) {
            if let Some(d) = d {
                sc.dests.entry(o.node).or_insert_with(|| d.clone());
            }
        }
        for (pos, (&id, v)) in graph.inputs().iter().zip(job.inputs).enumerate() {
            let want = sc.shape(id)?;
            if want != v.shape {
                return Err(sc.invalid(format!(
                    "input #{pos} ({}) is {want:?}, given {:?}",
                    describe(graph, id),
                    v.shape
                )));
            }
            sc.vals.insert(id, NodeVal::Tensor(v));
        }
        for &id in &order {
            self.lower_node(&mut sc, id, body)?;
        }
        for (o, d) in graph.outputs().iter().zip(&job.dests) {
            let Some(d) = d else { continue };
            let v = sc.tensor(o.node, o.node)?;
            if !d.holds(&v) {
                self.materialize(&v, d, body);
            }
        }
        Ok(())
    }

    /// Lowers node `id` (its operands are lowered).
    fn lower_node(&mut self, sc: &mut Scope, id: NodeId, body: &mut Vec<Stmt>) -> Res<()> {
        let graph = sc.graph;
        let node = graph.node(id);
        if let Op::Input { .. } = node.op {
            return match sc.vals.contains_key(&id) {
                true => Ok(()),
                false => Err(sc.invalid_at(id, "an input node missing from the input list")),
            };
        }
        if node.ty.tensor().is_some_and(|t| t.dtype != self.dtype)
            || matches!(&node.ty, NodeType::Tuple(ts) if ts.iter().any(|t| t.dtype != self.dtype))
        {
            return Err(LowerKernelError::Unsupported {
                graph: sc.path.clone(),
                node: describe(graph, id),
                message: format!("element types other than the program's {}", self.dtype),
            });
        }
        let operands = graph.operands(id);
        if let Some(n) = node.op.arity() {
            if operands.len() != n {
                return Err(
                    sc.invalid_at(id, format!("takes {n} operand(s), has {}", operands.len()))
                );
            }
        }
        match &node.op {
            Op::Ttt(scan) => {
                let vals = self.lower_ttt(sc, id, scan, &operands, body)?;
                sc.vals.insert(id, NodeVal::Tuple(vals));
                return Ok(());
            }
            Op::Get { index } => {
                let v = match sc.vals.get(&operands[0]) {
                    Some(NodeVal::Tuple(vs)) => vs.get(*index).cloned(),
                    _ => None,
                };
                let v = v.ok_or_else(|| {
                    sc.invalid_at(id, format!("element {index} of a non-tuple or short tuple"))
                })?;
                sc.vals.insert(id, NodeVal::Tensor(v));
                return Ok(());
            }
            _ => {}
        }
        let shape = sc.shape(id)?;
        let n = numel(&shape).unwrap_or(0);
        let arg = |i: usize| sc.tensor(operands[i], id);
        let v = match &node.op {
            Op::Input { .. } | Op::Ttt(_) | Op::Get { .. } => {
                return Err(sc.invalid_at(id, "internal: lowered out of place"))
            }
            Op::Const { value } => Val {
                shape: shape.clone(),
                lazy: Lazy::Const(*value),
            },
            Op::Extent { dim } => {
                let e = dim.known().ok_or_else(|| LowerKernelError::UnboundDim {
                    graph: sc.path.clone(),
                    node: describe(graph, id),
                    symbol: dim.to_string(),
                })?;
                Val {
                    shape: shape.clone(),
                    lazy: Lazy::Const(e as f64),
                }
            }
            Op::Iota { .. } => {
                if shape.len() != 1 {
                    return Err(sc.invalid_at(id, format!("an iota of shape {shape:?}")));
                }
                Val {
                    shape: shape.clone(),
                    lazy: Lazy::Iota,
                }
            }
            Op::Unary { fun } => {
                let x = arg(0)?;
                if x.shape != shape {
                    return Err(sc.invalid_at(id, format!("operand {:?}", x.shape)));
                }
                Val {
                    shape: shape.clone(),
                    lazy: Lazy::Unary(*fun, Box::new(x)),
                }
            }
            Op::Binary { fun } => {
                let (a, b) = (arg(0)?, arg(1)?);
                if !broadcasts(&a.shape, &shape) || !broadcasts(&b.shape, &shape) {
                    return Err(sc.invalid_at(
                        id,
                        format!("operands {:?} and {:?} for {shape:?}", a.shape, b.shape),
                    ));
                }
                let a = self.cheap_operand(sc, a, n, &format!("%{} lhs", id.index()), body);
                let b = self.cheap_operand(sc, b, n, &format!("%{} rhs", id.index()), body);
                Val {
                    shape: shape.clone(),
                    lazy: Lazy::Binary(*fun, Box::new(a), Box::new(b)),
                }
            }
            Op::Transpose => {
                let x = arg(0)?;
                let r = x.shape.len();
                if r < 2 {
                    return Err(sc.invalid_at(id, "transpose of fewer than 2 axes"));
                }
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 1, r - 2);
                permute(x, &perm)
            }
            Op::Permute { perm } => {
                let x = arg(0)?;
                let mut seen = perm.clone();
                seen.sort_unstable();
                if seen != (0..x.shape.len()).collect::<Vec<_>>() {
                    return Err(sc.invalid_at(id, format!("{perm:?} is not a permutation")));
                }
                permute(x, perm)
            }
            Op::Expand { .. } => {
                let x = arg(0)?;
                if !broadcasts(&x.shape, &shape) {
                    return Err(sc.invalid_at(id, format!("{:?} does not broadcast", x.shape)));
                }
                let x = self.cheap_operand(sc, x, n, &format!("%{} operand", id.index()), body);
                expand(x, &shape)
            }
            Op::Reshape { .. } => {
                let x = arg(0)?;
                if numel(&x.shape) != Some(n) {
                    return Err(sc.invalid_at(
                        id,
                        format!("{:?} has a different size than {shape:?}", x.shape),
                    ));
                }
                reshape(x, &shape)
            }
            Op::MatMul => self.matmul(sc, id, arg(0)?, arg(1)?, &shape, body)?,
            Op::Reduce { fun, axis } => {
                let x = arg(0)?;
                let mut want = x.shape.clone();
                match want.get_mut(*axis) {
                    Some(d) => *d = 1,
                    None => return Err(sc.invalid_at(id, format!("axis {axis} out of range"))),
                }
                if want != shape {
                    return Err(sc.invalid_at(id, format!("operand {:?}", x.shape)));
                }
                let dest = self.dest_for(sc, id, &shape);
                self.reduce_into(&x, *axis, *fun, &dest, body);
                dest.val(&shape)
            }
            Op::SumTo { .. } => self.sum_to(sc, id, arg(0)?, &shape, body)?,
            Op::Mix => self.mix(sc, id, arg(0)?, arg(1)?, &shape, body)?,
            Op::MixOuter => self.mix_outer(sc, id, [arg(0)?, arg(1)?, arg(2)?], &shape, body)?,
            Op::Slice { axis, start, .. } => {
                let x = arg(0)?;
                self.slice(sc, id, x, *axis, *start, &shape, body)?
            }
            Op::Shift { axis, by } => {
                let x = arg(0)?;
                let fill = if operands.len() > 1 {
                    Some(arg(1)?)
                } else {
                    None
                };
                self.shift(sc, id, x, fill, *axis, *by, &shape, body)?
            }
        };
        let v = if let Some(dest) = sc.dests.get(&id) {
            if v.as_view().is_some() {
                v
            } else {
                let dest = dest.clone();
                self.materialize(&v, &dest, body);
                dest.val(&shape)
            }
        } else if v.is_costly() && sc.users.get(&id).copied().unwrap_or(0) != 1 {
            let dest = self.dest_for(sc, id, &shape);
            self.materialize(&v, &dest, body);
            dest.val(&shape)
        } else {
            v
        };
        sc.vals.insert(id, NodeVal::Tensor(v));
        Ok(())
    }

    fn matmul(
        &mut self,
        sc: &Scope,
        id: NodeId,
        a: Val,
        b: Val,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let (ra, rb, r) = (a.shape.len(), b.shape.len(), shape.len());
        let bad = || sc.invalid_at(id, format!("{:?} @ {:?} -> {shape:?}", a.shape, b.shape));
        if ra < 2 || rb < 2 || r < 2 {
            return Err(bad());
        }
        let (m, k, k2, n) = (
            a.shape[ra - 2],
            a.shape[ra - 1],
            b.shape[rb - 2],
            b.shape[rb - 1],
        );
        let lead = &shape[..r - 2];
        if k != k2
            || shape[r - 2] != m
            || shape[r - 1] != n
            || !broadcasts(&a.shape[..ra - 2], lead)
            || !broadcasts(&b.shape[..rb - 2], lead)
        {
            return Err(bad());
        }
        // A contraction over a single element is a broadcast product: no accumulator and no
        // buffer, an expression its consumer inlines (an outer product `uᵀ d` added into a sum
        // becomes one loop).
        if k == 1 {
            let what = |side: &str| format!("%{} {side}", id.index());
            let n_out = numel(shape).unwrap_or(0);
            let a = self.cheap_operand(sc, a, n_out, &what("lhs"), body);
            let b = self.cheap_operand(sc, b, n_out, &what("rhs"), body);
            return Ok(Val {
                shape: shape.to_vec(),
                lazy: Lazy::Binary(
                    BinaryOp::Mul,
                    Box::new(expand(a, shape)),
                    Box::new(expand(b, shape)),
                ),
            });
        }
        // A single row times an unmaterialized right operand that is not broadcast reads each of
        // its elements once: compute them inside the product instead of into a buffer.
        if m == 1 && b.as_view().is_none() && b.shape[..rb - 2] == *lead {
            let (av, ashape) = self.view_of(sc, a, &format!("%{} lhs", id.index()), body);
            let dest = self.dest_for(sc, id, shape);
            let (lidx, lloops) = self.loops(lead);
            let (j0, j0loops) = self.loops(&[n]);
            let (pidx, ploops) = self.loops(&[k]);
            let (j1, j1loops) = self.loops(&[n]);
            let out_at = |j: &Index| {
                let mut idx = lidx.clone();
                idx.extend([Index::Const(0), j.clone()]);
                dest.at(shape, &idx)
            };
            let mut a_idx = bcast_idx(&ashape[..ra - 2], &lidx);
            a_idx.extend([Index::Const(0), pidx[0].clone()]);
            let mut b_idx = lidx.clone();
            b_idx.extend([pidx[0].clone(), j1[0].clone()]);
            let mut inner = wrap(
                j0loops,
                vec![store(dest.buf, out_at(&j0[0]), Value::Const(0.0))],
            );
            let acc_at = out_at(&j1[0]);
            inner.extend(wrap(
                ploops,
                wrap(
                    j1loops,
                    vec![store(
                        dest.buf,
                        acc_at.clone(),
                        bin(
                            BinaryOp::Add,
                            load(dest.buf, acc_at),
                            bin(BinaryOp::Mul, av.load(&a_idx), b.emit(&b_idx)),
                        ),
                    )],
                ),
            ));
            body.extend(wrap(lloops, inner));
            return Ok(dest.val(shape));
        }
        let (av, ashape) = self.view_of(sc, a, &format!("%{} lhs", id.index()), body);
        let (bv, bshape) = self.view_of(sc, b, &format!("%{} rhs", id.index()), body);
        // The innermost loop runs along the right operand's rows: read them contiguously (a
        // transposed weight is copied once instead of gathered k times per row; with a single
        // row the copy still pays: the accumulation then vectorizes along the row, which a dot
        // product along the columns cannot without reassociating).
        let (bv, bshape) = if n > 1 && bv.strides.last() != Some(&1) {
            let strided = Val {
                shape: bshape,
                lazy: Lazy::View(bv),
            };
            let dest = self.temp(
                sc,
                format!("%{} rhs, contiguous", id.index()),
                &strided.shape,
            );
            self.materialize(&strided, &dest, body);
            let shape = strided.shape;
            (
                View {
                    buf: dest.buf,
                    offset: dest.offset,
                    strides: row_major(&shape),
                },
                shape,
            )
        } else {
            (bv, bshape)
        };
        let dest = self.dest_for(sc, id, shape);
        let (lidx, lloops) = self.loops(lead);
        let (iidx, iloops) = self.loops(&[m]);
        let (j0, j0loops) = self.loops(&[n]);
        let (pidx, ploops) = self.loops(&[k]);
        let (j1, j1loops) = self.loops(&[n]);
        let out_at = |j: &Index| {
            let mut idx = lidx.clone();
            idx.extend([iidx[0].clone(), j.clone()]);
            dest.at(shape, &idx)
        };
        let mut a_idx = bcast_idx(&ashape[..ra - 2], &lidx);
        a_idx.extend([iidx[0].clone(), pidx[0].clone()]);
        let mut b_idx = bcast_idx(&bshape[..rb - 2], &lidx);
        b_idx.extend([pidx[0].clone(), j1[0].clone()]);
        let init = wrap(
            j0loops,
            vec![store(dest.buf, out_at(&j0[0]), Value::Const(0.0))],
        );
        let acc_at = out_at(&j1[0]);
        let acc = wrap(
            ploops,
            wrap(
                j1loops,
                vec![store(
                    dest.buf,
                    acc_at.clone(),
                    bin(
                        BinaryOp::Add,
                        load(dest.buf, acc_at),
                        bin(BinaryOp::Mul, av.load(&a_idx), bv.load(&b_idx)),
                    ),
                )],
            ),
        );
        let mut inner = init;
        inner.extend(acc);
        body.extend(wrap(lloops, wrap(iloops, inner)));
        Ok(dest.val(shape))
    }

    /// `dest` (shape of `x` with `axis` set to 1) = the sum or mean of `x` along `axis`,
    /// accumulated in index order.
    fn reduce_into(
        &mut self,
        x: &Val,
        axis: usize,
        fun: ReduceOp,
        dest: &Dest,
        body: &mut Vec<Stmt>,
    ) {
        let s = &x.shape;
        let n = s.get(axis).copied().unwrap_or(1);
        let mut out_shape = s.clone();
        if let Some(d) = out_shape.get_mut(axis) {
            *d = 1;
        }
        let (before, after) = (&s[..axis.min(s.len())], &s[(axis + 1).min(s.len())..]);
        let (oidx, oloops) = self.loops(before);
        let (i0, i0loops) = self.loops(after);
        let (pidx, ploops) = self.loops(&[n]);
        let (i1, i1loops) = self.loops(after);
        let out_at = |inner: &[Index]| {
            let mut idx = oidx.clone();
            idx.push(Index::Const(0));
            idx.extend_from_slice(inner);
            dest.at(&out_shape, &idx)
        };
        let mut stmts = wrap(
            i0loops,
            vec![store(dest.buf, out_at(&i0), Value::Const(0.0))],
        );
        let mut xi = oidx.clone();
        xi.push(pidx[0].clone());
        xi.extend(i1.iter().cloned());
        let at = out_at(&i1);
        stmts.extend(wrap(
            ploops,
            wrap(
                i1loops,
                vec![store(
                    dest.buf,
                    at.clone(),
                    bin(BinaryOp::Add, load(dest.buf, at), x.emit(&xi)),
                )],
            ),
        ));
        if fun == ReduceOp::Mean {
            let (i2, i2loops) = self.loops(after);
            let at = out_at(&i2);
            stmts.extend(wrap(
                i2loops,
                vec![store(
                    dest.buf,
                    at.clone(),
                    bin(BinaryOp::Div, load(dest.buf, at), Value::Const(n as f64)),
                )],
            ));
        }
        body.extend(wrap(oloops, stmts));
    }

    /// `sum_to`: the leading extra axes summed one at a time (axis 0 each time), then every
    /// axis the target keeps with extent 1, in order — exactly the interpreter's sequence of
    /// reductions; intermediate sums go to temporaries, the last one to the node's buffer.
    fn sum_to(
        &mut self,
        sc: &Scope,
        id: NodeId,
        x: Val,
        target: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let s = x.shape.clone();
        if target.len() > s.len() {
            return Err(sc.invalid_at(id, format!("{target:?} does not broadcast to {s:?}")));
        }
        let lead = s.len() - target.len();
        let mut axes = vec![0usize; lead];
        for (j, &t) in target.iter().enumerate() {
            let d = s[lead + j];
            if d != t {
                if t != 1 {
                    return Err(
                        sc.invalid_at(id, format!("{target:?} does not broadcast to {s:?}"))
                    );
                }
                axes.push(j);
            }
        }
        if axes.is_empty() {
            return Ok(x);
        }
        let mut cur = x;
        let count = axes.len();
        for (i, &axis) in axes.iter().enumerate() {
            let mut out_shape = cur.shape.clone();
            out_shape[axis] = 1;
            let dest = if i + 1 == count {
                self.dest_for(sc, id, target)
            } else {
                self.temp(sc, format!("%{} partial{i}", id.index()), &out_shape)
            };
            self.reduce_into(&cur, axis, ReduceOp::Sum, &dest, body);
            cur = dest.val(&out_shape);
            if i < lead {
                // Drop the summed leading axis.
                cur = Val::view(out_shape[1..].to_vec(), dest.buf, dest.offset);
            }
        }
        Ok(Val {
            shape: target.to_vec(),
            lazy: cur.lazy,
        })
    }

    fn mix(
        &mut self,
        sc: &Scope,
        id: NodeId,
        w: Val,
        x: Val,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let (&[p, k], Some(&k2)) = (w.shape.as_slice(), x.shape.first()) else {
            return Err(sc.invalid_at(id, format!("operands {:?}, {:?}", w.shape, x.shape)));
        };
        let rest = x.shape[1..].to_vec();
        let mut want = vec![p];
        want.extend(&rest);
        if k != k2 || want != shape {
            return Err(sc.invalid_at(id, format!("operands {:?}, {:?}", w.shape, x.shape)));
        }
        let (wv, _) = self.view_of(sc, w, &format!("%{} weights", id.index()), body);
        let (xv, _) = self.view_of(sc, x, &format!("%{} rows", id.index()), body);
        let dest = self.dest_for(sc, id, shape);
        let (iidx, iloops) = self.loops(&[p]);
        let (s0, s0loops) = self.loops(&rest);
        let (jidx, jloops) = self.loops(&[k]);
        let (s1, s1loops) = self.loops(&rest);
        let out_at = |s: &[Index]| {
            let mut idx = vec![iidx[0].clone()];
            idx.extend_from_slice(s);
            dest.at(shape, &idx)
        };
        let mut stmts = wrap(
            s0loops,
            vec![store(dest.buf, out_at(&s0), Value::Const(0.0))],
        );
        let at = out_at(&s1);
        let mut x_idx = vec![jidx[0].clone()];
        x_idx.extend(s1.iter().cloned());
        stmts.extend(wrap(
            jloops,
            wrap(
                s1loops,
                vec![store(
                    dest.buf,
                    at.clone(),
                    bin(
                        BinaryOp::Add,
                        load(dest.buf, at),
                        bin(
                            BinaryOp::Mul,
                            wv.load(&[iidx[0].clone(), jidx[0].clone()]),
                            xv.load(&x_idx),
                        ),
                    ),
                )],
            ),
        ));
        body.extend(wrap(iloops, stmts));
        Ok(dest.val(shape))
    }

    fn mix_outer(
        &mut self,
        sc: &Scope,
        id: NodeId,
        [w, u, d]: [Val; 3],
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let (&[p, k], &[k1, m], &[k2, n]) =
            (w.shape.as_slice(), u.shape.as_slice(), d.shape.as_slice())
        else {
            return Err(sc.invalid_at(
                id,
                format!("operands {:?}, {:?}, {:?}", w.shape, u.shape, d.shape),
            ));
        };
        if k != k1 || k != k2 || shape != [p, m, n] {
            return Err(sc.invalid_at(
                id,
                format!("operands {:?}, {:?}, {:?}", w.shape, u.shape, d.shape),
            ));
        }
        let (wv, _) = self.view_of(sc, w, &format!("%{} weights", id.index()), body);
        let (uv, _) = self.view_of(sc, u, &format!("%{} u", id.index()), body);
        let (dv, _) = self.view_of(sc, d, &format!("%{} d", id.index()), body);
        let dest = self.dest_for(sc, id, shape);
        let (iidx, iloops) = self.loops(&[p]);
        let (s0, s0loops) = self.loops(&[m, n]);
        let (jidx, jloops) = self.loops(&[k]);
        let (s1, s1loops) = self.loops(&[m, n]);
        let (i, j) = (iidx[0].clone(), jidx[0].clone());
        let out_at = |s: &[Index]| dest.at(shape, &[i.clone(), s[0].clone(), s[1].clone()]);
        let mut stmts = wrap(
            s0loops,
            vec![store(dest.buf, out_at(&s0), Value::Const(0.0))],
        );
        let at = out_at(&s1);
        let a = bin(
            BinaryOp::Mul,
            wv.load(&[i.clone(), j.clone()]),
            uv.load(&[j.clone(), s1[0].clone()]),
        );
        stmts.extend(wrap(
            jloops,
            wrap(
                s1loops,
                vec![store(
                    dest.buf,
                    at.clone(),
                    bin(
                        BinaryOp::Add,
                        load(dest.buf, at),
                        bin(BinaryOp::Mul, a, dv.load(&[j, s1[1].clone()])),
                    ),
                )],
            ),
        ));
        body.extend(wrap(iloops, stmts));
        Ok(dest.val(shape))
    }

    /// The scan: see the module documentation. Returns the result tuple's values.
    /// `x[.., start .. start + len, ..]` along `axis`: a view of `x` (materialized first
    /// unless it is one) moved by `start` elements of that axis.
    #[allow(clippy::too_many_arguments)]
    fn slice(
        &mut self,
        sc: &Scope,
        id: NodeId,
        x: Val,
        axis: usize,
        start: usize,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let fits = x.shape.len() == shape.len()
            && x.shape.get(axis).is_some_and(|&n| {
                shape
                    .get(axis)
                    .is_some_and(|&len| start.checked_add(len).is_some_and(|e| e <= n))
            })
            && (0..shape.len()).all(|a| a == axis || x.shape[a] == shape[a]);
        if !fits {
            return Err(sc.invalid_at(id, format!("a slice of {:?} to {shape:?}", x.shape)));
        }
        let (w, _) = self.view_of(sc, x, &format!("%{} operand", id.index()), body);
        let offset = Index::sum(
            w.offset.clone(),
            Index::Const(start as i64 * w.strides[axis]),
        );
        Ok(Val {
            shape: shape.to_vec(),
            lazy: Lazy::View(View {
                buf: w.buf,
                offset,
                strides: w.strides,
            }),
        })
    }

    /// `y[t] = x[t - by]` along `axis`, and `fill[t]` (or zero) for `t < by`: two loop nests,
    /// one over the first `by` positions and one over the rest, so no conditionals.
    #[allow(clippy::too_many_arguments)]
    fn shift(
        &mut self,
        sc: &Scope,
        id: NodeId,
        x: Val,
        fill: Option<Val>,
        axis: usize,
        by: usize,
        shape: &[usize],
        body: &mut Vec<Stmt>,
    ) -> Res<Val> {
        let Some(&n) = shape.get(axis) else {
            return Err(sc.invalid_at(id, format!("axis {axis} out of range")));
        };
        if x.shape != shape {
            return Err(sc.invalid_at(id, format!("operand {:?}", x.shape)));
        }
        if let Some(f) = &fill {
            let mut want = shape.to_vec();
            want[axis] = by;
            if f.shape != want {
                return Err(sc.invalid_at(id, format!("fill {:?}, expected {want:?}", f.shape)));
            }
        }
        let dest = self.dest_for(sc, id, shape);
        let head = by.min(n);
        if head > 0 {
            let mut extents = shape.to_vec();
            extents[axis] = head;
            let (idx, loops) = self.loops(&extents);
            let value = fill.as_ref().map_or(Value::Const(0.0), |f| f.emit(&idx));
            body.extend(wrap(
                loops,
                vec![store(dest.buf, dest.at(shape, &idx), value)],
            ));
        }
        if n > head {
            let mut extents = shape.to_vec();
            extents[axis] = n - head;
            let (idx, loops) = self.loops(&extents);
            let mut to = idx.clone();
            to[axis] = Index::sum(idx[axis].clone(), Index::Const(by as i64));
            body.extend(wrap(
                loops,
                vec![store(dest.buf, dest.at(shape, &to), x.emit(&idx))],
            ));
        }
        Ok(dest.val(shape))
    }

    fn lower_ttt(
        &mut self,
        sc: &mut Scope,
        id: NodeId,
        scan: &TttScan,
        operands: &[NodeId],
        body: &mut Vec<Stmt>,
    ) -> Res<Vec<Val>> {
        let graph = sc.graph;
        if sc.space != MemorySpace::Global {
            return Err(LowerKernelError::Unsupported {
                graph: sc.path.clone(),
                node: describe(graph, id),
                message: "a scan inside a scan".into(),
            });
        }
        let step = scan
            .step
            .as_ref()
            .ok_or_else(|| LowerKernelError::MissingStep {
                graph: sc.path.clone(),
                node: describe(graph, id),
            })?;
        let n_ops = scan.operand_count();
        if operands.len() != n_ops || scan.axes.len() != n_ops {
            return Err(sc.invalid_at(
                id,
                format!(
                    "{} operand(s) and {} axis map(s), expected {n_ops}",
                    operands.len(),
                    scan.axes.len()
                ),
            ));
        }
        if step.inputs().len() != n_ops {
            return Err(sc.invalid_at(
                id,
                format!(
                    "the step graph takes {} input(s), expected {n_ops}",
                    step.inputs().len()
                ),
            ));
        }
        let k_max = scan
            .mini_batch
            .known()
            .ok_or_else(|| LowerKernelError::UnboundDim {
                graph: sc.path.clone(),
                node: describe(graph, id),
                symbol: scan.mini_batch.to_string(),
            })?;
        let ns = scan.states.len();
        let nper = scan.per.len();

        // The operands as views, and the extents of the mapped dims.
        let mut views = Vec::with_capacity(n_ops);
        let mut per_ext: Vec<Option<usize>> = vec![None; nper];
        for (i, (&o, axes)) in operands.iter().zip(&scan.axes).enumerate() {
            let v = sc.tensor(o, id)?;
            if v.shape.len() != axes.per.len() {
                return Err(sc.invalid_at(
                    id,
                    format!(
                        "operand {i} has shape {:?} but an axis map of rank {}",
                        v.shape,
                        axes.per.len()
                    ),
                ));
            }
            for (&d, p) in v.shape.iter().zip(&axes.per) {
                let Some(p) = *p else { continue };
                match per_ext.get_mut(p) {
                    Some(slot @ None) => *slot = Some(d),
                    Some(Some(prev)) if *prev == d => {}
                    _ => {
                        return Err(sc.invalid_at(
                            id,
                            format!("operand {i} maps an axis of extent {d} inconsistently"),
                        ))
                    }
                }
            }
            let what = format!("%{} operand{i}", id.index());
            views.push(self.view_of(sc, v, &what, body));
        }
        let per_ext = per_ext
            .into_iter()
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| sc.invalid_at(id, "a mapped dim is in no operand"))?;
        let count = numel(&per_ext).ok_or_else(|| sc.invalid_at(id, "too many slices"))?;

        // The result types: [per..., L, rest...] and [per..., state...].
        let result_ty: Vec<Vec<usize>> = match &graph.node(id).ty {
            NodeType::Tuple(ts) => ts
                .iter()
                .map(|t| known_dims(&t.shape, graph, id, &sc.path))
                .collect::<Res<_>>()?,
            NodeType::Tensor(_) => return Err(sc.invalid_at(id, "the scan's type is not a tuple")),
        };
        if result_ty.len() != 1 + ns
            || result_ty
                .iter()
                .any(|s| s.len() < nper || s[..nper] != per_ext[..])
            || result_ty[0].len() < nper + 1
        {
            return Err(sc.invalid_at(
                id,
                format!("result type {result_ty:?} for mapped extents {per_ext:?}"),
            ));
        }
        let seq_len = result_ty[0][nper];
        let row: usize = result_ty[0][nper + 1..].iter().product();
        let state_shapes: Vec<Vec<usize>> =
            result_ty[1..].iter().map(|s| s[nper..].to_vec()).collect();
        if k_max == 0 && seq_len > 0 {
            return Err(sc.invalid_at(id, "the mini-batch size is 0"));
        }
        let (full, rem) = match k_max {
            0 => (0, 0),
            k => (seq_len / k, seq_len % k),
        };

        // The result buffers: a graph output when a `get` of the element is one.
        let mut results = Vec::with_capacity(1 + ns);
        for (i, shape) in result_ty.iter().enumerate() {
            let taken = graph
                .users(id)
                .into_iter()
                .find_map(|u| match graph.node(u).op {
                    Op::Get { index } if index == i => sc.dests.get(&u).cloned(),
                    _ => None,
                });
            let dest = match taken {
                Some(d) => d,
                None => self.temp(sc, format!("%{} ttt.{i}", id.index()), shape),
            };
            results.push(dest);
        }

        // The slice loop.
        let c = self.var();
        let cvar = Index::Var(c);
        let per_idx: Vec<Index> = (0..nper)
            .map(|p| {
                let inner: usize = per_ext[p + 1..].iter().product();
                let q = ix_div(cvar.clone(), inner as i64);
                if p == 0 {
                    q
                } else {
                    ix_rem(q, per_ext[p] as i64)
                }
            })
            .collect();
        // Operand `i`'s slice.
        let slices: Vec<Slice> = views
            .iter()
            .zip(&scan.axes)
            .map(|((v, shape), axes)| {
                let mut offset = v.offset.clone();
                let (mut s, mut st) = (Vec::new(), Vec::new());
                for ((&d, &stride), p) in shape.iter().zip(&v.strides).zip(&axes.per) {
                    match p {
                        Some(p) => {
                            let i = per_idx.get(*p).cloned().unwrap_or(Index::Const(0));
                            offset = Index::sum(offset, ix_mul(i, stride));
                        }
                        None => {
                            s.push(d);
                            st.push(stride);
                        }
                    }
                }
                Slice {
                    buf: v.buf,
                    offset,
                    shape: s,
                    strides: st,
                }
            })
            .collect();
        let mut cb = Vec::new();
        let states: Vec<Dest> = (0..ns)
            .map(|s| {
                let name = scan.states.get(s).cloned().unwrap_or_default();
                let buf = self.buffer(
                    format!("ttt%{} {name}", id.index()),
                    BufferKind::Temp,
                    MemorySpace::Local,
                    &state_shapes[s],
                );
                Dest {
                    buf,
                    offset: Index::Const(0),
                }
            })
            .collect();
        for (s, dest) in states.iter().enumerate() {
            let Slice {
                buf,
                offset,
                shape,
                strides,
            } = slices[s].clone();
            if shape != state_shapes[s] {
                return Err(sc.invalid_at(
                    id,
                    format!(
                        "state {s} slices to {shape:?}, the result type says {:?}",
                        state_shapes[s]
                    ),
                ));
            }
            let v = Val {
                shape,
                lazy: Lazy::View(View {
                    buf,
                    offset,
                    strides,
                }),
            };
            self.materialize(&v, dest, &mut cb);
        }

        let out_index = step_output(step, "out")
            .ok_or_else(|| sc.invalid_at(id, "the step graph has no output `out`"))?;
        let next_index = scan
            .states
            .iter()
            .map(|s| {
                let name = TttScan::next_output_name(s);
                step_output(step, &name).ok_or_else(|| {
                    sc.invalid_at(id, format!("the step graph has no output `{name}`"))
                })
            })
            .collect::<Res<Vec<usize>>>()?;

        // Full mini-batches in a serial loop, then the remainder.
        let cx = StepCx {
            id,
            scan,
            step,
            slices,
            states,
            state_shapes,
            out_seq: Dest {
                buf: results[0].buf,
                offset: Index::sum(
                    results[0].offset.clone(),
                    Index::scaled(cvar.clone(), (seq_len * row) as i64),
                ),
            },
            row,
            seq_len,
            k_max,
            out_index,
            next_index,
        };
        if full > 0 {
            let mb = self.var();
            let t0 = Index::scaled(Index::Var(mb), k_max as i64);
            let sb = self.lower_step(sc, &cx, k_max, t0)?;
            cb.push(Stmt::Loop {
                var: mb,
                extent: full,
                schedule: Schedule::Serial,
                body: sb,
            });
        }
        if rem > 0 {
            let t0 = Index::Const((full * k_max) as i64);
            cb.extend(self.lower_step(sc, &cx, rem, t0)?);
        }

        // The final states.
        for (s, state) in cx.states.iter().enumerate() {
            let size: usize = cx.state_shapes[s].iter().product();
            let dest = Dest {
                buf: results[1 + s].buf,
                offset: Index::sum(
                    results[1 + s].offset.clone(),
                    Index::scaled(cvar.clone(), size as i64),
                ),
            };
            self.materialize(&state.val(&cx.state_shapes[s]), &dest, &mut cb);
        }
        if count > 0 {
            body.push(Stmt::Loop {
                var: c,
                extent: count,
                schedule: Schedule::Parallel,
                body: cb,
            });
        }
        Ok(results
            .iter()
            .zip(&result_ty)
            .map(|(d, shape)| d.val(shape))
            .collect())
    }
    /// One mini-batch of `k` tokens starting at token `t0` of the current slice: the step graph
    /// specialized to `$k = k` on views of the operands, `out` written into the output
    /// sequence, the next states through `Local` temporaries into the state buffers.
    fn lower_step(&mut self, sc: &Scope, cx: &StepCx, k: usize, t0: Index) -> Res<Vec<Stmt>> {
        let id = cx.id;
        let bind = BTreeMap::from([(MINI_BATCH_DIM.to_string(), k)]);
        let specialized = specialize_graph(cx.step, &bind);
        let path = format!("{}/ttt%{}/step[$k={k}]", sc.path, id.index());
        let prefix = format!("ttt%{}/k{k}/", id.index());
        let mut inputs = Vec::with_capacity(cx.slices.len());
        for (i, sl) in cx.slices.iter().enumerate() {
            let view = |shape: Vec<usize>, offset: Index| Val {
                shape,
                lazy: Lazy::View(View {
                    buf: sl.buf,
                    offset,
                    strides: sl.strides.clone(),
                }),
            };
            let v = match cx.scan.operand_kind(i) {
                OperandKind::State(s) => cx.states[s].val(&cx.state_shapes[s]),
                OperandKind::Param(_) => view(sl.shape.clone(), sl.offset.clone()),
                OperandKind::TokenEta => {
                    if sl.shape != [cx.k_max] {
                        return Err(sc.invalid_at(
                            id,
                            format!(
                                "token_eta slices to {:?}, expected [{}]",
                                sl.shape, cx.k_max
                            ),
                        ));
                    }
                    view(vec![k], sl.offset.clone())
                }
                OperandKind::LossArg(_) | OperandKind::OutArg(_) | OperandKind::Lr => {
                    let (Some(&l), Some(&s0)) = (sl.shape.first(), sl.strides.first()) else {
                        return Err(
                            sc.invalid_at(id, format!("sequence operand {i} has no sequence axis"))
                        );
                    };
                    if l != cx.seq_len {
                        return Err(sc.invalid_at(
                            id,
                            format!("operand {i} has {l} tokens, expected {}", cx.seq_len),
                        ));
                    }
                    let mut shape = sl.shape.clone();
                    shape[0] = k;
                    view(shape, Index::sum(sl.offset.clone(), ix_mul(t0.clone(), s0)))
                }
            };
            inputs.push(v);
        }
        let mut dests: Vec<Option<Dest>> = vec![None; specialized.outputs().len()];
        if let Some(d) = dests.get_mut(cx.out_index) {
            *d = Some(Dest {
                buf: cx.out_seq.buf,
                offset: Index::sum(cx.out_seq.offset.clone(), ix_mul(t0, cx.row as i64)),
            });
        }
        let mut nexts = Vec::with_capacity(cx.states.len());
        for (s, &pos) in cx.next_index.iter().enumerate() {
            let name = cx.scan.states.get(s).cloned().unwrap_or_default();
            let buf = self.buffer(
                format!("{prefix}next_{name}"),
                BufferKind::Temp,
                MemorySpace::Local,
                &cx.state_shapes[s],
            );
            let d = Dest {
                buf,
                offset: Index::Const(0),
            };
            if let Some(slot) = dests.get_mut(pos) {
                *slot = Some(d.clone());
            }
            nexts.push(d);
        }
        let mut sb = Vec::new();
        self.lower_graph(
            GraphJob {
                graph: &specialized,
                path,
                prefix,
                space: MemorySpace::Local,
                inputs,
                dests,
            },
            &mut sb,
        )?;
        for (s, next) in nexts.iter().enumerate() {
            self.materialize(&next.val(&cx.state_shapes[s]), &cx.states[s], &mut sb);
        }
        Ok(sb)
    }
}

/// One scan operand's slice: the operand's buffer, the slice's offset (depending on the slice
/// loop's variable), and the remaining axes.
#[derive(Clone, Debug)]
struct Slice {
    buf: BufId,
    offset: Index,
    shape: Vec<usize>,
    strides: Vec<i64>,
}

/// What lowering one mini-batch of a scan needs.
struct StepCx<'s> {
    id: NodeId,
    scan: &'s TttScan,
    step: &'s Graph,
    /// Every operand's slice.
    slices: Vec<Slice>,
    /// The `Local` state buffers and their shapes.
    states: Vec<Dest>,
    state_shapes: Vec<Vec<usize>>,
    /// The slice's output sequence `[L, ...]`.
    out_seq: Dest,
    /// Elements of one output row.
    row: usize,
    seq_len: usize,
    k_max: usize,
    /// Positions of `out` and of every `next_<state>` among the step's outputs.
    out_index: usize,
    next_index: Vec<usize>,
}

/// Position of the step graph's output `name`.
fn step_output(step: &Graph, name: &str) -> Option<usize> {
    step.outputs().iter().position(|o| o.name == name)
}

/// Whether `op` broadcasts (numpy rules) to exactly `target`.
fn broadcasts(op: &[usize], target: &[usize]) -> bool {
    op.len() <= target.len()
        && op
            .iter()
            .zip(&target[target.len() - op.len()..])
            .all(|(&a, &b)| a == b || a == 1)
}

/// Axis `i` of the result is axis `perm[i]` of `x`.
fn permute(x: Val, perm: &[usize]) -> Val {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let lazy = match x.lazy {
        Lazy::View(v) => Lazy::View(View {
            buf: v.buf,
            offset: v.offset,
            strides: perm.iter().map(|&p| v.strides[p]).collect(),
        }),
        Lazy::Const(c) => Lazy::Const(c),
        lazy => Lazy::Permute(
            Box::new(Val {
                shape: x.shape,
                lazy,
            }),
            perm.to_vec(),
        ),
    };
    Val { shape, lazy }
}

/// `x` broadcast to `shape` (checked by the caller).
fn expand(x: Val, shape: &[usize]) -> Val {
    let lazy = match x.lazy {
        Lazy::View(v) => {
            let extra = shape.len() - x.shape.len();
            let mut strides = vec![0i64; extra];
            for (j, (&d, &s)) in x.shape.iter().zip(&v.strides).enumerate() {
                strides.push(if d == 1 && shape[extra + j] != 1 {
                    0
                } else {
                    s
                });
            }
            Lazy::View(View {
                buf: v.buf,
                offset: v.offset,
                strides,
            })
        }
        Lazy::Const(c) => Lazy::Const(c),
        lazy => Lazy::Broadcast(Box::new(Val {
            shape: x.shape,
            lazy,
        })),
    };
    Val {
        shape: shape.to_vec(),
        lazy,
    }
}

/// `x`'s row-major elements with `shape` (same size, checked by the caller).
fn reshape(x: Val, shape: &[usize]) -> Val {
    let lazy = match x.lazy {
        Lazy::View(v) => match reshape_strides(shape, &x.shape, &v.strides) {
            Some(strides) => Lazy::View(View {
                buf: v.buf,
                offset: v.offset,
                strides,
            }),
            None => Lazy::Reshape(Box::new(Val {
                shape: x.shape,
                lazy: Lazy::View(v),
            })),
        },
        Lazy::Const(c) => Lazy::Const(c),
        lazy => Lazy::Reshape(Box::new(Val {
            shape: x.shape,
            lazy,
        })),
    };
    Val {
        shape: shape.to_vec(),
        lazy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_groups_pair_runs_of_equal_size() {
        let g = reshape_groups(&[4, 1, 6], &[2, 2, 3, 2]).expect("groups");
        assert_eq!(g, vec![(vec![0], vec![0, 1]), (vec![2], vec![2, 3])]);
        assert!(reshape_groups(&[4], &[5]).is_none());
    }

    #[test]
    fn reshape_strides_need_contiguous_groups() {
        // A transposed [3, 2] (strides [1, 3]) cannot be flattened without a copy...
        assert_eq!(reshape_strides(&[6], &[3, 2], &[1, 3]), None);
        // ...but splitting an axis of it can.
        assert_eq!(
            reshape_strides(&[3, 1, 2], &[3, 2], &[1, 3]),
            Some(vec![1, 0, 3])
        );
        assert_eq!(
            reshape_strides(&[2, 3, 4], &[6, 4], &[4, 1]),
            Some(vec![12, 4, 1])
        );
    }
}
