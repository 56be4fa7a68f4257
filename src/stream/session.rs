//! The streaming session: chunks in, the same outputs as one pass over the whole sequence out.

use super::layout::{concat_axis, slice_axis};
use super::pieces::Pieces;
use super::plan::{plan, Class, StreamPlan, POSITION_INPUT};
use super::scan::ScanRuntime;
use super::{state_file, StreamError};
use crate::driver::{Precision, Settings};
use crate::execute::{Backend, Prepared};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tttc_ir::{NodeId, Op, Program};
use tttc_passes::token_step::{DecodeState, StateForm};
use tttc_runtime::{ElemType, Tensor};

/// A compiled stage, by chunk length.
#[derive(Default)]
struct StageRuntime {
    compiled: HashMap<usize, Prepared>,
}

/// A program fed in chunks (see the [module doc](super)).
pub struct Session {
    /// The backend and every compiled piece (stages, scan steps), shared between equal ones.
    pieces: Pieces,
    program: Program,
    plan: StreamPlan,
    settings: Settings,
    elem: ElemType,
    /// The inputs that do not run along the sequence (converted once the first chunk binds).
    weights: BTreeMap<String, Tensor>,
    /// The values of [`StreamPlan::constants`]' exports, computed by the first chunk.
    constants: Option<BTreeMap<NodeId, Tensor>>,
    /// Every dimension but the sequence's, once the first chunk is bound.
    dims: Option<BTreeMap<String, usize>>,
    /// Tokens fed so far.
    position: usize,
    stages: Vec<StageRuntime>,
    scans: Vec<ScanRuntime>,
    /// A loaded state waiting for the first chunk to fix the shapes.
    pending: Option<(String, BTreeMap<String, Tensor>)>,
    /// Whether [`Session::feed`] returns whole-sequence outputs too.
    final_outputs: bool,
    /// Per scan: whether a stage reads its states (then they are computed for every chunk).
    states_feed_stages: Vec<bool>,
    /// Per shift along the sequence: the last rows of its input so far.
    histories: BTreeMap<NodeId, Tensor>,
    warnings: Vec<String>,
}

impl Session {
    /// A session for `program` (after the pipeline) on `backend`, with `weights`: every input
    /// that does not run along the sequence. `settings` are the `--set`/`--config` values the
    /// program was compiled with (they fix dimensions).
    pub fn new(
        backend: Backend,
        program: Program,
        weights: BTreeMap<String, Tensor>,
        settings: Settings,
        precision: Precision,
    ) -> Result<Session, StreamError> {
        if !backend.is_built() {
            return Err(crate::ExecError::NotBuilt(backend.name()).into());
        }
        let plan = plan(&program)?;
        if let Some(name) = weights.keys().find(|n| plan.token_inputs.contains_key(*n)) {
            return Err(StreamError::Input(format!(
                "`{name}` runs along the sequence; give it to feed(), not as a weight"
            )));
        }
        let stages = plan
            .stages
            .iter()
            .map(|_| StageRuntime::default())
            .collect();
        let scans = plan.scans.iter().cloned().map(ScanRuntime::new).collect();
        let states_feed_stages = plan
            .scans
            .iter()
            .map(|scan| {
                plan.stages.iter().flatten().any(|stage| {
                    stage
                        .imports
                        .iter()
                        .any(|(_, id)| scan.gets.iter().any(|&(g, i)| g == *id && i > 0))
                })
            })
            .collect();
        Ok(Session {
            pieces: Pieces::new(backend),
            program,
            plan,
            settings,
            elem: precision.elem(),
            weights,
            constants: None,
            dims: None,
            position: 0,
            stages,
            scans,
            pending: None,
            final_outputs: true,
            states_feed_stages,
            histories: BTreeMap::new(),
            warnings: Vec::new(),
        })
    }

    /// Whether [`Session::feed`] also returns the whole-sequence outputs (such as a scan's
    /// final state; on by default). Turning them off saves computing them for every chunk
    /// when only the per-token outputs are read, as in decoding.
    pub fn set_final_outputs(&mut self, on: bool) {
        self.final_outputs = on;
    }

