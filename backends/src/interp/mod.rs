//! The reference interpreter: evaluates graph IR op by op. It is the oracle compiled backends
//! are tested against, so it is written to be obviously right rather than fast:
//!
//! - every value is a dense row-major array in the element type of its node; an `f32` graph is
//!   computed in `f32` throughout, an `f64` graph in `f64` (constants are rounded to the node's
//!   element type);
//! - sums (matmul, reductions, `sum_to`) accumulate sequentially in index order;
//! - every computed value is checked against the type its node declares;
//! - the test-time-training scan ([`tttc_ir::TttScan`]) runs its primal form literally, one
//!   weight copy per token, exactly as the module doc of `tttc_ir::scan` defines it.
//!
//! Graphs must be specialized (every dimension known) and, for scans, differentiated (the
//! autodiff pass fills in [`tttc_ir::TttScan::grad`]). Bad inputs and ill-formed graphs are
//! reported as [`InterpError`]s, never panics.

pub(crate) mod kernels;
mod scan;
mod scan_vjp;
mod value;

#[cfg(test)]
mod step_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use tttc_ir::{DType, Dim, Graph, Node, NodeId, NodeType, Op, Program, Shape, TensorType};
use tttc_runtime::{ElemType, RuntimeError, Tensor};
use value::{numel, Arr, Elem, Value};

/// Why a graph could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    /// An input tensor is missing or does not fit its input (named in the error).
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    /// A node's type (or a shape in its op) still has a symbolic dimension.
    #[error(
        "graph `{graph}`, {node}: dimension `{symbol}` is unbound; specialize the program \
         (bind every symbol) before interpreting it"
    )]
    UnboundDim {
        /// Which graph (`main`, `main/ttt%3/grad`, ...).
        graph: String,
        /// The node, as `%id (op)`.
        node: String,
        /// The symbol.
        symbol: String,
    },
    /// A scan has no gradient graph.
    #[error(
        "graph `{graph}`, {node}: the ttt scan has no gradient graph; run the autodiff pass first"
    )]
    MissingGradient {
        /// Which graph.
        graph: String,
        /// The scan node, as `%id (ttt)`.
        node: String,
    },
    /// The graph has a cycle.
    #[error("graph `{graph}` has a cycle")]
    Cycle {
        /// Which graph.
        graph: String,
    },
    /// A graph output is a tuple (only tensors can be returned; use `get`).
    #[error("output `{name}` is a tuple; only tensors can be returned")]
    TupleOutput {
        /// The output's name.
        name: String,
    },
    /// The graph is ill-formed: operands that do not fit their op, a value that does not match
    /// its node's declared type, a malformed scan... (a compiler bug when it follows a pass).
    #[error("ill-formed graph `{graph}`: {message}")]
    Invalid {
        /// Which graph.
        graph: String,
        /// What is wrong, naming the node.
        message: String,
    },
    /// A `gather` (or its adjoint) met an id that is not an integer row of its table: the data's
    /// fault, not the graph's.
    #[error("graph `{graph}`, {node}: bad id in `{ids}`: {message}")]
    BadId {
        /// Which graph.
        graph: String,
        /// The node, as `%id (op)`.
        node: String,
        /// The ids' tensor: an input's name, or the node computing them.
        ids: String,
        /// Which id and why.
        message: String,
    },
    /// A result could not be turned into a runtime tensor.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The runtime element type of an IR element type.
pub fn elem_type_of(dtype: DType) -> ElemType {
    match dtype {
        DType::F32 => ElemType::F32,
        DType::F64 => ElemType::F64,
    }
}

/// The IR element type of a runtime element type.
pub fn dtype_of(elem: ElemType) -> DType {
    match elem {
        ElemType::F32 => DType::F32,
        ElemType::F64 => DType::F64,
    }
}

