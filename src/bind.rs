//! Binding named tensors to a program: every input is checked by name, element type and shape,
//! every dimension gets its value (from integer configs, `--set`, input shapes and `dim`
//! definitions), and the program is specialized to those values.

use std::collections::{BTreeMap, BTreeSet};
use tttc_ir::{ConfigValue, Dim, NodeType, Program, Settings, Shape};
use tttc_runtime::{ElemType, Tensor};

/// Inputs that do not fit the program, or a bad setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindError {
    /// Missing or misshaped tensors, or inconsistent dimensions: one line each.
    #[error("the inputs do not fit the program:\n  {}", .0.join("\n  "))]
    Inputs(Vec<String>),
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
        value: tttc_ir::Setting,
        /// Why.
        why: String,
    },
    /// A dimension is not determined by any input.
    #[error("dimension `{0}` is not determined by any input; give it with --set {0}=N")]
    Unbound(String),
    /// With the dimensions bound, the program would build a tensor of more than
    /// [`MAX_ELEMENTS`] elements.
    #[error("{0}")]
    TooLarge(String),
    /// The specialized program failed verification (e.g. a reshape of the wrong size).
    #[error("the input shapes are inconsistent with the program: {0}")]
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
    /// Things the user should know (lossy conversions).
    pub warnings: Vec<String>,
}

/// The most elements one tensor may have, input or intermediate (2^31: 8 GiB of f32, 16 GiB
/// of f64). A larger tensor is a user error before anything is allocated, instead of an
/// allocation failure or the machine running out of memory half-way through a run.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Where a dimension's value came from, for messages.
type Origins = BTreeMap<String, String>;

/// Checks `tensors` against `program`'s inputs and specializes it. `settings` are the `--set`
/// (and `--config`) values: configs were applied when the program was compiled; other names
/// fix dimensions.
pub fn bind(
    program: &Program,
    tensors: &BTreeMap<String, Tensor>,
    settings: &Settings,
    elem: ElemType,
) -> Result<Bound, BindError> {
    let (specialized, dims) = check(program, tensors, settings)?;
    // Only the program's inputs are copied (converted on the way when their type differs).
    let mut taken = BTreeMap::new();
    let mut warnings = Vec::new();
    for &id in program.graph.inputs() {
        let Some(name) = program.graph.input_name(id) else {
            continue;
        };
        let Some(t) = tensors.get(name) else { continue };
        warn_rounding(name, t, elem, &mut warnings);
        taken.insert(name.to_string(), t.cast(elem));
    }
    Ok(Bound {
        program: specialized,
        inputs: taken,
        dims,
        warnings,
    })
}

/// [`bind`] taking the tensors: those already of element type `elem` move into
/// [`Bound::inputs`] without a copy (a model's weights are hundreds of megabytes); tensors the
/// program does not take are dropped.
pub fn bind_owned(
    program: &Program,
    tensors: BTreeMap<String, Tensor>,
    settings: &Settings,
    elem: ElemType,
) -> Result<Bound, BindError> {
    let (specialized, dims) = check(program, &tensors, settings)?;
    let (inputs, warnings) = take_inputs(program, tensors, elem);
    Ok(Bound {
        program: specialized,
        inputs,
        dims,
        warnings,
    })
}

/// Every check of [`bind`] on `tensors`, borrowed: the program specialized to them and every
/// dimension's value. [`take_inputs`] then converts them.
pub fn check(
    program: &Program,
    tensors: &BTreeMap<String, Tensor>,
    settings: &Settings,
) -> Result<(Program, BTreeMap<String, usize>), BindError> {
    let shapes: BTreeMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shape().to_vec()))
        .collect();
    let (specialized, dims) = bind_shapes(program, &shapes, settings)?;
    check_integer_inputs(program, tensors, &dims)?;
    check_gather_ids(&specialized, tensors)?;
    Ok((specialized, dims))
}

