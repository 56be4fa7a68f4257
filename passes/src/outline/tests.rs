//! The outlining pass on hand-built programs: layers found, calls that inline back to the
//! program, runs cut where the buffers stop mapping consistently, scratch that must not be
//! shared left alone.

use super::*;
use tttc_ir::kernel::{inline_calls, verify, Buffer, Value};
use tttc_ir::{BinaryOp, DType, UnaryOp};

const N: usize = 8;

struct Builder {
    p: KernelProgram,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            p: KernelProgram {
                name: "layers".into(),
                dtype: DType::F64,
                buffers: Vec::new(),
                vars: 0,
                body: Vec::new(),
                functions: Vec::new(),
                memory: None,
            },
        }
    }

    fn buf(&mut self, name: &str, kind: BufferKind, space: MemorySpace) -> BufId {
        self.p
            .buffers
            .push(Buffer::row_major(name, kind, space, &[N]));
        BufId(self.p.buffers.len() as u32 - 1)
    }

    fn temp(&mut self, name: &str) -> BufId {
        self.buf(name, BufferKind::Temp, MemorySpace::Global)
    }

    fn var(&mut self) -> VarId {
        self.p.vars += 1;
        VarId(self.p.vars - 1)
    }

    /// `for i in 0..N (schedule) { dst[i] = f(i) }` at the top level.
    fn elementwise(&mut self, schedule: Schedule, dst: BufId, f: impl Fn(Index) -> Value) {
        let v = self.var();
        self.p.body.push(Stmt::counted_loop(
            v,
            N,
            schedule,
            vec![Stmt::store(dst, Index::Var(v), f(Index::Var(v)))],
        ));
    }

    /// One layer of four statements from `h` to a new buffer; `residual` is what the last
    /// statement adds (normally `h`).
    fn layer(&mut self, i: usize, h: BufId, residual: BufId) -> BufId {
        let w = self.buf(
            &format!("w.{i}"),
            BufferKind::Input(format!("w.{i}")),
            MemorySpace::Global,
        );
        let (a, b, c, out) = (
            self.temp(&format!("a{i}")),
            self.temp(&format!("b{i}")),
            self.temp(&format!("c{i}")),
            self.temp(&format!("h{}", i + 1)),
        );
        self.elementwise(Schedule::Parallel, a, |x| {
            Value::binary(BinaryOp::Mul, Value::load(h, x.clone()), Value::load(w, x))
        });
        self.elementwise(Schedule::Serial, b, |x| {
            Value::binary(BinaryOp::Add, Value::load(a, x), Value::Const(1.0))
        });
        self.elementwise(Schedule::Vector(4), c, |x| {
            Value::Unary(UnaryOp::Tanh, Box::new(Value::load(b, x)))
        });
        self.elementwise(Schedule::Serial, out, |x| {
            Value::binary(
                BinaryOp::Add,
                Value::load(c, x.clone()),
                Value::load(residual, x),
            )
        });
        out
    }

    /// `x → layers → y`; `residual(i, h)` picks what layer `i` adds back.
    fn model(layers: usize, residual: impl Fn(usize, BufId, BufId) -> BufId) -> KernelProgram {
        let mut b = Builder::new();
        let x = b.buf("x", BufferKind::Input("x".into()), MemorySpace::Global);
        let h0 = b.temp("h0");
        b.elementwise(Schedule::Serial, h0, |i| Value::load(x, i));
        let mut h = h0;
        for i in 0..layers {
            let r = residual(i, h, h0);
            h = b.layer(i, h, r);
        }
        let y = b.buf("y", BufferKind::Output("y".into()), MemorySpace::Global);
        b.elementwise(Schedule::Serial, y, |i| Value::load(h, i));
        b.p
    }
}

fn calls(p: &KernelProgram) -> Vec<(u32, Vec<BufId>)> {
    p.body
        .iter()
        .filter_map(|s| match s {
            Stmt::Call { func, args } => Some((func.0, args.clone())),
            _ => None,
        })
        .collect()
}

/// The same statements over the same buffers, up to the names of loop variables.
fn same_program(a: &KernelProgram, b: &KernelProgram) -> bool {
    canonical(a, &a.body) == canonical(b, &b.body)
}

#[test]
fn repeated_layers_become_one_function_and_a_call_each() {
    for layers in [2, 3, 5] {
        let p = Builder::model(layers, |_, h, _| h);
        let o = outline(&p);
        assert_eq!(verify(&o), Ok(()), "{layers} layers");
        assert_eq!(o.functions.len(), 1, "{layers} layers");
        let f = &o.functions[0];
        assert_eq!(f.body.len(), 4);
        // h, w, a, b, c, the layer's output.
        assert_eq!(f.params.len(), 6);
        let calls = calls(&o);
        assert_eq!(calls.len(), layers);
        assert!(calls.iter().all(|(func, _)| *func == 0));
        // The prologue and the epilogue stay where they were.
        assert_eq!(o.body.len(), layers + 2);
        assert!(matches!(o.body[0], Stmt::Loop { .. }));
        assert!(matches!(o.body[layers + 1], Stmt::Loop { .. }));
        // Calls inline back to the program.
        assert!(same_program(&inline_calls(&o), &p), "{layers} layers");
        assert!(!same_program(&o, &p));
    }
}

