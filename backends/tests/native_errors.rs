//! The native backends (LLVM, Cranelift): wrong inputs and malformed programs are errors, never
//! native crashes. The tests are written once and expanded per backend by `error_tests!`.
#![cfg(any(feature = "llvm", feature = "cranelift"))]

mod native_common;

use native_common::*;
use tttc_ir::kernel::{
    BufId, Buffer, BufferKind, Index, KernelProgram, Layout, MemorySpace, VarId,
};
use tttc_ir::DType;
use tttc_runtime::Tensor;

/// `o[i] = x[i] + 1` over `n`.
fn plus_one(n: usize) -> KernelProgram {
    let mut g = Prog::new("plus_one", DType::F32);
    let x = g.input("x", &[n]);
    let o = g.output("o", &[n]);
    let i = g.var();
    g.push(serial(i, n, vec![store(o, v(i), add(ld(x, v(i)), k(1.0)))]));
    g.p
}

/// The backend-neutral tests for `$backend`, whose JIT is `$jit` and error `$err`.
macro_rules! error_tests {
    ($backend:ident, $jit:ident, $err:ident) => {
        mod $backend {
            use super::*;
            use tttc_backends::$backend::{$err as Error, $jit as Jit};

            fn input_error(r: Result<impl std::fmt::Debug, Error>, name: &str, what: &str) {
                match r {
                    Err(Error::Input(e)) => {
                        assert_eq!(e.name(), name);
                        let msg = e.to_string();
                        assert!(msg.contains(what), "{msg}");
                    }
                    other => panic!("expected an input error about {name}, got {other:?}"),
                }
            }

            #[test]
            fn wrong_inputs_are_errors() {
                let jit = Jit::compile(&plus_one(8)).unwrap();
                let ok = Tensor::from_f32([8], vec![1.0f32; 8]).unwrap();
                // Right: works.
                let out = jit.run(&inputs(&[("x", ok.clone())])).unwrap();
                assert_eq!(out["o"].as_f32().unwrap(), &[2.0f32; 8]);
                // Missing, unknown, wrong element type, too short, too long.
                input_error(jit.run(&inputs(&[])), "x", "missing");
                input_error(
                    jit.run(&inputs(&[("x", ok.clone()), ("y", ok.clone())])),
                    "y",
                    "no such input",
                );
                input_error(
                    jit.run(&inputs(&[(
                        "x",
                        Tensor::from_f64([8], vec![1.0; 8]).unwrap(),
                    )])),
                    "x",
                    "element type",
                );
                input_error(
                    jit.run(&inputs(&[(
                        "x",
                        Tensor::from_f32([7], vec![1.0f32; 7]).unwrap(),
                    )])),
                    "x",
                    "element(s)",
                );
                input_error(
                    jit.run(&inputs(&[(
                        "x",
                        Tensor::from_f32([3, 3], vec![1.0f32; 9]).unwrap(),
                    )])),
                    "x",
                    "element(s)",
                );
                // Same size, other shape: accepted (sizes are what matter to the kernel).
                let out = jit
                    .run(&inputs(&[(
                        "x",
                        Tensor::from_f32([2, 4], vec![0.5f32; 8]).unwrap(),
                    )]))
                    .unwrap();
                assert_eq!(out["o"].shape(), &[8]);
            }

            fn invalid(p: &KernelProgram, what: &str) {
                match Jit::compile(p) {
                    Err(Error::Invalid(msg)) => assert!(msg.contains(what), "{msg}"),
                    other => {
                        panic!("expected an invalid-program error about {what:?}, got {other:?}")
                    }
                }
            }

            #[test]
            fn out_of_bounds_accesses_are_refused() {
                // Store one past the end.
                let mut p = plus_one(8);
                let mut g = Prog { p: p.clone() };
                let i = VarId(0);
                g.p.body = vec![serial(
                    i,
                    8,
                    vec![store(BufId(1), Index::sum(v(i), c(1)), k(0.0))],
                )];
                invalid(&g.p, "outside");
                // Load below zero.
                g.p.body = vec![serial(
                    i,
                    8,
                    vec![store(BufId(1), v(i), ld(BufId(0), Index::sum(v(i), c(-1))))],
                )];
                invalid(&g.p, "outside");
                // Negative stride.
                g.p.body = vec![serial(
                    i,
                    8,
                    vec![store(BufId(1), Index::scaled(v(i), -1), k(0.0))],
                )];
                invalid(&g.p, "outside");
                // A remainder keeps it inside; a quotient too.
                g.p.body = vec![serial(
                    i,
                    100,
                    vec![store(
                        BufId(1),
                        Index::Rem(Box::new(v(i)), 8),
                        ld(BufId(0), Index::Div(Box::new(v(i)), 13)),
                    )],
                )];
                Jit::compile(&g.p).expect("in bounds");
                // Division by zero, overflow.
                g.p.body = vec![serial(
                    i,
                    8,
                    vec![store(BufId(1), Index::Div(Box::new(v(i)), 0), k(0.0))],
                )];
                invalid(&g.p, "divides by 0");
                g.p.body = vec![serial(
                    i,
                    8,
                    vec![store(BufId(1), Index::scaled(v(i), i64::MAX), k(0.0))],
                )];
                invalid(&g.p, "overflow");
                // Constant index on an empty buffer.
                p.buffers[1].layout = Layout::row_major(&[0]);
                p.body = vec![store(BufId(1), c(0), k(1.0))];
                invalid(&p, "outside");
            }

            #[test]
            fn malformed_programs_are_refused() {
                let base = plus_one(4);
                let i = VarId(0);
                // Store into an input.
                let mut p = base.clone();
                p.body = vec![serial(i, 4, vec![store(BufId(0), v(i), k(0.0))])];
                invalid(&p, "store into program input");
                // Unknown buffer.
                p.body = vec![serial(i, 4, vec![store(BufId(9), v(i), k(0.0))])];
                invalid(&p, "unknown buffer");
                // Loop variable out of scope.
                p.body = vec![serial(i, 4, vec![]), store(BufId(1), v(i), k(0.0))];
                invalid(&p, "outside its loop");
                // A loop variable bound again inside its own loop, or beyond the program's count.
                p.body = vec![serial(
                    i,
                    4,
                    vec![serial(i, 4, vec![store(BufId(1), v(i), k(0.0))])],
                )];
                invalid(&p, "bound again");
                p.body = vec![serial(
                    VarId(3),
                    4,
                    vec![store(BufId(1), v(VarId(3)), k(0.0))],
                )];
                invalid(&p, "not below");
                // Inputs and outputs are row-major.
                let mut q = base.clone();
                q.buffers[1].layout.strides = vec![2];
                invalid(&q, "row-major");
                // Inputs must be global.
                let mut q = base.clone();
                q.buffers[0].space = MemorySpace::Local;
                invalid(&q, "Local memory");
                // Two inputs with one name.
                let mut q = base.clone();
                q.buffers.push(Buffer {
                    name: "x".into(),
                    kind: BufferKind::Input("x".into()),
                    space: MemorySpace::Global,
                    layout: Layout::row_major(&[1]),
                });
                invalid(&q, "two program inputs");
                // Absurd sizes.
                let mut q = base.clone();
                q.buffers[1].layout = Layout::row_major(&[usize::MAX, 4]);
                invalid(&q, "too large");
                // A local used inside and outside a parallel loop.
                let mut g = Prog::new("l", DType::F64);
                let o = g.output("o", &[4]);
                let s = g.local("s", &[4]);
                let (a, b) = (g.var(), g.var());
                g.push(serial(a, 4, vec![store(s, v(a), k(1.0))]));
                g.push(parallel(b, 4, vec![store(o, v(b), ld(s, v(b)))]));
                invalid(&g.p, "between the threads");
                // Loops that never run are not checked (nothing in them executes).
                let mut p = base.clone();
                p.body = vec![serial(
                    i,
                    0,
                    vec![store(BufId(77), Index::Var(VarId(5)), k(0.0))],
                )];
                let out = Jit::compile(&p)
                    .unwrap()
                    .run(&inputs(&[(
                        "x",
                        Tensor::from_f32([4], vec![1.0f32; 4]).unwrap(),
                    )]))
                    .unwrap();
                assert!(out["o"].as_f32().unwrap().iter().all(|x| x.is_nan()));
            }

            /// Outputs start out as NaN on every call (like the kernel interpreter); programs without
            /// inputs or outputs work.
            #[test]
            fn outputs_start_as_nan_and_trivial_programs_run() {
                let mut g = Prog::new("half", DType::F64);
                let x = g.input("x", &[6]);
                let o = g.output("o", &[6]);
                let i = g.var();
                g.push(serial(i, 3, vec![store(o, v(i), ld(x, v(i)))]));
                g.push(serial(
                    i,
                    2,
                    vec![store(o, v(i), add(ld(o, v(i)), ld(x, v(i))))],
                ));
                let jit = Jit::compile(&g.p).unwrap();
                let ins = inputs(&[("x", Tensor::from_f64([6], vec![2.0; 6]).unwrap())]);
                for _ in 0..2 {
                    let out = jit.run(&ins).unwrap();
                    let o = out["o"].as_f64().unwrap();
                    assert_eq!(&o[..3], &[4.0, 4.0, 2.0]);
                    assert!(o[3..].iter().all(|x| x.is_nan()), "{o:?}");
                }
                assert!(jit.compile_time() > std::time::Duration::ZERO);

                let empty = Prog::new("empty", DType::F32).p;
                let out = Jit::compile(&empty).unwrap().run(&inputs(&[])).unwrap();
                assert!(out.is_empty());
            }
        }
    };
}

