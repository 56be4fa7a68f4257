//! GPU-scheduled kernel IR to LLVM IR for NVPTX.
//!
//! One kernel function per launch (top-level `GpuBlock` loop), `void <name>_k<i>(T
//! addrspace(1)* noalias ...)` taking the global buffers the launch uses in buffer order; the
//! block variable is `%ctaid.x`. Inside:
//!
//! - a `GpuThread` loop of extent `n` runs `for (i = %tid.x; i < n; i += threads)` (a plain
//!   `if (%tid.x < n)` when `n <= threads`);
//! - every other loop is an ordinary counted loop, run by every thread in step;
//! - [`Stmt::Barrier`] is `llvm.nvvm.barrier0` (`bar.sync 0`);
//! - `Shared` buffers are module-level arrays in address space 3, `Local` ones per-thread
//!   allocas, `Global` ones the kernel's parameters (address space 1);
//! - expressions are lowered by [`crate::llvm_expr`], the very code the CPU backend uses, so
//!   scalar semantics are the CPU's (NaN-propagating `max`/`min`, `relu`, `step`, composites
//!   expanded by [`tttc_ir::composite`], only the `contract` fast-math flag); `sqrt` and
//!   division are IEEE (`sqrt.rn`, `div.rn`); the math library differs: `exp`, `log`, `sin`,
//!   `cos`, `tanh`, `pow` come from [`super::math`], computed in f64.
//!
//! Unlike the CPU backends, scratch buffers are not filled with NaN when they become fresh:
//! reading before writing is the GPU emulator's job to catch.
//!
//! The same generator has a host flavor ([`Flavor::Host`], for testing the generated code
//! without a GPU, see [`super::host`]): every kernel becomes `void <name>(T** globals, T**
//! shared, i64 tid, i64 ctaid, i8* barrier)` in address space 0, the thread and block indices
//! are parameters, shared buffers are passed in, and a barrier calls
//! `tttc_host_barrier(barrier)`. Everything else — loops, guards, indices, arithmetic, the math
//! library — is the very code the NVPTX flavor emits.

mod mma;

use super::math::DeviceMath;
use super::PtxError;
use crate::llvm_expr::{ExprError, Lowering, Scope};
use crate::tensor_core::{recognize, TensorCores};
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::basic_block::BasicBlock;
use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{
    BasicMetadataValueEnum, BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue,
};
use inkwell::{AddressSpace, IntPredicate};
use std::cell::Cell;
use std::collections::HashMap;
use tttc_ir::kernel::{BufId, Index, KernelProgram, MemorySpace, Schedule, Stmt, Value, VarId};
use tttc_ir::DType;

/// The `ptx_kernel` calling convention.
const PTX_KERNEL_CC: u32 = 71;

impl From<BuilderError> for PtxError {
    fn from(e: BuilderError) -> Self {
        PtxError::Llvm(format!("IR builder: {e}"))
    }
}

impl From<ExprError> for PtxError {
    fn from(e: ExprError) -> Self {
        match e {
            ExprError::Builder(e) => e.into(),
            ExprError::Internal(m) => PtxError::Internal(m),
        }
    }
}

fn internal<T>(m: impl Into<String>) -> Result<T, PtxError> {
    Err(PtxError::Internal(m.into()))
}

/// Which machine the kernels are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// NVPTX kernels (the real thing).
    Nvptx,
    /// Host functions with the same bodies (for testing; see the module documentation).
    Host,
}

/// The host function a barrier calls in the host flavor.
pub(crate) const HOST_BARRIER: &str = "tttc_host_barrier";
/// Host flavor: `i32 tttc_host_tf32(float)`, `cvt.rna.tf32.f32`.
pub(crate) const HOST_TF32: &str = "tttc_host_tf32";
/// Host flavor: `i32 tttc_host_bf16x2(float hi, float lo)`, `cvt.rn.bf16x2.f32`.
pub(crate) const HOST_BF16X2: &str = "tttc_host_bf16x2";
/// Host flavor: `void tttc_host_mma(ptr ctx, i64 tid, i64 format, ptr regs)`: one lane's part of
/// an `mma.sync`; `regs` holds `a` (4 × i32), `b` (2 × i32), `c` (4 × f32), and gets `d` in
/// place of `c`. The format is [`mma_format`]'s.
pub(crate) const HOST_MMA: &str = "tttc_host_mma";

