//! LLVM backend: matrix products against a naive Rust loop, the generated code's quality
//! (vectorized, FMA) and a rough timing.
#![cfg(feature = "llvm")]

mod native_common;

use native_common::*;
use std::time::Instant;
use tttc_backends::llvm::{assembly, optimized_ir, unoptimized_ir, LlvmJit};
use tttc_ir::kernel::{KernelProgram, Schedule};
use tttc_ir::DType;
use tttc_runtime::Tensor;

/// `c[m, n] = a[m, k] @ b[k, n]`, as `for i { for j { c = 0 } for p { for j { c += a * b } } }`
/// (each element accumulates over `p` in order, like the reference), the `i` loop scheduled
/// `sched`.
fn matmul(m: usize, kk: usize, n: usize, dtype: DType, sched: Schedule) -> KernelProgram {
    matmul_columns(m, kk, n, dtype, sched, Schedule::Serial)
}

/// [`matmul`] with the accumulating column loop scheduled `columns`.
fn matmul_columns(
    m: usize,
    kk: usize,
    n: usize,
    dtype: DType,
    sched: Schedule,
    columns: Schedule,
) -> KernelProgram {
    let mut g = Prog::new("matmul", dtype);
    let a = g.input("a", &[m, kk]);
    let b = g.input("b", &[kk, n]);
    let out = g.output("c", &[m, n]);
    let (i, j, p, j2) = (g.var(), g.var(), g.var(), g.var());
    let cij = |j| affine(v(i), n as i64, v(j));
    g.push(lp(
        i,
        m,
        sched,
        vec![
            serial(j, n, vec![store(out, cij(j), k(0.0))]),
            serial(
                p,
                kk,
                vec![lp(
                    j2,
                    n,
                    columns,
                    vec![store(
                        out,
                        cij(j2),
                        add(
                            ld(out, cij(j2)),
                            mul(
                                ld(a, affine(v(i), kk as i64, v(p))),
                                ld(b, affine(v(p), n as i64, v(j2))),
                            ),
                        ),
                    )],
                )],
            ),
        ],
    ));
    g.p
}

/// The naive product in `f64` and the bound `Σ |a b|` per element.
fn reference(a: &[f64], b: &[f64], m: usize, kk: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..kk {
                c[i * n + j] += a[i * kk + p] * b[p * n + j];
                mag[i * n + j] += (a[i * kk + p] * b[p * n + j]).abs();
            }
        }
    }
    (c, mag)
}

fn check(m: usize, kk: usize, n: usize, dtype: DType, sched: Schedule) {
    let p = matmul(m, kk, n, dtype, sched);
    let jit = LlvmJit::compile(&p).expect("compiles");
    let a = rand_vec(m * kk, 1, -1.0, 1.0);
    let b = rand_vec(kk * n, 2, -1.0, 1.0);
    let (ins, a64, b64, eps) = match dtype {
        DType::F32 => {
            let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
            (
                inputs(&[
                    ("a", Tensor::from_f32([m, kk], a32.clone()).unwrap()),
                    ("b", Tensor::from_f32([kk, n], b32.clone()).unwrap()),
                ]),
                a32.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                b32.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                f64::from(f32::EPSILON),
            )
        }
        DType::F64 => (
            inputs(&[
                ("a", Tensor::from_f64([m, kk], a.clone()).unwrap()),
                ("b", Tensor::from_f64([kk, n], b.clone()).unwrap()),
            ]),
            a.clone(),
            b.clone(),
            f64::EPSILON,
        ),
    };
    let out = jit.run(&ins).expect("runs");
    let got = out["c"].to_f64_vec();
    assert_eq!(out["c"].shape(), &[m, n]);
    let (want, mag) = reference(&a64, &b64, m, kk, n);
    for e in 0..m * n {
        let tol = (kk as f64 + 2.0) * eps * mag[e];
        assert!(
            (got[e] - want[e]).abs() <= tol,
            "{dtype} {sched:?} c[{e}] = {} but the reference gives {} (tolerance {tol})",
            got[e],
            want[e]
        );
    }
}

#[test]
fn matmul_f32_serial_matches_naive_loop() {
    check(16, 64, 64, DType::F32, Schedule::Serial);
    check(7, 13, 5, DType::F32, Schedule::Serial);
}

#[test]
fn matmul_f64_parallel_matches_naive_loop() {
    check(16, 64, 64, DType::F64, Schedule::Parallel);
    check(3, 1, 9, DType::F64, Schedule::Parallel);
}

#[test]
fn matmul_f32_parallel_matches_naive_loop() {
    check(33, 17, 40, DType::F32, Schedule::Parallel);
}

