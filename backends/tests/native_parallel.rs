//! The native backends (LLVM, Cranelift): parallel loops (outlined workers,
//! `tttc_parallel_for`), local scratch buffers, global temporaries on the stack and the heap,
//! nesting, against plain Rust loops. The tests are written once and expanded per backend by
//! `parallel_tests!`.
#![cfg(any(feature = "llvm", feature = "cranelift"))]

mod native_common;

use native_common::*;
use tttc_ir::kernel::{Index, KernelProgram, Schedule, Stmt, Value};
use tttc_ir::{BinaryOp, DType};
use tttc_runtime::Tensor;

/// Replaces every `Parallel` schedule in `body` by `Serial`.
fn serialize(body: &mut [Stmt]) {
    for s in body {
        if let Stmt::Loop { schedule, body, .. } = s {
            if *schedule == Schedule::Parallel {
                *schedule = Schedule::Serial;
            }
            serialize(body);
        }
    }
}

/// LLVM: the optimized IR of a program with a parallel loop calls `tttc_parallel_for`.
#[cfg(feature = "llvm")]
fn llvm_calls_parallel_for(p: &KernelProgram) {
    let ir = tttc_backends::llvm::optimized_ir(p).unwrap();
    assert!(ir.contains("call void @tttc_parallel_for"), "{ir}");
}

/// Cranelift: the parallel loop became a worker function of its own.
#[cfg(feature = "cranelift")]
fn cranelift_calls_parallel_for(p: &KernelProgram) {
    let jit = tttc_backends::cranelift::CraneliftJit::compile(p).unwrap();
    assert_eq!(jit.stats().functions, 2, "{:?}", jit.stats());
}

