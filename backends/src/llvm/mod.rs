//! The LLVM CPU backend (cargo feature `llvm`): compiles a [`KernelProgram`] to native code for
//! the host, either in memory ([`LlvmJit`], MCJIT) or to a relocatable object for a shared
//! library ([`emit_object`]).
//!
//! # The generated code
//!
//! One entry function `void <name>(T** inputs, T** outputs)` (`T` is `float` or `double`, the
//! program's element type): `inputs[i]` points to the `i`-th buffer of
//! [`KernelProgram::inputs`], `outputs[i]` to the `i`-th of [`KernelProgram::outputs`], each with
//! exactly its buffer's number of elements. The kernel fills the outputs with NaN before it runs
//! (like the kernel interpreter, so an element the program never writes reads NaN, and the
//! outputs' initial contents never matter); inputs are only read. Output buffers must not overlap
//! each other or any input (the kernel tells LLVM that they do not).
//!
//! - Loops have known extents; index arithmetic is `i64`. Every element access is proven in
//!   bounds before any code is generated (see the last paragraph), so the native code never
//!   checks and never reads or writes outside a buffer.
//! - Global temporaries are allocated once per call (stack when small, else `malloc`/`free`) and
//!   start out as NaN. Scratch buffers (`Local`, `Shared`) follow the kernel interpreter: fresh
//!   (refilled with NaN) at the start of every iteration of every `Parallel`/`GpuThread`/
//!   `GpuBlock` loop (`Local`) or `GpuBlock` loop (`Shared`) that uses them. Inside a parallel
//!   loop they are allocated by its worker, once per worker call and so per thread; a scratch
//!   buffer that would have to carry values between the threads of a parallel loop is refused.
//! - `Schedule::Parallel` (and `GpuBlock`) loops are outlined into a worker
//!   `void worker(i8* ctx, i64 begin, i64 end)` and run through
//!   `void tttc_parallel_for(void (*)(i8*, i64, i64), i8* ctx, i64 n)` ([`tttc_parallel_for`]);
//!   parallel loops nested inside another run serially within its worker.
//! - A [`Stmt::Gemm`](tttc_ir::kernel::Stmt::Gemm) (top level only) is a call
//!   `tttc_gemm_f32(desc, a, b, c)` (or `_f64`) with a private constant descriptor
//!   ([`crate::native::gemm`]), which runs a BLAS-like library on the parallel loops' threads;
//!   [`emit_object`] expands gemms into loops instead. `Vector`, `Unroll`
//!   and `GpuThread` loops are emitted as serial loops and left to LLVM's vectorizer and
//!   unroller.
//! - Expressions are lowered by [`crate::llvm_expr`], shared with the PTX backend, so scalar
//!   semantics are exactly the reference interpreter's: `max`/`min` propagate NaN
//!   (`fcmp` + `select`, not `llvm.maxnum`), `relu(NaN) = NaN`, `step(x) = x > 0`, the
//!   composites (`rsqrt = 1 / sqrt`, `sigmoid = 1 / (1 + exp(-x))`, ...) expanded by
//!   [`tttc_ir::composite`]. The math library is the host's (`math.rs`): `sqrt`, `exp`, `log`,
//!   `floor`, `sin`, `cos`, `pow` use the LLVM intrinsics (lowered to instructions or to the
//!   same libm functions Rust calls); `tanh` is inline code that vectorizes: a rational
//!   approximation in f32 (error ≤ 1e-6 relative), `expm1(2|x|) / (expm1(2|x|) + 2)` in f64
//!   (within 4 ulp of libm).
//! - **Fast-math: only `contract`.** Every floating-point add, subtract, multiply and divide
//!   carries the `contract` flag and nothing else, so LLVM may fuse a multiply and an add into
//!   one FMA (one rounding instead of two) but never reassociates, assumes away NaN/inf/signed
//!   zeros or approximates. Results may therefore differ from the interpreter by about an ulp
//!   per fused operation; everything else is bit-for-bit the same operation sequence.
//! - Every function carries the host's `target-cpu` and `target-features` (on x86-64 with
//!   `-prefer-256-bit` appended, so AVX-512 hosts get 512-bit vectors), and the module goes
//!   through LLVM's `default<O3>` pipeline **without the SLP vectorizer** (loops are still
//!   vectorized by the loop vectorizer): LLVM 19.1's SLP vectorizer miscompiles the long
//!   straight-line blocks that fully unrolled small loops leave, an LLVM bug reduced to
//!   `tests/llvm/slp_poison_lane.ll` (see [`set_llvm_options`]), and with full unrolling
//!   limited to loops of at most [`FULL_UNROLL_MAX`] iterations (compile time; see there).
//!   Modules of more than a few thousand instructions are cut into parts optimized and
//!   emitted on the host's threads ([`split`]) when compiled to objects ([`compile_object`]:
//!   the compile cache, and `--no-cache` runs).
//!
//! Before any IR is built the program is checked: unknown buffers, unknown, unbound or rebound
//! loop variables, stores into inputs, inputs/outputs outside global memory or not row-major,
//! non-positive divisors, `i64` overflow in index arithmetic and any access whose index range
//! (by interval arithmetic over the loop extents) leaves its buffer are [`LlvmError::Invalid`]. The module is verified before
//! optimization; no JIT is created if anything fails.

