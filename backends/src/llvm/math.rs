//! The CPU's math library for the shared expression lowering ([`crate::llvm_expr`]).
//!
//! `exp`, `log`, `sin`, `cos` and `pow` are the LLVM intrinsics (lowered to instructions or to
//! the same libm functions Rust calls). `tanh` is, in f32, an inline rational approximation
//! that vectorizes (libm's scalar `tanhf` was a third of TTT-MLP's run time) and, in f64,
//! glibc's `tanh` (exact to the reference).

use crate::llvm_expr::{ExprError, Lowering, MathFn, MathLibrary, Scope};
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::module::Linkage;
use inkwell::values::FloatValue;
use inkwell::FloatPredicate;
use tttc_ir::{BinaryOp, DType};

/// The host's math: LLVM intrinsics and libm.
pub(crate) struct CpuMath;

impl<'ctx> MathLibrary<'ctx> for CpuMath {
    fn call(
        &self,
        l: &Lowering<'_, 'ctx>,
        s: &Scope<'_, 'ctx>,
        f: MathFn,
        args: &[FloatValue<'ctx>],
    ) -> Result<FloatValue<'ctx>, ExprError> {
        let intrinsic = match f {
            MathFn::Exp => "llvm.exp",
            MathFn::Log => "llvm.log",
            MathFn::Sin => "llvm.sin",
            MathFn::Cos => "llvm.cos",
            MathFn::Pow => "llvm.pow",
            MathFn::Tanh => return tanh(l, s, args),
        };
        l.intr(s, intrinsic, args)
    }
}

/// tanh: in f32 [`tanh_rational`], in f64 libm's `tanh`.
fn tanh<'ctx>(
    l: &Lowering<'_, 'ctx>,
    s: &Scope<'_, 'ctx>,
    args: &[FloatValue<'ctx>],
) -> Result<FloatValue<'ctx>, ExprError> {
    let &[x] = args else {
        return Err(ExprError::Internal(format!(
            "tanh of {} arguments",
            args.len()
        )));
    };
    if l.dtype == DType::F32 {
        return tanh_rational(l, s, x);
    }
    let f = match l.module.get_function("tanh") {
        Some(f) => f,
        None => {
            let f = l.module.add_function(
                "tanh",
                l.ft.fn_type(&[l.ft.into()], false),
                Some(Linkage::External),
            );
            // glibc's tanh neither sets errno nor touches memory.
            for (attr, val) in [("nounwind", 0), ("willreturn", 0), ("memory", 0)] {
                let id = Attribute::get_named_enum_kind_id(attr);
                if id != 0 {
                    f.add_attribute(AttributeLoc::Function, l.ctx.create_enum_attribute(id, val));
                }
            }
            f
        }
    };
    l.call(s, f, &[x])
}

/// f32 tanh as an inline rational approximation that vectorizes: a 13/6 odd/even minimax fit on
/// |x| <= 7.9053, beyond which tanh rounds to ±1 in f32; error ≤ 1e-6 relative and 4e-7
/// absolute, measured in `tests/llvm_elementwise.rs`.
fn tanh_rational<'ctx>(
    l: &Lowering<'_, 'ctx>,
    s: &Scope<'_, 'ctx>,
    x: FloatValue<'ctx>,
) -> Result<FloatValue<'ctx>, ExprError> {
    const CLAMP: f64 = 7.905_311_107_635_498;
    const ALPHA: [f64; 7] = [
        4.893_524_558_917_86e-3,
        6.372_619_288_754_36e-4,
        1.485_722_357_179_79e-5,
        5.122_297_090_371_14e-8,
        -8.604_671_522_137_35e-11,
        2.000_187_904_824_77e-13,
        -2.760_768_477_423_55e-16,
    ];
    const BETA: [f64; 4] = [
        4.893_525_185_543_85e-3,
        2.268_434_632_439_00e-3,
        1.185_347_056_866_54e-4,
        1.198_258_394_667_02e-6,
    ];
    let b = s.b;
    let mul = |a, c| l.arith(s, BinaryOp::Mul, a, c);
    // Clamp (NaN passes: both comparisons are false).
    let hi = l.fconst(CLAMP);
    let lo = l.fconst(-CLAMP);
    let above = b.build_float_compare(FloatPredicate::OGT, x, hi, "above")?;
    let xc = l.select(s, above, hi, x, "xc")?;
    let below = b.build_float_compare(FloatPredicate::OLT, xc, lo, "below")?;
    let xc = l.select(s, below, lo, xc, "xc")?;
    let x2 = mul(xc, xc)?;
    let horner = |coeffs: &[f64]| -> Result<FloatValue<'ctx>, ExprError> {
        let mut acc = l.fconst(coeffs[coeffs.len() - 1]);
        for &c in coeffs[..coeffs.len() - 1].iter().rev() {
            let m = mul(acc, x2)?;
            acc = l.arith(s, BinaryOp::Add, m, l.fconst(c))?;
        }
        Ok(acc)
    };
    let p = horner(&ALPHA)?;
    let p = mul(xc, p)?;
    let q = horner(&BETA)?;
    let t = l.arith(s, BinaryOp::Div, p, q)?;
    // tanh(x) = x to f32 precision for tiny |x|, and exactly ±1 from the clamp on (as libm
    // rounds it).
    let ax = l.intr(s, "llvm.fabs", &[x])?;
    let tiny = b.build_float_compare(FloatPredicate::OLT, ax, l.fconst(4e-4), "tiny")?;
    let t = l.select(s, tiny, x, t, "tanh")?;
    let big = b.build_float_compare(FloatPredicate::OGE, ax, hi, "big")?;
    let unit = l.intr(s, "llvm.copysign", &[l.fconst(1.0), x])?;
    l.select(s, big, unit, t, "tanh")
}
