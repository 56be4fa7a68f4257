//! Loop metadata for [`Schedule::Vector`](tttc_ir::kernel::Schedule) loops.
//!
//! The kernel IR's contract for a vector loop is that its iterations are independent
//! (`register_tile` makes its column loops vector loops only where the result is not read by the
//! operands). LLVM's loop vectorizer has to prove that itself, and cannot when an operand and
//! the result are temporaries placed in the same arena at offsets that depend on enclosing loop
//! variables — a token step's batched matrix-vector products, for example, stayed scalar
//! ("unsafe dependent memory operations in loop: Unknown data dependence"). So the code
//! generator states what the kernel IR knows: every load and store whose innermost loop is a
//! vector loop carries one access group (`!llvm.access.group`), and the loop's latch branch
//! `!llvm.loop !{self, !{"llvm.loop.parallel_accesses", group}}`. LLVM may then vectorize the
//! loop without a dependence proof; what it computes does not change (the accesses of different
//! iterations touch different elements).

use super::LlvmError;
use crate::llvm_expr::AccessHook;
use inkwell::context::Context;
use inkwell::llvm_sys::core::{
    LLVMMDNodeInContext2, LLVMMDStringInContext2, LLVMMetadataAsValue, LLVMSetMetadata,
    LLVMValueAsMetadata,
};
use inkwell::llvm_sys::debuginfo::{LLVMMetadataReplaceAllUsesWith, LLVMTemporaryMDNode};
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::values::{AsValueRef, InstructionValue, MetadataValue};

/// The access group of a module's vector loops and the metadata kinds that use it.
#[derive(Clone, Copy)]
pub(crate) struct ParallelLoops<'ctx> {
    ctx: &'ctx Context,
    group: MetadataValue<'ctx>,
    group_kind: u32,
    loop_kind: u32,
}

impl<'ctx> ParallelLoops<'ctx> {
    /// Makes the access group in `ctx`. An access group is a distinct node without operands,
    /// which LLVM's C API cannot make directly; parsed from text (a throwaway module), it
    /// belongs to the context like any node. One group serves every vector loop: a loop's
    /// `parallel_accesses` speaks of its own accesses only, and only accesses whose innermost
    /// loop is a vector loop carry the group.
    pub(crate) fn new(ctx: &'ctx Context) -> Result<Self, LlvmError> {
        let text = b"!tttc.access_group = !{!0}\n!0 = distinct !{}\n";
        let buf = MemoryBuffer::create_from_memory_range_copy(text, "tttc.access_group");
        let module = ctx
            .create_module_from_ir(buf)
            .map_err(|e| LlvmError::Internal(format!("access group: {e}")))?;
        let group = module
            .get_global_metadata("tttc.access_group")
            .first()
            .copied()
            .ok_or_else(|| LlvmError::Internal("access group: no node".into()))?;
        Ok(ParallelLoops {
            ctx,
            group,
            group_kind: ctx.get_kind_id("llvm.access.group"),
            loop_kind: ctx.get_kind_id("llvm.loop"),
        })
    }

    /// Puts the load or store `inst` (of a vector loop's body) in the access group. (Setting
    /// a node cannot fail; were it refused, the loop would only lose the hint.)
    pub(crate) fn tag(&self, inst: InstructionValue<'ctx>) {
        let _ = inst.set_metadata(self.group, self.group_kind);
    }

    /// Marks the loop whose latch branch is `branch` as running its access group's accesses in
    /// parallel: `!llvm.loop` with a loop id of its own (a node referring to itself, which LLVM
    /// makes distinct).
    pub(crate) fn mark_loop(&self, branch: InstructionValue<'ctx>) {
        let name = "llvm.loop.parallel_accesses";
        // SAFETY: every pointer comes from this context; the temporary node is replaced (and
        // freed) by `LLVMMetadataReplaceAllUsesWith` before anything else sees it.
        unsafe {
            let c = self.ctx.raw();
            let temp = LLVMTemporaryMDNode(c, std::ptr::null_mut(), 0);
            let mut accesses = [
                LLVMMDStringInContext2(c, name.as_ptr().cast(), name.len()),
                LLVMValueAsMetadata(self.group.as_value_ref()),
            ];
            let accesses = LLVMMDNodeInContext2(c, accesses.as_mut_ptr(), accesses.len());
            let mut ops = [temp, accesses];
            let id = LLVMMDNodeInContext2(c, ops.as_mut_ptr(), ops.len());
            LLVMMetadataReplaceAllUsesWith(temp, id);
            LLVMSetMetadata(
                branch.as_value_ref(),
                self.loop_kind,
                LLVMMetadataAsValue(c, id),
            );
        }
    }
}

impl<'ctx> AccessHook<'ctx> for ParallelLoops<'ctx> {
    fn access(&self, inst: InstructionValue<'ctx>) {
        self.tag(inst);
    }
}
