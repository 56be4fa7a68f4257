//! Cranelift backend: matrix products against a naive Rust loop that accumulates in the same
//! order and element type, through the SIMD body (`n` a multiple of the vector width), the
//! SIMD body plus a scalar remainder (`n = 17`), only the remainder (`n < width`), and a scalar
//! loop (a transposed operand), serial and parallel; plus a rough timing.
//!
//! Tolerance: none. The kernel computes each `c[i, j]` as `((0 + a0 b0) + a1 b1) + ...` with
//! every product and sum rounded (no FMA, no reassociation), exactly like the naive loop, so
//! the bits must agree.
#![cfg(feature = "cranelift")]

mod native_common;

use native_common::*;
use std::time::Instant;
use tttc_backends::cranelift::{optimized_clif, CraneliftJit};
use tttc_ir::kernel::{Index, KernelProgram, Schedule};
use tttc_ir::DType;
use tttc_runtime::Tensor;

/// `c[m, n] = a[m, k] @ b[k, n]`, as `for i { for j { c = 0 } for p { for j { c += a * b } } }`
/// (each element accumulates over `p` in order, like the reference), the `i` loop scheduled
/// `sched`. With `transposed`, `b` is given as `bt[n, k]` and read `bt[j, p]` (stride `k` in
/// the innermost loop: no SIMD).
fn matmul(
    m: usize,
    kk: usize,
    n: usize,
    dtype: DType,
    sched: Schedule,
    transposed: bool,
) -> KernelProgram {
    let mut g = Prog::new("matmul", dtype);
    let a = g.input("a", &[m, kk]);
    let b = if transposed {
        g.input("b", &[n, kk])
    } else {
        g.input("b", &[kk, n])
    };
    let out = g.output("c", &[m, n]);
    let (i, j, p, j2) = (g.var(), g.var(), g.var(), g.var());
    let cij = |j| affine(v(i), n as i64, v(j));
    let bpj: Index = if transposed {
        affine(v(j2), kk as i64, v(p))
    } else {
        affine(v(p), n as i64, v(j2))
    };
    g.push(lp(
        i,
        m,
        sched,
        vec![
            serial(j, n, vec![store(out, cij(j), k(0.0))]),
            serial(
                p,
                kk,
                vec![serial(
                    j2,
                    n,
                    vec![store(
                        out,
                        cij(j2),
                        add(
                            ld(out, cij(j2)),
                            mul(ld(a, affine(v(i), kk as i64, v(p))), ld(b, bpj)),
                        ),
                    )],
                )],
            ),
        ],
    ));
    g.p
}

/// The naive product in `T`, accumulating over `p` in order.
fn reference<T>(a: &[T], b: &[T], m: usize, kk: usize, n: usize) -> Vec<T>
where
    T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
{
    let mut c = vec![T::default(); m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = T::default();
            for p in 0..kk {
                acc = acc + a[i * kk + p] * b[p * n + j];
            }
            c[i * n + j] = acc;
        }
    }
    c
}

fn transpose<T: Copy>(b: &[T], kk: usize, n: usize) -> Vec<T> {
    let mut t = Vec::with_capacity(b.len());
    for j in 0..n {
        for p in 0..kk {
            t.push(b[p * n + j]);
        }
    }
    t
}

/// Runs the product and compares bits; returns the numbers of SIMD loops and of jammed loops
/// compiled.
fn check(
    m: usize,
    kk: usize,
    n: usize,
    dtype: DType,
    sched: Schedule,
    transposed: bool,
) -> (usize, usize) {
    let p = matmul(m, kk, n, dtype, sched, transposed);
    let jit = CraneliftJit::compile(&p).expect("compiles");
    let a = rand_vec(m * kk, 1, -1.0, 1.0);
    let b = rand_vec(kk * n, 2, -1.0, 1.0);
    let (got, want): (Vec<u64>, Vec<u64>) = match dtype {
        DType::F32 => {
            let a: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let b: Vec<f32> = b.iter().map(|&x| x as f32).collect();
            let given = if transposed {
                transpose(&b, kk, n)
            } else {
                b.clone()
            };
            let shape_b = if transposed { [n, kk] } else { [kk, n] };
            let out = jit
                .run(&inputs(&[
                    ("a", Tensor::from_f32([m, kk], a.clone()).unwrap()),
                    ("b", Tensor::from_f32(shape_b, given).unwrap()),
                ]))
                .expect("runs");
            assert_eq!(out["c"].shape(), &[m, n]);
            (
                out["c"]
                    .as_f32()
                    .unwrap()
                    .iter()
                    .map(|x| u64::from(x.to_bits()))
                    .collect(),
                reference(&a, &b, m, kk, n)
                    .iter()
                    .map(|x| u64::from(x.to_bits()))
                    .collect(),
            )
        }
        DType::F64 => {
            let given = if transposed {
                transpose(&b, kk, n)
            } else {
                b.clone()
            };
            let shape_b = if transposed { [n, kk] } else { [kk, n] };
            let out = jit
                .run(&inputs(&[
                    ("a", Tensor::from_f64([m, kk], a.clone()).unwrap()),
                    ("b", Tensor::from_f64(shape_b, given).unwrap()),
                ]))
                .expect("runs");
            (
                out["c"]
                    .as_f64()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
                reference(&a, &b, m, kk, n)
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            )
        }
    };
    for e in 0..m * n {
        assert_eq!(
            got[e], want[e],
            "{dtype} {sched:?} {m}x{kk}x{n} transposed={transposed}: c[{e}] differs"
        );
    }
    (jit.stats().simd_loops, jit.stats().jammed_loops)
}

