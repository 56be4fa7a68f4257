//! Update rules written in the language (`rule NAME(coefficients) { ... }`): a linear
//! recurrence over the per-token gradient, as the compiler keeps it after checking the rule.
//!
//! The rule's vector is `x = [state; carries]` (one entry per tensor of the state's shape).
//! Per token `t` of a mini-batch, with `g_t` the gradient at the mini-batch's starting state:
//!
//! ```text
//! x_t   = T_t x_{t−1} + b_t g_t          T_t: n×n, b_t: n  (n = 1 + carries)
//! read_t = u_t · x_t                      what token t's output reads
//! ```
//!
//! and the mini-batch hands on `E x_{k−1}`, its last `x` through the rule's end map `E` (the
//! identity when the rule has no `end` statements; e.g. `minibatch_gd` folds its partial sum
//! into the state and zeroes it there). Every entry of `T_t`, `b_t` and `u_t` is a polynomial
//! ([`Poly`]) in the rule's per-token coefficients at token `t`, and every entry of `E` one in
//! the coefficients of the mini-batch's last token. The chunked form
//! of a mini-batch (mixing weights `u_i T_i ⋯ T_{j+1} b_j`, carry weights `u_i T_i ⋯ T_0`) is
//! derived from them by the scan lowering (`passes/src/lower_scan/rule.rs`).

use serde::{Deserialize, Serialize};

/// A polynomial in the rule's coefficients: `Σ c · Π coef[i]` over its monomials, each a
/// constant and the (sorted) indices of the coefficients it multiplies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Poly(pub Vec<(f64, Vec<usize>)>);

impl Poly {
    /// The zero polynomial.
    pub fn zero() -> Poly {
        Poly(Vec::new())
    }

    /// A constant.
    pub fn constant(c: f64) -> Poly {
        Poly(vec![(c, Vec::new())]).normalized()
    }

    /// Coefficient `i`.
    pub fn coefficient(i: usize) -> Poly {
        Poly(vec![(1.0, vec![i])])
    }

    /// Whether it is identically zero.
    pub fn is_zero(&self) -> bool {
        self.0.is_empty()
    }

    /// Like monomials merged, zero ones dropped, in a canonical order.
    pub fn normalized(mut self) -> Poly {
        for (_, m) in &mut self.0 {
            m.sort_unstable();
        }
        self.0.sort_by(|a, b| a.1.cmp(&b.1));
        let mut out: Vec<(f64, Vec<usize>)> = Vec::with_capacity(self.0.len());
        for (c, m) in self.0 {
            match out.last_mut() {
                Some(last) if last.1 == m => last.0 += c,
                _ => out.push((c, m)),
            }
        }
        out.retain(|(c, _)| *c != 0.0);
        Poly(out)
    }

    /// `self + other`.
    pub fn add(&self, other: &Poly) -> Poly {
        Poly(self.0.iter().chain(&other.0).cloned().collect()).normalized()
    }

    /// `c · self`.
    pub fn scale(&self, c: f64) -> Poly {
        Poly(self.0.iter().map(|(k, m)| (k * c, m.clone())).collect()).normalized()
    }

    /// `self · other`.
    pub fn mul(&self, other: &Poly) -> Poly {
        let mut out = Vec::with_capacity(self.0.len() * other.0.len());
        for (a, ma) in &self.0 {
            for (b, mb) in &other.0 {
                let mut m = ma.clone();
                m.extend(mb);
                out.push((a * b, m));
            }
        }
        Poly(out).normalized()
    }

    /// Its value for the coefficients' values `values` (missing ones read as 0).
    pub fn eval(&self, values: &[f64]) -> f64 {
        self.0
            .iter()
            .map(|(c, m)| {
                m.iter()
                    .fold(*c, |acc, &i| acc * values.get(i).copied().unwrap_or(0.0))
            })
            .sum()
    }

