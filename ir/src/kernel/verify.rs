//! The kernel IR's verifier: the structural rules every kernel program must keep, checked in one
//! place. Lowering and every kernel-level pass call it on what they produce; the executor and the
//! native backends call it before anything else, and add only what is theirs (bounds proofs,
//! memory limits, the GPU form).
//!
//! The rules:
//! - every buffer's layout has one stride per axis and a number of elements that fits in `u64`;
//!   program inputs and outputs are row-major, live in `Global` memory, and have distinct names;
//! - every [`BufId`] names a buffer and every [`VarId`] is below [`KernelProgram::vars`];
//! - a loop variable is used only inside its loop, and is not bound again inside it; extents fit
//!   in `i64`; divisors and moduli of indices are positive;
//! - an [`Index::Load`] has a positive bound, names a buffer, and its own index reads no memory
//!   (one level of indirection);
//! - nothing stores into a program input;
//! - `Local` and `Shared` buffers are temporaries (inputs and outputs are `Global`, above); where
//!   they may be used is not restricted: outside the loops that refresh them they live as long
//!   as the program (see [`MemorySpace`]);
//! - a [`Stmt::Barrier`] sits inside a [`Schedule::GpuBlock`] loop and outside every
//!   [`Schedule::GpuThread`] loop (where every thread of the block reaches it);
//! - a [`Stmt::Gemm`] sits at the top level (inside no loop); its views have one batch stride
//!   per batch axis, every element of every view is inside its buffer, its result is not a
//!   program input, not the buffer of either operand, and no two of its elements coincide;
//! - a [`Stmt::Call`] sits at the top level of the program's body (not inside a loop, not in a
//!   function), names an existing function, and passes one argument per parameter: pairwise
//!   distinct `Global` buffers, each with its parameter's layout, and no program input where
//!   the function stores to the parameter;
//! - a [`KernelFunction`]'s parameters are distinct `Global` buffers, and every `Global`
//!   buffer its body touches is one of them (its body is checked like the program's, with no
//!   loop variable bound at its start);
//! - a [`super::MemoryPlan`], when there is one, places distinct `Global` temporaries, each
//!   inside the arena, and two buffers that overlap in the arena never have overlapping
//!   [`super::Lifetime`]s (so a wrong plan cannot reach a code generator);
//! - loops nest at most [`MAX_LOOP_DEPTH`] deep and expressions at most [`MAX_EXPR_DEPTH`]
//!   (so that recursive walkers cannot overflow the stack).
//!
//! Every buffer holds the program's one element type ([`KernelProgram::dtype`]) and every
//! [`Value`] is of that type, so element types cannot disagree within a program.
//!
//! Nothing inside a loop of extent 0 ever runs, so nothing inside one is checked.

use super::{
    BufId, BufferKind, FuncId, Gemm, Index, KernelFunction, KernelProgram, Layout, MatrixView,
    MemorySpace, Schedule, Stmt, Value,
};
use std::collections::BTreeSet;

/// Deepest nesting of expressions ([`Value`] and [`Index`] trees) accepted.
pub const MAX_EXPR_DEPTH: usize = 1000;
/// Deepest nesting of loops accepted.
pub const MAX_LOOP_DEPTH: usize = 256;

