//! Composite elementwise functions, defined once in terms of primitive ones.
//!
//! Some [`UnaryOp`]s are *primitives*: every evaluator and code generator implements them
//! directly (`exp`, `tanh`, `relu`, ...). The others are *composites* (`rsqrt`, `sigmoid`,
//! `silu`, `gelu_tanh`) whose definition is a small expression over primitives and
//! [`BinaryOp`]s. That expression is written here and nowhere else: an evaluator or a code
//! generator implements [`PrimitiveBuilder`] for its own value type (an `f64`, an LLVM
//! `FloatValue`, a Cranelift `Value`) and calls [`build_unary`], which expands composites and
//! hands primitives back to the builder. The operand is built once and shared by every use in
//! the expansion, so nothing is recomputed.
//!
//! The order of operations in each expansion is the reference's (ttt-lm-pytorch's), so results
//! match it to the last bit wherever the primitives do.

use crate::op::{BinaryOp, UnaryOp};

/// What an evaluator or code generator must provide for [`build_unary`]: constants, the
/// primitive unary functions and the binary functions, on its own values.
pub trait PrimitiveBuilder {
    /// A value of the element type (a number, or an SSA value of generated code).
    type Value: Clone;
    /// Why building failed.
    type Error;

    /// The constant `c` (rounded to the element type).
    fn constant(&mut self, c: f64) -> Result<Self::Value, Self::Error>;

    /// `op(x)` for a primitive `op` ([`UnaryOp::is_primitive`]); never called with a composite.
    fn primitive_unary(&mut self, op: UnaryOp, x: Self::Value) -> Result<Self::Value, Self::Error>;

    /// `op(a, b)`.
    fn binary(
        &mut self,
        op: BinaryOp,
        a: Self::Value,
        b: Self::Value,
    ) -> Result<Self::Value, Self::Error>;
}

impl UnaryOp {
    /// Whether every evaluator and code generator implements the op directly; the others are
    /// expanded by [`build_unary`].
    pub fn is_primitive(self) -> bool {
        !matches!(
            self,
            UnaryOp::Rsqrt
                | UnaryOp::Sigmoid
                | UnaryOp::Silu
                | UnaryOp::GeluTanh
                | UnaryOp::Abs
                | UnaryOp::Softplus
        )
    }
}

/// `op(x)`: a primitive through the builder, a composite as its expansion into primitives.
pub fn build_unary<B: PrimitiveBuilder + ?Sized>(
    b: &mut B,
    op: UnaryOp,
    x: B::Value,
) -> Result<B::Value, B::Error> {
    match op {
        // 1 / sqrt(x)
        UnaryOp::Rsqrt => {
            let one = b.constant(1.0)?;
            let root = b.primitive_unary(UnaryOp::Sqrt, x)?;
            b.binary(BinaryOp::Div, one, root)
        }
        UnaryOp::Sigmoid => sigmoid(b, x),
        // x * sigmoid(x)
        UnaryOp::Silu => {
            let s = sigmoid(b, x.clone())?;
            b.binary(BinaryOp::Mul, x, s)
        }
        // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in the reference's order.
        UnaryOp::GeluTanh => {
            let half = b.constant(0.5)?;
            let c = b.constant((2.0 / std::f64::consts::PI).sqrt())?;
            let a = b.constant(0.044715)?;
            let one = b.constant(1.0)?;
            let x2 = b.binary(BinaryOp::Mul, x.clone(), x.clone())?;
            let x3 = b.binary(BinaryOp::Mul, x2, x.clone())?;
            let ax3 = b.binary(BinaryOp::Mul, a, x3)?;
            let inner = b.binary(BinaryOp::Add, x.clone(), ax3)?;
            let arg = b.binary(BinaryOp::Mul, c, inner)?;
            let t = b.primitive_unary(UnaryOp::Tanh, arg)?;
            let one_plus = b.binary(BinaryOp::Add, one, t)?;
            let half_x = b.binary(BinaryOp::Mul, half, x)?;
            b.binary(BinaryOp::Mul, half_x, one_plus)
        }
        UnaryOp::Abs => abs(b, x),
        // relu(x) + log(1 + e^-|x|): never overflows. The log term is rounded after `1 + e^-|x|`,
        // so its absolute error is at most about one unit in the last place of 1 (2.2e-16 in
        // f64, 1.2e-7 in f32); where softplus itself is smaller than that (x below about -36 in
        // f64, -16 in f32) the result is 0 rather than the tiny true value.
        UnaryOp::Softplus => {
            let positive = b.primitive_unary(UnaryOp::Relu, x.clone())?;
            let magnitude = abs(b, x)?;
            let neg = b.primitive_unary(UnaryOp::Neg, magnitude)?;
            let e = b.primitive_unary(UnaryOp::Exp, neg)?;
            let one = b.constant(1.0)?;
            let one_plus = b.binary(BinaryOp::Add, one, e)?;
            let log = b.primitive_unary(UnaryOp::Log, one_plus)?;
            b.binary(BinaryOp::Add, positive, log)
        }
        primitive => b.primitive_unary(primitive, x),
    }
}