mod codegen;
mod math;
pub mod object;
mod parallel_md;
mod perf_map;
mod runtime;
pub mod split;

pub use crate::native::profile;
pub use codegen::PARALLEL_FOR;
pub use object::{
    compile_object, compile_object_in_parts, host_fingerprint, load_object, ObjectCode, ObjectJit,
};
pub use runtime::{
    as_worker, thread_count, tttc_gemm_f32, tttc_gemm_f64, tttc_parallel_for, WorkerFn,
};

use crate::backend::{Backend, BackendError};
use crate::input::InputError;
use crate::native::{EntryFn, Jit, JitCode};
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine,
};
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::{AddressSpace, OptimizationLevel};
use runtime::Sig;
use std::path::Path;
use std::time::Instant;
use tttc_ir::kernel::KernelProgram;

/// Why a kernel program could not be compiled or run.
#[derive(Debug, thiserror::Error)]
pub enum LlvmError {
    /// The kernel program is malformed or could access memory outside a buffer.
    #[error("invalid kernel program: {0}")]
    Invalid(String),
    /// LLVM refused something (target setup, verification, optimization, code emission).
    #[error("LLVM: {0}")]
    Llvm(String),
    /// The inputs given to [`LlvmJit::run`] do not match the program.
    #[error(transparent)]
    Input(#[from] InputError),
    /// An entry name for [`emit_object`] that is not a usable C identifier.
    #[error("bad entry name {0:?}: {1}")]
    EntryName(String, String),
    /// Writing the object file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A bug in this backend.
    #[error("internal error in the LLVM backend: {0}")]
    Internal(String),
}

/// Name of the entry function inside the JIT.
const JIT_ENTRY: &str = "tttc_kernel_entry";

/// The host's target machine and the CPU attributes every function gets.
struct Host {
    tm: TargetMachine,
    cpu: String,
    features: String,
}

impl Host {
    fn new(reloc: RelocMode, model: CodeModel) -> Result<Host, LlvmError> {
        Target::initialize_native(&InitializationConfig::default()).map_err(LlvmError::Llvm)?;
        set_llvm_options();
        let triple = TargetMachine::get_default_triple();
        let target = Target::from_triple(&triple).map_err(|e| LlvmError::Llvm(e.to_string()))?;
        let cpu = TargetMachine::get_host_cpu_name().to_string();
        let mut features = TargetMachine::get_host_cpu_features().to_string();
        if cfg!(target_arch = "x86_64") {
            if !features.is_empty() {
                features.push(',');
            }
            features.push_str("-prefer-256-bit");
        }
        let tm = target
            .create_target_machine(
                &triple,
                &cpu,
                &features,
                OptimizationLevel::Aggressive,
                reloc,
                model,
            )
            .ok_or_else(|| LlvmError::Llvm(format!("no target machine for {triple}")))?;
        Ok(Host { tm, cpu, features })
    }
}

/// Sets LLVM's options for this process, once, before any module is optimized: the SLP
/// vectorizer off (below) and full unrolling limited ([`full_unroll_max`]).
///
/// The SLP (straight-line) vectorizer is off unless `TTTC_LLVM_SLP` is set (a debugging
/// switch that brings the miscompile back, for checking a new LLVM: `TTTC_LLVM_SLP=1 cargo
/// test --test llvm_regression`).
///
/// LLVM 19.1's SLP vectorizer produces wrong code for our kernels: with tiny loop extents
/// `default<O3>` unrolls every loop nest of a program fully, and in the resulting straight-line
/// block SLP builds vectors with the wrong scalar in a lane (the token step of a small TTT-MLP
/// gave relative errors of 1e-1 on an AVX-512 host, `tests/llvm_regression.rs`). It is LLVM's
/// bug, not undefined behaviour in our IR: the kernel interpreter runs the same kernel program
/// with every access bounds-checked and agrees with the reference, every buffer is a separate
/// allocation (so the `noalias` facts hold; without them, or without AVX-512, SLP forms other
/// bundles and the bug hides), dropping `inbounds`, `nsw`, `contract` or the alignments one at
/// a time leaves the miscompile, and the module `llvm-reduce` made of it
/// (`tests/llvm/slp_poison_lane.ll`, no flags, no alias facts, no undef) shows
/// `opt -passes=slp-vectorizer` replacing a defined scalar by `poison`; `tests/llvm/main.rs`
/// watches for an LLVM that fixes it. No cheap test on the kernel IR rules the pattern out,
/// so the pass goes everywhere; the loop vectorizer, unrolling, FMA contraction and 512-bit
/// vectors stay.
///
/// `default<O3>` forces `PipelineTuningOptions::SLPVectorization` on whatever
/// `PassBuilderOptions` say, so the pass is switched off through its own command-line option
/// (`-vectorize-slp=false`, which `SLPVectorizerPass` checks on every run). LLVM options are
/// process-wide: another user of LLVM in the same process gets the same setting.
fn set_llvm_options() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut args: Vec<std::ffi::CString> = vec![c"tttc".into()];
        // Debugging only: TTTC_LLVM_SLP keeps the (miscompiling) SLP vectorizer on.
        if std::env::var_os("TTTC_LLVM_SLP").is_none() {
            args.push(c"-vectorize-slp=false".into());
        }
        if let Some(n) = full_unroll_max() {
            if let Ok(a) = std::ffi::CString::new(format!("-unroll-full-max-count={n}")) {
                args.push(a);
            }
        }
        let argv: Vec<*const std::ffi::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: `argv` holds `argv.len()` pointers to NUL-terminated strings that outlive the
        // call, and the options exist in every LLVM 19 (each given once, with a valid value). Every compilation passes through here
        // (`Host::new`) first, and `Once` makes the others wait, so no pass reads the option
        // while it is being written.
        unsafe {
            inkwell::llvm_sys::support::LLVMParseCommandLineOptions(
                argv.len() as i32,
                argv.as_ptr(),
                std::ptr::null(),
            );
        }
    });
}