    /// The same polynomial with coefficient `i` renamed `to(i)`.
    pub fn renumbered(&self, to: impl Fn(usize) -> usize) -> Poly {
        Poly(
            self.0
                .iter()
                .map(|(c, m)| (*c, m.iter().map(|&i| to(i)).collect()))
                .collect(),
        )
        .normalized()
    }

    /// The highest coefficient index it uses, if any.
    pub fn max_coefficient(&self) -> Option<usize> {
        self.0.iter().flat_map(|(_, m)| m.iter().copied()).max()
    }
}

/// A checked update rule: the recurrence of the module doc.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearRule {
    /// The rule's name (for display only).
    pub name: String,
    /// The rule's coefficients, in the order of the scan's coefficient operands.
    pub coefficients: Vec<String>,
    /// The carries' names, in order (entries `1..` of `x`).
    pub carries: Vec<String>,
    /// `T_t`, row-major `n × n`: row `p` says how entry `p` of `x_t` is made of `x_{t−1}`.
    pub transition: Vec<Vec<Poly>>,
    /// `b_t`: the gradient's weight in every entry of `x_t`.
    pub gradient: Vec<Poly>,
    /// `u_t`: what token `t` reads, `u_t · x_t`.
    pub read: Vec<Poly>,
    /// `E`, row-major `n × n`, at the mini-batch's last token: what the mini-batch hands on is
    /// `E x_{k−1}`. `None`: the identity (a rule without `end` statements). Absent in programs
    /// serialized before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Vec<Vec<Poly>>>,
}

impl LinearRule {
    /// `n = 1 + carries`: the entries of the rule's vector.
    pub fn size(&self) -> usize {
        1 + self.carries.len()
    }

    /// The same rule with coefficient `p` moved to the front (the others keep their order): the
    /// scan's first coefficient slot is the one that may hold a value per position.
    pub fn with_coefficient_first(&self, p: usize) -> LinearRule {
        let to = |i: usize| match i.cmp(&p) {
            std::cmp::Ordering::Equal => 0,
            std::cmp::Ordering::Less => i + 1,
            std::cmp::Ordering::Greater => i,
        };
        let row = |r: &[Poly]| r.iter().map(|q| q.renumbered(to)).collect::<Vec<_>>();
        let mut coefficients = self.coefficients.clone();
        if p < coefficients.len() {
            let c = coefficients.remove(p);
            coefficients.insert(0, c);
        }
        LinearRule {
            name: self.name.clone(),
            coefficients,
            carries: self.carries.clone(),
            transition: self.transition.iter().map(|r| row(r)).collect(),
            gradient: row(&self.gradient),
            read: row(&self.read),
            end: self
                .end
                .as_ref()
                .map(|e| e.iter().map(|r| row(r)).collect()),
        }
    }

    /// Whether the rule has the documented shape (`n × n`, `n`, `n`) and uses no coefficient
    /// beyond its list.
    pub fn check(&self) -> Result<(), String> {
        let n = self.size();
        let square = |m: &[Vec<Poly>]| m.len() == n && m.iter().all(|r| r.len() == n);
        if !square(&self.transition)
            || !self.end.as_deref().is_none_or(square)
            || self.gradient.len() != n
            || self.read.len() != n
        {
            return Err(format!(
                "rule `{}`: the transition and end map must be {n}x{n} and the gradient and read weights {n} long",
                self.name
            ));
        }
        let used = self
            .transition
            .iter()
            .flatten()
            .chain(self.end.iter().flatten().flatten())
            .chain(&self.gradient)
            .chain(&self.read)
            .filter_map(Poly::max_coefficient)
            .max();
        if let Some(i) = used {
            if i >= self.coefficients.len() {
                return Err(format!(
                    "rule `{}` uses coefficient #{i} but has {}",
                    self.name,
                    self.coefficients.len()
                ));
            }
        }
        Ok(())
    }
}
