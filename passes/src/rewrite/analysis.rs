//! The e-class analysis: every tensor e-class carries its element type and (possibly symbolic)
//! shape, computed with [`tttc_ir::Op::infer`], and the value of a scalar constant for folding.

use super::lang::{Elem, TensorLang, Ty};
use egg::{Analysis, DidMerge, EGraph, Id};
use tttc_ir::{BinaryOp, Dim, NodeType, Op, Shape, TensorType, UnaryOp};

/// The e-graph this module rewrites.
pub type TensorGraph = EGraph<TensorLang, ShapeAnalysis>;

/// An attribute value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    /// A shape.
    Shape(Vec<Dim>),
    /// A permutation.
    Perm(Vec<usize>),
    /// An axis.
    Axis(usize),
}

impl Attr {
    /// The leaf e-node carrying this attribute.
    pub fn node(&self) -> TensorLang {
        match self {
            Attr::Shape(s) => TensorLang::ShapeAttr(s.clone()),
            Attr::Perm(p) => TensorLang::PermAttr(p.clone()),
            Attr::Axis(a) => TensorLang::AxisAttr(*a),
        }
    }
}

/// What the analysis knows about one e-class.
#[derive(Clone, Debug, PartialEq)]
pub enum ClassData {
    /// A tensor value.
    Tensor {
        /// Its type.
        ty: TensorType,
        /// Its value as `f64` bits, when it is a known scalar constant (shape `[]`).
        konst: Option<u64>,
    },
    /// An attribute.
    Attr(Attr),
    /// An ill-typed node (never produced by the shape-checked appliers; kept so that the
    /// analysis cannot panic).
    Invalid(String),
}

impl ClassData {
    /// The tensor type, if this is a tensor.
    pub fn tensor(&self) -> Option<&TensorType> {
        match self {
            ClassData::Tensor { ty, .. } => Some(ty),
            _ => None,
        }
    }

    /// The constant value, if this is a known scalar.
    pub fn konst(&self) -> Option<f64> {
        match self {
            ClassData::Tensor { konst: Some(b), .. } => Some(f64::from_bits(*b)),
            _ => None,
        }
    }

    fn tensor_or(&self, what: &str) -> Result<&TensorType, String> {
        match self {
            ClassData::Tensor { ty, .. } => Ok(ty),
            ClassData::Attr(a) => Err(format!("{what}: operand is an attribute {a:?}")),
            ClassData::Invalid(m) => Err(format!("{what}: invalid operand ({m})")),
        }
    }
}

/// The shape analysis (no state; see [`ClassData`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ShapeAnalysis;

/// The symbolic element count of a shape: the product of its known extents and the sorted list
/// of its symbols. Two shapes with equal counts have as many elements for every binding.
pub fn element_monomial(dims: &[Dim]) -> (usize, Vec<&str>) {
    let mut known = 1usize;
    let mut syms = Vec::new();
    for d in dims {
        match d {
            Dim::Known(n) => known = known.saturating_mul(*n),
            Dim::Sym(s) => syms.push(s.as_str()),
        }
    }
    syms.sort_unstable();
    (known, syms)
}

fn round_to(elem: Elem, v: f64) -> f64 {
    match elem {
        Elem::F64 => v,
        Elem::F32 => f64::from(v as f32),
    }
}

/// Folds a unary function of a constant, for the functions whose result is correctly rounded
/// in both element types (so folding agrees with every backend).
fn fold_unary(fun: UnaryOp, elem: Elem, x: f64) -> Option<f64> {
    let v = match (fun, elem) {
        (UnaryOp::Neg, _) => -x,
        (UnaryOp::Sqrt, Elem::F64) => x.sqrt(),
        (UnaryOp::Sqrt, Elem::F32) => f64::from((x as f32).sqrt()),
        _ => return None,
    };
    Some(round_to(elem, v))
}

