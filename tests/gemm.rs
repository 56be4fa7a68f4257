//! Large matrix products through the library gemm ([`Stmt::Gemm`]): `.ttt` programs with
//! products above the threshold (plain, a transposed weight `x @ w.T`, batched, broadcast
//! batches, a rank-2 weight under a batched input, a lazy operand, a few rows against a large
//! weight, which the runtime splits by columns over the threads, a batch of rows sharing a
//! transposed weight, which it folds into one product for its narrow kernel) compiled through the whole
//! CPU pipeline and run on LLVM and Cranelift in f32 and f64, against the graph interpreter
//! (the oracle); the kernel IR is checked to really hold gemms for the CPU (and none for the
//! GPU or below the threshold). Hand-built kernel programs check what the lowering does not
//! emit (accumulation, negative strides) against the kernel interpreter, and that an AOT object
//! never calls the library.
//!
//! Tolerance: a gemm sums the `k` products of each element in another order than the
//! interpreter (blocked, with FMA). Either way the error of an element is at most
//! `k·eps·Σ_p |a_ip·b_pj|` (the standard γ_k bound, any order), so two results differ by at most
//! `2·k·eps·k·max|a|·max|b|`, which relative to max |y| (how the shared helper measures) is the
//! tolerance each case computes from its own data ([`tolerance`]). For the shapes here that is
//! about 1e-12 in f64 and 1e-4 in f32; the observed errors are far below.
#![cfg(all(feature = "llvm", feature = "cranelift"))]

mod common;

use common::random::Lcg;
use common::{assert_close, assert_tensor_close};
use std::collections::BTreeMap;
use tttc::backends::cranelift::CraneliftJit;
use tttc::backends::kernel_interp::run_kernel_program;
use tttc::backends::llvm::LlvmJit;
use tttc::ir::kernel::{
    expand_gemm, BufId, Buffer, BufferKind, Gemm, Index, KernelProgram, MatrixView, MemorySpace,
    Schedule, Stmt, Value, VarId,
};
use tttc::ir::DType;
use tttc::passes::lower_kernel::{lower_program, GEMM_MIN_MNK};
use tttc::passes::pipeline::Target;
use tttc::runtime::Tensor;
use tttc::{Backend, Precision, Settings};

/// One program: its source, its inputs' shapes, and its products' `k`.
struct Case {
    name: &'static str,
    source: &'static str,
    inputs: &'static [(&'static str, &'static [usize])],
    k: usize,
    /// Gemm statements the CPU lowering must emit.
    gemms: usize,
}

/// Every product has `m·n·k` of at least [`GEMM_MIN_MNK`] (checked).
const CASES: &[Case] = &[
    Case {
        name: "plain",
        source: "main {\n input x: [96, 80]\n input w: [80, 72]\n output y = x @ w\n}\n",
        inputs: &[("x", &[96, 80]), ("w", &[80, 72])],
        k: 80,
        gemms: 1,
    },
    Case {
        name: "transposed weight",
        source: "main {\n input x: [96, 80]\n input w: [72, 80]\n output y = x @ w.T\n}\n",
        inputs: &[("x", &[96, 80]), ("w", &[72, 80])],
        k: 80,
        gemms: 1,
    },
    Case {
        name: "batched",
        source: "main {\n input a: [3, 40, 72]\n input b: [3, 72, 96]\n output y = a @ b\n}\n",
        inputs: &[("a", &[3, 40, 72]), ("b", &[3, 72, 96])],
        k: 72,
        gemms: 1,
    },
    Case {
        name: "broadcast batches",
        source: "main {\n input a: [2, 1, 48, 80]\n input b: [3, 80, 72]\n output y = a @ b\n}\n",
        inputs: &[("a", &[2, 1, 48, 80]), ("b", &[3, 80, 72])],
        k: 80,
        gemms: 1,
    },
    Case {
        name: "batched input, shared weight, lazy operand, two uses",
        source: "main {\n input x: [2, 48, 80]\n input w: [80, 72]\n input v: [72, 80]\n \
                 let h = (x * 2 + 1) @ w\n output y = h @ v\n output z = h\n}\n",
        inputs: &[("x", &[2, 48, 80]), ("w", &[80, 72]), ("v", &[72, 80])],
        k: 80,
        gemms: 2,
    },
    // A few rows against a large weight (one token's projection): split by columns over the
    // worker threads; 520 columns leave a ragged last block.
    Case {
        name: "one row, large weight",
        source: "main {\n input x: [1, 512]\n input w: [512, 520]\n output y = x @ w\n}\n",
        inputs: &[("x", &[1, 512]), ("w", &[512, 520])],
        k: 512,
        gemms: 1,
    },
    Case {
        name: "three rows, large transposed weight",
        source: "main {\n input x: [3, 512]\n input w: [520, 512]\n output y = x @ w.T\n}\n",
        inputs: &[("x", &[3, 512]), ("w", &[520, 512])],
        k: 512,
        gemms: 1,
    },
    // A batch of single tokens against one transposed weight (a batched decode step): one
    // product of 4 rows, run by the narrow kernel (the runtime's folding of batch axes into
    // rows is checked on hand-built products below, `folding_program`).
    Case {
        name: "a batch of single rows, one transposed weight",
        source: "main {\n input x: [4, 1, 512]\n input w: [520, 512]\n output y = x @ w.T\n}\n",
        inputs: &[("x", &[4, 1, 512]), ("w", &[520, 512])],
        k: 512,
        gemms: 1,
    },
    // Four pairs of rows fold into one product of 8 rows (the narrow kernel's largest).
    Case {
        name: "a batch of row pairs, one transposed weight",
        source: "main {\n input x: [4, 2, 200]\n input w: [130, 200]\n output y = x @ w.T\n}\n",
        inputs: &[("x", &[4, 2, 200]), ("w", &[130, 200])],
        k: 200,
        gemms: 1,
    },
];

