//! Kernel-IR expressions to LLVM IR, shared by the CPU code generator (`crate::llvm`) and the
//! GPU one (`crate::ptx`).
//!
//! What a [`Value`] or an [`Index`] means does not depend on the target, so it is lowered here,
//! once: integer index arithmetic (`i64`, `nsw`), element addresses (`getelementptr inbounds`
//! on the buffer's base pointer, in whatever address space the caller's [`Scope`] put it),
//! loads, constants rounded to the element type, and the scalar semantics every backend shares:
//!
//! - **Fast-math: only `contract`** on every floating-point add, subtract, multiply, divide
//!   and negation ([`Lowering::arith`]): FMA contraction is allowed, nothing else.
//! - `max`/`min` propagate NaN (`a + b` when unordered, else `a >= b ? a : b`, `<=` for min,
//!   which also fixes which zero wins), `relu(x) = x < 0 ? 0 : x` (NaN passes),
//!   `step(x) = x > 0 ? 1 : 0`; `sqrt` and `floor` are the LLVM intrinsics (IEEE).
//! - Composite functions (`rsqrt`, `sigmoid`, `silu`, `gelu_tanh`) are expanded by
//!   [`tttc_ir::composite::build_unary`], the one definition every evaluator shares;
//!   [`Lowering`] implements only the primitives.
//!
//! What does differ is the math library behind `exp`, `log`, `tanh`, `sin`, `cos` and `pow`
//! ([`MathFn`]): the caller passes a [`MathLibrary`] (the CPU's LLVM intrinsics and libm,
//! `crate::llvm::math`; the GPU's device functions, `crate::ptx::math`).

use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::types::{BasicTypeEnum, FloatType, IntType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, BasicValueEnum, FastMathFlags, FloatValue, FunctionValue,
    InstructionValue, IntValue, PointerValue,
};
use inkwell::{FloatPredicate, IntPredicate};
use std::collections::HashMap;
use tttc_ir::composite::{build_unary, PrimitiveBuilder};
use tttc_ir::kernel::{BufId, Index, Value, VarId};
use tttc_ir::{BinaryOp, DType, UnaryOp};

/// Why an expression could not be lowered (each code generator turns it into its own error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExprError {
    /// LLVM's IR builder refused an instruction.
    #[error("IR builder: {0}")]
    Builder(#[from] BuilderError),
    /// A bug in the code generator (a buffer or loop variable not in scope, ...).
    #[error("{0}")]
    Internal(String),
}

fn internal<T>(msg: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError::Internal(msg.into()))
}

/// The functions a [`MathLibrary`] provides (each of the element type; `Pow` takes two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MathFn {
    /// `e^x`.
    Exp,
    /// Natural logarithm.
    Log,
    /// Sine.
    Sin,
    /// Cosine.
    Cos,
    /// Hyperbolic tangent.
    Tanh,
    /// `a^b`.
    Pow,
}

/// The target's math library: how `exp`, `log`, `tanh`, `sin`, `cos` and `pow` are computed.
pub(crate) trait MathLibrary<'ctx> {
    /// `f(args)` at the builder's position, in the element type of `l`.
    fn call(
        &self,
        l: &Lowering<'_, 'ctx>,
        s: &Scope<'_, 'ctx>,
        f: MathFn,
        args: &[FloatValue<'ctx>],
    ) -> Result<FloatValue<'ctx>, ExprError>;
}

/// Where an expression is lowered: the builder (positioned where the code goes) and what is in
/// scope there — buffer base pointers and loop variables (innermost last).
pub(crate) struct Scope<'s, 'ctx> {
    /// The builder.
    pub b: &'s Builder<'ctx>,
    /// Base pointers of the buffers available here.
    pub bufs: &'s HashMap<BufId, PointerValue<'ctx>>,
    /// Loop variables in scope, innermost last (a later binding shadows an earlier one).
    pub vars: &'s [(VarId, IntValue<'ctx>)],
    /// Told of every load made here (the CPU generator puts the loads of a vector loop's body
    /// in its access group: `llvm/parallel_md.rs`).
    pub on_access: Option<&'s dyn AccessHook<'ctx>>,
}

/// What a code generator does with every memory access an expression makes.
pub(crate) trait AccessHook<'ctx> {
    /// `inst` is a load or store just built.
    fn access(&self, inst: InstructionValue<'ctx>);
}

