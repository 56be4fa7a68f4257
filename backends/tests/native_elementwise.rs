//! The native backends (LLVM, Cranelift): every unary and binary op, in `f32` and `f64`,
//! through contiguous loads (Cranelift: a SIMD body and its scalar remainder) and through
//! non-affine ones (a plain scalar loop), against a scalar reference with the interpreter's
//! semantics, on ordinary and special values (NaN, infinities, signed zeros, subnormals, huge
//! values). The tests are written once and expanded per backend by `elementwise_tests!`.
//!
//! Tolerance: LLVM allows 4 ulp for libm functions and 4 ulp or a relative tolerance for
//! composite functions (`contract` may fuse a multiply-add). Cranelift allows none: every
//! result must have the reference's bits (any NaN matches any NaN), since arithmetic, `sqrt`,
//! `floor`, comparisons and selects are correctly rounded or exact, the backend never fuses a
//! multiply-add or reassociates, and `exp`/`log`/`tanh`/`sin`/`cos`/`pow` call the same Rust
//! (libm) functions as the reference.
#![cfg(any(feature = "llvm", feature = "cranelift"))]

mod native_common;

use native_common::*;
use tttc_ir::kernel::{Index, KernelProgram, Value};
use tttc_ir::{BinaryOp, DType, UnaryOp};
use tttc_runtime::Tensor;

/// The element types under test, as a tiny trait over `f32`/`f64`.
trait F: Copy + std::fmt::Debug + PartialOrd + std::ops::Neg<Output = Self> {
    const DTYPE: DType;
    const ZERO: Self;
    const ONE: Self;
    fn c(x: f64) -> Self;
    fn to64(self) -> f64;
    fn is_nan(self) -> bool;
    fn bits(self) -> u64;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn floor(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn powf(self, o: Self) -> Self;
    fn ulps(self, o: Self) -> u64;
    /// Relative tolerance for composite functions (`contract` may fuse a multiply-add).
    const REL: f64;
    fn tensor(v: Vec<Self>, n: usize) -> Tensor;
    fn from_tensor(t: &Tensor) -> Vec<Self>;
}

macro_rules! impl_f {
    ($t:ty, $d:expr, $rel:expr, $ulps:ident, $from:ident, $as:ident) => {
        impl F for $t {
            const DTYPE: DType = $d;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const REL: f64 = $rel;
            fn c(x: f64) -> Self {
                x as $t
            }
            fn to64(self) -> f64 {
                self as f64
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn bits(self) -> u64 {
                self.to_bits() as u64
            }
            fn add(self, o: Self) -> Self {
                self + o
            }
            fn sub(self, o: Self) -> Self {
                self - o
            }
            fn mul(self, o: Self) -> Self {
                self * o
            }
            fn div(self, o: Self) -> Self {
                self / o
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            fn powf(self, o: Self) -> Self {
                <$t>::powf(self, o)
            }
            fn ulps(self, o: Self) -> u64 {
                $ulps(self, o)
            }
            fn tensor(v: Vec<Self>, n: usize) -> Tensor {
                Tensor::$from([n], v).unwrap()
            }
            fn from_tensor(t: &Tensor) -> Vec<Self> {
                t.$as().expect("element type").to_vec()
            }
        }
    };
}

impl_f!(f32, DType::F32, 1e-6, ulps32, from_f32, as_f32);
impl_f!(f64, DType::F64, 1e-14, ulps64, from_f64, as_f64);

fn sigmoid<T: F>(x: T) -> T {
    T::ONE.div(T::ONE.add((-x).exp()))
}

/// The interpreter's `unary_scalar`, restated.
fn unary_ref<T: F>(op: UnaryOp, x: T) -> T {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => T::ONE.div(x.sqrt()),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Silu => x.mul(sigmoid(x)),
        UnaryOp::Relu => {
            if x < T::ZERO {
                T::ZERO
            } else {
                x
            }
        }
        UnaryOp::GeluTanh => {
            let half = T::c(0.5);
            let c = T::c((2.0 / std::f64::consts::PI).sqrt());
            let a = T::c(0.044715);
            half.mul(x)
                .mul(T::ONE.add(c.mul(x.add(a.mul(x.mul(x).mul(x)))).tanh()))
        }
        UnaryOp::Step => {
            if x > T::ZERO {
                T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryOp::Floor => x.floor(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Abs => {
            // relu(x) + relu(-x), as the composite: ±0 → +0, NaN → NaN.
            let relu = |v: T| if v < T::ZERO { T::ZERO } else { v };
            relu(x).add(relu(-x))
        }
        // relu(x) + log(1 + e^-|x|), in the composite's order (Cranelift is bit-exact).
        UnaryOp::Softplus => {
            let relu = if x < T::ZERO { T::ZERO } else { x };
            let abs = unary_ref(UnaryOp::Abs, x);
            relu.add(T::ONE.add((-abs).exp()).ln())
        }
    }
}

/// The interpreter's `binary_scalar`, restated.
fn binary_ref<T: F>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a.add(b),
        BinaryOp::Sub => a.sub(b),
        BinaryOp::Mul => a.mul(b),
        BinaryOp::Div => a.div(b),
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Max | BinaryOp::Min if a.is_nan() || b.is_nan() => a.add(b),
        BinaryOp::Max => {
            if a >= b {
                a
            } else {
                b
            }
        }
        BinaryOp::Min => {
            if a <= b {
                a
            } else {
                b
            }
        }
    }
}

/// How closely an op must match.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tol {
    /// The same bits (any NaN matches any NaN).
    Exact,
    /// libm functions: at most 4 ulp.
    Libm,
    /// Composite functions: 4 ulp or the relative tolerance.
    Composite,
}

fn unary_tol(op: UnaryOp) -> Tol {
    match op {
        UnaryOp::Neg
        | UnaryOp::Sqrt
        | UnaryOp::Rsqrt
        | UnaryOp::Relu
        | UnaryOp::Step
        | UnaryOp::Floor => Tol::Exact,
        UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sin | UnaryOp::Cos => Tol::Libm,
        UnaryOp::Abs => Tol::Exact,
        UnaryOp::Sigmoid | UnaryOp::Silu | UnaryOp::GeluTanh | UnaryOp::Softplus => Tol::Composite,
    }
}

fn binary_tol(op: BinaryOp) -> Tol {
    match op {
        BinaryOp::Pow => Tol::Libm,
        _ => Tol::Exact,
    }
}

fn assert_close<T: F>(what: &str, inputs: &str, got: T, want: T, tol: Tol) {
    let ok = match tol {
        _ if got.is_nan() || want.is_nan() => got.is_nan() && want.is_nan(),
        Tol::Exact => got.bits() == want.bits(),
        Tol::Libm => got.ulps(want) <= 4,
        Tol::Composite => {
            got.ulps(want) <= 4
                || (got.to64() - want.to64()).abs() <= T::REL * want.to64().abs().max(1.0)
        }
    };
    assert!(
        ok,
        "{} {what}({inputs}) = {got:?} but the reference gives {want:?} ({tol:?})",
        T::DTYPE
    );
}

/// Ordinary and special inputs.
fn xs() -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        2.5,
        -2.5,
        3.7,
        -3.7,
        1e-3,
        -1e-3,
        1e-30,
        -1e-30,
        1.5e-45,
        -1.5e-45,
        5e-324,
        1e30,
        -1e30,
        1e300,
        88.7,
        -88.7,
        89.0,
        -104.0,
        710.0,
        -745.5,
        100.0,
        -100.0,
        20.0,
        -20.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
        f64::MAX,
        f64::MIN_POSITIVE,
        std::f64::consts::PI,
        1e10,
        -1e10,
        123456.789,
    ];
    v.extend(rand_vec(300, 7, -10.0, 10.0));
    v.extend(rand_vec(61, 8, -1e4, 1e4));
    v
}

