//! Kernel IR to LLVM IR.
//!
//! The module has one external function, the entry `void <name>(T** inputs, T** outputs)`, and
//! internal helpers:
//!
//! - `tttc.body(T* noalias ..., T** inputs, T** outputs)`: the program proper, taking every
//!   output and every input its statements use as a `noalias` argument (the entry just loads
//!   the pointers and calls it; after inlining the `noalias` facts survive as alias scopes,
//!   which lets LLVM keep accumulators in registers and vectorize without run-time alias
//!   checks), then the entry's two arrays, from which a run of calls of one kernel function
//!   reads its arguments (a loop over a table, [`call_table`]; a buffer reached both ways is
//!   not `noalias`). It fills the outputs with NaN (when poisoning), allocates the arena and the
//!   other temporaries, runs the statements and frees what it allocated.
//! - for every outermost parallel loop `k`, `tttc.worker.k(i8* ctx, i64 begin, i64 end)` unpacks
//!   the context (a struct of the buffer pointers and enclosing loop variables the loop body
//!   needs) and calls `tttc.wbody.k(T* noalias ..., i64 ..., i64 begin, i64 end)`, which
//!   allocates the loop's scratch buffers once per call and runs iterations `begin..end`. The
//!   parallel loop itself becomes a call `tttc_parallel_for(worker, ctx, extent)`.
//!   Inside a worker, a statement list of more than [`MAX_LOOPS_PER_PART`] loops is cut into
//!   runs of at most that many, each outlined into `tttc.part.k(T* noalias ..., i64 ...)`
//!   (`noinline`; the buffers and enclosing loop variables it uses), which keeps LLVM's
//!   optimization time linear in the length of long scan bodies.
//!
//! - for every kernel function `k` ([`tttc_ir::kernel::KernelFunction`], a repeated layer),
//!   `tttc.fn.k(T* noalias params..., T* noalias scratch...)`, marked `noinline` so that
//!   LLVM optimizes and compiles each layer once: it takes its parameters' buffers (a call's
//!   arguments are pairwise distinct buffers; those the memory plan lets overlap in the arena,
//!   [`tttc_ir::kernel::aliased_params`], are not `noalias`) and any program-wide scratch copies its body uses, and
//!   its parallel loops are outlined into workers like the body's. A [`Stmt::Call`] is a call
//!   of it with the arguments' pointers; [`call_table::MIN_TABLE_CALLS`] or more consecutive
//!   calls of one function at the top level (a model's layers) are one call in a loop over a
//!   constant table of their arguments, so that the body's code does not grow with depth.
//!
//! Allocation: the global temporaries the memory plan places ([`KernelProgram::memory`]) live
//! in one arena, `malloc`ed once per run of the entry and `free`d at its end (one allocation
//! per run, so concurrent runs of one compiled program never share it). Other buffers of at
//! most [`MAX_ALLOCA_BYTES`] go on the stack while a function's stack allocations stay within
//! [`MAX_FRAME_BYTES`]; larger ones are `malloc`ed and `free`d (a failed `malloc` traps).
//!
//! Poison ([`crate::poison`], a checking mode: on in debug builds and tests): like the kernel
//! interpreter, outputs and temporaries (the whole arena) start out as NaN, and scratch
//! buffers are refilled with NaN at the start of every iteration they are fresh for (see the
//! analysis), so reading an element before writing it shows in the results, and the results
//! never depend on how iterations are split over threads. Without poison nothing is filled.

use super::math::CpuMath;
use super::parallel_md::ParallelLoops;
use super::LlvmError;
use crate::bounds::{buffers_used, cpu_schedule, loop_key, vars_used, Analysis, CpuSchedule};
use crate::llvm_expr::{AccessHook, ExprError, Lowering, Scope};
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::basic_block::BasicBlock;
use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicType, BasicTypeEnum, PointerType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue,
};
use inkwell::{AddressSpace, IntPredicate};
use std::collections::{BTreeSet, HashMap};
use tttc_ir::kernel::{BufId, Gemm, Index, KernelProgram, Schedule, Stmt, Value, VarId};

mod call_table;

/// Largest buffer put on the stack, in bytes.
pub(crate) const MAX_ALLOCA_BYTES: u64 = 16 << 10;
/// Largest total of stack buffers in one function, in bytes.
pub(crate) const MAX_FRAME_BYTES: u64 = 64 << 10;

/// Most loops one statement list of a parallel worker's generated code holds; longer lists
/// are split into `noinline` parts ([`Gen::stmts_in_parts`]). LLVM's loop passes (scalar
/// evolution's guard search walks the dominator chain of a block, MemorySSA) take time
/// quadratic in the number of loops one after another in a function: the scan backward's
/// slice body, the forward and the backward step of a mini-batch one after the other, held
/// about a thousand loops and took minutes to optimize. In parts of this size it is linear,
/// and each part is still large enough for the loops inside it to be optimized together.
const MAX_LOOPS_PER_PART: usize = 48;

/// Number of loops in `body`, nested ones included.
fn loop_count(body: &[Stmt]) -> usize {
    body.iter()
        .map(|s| match s {
            Stmt::Loop { body, .. } => 1 + loop_count(body),
            _ => 0,
        })
        .sum()
}

