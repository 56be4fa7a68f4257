//! The sequence-level construct: a test-time-training scan over mini-batches that carries the
//! fast-weight state.
//!
//! Operands, in order: the initial value of every state tensor, every outer parameter, the
//! loss's token arguments, the output's token arguments, the step-size scale `token_eta` and
//! the per-token learning rate `lr`. Axes of an operand listed in `per` (batch, heads, ...)
//! are mapped: the scan runs independently for every index of them. After the mapped axes are
//! removed, token arguments and `lr` have the sequence axis first; one token of a token argument
//! is a row `[1, ...]`.
//!
//! `token_eta` has one of two forms ([`TokenEtaForm`], decided from its shape when the
//! program is lowered): `[K]`, a scale per *position in the mini-batch*, or the shape of `lr`
//! (`[L]` after the mapped axes), a scale per *token*, like `lr` a sequence operand.
//!
//! Semantics of one mini-batch of `k` tokens `t0 .. t0 + k` (k = K, or the remainder `L mod K`
//! for the last one) starting from state `θ`, with `e_i` the step size of its `i`-th token:
//! `e_i = token_eta[i]` per position (the remainder uses `token_eta[0..k]`), `e_i =
//! token_eta[t0 + i]` per token:
//!
//! ```text
//! g_j  = ∇_θ loss(θ; token t0 + j)              for j = 0..k-1, all at the same θ
//! θ_i  = θ − e_i · Σ_{j<=i} lr[t0 + j] g_j       i.e. eta[i, j] = e_i · lr[t0 + j]
//! z_i  = out(θ_i; token t0 + i)
//! θ'   = θ_{k−1}
//! ```
//!
//! Either way the step graph ([`TttScan::step`]) receives the mini-batch's `k` step sizes as one
//! `[k]` block, so the primal form, the dual-form rewrite and the kernels do not depend on the
//! form; only the slicing of the operand does (interpreter, kernel lowering, streaming).
//!
//! ## Momentum and forgetting ([`UpdateRule::MomentumGd`])
//!
//! `update momentum_gd(size = K, lr = ρ, momentum = η, decay = α)`: the rule carries, next to
//! every state `W`, a momentum buffer `S` of the same shape (named [`TttScan::carry_name`]`(W)`)
//! that starts at zero (the lowering passes a zero operand) and carries across mini-batches.
//! The carries are *states of the scan* — they come after the inner model's states in
//! [`TttScan::states`], their initial values are operands and their final values results — but
//! not inputs of the inner model's graphs (those take [`TttScan::model_states`]). The operands
//! are the states (model states, then carries), the params, the token arguments, then three
//! per-token sequence operands of shape `[L]`: `momentum` (in the `token_eta` slot, always
//! [`TokenEtaForm::PerToken`]), `lr`, and `decay` ([`OperandKind::Decay`]). Per token `t` of a
//! mini-batch starting from `(W, S)`, all gradients at `W`:
//!
//! ```text
//! g_t = ∇_W loss(W; token t)
//! S_t = η_t S_{t−1} − ρ_t g_t           (S_{t0−1} = S)
//! W_t = (1 − α_t) W_{t−1} + S_t         (W_{t0−1} = W)
//! z_t = out(W_t; token t)
//! ```
//!
//! and the next mini-batch starts from the last `(W_t, S_t)`. `momentum = 0, decay = 0` is
//! `minibatch_gd` with `token_eta = 1`. The step graph computes it in chunked form (mixing
//! weights of the per-token gradients and decay products for the carries, see
//! `passes/src/lower_scan.rs`).
//!
//! ## Rules written as code ([`UpdateRule::Linear`])
//!
//! `rule NAME(c0, c1, c2) { carry S = 0; ...; read ...; end ... }` (see [`crate::rule`]): the
//! scan has `momentum_gd`'s layout — one carry per state after the model's states (named
//! `<state>_S`), and three coefficient operands in the `token_eta`, `lr` and `decay` slots
//! holding the rule's coefficients in order (zeros for the ones it does not have); all per token
//! but the first, which may be per position ([`TttScan::token_eta`]; the language moves a
//! rule's per-position coefficient there). Per token, with `x = [W; S]` and the gradient at the
//! mini-batch's starting `W`: `x_t = T_t x_{t−1} + b_t g_t`, `z_t = out(u_t · x_t; token t)`;
//! the next mini-batch starts from `E x_{k−1}` (the rule's end map on its last token's
//! coefficients; the identity without one). The prelude's `minibatch_gd` and `momentum_gd` are
//! such rules, lowered as [`UpdateRule::MinibatchGd`] and [`UpdateRule::MomentumGd`] when their
//! recurrence has exactly those forms.
//!
//! The result is a tuple: the per-token outputs stacked along the sequence axis
//! (`[per..., L, ...]`), then the final value of every state (`[per..., state shape]`),
//! carries included.

