//! A plain executor of the kernel IR ([`tttc_ir::kernel`]): it walks the statements one by one,
//! in the program's element type (an `f32` program computes in `f32`, an `f64` program in
//! `f64`), with the reference interpreter's scalar functions. It is the oracle for kernel-level
//! passes and native backends, so it checks everything and never panics:
//!
//! - before running, every rule of the kernel IR ([`tttc_ir::kernel::verify`]: every buffer and
//!   loop variable a statement names exists, every variable is bound by an enclosing loop and
//!   not rebound inside it, divisors are positive, inputs are never stored to, inputs and
//!   outputs are row-major...), and that the buffers fit in memory;
//! - while running, that every load and store is within its buffer (index arithmetic is checked
//!   for overflow too).
//!
//! [`run_kernel_program`] runs every schedule serially, in order, treats
//! [`Stmt::Barrier`] as a no-op, and runs a [`Stmt::Gemm`] as its reference loop nest (see
//! [`tttc_ir::kernel::Gemm`]: the interpreter's summation order, so a gemm gives exactly what
//! the loops lowering emits without it give). [`run_kernel_program_gpu`] instead *emulates* a GPU: see
//! [`GpuEmulation`].
//!
//! A program with kernel functions runs as [`inline_calls`] makes it (each call replaced by its
//! function's body over the call's arguments: the definition of a call).
//!
//! In both modes `Local` buffers are fresh for every iteration of the
//! innermost enclosing parallel loop ([`Schedule::Parallel`], [`Schedule::GpuBlock`] or
//! [`Schedule::GpuThread`]) that uses them, `Shared` buffers for every iteration of the
//! enclosing [`Schedule::GpuBlock`] loop; outside any such loop they live as long as the
//! program, like `Global` ones. Temporaries, outputs and fresh buffers start out as NaN, so
//! that reading an element before writing it shows in the results (always: the interpreter is
//! the checking mode, whatever [`crate::poison`] says).
//!
//! A program with a memory plan ([`tttc_ir::kernel::MemoryPlan`]) runs (on the CPU path) with
//! its arena simulated: the placed temporaries keep their contents in one shared array between
//! top-level statements, each NaN-filled when its lifetime begins, so that a plan letting two
//! live buffers share memory gives wrong results here too, not only in native code.

use crate::interp::kernels::{binary_scalar, unary_scalar};
use crate::tensor_core::{recognize, TensorCores};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use tttc_ir::kernel::{
    buffers_used, inline_calls, lifetimes, verify, BufId, BufferKind, Gemm, Index, KernelProgram,
    MatrixView, MemoryPlan, MemorySpace, Schedule, Stmt, Value, VerifyError,
};
use tttc_ir::{BinaryOp, DType, UnaryOp};
use tttc_runtime::{ElemType, RuntimeError, Tensor};

/// Why a kernel program could not be run.
#[derive(Debug, thiserror::Error)]
pub enum KernelInterpError {
    /// An input tensor is missing or does not fit its buffer (named in the error).
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
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
    /// The program breaks a rule of the kernel IR (see [`tttc_ir::kernel::verify`]): an unknown
    /// buffer or variable, an unbound or rebound loop variable, a non-positive divisor, a store
    /// to an input, a bad layout...
    #[error("ill-formed kernel program")]
    Malformed(#[from] VerifyError),
    /// The program cannot be run here (its buffers are too large) or its inputs do not fit.
    #[error("ill-formed kernel program: {0}")]
    Invalid(String),
    /// Under GPU emulation, two threads of a block touched the same element between two
    /// barriers (or two blocks of one launch touched the same global element), and at least
    /// one of them wrote it: a data race on a real GPU.
    #[error(
        "data race on element {index} of buffer b{buf} (`{name}`): {first} and {second} \
         access it without a barrier between them, and at least one writes it"
    )]
    Race {
        /// The buffer.
        buf: u32,
        /// Its name.
        name: String,
        /// The element.
        index: i64,
        /// One party (`thread 3 of block 0`, `block 2`).
        first: String,
        /// The other party.
        second: String,
    },
    /// Under GPU emulation, the program is not in the form a GPU runs (see
    /// [`GpuEmulation`]).
    #[error("not a GPU-scheduled kernel program: {0}")]
    NotGpu(String),
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
    let p = &*inlined(p)?;
    let checked = check(p)?;
    match p.dtype {
        DType::F32 => Machine::<f32>::run(p, &checked, inputs, None, None),
        DType::F64 => Machine::<f64>::run(p, &checked, inputs, None, None),
    }
}

