//! Helpers shared by the native backend tests (LLVM and Cranelift): building kernel programs
//! by hand, tensors, and floating-point comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use tttc_ir::kernel::{
    BufId, Buffer, BufferKind, Index, KernelProgram, Layout, MemorySpace, Schedule, Stmt, Value,
    VarId,
};
use tttc_ir::{BinaryOp, DType, UnaryOp};
use tttc_runtime::Tensor;

/// A kernel program under construction.
pub struct Prog {
    pub p: KernelProgram,
}

impl Prog {
    pub fn new(name: &str, dtype: DType) -> Prog {
        Prog {
            p: KernelProgram {
                name: name.to_string(),
                dtype,
                buffers: Vec::new(),
                vars: 0,
                body: Vec::new(),
                functions: Vec::new(),
                memory: None,
            },
        }
    }

    fn add(&mut self, name: &str, kind: BufferKind, space: MemorySpace, shape: &[usize]) -> BufId {
        self.p.buffers.push(Buffer {
            name: name.to_string(),
            kind,
            space,
            layout: Layout::row_major(shape),
        });
        BufId(self.p.buffers.len() as u32 - 1)
    }

    pub fn input(&mut self, name: &str, shape: &[usize]) -> BufId {
        self.add(
            name,
            BufferKind::Input(name.into()),
            MemorySpace::Global,
            shape,
        )
    }

    pub fn output(&mut self, name: &str, shape: &[usize]) -> BufId {
        self.add(
            name,
            BufferKind::Output(name.into()),
            MemorySpace::Global,
            shape,
        )
    }

    pub fn temp(&mut self, name: &str, shape: &[usize]) -> BufId {
        self.add(name, BufferKind::Temp, MemorySpace::Global, shape)
    }

    pub fn local(&mut self, name: &str, shape: &[usize]) -> BufId {
        self.add(name, BufferKind::Temp, MemorySpace::Local, shape)
    }

    pub fn var(&mut self) -> VarId {
        self.p.vars += 1;
        VarId(self.p.vars - 1)
    }

    pub fn push(&mut self, s: Stmt) {
        self.p.body.push(s);
    }
}

pub fn lp(var: VarId, extent: usize, schedule: Schedule, body: Vec<Stmt>) -> Stmt {
    Stmt::Loop {
        var,
        extent,
        schedule,
        body,
    }
}

pub fn serial(var: VarId, extent: usize, body: Vec<Stmt>) -> Stmt {
    lp(var, extent, Schedule::Serial, body)
}

pub fn parallel(var: VarId, extent: usize, body: Vec<Stmt>) -> Stmt {
    lp(var, extent, Schedule::Parallel, body)
}

pub fn store(buf: BufId, index: Index, value: Value) -> Stmt {
    Stmt::Store { buf, index, value }
}

pub fn v(x: VarId) -> Index {
    Index::Var(x)
}

pub fn c(x: i64) -> Index {
    Index::Const(x)
}

/// `a * k + b`.
pub fn affine(a: Index, k: i64, b: Index) -> Index {
    Index::sum(Index::scaled(a, k), b)
}

pub fn ld(buf: BufId, index: Index) -> Value {
    Value::Load { buf, index }
}

pub fn k(x: f64) -> Value {
    Value::Const(x)
}

pub fn un(op: UnaryOp, x: Value) -> Value {
    Value::Unary(op, Box::new(x))
}

pub fn bin(op: BinaryOp, a: Value, b: Value) -> Value {
    Value::Binary(op, Box::new(a), Box::new(b))
}

pub fn add(a: Value, b: Value) -> Value {
    bin(BinaryOp::Add, a, b)
}

pub fn mul(a: Value, b: Value) -> Value {
    bin(BinaryOp::Mul, a, b)
}

/// Named inputs.
pub fn inputs(list: &[(&str, Tensor)]) -> BTreeMap<String, Tensor> {
    list.iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

/// A deterministic pseudo-random sequence in `[lo, hi)` (xorshift).
pub fn rand_vec(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

/// Distance in units in the last place between two `f32`s (0 when both are NaN).
pub fn ulps32(a: f32, b: f32) -> u64 {
    if a.is_nan() && b.is_nan() {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u64::MAX;
    }
    if a == b {
        return 0;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i64::from(i32::MIN) - i64::from(i)
        } else {
            i64::from(i)
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Distance in units in the last place between two `f64`s (0 when both are NaN).
pub fn ulps64(a: f64, b: f64) -> u64 {
    if a.is_nan() && b.is_nan() {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u64::MAX;
    }
    if a == b {
        return 0;
    }
    let key = |x: f64| {
        let i = x.to_bits() as i64;
        if i < 0 {
            i128::from(i64::MIN) - i128::from(i)
        } else {
            i128::from(i)
        }
    };
    (key(a) - key(b)).unsigned_abs().min(u128::from(u64::MAX)) as u64
}