/// Second operands, paired with [`xs`] element by element.
fn ys(n: usize) -> Vec<f64> {
    let special = [
        0.0,
        -0.0,
        2.0,
        -1.0,
        0.5,
        3.0,
        -0.5,
        1.0 / 3.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1.0,
        -2.0,
        0.0,
        -0.0,
        1e-40,
        10.0,
        -3.0,
    ];
    let rnd = rand_vec(n, 9, -4.0, 4.0);
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                special[(i / 3) % special.len()]
            } else {
                rnd[i]
            }
        })
        .collect()
}

/// Every op, elementwise over `n`. With `simd`, the loads are `x[i]`, `y[i]` (contiguous: a
/// SIMD body and a scalar remainder); without, `x[i % n]` (not affine in `i`: a scalar loop).
fn program(dtype: DType, n: usize, simd: bool) -> KernelProgram {
    let mut g = Prog::new("elementwise", dtype);
    let x = g.input("x", &[n]);
    let y = g.input("y", &[n]);
    let i = g.var();
    let at = |i| {
        if simd {
            v(i)
        } else {
            Index::Rem(Box::new(v(i)), n as i64)
        }
    };
    let mut body = Vec::new();
    for op in UnaryOp::ALL {
        let out = g.output(&format!("u_{}", op.name()), &[n]);
        body.push(store(out, v(i), un(op, ld(x, at(i)))));
    }
    for op in BinaryOp::ALL {
        let out = g.output(&format!("b_{}", op.name()), &[n]);
        body.push(store(out, v(i), bin(op, ld(x, at(i)), ld(y, at(i)))));
        // Operands swapped too, so that both sides see every special value.
        let out = g.output(&format!("r_{}", op.name()), &[n]);
        body.push(store(out, v(i), bin(op, ld(y, at(i)), ld(x, at(i)))));
    }
    // FromIndex and constants: float(3 i + 7), and 0.1 rounded to the element type.
    let iota = g.output("iota", &[n]);
    body.push(store(
        iota,
        v(i),
        Value::FromIndex(affine(v(i), 3, Index::Const(7))),
    ));
    let cst = g.output("cst", &[n]);
    body.push(store(cst, v(i), k(0.1)));
    g.push(serial(i, n, body));
    g.p
}