#[cfg(feature = "llvm")]
error_tests!(llvm, LlvmJit, LlvmError);
#[cfg(feature = "cranelift")]
error_tests!(cranelift, CraneliftJit, CraneliftError);

/// LLVM only: objects for shared libraries (`emit_object`).
#[cfg(feature = "llvm")]
#[test]
fn bad_entry_names_are_refused() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("llvm_errors");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("k.o");
    for name in [
        "",
        "1abc",
        "a-b",
        "a.b",
        "tanhf",
        "tttc_parallel_for",
        "malloc",
    ] {
        match tttc_backends::llvm::emit_object(&plus_one(2), &path, name) {
            Err(tttc_backends::llvm::LlvmError::EntryName(n, _)) => assert_eq!(n, name),
            other => panic!("{name:?}: {other:?}"),
        }
    }
    // A directory is not a file.
    match tttc_backends::llvm::emit_object(&plus_one(2), &dir, "k") {
        Err(tttc_backends::llvm::LlvmError::Io { .. }) => {}
        other => panic!("{other:?}"),
    }
    // Invalid programs fail before anything is written.
    let mut p = plus_one(2);
    p.body = vec![store(BufId(1), c(5), k(0.0))];
    assert!(matches!(
        tttc_backends::llvm::emit_object(&p, &path, "k"),
        Err(tttc_backends::llvm::LlvmError::Invalid(_))
    ));
}
