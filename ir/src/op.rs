//! The closed set of graph operations and their shape rules.

use crate::scan::TttScan;
use crate::shape::{Dim, NodeType, Shape, TensorType};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Elementwise functions of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `sqrt(x)`
    Sqrt,
    /// `1 / sqrt(x)`
    Rsqrt,
    /// `e^x`
    Exp,
    /// natural logarithm
    Log,
    /// hyperbolic tangent
    Tanh,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// `x * sigmoid(x)`
    Silu,
    /// `max(x, 0)`
    Relu,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`
    GeluTanh,
    /// `1` where `x > 0`, else `0` (the derivative of relu)
    Step,
    /// Largest integer not above `x`.
    Floor,
    /// Sine (radians).
    Sin,
    /// Cosine (radians).
    Cos,
    /// `|x|`
    Abs,
    /// `log(1 + e^x)`
    Softplus,
}

impl UnaryOp {
    /// Every unary op, for tables and tests.
    pub const ALL: [UnaryOp; 16] = [
        UnaryOp::Neg,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::Relu,
        UnaryOp::GeluTanh,
        UnaryOp::Step,
        UnaryOp::Floor,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Abs,
        UnaryOp::Softplus,
    ];

    /// The op's name in the DSL and the printer.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::Relu => "relu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Step => "step",
            UnaryOp::Floor => "floor",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Abs => "abs",
            UnaryOp::Softplus => "softplus",
        }
    }

    /// Looks an op up by its DSL name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// Elementwise functions of two operands, with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a ^ b` (real power)
    Pow,
    /// `max(a, b)`
    Max,
    /// `min(a, b)`
    Min,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 7] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
    ];

    /// The op's name in the printer.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
        }
    }
}

/// Reductions over one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
}

impl ReduceOp {
    /// The op's name in the DSL and the printer.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
        }
    }
}

