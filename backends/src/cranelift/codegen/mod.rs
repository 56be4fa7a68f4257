//! Kernel IR to Cranelift IR, one function at a time, each compiled to machine code as soon as
//! it is complete.
//!
//! - The entry `void tttc_cl_entry(T** inputs, T** outputs)` loads the buffer pointers, fills
//!   the outputs with NaN (when poisoning, [`crate::poison`]), allocates the memory plan's arena
//!   and the program's other temporaries (NaN too when poisoning), runs the statements and frees
//!   what it allocated.
//! - Every outermost parallel loop `k` becomes a worker `void tttc_cl_worker_k(i8* ctx, i64
//!   begin, i64 end)` (its context is a stack array of the buffer pointers and enclosing loop
//!   variables the loop body needs, 8 bytes each) that allocates the loop's scratch buffers once
//!   per call and runs iterations `begin..end`; the loop itself becomes a call
//!   `tttc_parallel_for(worker, ctx, extent)`.
//! - A [`Stmt::Gemm`] (top level only) is a call `tttc_gemm_f32(desc, a, b, c)` (or `_f64`)
//!   with the descriptor ([`crate::native::gemm`]) stored into a stack slot.
//! - Loops are blocks with the loop variable as a block parameter; index arithmetic is `i64`.
//!   Innermost loops (bodies of stores only) follow a [`plan`](super::plan): hoisted invariants,
//!   register accumulators, forwarding, and a 128-bit SIMD body with a scalar remainder; their
//!   addresses are `(base + invariant terms) + variable terms`, so that the first sum is hoisted
//!   and the second folds into the x86 address mode. Enclosing loops may be unrolled and jammed
//!   into them (`Gen::try_jam`, for matmul columns and for row reductions). Math functions in SIMD code are one call per vector
//!   to a wrapper that applies the scalar function to each lane.
//!
//! Allocation follows the LLVM backend: buffers of at most [`MAX_STACK_BYTES`] go on the stack
//! while a function's stack buffers stay within [`MAX_FRAME_BYTES`] (stack probes are inline),
//! larger ones are `malloc`ed (a failed `malloc` traps) and `free`d at the end; the global
//! temporaries the memory plan places live in one arena, `malloc`ed once per run.

mod expr;
mod gemm;
mod loops;
mod parallel;

use super::plan::{jammable, plan_inner, rows_independent, InnerPlan};
use super::runtime::{MathFn, PARALLEL_FOR};
use super::CraneliftError;
use crate::scratch::{cpu_schedule, loop_key, Analysis, CpuSchedule};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, BlockArg, Endianness, FuncRef, Function, InstBuilder, MemFlagsData, Signature,
    StackSlotData, StackSlotKind, TrapCode, Type, UserFuncName,
};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Linkage, Module};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tttc_ir::kernel::{buffers_used, vars_used};
use tttc_ir::kernel::{BufId, Index, KernelProgram, Stmt, Value, VarId};
use tttc_ir::{BinaryOp, DType, UnaryOp};

/// A Cranelift SSA value.
type Cv = cranelift_codegen::ir::Value;

/// Largest buffer put on the stack, in bytes.
pub(crate) const MAX_STACK_BYTES: u64 = 16 << 10;
/// Largest total of stack buffers in one function, in bytes.
pub(crate) const MAX_FRAME_BYTES: u64 = 64 << 10;

/// How many iterations of an outer loop are jammed into one iteration of a SIMD loop.
pub(crate) const JAM: i64 = 4;

/// Name of the entry function.
pub(crate) const ENTRY: &str = "tttc_cl_entry";

fn internal<T>(msg: impl Into<String>) -> Result<T, CraneliftError> {
    Err(CraneliftError::Internal(msg.into()))
}

/// What building the module produced.
pub(crate) struct Built {
    /// The entry function.
    pub entry: FuncId,
    /// The optimized Cranelift IR and the machine code size of every function, when asked for.
    pub clif: Option<String>,
    /// Statistics, for tests and reports.
    pub stats: Stats,
}

