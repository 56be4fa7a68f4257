//! The matrix-product runtime of compiled kernels: [`tttc_gemm_f32`] and [`tttc_gemm_f64`],
//! which the native backends call for every [`Stmt::Gemm`](tttc_ir::kernel::Stmt::Gemm).
//!
//! A kernel passes a *descriptor*, an array of `i64` built at compile time by [`descriptor`],
//! and the three buffers' base pointers:
//!
//! ```c
//! void tttc_gemm_f32(const int64_t* desc, const float* a, const float* b, float* c);
//! void tttc_gemm_f64(const int64_t* desc, const double* a, const double* b, double* c);
//! ```
//!
//! The descriptor holds `m, n, k, accumulate, r` (`r` batch axes), then per operand `a`, `b`,
//! `c` its offset, row stride and column stride, then per batch axis its extent and the batch
//! strides of `a`, `b` and `c` ([`DESC_HEADER`] + 4·r values).
//!
//! The products are computed by the [`gemm`] crate (packed, cache-blocked, SIMD micro-kernels
//! chosen at run time for the CPU; the one faer and candle use), except products of 2 to 8 rows
//! against a right operand stored by columns (a batch of tokens' projections while decoding),
//! which [`super::narrow`] runs in one pass over that operand; on the worker pool of the
//! parallel loops ([`super::parallel`]): one product at a time on every thread, or, for a batch
//! of at least as many products as threads, whole products side by side.

use super::narrow::{Narrow, NarrowElem, ROWS};
use super::parallel::{on_a_worker_thread, pool, thread_count};
use gemm::Parallelism;
use tttc_ir::kernel::Gemm;

/// Below this many multiply-adds (all products of a statement together) the products run on
/// the calling thread: handing work to the pool costs about 15 µs on the development machine,
/// and a run that did so for every product caught up with the generated loop nest only at
/// 128³ (`bench/GEMM.md`).
const SERIAL_WORK: u128 = 1 << 21;

/// Products of at most this many rows (one token's, a few tokens') whose right operand has at
/// least [`SPLIT_MIN_B`] elements are split by columns over the threads, whatever their work:
/// they read each element of `b` once, and one thread reads memory at a fraction of what two do.
const NARROW_ROWS: usize = 8;

/// See [`NARROW_ROWS`]: 2^18 elements (1 MiB of f32), where reading `b` takes longer than
/// handing work to the pool.
const SPLIT_MIN_B: u128 = 1 << 18;

/// Columns per thread are a multiple of this (whole SIMD vectors of `c`'s row).
const COLUMN_BLOCK: usize = 16;

/// Number of `i64` before the batch axes in a descriptor.
pub const DESC_HEADER: usize = 14;

/// The descriptor of `g` (see the [module docs](self)).
pub fn descriptor(g: &Gemm) -> Vec<i64> {
    let mut d = vec![
        g.m as i64,
        g.n as i64,
        g.k as i64,
        i64::from(g.accumulate),
        g.batch.len() as i64,
    ];
    for v in [&g.a, &g.b, &g.c] {
        d.extend([v.offset, v.row_stride, v.col_stride]);
    }
    for (t, &e) in g.batch.iter().enumerate() {
        d.extend([
            e as i64,
            g.a.batch_strides[t],
            g.b.batch_strides[t],
            g.c.batch_strides[t],
        ]);
    }
    d
}

/// One operand as the library takes it: the pointer to its first element and its strides.
#[derive(Clone, Copy)]
struct Operand<T> {
    ptr: *mut T,
    rs: isize,
    cs: isize,
}

// SAFETY: the pointers are only dereferenced by the library, within the elements the verifier
// proved in bounds; batches run side by side write disjoint elements of `c` (the verifier
// proved `c`'s elements distinct) and only read `a` and `b`.
unsafe impl<T> Send for Operand<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Operand<T> {}

/// A decoded descriptor.
struct Desc {
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    /// Offset, row stride, column stride of `a`, `b`, `c`.
    views: [[isize; 3]; 3],
    /// Per batch axis: extent, strides of `a`, `b`, `c`.
    axes: Vec<i64>,
}