/// One operation of the graph IR. The set is closed: every pass and backend handles all of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A named graph input; its type is given when it is created.
    Input {
        /// The input's name (a program input, a state, a parameter or a token argument).
        name: String,
    },
    /// A scalar constant (shape `[]`).
    Const {
        /// The value.
        value: f64,
    },
    /// The extent of a dimension as a scalar (shape `[]`), known once dimensions are bound.
    Extent {
        /// The dimension.
        dim: Dim,
    },
    /// `[0, 1, ..., len - 1]` (shape `[len]`).
    Iota {
        /// The length.
        len: Dim,
    },
    /// An elementwise function.
    Unary {
        /// Which function.
        fun: UnaryOp,
    },
    /// An elementwise function of two broadcast operands.
    Binary {
        /// Which function.
        fun: BinaryOp,
    },
    /// Matrix product over the last two axes; leading axes broadcast.
    MatMul,
    /// Swaps the last two axes.
    Transpose,
    /// Reorders axes: result axis `i` is operand axis `perm[i]`.
    Permute {
        /// A permutation of `0..rank`.
        perm: Vec<usize>,
    },
    /// Reduces one axis, keeping it with extent 1.
    Reduce {
        /// Which reduction.
        fun: ReduceOp,
        /// The axis (non-negative).
        axis: usize,
    },
    /// Broadcasts the operand to `shape`.
    Expand {
        /// The target shape.
        shape: Shape,
    },
    /// Sums the broadcast axes of the operand away so that it has `shape` (the adjoint of
    /// `expand`).
    SumTo {
        /// The target shape.
        shape: Shape,
    },
    /// Reinterprets the row-major data with a new shape of the same size.
    Reshape {
        /// The new shape.
        shape: Shape,
    },
    /// Mixes the rows of a block: `x [k, s...]` by weights `w [p, k]` gives `[p, s...]` with
    /// `out[i] = Σ_j w[i, j] x[j]` (the per-token states of a mini-batch, primal form).
    Mix,
    /// Mixed outer products: `w [p, k]`, `u [k, m]`, `d [k, n]` give `[p, m, n]` with
    /// `out[i] = Σ_j w[i, j] u[j]ᵀ d[j]` (a matmul weight's per-token states; the dual form
    /// rewrites products with it away).
    MixOuter,
    /// A static window of one axis: `y = x[.., start .. start + len, ..]` along `axis`
    /// (e.g. one tap `W[:, 0, j]` of a depthwise convolution weight).
    Slice {
        /// The axis.
        axis: usize,
        /// The first element taken.
        start: usize,
        /// How many elements are taken.
        len: usize,
    },
    /// A shift along `axis` that keeps the shape: `y[t] = x[t - by]` for `t >= by`; for
    /// `t < by`, `0` with one operand `(x)`, else `fill[t]` with two operands `(x, fill)`, where
    /// `fill` has `x`'s shape except extent `by` on `axis` (the history carried over from an
    /// earlier chunk of a sequence). Causal convolutions are sums of shifts.
    Shift {
        /// The axis.
        axis: usize,
        /// How far elements move towards higher indices.
        by: usize,
    },
    /// The adjoint of a zero-filled [`Op::Shift`]: a shift towards lower indices that keeps
    /// the shape, `y[t] = x[t + by]` for `t + by < n` and `0` for the last `by` positions
    /// (`n` the extent of `axis`). Linear in the size also where `n` is symbolic, which is why
    /// reverse mode uses it rather than a selection matrix.
    Unshift {
        /// The axis.
        axis: usize,
        /// How far elements move towards lower indices.
        by: usize,
    },
    /// Rows of a table by integer ids: `table [V, h...]`, `ids [s...]` give `[s..., h...]` with
    /// `out[s, h] = table[ids[s], h]`. The ids are floats holding integers in `0..V` (an `int`
    /// input's values); the graph interpreter rejects any other id, compiled code clamps it
    /// into `0..V` (see `docs/backends.md`).
    Gather,
    /// The adjoint of [`Op::Gather`] with respect to the table: `grad [s..., h...]`, `ids [s...]`
    /// give `[rows, h...]` with `out[v, h] = Σ_{s: ids[s] = v} grad[s, h]` (rows with repeated
    /// ids add up).
    ScatterAdd {
        /// The table's number of rows (`V`).
        rows: Dim,
    },
    /// The test-time-training scan over a sequence: see [`TttScan`].
    Ttt(Box<TttScan>),
    /// The vector-Jacobian product of a `ttt` scan (reverse mode through the scan): operands
    /// are the scan's operands, then the cotangents of its results (the stacked outputs, then
    /// every final state); the result is a tuple with the cotangent of every scan operand (same
    /// types as the operands). The scan must have its `step` and `step_vjp` graphs. The forward
    /// keeps the state at the start of every `checkpoint_every`-th mini-batch; the backward
    /// recomputes the states inside each group of mini-batches and runs `step_vjp` on the
    /// mini-batches in reverse (`docs/gradients.md`).
    TttVjp {
        /// The scan being differentiated.
        scan: Box<TttScan>,
        /// Mini-batches per checkpoint group (at least 1).
        checkpoint_every: usize,
    },
    /// Element `index` of a tuple-valued operand.
    Get {
        /// The tuple index.
        index: usize,
    },
}

/// Why an op cannot be applied to its operands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TypeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, TypeError> {
    Err(TypeError(msg.into()))
}

fn tensor<'a>(t: &'a NodeType, what: &str) -> Result<&'a TensorType, TypeError> {
    t.tensor()
        .ok_or_else(|| TypeError(format!("{what} expects a tensor operand, got a tuple")))
}

impl Op {
    /// The shape of a leaf op (no operands, type declared with an element type): constants,
    /// extents and iotas.
    pub fn leaf_shape(&self) -> Option<Shape> {
        match self {
            Op::Const { .. } | Op::Extent { .. } => Some(Shape::scalar()),
            Op::Iota { len } => Some(Shape(vec![len.clone()])),
            _ => None,
        }
    }

