//! Running a bound program on a backend: the interpreter, native code through LLVM or
//! Cranelift, or PTX on a GPU — each behind `tttc_backends`' [`CompiledProgram`] trait, so
//! [`Prepared`] never matches on the backend once it is compiled.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
pub use tttc_backends::BufferList;
use tttc_backends::{BackendError, CompiledProgram, Interpreted};
use tttc_ir::Program;
use tttc_runtime::Tensor;

/// An execution backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The reference interpreter.
    Interp,
    /// Native CPU code through LLVM (JIT).
    Llvm,
    /// Native CPU code through Cranelift (JIT; fast compiles).
    Cranelift,
    /// NVIDIA GPU code: PTX through LLVM, run through the CUDA driver ([`crate::gpu`]).
    Ptx,
}

impl Backend {
    /// The backend's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Interp => "interp",
            Backend::Llvm => "llvm",
            Backend::Cranelift => "cranelift",
            Backend::Ptx => "ptx",
        }
    }

    /// The cargo feature that builds it in.
    pub fn feature(self) -> &'static str {
        match self {
            Backend::Ptx => "cuda",
            other => other.name(),
        }
    }

    /// Whether this build of tttc has it.
    pub fn is_built(self) -> bool {
        match self {
            Backend::Interp => true,
            Backend::Llvm => cfg!(feature = "llvm"),
            Backend::Cranelift => cfg!(feature = "cranelift"),
            Backend::Ptx => cfg!(feature = "cuda"),
        }
    }
}