/// The host's AVX-512 / FMA must show up in the code (the target attributes are applied).
#[test]
fn matmul_code_uses_host_vector_width_and_fma() {
    let p = matmul(16, 64, 64, DType::F32, Schedule::Serial);
    let ir = optimized_ir(&p).expect("ir");
    assert!(ir.contains("define void @tttc_kernel_entry"), "{ir}");
    assert!(
        ir.contains("<16 x float>") || ir.contains("<8 x float>"),
        "not vectorized:\n{ir}"
    );
    let asm = assembly(&p).expect("asm");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert!(
                asm.contains("zmm"),
                "no 512-bit vectors on an AVX-512 host:\n{asm}"
            );
        }
        if std::arch::is_x86_feature_detected!("fma") {
            assert!(asm.contains("vfmadd"), "no FMA on an FMA host:\n{asm}");
        }
    }
    if std::env::var_os("TTTC_SHOW_IR").is_some() {
        println!("{ir}\n{asm}");
    }
}

/// Prints a rough timing (not asserted beyond sanity: it must finish).
#[test]
fn matmul_16x64x64_timing() {
    let (m, kk, n) = (16, 64, 64);
    let p = matmul(m, kk, n, DType::F32, Schedule::Serial);
    let jit = LlvmJit::compile(&p).expect("compiles");
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
    let reps = 2000;
    let start = Instant::now();
    for _ in 0..reps {
        let out = jit.run(&ins).unwrap();
        assert_eq!(out["c"].as_f32().unwrap()[0], 8.0);
    }
    let per_call = start.elapsed() / reps;
    let (a, b) = (vec![0.5f32; m * kk], vec![0.25f32; kk * n]);
    let start = Instant::now();
    let mut sink = 0.0f32;
    for _ in 0..reps {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for q in 0..kk {
                    acc += std::hint::black_box(a[i * kk + q]) * b[q * n + j];
                }
                c[i * n + j] = acc;
            }
        }
        sink += c[0];
    }
    let naive = start.elapsed() / reps;
    let par = LlvmJit::compile(&matmul(m, kk, n, DType::F32, Schedule::Parallel)).unwrap();
    let start = Instant::now();
    for _ in 0..200 {
        par.run(&ins).unwrap();
    }
    let par_call = start.elapsed() / 200;
    println!(
        "16x64 @ 64x64 f32: compile {:?}, run {per_call:?} per call (incl. tensor checks and \
         output allocation); rows in a parallel loop {par_call:?}; naive Rust loop {naive:?} \
         ({sink})",
        jit.compile_time()
    );
}

/// A `Vector(w)` loop's iterations are independent (the kernel IR's contract): its loads and
/// stores carry an access group and its latch `llvm.loop.parallel_accesses` of it
/// (`backends/src/llvm/parallel_md.rs`), and nothing else does; the hint changes no result
/// (the column loop vectorized or serial, bit for bit the same products).
#[test]
fn vector_loops_carry_parallel_access_metadata() {
    for dtype in [DType::F32, DType::F64] {
        let vector = matmul_columns(16, 64, 64, dtype, Schedule::Serial, Schedule::Vector(16));
        let serial = matmul(16, 64, 64, dtype, Schedule::Serial);
        let ir = unoptimized_ir(&vector).expect("ir");
        // The column loop's three loads (c, a, b) and its store.
        assert_eq!(ir.matches("!llvm.access.group").count(), 4, "{ir}");
        assert_eq!(ir.matches("llvm.loop.parallel_accesses").count(), 1, "{ir}");
        assert!(ir.contains("!llvm.loop"), "{ir}");
        let plain = unoptimized_ir(&serial).expect("ir");
        assert!(
            !plain.contains("llvm.access.group") && !plain.contains("parallel_accesses"),
            "{plain}"
        );
        let a = rand_vec(16 * 64, 3, -1.0, 1.0);
        let b = rand_vec(64 * 64, 4, -1.0, 1.0);
        let tensor = |shape: [usize; 2], x: &[f64]| {
            match dtype {
                DType::F32 => {
                    Tensor::from_f32(shape, x.iter().map(|&v| v as f32).collect::<Vec<_>>())
                }
                DType::F64 => Tensor::from_f64(shape, x.to_vec()),
            }
            .unwrap()
        };
        let ins = inputs(&[("a", tensor([16, 64], &a)), ("b", tensor([64, 64], &b))]);
        let got = LlvmJit::compile(&vector)
            .expect("compiles")
            .run(&ins)
            .expect("runs");
        let want = LlvmJit::compile(&serial)
            .expect("compiles")
            .run(&ins)
            .expect("runs");
        let (got, want) = (got["c"].to_f64_vec(), want["c"].to_f64_vec());
        assert!(got.iter().all(|x| x.is_finite()));
        assert_eq!(got, want, "{dtype}: the vector loop changed the results");
    }
}
