//! A plain executor of the kernel IR ([`tttc_ir::kernel`]): it walks the statements one by one,
//! in the program's element type (an `f32` program computes in `f32`, an `f64` program in
//! `f64`), with the reference interpreter's scalar functions. It is the oracle for kernel-level
//! passes and native backends, so it checks everything and never panics:
//!
//! - before running, that every buffer and loop variable a statement names exists, that every
//!   variable is bound by an enclosing loop (and not rebound inside it), that divisors are
//!   positive, that inputs are never stored to, and that inputs and outputs are row-major;
//! - while running, that every load and store is within its buffer (index arithmetic is checked
//!   for overflow too).
//!
//! Every schedule runs serially, in order. `Local` buffers are fresh for every iteration of the
//! innermost enclosing parallel loop ([`Schedule::Parallel`], [`Schedule::GpuBlock`] or
//! [`Schedule::GpuThread`]) that uses them, `Shared` buffers for every iteration of the
//! enclosing [`Schedule::GpuBlock`] loop; outside any such loop they live as long as the
//! program, like `Global` ones. Temporaries, outputs and fresh buffers start out as NaN, so
//! that reading an element before writing it shows in the results.

use crate::interp::kernels::{binary_scalar, unary_scalar};
use std::collections::{BTreeMap, HashMap};
use tttc_ir::kernel::{
    BufferKind, Index, KernelProgram, Layout, MemorySpace, Schedule, Stmt, Value,
};
use tttc_ir::{BinaryOp, DType, UnaryOp};
use tttc_runtime::{ElemType, RuntimeError, Tensor};