impl<'ctx> Scope<'_, 'ctx> {
    /// Reports the load `v` to [`Scope::on_access`].
    fn accessed(&self, v: BasicValueEnum<'ctx>) -> BasicValueEnum<'ctx> {
        if let (Some(hook), Some(inst)) = (self.on_access, v.as_instruction_value()) {
            hook.access(inst);
        }
        v
    }
}

/// The expression lowering of one module: element type, math library.
pub(crate) struct Lowering<'a, 'ctx> {
    /// The context.
    pub ctx: &'ctx Context,
    /// The module functions and intrinsics are declared in.
    pub module: &'a Module<'ctx>,
    /// The program's element type.
    pub dtype: DType,
    /// Its LLVM type.
    pub ft: FloatType<'ctx>,
    /// `i64`, the type of indices.
    pub i64t: IntType<'ctx>,
    /// `exp`, `log`, `tanh`, `sin`, `cos`, `pow`.
    pub math: &'a dyn MathLibrary<'ctx>,
}

impl<'a, 'ctx> Lowering<'a, 'ctx> {
    /// The lowering for element type `dtype` in `module`, with math library `math`.
    pub fn new(
        ctx: &'ctx Context,
        module: &'a Module<'ctx>,
        dtype: DType,
        math: &'a dyn MathLibrary<'ctx>,
    ) -> Self {
        let ft = match dtype {
            DType::F32 => ctx.f32_type(),
            DType::F64 => ctx.f64_type(),
        };
        Lowering {
            ctx,
            module,
            dtype,
            ft,
            i64t: ctx.i64_type(),
            math,
        }
    }

