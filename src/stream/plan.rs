//! How a program is streamed: which inputs and outputs run along the sequence, and the main
//! graph cut into stages around its scans.
//!
//! Every node gets a [`Class`]: constant along the sequence (weights and what is computed from
//! them alone), per token (one row per position along the sequence axis, computed from that
//! position alone) or final (a whole-sequence result such as a scan's last state, valid once the
//! last token is in). A program streams when the classes are consistent: no op mixes tokens
//! (a reduction or a contraction over the sequence axis, a reshape that merges it), and nothing
//! per-token is computed from a final value. `iota` over the sequence gives positions: in a
//! chunk they are shifted by the number of tokens fed before it.
//!
//! Nodes get a level: the number of scans on their way from the inputs. Level `s` nodes form
//! stage program `s`, an ordinary program run on each chunk by any backend; scans of level `s`
//! run between stage `s` and stage `s + 1`, driven by the session. Constant nodes are not in
//! the stages: they form one more program, [`StreamPlan::constants`], run once per session
//! (leaves such as literals are copied into every stage that reads them instead).

use super::StreamError;
use std::collections::{BTreeMap, BTreeSet};
use tttc_ir::{BinaryOp, DType, Dim, Graph, NodeId, Op, Program, Shape, TensorType, TttScan};

/// What a value is along the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The same for every chunk (independent of the tokens).
    Constant,
    /// One entry per token along this axis.
    Token(usize),
    /// Depends on every token so far; its value after the last chunk is the one-shot value.
    Final,
}

/// A scan of the main graph.
#[derive(Clone, Debug)]
pub struct ScanSite {
    /// The scan node.
    pub node: NodeId,
    /// Its operands, in order.
    pub operands: Vec<NodeId>,
    /// The scan (unspecialized).
    pub scan: TttScan,
    /// `get` nodes reading its result: (node, tuple index).
    pub gets: Vec<(NodeId, usize)>,
    /// Its level.
    pub level: usize,
}

/// One stage: the main-graph nodes of one level, as a program.
#[derive(Clone, Debug)]
pub struct Stage {
    /// The stage program (symbolic shapes; the sequence dimension is the chunk's length).
    pub program: Program,
    /// Its inputs: (name in the stage program, the main-graph node whose value it takes).
    pub imports: Vec<(String, NodeId)>,
    /// Its outputs: (name in the stage program, the main-graph node whose value it is).
    pub exports: Vec<(String, NodeId)>,
    /// Whether it takes the position of the chunk's first token ([`POSITION_INPUT`]).
    pub uses_position: bool,
    /// Its shifts along the sequence, each continued from the chunks before.
    pub shifts: Vec<ShiftSite>,
}

/// A shift along the sequence (`y[t] = x[t − by]`): in a chunk, its first `by` rows come from
/// the end of the chunks before (zeros before the first), which the session keeps.
#[derive(Clone, Debug)]
pub struct ShiftSite {
    /// The shift node.
    pub node: NodeId,
    /// The shifted value (its last `by` rows are the next chunk's history).
    pub source: NodeId,
    /// The sequence axis.
    pub axis: usize,
    /// How far it shifts.
    pub by: usize,
    /// The stage input holding the history: the source's type with `by` rows on `axis`.
    pub input: String,
    /// The history's shape, with symbolic dimensions.
    pub shape: Shape,
}

/// A program output.
#[derive(Clone, Debug)]
pub struct OutputSite {
    /// Its name.
    pub name: String,
    /// The node.
    pub node: NodeId,
    /// Its class.
    pub class: Class,
}

/// The stage program input holding the position of the chunk's first token, shape `[1]`.
pub const POSITION_INPUT: &str = "$position";

/// A program cut for streaming.
#[derive(Clone, Debug)]
pub struct StreamPlan {
    /// The sequence dimension's name.
    pub seq_dim: String,
    /// Per-token inputs: name and sequence axis.
    pub token_inputs: BTreeMap<String, usize>,
    /// What is computed from the weights alone (constant along the sequence, not a leaf such as
    /// a literal): one program, run once per session, whose exports later chunks read like
    /// weights. `None` when there is nothing of that kind.
    pub constants: Option<Stage>,
    /// Stages, by level (a stage with nothing to compute is `None`).
    pub stages: Vec<Option<Stage>>,
    /// Scans, by level then graph order.
    pub scans: Vec<ScanSite>,
    /// The program's outputs.
    pub outputs: Vec<OutputSite>,
}

