//! LLVM backend against the kernel interpreter (the oracle): the same programs, including the
//! scratch-buffer rules (`Local`/`Shared` freshness under `Parallel`, `GpuBlock`, `GpuThread`)
//! and NaN for elements read before being written, give the same outputs.
#![cfg(feature = "llvm")]

mod native_common;

use native_common::*;
use std::collections::BTreeMap;
use tttc_backends::kernel_interp::run_kernel_program;
use tttc_backends::llvm::LlvmJit;
use tttc_ir::kernel::{BufferKind, Index, KernelProgram, MemorySpace, Schedule, Value};
use tttc_ir::{DType, UnaryOp};
use tttc_runtime::Tensor;

fn compare(p: &KernelProgram, ins: &BTreeMap<String, Tensor>) {
    let want = run_kernel_program(p, ins).expect("the oracle runs it");
    let got = LlvmJit::compile(p)
        .expect("compiles")
        .run(ins)
        .expect("runs");
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
            let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= eps * b.abs().max(1.0);
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
                                Index::sum(Index::scaled(v(t2), -1), c(threads as i64 - 1)),
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
                    Tensor::from_f32([m, kk], av.iter().map(|&x| x as f32).collect::<Vec<_>>())
                        .unwrap(),
                ),
                (
                    "b",
                    Tensor::from_f32([kk, n], bv.iter().map(|&x| x as f32).collect::<Vec<_>>())
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
