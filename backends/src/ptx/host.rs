//! The PTX backend's kernels run on the CPU, to test the generated code without a GPU.
//!
//! [`run_on_host`] builds the host flavor of every kernel (the very generator that emits PTX,
//! with the thread and block indices as parameters and `bar.sync` as a call, see
//! [`codegen`](super::codegen)), JIT-compiles it for the host, and runs each launch block by
//! block, each block as `threads` OS threads meeting at a real barrier
//! ([`std::sync::Barrier`]), with the block's shared buffers allocated per block. So the
//! loops, guards, strides, index arithmetic, shared-memory placement and the device math
//! library are exercised for real, threads included; what is not is the NVPTX back end itself
//! (instruction selection, PTX), which `ptxas` checks for syntax and a GPU for meaning.
//!
//! Global temporaries and outputs start as NaN, shared buffers too (per block), like the
//! kernel executor.

use super::codegen::{self, Flavor, HOST_BARRIER};
use super::PtxError;
use inkwell::context::Context;
use inkwell::module::Linkage;
use inkwell::targets::{InitializationConfig, Target};
use inkwell::OptimizationLevel;
use std::collections::BTreeMap;
use std::sync::Barrier;
use tttc_ir::kernel::{BufferKind, KernelProgram, MemorySpace};
use tttc_ir::DType;
use tttc_runtime::Tensor;

/// `tttc_host_barrier(ctx)`: waits at the block's barrier.
extern "C" fn host_barrier(ctx: *const u8) {
    // SAFETY: the runner passes a pointer to a `Barrier` that outlives every thread of the
    // block (they are scoped threads joined before it is dropped).
    let b = unsafe { &*(ctx as *const Barrier) };
    b.wait();
}

type HostKernel = unsafe extern "C" fn(*const *mut u8, *const *mut u8, i64, i64, *const u8);

/// A pointer that may cross into the scoped threads of one block.
#[derive(Clone, Copy)]
struct SendPtr(*const *mut u8);
// SAFETY: the pointed-to arrays live until every thread of the block has been joined; the
// kernels' accesses through them are race-free by the GPU mapping (checked by the emulator).
unsafe impl Send for SendPtr {}

/// Runs the GPU-scheduled `p` with `threads` threads per block on the CPU (see the module
/// documentation) and returns its outputs by name.
pub fn run_on_host(
    p: &KernelProgram,
    threads: u32,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, PtxError> {
    let analysis = super::check(p, threads)?;
    Target::initialize_native(&InitializationConfig::default()).map_err(PtxError::Llvm)?;
    let ctx = Context::create();
    let module = ctx.create_module("tttc.host");
    let launches = codegen::build(
        &ctx,
        &module,
        p,
        &analysis.lens,
        threads,
        "host",
        Flavor::Host,
        None,
    )?;
    module
        .verify()
        .map_err(|e| PtxError::Internal(format!("host module does not verify: {e}")))?;
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Less)
        .map_err(|e| PtxError::Llvm(format!("creating the JIT: {e}")))?;
    if let Some(f) = module.get_function(HOST_BARRIER) {
        f.set_linkage(Linkage::External);
        engine.add_global_mapping(&f, host_barrier as *const () as usize);
    }
    let mut kernels = Vec::with_capacity(launches.len());
    for l in &launches {
        let addr = engine
            .get_function_address(&l.name)
            .map_err(|e| PtxError::Llvm(format!("finding {}: {e}", l.name)))?;
        // SAFETY: the host flavor defines every kernel with exactly this signature.
        kernels.push(unsafe { std::mem::transmute::<usize, HostKernel>(addr) });
    }

    let elem = p.dtype.size_bytes();
    let nan = |len: usize| -> Vec<u8> { vec![0xff; len.max(1) * elem] };
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(p.buffers.len());
    for (b, &len) in p.buffers.iter().zip(&analysis.lens) {
        let len = len as usize;
        let data = match (&b.kind, b.space) {
            (BufferKind::Input(name), _) => {
                let t = inputs
                    .get(name)
                    .ok_or_else(|| PtxError::Invalid(format!("missing input `{name}`")))?;
                let bytes: Vec<u8> = match p.dtype {
                    DType::F32 => t
                        .as_f32()
                        .map(|d| d.iter().flat_map(|x| x.to_ne_bytes()).collect()),
                    DType::F64 => t
                        .as_f64()
                        .map(|d| d.iter().flat_map(|x| x.to_ne_bytes()).collect()),
                }
                .filter(|v: &Vec<u8>| v.len() == len * elem)
                .ok_or_else(|| {
                    PtxError::Invalid(format!("input `{name}`: wrong element type or size"))
                })?;
                bytes
            }
            (_, MemorySpace::Global) => nan(len),
            _ => Vec::new(), // shared and local: per block / per thread
        };
        bufs.push(data);
    }

    for (l, k) in launches.iter().zip(&kernels) {
        let globals: Vec<*mut u8> = l
            .params
            .iter()
            .map(|b| bufs[b.0 as usize].as_mut_ptr())
            .collect();
        for block in 0..l.grid {
            let mut shared: Vec<Vec<u8>> = l
                .shared
                .iter()
                .map(|b| nan(analysis.lens[b.0 as usize] as usize))
                .collect();
            let shared_ptrs: Vec<*mut u8> = shared.iter_mut().map(|v| v.as_mut_ptr()).collect();
            let barrier = Barrier::new(threads as usize);
            let (g, s) = (SendPtr(globals.as_ptr()), SendPtr(shared_ptrs.as_ptr()));
            let bar = &barrier as *const Barrier as usize;
            let k = *k;
            std::thread::scope(|scope| {
                for tid in 0..threads {
                    scope.spawn(move || {
                        let (g, s) = (g, s);
                        // SAFETY: the kernel was generated for these arrays (one pointer per
                        // global / shared buffer it uses, each of its buffer's size, proven in
                        // bounds) and this block size; the barrier outlives the scope.
                        unsafe { k(g.0, s.0, i64::from(tid), block as i64, bar as *const u8) };
                    });
                }
            });
            drop(shared);
        }
    }

    let mut out = BTreeMap::new();
    for (b, data) in p.buffers.iter().zip(bufs) {
        if let BufferKind::Output(name) = &b.kind {
            let shape = b.layout.shape.clone();
            let t = match p.dtype {
                DType::F32 => Tensor::from_f32(
                    shape,
                    data.chunks_exact(4)
                        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<f32>>(),
                ),
                DType::F64 => Tensor::from_f64(
                    shape,
                    data.chunks_exact(8)
                        .map(|c| {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(c);
                            f64::from_ne_bytes(a)
                        })
                        .collect::<Vec<f64>>(),
                ),
            }
            .map_err(|e| PtxError::Internal(e.to_string()))?;
            out.insert(name.clone(), t);
        }
    }
    Ok(out)
}