/// Folds a binary function of two constants (correctly rounded functions only).
fn fold_binary(fun: BinaryOp, elem: Elem, a: f64, b: f64) -> Option<f64> {
    if matches!(fun, BinaryOp::Max | BinaryOp::Min) && (a.is_nan() || b.is_nan()) {
        return Some(round_to(elem, a + b));
    }
    let v = match elem {
        Elem::F64 => match fun {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => a.max(b),
            BinaryOp::Min => a.min(b),
            BinaryOp::Pow => return None,
        },
        Elem::F32 => {
            let (a, b) = (a as f32, b as f32);
            f64::from(match fun {
                BinaryOp::Add => a + b,
                BinaryOp::Sub => a - b,
                BinaryOp::Mul => a * b,
                BinaryOp::Div => a / b,
                BinaryOp::Max => a.max(b),
                BinaryOp::Min => a.min(b),
                BinaryOp::Pow => return None,
            })
        }
    };
    Some(v)
}

/// The IR op an op e-node stands for, reading its attribute children with `child`.
pub fn ir_op<'a>(
    node: &TensorLang,
    child: impl Fn(Id) -> &'a ClassData,
) -> Result<Option<Op>, String> {
    let shape_of = |id: Id, what: &str| match child(id) {
        ClassData::Attr(Attr::Shape(s)) => Ok(Shape(s.clone())),
        other => Err(format!("{what}: expected a shape attribute, got {other:?}")),
    };
    let op = match node {
        TensorLang::Unary(f, _) => Op::Unary { fun: f.0 },
        TensorLang::Binary(f, _) => Op::Binary { fun: f.0 },
        TensorLang::MatMul(_) => Op::MatMul,
        TensorLang::Transpose(_) => Op::Transpose,
        TensorLang::Permute([p, _]) => match child(*p) {
            ClassData::Attr(Attr::Perm(perm)) => Op::Permute { perm: perm.clone() },
            other => return Err(format!("permute: expected a permutation, got {other:?}")),
        },
        TensorLang::Reduce(f, [a, _]) => match child(*a) {
            ClassData::Attr(Attr::Axis(axis)) => Op::Reduce {
                fun: f.0,
                axis: *axis,
            },
            other => return Err(format!("{}: expected an axis, got {other:?}", f.0.name())),
        },
        TensorLang::Expand([s, _]) => Op::Expand {
            shape: shape_of(*s, "expand")?,
        },
        TensorLang::SumTo([s, _]) => Op::SumTo {
            shape: shape_of(*s, "sum_to")?,
        },
        TensorLang::Reshape([s, _]) => Op::Reshape {
            shape: shape_of(*s, "reshape")?,
        },
        TensorLang::Mix(_) => Op::Mix,
        TensorLang::MixOuter(_) => Op::MixOuter,
        _ => return Ok(None),
    };
    Ok(Some(op))
}

/// The tensor operands of an op e-node (its children after the attribute ones).
pub fn tensor_children(node: &TensorLang) -> &[Id] {
    use egg::Language;
    match node {
        TensorLang::Permute(c)
        | TensorLang::Reduce(_, c)
        | TensorLang::Expand(c)
        | TensorLang::SumTo(c)
        | TensorLang::Reshape(c) => &c[1..],
        other => other.children(),
    }
}

