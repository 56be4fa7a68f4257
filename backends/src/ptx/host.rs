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
//!
//! With tensor cores ([`run_on_host_with`]), the generated warp-level code runs too: each
//! `mma.sync` is a call in which the 32 lanes of a warp deposit their fragment registers, meet
//! at the warp's barrier, and each computes its part of the result from all the registers,
//! reading them by the PTX ISA's fragment layouts — written here as *where each matrix element
//! lives* (the inverse of the code generator's *what each lane holds*), so a layout mistake on
//! either side shows as wrong results. Products of rounded operands are exact and accumulate in
//! f32 in `k` order, as in the kernel executor's emulation of the opt-in.

use super::codegen::{self, Flavor, HOST_BARRIER, HOST_BF16X2, HOST_MMA, HOST_TF32};
use super::{PtxError, PtxOptions};
use crate::input::{check_inputs, ExpectedInput};
use crate::tensor_core::{round_bf16, round_tf32, TensorCores, TILE_M, TILE_N};
use inkwell::context::Context;
use inkwell::module::Linkage;
use inkwell::targets::{InitializationConfig, Target};
use inkwell::OptimizationLevel;
use std::collections::BTreeMap;
use std::sync::{Barrier, Mutex};
use tttc_ir::kernel::{BufferKind, KernelProgram, MemorySpace};
use tttc_ir::DType;
use tttc_runtime::{Tensor, TensorData};

/// One block's synchronization: its barrier, and per warp what an `mma` exchanges.
struct BlockCtx {
    barrier: Barrier,
    warps: Vec<Warp>,
}

/// A warp's `mma` exchange: every lane's 10 registers (see [`HOST_MMA`]), and the warp's
/// barrier.
struct Warp {
    barrier: Barrier,
    regs: Mutex<[[u32; 10]; 32]>,
}

impl BlockCtx {
    fn new(threads: u32) -> BlockCtx {
        let warps = if threads.is_multiple_of(32) {
            threads / 32
        } else {
            0
        };
        BlockCtx {
            barrier: Barrier::new(threads as usize),
            warps: (0..warps)
                .map(|_| Warp {
                    barrier: Barrier::new(32),
                    regs: Mutex::new([[0; 10]; 32]),
                })
                .collect(),
        }
    }
}

/// `tttc_host_barrier(ctx)`: waits at the block's barrier.
extern "C" fn host_barrier(ctx: *const u8) {
    // SAFETY: the runner passes a pointer to a `BlockCtx` that outlives every thread of the
    // block (they are scoped threads joined before it is dropped).
    let b = unsafe { &*(ctx as *const BlockCtx) };
    b.barrier.wait();
}

/// `tttc_host_tf32(x)`: `cvt.rna.tf32.f32`.
extern "C" fn host_tf32(x: f32) -> u32 {
    round_tf32(x).to_bits()
}

/// `tttc_host_bf16x2(hi, lo)`: `cvt.rn.bf16x2.f32` (`hi` in the upper half).
extern "C" fn host_bf16x2(hi: f32, lo: f32) -> u32 {
    (round_bf16(hi).to_bits() & 0xffff_0000) | (round_bf16(lo).to_bits() >> 16)
}

/// Element `(row, k)` of `A` of a warp's `mma`, from its lanes' registers, by the PTX ISA's layouts (m16n8k8 tf32; m16n8k16 bf16, two per register, the
/// lower `k` in the lower half).
fn fragment_a(regs: &[[u32; 10]; 32], tc: TensorCores, row: usize, k: usize) -> f32 {
    match tc {
        TensorCores::Tf32 => f32::from_bits(regs[(row % 8) * 4 + k % 4][row / 8 + 2 * (k / 4)]),
        TensorCores::Bf16 => {
            let r = regs[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)];
            f32::from_bits(((r >> (16 * (k % 2))) & 0xffff) << 16)
        }
    }
}

/// Element `(k, col)` of `B` (see [`fragment_a`]).
fn fragment_b(regs: &[[u32; 10]; 32], tc: TensorCores, k: usize, col: usize) -> f32 {
    match tc {
        TensorCores::Tf32 => f32::from_bits(regs[col * 4 + k % 4][4 + k / 4]),
        TensorCores::Bf16 => {
            let r = regs[col * 4 + (k % 8) / 2][4 + k / 8];
            f32::from_bits(((r >> (16 * (k % 2))) & 0xffff) << 16)
        }
    }
}

