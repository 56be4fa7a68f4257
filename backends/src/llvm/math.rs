//! The CPU's math library for the shared expression lowering ([`crate::llvm_expr`]).
//!
//! `log`, `sin`, `cos` and `pow` are the LLVM intrinsics (lowered to instructions or to the
//! same libm functions Rust calls). `tanh` and `exp` are inline code that vectorizes (libm's
//! scalar `tanhf` was a third of TTT-MLP's run time, glibc's scalar `tanh` 59% of it in f64;
//! scalar `expf` calls made the 125M TTT-Linear model's SwiGLU gate 63 ms of a 2.5 s prefill):
//! `tanh` in f32 a rational approximation, in f64 `expm1(2|x|) / (expm1(2|x|) + 2)` with
//! `expm1` by argument reduction and a Taylor polynomial, within 4 ulp of glibc's; `exp` by
//! argument reduction and a Taylor polynomial in both precisions (`exp_reduced`).

use crate::llvm_expr::{ExprError, Lowering, MathFn, MathLibrary, Scope};
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
            MathFn::Exp => return exp_reduced(l, s, args),
            MathFn::Log => "llvm.log",
            MathFn::Sin => "llvm.sin",
            MathFn::Cos => "llvm.cos",
            MathFn::Pow => "llvm.pow",
            MathFn::Tanh => return tanh(l, s, args),
        };
        l.intr(s, intrinsic, args)
    }
}

/// `exp(x)` that vectorizes, in either precision: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (ln 2
/// split in two so that `n·ln2_hi` is exact), `exp(r)` by its Taylor polynomial (to degree 7 in
/// f32, 13 in f64: the next term is below 1e-8 resp. 5e-18 of the result), and
/// `exp(x) = exp(r)·2^⌊n/2⌋·2^(n−⌊n/2⌋)`, both powers made from exponent bits (two factors,
/// so that results near the overflow threshold and in the subnormal range come out right, with
/// one rounding at the last multiplication). Beyond the range (f32: below −104 or above 89; f64:
/// below −746 or above 710) the multiplication gives 0 or +∞ by itself, as libm does; NaN is
/// passed through. Accuracy against Rust's (libm's) `exp` is checked in
/// `backends/tests/native_elementwise.rs` (4 ulp: its special values and
/// `exp_on_a_dense_grid`, both precisions).
fn exp_reduced<'ctx>(
    l: &Lowering<'_, 'ctx>,
    s: &Scope<'_, 'ctx>,
    args: &[FloatValue<'ctx>],
) -> Result<FloatValue<'ctx>, ExprError> {
    let x = only_argument("exp", args)?;
    let b = s.b;
    let (add, sub, mul) = (
        |a, c| l.arith(s, BinaryOp::Add, a, c),
        |a, c| l.arith(s, BinaryOp::Sub, a, c),
        |a, c| l.arith(s, BinaryOp::Mul, a, c),
    );
    // (range, ln 2 split, polynomial degree, mantissa bits, exponent bias, integer type)
    let (lo, hi, ln2_hi, ln2_lo, degree, mantissa, bias, it) = match l.dtype {
        // Cephes' split for f32: 0.693359375 has 9 significant bits.
        DType::F32 => (
            -104.0,
            89.0,
            0.693_359_375,
            -2.121_944_400_546_905_8e-4,
            7,
            23,
            127,
            l.ctx.i32_type(),
        ),
        // fdlibm's split: the high part has 32 trailing zero bits.
        DType::F64 => (
            -746.0,
            710.0,
            f64::from_bits(0x3FE6_2E42_FEE0_0000),
            f64::from_bits(0x3DEA_39EF_3579_3C76),
            13,
            52,
            1023,
            l.i64t,
        ),
    };
    // Out of range and NaN are answered by the selects at the end; compute on 0 there, so that
    // the float-to-integer conversion below never sees a value out of its range.
    let above = b.build_float_compare(FloatPredicate::OGT, x, l.fconst(hi), "above")?;
    let below = b.build_float_compare(FloatPredicate::OLT, x, l.fconst(lo), "below")?;
    let inside = b.build_float_compare(FloatPredicate::OGE, x, l.fconst(lo), "inside")?;
    let inside_hi = b.build_float_compare(FloatPredicate::OLE, x, l.fconst(hi), "inside")?;
    let inside = b.build_and(inside, inside_hi, "inside")?;
    let x0 = l.select(s, inside, x, l.fconst(0.0), "x0")?;
    let nf = l.intr(
        s,
        "llvm.floor",
        &[add(
            mul(x0, l.fconst(std::f64::consts::LOG2_E))?,
            l.fconst(0.5),
        )?],
    )?;
    let r = sub(
        sub(x0, mul(nf, l.fconst(ln2_hi))?)?,
        mul(nf, l.fconst(ln2_lo))?,
    )?;
    // exp(r) = 1 + r + r²/2! + … + r^d/d!, as 1 + r·(1 + r·(1/2! + r·(…))).
    let mut factorial: f64 = (1..=degree).map(f64::from).product();
    let mut poly = l.fconst(1.0 / factorial);
    for k in (1..degree).rev() {
        factorial /= f64::from(k + 1);
        poly = add(mul(poly, r)?, l.fconst(1.0 / factorial))?;
    }
    let p = add(l.fconst(1.0), mul(r, poly)?)?;
    let n = b.build_float_to_signed_int(nf, it, "n")?;
    let n1 = b.build_right_shift(n, it.const_int(1, false), true, "n1")?;
    let n2 = b.build_int_sub(n, n1, "n2")?;
    let power = |k, name| -> Result<FloatValue<'ctx>, ExprError> {
        let biased = b.build_int_add(k, it.const_int(bias, false), name)?;
        let bits = b.build_left_shift(biased, it.const_int(mantissa, false), name)?;
        Ok(b.build_bit_cast(bits, l.ft, name)?.into_float_value())
    };
    let y = mul(mul(p, power(n1, "two_n1")?)?, power(n2, "two_n2")?)?;
    let y = l.select(s, above, l.fconst(f64::INFINITY), y, "exp")?;
    let y = l.select(s, below, l.fconst(0.0), y, "exp")?;
    // NaN: neither inside nor beyond.
    let nan = b.build_float_compare(FloatPredicate::UNO, x, x, "nan")?;
    l.select(s, nan, x, y, "exp")
}