use crate::graph::Graph;
use crate::op::TypeError;
use crate::rule::LinearRule;
use crate::shape::{Dim, NodeType, Shape, TensorType};
use serde::{Deserialize, Serialize};

/// How one scan operand is sliced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperandAxes {
    /// For each axis of the operand: `Some(p)` if it is mapped to `per[p]`.
    pub per: Vec<Option<usize>>,
}

impl OperandAxes {
    /// Shape of one slice (mapped axes removed).
    pub fn slice_shape(&self, shape: &Shape) -> Shape {
        Shape(
            shape
                .0
                .iter()
                .zip(&self.per)
                .filter(|(_, p)| p.is_none())
                .map(|(d, _)| d.clone())
                .collect(),
        )
    }
}

/// What the scan is: the inner model's graphs, the names of its pieces and the update rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TttScan {
    /// Name of the inner model (for display only; nothing dispatches on it).
    pub model: String,
    /// Names of the mapped dimensions, in order.
    pub per: Vec<String>,
    /// Mini-batch size `K`.
    pub mini_batch: Dim,
    /// State tensor names.
    pub states: Vec<String>,
    /// Outer parameter names.
    pub params: Vec<String>,
    /// Token arguments of the loss.
    pub loss_args: Vec<String>,
    /// Token arguments of the output.
    pub out_args: Vec<String>,
    /// Slicing of every operand (same order as the operands).
    pub axes: Vec<OperandAxes>,
    /// Whether `token_eta` is per position in the mini-batch (`[K]`) or per token (the shape of
    /// `lr`). Absent in programs serialized before it existed: per position.
    #[serde(default)]
    pub token_eta: TokenEtaForm,
    /// The update rule. Absent in programs serialized before it existed: `minibatch_gd`.
    #[serde(default)]
    pub rule: UpdateRule,
    /// `momentum_gd`: the doubling rounds `R` its step graph's segment products take (set with
    /// the step graph; `None`: [`DEFAULT_DOUBLING_ROUNDS`]); the step is right for mini-batches
    /// of up to `2^R` tokens ([`TttScan::max_mini_batch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doubling_rounds: Option<usize>,
    /// The self-supervised loss of one token: inputs `states ++ params ++ loss_args`, one scalar
    /// output `loss`.
    pub loss: Graph,
    /// The per-token output: inputs `states ++ params ++ out_args`, one output `out` of shape
    /// `[1, ...]`.
    pub out: Graph,
    /// The gradient of `loss` with respect to every state (inputs as `loss`, one output per
    /// state, named `grad_<state>`), filled in by the autodiff pass.
    pub grad: Option<Graph>,
    /// One whole mini-batch step, filled in by the scan-lowering pass; when present it defines
    /// the scan (the per-token graphs stay for reference). Inputs, in order: the states at the
    /// mini-batch's start, the params, the loss's token-argument blocks `[k, ...]` (one row per
    /// token), the output's token-argument blocks, `token_eta` `[k]` (the
    /// mini-batch's step sizes `e_i`, either form; `momentum` under `momentum_gd`), `lr` `[k]`
    /// and, under `momentum_gd`, `decay` `[k]`, where `k`
    /// is the symbolic dimension [`MINI_BATCH_DIM`] (K, or the remainder). Outputs: `out`
    /// `[k, ...]` (one row per token), then `next_<state>` for every state.
    #[serde(default)]
    pub step: Option<Graph>,
    /// The vector-Jacobian product of [`TttScan::step`], filled in when a program is
    /// differentiated (`passes/src/autodiff.rs`, `grad_program`). Inputs: the step's inputs, then
    /// the cotangent of `out` and of every `next_<state>`, in that order. Outputs: `d_<input>`
    /// for every input of the step, in the step's input order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_vjp: Option<Graph>,
}