    /// The form in which each scan carries an unfinished mini-batch between tokens
    /// ([`DecodeState::Auto`] by default: per state, the form that touches fewer bytes). A
    /// change takes effect at the next mini-batch boundary.
    pub fn set_decode_state(&mut self, ask: DecodeState) {
        for scan in &mut self.scans {
            scan.set_decode_state(ask);
        }
    }

    /// The form each scan's model states are carried in now (empty for a scan before the
    /// first chunk).
    pub fn state_forms(&self) -> Vec<Vec<StateForm>> {
        self.scans.iter().map(|s| s.forms().to_vec()).collect()
    }

    /// How the program streams.
    pub fn plan(&self) -> &StreamPlan {
        &self.plan
    }

    /// The per-token inputs (name and sequence axis): what [`Session::feed`] takes.
    pub fn token_inputs(&self) -> &BTreeMap<String, usize> {
        &self.plan.token_inputs
    }

    /// The sequence axis of output `name` when it has one entry per token; `None` for outputs
    /// that hold a whole-sequence value (read after the last chunk).
    pub fn output_axis(&self, name: &str) -> Option<usize> {
        self.plan
            .outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| match o.class {
                Class::Token(a) => Some(a),
                _ => None,
            })
    }

    /// How many distinct programs the session has compiled so far (stages, scan steps, the
    /// constants): pieces that are the same program — a model's layers — are compiled once.
    pub fn compiled_programs(&self) -> usize {
        self.pieces.len()
    }

    /// Records every distinct program the session compiles from now on (stages, scan steps,
    /// the constants), for [`Session::recorded_programs`]: an ahead-of-time library feeds a
    /// session the chunks it will be fed (one mini-batch, one token) to learn the pieces to
    /// compile.
    pub fn record_programs(&mut self) {
        self.pieces.record();
    }

    /// The distinct programs compiled since [`Session::record_programs`], in order.
    pub fn recorded_programs(&self) -> &[Program] {
        self.pieces.recorded()
    }

    /// The mini-batch size shared by every scan (after the first chunk fixed the dimensions),
    /// or `None` when the scans differ or there is none.
    pub fn mini_batch(&self) -> Option<usize> {
        let mut k = None;
        for scan in &self.scans {
            let m = scan.mini_batch()?;
            if k.is_some_and(|k| k != m) {
                return None;
            }
            k = Some(m);
        }
        k
    }

    /// Tokens fed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Things the user should know (lossy input conversions), drained.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Feeds the next `C >= 1` tokens: every per-token input with `C` entries along its
    /// sequence axis. Returns every program output for these tokens (per-token outputs with
    /// `C` entries; whole-sequence outputs as they stand after them).
    pub fn feed(
        &mut self,
        chunk: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, StreamError> {
        let len = self.chunk_len(chunk)?;
        let chunk = self.bind_chunk(chunk, len)?;
        let dims = self
            .dims
            .clone()
            .ok_or_else(|| StreamError::internal("unbound session"))?;
        if self.constants.is_none() {
            self.constants = Some(self.compute_constants(&dims)?);
        }
        let mut values: BTreeMap<NodeId, Tensor> = BTreeMap::new();
        let levels = self.plan.stages.len();
        for level in 0..levels {
            self.run_stage(level, &dims, len, &chunk, &mut values)?;
            for i in 0..self.scans.len() {
                if self.scans[i].site.level != level {
                    continue;
                }
                self.run_scan(i, len, &chunk, &mut values)?;
            }
        }
        let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
        for o in &self.plan.outputs {
            if o.class == Class::Final && !self.final_outputs {
                continue;
            }
            // Computed values move into the result; one read twice, or an input, is copied.
            let v = match values.remove(&o.node) {
                Some(v) => v,
                None => match self
                    .plan
                    .outputs
                    .iter()
                    .find(|p| p.node == o.node && out.contains_key(&p.name))
                {
                    Some(p) => out[&p.name].clone(),
                    None => self.value(o.node, &chunk, &values)?.clone(),
                },
            };
            out.insert(o.name.clone(), v);
        }
        self.position += len;
        Ok(out)
    }

    /// The number of tokens in `chunk`, checking that it holds exactly the per-token inputs.
    fn chunk_len(&self, chunk: &BTreeMap<String, Tensor>) -> Result<usize, StreamError> {
        for name in chunk.keys() {
            if !self.plan.token_inputs.contains_key(name) {
                let known: Vec<&str> = self.plan.token_inputs.keys().map(String::as_str).collect();
                return Err(StreamError::Input(format!(
                    "`{name}` is not a per-token input of this program (those are: {})",
                    known.join(", ")
                )));
            }
        }
        let mut len: Option<(usize, &str)> = None;
        for (name, &axis) in &self.plan.token_inputs {
            let t = chunk
                .get(name)
                .ok_or_else(|| StreamError::Input(format!("`{name}`: missing from the chunk")))?;
            let n = t.shape().get(axis).copied().ok_or_else(|| {
                StreamError::Input(format!(
                    "`{name}`: shape {:?} has no sequence axis {axis}",
                    t.shape()
                ))
            })?;
            match len {
                None => len = Some((n, name)),
                Some((m, other)) if m != n => {
                    return Err(StreamError::Input(format!(
                        "`{name}` holds {n} token(s) but `{other}` holds {m}"
                    )))
                }
                _ => {}
            }
        }
        match len {
            Some((0, _)) => Err(StreamError::Input(
                "a chunk needs at least one token".into(),
            )),
            Some((n, _)) => Ok(n),
            None => Err(StreamError::internal("the program has no per-token input")),
        }
    }

    /// Checks the chunk against the program (binding the whole program on the first chunk)
    /// and converts it to the session's element type.
    fn bind_chunk(
        &mut self,
        chunk: &BTreeMap<String, Tensor>,
        len: usize,
    ) -> Result<BTreeMap<String, Tensor>, StreamError> {
        if self.dims.is_none() {
            // The weights move through the binding, never copied (a model's are hundreds of
            // megabytes); a chunk that does not fit leaves the session as it was.
            let mut all = std::mem::take(&mut self.weights);
            all.extend(chunk.iter().map(|(k, v)| (k.clone(), v.clone())));
            let mut dims = match crate::bind::check(&self.program, &all, &self.settings) {
                Ok((_, dims)) => dims,
                Err(e) => {
                    all.retain(|name, _| !chunk.contains_key(name));
                    self.weights = all;
                    return Err(e.into());
                }
            };
            let (mut inputs, warnings) = crate::bind::take_inputs(&self.program, all, self.elem);
            self.warnings.extend(warnings);
            dims.remove(&self.plan.seq_dim);
            let chunk: BTreeMap<String, Tensor> = self
                .plan
                .token_inputs
                .keys()
                .filter_map(|n| inputs.remove(n).map(|t| (n.clone(), t)))
                .collect();
            self.weights = inputs;
            for scan in &mut self.scans {
                scan.size(&dims)?;
            }
            self.dims = Some(dims);
            if let Some((path, tensors)) = self.pending.take() {
                self.apply_state(&path, tensors)?;
            }
            return Ok(chunk);
        }
        let mut dims = self.dims.clone().unwrap_or_default();
        dims.insert(self.plan.seq_dim.clone(), len);
        let mut out = BTreeMap::new();
        for (name, t) in chunk {
            let id = self
                .program
                .graph
                .input_by_name(name)
                .ok_or_else(|| StreamError::internal(format!("no input `{name}`")))?;
            let want = self
                .program
                .graph
                .tensor_type(id)
                .and_then(|ty| ty.shape.substitute(&dims).to_known())
                .ok_or_else(|| StreamError::internal(format!("`{name}` has an unknown shape")))?;
            if t.shape() != want.as_slice() {
                return Err(StreamError::Input(format!(
                    "`{name}`: expected shape {want:?} (as in the first chunk), got {:?}",
                    t.shape()
                )));
            }
            if t.elem_type() == ElemType::F64 && self.elem == ElemType::F32 {
                self.warnings.push(format!(
                    "`{name}` is f64 and is rounded to f32 for this f32 run"
                ));
            }
            let t = if t.elem_type() == self.elem {
                t.clone()
            } else {
                t.cast(self.elem)
            };
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    /// The value of main-graph node `id` in this chunk.
    fn value<'a>(
        &'a self,
        id: NodeId,
        chunk: &'a BTreeMap<String, Tensor>,
        values: &'a BTreeMap<NodeId, Tensor>,
    ) -> Result<&'a Tensor, StreamError> {
        lookup(
            &self.program,
            &self.weights,
            self.constants.as_ref(),
            id,
            chunk,
            values,
        )
    }

    /// Runs [`StreamPlan::constants`] once: the values computed from the weights alone.
    fn compute_constants(
        &mut self,
        dims: &BTreeMap<String, usize>,
    ) -> Result<BTreeMap<NodeId, Tensor>, StreamError> {
        let Some(stage) = &self.plan.constants else {
            return Ok(BTreeMap::new());
        };
        let program = stage.program.specialize(dims);
        tttc_ir::verify::verify_program(&program)
            .map_err(|e| StreamError::internal(format!("constants: {e}")))?;
        let prepared = self.pieces.prepare(&program)?;
        let mut constants = BTreeMap::new();
        let mut out = run_lending(
            &prepared,
            &stage.imports,
            &self.program,
            &mut self.weights,
            &mut constants,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &mut BTreeMap::new(),
        )?;
        for (name, id) in &stage.exports {
            let v = out.remove(name).ok_or_else(|| {
                StreamError::internal(format!("constant output `{name}` missing"))
            })?;
            constants.insert(*id, v);
        }
        Ok(constants)
    }

    fn run_stage(
        &mut self,
        level: usize,
        dims: &BTreeMap<String, usize>,
        len: usize,
        chunk: &BTreeMap<String, Tensor>,
        values: &mut BTreeMap<NodeId, Tensor>,
    ) -> Result<(), StreamError> {
        let Some(stage) = &self.plan.stages[level] else {
            return Ok(());
        };
        let mut inputs = BTreeMap::new();
        for shift in &stage.shifts {
            let history = match self.histories.get(&shift.node) {
                Some(h) => h.clone(),
                None => {
                    let shape = shift.shape.substitute(dims).to_known().ok_or_else(|| {
                        StreamError::internal("a shift history's shape is unbound")
                    })?;
                    Tensor::zeros(shape, self.elem)
                }
            };
            inputs.insert(shift.input.clone(), history);
        }
        if stage.uses_position {
            let p = self.position as f64;
            let t = match self.elem {
                ElemType::F32 => Tensor::from_f32(vec![1], vec![p as f32]),
                ElemType::F64 => Tensor::from_f64(vec![1], vec![p]),
            }
            .map_err(|e| StreamError::internal(e.to_string()))?;
            inputs.insert(POSITION_INPUT.into(), t);
        }
        if !self.stages[level].compiled.contains_key(&len) {
            let mut bindings = dims.clone();
            bindings.insert(self.plan.seq_dim.clone(), len);
            let program = stage.program.specialize(&bindings);
            tttc_ir::verify::verify_program(&program)
                .map_err(|e| StreamError::internal(format!("stage {level}: {e}")))?;
            let prepared = self.pieces.prepare(&program)?;
            self.stages[level].compiled.insert(len, prepared);
        }
        let prepared = self.stages[level]
            .compiled
            .get(&len)
            .ok_or_else(|| StreamError::internal("stage not compiled"))?;
        let mut constants = self.constants.take().unwrap_or_default();
        let out = run_lending(
            prepared,
            &stage.imports,
            &self.program,
            &mut self.weights,
            &mut constants,
            chunk,
            values,
            &mut inputs,
        );
        self.constants = Some(constants);
        let mut out = out?;
        for (name, id) in &stage.exports {
            let v = out
                .remove(name)
                .ok_or_else(|| StreamError::internal(format!("stage output `{name}` missing")))?;
            values.insert(*id, v);
        }
        // Each shift's history moves on: the last `by` rows of history and chunk together.
        for shift in &stage.shifts {
            let old = inputs
                .remove(&shift.input)
                .ok_or_else(|| StreamError::internal("shift history"))?;
            let source = lookup(
                &self.program,
                &self.weights,
                self.constants.as_ref(),
                shift.source,
                chunk,
                values,
            )?;
            let joined = concat_axis(vec![old, source.clone()], shift.axis)?;
            let total = joined.shape()[shift.axis];
            let next = slice_axis(&joined, shift.axis, total - shift.by, shift.by)?;
            self.histories.insert(shift.node, next);
        }
        Ok(())
    }

    fn run_scan(
        &mut self,
        i: usize,
        len: usize,
        chunk: &BTreeMap<String, Tensor>,
        values: &mut BTreeMap<NodeId, Tensor>,
    ) -> Result<(), StreamError> {
        let want_states = self.final_outputs || self.states_feed_stages[i];
        let (z, states) = {
            let Session {
                program,
                weights,
                constants,
                scans,
                pieces,
                position,
                ..
            } = self;
            let scan = &mut scans[i];
            let refs = scan
                .site
                .operands
                .iter()
                .map(|&o| lookup(program, weights, constants.as_ref(), o, chunk, values))
                .collect::<Result<Vec<&Tensor>, _>>()?;
            scan.run(pieces, &refs, *position, len, want_states)?
        };
        let mut states = states.into_iter().map(Some).collect::<Vec<_>>();
        for &(get, index) in &self.scans[i].site.gets {
            if index > 0 && !want_states {
                continue;
            }
            let v = if index == 0 {
                z.clone()
            } else {
                states
                    .get_mut(index - 1)
                    .and_then(Option::take)
                    .ok_or_else(|| StreamError::internal("scan result index"))?
            };
            values.insert(get, v);
        }
        Ok(())
    }

    /// Writes the session's state (position and every scan's carried state) to `path`.
    pub fn save(&self, path: &Path) -> Result<(), StreamError> {
        let mut tensors = BTreeMap::new();
        for (i, scan) in self.scans.iter().enumerate() {
            if !scan.started {
                continue;
            }
            for (s, name) in scan.state_names().iter().enumerate() {
                for (part, t) in scan.carried_parts(s)? {
                    tensors.insert(state_file::part_name(i, name, part), t);
                }
            }
        }
        for (node, history) in &self.histories {
            tensors.insert(state_file::history_name(node.index()), history.clone());
        }
        state_file::write(path, &self.program.name, self.position, tensors)
    }

    /// Continues from a state written by [`Session::save`] for the same program and weights.
    pub fn load(&mut self, path: &Path) -> Result<(), StreamError> {
        let (position, tensors) = state_file::read(path, &self.program.name)?;
        self.position = position;
        let path = path.display().to_string();
        if self.dims.is_some() {
            self.apply_state(&path, tensors)
        } else {
            for scan in &mut self.scans {
                scan.started = false;
            }
            self.pending = Some((path, tensors));
            Ok(())
        }
    }

    fn apply_state(
        &mut self,
        path: &str,
        mut tensors: BTreeMap<String, Tensor>,
    ) -> Result<(), StreamError> {
        let bad = |message: String| StreamError::State {
            path: path.to_string(),
            message,
        };
        for (i, scan) in self.scans.iter_mut().enumerate() {
            if self.position == 0 {
                continue;
            }
            let names: Vec<String> = scan.state_names().to_vec();
            for (s, name) in names.iter().enumerate() {
                // The parts in the file say the form it was saved in.
                let factored = [state_file::FACTOR_U, state_file::FACTOR_D]
                    .iter()
                    .any(|p| tensors.contains_key(&state_file::part_name(i, name, p)));
                let form = if factored {
                    StateForm::Factored
                } else {
                    StateForm::Dense
                };
                if !scan.can_carry(s, form)? {
                    return Err(bad(format!(
                        "state `{name}` of scan {i} was saved in factored form, which this \
                         program's gradient of it does not have"
                    )));
                }
                let mut parts = Vec::new();
                for (part, want) in scan.part_shapes(s, form)? {
                    let key = state_file::part_name(i, name, part);
                    let t = tensors
                        .remove(&key)
                        .ok_or_else(|| bad(format!("`{key}` is missing")))?;
                    if t.shape() != want.as_slice() {
                        return Err(bad(format!(
                            "`{key}` has shape {:?}, this session needs {want:?}",
                            t.shape()
                        )));
                    }
                    if t.elem_type() != self.elem {
                        return Err(bad(format!(
                            "`{key}` is {}, this session computes in {}",
                            t.elem_type(),
                            self.elem
                        )));
                    }
                    parts.push(t);
                }
                scan.set_carried(s, form, parts)?;
            }
            scan.started = true;
        }
        self.histories.clear();
        for stage in self.plan.stages.iter().flatten() {
            for shift in &stage.shifts {
                let key = state_file::history_name(shift.node.index());
                let Some(t) = tensors.remove(&key) else {
                    if self.position == 0 {
                        continue;
                    }
                    return Err(bad(format!("`{key}` is missing")));
                };
                let dims = self.dims.clone().unwrap_or_default();
                let want = shift.shape.substitute(&dims).to_known();
                if want.as_deref() != Some(t.shape()) || t.elem_type() != self.elem {
                    return Err(bad(format!(
                        "`{key}` is {} {:?}, this session needs {} {:?}",
                        t.elem_type(),
                        t.shape(),
                        self.elem,
                        want.unwrap_or_default()
                    )));
                }
                self.histories.insert(shift.node, t);
            }
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(bad(format!("`{extra}` belongs to no scan of this program")));
        }
        Ok(())
    }
}