/// The format argument of [`HOST_MMA`] for `tc`.
pub(crate) fn mma_format(tc: TensorCores) -> u64 {
    match tc {
        TensorCores::Tf32 => 0,
        TensorCores::Bf16 => 1,
    }
}

/// A launch as generated: its kernel's name and the buffers it takes.
pub(crate) struct GenLaunch {
    pub name: String,
    pub grid: usize,
    pub params: Vec<BufId>,
    /// The shared buffers it uses (host flavor: passed in, in this order).
    pub shared: Vec<BufId>,
    /// How many of its loops run on tensor cores.
    pub mma_loops: usize,
}

/// Builds every launch of `p` into `module`; with `tensor_cores`, the matmul loops
/// [`recognize`] accepts run as warp-level `mma` (see [`mma`]; in the host flavor the `mma` and
/// the operand conversions are calls into the host runner, which exchanges the fragments of a
/// warp's lanes like the hardware).
#[allow(clippy::too_many_arguments)]
pub(crate) fn build<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    p: &KernelProgram,
    lens: &[u64],
    threads: u32,
    prefix: &str,
    flavor: Flavor,
    tensor_cores: Option<TensorCores>,
) -> Result<Vec<GenLaunch>, PtxError> {
    if tensor_cores.is_some() && p.dtype != DType::F32 {
        return internal("tensor cores need an f32 program");
    }
    let g = Gen {
        ctx,
        module,
        p,
        lens,
        lower: Lowering::new(ctx, module, p.dtype, &DeviceMath),
        threads: u64::from(threads),
        shared: HashMap::new(),
        flavor,
        tensor_cores,
        mma_loops: Cell::new(0),
    };
    g.launches(prefix)
}

struct Gen<'a, 'ctx> {
    ctx: &'ctx Context,
    module: &'a Module<'ctx>,
    p: &'a KernelProgram,
    lens: &'a [u64],
    /// Expressions, element type, `i64`.
    lower: Lowering<'a, 'ctx>,
    threads: u64,
    shared: HashMap<BufId, PointerValue<'ctx>>,
    flavor: Flavor,
    /// Run recognized matmul loops on tensor cores in this format.
    tensor_cores: Option<TensorCores>,
    /// Loops emitted with tensor cores in the current kernel.
    mma_loops: Cell<usize>,
}

/// The kernel function being generated: where the builders are and what is in scope.
struct KernelFn<'ctx> {
    func: FunctionValue<'ctx>,
    b: Builder<'ctx>,
    /// Builder at the end of the entry block's allocas.
    entry: Builder<'ctx>,
    /// Where the code starts (the entry block branches here when the kernel is finished).
    start: BasicBlock<'ctx>,
    bufs: HashMap<BufId, PointerValue<'ctx>>,
    vars: Vec<(VarId, IntValue<'ctx>)>,
    tid: IntValue<'ctx>,
    /// The host flavor's barrier context.
    barrier: Option<PointerValue<'ctx>>,
}

fn global_space() -> AddressSpace {
    AddressSpace::from(1u16)
}

fn shared_space() -> AddressSpace {
    AddressSpace::from(3u16)
}