/// Cranelift: contiguous loads make exactly one SIMD loop, `x[i % n]` none.
#[cfg(feature = "cranelift")]
fn cranelift_simd_stats(jit: &tttc_backends::cranelift::CraneliftJit, simd: bool) {
    assert_eq!(
        jit.stats().simd_loops,
        usize::from(simd),
        "{:?}",
        jit.stats()
    );
}

/// LLVM: nothing backend-specific to check on the JIT.
#[cfg(feature = "llvm")]
fn llvm_simd_stats(_jit: &tttc_backends::llvm::LlvmJit, _simd: bool) {}

/// The backend-neutral tests for `$backend`, whose JIT is `$jit`; `exact` says whether every
/// result must have the reference's bits, `simd_stats` checks the JIT of [`program`].
macro_rules! elementwise_tests {
    ($backend:ident, $jit:ident, exact: $exact:expr, simd_stats: $stats:path) => {
        mod $backend {
            use super::*;
            use tttc_backends::$backend::$jit as Jit;

            /// How closely `op` must match on this backend.
            fn tol(op_tol: Tol) -> Tol {
                if $exact {
                    Tol::Exact
                } else {
                    op_tol
                }
            }

            fn check_all<T: F>(simd: bool) {
                let x64 = xs();
                let n = x64.len();
                // Not a multiple of any vector width: the remainder loop runs too.
                assert_eq!(n % 4, 1);
                let y64 = ys(n);
                let x: Vec<T> = x64.iter().map(|&a| T::c(a)).collect();
                let y: Vec<T> = y64.iter().map(|&a| T::c(a)).collect();
                let p = program(T::DTYPE, n, simd);
                let jit = Jit::compile(&p).expect("compiles");
                $stats(&jit, simd);
                let out = jit
                    .run(&inputs(&[
                        ("x", T::tensor(x.clone(), n)),
                        ("y", T::tensor(y.clone(), n)),
                    ]))
                    .expect("runs");
                for op in UnaryOp::ALL {
                    let got = T::from_tensor(&out[&format!("u_{}", op.name())]);
                    for e in 0..n {
                        let want = unary_ref(op, x[e]);
                        assert_close(
                            op.name(),
                            &format!("{:?}", x[e]),
                            got[e],
                            want,
                            tol(unary_tol(op)),
                        );
                    }
                }
                for op in BinaryOp::ALL {
                    let got = T::from_tensor(&out[&format!("b_{}", op.name())]);
                    let rev = T::from_tensor(&out[&format!("r_{}", op.name())]);
                    for e in 0..n {
                        let args = format!("{:?}, {:?}", x[e], y[e]);
                        assert_close(
                            op.name(),
                            &args,
                            got[e],
                            binary_ref(op, x[e], y[e]),
                            tol(binary_tol(op)),
                        );
                        let args = format!("{:?}, {:?}", y[e], x[e]);
                        assert_close(
                            op.name(),
                            &args,
                            rev[e],
                            binary_ref(op, y[e], x[e]),
                            tol(binary_tol(op)),
                        );
                    }
                }
                let iota = T::from_tensor(&out["iota"]);
                let cst = T::from_tensor(&out["cst"]);
                for e in 0..n {
                    assert_close(
                        "iota",
                        &e.to_string(),
                        iota[e],
                        T::c((3 * e + 7) as f64),
                        Tol::Exact,
                    );
                    assert_close("const", "0.1", cst[e], T::c(0.1), Tol::Exact);
                }
            }

            #[test]
            fn every_op_f32_simd_matches_reference() {
                check_all::<f32>(true);
            }

            #[test]
            fn every_op_f64_simd_matches_reference() {
                check_all::<f64>(true);
            }

            #[test]
            fn every_op_f32_scalar_matches_reference() {
                check_all::<f32>(false);
            }

            #[test]
            fn every_op_f64_scalar_matches_reference() {
                check_all::<f64>(false);
            }

            /// `op` on every value of `grid` (`T`) within the libm tolerance of `reference`.
            fn on_a_grid<T: F>(op: UnaryOp, grid: Vec<f64>, reference: impl Fn(T) -> T) {
                let xs: Vec<T> = grid.into_iter().map(T::c).collect();
                let n = xs.len();
                let mut g = Prog::new("grid", T::DTYPE);
                let x = g.input("x", &[n]);
                let out = g.output("y", &[n]);
                let i = g.var();
                g.push(serial(i, n, vec![store(out, v(i), un(op, ld(x, v(i))))]));
                let jit = Jit::compile(&g.p).expect("compiles");
                let got = jit
                    .run(&inputs(&[("x", T::tensor(xs.clone(), n))]))
                    .expect("runs");
                let got = T::from_tensor(&got["y"]);
                for (a, y) in xs.iter().zip(&got) {
                    let what = format!("{op:?}");
                    assert_close(&what, &format!("{a:?}"), *y, reference(*a), tol(Tol::Libm));
                }
            }

            /// Every 0.001 on `[lo, hi]`, and ±10^(lowest/100) … ±10^1 in steps of 10^0.01.
            fn grid(lo: f64, hi: f64, lowest: i32) -> Vec<f64> {
                let mut xs: Vec<f64> = ((lo * 1e3) as i64..=(hi * 1e3) as i64)
                    .map(|i| i as f64 * 1e-3)
                    .collect();
                for i in lowest..=100 {
                    let a = 10f64.powf(f64::from(i) * 0.01);
                    xs.extend([a, -a]);
                }
                xs
            }

            /// f64 `tanh` on a dense grid (every 0.001 on [-20, 20], and 10^-300 … 10^1 in steps of
            /// 10^0.01, both signs) within the libm tolerance of Rust's (glibc's) `tanh`: LLVM's is
            /// inline code (`backends/src/llvm/math.rs`), so the special values of
            /// [`check_all`] are not enough.
            #[test]
            fn tanh_f64_on_a_dense_grid() {
                on_a_grid::<f64>(UnaryOp::Tanh, grid(-20.0, 20.0, -30_000), f64::tanh);
            }

            /// `exp` in both precisions on a dense grid through the whole range (every 0.001 from
            /// beyond the underflow threshold to beyond the overflow one, so subnormal results, 0
            /// and +∞ are crossed; ±10^-30 … ±10^1 in steps of 10^0.01) within the libm
            /// tolerance of Rust's `exp`: LLVM's is inline code (`backends/src/llvm/math.rs`), so
            /// the special values of [`check_all`] are not enough.
            #[test]
            fn exp_on_a_dense_grid() {
                on_a_grid::<f32>(UnaryOp::Exp, grid(-106.0, 90.0, -3_000), f32::exp);
                on_a_grid::<f64>(UnaryOp::Exp, grid(-748.0, 711.0, -3_000), f64::exp);
            }

            /// Max/min must propagate NaN and keep the reference's choice between signed zeros (LLVM's
            /// `maxnum` would return the other operand for NaN; Cranelift's `fmax` would not fix which
            /// zero wins).
            #[test]
            fn max_min_nan_and_signed_zero() {
                let mut g = Prog::new("maxmin", DType::F32);
                let a = g.input("a", &[4]);
                let b = g.input("b", &[4]);
                let mx = g.output("max", &[4]);
                let mn = g.output("min", &[4]);
                let i = g.var();
                g.push(serial(
                    i,
                    4,
                    vec![
                        store(mx, v(i), bin(BinaryOp::Max, ld(a, v(i)), ld(b, v(i)))),
                        store(mn, v(i), bin(BinaryOp::Min, ld(a, v(i)), ld(b, v(i)))),
                    ],
                ));
                let jit = Jit::compile(&g.p).unwrap();
                let out = jit
                    .run(&inputs(&[
                        (
                            "a",
                            Tensor::from_f32([4], [f32::NAN, 1.0, -0.0, 0.0]).unwrap(),
                        ),
                        (
                            "b",
                            Tensor::from_f32([4], [1.0, f32::NAN, 0.0, -0.0]).unwrap(),
                        ),
                    ]))
                    .unwrap();
                let mx = out["max"].as_f32().unwrap();
                let mn = out["min"].as_f32().unwrap();
                assert!(mx[0].is_nan() && mx[1].is_nan() && mn[0].is_nan() && mn[1].is_nan());
                // a >= b picks a: max(-0, 0) = -0 and max(0, -0) = 0, and the same for min.
                assert_eq!(mx[2].to_bits(), (-0.0f32).to_bits());
                assert_eq!(mx[3].to_bits(), 0.0f32.to_bits());
                assert_eq!(mn[2].to_bits(), (-0.0f32).to_bits());
                assert_eq!(mn[3].to_bits(), 0.0f32.to_bits());
            }

            /// Deep expressions compile up to the limit and are refused (not a stack overflow) beyond.
            #[test]
            fn deep_expressions() {
                let build = |depth: usize| {
                    let mut g = Prog::new("deep", DType::F64);
                    let x = g.input("x", &[1]);
                    let o = g.output("o", &[1]);
                    let mut e = ld(x, c(0));
                    for _ in 0..depth {
                        e = add(e, k(1.0));
                    }
                    g.push(store(o, c(0), e));
                    g.p
                };
                let jit = Jit::compile(&build(1000)).expect("1000 deep compiles");
                let out = jit
                    .run(&inputs(&[("x", Tensor::from_f64([1], [0.5]).unwrap())]))
                    .unwrap();
                assert_eq!(out["o"].as_f64().unwrap(), &[1000.5]);
                let err = Jit::compile(&build(5000)).unwrap_err();
                assert!(err.to_string().contains("deeper"), "{err}");
            }
        }
    };
}

