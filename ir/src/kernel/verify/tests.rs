//! The verifier rejects each kind of malformed program (built by hand) and accepts well-formed
//! ones, including the GPU form. Programs lowered from `examples/*.ttt` are checked in
//! `tttc-passes` (lowering calls the verifier on every program it makes).

use super::*;
use crate::kernel::{Buffer, VarId};
use crate::{BinaryOp, DType};

fn buffer(name: &str, kind: BufferKind, space: MemorySpace, shape: &[usize]) -> Buffer {
    Buffer::row_major(name, kind, space, shape)
}

fn v(i: u32) -> Index {
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

/// `y[i] = x[i] * 2` over 4 elements, with a local scratch b2 and a shared one b3 (unused).
fn good() -> KernelProgram {
    KernelProgram {
        name: "good".into(),
        dtype: DType::F32,
        buffers: vec![
            buffer(
                "x",
                BufferKind::Input("x".into()),
                MemorySpace::Global,
                &[4],
            ),
            buffer(
                "y",
                BufferKind::Output("y".into()),
                MemorySpace::Global,
                &[4],
            ),
            buffer("s", BufferKind::Temp, MemorySpace::Local, &[4]),
            buffer("sh", BufferKind::Temp, MemorySpace::Shared, &[4]),
        ],
        vars: 3,
        body: vec![lp(
            0,
            4,
            Schedule::Serial,
            vec![st(
                1,
                v(0),
                Value::Binary(
                    BinaryOp::Mul,
                    Box::new(ld(0, v(0))),
                    Box::new(Value::Const(2.0)),
                ),
            )],
        )],
        functions: Vec::new(),
        memory: None,
    }
}

fn with_body(body: Vec<Stmt>) -> KernelProgram {
    KernelProgram { body, ..good() }
}

fn rejects(p: &KernelProgram, what: &str, expected: impl Fn(&VerifyError) -> bool) {
    match verify(p) {
        Err(e) if expected(&e) => {}
        other => panic!("{what}: got {other:?}"),
    }
}

#[test]
fn well_formed_programs_pass() {
    verify(&good()).expect("good");
    // The GPU form: a block loop with a barrier between thread loops, shared scratch inside.
    let gpu = with_body(vec![lp(
        0,
        2,
        Schedule::GpuBlock,
        vec![
            lp(1, 4, Schedule::GpuThread, vec![st(3, v(1), ld(0, v(1)))]),
            Stmt::Barrier,
            lp(2, 4, Schedule::GpuThread, vec![st(1, v(2), ld(3, v(2)))]),
        ],
    )]);
    verify(&gpu).expect("gpu form");
    // Sibling loops may reuse a variable; loops that never run are not checked.
    let reuse = with_body(vec![
        lp(0, 4, Schedule::Serial, vec![st(2, v(0), Value::Const(0.0))]),
        lp(0, 4, Schedule::Parallel, vec![st(1, v(0), ld(2, v(0)))]),
        lp(1, 0, Schedule::Serial, vec![st(9, v(7), ld(8, v(6)))]),
    ]);
    verify(&reuse).expect("reuse");
}

#[test]
fn unknown_buffers_and_variables_are_rejected() {
    rejects(
        &with_body(vec![st(9, Index::Const(0), Value::Const(0.0))]),
        "store to an unknown buffer",
        |e| matches!(e, VerifyError::UnknownBuffer { buf: 9, .. }),
    );
    rejects(
        &with_body(vec![st(1, Index::Const(0), ld(5, Index::Const(0)))]),
        "load from an unknown buffer",
        |e| {
            matches!(
                e,
                VerifyError::UnknownBuffer {
                    buf: 5,
                    access: "load from",
                    ..
                }
            )
        },
    );
    rejects(
        &with_body(vec![lp(3, 4, Schedule::Serial, vec![])]),
        "a variable beyond `vars`",
        |e| matches!(e, VerifyError::VarOutOfRange { var: 3, vars: 3 }),
    );
}

#[test]
fn loop_variables_must_be_bound_and_not_rebound() {
    rejects(
        &with_body(vec![
            lp(0, 4, Schedule::Serial, vec![]),
            st(1, v(0), Value::Const(0.0)),
        ]),
        "a variable used after its loop",
        |e| *e == VerifyError::Unbound(0),
    );
    rejects(
        &with_body(vec![lp(
            0,
            4,
            Schedule::Serial,
            vec![st(1, v(0), Value::FromIndex(v(1)))],
        )]),
        "an unbound variable in float(index)",
        |e| *e == VerifyError::Unbound(1),
    );
    rejects(
        &with_body(vec![lp(
            0,
            4,
            Schedule::Serial,
            vec![lp(0, 4, Schedule::Serial, vec![])],
        )]),
        "a variable bound again inside its loop",
        |e| *e == VerifyError::Rebound(0),
    );
    rejects(
        &with_body(vec![lp(0, usize::MAX, Schedule::Serial, vec![])]),
        "an extent beyond i64",
        |e| matches!(e, VerifyError::ExtentTooLarge { var: 0, .. }),
    );
}

#[test]
fn divisors_must_be_positive() {
    for bad in [
        Index::Div(Box::new(Index::Const(4)), 0),
        Index::Rem(Box::new(Index::Const(4)), -2),
    ] {
        rejects(
            &with_body(vec![st(1, bad, Value::Const(0.0))]),
            "a non-positive divisor",
            |e| matches!(e, VerifyError::NonPositiveDivisor { .. }),
        );
    }
}

#[test]
fn inputs_are_never_stored_to() {
    rejects(
        &with_body(vec![st(0, Index::Const(0), Value::Const(0.0))]),
        "a store into an input",
        |e| matches!(e, VerifyError::StoreToInput { buf: 0, .. }),
    );
}

#[test]
fn buffer_declarations_are_checked() {
    let mut p = good();
    p.buffers[1].layout.strides = vec![1, 2];
    rejects(&p, "strides of the wrong rank", |e| {
        matches!(e, VerifyError::StrideRank { buf: 1, .. })
    });
    let mut p = good();
    p.buffers[1].layout = Layout {
        shape: vec![2, 2],
        strides: vec![1, 2],
    };
    rejects(&p, "a column-major output", |e| {
        matches!(e, VerifyError::NotRowMajor { buf: 1, .. })
    });
    let mut p = good();
    p.buffers[0].space = MemorySpace::Local;
    rejects(&p, "an input in local memory", |e| {
        matches!(e, VerifyError::IoNotGlobal { buf: 0, .. })
    });
    let mut p = good();
    p.buffers[2].layout = Layout::row_major(&[usize::MAX, 4]);
    rejects(&p, "an absurd size", |e| {
        matches!(e, VerifyError::TooLarge { buf: 2, .. })
    });
    let mut p = good();
    p.buffers.push(buffer(
        "x2",
        BufferKind::Input("x".into()),
        MemorySpace::Global,
        &[1],
    ));
    rejects(&p, "two inputs named x", |e| {
        matches!(e, VerifyError::DuplicateName { what: "input", .. })
    });
}

#[test]
fn barriers_only_where_every_thread_of_a_block_reaches_them() {
    // Scratch may be used anywhere: outside the loops that refresh it, it is program-wide.
    verify(&with_body(vec![
        lp(
            0,
            4,
            Schedule::Parallel,
            vec![st(3, v(0), Value::Const(0.0))],
        ),
        lp(1, 4, Schedule::Serial, vec![st(1, v(1), ld(3, v(1)))]),
    ]))
    .expect("shared and local scratch outside blocks");
    rejects(
        &with_body(vec![lp(0, 4, Schedule::Parallel, vec![Stmt::Barrier])]),
        "a barrier outside a block",
        |e| matches!(e, VerifyError::MisplacedBarrier(_)),
    );
    rejects(
        &with_body(vec![lp(
            0,
            2,
            Schedule::GpuBlock,
            vec![lp(1, 4, Schedule::GpuThread, vec![Stmt::Barrier])],
        )]),
        "a barrier inside a thread loop",
        |e| matches!(e, VerifyError::MisplacedBarrier(_)),
    );
}

#[test]
fn nesting_is_bounded() {
    let mut deep = Value::Const(1.0);
    for _ in 0..=MAX_EXPR_DEPTH {
        deep = Value::Unary(crate::UnaryOp::Neg, Box::new(deep));
    }
    rejects(
        &with_body(vec![st(1, Index::Const(0), deep)]),
        "a too deep expression",
        |e| *e == VerifyError::ExprTooDeep,
    );
    let mut p = good();
    p.vars = MAX_LOOP_DEPTH as u32 + 1;
    let mut body = vec![];
    for var in (0..=MAX_LOOP_DEPTH as u32).rev() {
        body = vec![lp(var, 1, Schedule::Serial, body)];
    }
    p.body = body;
    rejects(&p, "too deep loops", |e| *e == VerifyError::LoopsTooDeep);
}

/// `c[2, 3] = a[2, 4] @ b[4, 3]` (b0 a, b1 b, b2 c, b3 a temp), all row-major.
fn gemm_program() -> (KernelProgram, Gemm) {
    let view = |buf: u32, cols: i64| MatrixView {
        buf: BufId(buf),
        offset: 0,
        batch_strides: vec![],
        row_stride: cols,
        col_stride: 1,
    };
    let g = Gemm {
        a: view(0, 4),
        b: view(1, 3),
        c: view(2, 3),
        m: 2,
        n: 3,
        k: 4,
        batch: vec![],
        accumulate: false,
    };
    let p = KernelProgram {
        name: "gemm".into(),
        dtype: DType::F64,
        buffers: vec![
            buffer(
                "a",
                BufferKind::Input("a".into()),
                MemorySpace::Global,
                &[2, 4],
            ),
            buffer(
                "b",
                BufferKind::Input("b".into()),
                MemorySpace::Global,
                &[4, 3],
            ),
            buffer(
                "c",
                BufferKind::Output("c".into()),
                MemorySpace::Global,
                &[2, 3],
            ),
            buffer("t", BufferKind::Temp, MemorySpace::Global, &[6]),
        ],
        vars: 1,
        functions: Vec::new(),
        memory: None,
        body: vec![Stmt::Gemm(Box::new(g.clone()))],
    };
    (p, g)
}

fn with_gemm(edit: impl FnOnce(&mut Gemm)) -> KernelProgram {
    let (mut p, mut g) = gemm_program();
    edit(&mut g);
    p.body = vec![Stmt::Gemm(Box::new(g))];
    p
}

#[test]
fn well_formed_gemms_pass() {
    assert_eq!(verify(&gemm_program().0), Ok(()));
    // The transposed right operand (column-major view of a [3, 4] buffer would not fit b's 12
    // elements differently), a broadcast batch (stride 0 on an input) and accumulation.
    let p = with_gemm(|g| {
        g.b.row_stride = 1;
        g.b.col_stride = 4;
        g.accumulate = true;
    });
    assert_eq!(verify(&p), Ok(()));
    let p = with_gemm(|g| {
        g.batch = vec![1];
        g.a.batch_strides = vec![0];
        g.b.batch_strides = vec![0];
        g.c.batch_strides = vec![6];
    });
    assert_eq!(verify(&p), Ok(()));
    // Empty products touch nothing, so nothing is out of bounds.
    let p = with_gemm(|g| {
        g.m = 0;
        g.a.offset = 1000;
        g.c.offset = 1000;
    });
    assert_eq!(verify(&p), Ok(()));
}

#[test]
fn malformed_gemms_are_rejected() {
    let (mut p, g) = gemm_program();
    p.body = vec![lp(0, 2, Schedule::Serial, vec![Stmt::Gemm(Box::new(g))])];
    rejects(&p, "inside a loop", |e| *e == VerifyError::NestedGemm);

    let p = with_gemm(|g| g.b.buf = BufId(9));
    rejects(&p, "unknown buffer", |e| {
        matches!(e, VerifyError::UnknownBuffer { buf: 9, .. })
    });
    let p = with_gemm(|g| g.a.batch_strides = vec![1]);
    rejects(&p, "stride count", |e| {
        matches!(e, VerifyError::GemmShape { operand: "a", .. })
    });
    let p = with_gemm(|g| g.c.buf = BufId(0));
    rejects(&p, "result into an input", |e| {
        matches!(e, VerifyError::StoreToInput { buf: 0, .. })
    });
    let p = with_gemm(|g| {
        g.c.buf = BufId(3);
        g.a.buf = BufId(3);
        g.a.row_stride = 3;
        g.k = 3;
        g.b.row_stride = 3;
    });
    rejects(&p, "aliased", |e| {
        matches!(e, VerifyError::GemmAliased { operand: "a", .. })
    });
    for (what, p) in [
        ("a past its end", with_gemm(|g| g.k = 5)),
        ("b past its end", with_gemm(|g| g.b.offset = 1)),
        ("c before its start", with_gemm(|g| g.c.col_stride = -1)),
        ("c rows too far apart", with_gemm(|g| g.c.row_stride = 4)),
        (
            "overflowing stride",
            with_gemm(|g| g.a.row_stride = i64::MAX),
        ),
    ] {
        rejects(&p, what, |e| {
            matches!(e, VerifyError::GemmOutOfBounds { .. })
        });
    }
    let p = with_gemm(|g| g.c.row_stride = 0);
    rejects(&p, "rows written twice", |e| {
        matches!(e, VerifyError::GemmOverlap { buf: 2, .. })
    });
    let p = with_gemm(|g| {
        g.c.row_stride = 1;
        g.c.col_stride = 1;
    });
    rejects(&p, "interleaved strides", |e| {
        matches!(e, VerifyError::GemmOverlap { .. })
    });
    let p = with_gemm(|g| {
        g.batch = vec![2];
        g.a.batch_strides = vec![0];
        g.b.batch_strides = vec![0];
        g.c.batch_strides = vec![0];
    });
    rejects(&p, "a broadcast result", |e| {
        matches!(e, VerifyError::GemmOverlap { .. })
    });
}

#[test]
fn expanding_a_gemm_gives_a_verified_loop_nest() {
    let p = with_gemm(|g| {
        g.batch = vec![1];
        g.a.batch_strides = vec![0];
        g.b.batch_strides = vec![0];
        g.c.batch_strides = vec![6];
    });
    let e = crate::kernel::expand_gemm(&p);
    assert_eq!(verify(&e), Ok(()));
    assert!(!e.body.iter().any(|s| matches!(s, Stmt::Gemm(_))));
    assert_eq!(e.vars, p.vars + 5);
    let text = crate::kernel::print_kernel_program(&e);
    let want =
        "b2[i1*6 + i2*3 + i5] = add(b2[i1*6 + i2*3 + i5], mul(b0[i2*4 + i4], b1[i4*3 + i5]))";
    assert!(text.contains(want), "{text}");
}

#[test]
fn data_dependent_indices_are_checked() {
    let row = |bound| Index::load(BufId(0), Index::Const(0), bound);
    assert_eq!(
        verify(&with_body(vec![st(1, row(4), Value::Const(0.0))])),
        Ok(())
    );
    for (bad, what) in [
        (row(0), "a zero bound"),
        (row(-3), "a negative bound"),
        (
            Index::load(BufId(0), row(4), 4),
            "a data-dependent index inside another",
        ),
    ] {
        rejects(&with_body(vec![st(1, bad, Value::Const(0.0))]), what, |e| {
            matches!(e, VerifyError::BadIndexLoad { .. })
        });
    }
    rejects(
        &with_body(vec![st(
            1,
            Index::load(BufId(9), Index::Const(0), 4),
            Value::Const(0.0),
        )]),
        "an index read from an unknown buffer",
        |e| matches!(e, VerifyError::UnknownBuffer { buf: 9, .. }),
    );
}

/// `good()` plus a temporary t like y, and function f0(p=y) doing `p[i] = x[i] * 2`... over
/// parameters (b1: y, b0: x); calls given by the caller.
fn with_function(calls: Vec<Stmt>) -> KernelProgram {
    let mut p = good();
    p.buffers
        .push(buffer("t", BufferKind::Temp, MemorySpace::Global, &[4]));
    p.buffers
        .push(buffer("w", BufferKind::Temp, MemorySpace::Global, &[2, 2]));
    p.functions.push(KernelFunction {
        name: "layer".into(),
        params: vec![BufId(0), BufId(1)],
        body: good().body,
    });
    p.body = calls;
    p
}

fn call(func: u32, args: &[u32]) -> Stmt {
    Stmt::Call {
        func: FuncId(func),
        args: args.iter().map(|&b| BufId(b)).collect(),
    }
}

#[test]
fn well_formed_calls_pass() {
    let p = with_function(vec![call(0, &[0, 1]), call(0, &[1, 4]), call(0, &[0, 4])]);
    assert_eq!(verify(&p), Ok(()));
    // Inlining renames the parameters to the arguments and drops the functions.
    let inlined = crate::kernel::inline_calls(&p);
    assert!(inlined.functions.is_empty());
    assert_eq!(inlined.body.len(), 3);
    assert_eq!(
        crate::kernel::buffers_used(&inlined.body[1..2]),
        [BufId(1), BufId(4)].into_iter().collect()
    );
    assert_eq!(verify(&inlined), Ok(()));
}

#[test]
fn malformed_calls_are_rejected() {
    rejects(
        &with_function(vec![call(1, &[0, 1])]),
        "unknown function",
        |e| {
            matches!(
                e,
                VerifyError::UnknownFunction {
                    func: 1,
                    functions: 1
                }
            )
        },
    );
    rejects(
        &with_function(vec![call(0, &[0])]),
        "too few arguments",
        |e| {
            matches!(
                e,
                VerifyError::CallArity {
                    params: 2,
                    args: 1,
                    ..
                }
            )
        },
    );
    rejects(
        &with_function(vec![call(0, &[0, 1, 4])]),
        "too many arguments",
        |e| {
            matches!(
                e,
                VerifyError::CallArity {
                    params: 2,
                    args: 3,
                    ..
                }
            )
        },
    );
    rejects(
        &with_function(vec![call(0, &[0, 5])]),
        "another shape",
        |e| {
            matches!(
                e,
                VerifyError::BadArgument {
                    position: 1,
                    buf: 5,
                    ..
                }
            )
        },
    );
    rejects(
        &with_function(vec![call(0, &[0, 2])]),
        "a Local argument",
        |e| {
            matches!(
                e,
                VerifyError::BadArgument {
                    position: 1,
                    buf: 2,
                    ..
                }
            )
        },
    );
    rejects(
        &with_function(vec![call(0, &[4, 4])]),
        "aliased arguments",
        |e| {
            matches!(
                e,
                VerifyError::BadArgument {
                    position: 1,
                    buf: 4,
                    ..
                }
            )
        },
    );
    rejects(
        &with_function(vec![call(0, &[4, 0])]),
        "an input stored to",
        |e| {
            matches!(
                e,
                VerifyError::BadArgument {
                    position: 1,
                    buf: 0,
                    ..
                }
            )
        },
    );
    rejects(
        &with_function(vec![call(0, &[0, 9])]),
        "an unknown argument",
        |e| matches!(e, VerifyError::BadArgument { buf: 9, .. }),
    );
    rejects(
        &with_function(vec![lp(0, 2, Schedule::Serial, vec![call(0, &[0, 1])])]),
        "a call in a loop",
        |e| matches!(e, VerifyError::MisplacedCall(_)),
    );
    let mut nested = with_function(vec![]);
    nested.functions[0].body.push(call(0, &[0, 1]));
    rejects(&nested, "a call in a function", |e| {
        matches!(e, VerifyError::MisplacedCall(_))
    });
    let mut not_param = with_function(vec![]);
    not_param.functions[0].params = vec![BufId(0)];
    rejects(&not_param, "a global buffer that is no parameter", |e| {
        matches!(e, VerifyError::NotAParameter { func: 0, buf: 1 })
    });
    let mut bad_param = with_function(vec![]);
    bad_param.functions[0].params.push(BufId(2));
    rejects(&bad_param, "a Local parameter", |e| {
        matches!(e, VerifyError::BadParameter { position: 2, .. })
    });
    bad_param.functions[0].params[2] = BufId(1);
    rejects(&bad_param, "a parameter given twice", |e| {
        matches!(e, VerifyError::BadParameter { position: 2, .. })
    });
}
