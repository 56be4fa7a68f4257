//! Running PTX on an NVIDIA GPU through the CUDA driver API (cudarc, feature `cuda`).
//!
//! The driver library (`libcuda.so`) is loaded at run time, so tttc builds and starts on
//! machines without CUDA; there, every entry point returns [`CudaError::NoDriver`] ("no CUDA
//! driver found") before touching cudarc, whose loader would otherwise panic. Any panic cudarc
//! raises anyway (a driver too old to have a symbol it needs) is caught and returned as
//! [`CudaError::Driver`].
//!
//! A [`CudaProgram`] loads a [`PtxModule`] into the first device's primary context and keeps
//! one device buffer per global buffer. [`CudaProgram::run`] copies the inputs in, fills
//! outputs and temporaries with NaN (all bits set, like the CPU backends), launches every
//! kernel in order on one stream, and copies the outputs back; it also times the launches alone
//! with CUDA events ([`CudaProgram::last_kernel_ms`]).

use super::{PtxArch, PtxModule, PtxOptions};
use crate::backend::{Backend, BackendError, CompiledProgram};
use crate::input::{check_inputs, ExpectedInput, InputError};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tttc_ir::kernel::{BufId, BufferKind};
use tttc_ir::DType;
use tttc_runtime::Tensor;

/// Why a program could not be loaded or run on the GPU.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No CUDA driver library on this machine.
    #[error("no CUDA driver found (libcuda.so could not be loaded); the ptx backend needs an NVIDIA GPU and its driver")]
    NoDriver,
    /// The driver reported an error (or cudarc panicked).
    #[error("CUDA: {0}")]
    Driver(String),
    /// The inputs do not fit the program.
    #[error(transparent)]
    Input(#[from] InputError),
}

/// Whether the CUDA driver library can be loaded here.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library and drops it.
    catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// The first device: its name and the PTX architecture to compile for (`sm_90` for compute
/// capability 9.0 and above, else `sm_80`, which the driver JIT-compiles for newer devices).
pub fn device() -> Result<(String, super::PtxArch), CudaError> {
    guarded(|| {
        let ctx = CudaContext::new(0).map_err(driver)?;
        let name = ctx.name().map_err(driver)?;
        let (major, minor) = ctx.compute_capability().map_err(driver)?;
        if major < 8 {
            return Err(CudaError::Driver(format!(
                "{name} has compute capability {major}.{minor}; the ptx backend needs 8.0 or newer"
            )));
        }
        let arch = if major >= 9 {
            super::PtxArch::Sm90
        } else {
            super::PtxArch::Sm80
        };
        Ok((name, arch))
    })
}

/// Runs `f` only when the driver is present, turning panics into errors.
fn guarded<T>(f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic in the CUDA bindings".into());
            Err(CudaError::Driver(msg))
        }
    }
}

fn driver(e: impl std::fmt::Display) -> CudaError {
    CudaError::Driver(e.to_string())
}

/// Device buffers of one element type.
enum Buffers {
    F32(Vec<CudaSlice<f32>>),
    F64(Vec<CudaSlice<f64>>),
}

/// A PTX module loaded on the GPU, with its buffers allocated.
pub struct CudaProgram {
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    kernels: Vec<(CudaFunction, LaunchConfig, Vec<usize>)>,
    /// Per global buffer (in `module.buffers` order): kind, length, shape.
    layout: Vec<(BufferKind, usize, Vec<usize>)>,
    bufs: Mutex<Buffers>,
    dtype: DType,
    last_kernel_ms: Mutex<Option<f64>>,
    compile_time: Duration,
}

impl std::fmt::Debug for CudaProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaProgram")
            .field("kernels", &self.kernels.len())
            .field("buffers", &self.layout.len())
            .finish_non_exhaustive()
    }
}

