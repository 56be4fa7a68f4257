//! The Cranelift CPU backend (cargo feature `cranelift`): compiles a [`KernelProgram`] to native
//! code for the host in memory ([`CraneliftJit`]), in pure Rust — no LLVM needed, and a few
//! milliseconds of compile time where LLVM's `O3` takes tens to hundreds.
//!
//! It mirrors the LLVM backend (`tttc_backends::llvm`, feature `llvm`): the same checks, the
//! same calling convention, the same memory semantics, the same scalar numerics — without the
//! LLVM backend's FMA contraction and approximate `f32` `tanh`, so its results equal the kernel
//! interpreter's bit for bit.
//!
//! # The generated code
//!
//! One entry function `void tttc_cl_entry(T** inputs, T** outputs)` (`T` is `float` or
//! `double`, the program's element type): `inputs[i]` points to the `i`-th buffer of
//! [`KernelProgram::inputs`], `outputs[i]` to the `i`-th of [`KernelProgram::outputs`], each
//! with exactly its buffer's number of elements. The kernel fills the outputs with NaN before it
//! runs (like the kernel interpreter, so an element the program never writes reads NaN);
//! inputs are only read. [`CraneliftJit::run`] provides fresh output buffers.
//!
//! - Loops have known extents; index arithmetic is `i64`. Every element access is proven in
//!   bounds before any code is generated (the interval analysis in `crate::bounds`, shared with LLVM),
//!   so the native code never checks and never reads or writes outside a buffer.
//! - Global temporaries are allocated once per call (stack when small, else `malloc`/`free`) and
//!   start out as NaN. Scratch buffers (`Local`, `Shared`) follow the kernel interpreter: fresh
//!   (refilled with NaN) at the start of every iteration of every `Parallel`/`GpuThread`/
//!   `GpuBlock` loop (`Local`) or `GpuBlock` loop (`Shared`) that uses them. Inside a parallel
//!   loop they are allocated by its worker, once per worker call and so per thread; a scratch
//!   buffer that would have to carry values between the threads of a parallel loop is refused.
//! - `Schedule::Parallel` (and `GpuBlock`) loops are outlined into a worker
//!   `void worker(i8* ctx, i64 begin, i64 end)` and run through
//!   `void tttc_parallel_for(void (*)(i8*, i64, i64), i8* ctx, i64 n)` ([`tttc_parallel_for`],
//!   the LLVM backend's runtime with the same ABI); parallel loops nested inside another run
//!   serially within its worker. `Vector`, `Unroll` and `GpuThread` loops run serially.
//! - Innermost loops (bodies made only of stores) get hoisted invariants, register accumulators
//!   for reductions, store-to-load forwarding within an iteration, addresses split into a
//!   hoisted base and the loop variable's offset, and — when every store and every
//!   non-invariant load is contiguous in the loop variable and no dependence runs through
//!   memory between iterations — a 128-bit SIMD body (`f32x4`, `f64x2`) with a scalar
//!   remainder. A loop whose whole body is such a SIMD loop and whose written elements do not
//!   depend on its variable (the `k` loop of `C[i, j] += A[i, k] * B[k, j]`) is unrolled and
//!   jammed: 4 of its iterations run inside each SIMD iteration, `C` staying in a register. A
//!   loop of independent row reductions (`s[i] = 0; for j { s[i] += f(x[i, j]) }; ...`) runs 4
//!   rows side by side, so that 4 dependent chains of additions overlap. Cranelift has no
//!   auto-vectorizer and no wider vectors. See `plan.rs` for the exact rules; none of them
//!   changes which operations combine which values or in which order, so the results are those
//!   of the plain loops, bit for bit.
//! - Scalar semantics are exactly the reference interpreter's: `max`/`min` propagate NaN
//!   (`fcmp` + `select`), `relu(NaN) = NaN`, `step(x) = x > 0`, `rsqrt = 1 / sqrt`,
//!   `sigmoid = 1 / (1 + exp(-x))`, `gelu_tanh` in the reference's operation order,
//!   `float(i)` goes through `f64` like the interpreter. `sqrt`, `floor` and the arithmetic are
//!   Cranelift instructions (correctly rounded); `exp`, `log`, `tanh`, `sin`, `cos` and `pow`
//!   call Rust wrappers around the very `f32`/`f64` methods the interpreter uses (in SIMD code
//!   one call per vector, applying the scalar function to each lane), so they agree bit for
//!   bit too. These calls dominate programs heavy in `tanh` (TTT-MLP's GELU).
//! - **No fast-math and no FMA contraction**: Cranelift never fuses a multiply and an add
//!   (unlike the LLVM backend, which allows `contract`), never reassociates, and never
//!   vectorizes a reduction. The results equal the kernel interpreter's exactly, on every
//!   program.
//! - Cranelift settings: `opt_level=speed`, the host's ISA features (`cranelift-native`: SSE4.1,
//!   AVX, ... as detected), inline stack probes, the IR verifier in debug builds only.
//!
//! Before any IR is built the program is checked exactly as by the LLVM backend: unknown
//! buffers, unknown, unbound or rebound loop variables, stores into inputs, inputs/outputs
//! outside global memory or not row-major, non-positive divisors, `i64` overflow in index
//! arithmetic and any access whose index range (by interval arithmetic over the loop extents)
//! leaves its buffer are [`CraneliftError::Invalid`].