/// Name of the external parallel-for runtime function.
pub const PARALLEL_FOR: &str = "tttc_parallel_for";

impl From<BuilderError> for LlvmError {
    fn from(e: BuilderError) -> Self {
        LlvmError::Llvm(format!("IR builder: {e}"))
    }
}

impl From<ExprError> for LlvmError {
    fn from(e: ExprError) -> Self {
        match e {
            ExprError::Builder(e) => e.into(),
            ExprError::Internal(m) => LlvmError::Internal(m),
        }
    }
}

fn internal<T>(msg: impl Into<String>) -> Result<T, LlvmError> {
    Err(LlvmError::Internal(msg.into()))
}

/// Module-wide state of the generator.
struct Gen<'a, 'ctx> {
    ctx: &'ctx Context,
    module: &'a Module<'ctx>,
    p: &'a KernelProgram,
    a: &'a Analysis,
    /// Expressions, element type, `i64`.
    lower: Lowering<'a, 'ctx>,
    ptrt: PointerType<'ctx>,
    /// Attributes every defined function carries (target CPU and features, nounwind).
    fn_attrs: Vec<Attribute>,
    noalias: Attribute,
    noinline: Attribute,
    workers: usize,
    /// Parts outlined so far ([`Gen::part`]).
    parts: usize,
    /// Gemm descriptors emitted so far.
    gemms: usize,
    /// The LLVM function of each kernel function, with the buffers it takes in order (its
    /// parameters, then the program-wide scratch its body uses).
    funcs: Vec<(FunctionValue<'ctx>, Vec<BufId>)>,
    /// Whether fresh memory is filled with NaN ([`crate::poison`]).
    poison: bool,
    /// The access group of the vector loops ([`ParallelLoops`]).
    parallel: ParallelLoops<'ctx>,
    /// The pointers `tttc.body` takes one by one, as (array, index) of the entry's arrays
    /// (0: inputs, 1: outputs); it takes the two arrays after them.
    body_io: Vec<(usize, usize)>,
}

/// State of the function being generated.
struct FnState<'ctx> {
    func: FunctionValue<'ctx>,
    /// Positioned at the end of the `allocas` block (branched to `start` when finished).
    ab: Builder<'ctx>,
    start: BasicBlock<'ctx>,
    b: Builder<'ctx>,
    bufs: HashMap<BufId, PointerValue<'ctx>>,
    /// Loop variables in scope, innermost last.
    vars: Vec<(VarId, IntValue<'ctx>)>,
    /// Inside a parallel worker: nested parallel loops run serially.
    in_worker: bool,
    frame_bytes: u64,
    mallocs: Vec<PointerValue<'ctx>>,
    /// Inside the body of a vector loop (its innermost loop): the group its loads and stores
    /// go in ([`ParallelLoops`]).
    parallel: Option<ParallelLoops<'ctx>>,
}

/// Builds the module for `p` with entry function `entry` into `module`.
pub(crate) fn build<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    p: &KernelProgram,
    a: &Analysis,
    entry: &str,
    cpu: &str,
    features: &str,
) -> Result<(), LlvmError> {
    let kind = |name: &str| {
        let id = Attribute::get_named_enum_kind_id(name);
        if id == 0 {
            internal(format!("LLVM has no attribute {name}"))
        } else {
            Ok(id)
        }
    };
    let fn_attrs = vec![
        ctx.create_string_attribute("target-cpu", cpu),
        ctx.create_string_attribute("target-features", features),
        ctx.create_enum_attribute(kind("nounwind")?, 0),
    ];
    let noalias = ctx.create_enum_attribute(kind("noalias")?, 0);
    let noinline = ctx.create_enum_attribute(kind("noinline")?, 0);
    let mut g = Gen {
        ctx,
        module,
        p,
        a,
        lower: Lowering::new(ctx, module, p.dtype, &CpuMath),
        ptrt: ctx.ptr_type(AddressSpace::default()),
        fn_attrs,
        noalias,
        noinline,
        workers: 0,
        parts: 0,
        gemms: 0,
        funcs: Vec::new(),
        poison: crate::poison::poison_enabled(),
        parallel: ParallelLoops::new(ctx)?,
        body_io: Vec::new(),
    };
    g.kernel_functions()?;
    let body = g.body_function()?;
    g.entry_function(entry, body)
}