/// The two forms of a scan's `token_eta` operand (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenEtaForm {
    /// `[K]`: token `t0 + i` of a mini-batch uses `token_eta[i]` (the remainder mini-batch
    /// `token_eta[0 .. L mod K]`).
    #[default]
    PerPosition,
    /// The shape of `lr` (`[L]` after the mapped axes): token `t` uses `token_eta[t]`. A
    /// sequence operand like `lr`, sliced with it.
    PerToken,
}

/// A scan's update rule (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum UpdateRule {
    /// `minibatch_gd(size, token_eta, lr)`: mini-batch gradient descent.
    #[default]
    MinibatchGd,
    /// `momentum_gd(size, lr, momentum, decay)`: momentum and forgetting; one momentum buffer
    /// per state, carried as an extra scan state.
    MomentumGd,
    /// A rule written in the language ([`LinearRule`]): its carry as an extra scan state per
    /// state, laid out as `momentum_gd`'s (one carry; three coefficient operands, the ones the
    /// rule does not use zero; all per token but the first, which may be per position).
    Linear(Box<LinearRule>),
}

impl UpdateRule {
    /// Whether the rule carries buffers across mini-batches as extra scan states (one per
    /// state, after the model's states): `momentum_gd` and the rules written as code.
    pub fn has_carries(&self) -> bool {
        !matches!(self, UpdateRule::MinibatchGd)
    }

    /// The rule written as code, if it is one.
    pub fn linear(&self) -> Option<&LinearRule> {
        match self {
            UpdateRule::Linear(r) => Some(r),
            _ => None,
        }
    }
}

/// The doubling rounds of `momentum_gd`'s segment products when the mini-batch size is not
/// known when the step graph is built: mini-batches of up to `2^16` tokens.
pub const DEFAULT_DOUBLING_ROUNDS: usize = 16;

/// The symbolic length of one mini-batch inside a scan's step graph: bound to K for full
/// mini-batches and to `L mod K` for the remainder, when the step runs. It cannot be written in
/// the language.
pub const MINI_BATCH_DIM: &str = "$k";

/// The operand kinds, in operand order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperandKind {
    /// Initial value of state `i`.
    State(usize),
    /// Outer parameter `i`.
    Param(usize),
    /// Token argument `i` of the loss.
    LossArg(usize),
    /// Token argument `i` of the output.
    OutArg(usize),
    /// The step-size scale (per position or per token: [`TttScan::token_eta`]).
    TokenEta,
    /// Per-token learning rate.
    Lr,
    /// Per-token decay `α` of `momentum_gd` (the last operand; absent under `minibatch_gd`).
    Decay,
}

impl TttScan {
    /// Number of operands.
    pub fn operand_count(&self) -> usize {
        self.states.len()
            + self.params.len()
            + self.loss_args.len()
            + self.out_args.len()
            + self.coefficient_count()
    }

    /// Number of per-token (or per-position) coefficient operands after the token arguments:
    /// 2 (`token_eta`, `lr`) for `minibatch_gd`, 3 (`momentum`, `lr`, `decay`) for
    /// `momentum_gd`.
    pub fn coefficient_count(&self) -> usize {
        if self.rule.has_carries() {
            3
        } else {
            2
        }
    }

