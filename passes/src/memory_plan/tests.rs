//! The memory planner on hand-built programs: lifetimes, reuse (within a chain and across
//! outlined layers), and plans the verifier rejects once corrupted.

use super::*;
use tttc_ir::kernel::{
    aliased_params, inline_calls, steps, verify, Buffer, Index, Stmt, Value, VarId, VerifyError,
};
use tttc_ir::{BinaryOp, DType};

/// Elements per buffer: 16 `f32`s, exactly one 64-byte alignment unit.
const N: usize = 16;

struct Builder {
    p: KernelProgram,
}

impl Builder {
    fn new() -> Builder {
        let mut b = Builder {
            p: KernelProgram {
                name: "chain".into(),
                dtype: DType::F32,
                buffers: Vec::new(),
                vars: 0,
                body: Vec::new(),
                functions: Vec::new(),
                memory: None,
            },
        };
        b.buf("x", BufferKind::Input("x".into()));
        b
    }

    fn buf(&mut self, name: &str, kind: BufferKind) -> BufId {
        self.p
            .buffers
            .push(Buffer::row_major(name, kind, MemorySpace::Global, &[N]));
        BufId(self.p.buffers.len() as u32 - 1)
    }

    fn temp(&mut self, name: &str) -> BufId {
        self.buf(name, BufferKind::Temp)
    }

    /// `for i in 0..N { dst[i] = a[i] + b[i] }`.
    fn add(&mut self, dst: BufId, a: BufId, b: BufId) {
        let v = VarId(self.p.vars);
        self.p.vars += 1;
        let i = Index::Var(v);
        self.p.body.push(Stmt::counted_loop(
            v,
            N,
            Schedule::Serial,
            vec![Stmt::store(
                dst,
                i.clone(),
                Value::binary(BinaryOp::Add, Value::load(a, i.clone()), Value::load(b, i)),
            )],
        ));
    }
}

use tttc_ir::kernel::Schedule;

/// `x → t0 → t1 → t2 → t3 → y`, each step reading the one before (and `x`).
fn chain() -> (KernelProgram, Vec<BufId>) {
    let mut b = Builder::new();
    let x = BufId(0);
    let t: Vec<BufId> = (0..4).map(|i| b.temp(&format!("t{i}"))).collect();
    b.add(t[0], x, x);
    for i in 1..4 {
        b.add(t[i], t[i - 1], x);
    }
    let y = b.buf("y", BufferKind::Output("y".into()));
    b.add(y, t[3], x);
    (b.p, t)
}

fn planned(p: &KernelProgram) -> KernelProgram {
    MemoryPlanner::default().run(p).expect("plans")
}

#[test]
fn lifetimes_run_from_first_to_last_step() {
    let (p, t) = chain();
    let lives = lifetimes(&p);
    for (i, b) in t.iter().enumerate() {
        assert_eq!(
            lives[b],
            Lifetime {
                first: i,
                last: i + 1
            }
        );
    }
    // The input is read at every step.
    assert_eq!(lives[&BufId(0)], Lifetime { first: 0, last: 4 });
}

#[test]
fn temporaries_with_disjoint_lifetimes_share_memory() {
    let (p, t) = chain();
    let q = planned(&p);
    assert_eq!(verify(&q), Ok(()));
    let plan = q.memory.as_ref().expect("a plan");
    // Four temporaries, two alive at a time: two buffers' worth of arena.
    assert_eq!(plan.placements.len(), 4);
    assert_eq!(plan.arena_len, 2 * N as u64);
    let off = |b: BufId| plan.offset_of(b).expect("placed");
    assert_eq!(off(t[0]), off(t[2]));
    assert_eq!(off(t[1]), off(t[3]));
    assert_ne!(off(t[0]), off(t[1]));
    // Inputs and outputs are never placed.
    assert_eq!(plan.offset_of(BufId(0)), None);
}

#[test]
fn a_temporary_read_late_keeps_its_memory() {
    let (mut p, t) = chain();
    // y = t3 + t0: t0 now lives to the end.
    if let Some(Stmt::Loop { body, .. }) = p.body.last_mut() {
        if let Some(Stmt::Store { value, .. }) = body.first_mut() {
            value.for_each_load_mut(&mut |b, _| {
                if *b == BufId(0) {
                    *b = t[0];
                }
            });
        }
    }
    let q = planned(&p);
    assert_eq!(verify(&q), Ok(()));
    let plan = q.memory.as_ref().expect("a plan");
    let off = |b: BufId| plan.offset_of(b).expect("placed");
    for &other in &t[1..] {
        assert_ne!(off(t[0]), off(other));
    }
    assert_eq!(plan.arena_len, 3 * N as u64);
}