/// What the generator did, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Functions defined (the entry and one per outermost parallel loop).
    pub functions: usize,
    /// Innermost loops given a SIMD body.
    pub simd_loops: usize,
    /// Innermost loops compiled as scalar loops with a plan (hoisting, register accumulators).
    pub scalar_planned_loops: usize,
    /// Buffer elements kept in registers across an innermost loop.
    pub register_accumulators: usize,
    /// Loops whose iterations were jammed, 4 at a time, into the SIMD loop they contain.
    pub jammed_loops: usize,
    /// Loops of independent row reductions run 4 rows at a time.
    pub row_jammed_loops: usize,
    /// Time spent inside Cranelift's compiler proper (`define_function`: optimization,
    /// register allocation, machine code), a part of [`codegen_time`].
    ///
    /// [`codegen_time`]: super::CraneliftJit::codegen_time
    pub compile: Duration,
}

/// Module-wide state of the generator.
struct Gen<'a> {
    module: &'a mut JITModule,
    p: &'a KernelProgram,
    a: &'a Analysis,
    /// The element type and its vector.
    ft: Type,
    vt: Type,
    lanes: u8,
    /// log2 of the element size.
    shift: i64,
    ptr: Type,
    workers: usize,
    compile: Duration,
    stats: Stats,
    /// Where the optimized IR of each function goes, when kept.
    clif: Option<String>,
    /// Whether fresh memory is filled with NaN ([`crate::poison`]).
    poison: bool,
}

/// An innermost loop being generated: its hoisted values and register accumulators.
#[derive(Default)]
struct LoopCtx {
    /// Scalar value of each hoisted subexpression (by address).
    hoisted: HashMap<*const Value, Cv>,
    /// Its splat, in the SIMD body.
    splats: HashMap<*const Value, Cv>,
    /// Register accumulators.
    promoted: HashMap<BufId, Variable>,
}

/// State of the function being generated.
struct FnState<'f> {
    b: FunctionBuilder<'f>,
    bufs: HashMap<BufId, Cv>,
    /// Loop variables in scope, innermost last.
    vars: Vec<(VarId, Cv)>,
    /// Inside a parallel worker: nested parallel loops run serially.
    in_worker: bool,
    frame_bytes: u64,
    mallocs: Vec<Cv>,
    funcs: HashMap<FuncId, FuncRef>,
    inner: LoopCtx,
    /// Forwarded buffers of the innermost loop being generated, and their current values
    /// within one iteration (`(stored, value)`).
    fwd_bufs: std::collections::BTreeSet<BufId>,
    fwd: HashMap<BufId, (bool, Cv)>,
    /// The variable and its value at lane 0 in a SIMD body.
    simd_var: Option<(VarId, Cv)>,
    /// The variable of the innermost loop being generated, if any.
    loop_var: Option<VarId>,
    /// The stack slot vector math calls pass their lanes through.
    math_slot: Option<cranelift_codegen::ir::StackSlot>,
}

/// Builds every function of `p` into `module`; returns the entry.
pub(crate) fn build(
    module: &mut JITModule,
    p: &KernelProgram,
    a: &Analysis,
    keep_clif: bool,
) -> Result<Built, CraneliftError> {
    let (ft, vt, lanes, shift) = match p.dtype {
        DType::F32 => (types::F32, types::F32X4, 4, 2),
        DType::F64 => (types::F64, types::F64X2, 2, 3),
    };
    let ptr = module.target_config().pointer_type();
    if ptr != types::I64 {
        return Err(CraneliftError::Cranelift(format!(
            "64-bit hosts only (pointer type {ptr})"
        )));
    }
    let mut g = Gen {
        module,
        p,
        a,
        ft,
        vt,
        lanes,
        shift,
        ptr,
        workers: 0,
        compile: Duration::ZERO,
        stats: Stats::default(),
        clif: keep_clif.then(String::new),
        poison: crate::poison::poison_enabled(),
    };
    let entry = g.entry_function()?;
    Ok(Built {
        entry,
        clif: g.clif,
        stats: Stats {
            compile: g.compile,
            ..g.stats
        },
    })
}

/// The terms of `index` as a sum (`Add` nodes flattened).
fn flatten_sum<'i>(index: &'i Index, out: &mut Vec<&'i Index>) {
    match index {
        Index::Add(a, b) => {
            flatten_sum(a, out);
            flatten_sum(b, out);
        }
        other => out.push(other),
    }
}

/// Block arguments.
fn args(values: &[Cv]) -> Vec<BlockArg> {
    values.iter().map(|&v| BlockArg::Value(v)).collect()
}