impl Desc {
    /// Reads the descriptor at `desc`, with the batch axes that share `b` folded into rows
    /// ([`Desc::fold_shared_rhs`]).
    ///
    /// # Safety
    ///
    /// `desc` points to a descriptor made by [`descriptor`].
    unsafe fn read(desc: *const i64) -> Desc {
        // SAFETY: the caller's contract: the header is there, then 4·r values.
        let head = unsafe { std::slice::from_raw_parts(desc, DESC_HEADER) };
        let r = head[4] as usize;
        // SAFETY: as above.
        let axes = unsafe { std::slice::from_raw_parts(desc.add(DESC_HEADER), 4 * r) };
        let view = |i: usize| {
            [
                head[5 + 3 * i] as isize,
                head[6 + 3 * i] as isize,
                head[7 + 3 * i] as isize,
            ]
        };
        let mut d = Desc {
            m: head[0] as usize,
            n: head[1] as usize,
            k: head[2] as usize,
            accumulate: head[3] != 0,
            views: [view(0), view(1), view(2)],
            axes: axes.to_vec(),
        };
        d.fold_shared_rhs();
        d
    }

    /// Folds batch axes into the rows where that is the same product: an axis along which
    /// `b` does not move (stride 0: one weight for every token of a batch) and `a` and `c` move
    /// by whole row blocks (`m` rows apart, or any stride when `m` is 1). `[B, n, k] @ [k, j]`
    /// then runs as one `[B·n, k] @ [k, j]`: `b` read and packed once instead of `B` times (a
    /// batched decode step is `B` products of one row each otherwise). Innermost axes first;
    /// an axis that cannot fold stops the folding.
    fn fold_shared_rhs(&mut self) {
        while let Some(axis) = self.axes.len().checked_sub(4) {
            let [e, sa, sb, sc] = [0, 1, 2, 3].map(|i| self.axes[axis + i] as isize);
            let (ra, rc) = (self.views[0][1], self.views[2][1]);
            let m = self.m as isize;
            let folds = sb == 0 && (self.m == 1 || (sa == m * ra && sc == m * rc));
            if !folds || e < 1 {
                break;
            }
            if self.m == 1 {
                self.views[0][1] = sa;
                self.views[2][1] = sc;
            }
            self.m *= e as usize;
            self.axes.truncate(axis);
        }
    }

    fn batch_count(&self) -> usize {
        self.axes.chunks(4).map(|a| a[0] as usize).product()
    }

    /// The element offsets of `a`, `b`, `c` for flat batch index `flat` (row-major).
    fn batch_offsets(&self, mut flat: usize) -> [isize; 3] {
        let mut off = [self.views[0][0], self.views[1][0], self.views[2][0]];
        for axis in self.axes.chunks(4).rev() {
            let e = axis[0] as usize;
            let i = (flat % e) as isize;
            flat /= e;
            for (o, &s) in off.iter_mut().zip(&axis[1..]) {
                *o += i * s as isize;
            }
        }
        off
    }
}