impl CudaProgram {
    /// Loads `m` on device 0 and allocates its buffers.
    pub fn load(m: &PtxModule) -> Result<CudaProgram, CudaError> {
        let start = Instant::now();
        guarded(|| {
            let ctx = CudaContext::new(0).map_err(driver)?;
            let stream = ctx.default_stream();
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(m.text.clone()))
                .map_err(driver)?;
            let slot: BTreeMap<BufId, usize> = m
                .buffers
                .iter()
                .enumerate()
                .map(|(i, b)| (b.id, i))
                .collect();
            let mut kernels = Vec::with_capacity(m.launches.len());
            for l in &m.launches {
                let f = module.load_function(&l.kernel).map_err(driver)?;
                let params = l
                    .params
                    .iter()
                    .map(|b| {
                        slot.get(b).copied().ok_or_else(|| {
                            CudaError::Driver(format!("kernel {} takes unknown b{}", l.kernel, b.0))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let cfg = LaunchConfig {
                    grid_dim: (l.grid, 1, 1),
                    block_dim: (l.block, 1, 1),
                    shared_mem_bytes: 0,
                };
                kernels.push((f, cfg, params));
            }
            let lens: Vec<usize> = m.buffers.iter().map(|b| b.len.max(1)).collect();
            let bufs = match m.dtype {
                DType::F32 => Buffers::F32(alloc(&stream, &lens)?),
                DType::F64 => Buffers::F64(alloc(&stream, &lens)?),
            };
            Ok(CudaProgram {
                stream,
                ctx,
                kernels,
                layout: m
                    .buffers
                    .iter()
                    .map(|b| (b.kind.clone(), b.len, b.shape.clone()))
                    .collect(),
                bufs: Mutex::new(bufs),
                dtype: m.dtype,
                last_kernel_ms: Mutex::new(None),
                compile_time: start.elapsed(),
            })
        })
    }

    /// Runs the program on `inputs` (by name; each with exactly its buffer's number of
    /// elements, in the program's element type, checked first: [`InputError`]) and returns the
    /// outputs by name, shaped like their buffers.
    pub fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, CudaError> {
        let expected = self
            .layout
            .iter()
            .filter_map(|(kind, len, shape)| match kind {
                BufferKind::Input(name) => Some(ExpectedInput {
                    name,
                    len: *len,
                    shape,
                }),
                _ => None,
            });
        check_inputs(inputs, self.dtype, expected)?;
        guarded(|| {
            let mut bufs = self
                .bufs
                .lock()
                .map_err(|_| CudaError::Driver("a previous run panicked".into()))?;
            let raw = match &mut *bufs {
                Buffers::F32(b) => self.run_typed(b, inputs, Tensor::as_f32)?,
                Buffers::F64(b) => self.run_typed(b, inputs, Tensor::as_f64)?,
            };
            let mut out = BTreeMap::new();
            for (name, shape, data) in raw {
                let t = match data {
                    Data::F32(v) => Tensor::from_f32(shape, v),
                    Data::F64(v) => Tensor::from_f64(shape, v),
                }
                .map_err(|e| CudaError::Driver(e.to_string()))?;
                out.insert(name, t);
            }
            Ok(out)
        })
    }

    /// Milliseconds the kernels of the last [`run`](Self::run) took on the device (CUDA events
    /// around the launches, copies excluded).
    pub fn last_kernel_ms(&self) -> Option<f64> {
        self.last_kernel_ms.lock().ok().and_then(|g| *g)
    }

    fn run_typed<T: DeviceRepr + Element>(
        &self,
        bufs: &mut [CudaSlice<T>],
        inputs: &BTreeMap<String, Tensor>,
        host: impl for<'t> Fn(&'t Tensor) -> Option<&'t [T]>,
    ) -> Result<Vec<(String, Vec<usize>, Data)>, CudaError> {
        let s = &self.stream;
        for ((kind, len, _), buf) in self.layout.iter().zip(bufs.iter_mut()) {
            match kind {
                BufferKind::Input(name) => {
                    // Checked by `run`: present, of this type and size.
                    let data = inputs
                        .get(name)
                        .and_then(&host)
                        .filter(|d| d.len() == *len)
                        .ok_or_else(|| {
                            CudaError::Driver(format!(
                                "input {name:?} does not fit after its check"
                            ))
                        })?;
                    if !data.is_empty() {
                        s.memcpy_htod(data, buf).map_err(driver)?;
                    }
                }
                _ => {
                    let bytes = len * std::mem::size_of::<T>();
                    let (ptr, _sync) = buf.device_ptr_mut(s);
                    // SAFETY: `ptr` is this buffer's allocation of at least `bytes` bytes.
                    unsafe {
                        cudarc::driver::result::memset_d8_async(ptr, 0xff, bytes, s.cu_stream())
                    }
                    .map_err(driver)?;
                }
            }
        }
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(timing).map_err(driver)?;
        let end = self.ctx.new_event(timing).map_err(driver)?;
        start.record(s).map_err(driver)?;
        for (f, cfg, params) in &self.kernels {
            let mut args = s.launch_builder(f);
            let mut ptrs: Vec<u64> = Vec::with_capacity(params.len());
            for &i in params {
                let buf = bufs
                    .get_mut(i)
                    .ok_or_else(|| CudaError::Driver(format!("no buffer {i}")))?;
                let (ptr, _sync) = buf.device_ptr_mut(s);
                ptrs.push(ptr);
            }
            for p in &ptrs {
                args.arg(p);
            }
            // SAFETY: the kernel was generated for exactly these parameters (global buffers in
            // this order, each with its buffer's length) and proven in bounds.
            unsafe { args.launch(*cfg) }.map_err(driver)?;
        }
        end.record(s).map_err(driver)?;
        s.synchronize().map_err(driver)?;
        let ms = start.elapsed_ms(&end).map_err(driver)?;
        if let Ok(mut g) = self.last_kernel_ms.lock() {
            *g = Some(f64::from(ms));
        }
        let mut out = Vec::new();
        for ((kind, len, shape), buf) in self.layout.iter().zip(bufs.iter()) {
            if let BufferKind::Output(name) = kind {
                let mut v = s.clone_dtoh(buf).map_err(driver)?;
                v.truncate(*len);
                out.push((name.clone(), shape.clone(), T::wrap(v)));
            }
        }
        Ok(out)
    }
}

impl CompiledProgram for CudaProgram {
    fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, BackendError> {
        Ok(CudaProgram::run(self, inputs)?)
    }

    fn compile_time(&self) -> Duration {
        self.compile_time
    }

    fn last_device_ms(&self) -> Option<f64> {
        self.last_kernel_ms()
    }
}

/// The CUDA backend as a [`Backend`]: a GPU-mapped kernel program (`tttc_passes::gpu_schedule`)
/// to PTX for one device's architecture ([`super::emit_ptx_with`]), loaded on it
/// ([`CudaProgram::load`]).
#[derive(Clone, Copy, Debug)]
pub struct Cuda {
    arch: PtxArch,
    threads: u32,
    options: PtxOptions,
}

impl Cuda {
    /// The backend for the first device ([`device`]), with `threads` threads per block and
    /// code-generation `options`. Without a driver: [`CudaError::NoDriver`].
    pub fn first_device(threads: u32, options: PtxOptions) -> Result<Cuda, CudaError> {
        let (_, arch) = device()?;
        Ok(Cuda {
            arch,
            threads,
            options,
        })
    }
}

impl Backend for Cuda {
    type Compiled = CudaProgram;

    fn name(&self) -> &'static str {
        "ptx"
    }

    fn compile(&self, p: &tttc_ir::kernel::KernelProgram) -> Result<CudaProgram, BackendError> {
        let start = Instant::now();
        let m = super::emit_ptx_with(p, self.threads, self.arch, self.options)?;
        let mut program = CudaProgram::load(&m)?;
        program.compile_time = start.elapsed();
        Ok(program)
    }
}

/// Host data of an output.
enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

trait Element: Sized {
    fn wrap(v: Vec<Self>) -> Data;
}

impl Element for f32 {
    fn wrap(v: Vec<Self>) -> Data {
        Data::F32(v)
    }
}

impl Element for f64 {
    fn wrap(v: Vec<Self>) -> Data {
        Data::F64(v)
    }
}

fn alloc<T: DeviceRepr>(
    s: &Arc<CudaStream>,
    lens: &[usize],
) -> Result<Vec<CudaSlice<T>>, CudaError> {
    lens.iter()
        .map(|&n| {
            // SAFETY: every buffer is written (inputs copied, the rest memset) before a kernel
            // reads it.
            unsafe { s.alloc::<T>(n) }.map_err(driver)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_loading_is_a_clean_error() {
        if driver_present() {
            eprintln!("a CUDA driver is present: nothing to check here");
            return;
        }
        let m = PtxModule {
            arch: super::super::PtxArch::Sm80,
            dtype: DType::F32,
            text: String::new(),
            launches: Vec::new(),
            buffers: Vec::new(),
            shared_bytes: 0,
            tensor_cores: None,
            tensor_core_loops: 0,
        };
        let e = CudaProgram::load(&m).expect_err("no driver here");
        assert!(matches!(e, CudaError::NoDriver));
        assert!(e.to_string().contains("no CUDA driver found"));
    }
}
