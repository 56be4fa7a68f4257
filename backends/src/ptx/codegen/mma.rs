//! Matmul loops on tensor cores: warp-level `mma.sync` through LLVM's NVVM intrinsics.
//!
//! A loop [`crate::tensor_core::recognize`] accepts (an `R × N` output, contraction `K`, all
//! whole tiles) becomes, for each warp `w` of the block, a loop over the tiles `w, w + warps,
//! ...` of 16 × 8 outputs. A tile loads its accumulator fragment from the destination, runs
//! `K / k` `mma`s (`llvm.nvvm.mma.m16n8k8.row.col.tf32` with operands converted by
//! `llvm.nvvm.f2tf32.rna`, or `llvm.nvvm.mma.m16n8k16.row.col.bf16` with pairs converted by
//! `llvm.nvvm.ff2bf16x2.rn`) and stores the fragment back. Lane `l` holds, with `g = l / 4` and
//! `q = l % 4` (the PTX ISA's fragment layouts for these shapes):
//!
//! - the accumulator's rows `g`, `g + 8` at columns `2q`, `2q + 1`;
//! - tf32: `A` at rows `g`, `g + 8`, columns `q`, `q + 4`; `B` at rows `q`, `q + 4`, column `g`;
//! - bf16: `A` at rows `g`, `g + 8`, column pairs `2q`, `2q + 8`; `B` at row pairs `2q`,
//!   `2q + 8`, column `g` (the lower index in the lower half of each register).
//!
//! Every element's address is the loop's own index expression evaluated at thread iteration
//! `row * N + col` and contraction index `p`. In the host flavor the conversions and the `mma`
//! are calls into the host runner (`super::super::host`), which exchanges a warp's registers. The tile loop's bounds are the same for all lanes
//! of a warp, so each `mma.sync` is reached by the whole warp, as it must be.

use super::{internal, Flavor, Gen, KernelFn, HOST_BF16X2, HOST_MMA, HOST_TF32};
use crate::ptx::PtxError;
use crate::tensor_core::{MatmulLoop, TensorCores, TILE_M, TILE_N};
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Linkage;
use inkwell::types::FunctionType;
use inkwell::values::{BasicMetadataValueEnum, BasicValueEnum, FloatValue, IntValue};
use inkwell::{AddressSpace, IntPredicate};
use tttc_ir::kernel::{BufId, Index};

/// Lanes of a warp.
const WARP: u64 = 32;

/// The lane's coordinates inside a tile.
struct Lane<'ctx> {
    /// `lane / 4`.
    group: IntValue<'ctx>,
    /// `lane % 4`.
    quad: IntValue<'ctx>,
}