mod codegen;
mod plan;
mod runtime;

pub use codegen::Stats;
pub use runtime::{as_worker, thread_count, tttc_parallel_for, WorkerFn};

use crate::backend::{Backend, BackendError};
use crate::input::InputError;
use crate::native::{EntryFn, Jit, JitCode};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use std::time::{Duration, Instant};
use tttc_ir::kernel::KernelProgram;

/// Why a kernel program could not be compiled or run.
#[derive(Debug, thiserror::Error)]
pub enum CraneliftError {
    /// The kernel program is malformed or could access memory outside a buffer.
    #[error("invalid kernel program: {0}")]
    Invalid(String),
    /// Cranelift refused something (host ISA, settings, compilation, linking).
    #[error("Cranelift: {0}")]
    Cranelift(String),
    /// The inputs given to [`CraneliftJit::run`] do not match the program.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A bug in this backend.
    #[error("internal error in the Cranelift backend: {0}")]
    Internal(String),
}

/// A kernel program compiled to native code in memory by Cranelift, ready to run: a
/// [`Jit`](crate::Jit) over Cranelift's machine code ([`CraneliftCode`]).
///
/// ```no_run
/// # use std::collections::BTreeMap;
/// # fn demo(p: &tttc_ir::kernel::KernelProgram, inputs: &BTreeMap<String, tttc_runtime::Tensor>)
/// #     -> Result<(), tttc_backends::cranelift::CraneliftError> {
/// let jit = tttc_backends::cranelift::CraneliftJit::compile(p)?;
/// let outputs = jit.run(inputs)?;
/// # Ok(()) }
/// ```
pub type CraneliftJit = Jit<CraneliftCode>;

/// The Cranelift backend as a [`Backend`]: [`CraneliftJit::compile`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Cranelift;

impl Backend for Cranelift {
    type Compiled = CraneliftJit;

    fn name(&self) -> &'static str {
        "cranelift"
    }

    fn compile(&self, p: &KernelProgram) -> Result<CraneliftJit, BackendError> {
        Ok(CraneliftJit::compile(p)?)
    }
}

/// What owns a [`CraneliftJit`]'s machine code (the JIT module, freed on drop), and what the
/// code generator reported.
pub struct CraneliftCode {
    codegen_time: Duration,
    stats: Stats,
    module: Option<JITModule>,
}

// SAFETY: the JIT module (code memory and symbol tables) is owned by the `CraneliftCode` alone
// and moves with it; running only calls the finished code, which touches nothing but its
// arguments, its own stack and heap allocations, and thread-safe runtime functions.
unsafe impl Send for CraneliftCode {}
// SAFETY: running takes `&self` and only reads plain data and calls the finished code, which
// keeps no state between calls; nothing is mutated through a shared reference.
unsafe impl Sync for CraneliftCode {}

impl std::fmt::Debug for CraneliftCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CraneliftCode")
            .field("codegen_time", &self.codegen_time)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Drop for CraneliftCode {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: no function of the module is running (running borrows the `Jit` that
            // owns this) and the entry pointer dies with it.
            unsafe { m.free_memory() };
        }
    }
}

impl JitCode for CraneliftCode {
    type Error = CraneliftError;

    fn internal(msg: String) -> CraneliftError {
        CraneliftError::Internal(msg)
    }
}

