//! Matrix products: a [`Stmt::Gemm`] is a call of the matrix-product runtime
//! ([`crate::native::gemm`]) with its descriptor in a stack slot.

use super::*;
use tttc_ir::kernel::Gemm;

impl Gen<'_> {
    /// `tttc_gemm_f32(desc, a, b, c)` (or `_f64`) for `g`.
    pub(super) fn gemm(&mut self, st: &mut FnState<'_>, g: &Gemm) -> Result<(), CraneliftError> {
        let desc = crate::native::gemm::descriptor(g);
        let slot = st.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (desc.len() * 8) as u32,
            3,
        ));
        let at = st.b.ins().stack_addr(self.ptr, slot, 0);
        for (n, &x) in desc.iter().enumerate() {
            let v = st.b.ins().iconst(types::I64, x);
            st.b.ins().store(scalar_flags(), v, at, (n * 8) as i32);
        }
        let mut args = vec![at];
        for v in [&g.a, &g.b, &g.c] {
            match st.bufs.get(&v.buf) {
                Some(&p) => args.push(p),
                None => return internal(format!("gemm buffer b{} not allocated", v.buf.0)),
            }
        }
        let symbol = crate::native::gemm::symbol(self.p.dtype);
        let f = self.import(st, symbol, &[self.ptr; 4], None)?;
        st.b.ins().call(f, &args);
        Ok(())
    }
}
