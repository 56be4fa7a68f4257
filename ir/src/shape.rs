//! Element types, dimensions and shapes, with numpy-style broadcasting.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
        })
    }
}

/// One dimension: a known extent or a named symbol bound later (from input shapes or `--set`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A known extent.
    Known(usize),
    /// A symbolic extent such as `f` or `mini_batch_size`.
    Sym(String),
}

impl Dim {
    /// A symbolic dimension.
    pub fn sym(name: impl Into<String>) -> Self {
        Dim::Sym(name.into())
    }

    /// The extent, if known.
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    /// Replaces a bound symbol by its value.
    pub fn substitute(&self, bindings: &BTreeMap<String, usize>) -> Dim {
        match self {
            Dim::Sym(s) => bindings
                .get(s)
                .map_or_else(|| self.clone(), |n| Dim::Known(*n)),
            Dim::Known(_) => self.clone(),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// A tensor shape; `[]` is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// The scalar shape `[]`.
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    /// A shape of known extents.
    pub fn known(dims: &[usize]) -> Self {
        Shape(dims.iter().map(|&d| Dim::Known(d)).collect())
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The extents, if every dimension is known.
    pub fn to_known(&self) -> Option<Vec<usize>> {
        self.0.iter().map(Dim::known).collect()
    }

    /// Number of elements, if every dimension is known.
    pub fn num_elements(&self) -> Option<usize> {
        self.to_known().map(|d| d.iter().product())
    }

    /// Replaces bound symbols by their values.
    pub fn substitute(&self, bindings: &BTreeMap<String, usize>) -> Shape {
        Shape(self.0.iter().map(|d| d.substitute(bindings)).collect())
    }

    /// The symbols this shape mentions.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|d| match d {
            Dim::Sym(s) => Some(s.as_str()),
            Dim::Known(_) => None,
        })
    }

    /// Numpy broadcasting of two shapes (trailing axes aligned; `1` stretches).
    pub fn broadcast(&self, other: &Shape) -> Option<Shape> {
        let rank = self.rank().max(other.rank());
        let mut out = Vec::with_capacity(rank);
        for i in 0..rank {
            let a = axis_from_end(self, rank - 1 - i);
            let b = axis_from_end(other, rank - 1 - i);
            out.push(match (a, b) {
                (None, Some(d)) | (Some(d), None) => d.clone(),
                (Some(a), Some(b)) if a == b => a.clone(),
                (Some(Dim::Known(1)), Some(d)) | (Some(d), Some(Dim::Known(1))) => d.clone(),
                _ => return None,
            });
        }
        Some(Shape(out))
    }

    /// Whether `self` can be broadcast to `target`.
    pub fn broadcasts_to(&self, target: &Shape) -> bool {
        self.rank() <= target.rank() && self.broadcast(target).as_ref() == Some(target)
    }
}

fn axis_from_end(shape: &Shape, from_end: usize) -> Option<&Dim> {
    let r = shape.rank();
    (from_end < r).then(|| &shape.0[r - 1 - from_end])
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Element type and shape of one tensor value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Shape,
}

impl TensorType {
    /// A tensor type.
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

/// The type of a node's result: one tensor, or a tuple of tensors (the scan).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// A single tensor.
    Tensor(TensorType),
    /// Several tensors, read with `get`.
    Tuple(Vec<TensorType>),
}

impl NodeType {
    /// The tensor type, if this is not a tuple.
    pub fn tensor(&self) -> Option<&TensorType> {
        match self {
            NodeType::Tensor(t) => Some(t),
            NodeType::Tuple(_) => None,
        }
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeType::Tensor(t) => write!(f, "{t}"),
            NodeType::Tuple(ts) => {
                f.write_str("(")?;
                for (i, t) in ts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(dims: &[&str]) -> Shape {
        Shape(
            dims.iter()
                .map(|d| d.parse().map_or_else(|_| Dim::sym(*d), Dim::Known))
                .collect(),
        )
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(s(&["1", "f"]).broadcast(&s(&["f"])), Some(s(&["1", "f"])));
        assert_eq!(
            s(&["K", "1"]).broadcast(&s(&["1", "f"])),
            Some(s(&["K", "f"]))
        );
        assert_eq!(s(&[]).broadcast(&s(&["K", "f"])), Some(s(&["K", "f"])));
        assert_eq!(s(&["f"]).broadcast(&s(&["g"])), None);
        assert_eq!(s(&["2"]).broadcast(&s(&["3"])), None);
        assert!(s(&["f"]).broadcasts_to(&s(&["K", "f"])));
        assert!(!s(&["K", "f"]).broadcasts_to(&s(&["f"])));
    }
}