fn inputs(case: &Case, seed: u64) -> BTreeMap<String, Tensor> {
    let mut rng = Lcg(seed);
    case.inputs
        .iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let t = Tensor::from_f64(shape.to_vec(), rng.vec(n, 1.0)).expect("tensor");
            (name.to_string(), t)
        })
        .collect()
}

/// The bound `2·k·eps·k·max|a|·max|b| / max|y|` (see the module docs); `scale` bounds the
/// operands' magnitudes (3 for the lazy `x * 2 + 1`).
fn tolerance(k: usize, precision: Precision, scale: f64, want: &Tensor) -> f64 {
    let eps = match precision {
        Precision::F64 => f64::EPSILON,
        Precision::F32 => f32::EPSILON as f64,
    };
    let max_y = want.to_f64_vec().iter().fold(0.0f64, |m, x| m.max(x.abs()));
    2.0 * (k * k) as f64 * eps * scale / max_y.max(1e-300)
}

/// `p`'s outputs on `ins` from the LLVM and the Cranelift JIT, named by backend.
fn on_both_jits(
    p: &KernelProgram,
    ins: &BTreeMap<String, Tensor>,
) -> [(&'static str, BTreeMap<String, Tensor>); 2] {
    let llvm = LlvmJit::compile(p).expect("llvm compiles").run(ins);
    let cl = CraneliftJit::compile(p)
        .expect("cranelift compiles")
        .run(ins);
    [
        ("llvm", llvm.expect("llvm runs")),
        ("cranelift", cl.expect("cranelift runs")),
    ]
}

fn count_gemms(k: &KernelProgram) -> usize {
    k.body.iter().filter(|s| matches!(s, Stmt::Gemm(_))).count()
}

#[test]
fn large_products_run_through_the_library_and_match_the_interpreter() {
    let settings = Settings::new();
    for case in CASES {
        let ins = inputs(case, 7);
        for precision in [Precision::F64, Precision::F32] {
            let what = format!("{} {precision:?}", case.name);
            let program = tttc::compile_source("gemm.ttt", case.source, precision, &settings)
                .unwrap_or_else(|e| panic!("{what}: compile: {e}"));
            let bound = tttc::bind(&program, &ins, &settings, precision.elem())
                .unwrap_or_else(|e| panic!("{what}: bind: {e}"));
            // The CPU pipeline really uses the library (the test fails if lowering stops).
            let cpu = tttc::driver::kernel_program(&bound.program, Target::Cpu)
                .unwrap_or_else(|e| panic!("{what}: lower: {e}"));
            assert_eq!(count_gemms(&cpu), case.gemms, "{what}: gemms in\n{}", {
                tttc::ir::kernel::print_kernel_program(&cpu)
            });
            for s in &cpu.body {
                if let Stmt::Gemm(g) = s {
                    assert!((g.m * g.n * g.k) as u64 >= GEMM_MIN_MNK, "{what}: {g}");
                }
            }
            let oracle = tttc::prepare(Backend::Interp, &bound.program)
                .and_then(|p| p.run(&bound.inputs))
                .unwrap_or_else(|e| panic!("{what}: interp: {e}"));
            for backend in [Backend::Llvm, Backend::Cranelift] {
                let got = tttc::prepare(backend, &bound.program)
                    .and_then(|p| p.run(&bound.inputs))
                    .unwrap_or_else(|e| panic!("{what} {}: {e}", backend.name()));
                for (name, want) in &oracle {
                    // Two products in a row: `h`'s error (operands up to 3) carried through the
                    // second product's 72 terms, plus that product's own: `3·72·2`.
                    let scale = if case.gemms == 2 {
                        3.0 * 72.0 * 2.0
                    } else {
                        1.0
                    };
                    let tol = tolerance(case.k, precision, scale, want);
                    assert_tensor_close(
                        &format!("{what} {} {name}", backend.name()),
                        &got[name],
                        want,
                        tol,
                    );
                }
            }
        }
    }
}

#[test]
fn gpu_and_small_products_keep_the_loop_nest() {
    let settings = Settings::new();
    let case = &CASES[1];
    let ins = inputs(case, 3);
    let program =
        tttc::compile_source("gemm.ttt", case.source, Precision::F32, &settings).expect("compiles");
    let bound = tttc::bind(&program, &ins, &settings, Precision::F32.elem()).expect("binds");
    let gpu = tttc::driver::kernel_program(&bound.program, Target::Gpu(Default::default()))
        .expect("GPU lowering");
    assert_eq!(count_gemms(&gpu), 0, "a gemm on the GPU");
    let loops = lower_program(&bound.program).expect("loops-only lowering");
    assert_eq!(count_gemms(&loops), 0, "a gemm without the library option");

    let small = "main {\n input x: [16, 16]\n input w: [16, 16]\n output y = x @ w\n}\n";
    let program = tttc::compile_source("small.ttt", small, Precision::F32, &settings).expect("ok");
    let mut rng = Lcg(5);
    let ins: BTreeMap<String, Tensor> = ["x", "w"]
        .map(|n| {
            let t = Tensor::from_f64(vec![16, 16], rng.vec(256, 1.0)).expect("tensor");
            (n.to_string(), t)
        })
        .into();
    let bound = tttc::bind(&program, &ins, &settings, Precision::F32.elem()).expect("binds");
    let cpu = tttc::driver::kernel_program(&bound.program, Target::Cpu).expect("lowers");
    const { assert!(16 * 16 * 16 < GEMM_MIN_MNK) };
    assert_eq!(count_gemms(&cpu), 0, "a gemm below the threshold");
}

/// `c[2, 40, 36] = 1 + i/40 - j/36` (a loop nest), then `c[t] += a @ bᵀ` with `a` shared by
/// both batches (stride 0), `b` read transposed through its strides and the rows of `a` read
/// backwards (a negative row stride): everything the lowering does not emit.
fn accumulate_program(dtype: DType) -> KernelProgram {
    let (m, n, k) = (40, 36, 70);
    let buf = |name: &str, kind: BufferKind, shape: &[usize]| {
        Buffer::row_major(name, kind, MemorySpace::Global, shape)
    };
    let g = Gemm {
        a: MatrixView {
            buf: BufId(0),
            offset: ((m - 1) * k) as i64,
            batch_strides: vec![0],
            row_stride: -(k as i64),
            col_stride: 1,
        },
        b: MatrixView {
            buf: BufId(1),
            offset: 0,
            batch_strides: vec![0],
            row_stride: 1,
            col_stride: k as i64,
        },
        c: MatrixView {
            buf: BufId(2),
            offset: 0,
            batch_strides: vec![(m * n) as i64],
            row_stride: n as i64,
            col_stride: 1,
        },
        m,
        n,
        k,
        batch: vec![2],
        accumulate: true,
    };
    let (t, i, j) = (VarId(0), VarId(1), VarId(2));
    let at = Index::sum(
        Index::sum(
            Index::scaled(Index::var(t), (m * n) as i64),
            Index::scaled(Index::var(i), n as i64),
        ),
        Index::var(j),
    );
    let init = Value::binary(
        tttc::ir::BinaryOp::Sub,
        Value::binary(
            tttc::ir::BinaryOp::Add,
            Value::Const(1.0),
            Value::binary(
                tttc::ir::BinaryOp::Div,
                Value::FromIndex(Index::var(i)),
                Value::Const(m as f64),
            ),
        ),
        Value::binary(
            tttc::ir::BinaryOp::Div,
            Value::FromIndex(Index::var(j)),
            Value::Const(n as f64),
        ),
    );
    let fill = Stmt::counted_loop(
        t,
        2,
        Schedule::Serial,
        vec![Stmt::counted_loop(
            i,
            m,
            Schedule::Serial,
            vec![Stmt::counted_loop(
                j,
                n,
                Schedule::Serial,
                vec![Stmt::store(BufId(2), at, init)],
            )],
        )],
    );
    KernelProgram {
        name: "gemm_accumulate".into(),
        dtype,
        buffers: vec![
            buf("a", BufferKind::Input("a".into()), &[m, k]),
            buf("b", BufferKind::Input("b".into()), &[n, k]),
            buf("c", BufferKind::Output("c".into()), &[2, m, n]),
        ],
        vars: 3,
        functions: Vec::new(),
        memory: None,
        body: vec![fill, Stmt::Gemm(Box::new(g))],
    }
}

#[test]
fn accumulating_strided_gemms_match_the_kernel_interpreter() {
    for dtype in [DType::F64, DType::F32] {
        let p = accumulate_program(dtype);
        let mut rng = Lcg(11);
        let to = |shape: &[usize], data: Vec<f64>| match dtype {
            DType::F64 => Tensor::from_f64(shape.to_vec(), data).expect("tensor"),
            DType::F32 => Tensor::from_f32(
                shape.to_vec(),
                data.into_iter().map(|x| x as f32).collect::<Vec<f32>>(),
            )
            .expect("tensor"),
        };
        let ins: BTreeMap<String, Tensor> = [
            ("a".to_string(), to(&[40, 70], rng.vec(40 * 70, 1.0))),
            ("b".to_string(), to(&[36, 70], rng.vec(36 * 70, 1.0))),
        ]
        .into();
        let want = run_kernel_program(&p, &ins).expect("kernel interpreter");
        // The interpreter runs a gemm as exactly its reference loop nest.
        let expanded = run_kernel_program(&expand_gemm(&p), &ins).expect("expanded");
        assert_eq!(
            want["c"].to_f64_vec(),
            expanded["c"].to_f64_vec(),
            "{dtype}: gemm against its loop nest"
        );
        let eps = match dtype {
            DType::F64 => f64::EPSILON,
            DType::F32 => f32::EPSILON as f64,
        };
        let max_c = want["c"]
            .to_f64_vec()
            .iter()
            .fold(0.0f64, |m, x| m.max(x.abs()));
        // Accumulating adds one more term (the initial value, at most 2) per element.
        let tol = 2.0 * 71.0 * eps * (70.0 + 2.0) / max_c;
        for (backend, got) in on_both_jits(&p, &ins) {
            assert_close(
                &format!("{dtype} {backend}"),
                &got["c"].to_f64_vec(),
                &want["c"].to_f64_vec(),
                tol,
            );
        }
    }
}

/// Two products of single rows against one transposed weight `w[36, 70]` over batch axes that
/// the runtime folds into rows (`b`'s batch strides are 0): `y1[3, 2] = x[3, 2] @ wᵀ` folds
/// both axes into one product of 6 rows; `y2` takes the same rows with the axes swapped, so
/// only the inner axis folds (2 products of 3 rows). Both then run on the narrow kernel.
/// `y3` takes two blocks of 3 rows of `x` into `c` interleaved (`y3` row `2i + t` is row
/// `3t + i` of `x @ wᵀ`): `a` moves by whole row blocks but `c` does not, so nothing may fold.
fn folding_program(dtype: DType) -> KernelProgram {
    let (n, k) = (36usize, 70usize);
    let buf = |name: &str, kind: BufferKind, shape: &[usize]| {
        Buffer::row_major(name, kind, MemorySpace::Global, shape)
    };
    let view = |buf: u32, batch_strides: Vec<i64>, row_stride: i64, col_stride: i64| MatrixView {
        buf: BufId(buf),
        offset: 0,
        batch_strides,
        row_stride,
        col_stride,
    };
    let product = |m: usize, batch: Vec<usize>, a: Vec<i64>, c: Vec<i64>, c_rows: i64, out: u32| {
        Stmt::Gemm(Box::new(Gemm {
            a: view(0, a, k as i64, 1),
            b: view(1, vec![0; batch.len()], 1, k as i64),
            c: view(out, c, c_rows, 1),
            m,
            n,
            k,
            batch,
            accumulate: false,
        }))
    };
    KernelProgram {
        name: "gemm_folding".into(),
        dtype,
        buffers: vec![
            buf("x", BufferKind::Input("x".into()), &[6, k]),
            buf("w", BufferKind::Input("w".into()), &[n, k]),
            buf("y1", BufferKind::Output("y1".into()), &[6, n]),
            buf("y2", BufferKind::Output("y2".into()), &[6, n]),
            buf("y3", BufferKind::Output("y3".into()), &[6, n]),
        ],
        vars: 0,
        functions: Vec::new(),
        memory: None,
        body: vec![
            product(
                1,
                vec![3, 2],
                vec![2 * k as i64, k as i64],
                vec![2 * n as i64, n as i64],
                n as i64,
                2,
            ),
            product(
                1,
                vec![2, 3],
                vec![k as i64, 2 * k as i64],
                vec![n as i64, 2 * n as i64],
                n as i64,
                3,
            ),
            product(
                3,
                vec![2],
                vec![3 * k as i64],
                vec![n as i64],
                2 * n as i64,
                4,
            ),
        ],
    }
}

#[test]
fn gemms_folded_into_rows_match_the_kernel_interpreter() {
    for dtype in [DType::F64, DType::F32] {
        let p = folding_program(dtype);
        let mut rng = Lcg(13);
        let ins: BTreeMap<String, Tensor> = [
            (
                "x".to_string(),
                Tensor::from_f64(vec![6, 70], rng.vec(6 * 70, 1.0)),
            ),
            (
                "w".to_string(),
                Tensor::from_f64(vec![36, 70], rng.vec(36 * 70, 1.0)),
            ),
        ]
        .into_iter()
        .map(|(name, t)| {
            let elem = match dtype {
                DType::F64 => tttc::runtime::ElemType::F64,
                DType::F32 => tttc::runtime::ElemType::F32,
            };
            (name, t.expect("tensor").cast(elem))
        })
        .collect();
        let want = run_kernel_program(&p, &ins).expect("kernel interpreter");
        let eps = match dtype {
            DType::F64 => f64::EPSILON,
            DType::F32 => f32::EPSILON as f64,
        };
        for (backend, got) in on_both_jits(&p, &ins) {
            for y in ["y1", "y2", "y3"] {
                let max_y = want[y]
                    .to_f64_vec()
                    .iter()
                    .fold(0.0f64, |m, v| m.max(v.abs()));
                // Any summation order: 2·k·eps·k·max|x|·max|w| (module docs), relative.
                let tol = 2.0 * 70.0 * 70.0 * eps / max_y;
                assert_close(
                    &format!("{dtype} {backend} {y}"),
                    &got[y].to_f64_vec(),
                    &want[y].to_f64_vec(),
                    tol,
                );
            }
        }
    }
}

#[test]
fn aot_objects_expand_gemms_into_loops() {
    let p = accumulate_program(DType::F32);
    let dir = std::env::temp_dir().join(format!("tttc-gemm-aot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let object = dir.join("gemm.o");
    tttc::backends::llvm::emit_object(&p, &object, "gemm_kernel").expect("object");
    let bytes = std::fs::read(&object).expect("read object");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !bytes.windows(9).any(|w| w == b"tttc_gemm"),
        "the object references the matrix-product runtime"
    );
}
