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
//! - scalar semantics follow the CPU backends (NaN-propagating `max`/`min`, `relu`, `step`,
//!   `rsqrt = 1 / sqrt`, `sigmoid = 1 / (1 + exp(-x))`, only the `contract` fast-math flag);
//!   `sqrt` and division are IEEE (`sqrt.rn`, `div.rn`); `exp`, `log`, `sin`, `cos`, `tanh`,
//!   `pow` come from [`super::math`], computed in f64.
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

use super::math::{self, MathFn};
use super::PtxError;
use crate::tensor_core::{recognize, TensorCores};
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::basic_block::BasicBlock;
use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicTypeEnum, FloatType, IntType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValueEnum, FastMathFlags, FloatValue, FunctionValue, IntValue,
    PointerValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};
use std::cell::Cell;
use std::collections::HashMap;
use tttc_ir::kernel::{BufId, Index, KernelProgram, MemorySpace, Schedule, Stmt, Value, VarId};
use tttc_ir::{BinaryOp, DType, UnaryOp};

/// The `ptx_kernel` calling convention.
const PTX_KERNEL_CC: u32 = 71;

impl From<BuilderError> for PtxError {
    fn from(e: BuilderError) -> Self {
        PtxError::Llvm(format!("IR builder: {e}"))
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
    let ft = match p.dtype {
        DType::F32 => ctx.f32_type(),
        DType::F64 => ctx.f64_type(),
    };
    let g = Gen {
        ctx,
        module,
        p,
        lens,
        ft,
        i64t: ctx.i64_type(),
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
    ft: FloatType<'ctx>,
    i64t: IntType<'ctx>,
    threads: u64,
    shared: HashMap<BufId, PointerValue<'ctx>>,
    flavor: Flavor,
    /// Run recognized matmul loops on tensor cores in this format.
    tensor_cores: Option<TensorCores>,
    /// Loops emitted with tensor cores in the current kernel.
    mma_loops: Cell<usize>,
}

struct Fn<'ctx> {
    func: FunctionValue<'ctx>,
    b: Builder<'ctx>,
    /// Builder at the end of the entry block's allocas.
    entry: Builder<'ctx>,
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

        let entry_bb = self.ctx.append_basic_block(func, "entry");
        let start_bb = self.ctx.append_basic_block(func, "start");
        let entry = self.ctx.create_builder();
        entry.position_at_end(entry_bb);
        let b = self.ctx.create_builder();
        b.position_at_end(start_bb);
        let ctaid = self.sreg(&b, "llvm.nvvm.read.ptx.sreg.ctaid.x")?;
        let tid = self.sreg(&b, "llvm.nvvm.read.ptx.sreg.tid.x")?;
        let mut f = Fn {
            func,
            b,
            entry,
            bufs: HashMap::new(),
            vars: vec![(block_var, ctaid)],
            tid,
            barrier: None,
        };
        for (i, id) in params.iter().enumerate() {
            let Some(BasicValueEnum::PointerValue(ptr)) = func.get_nth_param(i as u32) else {
                return internal("missing kernel parameter");
            };
            f.bufs.insert(*id, ptr);
        }
        for id in crate::bounds::buffers_used(body) {
            match self.p.buffer(id).map(|b| b.space) {
                Some(MemorySpace::Shared) => {
                    let ptr = self.shared_buffer(id)?;
                    f.bufs.insert(id, ptr);
                }
                Some(MemorySpace::Local) => {
                    let len = self.len(id)?;
                    let ptr = f.entry.build_array_alloca(
                        self.ft,
                        self.i64t.const_int(len, false),
                        "local",
                    )?;
                    f.bufs.insert(id, ptr);
                }
                _ => {}
            }
        }
        self.stmts(&mut f, body)?;
        f.b.build_return(None)?;
        f.entry.build_unconditional_branch(start_bb)?;
        Ok(())
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
                    self.i64t.into(),
                    self.i64t.into(),
                    ptr.into(),
                ],
                false,
            ),
            Some(Linkage::External),
        );
        let entry_bb = self.ctx.append_basic_block(func, "entry");
        let start_bb = self.ctx.append_basic_block(func, "start");
        let entry = self.ctx.create_builder();
        entry.position_at_end(entry_bb);
        let b = self.ctx.create_builder();
        b.position_at_end(start_bb);
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
        let mut f = Fn {
            func,
            b,
            entry,
            bufs: HashMap::new(),
            vars: vec![(block_var, ctaid)],
            tid,
            barrier: Some(barrier),
        };
        for (arr, ids) in [(globals, params), (shared_arr, shared)] {
            for (i, id) in ids.iter().enumerate() {
                // SAFETY: the runner passes arrays with one pointer per buffer, in this order.
                let slot = unsafe {
                    f.entry.build_in_bounds_gep(
                        ptr,
                        arr,
                        &[self.i64t.const_int(i as u64, false)],
                        "slot",
                    )?
                };
                let p = f.entry.build_load(ptr, slot, "buf")?.into_pointer_value();
                f.bufs.insert(*id, p);
            }
        }
        for id in crate::bounds::buffers_used(body) {
            if self.p.buffer(id).map(|b| b.space) == Some(MemorySpace::Local) {
                let len = self.len(id)?;
                let p = f.entry.build_array_alloca(
                    self.ft,
                    self.i64t.const_int(len, false),
                    "local",
                )?;
                f.bufs.insert(id, p);
            }
        }
        self.stmts(&mut f, body)?;
        f.b.build_return(None)?;
        f.entry.build_unconditional_branch(start_bb)?;
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
        Ok(b.build_int_z_extend(x, self.i64t, "sreg64")?)
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
        let ty = self.ft.array_type(len.max(1));
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

    fn stmts(&self, f: &mut Fn<'ctx>, body: &[Stmt]) -> Result<(), PtxError> {
        for s in body {
            match s {
                Stmt::Store { buf, index, value } => {
                    let v = self.value(f, value)?;
                    let ptr = self.element(f, *buf, index)?;
                    f.b.build_store(ptr, v)?;
                }
                Stmt::Barrier => self.barrier(f)?,
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
                    let n = self.i64t.const_int(*extent as u64, false);
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
                        let step = self.i64t.const_int(self.threads, false);
                        self.counted(f, *var, f.tid, n, step, body)?;
                    }
                }
                Stmt::Loop {
                    var, extent, body, ..
                } => {
                    let zero = self.i64t.const_int(0, false);
                    let n = self.i64t.const_int(*extent as u64, false);
                    let one = self.i64t.const_int(1, false);
                    self.counted(f, *var, zero, n, one, body)?;
                }
            }
        }
        Ok(())
    }

    /// `bar.sync 0` (host flavor: a call to [`HOST_BARRIER`] with the block's context).
    fn barrier(&self, f: &Fn<'ctx>) -> Result<(), PtxError> {
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
    fn tensor_core_loop(&self, f: &mut Fn<'ctx>, s: &Stmt) -> Result<bool, PtxError> {
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
        f: &mut Fn<'ctx>,
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
        let phi = f.b.build_phi(self.i64t, "i")?;
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

    fn element(
        &self,
        f: &Fn<'ctx>,
        buf: BufId,
        index: &Index,
    ) -> Result<PointerValue<'ctx>, PtxError> {
        let Some(&base) = f.bufs.get(&buf) else {
            return internal(format!("buffer b{} not available in this kernel", buf.0));
        };
        let i = self.index(f, index)?;
        // SAFETY: the bounds analysis proved 0 <= index < len for every iteration.
        Ok(unsafe { f.b.build_in_bounds_gep(self.ft, base, &[i], "elt")? })
    }

    fn index(&self, f: &Fn<'ctx>, index: &Index) -> Result<IntValue<'ctx>, PtxError> {
        let c = |x: i64| self.i64t.const_int(x as u64, true);
        Ok(match index {
            Index::Const(x) => c(*x),
            Index::Var(v) => match f.vars.iter().rev().find(|(w, _)| w == v) {
                Some(&(_, x)) => x,
                None => return internal(format!("loop variable i{} not in scope", v.0)),
            },
            Index::Add(a, b) => {
                let (a, b) = (self.index(f, a)?, self.index(f, b)?);
                f.b.build_int_nsw_add(a, b, "add")?
            }
            Index::Mul(a, k) => {
                let a = self.index(f, a)?;
                f.b.build_int_nsw_mul(a, c(*k), "mul")?
            }
            Index::Div(a, k) => {
                let a = self.index(f, a)?;
                f.b.build_int_signed_div(a, c(*k), "div")?
            }
            Index::Rem(a, k) => {
                let a = self.index(f, a)?;
                f.b.build_int_signed_rem(a, c(*k), "rem")?
            }
        })
    }

    fn fconst(&self, x: f64) -> FloatValue<'ctx> {
        match self.p.dtype {
            DType::F32 => self.ft.const_float(f64::from(x as f32)),
            DType::F64 => self.ft.const_float(x),
        }
    }

    fn contract(&self, v: FloatValue<'ctx>) -> FloatValue<'ctx> {
        if let Some(i) = v.as_instruction() {
            let _ = i.set_fast_math_flags(FastMathFlags::AllowContract);
        }
        v
    }

    fn arith(
        &self,
        f: &Fn<'ctx>,
        op: BinaryOp,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, PtxError> {
        Ok(self.contract(match op {
            BinaryOp::Add => f.b.build_float_add(a, b, "add")?,
            BinaryOp::Sub => f.b.build_float_sub(a, b, "sub")?,
            BinaryOp::Mul => f.b.build_float_mul(a, b, "mul")?,
            _ => f.b.build_float_div(a, b, "div")?,
        }))
    }

    fn intr(
        &self,
        f: &Fn<'ctx>,
        name: &str,
        args: &[FloatValue<'ctx>],
    ) -> Result<FloatValue<'ctx>, PtxError> {
        let Some(i) = Intrinsic::find(name) else {
            return internal(format!("no intrinsic {name}"));
        };
        let tys: Vec<BasicTypeEnum> = vec![self.ft.into()];
        let Some(func) = i.get_declaration(self.module, &tys) else {
            return internal(format!("cannot declare {name}"));
        };
        self.call(f, func, args)
    }

    fn call(
        &self,
        f: &Fn<'ctx>,
        func: FunctionValue<'ctx>,
        args: &[FloatValue<'ctx>],
    ) -> Result<FloatValue<'ctx>, PtxError> {
        let args: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        match f
            .b
            .build_call(func, &args, "call")?
            .try_as_basic_value()
            .basic()
        {
            Some(BasicValueEnum::FloatValue(v)) => Ok(v),
            _ => internal("call returned no float"),
        }
    }

    /// A device math function applied in f64 to values of the element type.
    fn math(
        &self,
        f: &Fn<'ctx>,
        which: MathFn,
        args: &[FloatValue<'ctx>],
    ) -> Result<FloatValue<'ctx>, PtxError> {
        let func = math::function(self.ctx, self.module, which).map_err(PtxError::Internal)?;
        let d = self.ctx.f64_type();
        let wide = self.p.dtype == DType::F32;
        let mut xs = Vec::with_capacity(args.len());
        for &a in args {
            xs.push(if wide {
                f.b.build_float_ext(a, d, "wide")?
            } else {
                a
            });
        }
        let r = self.call(f, func, &xs)?;
        Ok(if wide {
            f.b.build_float_trunc(r, self.ft, "narrow")?
        } else {
            r
        })
    }

    fn select(
        &self,
        f: &Fn<'ctx>,
        c: IntValue<'ctx>,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, PtxError> {
        Ok(f.b.build_select(c, a, b, "sel")?.into_float_value())
    }

    fn sigmoid(&self, f: &Fn<'ctx>, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>, PtxError> {
        let one = self.fconst(1.0);
        let neg = self.contract(f.b.build_float_neg(x, "neg")?);
        let e = self.math(f, MathFn::Exp, &[neg])?;
        let d = self.arith(f, BinaryOp::Add, one, e)?;
        self.arith(f, BinaryOp::Div, one, d)
    }

    fn unary(
        &self,
        f: &Fn<'ctx>,
        op: UnaryOp,
        x: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, PtxError> {
        let zero = self.fconst(0.0);
        let one = self.fconst(1.0);
        let mul = |a, b| self.arith(f, BinaryOp::Mul, a, b);
        let add = |a, b| self.arith(f, BinaryOp::Add, a, b);
        Ok(match op {
            UnaryOp::Neg => self.contract(f.b.build_float_neg(x, "neg")?),
            UnaryOp::Sqrt => self.intr(f, "llvm.sqrt", &[x])?,
            UnaryOp::Rsqrt => {
                let s = self.intr(f, "llvm.sqrt", &[x])?;
                self.arith(f, BinaryOp::Div, one, s)?
            }
            UnaryOp::Exp => self.math(f, MathFn::Exp, &[x])?,
            UnaryOp::Log => self.math(f, MathFn::Log, &[x])?,
            UnaryOp::Tanh => self.math(f, MathFn::Tanh, &[x])?,
            UnaryOp::Sigmoid => self.sigmoid(f, x)?,
            UnaryOp::Silu => {
                let s = self.sigmoid(f, x)?;
                mul(x, s)?
            }
            UnaryOp::Relu => {
                let neg =
                    f.b.build_float_compare(FloatPredicate::OLT, x, zero, "isneg")?;
                self.select(f, neg, zero, x)?
            }
            UnaryOp::GeluTanh => {
                let c = self.fconst((2.0 / std::f64::consts::PI).sqrt());
                let x2 = mul(x, x)?;
                let x3 = mul(x2, x)?;
                let ax3 = mul(self.fconst(0.044715), x3)?;
                let inner = add(x, ax3)?;
                let arg = mul(c, inner)?;
                let t = self.math(f, MathFn::Tanh, &[arg])?;
                let onep = add(one, t)?;
                let hx = mul(self.fconst(0.5), x)?;
                mul(hx, onep)?
            }
            UnaryOp::Step => {
                let pos =
                    f.b.build_float_compare(FloatPredicate::OGT, x, zero, "ispos")?;
                self.select(f, pos, one, zero)?
            }
            UnaryOp::Floor => self.intr(f, "llvm.floor", &[x])?,
            UnaryOp::Sin => self.math(f, MathFn::Sin, &[x])?,
            UnaryOp::Cos => self.math(f, MathFn::Cos, &[x])?,
        })
    }

    fn binary(
        &self,
        f: &Fn<'ctx>,
        op: BinaryOp,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, PtxError> {
        Ok(match op {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => {
                self.arith(f, op, a, b)?
            }
            BinaryOp::Pow => self.math(f, MathFn::Pow, &[a, b])?,
            BinaryOp::Max | BinaryOp::Min => {
                let pred = if op == BinaryOp::Max {
                    FloatPredicate::OGE
                } else {
                    FloatPredicate::OLE
                };
                let nan = f.b.build_float_compare(FloatPredicate::UNO, a, b, "nan")?;
                let pick = f.b.build_float_compare(pred, a, b, "pick")?;
                let m = self.select(f, pick, a, b)?;
                let sum = self.arith(f, BinaryOp::Add, a, b)?;
                self.select(f, nan, sum, m)?
            }
        })
    }

    fn value(&self, f: &Fn<'ctx>, v: &Value) -> Result<FloatValue<'ctx>, PtxError> {
        Ok(match v {
            Value::Load { buf, index } => {
                let ptr = self.element(f, *buf, index)?;
                f.b.build_load(self.ft, ptr, "ld")?.into_float_value()
            }
            Value::Const(x) => self.fconst(*x),
            Value::FromIndex(i) => {
                let i = self.index(f, i)?;
                f.b.build_signed_int_to_float(i, self.ft, "fromidx")?
            }
            Value::Unary(op, x) => {
                let x = self.value(f, x)?;
                self.unary(f, *op, x)?
            }
            Value::Binary(op, a, b) => {
                let a = self.value(f, a)?;
                let b = self.value(f, b)?;
                self.binary(f, *op, a, b)?
            }
        })
    }
}