    /// Number of the inner model's states (the first entries of [`TttScan::states`]; the rest
    /// are the rule's carries).
    pub fn model_state_count(&self) -> usize {
        if self.rule.has_carries() {
            self.states.len() / 2
        } else {
            self.states.len()
        }
    }

    /// The inner model's states: the inputs its graphs take before the params.
    pub fn model_states(&self) -> &[String] {
        &self.states[..self.model_state_count()]
    }

    /// The largest mini-batch the step graph is right for: `2^R` under `momentum_gd` (see
    /// [`TttScan::doubling_rounds`]), unbounded under `minibatch_gd`. Checked where the step
    /// runs (the interpreter, the kernel lowering).
    pub fn max_mini_batch(&self) -> usize {
        if self.rule.has_carries() {
            let r = self.doubling_rounds.unwrap_or(DEFAULT_DOUBLING_ROUNDS);
            1usize.checked_shl(r as u32).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        }
    }

    /// The name of the momentum buffer carried for state `state` under `momentum_gd` (also the
    /// scan result's field: `r.W1_momentum`).
    pub fn carry_name(state: &str) -> String {
        format!("{state}_momentum")
    }

    /// The kind of operand `i`.
    pub fn operand_kind(&self, i: usize) -> OperandKind {
        let (s, p, l, o) = (
            self.states.len(),
            self.params.len(),
            self.loss_args.len(),
            self.out_args.len(),
        );
        if i < s {
            OperandKind::State(i)
        } else if i < s + p {
            OperandKind::Param(i - s)
        } else if i < s + p + l {
            OperandKind::LossArg(i - s - p)
        } else if i < s + p + l + o {
            OperandKind::OutArg(i - s - p - l)
        } else if i == s + p + l + o {
            OperandKind::TokenEta
        } else if i == s + p + l + o + 1 {
            OperandKind::Lr
        } else {
            OperandKind::Decay
        }
    }

    /// Whether operand `i` is a sequence operand (sliced along the tokens): the token
    /// arguments, `lr`, and `token_eta` in its per-token form.
    pub fn is_sequence_operand(&self, i: usize) -> bool {
        match self.operand_kind(i) {
            OperandKind::LossArg(_)
            | OperandKind::OutArg(_)
            | OperandKind::Lr
            | OperandKind::Decay => true,
            OperandKind::TokenEta => self.token_eta == TokenEtaForm::PerToken,
            OperandKind::State(_) | OperandKind::Param(_) => false,
        }
    }

    /// The name of the step graph's output carrying the next value of state `name`.
    pub fn next_output_name(state: &str) -> String {
        format!("next_{state}")
    }

    /// The name of the output of a vector-Jacobian product graph carrying the cotangent of
    /// input `name`.
    pub fn vjp_output_name(input: &str) -> String {
        format!("d_{input}")
    }

    /// The types of the results of a scan's vector-Jacobian product (`Op::TttVjp`) for operands
    /// of the given types: the scan's operands, then the cotangents of its results. The results
    /// are the cotangents of the scan's operands (same types as the operands).
    pub fn infer_vjp(&self, operands: &[&NodeType]) -> Result<NodeType, TypeError> {
        let n = self.operand_count();
        let ns = self.states.len();
        if operands.len() != n + 1 + ns {
            return Err(TypeError(format!(
                "ttt_vjp: {} operands, expected {} (the scan's {n} operands and {} cotangents)",
                operands.len(),
                n + 1 + ns,
                1 + ns
            )));
        }
        let NodeType::Tuple(results) = self.infer(&operands[..n])? else {
            return Err(TypeError(
                "ttt_vjp: the scan's result is not a tuple".into(),
            ));
        };
        for (i, (ct, want)) in operands[n..].iter().zip(&results).enumerate() {
            if ct.tensor() != Some(want) {
                return Err(TypeError(format!(
                    "ttt_vjp: cotangent {i} is {ct}, expected {want} (the scan's result {i})"
                )));
            }
        }
        let mut tys = Vec::with_capacity(n);
        for o in &operands[..n] {
            match o.tensor() {
                Some(t) => tys.push(t.clone()),
                None => return Err(TypeError("ttt_vjp: a tuple operand".into())),
            }
        }
        Ok(NodeType::Tuple(tys))
    }

