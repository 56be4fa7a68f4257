//! The kernel IR executor (`tttc_backends::kernel_interp`) on hand-written kernel programs:
//! results, precision, `Local` buffers per parallel iteration, and every error it reports
//! instead of panicking (out-of-bounds accesses, bad inputs, ill-formed programs).

use std::collections::BTreeMap;
use tttc_backends::input::InputError;
use tttc_backends::kernel_interp::{run_kernel_program, KernelInterpError};
use tttc_ir::kernel::{
    BufId, Buffer, BufferKind, Index, KernelProgram, MemorySpace, Schedule, Stmt, Value, VarId,
};
use tttc_ir::{BinaryOp, DType, UnaryOp};
use tttc_runtime::Tensor;

fn buffer(name: &str, kind: BufferKind, space: MemorySpace, shape: &[usize]) -> Buffer {
    Buffer::row_major(name, kind, space, shape)
}

fn input(name: &str, shape: &[usize]) -> Buffer {
    buffer(
        name,
        BufferKind::Input(name.into()),
        MemorySpace::Global,
        shape,
    )
}

fn output(name: &str, shape: &[usize]) -> Buffer {
    buffer(
        name,
        BufferKind::Output(name.into()),
        MemorySpace::Global,
        shape,
    )
}

fn var(i: u32) -> Index {
    Index::Var(VarId(i))
}

fn lp(var: u32, extent: usize, schedule: Schedule, body: Vec<Stmt>) -> Stmt {
    Stmt::counted_loop(VarId(var), extent, schedule, body)
}

fn st(buf: u32, index: Index, value: Value) -> Stmt {
    Stmt::store(BufId(buf), index, value)
}

fn ld(buf: u32, index: Index) -> Value {
    Value::load(BufId(buf), index)
}

fn bin(op: BinaryOp, a: Value, b: Value) -> Value {
    Value::binary(op, a, b)
}

fn program(dtype: DType, buffers: Vec<Buffer>, vars: u32, body: Vec<Stmt>) -> KernelProgram {
    KernelProgram {
        name: "test".into(),
        dtype,
        buffers,
        vars,
        body,
        functions: Vec::new(),
        memory: None,
    }
}

/// `y[i, j] = exp(x[j, i]) * 2 + i` for `x [3, 2]`: a transposed read, a unary and a binary
/// function, an index as a value.
fn transpose_program(dtype: DType) -> KernelProgram {
    let value = bin(
        BinaryOp::Add,
        bin(
            BinaryOp::Mul,
            Value::Unary(
                UnaryOp::Exp,
                Box::new(ld(0, Index::sum(Index::scaled(var(1), 2), var(0)))),
            ),
            Value::Const(2.0),
        ),
        Value::FromIndex(var(0)),
    );
    program(
        dtype,
        vec![input("x", &[3, 2]), output("y", &[2, 3])],
        2,
        vec![lp(
            0,
            2,
            Schedule::Serial,
            vec![lp(
                1,
                3,
                Schedule::Vector(4),
                vec![st(1, Index::sum(Index::scaled(var(0), 3), var(1)), value)],
            )],
        )],
    )
}

fn x64() -> BTreeMap<String, Tensor> {
    let x = Tensor::from_f64(vec![3, 2], vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).expect("x");
    BTreeMap::from([("x".to_string(), x)])
}

#[test]
fn computes_a_small_program() {
    let out = run_kernel_program(&transpose_program(DType::F64), &x64()).expect("runs");
    let y = &out["y"];
    assert_eq!(y.shape(), [2, 3]);
    let x: [[f64; 2]; 3] = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]];
    let want: Vec<f64> = (0..2)
        .flat_map(|i| (0..3).map(move |j| x[j][i].exp() * 2.0 + i as f64))
        .collect();
    assert_eq!(y.as_f64().expect("f64"), want.as_slice());
}

#[test]
fn f32_programs_compute_in_f32() {
    // Σ_{i<1000} 0.1 in f32 differs from the f64 sum rounded to f32.
    let p = program(
        DType::F32,
        vec![output("s", &[])],
        1,
        vec![
            st(0, Index::Const(0), Value::Const(0.0)),
            lp(
                0,
                1000,
                Schedule::Serial,
                vec![st(
                    0,
                    Index::Const(0),
                    bin(BinaryOp::Add, ld(0, Index::Const(0)), Value::Const(0.1)),
                )],
            ),
        ],
    );
    let out = run_kernel_program(&p, &BTreeMap::new()).expect("runs");
    let mut want = 0.0f32;
    for _ in 0..1000 {
        want += 0.1f32;
    }
    assert_ne!(
        want as f64,
        (0..1000).map(|_| 0.1f64).sum::<f64>() as f32 as f64
    );
    assert_eq!(out["s"].as_f32().expect("f32"), [want]);
}

