//! The chunked form of an update rule written as code ([`LinearRule`]), derived generically
//! from its recurrence `x_t = T_t x_{t−1} + b_t g_t`, `read_t = u_t · x_t` (`x = [W; carries]`,
//! `n` entries; see `tttc_ir::rule`). For the tokens `i, j = 0..k−1` of a mini-batch starting
//! from `x_{−1}`, with `Q[i, j] = T_i ⋯ T_{j+1}` (the identity on the diagonal, 0 above it):
//!
//! ```text
//! read_i = Σ_c C_c[i] x_{−1,c} − Σ_{j≤i} M[i, j] g_j
//!   M[i, j]  = −u_i Q[i, j] b_j               (mixing weights)
//!   C_c[i]   = u_i Q[i, 0] T_0[:, c]          (carry weights: first row of u_i T_i ⋯ T_0)
//! x'_c = Σ_d F_{c,d} x_{−1,d} − Σ_j N_c[j] g_j   (the next state and carries)
//!   F_{c,d} = (Q[k−1, 0] T_0)[c, d],  N_c[j] = −(Q[k−1, j] b_j)[c]
//! ```
//!
//! and, for a rule with `end` statements, the end map on the last token's coefficients:
//! `x'' = E_{k−1} x'`. An entry whose row of `E` is zero (a carry reset at every mini-batch's
//! end) starts every mini-batch at zero, so its terms in `x_{−1}` are left out. Every entry of `Q` is a `[k, k]` tensor, built by Hillis–Steele doubling of `n × n` matrices
//! of them (`⌈log2 K⌉` rounds: a shift and a matrix product, entries that are structurally zero
//! skipped), so factors may be zero or negative (no `exp ∘ log`). The per-token reads and next
//! states then have `momentum_gd`'s shape — `Σ_c C_c ⊙ x_c − mix(M, G)` — and go through the
//! same dual-form rewrite.

// Matrix products over entry indices read as the formulas above.
#![allow(clippy::needless_range_loop)]

use super::{LowerScanError, StepBuilder};
use tttc_ir::{BinaryOp, DType, Dim, LinearRule, NodeId, Op, Poly, TensorType};

/// A `[k]`, `[k, k]` or `[1, k]` entry that may be structurally zero (`None`).
type Entry = Option<NodeId>;