    /// The name gradient output of state `name` carries.
    pub fn grad_output_name(state: &str) -> String {
        format!("grad_{state}")
    }

    /// One-line description for the printer (a per-token `token_eta` is named; the
    /// per-position form, the original one, is not).
    pub fn header(&self) -> String {
        format!(
            "{} per ({}) minibatch={}{} states=({}) params=({}) loss_args=({}) out_args=({})",
            self.model,
            self.per.join(", "),
            self.mini_batch,
            match (&self.rule, self.token_eta) {
                (UpdateRule::MomentumGd, _) => " rule=momentum_gd".to_string(),
                (UpdateRule::Linear(r), _) => format!(" rule={}", r.name),
                (UpdateRule::MinibatchGd, TokenEtaForm::PerPosition) => String::new(),
                (UpdateRule::MinibatchGd, TokenEtaForm::PerToken) => " token_eta=per_token".into(),
            },
            self.states.join(", "),
            self.params.join(", "),
            self.loss_args.join(", "),
            self.out_args.join(", ")
        )
    }

    /// Result type of the scan for operands of the given types; checks every operand against
    /// the inner graphs' input types.
    pub fn infer(&self, operands: &[&NodeType]) -> Result<NodeType, TypeError> {
        let e = |m: String| Err(TypeError(m));
        if self.axes.len() != operands.len() {
            return e(format!(
                "ttt: {} operands but {} axis maps",
                operands.len(),
                self.axes.len()
            ));
        }
        let mut tys = Vec::with_capacity(operands.len());
        for (i, o) in operands.iter().enumerate() {
            let Some(t) = o.tensor() else {
                return e(format!("ttt: operand {i} is a tuple"));
            };
            if t.shape.rank() != self.axes[i].per.len() {
                return e(format!(
                    "ttt: operand {i} has shape {} but an axis map of rank {}",
                    t.shape,
                    self.axes[i].per.len()
                ));
            }
            tys.push(t);
        }
        let dtype = tys[0].dtype;
        // Extents of the mapped dims.
        let mut per_dims: Vec<Option<Dim>> = vec![None; self.per.len()];
        for (t, axes) in tys.iter().zip(&self.axes) {
            for (d, p) in t.shape.0.iter().zip(&axes.per) {
                if let Some(p) = *p {
                    match &per_dims[p] {
                        None => per_dims[p] = Some(d.clone()),
                        Some(prev) if prev == d => {}
                        Some(prev) => {
                            return e(format!(
                                "ttt: mapped dim `{}` is {prev} in one operand and {d} in another",
                                self.per[p]
                            ))
                        }
                    }
                }
            }
        }
        let per_dims: Vec<Dim> = match per_dims.into_iter().collect::<Option<Vec<_>>>() {
            Some(d) => d,
            None => return e("ttt: a mapped dim appears in no operand".into()),
        };
        let mut seq_len: Option<Dim> = None;
        let loss_inputs = self.loss.inputs();
        let out_inputs = self.out.inputs();
        let nm = self.model_state_count();
        // Only a rule written as code may have a value per position in its first slot.
        let positional = self.token_eta == TokenEtaForm::PerPosition;
        if self.rule.has_carries()
            && (self.states.len() != 2 * nm || (positional && self.rule.linear().is_none()))
        {
            return e(format!(
                "ttt: a rule with carries needs one carry per state and per-token coefficients ({} states)",
                self.states.len()
            ));
        }
        if let UpdateRule::Linear(r) = &self.rule {
            r.check().map_err(TypeError)?;
            if r.carries.len() != 1 || r.coefficients.len() > 3 {
                return e(format!(
                    "ttt: rule `{}` has {} carries and {} coefficients; a scan runs rules of one \
                     carry and at most 3 coefficients",
                    r.name,
                    r.carries.len(),
                    r.coefficients.len()
                ));
            }
        }
        for (i, t) in tys.iter().enumerate() {
            if t.dtype != dtype {
                return e(format!(
                    "ttt: operand {i} is {} but operand 0 is {dtype}",
                    t.dtype
                ));
            }
            let slice = self.axes[i].slice_shape(&t.shape);
            let kind = self.operand_kind(i);
            let expected: Option<Shape> = match kind {
                OperandKind::State(k) => loss_inputs
                    .get(if k < nm { k } else { k - nm })
                    .and_then(|&i| self.loss.tensor_type(i))
                    .map(|t| t.shape.clone()),
                OperandKind::Param(k) => self
                    .loss
                    .tensor_type(loss_inputs[nm + k])
                    .map(|t| t.shape.clone()),
                OperandKind::TokenEta if self.token_eta == TokenEtaForm::PerPosition => {
                    Some(Shape(vec![self.mini_batch.clone()]))
                }
                OperandKind::LossArg(_)
                | OperandKind::OutArg(_)
                | OperandKind::Lr
                | OperandKind::Decay
                | OperandKind::TokenEta => {
                    let token = match kind {
                        OperandKind::LossArg(k) => self
                            .loss
                            .tensor_type(loss_inputs[nm + self.params.len() + k])
                            .map(|t| t.shape.clone()),
                        OperandKind::OutArg(k) => self
                            .out
                            .tensor_type(out_inputs[nm + self.params.len() + k])
                            .map(|t| t.shape.clone()),
                        _ => Some(Shape(vec![Dim::Known(1)])),
                    };
                    let Some(first) = slice.0.first() else {
                        return e(format!("ttt: sequence operand {i} has no sequence axis"));
                    };
                    match &seq_len {
                        None => seq_len = Some(first.clone()),
                        Some(l) if l == first => {}
                        Some(l) => {
                            return e(format!(
                                "ttt: sequence lengths differ: {l} and {first} (operand {i})"
                            ))
                        }
                    }
                    token.map(|mut s| {
                        if let Some(d) = s.0.first_mut() {
                            *d = first.clone();
                        }
                        s
                    })
                }
            };
            match expected {
                Some(exp) if exp == slice => {}
                Some(exp) => {
                    return e(format!(
                        "ttt: operand {i} slices to {slice}, expected {exp}"
                    ))
                }
                None => return e(format!("ttt: inner graph lacks the input for operand {i}")),
            }
        }
        let seq_len = seq_len.unwrap_or(Dim::Known(0));
        let Some(out_ty) = self
            .out
            .outputs()
            .first()
            .and_then(|o| self.out.tensor_type(o.node))
        else {
            return e("ttt: the output graph has no tensor output".into());
        };
        if out_ty.shape.0.first() != Some(&Dim::Known(1)) {
            return e(format!(
                "ttt: a token's output must be a row [1, ...], got {}",
                out_ty.shape
            ));
        }
        let mut out_dims = per_dims.clone();
        out_dims.push(seq_len);
        out_dims.extend(out_ty.shape.0[1..].iter().cloned());
        let mut result = vec![TensorType::new(dtype, Shape(out_dims))];
        let carried = loss_inputs
            .iter()
            .take(nm)
            .chain(if self.rule.has_carries() {
                loss_inputs[..nm.min(loss_inputs.len())].iter()
            } else {
                loss_inputs[..0].iter()
            });
        for &input in carried {
            let Some(st) = self.loss.tensor_type(input) else {
                return e("ttt: the loss graph lacks a state input".into());
            };
            let mut dims = per_dims.clone();
            dims.extend(st.shape.0.iter().cloned());
            result.push(TensorType::new(dtype, Shape(dims)));
        }
        Ok(NodeType::Tuple(result))
    }
}

impl PartialEq for TttScan {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}
