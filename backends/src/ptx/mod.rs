//! The NVIDIA GPU backend (cargo feature `llvm`): GPU-scheduled kernel IR to PTX through
//! LLVM's NVPTX target, and (feature `cuda`) running that PTX through the CUDA driver.
//!
//! The input is a kernel program in the GPU form (`tttc_passes::gpu_schedule` makes it; the
//! form is checked with [`crate::kernel_interp::check_gpu_program`], and every access is proven
//! in bounds by the same analysis as the CPU backends). Each top-level `GpuBlock` loop becomes
//! one kernel (see [`codegen`] for the mapping); [`PtxModule`] holds the PTX text and what a
//! runtime needs to launch it: the kernels in order with their grid, block size and buffer
//! parameters, and the buffers (inputs, outputs, global temporaries) with their sizes.
//!
//! Targets: `sm_80` (PTX ISA 7.0, CUDA 11.0 drivers and later) and `sm_90` (PTX ISA 7.8, CUDA
//! 11.8 and later); the module goes through LLVM's `default<O3>` pipeline for the target.
//!
//! Tensor cores are an opt-in precision ([`PtxOptions::tensor_cores`], f32 programs only): the
//! matmul loops that fit whole `mma` tiles ([`crate::tensor_core`]) then run as warp-level
//! `mma.sync` with tf32 or bf16 operands and f32 accumulation; everything else stays exact.

mod codegen;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod host;
pub mod math;

use crate::kernel_interp::{check_gpu_program, GpuEmulation};
use crate::llvm::sanitize;
use crate::tensor_core::TensorCores;
use inkwell::context::Context;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetTriple,
};
use inkwell::OptimizationLevel;
use tttc_ir::kernel::{BufId, BufferKind, KernelProgram, MemorySpace};
use tttc_ir::DType;

/// A GPU architecture PTX is emitted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtxArch {
    /// Ampere (A100): `sm_80`.
    Sm80,
    /// Hopper (H100, H200): `sm_90`.
    Sm90,
}

impl PtxArch {
    /// The name (`sm_80`).
    pub fn name(self) -> &'static str {
        match self {
            PtxArch::Sm80 => "sm_80",
            PtxArch::Sm90 => "sm_90",
        }
    }

    /// The PTX ISA version emitted (`.version` line), as LLVM's feature.
    fn ptx_feature(self) -> &'static str {
        match self {
            PtxArch::Sm80 => "+ptx70",
            PtxArch::Sm90 => "+ptx78",
        }
    }

    /// The `.version` the emitted PTX declares.
    pub fn ptx_version(self) -> &'static str {
        match self {
            PtxArch::Sm80 => "7.0",
            PtxArch::Sm90 => "7.8",
        }
    }

    /// By name (`sm_80`, `sm_90`).
    pub fn parse(s: &str) -> Option<PtxArch> {
        match s {
            "sm_80" => Some(PtxArch::Sm80),
            "sm_90" => Some(PtxArch::Sm90),
            _ => None,
        }
    }
}

/// Why PTX could not be made (or run).
#[derive(Debug, thiserror::Error)]
pub enum PtxError {
    /// The program is not a well-formed GPU-scheduled kernel program, or could access memory
    /// outside a buffer.
    #[error("invalid GPU kernel program: {0}")]
    Invalid(String),
    /// The options do not apply to this program (tensor cores for an f64 program).
    #[error("{0}")]
    Unsupported(String),
    /// The inputs given to the host runner ([`host::run_on_host`]) do not fit the program.
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    /// LLVM refused something.
    #[error("LLVM (NVPTX): {0}")]
    Llvm(String),
    /// A bug in this backend.
    #[error("internal error in the PTX backend: {0}")]
    Internal(String),
}

/// One kernel launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The kernel's name in the PTX.
    pub kernel: String,
    /// Blocks (`gridDim.x`).
    pub grid: u32,
    /// Threads per block (`blockDim.x`).
    pub block: u32,
    /// Its parameters: global buffers, in this order.
    pub params: Vec<BufId>,
}

/// A global buffer the launches use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceBuffer {
    /// The buffer.
    pub id: BufId,
    /// Input, output or temporary (temporaries start out as NaN, like on the CPU).
    pub kind: BufferKind,
    /// Elements.
    pub len: usize,
    /// Its logical shape.
    pub shape: Vec<usize>,
}

/// PTX for a whole program, and how to run it.
#[derive(Clone, Debug)]
pub struct PtxModule {
    /// The architecture.
    pub arch: PtxArch,
    /// Element type of every buffer.
    pub dtype: DType,
    /// The PTX text.
    pub text: String,
    /// The launches, in program order.
    pub launches: Vec<Launch>,
    /// Every global buffer of the program.
    pub buffers: Vec<DeviceBuffer>,
    /// Static shared memory of the largest kernel, in bytes.
    pub shared_bytes: usize,
    /// The tensor-core format, when enabled.
    pub tensor_cores: Option<TensorCores>,
    /// How many loops run on tensor cores (0 without them).
    pub tensor_core_loops: usize,
}

/// Code-generation choices of [`emit_ptx_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtxOptions {
    /// Run matmul loops that fit whole tiles on tensor cores with this input format
    /// (f32 programs only); `None` (the default) keeps every product exact f32.
    pub tensor_cores: Option<TensorCores>,
}

/// Emits PTX for the GPU-scheduled program `p`, run with `threads` threads per block.
pub fn emit_ptx(p: &KernelProgram, threads: u32, arch: PtxArch) -> Result<PtxModule, PtxError> {
    emit_ptx_with(p, threads, arch, PtxOptions::default())
}

