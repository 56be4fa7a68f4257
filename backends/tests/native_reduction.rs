//! The native backends (LLVM, Cranelift): reductions (sums, means, dot products, a total)
//! against Rust loops that accumulate in the same order. The tests are written once and
//! expanded per backend by `reduction_tests!`.
#![cfg(any(feature = "llvm", feature = "cranelift"))]

mod native_common;

use native_common::*;
use tttc_ir::kernel::{Index, Value};
use tttc_ir::{BinaryOp, DType};
use tttc_runtime::Tensor;

/// Cranelift: row sums run 4 rows side by side (13 = 3 x 4 + 1), column sums 4 rows per SIMD
/// pass over the columns; the total is one register accumulator.
#[cfg(feature = "cranelift")]
fn cranelift_sum_stats(jit: &tttc_backends::cranelift::CraneliftJit) {
    let stats = jit.stats();
    assert_eq!(
        (stats.row_jammed_loops, stats.jammed_loops),
        (1, 1),
        "{stats:?}"
    );
}

/// LLVM: nothing backend-specific to check on the sums' JIT.
#[cfg(feature = "llvm")]
fn llvm_sum_stats(_jit: &tttc_backends::llvm::LlvmJit) {}

macro_rules! reduction_tests {
    ($backend:ident, $jit:ident, exact: $exact:expr, sum_stats: $stats:path) => {
        mod $backend {
            use super::*;
            use tttc_backends::$backend::$jit as Jit;
            /// Whether results must equal same-order Rust loops bit for bit (no FMA contraction).
            const EXACT: bool = $exact;

            fn check_sum_jit(jit: &Jit) {
                $stats(jit)
            }

            /// Row sums, row means, column sums and the total of `x[R, C]`; sums are exact (no
            /// multiply-add to contract, no reassociation allowed), so compared bit for bit.
            #[test]
            fn sums_and_means_are_bit_exact() {
                let (rows, cols) = (13usize, 101usize);
                for dtype in [DType::F32, DType::F64] {
                    let mut g = Prog::new("sums", dtype);
                    let x = g.input("x", &[rows, cols]);
                    let rs = g.output("rowsum", &[rows, 1]);
                    let rm = g.output("rowmean", &[rows, 1]);
                    let cs = g.output("colsum", &[1, cols]);
                    let tot = g.output("total", &[]);
                    let (r, cc, c2, r2, r3, c3) =
                        (g.var(), g.var(), g.var(), g.var(), g.var(), g.var());
                    let xi = |r, c| ld(x, affine(v(r), cols as i64, v(c)));
                    g.push(serial(
                        r,
                        rows,
                        vec![
                            store(rs, v(r), k(0.0)),
                            serial(
                                cc,
                                cols,
                                vec![store(rs, v(r), add(ld(rs, v(r)), xi(r, cc)))],
                            ),
                            store(
                                rm,
                                v(r),
                                bin(
                                    BinaryOp::Div,
                                    ld(rs, v(r)),
                                    Value::FromIndex(Index::Const(cols as i64)),
                                ),
                            ),
                        ],
                    ));
                    // Column sums with the reduction loop outside (a vectorizable accumulation).
                    g.push(serial(c2, cols, vec![store(cs, v(c2), k(0.0))]));
                    g.push(serial(
                        r2,
                        rows,
                        vec![serial(
                            c2,
                            cols,
                            vec![store(cs, v(c2), add(ld(cs, v(c2)), xi(r2, c2)))],
                        )],
                    ));
                    g.push(store(tot, c(0), k(0.0)));
                    g.push(serial(
                        r3,
                        rows,
                        vec![serial(
                            c3,
                            cols,
                            vec![store(tot, c(0), add(ld(tot, c(0)), xi(r3, c3)))],
                        )],
                    ));
                    let xv = rand_vec(rows * cols, 11, -100.0, 100.0);
                    let t = match dtype {
                        DType::F32 => Tensor::from_f32(
                            [rows, cols],
                            xv.iter().map(|&a| a as f32).collect::<Vec<_>>(),
                        ),
                        DType::F64 => Tensor::from_f64([rows, cols], xv.clone()),
                    }
                    .unwrap();
                    let jit = Jit::compile(&g.p).unwrap();
                    check_sum_jit(&jit);
                    let o = jit.run(&inputs(&[("x", t)])).unwrap();
                    assert_eq!(o["total"].shape(), &[] as &[usize]);
                    match dtype {
                        DType::F32 => {
                            let xv: Vec<f32> = xv.iter().map(|&a| a as f32).collect();
                            let (gs, gm, gc) = (
                                o["rowsum"].as_f32().unwrap(),
                                o["rowmean"].as_f32().unwrap(),
                                o["colsum"].as_f32().unwrap(),
                            );
                            let mut colsum = vec![0.0f32; cols];
                            let mut total = 0.0f32;
                            for rr in 0..rows {
                                let mut s = 0.0f32;
                                for q in 0..cols {
                                    s += xv[rr * cols + q];
                                    colsum[q] += xv[rr * cols + q];
                                    total += xv[rr * cols + q];
                                }
                                assert_eq!(gs[rr].to_bits(), s.to_bits(), "rowsum[{rr}]");
                                assert_eq!(
                                    gm[rr].to_bits(),
                                    (s / cols as f32).to_bits(),
                                    "rowmean[{rr}]"
                                );
                            }
                            for q in 0..cols {
                                assert_eq!(gc[q].to_bits(), colsum[q].to_bits(), "colsum[{q}]");
                            }
                            assert_eq!(o["total"].as_f32().unwrap()[0].to_bits(), total.to_bits());
                        }
                        DType::F64 => {
                            let (gs, gm, gc) = (
                                o["rowsum"].as_f64().unwrap(),
                                o["rowmean"].as_f64().unwrap(),
                                o["colsum"].as_f64().unwrap(),
                            );
                            let mut colsum = vec![0.0f64; cols];
                            let mut total = 0.0f64;
                            for rr in 0..rows {
                                let mut s = 0.0f64;
                                for q in 0..cols {
                                    s += xv[rr * cols + q];
                                    colsum[q] += xv[rr * cols + q];
                                    total += xv[rr * cols + q];
                                }
                                assert_eq!(gs[rr].to_bits(), s.to_bits(), "rowsum[{rr}]");
                                assert_eq!(
                                    gm[rr].to_bits(),
                                    (s / cols as f64).to_bits(),
                                    "rowmean[{rr}]"
                                );
                            }
                            for q in 0..cols {
                                assert_eq!(gc[q].to_bits(), colsum[q].to_bits(), "colsum[{q}]");
                            }
                            assert_eq!(o["total"].as_f64().unwrap()[0].to_bits(), total.to_bits());
                        }
                    }
                }
            }

            /// Dot products of rows with a vector, reduced in a parallel loop into a local accumulator.
            /// Cranelift never fuses a multiply-add, so its result is the same-order `f32` loop's, bit for
            /// bit; LLVM may fuse multiply-adds (`contract`): tolerance `(n + 2) eps Σ|a b|`.
            #[test]
            fn parallel_dot_products() {
                let (rows, n) = (29usize, 257usize);
                let mut g = Prog::new("dots", DType::F32);
                let a = g.input("a", &[rows, n]);
                let w = g.input("w", &[n]);
                let out = g.output("d", &[rows]);
                let acc = g.local("acc", &[1]);
                let (r, i) = (g.var(), g.var());
                g.push(parallel(
                    r,
                    rows,
                    vec![
                        store(acc, c(0), k(0.0)),
                        serial(
                            i,
                            n,
                            vec![store(
                                acc,
                                c(0),
                                add(
                                    ld(acc, c(0)),
                                    mul(ld(a, affine(v(r), n as i64, v(i))), ld(w, v(i))),
                                ),
                            )],
                        ),
                        store(out, v(r), ld(acc, c(0))),
                    ],
                ));
                let av: Vec<f32> = rand_vec(rows * n, 12, -1.0, 1.0)
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                let wv: Vec<f32> = rand_vec(n, 13, -1.0, 1.0)
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                let o = Jit::compile(&g.p)
                    .unwrap()
                    .run(&inputs(&[
                        ("a", Tensor::from_f32([rows, n], av.clone()).unwrap()),
                        ("w", Tensor::from_f32([n], wv.clone()).unwrap()),
                    ]))
                    .unwrap();
                let got = o["d"].as_f32().unwrap();
                for rr in 0..rows {
                    if EXACT {
                        let mut s = 0.0f32;
                        for q in 0..n {
                            s += av[rr * n + q] * wv[q];
                        }
                        assert_eq!(
                            got[rr].to_bits(),
                            s.to_bits(),
                            "d[{rr}] = {} vs {s}",
                            got[rr]
                        );
                        continue;
                    }
                    let (mut s, mut mag) = (0.0f64, 0.0f64);
                    for q in 0..n {
                        let p = f64::from(av[rr * n + q]) * f64::from(wv[q]);
                        s += p;
                        mag += p.abs();
                    }
                    let tol = (n as f64 + 2.0) * f64::from(f32::EPSILON) * mag;
                    assert!(
                        (f64::from(got[rr]) - s).abs() <= tol,
                        "d[{rr}] = {} vs {s}",
                        got[rr]
                    );
                }
            }
        }
    };
}

#[cfg(feature = "llvm")]
reduction_tests!(llvm, LlvmJit, exact: false, sum_stats: llvm_sum_stats);
#[cfg(feature = "cranelift")]
reduction_tests!(cranelift, CraneliftJit, exact: true, sum_stats: cranelift_sum_stats);