/// Computes what the analysis knows about `node` from its children's data. With `strict`,
/// reshapes must keep the symbolic element count (see [`element_monomial`]), which
/// [`tttc_ir::Op::infer`] cannot check before dimensions are bound; the shape-checked appliers
/// use it for every node they build.
pub fn infer<'a>(
    node: &TensorLang,
    child: impl Fn(Id) -> &'a ClassData + Copy,
    strict: bool,
) -> Result<ClassData, String> {
    let tensor = |ty: &Ty, konst: Option<u64>| ClassData::Tensor {
        ty: TensorType::from(ty),
        konst,
    };
    let scalar = |elem: Elem| TensorType::new(elem.into(), Shape::scalar());
    match node {
        TensorLang::Input { ty, .. } | TensorLang::Opaque { ty, .. } => {
            return Ok(tensor(ty, None));
        }
        TensorLang::Const { bits, elem } => {
            return Ok(ClassData::Tensor {
                ty: scalar(*elem),
                konst: Some(round_to(*elem, f64::from_bits(*bits)).to_bits()),
            });
        }
        TensorLang::Extent { dim, elem } => {
            return Ok(ClassData::Tensor {
                ty: scalar(*elem),
                konst: dim.known().map(|n| round_to(*elem, n as f64).to_bits()),
            });
        }
        TensorLang::Iota { len, elem } => {
            return Ok(ClassData::Tensor {
                ty: TensorType::new((*elem).into(), Shape(vec![len.clone()])),
                konst: None,
            });
        }
        TensorLang::ShapeAttr(s) => return Ok(ClassData::Attr(Attr::Shape(s.clone()))),
        TensorLang::PermAttr(p) => return Ok(ClassData::Attr(Attr::Perm(p.clone()))),
        TensorLang::AxisAttr(a) => return Ok(ClassData::Attr(Attr::Axis(*a))),
        _ => {}
    }
    let Some(op) = ir_op(node, child)? else {
        return Err(format!("{} is not an op", node.op_name()));
    };
    let operands = tensor_children(node);
    let mut types = Vec::with_capacity(operands.len());
    for &c in operands {
        types.push(NodeType::Tensor(child(c).tensor_or(op.name())?.clone()));
    }
    let refs: Vec<&NodeType> = types.iter().collect();
    let ty = match op.infer(&refs).map_err(|e| e.0)? {
        NodeType::Tensor(t) => t,
        NodeType::Tuple(_) => return Err(format!("{} gave a tuple", op.name())),
    };
    if strict {
        if let (Op::Reshape { shape }, Some(NodeType::Tensor(from))) = (&op, types.first()) {
            if element_monomial(&shape.0) != element_monomial(&from.shape.0) {
                return Err(format!(
                    "reshape: {} and {shape} may differ in size",
                    from.shape
                ));
            }
        }
    }
    let elem = Elem::from(ty.dtype);
    let konst = if ty.shape.rank() == 0 {
        match (node, operands) {
            (TensorLang::Unary(f, _), &[a]) => child(a)
                .konst()
                .and_then(|x| fold_unary(f.0, elem, x))
                .map(f64::to_bits),
            (TensorLang::Binary(f, _), &[a, b]) => match (child(a).konst(), child(b).konst()) {
                (Some(x), Some(y)) => fold_binary(f.0, elem, x, y).map(f64::to_bits),
                _ => None,
            },
            // A reshape of a scalar constant to `[]` is that constant.
            (TensorLang::Reshape(_), &[a]) => child(a).konst().map(f64::to_bits),
            _ => None,
        }
    } else {
        None
    };
    Ok(ClassData::Tensor { ty, konst })
}

impl Analysis<TensorLang> for ShapeAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut TensorGraph, enode: &TensorLang, _id: Id) -> ClassData {
        let egraph: &TensorGraph = egraph;
        infer(enode, |id| &egraph[id].data, false).unwrap_or_else(ClassData::Invalid)
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        match (&mut *a, b) {
            (ClassData::Tensor { konst, .. }, ClassData::Tensor { konst: k2, .. }) => {
                match (*konst, k2) {
                    (None, Some(k)) => {
                        *konst = Some(k);
                        DidMerge(true, false)
                    }
                    (Some(_), None) => DidMerge(false, true),
                    // Two different constants in one class cannot come from sound rules; keep
                    // the first.
                    (Some(x), Some(y)) => DidMerge(false, x != y),
                    (None, None) => DidMerge(false, false),
                }
            }
            (ClassData::Invalid(_), b @ (ClassData::Tensor { .. } | ClassData::Attr(_))) => {
                *a = b;
                DidMerge(true, false)
            }
            (_, ClassData::Invalid(_)) => DidMerge(false, true),
            (x, y) => DidMerge(false, *x != y),
        }
    }

    fn modify(egraph: &mut TensorGraph, id: Id) {
        let (bits, dtype) = match &egraph[id].data {
            ClassData::Tensor {
                ty,
                konst: Some(bits),
            } if ty.shape.rank() == 0 => (*bits, ty.dtype),
            _ => return,
        };
        let c = egraph.add(TensorLang::Const {
            bits,
            elem: dtype.into(),
        });
        egraph.union(id, c);
    }
}