#[cfg(feature = "llvm")]
elementwise_tests!(llvm, LlvmJit, exact: false, simd_stats: llvm_simd_stats);
#[cfg(feature = "cranelift")]
elementwise_tests!(cranelift, CraneliftJit, exact: true, simd_stats: cranelift_simd_stats);

/// LLVM only: its fast-math flags and its inline f32 tanh.
#[cfg(feature = "llvm")]
mod llvm_only {
    use super::*;
    use tttc_backends::llvm::{optimized_ir, LlvmJit};

    /// Only the `contract` fast-math flag may appear.
    #[test]
    fn only_contract_fast_math() {
        let ir = optimized_ir(&program(DType::F32, 8, true)).unwrap();
        assert!(ir.contains("contract"), "no contract flags:\n{ir}");
        for flag in [
            " fast ",
            " reassoc ",
            " nnan ",
            " ninf ",
            " nsz ",
            " arcp ",
            " afn ",
        ] {
            assert!(!ir.contains(flag), "flag{flag}in:\n{ir}");
        }
        assert!(
            !ir.contains("llvm.maxnum") && !ir.contains("llvm.minnum"),
            "{ir}"
        );
    }

    /// f32 tanh is an inline rational approximation (so it vectorizes); a dense sweep bounds its
    /// error against f64 tanh: at most 4e-7 absolute (measured 2.7e-7: ~4 ulp of results near ±1), far
    /// below the 2e-5 relative tolerance of every f32 result in the test suite.
    #[test]
    fn f32_tanh_is_accurate_on_a_dense_sweep() {
        let n = 200_001usize;
        let xs: Vec<f32> = (0..n)
            .map(|i| -12.0 + 24.0 * i as f32 / (n - 1) as f32)
            .chain([1e-5, -1e-5, 3.9e-4, 4.1e-4, 7.9, 7.91, -7.91, 50.0, -50.0])
            .collect();
        let mut p = Prog::new("tanh_sweep", DType::F32);
        let input = p.input("x", &[xs.len()]);
        let output = p.output("y", &[xs.len()]);
        let i = p.var();
        p.push(serial(
            i,
            xs.len(),
            vec![store(output, v(i), un(UnaryOp::Tanh, ld(input, v(i))))],
        ));
        let jit = LlvmJit::compile(&p.p).expect("compiles");
        let inputs: std::collections::BTreeMap<String, Tensor> = [(
            "x".to_string(),
            Tensor::from_f32(vec![xs.len()], xs.clone()).expect("size"),
        )]
        .into();
        let out = jit.run(&inputs).expect("runs");
        let ys = out["y"].as_f32().expect("f32");
        let mut worst = 0.0f64;
        let mut worst_rel = 0.0f64;
        for (&x, &y) in xs.iter().zip(ys) {
            let want = f64::from(x).tanh();
            let err = (f64::from(y) - want).abs();
            worst = worst.max(err);
            if want != 0.0 {
                worst_rel = worst_rel.max(err / want.abs());
            }
            assert!(y.abs() <= 1.0, "tanh({x}) = {y}");
        }
        assert!(worst_rel <= 1e-6, "max relative error {worst_rel:e}");
        assert!(worst <= 4e-7, "max |error| {worst:e}"); // measured 2.7e-7
    }
}
