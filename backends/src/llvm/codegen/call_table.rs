//! Runs of calls of one kernel function (a model's layers, one call each) as a loop over a
//! table of their arguments.
//!
//! A language model of `n` layers calls its layer function `n` times with ~80 buffer arguments
//! each. Written out, those calls and the ~`80 n` pointers they take make the body's code grow
//! with depth, and LLVM's instruction schedulers, which work on one basic block at a time in
//! time superlinear in its length, made that the part of compilation that grew fastest (a
//! 125M-parameter model: the entry took 100 ms of code generation at 12 layers, 255 ms at 24).
//! Instead, a run of at least [`MIN_TABLE_CALLS`] consecutive calls of one function becomes
//! one call in a loop; argument `a` of call `l` is read from a constant table as
//! `(array, index, byte offset)`: the pointer `arrays[array][index] + offset`, where array 0 is
//! the entry's input pointers, 1 its output pointers and 2 a small array of the body's own
//! pointers (the arena's start first). The code is the same size at any depth; the table grows
//! by 24 bytes an argument.

use super::{internal, FnState, Gen, LlvmError};
use crate::bounds::buffers_used;
use inkwell::module::Linkage;
use inkwell::values::{BasicMetadataValueEnum, BasicValueEnum, IntValue, PointerValue};
use inkwell::IntPredicate;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use tttc_ir::kernel::{BufId, KernelProgram, Stmt};

/// Fewest consecutive calls of one function emitted as a loop over a table.
pub(super) const MIN_TABLE_CALLS: usize = 3;

/// The runs of at least [`MIN_TABLE_CALLS`] consecutive [`Stmt::Call`]s of one function in
/// `body`, as index ranges, in order.
pub(super) fn call_runs(body: &[Stmt]) -> Vec<Range<usize>> {
    let callee = |s: &Stmt| match s {
        Stmt::Call { func, .. } => Some(*func),
        _ => None,
    };
    let mut runs = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let Some(func) = callee(&body[i]) else {
            i += 1;
            continue;
        };
        let end = (i..body.len())
            .find(|&j| callee(&body[j]) != Some(func))
            .unwrap_or(body.len());
        if end - i >= MIN_TABLE_CALLS {
            runs.push(i..end);
        }
        i = end;
    }
    runs
}

/// The buffers passed to the calls of `runs` (as arguments, which come from the table).
pub(super) fn table_arguments(body: &[Stmt], runs: &[Range<usize>]) -> BTreeSet<BufId> {
    runs.iter()
        .flat_map(|r| buffers_used(&body[r.clone()]))
        .collect()
}

/// The buffers the body needs a pointer of its own for: those its statements outside `runs`
/// use, and the program-wide scratch the functions called in `runs` take (passed as it is).
pub(super) fn needed_outside(
    p: &KernelProgram,
    runs: &[Range<usize>],
    takes: impl Fn(usize) -> Vec<BufId>,
) -> BTreeSet<BufId> {
    let mut needed = BTreeSet::new();
    let mut at = 0;
    for r in runs {
        needed.extend(buffers_used(&p.body[at..r.start]));
        if let Some(Stmt::Call { func, .. }) = p.body.get(r.start) {
            let f = func.0 as usize;
            let params = p.functions.get(f).map_or(0, |kf| kf.params.len());
            needed.extend(takes(f).into_iter().skip(params));
        }
        at = r.end;
    }
    needed.extend(buffers_used(&p.body[at..]));
    needed
}

/// Where the body finds the pointers a table names.
pub(super) struct TableSources<'ctx> {
    /// The entry's arrays of input and output pointers.
    pub(super) arrays: [PointerValue<'ctx>; 2],
    /// The arena's start, when there is an arena.
    pub(super) arena: Option<PointerValue<'ctx>>,
}