impl<'ctx> Gen<'_, 'ctx> {
    fn define(
        &self,
        name: &str,
        params: &[BasicMetadataTypeEnum<'ctx>],
        linkage: Linkage,
    ) -> FunctionValue<'ctx> {
        let ty = self.ctx.void_type().fn_type(params, false);
        let f = self.module.add_function(name, ty, Some(linkage));
        for a in &self.fn_attrs {
            f.add_attribute(AttributeLoc::Function, *a);
        }
        f
    }

    /// A function state with `allocas` and `start` blocks, builders at `start`.
    fn state(&self, func: FunctionValue<'ctx>, in_worker: bool) -> FnState<'ctx> {
        let allocas = self.ctx.append_basic_block(func, "allocas");
        let start = self.ctx.append_basic_block(func, "start");
        let ab = self.ctx.create_builder();
        ab.position_at_end(allocas);
        let b = self.ctx.create_builder();
        b.position_at_end(start);
        FnState {
            func,
            ab,
            start,
            b,
            bufs: HashMap::new(),
            vars: Vec::new(),
            in_worker,
            frame_bytes: 0,
            mallocs: Vec::new(),
            parallel: None,
        }
    }

    /// Frees what `st` allocated, returns, and closes the `allocas` block.
    fn finish(&self, st: &FnState<'ctx>) -> Result<(), LlvmError> {
        if !st.mallocs.is_empty() {
            let free = self.extern_fn("free", None, &[self.ptrt.into()]);
            for m in st.mallocs.iter().rev() {
                st.b.build_call(free, &[(*m).into()], "")?;
            }
        }
        st.b.build_return(None)?;
        st.ab.build_unconditional_branch(st.start)?;
        Ok(())
    }

    /// The declaration of external function `name`, adding it if needed.
    fn extern_fn(
        &self,
        name: &str,
        ret: Option<BasicTypeEnum<'ctx>>,
        params: &[BasicMetadataTypeEnum<'ctx>],
    ) -> FunctionValue<'ctx> {
        if let Some(f) = self.module.get_function(name) {
            return f;
        }
        let ty = match ret {
            Some(r) => r.fn_type(params, false),
            None => self.ctx.void_type().fn_type(params, false),
        };
        self.module.add_function(name, ty, Some(Linkage::External))
    }

    fn elem_bytes(&self) -> u64 {
        self.p.dtype.size_bytes() as u64
    }

    fn len(&self, id: BufId) -> Result<u64, LlvmError> {
        match self.a.lens.get(id.0 as usize) {
            Some(&n) => Ok(n),
            None => internal(format!("no length for b{}", id.0)),
        }
    }

    /// Fills buffer `id` at `ptr` with NaN (all bits set: a NaN in `f32` and `f64`), at the
    /// current position of `st`, like the kernel interpreter's fresh buffers; nothing unless
    /// poison is on ([`crate::poison`]).
    fn fill_nan(
        &self,
        st: &FnState<'ctx>,
        id: BufId,
        ptr: PointerValue<'ctx>,
    ) -> Result<(), LlvmError> {
        let bytes = self.len(id)? * self.elem_bytes();
        if self.poison && bytes > 0 {
            let align = self.elem_bytes() as u32;
            st.b.build_memset(
                ptr,
                align,
                self.ctx.i8_type().const_int(0xff, false),
                self.lower.i64t.const_int(bytes, false),
            )?;
        }
        Ok(())
    }

    /// Allocates buffer `id` for the function of `st` (stack or heap), not initialized.
    fn alloc(&self, st: &mut FnState<'ctx>, id: BufId) -> Result<PointerValue<'ctx>, LlvmError> {
        let len = self.len(id)?;
        let bytes = len * self.elem_bytes();
        let name = format!("b{}", id.0);
        let ptr = if bytes <= MAX_ALLOCA_BYTES && st.frame_bytes + bytes <= MAX_FRAME_BYTES {
            st.frame_bytes += bytes;
            let ty = self.lower.ft.array_type(len as u32);
            let ptr = st.ab.build_alloca(ty, &name)?;
            if let Some(i) = ptr.as_instruction() {
                let _ = i.set_alignment(64);
            }
            ptr
        } else {
            self.malloc(st, bytes, &name)?
        };
        st.bufs.insert(id, ptr);
        Ok(ptr)
    }

    /// `malloc(bytes)` at the current position of `st` (a null result traps), freed when the
    /// function returns.
    fn malloc(
        &self,
        st: &mut FnState<'ctx>,
        bytes: u64,
        name: &str,
    ) -> Result<PointerValue<'ctx>, LlvmError> {
        let malloc = self.extern_fn("malloc", Some(self.ptrt.into()), &[self.lower.i64t.into()]);
        let call = st.b.build_call(
            malloc,
            &[self.lower.i64t.const_int(bytes.max(1), false).into()],
            name,
        )?;
        let Some(BasicValueEnum::PointerValue(ptr)) = call.try_as_basic_value().basic() else {
            return internal("malloc returned no pointer");
        };
        let is_null = st.b.build_is_null(ptr, "oom")?;
        let trap_bb = self.ctx.append_basic_block(st.func, "oom");
        let ok_bb = self.ctx.append_basic_block(st.func, "allocated");
        st.b.build_conditional_branch(is_null, trap_bb, ok_bb)?;
        st.b.position_at_end(trap_bb);
        let trap = self.lower.intrinsic("llvm.trap")?;
        st.b.build_call(trap, &[], "")?;
        st.b.build_unreachable()?;
        st.b.position_at_end(ok_bb);
        st.mallocs.push(ptr);
        Ok(ptr)
    }

    /// The memory plan's arena (one `malloc`, poisoned as a whole in checking mode) and a
    /// pointer into it for every buffer it holds.
    fn alloc_arena(
        &self,
        st: &mut FnState<'ctx>,
        needed: &BTreeSet<BufId>,
    ) -> Result<Option<PointerValue<'ctx>>, LlvmError> {
        let a = self.a;
        if a.arena.is_empty() {
            return Ok(None);
        }
        let bytes = a.arena_len * self.elem_bytes();
        let arena = self.malloc(st, bytes, "arena")?;
        if self.poison && bytes > 0 {
            st.b.build_memset(
                arena,
                self.elem_bytes() as u32,
                self.ctx.i8_type().const_int(0xff, false),
                self.lower.i64t.const_int(bytes, false),
            )?;
        }
        for &(id, offset) in a.arena.iter().filter(|(id, _)| needed.contains(id)) {
            let at = self.lower.i64t.const_int(offset * self.elem_bytes(), false);
            // SAFETY: the verifier checked that the buffer lies inside the arena.
            let ptr = unsafe {
                st.b.build_in_bounds_gep(self.ctx.i8_type(), arena, &[at], &format!("b{}", id.0))?
            };
            st.bufs.insert(id, ptr);
        }
        Ok(Some(arena))
    }

    /// `tttc.body(T* noalias in..., T* noalias out..., T** inputs, T** outputs)`: the inputs
    /// its statements use and every output one by one, then the entry's two arrays, from which
    /// runs of calls read their arguments ([`call_table`]).
    fn body_function(&mut self) -> Result<FunctionValue<'ctx>, LlvmError> {
        let p = self.p;
        let profiled = crate::native::profile::statement_profile_enabled();
        // The statement profile brackets every call: no tables then.
        let runs = if profiled {
            Vec::new()
        } else {
            call_table::call_runs(&p.body)
        };
        let takes = |f: usize| self.funcs.get(f).map_or(Vec::new(), |(_, t)| t.clone());
        let needed = call_table::needed_outside(p, &runs, takes);
        let from_table = call_table::table_arguments(&p.body, &runs);
        let mut io: Vec<(usize, usize, BufId)> = Vec::new();
        for (array, list) in [(0, p.inputs()), (1, p.outputs())] {
            for (i, (id, _)) in list.into_iter().enumerate() {
                if array == 1 || needed.contains(&id) {
                    io.push((array, i, id));
                }
            }
        }
        let mut params: Vec<BasicMetadataTypeEnum> = io.iter().map(|_| self.ptrt.into()).collect();
        params.extend([BasicMetadataTypeEnum::from(self.ptrt); 2]);
        let f = self.define("tttc.body", &params, Linkage::Internal);
        for (i, (_, _, id)) in io.iter().enumerate() {
            // A buffer a table also passes is reached through the arrays too: not `noalias`.
            if !from_table.contains(id) {
                f.add_attribute(AttributeLoc::Param(i as u32), self.noalias);
            }
        }
        let mut st = self.state(f, false);
        for (i, &(_, _, id)) in io.iter().enumerate() {
            let Some(BasicValueEnum::PointerValue(ptr)) = f.get_nth_param(i as u32) else {
                return internal("missing body parameter");
            };
            st.bufs.insert(id, ptr);
        }
        let array = |k: usize| match f.get_nth_param((io.len() + k) as u32) {
            Some(BasicValueEnum::PointerValue(ptr)) => Ok(ptr),
            _ => internal("missing body array parameter"),
        };
        let arrays = [array(0)?, array(1)?];
        for &(_, _, id) in io.iter().filter(|(a, _, _)| *a == 1) {
            self.fill_nan(&st, id, st.bufs[&id])?;
        }
        self.body_io = io.iter().map(|&(a, i, _)| (a, i)).collect();
        let a = self.a;
        let arena = self.alloc_arena(&mut st, &needed)?;
        for &id in &a.program_allocs {
            let ptr = self.alloc(&mut st, id)?;
            self.fill_nan(&st, id, ptr)?;
        }
        let sources = call_table::TableSources { arrays, arena };
        let mut at = 0;
        for r in &runs {
            self.top_level_stmts(&mut st, &p.body[at..r.start], at)?;
            let Some(Stmt::Call { func, .. }) = p.body.get(r.start) else {
                return internal("a table run starts with no call");
            };
            self.call_table(&mut st, &sources, func.0 as usize, &p.body[r.clone()])?;
            at = r.end;
        }
        self.top_level_stmts(&mut st, &p.body[at..], at)?;
        self.finish(&st)?;
        Ok(f)
    }

    /// The statements of a body (the program's or a function's), each bracketed for the
    /// statement profile when it is on; the first gets profile id `first` (numbering:
    /// `tttc_ir::kernel::first_statement_id`).
    fn top_level_stmts(
        &mut self,
        st: &mut FnState<'ctx>,
        body: &[Stmt],
        first: usize,
    ) -> Result<(), LlvmError> {
        if !crate::native::profile::statement_profile_enabled() {
            return self.stmts(st, body);
        }
        for (j, s) in body.iter().enumerate() {
            self.profile_bracket(st, "tttc_profile_enter", first + j)?;
            self.stmts(st, std::slice::from_ref(s))?;
            self.profile_bracket(st, "tttc_profile_exit", first + j)?;
        }
        Ok(())
    }

    /// A call `which(k)` of the statement profile (`native::profile`) around top-level
    /// statement `k`.
    fn profile_bracket(&self, st: &FnState<'ctx>, which: &str, k: usize) -> Result<(), LlvmError> {
        let f = self.extern_fn(which, None, &[self.lower.i64t.into()]);
        let id = self.lower.i64t.const_int(k as u64, false);
        st.b.build_call(f, &[id.into()], "")?;
        Ok(())
    }

    /// `tttc.fn.k(T* noalias ...)` for every kernel function `k`.
    fn kernel_functions(&mut self) -> Result<(), LlvmError> {
        let p = self.p;
        let a = self.a;
        // Parameters that share arena memory with another in some call (the memory plan lets
        // a layer's temporaries with disjoint lifetimes inside it overlap) are not `noalias`.
        let aliased = tttc_ir::kernel::aliased_params(p);
        for (k, kf) in p.functions.iter().enumerate() {
            let mut takes = kf.params.clone();
            takes.extend(
                buffers_used(&kf.body)
                    .into_iter()
                    .filter(|id| !kf.params.contains(id) && a.program_allocs.contains(id)),
            );
            let params: Vec<BasicMetadataTypeEnum> =
                takes.iter().map(|_| self.ptrt.into()).collect();
            let f = self.define(&format!("tttc.fn.{k}"), &params, Linkage::Internal);
            f.add_attribute(AttributeLoc::Function, self.noinline);
            let shared = aliased.get(k).map_or(&[][..], Vec::as_slice);
            for i in 0..takes.len() {
                if shared.binary_search(&i).is_err() {
                    f.add_attribute(AttributeLoc::Param(i as u32), self.noalias);
                }
            }
            let mut st = self.state(f, false);
            for (i, &id) in takes.iter().enumerate() {
                let Some(BasicValueEnum::PointerValue(ptr)) = f.get_nth_param(i as u32) else {
                    return internal("missing function parameter");
                };
                st.bufs.insert(id, ptr);
            }
            let first = tttc_ir::kernel::first_statement_id(p, tttc_ir::kernel::FuncId(k as u32));
            self.top_level_stmts(&mut st, &kf.body, first)?;
            self.finish(&st)?;
            self.funcs.push((f, takes));
        }
        Ok(())
    }

    /// A call of kernel function `func` with `args` in place of its parameters.
    fn call(&self, st: &FnState<'ctx>, func: usize, args: &[BufId]) -> Result<(), LlvmError> {
        let Some((f, takes)) = self.funcs.get(func) else {
            return internal(format!("no LLVM function for f{func}"));
        };
        let Some(kf) = self.p.functions.get(func) else {
            return internal(format!("no kernel function f{func}"));
        };
        let mut values: Vec<BasicMetadataValueEnum> = Vec::with_capacity(takes.len());
        for (i, id) in takes.iter().enumerate() {
            // Parameters take the call's arguments; scratch is passed as it is.
            let id = if i < kf.params.len() {
                match args.get(i) {
                    Some(a) => a,
                    None => return internal(format!("call of f{func} lacks argument {i}")),
                }
            } else {
                id
            };
            match st.bufs.get(id) {
                Some(&ptr) => values.push(ptr.into()),
                None => return internal(format!("b{} is not allocated at a call", id.0)),
            }
        }
        st.b.build_call(*f, &values, "")?;
        Ok(())
    }

    /// The entry: loads the buffer pointers from the two arrays and calls the body.
    fn entry_function(&self, name: &str, body: FunctionValue<'ctx>) -> Result<(), LlvmError> {
        let f = self.define(
            name,
            &[self.ptrt.into(), self.ptrt.into()],
            Linkage::External,
        );
        let b = self.ctx.create_builder();
        b.position_at_end(self.ctx.append_basic_block(f, "start"));
        let mut arrays = Vec::new();
        for param in 0..2 {
            let Some(BasicValueEnum::PointerValue(arr)) = f.get_nth_param(param) else {
                return internal("missing entry parameter");
            };
            arrays.push(arr);
        }
        let mut args: Vec<BasicMetadataValueEnum> = Vec::new();
        for &(array, i) in &self.body_io {
            // SAFETY: in bounds of the caller's array by the entry's contract.
            let slot = unsafe {
                b.build_in_bounds_gep(
                    self.ptrt,
                    arrays[array],
                    &[self.lower.i64t.const_int(i as u64, false)],
                    "slot",
                )?
            };
            args.push(b.build_load(self.ptrt, slot, "buf")?.into());
        }
        args.extend(arrays.iter().map(|&a| BasicMetadataValueEnum::from(a)));
        b.build_call(body, &args, "")?;
        b.build_return(None)?;
        Ok(())
    }

    /// The statements of `body` at the position of `st`. Inside a parallel worker, a
    /// statement list holding more than [`MAX_LOOPS_PER_PART`] loops is split into parts
    /// ([`Gen::stmts_in_parts`]).
    fn stmts(&mut self, st: &mut FnState<'ctx>, body: &[Stmt]) -> Result<(), LlvmError> {
        if st.in_worker && loop_count(body) > MAX_LOOPS_PER_PART {
            return self.stmts_in_parts(st, body);
        }
        self.stmts_inline(st, body)
    }

    /// `body` as consecutive runs of statements of at most [`MAX_LOOPS_PER_PART`] loops, each
    /// run outlined into a function of its own ([`Gen::part`]); a statement holding more loops
    /// than that stays here (its body is split in turn).
    fn stmts_in_parts(&mut self, st: &mut FnState<'ctx>, body: &[Stmt]) -> Result<(), LlvmError> {
        let mut i = 0;
        while i < body.len() {
            let first = loop_count(&body[i..=i]);
            if first > MAX_LOOPS_PER_PART {
                self.stmts_inline(st, &body[i..=i])?;
                i += 1;
                continue;
            }
            let (mut j, mut loops) = (i, 0);
            while j < body.len() {
                let n = loop_count(&body[j..=j]);
                if loops + n > MAX_LOOPS_PER_PART {
                    break;
                }
                loops += n;
                j += 1;
            }
            if loops == 0 {
                self.stmts_inline(st, &body[i..j])?;
            } else {
                self.part(st, &body[i..j])?;
            }
            i = j;
        }
        Ok(())
    }

    /// Parameter types of an outlined function taking the captured buffers (pointers) and then
    /// the captured loop variables (`i64`).
    fn capture_params(
        &self,
        bufs: &[(BufId, PointerValue<'ctx>)],
        vars: &[(VarId, IntValue<'ctx>)],
    ) -> Vec<BasicMetadataTypeEnum<'ctx>> {
        let mut params: Vec<BasicMetadataTypeEnum> =
            bufs.iter().map(|_| self.ptrt.into()).collect();
        params.extend(
            vars.iter()
                .map(|_| BasicMetadataTypeEnum::from(self.lower.i64t)),
        );
        params
    }

    /// Outlines `run` (statements inside a parallel worker) into
    /// `tttc.part.k(T* noalias bufs..., i64 vars...)`, `noinline`, taking the buffers and the
    /// enclosing loop variables it uses, and calls it here. The buffers are the worker's own
    /// allocations or its (`noalias`) parameters, distinct objects, so `noalias` holds.
    fn part(&mut self, st: &mut FnState<'ctx>, run: &[Stmt]) -> Result<(), LlvmError> {
        let k = self.parts;
        self.parts += 1;
        let mut bufs: Vec<(BufId, PointerValue<'ctx>)> = Vec::new();
        for id in buffers_used(run) {
            match st.bufs.get(&id) {
                Some(&p) => bufs.push((id, p)),
                None => return internal(format!("b{} is not allocated in a worker", id.0)),
            }
        }
        let vars = captured_vars(st, run, None);
        let params = self.capture_params(&bufs, &vars);
        let f = self.define(&format!("tttc.part.{k}"), &params, Linkage::Internal);
        f.add_attribute(AttributeLoc::Function, self.noinline);
        for i in 0..bufs.len() {
            f.add_attribute(AttributeLoc::Param(i as u32), self.noalias);
        }
        let mut ps = self.state(f, true);
        bind_captures(&mut ps, f, &bufs, &vars)?;
        self.stmts_inline(&mut ps, run)?;
        self.finish(&ps)?;
        let args: Vec<BasicMetadataValueEnum> = bufs
            .iter()
            .map(|(_, p)| BasicMetadataValueEnum::from(*p))
            .chain(vars.iter().map(|(_, x)| BasicMetadataValueEnum::from(*x)))
            .collect();
        st.b.build_call(f, &args, "")?;
        Ok(())
    }

    fn stmts_inline(&mut self, st: &mut FnState<'ctx>, body: &[Stmt]) -> Result<(), LlvmError> {
        for s in body {
            match s {
                Stmt::Store { buf, index, value } => {
                    let v = self.value(st, value)?;
                    let ptr = self.element(st, *buf, index)?;
                    let store = st.b.build_store(ptr, v)?;
                    if let Some(parallel) = &st.parallel {
                        parallel.tag(store);
                    }
                }
                Stmt::Loop { extent: 0, .. } | Stmt::Barrier => {}
                Stmt::Gemm(g) => self.gemm(st, g)?,
                Stmt::Call { func, args } => self.call(st, func.0 as usize, args)?,
                Stmt::Loop {
                    var,
                    extent,
                    schedule,
                    body,
                } => {
                    if cpu_schedule(*schedule) == CpuSchedule::Parallel && !st.in_worker {
                        self.parallel_loop(st, s, *var, *extent as u64, body)?;
                    } else {
                        self.serial_loop(st, s, *var, *extent as u64, body)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Refreshes the scratch buffers fresh for each iteration of loop `s` (those with a copy
    /// in this function: copies elsewhere are refreshed where they are used).
    fn refresh_scratch(&self, st: &FnState<'ctx>, s: &Stmt) -> Result<(), LlvmError> {
        if let Some(locals) = self.a.iteration_locals.get(&loop_key(s)) {
            for id in locals {
                if let Some(&ptr) = st.bufs.get(id) {
                    self.fill_nan(st, *id, ptr)?;
                }
            }
        }
        Ok(())
    }

    /// `for var in from..to { body }` with `from < to` known or checked (`guard`).
    #[allow(clippy::too_many_arguments)]
    fn counted_loop(
        &mut self,
        st: &mut FnState<'ctx>,
        s: &Stmt,
        var: VarId,
        from: IntValue<'ctx>,
        to: IntValue<'ctx>,
        guard: bool,
        body: &[Stmt],
    ) -> Result<(), LlvmError> {
        let header = self.ctx.append_basic_block(st.func, &format!("i{}", var.0));
        let exit = self
            .ctx
            .append_basic_block(st.func, &format!("i{}.end", var.0));
        let Some(pre) = st.b.get_insert_block() else {
            return internal("builder lost its block");
        };
        if guard {
            let nonempty =
                st.b.build_int_compare(IntPredicate::SLT, from, to, "nonempty")?;
            st.b.build_conditional_branch(nonempty, header, exit)?;
        } else {
            st.b.build_unconditional_branch(header)?;
        }
        st.b.position_at_end(header);
        let phi = st.b.build_phi(self.lower.i64t, &format!("i{}", var.0))?;
        let i = phi.as_basic_value().into_int_value();
        st.vars.push((var, i));
        // A vector loop's own loads and stores go in the access group; a loop nested in one
        // is not covered by its hint.
        let vector = matches!(
            s,
            Stmt::Loop {
                schedule: Schedule::Vector(_),
                ..
            }
        );
        let outer = std::mem::replace(&mut st.parallel, vector.then_some(self.parallel));
        let r = self
            .refresh_scratch(st, s)
            .and_then(|()| self.stmts(st, body));
        st.parallel = outer;
        st.vars.pop();
        r?;
        let next =
            st.b.build_int_nsw_add(i, self.lower.i64t.const_int(1, false), "next")?;
        let more =
            st.b.build_int_compare(IntPredicate::SLT, next, to, "more")?;
        let Some(latch) = st.b.get_insert_block() else {
            return internal("builder lost its block");
        };
        let branch = st.b.build_conditional_branch(more, header, exit)?;
        if vector {
            self.parallel.mark_loop(branch);
        }
        phi.add_incoming(&[(&from, pre), (&next, latch)]);
        st.b.position_at_end(exit);
        Ok(())
    }

    fn serial_loop(
        &mut self,
        st: &mut FnState<'ctx>,
        s: &Stmt,
        var: VarId,
        extent: u64,
        body: &[Stmt],
    ) -> Result<(), LlvmError> {
        let from = self.lower.i64t.const_zero();
        let to = self.lower.i64t.const_int(extent, false);
        self.counted_loop(st, s, var, from, to, false, body)
    }

    /// Outlines the loop into a worker and calls `tttc_parallel_for`.
    fn parallel_loop(
        &mut self,
        st: &mut FnState<'ctx>,
        s: &Stmt,
        var: VarId,
        extent: u64,
        body: &[Stmt],
    ) -> Result<(), LlvmError> {
        let k = self.workers;
        self.workers += 1;
        // What the body needs from here: buffers already allocated (except those the worker
        // allocates itself), enclosing loop variables.
        let a = self.a;
        let own: &[BufId] = a
            .region_allocs
            .get(&loop_key(s))
            .map_or(&[], |v| v.as_slice());
        let bufs: Vec<(BufId, PointerValue<'ctx>)> = buffers_used(body)
            .into_iter()
            .filter(|id| !own.contains(id))
            .filter_map(|id| st.bufs.get(&id).map(|&p| (id, p)))
            .collect();
        let vars = captured_vars(st, body, Some(var));

        // tttc.wbody.k(T* noalias bufs..., i64 vars..., i64 begin, i64 end)
        let mut params = self.capture_params(&bufs, &vars);
        params.extend([
            BasicMetadataTypeEnum::from(self.lower.i64t),
            BasicMetadataTypeEnum::from(self.lower.i64t),
        ]);
        let wbody = self.define(&format!("tttc.wbody.{k}"), &params, Linkage::Internal);
        for i in 0..bufs.len() {
            wbody.add_attribute(AttributeLoc::Param(i as u32), self.noalias);
        }
        {
            let mut ws = self.state(wbody, true);
            let param = |n: usize| wbody.get_nth_param(n as u32);
            bind_captures(&mut ws, wbody, &bufs, &vars)?;
            let n = bufs.len() + vars.len();
            let (Some(BasicValueEnum::IntValue(begin)), Some(BasicValueEnum::IntValue(end))) =
                (param(n), param(n + 1))
            else {
                return internal("missing worker range parameters");
            };
            for &id in own {
                self.alloc(&mut ws, id)?;
            }
            self.counted_loop(&mut ws, s, var, begin, end, true, body)?;
            self.finish(&ws)?;
        }

        // The context: { ptr x bufs, i64 x vars }.
        let mut fields: Vec<BasicTypeEnum> = bufs.iter().map(|_| self.ptrt.into()).collect();
        fields.extend(vars.iter().map(|_| BasicTypeEnum::from(self.lower.i64t)));
        let ctx_ty = self.ctx.struct_type(&fields, false);

        // tttc.worker.k(i8* ctx, i64 begin, i64 end)
        let worker = self.define(
            &format!("tttc.worker.{k}"),
            &[
                self.ptrt.into(),
                self.lower.i64t.into(),
                self.lower.i64t.into(),
            ],
            Linkage::Internal,
        );
        {
            let b = self.ctx.create_builder();
            b.position_at_end(self.ctx.append_basic_block(worker, "start"));
            let (
                Some(BasicValueEnum::PointerValue(ctx)),
                Some(BasicValueEnum::IntValue(begin)),
                Some(BasicValueEnum::IntValue(end)),
            ) = (
                worker.get_nth_param(0),
                worker.get_nth_param(1),
                worker.get_nth_param(2),
            )
            else {
                return internal("missing worker parameters");
            };
            let mut args: Vec<BasicMetadataValueEnum> = Vec::new();
            for (n, ty) in fields.iter().enumerate() {
                let slot = b.build_struct_gep(ctx_ty, ctx, n as u32, "slot")?;
                args.push(b.build_load(*ty, slot, "field")?.into());
            }
            args.push(begin.into());
            args.push(end.into());
            b.build_call(wbody, &args, "")?;
            b.build_return(None)?;
        }

        // Here: fill the context and hand the loop to the runtime.
        let ctx = st.ab.build_alloca(ctx_ty, &format!("ctx{k}"))?;
        let values = bufs
            .iter()
            .map(|(_, p)| BasicValueEnum::from(*p))
            .chain(vars.iter().map(|(_, x)| BasicValueEnum::from(*x)));
        for (n, v) in values.enumerate() {
            let slot = st.b.build_struct_gep(ctx_ty, ctx, n as u32, "slot")?;
            st.b.build_store(slot, v)?;
        }
        let pfor = self.extern_fn(
            PARALLEL_FOR,
            None,
            &[self.ptrt.into(), self.ptrt.into(), self.lower.i64t.into()],
        );
        let worker_ptr = worker.as_global_value().as_pointer_value();
        st.b.build_call(
            pfor,
            &[
                worker_ptr.into(),
                ctx.into(),
                self.lower.i64t.const_int(extent, false).into(),
            ],
            "",
        )?;
        Ok(())
    }

    /// A call of the matrix-product runtime ([`crate::native::gemm`]) with a private constant
    /// descriptor.
    fn gemm(&mut self, st: &mut FnState<'ctx>, g: &Gemm) -> Result<(), LlvmError> {
        let desc = crate::native::gemm::descriptor(g);
        let i64t = self.lower.i64t;
        let values: Vec<IntValue> = desc
            .iter()
            .map(|&x| i64t.const_int(x as u64, true))
            .collect();
        let init = i64t.const_array(&values);
        let global = self.module.add_global(
            i64t.array_type(desc.len() as u32),
            None,
            &format!("tttc.gemm.{}", self.gemms),
        );
        self.gemms += 1;
        global.set_initializer(&init);
        global.set_constant(true);
        global.set_linkage(Linkage::Private);
        let ptr = |id: BufId| match st.bufs.get(&id) {
            Some(&p) => Ok(p),
            None => internal(format!("gemm buffer b{} not allocated", id.0)),
        };
        let args = [
            global.as_pointer_value().into(),
            ptr(g.a.buf)?.into(),
            ptr(g.b.buf)?.into(),
            ptr(g.c.buf)?.into(),
        ];
        let f = self.extern_fn(
            crate::native::gemm::symbol(self.p.dtype),
            None,
            &[self.ptrt.into(); 4],
        );
        st.b.build_call(f, &args, "")?;
        Ok(())
    }

    /// `v` at the position of `st` (the shared lowering, [`crate::llvm_expr`]).
    fn value(&self, st: &FnState<'ctx>, v: &Value) -> Result<FloatValue<'ctx>, LlvmError> {
        Ok(self.lower.value(&st.scope(), v)?)
    }

    /// The address of `buf[index]` at the position of `st`.
    fn element(
        &self,
        st: &FnState<'ctx>,
        buf: BufId,
        index: &Index,
    ) -> Result<PointerValue<'ctx>, LlvmError> {
        Ok(self.lower.element(&st.scope(), buf, index)?)
    }
}

impl<'ctx> FnState<'ctx> {
    /// What expressions see here: the builder, the buffers and the loop variables.
    fn scope(&self) -> Scope<'_, 'ctx> {
        Scope {
            b: &self.b,
            bufs: &self.bufs,
            vars: &self.vars,
            on_access: self.parallel.as_ref().map(|p| p as &dyn AccessHook<'ctx>),
        }
    }
}

/// The enclosing loop variables `stmts` use (all but `except`) with their values in `st`, the
/// innermost binding of each: what an outlined function of `stmts` takes as parameters.
fn captured_vars<'ctx>(
    st: &FnState<'ctx>,
    stmts: &[Stmt],
    except: Option<VarId>,
) -> Vec<(VarId, IntValue<'ctx>)> {
    vars_used(stmts)
        .into_iter()
        .filter(|v| Some(*v) != except)
        .filter_map(|v| {
            st.vars
                .iter()
                .rev()
                .find(|(w, _)| *w == v)
                .map(|&(_, x)| (v, x))
        })
        .collect()
}

/// Binds an outlined function's leading parameters — the captured buffers, then the captured
/// loop variables, as [`Gen::capture_params`] lays them out — in its state `fs`.
fn bind_captures<'ctx>(
    fs: &mut FnState<'ctx>,
    f: FunctionValue<'ctx>,
    bufs: &[(BufId, PointerValue<'ctx>)],
    vars: &[(VarId, IntValue<'ctx>)],
) -> Result<(), LlvmError> {
    for (n, (id, _)) in bufs.iter().enumerate() {
        let Some(BasicValueEnum::PointerValue(p)) = f.get_nth_param(n as u32) else {
            return internal("missing buffer parameter of an outlined function");
        };
        fs.bufs.insert(*id, p);
    }
    for (n, (v, _)) in vars.iter().enumerate() {
        let Some(BasicValueEnum::IntValue(x)) = f.get_nth_param((bufs.len() + n) as u32) else {
            return internal("missing loop-variable parameter of an outlined function");
        };
        fs.vars.push((*v, x));
    }
    Ok(())
}
