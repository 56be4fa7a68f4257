//! What every backend offers, so that a caller compiles and runs a program without matching on
//! which backend it is (in the spirit of candle's `BackendDevice` / `BackendStorage`).
//!
//! A [`Backend`] compiles a [`KernelProgram`] into its [`Backend::Compiled`]; every compiled
//! form is a [`CompiledProgram`]: run on named tensors, run reusing output storage, and — for
//! the native CPU backends — run on caller-provided storage ([`CompiledProgram::buffers`],
//! [`CompiledProgram::run_raw`]). Errors of every backend come as one [`BackendError`], which
//! keeps the backend's own error as its source.
//!
//! | backend | [`Backend`] | [`CompiledProgram`] |
//! |---|---|---|
//! | LLVM (feature `llvm`) | [`crate::llvm::Llvm`] | [`crate::llvm::LlvmJit`] |
//! | Cranelift (feature `cranelift`) | [`crate::cranelift::Cranelift`] | [`crate::cranelift::CraneliftJit`] |
//! | CUDA (feature `cuda`) | [`crate::ptx::cuda::Cuda`] (GPU-mapped programs) | [`crate::ptx::cuda::CudaProgram`] |
//! | the reference interpreter | — (graph IR, nothing to compile) | [`Interpreted`] |

use crate::input::InputError;
use std::collections::BTreeMap;
use std::time::Duration;
use tttc_ir::kernel::KernelProgram;
use tttc_ir::Program;
use tttc_runtime::Tensor;

/// Names and element counts of a program's buffers, in program order.
pub type BufferList = Vec<(String, usize)>;

/// Why a backend could not compile or run a program: the backend's own error, kept whole.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The LLVM CPU backend.
    #[cfg(feature = "llvm")]
    #[error(transparent)]
    Llvm(#[from] crate::llvm::LlvmError),
    /// The Cranelift CPU backend.
    #[cfg(feature = "cranelift")]
    #[error(transparent)]
    Cranelift(#[from] crate::cranelift::CraneliftError),
    /// PTX generation.
    #[cfg(feature = "llvm")]
    #[error(transparent)]
    Ptx(#[from] crate::ptx::PtxError),
    /// The CUDA driver.
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] crate::ptx::cuda::CudaError),
    /// The reference interpreter.
    #[error(transparent)]
    Interp(#[from] crate::interp::InterpError),
    /// [`CompiledProgram::run_raw`] on a backend that only runs on tensors.
    #[error("this backend cannot run on raw storage")]
    NoRawStorage,
}

impl BackendError {
    /// The input tensors did not fit the program (which one, and how), if that is the error.
    pub fn input_error(&self) -> Option<&InputError> {
        match self {
            #[cfg(feature = "llvm")]
            BackendError::Llvm(crate::llvm::LlvmError::Input(e)) => Some(e),
            #[cfg(feature = "cranelift")]
            BackendError::Cranelift(crate::cranelift::CraneliftError::Input(e)) => Some(e),
            #[cfg(feature = "llvm")]
            BackendError::Ptx(crate::ptx::PtxError::Input(e)) => Some(e),
            #[cfg(feature = "cuda")]
            BackendError::Cuda(crate::ptx::cuda::CudaError::Input(e)) => Some(e),
            _ => None,
        }
    }
}

/// A code generator: compiles kernel programs into something that runs.
pub trait Backend {
    /// What compiling gives.
    type Compiled: CompiledProgram;

    /// The backend's name (`llvm`).
    fn name(&self) -> &'static str;

    /// Checks and compiles `p`.
    fn compile(&self, p: &KernelProgram) -> Result<Self::Compiled, BackendError>;
}

/// A program ready to run (compiled once, run many times).
pub trait CompiledProgram: Send {
    /// Runs on `inputs` (by name) and returns the outputs by name, shaped like their buffers.
    /// Inputs that do not fit the program are an error ([`BackendError::input_error`]) before
    /// anything runs.
    fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, BackendError>;

    /// Like [`run`](Self::run), but where the backend can, an output is written into the
    /// storage of the same-named tensor of `spare` when it has the output's element type and
    /// size (taken out of `spare`; no allocation and no zeroing). For repeated runs such as
    /// decode steps. The default ignores `spare`.
    fn run_reusing(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        spare: &mut BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, BackendError> {
        let _ = spare;
        self.run(inputs)
    }

    /// How long compiling took (zero when there was nothing to compile).
    fn compile_time(&self) -> Duration;

    /// Names and element counts of the inputs, then outputs, in program order, when the program
    /// can run on caller-provided storage ([`run_raw`](Self::run_raw)); `None` (the default)
    /// when it cannot.
    fn buffers(&self) -> Option<(BufferList, BufferList)> {
        None
    }

    /// Runs on caller-provided storage, one pointer per buffer in the order of
    /// [`buffers`](Self::buffers) (only the counts are checked). The default refuses
    /// ([`BackendError::NoRawStorage`]).
    ///
    /// # Safety
    ///
    /// Every pointer must be valid for its buffer's number of elements of the program's element
    /// type; outputs must not overlap each other or any input, and nothing else may access them
    /// during the call.
    unsafe fn run_raw(
        &self,
        inputs: &[*const u8],
        outputs: &[*mut u8],
    ) -> Result<(), BackendError> {
        let _ = (inputs, outputs);
        Err(BackendError::NoRawStorage)
    }

    /// Device time of the last run's kernels in milliseconds (GPU backends; copies between host
    /// and device excluded); `None` (the default) elsewhere.
    fn last_device_ms(&self) -> Option<f64> {
        None
    }
}

/// A graph-IR program run by the reference interpreter ([`crate::interp`]): nothing is
/// compiled, every run interprets it op by op.
#[derive(Clone, Debug)]
pub struct Interpreted {
    program: Program,
}

impl Interpreted {
    /// `program` (bound: every dimension known), ready to interpret.
    pub fn new(program: Program) -> Self {
        Interpreted { program }
    }
}

impl CompiledProgram for Interpreted {
    fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, BackendError> {
        Ok(crate::interp::run_program(&self.program, inputs)?)
    }

    fn compile_time(&self) -> Duration {
        Duration::ZERO
    }
}