impl<'ctx> Gen<'_, 'ctx> {
    fn launches(mut self, prefix: &str) -> Result<Vec<GenLaunch>, PtxError> {
        let p = self.p;
        let mut out = Vec::new();
        for (k, s) in p.body.iter().enumerate() {
            let Stmt::Loop {
                var,
                extent,
                schedule: Schedule::GpuBlock,
                body,
            } = s
            else {
                return internal("a top-level statement is not a GpuBlock loop");
            };
            if *extent == 0 {
                continue;
            }
            let name = format!("{prefix}_k{k}");
            let params: Vec<BufId> = crate::bounds::buffers_used(body)
                .into_iter()
                .filter(|b| self.p.buffer(*b).map(|x| x.space) == Some(MemorySpace::Global))
                .collect();
            let shared: Vec<BufId> = crate::bounds::buffers_used(body)
                .into_iter()
                .filter(|b| self.p.buffer(*b).map(|x| x.space) == Some(MemorySpace::Shared))
                .collect();
            match self.flavor {
                Flavor::Nvptx => self.kernel(&name, *var, &params, body)?,
                Flavor::Host => self.host_kernel(&name, *var, &params, &shared, body)?,
            }
            out.push(GenLaunch {
                name,
                grid: *extent,
                params,
                shared,
                mma_loops: self.mma_loops.replace(0),
            });
        }
        Ok(out)
    }

    fn kernel(
        &mut self,
        name: &str,
        block_var: VarId,
        params: &[BufId],
        body: &[Stmt],
    ) -> Result<(), PtxError> {
        let gptr = self.ctx.ptr_type(global_space());
        let tys: Vec<BasicMetadataTypeEnum> = params.iter().map(|_| gptr.into()).collect();
        let func = self.module.add_function(
            name,
            self.ctx.void_type().fn_type(&tys, false),
            Some(Linkage::External),
        );
        func.set_call_conventions(PTX_KERNEL_CC);
        let attr = |n: &str| Attribute::get_named_enum_kind_id(n);
        for i in 0..params.len() {
            for a in ["noalias", "nocapture"] {
                let id = attr(a);
                if id != 0 {
                    func.add_attribute(
                        AttributeLoc::Param(i as u32),
                        self.ctx.create_enum_attribute(id, 0),
                    );
                }
            }
        }
        let nounwind = attr("nounwind");
        if nounwind != 0 {
            func.add_attribute(
                AttributeLoc::Function,
                self.ctx.create_enum_attribute(nounwind, 0),
            );
        }
        self.annotate(func)?;

        let mut f = KernelFn::open(self.ctx, func, block_var, None, |b| {
            let ctaid = self.sreg(b, "llvm.nvvm.read.ptx.sreg.ctaid.x")?;
            let tid = self.sreg(b, "llvm.nvvm.read.ptx.sreg.tid.x")?;
            Ok((ctaid, tid))
        })?;
        for (i, id) in params.iter().enumerate() {
            let Some(BasicValueEnum::PointerValue(ptr)) = func.get_nth_param(i as u32) else {
                return internal("missing kernel parameter");
            };
            f.bufs.insert(*id, ptr);
        }
        for id in crate::bounds::buffers_used(body) {
            if self.p.buffer(id).map(|b| b.space) == Some(MemorySpace::Shared) {
                let ptr = self.shared_buffer(id)?;
                f.bufs.insert(id, ptr);
            }
        }
        self.close(&mut f, body)
    }

    /// The host flavor of a kernel: `void name(T** globals, T** shared, i64 tid, i64 ctaid,
    /// i8* barrier)`.
    fn host_kernel(
        &mut self,
        name: &str,
        block_var: VarId,
        params: &[BufId],
        shared: &[BufId],
        body: &[Stmt],
    ) -> Result<(), PtxError> {
        let ptr = self.ctx.ptr_type(AddressSpace::default());
        let func = self.module.add_function(
            name,
            self.ctx.void_type().fn_type(
                &[
                    ptr.into(),
                    ptr.into(),
                    self.lower.i64t.into(),
                    self.lower.i64t.into(),
                    ptr.into(),
                ],
                false,
            ),
            Some(Linkage::External),
        );
        let param = |i: u32| {
            func.get_nth_param(i)
                .ok_or_else(|| PtxError::Internal("missing host kernel parameter".into()))
        };
        let (globals, shared_arr) = (
            param(0)?.into_pointer_value(),
            param(1)?.into_pointer_value(),
        );
        let (tid, ctaid) = (param(2)?.into_int_value(), param(3)?.into_int_value());
        let barrier = param(4)?.into_pointer_value();
        let mut f = KernelFn::open(self.ctx, func, block_var, Some(barrier), |_| {
            Ok((ctaid, tid))
        })?;
        for (arr, ids) in [(globals, params), (shared_arr, shared)] {
            for (i, id) in ids.iter().enumerate() {
                // SAFETY: the runner passes arrays with one pointer per buffer, in this order.
                let slot = unsafe {
                    f.entry.build_in_bounds_gep(
                        ptr,
                        arr,
                        &[self.lower.i64t.const_int(i as u64, false)],
                        "slot",
                    )?
                };
                let p = f.entry.build_load(ptr, slot, "buf")?.into_pointer_value();
                f.bufs.insert(*id, p);
            }
        }
        self.close(&mut f, body)
    }

    /// Gives each `Local` buffer of `body` a per-thread alloca, emits `body` into `f` and
    /// returns.
    fn close(&self, f: &mut KernelFn<'ctx>, body: &[Stmt]) -> Result<(), PtxError> {
        for id in crate::bounds::buffers_used(body) {
            if self.p.buffer(id).map(|b| b.space) == Some(MemorySpace::Local) {
                let len = self.len(id)?;
                let p = f.entry.build_array_alloca(
                    self.lower.ft,
                    self.lower.i64t.const_int(len, false),
                    "local",
                )?;
                f.bufs.insert(id, p);
            }
        }
        self.stmts(f, body)?;
        f.b.build_return(None)?;
        f.entry.build_unconditional_branch(f.start)?;
        Ok(())
    }

    /// `!nvvm.annotations`: the function is a kernel with at most `threads` threads per block.
    fn annotate(&self, func: FunctionValue<'ctx>) -> Result<(), PtxError> {
        let i32t = self.ctx.i32_type();
        let fp: BasicMetadataValueEnum = func.as_global_value().as_pointer_value().into();
        for (key, value) in [("kernel", 1u64), ("maxntidx", self.threads)] {
            let node = self.ctx.metadata_node(&[
                fp,
                self.ctx.metadata_string(key).into(),
                i32t.const_int(value, false).into(),
            ]);
            self.module
                .add_global_metadata("nvvm.annotations", &node)
                .map_err(|e| PtxError::Llvm(format!("annotation: {e}")))?;
        }
        Ok(())
    }

    fn sreg(&self, b: &Builder<'ctx>, name: &str) -> Result<IntValue<'ctx>, PtxError> {
        let Some(i) = Intrinsic::find(name) else {
            return internal(format!("no intrinsic {name}"));
        };
        let Some(f) = i.get_declaration(self.module, &[]) else {
            return internal(format!("cannot declare {name}"));
        };
        let v = b.build_call(f, &[], "sreg")?;
        let Some(BasicValueEnum::IntValue(x)) = v.try_as_basic_value().basic() else {
            return internal(format!("{name} returned no integer"));
        };
        Ok(b.build_int_z_extend(x, self.lower.i64t, "sreg64")?)
    }

    fn len(&self, id: BufId) -> Result<u64, PtxError> {
        match self.lens.get(id.0 as usize) {
            Some(&n) => Ok(n),
            None => internal(format!("no length for b{}", id.0)),
        }
    }

    fn shared_buffer(&mut self, id: BufId) -> Result<PointerValue<'ctx>, PtxError> {
        if let Some(p) = self.shared.get(&id) {
            return Ok(*p);
        }
        let len = u32::try_from(self.len(id)?)
            .map_err(|_| PtxError::Invalid(format!("shared buffer b{} is too large", id.0)))?;
        let ty = self.lower.ft.array_type(len.max(1));
        let g = self
            .module
            .add_global(ty, Some(shared_space()), &format!("shared_b{}", id.0));
        g.set_linkage(Linkage::Internal);
        g.set_initializer(&ty.get_undef());
        g.set_alignment(16);
        let ptr = g.as_pointer_value();
        self.shared.insert(id, ptr);
        Ok(ptr)
    }

    fn stmts(&self, f: &mut KernelFn<'ctx>, body: &[Stmt]) -> Result<(), PtxError> {
        for s in body {
            match s {
                Stmt::Store { buf, index, value } => {
                    let v = self.value(f, value)?;
                    let ptr = self.element(f, *buf, index)?;
                    f.b.build_store(ptr, v)?;
                }
                Stmt::Barrier => self.barrier(f)?,
                // The GPU mapping expands gemms into loops; none reaches here.
                Stmt::Gemm(_) => return internal("a gemm in a GPU-scheduled program"),
                Stmt::Call { .. } => {
                    return Err(PtxError::Invalid(
                        "a call (gpu_schedule inlines kernel functions)".into(),
                    ))
                }
                Stmt::Loop { extent: 0, .. } => {}
                Stmt::Loop {
                    schedule: Schedule::GpuThread,
                    ..
                } if self.tensor_core_loop(f, s)? => {}
                Stmt::Loop {
                    var,
                    extent,
                    schedule: Schedule::GpuThread,
                    body,
                } => {
                    let n = self.lower.i64t.const_int(*extent as u64, false);
                    if *extent as u64 <= self.threads {
                        let then_bb = self.ctx.append_basic_block(f.func, "thread");
                        let done_bb = self.ctx.append_basic_block(f.func, "thread.done");
                        let live = f.b.build_int_compare(IntPredicate::ULT, f.tid, n, "live")?;
                        f.b.build_conditional_branch(live, then_bb, done_bb)?;
                        f.b.position_at_end(then_bb);
                        f.vars.push((*var, f.tid));
                        self.stmts(f, body)?;
                        f.vars.pop();
                        f.b.build_unconditional_branch(done_bb)?;
                        f.b.position_at_end(done_bb);
                    } else {
                        let step = self.lower.i64t.const_int(self.threads, false);
                        self.counted(f, *var, f.tid, n, step, body)?;
                    }
                }
                Stmt::Loop {
                    var, extent, body, ..
                } => {
                    let zero = self.lower.i64t.const_int(0, false);
                    let n = self.lower.i64t.const_int(*extent as u64, false);
                    let one = self.lower.i64t.const_int(1, false);
                    self.counted(f, *var, zero, n, one, body)?;
                }
            }
        }
        Ok(())
    }

    /// `bar.sync 0` (host flavor: a call to [`HOST_BARRIER`] with the block's context).
    fn barrier(&self, f: &KernelFn<'ctx>) -> Result<(), PtxError> {
        if let Some(ctx) = f.barrier {
            let ptr = self.ctx.ptr_type(AddressSpace::default());
            let bar = match self.module.get_function(HOST_BARRIER) {
                Some(b) => b,
                None => self.module.add_function(
                    HOST_BARRIER,
                    self.ctx.void_type().fn_type(&[ptr.into()], false),
                    Some(Linkage::External),
                ),
            };
            f.b.build_call(bar, &[ctx.into()], "")?;
            return Ok(());
        }
        let Some(i) = Intrinsic::find("llvm.nvvm.barrier0") else {
            return internal("no llvm.nvvm.barrier0");
        };
        let Some(bar) = i.get_declaration(self.module, &[]) else {
            return internal("cannot declare llvm.nvvm.barrier0");
        };
        f.b.build_call(bar, &[], "")?;
        Ok(())
    }

    /// Emits `s` on tensor cores when they are enabled and it is a matmul loop they tile;
    /// returns whether it did.
    ///
    /// On tensor cores an output element belongs to a different thread than the mapping gave
    /// it, and the mapping omits barriers between thread loops that give each element to the
    /// same thread (a matmul's zeroing and accumulation): so the loop is fenced by a barrier on
    /// each side. Legal: a thread loop is a collective statement, reached by every thread of
    /// the block.
    fn tensor_core_loop(&self, f: &mut KernelFn<'ctx>, s: &Stmt) -> Result<bool, PtxError> {
        let Some(tc) = self.tensor_cores else {
            return Ok(false);
        };
        let Some(m) = recognize(s, tc) else {
            return Ok(false);
        };
        self.barrier(f)?;
        self.mma_loop(f, &m, tc)?;
        self.barrier(f)?;
        self.mma_loops.set(self.mma_loops.get() + 1);
        Ok(true)
    }

    /// `for (var = from; var < to; var += step) body`, guarded for `from >= to`.
    fn counted(
        &self,
        f: &mut KernelFn<'ctx>,
        var: VarId,
        from: IntValue<'ctx>,
        to: IntValue<'ctx>,
        step: IntValue<'ctx>,
        body: &[Stmt],
    ) -> Result<(), PtxError> {
        let pre: BasicBlock<'ctx> = match f.b.get_insert_block() {
            Some(bb) => bb,
            None => return internal("no insert block"),
        };
        let header = self.ctx.append_basic_block(f.func, "loop");
        let exit = self.ctx.append_basic_block(f.func, "loop.exit");
        let enter =
            f.b.build_int_compare(IntPredicate::ULT, from, to, "enter")?;
        f.b.build_conditional_branch(enter, header, exit)?;
        f.b.position_at_end(header);
        let phi = f.b.build_phi(self.lower.i64t, "i")?;
        let i = phi.as_basic_value().into_int_value();
        f.vars.push((var, i));
        self.stmts(f, body)?;
        f.vars.pop();
        let next = f.b.build_int_nuw_add(i, step, "next")?;
        let more = f.b.build_int_compare(IntPredicate::ULT, next, to, "more")?;
        let latch = match f.b.get_insert_block() {
            Some(bb) => bb,
            None => return internal("no insert block"),
        };
        f.b.build_conditional_branch(more, header, exit)?;
        phi.add_incoming(&[(&from, pre), (&next, latch)]);
        f.b.position_at_end(exit);
        Ok(())
    }

    /// `v` at the position of `f` (the shared lowering, [`crate::llvm_expr`]).
    fn value(&self, f: &KernelFn<'ctx>, v: &Value) -> Result<FloatValue<'ctx>, PtxError> {
        Ok(self.lower.value(&f.scope(), v)?)
    }

    /// The address of `buf[index]` at the position of `f`.
    fn element(
        &self,
        f: &KernelFn<'ctx>,
        buf: BufId,
        index: &Index,
    ) -> Result<PointerValue<'ctx>, PtxError> {
        Ok(self.lower.element(&f.scope(), buf, index)?)
    }
}