/// [`emit_ptx`] with code-generation options. Tensor cores are refused for f64 programs
/// ([`PtxError::Unsupported`]) and need whole warps (`threads` a multiple of 32).
pub fn emit_ptx_with(
    p: &KernelProgram,
    threads: u32,
    arch: PtxArch,
    options: PtxOptions,
) -> Result<PtxModule, PtxError> {
    let analysis = check(p, threads)?;
    check_options(p, threads, options)?;

    Target::initialize_nvptx(&InitializationConfig::default());
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple).map_err(|e| PtxError::Llvm(e.to_string()))?;
    let tm = target
        .create_target_machine(
            &triple,
            arch.name(),
            arch.ptx_feature(),
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| PtxError::Llvm(format!("no NVPTX target machine for {}", arch.name())))?;
    let ctx = Context::create();
    let module = ctx.create_module(&format!("tttc.{}", sanitize(&p.name)));
    module.set_triple(&triple);
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    let prefix = format!("tttc_{}", sanitize(&p.name));
    let generated = codegen::build(
        &ctx,
        &module,
        p,
        &analysis.lens,
        threads,
        &prefix,
        codegen::Flavor::Nvptx,
        options.tensor_cores,
    )?;
    module
        .verify()
        .map_err(|e| PtxError::Internal(format!("generated module does not verify: {e}")))?;
    module
        .run_passes("default<O3>", &tm, PassBuilderOptions::create())
        .map_err(|e| PtxError::Llvm(format!("optimization: {e}")))?;
    let buf = tm
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| PtxError::Llvm(format!("emitting PTX: {e}")))?;
    let text = String::from_utf8_lossy(buf.as_slice()).into_owned();
    let expected = format!(".version {}", arch.ptx_version());
    if !text.contains(&expected) {
        return Err(PtxError::Internal(format!(
            "LLVM emitted PTX without `{expected}` (an unsupported PTX feature?)"
        )));
    }

    let tensor_core_loops = generated.iter().map(|g| g.mma_loops).sum();
    let mut launches = Vec::with_capacity(generated.len());
    for g in generated {
        launches.push(Launch {
            grid: u32::try_from(g.grid)
                .ok()
                .filter(|&n| n < (1 << 31))
                .ok_or_else(|| PtxError::Invalid(format!("{} blocks in one launch", g.grid)))?,
            kernel: g.name,
            block: threads,
            params: g.params,
        });
    }
    let buffers = p
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| b.space == MemorySpace::Global)
        .map(|(i, b)| DeviceBuffer {
            id: BufId(i as u32),
            kind: b.kind.clone(),
            len: b.len(),
            shape: b.layout.shape.clone(),
        })
        .collect();
    let shared_bytes = shared_per_launch(p).into_iter().max().unwrap_or(0);
    Ok(PtxModule {
        arch,
        dtype: p.dtype,
        text,
        launches,
        buffers,
        shared_bytes,
        tensor_cores: options.tensor_cores,
        tensor_core_loops,
    })
}

/// Checks `p` for code generation with `threads` threads per block; returns the bounds analysis.
fn check(p: &KernelProgram, threads: u32) -> Result<crate::bounds::Analysis, PtxError> {
    if threads == 0 || threads > 1024 {
        return Err(PtxError::Invalid(format!("{threads} threads per block")));
    }
    if !p.functions.is_empty() {
        return Err(PtxError::Invalid(
            "the program has kernel functions (gpu_schedule inlines them)".into(),
        ));
    }
    check_gpu_program(
        p,
        GpuEmulation {
            threads: threads as usize,
        },
    )
    .map_err(|e| PtxError::Invalid(e.to_string()))?;
    let analysis = crate::bounds::analyze(p).map_err(|e| PtxError::Invalid(e.to_string()))?;
    for (i, b) in p.buffers.iter().enumerate() {
        let io = matches!(b.kind, BufferKind::Input(_) | BufferKind::Output(_));
        if io && b.space != MemorySpace::Global {
            return Err(PtxError::Invalid(format!(
                "input/output buffer b{i} (`{}`) is not in global memory",
                b.name
            )));
        }
    }
    Ok(analysis)
}

/// Checks that `options` apply to `p` run with `threads` threads per block: tensor cores are an
/// f32 opt-in ([`PtxError::Unsupported`] otherwise) and need whole warps.
fn check_options(p: &KernelProgram, threads: u32, options: PtxOptions) -> Result<(), PtxError> {
    let Some(tc) = options.tensor_cores else {
        return Ok(());
    };
    if p.dtype != DType::F32 {
        return Err(PtxError::Unsupported(format!(
            "tensor cores ({}) are an f32 opt-in; this program is {}",
            tc.name(),
            p.dtype
        )));
    }
    if !threads.is_multiple_of(32) {
        return Err(PtxError::Invalid(format!(
            "tensor cores need whole warps, not {threads} threads per block"
        )));
    }
    Ok(())
}

/// Bytes of shared memory each launch uses.
fn shared_per_launch(p: &KernelProgram) -> Vec<usize> {
    let elem = p.dtype.size_bytes();
    p.body
        .iter()
        .map(|s| {
            crate::bounds::buffers_used(std::slice::from_ref(s))
                .into_iter()
                .filter_map(|b| p.buffer(b))
                .filter(|b| b.space == MemorySpace::Shared)
                .map(|b| b.len() * elem)
                .sum()
        })
        .collect()
}