/// How [`run_kernel_program_gpu`] emulates a GPU.
///
/// The program must be GPU-scheduled (as `tttc_passes::gpu_schedule` makes it): every
/// top-level statement is a [`Schedule::GpuBlock`] loop (one kernel launch, one block per
/// iteration); inside a block, statements are *collective* — [`Stmt::Barrier`]s, loops of any
/// other schedule that every thread runs in step (no `GpuBlock` inside), and
/// [`Schedule::GpuThread`] loops, whose iteration `i` runs on thread `i % threads`; every store
/// is inside exactly one `GpuThread` loop, and there is no barrier inside one.
///
/// Blocks run one after another. Inside a block the threads run one after another *between
/// barriers*: thread 0 runs everything up to the next barrier, then thread 1, and so on. An
/// element written by one thread and read or written by another between two barriers is a
/// [`KernelInterpError::Race`], and so is a global element written by one block and touched by
/// another block of the same launch. So a missing barrier shows up as an error (and, with this
/// order, usually as wrong values too), never silently.
#[derive(Clone, Copy, Debug)]
pub struct GpuEmulation {
    /// Threads per block (at least 1).
    pub threads: usize,
}

/// Runs a GPU-scheduled `p` on `inputs` like [`run_kernel_program`], emulating the GPU's
/// blocks, threads and barriers and detecting data races (see [`GpuEmulation`]).
pub fn run_kernel_program_gpu(
    p: &KernelProgram,
    inputs: &BTreeMap<String, Tensor>,
    emu: GpuEmulation,
) -> Result<BTreeMap<String, Tensor>, KernelInterpError> {
    let p = &*inlined(p)?;
    let checked = check(p)?;
    check_gpu(p, emu)?;
    match p.dtype {
        DType::F32 => Machine::<f32>::run(p, &checked, inputs, Some(emu), None),
        DType::F64 => Machine::<f64>::run(p, &checked, inputs, Some(emu), None),
    }
}

/// Runs a GPU-scheduled `p` like [`run_kernel_program_gpu`], with the numerics of tensor cores
/// in format `tc` in the loops the PTX backend runs on them
/// ([`crate::tensor_core::matmul_loops`]): their operands rounded to `tc` before an exact
/// product, accumulated in f32 in the loop's order. An emulation of the opt-in's *rounding*,
/// not of the hardware's order of additions inside one `mma`, nor of its warp mapping (threads
/// are emulated as the mapping assigns them). `p` must be f32.
pub fn run_kernel_program_gpu_tensor_cores(
    p: &KernelProgram,
    inputs: &BTreeMap<String, Tensor>,
    emu: GpuEmulation,
    tc: TensorCores,
) -> Result<BTreeMap<String, Tensor>, KernelInterpError> {
    let p = &*inlined(p)?;
    let checked = check(p)?;
    check_gpu(p, emu)?;
    if p.dtype != DType::F32 {
        return Err(KernelInterpError::Invalid(format!(
            "tensor cores ({}) need an f32 program, not {}",
            tc.name(),
            p.dtype
        )));
    }
    let stores = tensor_core_stores(p, tc);
    Machine::<f32>::run(p, &checked, inputs, Some(emu), Some((tc, stores)))
}

