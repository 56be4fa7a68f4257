//! Products of a few rows against a right operand stored by columns: `C[i, j] (+)= Σ_k A[i, k]
//! · B[k, j]` with `2 ≤ m ≤ 8`, the rows of `A` and the columns of `B` contiguous. This is a
//! batch of tokens' projections while decoding (a weight `W` stored `[out, in]` is read as
//! `B = Wᵀ`): each output element is a dot product of a row of `A` with a row of `W`.
//!
//! The [`gemm`] crate runs these 3–40× slower than one pass over `B` (measured on an AMD EPYC:
//! `[4, 768] @ [768, 32000]` 22.5 ms against 7.4 ms here, `[2, 2048] @ [2048, 768]` 4.5 ms
//! against 0.1 ms; its one-row path is fast and stays in use), so a decode step at batch 4
//! took 2.7× the time of one at batch 1 instead of about the same (`bench/AOT.md`). Here each
//! column of `B` is read once, and every row of `A` (a few KiB, in L1) is multiplied with it:
//! vector accumulators, summed across lanes at the end. Up to 4 rows take one column at a time
//! with two vectors of it in flight (one sequential stream through `B`: on the EPYC 5.0 and 6.1
//! ms for `[2|4, 768] @ [768, 32000]` against 7.2 and 8.6 ms taking 8 or 4 columns at a time);
//! 5–8 rows take 2–4 columns at a time (their rows do not leave room in L1 and registers
//! otherwise). AVX-512 only (chosen at run time); without it the crate runs them as before.

/// One narrow product: `m` rows of `a` (row `i` at `a + i·lda`, elements contiguous), `n`
/// columns of `b` (column `j` at `b + j·ldb`, contiguous over `k`), `c[i, j]` at `c + i·rsc +
/// j·csc`, overwritten or (with `accumulate`) added to.
#[derive(Clone, Copy)]
pub(super) struct Narrow<T> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: *const T,
    pub lda: isize,
    pub b: *const T,
    pub ldb: isize,
    pub c: *mut T,
    pub rsc: isize,
    pub csc: isize,
    pub accumulate: bool,
}

/// The fewest and most rows a narrow product has.
pub(super) const ROWS: std::ops::RangeInclusive<usize> = 2..=8;

/// Element types with a narrow kernel.
pub(super) trait NarrowElem: Copy + Sized {
    /// Runs `p` and returns `true`, or returns `false` without touching anything when this CPU
    /// has no kernel for it (no AVX-512, or `m` outside [`ROWS`]).
    ///
    /// # Safety
    ///
    /// Every element `p` names is inside its buffer; `c`'s elements are distinct and not
    /// touched by anyone else meanwhile.
    unsafe fn run_narrow(p: &Narrow<Self>) -> bool;
}