/// Loops with more iterations than this are never fully unrolled (LLVM's
/// `-unroll-full-max-count`; `TTTC_LLVM_FULL_UNROLL=N` sets another limit, `0` none: LLVM's
/// own cost model alone). A tuning switch, part of the host fingerprint.
///
/// Why: with short sequences (a 16-token prompt) `default<O3>` fully unrolls every loop over
/// the tokens and the mini-batch (trip count 16) and every vector loop left with a known small
/// trip count, each into straight-line code — the 125M model's layer function grew from about
/// 2 500 instructions to 100 000, and the machine scheduler, the post-RA scheduler, loop
/// strength reduction and instruction selection, all superlinear in a block's length, took
/// 8 of the 9.5 s of a cold compile. At 8 the module stays at about 14 000 instructions and
/// LLVM takes about a tenth of the time. Nothing fast needs more: the register tiles
/// (`register_tile`) are jammed in the kernel IR and their column loops are two vectors wide,
/// and the prefill and decode of the 125M model did not slow down (bench/COMPILE.md).
pub const FULL_UNROLL_MAX: u32 = 8;

/// The full-unroll limit in force: [`FULL_UNROLL_MAX`], or `TTTC_LLVM_FULL_UNROLL` when it is
/// a number (`None` for 0: no limit).
pub fn full_unroll_max() -> Option<u32> {
    let n = std::env::var("TTTC_LLVM_FULL_UNROLL")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(FULL_UNROLL_MAX);
    (n > 0).then_some(n)
}