macro_rules! parallel_tests {
    ($backend:ident, $jit:ident, calls_parallel_for: $calls_parallel_for:path) => {
        mod $backend {
            use super::*;
            use tttc_backends::$backend::$jit as Jit;

            /// Runs `p` and its all-serial twin; they must agree bit for bit (parallel loops never change
            /// the order of any floating-point operation).
            fn run_both(
                p: &KernelProgram,
                ins: &[(&str, Tensor)],
            ) -> std::collections::BTreeMap<String, Tensor> {
                let ins = inputs(ins);
                let out = Jit::compile(p).expect("compiles").run(&ins).expect("runs");
                let mut q = p.clone();
                serialize(&mut q.body);
                assert_ne!(&q, p, "the test program has no parallel loop");
                let out2 = Jit::compile(&q).expect("compiles").run(&ins).expect("runs");
                let bits =
                    |o: &std::collections::BTreeMap<String, Tensor>| -> Vec<(String, Vec<u64>)> {
                        o.iter()
                            .map(|(n, t)| {
                                (
                                    n.clone(),
                                    t.to_f64_vec().iter().map(|x| x.to_bits()).collect(),
                                )
                            })
                            .collect()
                    };
                assert_eq!(
                    bits(&out),
                    bits(&out2),
                    "parallel and serial schedules disagree"
                );
                out
            }

            /// `for b in 0..B (parallel)`: a local scratch `s[N]` and a local accumulator `acc[1]` per
            /// iteration, each iteration writing its own slice of `out` and its own `tot[b]`.
            #[test]
            fn parallel_loop_with_local_scratch() {
                let (bn, n) = (37usize, 50usize);
                let mut g = Prog::new("scratch", DType::F32);
                let x = g.input("x", &[bn, n]);
                let out = g.output("out", &[bn, n]);
                let tot = g.output("tot", &[bn]);
                let s = g.local("s", &[n]);
                let acc = g.local("acc", &[1]);
                let (b, i, j, l) = (g.var(), g.var(), g.var(), g.var());
                let rev = |j| Index::sum(Index::scaled(v(j), -1), c(n as i64 - 1));
                g.push(parallel(
                    b,
                    bn,
                    vec![
                        serial(
                            i,
                            n,
                            vec![store(
                                s,
                                v(i),
                                add(mul(ld(x, affine(v(b), n as i64, v(i))), k(2.0)), k(1.0)),
                            )],
                        ),
                        serial(
                            j,
                            n,
                            vec![store(
                                out,
                                affine(v(b), n as i64, v(j)),
                                mul(ld(s, rev(j)), ld(s, v(j))),
                            )],
                        ),
                        store(acc, c(0), k(0.0)),
                        serial(
                            l,
                            n,
                            vec![store(acc, c(0), add(ld(acc, c(0)), ld(s, v(l))))],
                        ),
                        store(tot, v(b), ld(acc, c(0))),
                    ],
                ));
                let xv: Vec<f32> = rand_vec(bn * n, 3, -2.0, 2.0)
                    .iter()
                    .map(|&a| a as f32)
                    .collect();
                let o = run_both(
                    &g.p,
                    &[("x", Tensor::from_f32([bn, n], xv.clone()).unwrap())],
                );
                let (got, got_tot) = (o["out"].as_f32().unwrap(), o["tot"].as_f32().unwrap());
                for bi in 0..bn {
                    let s: Vec<f32> = (0..n).map(|q| xv[bi * n + q] * 2.0 + 1.0).collect();
                    let mut acc = 0.0f32;
                    for q in 0..n {
                        let want = s[n - 1 - q] * s[q];
                        assert_eq!(got[bi * n + q], want, "out[{bi}, {q}]");
                        acc += s[q];
                    }
                    // Exact on both backends: the operands of the add are loads, so LLVM's `contract` cannot
                    // fuse here, and Cranelift never fuses.
                    assert_eq!(got_tot[bi], acc, "tot[{bi}]");
                }
            }

            /// Buffers above the stack limit: a 64 KiB global temporary computed serially and read by a
            /// parallel loop whose local scratch is 40 KiB (both `malloc`ed), plus a small global temp.
            #[test]
            fn heap_buffers_and_global_temps_across_parallel_loops() {
                let (m, bn, w) = (16384usize, 9usize, 5000usize);
                let mut g = Prog::new("heap", DType::F64);
                let x = g.input("x", &[m]);
                let out = g.output("out", &[bn]);
                let t = g.temp("t", &[m]); // 128 KiB: heap
                let small = g.temp("small", &[bn]); // stack
                let big = g.local("big", &[w]); // 40 KiB per worker: heap
                let (i, b, j, l, q) = (g.var(), g.var(), g.var(), g.var(), g.var());
                g.push(serial(
                    i,
                    m,
                    vec![store(t, v(i), mul(ld(x, v(i)), ld(x, v(i))))],
                ));
                g.push(parallel(
                    q,
                    bn,
                    vec![store(small, v(q), Value::FromIndex(v(q)))],
                ));
                g.push(parallel(
                    b,
                    bn,
                    vec![
                        serial(
                            j,
                            w,
                            vec![store(
                                big,
                                v(j),
                                ld(t, Index::Rem(Box::new(affine(v(b), 7, v(j))), m as i64)),
                            )],
                        ),
                        store(out, v(b), ld(small, v(b))),
                        serial(
                            l,
                            w,
                            vec![store(out, v(b), add(ld(out, v(b)), ld(big, v(l))))],
                        ),
                    ],
                ));
                let xv = rand_vec(m, 4, -1.0, 1.0);
                let o = run_both(&g.p, &[("x", Tensor::from_f64([m], xv.clone()).unwrap())]);
                let got = o["out"].as_f64().unwrap();
                for bi in 0..bn {
                    let mut acc = bi as f64;
                    for jj in 0..w {
                        let e = xv[(bi * 7 + jj) % m];
                        acc += e * e;
                    }
                    assert_eq!(got[bi], acc, "out[{bi}]");
                }
            }

            /// A parallel loop inside a serial loop (the worker reads the outer variable), and a parallel
            /// loop nested in another (runs serially in the outer worker) whose local is private to the
            /// inner loop's iterations.
            #[test]
            fn nested_parallel_loops_and_outer_variables() {
                let (r, a, bn, n) = (4usize, 6usize, 5usize, 3usize);
                let mut g = Prog::new("nested", DType::F32);
                let x = g.input("x", &[bn]);
                let o1 = g.output("o1", &[r, bn]);
                let o2 = g.output("o2", &[a, bn]);
                let inner = g.local("inner", &[n]);
                let (ri, bi, ai, b2, ni, mi) =
                    (g.var(), g.var(), g.var(), g.var(), g.var(), g.var());
                g.push(serial(
                    ri,
                    r,
                    vec![parallel(
                        bi,
                        bn,
                        vec![store(
                            o1,
                            affine(v(ri), bn as i64, v(bi)),
                            add(ld(x, v(bi)), mul(Value::FromIndex(v(ri)), k(10.0))),
                        )],
                    )],
                ));
                g.push(parallel(
                    ai,
                    a,
                    vec![parallel(
                        b2,
                        bn,
                        vec![
                            serial(mi, n, vec![store(inner, v(mi), k(0.0))]),
                            // inner[m] += a + b, n times.
                            serial(
                                ni,
                                n,
                                vec![serial(
                                    mi,
                                    n,
                                    vec![store(
                                        inner,
                                        v(mi),
                                        add(
                                            ld(inner, v(mi)),
                                            Value::FromIndex(Index::sum(v(ai), v(b2))),
                                        ),
                                    )],
                                )],
                            ),
                            store(
                                o2,
                                affine(v(ai), bn as i64, v(b2)),
                                add(ld(inner, c(0)), ld(inner, c(n as i64 - 1))),
                            ),
                        ],
                    )],
                ));
                let xv = vec![0.5f32, -1.0, 2.0, 3.25, -4.5];
                let o = run_both(&g.p, &[("x", Tensor::from_f32([bn], xv.clone()).unwrap())]);
                let g1 = o["o1"].as_f32().unwrap();
                for rr in 0..r {
                    for bb in 0..bn {
                        // a * b + c may be one FMA; both operands here are exact anyway.
                        assert_eq!(g1[rr * bn + bb], xv[bb] + rr as f32 * 10.0);
                    }
                }
                let g2 = o["o2"].as_f32().unwrap();
                for aa in 0..a {
                    for bb in 0..bn {
                        let per = (aa + bb) as f32 * n as f32;
                        assert_eq!(g2[aa * bn + bb], 2.0 * per, "o2[{aa}, {bb}]");
                    }
                }
            }

            /// Max-reduction over a parallel loop's rows with NaN rows.
            #[test]
            fn parallel_max_reduction_propagates_nan() {
                let (rows, cols) = (10usize, 33usize);
                let mut g = Prog::new("rowmax", DType::F32);
                let x = g.input("x", &[rows, cols]);
                let out = g.output("m", &[rows]);
                let (r, cc) = (g.var(), g.var());
                g.push(parallel(
                    r,
                    rows,
                    vec![
                        store(out, v(r), k(f64::NEG_INFINITY)),
                        serial(
                            cc,
                            cols,
                            vec![store(
                                out,
                                v(r),
                                bin(
                                    BinaryOp::Max,
                                    ld(out, v(r)),
                                    ld(x, affine(v(r), cols as i64, v(cc))),
                                ),
                            )],
                        ),
                    ],
                ));
                let mut xv: Vec<f32> = rand_vec(rows * cols, 5, -5.0, 5.0)
                    .iter()
                    .map(|&a| a as f32)
                    .collect();
                xv[3 * cols + 17] = f32::NAN;
                xv[7 * cols] = f32::NAN;
                let o = run_both(
                    &g.p,
                    &[("x", Tensor::from_f32([rows, cols], xv.clone()).unwrap())],
                );
                let got = o["m"].as_f32().unwrap();
                for rr in 0..rows {
                    let row = &xv[rr * cols..(rr + 1) * cols];
                    if rr == 3 || rr == 7 {
                        assert!(got[rr].is_nan(), "row {rr}: {}", got[rr]);
                    } else {
                        let want = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        assert_eq!(got[rr], want, "row {rr}");
                    }
                }
            }

            /// A local buffer is fresh (NaN, as in the kernel interpreter) at the start of every iteration
            /// of the parallel loop it is used in, whichever thread runs the iteration and whatever ran
            /// before on that thread: reading scratch before writing it gives NaN, deterministically, and
            /// nothing leaks from one iteration into the next.
            #[test]
            fn locals_are_fresh_in_every_iteration() {
                let n = 23usize;
                let mut g = Prog::new("fresh", DType::F64);
                let x = g.input("x", &[n]);
                let stale = g.output("stale", &[n]);
                let out = g.output("out", &[n]);
                let acc = g.local("acc", &[2]);
                let big = g.local("big", &[4096]); // 32 KiB: heap
                let (b, i) = (g.var(), g.var());
                g.push(parallel(
                    b,
                    n,
                    vec![
                        // Read before written in this iteration (the previous iteration wrote it).
                        store(stale, v(b), ld(acc, c(1))),
                        store(acc, c(1), ld(x, v(b))),
                        store(acc, c(0), k(1.0)),
                        serial(
                            i,
                            4096,
                            vec![store(big, v(i), add(ld(big, v(i)), ld(acc, c(0))))],
                        ),
                        store(out, v(b), add(ld(acc, c(1)), ld(big, c(4095)))),
                    ],
                ));
                let xv = rand_vec(n, 6, -3.0, 3.0);
                let jit = Jit::compile(&g.p).unwrap();
                for _ in 0..3 {
                    let o = jit
                        .run(&inputs(&[(
                            "x",
                            Tensor::from_f64([n], xv.clone()).unwrap(),
                        )]))
                        .unwrap();
                    assert!(o["stale"].as_f64().unwrap().iter().all(|s| s.is_nan()));
                    // `big` starts as NaN in every iteration too.
                    assert!(o["out"].as_f64().unwrap().iter().all(|s| s.is_nan()));
                }
            }

            /// The runtime splits `0..n` into disjoint contiguous chunks covering it exactly once, and
            /// parallel programs really call it.
            #[test]
            fn parallel_for_covers_the_range_once() {
                use std::sync::Mutex;
                use tttc_backends::$backend::{thread_count, tttc_parallel_for};
                static SEEN: Mutex<Vec<(i64, i64, std::thread::ThreadId)>> = Mutex::new(Vec::new());
                unsafe extern "C" fn worker(ctx: *mut u8, begin: i64, end: i64) {
                    assert_eq!(ctx as usize, 0x1234);
                    SEEN.lock()
                        .unwrap()
                        .push((begin, end, std::thread::current().id()));
                }
                for n in [0i64, 1, 2, 3, 7, 64, 1001] {
                    SEEN.lock().unwrap().clear();
                    // SAFETY: the worker only records its arguments.
                    unsafe { tttc_parallel_for(Some(worker), 0x1234 as *mut u8, n) };
                    let mut seen = SEEN.lock().unwrap().clone();
                    seen.sort_by_key(|s| s.0);
                    let mut next = 0;
                    for &(b, e, _) in &seen {
                        assert_eq!(b, next, "n = {n}: {seen:?}");
                        assert!(e > b, "n = {n}: {seen:?}");
                        next = e;
                    }
                    assert_eq!(next, n.max(0), "n = {n}: {seen:?}");
                    let chunks = thread_count().min(n.max(0) as usize);
                    assert_eq!(seen.len(), chunks, "n = {n}: {seen:?}");
                    // The chunks run on a persistent pool: a worker that finishes early may
                    // take another chunk, so they use at most one thread each, and the calling
                    // thread waits rather than computing.
                    let threads: std::collections::BTreeSet<_> =
                        seen.iter().map(|s| format!("{:?}", s.2)).collect();
                    assert!(
                        threads.len() <= chunks.max(1),
                        "at most one thread per chunk: {seen:?}"
                    );
                    if chunks > 1 {
                        let caller = format!("{:?}", std::thread::current().id());
                        assert!(
                            !threads.contains(&caller),
                            "chunks run on the pool: {seen:?}"
                        );
                    }
                }
                // SAFETY: a null worker does nothing.
                unsafe { tttc_parallel_for(None, std::ptr::null_mut(), 5) };

                let mut g = Prog::new("p", DType::F32);
                let x = g.input("x", &[4]);
                let o = g.output("o", &[4]);
                let i = g.var();
                g.push(parallel(i, 4, vec![store(o, v(i), ld(x, v(i)))]));
                $calls_parallel_for(&g.p);
            }
        }
    };
}