/// Why a kernel program could not be run.
#[derive(Debug, thiserror::Error)]
pub enum KernelInterpError {
    /// No tensor was given for an input buffer.
    #[error("missing input `{name}`")]
    MissingInput {
        /// The input's name.
        name: String,
    },
    /// An input tensor has the wrong shape.
    #[error("input `{name}` has shape {got:?}, expected {expected:?}")]
    InputShape {
        /// The input's name.
        name: String,
        /// The shape of the input's buffer.
        expected: Vec<usize>,
        /// The shape of the given tensor.
        got: Vec<usize>,
    },
    /// An input tensor has the wrong element type.
    #[error("input `{name}` has element type {got}, expected {expected}")]
    InputElemType {
        /// The input's name.
        name: String,
        /// The program's element type.
        expected: ElemType,
        /// The element type of the given tensor.
        got: ElemType,
    },
    /// A load or store outside its buffer.
    #[error("{access} of element {index} of buffer b{buf} (`{name}`), which has {len} element(s)")]
    OutOfBounds {
        /// `load` or `store`.
        access: &'static str,
        /// The buffer.
        buf: u32,
        /// Its name.
        name: String,
        /// The offending element index.
        index: i64,
        /// The buffer's number of elements.
        len: usize,
    },
    /// The program is ill-formed: an unknown buffer or variable, an unbound or rebound loop
    /// variable, a non-positive divisor, a store to an input, a bad layout...
    #[error("ill-formed kernel program: {0}")]
    Invalid(String),
    /// Index arithmetic overflowed `i64`.
    #[error("index arithmetic overflows in {0}")]
    Overflow(String),
    /// An output could not be turned into a runtime tensor.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

type Res<T> = Result<T, KernelInterpError>;

/// Largest number of elements of all buffers together.
const MAX_ELEMENTS: usize = 1 << 34;

/// Runs `p` on `inputs` (matched to the input buffers by name; every input is required, extra
/// entries are ignored) and returns every output buffer under its name, shaped as its layout.
pub fn run_kernel_program(
    p: &KernelProgram,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, KernelInterpError> {
    let checked = check(p)?;
    match p.dtype {
        DType::F32 => Machine::<f32>::run(p, &checked, inputs),
        DType::F64 => Machine::<f64>::run(p, &checked, inputs),
    }
}

/// The element types the executor computes in.
trait Num: Copy + 'static {
    const ELEM: ElemType;
    const NAN: Self;
    fn from_f64(v: f64) -> Self;
    fn unary(f: UnaryOp, x: Self) -> Self;
    fn binary(f: BinaryOp, a: Self, b: Self) -> Self;
    fn data(t: &Tensor) -> Option<&[Self]>;
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Result<Tensor, RuntimeError>;
}

impl Num for f32 {
    const ELEM: ElemType = ElemType::F32;
    const NAN: Self = f32::NAN;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn unary(f: UnaryOp, x: Self) -> Self {
        unary_scalar::<f32>(f, x)
    }
    fn binary(f: BinaryOp, a: Self, b: Self) -> Self {
        binary_scalar::<f32>(f, a, b)
    }
    fn data(t: &Tensor) -> Option<&[Self]> {
        t.as_f32()
    }
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Result<Tensor, RuntimeError> {
        Tensor::from_f32(shape, data)
    }
}

impl Num for f64 {
    const ELEM: ElemType = ElemType::F64;
    const NAN: Self = f64::NAN;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn unary(f: UnaryOp, x: Self) -> Self {
        unary_scalar::<f64>(f, x)
    }
    fn binary(f: BinaryOp, a: Self, b: Self) -> Self {
        binary_scalar::<f64>(f, a, b)
    }
    fn data(t: &Tensor) -> Option<&[Self]> {
        t.as_f64()
    }
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Result<Tensor, RuntimeError> {
        Tensor::from_f64(shape, data)
    }
}

/// What the static check found out: buffer sizes, and the buffers each parallel loop's
/// iterations get fresh (keyed by the address of the loop's body).
struct Checked {
    lens: Vec<usize>,
    fresh: HashMap<usize, Vec<usize>>,
}

/// The key of a loop body.
fn body_key(body: &Vec<Stmt>) -> usize {
    body as *const Vec<Stmt> as usize
}

/// Checks `p` statically (see the module documentation).
fn check(p: &KernelProgram) -> Res<Checked> {
    let invalid = |m: String| KernelInterpError::Invalid(m);
    let mut lens = Vec::with_capacity(p.buffers.len());
    let mut total = 0usize;
    for (i, b) in p.buffers.iter().enumerate() {
        let Layout { shape, strides } = &b.layout;
        if strides.len() != shape.len() {
            return Err(invalid(format!(
                "buffer b{i} (`{}`) has {} stride(s) for {} axes",
                b.name,
                strides.len(),
                shape.len()
            )));
        }
        let len = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| {
                total = total.checked_add(n)?;
                (total <= MAX_ELEMENTS).then_some(n)
            })
            .ok_or_else(|| invalid(format!("buffer b{i} (`{}`) is too large", b.name)))?;
        let io = matches!(b.kind, BufferKind::Input(_) | BufferKind::Output(_));
        if io && b.layout != Layout::row_major(shape) {
            return Err(invalid(format!(
                "input/output buffer b{i} (`{}`) is not row-major",
                b.name
            )));
        }
        lens.push(len);
    }
    let mut c = Checker {
        p,
        bound: vec![false; p.vars as usize],
        fresh: HashMap::new(),
    };
    c.stmts(&p.body)?;
    Ok(Checked {
        lens,
        fresh: c.fresh,
    })
}

struct Checker<'p> {
    p: &'p KernelProgram,
    bound: Vec<bool>,
    fresh: HashMap<usize, Vec<usize>>,
}