/// Checks `p`, generates its module with entry `entry`, verifies it and runs `default<O3>`.
fn build_optimized<'ctx>(
    ctx: &'ctx Context,
    p: &KernelProgram,
    entry: &str,
    host: &Host,
) -> Result<Module<'ctx>, LlvmError> {
    let module = build_unoptimized(ctx, p, entry, host)?;
    module
        .run_passes("default<O3>", &host.tm, PassBuilderOptions::create())
        .map_err(|e| LlvmError::Llvm(format!("optimization: {e}")))?;
    check_external_symbols(&module)?;
    Ok(module)
}

/// Every function the optimized module calls but does not define is an LLVM intrinsic or one
/// of the runtime's symbols ([`runtime::jit_symbols`]). The optimizer may introduce calls the
/// code generator never wrote (a `malloc` and a zeroing become `calloc`); one missing from the
/// table would be resolved by the JIT against the process's own symbols, where it could pair
/// the C library's allocator with the runtime's `free`.
fn check_external_symbols(module: &Module<'_>) -> Result<(), LlvmError> {
    let known = runtime::jit_symbols();
    for f in module.get_functions() {
        let name = f.get_name().to_string_lossy();
        let external = f.count_basic_blocks() == 0 && !name.starts_with("llvm.");
        if external && !known.iter().any(|(s, _, _)| *s == name) {
            return Err(LlvmError::Internal(format!(
                "optimized code calls `{name}`, which the runtime does not provide"
            )));
        }
    }
    Ok(())
}

/// Checks `p`, generates its module with entry `entry` and verifies it.
fn build_unoptimized<'ctx>(
    ctx: &'ctx Context,
    p: &KernelProgram,
    entry: &str,
    host: &Host,
) -> Result<Module<'ctx>, LlvmError> {
    let a = crate::bounds::analyze(p)?;
    let module = ctx.create_module(&format!("tttc.{}", sanitize(&p.name)));
    module.set_triple(&host.tm.get_triple());
    module.set_data_layout(&host.tm.get_target_data().get_data_layout());
    codegen::build(ctx, &module, p, &a, entry, &host.cpu, &host.features)?;
    module
        .verify()
        .map_err(|e| LlvmError::Internal(format!("generated module does not verify: {e}")))?;
    Ok(module)
}

/// A printable version of a program name, for module and symbol names (`[A-Za-z0-9_]`, at
/// most 64 characters).
pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// A kernel program compiled to native code in memory (LLVM MCJIT), ready to run: a
/// [`Jit`](crate::Jit) over LLVM's machine code ([`LlvmCode`]).
///
/// ```no_run
/// # use std::collections::BTreeMap;
/// # fn demo(p: &tttc_ir::kernel::KernelProgram, inputs: &BTreeMap<String, tttc_runtime::Tensor>)
/// #     -> Result<(), tttc_backends::llvm::LlvmError> {
/// let jit = tttc_backends::llvm::LlvmJit::compile(p)?;
/// let outputs = jit.run(inputs)?;
/// # Ok(()) }
/// ```
pub type LlvmJit = Jit<LlvmCode>;

