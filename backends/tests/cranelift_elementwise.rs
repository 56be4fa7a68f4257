//! Cranelift backend: every unary and binary op, in `f32` and `f64`, through the SIMD body, its
//! scalar remainder and a plain scalar loop, against a scalar reference with the interpreter's
//! semantics, on ordinary and special values (NaN, infinities, signed zeros, subnormals, huge
//! values).
//!
//! Tolerance: none. Every result must have the reference's bits (any NaN matches any NaN):
//! arithmetic, `sqrt`, `floor`, comparisons and selects are correctly rounded or exact, the
//! backend never fuses a multiply-add or reassociates, and `exp`/`log`/`tanh`/`sin`/`cos`/`pow`
//! call the same Rust (libm) functions as the reference. (The brief allows 4 ulp for the libm
//! functions; exactness is what this backend actually guarantees, so that is what is tested.)
#![cfg(feature = "cranelift")]

mod native_common;

use native_common::*;
use tttc_backends::cranelift::CraneliftJit;
use tttc_ir::kernel::{Index, KernelProgram, Value};
use tttc_ir::{BinaryOp, DType, UnaryOp};
use tttc_runtime::Tensor;

/// The element types under test, as a tiny trait over `f32`/`f64`.
trait F: Copy + std::fmt::Debug + PartialOrd + std::ops::Neg<Output = Self> {
    const DTYPE: DType;
    const ZERO: Self;
    const ONE: Self;
    fn c(x: f64) -> Self;
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
    fn tensor(v: Vec<Self>, n: usize) -> Tensor;
    fn from_tensor(t: &Tensor) -> Vec<Self>;
}

macro_rules! impl_f {
    ($t:ty, $d:expr, $from:ident, $as:ident) => {
        impl F for $t {
            const DTYPE: DType = $d;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn c(x: f64) -> Self {
                x as $t
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
            fn tensor(v: Vec<Self>, n: usize) -> Tensor {
                Tensor::$from([n], v).unwrap()
            }
            fn from_tensor(t: &Tensor) -> Vec<Self> {
                t.$as().expect("element type").to_vec()
            }
        }
    };
}

impl_f!(f32, DType::F32, from_f32, as_f32);
impl_f!(f64, DType::F64, from_f64, as_f64);

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

/// Same bits, or both NaN.
fn assert_same<T: F>(what: &str, inputs: &str, got: T, want: T) {
    let ok = if got.is_nan() || want.is_nan() {
        got.is_nan() && want.is_nan()
    } else {
        got.bits() == want.bits()
    };
    assert!(
        ok,
        "{} {what}({inputs}) = {got:?} but the reference gives {want:?}",
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

fn check_all<T: F>(simd: bool) {
    let x64 = xs();
    let n = x64.len();
    // Not a multiple of any vector width: the remainder loop runs too.
    assert_eq!(n % 4, 1);
    let y64 = ys(n);
    let x: Vec<T> = x64.iter().map(|&a| T::c(a)).collect();
    let y: Vec<T> = y64.iter().map(|&a| T::c(a)).collect();
    let p = program(T::DTYPE, n, simd);
    let jit = CraneliftJit::compile(&p).expect("compiles");
    assert_eq!(
        jit.stats().simd_loops,
        usize::from(simd),
        "{:?}",
        jit.stats()
    );
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
            assert_same(op.name(), &format!("{:?}", x[e]), got[e], want);
        }
    }
    for op in BinaryOp::ALL {
        let got = T::from_tensor(&out[&format!("b_{}", op.name())]);
        let rev = T::from_tensor(&out[&format!("r_{}", op.name())]);
        for e in 0..n {
            let args = format!("{:?}, {:?}", x[e], y[e]);
            assert_same(op.name(), &args, got[e], binary_ref(op, x[e], y[e]));
            let args = format!("{:?}, {:?}", y[e], x[e]);
            assert_same(op.name(), &args, rev[e], binary_ref(op, y[e], x[e]));
        }
    }
    let iota = T::from_tensor(&out["iota"]);
    let cst = T::from_tensor(&out["cst"]);
    for e in 0..n {
        assert_same("iota", &e.to_string(), iota[e], T::c((3 * e + 7) as f64));
        assert_same("const", "0.1", cst[e], T::c(0.1));
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

/// Max/min must propagate NaN and keep the reference's choice between signed zeros (Cranelift's
/// `fmax` would not fix which zero wins).
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
    let jit = CraneliftJit::compile(&g.p).unwrap();
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
    let jit = CraneliftJit::compile(&build(1000)).expect("1000 deep compiles");
    let out = jit
        .run(&inputs(&[("x", Tensor::from_f64([1], [0.5]).unwrap())]))
        .unwrap();
    assert_eq!(out["o"].as_f64().unwrap(), &[1000.5]);
    let err = CraneliftJit::compile(&build(5000)).unwrap_err();
    assert!(err.to_string().contains("deeper"), "{err}");
}
