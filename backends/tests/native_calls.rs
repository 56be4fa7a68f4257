//! Kernel functions and calls on the native backends: a layer with a parallel loop and per-thread
//! scratch, called three times on other weights, must compute what the kernel interpreter
//! computes (it inlines the calls, the definition of a call). LLVM compiles the function once
//! (`tttc.fn.0`, `noinline`) and calls it per layer; Cranelift inlines.
//!
//! Tolerances: Cranelift equals the kernel interpreter bit for bit (same operations in the
//! same order, no FMA); LLVM may contract a multiply and an add into an FMA (one rounding
//! instead of two), so 1e-13 relative to max |expected| in f64.
#![cfg(any(feature = "llvm", feature = "cranelift"))]

mod native_common;

use native_common::*;
use std::collections::BTreeMap;
use tttc_ir::kernel::{inline_calls, BufId, FuncId, KernelFunction, KernelProgram, Stmt};
use tttc_ir::{DType, UnaryOp};
use tttc_runtime::Tensor;

const B: usize = 4;
const N: usize = 8;
const LAYERS: usize = 3;

/// `h0 = x; h_{i+1} = layer(h_i, w_i); y = h_3` with
/// `layer(h, w)[b, j] = tanh(h[b, j] * w[j]) + h[b, j]` through a per-thread scratch row.
fn program() -> KernelProgram {
    let mut p = Prog::new("layers", DType::F64);
    let x = p.input("x", &[B, N]);
    let ws: Vec<BufId> = (0..LAYERS)
        .map(|i| p.input(&format!("w.{i}"), &[N]))
        .collect();
    let hs: Vec<BufId> = (0..=LAYERS)
        .map(|i| p.temp(&format!("h{i}"), &[B, N]))
        .collect();
    let y = p.output("y", &[B, N]);
    let s = p.local("s", &[N]);
    let (i, j) = (p.var(), p.var());
    p.push(serial(i, B * N, vec![store(hs[0], v(i), ld(x, v(i)))]));
    // The function's body over the first layer's buffers.
    let (b, j1, j2) = (p.var(), p.var(), p.var());
    let row = |j| affine(v(b), N as i64, v(j));
    let body = vec![parallel(
        b,
        B,
        vec![
            serial(
                j1,
                N,
                vec![store(s, v(j1), mul(ld(hs[0], row(j1)), ld(ws[0], v(j1))))],
            ),
            serial(
                j2,
                N,
                vec![store(
                    hs[1],
                    row(j2),
                    add(un(UnaryOp::Tanh, ld(s, v(j2))), ld(hs[0], row(j2))),
                )],
            ),
        ],
    )];
    p.p.functions.push(KernelFunction {
        name: "layer".into(),
        params: vec![hs[0], ws[0], hs[1]],
        body,
    });
    for l in 0..LAYERS {
        p.push(Stmt::Call {
            func: FuncId(0),
            args: vec![hs[l], ws[l], hs[l + 1]],
        });
    }
    p.push(serial(j, B * N, vec![store(y, v(j), ld(hs[LAYERS], v(j)))]));
    p.p
}

fn ins() -> BTreeMap<String, Tensor> {
    let mut list = vec![(
        "x".to_string(),
        Tensor::from_f64(vec![B, N], rand_vec(B * N, 1, -1.0, 1.0)).unwrap(),
    )];
    for l in 0..LAYERS {
        list.push((
            format!("w.{l}"),
            Tensor::from_f64(vec![N], rand_vec(N, 10 + l as u64, -2.0, 2.0)).unwrap(),
        ));
    }
    list.into_iter().collect()
}

fn expected() -> Vec<f64> {
    let p = program();
    tttc_ir::kernel::verify(&p).expect("well formed");
    let out = tttc_backends::kernel_interp::run_kernel_program(&p, &ins()).expect("runs");
    // The interpreter agrees with a plain loop.
    let ins = ins();
    let mut h = ins["x"].to_f64_vec();
    for l in 0..LAYERS {
        let w = ins[&format!("w.{l}")].to_f64_vec();
        h = h
            .iter()
            .enumerate()
            .map(|(k, x)| (x * w[k % N]).tanh() + x)
            .collect();
    }
    let got = out["y"].to_f64_vec();
    assert_eq!(got, h);
    got
}

fn max_rel(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|x| x.is_finite()), "non-finite: {got:?}");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0, f64::max)
}

#[cfg(feature = "llvm")]
#[test]
fn llvm_compiles_the_function_once_and_calls_it_per_layer() {
    use tttc_backends::llvm::LlvmJit;
    let p = program();
    let ir = tttc_backends::llvm::optimized_ir(&p).expect("compiles");
    assert!(ir.contains("@tttc.fn.0("), "{ir}");
    // Not inlined: one call per layer (LLVM may give the internal function another calling
    // convention, `call fastcc void`).
    let calls = ir
        .lines()
        .filter(|l| l.trim_start().starts_with("call") && l.contains("@tttc.fn.0("))
        .count();
    assert_eq!(calls, LAYERS, "{ir}");
    let got = LlvmJit::compile(&p)
        .expect("compiles")
        .run(&ins())
        .expect("runs");
    let err = max_rel(&got["y"].to_f64_vec(), &expected());
    assert!(err <= 1e-13, "{err:e}");
    // The same as the calls inlined.
    let inl = LlvmJit::compile(&inline_calls(&p))
        .expect("compiles")
        .run(&ins())
        .expect("runs");
    let err = max_rel(&got["y"].to_f64_vec(), &inl["y"].to_f64_vec());
    assert!(err <= 1e-13, "{err:e}");
}

/// The module cut into parts compiled on threads (`llvm::split`: the entry, the layer
/// function and the parallel loop's worker in different objects, linked together when
/// loaded) computes what the whole module does; more parts than functions leaves some parts
/// empty.
#[cfg(feature = "llvm")]
#[test]
fn llvm_objects_cut_into_parts_link_and_agree() {
    use tttc_backends::llvm::{compile_object_in_parts, load_object, split};
    let p = program();
    let want = expected();
    for parts in [1, 2, 3, 5] {
        let bundle = compile_object_in_parts(&p, parts).expect("compiles");
        assert_eq!(
            split::decode_objects(&bundle).expect("a bundle").len(),
            parts
        );
        // SAFETY: compiled from `p` just now, in this process.
        let jit = unsafe { load_object(&p, &bundle) }.expect("links");
        let got = jit.run(&ins()).expect("runs");
        let err = max_rel(&got["y"].to_f64_vec(), &want);
        assert!(err <= 1e-13, "{parts} parts: {err:e}");
    }
}

#[cfg(feature = "cranelift")]
#[test]
fn cranelift_runs_calls_inlined() {
    use tttc_backends::cranelift::CraneliftJit;
    let p = program();
    let got = CraneliftJit::compile(&p)
        .expect("compiles")
        .run(&ins())
        .expect("runs");
    assert_eq!(got["y"].to_f64_vec(), expected());
}

/// A malformed call is refused before any code is generated.
#[test]
fn malformed_calls_are_refused() {
    let mut p = program();
    if let Some(Stmt::Call { args, .. }) = p.body.get_mut(1) {
        args.pop();
    }
    assert!(tttc_backends::kernel_interp::run_kernel_program(&p, &ins()).is_err());
    #[cfg(feature = "llvm")]
    assert!(tttc_backends::llvm::LlvmJit::compile(&p).is_err());
    #[cfg(feature = "cranelift")]
    assert!(tttc_backends::cranelift::CraneliftJit::compile(&p).is_err());
}