/// The LLVM backend as a [`Backend`]: [`LlvmJit::compile`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Llvm;

impl Backend for Llvm {
    type Compiled = LlvmJit;

    fn name(&self) -> &'static str {
        "llvm"
    }

    fn compile(&self, p: &KernelProgram) -> Result<LlvmJit, BackendError> {
        Ok(LlvmJit::compile(p)?)
    }
}

/// What owns an [`LlvmJit`]'s machine code: the MCJIT engine, its module and their context.
pub struct LlvmCode {
    // Drop order (declaration order) matters: the module handle, then the engine that owns the
    // module and the machine code, then the context they both live in.
    _module: Module<'static>,
    _engine: ExecutionEngine<'static>,
    _context: Box<Context>,
}

// SAFETY: every LLVM object reachable from an `LlvmCode` (context, module, engine, including
// inkwell's reference-counted handles to them) is owned by it alone and moves with it; LLVM has
// no thread affinity for these objects. Running only uses the entry pointer and plain data.
unsafe impl Send for LlvmCode {}

impl std::fmt::Debug for LlvmCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlvmCode").finish_non_exhaustive()
    }
}

impl JitCode for LlvmCode {
    type Error = LlvmError;

    fn internal(msg: String) -> LlvmError {
        LlvmError::Internal(msg)
    }
}

impl LlvmJit {
    /// Checks, generates, optimizes (`default<O3>`, host CPU) and JIT-compiles `p`.
    pub fn compile(p: &KernelProgram) -> Result<LlvmJit, LlvmError> {
        let start = Instant::now();
        let host = Host::new(RelocMode::Default, CodeModel::JITDefault)?;
        let context = Box::new(Context::create());
        // SAFETY: the context is boxed (it never moves) and is dropped after everything made
        // from it: on error paths `module` and `engine`, declared later, drop first; in the
        // `LlvmCode` the field order does the same.
        let ctx: &'static Context = unsafe { &*(&*context as *const Context) };
        let module = build_optimized(ctx, p, JIT_ENTRY, &host)?;

        // Declare every external symbol the machine code may use, then map it by address.
        let symbols = runtime::jit_symbols();
        let mut decls = Vec::with_capacity(symbols.len());
        for (name, sig, addr) in symbols {
            let f = match module.get_function(name) {
                Some(f) => f,
                None => module.add_function(name, sig_type(ctx, sig), Some(Linkage::External)),
            };
            decls.push((f, addr));
        }
        let engine = module
            .create_jit_execution_engine(OptimizationLevel::Aggressive)
            .map_err(|e| LlvmError::Llvm(format!("creating the JIT: {e}")))?;
        for (f, addr) in &decls {
            engine.add_global_mapping(f, *addr);
        }
        perf_map::write(&module, &engine);
        let addr = engine
            .get_function_address(JIT_ENTRY)
            .map_err(|e| LlvmError::Llvm(format!("finding the entry: {e}")))?;
        if addr == 0 {
            return Err(LlvmError::Llvm("the entry has a null address".into()));
        }
        // SAFETY: `JIT_ENTRY` was defined by `codegen::build` with exactly this signature.
        let entry: EntryFn = unsafe { std::mem::transmute::<usize, EntryFn>(addr) };
        let code = LlvmCode {
            _module: module,
            _engine: engine,
            _context: context,
        };
        // SAFETY: `entry` was compiled from `p` with the entry's calling convention, every
        // access it makes was proven in bounds (`build_optimized`), and it lives in `code`'s
        // engine.
        Ok(unsafe { Jit::new(p, entry, code, start.elapsed()) })
    }
}