#[cfg(target_arch = "x86_64")]
macro_rules! narrow_kernel {
    ($t:ty, $lanes:expr, $mask:ty, $zero:ident, $load:ident, $maskz_load:ident, $fmadd:ident,
     $reduce:ident) => {
        impl NarrowElem for $t {
            unsafe fn run_narrow(p: &Narrow<$t>) -> bool {
                if !ROWS.contains(&p.m) || !std::is_x86_feature_detected!("avx512f") {
                    return false;
                }
                // SAFETY: AVX-512F is present; the caller's contract for the elements.
                // `M·J` accumulators and `J` columns stay in the 32 vector registers.
                unsafe {
                    match p.m {
                        // Up to 4 rows: one column at a time, two vectors of it in flight
                        // (one sequential stream through `b`, measured 25-30% faster than
                        // several columns at a time); more rows: a few columns at a time.
                        2 => block::<2, 1, 2>(p),
                        3 => block::<3, 1, 2>(p),
                        4 => block::<4, 1, 2>(p),
                        5 => block::<5, 4, 1>(p),
                        6 => block::<6, 3, 1>(p),
                        7 => block::<7, 3, 1>(p),
                        _ => block::<8, 2, 1>(p),
                    }
                }
                true
            }
        }

        /// `p` with exactly `M` rows, `J` columns of `b` at a time (the last columns one by
        /// one), `U` vectors of each column in flight: `M·J·U` accumulators plus `J` columns in
        /// registers.
        #[target_feature(enable = "avx512f")]
        unsafe fn block<const M: usize, const J: usize, const U: usize>(p: &Narrow<$t>) {
            use std::arch::x86_64::*;
            let full = p.k / $lanes * $lanes;
            let unrolled = p.k / ($lanes * U) * ($lanes * U);
            let tail = ((1u32 << (p.k - full)) - 1) as $mask;
            let mut j = 0;
            while j < p.n {
                let width = if j + J <= p.n { J } else { 1 };
                let mut acc = [[[$zero(); U]; J]; M];
                let column = |jj: usize| -> *const $t {
                    // SAFETY: column `j + jj < n` of `b` (the caller's contract).
                    unsafe { p.b.offset((j + jj) as isize * p.ldb) }
                };
                let row = |i: usize| -> *const $t {
                    // SAFETY: row `i < m` of `a` (the caller's contract).
                    unsafe { p.a.offset(i as isize * p.lda) }
                };
                let mut kk = 0;
                // Vector `u` of every step of `U` vectors, then single vectors (`u = 0`), then
                // the masked tail.
                while kk < full {
                    let lanes = if kk < unrolled { U } else { 1 };
                    for u in 0..lanes {
                        let at = kk + u * $lanes;
                        let mut b = [$zero(); J];
                        for (jj, v) in b.iter_mut().enumerate().take(width) {
                            // SAFETY: elements at..at + lanes <= k of the column.
                            *v = unsafe { $load(column(jj).add(at)) };
                        }
                        for (i, acc_i) in acc.iter_mut().enumerate() {
                            // SAFETY: elements at..at + lanes <= k of the row.
                            let a = unsafe { $load(row(i).add(at)) };
                            for jj in 0..width {
                                acc_i[jj][u] = $fmadd(a, b[jj], acc_i[jj][u]);
                            }
                        }
                    }
                    kk += lanes * $lanes;
                }
                if full < p.k {
                    let mut b = [$zero(); J];
                    for (jj, v) in b.iter_mut().enumerate().take(width) {
                        // SAFETY: the masked lanes are elements full..k of the column.
                        *v = unsafe { $maskz_load(tail, column(jj).add(full)) };
                    }
                    for (i, acc_i) in acc.iter_mut().enumerate() {
                        // SAFETY: as above, of the row.
                        let a = unsafe { $maskz_load(tail, row(i).add(full)) };
                        for jj in 0..width {
                            acc_i[jj][0] = $fmadd(a, b[jj], acc_i[jj][0]);
                        }
                    }
                }
                for (i, acc_i) in acc.iter().enumerate() {
                    for (jj, parts) in acc_i.iter().enumerate().take(width) {
                        let s = parts.iter().map(|&v| $reduce(v)).sum::<$t>();
                        // SAFETY: element (i, j + jj) of `c` (the caller's contract).
                        unsafe {
                            let at = p.c.offset(i as isize * p.rsc + (j + jj) as isize * p.csc);
                            *at = if p.accumulate { *at + s } else { s };
                        }
                    }
                }
                j += width;
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod f32_kernel {
    use super::*;
    narrow_kernel!(
        f32,
        16,
        __mmask16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_maskz_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_reduce_add_ps
    );
}

#[cfg(target_arch = "x86_64")]
mod f64_kernel {
    use super::*;
    narrow_kernel!(
        f64,
        8,
        __mmask8,
        _mm512_setzero_pd,
        _mm512_loadu_pd,
        _mm512_maskz_loadu_pd,
        _mm512_fmadd_pd,
        _mm512_reduce_add_pd
    );
}

#[cfg(not(target_arch = "x86_64"))]
impl NarrowElem for f32 {
    unsafe fn run_narrow(_: &Narrow<f32>) -> bool {
        false
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl NarrowElem for f64 {
    unsafe fn run_narrow(_: &Narrow<f64>) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `C (+)= A Bᵀ` by the definition, in f64.
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: &[f64],
        w: &[f64],
        c0: &[f64],
        acc: bool,
    ) -> Vec<f64> {
        let mut c = c0.to_vec();
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|t| a[i * k + t] * w[j * k + t]).sum();
                c[i * n + j] = if acc { c[i * n + j] + s } else { s };
            }
        }
        c
    }

    /// Every row count, column counts around the blocks, depths around the lanes (unrolled
    /// steps, single vectors, tails), both modes, both types: equal to the definition within
    /// the rounding bound of any summation order, `(k + 4)·eps·(Σ_t |a_it·w_jt| + |c_ij|)` (the
    /// `+ 4` covers rounding the f64 entries to f32 and the final add of `c`).
    #[test]
    fn narrow_products_match_the_definition() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512 here: the kernels are not run (the gemm crate is used)");
            return;
        }
        let value = |s: usize| ((s * 7919 + 13) % 101) as f64 / 101.0 - 0.5;
        for m in ROWS {
            for n in [1, 3, 8, 9, 17] {
                for k in [1, 7, 16, 17, 40, 48, 75] {
                    for accumulate in [false, true] {
                        let a: Vec<f64> = (0..m * k).map(value).collect();
                        let w: Vec<f64> = (0..n * k).map(|s| value(s + 5)).collect();
                        let c0: Vec<f64> = (0..m * n).map(|s| value(s + 11)).collect();
                        let want = reference(m, n, k, &a, &w, &c0, accumulate);
                        let mut c64 = c0.clone();
                        let p = Narrow {
                            m,
                            n,
                            k,
                            a: a.as_ptr(),
                            lda: k as isize,
                            b: w.as_ptr(),
                            ldb: k as isize,
                            c: c64.as_mut_ptr(),
                            rsc: n as isize,
                            csc: 1,
                            accumulate,
                        };
                        // SAFETY: every element named is inside its vector.
                        assert!(unsafe { f64::run_narrow(&p) });
                        let (a32, w32): (Vec<f32>, Vec<f32>) = (
                            a.iter().map(|&x| x as f32).collect(),
                            w.iter().map(|&x| x as f32).collect(),
                        );
                        // `c` stored by columns this time: other strides.
                        let mut c32: Vec<f32> =
                            (0..m * n).map(|s| c0[(s % m) * n + s / m] as f32).collect();
                        let p32 = Narrow {
                            m,
                            n,
                            k,
                            a: a32.as_ptr(),
                            lda: k as isize,
                            b: w32.as_ptr(),
                            ldb: k as isize,
                            c: c32.as_mut_ptr(),
                            rsc: 1,
                            csc: m as isize,
                            accumulate,
                        };
                        // SAFETY: as above.
                        assert!(unsafe { f32::run_narrow(&p32) });
                        for i in 0..m {
                            for j in 0..n {
                                let e = want[i * n + j];
                                let magnitude: f64 = (0..k)
                                    .map(|t| (a[i * k + t] * w[j * k + t]).abs())
                                    .sum::<f64>()
                                    + c0[i * n + j].abs();
                                let bound = |eps: f64| (k + 4) as f64 * eps * magnitude;
                                let what = format!("m={m} n={n} k={k} acc={accumulate} ({i},{j})");
                                let (e64, e32) = (
                                    (c64[i * n + j] - e).abs(),
                                    (f64::from(c32[j * m + i]) - e).abs(),
                                );
                                assert!(e64 <= bound(f64::EPSILON), "{what}: {e64:e}");
                                assert!(e32 <= bound(f64::from(f32::EPSILON)), "{what}: {e32:e}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// One row is not a narrow product (the crate's one-row path is faster): refused.
    #[test]
    fn one_row_is_left_to_the_crate() {
        let a = [1.0f32; 4];
        let mut c = [0.0f32; 1];
        let p = Narrow {
            m: 1,
            n: 1,
            k: 4,
            a: a.as_ptr(),
            lda: 4,
            b: a.as_ptr(),
            ldb: 4,
            c: c.as_mut_ptr(),
            rsc: 1,
            csc: 1,
            accumulate: false,
        };
        // SAFETY: every element named is inside its array.
        assert!(!unsafe { f32::run_narrow(&p) });
        assert_eq!(c[0], 0.0);
    }
}