impl StepBuilder<'_> {
    /// `p` over the coefficient blocks `coefs` (each `[k]`), `None` if it is zero.
    fn poly(&mut self, p: &Poly, coefs: &[NodeId], dtype: DType) -> Result<Entry, LowerScanError> {
        let mut sum: Entry = None;
        for (c, m) in &p.0 {
            let mut term: Entry = None;
            for &i in m {
                let x = *coefs
                    .get(i)
                    .ok_or_else(|| self.malformed(format!("the rule uses coefficient #{i}")))?;
                term = Some(match term {
                    None => x,
                    Some(t) => self.binary(BinaryOp::Mul, t, x)?,
                });
            }
            let term = match term {
                None => {
                    // A constant: as a `[k]` block, so that every entry has the same shape.
                    let one = self.leaf(
                        Op::Iota {
                            len: self.k.clone(),
                        },
                        dtype,
                    )?;
                    let zero_one = self.g.add_const(0.0, dtype);
                    let zeros = self.binary(BinaryOp::Mul, one, zero_one)?;
                    let cst = self.g.add_const(*c, dtype);
                    self.binary(BinaryOp::Add, zeros, cst)?
                }
                Some(t) if *c == 1.0 => t,
                Some(t) => {
                    let cst = self.g.add_const(*c, dtype);
                    self.binary(BinaryOp::Mul, t, cst)?
                }
            };
            sum = Some(match sum {
                None => term,
                Some(s) => self.binary(BinaryOp::Add, s, term)?,
            });
        }
        Ok(sum)
    }

    /// `Σ` of the present terms (`None` if none is).
    fn sum_entries(&mut self, terms: Vec<Entry>) -> Result<Entry, LowerScanError> {
        let mut sum: Entry = None;
        for t in terms.into_iter().flatten() {
            sum = Some(match sum {
                None => t,
                Some(s) => self.binary(BinaryOp::Add, s, t)?,
            });
        }
        Ok(sum)
    }

    /// `Σ_q rows[q] @ m[q][c]`: column `c` of a block matrix `m` weighted by the block row
    /// `rows`, the products with a zero block left out (zero if all are).
    fn matmul_column(
        &mut self,
        rows: &[Entry],
        m: &[Vec<Entry>],
        c: usize,
    ) -> Result<Entry, LowerScanError> {
        let mut terms = Vec::with_capacity(rows.len());
        for (row, m_row) in rows.iter().zip(m) {
            terms.push(match (*row, m_row[c]) {
                (Some(x), Some(y)) => Some(self.add(Op::MatMul, &[x, y])?),
                _ => None,
            });
        }
        self.sum_entries(terms)
    }

    /// `a ⊙ b`, zero if either is.
    fn mul_entries(&mut self, a: Entry, b: Entry) -> Result<Entry, LowerScanError> {
        match (a, b) {
            (Some(a), Some(b)) => Ok(Some(self.binary(BinaryOp::Mul, a, b)?)),
            _ => Ok(None),
        }
    }

    /// `Q[i, j] = T_i ⋯ T_{j+1}` for `j ≤ i` (identity on the diagonal), 0 above: `n × n`
    /// entries, each `[k, k]` (see the module doc).
    fn rule_segment_products(
        &mut self,
        t: &[Vec<Entry>],
        iota: NodeId,
        dtype: DType,
    ) -> Result<Vec<Vec<Entry>>, LowerScanError> {
        let k = self.k.clone();
        let n = t.len();
        if let Some(q) = self.triangular_segment_products(t, iota, dtype)? {
            return Ok(q);
        }
        let diff = self.index_diff(iota)?;
        let above = self.step_plus(diff, -0.5, dtype)?; // i > m
        let lower = self.step_plus(diff, 0.5, dtype)?; // i >= m
        let one = self.g.add_const(1.0, dtype);
        let not_above = self.binary(BinaryOp::Sub, one, above)?;
        // y[i, m] = T_i for i > m, the identity for i <= m.
        let mut y: Vec<Vec<Entry>> = vec![vec![None; n]; n];
        for p in 0..n {
            for q in 0..n {
                let picked = match t[p][q] {
                    Some(x) => {
                        let col = self.reshape(x, vec![k.clone(), Dim::Known(1)])?;
                        Some(self.binary(BinaryOp::Mul, above, col)?)
                    }
                    None => None,
                };
                y[p][q] = if p == q {
                    Some(match picked {
                        Some(x) => self.binary(BinaryOp::Add, x, not_above)?,
                        None => not_above,
                    })
                } else {
                    picked
                };
            }
        }
        let i_col = self.reshape(iota, vec![k.clone(), Dim::Known(1)])?;
        for r in 0..self.rounds {
            let by = 1usize << r;
            // Rows i < by are shifted in as 0; the identity there: + (1 − [i >= by]) on the
            // diagonal.
            let inside = self.step_plus(i_col, 0.5 - by as f64, dtype)?;
            let outside = self.binary(BinaryOp::Sub, one, inside)?;
            let mut shifted: Vec<Vec<Entry>> = vec![vec![None; n]; n];
            for p in 0..n {
                for q in 0..n {
                    let s = match y[p][q] {
                        Some(x) => Some(self.add(Op::Shift { axis: 0, by }, &[x])?),
                        None => None,
                    };
                    shifted[p][q] = match (s, p == q) {
                        (Some(s), true) => Some(self.binary(BinaryOp::Add, s, outside)?),
                        (None, true) => Some(outside),
                        (s, false) => s,
                    };
                }
            }
            // y ← y · shifted (later tokens on the left).
            let mut next: Vec<Vec<Entry>> = vec![vec![None; n]; n];
            for p in 0..n {
                for q in 0..n {
                    let mut terms = Vec::with_capacity(n);
                    for m in 0..n {
                        terms.push(self.mul_entries(y[p][m], shifted[m][q])?);
                    }
                    next[p][q] = self.sum_entries(terms)?;
                }
            }
            y = next;
        }
        for (p, row) in y.iter_mut().enumerate() {
            if let Some(x) = row[p] {
                row[p] = Some(self.binary(BinaryOp::Mul, x, lower)?);
            }
        }
        Ok(y)
    }

    /// `Q` of a 2×2 triangular transition (one off-diagonal entry structurally zero), without
    /// doubling matrices: the diagonal entries are scalar segment products, and the
    /// off-diagonal one a matrix product of them — for `T` upper triangular
    /// `Q01[i, j] = Σ_{j<m≤i} Q00[i, m] T01_m Q11[m−1, j]`, i.e.
    /// `Q00 @ (T01[:, None] ⊙ shift(Q11, 1))` (the shift puts row `m−1` at `m`; its zero first
    /// row and the zeros above the diagonal give the range of `m`); lower triangular the
    /// mirror. `None` if `T` is not of that form.
    fn triangular_segment_products(
        &mut self,
        t: &[Vec<Entry>],
        iota: NodeId,
        dtype: DType,
    ) -> Result<Option<Vec<Vec<Entry>>>, LowerScanError> {
        let [r0, r1] = t else { return Ok(None) };
        let (&[Some(t00), t01], &[t10, Some(t11)]) = (r0.as_slice(), r1.as_slice()) else {
            return Ok(None);
        };
        let (upper, off) = match (t01, t10) {
            (off, None) => (true, off),
            (None, off) => (false, off),
            _ => return Ok(None),
        };
        let k = self.k.clone();
        let q00 = self.segment_products(t00, iota, dtype)?;
        let q11 = self.segment_products(t11, iota, dtype)?;
        let off = match off {
            None => None,
            Some(x) => {
                // Upper: Q00 @ (x ⊙ shift(Q11)); lower: Q11 @ (x ⊙ shift(Q00)).
                let (left, right) = if upper { (q00, q11) } else { (q11, q00) };
                let shifted = self.add(Op::Shift { axis: 0, by: 1 }, &[right])?;
                let col = self.reshape(x, vec![k.clone(), Dim::Known(1)])?;
                let scaled = self.binary(BinaryOp::Mul, col, shifted)?;
                Some(self.add(Op::MatMul, &[left, scaled])?)
            }
        };
        Ok(Some(if upper {
            vec![vec![Some(q00), off], vec![None, Some(q11)]]
        } else {
            vec![vec![Some(q00), None], vec![off, Some(q11)]]
        }))
    }

    /// The per-token reads and the next states and carries of a rule written as code, in
    /// chunked form (see the module doc). `coefs` are its coefficient blocks `[k]`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rule_states(
        &mut self,
        rule: &LinearRule,
        states: &[NodeId],
        carries: &[NodeId],
        grads: &[NodeId],
        state_types: &[TensorType],
        coefs: &[NodeId],
        dtype: DType,
    ) -> Result<(Vec<NodeId>, Vec<NodeId>), LowerScanError> {
        let k = self.k.clone();
        let n = rule.size();
        if n != 2 || carries.len() != states.len() {
            return Err(self.malformed(format!(
                "rule `{}`: a scan runs rules of one carry per state",
                rule.name
            )));
        }
        rule.check().map_err(|m| self.malformed(m))?;
        let mut t: Vec<Vec<Entry>> = Vec::with_capacity(n);
        for row in &rule.transition {
            let mut r = Vec::with_capacity(n);
            for p in row {
                r.push(self.poly(p, coefs, dtype)?);
            }
            t.push(r);
        }
        let mut neg_b = Vec::with_capacity(n);
        for p in &rule.gradient {
            neg_b.push(self.poly(&p.scale(-1.0), coefs, dtype)?);
        }
        let mut u = Vec::with_capacity(n);
        for p in &rule.read {
            u.push(self.poly(p, coefs, dtype)?);
        }
        let iota = self.leaf(Op::Iota { len: k.clone() }, dtype)?;
        let onehot = self.last_row_selector(iota, dtype)?;
        let q = self.rule_segment_products(&t, iota, dtype)?;
        // T_0's entries as columns [k, 1] that are zero but at token 0.
        let neg_iota = self.add(
            Op::Unary {
                fun: tttc_ir::UnaryOp::Neg,
            },
            &[iota],
        )?;
        let first_only = self.step_plus(neg_iota, 0.5, dtype)?;
        let mut t0: Vec<Vec<Entry>> = vec![vec![None; n]; n];
        for p in 0..n {
            for c in 0..n {
                if let Some(x) = t[p][c] {
                    let x0 = self.binary(BinaryOp::Mul, x, first_only)?;
                    t0[p][c] = Some(self.reshape(x0, vec![k.clone(), Dim::Known(1)])?);
                }
            }
        }
        let rows = |b: &mut Self, x: Entry| -> Result<Entry, LowerScanError> {
            match x {
                Some(x) => Ok(Some(b.reshape(x, vec![Dim::Known(1), k.clone()])?)),
                None => Ok(None),
            }
        };
        let mut nb_row = Vec::with_capacity(n);
        for &x in &neg_b {
            nb_row.push(rows(self, x)?);
        }
        // A_q[i, j] = Σ_p u_i[p] Q[p][q][i, j].
        let mut a = Vec::with_capacity(n);
        for qi in 0..n {
            let mut terms = Vec::with_capacity(n);
            for p in 0..n {
                let up = match u[p] {
                    Some(x) => Some(self.reshape(x, vec![k.clone(), Dim::Known(1)])?),
                    None => None,
                };
                terms.push(self.mul_entries(up, q[p][qi])?);
            }
            a.push(self.sum_entries(terms)?);
        }
        // M[i, j] = Σ_q A_q[i, j] (−b_j[q]).
        let mut terms = Vec::with_capacity(n);
        for qi in 0..n {
            terms.push(self.mul_entries(a[qi], nb_row[qi])?);
        }
        let mixing = self
            .sum_entries(terms)?
            .ok_or_else(|| self.malformed("the rule's reads never see a gradient"))?;
        // C_c[i] = Σ_q (A_q @ T_0[q][c]) [k, 1].
        // An entry the end map zeroes (a carry reset at every mini-batch's end) starts every
        // mini-batch at zero — it starts the scan at zero too — so its start terms are left out.
        let zero_at_start: Vec<bool> = (0..n)
            .map(|c| {
                rule.end
                    .as_ref()
                    .is_some_and(|e| e[c].iter().all(Poly::is_zero))
            })
            .collect();
        let mut start_weights: Vec<Entry> = Vec::with_capacity(n);
        for c in 0..n {
            start_weights.push(match zero_at_start[c] {
                true => None,
                false => self.matmul_column(&a, &t0, c)?,
            });
        }
        let mut theta_all = Vec::with_capacity(states.len());
        for (((&w, &s), &g), ty) in states.iter().zip(carries).zip(grads).zip(state_types) {
            let start = self.weighted_start(&start_weights, &[w, s], ty, None)?;
            let mixed = self.add(Op::Mix, &[mixing, g])?;
            theta_all.push(match start {
                Some(start) => self.binary(BinaryOp::Sub, start, mixed)?,
                None => self.add(
                    Op::Unary {
                        fun: tttc_ir::UnaryOp::Neg,
                    },
                    &[mixed],
                )?,
            });
        }

        // The next x: row c of Q[k−1, ·].
        let mut next: Vec<Vec<NodeId>> = vec![Vec::with_capacity(states.len()); n];
        for (c, next_c) in next.iter_mut().enumerate() {
            let mut last_q: Vec<Entry> = Vec::with_capacity(n);
            for qi in 0..n {
                last_q.push(match q[c][qi] {
                    Some(x) => Some(self.add(Op::MatMul, &[onehot, x])?), // [1, k]
                    None => None,
                });
            }
            let mut weights: Vec<Entry> = Vec::with_capacity(n);
            for d in 0..n {
                let w = match zero_at_start[d] {
                    true => None,
                    false => self.matmul_column(&last_q, &t0, d)?,
                };
                weights.push(match w {
                    Some(w) => Some(self.reshape(w, Vec::new())?),
                    None => None,
                });
            }
            let mut terms = Vec::with_capacity(n);
            for qi in 0..n {
                terms.push(self.mul_entries(last_q[qi], nb_row[qi])?);
            }
            let mix_row = self.sum_entries(terms)?;
            for (((&w, &s), &g), ty) in states.iter().zip(carries).zip(grads).zip(state_types) {
                let start = self.weighted_start(&weights, &[w, s], ty, Some(()))?;
                let value = match mix_row {
                    Some(m) => {
                        let mixed = self.add(Op::Mix, &[m, g])?;
                        let mixed = self.reshape(mixed, ty.shape.0.clone())?;
                        match start {
                            Some(start) => self.binary(BinaryOp::Sub, start, mixed)?,
                            None => self.add(
                                Op::Unary {
                                    fun: tttc_ir::UnaryOp::Neg,
                                },
                                &[mixed],
                            )?,
                        }
                    }
                    None => match start {
                        Some(start) => start,
                        None => {
                            let zero = self.g.add_const(0.0, dtype);
                            self.binary(BinaryOp::Mul, w, zero)?
                        }
                    },
                };
                next_c.push(value);
            }
        }
        let next = match &rule.end {
            Some(end) => self.end_map(end, next, coefs, onehot, dtype)?,
            None => next,
        };
        let mut nexts: Vec<NodeId> = Vec::with_capacity(n * states.len());
        for c in next {
            nexts.extend(c);
        }
        Ok((theta_all, nexts))
    }

    /// The rule's end map at the mini-batch's last token: `x'_c = Σ_d E[c][d] x_d` for every
    /// state, with `E`'s entries evaluated on the last token's coefficients (`onehot`: the
    /// `[1, k]` last-row selector). `x[c][s]`: entry `c` of state `s`.
    fn end_map(
        &mut self,
        end: &[Vec<Poly>],
        x: Vec<Vec<NodeId>>,
        coefs: &[NodeId],
        onehot: NodeId,
        dtype: DType,
    ) -> Result<Vec<Vec<NodeId>>, LowerScanError> {
        let k = self.k.clone();
        let mut out = Vec::with_capacity(end.len());
        for row in end {
            let mut weights: Vec<Entry> = Vec::with_capacity(row.len());
            for p in row {
                weights.push(match self.poly(p, coefs, dtype)? {
                    Some(w) => {
                        let col = self.reshape(w, vec![k.clone(), Dim::Known(1)])?;
                        Some(self.last_scalar(onehot, col)?)
                    }
                    None => None,
                });
            }
            let states = x.first().map_or(0, Vec::len);
            let mut values = Vec::with_capacity(states);
            for s in 0..states {
                let mut terms = Vec::with_capacity(row.len());
                for (d, w) in weights.iter().enumerate() {
                    terms.push(match w {
                        Some(w) => Some(self.binary(BinaryOp::Mul, *w, x[d][s])?),
                        None => None,
                    });
                }
                values.push(match self.sum_entries(terms)? {
                    Some(v) => v,
                    None => {
                        // A zero row (a carry reset at the mini-batch's end).
                        let zero = self.g.add_const(0.0, dtype);
                        self.binary(BinaryOp::Mul, x[0][s], zero)?
                    }
                });
            }
            out.push(values);
        }
        Ok(out)
    }

    /// `Σ_c weight_c ⊙ x_c` for one state: per-token weights `[k, 1]` scale rows
    /// (`scalar = None`), scalar weights `[]` the whole tensor (`Some(())`).
    fn weighted_start(
        &mut self,
        weights: &[Entry],
        xs: &[NodeId],
        ty: &TensorType,
        scalar: Option<()>,
    ) -> Result<Entry, LowerScanError> {
        let mut terms = Vec::with_capacity(xs.len());
        for (&w, &x) in weights.iter().zip(xs) {
            terms.push(match w {
                Some(w) => {
                    let w = match scalar {
                        None => self.row_scale(w, ty)?,
                        Some(()) => w,
                    };
                    Some(self.binary(BinaryOp::Mul, w, x)?)
                }
                None => None,
            });
        }
        self.sum_entries(terms)
    }
}
