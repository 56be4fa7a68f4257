//! Which loops of a loop nest can run on different GPU threads: an affine independence test on
//! the nest's element accesses.
//!
//! An index is decomposed into `Σ c·atom + k`, where an atom is a loop variable or a `/` or `%`
//! subterm taken as a whole. For a set `P` of the nest's loop variables, iterations with
//! different values of `P` are independent when, for every buffer the nest writes, every access
//! to it (load or store)
//!
//! - has the same nonzero coefficient for each variable of `P`,
//! - has the same terms in the *fixed* variables (those of enclosing loops, the same for every
//!   thread) and no `/`/`%` atom mentioning a variable of `P`,
//!
//! and the rest (terms in the other variables of the nest, `/`/`%` atoms over them, constants),
//! taken over all those accesses, lies in an interval `[lo, hi]` narrower than the smallest
//! step of `P`, with each larger step exceeding the span of the smaller ones (a mixed-radix
//! condition). Then two accesses from different values of `P` can never name the same element.
//! The test is sufficient, not necessary: it may refuse a nest that is in fact parallel. A
//! data-dependent index ([`Index::Load`]) has no decomposition, so a written buffer accessed
//! through one (a `scatter_add`) keeps its nest serial.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use tttc_ir::kernel::{Access, BufId, Index, Stmt, VarId};

/// Every access in `body` (see [`Stmt::for_each_access`]), with the extents of the loops it
/// binds.
pub(crate) fn accesses<'a>(
    body: &'a [Stmt],
    out: &mut Vec<Access<'a>>,
    extents: &mut HashMap<VarId, usize>,
) {
    for s in body {
        s.walk(&mut |s| {
            if let Stmt::Loop { var, extent, .. } = s {
                extents.insert(*var, *extent);
            }
            true
        });
        s.for_each_access(&mut |a| out.push(a));
    }
}

/// A term of an affine decomposition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Atom {
    Var(VarId),
    /// A `/` or `%` subterm, by its printed form.
    Opaque(String),
}

/// `Σ coeff·atom + konst`, with the opaque atoms' subterms kept for interval bounds.
#[derive(Default)]
struct Affine<'a> {
    terms: BTreeMap<Atom, i64>,
    opaque: HashMap<String, &'a Index>,
    konst: i64,
}

fn decompose<'a>(ix: &'a Index, scale: i64, a: &mut Affine<'a>) -> Option<()> {
    match ix {
        Index::Const(c) => a.konst = a.konst.checked_add(c.checked_mul(scale)?)?,
        Index::Var(v) => {
            let t = a.terms.entry(Atom::Var(*v)).or_insert(0);
            *t = t.checked_add(scale)?;
        }
        Index::Add(x, y) => {
            decompose(x, scale, a)?;
            decompose(y, scale, a)?;
        }
        Index::Mul(x, c) => decompose(x, scale.checked_mul(*c)?, a)?,
        Index::Div(..) | Index::Rem(..) => {
            let key = ix.to_string();
            a.opaque.insert(key.clone(), ix);
            let t = a.terms.entry(Atom::Opaque(key)).or_insert(0);
            *t = t.checked_add(scale)?;
        }
        // A data-dependent index (a row by an id) has no affine form: an access through one
        // to a written buffer keeps its nest serial.
        Index::Load { .. } => return None,
    }
    Some(())
}