/// The one argument of the one-argument function `name`.
fn only_argument<'ctx>(
    name: &str,
    args: &[FloatValue<'ctx>],
) -> Result<FloatValue<'ctx>, ExprError> {
    match args {
        &[x] => Ok(x),
        _ => Err(ExprError::Internal(format!(
            "{name} of {} arguments",
            args.len()
        ))),
    }
}

/// tanh: in f32 [`tanh_rational`], in f64 [`tanh_expm1`].
fn tanh<'ctx>(
    l: &Lowering<'_, 'ctx>,
    s: &Scope<'_, 'ctx>,
    args: &[FloatValue<'ctx>],
) -> Result<FloatValue<'ctx>, ExprError> {
    let x = only_argument("tanh", args)?;
    match l.dtype {
        DType::F32 => tanh_rational(l, s, x),
        DType::F64 => tanh_expm1(l, s, x),
    }
}

/// f64 tanh that vectorizes: `tanh|x| = e / (e + 2)` with `e = expm1(2|x|)`, the sign put back
/// (so `-0.0` stays `-0.0`), `±1` from |x| ≥ 19.1 (where tanh rounds to 1 in f64), NaN passed
/// through. `expm1(y)` for `0 ≤ y < 38.2`: `y = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (ln 2 split
/// in two so `n·ln2_hi` is exact), `expm1(r)` by its Taylor polynomial to degree 13 (the next
/// term is below 5e-18 of `r`), and `expm1(y) = 2ⁿ·expm1(r) + (2ⁿ − 1)` with `2ⁿ` made from its
/// exponent bits (`2ⁿ − 1` is exact for `n ≤ 55`). Accuracy against glibc's `tanh` is checked
/// in `backends/tests/native_elementwise.rs` (4 ulp: its special values and
/// `tanh_f64_on_a_dense_grid`).
fn tanh_expm1<'ctx>(
    l: &Lowering<'_, 'ctx>,
    s: &Scope<'_, 'ctx>,
    x: FloatValue<'ctx>,
) -> Result<FloatValue<'ctx>, ExprError> {
    const BIG: f64 = 19.1;
    const INV_LN2: f64 = std::f64::consts::LOG2_E;
    // fdlibm's split of ln 2: the high part has 32 trailing zero bits.
    const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
    let b = s.b;
    let (add, sub, mul, div) = (
        |a, c| l.arith(s, BinaryOp::Add, a, c),
        |a, c| l.arith(s, BinaryOp::Sub, a, c),
        |a, c| l.arith(s, BinaryOp::Mul, a, c),
        |a, c| l.arith(s, BinaryOp::Div, a, c),
    );
    let ax = l.intr(s, "llvm.fabs", &[x])?;
    // NaN and |x| ≥ BIG are answered by the selects at the end; compute on 0 there, so that
    // the float-to-integer conversion below never sees a value out of its range.
    let usable = b.build_float_compare(FloatPredicate::OLT, ax, l.fconst(BIG), "usable")?;
    let ax0 = l.select(s, usable, ax, l.fconst(0.0), "ax0")?;
    let y = add(ax0, ax0)?;
    let nf = l.intr(
        s,
        "llvm.floor",
        &[add(mul(y, l.fconst(INV_LN2))?, l.fconst(0.5))?],
    )?;
    let r = sub(
        sub(y, mul(nf, l.fconst(LN2_HI))?)?,
        mul(nf, l.fconst(LN2_LO))?,
    )?;
    // expm1(r) = r + r²/2! + … + r¹³/13!, as r + r·(r·(1/2! + r·(1/3! + …))).
    let mut poly = l.fconst(1.0 / 6_227_020_800.0);
    let mut factorial = 6_227_020_800.0_f64;
    for k in (2..13).rev() {
        factorial /= f64::from(k + 1);
        poly = add(mul(poly, r)?, l.fconst(1.0 / factorial))?;
    }
    let em = add(r, mul(r, mul(r, poly)?)?)?;
    // 2ⁿ from its exponent bits.
    let n = b.build_float_to_signed_int(nf, l.i64t, "n")?;
    let biased = b.build_int_add(n, l.i64t.const_int(1023, false), "biased")?;
    let bits = b.build_left_shift(biased, l.i64t.const_int(52, false), "bits")?;
    let two_n = b.build_bit_cast(bits, l.ft, "two_n")?.into_float_value();
    let e = add(mul(two_n, em)?, sub(two_n, l.fconst(1.0))?)?;
    let t = div(e, add(e, l.fconst(2.0))?)?;
    let t = l.select(s, usable, t, l.fconst(1.0), "tanh")?;
    let t = l.intr(s, "llvm.copysign", &[t, x])?;
    let nan = b.build_float_compare(FloatPredicate::UNO, x, x, "nan")?;
    l.select(s, nan, x, t, "tanh")
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