impl StreamPlan {
    /// The number of tokens `inputs` hold along the sequence (read from the first per-token
    /// input present), if any.
    pub fn sequence_length(
        &self,
        inputs: &BTreeMap<String, tttc_runtime::Tensor>,
    ) -> Option<usize> {
        self.token_inputs
            .iter()
            .find_map(|(name, &axis)| inputs.get(name).and_then(|t| t.shape().get(axis)).copied())
    }
}

/// The name of a stage program's `i`-th input. Stage inputs and outputs (`$out<i>`, and
/// `$history<i>` for shifts) are named by position, not after the main graph's nodes or
/// inputs, so that the stages of a model's layers are one program (compiled once by a
/// session); [`Stage::imports`] and [`Stage::exports`] say which values they are.
fn import_name(i: usize) -> String {
    format!("$in{i}")
}

/// Cuts `program` (after the pipeline) for streaming, or says why it cannot stream.
pub fn plan(program: &Program) -> Result<StreamPlan, StreamError> {
    let g = &program.graph;
    let order = g
        .topo_order()
        .ok_or_else(|| StreamError::internal("the main graph has a cycle"))?;
    let seq_dim = sequence_dim(g)?;
    let mut classes: BTreeMap<NodeId, Class> = BTreeMap::new();
    let mut levels: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut scans = Vec::new();
    for &id in &order {
        let node = g.node(id);
        let operands = g.operands(id);
        let level = operands
            .iter()
            .map(|o| {
                let l = levels.get(o).copied().unwrap_or(0);
                match g.node(*o).op {
                    Op::Ttt(_) => l + 1,
                    _ => l,
                }
            })
            .max()
            .unwrap_or(0);
        levels.insert(id, level);
        let class = classify(g, id, &operands, &classes, &seq_dim)?;
        classes.insert(id, class);
        if let Op::Ttt(scan) = &node.op {
            let gets = g
                .users(id)
                .into_iter()
                .filter_map(|u| match g.node(u).op {
                    Op::Get { index } => Some((u, index)),
                    _ => None,
                })
                .collect();
            scans.push(ScanSite {
                node: id,
                operands: operands.clone(),
                scan: (**scan).clone(),
                gets,
                level,
            });
        }
    }
    scans.sort_by_key(|s| s.level);

    let mut token_inputs = BTreeMap::new();
    for &id in g.inputs() {
        if let (Some(name), Some(Class::Token(axis))) = (g.input_name(id), classes.get(&id)) {
            token_inputs.insert(name.to_string(), *axis);
        }
    }
    let outputs: Vec<OutputSite> = g
        .outputs()
        .iter()
        .map(|o| OutputSite {
            name: o.name.clone(),
            node: o.node,
            class: classes.get(&o.node).copied().unwrap_or(Class::Constant),
        })
        .collect();

    // The nodes a stage computes: everything needed except inputs, scans and scan results.
    let needed = needed_nodes(g, &outputs);
    let is_computed = |id: NodeId| {
        needed.contains(&id)
            && !matches!(g.node(id).op, Op::Input { .. } | Op::Ttt(_))
            && !is_scan_result(g, id)
    };
    // Constants computed once: every constant node but the free ones. Free nodes cost nothing
    // where they are read, and are copied into each stage (and the constants program) that
    // reads them: leaves (literals, `iota` over other dimensions, extents), which the kernels
    // fold, and views of weights (a transpose, permute, reshape or expand of an input or of
    // another free node), which the kernels read through (a projection's `x @ W.T` reads `W`
    // in place; computed once, every such transpose of a model's weights would be a copy of
    // them, made on every start).
    let is_leaf = |id: NodeId| g.operands(id).is_empty();
    let is_constant = |id: NodeId| classes.get(&id) == Some(&Class::Constant);
    let is_view = |id: NodeId| {
        matches!(
            g.node(id).op,
            Op::Transpose | Op::Permute { .. } | Op::Reshape { .. } | Op::Expand { .. }
        )
    };
    let is_output = |id: NodeId| outputs.iter().any(|o| o.node == id);
    let mut free: BTreeSet<NodeId> = BTreeSet::new();
    for &id in &order {
        if !(is_computed(id) && is_constant(id)) {
            continue;
        }
        // Read by computed nodes only: a scan operand or an output needs its value.
        let read_in_stages = !is_output(id) && g.users(id).iter().all(|&u| is_computed(u));
        let view_of_free = is_view(id)
            && g.operands(id)
                .iter()
                .all(|o| free.contains(o) || matches!(g.node(*o).op, Op::Input { .. }));
        if read_in_stages && (is_leaf(id) || view_of_free) {
            free.insert(id);
        }
    }
    // The free nodes `ids` read, directly or through other free nodes.
    let free_operands = |ids: &BTreeSet<NodeId>| -> BTreeSet<NodeId> {
        let mut found = BTreeSet::new();
        let mut stack: Vec<NodeId> = ids.iter().flat_map(|&id| g.operands(id)).collect();
        while let Some(o) = stack.pop() {
            if free.contains(&o) && found.insert(o) {
                stack.extend(g.operands(o));
            }
        }
        found
    };
    let once_own: BTreeSet<NodeId> = order
        .iter()
        .copied()
        .filter(|&id| is_computed(id) && is_constant(id) && !free.contains(&id))
        .collect();
    let constants = if once_own.is_empty() {
        None
    } else {
        let copies = free_operands(&once_own);
        let members: Vec<NodeId> = order
            .iter()
            .copied()
            .filter(|id| once_own.contains(id) || copies.contains(id))
            .collect();
        Some(build_stage(
            program, &members, &copies, &outputs, &classes, &seq_dim,
        )?)
    };
    let max_level = levels.values().copied().max().unwrap_or(0);
    let mut stages = Vec::with_capacity(max_level + 1);
    for level in 0..=max_level {
        let own: BTreeSet<NodeId> = order
            .iter()
            .copied()
            .filter(|&id| is_computed(id) && !is_constant(id) && levels.get(&id) == Some(&level))
            .collect();
        let leaves = free_operands(&own);
        let members: Vec<NodeId> = order
            .iter()
            .copied()
            .filter(|id| own.contains(id) || leaves.contains(id))
            .collect();
        stages.push(if own.is_empty() {
            None
        } else {
            Some(build_stage(
                program, &members, &leaves, &outputs, &classes, &seq_dim,
            )?)
        });
    }
    Ok(StreamPlan {
        seq_dim,
        token_inputs,
        constants,
        stages,
        scans,
        outputs,
    })
}