/// Flags of a scalar access: in bounds and naturally aligned (proven by the analysis).
fn scalar_flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Flags of a vector access: in bounds, but only element-aligned.
fn vector_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl<'a> Gen<'a> {
    fn signature(&self, params: &[Type], ret: Option<Type>) -> Signature {
        let mut sig = self.module.make_signature();
        sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        if let Some(r) = ret {
            sig.returns.push(AbiParam::new(r));
        }
        sig
    }

    /// The reference to imported function `name` inside the function of `st`.
    fn import(
        &mut self,
        st: &mut FnState<'_>,
        name: &str,
        params: &[Type],
        ret: Option<Type>,
    ) -> Result<FuncRef, CraneliftError> {
        let sig = self.signature(params, ret);
        let id = self
            .module
            .declare_function(name, Linkage::Import, &sig)
            .map_err(|e| CraneliftError::Cranelift(format!("declaring {name}: {e}")))?;
        Ok(self.func_ref(st, id))
    }

    fn func_ref(&mut self, st: &mut FnState<'_>, id: FuncId) -> FuncRef {
        if let Some(&f) = st.funcs.get(&id) {
            return f;
        }
        let f = self.module.declare_func_in_func(id, st.b.func);
        st.funcs.insert(id, f);
        f
    }

    /// Compiles the finished function `func` as `id`.
    fn define(&mut self, id: FuncId, func: Function) -> Result<(), CraneliftError> {
        let start = Instant::now();
        let mut ctx = Context::for_function(func);
        let r = self.module.define_function(id, &mut ctx);
        self.compile += start.elapsed();
        self.stats.functions += 1;
        if let (Some(out), Ok(())) = (&mut self.clif, &r) {
            let size = ctx.compiled_code().map_or(0, |c| c.code_info().total_size);
            out.push_str(&format!(
                "; {size} bytes of machine code\n{}\n",
                ctx.func.display()
            ));
        }
        r.map_err(|e| match e {
            cranelift_module::ModuleError::Compilation(
                cranelift_codegen::CodegenError::Verifier(errors),
            ) => CraneliftError::Internal(format!(
                "generated function does not verify: {}",
                cranelift_codegen::print_errors::pretty_verifier_error(&ctx.func, None, errors)
            )),
            e => CraneliftError::Cranelift(format!("compiling: {e:?}")),
        })
    }

    fn len(&self, id: BufId) -> Result<u64, CraneliftError> {
        match self.a.lens.get(id.0 as usize) {
            Some(&n) => Ok(n),
            None => internal(format!("no length for b{}", id.0)),
        }
    }

    fn elem_bytes(&self) -> u64 {
        1 << self.shift
    }

    /// Fills buffer `id` at `ptr` with NaN (all bits set: a NaN in `f32` and `f64`), like the
    /// kernel interpreter's fresh buffers; nothing unless poison is on ([`crate::poison`]).
    fn fill_nan(&mut self, st: &mut FnState<'_>, id: BufId, ptr: Cv) -> Result<(), CraneliftError> {
        let bytes = self.len(id)? * self.elem_bytes();
        self.fill_bytes(st, ptr, bytes)
    }

    /// Sets `bytes` bytes at `ptr` to `0xff` when poisoning.
    fn fill_bytes(
        &mut self,
        st: &mut FnState<'_>,
        ptr: Cv,
        bytes: u64,
    ) -> Result<(), CraneliftError> {
        if !self.poison || bytes == 0 {
            return Ok(());
        }
        if bytes <= 256 && bytes.is_multiple_of(16) {
            // Small: a few vector stores of all-ones.
            let ones = st.b.ins().iconst(types::I64, -1);
            let v = st.b.ins().splat(types::I64X2, ones);
            for off in (0..bytes).step_by(16) {
                st.b.ins().store(vector_flags(), v, ptr, off as i32);
            }
            return Ok(());
        }
        let memset = self.import(
            st,
            "memset",
            &[self.ptr, types::I32, self.ptr],
            Some(self.ptr),
        )?;
        let c = st.b.ins().iconst(types::I32, 0xff);
        let n = st.b.ins().iconst(self.ptr, bytes as i64);
        st.b.ins().call(memset, &[ptr, c, n]);
        Ok(())
    }

    /// Allocates buffer `id` for the function of `st` (stack or heap), not initialized.
    fn alloc(&mut self, st: &mut FnState<'_>, id: BufId) -> Result<Cv, CraneliftError> {
        let bytes = self.len(id)? * self.elem_bytes();
        let ptr = if bytes <= MAX_STACK_BYTES && st.frame_bytes + bytes <= MAX_FRAME_BYTES {
            st.frame_bytes += bytes;
            let slot = st.b.create_sized_stack_slot(StackSlotData::new(
                StackSlotKind::ExplicitSlot,
                bytes.max(1) as u32,
                6,
            ));
            st.b.ins().stack_addr(self.ptr, slot, 0)
        } else {
            self.malloc(st, bytes)?
        };
        st.bufs.insert(id, ptr);
        Ok(ptr)
    }

    /// `malloc(bytes)` (a null result traps), freed at the end of the function.
    fn malloc(&mut self, st: &mut FnState<'_>, bytes: u64) -> Result<Cv, CraneliftError> {
        let malloc = self.import(st, "malloc", &[self.ptr], Some(self.ptr))?;
        let n = st.b.ins().iconst(self.ptr, bytes.max(1) as i64);
        let call = st.b.ins().call(malloc, &[n]);
        let ptr = st.b.inst_results(call)[0];
        st.b.ins().trapz(ptr, TrapCode::HEAP_OUT_OF_BOUNDS);
        st.mallocs.push(ptr);
        Ok(ptr)
    }

    /// The memory plan's arena (one `malloc`, poisoned as a whole in checking mode) and a
    /// pointer into it for every buffer it holds.
    fn alloc_arena(&mut self, st: &mut FnState<'_>) -> Result<(), CraneliftError> {
        let a = self.a;
        if a.arena.is_empty() {
            return Ok(());
        }
        let bytes = a.arena_len * self.elem_bytes();
        let arena = self.malloc(st, bytes)?;
        self.fill_bytes(st, arena, bytes)?;
        for &(id, offset) in &a.arena {
            let ptr =
                st.b.ins()
                    .iadd_imm_s(arena, (offset * self.elem_bytes()) as i64);
            st.bufs.insert(id, ptr);
        }
        Ok(())
    }

    /// Frees what `st` allocated and returns.
    fn finish(&mut self, st: &mut FnState<'_>) -> Result<(), CraneliftError> {
        if !st.mallocs.is_empty() {
            let free = self.import(st, "free", &[self.ptr], None)?;
            for m in std::mem::take(&mut st.mallocs).into_iter().rev() {
                st.b.ins().call(free, &[m]);
            }
        }
        st.b.ins().return_(&[]);
        Ok(())
    }

    fn new_state<'f>(
        func: &'f mut Function,
        fctx: &'f mut FunctionBuilderContext,
        in_worker: bool,
    ) -> FnState<'f> {
        FnState {
            b: FunctionBuilder::new(func, fctx),
            bufs: HashMap::new(),
            vars: Vec::new(),
            in_worker,
            frame_bytes: 0,
            mallocs: Vec::new(),
            funcs: HashMap::new(),
            inner: LoopCtx::default(),
            fwd_bufs: Default::default(),
            fwd: HashMap::new(),
            simd_var: None,
            loop_var: None,
            math_slot: None,
        }
    }

    /// `void tttc_cl_entry(T** inputs, T** outputs)`.
    fn entry_function(&mut self) -> Result<FuncId, CraneliftError> {
        let sig = self.signature(&[self.ptr, self.ptr], None);
        let id = self
            .module
            .declare_function(ENTRY, Linkage::Export, &sig)
            .map_err(|e| CraneliftError::Cranelift(format!("declaring the entry: {e}")))?;
        let mut func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut st = Self::new_state(&mut func, &mut fctx, false);
            let block = st.b.create_block();
            st.b.append_block_params_for_function_params(block);
            st.b.switch_to_block(block);
            let params = st.b.block_params(block).to_vec();
            let p = self.p;
            for (arr, list) in [(params[0], p.inputs()), (params[1], p.outputs())] {
                for (i, (id, _)) in list.iter().enumerate() {
                    let ptr =
                        st.b.ins()
                            .load(self.ptr, scalar_flags(), arr, (i * 8) as i32);
                    st.bufs.insert(*id, ptr);
                }
            }
            for (id, _) in p.outputs() {
                let ptr = st.bufs[&id];
                self.fill_nan(&mut st, id, ptr)?;
            }
            let a = self.a;
            self.alloc_arena(&mut st)?;
            for &id in &a.program_allocs {
                let ptr = self.alloc(&mut st, id)?;
                self.fill_nan(&mut st, id, ptr)?;
            }
            self.stmts(&mut st, &p.body)?;
            self.finish(&mut st)?;
            st.b.seal_all_blocks();
            st.b.finalize(self.module.target_config());
        }
        self.define(id, func)?;
        Ok(id)
    }
}