/// The program's inputs among `tensors` (checked by [`check`]), moved out and converted to
/// `elem` (no copy when they have it already; tensors the program does not take are dropped),
/// with a warning for each rounded from f64 to f32.
pub fn take_inputs(
    program: &Program,
    mut tensors: BTreeMap<String, Tensor>,
    elem: ElemType,
) -> (BTreeMap<String, Tensor>, Vec<String>) {
    let mut inputs = BTreeMap::new();
    let mut warnings = Vec::new();
    for &id in program.graph.inputs() {
        let Some(name) = program.graph.input_name(id) else {
            continue;
        };
        let Some(t) = tensors.remove(name) else {
            continue;
        };
        warn_rounding(name, &t, elem, &mut warnings);
        inputs.insert(name.to_string(), t.into_elem(elem));
    }
    (inputs, warnings)
}

/// The warning for input `name` when converting it to `elem` rounds it.
fn warn_rounding(name: &str, t: &Tensor, elem: ElemType, warnings: &mut Vec<String>) {
    if t.elem_type() == ElemType::F64 && elem == ElemType::F32 {
        warnings.push(format!(
            "input `{name}` is f64 and is rounded to f32 for this f32 run"
        ));
    }
}

/// The checks of [`bind`] that read values, for a caller that bound with [`bind_shapes`] and
/// runs on the tensors' own storage (the Python package): every `int` input of `program` in
/// `tensors` holds integers in its declared range, and the ids that a `gather` of `specialized`
/// (the program [`bind_shapes`] returned) reads straight from an input in `tensors` are rows of
/// its table. Inputs absent from `tensors` are not checked.
pub fn check_values(
    program: &Program,
    specialized: &Program,
    tensors: &BTreeMap<String, Tensor>,
    dims: &BTreeMap<String, usize>,
) -> Result<(), BindError> {
    check_integer_inputs(program, tensors, dims)?;
    check_gather_ids(specialized, tensors)
}

/// The shape checks of [`bind`] on shapes alone (no data): the program specialized to them and
/// every dimension's value. `tttc compile` uses it to build for shapes given with `--set`.
pub fn bind_shapes(
    program: &Program,
    shapes: &BTreeMap<String, Vec<usize>>,
    settings: &Settings,
) -> Result<(Program, BTreeMap<String, usize>), BindError> {
    let graph = &program.graph;
    let (mut dims, mut origin) = dims_from_settings(program, settings)?;
    let mut problems = Vec::new();
    // Pass 1: bind every dimension at its first appearance.
    for &id in graph.inputs() {
        let (Some(name), Some(ty)) = (graph.input_name(id), graph.tensor_type(id)) else {
            continue;
        };
        let Some(shape) = shapes.get(name) else {
            continue;
        };
        if shape.len() != ty.shape.rank() {
            continue;
        }
        for (axis, (d, &n)) in ty.shape.0.iter().zip(shape).enumerate() {
            if let Dim::Sym(s) = d {
                if !dims.contains_key(s) {
                    dims.insert(s.clone(), n);
                    origin.insert(s.clone(), format!("input `{name}` axis {axis}"));
                }
            }
        }
    }
    // Derived dimensions.
    for derived in &program.derived_dims {
        match derived.expr.eval(&dims) {
            Ok(v) => match dims.get(&derived.name) {
                Some(&have) if have != v => problems.push(format!(
                    "dimension `{}` = {} = {v}, but it is {have} from {}",
                    derived.name,
                    derived.expr,
                    origin
                        .get(&derived.name)
                        .map_or("elsewhere", String::as_str)
                )),
                Some(_) => {}
                None => {
                    dims.insert(derived.name.clone(), v);
                    origin.insert(
                        derived.name.clone(),
                        format!("`dim {} = {}`", derived.name, derived.expr),
                    );
                }
            },
            Err(why) => problems.push(format!(
                "dimension `{}` = {}: {why}",
                derived.name, derived.expr
            )),
        }
    }
    // Pass 2: check every input against the now-known dimensions.
    for &id in graph.inputs() {
        let (Some(name), Some(ty)) = (graph.input_name(id), graph.tensor_type(id)) else {
            continue;
        };
        let expected = describe(&ty.shape, &dims);
        let Some(shape) = shapes.get(name) else {
            problems.push(format!(
                "`{name}`: missing; expected {} {expected}",
                ty.dtype
            ));
            continue;
        };
        if let Some(why) = shape_problem(program, &ty.shape, shape, &dims, &origin, settings) {
            problems.push(format!("`{name}`: expected {expected}, got {shape:?}{why}"));
        } else if shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .is_none_or(|n| n > MAX_ELEMENTS)
        {
            problems.push(format!(
                "`{name}`: shape {shape:?} has more than {MAX_ELEMENTS} elements"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(BindError::Inputs(problems));
    }
    let specialized = program.specialize(&dims);
    if let Some(sym) = first_unbound(&specialized.graph) {
        return Err(BindError::Unbound(sym));
    }
    if let Some(problem) = oversized_tensor(&specialized.graph) {
        return Err(BindError::TooLarge(problem));
    }
    tttc_ir::verify::verify_program(&specialized)
        .map_err(|e| BindError::Inconsistent(e.message))?;
    Ok((specialized, dims))
}

/// The first tensor of `graph` (every dimension known) with more than [`MAX_ELEMENTS`]
/// elements, zero extents counted as one, described for a message.
fn oversized_tensor(graph: &tttc_ir::Graph) -> Option<String> {
    graph.node_ids().into_iter().find_map(|id| {
        let node = graph.get(id)?;
        let types = match &node.ty {
            NodeType::Tensor(t) => std::slice::from_ref(t),
            NodeType::Tuple(ts) => ts.as_slice(),
        };
        types.iter().find_map(|t| {
            let dims = t.shape.to_known()?;
            // Zero extents aside: a `[0, n, n]` state holds nothing, but each of its (absent)
            // slices would be `[n, n]`, which the scan's step graph still describes.
            let elements = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)));
            elements.is_none_or(|n| n > MAX_ELEMENTS).then(|| {
                let what = match graph.input_name(id) {
                    Some(name) => format!("input `{name}`"),
                    None => format!("`{}`", node.op.name()),
                };
                format!(
                    "with these dimensions the program would build a tensor of shape {dims:?} \
                     ({what}), more than {MAX_ELEMENTS} elements (zero extents counted as 1)"
                )
            })
        })
    })
}