/// Why a program could not be prepared or run. Each cause is kept whole as the source.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The backend was not compiled into this binary.
    #[error("the {0} backend is not built into this tttc; rebuild with `--features {0}`")]
    NotBuilt(&'static str),
    /// A stage of the pipeline below the graph IR failed (a compiler bug).
    #[error("compiling to kernel IR failed: {0}")]
    Lower(#[source] tttc_passes::PassError),
    /// Code generation failed (a compiler bug).
    #[error("code generation failed: {0}")]
    Codegen(#[source] BackendError),
    /// Execution failed.
    #[error("execution failed: {0}")]
    Run(#[source] BackendError),
    /// The GPU path failed ([`crate::gpu::GpuError::NoDriver`] is the user's, not a bug).
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// The compile cache cannot be used ([`crate::cache`]).
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

impl ExecError {
    /// Whether the user can fix it (a backend not built in, no GPU driver, an id the interpreter
    /// found outside its table) rather than a bug.
    pub fn is_user_error(&self) -> bool {
        match self {
            ExecError::NotBuilt(_) => true,
            ExecError::Gpu(e) => e.is_user_error(),
            ExecError::Cache(e) => e.is_user_error(),
            // A computed id that is not a row of its table: the program's data, not a bug.
            ExecError::Run(BackendError::Interp(tttc_backends::interp::InterpError::BadId {
                ..
            })) => true,
            ExecError::Lower(_) | ExecError::Codegen(_) | ExecError::Run(_) => false,
        }
    }
}

/// A program ready to run on one backend (compiled once, run many times): whatever the
/// backend, a [`CompiledProgram`]. A clone shares the compiled program (a streaming session
/// runs one compiled piece for every layer whose piece is the same program); runs of clones
/// take turns (a compiled program is run by one thread at a time).
#[derive(Clone)]
pub struct Prepared {
    inner: Arc<Mutex<Box<dyn CompiledProgram>>>,
    /// Time spent compiling, lowering to kernel IR included (zero for the interpreter).
    pub compile_time: Duration,
}

/// Compiles a bound (fully specialized) program for `backend`.
pub fn prepare(backend: Backend, program: &Program) -> Result<Prepared, ExecError> {
    let start = Instant::now();
    let inner: Box<dyn CompiledProgram> = match backend {
        Backend::Interp => Box::new(Interpreted::new(program.clone())),
        #[cfg(feature = "llvm")]
        Backend::Llvm => match crate::cache::directory() {
            Some(dir) => cached_llvm(&dir, program)?,
            None => uncached_llvm(program)?,
        },
        #[cfg(feature = "cranelift")]
        Backend::Cranelift => compile_kernels(&tttc_backends::cranelift::Cranelift, program)?,
        Backend::Ptx => return prepare_ptx(program, None),
        #[allow(unreachable_patterns)]
        other => return Err(ExecError::NotBuilt(other.feature())),
    };
    Ok(Prepared::new(inner, start.elapsed()))
}

/// Lowers `program` through the pipeline's kernel stages and compiles it with `generator` as the
/// pipeline's last stage.
#[cfg(any(feature = "llvm", feature = "cranelift"))]
fn compile_kernels<G: tttc_backends::Backend>(
    generator: &G,
    program: &Program,
) -> Result<Box<dyn CompiledProgram>, ExecError>
where
    G::Compiled: 'static,
{
    let compiled =
        crate::driver::generate_code(program, tttc_passes::pipeline::Target::Cpu, &|k| {
            generator.compile(k)
        })
        .map_err(ExecError::Lower)?
        .map_err(ExecError::Codegen)?;
    Ok(Box::new(compiled))
}

/// The LLVM backend without the compile cache: the kernel program compiled to objects on the
/// host's threads and linked, as a cache miss does ([`tttc_backends::llvm::compile_object`]);
/// with `TTTC_PERF_MAP` set, the in-memory JIT instead, which names its functions for `perf`.
#[cfg(feature = "llvm")]
fn uncached_llvm(program: &Program) -> Result<Box<dyn CompiledProgram>, ExecError> {
    use tttc_backends::llvm;
    if std::env::var_os("TTTC_PERF_MAP").is_some() {
        return compile_kernels(&llvm::Llvm, program);
    }
    let codegen = |e: llvm::LlvmError| ExecError::Codegen(e.into());
    let kernel = crate::driver::kernel_program(program, tttc_passes::pipeline::Target::Cpu)
        .map_err(ExecError::Lower)?;
    let object = llvm::compile_object(&kernel).map_err(codegen)?;
    // SAFETY: compiled from `kernel` just now, in this process.
    let jit = unsafe { llvm::load_object(&kernel, &object) }.map_err(codegen)?;
    Ok(Box::new(jit))
}

/// The LLVM backend through the compile cache in `dir` ([`crate::cache`]): the kernel program's
/// object from the cache when there, else compiled, stored and loaded (the same path, so a run
/// computes the same whether its code came from the cache or not).
#[cfg(feature = "llvm")]
fn cached_llvm(
    dir: &std::path::Path,
    program: &Program,
) -> Result<Box<dyn CompiledProgram>, ExecError> {
    use crate::cache;
    use tttc_backends::llvm;
    let codegen = |e: llvm::LlvmError| ExecError::Codegen(e.into());
    let kernel = cached_kernel_program(dir, program)?;
    let fingerprint = llvm::host_fingerprint().map_err(codegen)?;
    let key = cache::key("llvm", &fingerprint, &kernel)?;
    let path = cache::entry_path(dir, "llvm", &key);
    if let Some(object) = cache::load(&path, &key) {
        // SAFETY: the entry's key covers the kernel program, the host fingerprint and this
        // tttc, and its checksum matched: it is the object `compile_object` made from `kernel`.
        match unsafe { llvm::load_object(&kernel, &object) } {
            Ok(jit) => {
                cache::count_loaded();
                return Ok(Box::new(jit));
            }
            Err(e) => cache::reject(&path, &e.to_string()),
        }
    }
    // An unusable directory is reported before the long compile, not after it.
    cache::create_dir(dir)?;
    let object = llvm::compile_object(&kernel).map_err(codegen)?;
    cache::store(&path, &key, &object)?;
    // SAFETY: compiled from `kernel` just now, in this process.
    let jit = unsafe { llvm::load_object(&kernel, &object) }.map_err(codegen)?;
    Ok(Box::new(jit))
}

/// The CPU kernel program of `program` from the compile cache in `dir` when there, else the
/// kernel stages' result, stored. A warm start of a model loads a few dozen pieces (the stages
/// and scan steps of a streaming session): their kernel stages would otherwise run on every
/// start although the machine code is cached.
#[cfg(feature = "llvm")]
fn cached_kernel_program(
    dir: &std::path::Path,
    program: &Program,
) -> Result<tttc_ir::kernel::KernelProgram, ExecError> {
    use crate::cache;
    let key = cache::kernel_key(program)?;
    let path = cache::entry_path(dir, "kernel", &key);
    if let Some(kernel) = cache::load_kernel(&path, &key) {
        return Ok(kernel);
    }
    let kernel = crate::driver::kernel_program(program, tttc_passes::pipeline::Target::Cpu)
        .map_err(ExecError::Lower)?;
    cache::create_dir(dir)?;
    cache::store_kernel(&path, &key, &kernel)?;
    Ok(kernel)
}

/// Compiles a bound program for the ptx backend with matmuls on tensor cores in format
/// `tensor_cores` (an f32 opt-in; `None` is [`prepare`] with [`Backend::Ptx`]).
pub fn prepare_ptx(
    program: &Program,
    tensor_cores: Option<crate::gpu::TensorCores>,
) -> Result<Prepared, ExecError> {
    let start = Instant::now();
    let inner = ptx_with(program, tensor_cores)?;
    Ok(Prepared::new(inner, start.elapsed()))
}

#[cfg(feature = "cuda")]
fn ptx_with(
    program: &Program,
    tensor_cores: Option<crate::gpu::TensorCores>,
) -> Result<Box<dyn CompiledProgram>, ExecError> {
    Ok(Box::new(crate::gpu::load(program, tensor_cores)?))
}

#[cfg(not(feature = "cuda"))]
fn ptx_with(
    _: &Program,
    _: Option<crate::gpu::TensorCores>,
) -> Result<Box<dyn CompiledProgram>, ExecError> {
    Err(ExecError::NotBuilt("cuda"))
}

impl Prepared {
    fn new(inner: Box<dyn CompiledProgram>, compile_time: Duration) -> Prepared {
        Prepared {
            inner: Arc::new(Mutex::new(inner)),
            compile_time,
        }
    }

    /// The compiled program, for one run (a run that panicked left nothing half-done that a
    /// later run depends on: every run sets up its own buffers).
    fn program(&self) -> MutexGuard<'_, Box<dyn CompiledProgram>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Device time of the last run's kernels in milliseconds (GPU backends only; host↔device
    /// copies excluded).
    pub fn last_device_ms(&self) -> Option<f64> {
        self.program().last_device_ms()
    }

    /// Runs on inputs already checked by [`crate::bind`].
    pub fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, ExecError> {
        self.program().run(inputs).map_err(ExecError::Run)
    }

    /// Like [`Prepared::run`], but the native backends write an output into the storage of the
    /// same-named tensor of `spare` when it has the output's element type and size (taken out
    /// of `spare`; no allocation and no zeroing). For repeated runs such as decode steps.
    pub fn run_reusing(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        spare: &mut BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, ExecError> {
        self.program()
            .run_reusing(inputs, spare)
            .map_err(ExecError::Run)
    }

    /// Names and element counts of the inputs, then outputs, in program order, for a native
    /// backend that can run on caller-provided storage ([`Prepared::run_raw`]); `None` for the
    /// others.
    pub fn raw_buffers(&self) -> Option<(BufferList, BufferList)> {
        self.program().buffers()
    }

    /// Runs a native program on caller-provided storage, one pointer per buffer in the order of
    /// [`Prepared::raw_buffers`].
    ///
    /// # Safety
    ///
    /// Every pointer must be valid for its buffer's number of elements of the program's element
    /// type; outputs must not overlap each other or any input, and nothing else may access them
    /// during the call.
    pub unsafe fn run_raw(
        &self,
        inputs: &[*const u8],
        outputs: &[*mut u8],
    ) -> Result<(), ExecError> {
        // SAFETY: the caller's contract.
        unsafe { self.program().run_raw(inputs, outputs) }.map_err(ExecError::Run)
    }
}