// Expected loop counts: the zeroing loop over `j` is a SIMD loop; the update loop over `p`
// (when `k >= 4`) is jammed 4 iterations at a time into its SIMD loop over `j`, and when `k`
// is not a multiple of 4 the remaining iterations of `p` run a second copy of that SIMD loop.
// A SIMD loop whose extent is below the vector width is compiled but only its scalar
// remainder runs.

#[test]
fn matmul_f32_simd_and_remainder_match_naive_loop() {
    // 64: SIMD only; 17: SIMD + remainder, and a remainder of `p`; 3: remainder only.
    assert_eq!(
        check(16, 64, 64, DType::F32, Schedule::Serial, false),
        (2, 1)
    );
    assert_eq!(
        check(17, 17, 17, DType::F32, Schedule::Serial, false),
        (3, 1)
    );
    assert_eq!(check(7, 13, 3, DType::F32, Schedule::Serial, false), (3, 1));
    assert_eq!(check(5, 3, 9, DType::F32, Schedule::Serial, false), (2, 0));
}

#[test]
fn matmul_f64_simd_and_remainder_match_naive_loop() {
    assert_eq!(
        check(16, 64, 64, DType::F64, Schedule::Serial, false),
        (2, 1)
    );
    assert_eq!(
        check(17, 17, 17, DType::F64, Schedule::Serial, false),
        (3, 1)
    );
    assert_eq!(check(3, 1, 1, DType::F64, Schedule::Serial, false), (2, 0));
}

#[test]
fn matmul_parallel_matches_naive_loop() {
    assert_eq!(
        check(33, 17, 40, DType::F32, Schedule::Parallel, false),
        (3, 1)
    );
    assert_eq!(
        check(16, 64, 64, DType::F64, Schedule::Parallel, false),
        (2, 1)
    );
    assert_eq!(
        check(3, 1, 9, DType::F64, Schedule::Parallel, false),
        (2, 0)
    );
}

#[test]
fn matmul_with_a_strided_operand_is_scalar_and_matches() {
    // Only the zeroing loop is contiguous; the update reads `bt[j, p]` with stride k: a
    // scalar loop, not jammed.
    assert_eq!(
        check(17, 17, 17, DType::F32, Schedule::Serial, true),
        (1, 0)
    );
    assert_eq!(
        check(5, 64, 6, DType::F64, Schedule::Parallel, true),
        (1, 0)
    );
}

/// The SIMD body is really 128-bit vector code (`f32x4` / `f64x2` loads, arithmetic and
/// stores); `TTTC_SHOW_CLIF=1` prints the optimized Cranelift IR.
#[test]
fn matmul_code_is_vector_code() {
    for (dtype, ty) in [(DType::F32, "f32x4"), (DType::F64, "f64x2")] {
        let clif =
            optimized_clif(&matmul(16, 64, 64, dtype, Schedule::Serial, false)).expect("clif");
        // (The printer leaves out types it can infer, such as `fadd`'s.)
        for op in ["fmul", "load", "splat"] {
            let typed = format!("{op}.{ty} ");
            assert!(clif.contains(&typed), "no {typed}:\n{clif}");
        }
        assert!(!clif.contains("fma"), "a fused multiply-add:\n{clif}");
        if std::env::var_os("TTTC_SHOW_CLIF").is_some() {
            println!("{clif}");
        }
    }
}

/// Prints a rough timing (not asserted beyond sanity: it must finish).
#[test]
fn matmul_16x64x64_timing() {
    let (m, kk, n) = (16, 64, 64);
    let p = matmul(m, kk, n, DType::F32, Schedule::Serial, false);
    let jit = CraneliftJit::compile(&p).expect("compiles");
    let ins = inputs(&[
        (
            "a",
            Tensor::from_f32([m, kk], vec![0.5f32; m * kk]).unwrap(),
        ),
        (
            "b",
            Tensor::from_f32([kk, n], vec![0.25f32; kk * n]).unwrap(),
        ),
    ]);
    let reps = 200;
    let start = Instant::now();
    for _ in 0..reps {
        let out = jit.run(&ins).unwrap();
        assert_eq!(out["c"].as_f32().unwrap()[0], 8.0);
    }
    let per_call = start.elapsed() / reps;
    println!(
        "16x64 @ 64x64 f32: compile {:?} (Cranelift {:?}), run {per_call:?} per call (incl. \
         tensor checks and output allocation; test profile)",
        jit.compile_time(),
        jit.codegen_time()
    );
}