/// Whether `id` is a `get` of a scan.
fn is_scan_result(g: &Graph, id: NodeId) -> bool {
    matches!(g.node(id).op, Op::Get { .. })
        && g.operands(id)
            .first()
            .is_some_and(|&o| matches!(g.node(o).op, Op::Ttt(_)))
}

/// The sequence dimension: the token axis of every scan's token arguments, one symbol for all.
fn sequence_dim(g: &Graph) -> Result<String, StreamError> {
    let mut found: Option<String> = None;
    for id in g.node_ids() {
        let Op::Ttt(scan) = &g.node(id).op else {
            continue;
        };
        let operands = g.operands(id);
        for (i, &o) in operands.iter().enumerate() {
            if !is_token_operand(scan, i) {
                continue;
            }
            let axis = token_axis(scan, i);
            let dim = g
                .tensor_type(o)
                .and_then(|t| axis.and_then(|a| t.shape.0.get(a)))
                .cloned();
            let Some(Dim::Sym(name)) = dim else {
                return Err(StreamError::not_streamable(
                    format!("scan %{}", id.index()),
                    "its sequence length is not a named dimension",
                ));
            };
            match &found {
                None => found = Some(name),
                Some(f) if *f == name => {}
                Some(f) => {
                    return Err(StreamError::not_streamable(
                        format!("scan %{}", id.index()),
                        format!("it runs along `{name}` but another scan along `{f}`"),
                    ))
                }
            }
        }
    }
    found.ok_or_else(|| {
        StreamError::not_streamable("the program", "it has no `ttt` scan, so nothing to stream")
    })
}

/// Whether scan operand `i` has one entry per token (token arguments, `lr`, a per-token
/// `token_eta`).
pub fn is_token_operand(scan: &TttScan, i: usize) -> bool {
    scan.is_sequence_operand(i)
}

/// The sequence axis of scan operand `i` in its own layout: its first unmapped axis.
pub fn token_axis(scan: &TttScan, i: usize) -> Option<usize> {
    scan.axes.get(i)?.per.iter().position(Option::is_none)
}