    /// Short name used by the printer.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Const { .. } => "const",
            Op::Extent { .. } => "extent",
            Op::Iota { .. } => "iota",
            Op::Permute { .. } => "permute",
            Op::Unary { fun } => fun.name(),
            Op::Binary { fun } => fun.name(),
            Op::MatMul => "matmul",
            Op::Mix => "mix",
            Op::MixOuter => "mix_outer",
            Op::Transpose => "transpose",
            Op::Reduce { fun, .. } => fun.name(),
            Op::Expand { .. } => "expand",
            Op::SumTo { .. } => "sum_to",
            Op::Reshape { .. } => "reshape",
            Op::Slice { .. } => "slice",
            Op::Shift { .. } => "shift",
            Op::Unshift { .. } => "unshift",
            Op::Gather => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::Ttt(_) => "ttt",
            Op::TttVjp { .. } => "ttt_vjp",
            Op::Get { .. } => "get",
        }
    }

    /// Number of operands the op takes, where fixed.
    pub fn arity(&self) -> Option<usize> {
        match self {
            Op::Input { .. } | Op::Const { .. } | Op::Extent { .. } | Op::Iota { .. } => Some(0),
            Op::Unary { .. }
            | Op::Transpose
            | Op::Permute { .. }
            | Op::Reduce { .. }
            | Op::Expand { .. }
            | Op::SumTo { .. }
            | Op::Reshape { .. }
            | Op::Slice { .. }
            | Op::Unshift { .. }
            | Op::Get { .. } => Some(1),
            // `(x)` or `(x, fill)`.
            Op::Shift { .. } => None,
            Op::Binary { .. } | Op::MatMul | Op::Mix | Op::Gather | Op::ScatterAdd { .. } => {
                Some(2)
            }
            Op::MixOuter => Some(3),
            Op::Ttt(scan) => Some(scan.operand_count()),
            Op::TttVjp { scan, .. } => Some(scan.operand_count() + 1 + scan.states.len()),
        }
    }

    /// The result type of the op applied to operands of the given types. `Input` has no rule
    /// (its type is declared) and is rejected here.
    pub fn infer(&self, operands: &[&NodeType]) -> Result<NodeType, TypeError> {
        if let Some(n) = self.arity() {
            if operands.len() != n {
                return err(format!(
                    "{} takes {n} operand(s), got {}",
                    self.name(),
                    operands.len()
                ));
            }
        }
        let one = |what| tensor(operands[0], what);
        let ty = match self {
            Op::Input { .. } => return err("an input's type is declared, not inferred"),
            Op::Const { .. } | Op::Extent { .. } | Op::Iota { .. } => {
                return err("a leaf's element type is declared, not inferred");
            }
            Op::Permute { perm } => {
                let a = one("permute")?;
                let mut seen = perm.clone();
                seen.sort_unstable();
                if seen != (0..a.shape.rank()).collect::<Vec<_>>() {
                    return err(format!(
                        "permute: {perm:?} is not a permutation of the {} axes of {}",
                        a.shape.rank(),
                        a.shape
                    ));
                }
                TensorType::new(
                    a.dtype,
                    Shape(perm.iter().map(|&p| a.shape.0[p].clone()).collect()),
                )
            }
            Op::Unary { fun } => one(fun.name())?.clone(),
            Op::Binary { fun } => {
                let (a, b) = (one(fun.name())?, tensor(operands[1], fun.name())?);
                same_dtype(a, b, fun.name())?;
                let Some(shape) = a.shape.broadcast(&b.shape) else {
                    return err(format!(
                        "{}: shapes {} and {} do not broadcast",
                        fun.name(),
                        a.shape,
                        b.shape
                    ));
                };
                TensorType::new(a.dtype, shape)
            }
            Op::MatMul => matmul_type(one("matmul")?, tensor(operands[1], "matmul")?)?,
            Op::Mix => {
                let (w, x) = (one("mix")?, tensor(operands[1], "mix")?);
                same_dtype(w, x, "mix")?;
                let (Some(k), [p, k2]) = (x.shape.0.first(), w.shape.0.as_slice()) else {
                    return err(format!(
                        "mix: weights {} must be [p, k] and rows {} [k, ...]",
                        w.shape, x.shape
                    ));
                };
                if k != k2 {
                    return err(format!(
                        "mix: weights {} do not match the {} rows of {}",
                        w.shape, k, x.shape
                    ));
                }
                let mut dims = vec![p.clone()];
                dims.extend(x.shape.0[1..].iter().cloned());
                TensorType::new(w.dtype, Shape(dims))
            }
            Op::MixOuter => {
                let w = one("mix_outer")?;
                let (u, d) = (
                    tensor(operands[1], "mix_outer")?,
                    tensor(operands[2], "mix_outer")?,
                );
                same_dtype(w, u, "mix_outer")?;
                same_dtype(w, d, "mix_outer")?;
                match (
                    w.shape.0.as_slice(),
                    u.shape.0.as_slice(),
                    d.shape.0.as_slice(),
                ) {
                    ([p, k], [k1, m], [k2, n]) if k == k1 && k == k2 => {
                        TensorType::new(w.dtype, Shape(vec![p.clone(), m.clone(), n.clone()]))
                    }
                    _ => {
                        return err(format!(
                            "mix_outer: expected w [p, k], u [k, m], d [k, n], got {}, {}, {}",
                            w.shape, u.shape, d.shape
                        ))
                    }
                }
            }
            Op::Transpose => {
                let a = one("transpose")?;
                if a.shape.rank() < 2 {
                    return err(format!("transpose needs 2 or more axes, got {}", a.shape));
                }
                let mut dims = a.shape.0.clone();
                let r = dims.len();
                dims.swap(r - 1, r - 2);
                TensorType::new(a.dtype, Shape(dims))
            }
            Op::Reduce { fun, axis } => {
                let a = one(fun.name())?;
                if *axis >= a.shape.rank() {
                    return err(format!(
                        "{}: axis {axis} out of range for {}",
                        fun.name(),
                        a.shape
                    ));
                }
                let mut dims = a.shape.0.clone();
                dims[*axis] = Dim::Known(1);
                TensorType::new(a.dtype, Shape(dims))
            }
            Op::Expand { shape } => {
                let a = one("expand")?;
                if !a.shape.broadcasts_to(shape) {
                    return err(format!("expand: {} does not broadcast to {shape}", a.shape));
                }
                TensorType::new(a.dtype, shape.clone())
            }
            Op::SumTo { shape } => {
                let a = one("sum_to")?;
                if !shape.broadcasts_to(&a.shape) {
                    return err(format!("sum_to: {shape} does not broadcast to {}", a.shape));
                }
                TensorType::new(a.dtype, shape.clone())
            }
            Op::Reshape { shape } => {
                let a = one("reshape")?;
                if let (Some(n), Some(m)) = (a.shape.num_elements(), shape.num_elements()) {
                    if n != m {
                        return err(format!(
                            "reshape: {} has {n} elements, {shape} has {m}",
                            a.shape
                        ));
                    }
                }
                // With symbolic extents the sizes are checked once dimensions are bound (the
                // verifier runs on the specialized program).
                TensorType::new(a.dtype, shape.clone())
            }
            Op::Slice { axis, start, len } => {
                let a = one("slice")?;
                let Some(extent) = a.shape.0.get(*axis) else {
                    return err(format!("slice: axis {axis} out of range for {}", a.shape));
                };
                if let Some(n) = extent.known() {
                    if start.checked_add(*len).is_none_or(|end| end > n) {
                        return err(format!(
                            "slice: elements {start}..{} of axis {axis} of {} do not exist",
                            start.saturating_add(*len),
                            a.shape
                        ));
                    }
                }
                let mut dims = a.shape.0.clone();
                dims[*axis] = Dim::Known(*len);
                TensorType::new(a.dtype, Shape(dims))
            }
            Op::Shift { axis, by } => {
                if operands.is_empty() || operands.len() > 2 {
                    return err(format!(
                        "shift takes 1 or 2 operands (x, fill), got {}",
                        operands.len()
                    ));
                }
                let a = one("shift")?;
                if *axis >= a.shape.rank() {
                    return err(format!("shift: axis {axis} out of range for {}", a.shape));
                }
                if let Some(fill) = operands.get(1) {
                    let fill = tensor(fill, "shift")?;
                    same_dtype(a, fill, "shift")?;
                    let mut want = a.shape.0.clone();
                    want[*axis] = Dim::Known(*by);
                    if fill.shape.0 != want {
                        return err(format!(
                            "shift: the fill must be {} (x {} with {by} on axis {axis}), got {}",
                            Shape(want),
                            a.shape,
                            fill.shape
                        ));
                    }
                }
                a.clone()
            }
            Op::Unshift { axis, .. } => {
                let a = one("unshift")?;
                if *axis >= a.shape.rank() {
                    return err(format!("unshift: axis {axis} out of range for {}", a.shape));
                }
                a.clone()
            }
            Op::Gather => {
                let (table, ids) = (one("gather")?, tensor(operands[1], "gather")?);
                same_dtype(table, ids, "gather")?;
                let Some((_, row)) = table.shape.0.split_first() else {
                    return err("gather: the table must have 1 or more axes (rows first), got []");
                };
                let mut dims = ids.shape.0.clone();
                dims.extend(row.iter().cloned());
                TensorType::new(table.dtype, Shape(dims))
            }
            Op::ScatterAdd { rows } => {
                let (grad, ids) = (one("scatter_add")?, tensor(operands[1], "scatter_add")?);
                same_dtype(grad, ids, "scatter_add")?;
                let r = ids.shape.rank();
                if grad.shape.rank() < r || grad.shape.0[..r] != ids.shape.0[..] {
                    return err(format!(
                        "scatter_add: rows {} must start with the ids' shape {}",
                        grad.shape, ids.shape
                    ));
                }
                let mut dims = vec![rows.clone()];
                dims.extend(grad.shape.0[r..].iter().cloned());
                TensorType::new(grad.dtype, Shape(dims))
            }
            Op::Ttt(scan) => return scan.infer(operands),
            Op::TttVjp {
                scan,
                checkpoint_every,
            } => {
                if *checkpoint_every == 0 {
                    return err("ttt_vjp: checkpoint_every must be at least 1");
                }
                return scan.infer_vjp(operands);
            }
            Op::Get { index } => match operands[0] {
                NodeType::Tuple(ts) => match ts.get(*index) {
                    Some(t) => t.clone(),
                    None => {
                        return err(format!(
                            "get: index {index} out of range for a {}-tuple",
                            ts.len()
                        ))
                    }
                },
                NodeType::Tensor(_) => return err("get expects a tuple operand"),
            },
        };
        Ok(NodeType::Tensor(ty))
    }
}