/// `p` with its calls inlined ([`inline_calls`], the definition of a call), after checking
/// them; `p` itself when it has no functions.
fn inlined(p: &KernelProgram) -> Res<Cow<'_, KernelProgram>> {
    if p.functions.is_empty() {
        return Ok(Cow::Borrowed(p));
    }
    verify(p)?;
    Ok(Cow::Owned(inline_calls(p)))
}

/// The addresses of the accumulating stores of `p`'s tensor-core loops.
fn tensor_core_stores(p: &KernelProgram, tc: TensorCores) -> HashSet<usize> {
    let mut out = HashSet::new();
    for s in &p.body {
        s.walk(&mut |s| {
            if !matches!(s, Stmt::Loop { .. }) || recognize(s, tc).is_none() {
                return true;
            }
            // Recognized: one loop around one store.
            if let Stmt::Loop { body, .. } = s {
                if let [Stmt::Loop { body: inner, .. }] = body.as_slice() {
                    if let [st @ Stmt::Store { .. }] = inner.as_slice() {
                        out.insert(st as *const Stmt as usize);
                    }
                }
            }
            false
        });
    }
    out
}

/// Checks statically that `p` is well formed and in the GPU form described in
/// [`GpuEmulation`] (what `tttc_backends::ptx` compiles), without running it.
pub fn check_gpu_program(p: &KernelProgram, emu: GpuEmulation) -> Result<(), KernelInterpError> {
    let p = &*inlined(p)?;
    check(p)?;
    check_gpu(p, emu)
}

/// Checks the GPU form described in [`GpuEmulation`].
fn check_gpu(p: &KernelProgram, emu: GpuEmulation) -> Res<()> {
    let bad = |m: String| Err(KernelInterpError::NotGpu(m));
    if emu.threads == 0 {
        return bad("a block needs at least one thread".into());
    }
    /// Where a statement sits.
    #[derive(Clone, Copy, PartialEq)]
    enum At {
        Block,
        Thread,
    }
    fn walk(body: &[Stmt], at: At) -> Res<()> {
        let bad = |m: &str| Err(KernelInterpError::NotGpu(m.into()));
        for s in body {
            match (s, at) {
                (Stmt::Call { .. }, _) => return bad("a call (not inlined)"),
                (Stmt::Barrier, At::Block) => {}
                (Stmt::Barrier, At::Thread) => {
                    return bad("a barrier inside a GpuThread loop (not every thread reaches it)")
                }
                (Stmt::Store { .. }, At::Block) => {
                    return bad("a store outside any GpuThread loop (every thread would run it)")
                }
                (Stmt::Store { .. }, At::Thread) => {}
                (
                    Stmt::Loop {
                        schedule: Schedule::GpuBlock,
                        ..
                    },
                    _,
                ) => return bad("a GpuBlock loop inside a kernel"),
                (
                    Stmt::Loop {
                        schedule: Schedule::GpuThread,
                        ..
                    },
                    At::Thread,
                ) => return bad("a GpuThread loop inside a GpuThread loop"),
                (
                    Stmt::Loop {
                        schedule: Schedule::GpuThread,
                        body,
                        ..
                    },
                    At::Block,
                ) => walk(body, At::Thread)?,
                (Stmt::Loop { body, .. }, at) => walk(body, at)?,
                (Stmt::Gemm(_), _) => return bad("a gemm (GPUs run its loop nest instead)"),
            }
        }
        Ok(())
    }
    for s in &p.body {
        match s {
            Stmt::Loop {
                schedule: Schedule::GpuBlock,
                body,
                ..
            } => walk(body, At::Block)?,
            _ => return bad("a top-level statement that is not a GpuBlock loop (a launch)".into()),
        }
    }
    Ok(())
}

/// The element types the executor computes in.
trait Num: Copy + 'static {
    const ELEM: ElemType;
    const NAN: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn unary(f: UnaryOp, x: Self) -> Self;
    fn binary(f: BinaryOp, a: Self, b: Self) -> Self;
    fn data(t: &Tensor) -> Option<&[Self]>;
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Result<Tensor, RuntimeError>;
    /// A tensor-core operand rounded to `tc`'s input format (only f32 programs use tensor
    /// cores; f64 values are left alone).
    fn tensor_core_operand(x: Self, tc: TensorCores) -> Self;
}

