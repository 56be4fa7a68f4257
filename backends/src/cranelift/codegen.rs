//! Kernel IR to Cranelift IR, one function at a time, each compiled to machine code as soon as
//! it is complete.
//!
//! - The entry `void tttc_cl_entry(T** inputs, T** outputs)` loads the buffer pointers, fills
//!   the outputs with NaN, allocates the program's temporaries (NaN too), runs the statements and
//!   frees what it allocated.
//! - Every outermost parallel loop `k` becomes a worker `void tttc_cl_worker_k(i8* ctx, i64
//!   begin, i64 end)` (its context is a stack array of the buffer pointers and enclosing loop
//!   variables the loop body needs, 8 bytes each) that allocates the loop's scratch buffers once
//!   per call and runs iterations `begin..end`; the loop itself becomes a call
//!   `tttc_parallel_for(worker, ctx, extent)`.
//! - Loops are blocks with the loop variable as a block parameter; index arithmetic is `i64`.
//!   Innermost loops (bodies of stores only) follow a [`plan`](super::plan): hoisted invariants,
//!   register accumulators, forwarding, and a 128-bit SIMD body with a scalar remainder; their
//!   addresses are `(base + invariant terms) + variable terms`, so that the first sum is hoisted
//!   and the second folds into the x86 address mode. Enclosing loops may be unrolled and jammed
//!   into them (`try_jam`, `try_row_jam`). Math functions in SIMD code are one call per vector
//!   to a wrapper that applies the scalar function to each lane.
//!
//! Allocation follows the LLVM backend: buffers of at most [`MAX_STACK_BYTES`] go on the stack
//! while a function's stack buffers stay within [`MAX_FRAME_BYTES`] (stack probes are inline),
//! larger ones are `malloc`ed (a failed `malloc` traps) and `free`d at the end.