/// The range of `ix` when every variable `v` ranges over `0..extents[v]` (fixed variables,
/// absent from `extents`, make it unknown).
fn interval(ix: &Index, extents: &HashMap<VarId, usize>) -> Option<(i64, i64)> {
    Some(match ix {
        Index::Const(c) => (*c, *c),
        Index::Var(v) => (0, i64::try_from(*extents.get(v)?).ok()?.checked_sub(1)?),
        Index::Add(a, b) => {
            let (a, b) = (interval(a, extents)?, interval(b, extents)?);
            (a.0.checked_add(b.0)?, a.1.checked_add(b.1)?)
        }
        Index::Mul(a, c) => {
            let (lo, hi) = interval(a, extents)?;
            let (x, y) = (lo.checked_mul(*c)?, hi.checked_mul(*c)?);
            (x.min(y), x.max(y))
        }
        Index::Div(a, c) if *c > 0 => {
            let (lo, hi) = interval(a, extents)?;
            if lo < 0 {
                return None;
            }
            (lo / c, hi / c)
        }
        Index::Rem(a, c) if *c > 0 => {
            let (lo, hi) = interval(a, extents)?;
            if lo < 0 {
                return None;
            }
            if hi < *c {
                (lo, hi)
            } else {
                (0, c - 1)
            }
        }
        Index::Div(..) | Index::Rem(..) => return None,
        Index::Load { bound, .. } => (0, bound.checked_sub(1)?),
    })
}

/// The part of one access the test compares.
struct Split {
    /// Coefficients of the candidate variables.
    par: BTreeMap<VarId, i64>,
    /// Terms in fixed atoms.
    fixed: BTreeMap<Atom, i64>,
    /// Range of everything else.
    lo: i64,
    hi: i64,
}

fn split(
    ix: &Index,
    par: &[VarId],
    fixed: &BTreeSet<VarId>,
    extents: &HashMap<VarId, usize>,
) -> Option<Split> {
    let mut a = Affine::default();
    decompose(ix, 1, &mut a)?;
    let mut s = Split {
        par: BTreeMap::new(),
        fixed: BTreeMap::new(),
        lo: a.konst,
        hi: a.konst,
    };
    for (atom, c) in a.terms {
        if c == 0 {
            continue;
        }
        let (vars, sub) = match &atom {
            Atom::Var(v) => (BTreeSet::from([*v]), None),
            Atom::Opaque(k) => {
                let sub = *a.opaque.get(k)?;
                (sub.vars(), Some(sub))
            }
        };
        if let (Atom::Var(v), true) = (&atom, par.contains(&atom_var(&atom))) {
            s.par.insert(*v, c);
        } else if vars.iter().any(|v| par.contains(v)) {
            return None; // a candidate inside `/` or `%`
        } else if vars.iter().all(|v| fixed.contains(v)) {
            s.fixed.insert(atom, c);
        } else {
            let (lo, hi) = match sub {
                Some(sub) => interval(sub, extents)?,
                None => interval(&Index::Var(atom_var(&atom)), extents)?,
            };
            let (x, y) = (lo.checked_mul(c)?, hi.checked_mul(c)?);
            s.lo = s.lo.checked_add(x.min(y))?;
            s.hi = s.hi.checked_add(x.max(y))?;
        }
    }
    Some(s)
}

fn atom_var(a: &Atom) -> VarId {
    match a {
        Atom::Var(v) => *v,
        Atom::Opaque(_) => VarId(u32::MAX),
    }
}