#[test]
fn outlined_layers_share_their_temporaries() {
    // Three layers of four statements over distinct temporaries, outlined into calls.
    let mut b = Builder::new();
    let x = BufId(0);
    let mut h = x;
    let mut temps = 0;
    for l in 0..3 {
        let w = b.buf(&format!("w{l}"), BufferKind::Input(format!("w{l}")));
        let ts: Vec<BufId> = (0..4).map(|i| b.temp(&format!("l{l}.t{i}"))).collect();
        temps += ts.len();
        b.add(ts[0], h, w);
        b.add(ts[1], ts[0], w);
        b.add(ts[2], ts[1], ts[0]);
        b.add(ts[3], ts[2], h);
        h = ts[3];
    }
    let y = b.buf("y", BufferKind::Output("y".into()));
    b.add(y, h, x);
    let o = crate::outline::outline(&b.p);
    assert_eq!(o.functions.len(), 1);
    let q = planned(&o);
    assert_eq!(verify(&q), Ok(()));
    let plan = q.memory.as_ref().expect("a plan");
    assert_eq!(plan.placements.len(), temps);
    // A call is one step per statement of its function: at a layer's third statement its
    // input and three of its temporaries are alive, so four buffers' worth, against twelve
    // without sharing (and five when a call was one step touching all its arguments).
    assert_eq!(plan.arena_len, 4 * N as u64);
    let mut inlined = inline_calls(&q);
    assert_eq!(steps(&q).len(), inlined.body.len());
    // Arguments of one call whose lifetimes inside the layer are disjoint share memory (t1,
    // dead after the third statement, and t3, written by the fourth), and exactly those
    // parameters are named as aliased (not `noalias` in LLVM).
    let mut shared = 0;
    for s in &q.body {
        if let Stmt::Call { args, .. } = s {
            let mut offsets: Vec<u64> = args.iter().filter_map(|&b| plan.offset_of(b)).collect();
            let n = offsets.len();
            offsets.sort_unstable();
            offsets.dedup();
            shared += n - offsets.len();
        }
    }
    assert!(shared > 0, "no call's arguments share memory");
    let aliased = aliased_params(&q);
    assert_eq!(aliased.len(), 1);
    assert!(aliased[0].len() >= 2, "{aliased:?}");
    assert!(
        aliased_params(&o).iter().all(Vec::is_empty),
        "no plan, no aliasing"
    );
    // The steps are the inlined program's statements: the plan holds there too.
    inlined.memory = q.memory.clone();
    assert_eq!(verify(&inlined), Ok(()));
}

#[test]
fn corrupted_plans_are_rejected() {
    let (p, t) = chain();
    let good = planned(&p);
    let plan = good.memory.clone().expect("a plan");
    let at = |b: BufId| {
        plan.placements
            .iter()
            .position(|pl| pl.buf == b)
            .expect("placed")
    };

    // t1 moved onto t0, which is alive with it at step 1.
    let mut bad = good.clone();
    let m = bad.memory.as_mut().expect("a plan");
    m.placements[at(t[1])].offset = m.placements[at(t[0])].offset;
    assert!(matches!(verify(&bad), Err(VerifyError::PlanOverlap { .. })));

    // Half-way onto t0 is as bad.
    let mut bad = good.clone();
    let m = bad.memory.as_mut().expect("a plan");
    m.arena_len += N as u64;
    m.placements[at(t[1])].offset = m.placements[at(t[0])].offset + N as u64 / 2;
    assert!(matches!(verify(&bad), Err(VerifyError::PlanOverlap { .. })));

    // Past the end of the arena.
    let mut bad = good.clone();
    bad.memory.as_mut().expect("a plan").placements[at(t[2])].offset = plan.arena_len;
    assert!(matches!(
        verify(&bad),
        Err(VerifyError::BadPlacement { .. })
    ));

    // An input placed.
    let mut bad = good.clone();
    bad.memory.as_mut().expect("a plan").placements.insert(
        0,
        Placement {
            buf: BufId(0),
            offset: 0,
        },
    );
    assert!(matches!(
        verify(&bad),
        Err(VerifyError::BadPlacement { .. })
    ));
}

#[test]
fn off_leaves_the_program_alone() {
    let (p, _) = chain();
    let q = MemoryPlanner { enabled: false }.run(&p).expect("runs");
    assert_eq!(q, p);
}
