//! The tensor language the e-graph works on: [`TensorLang`], one e-node kind per
//! [`tttc_ir::Op`] that can appear in a step or main graph, plus attribute leaves.
//!
//! Attributes (target shapes, permutations, reduction axes) are e-nodes of their own, children
//! of the op that uses them, as in TENSAT: a pattern such as `(reshape ?s (reshape ?t ?x))`
//! then matches any shapes, and an applier can compute new attributes. Attribute e-classes are
//! never merged with tensor e-classes (the shape-checked applier refuses it).
//!
//! Pattern syntax (for the rule tables): `(neg ?x)`, `(add ?a ?b)` (every unary and binary op by
//! its printer name), `(matmul ?a ?b)`, `(transpose ?x)`, `(permute ?perm ?x)`,
//! `(sum ?axis ?x)`, `(mean ?axis ?x)`, `(expand ?shape ?x)`, `(sum_to ?shape ?x)`,
//! `(reshape ?shape ?x)`, `(mix ?w ?x)`, `(mix_outer ?w ?u ?d)`. Leaves (inputs, constants,
//! attributes) are not written in patterns: rules bind them to variables and test them with
//! guards.

use egg::{FromOp, Id, Language};
use std::cmp::Ordering;
use std::fmt;
use tttc_ir::{BinaryOp, DType, Dim, ReduceOp, Shape, TensorType, UnaryOp};

/// An element type with a total order (for [`egg::Language`], which needs `Ord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Elem {
    /// `f32`.
    F32,
    /// `f64`.
    F64,
}

impl From<DType> for Elem {
    fn from(d: DType) -> Self {
        match d {
            DType::F32 => Elem::F32,
            DType::F64 => Elem::F64,
        }
    }
}

impl From<Elem> for DType {
    fn from(e: Elem) -> Self {
        match e {
            Elem::F32 => DType::F32,
            Elem::F64 => DType::F64,
        }
    }
}

/// A tensor type with a total order: element type and (possibly symbolic) dimensions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ty {
    /// Element type.
    pub elem: Elem,
    /// Dimensions.
    pub dims: Vec<Dim>,
}

impl From<&TensorType> for Ty {
    fn from(t: &TensorType) -> Self {
        Ty {
            elem: t.dtype.into(),
            dims: t.shape.0.clone(),
        }
    }
}

impl From<&Ty> for TensorType {
    fn from(t: &Ty) -> Self {
        TensorType::new(t.elem.into(), Shape(t.dims.clone()))
    }
}

macro_rules! ordered_wrapper {
    ($(#[$doc:meta])* $name:ident, $inner:ty, $all:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct $name(pub $inner);

        impl $name {
            fn rank(self) -> usize {
                $all.iter().position(|f| *f == self.0).unwrap_or(usize::MAX)
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> Ordering {
                self.rank().cmp(&other.rank())
            }
        }
    };
}

ordered_wrapper!(
    /// A [`UnaryOp`] ordered by its position in [`UnaryOp::ALL`].
    Un,
    UnaryOp,
    UnaryOp::ALL
);
ordered_wrapper!(
    /// A [`BinaryOp`] ordered by its position in [`BinaryOp::ALL`].
    Bin,
    BinaryOp,
    BinaryOp::ALL
);
ordered_wrapper!(
    /// A [`ReduceOp`] ordered sum before mean.
    Red,
    ReduceOp,
    [ReduceOp::Sum, ReduceOp::Mean]
);

/// One e-node: a leaf (input, opaque value, constant, extent, iota, attribute) or an op applied
/// to child e-classes. Attribute children come first (`reshape`: `[shape, x]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorLang {
    /// A named graph input with its declared type.
    Input {
        /// The input's name.
        name: String,
        /// Its type.
        ty: Ty,
    },
    /// A value the rewriter does not look into (an element of a `ttt` scan's result in the
    /// main graph), identified by the index of its node in the source graph.
    Opaque {
        /// Index of the source node.
        index: u32,
        /// Its type.
        ty: Ty,
    },
    /// A scalar constant; the value is stored as the bits of an `f64` (a total order).
    Const {
        /// `f64::to_bits` of the value.
        bits: u64,
        /// Element type.
        elem: Elem,
    },
    /// The extent of a dimension as a scalar.
    Extent {
        /// The dimension.
        dim: Dim,
        /// Element type.
        elem: Elem,
    },
    /// `[0, 1, ..., len - 1]`.
    Iota {
        /// The length.
        len: Dim,
        /// Element type.
        elem: Elem,
    },
    /// Attribute: a shape (of `expand`, `sum_to`, `reshape`).
    ShapeAttr(Vec<Dim>),
    /// Attribute: a permutation (of `permute`).
    PermAttr(Vec<usize>),
    /// Attribute: an axis (of a reduction).
    AxisAttr(usize),
    /// An elementwise function: `[x]`.
    Unary(Un, [Id; 1]),
    /// An elementwise function of two broadcast operands: `[a, b]`.
    Binary(Bin, [Id; 2]),
    /// `[a, b]`.
    MatMul([Id; 2]),
    /// `[x]`.
    Transpose([Id; 1]),
    /// `[perm, x]`.
    Permute([Id; 2]),
    /// `[axis, x]`.
    Reduce(Red, [Id; 2]),
    /// `[shape, x]`.
    Expand([Id; 2]),
    /// `[shape, x]`.
    SumTo([Id; 2]),
    /// `[shape, x]`.
    Reshape([Id; 2]),
    /// `[w, x]`.
    Mix([Id; 2]),
    /// `[w, u, d]`.
    MixOuter([Id; 3]),
}

/// The discriminant of a [`TensorLang`] node: the variant, and for parameterized ops the
/// function.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Discriminant {
    tag: u8,
    fun: u8,
}