/// The LLVM function type of a mapped symbol.
fn sig_type<'ctx>(ctx: &'ctx Context, sig: Sig) -> inkwell::types::FunctionType<'ctx> {
    let f = ctx.f32_type();
    let d = ctx.f64_type();
    let i = ctx.i32_type();
    let l = ctx.i64_type();
    let p = ctx.ptr_type(AddressSpace::default());
    let v = ctx.void_type();
    let m = |x: &[BasicMetadataTypeEnum<'ctx>]| x.to_vec();
    match sig {
        Sig::F32Unary => f.fn_type(&m(&[f.into()]), false),
        Sig::F64Unary => d.fn_type(&m(&[d.into()]), false),
        Sig::F32Binary => f.fn_type(&m(&[f.into(), f.into()]), false),
        Sig::F64Binary => d.fn_type(&m(&[d.into(), d.into()]), false),
        Sig::F32Ternary => f.fn_type(&m(&[f.into(), f.into(), f.into()]), false),
        Sig::F64Ternary => d.fn_type(&m(&[d.into(), d.into(), d.into()]), false),
        Sig::F32Int => f.fn_type(&m(&[f.into(), i.into()]), false),
        Sig::F64Int => d.fn_type(&m(&[d.into(), i.into()]), false),
        Sig::F32SinCos | Sig::F64SinCos => {
            let x = if matches!(sig, Sig::F32SinCos) {
                f.into()
            } else {
                d.into()
            };
            v.fn_type(&m(&[x, p.into(), p.into()]), false)
        }
        Sig::Malloc => p.fn_type(&m(&[l.into()]), false),
        Sig::Calloc => p.fn_type(&m(&[l.into(), l.into()]), false),
        Sig::Free => v.fn_type(&m(&[p.into()]), false),
        Sig::Memset => p.fn_type(&m(&[p.into(), i.into(), l.into()]), false),
        Sig::Memcpy => p.fn_type(&m(&[p.into(), p.into(), l.into()]), false),
        Sig::ParallelFor => v.fn_type(&m(&[p.into(), p.into(), l.into()]), false),
        Sig::VoidI64 => v.fn_type(&m(&[l.into()]), false),
        Sig::Gemm => v.fn_type(&m(&[p.into(), p.into(), p.into(), p.into()]), false),
    }
}

/// Checks that `name` can be the exported entry of an object file.
fn check_entry_name(name: &str) -> Result<(), LlvmError> {
    let bad = |why: &str| Err(LlvmError::EntryName(name.to_string(), why.to_string()));
    let mut chars = name.chars();
    match chars.next() {
        None => return bad("empty"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return bad("must start with a letter or '_'")
        }
        _ => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return bad("must be a C identifier (letters, digits, '_')");
    }
    if name.len() > 200 {
        return bad("longer than 200 characters");
    }
    if runtime::jit_symbols().iter().any(|(s, _, _)| *s == name) {
        return bad("clashes with a runtime or C library function the kernel calls");
    }
    Ok(())
}

/// Compiles `p` to a position-independent relocatable object at `path` (for `cc -shared`),
/// exporting the entry `void <entry_name>(T** inputs, T** outputs)` (see the [module
/// docs](self) for the calling convention). The code is optimized for the host CPU (it may not
/// run on older CPUs).
///
/// The object references, and the final link must provide: `tttc_parallel_for` (see
/// [`tttc_parallel_for`] for its C signature; the program or a C shim linked into the library
/// defines it — only kernels with parallel loops call it), `malloc`/`free`/`memset` and libm
/// (`-lm`). Matrix products ([`tttc_ir::kernel::Stmt::Gemm`]) are expanded into their loop
/// nests ([`tttc_ir::kernel::expand_gemm`]) first, so the object never calls the matrix
/// library.
pub fn emit_object(p: &KernelProgram, path: &Path, entry_name: &str) -> Result<(), LlvmError> {
    emit_object_calling_gemm(&tttc_ir::kernel::expand_gemm(p), path, entry_name)
}