impl<'ctx> KernelFn<'ctx> {
    /// The state of kernel `func`: an `entry` block for allocas and a `start` block for the
    /// code; `indices` gives the block and thread index (built at `start`), the block index
    /// bound to `block_var`.
    fn open(
        ctx: &'ctx Context,
        func: FunctionValue<'ctx>,
        block_var: VarId,
        barrier: Option<PointerValue<'ctx>>,
        indices: impl FnOnce(&Builder<'ctx>) -> Result<(IntValue<'ctx>, IntValue<'ctx>), PtxError>,
    ) -> Result<Self, PtxError> {
        let entry_bb = ctx.append_basic_block(func, "entry");
        let start = ctx.append_basic_block(func, "start");
        let entry = ctx.create_builder();
        entry.position_at_end(entry_bb);
        let b = ctx.create_builder();
        b.position_at_end(start);
        let (ctaid, tid) = indices(&b)?;
        Ok(KernelFn {
            func,
            b,
            entry,
            start,
            bufs: HashMap::new(),
            vars: vec![(block_var, ctaid)],
            tid,
            barrier,
        })
    }

    /// What expressions see here: the builder, the buffers and the loop variables.
    fn scope(&self) -> Scope<'_, 'ctx> {
        Scope {
            b: &self.b,
            bufs: &self.bufs,
            vars: &self.vars,
            on_access: None,
        }
    }
}