impl TensorLang {
    /// A constant of the given element type.
    pub fn constant(value: f64, elem: Elem) -> Self {
        TensorLang::Const {
            bits: value.to_bits(),
            elem,
        }
    }

    fn tag(&self) -> u8 {
        match self {
            TensorLang::Input { .. } => 0,
            TensorLang::Opaque { .. } => 1,
            TensorLang::Const { .. } => 2,
            TensorLang::Extent { .. } => 3,
            TensorLang::Iota { .. } => 4,
            TensorLang::ShapeAttr(_) => 5,
            TensorLang::PermAttr(_) => 6,
            TensorLang::AxisAttr(_) => 7,
            TensorLang::Unary(..) => 8,
            TensorLang::Binary(..) => 9,
            TensorLang::MatMul(_) => 10,
            TensorLang::Transpose(_) => 11,
            TensorLang::Permute(_) => 12,
            TensorLang::Reduce(..) => 13,
            TensorLang::Expand(_) => 14,
            TensorLang::SumTo(_) => 15,
            TensorLang::Reshape(_) => 16,
            TensorLang::Mix(_) => 17,
            TensorLang::MixOuter(_) => 18,
        }
    }

    /// Whether this is an attribute leaf.
    pub fn is_attr(&self) -> bool {
        matches!(
            self,
            TensorLang::ShapeAttr(_) | TensorLang::PermAttr(_) | TensorLang::AxisAttr(_)
        )
    }

    /// The printer name of the op (or leaf kind).
    pub fn op_name(&self) -> &'static str {
        match self {
            TensorLang::Input { .. } => "input",
            TensorLang::Opaque { .. } => "opaque",
            TensorLang::Const { .. } => "const",
            TensorLang::Extent { .. } => "extent",
            TensorLang::Iota { .. } => "iota",
            TensorLang::ShapeAttr(_) => "shape",
            TensorLang::PermAttr(_) => "perm",
            TensorLang::AxisAttr(_) => "axis",
            TensorLang::Unary(f, _) => f.0.name(),
            TensorLang::Binary(f, _) => f.0.name(),
            TensorLang::MatMul(_) => "matmul",
            TensorLang::Transpose(_) => "transpose",
            TensorLang::Permute(_) => "permute",
            TensorLang::Reduce(f, _) => f.0.name(),
            TensorLang::Expand(_) => "expand",
            TensorLang::SumTo(_) => "sum_to",
            TensorLang::Reshape(_) => "reshape",
            TensorLang::Mix(_) => "mix",
            TensorLang::MixOuter(_) => "mix_outer",
        }
    }
}

impl Language for TensorLang {
    type Discriminant = Discriminant;

    fn discriminant(&self) -> Self::Discriminant {
        let fun = match self {
            TensorLang::Unary(f, _) => f.rank() as u8,
            TensorLang::Binary(f, _) => f.rank() as u8,
            TensorLang::Reduce(f, _) => f.rank() as u8,
            _ => 0,
        };
        Discriminant {
            tag: self.tag(),
            fun,
        }
    }

    fn matches(&self, other: &Self) -> bool {
        match (self, other) {
            (TensorLang::Unary(a, _), TensorLang::Unary(b, _)) => a == b,
            (TensorLang::Binary(a, _), TensorLang::Binary(b, _)) => a == b,
            (TensorLang::Reduce(a, _), TensorLang::Reduce(b, _)) => a == b,
            // Leaves carry their whole payload.
            _ if self.children().is_empty() => self == other,
            _ => self.tag() == other.tag(),
        }
    }