impl Checker<'_> {
    /// Checks `body`; returns the `Local` and `Shared` buffers it uses.
    fn stmts(&mut self, body: &[Stmt]) -> Res<Vec<usize>> {
        let mut used = Vec::new();
        for s in body {
            match s {
                Stmt::Loop {
                    var,
                    extent,
                    schedule,
                    body,
                } => {
                    let v = var.0 as usize;
                    match self.bound.get(v) {
                        None => {
                            return Err(KernelInterpError::Invalid(format!(
                                "loop variable i{v} is not below the program's {} variable(s)",
                                self.p.vars
                            )))
                        }
                        Some(true) => {
                            return Err(KernelInterpError::Invalid(format!(
                                "loop variable i{v} is bound again inside its own loop"
                            )))
                        }
                        Some(false) => {}
                    }
                    if i64::try_from(*extent).is_err() {
                        return Err(KernelInterpError::Invalid(format!(
                            "loop i{v} has extent {extent}"
                        )));
                    }
                    self.bound[v] = true;
                    let inner = self.stmts(body)?;
                    self.bound[v] = false;
                    let space = |b: &usize| self.p.buffers.get(*b).map(|b| b.space);
                    let fresh: Vec<usize> = match schedule {
                        Schedule::Parallel | Schedule::GpuThread => inner
                            .iter()
                            .copied()
                            .filter(|b| space(b) == Some(MemorySpace::Local))
                            .collect(),
                        Schedule::GpuBlock => inner.clone(),
                        _ => Vec::new(),
                    };
                    if !fresh.is_empty() {
                        self.fresh.insert(body_key(body), fresh);
                    }
                    used.extend(inner);
                }
                Stmt::Store { buf, index, value } => {
                    let b = self.buffer(buf.0)?;
                    if let BufferKind::Input(name) = &self.p.buffers[b].kind {
                        return Err(KernelInterpError::Invalid(format!(
                            "a store to input buffer b{b} (`{name}`)"
                        )));
                    }
                    self.note(b, &mut used);
                    self.index(index)?;
                    self.value(value, &mut used)?;
                }
            }
        }
        used.sort_unstable();
        used.dedup();
        Ok(used)
    }

    fn buffer(&self, b: u32) -> Res<usize> {
        let b = b as usize;
        match self.p.buffers.get(b) {
            Some(_) => Ok(b),
            None => Err(KernelInterpError::Invalid(format!(
                "buffer b{b} does not exist ({} buffer(s))",
                self.p.buffers.len()
            ))),
        }
    }

    fn note(&self, b: usize, used: &mut Vec<usize>) {
        if matches!(
            self.p.buffers.get(b).map(|b| b.space),
            Some(MemorySpace::Local | MemorySpace::Shared)
        ) {
            used.push(b);
        }
    }

    fn index(&self, i: &Index) -> Res<()> {
        match i {
            Index::Const(_) => Ok(()),
            Index::Var(v) => match self.bound.get(v.0 as usize) {
                Some(true) => Ok(()),
                _ => Err(KernelInterpError::Invalid(format!(
                    "i{} is used outside a loop binding it",
                    v.0
                ))),
            },
            Index::Add(a, b) => {
                self.index(a)?;
                self.index(b)
            }
            Index::Mul(a, _) => self.index(a),
            Index::Div(a, c) | Index::Rem(a, c) => {
                if *c <= 0 {
                    return Err(KernelInterpError::Invalid(format!(
                        "division by {c} in index {i}"
                    )));
                }
                self.index(a)
            }
        }
    }

    fn value(&self, v: &Value, used: &mut Vec<usize>) -> Res<()> {
        match v {
            Value::Load { buf, index } => {
                let b = self.buffer(buf.0)?;
                self.note(b, used);
                self.index(index)
            }
            Value::Const(_) => Ok(()),
            Value::FromIndex(i) => self.index(i),
            Value::Unary(_, x) => self.value(x, used),
            Value::Binary(_, a, b) => {
                self.value(a, used)?;
                self.value(b, used)
            }
        }
    }
}

/// The running program.
struct Machine<'p, T> {
    p: &'p KernelProgram,
    fresh: &'p HashMap<usize, Vec<usize>>,
    bufs: Vec<Vec<T>>,
    vars: Vec<i64>,
}