impl Num for f32 {
    const ELEM: ElemType = ElemType::F32;
    const NAN: Self = f32::NAN;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
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
    fn tensor_core_operand(x: Self, tc: TensorCores) -> Self {
        tc.round(x)
    }
}

impl Num for f64 {
    const ELEM: ElemType = ElemType::F64;
    const NAN: Self = f64::NAN;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
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
    fn tensor_core_operand(x: Self, _: TensorCores) -> Self {
        x
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

/// Checks `p` statically (see the module documentation): the kernel IR's verifier, then the
/// executor's own memory limit.
fn check(p: &KernelProgram) -> Res<Checked> {
    verify(p)?;
    let mut lens = Vec::with_capacity(p.buffers.len());
    let mut total = 0usize;
    for (i, b) in p.buffers.iter().enumerate() {
        let len = b
            .layout
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| {
                total = total.checked_add(n)?;
                (total <= MAX_ELEMENTS).then_some(n)
            })
            .ok_or_else(|| {
                KernelInterpError::Invalid(format!("buffer b{i} (`{}`) is too large", b.name))
            })?;
        lens.push(len);
    }
    let mut fresh = HashMap::new();
    fresh_scratch(p, &p.body, &mut fresh);
    Ok(Checked { lens, fresh })
}

/// Records in `fresh`, for every loop in `body` whose iterations refresh scratch buffers, the
/// `Local` and `Shared` buffers they get fresh; returns the scratch buffers `body` uses (loops
/// that never run are skipped).
fn fresh_scratch(
    p: &KernelProgram,
    body: &[Stmt],
    fresh: &mut HashMap<usize, Vec<usize>>,
) -> Vec<usize> {
    let space = |b: usize| p.buffers.get(b).map(|b| b.space);
    let mut used = Vec::new();
    let note = |b: BufId, used: &mut Vec<usize>| {
        if matches!(
            space(b.0 as usize),
            Some(MemorySpace::Local | MemorySpace::Shared)
        ) {
            used.push(b.0 as usize);
        }
    };
    for s in body {
        match s {
            Stmt::Loop { extent: 0, .. } => {}
            Stmt::Loop { schedule, body, .. } => {
                let inner = fresh_scratch(p, body, fresh);
                let refreshed: Vec<usize> = match schedule {
                    Schedule::Parallel | Schedule::GpuThread => inner
                        .iter()
                        .copied()
                        .filter(|&b| space(b) == Some(MemorySpace::Local))
                        .collect(),
                    Schedule::GpuBlock => inner.clone(),
                    _ => Vec::new(),
                };
                if !refreshed.is_empty() {
                    fresh.insert(body_key(body), refreshed);
                }
                used.extend(inner);
            }
            Stmt::Store { buf, index, value } => {
                note(*buf, &mut used);
                value.for_each_load(&mut |b, _| note(b, &mut used));
                index.for_each_load(&mut |b, _| note(b, &mut used));
            }
            Stmt::Gemm(g) => {
                for v in [&g.a, &g.b, &g.c] {
                    note(v.buf, &mut used);
                }
            }
            // Inlined before this runs.
            Stmt::Barrier | Stmt::Call { .. } => {}
        }
    }
    used.sort_unstable();
    used.dedup();
    used
}

/// The running program.
struct Machine<'p, T> {
    p: &'p KernelProgram,
    fresh: &'p HashMap<usize, Vec<usize>>,
    bufs: Vec<Vec<T>>,
    vars: Vec<i64>,
    /// GPU emulation state, when emulating.
    gpu: Option<Gpu>,
    /// The accumulating stores of the loops run on tensor cores (by address), and the input
    /// format their operands are rounded to.
    tensor_cores: Option<(TensorCores, HashSet<usize>)>,
}