/// `tttc_host_mma(ctx, tid, format, regs)`: thread `tid`'s part of a warp's `mma.sync`.
extern "C" fn host_mma(ctx: *const u8, tid: i64, format: i64, regs: *mut u32) {
    // SAFETY: as for `host_barrier`; `regs` points to the calling lane's 10 registers.
    let b = unsafe { &*(ctx as *const BlockCtx) };
    let mine = unsafe { &mut *(regs as *mut [u32; 10]) };
    let tc = if format == codegen::mma_format(TensorCores::Tf32) as i64 {
        TensorCores::Tf32
    } else {
        TensorCores::Bf16
    };
    let (warp, lane) = ((tid / 32) as usize, (tid % 32) as usize);
    let Some(w) = b.warps.get(warp) else {
        return; // unreachable: the generator only emits mma for whole warps
    };
    if let Ok(mut all) = w.regs.lock() {
        all[lane] = *mine;
    }
    w.barrier.wait();
    if let Ok(all) = w.regs.lock() {
        // The accumulator: element (row, col) in lane (row % 8) * 4 + (col % 8) / 2, register
        // col % 2 + 2 * (row / 8).
        for row in 0..TILE_M {
            for col in 0..TILE_N {
                if (row % 8) * 4 + (col % 8) / 2 != lane {
                    continue;
                }
                let reg = 6 + col % 2 + 2 * (row / 8);
                let mut acc = f32::from_bits(all[lane][reg]);
                for k in 0..tc.tile_k() {
                    acc += fragment_a(&all, tc, row, k) * fragment_b(&all, tc, k, col);
                }
                mine[reg] = acc.to_bits();
            }
        }
    }
    w.barrier.wait();
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
    run_on_host_with(p, threads, inputs, PtxOptions::default())
}

/// [`run_on_host`] with code-generation options: with tensor cores, the warp-level `mma` code
/// the PTX would run (see the module documentation). Same refusals as
/// [`super::emit_ptx_with`].
pub fn run_on_host_with(
    p: &KernelProgram,
    threads: u32,
    inputs: &BTreeMap<String, Tensor>,
    options: PtxOptions,
) -> Result<BTreeMap<String, Tensor>, PtxError> {
    let analysis = super::check(p, threads)?;
    super::check_options(p, threads, options)?;
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
        options.tensor_cores,
    )?;
    module
        .verify()
        .map_err(|e| PtxError::Internal(format!("host module does not verify: {e}")))?;
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Less)
        .map_err(|e| PtxError::Llvm(format!("creating the JIT: {e}")))?;
    let host_fns: [(&str, usize); 4] = [
        (HOST_BARRIER, host_barrier as *const () as usize),
        (HOST_TF32, host_tf32 as *const () as usize),
        (HOST_BF16X2, host_bf16x2 as *const () as usize),
        (HOST_MMA, host_mma as *const () as usize),
    ];
    for (name, addr) in host_fns {
        if let Some(f) = module.get_function(name) {
            f.set_linkage(Linkage::External);
            engine.add_global_mapping(&f, addr);
        }
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
    let expected: Vec<ExpectedInput> = p
        .buffers
        .iter()
        .zip(&analysis.lens)
        .filter_map(|(b, &len)| match &b.kind {
            BufferKind::Input(name) => Some(ExpectedInput {
                name,
                len: len as usize,
                shape: &b.layout.shape,
            }),
            _ => None,
        })
        .collect();
    let mut given = check_inputs(inputs, p.dtype, expected.iter().copied())?.into_iter();
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(p.buffers.len());
    for (b, &len) in p.buffers.iter().zip(&analysis.lens) {
        let len = len as usize;
        let data = match (&b.kind, b.space) {
            (BufferKind::Input(_), _) => {
                let t = given
                    .next()
                    .ok_or_else(|| PtxError::Internal("fewer inputs than input buffers".into()))?;
                match t.data() {
                    TensorData::F32(d) => d.iter().flat_map(|x| x.to_ne_bytes()).collect(),
                    TensorData::F64(d) => d.iter().flat_map(|x| x.to_ne_bytes()).collect(),
                }
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
            let block_ctx = BlockCtx::new(threads);
            let (g, s) = (SendPtr(globals.as_ptr()), SendPtr(shared_ptrs.as_ptr()));
            let bar = &block_ctx as *const BlockCtx as usize;
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
