//! One scan of a streaming session: its carried state and the two ways a chunk's tokens go
//! through it (whole mini-batches by the scan's step, the rest token by token).

use super::layout::{
    column, concat_axis, minus_scaled, per_slice_combination, reshape, set_row, slice_axis,
    to_slices, zeroed,
};
use super::pieces::Pieces;
use super::plan::{token_axis, ScanSite};
use super::{state_file, StreamError};
use crate::execute::{Backend, Prepared};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use tttc_ir::program::specialize_scan;
use tttc_ir::{Graph, Op, OperandAxes, OperandKind, Program, Shape, TensorType, TttScan};
use tttc_passes::token_step::{
    choose_forms, factor_sum_graph, hoist_invariants, names, token_step_graph_with, DecodeState,
    StateForm,
};
use tttc_runtime::{ElemType, Tensor};

/// A scan specialized to the session's dimensions.
struct Sized {
    scan: TttScan,
    /// Extent of every mapped dim.
    per_sizes: Vec<usize>,
    /// Number of slices (product of `per_sizes`).
    n: usize,
    /// Mini-batch size.
    k: usize,
    /// Shape of every state of one slice.
    state_shapes: Vec<Vec<usize>>,
    /// The form each model state's unfinished mini-batch is carried in by choice
    /// ([`choose_forms`]); a loaded state keeps the form it was saved in until its mini-batch
    /// ends.
    preferred: Vec<StateForm>,
}

/// The carried state (elements, all slices) from which the token step is split over threads
/// (below it, waking the threads costs more than they save); `TTTC_DECODE_SPLIT_MIN`
/// overrides it.
const GROUPED_MIN_STATE: usize = 1 << 18;

/// A token step's program and the program of what it reads from the mini-batch's starting
/// states alone ([`ScanRuntime::step_programs`]).
type StepPrograms = (Program, Option<Program>);

/// At most this many derived token steps are remembered in a process (then it starts over).
const REMEMBERED_STEPS: usize = 64;

/// Input names of the token step's token arguments, made once.
#[derive(Default)]
struct ArgNames {
    loss_args: Vec<String>,
    out_args: Vec<String>,
}

/// The carried state and compiled pieces of one scan.
pub(super) struct ScanRuntime {
    pub(super) site: ScanSite,
    sized: Option<Sized>,
    /// Whether the carried state holds values (set by the first chunk or a loaded state).
    pub(super) started: bool,
    /// The token step's inputs, kept between tokens: `theta.<s>` (the states at the start of
    /// the unfinished mini-batch) and `partial.<s>` (its partial gradient sums) are the carried
    /// state, `[n, state...]`; params and `eta` rows are filled once.
    inputs: BTreeMap<String, Tensor>,
    /// Whether the first chunk has set the params (and `token_eta`).
    initialized: bool,
    /// A per-position `token_eta`, per slice, `[n, K]` (`None` when it is per token: then it
    /// comes with every chunk like `lr`).
    token_eta: Option<Tensor>,
    /// The token step's token-argument input names.
    names: ArgNames,
    token_step: Option<Prepared>,
    /// The token step split over parallel groups of slices, when that pays.
    grouped: Option<super::grouped::GroupedStep>,
    /// Output storage for the next token step (the previous step's inputs it replaced).
    spare: BTreeMap<String, Tensor>,
    /// The whole-mini-batch program, by number of mini-batches.
    blocks: HashMap<usize, Prepared>,
    /// The form the session asks for.
    ask: DecodeState,
    /// The form each model state's unfinished mini-batch is carried in now.
    forms: Vec<StateForm>,
    /// `Uᵀ D` of the factored states ([`factor_sum_graph`]), compiled with the token step.
    factor_sum: Option<Prepared>,
    /// What the token step reads from the mini-batch's starting states alone
    /// ([`hoist_invariants`]), compiled with it, run once per mini-batch.
    invariants: Option<Runner>,
    /// Whether the inputs hold the invariants of the current starting states.
    invariants_fresh: bool,
}

/// A program run on all slices at once, or split over groups of them on parallel threads, and
/// its input names.
struct Runner {
    run: RunOn,
    inputs: Vec<String>,
}

enum RunOn {
    Whole(Prepared),
    Grouped(super::grouped::GroupedStep),
}

impl Runner {
    fn new(run: RunOn, program: &Program) -> Runner {
        let g = &program.graph;
        let inputs = g
            .inputs()
            .iter()
            .filter_map(|&id| g.input_name(id).map(str::to_string))
            .collect();
        Runner { run, inputs }
    }

    /// Runs on its inputs among `all` (lent for the run and put back).
    fn run(
        &self,
        all: &mut BTreeMap<String, Tensor>,
        elem: ElemType,
    ) -> Result<BTreeMap<String, Tensor>, StreamError> {
        let mut lent = BTreeMap::new();
        for name in &self.inputs {
            if let Some(t) = all.remove(name) {
                lent.insert(name.clone(), t);
            }
        }
        let result = match &self.run {
            RunOn::Whole(p) => p.run(&lent).map_err(StreamError::from),
            RunOn::Grouped(g) => g.run(&lent, &mut BTreeMap::new(), elem),
        };
        all.append(&mut lent);
        result
    }
}