/// Who touched an element, as far as race detection cares.
#[derive(Clone, Copy, Default)]
struct Touch {
    /// The last writer.
    writer: Option<usize>,
    /// A reader (other than the writer).
    reader: Option<usize>,
    /// Readers other than `reader` too.
    many_readers: bool,
}

impl Touch {
    /// Records an access by `who`; returns the other party when it races with an earlier one.
    fn access(&mut self, who: usize, write: bool) -> Option<usize> {
        if let Some(w) = self.writer.filter(|&w| w != who) {
            return Some(w);
        }
        if write {
            if let Some(r) = self.reader.filter(|&r| r != who) {
                return Some(r);
            }
            if self.many_readers {
                return self.reader.map(|r| if r == who { usize::MAX } else { r });
            }
            self.writer = Some(who);
        } else {
            match self.reader {
                None => self.reader = Some(who),
                Some(r) if r != who => self.many_readers = true,
                Some(_) => {}
            }
        }
        None
    }
}

/// The state of the GPU emulation.
struct Gpu {
    threads: usize,
    /// The block running, the thread running (inside a `GpuThread` loop).
    block: usize,
    thread: Option<usize>,
    /// Accesses since the last barrier in the current block, by (buffer, element).
    interval: RefCell<HashMap<(usize, i64), Touch>>,
    /// Accesses to global buffers in the current launch (who = block).
    launch: RefCell<HashMap<(usize, i64), Touch>>,
    /// Whether each buffer is tracked per interval (`Shared`, `Global` but not inputs) and per
    /// launch (`Global`, not inputs).
    tracked: Vec<(bool, bool)>,
}

impl<'p, T: Num> Machine<'p, T> {
    fn run(
        p: &'p KernelProgram,
        checked: &'p Checked,
        inputs: &BTreeMap<String, Tensor>,
        emu: Option<GpuEmulation>,
        tensor_cores: Option<(TensorCores, HashSet<usize>)>,
    ) -> Res<BTreeMap<String, Tensor>> {
        let mut bufs = Vec::with_capacity(p.buffers.len());
        for (b, &len) in p.buffers.iter().zip(&checked.lens) {
            let data = match &b.kind {
                BufferKind::Input(name) => {
                    let t = crate::input::exact_input(inputs, name, T::ELEM, &b.layout.shape)?;
                    let data = T::data(t).filter(|d| d.len() == len).ok_or_else(|| {
                        KernelInterpError::Invalid(format!("input `{name}` has the wrong size"))
                    })?;
                    data.to_vec()
                }
                _ => vec![T::NAN; len],
            };
            bufs.push(data);
        }
        let gpu = emu.map(|e| Gpu {
            threads: e.threads,
            block: 0,
            thread: None,
            interval: RefCell::new(HashMap::new()),
            launch: RefCell::new(HashMap::new()),
            tracked: p
                .buffers
                .iter()
                .map(|b| {
                    let input = matches!(b.kind, BufferKind::Input(_));
                    let global = b.space == MemorySpace::Global && !input;
                    (global || b.space == MemorySpace::Shared, global)
                })
                .collect(),
        });
        let mut m = Machine {
            p,
            fresh: &checked.fresh,
            bufs,
            vars: vec![0; p.vars as usize],
            gpu,
            tensor_cores,
        };
        match (&m.gpu, &p.memory) {
            (Some(_), _) => m.exec_launches(&p.body)?,
            (None, Some(plan)) => m.exec_in_arena(plan)?,
            (None, None) => m.exec(&p.body)?,
        }
        let mut out = BTreeMap::new();
        for (b, data) in p.buffers.iter().zip(m.bufs) {
            if let BufferKind::Output(name) = &b.kind {
                out.insert(name.clone(), T::tensor(b.layout.shape.clone(), data)?);
            }
        }
        Ok(out)
    }

