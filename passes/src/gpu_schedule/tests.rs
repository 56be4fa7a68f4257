//! The GPU mapping on small hand-written programs, run on the kernel executor's GPU emulation
//! (which detects races) against the plain executor.

use super::*;
use std::collections::BTreeMap;
use tttc_backends::kernel_interp::{
    run_kernel_program, run_kernel_program_gpu, GpuEmulation, KernelInterpError,
};
use tttc_ir::kernel::{Buffer, Value};
use tttc_ir::{BinaryOp, DType};
use tttc_runtime::Tensor;

fn buffer(name: &str, kind: BufferKind, space: MemorySpace, shape: &[usize]) -> Buffer {
    Buffer::row_major(name, kind, space, shape)
}

fn v(i: u32) -> Index {
    Index::Var(VarId(i))
}

fn lp(var: u32, extent: usize, schedule: Schedule, body: Vec<Stmt>) -> Stmt {
    gpu_loop(VarId(var), extent, schedule, body)
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

fn at(a: Index, c: i64, b: Index) -> Index {
    Index::sum(Index::scaled(a, c), b)
}

/// Per slice `s` of 3: `X[s]` is 4x5; `t = X Xᵀ` (4x4, Local), `out[s] = t @ X` (4x5), with a
/// running state `acc` (Local, 4x5) updated over 2 serial steps: acc = acc + t @ X.
fn scan_like() -> KernelProgram {
    let x = |s: Index, i: Index, j: Index| at(at(s, 4, i), 5, j);
    let body = vec![
        // acc = 0
        lp(
            1,
            4,
            Schedule::Serial,
            vec![lp(
                2,
                5,
                Schedule::Serial,
                vec![st(3, at(v(1), 5, v(2)), Value::Const(0.0))],
            )],
        ),
        lp(
            3,
            2,
            Schedule::Serial,
            vec![
                // t[i, j] = Σ_k X[i, k] X[j, k]
                lp(
                    4,
                    4,
                    Schedule::Serial,
                    vec![lp(
                        5,
                        4,
                        Schedule::Serial,
                        vec![st(2, at(v(4), 4, v(5)), Value::Const(0.0))],
                    )],
                ),
                lp(
                    4,
                    4,
                    Schedule::Serial,
                    vec![lp(
                        5,
                        4,
                        Schedule::Serial,
                        vec![lp(
                            6,
                            5,
                            Schedule::Serial,
                            vec![st(
                                2,
                                at(v(4), 4, v(5)),
                                bin(
                                    BinaryOp::Add,
                                    ld(2, at(v(4), 4, v(5))),
                                    bin(
                                        BinaryOp::Mul,
                                        ld(0, x(v(0), v(4), v(6))),
                                        ld(0, x(v(0), v(5), v(6))),
                                    ),
                                ),
                            )],
                        )],
                    )],
                ),
                // acc[i, n] += Σ_k t[i, k] X[k, n]  (order i, k, n)
                lp(
                    4,
                    4,
                    Schedule::Serial,
                    vec![lp(
                        5,
                        4,
                        Schedule::Serial,
                        vec![lp(
                            6,
                            5,
                            Schedule::Serial,
                            vec![st(
                                3,
                                at(v(4), 5, v(6)),
                                bin(
                                    BinaryOp::Add,
                                    ld(3, at(v(4), 5, v(6))),
                                    bin(
                                        BinaryOp::Mul,
                                        ld(2, at(v(4), 4, v(5))),
                                        ld(0, x(v(0), v(5), v(6))),
                                    ),
                                ),
                            )],
                        )],
                    )],
                ),
            ],
        ),
        // out[s] = acc
        lp(
            1,
            4,
            Schedule::Serial,
            vec![lp(
                2,
                5,
                Schedule::Serial,
                vec![st(1, x(v(0), v(1), v(2)), ld(3, at(v(1), 5, v(2))))],
            )],
        ),
    ];
    KernelProgram {
        name: "scan_like".into(),
        dtype: DType::F64,
        buffers: vec![
            buffer(
                "X",
                BufferKind::Input("X".into()),
                MemorySpace::Global,
                &[3, 4, 5],
            ),
            buffer(
                "out",
                BufferKind::Output("out".into()),
                MemorySpace::Global,
                &[3, 4, 5],
            ),
            buffer("t", BufferKind::Temp, MemorySpace::Local, &[4, 4]),
            buffer("acc", BufferKind::Temp, MemorySpace::Local, &[4, 5]),
        ],
        vars: 7,
        body: vec![lp(0, 3, Schedule::Parallel, body)],
        functions: Vec::new(),
        memory: None,
    }
}

fn inputs() -> BTreeMap<String, Tensor> {
    let data: Vec<f64> = (0..60)
        .map(|i| ((i * 37 % 11) as f64 - 5.0) / 7.0)
        .collect();
    BTreeMap::from([(
        "X".to_string(),
        Tensor::from_f64(vec![3, 4, 5], data).expect("tensor"),
    )])
}

fn emulate(
    p: &KernelProgram,
    threads: usize,
) -> Result<BTreeMap<String, Tensor>, KernelInterpError> {
    run_kernel_program_gpu(p, &inputs(), GpuEmulation { threads })
}

fn same(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) {
    assert_eq!(a.len(), b.len());
    for (k, t) in a {
        assert_eq!(t.to_f64_vec(), b[k].to_f64_vec(), "{k}");
    }
}

fn count(body: &[Stmt], f: &dyn Fn(&Stmt) -> bool) -> usize {
    body.iter()
        .map(|s| {
            let inner = match s {
                Stmt::Loop { body, .. } => count(body, f),
                _ => 0,
            };
            inner + usize::from(f(s))
        })
        .sum()
}

#[test]
fn scan_like_program_maps_to_blocks_threads_and_shared_memory() {
    let p = scan_like();
    let want = run_kernel_program(&p, &inputs()).expect("cpu");
    let g = gpu_schedule(&p, &GpuConfig::default()).expect("schedule");
    // One launch, one block per slice; both scratch buffers fit in shared memory.
    assert!(matches!(
        g.body.as_slice(),
        [Stmt::Loop {
            schedule: Schedule::GpuBlock,
            extent: 3,
            ..
        }]
    ));
    assert!(g.buffers[2..]
        .iter()
        .all(|b| b.space == MemorySpace::Shared));
    // The matmuls became thread loops over rows × columns (16 and 20 iterations).
    let threads = |e: usize| move |s: &Stmt| matches!(s, Stmt::Loop { schedule: Schedule::GpuThread, extent, .. } if *extent == e);
    assert!(count(&g.body, &threads(16)) >= 2);
    assert!(count(&g.body, &threads(20)) >= 3);
    assert!(count(&g.body, &|s| matches!(s, Stmt::Barrier)) >= 2);
    for threads in [1, 3, 32, 256] {
        same(&emulate(&g, threads).expect("emulation"), &want);
    }
}

#[test]
fn scratch_beyond_the_shared_budget_gets_a_global_slice_per_block() {
    let p = scan_like();
    let want = run_kernel_program(&p, &inputs()).expect("cpu");
    let cfg = GpuConfig {
        threads: 32,
        shared_bytes: 16 * 8, // room for `t` (4x4 f64) only
    };
    let g = gpu_schedule(&p, &cfg).expect("schedule");
    assert_eq!(g.buffers[2].space, MemorySpace::Shared);
    assert_eq!(g.buffers[3].space, MemorySpace::Global);
    assert_eq!(g.buffers[3].layout.shape, vec![3, 4, 5]);
    same(&emulate(&g, 32).expect("emulation"), &want);
}

/// Removes the `n`-th barrier (in program order).
fn drop_barrier(body: &mut Vec<Stmt>, n: &mut usize) -> bool {
    let mut i = 0;
    while i < body.len() {
        if matches!(body[i], Stmt::Barrier) {
            if *n == 0 {
                body.remove(i);
                return true;
            }
            *n -= 1;
        } else if let Stmt::Loop { body, .. } = &mut body[i] {
            if drop_barrier(body, n) {
                return true;
            }
        }
        i += 1;
    }
    false
}

#[test]
fn a_missing_barrier_is_caught_never_silent() {
    // Buffer-level analysis may place a barrier the thread mapping makes unnecessary (the same
    // thread writes and later reads an element); removing such a one is harmless. Removing a
    // needed one must be reported as a race, never give different values silently.
    let p = scan_like();
    let want = run_kernel_program(&p, &inputs()).expect("cpu");
    let g = gpu_schedule(&p, &GpuConfig::default()).expect("schedule");
    let barriers = count(&g.body, &|s| matches!(s, Stmt::Barrier));
    let mut caught = 0;
    for k in 0..barriers {
        let mut h = g.clone();
        assert!(drop_barrier(&mut h.body, &mut { k }));
        match emulate(&h, 32) {
            Err(KernelInterpError::Race { .. }) => caught += 1,
            Ok(got) => same(&got, &want),
            Err(e) => panic!("without barrier {k}: {e}"),
        }
    }
    assert!(
        caught >= 2,
        "only {caught} of {barriers} barriers were needed"
    );
}

#[test]
fn a_wrongly_parallel_loop_is_caught_by_the_emulator() {
    // Mark the contraction loop of the first matmul as thread-parallel by hand.
    let p = scan_like();
    let mut g = gpu_schedule(&p, &GpuConfig::default()).expect("schedule");
    fn break_one(body: &mut [Stmt]) -> bool {
        for s in body {
            if let Stmt::Loop { schedule, body, .. } = s {
                if *schedule == Schedule::GpuThread {
                    if let Some(Stmt::Loop {
                        schedule: inner, ..
                    }) = body.first_mut()
                    {
                        // A thread loop inside a thread loop is refused outright; make the
                        // serial contraction the thread loop and the outer one serial.
                        *inner = Schedule::GpuThread;
                        *schedule = Schedule::Serial;
                        return true;
                    }
                } else if break_one(body) {
                    return true;
                }
            }
        }
        false
    }
    assert!(break_one(&mut g.body));
    assert!(matches!(
        emulate(&g, 32),
        Err(KernelInterpError::Race { .. })
    ));
}

#[test]
fn top_level_nests_spread_over_blocks_and_threads() {
    // out[i, j] = X[0, i, j] * 2 over a 4x5 nest outside any parallel loop, then a running
    // sum along j (a carried dependence: one block, rows on threads).
    let mut p = scan_like();
    p.buffers.push(buffer(
        "y",
        BufferKind::Output("y".into()),
        MemorySpace::Global,
        &[4, 5],
    ));
    p.body = vec![
        lp(
            0,
            4,
            Schedule::Serial,
            vec![lp(
                1,
                5,
                Schedule::Serial,
                vec![st(
                    4,
                    at(v(0), 5, v(1)),
                    bin(BinaryOp::Mul, ld(0, at(v(0), 5, v(1))), Value::Const(2.0)),
                )],
            )],
        ),
        lp(
            0,
            5,
            Schedule::Serial,
            vec![lp(
                1,
                4,
                Schedule::Serial,
                vec![st(
                    4,
                    at(v(1), 5, v(0)),
                    bin(
                        BinaryOp::Add,
                        ld(4, at(v(1), 5, v(0))),
                        ld(4, Index::sum(at(v(1), 5, v(0)), Index::Const(-1))),
                    ),
                )],
            )],
        ),
    ];
    // The second nest reads y[i, j-1] at j = 0 too: keep j >= 1 by shifting.
    if let Stmt::Loop { extent, body, .. } = &mut p.body[1] {
        *extent = 4;
        *body = body
            .iter()
            .map(|s| {
                subst_stmt(
                    s,
                    &HashMap::from([(VarId(0), Index::sum(v(0), Index::Const(1)))]),
                )
            })
            .collect();
    }
    p.buffers[1].kind = BufferKind::Temp;
    let want = run_kernel_program(&p, &inputs()).expect("cpu");
    let g = gpu_schedule(&p, &GpuConfig::default()).expect("schedule");
    assert_eq!(g.body.len(), 2);
    same(&emulate(&g, 32).expect("emulation"), &want);
    same(&emulate(&g, 3).expect("emulation"), &want);
}

#[test]
fn bad_configurations_and_scheduled_programs_are_refused() {
    let p = scan_like();
    for threads in [0, 33, 2048] {
        let cfg = GpuConfig {
            threads,
            ..GpuConfig::default()
        };
        assert!(matches!(
            gpu_schedule(&p, &cfg),
            Err(GpuScheduleError::Config(_))
        ));
    }
    let g = gpu_schedule(&p, &GpuConfig::default()).expect("schedule");
    assert!(matches!(
        gpu_schedule(&g, &GpuConfig::default()),
        Err(GpuScheduleError::Unsupported(_))
    ));
    // The plain program is not in GPU form.
    assert!(matches!(emulate(&p, 32), Err(KernelInterpError::NotGpu(_))));
}