impl<'ctx> Gen<'_, 'ctx> {
    fn k(&self, x: u64) -> IntValue<'ctx> {
        self.lower.i64t.const_int(x, false)
    }

    fn add(
        &self,
        f: &KernelFn<'ctx>,
        a: IntValue<'ctx>,
        x: u64,
    ) -> Result<IntValue<'ctx>, PtxError> {
        Ok(f.b.build_int_nuw_add(a, self.k(x), "add")?)
    }

    fn mul(
        &self,
        f: &KernelFn<'ctx>,
        a: IntValue<'ctx>,
        x: u64,
    ) -> Result<IntValue<'ctx>, PtxError> {
        Ok(f.b.build_int_nuw_mul(a, self.k(x), "mul")?)
    }

    /// Emits the recognized matmul loop `m` with tensor cores of format `tc`.
    pub(super) fn mma_loop(
        &self,
        f: &mut KernelFn<'ctx>,
        m: &MatmulLoop<'_>,
        tc: TensorCores,
    ) -> Result<(), PtxError> {
        if !self.threads.is_multiple_of(WARP) {
            return internal("tensor cores need whole warps");
        }
        let warp = f.b.build_int_unsigned_div(f.tid, self.k(WARP), "warp")?;
        let lane = f.b.build_int_unsigned_rem(f.tid, self.k(WARP), "lane")?;
        let lane = Lane {
            group: f.b.build_int_unsigned_div(lane, self.k(4), "group")?,
            quad: f.b.build_int_unsigned_rem(lane, self.k(4), "quad")?,
        };
        let tiles_n = (m.cols / TILE_N) as u64;
        let tiles = (m.rows / TILE_M) as u64 * tiles_n;
        let step = self.k(self.threads / WARP);
        self.acc_loop(f, warp, self.k(tiles), step, &[], |f, tile, _| {
            let by_row =
                f.b.build_int_unsigned_div(tile, self.k(tiles_n), "tile.row")?;
            let by_col =
                f.b.build_int_unsigned_rem(tile, self.k(tiles_n), "tile.col")?;
            let r0 = self.mul(f, by_row, TILE_M as u64)?;
            let c0 = self.mul(f, by_col, TILE_N as u64)?;
            self.mma_tile(f, m, tc, &lane, r0, c0)?;
            Ok(Vec::new())
        })?;
        Ok(())
    }

    /// One 16 × 8 tile with top-left output `(r0, c0)`.
    fn mma_tile(
        &self,
        f: &mut KernelFn<'ctx>,
        m: &MatmulLoop<'_>,
        tc: TensorCores,
        lane: &Lane<'ctx>,
        r0: IntValue<'ctx>,
        c0: IntValue<'ctx>,
    ) -> Result<(), PtxError> {
        let n = m.cols as u64;
        let row_lo = f.b.build_int_nuw_add(r0, lane.group, "row.lo")?;
        let row_hi = self.add(f, row_lo, 8)?;
        let q2 = self.mul(f, lane.quad, 2)?;
        let col0 = f.b.build_int_nuw_add(c0, q2, "col0")?;
        let col1 = self.add(f, col0, 1)?;
        let zero = self.k(0);
        // Accumulator elements: thread iteration row * N + col.
        let mut dest = Vec::with_capacity(4);
        for (r, c) in [
            (row_lo, col0),
            (row_lo, col1),
            (row_hi, col0),
            (row_hi, col1),
        ] {
            let rn = self.mul(f, r, n)?;
            let t = f.b.build_int_nuw_add(rn, c, "t")?;
            dest.push(self.operand_ptr(f, m, m.dest, m.dest_index, t, zero)?);
        }
        let mut init = Vec::with_capacity(4);
        for &p in &dest {
            init.push(f.b.build_load(self.lower.ft, p, "acc")?.into_float_value());
        }
        // A rows (at column 0), B columns (at row r0).
        let a_lo = self.mul(f, row_lo, n)?;
        let a_hi = self.mul(f, row_hi, n)?;
        let r0n = self.mul(f, r0, n)?;
        let b_col = f.b.build_int_nuw_add(c0, lane.group, "b.col")?;
        let b_t = f.b.build_int_nuw_add(r0n, b_col, "b.t")?;
        let kt = tc.tile_k() as u64;
        let done = self.acc_loop(
            f,
            zero,
            self.k(m.k as u64),
            self.k(kt),
            &init,
            |f, kk, acc| {
                let (a, b) = match tc {
                    TensorCores::Tf32 => self.tf32_fragments(f, m, lane, kk, [a_lo, a_hi], b_t)?,
                    TensorCores::Bf16 => self.bf16_fragments(f, m, lane, kk, [a_lo, a_hi], b_t)?,
                };
                self.mma(f, tc, &a, &b, acc)
            },
        )?;
        for (p, v) in dest.iter().zip(done) {
            f.b.build_store(*p, v)?;
        }
        Ok(())
    }

    /// The address of `buf[index]` at thread iteration `t` and contraction index `p`.
    fn operand_ptr(
        &self,
        f: &mut KernelFn<'ctx>,
        m: &MatmulLoop<'_>,
        buf: BufId,
        index: &Index,
        t: IntValue<'ctx>,
        p: IntValue<'ctx>,
    ) -> Result<inkwell::values::PointerValue<'ctx>, PtxError> {
        f.vars.push((m.thread_var, t));
        f.vars.push((m.k_var, p));
        let r = self.element(f, buf, index);
        f.vars.pop();
        f.vars.pop();
        r
    }

    /// `A[t][p]` or `B[t][p]` as f32.
    fn operand(
        &self,
        f: &mut KernelFn<'ctx>,
        m: &MatmulLoop<'_>,
        (buf, index): (BufId, &Index),
        t: IntValue<'ctx>,
        p: IntValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, PtxError> {
        let ptr = self.operand_ptr(f, m, buf, index, t, p)?;
        Ok(f.b.build_load(self.lower.ft, ptr, "op")?.into_float_value())
    }

    fn intrinsic(&self, name: &str) -> Result<inkwell::values::FunctionValue<'ctx>, PtxError> {
        let Some(i) = Intrinsic::find(name) else {
            return internal(format!("LLVM has no intrinsic {name}"));
        };
        match i.get_declaration(self.module, &[]) {
            Some(func) => Ok(func),
            None => internal(format!("cannot declare {name}")),
        }
    }

    fn call_int(
        &self,
        f: &KernelFn<'ctx>,
        name: &str,
        args: &[FloatValue<'ctx>],
    ) -> Result<IntValue<'ctx>, PtxError> {
        let func = self.intrinsic(name)?;
        let args: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        let v =
            f.b.build_call(func, &args, "cvt")?
                .try_as_basic_value()
                .basic();
        match v {
            Some(BasicValueEnum::IntValue(x)) => Ok(x),
            Some(other) => Ok(f
                .b
                .build_bit_cast(other, self.ctx.i32_type(), "bits")?
                .into_int_value()),
            None => internal(format!("{name} returned nothing")),
        }
    }

    /// tf32 fragments of the `k`-slice starting at `kk`: `A` (4 registers), `B` (2).
    fn tf32_fragments(
        &self,
        f: &mut KernelFn<'ctx>,
        m: &MatmulLoop<'_>,
        lane: &Lane<'ctx>,
        kk: IntValue<'ctx>,
        a_rows: [IntValue<'ctx>; 2],
        b_t: IntValue<'ctx>,
    ) -> Result<(Vec<IntValue<'ctx>>, Vec<IntValue<'ctx>>), PtxError> {
        let k_lo = f.b.build_int_nuw_add(kk, lane.quad, "k.lo")?;
        let k_hi = self.add(f, k_lo, 4)?;
        let cvt = |g: &Self, f: &mut KernelFn<'ctx>, x| g.to_tf32(f, x);
        let mut a = Vec::with_capacity(4);
        for (t, p) in [
            (a_rows[0], k_lo),
            (a_rows[1], k_lo),
            (a_rows[0], k_hi),
            (a_rows[1], k_hi),
        ] {
            let x = self.operand(f, m, m.a, t, p)?;
            a.push(cvt(self, f, x)?);
        }
        let mut b = Vec::with_capacity(2);
        for p in [k_lo, k_hi] {
            let x = self.operand(f, m, m.b, b_t, p)?;
            b.push(cvt(self, f, x)?);
        }
        Ok((a, b))
    }

    /// Two operands packed as bf16 into one register, `lo` in the lower half.
    fn bf16_pair(
        &self,
        f: &KernelFn<'ctx>,
        lo: FloatValue<'ctx>,
        hi: FloatValue<'ctx>,
    ) -> Result<IntValue<'ctx>, PtxError> {
        // `cvt.rn.bf16x2.f32 d, a, b` puts `a` in the upper half.
        match self.flavor {
            Flavor::Nvptx => self.call_int(f, "llvm.nvvm.ff2bf16x2.rn", &[hi, lo]),
            Flavor::Host => {
                let ty = self
                    .ctx
                    .i32_type()
                    .fn_type(&[self.lower.ft.into(), self.lower.ft.into()], false);
                let func = self.host_fn(HOST_BF16X2, ty);
                self.call_host_int(f, func, &[hi.into(), lo.into()])
            }
        }
    }

    /// An operand converted to tf32 (`cvt.rna.tf32.f32`).
    fn to_tf32(&self, f: &KernelFn<'ctx>, x: FloatValue<'ctx>) -> Result<IntValue<'ctx>, PtxError> {
        match self.flavor {
            Flavor::Nvptx => self.call_int(f, "llvm.nvvm.f2tf32.rna", &[x]),
            Flavor::Host => {
                let ty = self.ctx.i32_type().fn_type(&[self.lower.ft.into()], false);
                let func = self.host_fn(HOST_TF32, ty);
                self.call_host_int(f, func, &[x.into()])
            }
        }
    }

    /// The host runner's function `name` (declared on first use).
    fn host_fn(&self, name: &str, ty: FunctionType<'ctx>) -> inkwell::values::FunctionValue<'ctx> {
        self.module
            .get_function(name)
            .unwrap_or_else(|| self.module.add_function(name, ty, Some(Linkage::External)))
    }

    fn call_host_int(
        &self,
        f: &KernelFn<'ctx>,
        func: inkwell::values::FunctionValue<'ctx>,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<IntValue<'ctx>, PtxError> {
        match f
            .b
            .build_call(func, args, "host")?
            .try_as_basic_value()
            .basic()
        {
            Some(BasicValueEnum::IntValue(x)) => Ok(x),
            _ => internal("host conversion returned no integer"),
        }
    }

    /// The host flavor's `mma`: the lane's registers through memory to the host runner.
    fn host_mma(
        &self,
        f: &KernelFn<'ctx>,
        tc: TensorCores,
        a: &[IntValue<'ctx>],
        b: &[IntValue<'ctx>],
        acc: &[FloatValue<'ctx>],
    ) -> Result<Vec<FloatValue<'ctx>>, PtxError> {
        let Some(ctx) = f.barrier else {
            return internal("host mma without the block context");
        };
        let i32t = self.ctx.i32_type();
        let regs = f.entry.build_array_alloca(i32t, self.k(10), "mma.regs")?;
        let slot = |i: u64| {
            // SAFETY: `regs` has 10 elements.
            unsafe { f.b.build_in_bounds_gep(i32t, regs, &[self.k(i)], "reg") }
        };
        for (i, x) in a.iter().chain(b).enumerate() {
            f.b.build_store(slot(i as u64)?, *x)?;
        }
        for (i, x) in acc.iter().enumerate() {
            f.b.build_store(slot(6 + i as u64)?, *x)?;
        }
        let ptr = self.ctx.ptr_type(AddressSpace::default());
        let ty = self.ctx.void_type().fn_type(
            &[
                ptr.into(),
                self.lower.i64t.into(),
                self.lower.i64t.into(),
                ptr.into(),
            ],
            false,
        );
        let func = self.host_fn(HOST_MMA, ty);
        let format = super::mma_format(tc);
        f.b.build_call(
            func,
            &[ctx.into(), f.tid.into(), self.k(format).into(), regs.into()],
            "",
        )?;
        let mut out = Vec::with_capacity(4);
        for i in 0..4 {
            let p = slot(6 + i)?;
            out.push(f.b.build_load(self.lower.ft, p, "d")?.into_float_value());
        }
        Ok(out)
    }

    /// bf16 fragments of the `k`-slice starting at `kk`: `A` (4 registers), `B` (2).
    fn bf16_fragments(
        &self,
        f: &mut KernelFn<'ctx>,
        m: &MatmulLoop<'_>,
        lane: &Lane<'ctx>,
        kk: IntValue<'ctx>,
        a_rows: [IntValue<'ctx>; 2],
        b_t: IntValue<'ctx>,
    ) -> Result<(Vec<IntValue<'ctx>>, Vec<IntValue<'ctx>>), PtxError> {
        let q2 = self.mul(f, lane.quad, 2)?;
        let k_lo = f.b.build_int_nuw_add(kk, q2, "k.lo")?;
        let k_hi = self.add(f, k_lo, 8)?;
        let mut a = Vec::with_capacity(4);
        for (t, p) in [
            (a_rows[0], k_lo),
            (a_rows[1], k_lo),
            (a_rows[0], k_hi),
            (a_rows[1], k_hi),
        ] {
            let p1 = self.add(f, p, 1)?;
            let x0 = self.operand(f, m, m.a, t, p)?;
            let x1 = self.operand(f, m, m.a, t, p1)?;
            a.push(self.bf16_pair(f, x0, x1)?);
        }
        let mut b = Vec::with_capacity(2);
        for p in [k_lo, k_hi] {
            let p1 = self.add(f, p, 1)?;
            let x0 = self.operand(f, m, m.b, b_t, p)?;
            let x1 = self.operand(f, m, m.b, b_t, p1)?;
            b.push(self.bf16_pair(f, x0, x1)?);
        }
        Ok((a, b))
    }

    /// One `mma.sync`: `acc + A B`.
    fn mma(
        &self,
        f: &KernelFn<'ctx>,
        tc: TensorCores,
        a: &[IntValue<'ctx>],
        b: &[IntValue<'ctx>],
        acc: &[FloatValue<'ctx>],
    ) -> Result<Vec<FloatValue<'ctx>>, PtxError> {
        if self.flavor == Flavor::Host {
            return self.host_mma(f, tc, a, b, acc);
        }
        let name = match tc {
            TensorCores::Tf32 => "llvm.nvvm.mma.m16n8k8.row.col.tf32",
            TensorCores::Bf16 => "llvm.nvvm.mma.m16n8k16.row.col.bf16",
        };
        let func = self.intrinsic(name)?;
        let mut args: Vec<BasicMetadataValueEnum> = Vec::with_capacity(10);
        args.extend(a.iter().chain(b).map(|&x| BasicMetadataValueEnum::from(x)));
        args.extend(acc.iter().map(|&x| BasicMetadataValueEnum::from(x)));
        let r =
            f.b.build_call(func, &args, "mma")?
                .try_as_basic_value()
                .basic();
        let Some(BasicValueEnum::StructValue(s)) = r else {
            return internal(format!("{name} returned no struct"));
        };
        let mut out = Vec::with_capacity(4);
        for i in 0..4 {
            out.push(f.b.build_extract_value(s, i, "d")?.into_float_value());
        }
        Ok(out)
    }

    /// `for (i = from; i < to; i += step)` carrying float values `init` through `body`, which
    /// returns their next values; returns their final values (`init` if it never ran).
    fn acc_loop(
        &self,
        f: &mut KernelFn<'ctx>,
        from: IntValue<'ctx>,
        to: IntValue<'ctx>,
        step: IntValue<'ctx>,
        init: &[FloatValue<'ctx>],
        mut body: impl FnMut(
            &mut KernelFn<'ctx>,
            IntValue<'ctx>,
            &[FloatValue<'ctx>],
        ) -> Result<Vec<FloatValue<'ctx>>, PtxError>,
    ) -> Result<Vec<FloatValue<'ctx>>, PtxError> {
        let Some(pre) = f.b.get_insert_block() else {
            return internal("no insert block");
        };
        let header = self.ctx.append_basic_block(f.func, "mma.loop");
        let exit = self.ctx.append_basic_block(f.func, "mma.exit");
        let enter =
            f.b.build_int_compare(IntPredicate::ULT, from, to, "enter")?;
        f.b.build_conditional_branch(enter, header, exit)?;
        f.b.position_at_end(header);
        let phi = f.b.build_phi(self.lower.i64t, "i")?;
        let mut phis = Vec::with_capacity(init.len());
        for _ in init {
            phis.push(f.b.build_phi(self.lower.ft, "acc")?);
        }
        let cur: Vec<FloatValue<'ctx>> = phis
            .iter()
            .map(|p| p.as_basic_value().into_float_value())
            .collect();
        let i = phi.as_basic_value().into_int_value();
        let next_vals = body(f, i, &cur)?;
        if next_vals.len() != init.len() {
            return internal("loop body returned the wrong number of values");
        }
        let next = f.b.build_int_nuw_add(i, step, "next")?;
        let more = f.b.build_int_compare(IntPredicate::ULT, next, to, "more")?;
        let Some(latch) = f.b.get_insert_block() else {
            return internal("no insert block");
        };
        f.b.build_conditional_branch(more, header, exit)?;
        phi.add_incoming(&[(&from, pre), (&next, latch)]);
        for ((p, x0), x1) in phis.iter().zip(init).zip(&next_vals) {
            p.add_incoming(&[(x0, pre), (x1, latch)]);
        }
        f.b.position_at_end(exit);
        let mut out = Vec::with_capacity(init.len());
        for (x0, x1) in init.iter().zip(&next_vals) {
            let p = f.b.build_phi(self.lower.ft, "final")?;
            p.add_incoming(&[(x0, pre), (x1, latch)]);
            out.push(p.as_basic_value().into_float_value());
        }
        Ok(out)
    }
}