#[test]
fn local_buffers_are_fresh_per_parallel_iteration() {
    // for i in 0..2: out[i] = tmp[0]; tmp[0] = 5. A fresh `Local` tmp reads NaN every time;
    // a serial loop (or a Global tmp) carries the 5 into the second iteration.
    let make = |schedule: Schedule, space: MemorySpace| {
        program(
            DType::F64,
            vec![
                output("out", &[2]),
                buffer("tmp", BufferKind::Temp, space, &[1]),
            ],
            1,
            vec![lp(
                0,
                2,
                schedule,
                vec![
                    st(0, var(0), ld(1, Index::Const(0))),
                    st(1, Index::Const(0), Value::Const(5.0)),
                ],
            )],
        )
    };
    let run = |p: &KernelProgram| {
        run_kernel_program(p, &BTreeMap::new()).expect("runs")["out"].to_f64_vec()
    };
    let fresh = run(&make(Schedule::Parallel, MemorySpace::Local));
    assert!(fresh.iter().all(|x| x.is_nan()), "{fresh:?}");
    let carried = run(&make(Schedule::Serial, MemorySpace::Local));
    assert!(carried[0].is_nan() && carried[1] == 5.0, "{carried:?}");
    let global = run(&make(Schedule::Parallel, MemorySpace::Global));
    assert!(global[0].is_nan() && global[1] == 5.0, "{global:?}");
}

fn expect_err(p: &KernelProgram, inputs: &BTreeMap<String, Tensor>) -> KernelInterpError {
    match run_kernel_program(p, inputs) {
        Err(e) => e,
        Ok(out) => panic!("expected an error, got {out:?}"),
    }
}

#[test]
fn out_of_bounds_stores_and_loads_are_errors() {
    // A store one past the end.
    let p = program(
        DType::F64,
        vec![output("y", &[3])],
        1,
        vec![lp(
            0,
            4,
            Schedule::Serial,
            vec![st(0, var(0), Value::Const(1.0))],
        )],
    );
    match expect_err(&p, &BTreeMap::new()) {
        KernelInterpError::OutOfBounds {
            access, index, len, ..
        } => assert_eq!((access, index, len), ("store", 3, 3)),
        e => panic!("wrong error: {e}"),
    }
    // A negative load.
    let mut p = transpose_program(DType::F64);
    if let Stmt::Loop { body, .. } = &mut p.body[0] {
        if let Stmt::Loop { body, .. } = &mut body[0] {
            body[0] = st(
                1,
                Index::Const(0),
                ld(0, Index::sum(var(1), Index::Const(-1))),
            );
        }
    }
    match expect_err(&p, &x64()) {
        KernelInterpError::OutOfBounds { access, index, .. } => {
            assert_eq!((access, index), ("load", -1))
        }
        e => panic!("wrong error: {e}"),
    }
    // Index arithmetic that overflows.
    let p = program(
        DType::F64,
        vec![output("y", &[1])],
        0,
        vec![st(
            0,
            Index::Mul(Box::new(Index::Const(i64::MAX / 2 + 1)), 2),
            Value::Const(0.0),
        )],
    );
    assert!(matches!(
        expect_err(&p, &BTreeMap::new()),
        KernelInterpError::Overflow(_)
    ));
}

#[test]
fn bad_inputs_are_errors() {
    let p = transpose_program(DType::F64);
    assert!(matches!(
        expect_err(&p, &BTreeMap::new()),
        KernelInterpError::Input(InputError::Missing { name }) if name == "x"
    ));
    let wrong_shape = BTreeMap::from([(
        "x".to_string(),
        Tensor::from_f64(vec![2, 3], vec![0.0; 6]).expect("t"),
    )]);
    assert!(matches!(
        expect_err(&p, &wrong_shape),
        KernelInterpError::Input(InputError::Shape { .. })
    ));
    let wrong_type = BTreeMap::from([(
        "x".to_string(),
        Tensor::from_f32(vec![3, 2], vec![0.0; 6]).expect("t"),
    )]);
    assert!(matches!(
        expect_err(&p, &wrong_type),
        KernelInterpError::Input(InputError::ElemType { .. })
    ));
    // Extra inputs are ignored.
    let mut extra = x64();
    extra.insert(
        "unused".into(),
        Tensor::from_f64(vec![1], vec![0.0]).expect("t"),
    );
    run_kernel_program(&p, &extra).expect("extra inputs are fine");
}

#[test]
fn ill_formed_programs_are_errors() {
    let invalid = |p: &KernelProgram, what: &str| match run_kernel_program(p, &x64()) {
        Err(KernelInterpError::Malformed(m)) => eprintln!("{what}: {m}"),
        other => panic!("{what}: expected an ill-formed-program error, got {other:?}"),
    };
    let base = || transpose_program(DType::F64);
    let with_store = |s: Stmt| {
        let mut p = base();
        p.body.push(s);
        p
    };
    invalid(
        &with_store(st(0, Index::Const(0), Value::Const(0.0))),
        "store to an input",
    );
    invalid(
        &with_store(st(7, Index::Const(0), Value::Const(0.0))),
        "unknown buffer",
    );
    invalid(
        &with_store(st(1, Index::Const(0), ld(9, Index::Const(0)))),
        "load from an unknown buffer",
    );
    invalid(
        &with_store(st(1, var(0), Value::Const(0.0))),
        "variable outside its loop",
    );
    invalid(
        &with_store(st(
            1,
            Index::Div(Box::new(Index::Const(4)), 0),
            Value::Const(0.0),
        )),
        "division by zero",
    );
    invalid(
        &with_store(lp(5, 1, Schedule::Serial, vec![])),
        "variable beyond `vars`",
    );
    invalid(
        &with_store(lp(
            0,
            2,
            Schedule::Serial,
            vec![lp(0, 2, Schedule::Serial, vec![])],
        )),
        "variable rebound inside its loop",
    );
    let mut p = base();
    p.buffers[1].layout.strides = vec![1, 2];
    invalid(&p, "column-major output");
    let mut p = base();
    p.buffers[1].layout.strides = vec![1];
    invalid(&p, "strides of the wrong rank");
}