#[test]
fn a_single_layer_is_left_alone() {
    let p = Builder::model(1, |_, h, _| h);
    assert_eq!(outline(&p), p);
}

#[test]
fn the_pass_can_be_turned_off() {
    let p = Builder::model(3, |_, h, _| h);
    let off = Outline { enabled: false }.run(&p).expect("runs");
    assert_eq!(off, p);
    let on = Outline::default().run(&p).expect("runs");
    assert_eq!(on.functions.len(), 1);
}

#[test]
fn repeats_whose_buffers_map_inconsistently_are_cut_off() {
    // Layer 2 adds back h0 instead of its own input: statement by statement it looks like the
    // others, but its buffers do not map onto layer 0's the same way.
    let p = Builder::model(3, |i, h, h0| if i == 2 { h0 } else { h });
    let o = outline(&p);
    assert_eq!(verify(&o), Ok(()));
    assert_eq!(calls(&o).len(), 2);
    assert!(same_program(&inline_calls(&o), &p));
    // Every layer adds back h0: in layer 0 that is its input too, in the others it is not;
    // layers 1 and 2 agree (h0 is an argument of both calls).
    let p = Builder::model(3, |_, _, h0| h0);
    let o = outline(&p);
    let calls = calls(&o);
    assert_eq!(calls.len(), 2);
    assert!(
        calls.iter().all(|(_, args)| args.contains(&BufId(1))),
        "h0 is b1"
    );
    assert_eq!(o.body.len(), 1 + 4 + 2 + 1);
    assert!(same_program(&inline_calls(&o), &p));
}

#[test]
fn scratch_living_beyond_one_iteration_is_not_shared() {
    // Each layer's `a` in Local memory: inside the Parallel loop that writes it, fresh per
    // iteration — but the next (serial) statement reads it, outside any refresh.
    let mut p = Builder::model(3, |_, h, _| h);
    for b in p.buffers.iter_mut() {
        if b.name.starts_with('a') {
            b.space = MemorySpace::Local;
        }
    }
    assert_eq!(outline(&p), p);
}

#[test]
fn runs_are_found_apart() {
    // Two stacks of different layers one after the other: two functions.
    let mut p = Builder::model(3, |_, h, _| h);
    let q = Builder::model(2, |_, h, _| h);
    let shift = p.buffers.len() as u32;
    let vshift = p.vars;
    // Append q's statements over q's own buffers, with another element count per layer so
    // that they differ from p's layers.
    for b in &q.buffers {
        let mut b = b.clone();
        b.layout = Layout::row_major(&[N]);
        b.name = format!("q.{}", b.name);
        if let BufferKind::Input(n) | BufferKind::Output(n) = &mut b.kind {
            *n = format!("q.{n}");
        }
        p.buffers.push(b);
    }
    for s in &q.body {
        let mut s = s.clone();
        s.walk_mut(&mut |s| {
            match s {
                Stmt::Loop { var, schedule, .. } => {
                    var.0 += vshift;
                    // Other schedules: other canonical forms than p's layers.
                    *schedule = Schedule::Unroll(2);
                }
                Stmt::Store { buf, value, .. } => {
                    buf.0 += shift;
                    value.for_each_load_mut(&mut |b, _| b.0 += shift);
                }
                _ => {}
            }
            true
        });
        let s = s.map_indices(&|i| i.substitute(&|v| Some(Index::Var(VarId(v.0 + vshift)))));
        p.body.push(s);
    }
    p.vars += q.vars;
    assert_eq!(verify(&p), Ok(()));
    let o = outline(&p);
    assert_eq!(verify(&o), Ok(()));
    assert_eq!(o.functions.len(), 2);
    let calls = calls(&o);
    assert_eq!(
        calls.iter().filter(|(f, _)| *f == 0).count()
            + calls.iter().filter(|(f, _)| *f == 1).count(),
        5
    );
    assert!(same_program(&inline_calls(&o), &p));
}

#[test]
fn only_constant_tables_move_to_the_front() {
    // h = x; pad = 0 (then overwritten from x: a padded activation, not a table); k = 1 (a
    // table); y = pad + k.
    let mut b = Builder::new();
    let x = b.buf("x", BufferKind::Input("x".into()), MemorySpace::Global);
    let h = b.temp("h");
    let pad = b.temp("pad");
    let k = b.temp("k");
    let y = b.buf("y", BufferKind::Output("y".into()), MemorySpace::Global);
    b.elementwise(Schedule::Serial, h, |i| Value::load(x, i));
    b.elementwise(Schedule::Serial, pad, |_| Value::Const(0.0));
    b.elementwise(Schedule::Serial, pad, |i| Value::load(x, i));
    b.elementwise(Schedule::Serial, k, |_| Value::Const(1.0));
    b.elementwise(Schedule::Serial, y, |i| {
        Value::binary(
            BinaryOp::Add,
            Value::load(pad, i.clone()),
            Value::load(k, i),
        )
    });
    let s = &b.p.body;
    // The table moves to the front; the zeroing of `pad` stays where it was, so `pad` does not
    // live from the program's start.
    let expected = vec![
        s[3].clone(),
        s[0].clone(),
        s[1].clone(),
        s[2].clone(),
        s[4].clone(),
    ];
    assert_eq!(hoist_constants(&b.p), expected);
}
