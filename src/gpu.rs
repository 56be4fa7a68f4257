//! The NVIDIA GPU path: a bound program through the kernel IR and its GPU mapping
//! (`tttc_passes::gpu_schedule`) to PTX (`tttc_backends::ptx`, feature `llvm`), and running
//! that PTX through the CUDA driver (feature `cuda`).

use tttc_ir::Program;

#[cfg(feature = "llvm")]
pub use tttc_backends::ptx::{PtxArch, PtxModule};
pub use tttc_backends::tensor_core::TensorCores;

/// Why a program could not be made into PTX or run on a GPU. Each cause is kept whole as the
/// source.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// Lowering to kernel IR or the GPU mapping failed (a compiler bug); the error names the
    /// stage.
    #[error("compiling to GPU kernels failed: {0}")]
    Kernel(#[source] tttc_passes::PassError),
    /// PTX generation failed (a compiler bug).
    #[cfg(feature = "llvm")]
    #[error("PTX generation failed: {0}")]
    Codegen(#[source] tttc_backends::ptx::PtxError),
    /// An option that does not apply to the program (tensor cores for f64): the user's to fix.
    #[error("{0}")]
    Unsupported(String),
    /// No CUDA driver on this machine (a user-facing condition, not a bug).
    #[error("no CUDA driver found: the ptx backend runs on a machine with an NVIDIA GPU and its driver (libcuda.so)")]
    NoDriver,
    /// The CUDA driver failed (or the inputs did not fit the loaded program).
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(tttc_backends::ptx::cuda::CudaError),
}

impl GpuError {
    /// Whether the user can fix it (no GPU driver, an option that does not apply) rather than a
    /// bug.
    pub fn is_user_error(&self) -> bool {
        matches!(self, GpuError::NoDriver | GpuError::Unsupported(_))
    }
}

/// The kernel program of `program` (bound) mapped onto a GPU with the default configuration.
pub fn gpu_kernels(program: &Program) -> Result<tttc_ir::kernel::KernelProgram, GpuError> {
    let target = tttc_passes::pipeline::Target::Gpu(Default::default());
    crate::driver::kernel_program(program, target).map_err(GpuError::Kernel)
}

/// PTX for `program` (bound: every dimension known) on `arch`.
#[cfg(feature = "llvm")]
pub fn emit_ptx(program: &Program, arch: PtxArch) -> Result<PtxModule, GpuError> {
    emit_ptx_with(program, arch, None)
}

/// [`emit_ptx`], with matmuls on tensor cores in format `tensor_cores` when given (an f32
/// opt-in: [`GpuError::Unsupported`] for f64 programs).
#[cfg(feature = "llvm")]
pub fn emit_ptx_with(
    program: &Program,
    arch: PtxArch,
    tensor_cores: Option<TensorCores>,
) -> Result<PtxModule, GpuError> {
    use tttc_backends::ptx::PtxOptions;
    let mapped = gpu_kernels(program)?;
    let threads = tttc_passes::gpu_schedule::DEFAULT_THREADS as u32;
    tttc_backends::ptx::emit_ptx_with(&mapped, threads, arch, PtxOptions { tensor_cores })
        .map_err(ptx_error)
}

/// A PTX generation error as the GPU path's: the user's when an option does not apply.
#[cfg(feature = "llvm")]
fn ptx_error(e: tttc_backends::ptx::PtxError) -> GpuError {
    match e {
        tttc_backends::ptx::PtxError::Unsupported(m) => GpuError::Unsupported(m),
        e => GpuError::Codegen(e),
    }
}

/// How to launch a [`PtxModule`] by hand, as JSON: the kernels in order (grid and block size,
/// parameters by buffer name) and every global buffer (kind, shape).
#[cfg(feature = "llvm")]
pub fn launch_manifest(program_name: &str, m: &PtxModule) -> serde_json::Value {
    use tttc_ir::kernel::BufferKind;
    let name = |id: tttc_ir::kernel::BufId| format!("b{}", id.0);
    let buffers: Vec<serde_json::Value> = m
        .buffers
        .iter()
        .map(|b| {
            let (kind, tensor) = match &b.kind {
                BufferKind::Input(n) => ("input", Some(n.clone())),
                BufferKind::Output(n) => ("output", Some(n.clone())),
                BufferKind::Temp => ("temp", None),
            };
            serde_json::json!({
                "buffer": name(b.id), "kind": kind, "tensor": tensor, "shape": b.shape,
                "elements": b.len,
            })
        })
        .collect();
    let launches: Vec<serde_json::Value> = m
        .launches
        .iter()
        .map(|l| {
            serde_json::json!({
                "kernel": l.kernel, "grid": [l.grid, 1, 1], "block": [l.block, 1, 1],
                "params": l.params.iter().map(|b| name(*b)).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "program": program_name,
        "arch": m.arch.name(),
        "dtype": m.dtype.to_string(),
        "note": "temporaries must be filled with NaN (all bits set) before the first launch; launch in order on one stream",
        "shared_bytes": m.shared_bytes,
        "tensor_cores": m.tensor_cores.map(|t| t.name()),
        "tensor_core_loops": m.tensor_core_loops,
        "buffers": buffers,
        "launches": launches,
    })
}

/// Compiles `program` (bound) to PTX for the first GPU, with matmuls on tensor cores in
/// format `tensor_cores` when given, and loads it there (the [`tttc_backends::ptx::cuda::Cuda`]
/// backend). Without a CUDA driver: [`GpuError::NoDriver`], before anything is compiled.
#[cfg(feature = "cuda")]
pub fn load(
    program: &Program,
    tensor_cores: Option<TensorCores>,
) -> Result<tttc_backends::ptx::cuda::CudaProgram, GpuError> {
    use tttc_backends::ptx::cuda::Cuda;
    use tttc_backends::ptx::PtxOptions;
    use tttc_backends::{Backend, BackendError};
    let threads = tttc_passes::gpu_schedule::DEFAULT_THREADS as u32;
    let gpu = Cuda::first_device(threads, PtxOptions { tensor_cores }).map_err(cuda_error)?;
    let mapped = gpu_kernels(program)?;
    gpu.compile(&mapped).map_err(|e| match e {
        BackendError::Ptx(e) => ptx_error(e),
        BackendError::Cuda(e) => cuda_error(e),
        // The CUDA backend makes no other errors; should one appear, it is reported, not lost.
        other => GpuError::Cuda(tttc_backends::ptx::cuda::CudaError::Driver(
            other.to_string(),
        )),
    })
}

#[cfg(feature = "cuda")]
fn cuda_error(e: tttc_backends::ptx::cuda::CudaError) -> GpuError {
    match e {
        tttc_backends::ptx::cuda::CudaError::NoDriver => GpuError::NoDriver,
        other => GpuError::Cuda(other),
    }
}