    fn children(&self) -> &[Id] {
        match self {
            TensorLang::Input { .. }
            | TensorLang::Opaque { .. }
            | TensorLang::Const { .. }
            | TensorLang::Extent { .. }
            | TensorLang::Iota { .. }
            | TensorLang::ShapeAttr(_)
            | TensorLang::PermAttr(_)
            | TensorLang::AxisAttr(_) => &[],
            TensorLang::Unary(_, c) | TensorLang::Transpose(c) => c,
            TensorLang::Binary(_, c)
            | TensorLang::MatMul(c)
            | TensorLang::Permute(c)
            | TensorLang::Reduce(_, c)
            | TensorLang::Expand(c)
            | TensorLang::SumTo(c)
            | TensorLang::Reshape(c)
            | TensorLang::Mix(c) => c,
            TensorLang::MixOuter(c) => c,
        }
    }

    fn children_mut(&mut self) -> &mut [Id] {
        match self {
            TensorLang::Input { .. }
            | TensorLang::Opaque { .. }
            | TensorLang::Const { .. }
            | TensorLang::Extent { .. }
            | TensorLang::Iota { .. }
            | TensorLang::ShapeAttr(_)
            | TensorLang::PermAttr(_)
            | TensorLang::AxisAttr(_) => &mut [],
            TensorLang::Unary(_, c) | TensorLang::Transpose(c) => c,
            TensorLang::Binary(_, c)
            | TensorLang::MatMul(c)
            | TensorLang::Permute(c)
            | TensorLang::Reduce(_, c)
            | TensorLang::Expand(c)
            | TensorLang::SumTo(c)
            | TensorLang::Reshape(c)
            | TensorLang::Mix(c) => c,
            TensorLang::MixOuter(c) => c,
        }
    }
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, xs: &[T]) -> fmt::Result {
    f.write_str("[")?;
    for (i, x) in xs.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{x}")?;
    }
    f.write_str("]")
}

impl fmt::Display for TensorLang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorLang::Input { name, .. } => write!(f, "input:{name}"),
            TensorLang::Opaque { index, .. } => write!(f, "opaque:{index}"),
            TensorLang::Const { bits, .. } => {
                write!(
                    f,
                    "const:{}",
                    tttc_ir::float_text::format_float(f64::from_bits(*bits))
                )
            }
            TensorLang::Extent { dim, .. } => write!(f, "extent:{dim}"),
            TensorLang::Iota { len, .. } => write!(f, "iota:{len}"),
            TensorLang::ShapeAttr(dims) => {
                f.write_str("shape")?;
                write_list(f, dims)
            }
            TensorLang::PermAttr(perm) => {
                f.write_str("perm")?;
                write_list(f, perm)
            }
            TensorLang::AxisAttr(a) => write!(f, "axis:{a}"),
            _ => f.write_str(self.op_name()),
        }
    }
}

/// Why a pattern's operator could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operator `{op}` with {arity} operand(s) in a rewrite pattern")]
pub struct ParseOpError {
    op: String,
    arity: usize,
}

impl FromOp for TensorLang {
    type Error = ParseOpError;

    fn from_op(op: &str, children: Vec<Id>) -> Result<Self, Self::Error> {
        let fail = || ParseOpError {
            op: op.to_string(),
            arity: children.len(),
        };
        let node = match (op, children.as_slice()) {
            ("matmul", &[a, b]) => TensorLang::MatMul([a, b]),
            ("transpose", &[a]) => TensorLang::Transpose([a]),
            ("permute", &[p, a]) => TensorLang::Permute([p, a]),
            ("sum", &[ax, a]) => TensorLang::Reduce(Red(ReduceOp::Sum), [ax, a]),
            ("mean", &[ax, a]) => TensorLang::Reduce(Red(ReduceOp::Mean), [ax, a]),
            ("expand", &[s, a]) => TensorLang::Expand([s, a]),
            ("sum_to", &[s, a]) => TensorLang::SumTo([s, a]),
            ("reshape", &[s, a]) => TensorLang::Reshape([s, a]),
            ("mix", &[w, a]) => TensorLang::Mix([w, a]),
            ("mix_outer", &[w, u, d]) => TensorLang::MixOuter([w, u, d]),
            (name, &[a]) => TensorLang::Unary(Un(UnaryOp::from_name(name).ok_or_else(fail)?), [a]),
            (name, &[a, b]) => {
                let fun = BinaryOp::ALL
                    .into_iter()
                    .find(|f| f.name() == name)
                    .ok_or_else(fail)?;
                TensorLang::Binary(Bin(fun), [a, b])
            }
            _ => return Err(fail()),
        };
        Ok(node)
    }
}