/// Whether iterations with different values of the variables `par` (with their extents in
/// `extents`) never touch an element another one writes (see the module documentation).
/// `fixed` are the variables bound outside the nest.
pub(crate) fn independent(
    accesses: &[Access<'_>],
    par: &[VarId],
    fixed: &BTreeSet<VarId>,
    extents: &HashMap<VarId, usize>,
) -> bool {
    let written: BTreeSet<BufId> = accesses.iter().filter(|a| a.write).map(|a| a.buf).collect();
    for buf in written {
        let mut first: Option<Split> = None;
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for a in accesses.iter().filter(|a| a.buf == buf) {
            let Some(s) = split(a.index, par, fixed, extents) else {
                return false;
            };
            if s.par.len() != par.len() {
                return false; // a candidate with coefficient 0
            }
            lo = lo.min(s.lo);
            hi = hi.max(s.hi);
            match &first {
                None => first = Some(s),
                Some(f) if f.par == s.par && f.fixed == s.fixed => {}
                Some(_) => return false,
            }
        }
        let Some(f) = first else { continue };
        let mut steps: Vec<(i64, i64)> = Vec::new();
        for (v, c) in &f.par {
            let Some(n) = extents.get(v).and_then(|&n| i64::try_from(n).ok()) else {
                return false;
            };
            steps.push((c.checked_abs().unwrap_or(i64::MAX), n));
        }
        steps.sort_unstable();
        let Some(mut span) = hi.checked_sub(lo) else {
            return false;
        };
        for (c, n) in steps {
            if c <= span {
                return false;
            }
            let Some(next) = c.checked_mul(n - 1).and_then(|x| x.checked_add(span)) else {
                return false;
            };
            span = next;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(i: u32) -> Index {
        Index::Var(VarId(i))
    }

    fn acc(buf: u32, index: &Index, write: bool) -> Access<'_> {
        Access {
            buf: BufId(buf),
            index,
            write,
        }
    }

    #[test]
    fn matmul_rows_and_columns_are_independent_but_not_the_contraction() {
        // C[m*8 + n] += A[m*4 + k] * B[k*8 + n], m in 0..3, k in 0..4, n in 0..8.
        let c = Index::sum(Index::scaled(v(0), 8), v(2));
        let a = Index::sum(Index::scaled(v(0), 4), v(1));
        let b = Index::sum(Index::scaled(v(1), 8), v(2));
        let xs = [
            acc(0, &c, false),
            acc(1, &a, false),
            acc(2, &b, false),
            acc(0, &c, true),
        ];
        let ext = HashMap::from([(VarId(0), 3), (VarId(1), 4), (VarId(2), 8)]);
        let none = BTreeSet::new();
        assert!(independent(&xs, &[VarId(0), VarId(2)], &none, &ext));
        // `n` alone with `m` ranging: true, but beyond this test (m's stride is not compared
        // with n's span); with `m` fixed by an enclosing loop it is proven.
        assert!(!independent(&xs, &[VarId(2)], &none, &ext));
        assert!(independent(
            &xs,
            &[VarId(2)],
            &BTreeSet::from([VarId(0)]),
            &ext
        ));
        assert!(!independent(&xs, &[VarId(1)], &none, &ext));
        assert!(!independent(&xs, &[VarId(0), VarId(1)], &none, &ext));
    }

    #[test]
    fn overlapping_windows_and_shifted_reads_are_refused() {
        // out[i] = x[i] + out[i + 1]: iteration i reads what i+1 writes.
        let i = v(0);
        let i1 = Index::sum(v(0), Index::Const(1));
        let xs = [acc(0, &i1, false), acc(0, &i, true)];
        let ext = HashMap::from([(VarId(0), 10)]);
        assert!(!independent(&xs, &[VarId(0)], &BTreeSet::new(), &ext));
        // out[i*2 + j], j in 0..3: rows overlap.
        let w = Index::sum(Index::scaled(v(0), 2), v(1));
        let ext = HashMap::from([(VarId(0), 10), (VarId(1), 3)]);
        assert!(!independent(
            &[acc(0, &w, true)],
            &[VarId(0)],
            &BTreeSet::new(),
            &ext
        ));
    }

    #[test]
    fn fixed_terms_must_agree() {
        // s[b*16 + i] written, s[i] read: different blocks of `b` are fixed, but the terms
        // differ between the accesses, so nothing is proven.
        let w = Index::sum(Index::scaled(v(9), 16), v(0));
        let r = v(0);
        let ext = HashMap::from([(VarId(0), 16)]);
        let fixed = BTreeSet::from([VarId(9)]);
        assert!(independent(&[acc(0, &w, true)], &[VarId(0)], &fixed, &ext));
        assert!(!independent(
            &[acc(0, &w, true), acc(0, &r, false)],
            &[VarId(0)],
            &fixed,
            &ext
        ));
    }
}