#[cfg(feature = "llvm")]
parallel_tests!(llvm, LlvmJit, calls_parallel_for: llvm_calls_parallel_for);
#[cfg(feature = "cranelift")]
parallel_tests!(cranelift, CraneliftJit, calls_parallel_for: cranelift_calls_parallel_for);

/// LLVM: a worker whose statement list holds more loops than one part may is split into
/// `noinline` parts (`tttc.part.*`) taking the buffers and the enclosing loop variables they use
/// (here the slice `b` and the round `r`); the results are plain Rust loops', bit for bit (only
/// additions, so no FMA contraction can differ).
#[cfg(feature = "llvm")]
#[test]
fn long_worker_bodies_are_split_into_parts() {
    use tttc_backends::llvm::LlvmJit;
    let (bn, n, reps, rounds) = (5usize, 8usize, 130usize, 3usize);
    let mut g = Prog::new("parts", DType::F32);
    let x = g.input("x", &[bn, n]);
    let out = g.output("out", &[bn, n]);
    let s = g.local("s", &[n]);
    let (b, r, i0, o) = (g.var(), g.var(), g.var(), g.var());
    let mut round = Vec::new();
    for _ in 0..reps {
        let i = g.var();
        let term = add(ld(x, affine(v(b), n as i64, v(i))), Value::FromIndex(v(r)));
        round.push(serial(i, n, vec![store(s, v(i), add(ld(s, v(i)), term))]));
    }
    g.push(parallel(
        b,
        bn,
        vec![
            serial(i0, n, vec![store(s, v(i0), k(0.0))]),
            serial(r, rounds, round),
            serial(
                o,
                n,
                vec![store(out, affine(v(b), n as i64, v(o)), ld(s, v(o)))],
            ),
        ],
    ));
    let ir = tttc_backends::llvm::optimized_ir(&g.p).unwrap();
    assert!(
        ir.contains("@tttc.part.2("),
        "expected at least 3 parts:\n{ir}"
    );
    let xv: Vec<f32> = rand_vec(bn * n, 5, -2.0, 2.0)
        .iter()
        .map(|&a| a as f32)
        .collect();
    let ins = inputs(&[("x", Tensor::from_f32([bn, n], xv.clone()).unwrap())]);
    let o = LlvmJit::compile(&g.p).unwrap().run(&ins).unwrap();
    let got = o["out"].as_f32().unwrap();
    for bi in 0..bn {
        for q in 0..n {
            let mut acc = 0.0f32;
            for ri in 0..rounds {
                for _ in 0..reps {
                    acc += xv[bi * n + q] + ri as f32;
                }
            }
            assert_eq!(got[bi * n + q], acc, "out[{bi}, {q}]");
        }
    }
}
