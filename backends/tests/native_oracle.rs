//! The native backends (LLVM, Cranelift) against the kernel interpreter (the oracle): the same
//! programs, including the scratch-buffer rules (`Local`/`Shared` freshness under `Parallel`,
//! `GpuBlock`, `GpuThread`) and NaN for elements read before being written, give the same
//! outputs. LLVM may contract FMAs (a relative tolerance); Cranelift matches bit for bit, since
//! it neither fuses nor reassociates and calls the interpreter's libm. The shared tests are
//! written once and expanded per backend by `oracle_tests!`.
#![cfg(any(feature = "llvm", feature = "cranelift"))]

mod native_common;

use native_common::*;
use std::collections::BTreeMap;
use tttc_backends::kernel_interp::run_kernel_program;
use tttc_ir::kernel::{BufferKind, Index, KernelProgram, MemorySpace, Schedule, Value};
use tttc_ir::{DType, UnaryOp};
use tttc_runtime::Tensor;

/// Checks a backend's outputs `got` against the oracle's for `p`: bit for bit when `exact`
/// (no FMA contraction, no reassociation, the interpreter's libm), else within a relative
/// 1e-6 (f32) or 1e-14 (f64). NaN matches NaN.
fn check_against_oracle(
    p: &KernelProgram,
    ins: &BTreeMap<String, Tensor>,
    got: &BTreeMap<String, Tensor>,
    exact: bool,
) {
    let want = run_kernel_program(p, ins).expect("the oracle runs it");
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(g.shape(), w.shape(), "{name}");
        let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
        let eps = match p.dtype {
            DType::F32 => 1e-6,
            DType::F64 => 1e-14,
        };
        for (e, (a, b)) in gv.iter().zip(&wv).enumerate() {
            let close = if exact {
                a.to_bits() == b.to_bits()
            } else {
                (a - b).abs() <= eps * b.abs().max(1.0)
            };
            let ok = (a.is_nan() && b.is_nan()) || close;
            assert!(ok, "{}: {name}[{e}] = {a} but the oracle gives {b}", p.name);
        }
    }
}

fn shared(g: &mut Prog, name: &str, shape: &[usize]) -> tttc_ir::kernel::BufId {
    let b = g.temp(name, shape);
    g.p.buffers[b.0 as usize].space = MemorySpace::Shared;
    assert_eq!(g.p.buffers[b.0 as usize].kind, BufferKind::Temp);
    b
}

