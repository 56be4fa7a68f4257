//! A whole compiled program: its settable configuration and its main graph.

use crate::graph::Graph;
use crate::op::Op;
use crate::shape::Dim;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The value of a config: an integer (also usable as a dimension), a real, a boolean or a
/// string. Booleans and strings only steer compile-time `if`s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigValue {
    /// An integer.
    Int(usize),
    /// A real number.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A string.
    Str(String),
}

impl ConfigValue {
    /// The value as a real number (integers and reals only).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ConfigValue::Int(n) => Some(*n as f64),
            ConfigValue::Float(x) => Some(*x),
            ConfigValue::Bool(_) | ConfigValue::Str(_) => None,
        }
    }
}

impl std::fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigValue::Int(n) => write!(f, "{n}"),
            // Always with a fraction or exponent, so a real never reads as an integer.
            ConfigValue::Float(x) => write!(f, "{x:?}"),
            ConfigValue::Bool(b) => write!(f, "{b}"),
            ConfigValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A value given for a setting by `--set NAME=VALUE` or a `--config` file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Setting {
    /// A number (an integer or real config, or a dimension).
    Number(f64),
    /// `true` or `false` (a boolean config).
    Bool(bool),
    /// Any other text (a string config).
    Text(String),
}

impl Setting {
    /// The number, if it is one.
    pub fn number(&self) -> Option<f64> {
        match self {
            Setting::Number(x) => Some(*x),
            _ => None,
        }
    }
}

impl From<f64> for Setting {
    fn from(x: f64) -> Self {
        Setting::Number(x)
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Number(x) => write!(f, "{x}"),
            Setting::Bool(b) => write!(f, "{b}"),
            Setting::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// Settings by name (configs and dimensions).
pub type Settings = BTreeMap<String, Setting>;

/// An input declared `int`: the user's tensor holds integers (I64 or I32), which are converted
/// exactly to the run's floating-point type; `range` bounds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegerInput {
    /// The input's name.
    pub name: String,
    /// `start..end`: every value must be at least `start` and below `end` (a dimension).
    pub range: Option<(i64, Dim)>,
}

/// A settable value (`config NAME = DEFAULT` in the DSL; `--set NAME=VALUE` on the CLI).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigParam {
    /// Name.
    pub name: String,
    /// The default written in the program.
    pub default: ConfigValue,
    /// The value this program was compiled with (the default unless set).
    pub value: ConfigValue,
}

/// An expression over dimensions: `hidden_size / num_attention_heads`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DimExpr {
    /// A dimension or integer.
    Dim(Dim),
    /// A product.
    Mul(Box<DimExpr>, Box<DimExpr>),
    /// An exact quotient (an error when it does not divide).
    Div(Box<DimExpr>, Box<DimExpr>),
}

impl DimExpr {
    /// Evaluates with bound dimensions; the error says what is unbound or does not divide.
    pub fn eval(&self, dims: &BTreeMap<String, usize>) -> Result<usize, String> {
        match self {
            DimExpr::Dim(Dim::Known(n)) => Ok(*n),
            DimExpr::Dim(Dim::Sym(s)) => dims
                .get(s)
                .copied()
                .ok_or_else(|| format!("dimension `{s}` is not known")),
            DimExpr::Mul(a, b) => {
                let (a, b) = (a.eval(dims)?, b.eval(dims)?);
                a.checked_mul(b)
                    .ok_or_else(|| format!("{a} * {b} overflows"))
            }
            DimExpr::Div(a, b) => {
                let (x, y) = (a.eval(dims)?, b.eval(dims)?);
                if y == 0 || x % y != 0 {
                    return Err(format!("{a} = {x} is not divisible by {b} = {y}"));
                }
                Ok(x / y)
            }
        }
    }
}

impl std::fmt::Display for DimExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DimExpr::Dim(d) => write!(f, "{d}"),
            DimExpr::Mul(a, b) => write!(f, "({a} * {b})"),
            DimExpr::Div(a, b) => write!(f, "({a} / {b})"),
        }
    }
}

/// `dim NAME = EXPR`: a dimension computed from others when inputs are bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedDim {
    /// Its name.
    pub name: String,
    /// How it is computed.
    pub expr: DimExpr,
}