/// Why a kernel program is ill-formed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A buffer's strides do not match its shape's rank.
    #[error("buffer b{buf} ({name}) has {strides} stride(s) for {axes} axes")]
    StrideRank {
        /// The buffer.
        buf: u32,
        /// Its name.
        name: String,
        /// Number of strides.
        strides: usize,
        /// Number of axes.
        axes: usize,
    },
    /// A buffer's number of elements overflows `u64`.
    #[error("buffer b{buf} ({name}) with shape {shape:?} is too large")]
    TooLarge {
        /// The buffer.
        buf: u32,
        /// Its name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// More buffers than a [`BufId`] can name.
    #[error("too many buffers ({0})")]
    TooManyBuffers(usize),
    /// A program input or output is not row-major.
    #[error("input/output buffer b{buf} ({name}) is not row-major")]
    NotRowMajor {
        /// The buffer.
        buf: u32,
        /// Its name.
        name: String,
    },
    /// A program input or output outside global memory.
    #[error("buffer b{buf} ({name}) is a program input or output but lives in {space:?} memory")]
    IoNotGlobal {
        /// The buffer.
        buf: u32,
        /// Its name.
        name: String,
        /// Where it lives.
        space: MemorySpace,
    },
    /// Two inputs (or two outputs) with one name.
    #[error("two program {what}s are named {name:?}")]
    DuplicateName {
        /// `input` or `output`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A statement names a buffer that does not exist.
    #[error("{access} unknown buffer b{buf} (the program has {buffers} buffer(s))")]
    UnknownBuffer {
        /// `store to` or `load from`.
        access: &'static str,
        /// The buffer id.
        buf: u32,
        /// How many buffers there are.
        buffers: usize,
    },
    /// A loop binds a variable beyond [`KernelProgram::vars`].
    #[error("loop variable i{var} is not below the program's {vars} variable(s)")]
    VarOutOfRange {
        /// The variable.
        var: u32,
        /// The program's count.
        vars: u32,
    },
    /// A loop binds a variable that an enclosing loop already binds.
    #[error("loop variable i{0} is bound again inside its own loop")]
    Rebound(u32),
    /// An index mentions a variable no enclosing loop binds.
    #[error("loop variable i{0} used outside its loop")]
    Unbound(u32),
    /// A loop's extent does not fit in `i64`.
    #[error("loop i{var} has extent {extent}, beyond i64")]
    ExtentTooLarge {
        /// The loop variable.
        var: u32,
        /// The extent.
        extent: usize,
    },
    /// An index divides (or takes a remainder) by a non-positive constant.
    #[error("index {index} divides by {divisor}")]
    NonPositiveDivisor {
        /// The offending index, printed.
        index: String,
        /// The divisor.
        divisor: i64,
    },
    /// An [`Index::Load`] with a non-positive bound or with another one inside its index.
    #[error("data-dependent index {index}: {reason}")]
    BadIndexLoad {
        /// The offending index, printed.
        index: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A store into a program input.
    #[error("store into program input b{buf} ({name})")]
    StoreToInput {
        /// The buffer.
        buf: u32,
        /// The input's name.
        name: String,
    },
    /// A barrier where not every thread of a block reaches it, or outside any block.
    #[error("a barrier {0}")]
    MisplacedBarrier(&'static str),
    /// A matrix product inside a loop.
    #[error("a gemm inside a loop (gemms run only at the top level)")]
    NestedGemm,
    /// A matrix product whose view has the wrong number of batch strides, or extents beyond
    /// `i64`.
    #[error("gemm operand {operand}: {message}")]
    GemmShape {
        /// `a`, `b` or `c`.
        operand: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A matrix product reading or writing outside a buffer.
    #[error(
        "gemm operand {operand} on b{buf} ({name}) spans elements {lo}..={hi}, outside the \
         buffer's {len} element(s)"
    )]
    GemmOutOfBounds {
        /// `a`, `b` or `c`.
        operand: &'static str,
        /// The buffer.
        buf: u32,
        /// Its name.
        name: String,
        /// The lowest element index touched.
        lo: i64,
        /// The highest element index touched.
        hi: i64,
        /// The buffer's number of elements.
        len: usize,
    },
    /// A matrix product whose result is the buffer of one of its operands.
    #[error("gemm result b{buf} ({name}) is also operand {operand}")]
    GemmAliased {
        /// The buffer.
        buf: u32,
        /// Its name.
        name: String,
        /// `a` or `b`.
        operand: &'static str,
    },
    /// A matrix product whose result view maps two elements to one (a zero stride, or strides
    /// that interleave).
    #[error("gemm result on b{buf} ({name}) may write one element twice (strides {strides:?})")]
    GemmOverlap {
        /// The buffer.
        buf: u32,
        /// Its name.
        name: String,
        /// The result's strides: batch axes, rows, columns.
        strides: Vec<i64>,
    },
    /// A call to a function that does not exist.
    #[error("call to unknown function f{func} (the program has {functions} function(s))")]
    UnknownFunction {
        /// The function id.
        func: u32,
        /// How many functions there are.
        functions: usize,
    },
    /// A call with the wrong number of arguments.
    #[error("call to f{func} passes {args} argument(s) for {params} parameter(s)")]
    CallArity {
        /// The function.
        func: u32,
        /// Its number of parameters.
        params: usize,
        /// The call's number of arguments.
        args: usize,
    },
    /// A call's argument that cannot stand for its parameter.
    #[error("argument {position} (b{buf}) of a call to f{func} {reason}")]
    BadArgument {
        /// The function.
        func: u32,
        /// The argument's position.
        position: usize,
        /// The argument buffer.
        buf: u32,
        /// What is wrong: another layout, not `Global`, passed twice, an input stored to.
        reason: String,
    },
    /// A function's parameter that is not a distinct `Global` buffer.
    #[error("parameter {position} (b{buf}) of function f{func} {reason}")]
    BadParameter {
        /// The function.
        func: u32,
        /// The parameter's position.
        position: usize,
        /// The parameter buffer.
        buf: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A function's body touches a `Global` buffer that is not one of its parameters.
    #[error("function f{func} uses global buffer b{buf}, which is not one of its parameters")]
    NotAParameter {
        /// The function.
        func: u32,
        /// The buffer.
        buf: u32,
    },
    /// A memory-plan placement that cannot be: its buffer does not exist, is not a `Global`
    /// temporary, is placed twice, or does not fit in the arena.
    #[error("memory plan: b{buf} {reason}")]
    BadPlacement {
        /// The buffer.
        buf: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two buffers that share arena memory are both alive at some step.
    #[error("memory plan: b{a} and b{b} overlap in the arena but are both alive at step {step}")]
    PlanOverlap {
        /// One buffer.
        a: u32,
        /// The other.
        b: u32,
        /// A step at which both are alive.
        step: usize,
    },
    /// A call inside a loop or inside a function.
    #[error("a call {0}")]
    MisplacedCall(&'static str),
    /// Loops nested too deep.
    #[error("loops nested deeper than {MAX_LOOP_DEPTH}")]
    LoopsTooDeep,
    /// An expression or index nested too deep.
    #[error("expression nested deeper than {MAX_EXPR_DEPTH}")]
    ExprTooDeep,
}

type Res = Result<(), VerifyError>;

/// Checks that `p` keeps every rule of the kernel IR (see the module documentation).
pub fn verify(p: &KernelProgram) -> Res {
    buffers(p)?;
    let mut v = Verifier {
        p,
        bound: vec![false; p.vars as usize],
        depth: 0,
        in_block: 0,
        in_thread: 0,
        function: None,
    };
    for (i, f) in p.functions.iter().enumerate() {
        params(p, i as u32, f)?;
        v.function = Some((i as u32, f));
        v.stmts(&f.body)?;
    }
    v.function = None;
    v.stmts(&p.body)?;
    memory_plan(p)
}

/// The memory plan, if any: every placement a distinct `Global` temporary inside the arena, and
/// no two placements overlapping in the arena with overlapping lifetimes.
fn memory_plan(p: &KernelProgram) -> Res {
    let Some(plan) = &p.memory else {
        return Ok(());
    };
    let mut spans = Vec::with_capacity(plan.placements.len());
    let mut previous: Option<BufId> = None;
    for pl in &plan.placements {
        let bad = |reason| {
            Err(VerifyError::BadPlacement {
                buf: pl.buf.0,
                reason,
            })
        };
        let Some(b) = p.buffer(pl.buf) else {
            return bad("does not exist");
        };
        if b.space != MemorySpace::Global || b.kind != BufferKind::Temp {
            return bad("is not a Global temporary");
        }
        if previous.is_some_and(|q| q >= pl.buf) {
            return bad("is placed twice or out of order");
        }
        previous = Some(pl.buf);
        let end = pl.offset.checked_add(b.len() as u64);
        match end {
            Some(end) if end <= plan.arena_len => spans.push((pl.offset, end, pl.buf)),
            _ => return bad("does not fit in the arena"),
        }
    }
    let lives = super::lifetimes(p);
    // Sweep by offset: each span against the earlier ones still open at its start.
    spans.retain(|s| s.0 < s.1);
    spans.sort();
    let mut open: Vec<(u64, BufId)> = Vec::new();
    for &(start, end, buf) in &spans {
        open.retain(|&(e, _)| e > start);
        if let Some(l) = lives.get(&buf) {
            for &(_, other) in &open {
                if let Some(m) = lives.get(&other) {
                    if l.overlaps(m) {
                        return Err(VerifyError::PlanOverlap {
                            a: other.0,
                            b: buf.0,
                            step: l.first.max(m.first),
                        });
                    }
                }
            }
        }
        open.push((end, buf));
    }
    Ok(())
}

/// A function's parameters: distinct `Global` buffers of the program.
fn params(p: &KernelProgram, func: u32, f: &KernelFunction) -> Res {
    let mut seen = BTreeSet::new();
    for (position, &id) in f.params.iter().enumerate() {
        let bad = |reason| {
            Err(VerifyError::BadParameter {
                func,
                position,
                buf: id.0,
                reason,
            })
        };
        match p.buffer(id) {
            None => return bad("does not exist"),
            Some(b) if b.space != MemorySpace::Global => return bad("is not a Global buffer"),
            Some(_) => {}
        }
        if !seen.insert(id) {
            return bad("is given twice");
        }
    }
    Ok(())
}

/// Whether a function's body stores to `buf`.
fn stores_to(f: &KernelFunction, buf: BufId) -> bool {
    let mut found = false;
    for s in &f.body {
        s.walk(&mut |s| {
            found |= matches!(s, Stmt::Store { buf: b, .. } if *b == buf);
            !found
        });
    }
    found
}

/// The buffer declarations' rules.
fn buffers(p: &KernelProgram) -> Res {
    if p.buffers.len() > u32::MAX as usize {
        return Err(VerifyError::TooManyBuffers(p.buffers.len()));
    }
    for (i, b) in p.buffers.iter().enumerate() {
        let (buf, name) = (i as u32, || b.name.clone());
        let Layout { shape, strides } = &b.layout;
        if strides.len() != shape.len() {
            return Err(VerifyError::StrideRank {
                buf,
                name: name(),
                strides: strides.len(),
                axes: shape.len(),
            });
        }
        if shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .is_none()
        {
            return Err(VerifyError::TooLarge {
                buf,
                name: name(),
                shape: shape.clone(),
            });
        }
        if matches!(b.kind, BufferKind::Input(_) | BufferKind::Output(_)) {
            if b.layout != Layout::row_major(shape) {
                return Err(VerifyError::NotRowMajor { buf, name: name() });
            }
            if b.space != MemorySpace::Global {
                return Err(VerifyError::IoNotGlobal {
                    buf,
                    name: name(),
                    space: b.space,
                });
            }
        }
    }
    for (what, list) in [("input", p.inputs()), ("output", p.outputs())] {
        let mut seen = BTreeSet::new();
        for (_, name) in list {
            if !seen.insert(name) {
                return Err(VerifyError::DuplicateName {
                    what,
                    name: name.to_string(),
                });
            }
        }
    }
    Ok(())
}

struct Verifier<'p> {
    p: &'p KernelProgram,
    /// Which variables enclosing loops bind.
    bound: Vec<bool>,
    /// Number of enclosing loops.
    depth: usize,
    /// Number of enclosing `GpuBlock` loops.
    in_block: usize,
    /// Number of enclosing `GpuThread` loops.
    in_thread: usize,
    /// The function whose body is being checked, if any.
    function: Option<(u32, &'p KernelFunction)>,
}

impl Verifier<'_> {
    fn stmts(&mut self, body: &[Stmt]) -> Res {
        body.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&mut self, s: &Stmt) -> Res {
        match s {
            Stmt::Loop {
                var,
                extent,
                schedule,
                body,
            } => {
                if self.depth >= MAX_LOOP_DEPTH {
                    return Err(VerifyError::LoopsTooDeep);
                }
                match self.bound.get(var.0 as usize) {
                    None => {
                        return Err(VerifyError::VarOutOfRange {
                            var: var.0,
                            vars: self.p.vars,
                        })
                    }
                    Some(true) => return Err(VerifyError::Rebound(var.0)),
                    Some(false) => {}
                }
                if i64::try_from(*extent).is_err() {
                    return Err(VerifyError::ExtentTooLarge {
                        var: var.0,
                        extent: *extent,
                    });
                }
                if *extent == 0 {
                    // Never runs: nothing in it is executed.
                    return Ok(());
                }
                let block = usize::from(*schedule == Schedule::GpuBlock);
                let thread = usize::from(*schedule == Schedule::GpuThread);
                self.bound[var.0 as usize] = true;
                self.depth += 1;
                self.in_block += block;
                self.in_thread += thread;
                let r = self.stmts(body);
                self.in_thread -= thread;
                self.in_block -= block;
                self.depth -= 1;
                self.bound[var.0 as usize] = false;
                r
            }
            Stmt::Store { buf, index, value } => {
                self.access(*buf, index, "store to")?;
                if let BufferKind::Input(name) = &self.p.buffers[buf.0 as usize].kind {
                    return Err(VerifyError::StoreToInput {
                        buf: buf.0,
                        name: name.clone(),
                    });
                }
                self.value(value, 0)
            }
            Stmt::Gemm(g) => {
                if self.depth > 0 {
                    return Err(VerifyError::NestedGemm);
                }
                gemm(self.p, g)
            }
            Stmt::Call { func, args } => self.call(*func, args),
            Stmt::Barrier => {
                if self.in_block == 0 {
                    Err(VerifyError::MisplacedBarrier("outside any GpuBlock loop"))
                } else if self.in_thread > 0 {
                    Err(VerifyError::MisplacedBarrier(
                        "inside a GpuThread loop (not every thread reaches it)",
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn call(&self, func: FuncId, args: &[BufId]) -> Res {
        if self.function.is_some() {
            return Err(VerifyError::MisplacedCall("inside a function"));
        }
        if self.depth > 0 {
            return Err(VerifyError::MisplacedCall("inside a loop"));
        }
        let Some(f) = self.p.function(func) else {
            return Err(VerifyError::UnknownFunction {
                func: func.0,
                functions: self.p.functions.len(),
            });
        };
        if f.params.len() != args.len() {
            return Err(VerifyError::CallArity {
                func: func.0,
                params: f.params.len(),
                args: args.len(),
            });
        }
        let mut seen = BTreeSet::new();
        for (position, (&param, &arg)) in f.params.iter().zip(args).enumerate() {
            let bad = |reason: String| {
                Err(VerifyError::BadArgument {
                    func: func.0,
                    position,
                    buf: arg.0,
                    reason,
                })
            };
            let Some(b) = self.p.buffer(arg) else {
                return bad("does not exist".into());
            };
            // The parameters were checked to exist.
            let want = &self.p.buffers[param.0 as usize].layout;
            if b.space != MemorySpace::Global {
                return bad(format!("lives in {:?} memory, not Global", b.space));
            }
            if b.layout != *want {
                return bad(format!(
                    "has shape {:?} strides {:?}, the parameter b{} shape {:?} strides {:?}",
                    b.layout.shape, b.layout.strides, param.0, want.shape, want.strides
                ));
            }
            if !seen.insert(arg) {
                return bad("is passed twice (arguments may not alias)".into());
            }
            if matches!(b.kind, BufferKind::Input(_)) && stores_to(f, param) {
                return bad("is a program input, and the function stores to it".into());
            }
        }
        Ok(())
    }

    fn access(&self, buf: BufId, index: &Index, access: &'static str) -> Res {
        let Some(b) = self.p.buffer(buf) else {
            return Err(VerifyError::UnknownBuffer {
                access,
                buf: buf.0,
                buffers: self.p.buffers.len(),
            });
        };
        if let Some((func, f)) = self.function {
            if b.space == MemorySpace::Global && !f.params.contains(&buf) {
                return Err(VerifyError::NotAParameter { func, buf: buf.0 });
            }
        }
        self.index(index, 0)
    }

    fn value(&self, v: &Value, depth: usize) -> Res {
        if depth > MAX_EXPR_DEPTH {
            return Err(VerifyError::ExprTooDeep);
        }
        match v {
            Value::Load { buf, index } => self.access(*buf, index, "load from"),
            Value::Const(_) => Ok(()),
            Value::FromIndex(i) => self.index(i, 0),
            Value::Unary(_, x) => self.value(x, depth + 1),
            Value::Binary(_, a, b) => {
                self.value(a, depth + 1)?;
                self.value(b, depth + 1)
            }
        }
    }

    fn index(&self, i: &Index, depth: usize) -> Res {
        if depth > MAX_EXPR_DEPTH {
            return Err(VerifyError::ExprTooDeep);
        }
        match i {
            Index::Const(_) => Ok(()),
            Index::Var(v) => match self.bound.get(v.0 as usize) {
                Some(true) => Ok(()),
                _ => Err(VerifyError::Unbound(v.0)),
            },
            Index::Add(a, b) => {
                self.index(a, depth + 1)?;
                self.index(b, depth + 1)
            }
            Index::Mul(a, _) => self.index(a, depth + 1),
            Index::Div(a, c) | Index::Rem(a, c) => {
                if *c <= 0 {
                    return Err(VerifyError::NonPositiveDivisor {
                        index: i.to_string(),
                        divisor: *c,
                    });
                }
                self.index(a, depth + 1)
            }
            Index::Load { buf, index, bound } => {
                let bad = |reason| {
                    Err(VerifyError::BadIndexLoad {
                        index: i.to_string(),
                        reason,
                    })
                };
                if *bound <= 0 {
                    return bad("its bound is not positive");
                }
                if index.has_load() {
                    return bad("its index reads memory too (one level of indirection only)");
                }
                if self.p.buffer(*buf).is_none() {
                    return Err(VerifyError::UnknownBuffer {
                        access: "index load from",
                        buf: buf.0,
                        buffers: self.p.buffers.len(),
                    });
                }
                self.index(index, depth + 1)
            }
        }
    }
}

/// The rules of one [`Stmt::Gemm`] (its place is checked by the caller).
fn gemm(p: &KernelProgram, g: &Gemm) -> Res {
    let shape_err = |operand, message: String| VerifyError::GemmShape { operand, message };
    for (name, v, _, _) in g.operands() {
        if p.buffer(v.buf).is_none() {
            return Err(VerifyError::UnknownBuffer {
                access: if name == "c" { "store to" } else { "load from" },
                buf: v.buf.0,
                buffers: p.buffers.len(),
            });
        }
        if v.batch_strides.len() != g.batch.len() {
            return Err(shape_err(
                name,
                format!(
                    "{} batch stride(s) for {} batch axes",
                    v.batch_strides.len(),
                    g.batch.len()
                ),
            ));
        }
    }
    let extents = g.batch.iter().chain([&g.m, &g.n, &g.k]);
    if let Some(e) = extents.into_iter().find(|&&e| i64::try_from(e).is_err()) {
        return Err(shape_err("c", format!("extent {e} beyond i64")));
    }
    if let BufferKind::Input(name) = &p.buffers[g.c.buf.0 as usize].kind {
        return Err(VerifyError::StoreToInput {
            buf: g.c.buf.0,
            name: name.clone(),
        });
    }
    for (operand, v) in [("a", &g.a), ("b", &g.b)] {
        if v.buf == g.c.buf {
            return Err(VerifyError::GemmAliased {
                buf: v.buf.0,
                name: p.buffers[v.buf.0 as usize].name.clone(),
                operand,
            });
        }
    }
    for (operand, v, rows, cols) in g.operands() {
        let axes = view_axes(g, v, rows, cols);
        if axes.iter().any(|&(e, _)| e == 0) {
            // No element: nothing is touched.
            continue;
        }
        let len = p.buffers[v.buf.0 as usize].len();
        let buf = &p.buffers[v.buf.0 as usize];
        let out = |lo: i64, hi: i64| VerifyError::GemmOutOfBounds {
            operand,
            buf: v.buf.0,
            name: buf.name.clone(),
            lo,
            hi,
            len,
        };
        let (lo, hi) = span(v.offset, &axes).ok_or_else(|| out(i64::MIN, i64::MAX))?;
        if lo < 0 || usize::try_from(hi).map_or(true, |h| h >= len) {
            return Err(out(lo, hi));
        }
    }
    let c_axes = view_axes(g, &g.c, g.m, g.n);
    if c_axes.iter().all(|&(e, _)| e > 0) && !injective(&c_axes) {
        return Err(VerifyError::GemmOverlap {
            buf: g.c.buf.0,
            name: p.buffers[g.c.buf.0 as usize].name.clone(),
            strides: c_axes.iter().map(|&(_, s)| s).collect(),
        });
    }
    Ok(())
}

/// `(extent, stride)` of every axis of view `v` of `g`: the batch axes, rows, columns.
fn view_axes(g: &Gemm, v: &MatrixView, rows: usize, cols: usize) -> Vec<(usize, i64)> {
    g.batch
        .iter()
        .copied()
        .zip(v.batch_strides.iter().copied())
        .chain([(rows, v.row_stride), (cols, v.col_stride)])
        .collect()
}

/// The lowest and highest element index of a view from `offset` with `axes` (every extent
/// positive), or `None` on `i64` overflow.
fn span(offset: i64, axes: &[(usize, i64)]) -> Option<(i64, i64)> {
    let (mut lo, mut hi) = (offset, offset);
    for &(e, s) in axes {
        let far = i64::try_from(e - 1).ok()?.checked_mul(s)?;
        if far < 0 {
            lo = lo.checked_add(far)?;
        } else {
            hi = hi.checked_add(far)?;
        }
    }
    Some((lo, hi))
}

/// Whether distinct indices of a view with `axes` (every extent positive) always address
/// distinct elements. Sufficient condition: sorted by the size of their strides, each axis of
/// extent above 1 strides past everything the smaller axes span.
fn injective(axes: &[(usize, i64)]) -> bool {
    let mut moving: Vec<(usize, u64)> = axes
        .iter()
        .filter(|&&(e, _)| e > 1)
        .map(|&(e, s)| (e, s.unsigned_abs()))
        .collect();
    moving.sort_by_key(|&(_, s)| s);
    let mut reach: u64 = 0;
    for (e, s) in moving {
        if s <= reach {
            return false;
        }
        match (e as u64 - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(reach))
        {
            Some(r) => reach = r,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests;
