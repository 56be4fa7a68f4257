//! The factored form of an unfinished mini-batch, for decoding.
//!
//! Under `minibatch_gd` a token at position `p` of a mini-batch reads the weights
//! `θ_p = θ0 − η_p Σ_{j≤p} lr_j g_j`, every `g_j` taken at `θ0`. The dense form carries the sum
//! `S = Σ_{j<p} lr_j g_j` between tokens, a tensor of the state's shape read and written by every
//! token. When a state's per-token gradient is an outer product, `g_j = u_jᵀ d_j` with
//! `u_j [1, m]` and `d_j [1, n]` — what reverse mode gives for a weight used as `x @ W` — the
//! factored form carries the rows instead: `U [K, m]` (the `u_j` so far, kept as its transpose
//! `[m, K]` so that the products below read rows) and `D [K, n]` (the `lr_j d_j`), zero past
//! the tokens fed, so `S = Uᵀ D`. A token then reads
//!
//! ```text
//! x θ_p = x θ0 − η_p ((x Uᵀ) D + lr_p (x u_pᵀ) d_p)
//! ```
//!
//! without forming `S`: the token step writes the read as `θ0 − η · (mix_outer(1, U, D) +
//! mix_outer(1, u_p, lr_p d_p))` and the dual-form rewrite (the same rules that give a whole
//! mini-batch its dual form) turns every product `x @ θ_p` into the right-hand side. The step
//! hands back the new rows (`row_u.<s>`, `row_d.<s>`), which the session writes at row `p`;
//! closing the mini-batch is `θ0 ← θ0 − η_last Uᵀ D` ([`factor_sum_graph`] gives `Uᵀ D`).
//!
//! Which form pays is a question of bytes, answered per state by [`choose_forms`] from the
//! state's extents and the mini-batch size (see [`state_bytes`]): the factored rows are
//! `K (m + n)` elements against the dense sum's `m n`, so large weights (TTT-MLP's `64 × 256`)
//! go factored and small ones (a bias, `f = 4`) stay dense.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use tttc_ir::{Graph, NodeId, Op, TttScan, UpdateRule};

/// How the gradient sum of one state's unfinished mini-batch is carried between tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateForm {
    /// The sum itself, a tensor of the state's shape (`partial.<s>`).
    Dense,
    /// The rows of its outer products, `U [K, m]` and `D [K, n]` (`factor_u.<s>`,
    /// `factor_d.<s>`).
    Factored,
}

/// Which form a session asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeState {
    /// The form that touches fewer bytes per token, per state ([`choose_forms`]).
    #[default]
    Auto,
    /// The dense sums everywhere.
    Dense,
    /// The factored rows wherever the gradient is an outer product.
    Factored,
}

impl std::str::FromStr for DecodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DecodeState::Auto),
            "dense" => Ok(DecodeState::Dense),
            "factored" => Ok(DecodeState::Factored),
            other => Err(format!(
                "unknown decode state `{other}` (expected auto, dense or factored)"
            )),
        }
    }
}

/// Where the factors of a state's per-token gradient are in the scan's gradient graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OuterFactors {
    /// The left factor: `[1, m]`, or `[m, 1]` when `column` (then it is read as a row).
    pub u: NodeId,
    /// Whether `u` is a column `[m, 1]`.
    pub column: bool,
    /// The right factor `[1, n]`.
    pub d: NodeId,
}

/// The factors of the gradient output `grad_<state>` when it is `matmul(transpose(u), d)` with
/// `u [1, m]`, or `matmul(c, d)` with a column `c [m, 1]`, and `d [1, n]`; `None` otherwise
/// (then the state can only be carried densely).
pub(crate) fn outer_factors(grad: &Graph, state: &str) -> Option<OuterFactors> {
    let name = TttScan::grad_output_name(state);
    let g = grad.output_by_name(&name)?;
    if !matches!(grad.get(g)?.op, Op::MatMul) {
        return None;
    }
    let [left, d] = grad.operands(g)[..] else {
        return None;
    };
    let dims = |id: NodeId| grad.tensor_type(id).and_then(|t| t.shape.to_known());
    let (lt, dt) = (dims(left)?, dims(d)?);
    let ([m, 1], [1, _]) = (lt.as_slice(), dt.as_slice()) else {
        return None;
    };
    if let Op::Transpose = grad.get(left)?.op {
        let [u] = grad.operands(left)[..] else {
            return None;
        };
        if dims(u)?.as_slice() == [1, *m] {
            return Some(OuterFactors {
                u,
                column: false,
                d,
            });
        }
    }
    Some(OuterFactors {
        u: left,
        column: true,
        d,
    })
}