/// Evaluates `graph` on `inputs` (matched to the graph's inputs by name; every declared input
/// is required, extra entries are ignored) and returns every graph output under its name.
///
/// Every node type must have known dimensions (specialize first), every input tensor must have
/// exactly its input's shape and element type, and every scan must have its gradient graph.
pub fn eval_graph(
    graph: &Graph,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, InterpError> {
    let plan = Plan::new(graph, "main".to_string())?;
    let mut values = Vec::with_capacity(graph.inputs().len());
    for &id in graph.inputs() {
        let name = graph
            .input_name(id)
            .ok_or_else(|| plan.invalid(format!("%{} is listed as an input", id.index())))?;
        let Some(KnownType::Tensor(dtype, shape)) = plan.types.get(&id) else {
            return Err(plan.invalid(format!("input `{name}` is not tensor-typed")));
        };
        let tensor = crate::input::exact_input(inputs, name, elem_type_of(*dtype), shape)?;
        values.push(match dtype {
            DType::F32 => tensor_value::<f32>(tensor),
            DType::F64 => tensor_value::<f64>(tensor),
        }?);
    }
    let outputs = plan.run(values)?;
    let mut result = BTreeMap::new();
    for (o, v) in graph.outputs().iter().zip(outputs) {
        let t = match v {
            Value::F32(a) => f32::to_tensor(a)?,
            Value::F64(a) => f64::to_tensor(a)?,
            Value::Tuple(_) => {
                return Err(InterpError::TupleOutput {
                    name: o.name.clone(),
                })
            }
        };
        result.insert(o.name.clone(), t);
    }
    Ok(result)
}

/// Evaluates `program.graph`: see [`eval_graph`].
pub fn run_program(
    program: &Program,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, InterpError> {
    eval_graph(&program.graph, inputs)
}

/// The value of a runtime tensor of element type `T`.
fn tensor_value<T: Elem>(t: &Tensor) -> Result<Value, InterpError> {
    let data = T::tensor_data(t).ok_or_else(|| InterpError::Invalid {
        graph: "main".into(),
        message: format!("internal: tensor is not {}", T::DTYPE),
    })?;
    Ok(T::wrap(Arr {
        shape: t.shape().to_vec(),
        data: data.to_vec(),
    }))
}

/// A node type with every dimension known.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum KnownType {
    Tensor(DType, Vec<usize>),
    Tuple(Vec<(DType, Vec<usize>)>),
}

impl KnownType {
    /// Whether `v` has this type.
    fn admits(&self, v: &Value) -> bool {
        fn one(dtype: DType, shape: &[usize], v: &Value) -> bool {
            match v {
                Value::F32(a) => dtype == DType::F32 && a.shape == shape,
                Value::F64(a) => dtype == DType::F64 && a.shape == shape,
                Value::Tuple(_) => false,
            }
        }
        match (self, v) {
            (KnownType::Tensor(d, s), v) => one(*d, s, v),
            (KnownType::Tuple(ts), Value::Tuple(vs)) => {
                ts.len() == vs.len() && ts.iter().zip(vs).all(|(t, v)| one(t.0, &t.1, v))
            }
            (KnownType::Tuple(_), _) => false,
        }
    }

    /// The element type computations of this node use.
    fn dtype(&self) -> Option<DType> {
        match self {
            KnownType::Tensor(d, _) => Some(*d),
            KnownType::Tuple(ts) => ts.first().map(|t| t.0),
        }
    }
}

impl std::fmt::Display for KnownType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KnownType::Tensor(d, s) => write!(f, "{d}{s:?}"),
            KnownType::Tuple(ts) => {
                f.write_str("(")?;
                for (i, (d, s)) in ts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{d}{s:?}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// The known extents of `shape`, or the first unbound symbol.
fn known_dims(shape: &Shape) -> Result<Vec<usize>, String> {
    shape
        .0
        .iter()
        .map(|d| d.known().ok_or_else(|| d.to_string()))
        .collect()
}

fn known_tensor(t: &TensorType) -> Result<(DType, Vec<usize>), String> {
    Ok((t.dtype, known_dims(&t.shape)?))
}

/// A graph prepared for evaluation: its live nodes in order and every node's known type.
pub(crate) struct Plan<'g> {
    graph: &'g Graph,
    /// The graph's name in errors (`main`, `main/ttt%3/grad`).
    path: String,
    order: Vec<NodeId>,
    types: HashMap<NodeId, KnownType>,
}

impl<'g> Plan<'g> {
    /// Checks `graph` (acyclic, outputs exist, every type known and of sane size) and orders its
    /// live nodes.
    fn new(graph: &'g Graph, path: String) -> Result<Self, InterpError> {
        for o in graph.outputs() {
            if graph.get(o.node).is_none() {
                return Err(InterpError::Invalid {
                    graph: path,
                    message: format!("output `{}` names a missing node", o.name),
                });
            }
        }
        let Some(order) = graph.live_order() else {
            return Err(InterpError::Cycle { graph: path });
        };
        let mut types = HashMap::new();
        for id in graph.node_ids() {
            let node = graph.node(id);
            let known = match &node.ty {
                NodeType::Tensor(t) => known_tensor(t).map(|(d, s)| KnownType::Tensor(d, s)),
                NodeType::Tuple(ts) => ts
                    .iter()
                    .map(known_tensor)
                    .collect::<Result<Vec<_>, _>>()
                    .map(KnownType::Tuple),
            };
            let known = known.map_err(|symbol| InterpError::UnboundDim {
                graph: path.clone(),
                node: describe_node(id, node),
                symbol,
            })?;
            let shapes: Vec<&Vec<usize>> = match &known {
                KnownType::Tensor(_, s) => vec![s],
                KnownType::Tuple(ts) => ts.iter().map(|t| &t.1).collect(),
            };
            for s in shapes {
                numel(s).map_err(|m| InterpError::Invalid {
                    graph: path.clone(),
                    message: format!("{}: {m}", describe_node(id, node)),
                })?;
            }
            types.insert(id, known);
        }
        Ok(Plan {
            graph,
            path,
            order,
            types,
        })
    }

    /// An [`InterpError::Invalid`] in this graph.
    fn invalid(&self, message: String) -> InterpError {
        InterpError::Invalid {
            graph: self.path.clone(),
            message,
        }
    }

    /// An [`InterpError::Invalid`] at node `id`.
    fn invalid_at(&self, id: NodeId, message: impl std::fmt::Display) -> InterpError {
        self.invalid(format!("{}: {message}", self.describe(id)))
    }

    /// `%id (op)`.
    fn describe(&self, id: NodeId) -> String {
        match self.graph.get(id) {
            Some(node) => describe_node(id, node),
            None => format!("%{}", id.index()),
        }
    }

    /// The extents of a shape in node `id`'s op.
    fn known_shape(&self, id: NodeId, shape: &Shape) -> Result<Vec<usize>, InterpError> {
        known_dims(shape).map_err(|symbol| InterpError::UnboundDim {
            graph: self.path.clone(),
            node: self.describe(id),
            symbol,
        })
    }

    /// The extent of a dimension in node `id`'s op.
    fn known_dim(&self, id: NodeId, dim: &Dim) -> Result<usize, InterpError> {
        dim.known().ok_or_else(|| InterpError::UnboundDim {
            graph: self.path.clone(),
            node: self.describe(id),
            symbol: dim.to_string(),
        })
    }

    /// Evaluates the graph on `inputs` (one value per graph input, in `graph.inputs()` order)
    /// and returns the outputs in `graph.outputs()` order.
    fn run(&self, inputs: Vec<Value>) -> Result<Vec<Value>, InterpError> {
        let ins = self.graph.inputs();
        if inputs.len() != ins.len() {
            return Err(self.invalid(format!(
                "the graph takes {} input(s), {} given",
                ins.len(),
                inputs.len()
            )));
        }
        let mut vals: HashMap<NodeId, Value> = HashMap::with_capacity(self.order.len());
        for (pos, (&id, v)) in ins.iter().zip(inputs).enumerate() {
            match self.types.get(&id) {
                Some(t) if t.admits(&v) => {}
                Some(t) => {
                    return Err(self.invalid(format!(
                        "input #{pos} ({}) expects {t}, got {}",
                        self.describe(id),
                        v.describe()
                    )))
                }
                None => return Err(self.invalid(format!("input #{pos} is not a node"))),
            }
            vals.insert(id, v);
        }
        for &id in &self.order {
            let node = self.graph.node(id);
            if let Op::Input { .. } = node.op {
                if !vals.contains_key(&id) {
                    return Err(self.invalid_at(id, "an input node missing from the input list"));
                }
                continue;
            }
            let operands = self.graph.operands(id);
            if let Some(n) = node.op.arity() {
                if operands.len() != n {
                    return Err(self
                        .invalid_at(id, format!("takes {n} operand(s), has {}", operands.len())));
                }
            }
            let mut args = Vec::with_capacity(operands.len());
            for o in &operands {
                args.push(vals.get(o).ok_or_else(|| {
                    self.invalid_at(id, format!("operand %{} was not evaluated", o.index()))
                })?);
            }
            let v = self.eval_node(id, node, &args)?;
            match self.types.get(&id) {
                Some(t) if t.admits(&v) => {}
                Some(t) => {
                    return Err(self.invalid_at(
                        id,
                        format!("computed {} but the node's type is {t}", v.describe()),
                    ))
                }
                None => return Err(self.invalid_at(id, "no type")),
            }
            vals.insert(id, v);
        }
        self.graph
            .outputs()
            .iter()
            .map(|o| {
                vals.get(&o.node)
                    .cloned()
                    .ok_or_else(|| self.invalid(format!("output `{}` was not evaluated", o.name)))
            })
            .collect()
    }

    /// Evaluates one non-input node.
    fn eval_node(&self, id: NodeId, node: &Node, args: &[&Value]) -> Result<Value, InterpError> {
        if let Op::Get { index } = node.op {
            return match args.first() {
                Some(Value::Tuple(vs)) => vs.get(index).cloned().ok_or_else(|| {
                    self.invalid_at(
                        id,
                        format!("index {index} out of range for a {}-tuple", vs.len()),
                    )
                }),
                Some(v) => {
                    Err(self
                        .invalid_at(id, format!("expects a tuple operand, got {}", v.describe())))
                }
                None => Err(self.invalid_at(id, "missing operand")),
            };
        }
        match self.types.get(&id).and_then(KnownType::dtype) {
            Some(DType::F32) => self.eval_typed::<f32>(id, node, args),
            Some(DType::F64) => self.eval_typed::<f64>(id, node, args),
            None => Err(self.invalid_at(id, "an empty tuple type")),
        }
    }

    /// Evaluates one node whose result has element type `T`.
    fn eval_typed<T: Elem>(
        &self,
        id: NodeId,
        node: &Node,
        args: &[&Value],
    ) -> Result<Value, InterpError> {
        let inv = |m: String| self.invalid_at(id, m);
        let arr = |i: usize| -> Result<&Arr<T>, InterpError> {
            let v = args
                .get(i)
                .ok_or_else(|| self.invalid_at(id, format!("missing operand {i}")))?;
            T::unwrap(v).ok_or_else(|| {
                self.invalid_at(
                    id,
                    format!(
                        "operand {i} is {} but the node computes in {}",
                        v.describe(),
                        T::DTYPE
                    ),
                )
            })
        };
        let result = match &node.op {
            Op::Const { value } => Arr::scalar(T::from_f64(*value)),
            Op::Extent { dim } => {
                let n = self.known_dim(id, dim)?;
                Arr::scalar(T::from_f64(n as f64))
            }
            Op::Iota { len } => kernels::iota(self.known_dim(id, len)?).map_err(inv)?,
            Op::Permute { perm } => kernels::permute(arr(0)?, perm).map_err(inv)?,
            Op::Unary { fun } => kernels::unary(*fun, arr(0)?),
            Op::Binary { fun } => kernels::binary(*fun, arr(0)?, arr(1)?).map_err(inv)?,
            Op::MatMul => kernels::matmul(arr(0)?, arr(1)?).map_err(inv)?,
            Op::Mix => kernels::mix(arr(0)?, arr(1)?).map_err(inv)?,
            Op::MixOuter => kernels::mix_outer(arr(0)?, arr(1)?, arr(2)?).map_err(inv)?,
            Op::Transpose => kernels::transpose(arr(0)?).map_err(inv)?,
            Op::Slice { axis, start, len } => {
                kernels::slice(arr(0)?, *axis, *start, *len).map_err(inv)?
            }
            Op::Shift { axis, by } => {
                let fill = if args.len() > 1 { Some(arr(1)?) } else { None };
                kernels::shift(arr(0)?, fill, *axis, *by).map_err(inv)?
            }
            Op::Unshift { axis, by } => kernels::unshift(arr(0)?, *axis, *by).map_err(inv)?,
            Op::Reduce { fun, axis } => kernels::reduce(*fun, *axis, arr(0)?).map_err(inv)?,
            Op::Expand { shape } => {
                kernels::expand(arr(0)?, &self.known_shape(id, shape)?).map_err(inv)?
            }
            Op::SumTo { shape } => {
                kernels::sum_to(arr(0)?, &self.known_shape(id, shape)?).map_err(inv)?
            }
            Op::Reshape { shape } => {
                kernels::reshape(arr(0)?, &self.known_shape(id, shape)?).map_err(inv)?
            }
            Op::Gather => kernels::gather(arr(0)?, arr(1)?).map_err(|e| self.bad_id(id, e))?,
            Op::ScatterAdd { rows } => {
                let rows = self.known_dim(id, rows)?;
                kernels::scatter_add(arr(0)?, arr(1)?, rows).map_err(|e| self.bad_id(id, e))?
            }
            Op::Ttt(ttt) => {
                let operands = (0..args.len()).map(arr).collect::<Result<Vec<_>, _>>()?;
                return scan::eval_ttt(self, id, ttt, &operands);
            }
            Op::TttVjp {
                scan,
                checkpoint_every,
            } => {
                let operands = (0..args.len()).map(arr).collect::<Result<Vec<_>, _>>()?;
                return scan_vjp::eval_ttt_vjp(self, id, scan, *checkpoint_every, &operands);
            }
            Op::Input { .. } | Op::Get { .. } => {
                return Err(inv("internal: evaluated out of place".into()))
            }
        };
        Ok(T::wrap(result))
    }
}

impl Plan<'_> {
    /// The error of a failed `gather`/`scatter_add` at node `id`.
    fn bad_id(&self, id: NodeId, e: kernels::BadId) -> InterpError {
        match e {
            kernels::BadId::Shape(m) => self.invalid_at(id, m),
            kernels::BadId::Id(message) => {
                let ids = self.graph.operands(id)[1];
                InterpError::BadId {
                    graph: self.path.clone(),
                    node: self.describe(id),
                    ids: match self.graph.input_name(ids) {
                        Some(name) => name.to_string(),
                        None => self.describe(ids),
                    },
                    message,
                }
            }
        }
    }
}

/// `%id (op)`.
fn describe_node(id: NodeId, node: &Node) -> String {
    format!("%{} ({})", id.index(), node.op.name())
}