/// [`emit_object`] keeping matrix products as calls of `tttc_gemm_f32`/`tttc_gemm_f64` (the
/// JIT's matrix library, [`tttc_gemm_f32`] for the C signature), which the final link must
/// provide too: the code is then the JIT's own. Session libraries link the run time that
/// defines them.
pub fn emit_object_calling_gemm(
    p: &KernelProgram,
    path: &Path,
    entry_name: &str,
) -> Result<(), LlvmError> {
    check_entry_name(entry_name)?;
    let host = Host::new(RelocMode::PIC, CodeModel::Default)?;
    let ctx = Context::create();
    let module = build_optimized(&ctx, p, entry_name, &host)?;
    let buf = host
        .tm
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| LlvmError::Llvm(format!("emitting the object: {e}")))?;
    std::fs::write(path, buf.as_slice()).map_err(|source| LlvmError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The optimized LLVM IR of `p` as the JIT compiles it (entry `tttc_kernel_entry`), for
/// inspection.
pub fn optimized_ir(p: &KernelProgram) -> Result<String, LlvmError> {
    let host = Host::new(RelocMode::Default, CodeModel::JITDefault)?;
    let ctx = Context::create();
    let module = build_optimized(&ctx, p, JIT_ENTRY, &host)?;
    Ok(module.print_to_string().to_string())
}

/// The LLVM IR of `p` as generated, before any optimization (entry `tttc_kernel_entry`), for
/// inspection and for reducing LLVM bugs with LLVM's own tools (`opt`, `llvm-reduce`).
pub fn unoptimized_ir(p: &KernelProgram) -> Result<String, LlvmError> {
    let host = Host::new(RelocMode::Default, CodeModel::JITDefault)?;
    let ctx = Context::create();
    let module = build_unoptimized(&ctx, p, JIT_ENTRY, &host)?;
    Ok(module.print_to_string().to_string())
}

/// The host assembly of `p` (entry `tttc_kernel_entry`), for inspection.
pub fn assembly(p: &KernelProgram) -> Result<String, LlvmError> {
    let host = Host::new(RelocMode::Default, CodeModel::Default)?;
    let ctx = Context::create();
    let module = build_optimized(&ctx, p, JIT_ENTRY, &host)?;
    let buf = host
        .tm
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| LlvmError::Llvm(format!("emitting assembly: {e}")))?;
    Ok(String::from_utf8_lossy(buf.as_slice()).into_owned())
}

impl From<crate::bounds::AnalysisError> for LlvmError {
    fn from(e: crate::bounds::AnalysisError) -> Self {
        match e {
            crate::bounds::AnalysisError::Invalid(m) => LlvmError::Invalid(m),
            crate::bounds::AnalysisError::Internal(m) => LlvmError::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module whose code calls a function outside the runtime's table is refused; one that
    /// calls only the table's (`calloc`, which LLVM introduces itself) and intrinsics is not.
    #[test]
    fn calls_outside_the_runtime_table_are_refused() {
        let ctx = Context::create();
        let module = ctx.create_module("m");
        let ptr = ctx.ptr_type(AddressSpace::default());
        let i64t = ctx.i64_type();
        let calloc = module.add_function("calloc", sig_type(&ctx, Sig::Calloc), None);
        let caller = module.add_function("f", ctx.void_type().fn_type(&[], false), None);
        let b = ctx.create_builder();
        b.position_at_end(ctx.append_basic_block(caller, "entry"));
        let n = i64t.const_int(8, false);
        b.build_call(calloc, &[n.into(), n.into()], "p").unwrap();
        b.build_return(None).unwrap();
        assert!(check_external_symbols(&module).is_ok());

        let mystery =
            module.add_function("aligned_alloc", ptr.fn_type(&[i64t.into()], false), None);
        let caller2 = module.add_function("g", ctx.void_type().fn_type(&[], false), None);
        b.position_at_end(ctx.append_basic_block(caller2, "entry"));
        b.build_call(mystery, &[n.into()], "q").unwrap();
        b.build_return(None).unwrap();
        let err = check_external_symbols(&module).unwrap_err().to_string();
        assert!(err.contains("aligned_alloc"), "{err}");
    }
}
