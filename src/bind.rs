//! Binding named tensors to a program: every input is checked by name, element type and shape,
//! every symbolic dimension gets its value, and the program is specialized to those values.

use std::collections::{BTreeMap, BTreeSet};
use tttc_ir::{Dim, NodeType, Program};
use tttc_runtime::{ElemType, Tensor};

/// An input that does not fit the program, or a bad setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindError {
    /// A required tensor is absent.
    #[error("missing input tensor `{name}` (expected {expected})")]
    Missing {
        /// The tensor.
        name: String,
        /// Its declared type.
        expected: String,
    },
    /// A tensor has the wrong shape.
    #[error("input tensor `{name}`: expected shape {expected}, got {got:?}{hint}")]
    Shape {
        /// The tensor.
        name: String,
        /// The declared shape with the values known so far.
        expected: String,
        /// The actual shape.
        got: Vec<usize>,
        /// Extra explanation.
        hint: String,
    },
    /// `--set` names something the program does not have.
    #[error("unknown setting `{name}`: this program's settings are {known}")]
    UnknownSetting {
        /// The name.
        name: String,
        /// What can be set.
        known: String,
    },
    /// A setting is out of range.
    #[error("setting `{name}` = {value} is invalid: {why}")]
    BadSetting {
        /// The name.
        name: String,
        /// The value.
        value: usize,
        /// Why.
        why: String,
    },
    /// A dimension is not determined by any input.
    #[error("dimension `{0}` is not determined by any input; give it with --set {0}=N")]
    Unbound(String),
    /// The specialized program failed verification.
    #[error("the inputs give inconsistent shapes: {0}")]
    Inconsistent(String),
}

/// A program specialized to concrete inputs.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The program with every dimension known.
    pub program: Program,
    /// The inputs, converted to the program's element type.
    pub inputs: BTreeMap<String, Tensor>,
    /// The value of every dimension.
    pub dims: BTreeMap<String, usize>,
    /// Things the user should know (unused tensors, lossy conversions).
    pub warnings: Vec<String>,
}