/// The nodes the outputs depend on.
fn needed_nodes(g: &Graph, outputs: &[OutputSite]) -> BTreeSet<NodeId> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<NodeId> = outputs.iter().map(|o| o.node).collect();
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            stack.extend(g.operands(id));
        }
    }
    seen
}

fn tensor_type(g: &Graph, id: NodeId) -> Result<&TensorType, StreamError> {
    g.tensor_type(id)
        .ok_or_else(|| StreamError::internal(format!("node %{} is not a tensor", id.index())))
}

/// The axis of `shape` that is the sequence dimension, if exactly one is.
fn seq_axis_of(shape: &Shape, seq: &str) -> Result<Option<usize>, String> {
    let axes: Vec<usize> = shape
        .0
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d, Dim::Sym(s) if s == seq))
        .map(|(i, _)| i)
        .collect();
    match axes.as_slice() {
        [] => Ok(None),
        [a] => Ok(Some(*a)),
        _ => Err(format!("shape {shape} has the sequence dimension twice")),
    }
}

/// The class of node `id` from its operands' classes.
fn classify(
    g: &Graph,
    id: NodeId,
    operands: &[NodeId],
    classes: &BTreeMap<NodeId, Class>,
    seq: &str,
) -> Result<Class, StreamError> {
    let node = g.node(id);
    let here = || format!("node %{} ({})", id.index(), node.op.name());
    let fail = |why: String| Err(StreamError::not_streamable(here(), why));
    let class_of = |o: &NodeId| classes.get(o).copied().unwrap_or(Class::Constant);
    let ins: Vec<Class> = operands.iter().map(class_of).collect();
    let any_final = ins.contains(&Class::Final);
    let any_token = ins.iter().any(|c| matches!(c, Class::Token(_)));
    if any_final && any_token {
        return fail("it combines per-token values with a whole-sequence result".into());
    }
    match &node.op {
        Op::Input { .. } => {
            let t = tensor_type(g, id)?;
            return match seq_axis_of(&t.shape, seq) {
                Ok(Some(a)) => Ok(Class::Token(a)),
                Ok(None) => Ok(Class::Constant),
                Err(e) => fail(e),
            };
        }
        Op::Const { .. } => return Ok(Class::Constant),
        Op::Extent { dim } => {
            return match dim {
                Dim::Sym(s) if s == seq => fail(format!(
                    "it reads the sequence length `{seq}`, unknown while streaming"
                )),
                _ => Ok(Class::Constant),
            }
        }
        Op::Iota { len } => {
            return Ok(match len {
                Dim::Sym(s) if s == seq => Class::Token(0),
                _ => Class::Constant,
            })
        }
        Op::Ttt(scan) => {
            for (i, c) in ins.iter().enumerate() {
                let want = if is_token_operand(scan, i) {
                    token_axis(scan, i).map(Class::Token)
                } else {
                    Some(Class::Constant)
                };
                let ok = match (want, c) {
                    (Some(Class::Constant), Class::Constant) => true,
                    (Some(Class::Token(a)), Class::Token(b)) => a == *b,
                    // A token argument that is the same for every token (broadcast).
                    (Some(Class::Token(_)), Class::Constant) => false,
                    _ => false,
                };
                if !ok {
                    return fail(format!(
                        "scan operand #{i} is {c:?} along the sequence, expected {want:?}"
                    ));
                }
            }
            // The tuple itself; its `get`s are classified below.
            return Ok(Class::Final);
        }
        Op::Get { index } => {
            let Some(&src) = operands.first() else {
                return fail("no operand".into());
            };
            if let Op::Ttt(scan) = &g.node(src).op {
                return Ok(if *index == 0 {
                    Class::Token(scan.per.len())
                } else {
                    Class::Final
                });
            }
            return Ok(ins.first().copied().unwrap_or(Class::Constant));
        }
        _ => {}
    }
    if !any_token {
        // Constant or final, with no sequence axis to follow; a final value broadcast along
        // the sequence would be read by tokens before the end.
        let t = tensor_type(g, id)?;
        if any_final && seq_axis_of(&t.shape, seq).ok().flatten().is_some() {
            return fail("it spreads a whole-sequence result over the tokens".into());
        }
        if !any_final {
            // A constant broadcast along the sequence is per token (the same for each).
            if let (Op::Expand { .. }, Ok(Some(a))) = (&node.op, seq_axis_of(&t.shape, seq)) {
                return Ok(Class::Token(a));
            }
        }
        return Ok(if any_final {
            Class::Final
        } else {
            Class::Constant
        });
    }
    let out = tensor_type(g, id)?;
    let rank_out = out.shape.rank();
    let rank = |o: NodeId| tensor_type(g, o).map(|t| t.shape.rank());
    // The operands' sequence axes, aligned to the output's trailing axes (broadcasting).
    let aligned = |k: usize| -> Result<Option<usize>, StreamError> {
        match ins[k] {
            Class::Token(a) => Ok(Some(a + rank_out - rank(operands[k])?.min(rank_out))),
            _ => Ok(None),
        }
    };
    let result = match &node.op {
        Op::Unary { .. } | Op::Expand { .. } => aligned(0)?,
        Op::Binary { fun } => {
            let (a, b) = (aligned(0)?, aligned(1)?);
            match (a, b) {
                (Some(x), Some(y)) if x != y => {
                    return fail(format!(
                        "{} of values with the sequence on different axes",
                        binary_name(*fun)
                    ))
                }
                (x, y) => x.or(y),
            }
        }
        Op::SumTo { shape } => {
            let a = aligned(0)?;
            match a {
                Some(ax) if shape.0.get(ax) != Some(&Dim::sym(seq)) => {
                    return fail("it sums over the sequence".into())
                }
                a => a,
            }
        }
        Op::MatMul => {
            let (ra, rb) = (rank(operands[0])?, rank(operands[1])?);
            let a = match ins[0] {
                Class::Token(x) if x + 1 == ra => {
                    return fail("it contracts over the sequence".into())
                }
                Class::Token(x) if x + 2 == ra => Some(rank_out - 2),
                Class::Token(x) => Some(x + rank_out - ra),
                _ => None,
            };
            let b = match ins[1] {
                Class::Token(x) if x + 2 == rb => {
                    return fail("it contracts over the sequence".into())
                }
                Class::Token(x) if x + 1 == rb => Some(rank_out - 1),
                Class::Token(x) => Some(x + rank_out - rb),
                _ => None,
            };
            match (a, b) {
                (Some(x), Some(y)) if x != y => {
                    return fail("a product of values with the sequence on different axes".into())
                }
                (x, y) => x.or(y),
            }
        }
        Op::Transpose => match ins[0] {
            Class::Token(x) if x + 1 == rank_out => Some(x - 1),
            Class::Token(x) if x + 2 == rank_out => Some(x + 1),
            Class::Token(x) => Some(x),
            _ => None,
        },
        Op::Permute { perm } => match ins[0] {
            Class::Token(x) => perm.iter().position(|&p| p == x),
            _ => None,
        },
        Op::Reduce { axis, .. } => match ins[0] {
            Class::Token(x) if x == *axis => return fail("it reduces over the sequence".into()),
            c => match c {
                Class::Token(x) => Some(x),
                _ => None,
            },
        },
        Op::Slice { axis, .. } => match ins[0] {
            Class::Token(x) if x == *axis => return fail("it slices the sequence".into()),
            Class::Token(x) => Some(x),
            _ => None,
        },
        Op::Shift { axis, .. } => match (ins[0], ins.get(1)) {
            (Class::Token(x), Some(_)) if x == *axis => {
                return fail("a shift along the sequence with an explicit history".into())
            }
            (Class::Token(x), _) => Some(x),
            _ => return fail("a shift of a value with no sequence axis along a token".into()),
        },
        // Rows of a fixed table by per-token ids: the ids' axes lead the result.
        Op::Gather => match (ins[0], ins[1]) {
            (Class::Constant, Class::Token(x)) => Some(x),
            _ => return fail("it gathers from a table that changes along the sequence".into()),
        },
        Op::Reshape { shape } => {
            let Class::Token(x) = ins[0] else {
                return Ok(Class::Constant);
            };
            let src = &tensor_type(g, operands[0])?.shape;
            let Ok(Some(y)) = seq_axis_of(shape, seq) else {
                return fail("it reshapes the sequence axis away".into());
            };
            if src.0[..x] != shape.0[..y] {
                return fail("it reshapes across the sequence axis".into());
            }
            Some(y)
        }
        _ => return fail("this op cannot run on a chunk of the sequence".into()),
    };
    match result {
        Some(a) if out.shape.0.get(a) == Some(&Dim::sym(seq)) => Ok(Class::Token(a)),
        Some(_) => fail("the sequence axis does not survive it".into()),
        None => Ok(Class::Constant),
    }
}

