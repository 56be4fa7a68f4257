//! Running a bound program on a backend: the interpreter, or native code through LLVM or
//! Cranelift.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
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

/// Why a program could not be prepared or run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The backend was not compiled into this binary.
    #[error("the {0} backend is not built into this tttc; rebuild with `--features {0}`")]
    NotBuilt(&'static str),
    /// Lowering to kernel IR failed (a compiler bug).
    #[error("lowering to kernel IR failed: {0}")]
    Lower(String),
    /// Code generation failed (a compiler bug).
    #[error("code generation failed: {0}")]
    Codegen(String),
    /// Execution failed.
    #[error("execution failed: {0}")]
    Run(String),
    /// The GPU path failed ([`crate::gpu::GpuError::NoDriver`] is the user's, not a bug).
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

impl ExecError {
    /// Whether the user can fix it (a backend not built in, no GPU driver) rather than a bug.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            ExecError::NotBuilt(_)
                | ExecError::Gpu(
                    crate::gpu::GpuError::NoDriver | crate::gpu::GpuError::Unsupported(_)
                )
        )
    }
}

/// Names and element counts of a compiled program's buffers, in program order.
pub type BufferList = Vec<(String, usize)>;

/// A program ready to run on one backend (compiled once, run many times).
pub struct Prepared {
    inner: Inner,
    /// Time spent compiling (zero for the interpreter).
    pub compile_time: Duration,
}

enum Inner {
    Interp(Box<Program>),
    #[cfg(feature = "llvm")]
    Llvm(Box<tttc_backends::llvm::LlvmJit>),
    #[cfg(feature = "cranelift")]
    Cranelift(Box<tttc_backends::cranelift::CraneliftJit>),
    #[cfg(feature = "cuda")]
    Ptx(Box<crate::gpu::PtxRunner>),
}

/// Compiles a bound (fully specialized) program for `backend`.
pub fn prepare(backend: Backend, program: &Program) -> Result<Prepared, ExecError> {
    let start = Instant::now();
    let inner = match backend {
        Backend::Interp => Inner::Interp(Box::new(program.clone())),
        Backend::Llvm => llvm(program)?,
        Backend::Cranelift => cranelift(program)?,
        Backend::Ptx => ptx(program)?,
    };
    Ok(Prepared {
        inner,
        compile_time: start.elapsed(),
    })
}

#[cfg(feature = "llvm")]
fn llvm(program: &Program) -> Result<Inner, ExecError> {
    let jit = crate::driver::generate_code(program, tttc_passes::pipeline::Target::Cpu, &|k| {
        tttc_backends::llvm::LlvmJit::compile(k)
    })
    .map_err(|e| ExecError::Lower(e.to_string()))?
    .map_err(|e| ExecError::Codegen(e.to_string()))?;
    Ok(Inner::Llvm(Box::new(jit)))
}

#[cfg(not(feature = "llvm"))]
fn llvm(_: &Program) -> Result<Inner, ExecError> {
    Err(ExecError::NotBuilt("llvm"))
}

#[cfg(feature = "cranelift")]
fn cranelift(program: &Program) -> Result<Inner, ExecError> {
    let jit = crate::driver::generate_code(program, tttc_passes::pipeline::Target::Cpu, &|k| {
        tttc_backends::cranelift::CraneliftJit::compile(k)
    })
    .map_err(|e| ExecError::Lower(e.to_string()))?
    .map_err(|e| ExecError::Codegen(e.to_string()))?;
    Ok(Inner::Cranelift(Box::new(jit)))
}

#[cfg(not(feature = "cranelift"))]
fn cranelift(_: &Program) -> Result<Inner, ExecError> {
    Err(ExecError::NotBuilt("cranelift"))
}

/// Compiles a bound program for the ptx backend with matmuls on tensor cores in format
/// `tensor_cores` (an f32 opt-in; `None` is [`prepare`] with [`Backend::Ptx`]).
pub fn prepare_ptx(
    program: &Program,
    tensor_cores: Option<crate::gpu::TensorCores>,
) -> Result<Prepared, ExecError> {
    let start = Instant::now();
    let inner = ptx_with(program, tensor_cores)?;
    Ok(Prepared {
        inner,
        compile_time: start.elapsed(),
    })
}

fn ptx(program: &Program) -> Result<Inner, ExecError> {
    ptx_with(program, None)
}