/// Runs a stage on `inputs` plus its imports: weights and constants are lent (moved into the
/// input map for the run and back after it, so that nothing large is copied), every other
/// import is copied from this chunk's values.
#[allow(clippy::too_many_arguments)]
fn run_lending(
    prepared: &Prepared,
    imports: &[(String, NodeId)],
    program: &Program,
    weights: &mut BTreeMap<String, Tensor>,
    constants: &mut BTreeMap<NodeId, Tensor>,
    chunk: &BTreeMap<String, Tensor>,
    values: &BTreeMap<NodeId, Tensor>,
    inputs: &mut BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, StreamError> {
    let mut lent_weights = Vec::new();
    let mut lent_constants = Vec::new();
    let mut copied = Ok(());
    for (name, id) in imports {
        // A weight is the main graph's input of that name (the stage's input is named by its
        // position, so that the stages of different layers are the same program).
        let weight = match &program.graph.node(*id).op {
            Op::Input { name } => Some(name),
            _ => None,
        };
        if let Some(t) = constants.remove(id) {
            inputs.insert(name.clone(), t);
            lent_constants.push((name, *id));
        } else if let Some((w, t)) = weight.and_then(|w| weights.remove(w).map(|t| (w, t))) {
            inputs.insert(name.clone(), t);
            lent_weights.push((name, w));
        } else {
            match lookup(program, weights, Some(constants), *id, chunk, values) {
                Ok(t) => {
                    inputs.insert(name.clone(), t.clone());
                }
                Err(e) => {
                    copied = Err(e);
                    break;
                }
            }
        }
    }
    let out = copied.and_then(|()| prepared.run(inputs).map_err(StreamError::from));
    for (name, weight) in lent_weights {
        if let Some(t) = inputs.remove(name) {
            weights.insert(weight.clone(), t);
        }
    }
    for (name, id) in lent_constants {
        if let Some(t) = inputs.remove(name) {
            constants.insert(id, t);
        }
    }
    out
}

/// The value of main-graph node `id` in this chunk: computed, a constant, or an input.
fn lookup<'a>(
    program: &'a Program,
    weights: &'a BTreeMap<String, Tensor>,
    constants: Option<&'a BTreeMap<NodeId, Tensor>>,
    id: NodeId,
    chunk: &'a BTreeMap<String, Tensor>,
    values: &'a BTreeMap<NodeId, Tensor>,
) -> Result<&'a Tensor, StreamError> {
    if let Some(v) = values
        .get(&id)
        .or_else(|| constants.and_then(|c| c.get(&id)))
    {
        return Ok(v);
    }
    if let Op::Input { name } = &program.graph.node(id).op {
        if let Some(t) = chunk.get(name).or_else(|| weights.get(name)) {
            return Ok(t);
        }
    }
    Err(StreamError::internal(format!(
        "value %{} is not computed",
        id.index()
    )))
}