/// `|x|` as `relu(x) + relu(-x)`: exact for every input (one term is an exact zero; `-0`
/// gives `+0`; NaN stays NaN), with no primitive of its own.
fn abs<B: PrimitiveBuilder + ?Sized>(b: &mut B, x: B::Value) -> Result<B::Value, B::Error> {
    let positive = b.primitive_unary(UnaryOp::Relu, x.clone())?;
    let neg = b.primitive_unary(UnaryOp::Neg, x)?;
    let negative = b.primitive_unary(UnaryOp::Relu, neg)?;
    b.binary(BinaryOp::Add, positive, negative)
}

/// `1 / (1 + e^-x)`.
fn sigmoid<B: PrimitiveBuilder + ?Sized>(b: &mut B, x: B::Value) -> Result<B::Value, B::Error> {
    let one = b.constant(1.0)?;
    let neg = b.primitive_unary(UnaryOp::Neg, x)?;
    let e = b.primitive_unary(UnaryOp::Exp, neg)?;
    let denominator = b.binary(BinaryOp::Add, one.clone(), e)?;
    b.binary(BinaryOp::Div, one, denominator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// Evaluates in f64, recording which primitives were asked for.
    #[derive(Default)]
    struct Eval {
        primitives: Vec<UnaryOp>,
    }

    impl PrimitiveBuilder for Eval {
        type Value = f64;
        type Error = Infallible;
        fn constant(&mut self, c: f64) -> Result<f64, Infallible> {
            Ok(c)
        }
        fn primitive_unary(&mut self, op: UnaryOp, x: f64) -> Result<f64, Infallible> {
            self.primitives.push(op);
            Ok(match op {
                UnaryOp::Neg => -x,
                UnaryOp::Sqrt => x.sqrt(),
                UnaryOp::Exp => x.exp(),
                UnaryOp::Tanh => x.tanh(),
                UnaryOp::Log => x.ln(),
                UnaryOp::Relu => {
                    if x < 0.0 {
                        0.0
                    } else {
                        x
                    }
                }
                other => panic!("unexpected primitive {other:?}"),
            })
        }
        fn binary(&mut self, op: BinaryOp, a: f64, b: f64) -> Result<f64, Infallible> {
            Ok(match op {
                BinaryOp::Add => a + b,
                BinaryOp::Sub => a - b,
                BinaryOp::Mul => a * b,
                BinaryOp::Div => a / b,
                other => panic!("unexpected binary {other:?}"),
            })
        }
    }

    fn eval(op: UnaryOp, x: f64) -> (f64, Vec<UnaryOp>) {
        let mut b = Eval::default();
        let Ok(y) = build_unary(&mut b, op, x);
        (y, b.primitives)
    }

    #[test]
    fn composites_expand_to_primitives_only() {
        for op in UnaryOp::ALL.into_iter().filter(|op| !op.is_primitive()) {
            let (_, used) = eval(op, 0.3);
            assert!(!used.is_empty(), "{op:?} used no primitive");
            assert!(
                used.iter().all(|p| p.is_primitive()),
                "{op:?} used {used:?}"
            );
        }
    }

    #[test]
    fn abs_is_exact_at_zeros_infinities_and_nan() {
        let (y, _) = eval(UnaryOp::Abs, -0.0);
        assert!(y == 0.0 && y.is_sign_positive(), "abs(-0) = {y:?}");
        assert_eq!(eval(UnaryOp::Abs, f64::NEG_INFINITY).0, f64::INFINITY);
        assert!(eval(UnaryOp::Abs, f64::NAN).0.is_nan());
        assert_eq!(eval(UnaryOp::Abs, -1e308).0, 1e308);
    }

    #[test]
    fn softplus_neither_overflows_nor_loses_the_nan() {
        assert_eq!(eval(UnaryOp::Softplus, 1000.0).0, 1000.0);
        assert_eq!(eval(UnaryOp::Softplus, f64::NEG_INFINITY).0, 0.0);
        assert!(eval(UnaryOp::Softplus, f64::NAN).0.is_nan());
    }

    #[test]
    fn primitives_pass_through_unchanged() {
        let (y, used) = eval(UnaryOp::Exp, 0.5);
        assert_eq!(used, vec![UnaryOp::Exp]);
        assert_eq!(y, 0.5f64.exp());
    }

    /// Against values computed independently (Python's `math` module, float64).
    #[test]
    fn expansions_match_independent_values() {
        let cases = [
            // (op, x, expected)
            (UnaryOp::Rsqrt, 4.0, 0.5),
            (UnaryOp::Sigmoid, 0.0, 0.5),
            (UnaryOp::Sigmoid, 2.0, 0.8807970779778823),
            (UnaryOp::Silu, -1.5, -0.2736382857095345),
            // 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x**3))) at x = 1.0 and -0.7
            (UnaryOp::GeluTanh, 1.0, 0.8411919906082768),
            (UnaryOp::GeluTanh, -0.7, -0.16942986529488321),
            (UnaryOp::Abs, -2.5, 2.5),
            (UnaryOp::Abs, 3.0, 3.0),
            // math.log1p(math.exp(x)) at x = 0.3, -5 and 40
            (UnaryOp::Softplus, 0.3, 0.8543552444685272),
            (UnaryOp::Softplus, -5.0, 0.006715348489118068),
            (UnaryOp::Softplus, 40.0, 40.0),
        ];
        for (op, x, expected) in cases {
            let (y, _) = eval(op, x);
            assert!(
                (y - expected).abs() <= 1e-15 * expected.abs().max(1.0),
                "{op:?}({x}) = {y}, expected {expected}"
            );
        }
    }
}