#[cfg(feature = "cuda")]
fn ptx_with(
    program: &Program,
    tensor_cores: Option<crate::gpu::TensorCores>,
) -> Result<Inner, ExecError> {
    Ok(Inner::Ptx(Box::new(
        crate::gpu::PtxRunner::with_tensor_cores(program, tensor_cores)?,
    )))
}

#[cfg(not(feature = "cuda"))]
fn ptx_with(_: &Program, _: Option<crate::gpu::TensorCores>) -> Result<Inner, ExecError> {
    Err(ExecError::NotBuilt("cuda"))
}

impl Prepared {
    /// Device time of the last run's kernels in milliseconds (GPU backends only; host↔device
    /// copies excluded).
    pub fn last_device_ms(&self) -> Option<f64> {
        match &self.inner {
            #[cfg(feature = "cuda")]
            Inner::Ptx(r) => r.last_kernel_ms(),
            _ => None,
        }
    }

    /// Runs on inputs already checked by [`crate::bind`].
    pub fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, ExecError> {
        match &self.inner {
            Inner::Interp(p) => tttc_backends::interp::run_program(p, inputs)
                .map_err(|e| ExecError::Run(e.to_string())),
            #[cfg(feature = "llvm")]
            Inner::Llvm(jit) => jit.run(inputs).map_err(|e| ExecError::Run(e.to_string())),
            #[cfg(feature = "cranelift")]
            Inner::Cranelift(jit) => jit.run(inputs).map_err(|e| ExecError::Run(e.to_string())),
            #[cfg(feature = "cuda")]
            Inner::Ptx(r) => r.run(inputs).map_err(ExecError::from),
        }
    }

    /// Like [`Prepared::run`], but the native backends write an output into the storage of the
    /// same-named tensor of `spare` when it has the output's element type and size (taken out
    /// of `spare`; no allocation and no zeroing). For repeated runs such as decode steps.
    #[cfg_attr(
        not(any(feature = "llvm", feature = "cranelift")),
        allow(unused_variables)
    )]
    pub fn run_reusing(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        spare: &mut BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, ExecError> {
        match &self.inner {
            Inner::Interp(_) => self.run(inputs),
            #[cfg(feature = "cuda")]
            Inner::Ptx(_) => self.run(inputs),
            #[cfg(feature = "llvm")]
            Inner::Llvm(jit) => jit
                .run_reusing(inputs, spare)
                .map_err(|e| ExecError::Run(e.to_string())),
            #[cfg(feature = "cranelift")]
            Inner::Cranelift(jit) => jit
                .run_reusing(inputs, spare)
                .map_err(|e| ExecError::Run(e.to_string())),
        }
    }

    /// Names and element counts of the inputs, then outputs, in program order, for a native
    /// backend that can run on caller-provided storage ([`Prepared::run_raw`]); `None` for the
    /// others.
    pub fn raw_buffers(&self) -> Option<(BufferList, BufferList)> {
        match &self.inner {
            #[cfg(feature = "llvm")]
            Inner::Llvm(jit) => Some(jit.buffers()),
            #[cfg(feature = "cranelift")]
            Inner::Cranelift(jit) => Some(jit.buffers()),
            _ => None,
        }
    }

    /// Runs a native program on caller-provided storage, one pointer per buffer in the order of
    /// [`Prepared::raw_buffers`].
    ///
    /// # Safety
    ///
    /// Every pointer must be valid for its buffer's number of elements of the program's element
    /// type; outputs must not overlap each other or any input, and nothing else may access them
    /// during the call.
    #[cfg_attr(
        not(any(feature = "llvm", feature = "cranelift")),
        allow(unused_variables)
    )]
    pub unsafe fn run_raw(
        &self,
        inputs: &[*const u8],
        outputs: &[*mut u8],
    ) -> Result<(), ExecError> {
        match &self.inner {
            #[cfg(feature = "llvm")]
            // SAFETY: the caller's contract.
            Inner::Llvm(jit) => {
                unsafe { jit.run_raw(inputs, outputs) }.map_err(|e| ExecError::Run(e.to_string()))
            }
            #[cfg(feature = "cranelift")]
            // SAFETY: the caller's contract.
            Inner::Cranelift(jit) => {
                unsafe { jit.run_raw(inputs, outputs) }.map_err(|e| ExecError::Run(e.to_string()))
            }
            _ => Err(ExecError::Run(
                "this backend cannot run on raw storage".into(),
            )),
        }
    }
}