/// The optimized Cranelift IR of every function of `p` (the entry `tttc_cl_entry` and the
/// parallel workers), each with its machine code size, for inspection.
pub fn optimized_clif(p: &KernelProgram) -> Result<String, CraneliftError> {
    let p = &*crate::bounds::inlined(p)?;
    let a = crate::bounds::analyze(p)?;
    let mut module = host_module()?;
    let built = codegen::build(&mut module, p, &a, true);
    // SAFETY: nothing from the module is ever called.
    unsafe { module.free_memory() };
    built?
        .clif
        .ok_or_else(|| CraneliftError::Internal("no IR kept".into()))
}

/// The JIT module for the host: native ISA features, `opt_level=speed`, inline stack probes,
/// every runtime symbol mapped by address.
fn host_module() -> Result<JITModule, CraneliftError> {
    let err =
        |what: &str, e: &dyn std::fmt::Display| CraneliftError::Cranelift(format!("{what}: {e}"));
    let mut flags = settings::builder();
    for (name, value) in [
        ("opt_level", "speed"),
        ("use_colocated_libcalls", "false"),
        ("is_pic", "false"),
        ("enable_probestack", "true"),
        ("probestack_strategy", "inline"),
        // The IR verifier costs about a fifth of the compile time: on in debug builds (every
        // test), off in release builds.
        (
            "enable_verifier",
            if cfg!(debug_assertions) {
                "true"
            } else {
                "false"
            },
        ),
    ] {
        flags
            .set(name, value)
            .map_err(|e| err(&format!("setting {name}={value}"), &e))?;
    }
    let isa = cranelift_native::builder()
        .map_err(|e| err("host ISA", &e))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| err("host ISA", &e))?;
    let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    builder.symbols(runtime::jit_symbols());
    Ok(JITModule::new(builder))
}

impl CraneliftJit {
    /// Checks `p`, generates Cranelift IR for it and compiles it to machine code for the host.
    pub fn compile(p: &KernelProgram) -> Result<CraneliftJit, CraneliftError> {
        let start = Instant::now();
        // Kernel functions are inlined: Cranelift compiles fast enough that compiling each
        // layer on its own costs little, and one function keeps the code generator simple.
        let p = &*crate::bounds::inlined(p)?;
        let a = crate::bounds::analyze(p)?;
        let mut module = host_module()?;
        let cg_start = Instant::now();
        let built = match codegen::build(&mut module, p, &a, false) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: nothing from the module was ever called.
                unsafe { module.free_memory() };
                return Err(e);
            }
        };
        if let Err(e) = module.finalize_definitions() {
            // SAFETY: as above.
            unsafe { module.free_memory() };
            return Err(CraneliftError::Cranelift(format!("linking: {e}")));
        }
        let codegen_time = cg_start.elapsed();
        let addr = module.get_finalized_function(built.entry);
        if addr.is_null() {
            // SAFETY: as above.
            unsafe { module.free_memory() };
            return Err(CraneliftError::Internal(
                "the entry has a null address".into(),
            ));
        }
        // SAFETY: the entry was defined by `codegen::build` with exactly this signature (two
        // pointers, no result, the host's C calling convention).
        let entry: EntryFn = unsafe { std::mem::transmute::<*const u8, EntryFn>(addr) };
        let code = CraneliftCode {
            codegen_time,
            stats: built.stats,
            module: Some(module),
        };
        // SAFETY: `entry` was compiled from `p` with the entry's calling convention, every
        // access it makes was proven in bounds (`bounds::analyze`), and it lives in `code`'s
        // module.
        Ok(unsafe { Jit::new(p, entry, code, start.elapsed()) })
    }

    /// The Cranelift part of [`compile_time`](Self::compile_time): building the Cranelift IR
    /// of every function, compiling it to machine code and linking (everything after the
    /// checks and the JIT's setup).
    pub fn codegen_time(&self) -> Duration {
        self.code().codegen_time
    }

    /// What the code generator did (functions, SIMD loops, register accumulators).
    pub fn stats(&self) -> Stats {
        self.code().stats
    }
}

impl From<crate::bounds::AnalysisError> for CraneliftError {
    fn from(e: crate::bounds::AnalysisError) -> Self {
        match e {
            crate::bounds::AnalysisError::Invalid(m) => CraneliftError::Invalid(m),
            crate::bounds::AnalysisError::Internal(m) => CraneliftError::Internal(m),
        }
    }
}