/// The backend-neutral tests for `$backend`, whose JIT is `$jit`; `exact` says whether its
/// outputs must equal the oracle's bit for bit.
macro_rules! oracle_tests {
    ($backend:ident, $jit:ident, exact: $exact:expr) => {
        mod $backend {
            use super::*;
            use tttc_backends::$backend::$jit as Jit;

            fn compare(p: &KernelProgram, ins: &BTreeMap<String, Tensor>) {
                let got = Jit::compile(p).expect("compiles").run(ins).expect("runs");
                check_against_oracle(p, ins, &got, $exact);
            }

            /// GPU-style schedules on the CPU: blocks in parallel, threads in order, `Shared` fresh per
            /// block, `Local` fresh per thread.
            #[test]
            fn gpu_schedules_with_shared_and_local() {
                let (blocks, threads) = (5usize, 8usize);
                let mut g = Prog::new("gpu", DType::F32);
                let x = g.input("x", &[blocks * threads]);
                let y = g.output("y", &[blocks * threads]);
                let z = g.output("z", &[blocks]);
                let sh = shared(&mut g, "sh", &[threads]);
                let loc = g.local("loc", &[1]);
                let (blk, t1, t2) = (g.var(), g.var(), g.var());
                let xi = |t| affine(v(blk), threads as i64, v(t));
                g.push(lp(
                    blk,
                    blocks,
                    Schedule::GpuBlock,
                    vec![
                        lp(
                            t1,
                            threads,
                            Schedule::GpuThread,
                            vec![store(sh, v(t1), mul(ld(x, xi(t1)), k(2.0)))],
                        ),
                        lp(
                            t2,
                            threads,
                            Schedule::GpuThread,
                            vec![
                                store(
                                    loc,
                                    c(0),
                                    add(
                                        ld(
                                            sh,
                                            Index::sum(
                                                Index::scaled(v(t2), -1),
                                                c(threads as i64 - 1),
                                            ),
                                        ),
                                        ld(sh, v(t2)),
                                    ),
                                ),
                                store(y, xi(t2), un(UnaryOp::Tanh, ld(loc, c(0)))),
                            ],
                        ),
                        // Read after the thread loops: still this block's values.
                        store(z, v(blk), ld(sh, c(3))),
                    ],
                ));
                let xv: Vec<f32> = rand_vec(blocks * threads, 21, -1.0, 1.0)
                    .iter()
                    .map(|&a| a as f32)
                    .collect();
                compare(
                    &g.p,
                    &inputs(&[("x", Tensor::from_f32([blocks * threads], xv).unwrap())]),
                );
            }

            /// Scratch buffers outside refreshing loops live as long as the program; read-before-write
            /// and unwritten outputs are NaN in both.
            #[test]
            fn scratch_lifetimes_and_nan_reads() {
                let n = 9usize;
                let mut g = Prog::new("lifetimes", DType::F64);
                let x = g.input("x", &[n]);
                let y = g.output("y", &[n]);
                let stale = g.output("stale", &[n]);
                let part = g.output("part", &[n]);
                let serial_local = g.local("serial_local", &[n]);
                let global_like = shared(&mut g, "global_like", &[n]);
                let fresh = g.local("fresh", &[2]);
                let (a, b, cc, d, e) = (g.var(), g.var(), g.var(), g.var(), g.var());
                // A local used only serially: a program-wide temporary.
                g.push(serial(
                    a,
                    n,
                    vec![store(serial_local, v(a), mul(ld(x, v(a)), ld(x, v(a))))],
                ));
                // A shared buffer in a parallel loop without blocks: global-like, read after it.
                g.push(parallel(
                    b,
                    n,
                    vec![store(global_like, v(b), add(ld(x, v(b)), k(1.0)))],
                ));
                g.push(serial(
                    cc,
                    n,
                    vec![store(
                        y,
                        v(cc),
                        add(ld(global_like, v(cc)), ld(serial_local, v(cc))),
                    )],
                ));
                // Read before write inside a parallel loop: NaN.
                g.push(parallel(
                    d,
                    n,
                    vec![
                        store(stale, v(d), add(ld(fresh, c(0)), k(1.0))),
                        store(fresh, c(0), ld(x, v(d))),
                    ],
                ));
                // Half of an output written.
                g.push(serial(
                    e,
                    n / 2,
                    vec![store(part, v(e), Value::FromIndex(v(e)))],
                ));
                compare(
                    &g.p,
                    &inputs(&[(
                        "x",
                        Tensor::from_f64([n], rand_vec(n, 22, -2.0, 2.0)).unwrap(),
                    )]),
                );
            }

            /// A serial `GpuThread` loop refreshes its `Local` per iteration (no parallel loop anywhere).
            #[test]
            fn gpu_thread_refresh_without_parallel_loops() {
                let n = 6usize;
                let mut g = Prog::new("thread_refresh", DType::F32);
                let x = g.input("x", &[n]);
                let y = g.output("y", &[n]);
                let w = g.output("w", &[n]);
                let loc = g.local("loc", &[1]);
                let t = g.var();
                g.push(lp(
                    t,
                    n,
                    Schedule::GpuThread,
                    vec![
                        store(w, v(t), ld(loc, c(0))),
                        store(loc, c(0), ld(x, v(t))),
                        store(y, v(t), mul(ld(loc, c(0)), k(3.0))),
                    ],
                ));
                compare(
                    &g.p,
                    &inputs(&[(
                        "x",
                        Tensor::from_f32([n], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap(),
                    )]),
                );
            }

            /// Elementwise ops, a product and a reduction, in both precisions.
            #[test]
            fn mixed_program_both_precisions() {
                for dtype in [DType::F32, DType::F64] {
                    let (m, kk, n) = (6usize, 10usize, 7usize);
                    let mut g = Prog::new("mixed", dtype);
                    let a = g.input("a", &[m, kk]);
                    let b = g.input("b", &[kk, n]);
                    let c_ = g.output("c", &[m, n]);
                    let s = g.output("s", &[m]);
                    let t = g.temp("t", &[m, n]);
                    let (i, j, p, q) = (g.var(), g.var(), g.var(), g.var());
                    let ij = affine(v(i), n as i64, v(j));
                    g.push(parallel(
                        i,
                        m,
                        vec![
                            serial(
                                j,
                                n,
                                vec![
                                    store(t, ij.clone(), k(0.0)),
                                    serial(
                                        p,
                                        kk,
                                        vec![store(
                                            t,
                                            ij.clone(),
                                            add(
                                                ld(t, ij.clone()),
                                                mul(
                                                    ld(a, affine(v(i), kk as i64, v(p))),
                                                    ld(b, affine(v(p), n as i64, v(j))),
                                                ),
                                            ),
                                        )],
                                    ),
                                    store(c_, ij.clone(), un(UnaryOp::GeluTanh, ld(t, ij.clone()))),
                                ],
                            ),
                            store(s, v(i), k(0.0)),
                            serial(
                                q,
                                n,
                                vec![store(
                                    s,
                                    v(i),
                                    add(ld(s, v(i)), ld(c_, affine(v(i), n as i64, v(q)))),
                                )],
                            ),
                        ],
                    ));
                    let av = rand_vec(m * kk, 31, -1.0, 1.0);
                    let bv = rand_vec(kk * n, 32, -1.0, 1.0);
                    let ins = match dtype {
                        DType::F32 => inputs(&[
                            (
                                "a",
                                Tensor::from_f32(
                                    [m, kk],
                                    av.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                                )
                                .unwrap(),
                            ),
                            (
                                "b",
                                Tensor::from_f32(
                                    [kk, n],
                                    bv.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                                )
                                .unwrap(),
                            ),
                        ]),
                        DType::F64 => inputs(&[
                            ("a", Tensor::from_f64([m, kk], av).unwrap()),
                            ("b", Tensor::from_f64([kk, n], bv).unwrap()),
                        ]),
                    };
                    compare(&g.p, &ins);
                }
            }
        }
    };
}

#[cfg(feature = "llvm")]
oracle_tests!(llvm, LlvmJit, exact: false);
#[cfg(feature = "cranelift")]
oracle_tests!(cranelift, CraneliftJit, exact: true);

/// Cranelift only: its loop transformations, checked through `stats()`.
#[cfg(feature = "cranelift")]
mod cranelift_loops {
    use super::*;
    use tttc_backends::cranelift::{CraneliftJit, Stats};
    use tttc_ir::BinaryOp;

    fn compare(p: &KernelProgram, ins: &BTreeMap<String, Tensor>) -> Stats {
        let jit = CraneliftJit::compile(p).expect("compiles");
        let got = jit.run(ins).expect("runs");
        check_against_oracle(p, ins, &got, true);
        jit.stats()
    }

    fn vec_input(dtype: DType, name: &'static str, n: usize, seed: u64) -> (&'static str, Tensor) {
        let x = rand_vec(n, seed, -2.0, 2.0);
        let t = match dtype {
            DType::F32 => Tensor::from_f32([n], x.iter().map(|&a| a as f32).collect::<Vec<_>>()),
            DType::F64 => Tensor::from_f64([n], x),
        };
        (name, t.unwrap())
    }

    /// The loop transformations (SIMD, unroll-and-jam, rows side by side, forwarding) where they
    /// apply and where they must not: loop-carried dependences through memory, written indices
    /// that mention the outer variable, rows that share elements. Every output must equal the
    /// oracle's bit for bit.
    #[test]
    fn loop_transformations_keep_every_dependence() {
        for dtype in [DType::F32, DType::F64] {
            // 1. y[p + j] += x[p, j]: SIMD over j, but not jammable (the written index mentions p,
            //    so iterations (p, j+1) and (p+1, j) touch the same element).
            let mut g = Prog::new("shifted", dtype);
            let x = g.input("x", &[9 * 11]);
            let y = g.output("y", &[20]);
            let (z, p, j) = (g.var(), g.var(), g.var());
            g.push(serial(z, 20, vec![store(y, v(z), k(1.0))]));
            let ypj = || Index::sum(v(p), v(j));
            g.push(serial(
                p,
                9,
                vec![serial(
                    j,
                    11,
                    vec![store(
                        y,
                        ypj(),
                        add(mul(ld(y, ypj()), k(0.5)), ld(x, affine(v(p), 11, v(j)))),
                    )],
                )],
            ));
            let st = compare(&g.p, &inputs(&[vec_input(dtype, "x", 99, 1)]));
            assert_eq!((st.jammed_loops, st.simd_loops), (0, 2), "{st:?}");

            // 2. s[i + 1] += s[i] * x[i, j]: rows depend on each other; no SIMD, no jam.
            let mut g = Prog::new("chain", dtype);
            let x = g.input("x", &[8 * 5]);
            let s = g.output("s", &[9]);
            let (z, i, j) = (g.var(), g.var(), g.var());
            g.push(serial(z, 9, vec![store(s, v(z), k(0.25))]));
            let next = || Index::sum(v(i), c(1));
            g.push(serial(
                i,
                8,
                vec![serial(
                    j,
                    5,
                    vec![store(
                        s,
                        next(),
                        add(
                            ld(s, next()),
                            mul(ld(s, v(i)), ld(x, affine(v(i), 5, v(j)))),
                        ),
                    )],
                )],
            ));
            let st = compare(&g.p, &inputs(&[vec_input(dtype, "x", 40, 2)]));
            assert_eq!((st.jammed_loops, st.row_jammed_loops), (0, 0), "{st:?}");

            // 3. y[j] = y[j] * 0.5 + float(p) * x[p, j]: jammed (7 = 4 + 3), `float(p)` per copy.
            let mut g = Prog::new("jam", dtype);
            let x = g.input("x", &[7 * 10]);
            let y = g.output("y", &[10]);
            let (z, p, j) = (g.var(), g.var(), g.var());
            g.push(serial(z, 10, vec![store(y, v(z), k(-1.0))]));
            g.push(serial(
                p,
                7,
                vec![serial(
                    j,
                    10,
                    vec![store(
                        y,
                        v(j),
                        add(
                            mul(ld(y, v(j)), k(0.5)),
                            mul(Value::FromIndex(v(p)), ld(x, affine(v(p), 10, v(j)))),
                        ),
                    )],
                )],
            ));
            let st = compare(&g.p, &inputs(&[vec_input(dtype, "x", 70, 3)]));
            assert_eq!(st.jammed_loops, 1, "{st:?}");

            // 4. Rows side by side: s[i] = float(i); s[i] = max(s[i], x[i, j]); t[i] = sqrt(s[i])
            //    over 6 rows (4 + 2), with NaN in the data.
            let mut g = Prog::new("rows", dtype);
            let x = g.input("x", &[6 * 7]);
            let s = g.output("s", &[6]);
            let t = g.output("t", &[6]);
            let (i, j) = (g.var(), g.var());
            g.push(serial(
                i,
                6,
                vec![
                    store(s, v(i), Value::FromIndex(v(i))),
                    serial(
                        j,
                        7,
                        vec![store(
                            s,
                            v(i),
                            bin(BinaryOp::Max, ld(s, v(i)), ld(x, affine(v(i), 7, v(j)))),
                        )],
                    ),
                    store(t, v(i), un(UnaryOp::Sqrt, ld(s, v(i)))),
                ],
            ));
            let (name, mut xt) = vec_input(dtype, "x", 42, 4);
            xt = match dtype {
                DType::F32 => {
                    let mut d = xt.as_f32().unwrap().to_vec();
                    d[9] = f32::NAN;
                    Tensor::from_f32([42], d).unwrap()
                }
                DType::F64 => {
                    let mut d = xt.as_f64().unwrap().to_vec();
                    d[9] = f64::NAN;
                    Tensor::from_f64([42], d).unwrap()
                }
            };
            let st = compare(&g.p, &inputs(&[(name, xt)]));
            assert_eq!(st.row_jammed_loops, 1, "{st:?}");

            // 5. Rows that share an element (a running total over rows): not side by side.
            let mut g = Prog::new("shared_row", dtype);
            let x = g.input("x", &[6 * 7]);
            let s = g.output("s", &[1]);
            let (z, i, j) = (g.var(), g.var(), g.var());
            g.push(serial(z, 1, vec![store(s, v(z), k(0.0))]));
            g.push(serial(
                i,
                6,
                vec![
                    serial(
                        j,
                        7,
                        vec![store(
                            s,
                            c(0),
                            add(ld(s, c(0)), ld(x, affine(v(i), 7, v(j)))),
                        )],
                    ),
                    store(s, c(0), mul(ld(s, c(0)), k(0.75))),
                ],
            ));
            let st = compare(&g.p, &inputs(&[vec_input(dtype, "x", 42, 5)]));
            assert_eq!(st.row_jammed_loops, 0, "{st:?}");
        }
    }
}