/// Elements one token touches for a state `[m, n]` beyond what both forms read (the gradient
/// at `θ0`), carried densely or factored over a mini-batch of `k`:
///
/// - dense: the sum read and written (`2 m n`), and `θ0` and the new sum read again for the
///   token's output (`2 m n`): `4 m n`;
/// - factored: `θ0` read for the output (`m n`), the rows read (`k (m + n)`) and one written
///   (`m + n`), and the close amortized over the mini-batch (`Uᵀ D` from the rows, `θ0` read and
///   written: `(k (m + n) + 3 m n) / k`).
pub fn state_bytes(form: StateForm, m: usize, n: usize, k: usize) -> f64 {
    let (m, n, k) = (m as f64, n as f64, k.max(1) as f64);
    match form {
        StateForm::Dense => 4.0 * m * n,
        StateForm::Factored => m * n + k * (m + n) + (m + n) + (k * (m + n) + 3.0 * m * n) / k,
    }
}

/// The form of every model state of `scan` (specialized: every dimension known) under `ask`.
/// Only `minibatch_gd` scans whose gradient is an outer product can be factored; under
/// [`DecodeState::Auto`] a state is factored when [`state_bytes`] says it touches fewer bytes.
pub fn choose_forms(scan: &TttScan, ask: DecodeState) -> Vec<StateForm> {
    let states = scan.model_states();
    let dense = vec![StateForm::Dense; states.len()];
    let (Some(grad), UpdateRule::MinibatchGd, Some(k)) =
        (scan.grad.as_ref(), &scan.rule, scan.mini_batch.known())
    else {
        return dense;
    };
    if ask == DecodeState::Dense {
        return dense;
    }
    let forms: Vec<StateForm> = states
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let shape = grad
                .inputs()
                .get(i)
                .and_then(|&id| grad.tensor_type(id))
                .and_then(|t| t.shape.to_known());
            let (Some(_), Some([m, n])) = (outer_factors(grad, s), shape.as_deref()) else {
                return StateForm::Dense;
            };
            let pays = state_bytes(StateForm::Factored, *m, *n, k)
                < state_bytes(StateForm::Dense, *m, *n, k);
            if ask == DecodeState::Factored || pays {
                StateForm::Factored
            } else {
                StateForm::Dense
            }
        })
        .collect();
    // The factored read exists only where the dual-form rewrite derives it: on tiny shapes the
    // extractor may find keeping the materialized per-token sum (`mix_outer`) cheaper, and the
    // step cannot be built that way (a linear two-layer model, widths 3 → 2 → 3, K = 4, did
    // this). Such a scan stays dense.
    if forms.contains(&StateForm::Factored) && !factored_read_derives(scan, &forms) {
        return dense;
    }
    forms
}

/// At most this many distinct scans are remembered by [`factored_read_derives`] (then it
/// starts over): a model's layers are one.
const REMEMBERED_SCANS: usize = 64;

/// Whether the token step of `scan` builds with `forms` (the dual-form rewrite derives the
/// factored read), remembered per distinct scan and forms in this process: the check runs
/// equality saturation, and every session sizes every layer's scan (a 12-layer TTT-MLP model's
/// warm start to its first token took 0.57 s instead of 0.40 with the check run per layer).
fn factored_read_derives(scan: &TttScan, forms: &[StateForm]) -> bool {
    static SEEN: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let key = serde_json::to_string(scan)
        .ok()
        .map(|s| format!("{forms:?}{s}"));
    let seen = SEEN.get_or_init(Default::default);
    if let Some(known) = key.as_ref().and_then(|k| {
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(k)
            .copied()
    }) {
        return known;
    }
    let derives = super::token_step_graph_with(scan, 1, forms).is_ok();
    if let Some(k) = key {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= REMEMBERED_SCANS {
            seen.clear();
        }
        seen.insert(k, derives);
    }
    derives
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_weights_go_factored_and_small_ones_stay_dense() {
        let factored = |m, n| {
            state_bytes(StateForm::Factored, m, n, 16) < state_bytes(StateForm::Dense, m, n, 16)
        };
        assert!(factored(64, 64));
        assert!(factored(64, 256));
        assert!(!factored(4, 4));
        assert!(!factored(1, 256));
    }

    #[test]
    fn decode_states_parse() {
        assert_eq!("auto".parse::<DecodeState>(), Ok(DecodeState::Auto));
        assert_eq!("factored".parse::<DecodeState>(), Ok(DecodeState::Factored));
        assert!("sparse".parse::<DecodeState>().is_err());
    }
}