impl<'p, T: Num> Machine<'p, T> {
    fn run(
        p: &'p KernelProgram,
        checked: &'p Checked,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Res<BTreeMap<String, Tensor>> {
        let mut bufs = Vec::with_capacity(p.buffers.len());
        for (b, &len) in p.buffers.iter().zip(&checked.lens) {
            let data = match &b.kind {
                BufferKind::Input(name) => {
                    let t = inputs
                        .get(name)
                        .ok_or_else(|| KernelInterpError::MissingInput { name: name.clone() })?;
                    if t.elem_type() != T::ELEM {
                        return Err(KernelInterpError::InputElemType {
                            name: name.clone(),
                            expected: T::ELEM,
                            got: t.elem_type(),
                        });
                    }
                    if t.shape() != b.layout.shape.as_slice() {
                        return Err(KernelInterpError::InputShape {
                            name: name.clone(),
                            expected: b.layout.shape.clone(),
                            got: t.shape().to_vec(),
                        });
                    }
                    let data = T::data(t).filter(|d| d.len() == len).ok_or_else(|| {
                        KernelInterpError::Invalid(format!("input `{name}` has the wrong size"))
                    })?;
                    data.to_vec()
                }
                _ => vec![T::NAN; len],
            };
            bufs.push(data);
        }
        let mut m = Machine {
            p,
            fresh: &checked.fresh,
            bufs,
            vars: vec![0; p.vars as usize],
        };
        m.exec(&p.body)?;
        let mut out = BTreeMap::new();
        for (b, data) in p.buffers.iter().zip(m.bufs) {
            if let BufferKind::Output(name) = &b.kind {
                out.insert(name.clone(), T::tensor(b.layout.shape.clone(), data)?);
            }
        }
        Ok(out)
    }

    fn exec(&mut self, body: &[Stmt]) -> Res<()> {
        for s in body {
            match s {
                Stmt::Loop {
                    var, extent, body, ..
                } => {
                    let fresh = self.fresh.get(&body_key(body));
                    let v = var.0 as usize;
                    for i in 0..*extent {
                        if let Some(fresh) = fresh {
                            for &b in fresh {
                                if let Some(buf) = self.bufs.get_mut(b) {
                                    buf.fill(T::NAN);
                                }
                            }
                        }
                        if let Some(slot) = self.vars.get_mut(v) {
                            *slot = i as i64;
                        }
                        self.exec(body)?;
                    }
                }
                Stmt::Store { buf, index, value } => {
                    let x = self.value(value)?;
                    let i = self.index(index)?;
                    let b = buf.0 as usize;
                    let data = self.bufs.get_mut(b);
                    let len = data.as_ref().map_or(0, |d| d.len());
                    match (usize::try_from(i).ok(), data) {
                        (Some(j), Some(d)) if j < len => d[j] = x,
                        _ => return Err(self.out_of_bounds("store", b, i, len)),
                    }
                }
            }
        }
        Ok(())
    }

    fn out_of_bounds(
        &self,
        access: &'static str,
        b: usize,
        index: i64,
        len: usize,
    ) -> KernelInterpError {
        KernelInterpError::OutOfBounds {
            access,
            buf: b as u32,
            name: self
                .p
                .buffers
                .get(b)
                .map(|b| b.name.clone())
                .unwrap_or_default(),
            index,
            len,
        }
    }

    fn index(&self, i: &Index) -> Res<i64> {
        let overflow = || KernelInterpError::Overflow(i.to_string());
        Ok(match i {
            Index::Const(c) => *c,
            Index::Var(v) => self.vars.get(v.0 as usize).copied().unwrap_or(0),
            Index::Add(a, b) => self
                .index(a)?
                .checked_add(self.index(b)?)
                .ok_or_else(overflow)?,
            Index::Mul(a, c) => self.index(a)?.checked_mul(*c).ok_or_else(overflow)?,
            Index::Div(a, c) => self.index(a)?.checked_div(*c).ok_or_else(overflow)?,
            Index::Rem(a, c) => self.index(a)?.checked_rem(*c).ok_or_else(overflow)?,
        })
    }

    fn value(&self, v: &Value) -> Res<T> {
        Ok(match v {
            Value::Load { buf, index } => {
                let i = self.index(index)?;
                let b = buf.0 as usize;
                let data = self.bufs.get(b);
                let len = data.map_or(0, |d| d.len());
                match (usize::try_from(i).ok(), data) {
                    (Some(j), Some(d)) if j < len => d[j],
                    _ => return Err(self.out_of_bounds("load", b, i, len)),
                }
            }
            Value::Const(c) => T::from_f64(*c),
            Value::FromIndex(i) => T::from_f64(self.index(i)? as f64),
            Value::Unary(f, x) => T::unary(*f, self.value(x)?),
            Value::Binary(f, a, b) => T::binary(*f, self.value(a)?, self.value(b)?),
        })
    }
}
