//! Loops: serial loops, innermost loops compiled with their [`plan`](super::super::plan)
//! (hoisting, register accumulators, forwarding, a SIMD body and its scalar remainder), and unroll
//! and jam of an enclosing loop into them.

use super::*;

/// Which enclosing loops [`Gen::try_jam`] unrolls and jams into the innermost loop they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Jam {
    /// A loop over `p` whose whole body is a SIMD loop over `j` that no written index of which
    /// mentions `p` ([`jammable`]: `C[i, j] += A[i, p] * B[p, j]`): each element still sees the
    /// iterations of `p` in order, in a register across the `JAM` updates.
    Columns,
    /// A loop over `i` of stores and one scalar loop over `j` whose iterations of `i` are
    /// independent ([`rows_independent`]: row reductions): the rows' dependent chains of
    /// additions run side by side, one register accumulator per row.
    Rows,
}

impl<'a> Gen<'a> {
    pub(super) fn stmts(
        &mut self,
        st: &mut FnState<'_>,
        body: &'a [Stmt],
    ) -> Result<(), CraneliftError> {
        for s in body {
            match s {
                Stmt::Store { buf, index, value } => {
                    let v = self.value(st, value, false)?;
                    let addr = self.element(st, *buf, index)?;
                    st.b.ins().store(scalar_flags(), v, addr, 0);
                }
                Stmt::Loop { extent: 0, .. } | Stmt::Barrier => {}
                Stmt::Gemm(g) => self.gemm(st, g)?,
                Stmt::Call { .. } => {
                    return Err(CraneliftError::Internal(
                        "a call left after inlining".into(),
                    ))
                }
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
                    } else if !self.try_jam(st, s, *var, n, body, Jam::Columns)?
                        && !self.try_jam(st, s, *var, n, body, Jam::Rows)?
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
    pub(super) fn refresh_scratch(
        &mut self,
        st: &mut FnState<'_>,
        s: &Stmt,
    ) -> Result<(), CraneliftError> {
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
    pub(super) fn has_refresh(&self, st: &FnState<'_>, s: &Stmt) -> bool {
        self.a
            .iteration_locals
            .get(&loop_key(s))
            .is_some_and(|l| l.iter().any(|id| st.bufs.contains_key(id)))
    }

    /// Opens `for i in from..to step step` (the caller knows `from < to`, or `guard` checks it):
    /// returns the header (positioned in it), the exit and `i`.
    pub(super) fn open_loop(
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
    pub(super) fn close_loop(
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
    pub(super) fn counted_loop(
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
    pub(super) fn inner_loop(
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
    pub(super) fn body_copies(
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
    pub(super) fn body_once(
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

    /// Unroll and jam: runs [`JAM`] iterations of the serial loop `s` over `var` (whose body
    /// `body` holds one loop over `j`) side by side — each statement before the inner loop for
    /// each of them, then their inner loops in one loop (each copy with its own hoisted values
    /// and accumulators), then each statement after it — and the remaining iterations normally
    /// ([`remainder_loop`](Self::remainder_loop)). `how` says which shape qualifies (see
    /// [`Jam`]). Returns `false` (having emitted nothing) when the loop does not qualify.
    pub(super) fn try_jam(
        &mut self,
        st: &mut FnState<'_>,
        s: &Stmt,
        var: VarId,
        extent: i64,
        body: &'a [Stmt],
        how: Jam,
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
        let shape_ok = match how {
            Jam::Columns => body.len() == 1,
            Jam::Rows => rows_independent(var, *j, body),
        };
        let serial = cpu_schedule(*schedule) == CpuSchedule::Serial || st.in_worker;
        if !shape_ok
            || extent < JAM
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
        let plan_ok = match how {
            Jam::Columns => jammable(&plan, var),
            Jam::Rows => !plan.vector && plan.forwarded.is_empty(),
        };
        if !plan_ok {
            return Ok(false);
        }
        let Ok(n) = i64::try_from(*n) else {
            return internal("loop extent beyond i64");
        };
        match how {
            Jam::Columns => self.stats.jammed_loops += 1,
            Jam::Rows => self.stats.row_jammed_loops += 1,
        }
        let groups = extent / JAM * JAM;
        let from = st.b.ins().iconst(types::I64, 0);
        let to = st.b.ins().iconst(types::I64, groups);
        let (header, exit, base) = self.open_loop(st, from, to, false);
        let mut copies = Vec::with_capacity(JAM as usize);
        for u in 0..JAM {
            copies.push(Some((var, st.b.ins().iadd_imm_s(base, u))));
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
        self.close_loop(st, header, exit, base, to, JAM);
        self.remainder_loop(st, var, groups, extent, body)
            .map(|()| true)
    }

    /// `for var in from..to { body }` with constant bounds, as it stands (no plan): the
    /// iterations an unrolled loop leaves over. Nothing when `from >= to`.
    fn remainder_loop(
        &mut self,
        st: &mut FnState<'_>,
        var: VarId,
        from: i64,
        to: i64,
        body: &'a [Stmt],
    ) -> Result<(), CraneliftError> {
        if from >= to {
            return Ok(());
        }
        let from = st.b.ins().iconst(types::I64, from);
        let to = st.b.ins().iconst(types::I64, to);
        let (header, exit, i) = self.open_loop(st, from, to, false);
        st.vars.push((var, i));
        let r = self.stmts(st, body);
        st.vars.pop();
        r?;
        self.close_loop(st, header, exit, i, to, 1);
        Ok(())
    }
}