/// A program: configuration parameters and the main graph, whose inputs and outputs are the
/// tensors a user passes and receives by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    /// The program's name (the file stem).
    pub name: String,
    /// Settable configuration values.
    pub configs: Vec<ConfigParam>,
    /// Dimensions computed from others, in order.
    #[serde(default)]
    pub derived_dims: Vec<DerivedDim>,
    /// Outputs that are intermediates, written only on request.
    #[serde(default)]
    pub intermediates: Vec<String>,
    /// Inputs declared `int` (read from integer tensors).
    #[serde(default)]
    pub integer_inputs: Vec<IntegerInput>,
    /// The main graph.
    pub graph: Graph,
}

impl Program {
    /// The integer configs' values (they size tensors).
    pub fn int_configs(&self) -> BTreeMap<String, usize> {
        self.configs
            .iter()
            .filter_map(|c| match c.value {
                ConfigValue::Int(n) => Some((c.name.clone(), n)),
                _ => None,
            })
            .collect()
    }

    /// Every name a user may set: configs, the dimensions of the inputs, derived dimensions.
    pub fn setting_names(&self) -> std::collections::BTreeSet<String> {
        let mut names: std::collections::BTreeSet<String> =
            self.configs.iter().map(|c| c.name.clone()).collect();
        for &id in self.graph.inputs() {
            if let Some(t) = self.graph.tensor_type(id) {
                names.extend(t.shape.symbols().map(str::to_string));
            }
        }
        names.extend(self.derived_dims.iter().map(|d| d.name.clone()));
        names
    }

    /// A copy with every bound symbol replaced by its value, in the main graph and in every
    /// nested graph.
    pub fn specialize(&self, bindings: &BTreeMap<String, usize>) -> Program {
        Program {
            name: self.name.clone(),
            configs: self.configs.clone(),
            derived_dims: self.derived_dims.clone(),
            intermediates: self.intermediates.clone(),
            integer_inputs: self
                .integer_inputs
                .iter()
                .map(|i| IntegerInput {
                    name: i.name.clone(),
                    range: i.range.as_ref().map(|(s, e)| (*s, e.substitute(bindings))),
                })
                .collect(),
            graph: specialize_graph(&self.graph, bindings),
        }
    }
}

/// A copy of `graph` with every bound symbol replaced by its value.
pub fn specialize_graph(graph: &Graph, bindings: &BTreeMap<String, usize>) -> Graph {
    let mut g = graph.clone();
    for id in g.node_ids() {
        let Some(node) = g.node_mut(id) else { continue };
        node.ty = match &node.ty {
            crate::NodeType::Tensor(t) => crate::NodeType::Tensor(crate::TensorType::new(
                t.dtype,
                t.shape.substitute(bindings),
            )),
            crate::NodeType::Tuple(ts) => crate::NodeType::Tuple(
                ts.iter()
                    .map(|t| crate::TensorType::new(t.dtype, t.shape.substitute(bindings)))
                    .collect(),
            ),
        };
        match &mut node.op {
            Op::Expand { shape } | Op::SumTo { shape } | Op::Reshape { shape } => {
                *shape = shape.substitute(bindings);
            }
            Op::Extent { dim } => *dim = dim.substitute(bindings),
            Op::Iota { len } => *len = len.substitute(bindings),
            Op::ScatterAdd { rows } => *rows = rows.substitute(bindings),
            Op::Ttt(scan) | Op::TttVjp { scan, .. } => **scan = specialize_scan(scan, bindings),
            _ => {}
        }
    }
    g
}

/// A copy of `scan` with every bound symbol replaced by its value in its mini-batch size and
/// every one of its graphs.
pub fn specialize_scan(
    scan: &crate::TttScan,
    bindings: &BTreeMap<String, usize>,
) -> crate::TttScan {
    let mut scan = scan.clone();
    scan.mini_batch = scan.mini_batch.substitute(bindings);
    scan.loss = specialize_graph(&scan.loss, bindings);
    scan.out = specialize_graph(&scan.out, bindings);
    scan.grad = scan.grad.as_ref().map(|g| specialize_graph(g, bindings));
    scan.step = scan.step.as_ref().map(|g| specialize_graph(g, bindings));
    scan.step_vjp = scan
        .step_vjp
        .as_ref()
        .map(|g| specialize_graph(g, bindings));
    scan
}
