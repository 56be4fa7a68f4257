//! Parallel loops: an outermost parallel loop becomes a worker function (its context a stack
//! array of the buffer pointers and loop variables its body needs) run through
//! `tttc_parallel_for`.

use super::*;

impl<'a> Gen<'a> {
    /// Outlines the loop into a worker and calls `tttc_parallel_for`.
    pub(super) fn parallel_loop(
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
}