/// Checks `tensors` against `program`'s inputs and specializes it. `settings` are `--set`
/// values: configuration overrides, or constraints on dimensions.
pub fn bind(
    program: &Program,
    tensors: &BTreeMap<String, Tensor>,
    settings: &BTreeMap<String, usize>,
    elem: ElemType,
) -> Result<Bound, BindError> {
    let graph = &program.graph;
    let mut symbols = BTreeSet::new();
    for &id in graph.inputs() {
        if let Some(t) = graph.tensor_type(id) {
            symbols.extend(t.shape.symbols().map(str::to_string));
        }
    }
    for (name, &value) in settings {
        let is_config = program.configs.iter().any(|c| &c.name == name);
        if !is_config && !symbols.contains(name) {
            let mut known: Vec<String> = program
                .configs
                .iter()
                .map(|c| format!("{} (default {})", c.name, c.default))
                .collect();
            known.extend(
                symbols
                    .iter()
                    .filter(|s| !program.configs.iter().any(|c| &c.name == *s))
                    .map(|s| format!("{s} (from input shapes)")),
            );
            return Err(BindError::UnknownSetting {
                name: name.clone(),
                known: known.join(", "),
            });
        }
        if value == 0 {
            return Err(BindError::BadSetting {
                name: name.clone(),
                value,
                why: "it must be at least 1".into(),
            });
        }
    }
    let configs = program.config_values(settings);
    let mut dims: BTreeMap<String, usize> = configs.clone();
    for (k, v) in settings {
        dims.insert(k.clone(), *v);
    }
    // Where each dimension's value came from, for messages.
    let mut origin: BTreeMap<String, String> = dims
        .keys()
        .map(|k| {
            let how = if settings.contains_key(k) {
                "set"
            } else {
                "default"
            };
            (k.clone(), format!("{how} {k} = {}", dims[k]))
        })
        .collect();
    let mut inputs = BTreeMap::new();
    let mut warnings = Vec::new();
    for &id in graph.inputs() {
        let (Some(name), Some(ty)) = (graph.input_name(id), graph.tensor_type(id)) else {
            continue;
        };
        let Some(t) = tensors.get(name) else {
            return Err(BindError::Missing {
                name: name.to_string(),
                expected: ty.to_string(),
            });
        };
        let got = t.shape().to_vec();
        let expected = ty.shape.substitute(&dims).to_string();
        if got.len() != ty.shape.rank() {
            return Err(BindError::Shape {
                name: name.to_string(),
                expected: format!("{} ({} axes)", ty.shape, ty.shape.rank()),
                got,
                hint: String::new(),
            });
        }
        for (axis, (d, &n)) in ty.shape.0.iter().zip(&got).enumerate() {
            match d {
                Dim::Known(k) if *k != n => {
                    return Err(BindError::Shape {
                        name: name.to_string(),
                        expected: expected.clone(),
                        got,
                        hint: format!(" (axis {axis} must be {k})"),
                    })
                }
                Dim::Known(_) => {}
                Dim::Sym(s) => match dims.get(s) {
                    Some(&v) if v == n => {}
                    Some(&v) => {
                        let from = origin.get(s).cloned().unwrap_or_default();
                        let set_hint = if program.configs.iter().any(|c| &c.name == s)
                            && !settings.contains_key(s)
                        {
                            format!("; pass --set {s}={n} if that is intended")
                        } else {
                            String::new()
                        };
                        return Err(BindError::Shape {
                            name: name.to_string(),
                            expected: format!("{} = {expected}", ty.shape),
                            got,
                            hint: format!(
                                " (axis {axis} is `{s}`, which is {v} from {from}{set_hint})"
                            ),
                        });
                    }
                    None => {
                        dims.insert(s.clone(), n);
                        origin.insert(s.clone(), format!("input `{name}` axis {axis}"));
                    }
                },
            }
        }
        if t.elem_type() == ElemType::F64 && elem == ElemType::F32 {
            warnings.push(format!(
                "input `{name}` is f64 and is rounded to f32 for this f32 run"
            ));
        }
        inputs.insert(name.to_string(), t.cast(elem));
    }
    let unused: Vec<&str> = tensors
        .keys()
        .filter(|k| graph.input_by_name(k).is_none())
        .map(String::as_str)
        .collect();
    if !unused.is_empty() {
        warnings.push(format!(
            "the inputs file has tensors the program does not use: {}",
            unused.join(", ")
        ));
    }
    for (name, v) in &dims {
        if *v == 0 && program.configs.iter().any(|c| &c.name == name) {
            return Err(BindError::BadSetting {
                name: name.clone(),
                value: 0,
                why: "it must be at least 1".into(),
            });
        }
    }
    let specialized = program.specialize(&dims);
    if let Some(sym) = first_unbound(&specialized.graph) {
        return Err(BindError::Unbound(sym));
    }
    tttc_ir::verify::verify_program(&specialized)
        .map_err(|e| BindError::Inconsistent(e.to_string()))?;
    Ok(Bound {
        program: specialized,
        inputs,
        dims,
        warnings,
    })
}

fn first_unbound(graph: &tttc_ir::Graph) -> Option<String> {
    for id in graph.node_ids() {
        let node = graph.node(id);
        let shapes: Vec<&tttc_ir::Shape> = match &node.ty {
            NodeType::Tensor(t) => vec![&t.shape],
            NodeType::Tuple(ts) => ts.iter().map(|t| &t.shape).collect(),
        };
        for s in shapes {
            if let Some(sym) = s.symbols().next() {
                return Some(sym.to_string());
            }
        }
        if let tttc_ir::Op::Ttt(scan) = &node.op {
            if let Dim::Sym(s) = &scan.mini_batch {
                return Some(s.clone());
            }
            for g in [&scan.loss, &scan.out]
                .into_iter()
                .chain(scan.grad.as_ref())
            {
                if let Some(s) = first_unbound(g) {
                    return Some(s);
                }
            }
        }
    }
    None
}