fn binary_name(fun: BinaryOp) -> &'static str {
    fun.name()
}

/// Builds the stage program computing `members` (in topological order); `copies` are members
/// computed in other stages too (leaves), never exported from this one.
fn build_stage(
    program: &Program,
    members: &[NodeId],
    copies: &BTreeSet<NodeId>,
    outputs: &[OutputSite],
    classes: &BTreeMap<NodeId, Class>,
    seq: &str,
) -> Result<Stage, StreamError> {
    let mut shifts = Vec::new();
    let g = &program.graph;
    let in_stage: BTreeSet<NodeId> = members.iter().copied().collect();
    let mut sg = Graph::new();
    let mut map: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    let mut imports = Vec::new();
    let mut position: Option<NodeId> = None;
    let ir = |e: tttc_ir::GraphError| StreamError::internal(format!("building a stage: {e}"));
    for &id in members {
        let node = g.node(id);
        let mut args = Vec::new();
        for o in g.operands(id) {
            if let Some(&m) = map.get(&o) {
                args.push(m);
                continue;
            }
            let name = import_name(imports.len());
            let ty = tensor_type(g, o)?.clone();
            let input = sg.add_input(&name, ty).map_err(ir)?;
            imports.push((name, o));
            map.insert(o, input);
            args.push(input);
        }
        let dtype = match &node.ty {
            tttc_ir::NodeType::Tensor(t) => t.dtype,
            tttc_ir::NodeType::Tuple(_) => DType::F64,
        };
        let new = match &node.op {
            Op::Iota { len: Dim::Sym(s) } if s == seq => {
                let iota = sg.add_leaf(node.op.clone(), dtype).map_err(ir)?;
                let pos = match position {
                    Some(p) => p,
                    None => {
                        let p = sg
                            .add_input(
                                POSITION_INPUT,
                                TensorType::new(dtype, Shape(vec![Dim::Known(1)])),
                            )
                            .map_err(ir)?;
                        position = Some(p);
                        p
                    }
                };
                sg.add(Op::Binary { fun: BinaryOp::Add }, &[iota, pos])
                    .map_err(ir)?
            }
            Op::Shift { axis, by } if args.len() == 1 && is_seq_shift(g, id, *axis, classes) => {
                let source = g.operands(id)[0];
                let mut shape = tensor_type(g, source)?.shape.clone();
                shape.0[*axis] = Dim::Known(*by);
                let name = format!("$history{}", shifts.len());
                let fill = sg
                    .add_input(&name, TensorType::new(dtype, shape.clone()))
                    .map_err(ir)?;
                shifts.push(ShiftSite {
                    node: id,
                    source,
                    axis: *axis,
                    by: *by,
                    input: name,
                    shape,
                });
                sg.add(node.op.clone(), &[args[0], fill]).map_err(ir)?
            }
            op if op.leaf_shape().is_some() => sg.add_leaf(op.clone(), dtype).map_err(ir)?,
            op => sg.add(op.clone(), &args).map_err(ir)?,
        };
        map.insert(id, new);
    }
    // Exports: members used outside the stage or as program outputs.
    let mut exports = Vec::new();
    for &id in members.iter().filter(|id| !copies.contains(id)) {
        let used_outside = g.users(id).iter().any(|u| !in_stage.contains(u))
            || outputs.iter().any(|o| o.node == id)
            || shifts.iter().any(|s| s.source == id);
        if used_outside {
            let name = format!("$out{}", exports.len());
            sg.add_output(&name, map[&id]);
            exports.push((name, id));
        }
    }
    Ok(Stage {
        program: Program {
            name: program.name.clone(),
            configs: program.configs.clone(),
            derived_dims: program.derived_dims.clone(),
            intermediates: Vec::new(),
            integer_inputs: Vec::new(),
            graph: sg,
        },
        imports,
        exports,
        uses_position: position.is_some(),
        shifts,
    })
}

/// Whether node `id`, a one-operand shift along `axis`, shifts along the sequence.
fn is_seq_shift(g: &Graph, id: NodeId, axis: usize, classes: &BTreeMap<NodeId, Class>) -> bool {
    g.operands(id)
        .first()
        .and_then(|o| classes.get(o))
        .is_some_and(|c| *c == Class::Token(axis))
}