impl ScanRuntime {
    pub(super) fn new(site: ScanSite) -> Self {
        ScanRuntime {
            site,
            sized: None,
            started: false,
            inputs: BTreeMap::new(),
            initialized: false,
            token_eta: None,
            names: ArgNames::default(),
            token_step: None,
            grouped: None,
            spare: BTreeMap::new(),
            blocks: HashMap::new(),
            ask: DecodeState::Auto,
            forms: Vec::new(),
            factor_sum: None,
            invariants: None,
            invariants_fresh: false,
        }
    }

    /// Sets the form the session asks for (taken at the next mini-batch boundary).
    pub(super) fn set_decode_state(&mut self, ask: DecodeState) {
        self.ask = ask;
        if let Some(z) = &mut self.sized {
            z.preferred = choose_forms(&z.scan, ask);
        }
    }

    /// The form each model state's unfinished mini-batch is carried in now (empty before the
    /// first chunk fixes the sizes).
    pub(super) fn forms(&self) -> &[StateForm] {
        &self.forms
    }

    /// The scan's state names.
    pub(super) fn state_names(&self) -> &[String] {
        &self.site.scan.states
    }

    /// Fixes the dimensions (once the first chunk is bound).
    pub(super) fn size(&mut self, dims: &BTreeMap<String, usize>) -> Result<(), StreamError> {
        let scan = specialize_scan(&self.site.scan, dims);
        let per_sizes = scan
            .per
            .iter()
            .map(|p| {
                dims.get(p)
                    .copied()
                    .ok_or_else(|| StreamError::internal(format!("scan dim `{p}` is unbound")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let k = scan
            .mini_batch
            .known()
            .ok_or_else(|| StreamError::internal("the mini-batch size is unbound"))?;
        if k == 0 {
            return Err(StreamError::Input("the mini-batch size is 0".into()));
        }
        let grad = scan
            .grad
            .as_ref()
            .ok_or_else(|| StreamError::internal("the scan has no gradient graph"))?;
        let mut state_shapes = Vec::new();
        // A carry of `momentum_gd` has the shape of its state.
        let nm = scan.model_state_count().max(1);
        for i in 0..scan.states.len() {
            let shape = grad
                .inputs()
                .get(i % nm)
                .and_then(|&id| grad.tensor_type(id))
                .and_then(|t| t.shape.to_known())
                .ok_or_else(|| StreamError::internal("a state's shape is unknown"))?;
            state_shapes.push(shape);
        }
        self.names = ArgNames {
            loss_args: (0..scan.loss_args.len()).map(names::loss_arg).collect(),
            out_args: (0..scan.out_args.len()).map(names::out_arg).collect(),
        };
        let preferred = choose_forms(&scan, self.ask);
        self.forms = preferred.clone();
        self.sized = Some(Sized {
            n: per_sizes.iter().product(),
            scan,
            per_sizes,
            k,
            state_shapes,
            preferred,
        });
        Ok(())
    }

    /// The mini-batch size, once the sizes are known.
    pub(super) fn mini_batch(&self) -> Option<usize> {
        self.sized.as_ref().map(|z| z.k)
    }

    fn sized(&self) -> Result<&Sized, StreamError> {
        self.sized
            .as_ref()
            .ok_or_else(|| StreamError::internal("the scan is used before its sizes are known"))
    }

    /// The carried state of a densely carried state `s` as `[n, state...]`: (start of the
    /// mini-batch, partial sum); `None` when unset or factored.
    pub(super) fn carried(&self, s: &str) -> Option<(&Tensor, &Tensor)> {
        Some((
            self.inputs.get(&names::theta(s))?,
            self.inputs.get(&names::partial(s))?,
        ))
    }

    /// The parts state `i` (of [`TttScan::states`]) is saved in when carried in `form`, with
    /// their shapes `[per..., ...]`: the start of the mini-batch (`[per..., state...]`), then the
    /// partial sum (dense) or the factors `Uᵀ` `[per..., m, K]` and `D` `[per..., K, n]`
    /// (factored).
    pub(super) fn part_shapes(
        &self,
        i: usize,
        form: StateForm,
    ) -> Result<Vec<(&'static str, Vec<usize>)>, StreamError> {
        let z = self.sized()?;
        let with_per = |rest: &[usize]| {
            let mut shape = z.per_sizes.clone();
            shape.extend(rest);
            shape
        };
        let state = &z.state_shapes[i];
        let start = (state_file::START, with_per(state));
        Ok(match (form, state.as_slice()) {
            (StateForm::Dense, _) => vec![start, (state_file::PARTIAL, with_per(state))],
            (StateForm::Factored, [m, n]) => vec![
                start,
                (state_file::FACTOR_U, with_per(&[*m, z.k])),
                (state_file::FACTOR_D, with_per(&[z.k, *n])),
            ],
            (StateForm::Factored, _) => {
                return Err(StreamError::internal("a factored state has two axes"))
            }
        })
    }

    /// The session-input name holding `part` of state `s`.
    fn part_input(part: &str, s: &str) -> String {
        match part {
            state_file::START => names::theta(s),
            state_file::PARTIAL => names::partial(s),
            state_file::FACTOR_U => names::factor_u(s),
            _ => names::factor_d(s),
        }
    }

    /// The form state `i` is carried in now (a carry of `momentum_gd` or a rule: dense).
    pub(super) fn form_of(&self, i: usize) -> StateForm {
        self.forms.get(i).copied().unwrap_or(StateForm::Dense)
    }

    /// Whether state `i` can be carried in `form`.
    pub(super) fn can_carry(&self, i: usize, form: StateForm) -> Result<bool, StreamError> {
        let z = self.sized()?;
        Ok(form == StateForm::Dense
            || choose_forms(&z.scan, DecodeState::Factored).get(i) == Some(&StateForm::Factored))
    }

    /// The carried tensors of state `i` under their part names, shaped as
    /// [`ScanRuntime::part_shapes`] says.
    pub(super) fn carried_parts(
        &self,
        i: usize,
    ) -> Result<Vec<(&'static str, Tensor)>, StreamError> {
        let z = self.sized()?;
        let s = &z.scan.states[i];
        let mut out = Vec::new();
        for (part, shape) in self.part_shapes(i, self.form_of(i))? {
            let t = self
                .inputs
                .get(&Self::part_input(part, s))
                .ok_or_else(|| StreamError::internal("state unset"))?;
            out.push((part, reshape(t.clone(), shape)?));
        }
        Ok(out)
    }

    /// Sets state `i` (from a saved session) carried in `form` from its parts, in the order and
    /// shapes of [`ScanRuntime::part_shapes`].
    pub(super) fn set_carried(
        &mut self,
        i: usize,
        form: StateForm,
        parts: Vec<Tensor>,
    ) -> Result<(), StreamError> {
        let z = self.sized()?;
        let s = z.scan.states[i].clone();
        let (n, per) = (z.n, z.per_sizes.len());
        let shapes = self.part_shapes(i, form)?;
        if parts.len() != shapes.len() {
            return Err(StreamError::internal("wrong number of state parts"));
        }
        for ((part, _), t) in shapes.into_iter().zip(parts) {
            let mut shape = vec![n];
            shape.extend(&t.shape()[per..]);
            let t = reshape(t, shape)?;
            self.inputs.insert(Self::part_input(part, &s), t);
            self.invariants_fresh = false;
        }
        // The other form's parts are gone.
        let stale: &[String] = match form {
            StateForm::Dense => &[names::factor_u(&s), names::factor_d(&s)],
            StateForm::Factored => &[names::partial(&s)],
        };
        for name in stale {
            self.inputs.remove(name);
        }
        if i < self.forms.len() && self.forms[i] != form {
            self.forms[i] = form;
            self.reset_token_step();
        }
        Ok(())
    }

    /// Forgets the compiled token step (the forms changed).
    fn reset_token_step(&mut self) {
        self.token_step = None;
        self.grouped = None;
        self.factor_sum = None;
        self.invariants = None;
        self.invariants_fresh = false;
        self.spare.clear();
    }

    /// Runs the chunk's `len` tokens, starting at sequence position `start`, through the scan.
    /// `operands` are the scan's operands for this chunk. Returns the per-token outputs
    /// `[per..., len, rest...]` and the states after the chunk `[per..., state...]`.
    /// The states are computed only when `want_states`.
    pub(super) fn run(
        &mut self,
        pieces: &mut Pieces,
        operands: &[&Tensor],
        start: usize,
        len: usize,
        want_states: bool,
    ) -> Result<(Tensor, Vec<Tensor>), StreamError> {
        let sized = self
            .sized
            .take()
            .ok_or_else(|| StreamError::internal("the scan is used before its sizes are known"))?;
        let result = self.run_sized(&sized, pieces, operands, start, len, want_states);
        self.sized = Some(sized);
        result
    }

    fn run_sized(
        &mut self,
        z: &Sized,
        pieces: &mut Pieces,
        operands: &[&Tensor],
        start: usize,
        len: usize,
        want_states: bool,
    ) -> Result<(Tensor, Vec<Tensor>), StreamError> {
        if operands.len() != z.scan.operand_count() {
            return Err(StreamError::internal("wrong number of scan operands"));
        }
        if !self.initialized {
            self.init(&z.scan, operands, &z.per_sizes, z.k)?;
        }
        let token_eta = self.token_eta.take();
        let result = self.run_tokens(
            z,
            pieces,
            operands,
            start,
            len,
            want_states,
            token_eta.as_ref(),
        );
        self.token_eta = token_eta;
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn run_tokens(
        &mut self,
        z: &Sized,
        pieces: &mut Pieces,
        operands: &[&Tensor],
        start: usize,
        len: usize,
        want_states: bool,
        token_eta: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>), StreamError> {
        let (n, k) = (z.n, z.k);
        let scan = &z.scan;
        let per_sizes = &z.per_sizes;
        let state_shapes = &z.state_shapes;
        let axes = |i: usize| -> &[Option<usize>] { &scan.axes[i].per };
        let mut position = start % k;
        let mut zs: Vec<Tensor> = Vec::new();
        // Slice-major token data, made when the first token goes the token way.
        let mut rows: Option<Vec<Tensor>> = None;
        // Step size of chunk token `t` at mini-batch position `position`: a column `[n]` of the
        // per-position `token_eta`, or of the chunk's per-token rows.
        let (nl, no) = (scan.loss_args.len(), scan.out_args.len());
        let momentum = scan.rule.has_carries();
        let eta_of = |rows: &Option<Vec<Tensor>>, t: usize, position: usize| match token_eta {
            Some(e) => column(e, position),
            None => {
                let r = rows
                    .as_ref()
                    .and_then(|r| r.get(nl + no))
                    .ok_or_else(|| StreamError::internal("per-token token_eta rows"))?;
                column(r, t)
            }
        };
        // The step size of the last token that went the token way.
        let mut last_eta: Option<Tensor> = None;
        if position == 0 {
            self.take_preferred_forms(z)?;
        }
        let mut t = 0;
        while t < len {
            if position == 0 && len - t >= k {
                let m = (len - t) / k;
                let z = self.run_blocks(pieces, scan, operands, t, m * k, per_sizes)?;
                zs.push(z);
                t += m * k;
                continue;
            }
            if rows.is_none() {
                let mut r = Vec::new();
                for (i, op) in operands.iter().enumerate() {
                    if super::plan::is_token_operand(scan, i) {
                        r.push(to_slices(op, axes(i), per_sizes)?);
                    }
                }
                rows = Some(r);
            }
            let r = rows.as_ref().ok_or_else(|| StreamError::internal("rows"))?;
            for (i, rows) in r.iter().take(nl).enumerate() {
                self.inputs
                    .insert(self.names.loss_args[i].clone(), slice_axis(rows, 1, t, 1)?);
            }
            for (i, rows) in r.iter().skip(nl).take(no).enumerate() {
                self.inputs
                    .insert(self.names.out_args[i].clone(), slice_axis(rows, 1, t, 1)?);
            }
            // The last rows are `lr`, then `decay` under momentum_gd.
            let (lr_row, decay_row) = match (momentum, r.as_slice()) {
                (true, [.., lr, decay]) => (lr, Some(decay)),
                (false, [.., lr]) => (lr, None),
                _ => return Err(StreamError::internal("no lr rows")),
            };
            self.inputs.insert(names::LR.into(), column(lr_row, t)?);
            if let Some(decay) = decay_row {
                self.inputs.insert(names::DECAY.into(), column(decay, t)?);
            }
            let eta = eta_of(&rows, t, position)?;
            let elem = eta.elem_type();
            self.inputs.insert(names::ETA.into(), eta.clone());
            last_eta = Some(eta);
            self.compile_token_step(pieces, scan, n, &z.state_shapes)?;
            if !self.invariants_fresh {
                if let Some(inv) = &self.invariants {
                    let values = inv.run(&mut self.inputs, elem)?;
                    self.inputs.extend(values);
                }
                self.invariants_fresh = true;
            }
            let mut out = match (&self.grouped, &self.token_step) {
                (Some(g), _) => g.run(&self.inputs, &mut self.spare, elem)?,
                (None, Some(step)) => step.run_reusing(&self.inputs, &mut self.spare)?,
                (None, None) => return Err(StreamError::internal("token step")),
            };
            let token_z = out
                .remove(names::Z)
                .ok_or_else(|| StreamError::internal("the token step has no output `z`"))?;
            zs.push(token_z);
            for (i, s) in scan.states.iter().enumerate() {
                if self.form_of(i) == StateForm::Factored {
                    // The token's factors go to column `position` of `Uᵀ`, row `position` of `D`.
                    for (row, rows, column) in [
                        (names::row_u(s), names::factor_u(s), true),
                        (names::row_d(s), names::factor_d(s), false),
                    ] {
                        let r = out.remove(&row).ok_or_else(|| {
                            StreamError::internal(format!("the token step has no `{row}`"))
                        })?;
                        let all = self
                            .inputs
                            .remove(&rows)
                            .ok_or_else(|| StreamError::internal(format!("`{rows}` unset")))?;
                        self.inputs
                            .insert(rows, set_row(all, position, &r, column)?);
                        self.spare.insert(row, r);
                    }
                    continue;
                }
                let p = out.remove(&names::partial(s)).ok_or_else(|| {
                    StreamError::internal(format!("the token step has no output for `{s}`"))
                })?;
                // The sums just replaced hold the next step's output.
                if let Some(old) = self.inputs.insert(names::partial(s), p) {
                    self.spare.insert(names::partial(s), old);
                }
            }
            position += 1;
            t += 1;
            if position == k {
                let rate = last_eta
                    .clone()
                    .ok_or_else(|| StreamError::internal("no step size"))?;
                if let Some(ended) = self.ended(scan)? {
                    for (s, value) in scan.states.iter().zip(ended) {
                        self.inputs.insert(names::partial(s), value);
                    }
                }
                for (i, s) in scan.states.iter().enumerate() {
                    if momentum {
                        self.close_current(s)?;
                    } else if self.form_of(i) == StateForm::Dense {
                        self.close(s, &rate)?;
                    }
                }
                if self.forms.contains(&StateForm::Factored) {
                    self.close_factored(z, &rate)?;
                }
                position = 0;
                self.take_preferred_forms(z)?;
            }
        }
        // Per-token outputs: every piece is [n, len, rest...].
        let zs = concat_axis(zs, 1)?;
        let mut z_shape = per_sizes.clone();
        z_shape.extend(&zs.shape()[1..]);
        let zs = reshape(zs, z_shape)?;
        // The states as the scan would end here: the last token fed (in this chunk, which
        // holds at least one token, and the token way, as whole mini-batches end at position 0)
        // gives the step size.
        let rate = match position {
            0 => None,
            _ => Some(
                last_eta
                    .clone()
                    .ok_or_else(|| StreamError::internal("no step size"))?,
            ),
        };
        let mut states = Vec::with_capacity(scan.states.len());
        // A rule's end map, as if the mini-batch ended here.
        let mut ended = match (want_states, position) {
            (true, 1..) => self.ended(scan)?.map(Vec::into_iter),
            _ => None,
        };
        let mut factor_sums = match (want_states, position) {
            (true, 1..) if self.forms.contains(&StateForm::Factored) => {
                self.compile_token_step(pieces, scan, n, state_shapes)?;
                self.factor_sums(z)?
            }
            _ => BTreeMap::new(),
        };
        for (i, (s, shape)) in scan.states.iter().zip(state_shapes).enumerate() {
            if !want_states {
                break;
            }
            let mut full = per_sizes.clone();
            full.extend(shape);
            if let Some(sum) = factor_sums.remove(s) {
                let (theta, rate) = (
                    self.inputs
                        .get(&names::theta(s))
                        .ok_or_else(|| StreamError::internal("state unset"))?,
                    rate.as_ref()
                        .ok_or_else(|| StreamError::internal("no step size"))?,
                );
                states.push(reshape(minus_scaled(theta, rate, &sum)?, full)?);
                continue;
            }
            if self.form_of(i) == StateForm::Factored {
                // At a boundary: the start of the next mini-batch.
                let theta = self
                    .inputs
                    .get(&names::theta(s))
                    .ok_or_else(|| StreamError::internal("state unset"))?;
                states.push(reshape(theta.clone(), full)?);
                continue;
            }
            let (theta, partial) = self
                .carried(s)
                .ok_or_else(|| StreamError::internal("state unset"))?;
            let now = match &rate {
                _ if ended.is_some() => ended
                    .as_mut()
                    .and_then(Iterator::next)
                    .ok_or_else(|| StreamError::internal("end map"))?,
                // momentum_gd: the current values (kept equal to θ0 at a boundary).
                _ if momentum => partial.clone(),
                Some(r) => minus_scaled(theta, r, partial)?,
                None => theta.clone(),
            };
            states.push(reshape(now, full)?);
        }
        Ok((zs, states))
    }

    /// First chunk: the initial states (unless a saved state was loaded), params and
    /// `token_eta`, slice-major.
    fn init(
        &mut self,
        scan: &TttScan,
        operands: &[&Tensor],
        per_sizes: &[usize],
        k: usize,
    ) -> Result<(), StreamError> {
        let elem = operands
            .first()
            .map(|t| t.elem_type())
            .unwrap_or(ElemType::F64);
        for (i, op) in operands.iter().enumerate() {
            let per = &scan.axes[i].per;
            match scan.operand_kind(i) {
                OperandKind::State(s) if !self.started => {
                    let name = &scan.states[s];
                    let theta = to_slices(op, per, per_sizes)?;
                    if scan.rule.has_carries() {
                        // momentum_gd's partial holds the current values.
                        self.inputs.insert(names::partial(name), theta.clone());
                    } else {
                        self.fresh_sums(s, &scan.states[s], theta.shape(), elem, k)?;
                    }
                    self.inputs.insert(names::theta(name), theta);
                    self.invariants_fresh = false;
                }
                OperandKind::Param(p) => {
                    self.inputs
                        .insert(names::param(p), to_slices(op, per, per_sizes)?);
                }
                OperandKind::TokenEta if !scan.is_sequence_operand(i) => {
                    self.token_eta = Some(to_slices(op, per, per_sizes)?)
                }
                _ => {}
            }
        }
        self.started = true;
        self.initialized = true;
        Ok(())
    }

    /// Empty partial sums for state `i` named `s` (`[n, state...]`) in its current form: a
    /// zero sum, or zero factors `[n, m, K]`, `[n, K, n']`.
    fn fresh_sums(
        &mut self,
        i: usize,
        s: &str,
        state: &[usize],
        elem: ElemType,
        k: usize,
    ) -> Result<(), StreamError> {
        match (self.form_of(i), state) {
            (StateForm::Dense, _) => {
                self.inputs
                    .insert(names::partial(s), Tensor::try_zeros(state.to_vec(), elem)?);
            }
            (StateForm::Factored, [n, m, w]) => {
                self.inputs.insert(
                    names::factor_u(s),
                    Tensor::try_zeros(vec![*n, *m, k], elem)?,
                );
                self.inputs.insert(
                    names::factor_d(s),
                    Tensor::try_zeros(vec![*n, k, *w], elem)?,
                );
            }
            _ => return Err(StreamError::internal("a factored state has two axes")),
        }
        Ok(())
    }

    /// At a mini-batch boundary (every sum empty): the states carried in another form than
    /// the preferred one (a loaded state's) move to it.
    fn take_preferred_forms(&mut self, z: &Sized) -> Result<(), StreamError> {
        if self.forms == z.preferred {
            return Ok(());
        }
        let elem = self
            .inputs
            .get(&names::theta(&z.scan.states[0]))
            .map(Tensor::elem_type)
            .ok_or_else(|| StreamError::internal("state unset"))?;
        for (i, s) in z.scan.model_states().iter().enumerate() {
            let form = z.preferred.get(i).copied().unwrap_or(StateForm::Dense);
            if self.form_of(i) == form {
                continue;
            }
            for name in [names::partial(s), names::factor_u(s), names::factor_d(s)] {
                self.inputs.remove(&name);
            }
            self.forms[i] = form;
            let mut shape = vec![z.n];
            shape.extend(&z.state_shapes[i]);
            self.fresh_sums(i, s, &shape, elem, z.k)?;
        }
        self.reset_token_step();
        Ok(())
    }

    /// `Uᵀ D` of every factored state, by state name.
    fn factor_sums(&mut self, z: &Sized) -> Result<BTreeMap<String, Tensor>, StreamError> {
        let step = self
            .factor_sum
            .as_ref()
            .ok_or_else(|| StreamError::internal("the factored sums are not compiled"))?;
        let mut inputs = BTreeMap::new();
        for (i, s) in z.scan.model_states().iter().enumerate() {
            if self.form_of(i) != StateForm::Factored {
                continue;
            }
            for name in [names::factor_u(s), names::factor_d(s)] {
                let t = self
                    .inputs
                    .remove(&name)
                    .ok_or_else(|| StreamError::internal(format!("`{name}` unset")))?;
                inputs.insert(name, t);
            }
        }
        let result = step.run(&inputs);
        // The rows go back whatever happened.
        self.inputs.append(&mut inputs);
        let mut out = result?;
        let mut sums = BTreeMap::new();
        for (i, s) in z.scan.model_states().iter().enumerate() {
            if self.form_of(i) == StateForm::Factored {
                let sum = out
                    .remove(&names::sum(s))
                    .ok_or_else(|| StreamError::internal("no factored sum"))?;
                sums.insert(s.clone(), sum);
            }
        }
        Ok(sums)
    }

    /// Ends the mini-batch of every factored state: `θ0 ← θ0 − rate · Uᵀ D`, rows zeroed.
    fn close_factored(&mut self, z: &Sized, rate: &Tensor) -> Result<(), StreamError> {
        for (s, sum) in self.factor_sums(z)? {
            let theta = self
                .inputs
                .get(&names::theta(&s))
                .ok_or_else(|| StreamError::internal("state unset"))?;
            let next = minus_scaled(theta, rate, &sum)?;
            self.inputs.insert(names::theta(&s), next);
            self.invariants_fresh = false;
            for name in [names::factor_u(&s), names::factor_d(&s)] {
                if let Some(rows) = self.inputs.remove(&name) {
                    self.inputs.insert(name, zeroed(rows)?);
                }
            }
        }
        Ok(())
    }

    /// Ends the mini-batch of state `s`: `θ0 ← θ0 − rate · S`, `S ← 0`.
    fn close(&mut self, s: &str, rate: &Tensor) -> Result<(), StreamError> {
        let (theta, partial) = self
            .carried(s)
            .ok_or_else(|| StreamError::internal("state unset"))?;
        let next = minus_scaled(theta, rate, partial)?;
        self.inputs.insert(names::theta(s), next);
        self.invariants_fresh = false;
        if let Some(partial) = self.inputs.remove(&names::partial(s)) {
            self.inputs.insert(names::partial(s), zeroed(partial)?);
        }
        Ok(())
    }

    /// Under a rule with an end map `E` (`end` statements), the current values of every state
    /// and carry (in [`TttScan::states`]' order) with `E` applied, its entries evaluated on the
    /// coefficients of the last token fed, per slice; `None` for a rule without one.
    fn ended(&self, scan: &TttScan) -> Result<Option<Vec<Tensor>>, StreamError> {
        let Some(end) = scan.rule.linear().and_then(|r| r.end.as_ref()) else {
            return Ok(None);
        };
        let coefficient = |name: &str| {
            self.inputs
                .get(name)
                .map(Tensor::to_f64_vec)
                .ok_or_else(|| StreamError::internal(format!("no `{name}` of the last token")))
        };
        let values = [
            coefficient(names::ETA)?,
            coefficient(names::LR)?,
            coefficient(names::DECAY)?,
        ];
        let n = values[0].len();
        // E's entries per slice.
        let weights: Vec<Vec<Vec<f64>>> = end
            .iter()
            .map(|row| {
                row.iter()
                    .map(|p| {
                        (0..n)
                            .map(|i| p.eval(&[values[0][i], values[1][i], values[2][i]]))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let nm = scan.model_state_count();
        if weights.len() != 2 || scan.states.len() != 2 * nm {
            return Err(StreamError::internal("a rule of one carry per state"));
        }
        let current = |s: &str| {
            self.carried(s)
                .map(|(_, partial)| partial)
                .ok_or_else(|| StreamError::internal("state unset"))
        };
        let mut out = vec![Vec::with_capacity(nm), Vec::with_capacity(nm)];
        for i in 0..nm {
            let (w, s) = (current(&scan.states[i])?, current(&scan.states[nm + i])?);
            for (row, out) in weights.iter().zip(&mut out) {
                out.push(per_slice_combination(&[
                    (row[0].clone(), w),
                    (row[1].clone(), s),
                ])?);
            }
        }
        Ok(Some(out.concat()))
    }

    /// Ends the mini-batch of state `s` under `momentum_gd`: `θ0 ← partial` (the current
    /// values, which stay).
    fn close_current(&mut self, s: &str) -> Result<(), StreamError> {
        let (_, partial) = self
            .carried(s)
            .ok_or_else(|| StreamError::internal("state unset"))?;
        let now = partial.clone();
        self.inputs.insert(names::theta(s), now);
        self.invariants_fresh = false;
        Ok(())
    }

    /// Compiles the token step, once.
    fn compile_token_step(
        &mut self,
        pieces: &mut Pieces,
        scan: &TttScan,
        n: usize,
        state_shapes: &[Vec<usize>],
    ) -> Result<(), StreamError> {
        if self.token_step.is_some() || self.grouped.is_some() {
            return Ok(());
        }
        // Slices split over threads when the carried state is large enough to pay for the
        // hand-off (a native backend only).
        let state: usize = state_shapes
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum::<usize>()
            * n;
        let groups = super::grouped::worker_threads().min(n);
        let native = matches!(pieces.backend(), Backend::Llvm | Backend::Cranelift);
        let min_state = std::env::var("TTTC_DECODE_SPLIT_MIN")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(GROUPED_MIN_STATE);
        if self.forms.contains(&StateForm::Factored) {
            let graph = factor_sum_graph(scan, n, &self.forms)
                .map_err(|e| StreamError::internal(e.to_string()))?;
            let program = piece_program(&scan.model, "factor_sum", graph);
            self.factor_sum = Some(pieces.prepare(&program)?);
        }
        if native && groups > 1 && n.is_multiple_of(groups) && state >= min_state {
            let blocks = cache_blocks(n, groups);
            let (step, invariants) = self.step_programs(scan, n / blocks)?;
            let split = (blocks, groups);
            self.grouped = super::grouped::GroupedStep::new(pieces, &step, split, n)?;
            let invariants = match invariants {
                Some(p) => super::grouped::GroupedStep::new(pieces, &p, split, n)?
                    .map(|g| Some(Runner::new(RunOn::Grouped(g), &p))),
                None => Some(None),
            };
            match (&self.grouped, invariants) {
                (Some(_), Some(invariants)) => {
                    self.invariants = invariants;
                    return Ok(());
                }
                _ => self.grouped = None,
            }
        }
        let (step, invariants) = self.step_programs(scan, n)?;
        self.token_step = Some(pieces.prepare(&step)?);
        self.invariants = match invariants {
            Some(p) => Some(Runner::new(RunOn::Whole(pieces.prepare(&p)?), &p)),
            None => None,
        };
        Ok(())
    }

    /// The token step for `n` slices in the current forms, simplified, and the program of what
    /// it reads from the mini-batch's starting states alone, if anything
    /// ([`hoist_invariants`]).
    fn step_programs(
        &self,
        scan: &TttScan,
        n: usize,
    ) -> Result<(Program, Option<Program>), StreamError> {
        // A model's layers have one scan: their token steps are derived (equality saturation)
        // once per process, not once per layer.
        static DERIVED: OnceLock<Mutex<HashMap<String, StepPrograms>>> = OnceLock::new();
        let derived = DERIVED.get_or_init(Default::default);
        let key = serde_json::to_string(scan)
            .ok()
            .map(|s| format!("{n} {:?} {s}", self.forms));
        if let Some(k) = &key {
            let known = derived.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = known.get(k) {
                return Ok(p.clone());
            }
        }
        let programs = self.derive_step_programs(scan, n)?;
        if let Some(k) = key {
            let mut known = derived.lock().unwrap_or_else(|e| e.into_inner());
            if known.len() >= REMEMBERED_STEPS {
                known.clear();
            }
            known.insert(k, programs.clone());
        }
        Ok(programs)
    }

    /// [`Self::step_programs`], derived.
    fn derive_step_programs(&self, scan: &TttScan, n: usize) -> Result<StepPrograms, StreamError> {
        let internal = |e: &dyn std::fmt::Display| StreamError::internal(e.to_string());
        let graph = token_step_graph_with(scan, n, &self.forms).map_err(|e| internal(&e))?;
        let (graph, _) = tttc_passes::rewrite::simplify_graph(
            &graph,
            &tttc_passes::rewrite::RewriteConfig::default(),
            "token_step",
        )
        .map_err(|e| internal(&e))?;
        let (graph, invariants) = hoist_invariants(&graph).map_err(|e| internal(&e))?;
        Ok((
            piece_program(&scan.model, "token_step", graph),
            invariants.map(|g| piece_program(&scan.model, "token_invariants", g)),
        ))
    }

    /// Runs `count` tokens (whole mini-batches, from a mini-batch boundary) starting at chunk
    /// token `t` through the scan's step; the states move on to the end of the last one.
    /// Returns the outputs `[n, count, rest...]`.
    fn run_blocks(
        &mut self,
        pieces: &mut Pieces,
        scan: &TttScan,
        operands: &[&Tensor],
        t: usize,
        count: usize,
        per_sizes: &[usize],
    ) -> Result<Tensor, StreamError> {
        let n: usize = per_sizes.iter().product();
        let mut inputs = BTreeMap::new();
        for (i, op) in operands.iter().enumerate() {
            let name = format!("op.{i}");
            let value = match scan.operand_kind(i) {
                OperandKind::State(s) => {
                    let theta = self
                        .inputs
                        .get(&names::theta(&scan.states[s]))
                        .ok_or_else(|| StreamError::internal("state unset"))?;
                    let mut shape = per_sizes.to_vec();
                    shape.extend(&theta.shape()[1..]);
                    reshape(theta.clone(), shape)?
                }
                _ if super::plan::is_token_operand(scan, i) => {
                    let axis = token_axis(scan, i)
                        .ok_or_else(|| StreamError::internal("token operand without axis"))?;
                    slice_axis(op, axis, t, count)?
                }
                _ => (*op).clone(),
            };
            inputs.insert(name, value);
        }
        let block = match self.blocks.entry(count) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(pieces.prepare(&block_program(scan, &inputs)?)?)
            }
        };
        let mut out = block.run(&inputs)?;
        for s in &scan.states {
            let next = out
                .remove(&format!("next.{s}"))
                .ok_or_else(|| StreamError::internal("the block has no next state"))?;
            let mut shape = vec![n];
            shape.extend(&next.shape()[per_sizes.len()..]);
            let next = reshape(next, shape)?;
            if scan.rule.has_carries() {
                // The current values are the block's end too.
                self.inputs.insert(names::partial(s), next.clone());
            }
            self.inputs.insert(names::theta(s), next);
            self.invariants_fresh = false;
        }
        let z = out
            .remove("z")
            .ok_or_else(|| StreamError::internal("the block has no output"))?;
        let mut shape = vec![n];
        shape.extend(&z.shape()[per_sizes.len()..]);
        reshape(z, shape)
    }
}

/// The number of row blocks, a multiple of `threads` dividing `n`: one per thread unless
/// `TTTC_DECODE_BLOCKS` asks for more (rounded to a valid count). Blocks small enough for one
/// block's weights to stay in a core's level-2 cache across the step's passes paid while the
/// step's one-row products ran as two dependent chains per row; since `register_tile` streams
/// each head's matrix once per product with every accumulator in flight, the fewest blocks
/// are fastest (TTT-MLP, 12 heads × f = 64, factored: 52 µs a token in two blocks against 58
/// in twelve; dense 70 against 75; TTT-Linear the same either way).
fn cache_blocks(n: usize, threads: usize) -> usize {
    let valid = |b: usize| b >= threads && b.is_multiple_of(threads) && n.is_multiple_of(b);
    std::env::var("TTTC_DECODE_BLOCKS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .and_then(|b| (b.max(threads)..=n).find(|&b| valid(b)))
        .unwrap_or(threads)
}

/// A program around one graph built for a session.
fn piece_program(model: &str, what: &str, graph: Graph) -> Program {
    Program {
        name: format!("{model}.{what}"),
        configs: Vec::new(),
        derived_dims: Vec::new(),
        intermediates: Vec::new(),
        integer_inputs: Vec::new(),
        graph,
    }
}

/// The program running the scan over whole mini-batches from given states: one input per
/// operand (`op.<i>`, states with every scan dim, `[per..., state...]`), outputs `z` and
/// `next.<state>`.
fn block_program(
    scan: &TttScan,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<Program, StreamError> {
    let ir = |e: tttc_ir::GraphError| StreamError::internal(format!("building a block: {e}"));
    let dtype = match inputs.values().next().map(|t| t.elem_type()) {
        Some(ElemType::F32) => tttc_ir::DType::F32,
        _ => tttc_ir::DType::F64,
    };
    let mut g = Graph::new();
    let mut scan = scan.clone();
    let mut args = Vec::new();
    for i in 0..scan.operand_count() {
        let name = format!("op.{i}");
        let t = inputs
            .get(&name)
            .ok_or_else(|| StreamError::internal("block operand"))?;
        if let OperandKind::State(_) = scan.operand_kind(i) {
            let rank = t.shape().len();
            let np = scan.per.len();
            scan.axes[i] = OperandAxes {
                per: (0..rank).map(|a| (a < np).then_some(a)).collect(),
            };
        }
        let ty = TensorType::new(dtype, Shape::known(t.shape()));
        args.push(g.add_input(&name, ty).map_err(ir)?);
    }
    let states = scan.states.clone();
    let model = scan.model.clone();
    let node = g.add(Op::Ttt(Box::new(scan)), &args).map_err(ir)?;
    let z = g.add(Op::Get { index: 0 }, &[node]).map_err(ir)?;
    g.add_output("z", z);
    for (i, s) in states.iter().enumerate() {
        let next = g.add(Op::Get { index: i + 1 }, &[node]).map_err(ir)?;
        g.add_output(&format!("next.{s}"), next);
    }
    Ok(piece_program(&model, "block", g))
}