    /// Runs the body with the memory plan's arena simulated: between steps (top-level
    /// statements), a placed buffer's contents live only in the arena, at its offset; each step
    /// copies the placed buffers it touches in from the arena (NaN-filled first at the step
    /// that begins the buffer's lifetime) and back out afterwards. So two buffers that share
    /// arena memory while both alive clobber each other, and a wrong plan shows as a wrong
    /// result.
    fn exec_in_arena(&mut self, plan: &MemoryPlan) -> Res<()> {
        let too_large = || KernelInterpError::Invalid("the arena is too large".into());
        let len = usize::try_from(plan.arena_len).map_err(|_| too_large())?;
        if len > MAX_ELEMENTS {
            return Err(too_large());
        }
        let mut arena = vec![T::NAN; len];
        let lives = lifetimes(self.p);
        for (step, s) in self.p.body.iter().enumerate() {
            let placed: Vec<(usize, std::ops::Range<usize>)> =
                buffers_used(std::slice::from_ref(s))
                    .into_iter()
                    .filter_map(|b| {
                        let offset = usize::try_from(plan.offset_of(b)?).ok()?;
                        let n = self.bufs.get(b.0 as usize)?.len();
                        Some((b.0 as usize, offset..offset + n))
                    })
                    .collect();
            for (b, range) in &placed {
                let cell = arena.get_mut(range.clone()).ok_or_else(too_large)?;
                if lives
                    .get(&BufId(*b as u32))
                    .is_some_and(|l| l.first == step)
                {
                    cell.fill(T::NAN);
                }
                self.bufs[*b].copy_from_slice(cell);
            }
            self.exec(std::slice::from_ref(s))?;
            for (b, range) in &placed {
                arena[range.clone()].copy_from_slice(&self.bufs[*b]);
            }
        }
        Ok(())
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
                Stmt::Barrier => {}
                Stmt::Gemm(g) => self.gemm(g)?,
                Stmt::Call { .. } => {
                    return Err(KernelInterpError::Invalid(
                        "a call left after inlining".into(),
                    ))
                }
                Stmt::Store { buf, index, value } => {
                    let x = match &self.tensor_cores {
                        Some((tc, stores)) if stores.contains(&(s as *const Stmt as usize)) => {
                            self.tensor_core_value(value, *tc)?
                        }
                        _ => self.value(value)?,
                    };
                    let i = self.index(index)?;
                    let b = buf.0 as usize;
                    self.touch(b, i, true)?;
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

    /// A [`Stmt::Gemm`] as its reference loop nest: per batch index and row, the row zeroed
    /// unless accumulating, then for each `p` in order, for each `j`,
    /// `c[i, j] = c[i, j] + a[i, p] * b[p, j]`.
    fn gemm(&mut self, g: &Gemm) -> Res<()> {
        let at = |v: &MatrixView, batch: &[usize], r: usize, c: usize| {
            v.at(batch, r, c)
                .ok_or_else(|| KernelInterpError::Overflow(format!("gemm operand {v}")))
        };
        let (a, b, c) = (g.a.buf.0 as usize, g.b.buf.0 as usize, g.c.buf.0 as usize);
        for batch in g.batch_indices() {
            for i in 0..g.m {
                if !g.accumulate {
                    for j in 0..g.n {
                        self.store_elem(c, at(&g.c, &batch, i, j)?, T::from_f64(0.0))?;
                    }
                }
                for p in 0..g.k {
                    let x = self.load_elem(a, at(&g.a, &batch, i, p)?)?;
                    for j in 0..g.n {
                        let ci = at(&g.c, &batch, i, j)?;
                        let y = self.load_elem(b, at(&g.b, &batch, p, j)?)?;
                        let acc = self.load_elem(c, ci)?;
                        let sum = T::binary(BinaryOp::Add, acc, T::binary(BinaryOp::Mul, x, y));
                        self.store_elem(c, ci, sum)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Element `i` of buffer `b`, bounds-checked.
    fn load_elem(&self, b: usize, i: i64) -> Res<T> {
        self.touch(b, i, false)?;
        let data = self.bufs.get(b);
        let len = data.map_or(0, |d| d.len());
        match (usize::try_from(i).ok(), data) {
            (Some(j), Some(d)) if j < len => Ok(d[j]),
            _ => Err(self.out_of_bounds("load", b, i, len)),
        }
    }

    /// Stores `x` into element `i` of buffer `b`, bounds-checked.
    fn store_elem(&mut self, b: usize, i: i64, x: T) -> Res<()> {
        self.touch(b, i, true)?;
        let data = self.bufs.get_mut(b);
        let len = data.as_ref().map_or(0, |d| d.len());
        match (usize::try_from(i).ok(), data) {
            (Some(j), Some(d)) if j < len => {
                d[j] = x;
                Ok(())
            }
            _ => Err(self.out_of_bounds("store", b, i, len)),
        }
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

    /// `acc + a * b` (a recognized accumulation) with `a` and `b` rounded to `tc`.
    fn tensor_core_value(&self, v: &Value, tc: TensorCores) -> Res<T> {
        let Value::Binary(BinaryOp::Add, acc, prod) = v else {
            return self.value(v);
        };
        let Value::Binary(BinaryOp::Mul, a, b) = &**prod else {
            return self.value(v);
        };
        let a = T::tensor_core_operand(self.value(a)?, tc);
        let b = T::tensor_core_operand(self.value(b)?, tc);
        let product = T::binary(BinaryOp::Mul, a, b);
        Ok(T::binary(BinaryOp::Add, self.value(acc)?, product))
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
            Index::Load { buf, index, bound } => {
                Index::clamp_loaded(self.load(*buf, index)?.to_f64(), *bound)
            }
        })
    }

    /// `buf[index]`, checked.
    fn load(&self, buf: BufId, index: &Index) -> Res<T> {
        let i = self.index(index)?;
        let b = buf.0 as usize;
        self.touch(b, i, false)?;
        let data = self.bufs.get(b);
        let len = data.map_or(0, |d| d.len());
        match (usize::try_from(i).ok(), data) {
            (Some(j), Some(d)) if j < len => Ok(d[j]),
            _ => Err(self.out_of_bounds("load", b, i, len)),
        }
    }

    fn value(&self, v: &Value) -> Res<T> {
        Ok(match v {
            Value::Load { buf, index } => self.load(*buf, index)?,
            Value::Const(c) => T::from_f64(*c),
            Value::FromIndex(i) => T::from_f64(self.index(i)? as f64),
            Value::Unary(f, x) => T::unary(*f, self.value(x)?),
            Value::Binary(f, a, b) => T::binary(*f, self.value(a)?, self.value(b)?),
        })
    }
}

/// The GPU emulation (see [`GpuEmulation`]).
impl<T: Num> Machine<'_, T> {
    /// Sets loop variable `var` to `i` and refreshes the buffers fresh for `body`'s iterations.
    fn enter(&mut self, var: usize, i: usize, body: &Vec<Stmt>) {
        if let Some(fresh) = self.fresh.get(&body_key(body)) {
            for &b in fresh {
                if let Some(buf) = self.bufs.get_mut(b) {
                    buf.fill(T::NAN);
                }
            }
        }
        if let Some(slot) = self.vars.get_mut(var) {
            *slot = i as i64;
        }
    }

    /// The top level: one launch per statement (all `GpuBlock` loops, checked).
    fn exec_launches(&mut self, body: &[Stmt]) -> Res<()> {
        for s in body {
            let Stmt::Loop {
                var, extent, body, ..
            } = s
            else {
                continue;
            };
            for block in 0..*extent {
                self.enter(var.0 as usize, block, body);
                if let Some(g) = &mut self.gpu {
                    g.block = block;
                    g.interval.get_mut().clear();
                }
                self.exec_block(body)?;
            }
            if let Some(g) = &mut self.gpu {
                g.launch.get_mut().clear();
            }
        }
        Ok(())
    }

    /// Collective statements of a block: runs of barrier-free statements run thread by thread,
    /// loops holding barriers iteration by iteration, barriers end the interval.
    fn exec_block(&mut self, body: &[Stmt]) -> Res<()> {
        let mut run: Vec<&Stmt> = Vec::new();
        for s in body {
            match s {
                Stmt::Barrier => {
                    self.exec_threads(&run)?;
                    run.clear();
                    if let Some(g) = &mut self.gpu {
                        g.interval.get_mut().clear();
                    }
                }
                Stmt::Loop {
                    var, extent, body, ..
                } if has_barrier(body) => {
                    self.exec_threads(&run)?;
                    run.clear();
                    for i in 0..*extent {
                        self.enter(var.0 as usize, i, body);
                        self.exec_block(body)?;
                    }
                }
                s => run.push(s),
            }
        }
        self.exec_threads(&run)
    }

    /// Barrier-free collective statements, all of thread 0's part, then thread 1's, ...
    fn exec_threads(&mut self, run: &[&Stmt]) -> Res<()> {
        if run.is_empty() {
            return Ok(());
        }
        let threads = self.gpu.as_ref().map_or(1, |g| g.threads);
        for t in 0..threads {
            for s in run {
                self.exec_as(s, t)?;
            }
        }
        Ok(())
    }

    /// Thread `t`'s part of a barrier-free collective statement.
    fn exec_as(&mut self, s: &Stmt, t: usize) -> Res<()> {
        let Stmt::Loop {
            var,
            extent,
            schedule,
            body,
        } = s
        else {
            return Ok(()); // stores and barriers never sit here (checked)
        };
        let v = var.0 as usize;
        if *schedule == Schedule::GpuThread {
            let threads = self.gpu.as_ref().map_or(1, |g| g.threads);
            for i in (t..*extent).step_by(threads) {
                self.enter(v, i, body);
                if let Some(g) = &mut self.gpu {
                    g.thread = Some(t);
                }
                let r = self.exec(body);
                if let Some(g) = &mut self.gpu {
                    g.thread = None;
                }
                r?;
            }
        } else {
            for i in 0..*extent {
                self.enter(v, i, body);
                for s in body {
                    self.exec_as(s, t)?;
                }
            }
        }
        Ok(())
    }

    /// Records an access to element `i` of buffer `b` and reports a race.
    fn touch(&self, b: usize, i: i64, write: bool) -> Res<()> {
        let Some(g) = &self.gpu else {
            return Ok(());
        };
        let (per_interval, per_launch) = g.tracked.get(b).copied().unwrap_or((false, false));
        let thread = g.thread.unwrap_or(usize::MAX);
        let race = |first: String, second: String| KernelInterpError::Race {
            buf: b as u32,
            name: self
                .p
                .buffers
                .get(b)
                .map(|x| x.name.clone())
                .unwrap_or_default(),
            index: i,
            first,
            second,
        };
        let who = |t: usize| {
            if t == usize::MAX {
                format!("another thread of block {}", g.block)
            } else {
                format!("thread {t} of block {}", g.block)
            }
        };
        if per_interval {
            let mut map = g.interval.borrow_mut();
            if let Some(other) = map.entry((b, i)).or_default().access(thread, write) {
                return Err(race(who(other), who(thread)));
            }
        }
        if per_launch {
            let mut map = g.launch.borrow_mut();
            if let Some(other) = map.entry((b, i)).or_default().access(g.block, write) {
                let block = |x: usize| {
                    if x == usize::MAX {
                        "another block".to_string()
                    } else {
                        format!("block {x}")
                    }
                };
                return Err(race(block(other), block(g.block)));
            }
        }
        Ok(())
    }
}

/// Whether `body` holds a barrier (at any depth).
fn has_barrier(body: &[Stmt]) -> bool {
    body.iter().any(Stmt::has_barrier)
}