/// Runs the products described at `desc` on `a`, `b`, `c`.
///
/// # Safety
///
/// As [`tttc_gemm_f32`].
unsafe fn run<T: NarrowElem + Send + Sync + 'static>(
    desc: *const i64,
    a: *const T,
    b: *const T,
    c: *mut T,
    zero: T,
    one: T,
) {
    // SAFETY: the caller's contract.
    let d = unsafe { Desc::read(desc) };
    let count = d.batch_count();
    if d.m == 0 || d.n == 0 || count == 0 {
        return;
    }
    let base = |ptr: *mut T, v: [isize; 3]| Operand {
        ptr,
        rs: v[1],
        cs: v[2],
    };
    let bases = [
        base(a as *mut T, d.views[0]),
        base(b as *mut T, d.views[1]),
        base(c, d.views[2]),
    ];
    // Columns `j0 .. j0 + width` of batch `flat`'s product (columns of `b` and `c`).
    let columns = |flat: usize, j0: usize, width: usize, par: Parallelism| {
        let offsets = d.batch_offsets(flat);
        // `a` starts at its first element, `b` and `c` at column `j0`.
        let column = [0, j0 as isize, j0 as isize];
        let [a, b, c] = [0, 1, 2].map(|i| Operand {
            // SAFETY: the offset of an element of this batch's view (column `j0 < n`), proven
            // inside the buffer.
            ptr: unsafe { bases[i].ptr.offset(offsets[i] + column[i] * bases[i].cs) },
            ..bases[i]
        });
        // A few rows against columns of `b` stored contiguously: one pass over `b`.
        if ROWS.contains(&d.m) && a.cs == 1 && b.rs == 1 {
            let narrow = Narrow {
                m: d.m,
                n: width,
                k: d.k,
                a: a.ptr,
                lda: a.rs,
                b: b.ptr,
                ldb: b.cs,
                c: c.ptr,
                rsc: c.rs,
                csc: c.cs,
                accumulate: d.accumulate,
            };
            // SAFETY: as for the crate below.
            if unsafe { T::run_narrow(&narrow) } {
                return;
            }
        }
        // SAFETY: every element of every view was proven inside its buffer, `c` is distinct
        // from `a` and `b` and its elements distinct (the kernel IR's verifier); `c := 1·c +
        // 1·a·b` when accumulating, else `c := a·b` (`c` not read).
        unsafe {
            gemm::gemm(
                d.m,
                width,
                d.k,
                c.ptr,
                c.cs,
                c.rs,
                d.accumulate,
                a.ptr,
                a.cs,
                a.rs,
                b.ptr,
                b.cs,
                b.rs,
                if d.accumulate { one } else { zero },
                one,
                false,
                false,
                false,
                par,
            )
        }
    };
    let product = |flat: usize, par: Parallelism| columns(flat, 0, d.n, par);
    let threads = thread_count();
    let work = (d.m as u128) * (d.n as u128) * (d.k as u128) * (count as u128);
    match pool() {
        // A product of a few rows with a large right operand (a decode step's projections):
        // bound by reading `b` once, which one thread does at a fraction of the machine's
        // memory bandwidth; each thread takes a block of columns.
        Some(pool)
            if threads > 1
                && count == 1
                && d.m <= NARROW_ROWS
                && (d.k as u128) * (d.n as u128) >= SPLIT_MIN_B
                && d.n >= threads * COLUMN_BLOCK =>
        {
            use rayon::prelude::*;
            let width = d.n.div_ceil(threads).next_multiple_of(COLUMN_BLOCK);
            pool.install(|| {
                (0..d.n.div_ceil(width)).into_par_iter().for_each(|p| {
                    let j0 = p * width;
                    columns(0, j0, width.min(d.n - j0), Parallelism::None)
                })
            });
        }
        // Too little work to pay for handing it to the pool (waking its threads costs more
        // than the product): on the calling thread.
        _ if work < SERIAL_WORK || on_a_worker_thread() => {
            (0..count).for_each(|i| product(i, Parallelism::None))
        }
        Some(pool) if threads > 1 && count >= threads => {
            use rayon::prelude::*;
            pool.install(|| {
                (0..count)
                    .into_par_iter()
                    .for_each(|i| product(i, Parallelism::None))
            });
        }
        Some(pool) if threads > 1 => pool.install(|| {
            for i in 0..count {
                product(i, Parallelism::Rayon(0));
            }
        }),
        _ => (0..count).for_each(|i| product(i, Parallelism::None)),
    }
}

/// `C (+)= A @ B` in `f32` for the descriptor at `desc` (see the [module docs](self)).
///
/// # Safety
///
/// `desc` points to a descriptor made by [`descriptor`] from a gemm that the kernel IR's
/// verifier accepted for buffers at `a`, `b`, `c` (every element in bounds, `c` distinct from
/// `a` and `b`, no element of `c` twice), and no other thread touches `c` meanwhile.
pub unsafe extern "C" fn tttc_gemm_f32(
    desc: *const i64,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
) {
    // SAFETY: the caller's contract.
    unsafe { run(desc, a, b, c, 0.0f32, 1.0f32) }
}

/// `C (+)= A @ B` in `f64`: [`tttc_gemm_f32`] for `double`.
///
/// # Safety
///
/// As [`tttc_gemm_f32`].
pub unsafe extern "C" fn tttc_gemm_f64(
    desc: *const i64,
    a: *const f64,
    b: *const f64,
    c: *mut f64,
) {
    // SAFETY: the caller's contract.
    unsafe { run(desc, a, b, c, 0.0f64, 1.0f64) }
}

/// The runtime function of a program of element type `dtype`.
pub fn symbol(dtype: tttc_ir::DType) -> &'static str {
    match dtype {
        tttc_ir::DType::F32 => GEMM_F32,
        tttc_ir::DType::F64 => GEMM_F64,
    }
}

/// Name of [`tttc_gemm_f32`] as kernels import it.
pub const GEMM_F32: &str = "tttc_gemm_f32";
/// Name of [`tttc_gemm_f64`] as kernels import it.
pub const GEMM_F64: &str = "tttc_gemm_f64";