use super::plan::{jammable, plan_inner, rows_independent, InnerPlan};
use super::runtime::{MathFn, PARALLEL_FOR};
use super::CraneliftError;
use crate::bounds::{buffers_used, cpu_schedule, loop_key, vars_used, Analysis, CpuSchedule};
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
    /// kernel interpreter's fresh buffers.
    fn fill_nan(&mut self, st: &mut FnState<'_>, id: BufId, ptr: Cv) -> Result<(), CraneliftError> {
        let bytes = self.len(id)? * self.elem_bytes();
        if bytes == 0 {
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
            let malloc = self.import(st, "malloc", &[self.ptr], Some(self.ptr))?;
            let n = st.b.ins().iconst(self.ptr, bytes.max(1) as i64);
            let call = st.b.ins().call(malloc, &[n]);
            let ptr = st.b.inst_results(call)[0];
            st.b.ins().trapz(ptr, TrapCode::HEAP_OUT_OF_BOUNDS);
            st.mallocs.push(ptr);
            ptr
        };
        st.bufs.insert(id, ptr);
        Ok(ptr)
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

    fn stmts(&mut self, st: &mut FnState<'_>, body: &'a [Stmt]) -> Result<(), CraneliftError> {
        for s in body {
            match s {
                Stmt::Store { buf, index, value } => {
                    let v = self.value(st, value, false)?;
                    let addr = self.element(st, *buf, index)?;
                    st.b.ins().store(scalar_flags(), v, addr, 0);
                }
                Stmt::Loop { extent: 0, .. } | Stmt::Barrier => {}
                Stmt::Loop {
                    var,
                    extent,
                    schedule,
                    body,
                } => {
                    let Ok(n) = i64::try_from(*extent) else {
                        return internal("loop extent beyond i64");
                    };
                    if cpu_schedule(*schedule) == CpuSchedule::Parallel && !st.in_worker {
                        self.parallel_loop(st, s, *var, n, body)?;
                    } else if !self.try_jam(st, s, *var, n, body)?
                        && !self.try_row_jam(st, s, *var, n, body)?
                    {
                        let from = st.b.ins().iconst(types::I64, 0);
                        let to = st.b.ins().iconst(types::I64, n);
                        self.counted_loop(st, s, *var, from, to, false, body)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Refreshes the scratch buffers fresh for each iteration of loop `s` that have a copy in
    /// this function (copies elsewhere are refreshed where they are used).
    fn refresh_scratch(&mut self, st: &mut FnState<'_>, s: &Stmt) -> Result<(), CraneliftError> {
        let a = self.a;
        if let Some(locals) = a.iteration_locals.get(&loop_key(s)) {
            for id in locals {
                if let Some(&ptr) = st.bufs.get(id) {
                    self.fill_nan(st, *id, ptr)?;
                }
            }
        }
        Ok(())
    }

    /// Whether loop `s` refreshes a scratch buffer in this function.
    fn has_refresh(&self, st: &FnState<'_>, s: &Stmt) -> bool {
        self.a
            .iteration_locals
            .get(&loop_key(s))
            .is_some_and(|l| l.iter().any(|id| st.bufs.contains_key(id)))
    }

    /// Opens `for i in from..to step step` (the caller knows `from < to`, or `guard` checks it):
    /// returns the header (positioned in it), the exit and `i`.
    fn open_loop(
        &mut self,
        st: &mut FnState<'_>,
        from: Cv,
        to: Cv,
        guard: bool,
    ) -> (
        cranelift_codegen::ir::Block,
        cranelift_codegen::ir::Block,
        Cv,
    ) {
        let header = st.b.create_block();
        let i = st.b.append_block_param(header, types::I64);
        let exit = st.b.create_block();
        if guard {
            let nonempty = st.b.ins().icmp(IntCC::SignedLessThan, from, to);
            st.b.ins()
                .brif(nonempty, header, &args(&[from]), exit, &args(&[]));
        } else {
            st.b.ins().jump(header, &args(&[from]));
        }
        st.b.switch_to_block(header);
        (header, exit, i)
    }

    /// Closes the loop opened by [`open_loop`](Self::open_loop).
    fn close_loop(
        &mut self,
        st: &mut FnState<'_>,
        header: cranelift_codegen::ir::Block,
        exit: cranelift_codegen::ir::Block,
        i: Cv,
        to: Cv,
        step: i64,
    ) {
        let next = st.b.ins().iadd_imm_s(i, step);
        let more = st.b.ins().icmp(IntCC::SignedLessThan, next, to);
        st.b.ins()
            .brif(more, header, &args(&[next]), exit, &args(&[]));
        st.b.switch_to_block(exit);
    }

    /// `for var in from..to { body }`, with `from < to` known or checked (`guard`).
    #[allow(clippy::too_many_arguments)]
    fn counted_loop(
        &mut self,
        st: &mut FnState<'_>,
        s: &Stmt,
        var: VarId,
        from: Cv,
        to: Cv,
        guard: bool,
        body: &'a [Stmt],
    ) -> Result<(), CraneliftError> {
        if !self.has_refresh(st, s) {
            if let Some(plan) = plan_inner(var, body) {
                return self.inner_loop(st, var, from, to, guard, body, &plan, &[None]);
            }
        }
        let (header, exit, i) = self.open_loop(st, from, to, guard);
        st.vars.push((var, i));
        let r = self
            .refresh_scratch(st, s)
            .and_then(|()| self.stmts(st, body));
        st.vars.pop();
        r?;
        self.close_loop(st, header, exit, i, to, 1);
        Ok(())
    }

    /// An innermost loop (stores only) compiled with its plan. `copies` lists the bindings of
    /// the jammed outer loop's variable for each copy of the body, in order (`[None]` when
    /// nothing is jammed).
    #[allow(clippy::too_many_arguments)]
    fn inner_loop(
        &mut self,
        st: &mut FnState<'_>,
        var: VarId,
        from: Cv,
        to: Cv,
        guard: bool,
        body: &'a [Stmt],
        plan: &InnerPlan<'a>,
        copies: &[Option<(VarId, Cv)>],
    ) -> Result<(), CraneliftError> {
        let done = st.b.create_block();
        if guard {
            // Everything hoisted is only computed when the loop runs.
            let pre = st.b.create_block();
            let nonempty = st.b.ins().icmp(IntCC::SignedLessThan, from, to);
            st.b.ins().brif(nonempty, pre, &[], done, &[]);
            st.b.switch_to_block(pre);
        }
        // Hoisted values (per copy) and accumulators, computed here where the loop is sure
        // to run.
        let mut ctxs = Vec::with_capacity(copies.len());
        for bind in copies {
            let mut ctx = LoopCtx::default();
            st.vars.extend(bind.iter().copied());
            let r = (|| -> Result<(), CraneliftError> {
                for v in &plan.hoisted {
                    let x = self.value(st, v, false)?;
                    ctx.hoisted.insert(*v as *const Value, x);
                }
                Ok(())
            })();
            if bind.is_some() {
                st.vars.pop();
            }
            r?;
            ctxs.push(ctx);
        }
        // Register accumulators, per copy (in a jammed loop each copy has its own elements).
        let mut accs = Vec::new();
        for (ctx, bind) in ctxs.iter_mut().zip(copies) {
            st.vars.extend(bind.iter().copied());
            let r = (|| -> Result<(), CraneliftError> {
                for &(buf, index) in &plan.promoted {
                    let addr = self.element(st, buf, index)?;
                    let x = st.b.ins().load(self.ft, scalar_flags(), addr, 0);
                    let var = st.b.declare_var(self.ft);
                    st.b.def_var(var, x);
                    ctx.promoted.insert(buf, var);
                    accs.push((addr, var));
                }
                Ok(())
            })();
            if bind.is_some() {
                st.vars.pop();
            }
            r?;
        }
        self.stats.register_accumulators += accs.len();

        let mut scalar_from = from;
        if plan.vector {
            self.stats.simd_loops += 1;
            for ctx in &mut ctxs {
                for v in &plan.hoisted {
                    let x = ctx.hoisted[&(*v as *const Value)];
                    let s = st.b.ins().splat(self.vt, x);
                    ctx.splats.insert(*v as *const Value, s);
                }
            }
            // vend = from + (to - from) rounded down to a multiple of the lanes.
            let count = st.b.ins().isub(to, from);
            let whole = st.b.ins().band_imm_s(count, -i64::from(self.lanes));
            let vend = st.b.ins().iadd(from, whole);
            let (header, exit, i) = self.open_loop(st, from, vend, true);
            st.vars.push((var, i));
            st.simd_var = Some((var, i));
            st.loop_var = Some(var);
            let r = self.body_copies(st, body, plan, &mut ctxs, copies, true);
            st.loop_var = None;
            st.simd_var = None;
            st.vars.pop();
            r?;
            self.close_loop(st, header, exit, i, vend, i64::from(self.lanes));
            scalar_from = vend;
        } else {
            self.stats.scalar_planned_loops += 1;
        }
        let (header, exit, i) = self.open_loop(st, scalar_from, to, plan.vector || guard);
        st.vars.push((var, i));
        st.loop_var = Some(var);
        let r = self.body_copies(st, body, plan, &mut ctxs, copies, false);
        st.loop_var = None;
        st.vars.pop();
        r?;
        self.close_loop(st, header, exit, i, to, 1);

        for (addr, var) in accs {
            let x = st.b.use_var(var);
            st.b.ins().store(scalar_flags(), x, addr, 0);
        }
        st.b.ins().jump(done, &[]);
        st.b.switch_to_block(done);
        Ok(())
    }

    /// One iteration of an innermost loop: every copy of `body` in order (scalar, or lanes
    /// `i..i+lanes` with `vec`), with the plan's register accumulators and forwarding; the
    /// forwarded buffers are stored once at the end.
    fn body_copies(
        &mut self,
        st: &mut FnState<'_>,
        body: &'a [Stmt],
        plan: &InnerPlan<'a>,
        ctxs: &mut [LoopCtx],
        copies: &[Option<(VarId, Cv)>],
        vec: bool,
    ) -> Result<(), CraneliftError> {
        st.fwd.clear();
        st.fwd_bufs = plan.forwarded.iter().map(|(b, _)| *b).collect();
        let r = (|| -> Result<(), CraneliftError> {
            for (ctx, bind) in ctxs.iter_mut().zip(copies) {
                std::mem::swap(&mut st.inner, ctx);
                st.vars.extend(bind.iter().copied());
                let r = self.body_once(st, body, vec);
                if bind.is_some() {
                    st.vars.pop();
                }
                std::mem::swap(&mut st.inner, ctx);
                r?;
            }
            // Store the forwarded buffers' final values (their indices do not mention the
            // jammed variable, so any binding of it gives the same address).
            for &(buf, index) in &plan.forwarded {
                if let Some(&(true, x)) = st.fwd.get(&buf) {
                    let addr = self.element(st, buf, index)?;
                    let flags = if vec { vector_flags() } else { scalar_flags() };
                    st.b.ins().store(flags, x, addr, 0);
                }
            }
            Ok(())
        })();
        st.fwd.clear();
        st.fwd_bufs.clear();
        r
    }

    /// The stores of one copy of an innermost loop's body.
    fn body_once(
        &mut self,
        st: &mut FnState<'_>,
        body: &'a [Stmt],
        vec: bool,
    ) -> Result<(), CraneliftError> {
        for s in body {
            let Stmt::Store { buf, index, value } = s else {
                return internal("loop inside an innermost loop");
            };
            let v = self.value(st, value, vec)?;
            if let Some(&var) = st.inner.promoted.get(buf) {
                if vec {
                    return internal("register accumulator in a SIMD loop");
                }
                st.b.def_var(var, v);
            } else if st.fwd_bufs.contains(buf) {
                st.fwd.insert(*buf, (true, v));
            } else {
                let addr = self.element(st, *buf, index)?;
                let flags = if vec { vector_flags() } else { scalar_flags() };
                st.b.ins().store(flags, v, addr, 0);
            }
        }
        Ok(())
    }

    /// A serial loop over `p` whose whole body is a SIMD-planned loop over `j` that can be
    /// jammed (see [`jammable`]): runs [`JAM`] iterations of `p` per iteration of `j`, then the
    /// remaining iterations of `p` normally. Returns `false` (having emitted nothing) when the
    /// loop does not qualify.
    fn try_jam(
        &mut self,
        st: &mut FnState<'_>,
        s: &Stmt,
        p: VarId,
        extent: i64,
        body: &'a [Stmt],
    ) -> Result<bool, CraneliftError> {
        let [inner @ Stmt::Loop {
            var: j,
            extent: n,
            schedule,
            body: jbody,
        }] = body
        else {
            return Ok(false);
        };
        let serial = cpu_schedule(*schedule) == CpuSchedule::Serial || st.in_worker;
        if extent < JAM
            || *n == 0
            || !serial
            || self.has_refresh(st, s)
            || self.has_refresh(st, inner)
        {
            return Ok(false);
        }
        let Some(plan) = plan_inner(*j, jbody) else {
            return Ok(false);
        };
        if !jammable(&plan, p) {
            return Ok(false);
        }
        let Ok(n) = i64::try_from(*n) else {
            return internal("loop extent beyond i64");
        };
        self.stats.jammed_loops += 1;
        let groups = extent / JAM * JAM;
        let from = st.b.ins().iconst(types::I64, 0);
        let to = st.b.ins().iconst(types::I64, groups);
        let (header, exit, pb) = self.open_loop(st, from, to, false);
        let mut copies = Vec::with_capacity(JAM as usize);
        for u in 0..JAM {
            copies.push(Some((p, st.b.ins().iadd_imm_s(pb, u))));
        }
        let jfrom = st.b.ins().iconst(types::I64, 0);
        let jto = st.b.ins().iconst(types::I64, n);
        self.inner_loop(st, *j, jfrom, jto, false, jbody, &plan, &copies)?;
        self.close_loop(st, header, exit, pb, to, JAM);
        if groups < extent {
            let from = st.b.ins().iconst(types::I64, groups);
            let to = st.b.ins().iconst(types::I64, extent);
            let (header, exit, i) = self.open_loop(st, from, to, false);
            st.vars.push((p, i));
            let r = self.stmts(st, body);
            st.vars.pop();
            r?;
            self.close_loop(st, header, exit, i, to, 1);
        }
        Ok(true)
    }

    /// A serial loop over `i` made of stores and one innermost loop over `j`, whose iterations
    /// are independent ([`rows_independent`]): runs [`JAM`] iterations of `i` side by side —
    /// each statement for each of them, and their inner loops in one loop with one register
    /// accumulator per row — then the remaining iterations normally. Returns `false` (having
    /// emitted nothing) when the loop does not qualify.
    fn try_row_jam(
        &mut self,
        st: &mut FnState<'_>,
        s: &Stmt,
        i: VarId,
        extent: i64,
        body: &'a [Stmt],
    ) -> Result<bool, CraneliftError> {
        let Some(k) = body.iter().position(|s| matches!(s, Stmt::Loop { .. })) else {
            return Ok(false);
        };
        let inner = &body[k];
        let Stmt::Loop {
            var: j,
            extent: n,
            schedule,
            body: jbody,
        } = inner
        else {
            return internal("not a loop");
        };
        let serial = cpu_schedule(*schedule) == CpuSchedule::Serial || st.in_worker;
        if extent < JAM
            || *n == 0
            || !serial
            || self.has_refresh(st, s)
            || self.has_refresh(st, inner)
            || !rows_independent(i, *j, body)
        {
            return Ok(false);
        }
        let Some(plan) = plan_inner(*j, jbody) else {
            return Ok(false);
        };
        if plan.vector || !plan.forwarded.is_empty() {
            return Ok(false);
        }
        let Ok(n) = i64::try_from(*n) else {
            return internal("loop extent beyond i64");
        };
        self.stats.row_jammed_loops += 1;
        let groups = extent / JAM * JAM;
        let from = st.b.ins().iconst(types::I64, 0);
        let to = st.b.ins().iconst(types::I64, groups);
        let (header, exit, ib) = self.open_loop(st, from, to, false);
        let mut copies = Vec::with_capacity(JAM as usize);
        for u in 0..JAM {
            copies.push(Some((i, st.b.ins().iadd_imm_s(ib, u))));
        }
        let each = |g: &mut Self, st: &mut FnState<'_>, stmts: &'a [Stmt]| {
            for s in stmts {
                for bind in &copies {
                    st.vars.extend(bind.iter().copied());
                    let r = g.stmts(st, std::slice::from_ref(s));
                    st.vars.pop();
                    r?;
                }
            }
            Ok::<(), CraneliftError>(())
        };
        each(self, st, &body[..k])?;
        let jfrom = st.b.ins().iconst(types::I64, 0);
        let jto = st.b.ins().iconst(types::I64, n);
        self.inner_loop(st, *j, jfrom, jto, false, jbody, &plan, &copies)?;
        each(self, st, &body[k + 1..])?;
        self.close_loop(st, header, exit, ib, to, JAM);
        if groups < extent {
            let from = st.b.ins().iconst(types::I64, groups);
            let to = st.b.ins().iconst(types::I64, extent);
            let (header, exit, iv) = self.open_loop(st, from, to, false);
            st.vars.push((i, iv));
            let r = self.stmts(st, body);
            st.vars.pop();
            r?;
            self.close_loop(st, header, exit, iv, to, 1);
        }
        Ok(true)
    }

    /// Outlines the loop into a worker and calls `tttc_parallel_for`.
    fn parallel_loop(
        &mut self,
        st: &mut FnState<'_>,
        s: &Stmt,
        var: VarId,
        extent: i64,
        body: &'a [Stmt],
    ) -> Result<(), CraneliftError> {
        let k = self.workers;
        self.workers += 1;
        let a = self.a;
        let own: &[BufId] = a
            .region_allocs
            .get(&loop_key(s))
            .map_or(&[], |v| v.as_slice());
        let bufs: Vec<(BufId, Cv)> = buffers_used(body)
            .into_iter()
            .filter(|id| !own.contains(id))
            .filter_map(|id| st.bufs.get(&id).map(|&p| (id, p)))
            .collect();
        let vars: Vec<(VarId, Cv)> = vars_used(body)
            .into_iter()
            .filter(|v| *v != var)
            .filter_map(|v| {
                st.vars
                    .iter()
                    .rev()
                    .find(|(w, _)| *w == v)
                    .map(|&(_, x)| (v, x))
            })
            .collect();

        // tttc_cl_worker_k(i8* ctx, i64 begin, i64 end)
        let sig = self.signature(&[self.ptr, types::I64, types::I64], None);
        let name = format!("tttc_cl_worker_{k}");
        let wid = self
            .module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(|e| CraneliftError::Cranelift(format!("declaring {name}: {e}")))?;
        {
            let mut func = Function::with_name_signature(UserFuncName::user(0, wid.as_u32()), sig);
            let mut fctx = FunctionBuilderContext::new();
            {
                let mut ws = Self::new_state(&mut func, &mut fctx, true);
                let block = ws.b.create_block();
                ws.b.append_block_params_for_function_params(block);
                ws.b.switch_to_block(block);
                let params = ws.b.block_params(block).to_vec();
                let (ctx, begin, end) = (params[0], params[1], params[2]);
                for (n, (id, _)) in bufs.iter().enumerate() {
                    let p =
                        ws.b.ins()
                            .load(self.ptr, scalar_flags(), ctx, (n * 8) as i32);
                    ws.bufs.insert(*id, p);
                }
                for (n, (v, _)) in vars.iter().enumerate() {
                    let x = ws.b.ins().load(
                        types::I64,
                        scalar_flags(),
                        ctx,
                        ((bufs.len() + n) * 8) as i32,
                    );
                    ws.vars.push((*v, x));
                }
                for &id in own {
                    self.alloc(&mut ws, id)?;
                }
                self.counted_loop(&mut ws, s, var, begin, end, true, body)?;
                self.finish(&mut ws)?;
                ws.b.seal_all_blocks();
                ws.b.finalize(self.module.target_config());
            }
            self.define(wid, func)?;
        }

        // Here: fill the context and hand the loop to the runtime.
        let fields = bufs.len() + vars.len();
        let slot = st.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (fields.max(1) * 8) as u32,
            3,
        ));
        let ctx = st.b.ins().stack_addr(self.ptr, slot, 0);
        let values: Vec<Cv> = bufs
            .iter()
            .map(|(_, p)| *p)
            .chain(vars.iter().map(|(_, x)| *x))
            .collect();
        for (n, v) in values.into_iter().enumerate() {
            st.b.ins().store(scalar_flags(), v, ctx, (n * 8) as i32);
        }
        let wref = self.func_ref(st, wid);
        let worker = st.b.ins().func_addr(self.ptr, wref);
        let pfor = self.import(st, PARALLEL_FOR, &[self.ptr, self.ptr, types::I64], None)?;
        let n = st.b.ins().iconst(types::I64, extent);
        st.b.ins().call(pfor, &[worker, ctx, n]);
        Ok(())
    }

    /// The address of `buf[index]` (bounds proven by the analysis).
    fn element(
        &mut self,
        st: &mut FnState<'_>,
        buf: BufId,
        index: &Index,
    ) -> Result<Cv, CraneliftError> {
        let Some(&base) = st.bufs.get(&buf) else {
            return internal(format!("buffer b{} not available here", buf.0));
        };
        // Inside an innermost loop, split the sum into the terms that do not mention its
        // variable (`base + fixed`: loop-invariant, hoisted by Cranelift) and those that do
        // (shared by every access with the same offset, and folded into the address mode).
        // Wrapping `i64` addition is associative, so the address is the same.
        if let Some(var) = st.loop_var {
            let mut terms = Vec::new();
            flatten_sum(index, &mut terms);
            let (varying, fixed): (Vec<&Index>, Vec<&Index>) =
                terms.into_iter().partition(|t| t.mentions(var));
            if !varying.is_empty() && !fixed.is_empty() {
                let f = self.index_sum(st, &fixed)?;
                let f = st.b.ins().ishl_imm_s(f, self.shift);
                let moved = st.b.ins().iadd(base, f);
                let v = self.index_sum(st, &varying)?;
                let v = st.b.ins().ishl_imm_s(v, self.shift);
                return Ok(st.b.ins().iadd(moved, v));
            }
        }
        let i = self.index(st, index)?;
        let off = st.b.ins().ishl_imm_s(i, self.shift);
        Ok(st.b.ins().iadd(base, off))
    }

    /// The sum of `terms` (at least one).
    fn index_sum(&mut self, st: &mut FnState<'_>, terms: &[&Index]) -> Result<Cv, CraneliftError> {
        let mut acc: Option<Cv> = None;
        for t in terms {
            let x = self.index(st, t)?;
            acc = Some(match acc {
                None => x,
                Some(a) => st.b.ins().iadd(a, x),
            });
        }
        match acc {
            Some(a) => Ok(a),
            None => internal("an empty index sum"),
        }
    }

    fn index(&mut self, st: &mut FnState<'_>, index: &Index) -> Result<Cv, CraneliftError> {
        Ok(match index {
            Index::Const(x) => st.b.ins().iconst(types::I64, *x),
            Index::Var(v) => match st.vars.iter().rev().find(|(w, _)| w == v) {
                Some(&(_, x)) => x,
                None => return internal(format!("loop variable i{} not in scope", v.0)),
            },
            Index::Add(a, b) => {
                let (a, b) = (self.index(st, a)?, self.index(st, b)?);
                st.b.ins().iadd(a, b)
            }
            Index::Mul(a, k) => {
                let a = self.index(st, a)?;
                st.b.ins().imul_imm_s(a, *k)
            }
            Index::Div(a, k) => {
                let a = self.index(st, a)?;
                st.b.ins().sdiv_imm_s(a, *k)
            }
            Index::Rem(a, k) => {
                let a = self.index(st, a)?;
                st.b.ins().srem_imm_s(a, *k)
            }
        })
    }

    /// A constant of the element type (rounded like `as f32` for `f32` programs), splatted in
    /// SIMD code.
    fn konst(&self, st: &mut FnState<'_>, x: f64, vec: bool) -> Cv {
        let s = match self.p.dtype {
            DType::F32 => st.b.ins().f32const(x as f32),
            DType::F64 => st.b.ins().f64const(x),
        };
        if vec {
            st.b.ins().splat(self.vt, s)
        } else {
            s
        }
    }

    /// `cond ? a : b` for a comparison result `cond` (a lane mask in SIMD code).
    fn choose(&self, st: &mut FnState<'_>, cond: Cv, a: Cv, b: Cv, vec: bool) -> Cv {
        if vec {
            let flags = MemFlagsData::new().with_endianness(Endianness::Little);
            let mask = st.b.ins().bitcast(self.vt, flags, cond);
            st.b.ins().bitselect(mask, a, b)
        } else {
            st.b.ins().select(cond, a, b)
        }
    }

    /// Applies a scalar function lane by lane (SIMD code) or once.
    fn lanewise(
        &self,
        st: &mut FnState<'_>,
        xs: &[Cv],
        vec: bool,
        f: &dyn Fn(&mut FunctionBuilder<'_>, &[Cv]) -> Cv,
    ) -> Result<Cv, CraneliftError> {
        if !vec {
            return Ok(f(&mut st.b, xs));
        }
        let mut out = None;
        for lane in 0..self.lanes {
            let scalars: Vec<Cv> = xs
                .iter()
                .map(|&x| st.b.ins().extractlane(x, lane))
                .collect();
            let y = f(&mut st.b, &scalars);
            out = Some(match out {
                None => st.b.ins().splat(self.vt, y),
                Some(v) => st.b.ins().insertlane(v, y, lane),
            });
        }
        match out {
            Some(v) => Ok(v),
            None => internal("a vector without lanes"),
        }
    }

    /// A call of the math wrapper for `f`; in SIMD code one call of its in-place vector
    /// version (the lanes go through a stack slot), which applies the same scalar function to
    /// each lane.
    fn math(
        &mut self,
        st: &mut FnState<'_>,
        f: MathFn,
        xs: &[Cv],
        vec: bool,
    ) -> Result<Cv, CraneliftError> {
        if xs.len() != f.arity() {
            return internal(format!("{f:?} takes {} argument(s)", f.arity()));
        }
        let ft = self.ft;
        if !vec {
            let params = vec![ft; f.arity()];
            let fref = self.import(st, f.symbol(ft), &params, Some(ft))?;
            let call = st.b.ins().call(fref, xs);
            return Ok(st.b.inst_results(call)[0]);
        }
        let fref = self.import(st, f.vector_symbol(ft), &[self.ptr], None)?;
        let slot = match st.math_slot {
            Some(s) => s,
            None => {
                let s = st.b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    32,
                    4,
                ));
                st.math_slot = Some(s);
                s
            }
        };
        let addr = st.b.ins().stack_addr(self.ptr, slot, 0);
        for (k, &x) in xs.iter().enumerate() {
            st.b.ins().store(vector_flags(), x, addr, (16 * k) as i32);
        }
        st.b.ins().call(fref, &[addr]);
        Ok(st.b.ins().load(self.vt, vector_flags(), addr, 0))
    }

    fn sigmoid(&mut self, st: &mut FnState<'_>, x: Cv, vec: bool) -> Result<Cv, CraneliftError> {
        let one = self.konst(st, 1.0, vec);
        let neg = st.b.ins().fneg(x);
        let e = self.math(st, MathFn::Exp, &[neg], vec)?;
        let d = st.b.ins().fadd(one, e);
        Ok(st.b.ins().fdiv(one, d))
    }

    fn unary(
        &mut self,
        st: &mut FnState<'_>,
        op: UnaryOp,
        x: Cv,
        vec: bool,
    ) -> Result<Cv, CraneliftError> {
        if let Some(f) = MathFn::of_unary(op) {
            return self.math(st, f, &[x], vec);
        }
        Ok(match op {
            UnaryOp::Neg => st.b.ins().fneg(x),
            UnaryOp::Sqrt => st.b.ins().sqrt(x),
            UnaryOp::Rsqrt => {
                let one = self.konst(st, 1.0, vec);
                let s = st.b.ins().sqrt(x);
                st.b.ins().fdiv(one, s)
            }
            UnaryOp::Sigmoid => self.sigmoid(st, x, vec)?,
            UnaryOp::Silu => {
                let s = self.sigmoid(st, x, vec)?;
                st.b.ins().fmul(x, s)
            }
            UnaryOp::Relu => {
                // `x < 0 ? 0 : x`: NaN passes through.
                let zero = self.konst(st, 0.0, vec);
                let neg = st.b.ins().fcmp(FloatCC::LessThan, x, zero);
                self.choose(st, neg, zero, x, vec)
            }
            UnaryOp::GeluTanh => {
                // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in the reference's order.
                let half = self.konst(st, 0.5, vec);
                let c = self.konst(st, (2.0 / std::f64::consts::PI).sqrt(), vec);
                let a = self.konst(st, 0.044715, vec);
                let one = self.konst(st, 1.0, vec);
                let x2 = st.b.ins().fmul(x, x);
                let x3 = st.b.ins().fmul(x2, x);
                let ax3 = st.b.ins().fmul(a, x3);
                let inner = st.b.ins().fadd(x, ax3);
                let arg = st.b.ins().fmul(c, inner);
                let t = self.math(st, MathFn::Tanh, &[arg], vec)?;
                let onep = st.b.ins().fadd(one, t);
                let hx = st.b.ins().fmul(half, x);
                st.b.ins().fmul(hx, onep)
            }
            UnaryOp::Step => {
                let zero = self.konst(st, 0.0, vec);
                let one = self.konst(st, 1.0, vec);
                let pos = st.b.ins().fcmp(FloatCC::GreaterThan, x, zero);
                self.choose(st, pos, one, zero, vec)
            }
            UnaryOp::Floor => {
                // Lane by lane: the scalar instruction (or libm's `floor` without SSE4.1).
                self.lanewise(st, &[x], vec, &|b, xs| b.ins().floor(xs[0]))?
            }
            UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sin | UnaryOp::Cos => {
                return internal("math function not dispatched")
            }
        })
    }

    fn binary(
        &mut self,
        st: &mut FnState<'_>,
        op: BinaryOp,
        a: Cv,
        b: Cv,
        vec: bool,
    ) -> Result<Cv, CraneliftError> {
        if let Some(f) = MathFn::of_binary(op) {
            return self.math(st, f, &[a, b], vec);
        }
        Ok(match op {
            BinaryOp::Add => st.b.ins().fadd(a, b),
            BinaryOp::Sub => st.b.ins().fsub(a, b),
            BinaryOp::Mul => st.b.ins().fmul(a, b),
            BinaryOp::Div => st.b.ins().fdiv(a, b),
            BinaryOp::Max | BinaryOp::Min => {
                // NaN in, NaN out (`a + b`); otherwise `a >= b ? a : b` (`<=` for min), which
                // also fixes which zero wins, like the reference.
                let cc = if op == BinaryOp::Max {
                    FloatCC::GreaterThanOrEqual
                } else {
                    FloatCC::LessThanOrEqual
                };
                let nan = st.b.ins().fcmp(FloatCC::Unordered, a, b);
                let pick = st.b.ins().fcmp(cc, a, b);
                let m = self.choose(st, pick, a, b, vec);
                let sum = st.b.ins().fadd(a, b);
                self.choose(st, nan, sum, m, vec)
            }
            BinaryOp::Pow => return internal("pow not dispatched"),
        })
    }

    /// `float(index)` like the interpreter: `i64` to `f64`, then rounded to `f32`.
    fn index_to_float(&mut self, st: &mut FnState<'_>, i: Cv) -> Cv {
        let d = st.b.ins().fcvt_from_sint(types::F64, i);
        if self.ft == types::F32 {
            st.b.ins().fdemote(types::F32, d)
        } else {
            d
        }
    }

    /// The value of `v`: a scalar, or in SIMD code (`vec`) the vector of lanes
    /// `i..i+lanes` of the innermost loop variable `i`.
    fn value(&mut self, st: &mut FnState<'_>, v: &Value, vec: bool) -> Result<Cv, CraneliftError> {
        let key = v as *const Value;
        if vec {
            if let Some(&x) = st.inner.splats.get(&key) {
                return Ok(x);
            }
        } else if let Some(&x) = st.inner.hoisted.get(&key) {
            return Ok(x);
        }
        Ok(match v {
            Value::Load { buf, index } => {
                if let Some(&var) = st.inner.promoted.get(buf) {
                    if vec {
                        return internal("register accumulator in a SIMD loop");
                    }
                    st.b.use_var(var)
                } else if let Some(&(_, x)) = st.fwd.get(buf) {
                    x
                } else if st.fwd_bufs.contains(buf) {
                    let addr = self.element(st, *buf, index)?;
                    let x = if vec {
                        st.b.ins().load(self.vt, vector_flags(), addr, 0)
                    } else {
                        st.b.ins().load(self.ft, scalar_flags(), addr, 0)
                    };
                    st.fwd.insert(*buf, (false, x));
                    x
                } else {
                    let addr = self.element(st, *buf, index)?;
                    if vec {
                        st.b.ins().load(self.vt, vector_flags(), addr, 0)
                    } else {
                        st.b.ins().load(self.ft, scalar_flags(), addr, 0)
                    }
                }
            }
            Value::Const(x) => self.konst(st, *x, vec),
            Value::FromIndex(index) => {
                if vec {
                    // Lane by lane, with the innermost variable at i + lane.
                    let Some((var, i)) = st.simd_var else {
                        return internal("SIMD code outside a SIMD loop");
                    };
                    let mut out = None;
                    for lane in 0..self.lanes {
                        let il = st.b.ins().iadd_imm_s(i, i64::from(lane));
                        st.vars.push((var, il));
                        let r = self.index(st, index);
                        st.vars.pop();
                        let x = self.index_to_float(st, r?);
                        out = Some(match out {
                            None => st.b.ins().splat(self.vt, x),
                            Some(v) => st.b.ins().insertlane(v, x, lane),
                        });
                    }
                    match out {
                        Some(v) => v,
                        None => return internal("a vector without lanes"),
                    }
                } else {
                    let i = self.index(st, index)?;
                    self.index_to_float(st, i)
                }
            }
            Value::Unary(op, x) => {
                let x = self.value(st, x, vec)?;
                self.unary(st, *op, x, vec)?
            }
            Value::Binary(op, a, b) => {
                let a = self.value(st, a, vec)?;
                let b = self.value(st, b, vec)?;
                self.binary(st, *op, a, b, vec)?
            }
        })
    }
}