fn same_dtype(a: &TensorType, b: &TensorType, what: &str) -> Result<(), TypeError> {
    if a.dtype != b.dtype {
        return err(format!(
            "{what}: element types {} and {} differ",
            a.dtype, b.dtype
        ));
    }
    Ok(())
}

fn matmul_type(a: &TensorType, b: &TensorType) -> Result<TensorType, TypeError> {
    same_dtype(a, b, "matmul")?;
    let (ra, rb) = (a.shape.rank(), b.shape.rank());
    if ra < 2 || rb < 2 {
        return err(format!(
            "matmul needs operands with 2 or more axes, got {} @ {}",
            a.shape, b.shape
        ));
    }
    let (m, k1) = (&a.shape.0[ra - 2], &a.shape.0[ra - 1]);
    let (k2, n) = (&b.shape.0[rb - 2], &b.shape.0[rb - 1]);
    if k1 != k2 {
        return err(format!(
            "matmul: inner dimensions differ: {} @ {} ({k1} vs {k2})",
            a.shape, b.shape
        ));
    }
    let lead_a = Shape(a.shape.0[..ra - 2].to_vec());
    let lead_b = Shape(b.shape.0[..rb - 2].to_vec());
    let Some(lead) = lead_a.broadcast(&lead_b) else {
        return err(format!(
            "matmul: batch axes of {} and {} do not broadcast",
            a.shape, b.shape
        ));
    };
    let mut dims = lead.0;
    dims.push(m.clone());
    dims.push(n.clone());
    Ok(TensorType::new(a.dtype, Shape(dims)))
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Input { name } => write!(f, "input {name}"),
            Op::Const { value } => write!(f, "const {}", crate::float_text::format_float(*value)),
            Op::Reduce { fun, axis } => write!(f, "{} axis={axis}", fun.name()),
            Op::Expand { shape } | Op::SumTo { shape } | Op::Reshape { shape } => {
                write!(f, "{} {shape}", self.name())
            }
            Op::Get { index } => write!(f, "get {index}"),
            Op::Extent { dim } => write!(f, "extent {dim}"),
            Op::Iota { len } => write!(f, "iota {len}"),
            Op::Permute { perm } => write!(f, "permute {perm:?}"),
            Op::Slice { axis, start, len } => {
                write!(f, "slice axis={axis} start={start} len={len}")
            }
            Op::Shift { axis, by } => write!(f, "shift axis={axis} by={by}"),
            Op::Unshift { axis, by } => write!(f, "unshift axis={axis} by={by}"),
            Op::ScatterAdd { rows } => write!(f, "scatter_add rows={rows}"),
            Op::Ttt(scan) => write!(f, "ttt {}", scan.header()),
            Op::TttVjp {
                scan,
                checkpoint_every,
            } => write!(
                f,
                "ttt_vjp checkpoint_every={checkpoint_every} {}",
                scan.header()
            ),
            _ => f.write_str(self.name()),
        }
    }
}