/// Names of tensors that no input of `program` takes (a misspelled parameter, a file meant for
/// another program): worth a warning, not an error.
pub fn unused_tensors(program: &Program, tensors: &BTreeMap<String, Tensor>) -> Vec<String> {
    tensors
        .keys()
        .filter(|k| program.graph.input_by_name(k).is_none())
        .cloned()
        .collect()
}

/// Checks every `int` input: each value must be an integer (they are when read from integer
/// tensors by [`crate::read_inputs`]; a caller binding floating-point tensors itself may pass
/// others) and lie in the declared range (`in 0..vocab_size`), if any.
fn check_integer_inputs(
    program: &Program,
    tensors: &BTreeMap<String, Tensor>,
    dims: &BTreeMap<String, usize>,
) -> Result<(), BindError> {
    let mut problems = Vec::new();
    for input in &program.integer_inputs {
        let Some(t) = tensors.get(&input.name) else {
            continue;
        };
        let values = t.to_f64_vec();
        let at = |i: usize| position(t.shape(), i);
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| v.fract() != 0.0) {
            problems.push(format!(
                "`{}`: value {v} at index {:?} is not an integer (the program declares it `int`)",
                input.name,
                at(i)
            ));
            continue;
        }
        let Some((start, end)) = &input.range else {
            continue;
        };
        let Some(stop) = end.substitute(dims).known() else {
            problems.push(format!(
                "`{}`: the end of its range, `{end}`, is not known",
                input.name
            ));
            continue;
        };
        let (lo, hi) = (*start as f64, stop as f64);
        if let Some((i, v)) = values
            .iter()
            .enumerate()
            .find(|(_, &v)| !(v >= lo && v < hi))
        {
            let named = match end {
                Dim::Sym(s) => format!(" (`{s}` = {stop})"),
                Dim::Known(_) => String::new(),
            };
            problems.push(format!(
                "`{}`: value {v} at index {:?} is out of its range {start}..{stop}{named}",
                input.name,
                at(i)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(BindError::Inputs(problems))
    }
}

/// Checks the ids of every `gather` of the main graph that come straight from an input (through
/// reshapes, transposes, permutes and broadcasts, which keep the set of values): each must be an
/// integer row of the table (`0..V`). Compiled code would clamp a bad id; this says which
/// tensor holds it instead. Ids computed inside the program are the program's business (the
/// interpreter rejects bad ones, compiled code clamps them).
fn check_gather_ids(
    program: &Program,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<(), BindError> {
    let g = &program.graph;
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for id in g.live_order().unwrap_or_default() {
        if !matches!(g.node(id).op, tttc_ir::Op::Gather) {
            continue;
        }
        let operands = g.operands(id);
        let (Some(&table), Some(&ids)) = (operands.first(), operands.get(1)) else {
            continue;
        };
        let Some(rows) = g
            .tensor_type(table)
            .and_then(|t| t.shape.0.first())
            .and_then(Dim::known)
        else {
            continue;
        };
        let mut src = ids;
        while matches!(
            g.node(src).op,
            tttc_ir::Op::Reshape { .. }
                | tttc_ir::Op::Expand { .. }
                | tttc_ir::Op::Permute { .. }
                | tttc_ir::Op::Transpose
        ) {
            match g.operands(src).first() {
                Some(&o) => src = o,
                None => break,
            }
        }
        let Some(name) = g.input_name(src) else {
            continue;
        };
        let Some(t) = tensors.get(name) else { continue };
        if !seen.insert((name.to_string(), rows)) {
            continue;
        }
        let values = t.to_f64_vec();
        if let Some((i, v)) = values
            .iter()
            .enumerate()
            .find(|(_, &v)| !(v.fract() == 0.0 && v >= 0.0 && v < rows as f64))
        {
            problems.push(format!(
                "`{name}`: value {v} at index {:?} is not a row of the table it gathers from \
                 (an integer in 0..{rows})",
                position(t.shape(), i)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(BindError::Inputs(problems))
    }
}

/// Integer configs and `--set` dimensions; rejects unknown and invalid settings.
fn dims_from_settings(
    program: &Program,
    settings: &Settings,
) -> Result<(BTreeMap<String, usize>, Origins), BindError> {
    let known = program.setting_names();
    let mut dims = program.int_configs();
    let mut origin: Origins = program
        .configs
        .iter()
        .filter_map(|c| match c.value {
            ConfigValue::Int(v) => {
                let how = if settings.contains_key(&c.name) {
                    "--set"
                } else {
                    "the default"
                };
                Some((c.name.clone(), format!("{how} {} = {v}", c.name)))
            }
            _ => None,
        })
        .collect();
    for (name, setting) in settings {
        if !known.contains(name) {
            return Err(BindError::UnknownSetting {
                name: name.clone(),
                known: describe_settings(program, &known),
            });
        }
        if program.configs.iter().any(|c| &c.name == name) {
            continue; // applied when compiling
        }
        let Some(value) = setting
            .number()
            .filter(|v| v.fract() == 0.0 && (1.0..=1e15).contains(v))
        else {
            return Err(BindError::BadSetting {
                name: name.clone(),
                value: setting.clone(),
                why: "a dimension is a positive integer".into(),
            });
        };
        dims.insert(name.clone(), value as usize);
        origin.insert(name.clone(), format!("--set {name} = {value}"));
    }
    Ok((dims, origin))
}

fn describe_settings(program: &Program, known: &BTreeSet<String>) -> String {
    known
        .iter()
        .map(|k| match program.configs.iter().find(|c| &c.name == k) {
            Some(c) => format!("{k} (config, default {})", c.default),
            None => format!("{k} (dimension)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `[64, 64] ([hidden_size, hidden_size])`, with unknown dimensions left as names.
fn describe(shape: &Shape, dims: &BTreeMap<String, usize>) -> String {
    let concrete = shape.substitute(dims);
    if concrete == *shape {
        shape.to_string()
    } else {
        format!("{concrete} ({shape})")
    }
}

/// Why `got` does not fit `shape`, if it does not.
fn shape_problem(
    program: &Program,
    shape: &Shape,
    got: &[usize],
    dims: &BTreeMap<String, usize>,
    origin: &Origins,
    settings: &Settings,
) -> Option<String> {
    if got.len() != shape.rank() {
        return Some(format!(" ({} axes instead of {})", got.len(), shape.rank()));
    }
    for (axis, (d, &n)) in shape.0.iter().zip(got).enumerate() {
        let want = match d {
            Dim::Known(k) => Some(*k),
            Dim::Sym(s) => dims.get(s).copied(),
        };
        match (want, d) {
            (Some(w), _) if w == n => {}
            (Some(w), Dim::Sym(s)) => {
                let from = origin.get(s).map_or("elsewhere", String::as_str);
                let is_config = program.configs.iter().any(|c| &c.name == s);
                let hint = if is_config && !settings.contains_key(s) {
                    format!("; pass --set {s}={n} if that is intended")
                } else {
                    String::new()
                };
                return Some(format!(": axis {axis} is `{s}` = {w} (from {from}){hint}"));
            }
            (Some(w), Dim::Known(_)) => return Some(format!(": axis {axis} must be {w}")),
            (None, _) => {}
        }
    }
    None
}

fn first_unbound(graph: &tttc_ir::Graph) -> Option<String> {
    for id in graph.node_ids() {
        let node = graph.node(id);
        let shapes: Vec<&Shape> = match &node.ty {
            NodeType::Tensor(t) => vec![&t.shape],
            NodeType::Tuple(ts) => ts.iter().map(|t| &t.shape).collect(),
        };
        for s in shapes {
            if let Some(sym) = s.symbols().next() {
                return Some(sym.to_string());
            }
        }
        match &node.op {
            tttc_ir::Op::Extent { dim: Dim::Sym(s) }
            | tttc_ir::Op::Iota { len: Dim::Sym(s) }
            | tttc_ir::Op::ScatterAdd { rows: Dim::Sym(s) } => return Some(s.clone()),
            tttc_ir::Op::Ttt(scan) | tttc_ir::Op::TttVjp { scan, .. } => {
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
            _ => {}
        }
    }
    None
}

/// Row-major index of element `flat` of `shape`, for messages.
pub(crate) fn position(shape: &[usize], flat: usize) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    let mut rest = flat;
    for (slot, &n) in idx.iter_mut().zip(shape).rev() {
        if n > 0 {
            *slot = rest % n;
            rest /= n;
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program() -> Program {
        let text = "main {\n  input x: [n, f]\n  input w: [f, f]\n  output y = x @ w\n}\n";
        tttc_ir::syntax::compile("t.ttt", text, tttc_ir::DType::F32, &BTreeMap::new())
            .expect("compiles")
    }

    fn tensors() -> BTreeMap<String, Tensor> {
        BTreeMap::from([
            (
                "x".to_string(),
                Tensor::from_f32([2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap(),
            ),
            (
                "w".to_string(),
                Tensor::from_f64([3, 3], vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
                    .unwrap(),
            ),
            (
                "unused".to_string(),
                Tensor::from_f32([1], vec![7.0]).unwrap(),
            ),
        ])
    }

    /// `bind_owned` binds exactly as `bind` does, and moves the tensors that already have the
    /// run's element type (the same storage, not a copy).
    #[test]
    fn bind_owned_moves_what_it_need_not_convert() {
        let p = program();
        let settings = Settings::default();
        let by_ref = bind(&p, &tensors(), &settings, ElemType::F32).unwrap();
        let owned = tensors();
        let x_storage = owned["x"].as_f32().unwrap().as_ptr();
        let moved = bind_owned(&p, owned, &settings, ElemType::F32).unwrap();
        assert_eq!(moved.inputs, by_ref.inputs);
        assert_eq!(moved.dims, by_ref.dims);
        assert_eq!(moved.warnings, by_ref.warnings);
        assert_eq!(
            moved.warnings.len(),
            1,
            "w is rounded: {:?}",
            moved.warnings
        );
        assert!(!moved.inputs.contains_key("unused"));
        assert_eq!(moved.inputs["x"].as_f32().unwrap().as_ptr(), x_storage);
        assert_eq!(moved.inputs["w"].elem_type(), ElemType::F32);
    }

    /// A tensor that does not fit is the same error either way.
    #[test]
    fn bind_owned_reports_what_bind_reports() {
        let p = program();
        let mut bad = tensors();
        bad.insert("w".into(), Tensor::from_f32([2, 2], vec![0.0; 4]).unwrap());
        let settings = Settings::default();
        let e1 = bind(&p, &bad, &settings, ElemType::F32).unwrap_err();
        let e2 = bind_owned(&p, bad, &settings, ElemType::F32).unwrap_err();
        assert_eq!(e1, e2);
    }
}