    /// The declaration of intrinsic `name` (overloaded ones at the element type).
    pub fn intrinsic(&self, name: &str) -> Result<FunctionValue<'ctx>, ExprError> {
        let Some(i) = Intrinsic::find(name) else {
            return internal(format!("no intrinsic {name}"));
        };
        let tys: Vec<BasicTypeEnum> = if i.is_overloaded() {
            vec![self.ft.into()]
        } else {
            Vec::new()
        };
        i.get_declaration(self.module, &tys)
            .ok_or_else(|| ExprError::Internal(format!("cannot declare {name}")))
    }

    /// `f(args)`, a function returning a float.
    pub fn call(
        &self,
        s: &Scope<'_, 'ctx>,
        f: FunctionValue<'ctx>,
        args: &[FloatValue<'ctx>],
    ) -> Result<FloatValue<'ctx>, ExprError> {
        let args: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        match s
            .b
            .build_call(f, &args, "call")?
            .try_as_basic_value()
            .basic()
        {
            Some(BasicValueEnum::FloatValue(v)) => Ok(v),
            _ => internal("call returned no float"),
        }
    }

    /// A call of intrinsic `name` (overloaded at the element type).
    pub fn intr(
        &self,
        s: &Scope<'_, 'ctx>,
        name: &str,
        args: &[FloatValue<'ctx>],
    ) -> Result<FloatValue<'ctx>, ExprError> {
        let f = self.intrinsic(name)?;
        self.call(s, f, args)
    }

    /// A constant of the element type (rounded like `as f32` for `f32` programs).
    pub fn fconst(&self, x: f64) -> FloatValue<'ctx> {
        match self.dtype {
            DType::F32 => self.ft.const_float(f64::from(x as f32)),
            DType::F64 => self.ft.const_float(x),
        }
    }

    /// Marks a floating-point instruction `contract` (the only fast-math flag used).
    fn contract(v: FloatValue<'ctx>) -> FloatValue<'ctx> {
        if let Some(i) = v.as_instruction() {
            let _ = i.set_fast_math_flags(FastMathFlags::AllowContract);
        }
        v
    }

    /// `a op b` for `op` one of add, subtract, multiply, divide, marked `contract`.
    pub fn arith(
        &self,
        s: &Scope<'_, 'ctx>,
        op: BinaryOp,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, ExprError> {
        let v = match op {
            BinaryOp::Add => s.b.build_float_add(a, b, "add")?,
            BinaryOp::Sub => s.b.build_float_sub(a, b, "sub")?,
            BinaryOp::Mul => s.b.build_float_mul(a, b, "mul")?,
            BinaryOp::Div => s.b.build_float_div(a, b, "div")?,
            other => return internal(format!("{} is not an arithmetic operation", other.name())),
        };
        Ok(Self::contract(v))
    }

    /// `c ? a : b`.
    pub fn select(
        &self,
        s: &Scope<'_, 'ctx>,
        c: IntValue<'ctx>,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
        name: &str,
    ) -> Result<FloatValue<'ctx>, ExprError> {
        Ok(s.b.build_select(c, a, b, name)?.into_float_value())
    }

    /// The value of loop variable `v` in scope `s`.
    pub fn var(&self, s: &Scope<'_, 'ctx>, v: VarId) -> Result<IntValue<'ctx>, ExprError> {
        match s.vars.iter().rev().find(|(w, _)| *w == v) {
            Some(&(_, x)) => Ok(x),
            None => internal(format!("loop variable i{} not in scope", v.0)),
        }
    }

    /// `index` as an `i64`.
    pub fn index(&self, s: &Scope<'_, 'ctx>, index: &Index) -> Result<IntValue<'ctx>, ExprError> {
        let c = |x: i64| self.i64t.const_int(x as u64, true);
        Ok(match index {
            Index::Const(x) => c(*x),
            Index::Var(v) => self.var(s, *v)?,
            Index::Add(a, b) => {
                let (a, b) = (self.index(s, a)?, self.index(s, b)?);
                s.b.build_int_nsw_add(a, b, "add")?
            }
            Index::Mul(a, k) => {
                let a = self.index(s, a)?;
                s.b.build_int_nsw_mul(a, c(*k), "mul")?
            }
            Index::Div(a, k) => {
                let a = self.index(s, a)?;
                s.b.build_int_signed_div(a, c(*k), "div")?
            }
            Index::Rem(a, k) => {
                let a = self.index(s, a)?;
                s.b.build_int_signed_rem(a, c(*k), "rem")?
            }
            Index::Load { buf, index, bound } => self.loaded_index(s, *buf, index, *bound)?,
        })
    }

    /// `buf[index]` truncated towards zero and clamped into `0..bound` (NaN gives 0), as
    /// `Index::clamp_loaded` defines it. The float is clamped before `fptosi` (which is poison
    /// outside the integer range) with ordered compares (false for NaN), and the integer again
    /// (the float top may round up when `bound - 1` is not exact in it).
    fn loaded_index(
        &self,
        s: &Scope<'_, 'ctx>,
        buf: BufId,
        index: &Index,
        bound: i64,
    ) -> Result<IntValue<'ctx>, ExprError> {
        let top = bound.max(1) - 1;
        let ptr = self.element(s, buf, index)?;
        let x = s
            .accessed(s.b.build_load(self.ft, ptr, "id")?)
            .into_float_value();
        let zero = self.fconst(0.0);
        let top_f = self.fconst(top as f64);
        let pos =
            s.b.build_float_compare(FloatPredicate::OGT, x, zero, "id.pos")?;
        let x = self.select(s, pos, x, zero, "id.lo")?;
        let below =
            s.b.build_float_compare(FloatPredicate::OLT, x, top_f, "id.below")?;
        let x = self.select(s, below, x, top_f, "id.hi")?;
        let i = s.b.build_float_to_signed_int(x, self.i64t, "id.int")?;
        let top_i = self.i64t.const_int(top as u64, true);
        let over =
            s.b.build_int_compare(IntPredicate::SGT, i, top_i, "id.over")?;
        Ok(s.b.build_select(over, top_i, i, "id.row")?.into_int_value())
    }

    /// The address of `buf[index]` (bounds proven by the analysis before code generation).
    pub fn element(
        &self,
        s: &Scope<'_, 'ctx>,
        buf: BufId,
        index: &Index,
    ) -> Result<PointerValue<'ctx>, ExprError> {
        let Some(&base) = s.bufs.get(&buf) else {
            return internal(format!("buffer b{} not available here", buf.0));
        };
        let i = self.index(s, index)?;
        // SAFETY: the bounds analysis proved 0 <= index < len for every iteration.
        Ok(unsafe { s.b.build_in_bounds_gep(self.ft, base, &[i], "elt")? })
    }

    /// `v` as a value of the element type.
    pub fn value(&self, s: &Scope<'_, 'ctx>, v: &Value) -> Result<FloatValue<'ctx>, ExprError> {
        Ok(match v {
            Value::Load { buf, index } => {
                let ptr = self.element(s, *buf, index)?;
                s.accessed(s.b.build_load(self.ft, ptr, "ld")?)
                    .into_float_value()
            }
            Value::Const(x) => self.fconst(*x),
            Value::FromIndex(i) => {
                let i = self.index(s, i)?;
                s.b.build_signed_int_to_float(i, self.ft, "fromidx")?
            }
            Value::Unary(op, x) => {
                let x = self.value(s, x)?;
                build_unary(&mut Primitives { l: self, s }, *op, x)?
            }
            Value::Binary(op, a, b) => {
                let a = self.value(s, a)?;
                let b = self.value(s, b)?;
                self.binary(s, *op, a, b)?
            }
        })
    }

    /// `op(x)` for a primitive `op` (composites go through [`build_unary`]).
    fn primitive(
        &self,
        s: &Scope<'_, 'ctx>,
        op: UnaryOp,
        x: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, ExprError> {
        let zero = self.fconst(0.0);
        let math = |f| self.math.call(self, s, f, &[x]);
        Ok(match op {
            UnaryOp::Neg => Self::contract(s.b.build_float_neg(x, "neg")?),
            UnaryOp::Sqrt => self.intr(s, "llvm.sqrt", &[x])?,
            UnaryOp::Floor => self.intr(s, "llvm.floor", &[x])?,
            UnaryOp::Exp => math(MathFn::Exp)?,
            UnaryOp::Log => math(MathFn::Log)?,
            UnaryOp::Tanh => math(MathFn::Tanh)?,
            UnaryOp::Sin => math(MathFn::Sin)?,
            UnaryOp::Cos => math(MathFn::Cos)?,
            UnaryOp::Relu => {
                // `x < 0 ? 0 : x`: NaN passes through.
                let neg =
                    s.b.build_float_compare(FloatPredicate::OLT, x, zero, "isneg")?;
                self.select(s, neg, zero, x, "relu")?
            }
            UnaryOp::Step => {
                let pos =
                    s.b.build_float_compare(FloatPredicate::OGT, x, zero, "ispos")?;
                self.select(s, pos, self.fconst(1.0), zero, "step")?
            }
            composite => {
                return internal(format!(
                    "{} is a composite (tttc_ir::composite expands it)",
                    composite.name()
                ))
            }
        })
    }

    /// `op(a, b)`.
    pub fn binary(
        &self,
        s: &Scope<'_, 'ctx>,
        op: BinaryOp,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, ExprError> {
        Ok(match op {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => {
                self.arith(s, op, a, b)?
            }
            BinaryOp::Pow => self.math.call(self, s, MathFn::Pow, &[a, b])?,
            BinaryOp::Max | BinaryOp::Min => {
                // NaN in, NaN out (`a + b`); otherwise `a >= b ? a : b` (`<=` for min), which
                // also fixes which zero wins, like the reference.
                let pred = if op == BinaryOp::Max {
                    FloatPredicate::OGE
                } else {
                    FloatPredicate::OLE
                };
                let nan = s.b.build_float_compare(FloatPredicate::UNO, a, b, "nan")?;
                let pick = s.b.build_float_compare(pred, a, b, "pick")?;
                let m = self.select(s, pick, a, b, "m")?;
                let sum = self.arith(s, BinaryOp::Add, a, b)?;
                self.select(s, nan, sum, m, op.name())?
            }
        })
    }
}

/// [`Lowering`] as the [`PrimitiveBuilder`] of [`build_unary`], at one position.
struct Primitives<'l, 'a, 's, 'ctx> {
    l: &'l Lowering<'a, 'ctx>,
    s: &'l Scope<'s, 'ctx>,
}

impl<'ctx> PrimitiveBuilder for Primitives<'_, '_, '_, 'ctx> {
    type Value = FloatValue<'ctx>;
    type Error = ExprError;

    fn constant(&mut self, c: f64) -> Result<FloatValue<'ctx>, ExprError> {
        Ok(self.l.fconst(c))
    }

    fn primitive_unary(
        &mut self,
        op: UnaryOp,
        x: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, ExprError> {
        self.l.primitive(self.s, op, x)
    }

    fn binary(
        &mut self,
        op: BinaryOp,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, ExprError> {
        self.l.binary(self.s, op, a, b)
    }
}