impl<'ctx> Gen<'_, 'ctx> {
    /// `calls` (consecutive calls of kernel function `func`, at least two) as a loop over a
    /// table of their arguments (module docs).
    pub(super) fn call_table(
        &mut self,
        st: &mut FnState<'ctx>,
        sources: &TableSources<'ctx>,
        func: usize,
        calls: &[Stmt],
    ) -> Result<(), LlvmError> {
        let Some((f, takes)) = self.funcs.get(func).cloned() else {
            return internal(format!("no LLVM function for f{func}"));
        };
        let Some(kf) = self.p.functions.get(func) else {
            return internal(format!("no kernel function f{func}"));
        };
        let params = kf.params.len();
        let position = |list: Vec<(BufId, _)>| -> HashMap<BufId, u64> {
            list.into_iter()
                .enumerate()
                .map(|(i, (id, _))| (id, i as u64))
                .collect()
        };
        let inputs = position(self.p.inputs());
        let outputs = position(self.p.outputs());
        let arena: HashMap<BufId, u64> = self.a.arena.iter().copied().collect();
        // Array 2: the arena's start, then every other pointer the table names.
        let mut own: Vec<PointerValue<'ctx>> = sources.arena.into_iter().collect();
        let mut own_index: HashMap<BufId, u64> = HashMap::new();
        let mut entries: Vec<u64> = Vec::with_capacity(calls.len() * params * 3);
        for s in calls {
            let Stmt::Call { func: g, args } = s else {
                return internal("a table run holds a statement that is not a call");
            };
            if g.0 as usize != func || args.len() != params {
                return internal(format!(
                    "a table run of f{func} calls f{} or lacks arguments",
                    g.0
                ));
            }
            for id in args {
                let entry = if let Some(&i) = inputs.get(id) {
                    [0, i, 0]
                } else if let Some(&i) = outputs.get(id) {
                    [1, i, 0]
                } else if let (Some(&offset), Some(_)) = (arena.get(id), sources.arena) {
                    [2, 0, offset * self.elem_bytes()]
                } else if let Some(&i) = own_index.get(id) {
                    [2, i, 0]
                } else {
                    let Some(&ptr) = st.bufs.get(id) else {
                        return internal(format!("b{} is not allocated at a call", id.0));
                    };
                    let i = own.len() as u64;
                    own.push(ptr);
                    own_index.insert(*id, i);
                    [2, i, 0]
                };
                entries.extend(entry);
            }
        }
        let i64t = self.lower.i64t;
        let values: Vec<IntValue> = entries.iter().map(|&v| i64t.const_int(v, false)).collect();
        let table_ty = i64t.array_type(values.len() as u32);
        let table = self
            .module
            .add_global(table_ty, None, &format!("tttc.calls.{func}"));
        table.set_initializer(&i64t.const_array(&values));
        table.set_constant(true);
        table.set_linkage(Linkage::Private);
        table.set_unnamed_addr(true);
        let table = table.as_pointer_value();

        let own_array = st.ab.build_array_alloca(
            self.ptrt,
            i64t.const_int(own.len().max(1) as u64, false),
            "own",
        )?;
        for (i, ptr) in own.iter().enumerate() {
            let slot = self.slot(st, own_array, i64t.const_int(i as u64, false))?;
            st.b.build_store(slot, *ptr)?;
        }
        let arrays = st
            .ab
            .build_array_alloca(self.ptrt, i64t.const_int(3, false), "arrays")?;
        for (i, ptr) in sources.arrays.iter().chain([&own_array]).enumerate() {
            let slot = self.slot(st, arrays, i64t.const_int(i as u64, false))?;
            st.b.build_store(slot, *ptr)?;
        }

        let before =
            st.b.get_insert_block()
                .ok_or_else(|| LlvmError::Internal("no block before a table run".into()))?;
        let body_bb = self.ctx.append_basic_block(st.func, "table_call");
        let done_bb = self.ctx.append_basic_block(st.func, "table_done");
        st.b.build_unconditional_branch(body_bb)?;
        st.b.position_at_end(body_bb);
        let l = st.b.build_phi(i64t, "call")?;
        l.add_incoming(&[(&i64t.const_zero(), before)]);
        let l_value = l.as_basic_value().into_int_value();
        let first =
            st.b.build_int_mul(l_value, i64t.const_int((params * 3) as u64, false), "first")?;
        let mut values: Vec<BasicMetadataValueEnum> = Vec::with_capacity(takes.len());
        for a in 0..params {
            let at = |k: usize| {
                st.b.build_int_add(first, i64t.const_int((a * 3 + k) as u64, false), "at")
            };
            let entry = |k: usize| -> Result<IntValue<'ctx>, LlvmError> {
                // SAFETY: `at(k)` < 3 · calls · params, the table's length.
                let ptr = unsafe { st.b.build_in_bounds_gep(i64t, table, &[at(k)?], "entry")? };
                Ok(st.b.build_load(i64t, ptr, "entry")?.into_int_value())
            };
            let (array, index, offset) = (entry(0)?, entry(1)?, entry(2)?);
            let array = self.load_slot(st, arrays, array)?;
            let base = self.load_slot(st, array, index)?;
            // SAFETY: the offset of an arena buffer lies inside the arena (verified), and the
            // other entries have offset 0.
            let ptr = unsafe {
                st.b.build_in_bounds_gep(self.ctx.i8_type(), base, &[offset], "arg")?
            };
            values.push(ptr.into());
        }
        for id in &takes[params..] {
            match st.bufs.get(id) {
                Some(&ptr) => values.push(ptr.into()),
                None => return internal(format!("b{} is not allocated at a call", id.0)),
            }
        }
        st.b.build_call(f, &values, "")?;
        let next =
            st.b.build_int_add(l_value, i64t.const_int(1, false), "next")?;
        let more = st.b.build_int_compare(
            IntPredicate::ULT,
            next,
            i64t.const_int(calls.len() as u64, false),
            "more",
        )?;
        st.b.build_conditional_branch(more, body_bb, done_bb)?;
        l.add_incoming(&[(&next, body_bb)]);
        st.b.position_at_end(done_bb);
        Ok(())
    }

    /// The address of pointer `i` of the pointer array `array`.
    fn slot(
        &self,
        st: &FnState<'ctx>,
        array: PointerValue<'ctx>,
        i: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, LlvmError> {
        // SAFETY: callers index inside the array (the table names only existing slots).
        Ok(unsafe { st.b.build_in_bounds_gep(self.ptrt, array, &[i], "slot")? })
    }

    /// Pointer `i` of the pointer array `array`.
    fn load_slot(
        &self,
        st: &FnState<'ctx>,
        array: PointerValue<'ctx>,
        i: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, LlvmError> {
        let slot = self.slot(st, array, i)?;
        match st.b.build_load(self.ptrt, slot, "ptr")? {
            BasicValueEnum::PointerValue(p) => Ok(p),
            _ => internal("a pointer slot loaded no pointer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tttc_ir::kernel::FuncId;

    fn call(f: u32) -> Stmt {
        Stmt::Call {
            func: FuncId(f),
            args: vec![BufId(0)],
        }
    }

    #[test]
    fn runs_are_consecutive_calls_of_one_function_at_least_min_long() {
        let body = vec![
            call(0),
            call(0),
            Stmt::Barrier,
            call(0),
            call(0),
            call(0),
            call(1),
            call(1),
            call(1),
            call(1),
            call(0),
        ];
        assert_eq!(call_runs(&body), vec![3..6, 6..10]);
        assert!(call_runs(&body[..2]).is_empty());
    }
}
