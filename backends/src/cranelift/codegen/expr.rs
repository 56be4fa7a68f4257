//! Expressions: element addresses, index arithmetic, constants, and the elementwise functions
//! (scalar, or 128-bit SIMD lanes), composites expanded through [`tttc_ir::composite`].

use super::*;
use tttc_ir::composite::{build_unary, PrimitiveBuilder};

/// The generator seen as a [`PrimitiveBuilder`] at one point of a function: scalar or SIMD
/// (`vec`) values.
struct Prims<'g, 'a, 's, 'f> {
    g: &'g mut Gen<'a>,
    st: &'s mut FnState<'f>,
    vec: bool,
}

impl PrimitiveBuilder for Prims<'_, '_, '_, '_> {
    type Value = Cv;
    type Error = CraneliftError;

    fn constant(&mut self, c: f64) -> Result<Cv, CraneliftError> {
        Ok(self.g.konst(self.st, c, self.vec))
    }

    fn primitive_unary(&mut self, op: UnaryOp, x: Cv) -> Result<Cv, CraneliftError> {
        self.g.primitive_unary(self.st, op, x, self.vec)
    }

    fn binary(&mut self, op: BinaryOp, a: Cv, b: Cv) -> Result<Cv, CraneliftError> {
        self.g.binary(self.st, op, a, b, self.vec)
    }
}

impl<'a> Gen<'a> {
    /// The address of `buf[index]` (bounds proven by the analysis).
    pub(super) fn element(
        &mut self,
        st: &mut FnState<'_>,
        buf: BufId,
        index: &Index,
    ) -> Result<Cv, CraneliftError> {
        let Some(&base) = st.bufs.get(&buf) else {
            return internal(format!("buffer b{} not available here", buf.0));
        };
        // Inside an innermost loop, split the sum into the terms that do not mention its
        // variable (`base + fixed`: loop-invariant, hoisted by Cranelift) and those that do
        // (shared by every access with the same offset, and folded into the address mode).
        // Wrapping `i64` addition is associative, so the address is the same.
        if let Some(var) = st.loop_var {
            let mut terms = Vec::new();
            flatten_sum(index, &mut terms);
            let (varying, fixed): (Vec<&Index>, Vec<&Index>) =
                terms.into_iter().partition(|t| t.mentions(var));
            if !varying.is_empty() && !fixed.is_empty() {
                let f = self.index_sum(st, &fixed)?;
                let f = st.b.ins().ishl_imm_s(f, self.shift);
                let moved = st.b.ins().iadd(base, f);
                let v = self.index_sum(st, &varying)?;
                let v = st.b.ins().ishl_imm_s(v, self.shift);
                return Ok(st.b.ins().iadd(moved, v));
            }
        }
        let i = self.index(st, index)?;
        let off = st.b.ins().ishl_imm_s(i, self.shift);
        Ok(st.b.ins().iadd(base, off))
    }

    /// The sum of `terms` (at least one).
    pub(super) fn index_sum(
        &mut self,
        st: &mut FnState<'_>,
        terms: &[&Index],
    ) -> Result<Cv, CraneliftError> {
        let mut acc: Option<Cv> = None;
        for t in terms {
            let x = self.index(st, t)?;
            acc = Some(match acc {
                None => x,
                Some(a) => st.b.ins().iadd(a, x),
            });
        }
        match acc {
            Some(a) => Ok(a),
            None => internal("an empty index sum"),
        }
    }

    pub(super) fn index(
        &mut self,
        st: &mut FnState<'_>,
        index: &Index,
    ) -> Result<Cv, CraneliftError> {
        Ok(match index {
            Index::Const(x) => st.b.ins().iconst(types::I64, *x),
            Index::Var(v) => match st.vars.iter().rev().find(|(w, _)| w == v) {
                Some(&(_, x)) => x,
                None => return internal(format!("loop variable i{} not in scope", v.0)),
            },
            Index::Add(a, b) => {
                let (a, b) = (self.index(st, a)?, self.index(st, b)?);
                st.b.ins().iadd(a, b)
            }
            Index::Mul(a, k) => {
                let a = self.index(st, a)?;
                st.b.ins().imul_imm_s(a, *k)
            }
            Index::Div(a, k) => {
                let a = self.index(st, a)?;
                st.b.ins().sdiv_imm_s(a, *k)
            }
            Index::Rem(a, k) => {
                let a = self.index(st, a)?;
                st.b.ins().srem_imm_s(a, *k)
            }
            // `buf[index]` truncated towards zero (saturating, NaN to 0), clamped into
            // `0..bound` like `Index::clamp_loaded`.
            Index::Load { buf, index, bound } => {
                let addr = self.element(st, *buf, index)?;
                let x = st.b.ins().load(self.ft, scalar_flags(), addr, 0);
                let i = st.b.ins().fcvt_to_sint_sat(types::I64, x);
                let lo = st.b.ins().iconst(types::I64, 0);
                let hi = st.b.ins().iconst(types::I64, (*bound).max(1) - 1);
                let i = st.b.ins().smax(i, lo);
                st.b.ins().smin(i, hi)
            }
        })
    }

    /// A constant of the element type (rounded like `as f32` for `f32` programs), splatted in
    /// SIMD code.
    pub(super) fn konst(&self, st: &mut FnState<'_>, x: f64, vec: bool) -> Cv {
        let s = match self.p.dtype {
            DType::F32 => st.b.ins().f32const(x as f32),
            DType::F64 => st.b.ins().f64const(x),
        };
        if vec {
            st.b.ins().splat(self.vt, s)
        } else {
            s
        }
    }

    /// `cond ? a : b` for a comparison result `cond` (a lane mask in SIMD code).
    pub(super) fn choose(&self, st: &mut FnState<'_>, cond: Cv, a: Cv, b: Cv, vec: bool) -> Cv {
        if vec {
            let flags = MemFlagsData::new().with_endianness(Endianness::Little);
            let mask = st.b.ins().bitcast(self.vt, flags, cond);
            st.b.ins().bitselect(mask, a, b)
        } else {
            st.b.ins().select(cond, a, b)
        }
    }

    /// Applies a scalar function lane by lane (SIMD code) or once.
    pub(super) fn lanewise(
        &self,
        st: &mut FnState<'_>,
        xs: &[Cv],
        vec: bool,
        f: &dyn Fn(&mut FunctionBuilder<'_>, &[Cv]) -> Cv,
    ) -> Result<Cv, CraneliftError> {
        if !vec {
            return Ok(f(&mut st.b, xs));
        }
        let mut out = None;
        for lane in 0..self.lanes {
            let scalars: Vec<Cv> = xs
                .iter()
                .map(|&x| st.b.ins().extractlane(x, lane))
                .collect();
            let y = f(&mut st.b, &scalars);
            out = Some(match out {
                None => st.b.ins().splat(self.vt, y),
                Some(v) => st.b.ins().insertlane(v, y, lane),
            });
        }
        match out {
            Some(v) => Ok(v),
            None => internal("a vector without lanes"),
        }
    }

    /// A call of the math wrapper for `f`; in SIMD code one call of its in-place vector
    /// version (the lanes go through a stack slot), which applies the same scalar function to
    /// each lane.
    pub(super) fn math(
        &mut self,
        st: &mut FnState<'_>,
        f: MathFn,
        xs: &[Cv],
        vec: bool,
    ) -> Result<Cv, CraneliftError> {
        if xs.len() != f.arity() {
            return internal(format!("{f:?} takes {} argument(s)", f.arity()));
        }
        let ft = self.ft;
        if !vec {
            let params = vec![ft; f.arity()];
            let fref = self.import(st, f.symbol(ft), &params, Some(ft))?;
            let call = st.b.ins().call(fref, xs);
            return Ok(st.b.inst_results(call)[0]);
        }
        let fref = self.import(st, f.vector_symbol(ft), &[self.ptr], None)?;
        let slot = match st.math_slot {
            Some(s) => s,
            None => {
                let s = st.b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    32,
                    4,
                ));
                st.math_slot = Some(s);
                s
            }
        };
        let addr = st.b.ins().stack_addr(self.ptr, slot, 0);
        for (k, &x) in xs.iter().enumerate() {
            st.b.ins().store(vector_flags(), x, addr, (16 * k) as i32);
        }
        st.b.ins().call(fref, &[addr]);
        Ok(st.b.ins().load(self.vt, vector_flags(), addr, 0))
    }

    /// `op(x)`: a composite through its one definition ([`tttc_ir::composite`]) over the
    /// primitives of [`primitive_unary`](Self::primitive_unary).
    pub(super) fn unary(
        &mut self,
        st: &mut FnState<'_>,
        op: UnaryOp,
        x: Cv,
        vec: bool,
    ) -> Result<Cv, CraneliftError> {
        build_unary(&mut Prims { g: self, st, vec }, op, x)
    }

    /// A primitive unary function ([`UnaryOp::is_primitive`]).
    fn primitive_unary(
        &mut self,
        st: &mut FnState<'_>,
        op: UnaryOp,
        x: Cv,
        vec: bool,
    ) -> Result<Cv, CraneliftError> {
        if let Some(f) = MathFn::of_unary(op) {
            return self.math(st, f, &[x], vec);
        }
        Ok(match op {
            UnaryOp::Neg => st.b.ins().fneg(x),
            UnaryOp::Sqrt => st.b.ins().sqrt(x),
            UnaryOp::Relu => {
                // `x < 0 ? 0 : x`: NaN passes through.
                let zero = self.konst(st, 0.0, vec);
                let neg = st.b.ins().fcmp(FloatCC::LessThan, x, zero);
                self.choose(st, neg, zero, x, vec)
            }
            UnaryOp::Step => {
                let zero = self.konst(st, 0.0, vec);
                let one = self.konst(st, 1.0, vec);
                let pos = st.b.ins().fcmp(FloatCC::GreaterThan, x, zero);
                self.choose(st, pos, one, zero, vec)
            }
            UnaryOp::Floor => {
                // Lane by lane: the scalar instruction (or libm's `floor` without SSE4.1).
                self.lanewise(st, &[x], vec, &|b, xs| b.ins().floor(xs[0]))?
            }
            UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sin | UnaryOp::Cos => {
                return internal("math function not dispatched")
            }
            composite => {
                return internal(format!("composite {composite:?} reached the primitives"))
            }
        })
    }

    pub(super) fn binary(
        &mut self,
        st: &mut FnState<'_>,
        op: BinaryOp,
        a: Cv,
        b: Cv,
        vec: bool,
    ) -> Result<Cv, CraneliftError> {
        if let Some(f) = MathFn::of_binary(op) {
            return self.math(st, f, &[a, b], vec);
        }
        Ok(match op {
            BinaryOp::Add => st.b.ins().fadd(a, b),
            BinaryOp::Sub => st.b.ins().fsub(a, b),
            BinaryOp::Mul => st.b.ins().fmul(a, b),
            BinaryOp::Div => st.b.ins().fdiv(a, b),
            BinaryOp::Max | BinaryOp::Min => {
                // NaN in, NaN out (`a + b`); otherwise `a >= b ? a : b` (`<=` for min), which
                // also fixes which zero wins, like the reference.
                let cc = if op == BinaryOp::Max {
                    FloatCC::GreaterThanOrEqual
                } else {
                    FloatCC::LessThanOrEqual
                };
                let nan = st.b.ins().fcmp(FloatCC::Unordered, a, b);
                let pick = st.b.ins().fcmp(cc, a, b);
                let m = self.choose(st, pick, a, b, vec);
                let sum = st.b.ins().fadd(a, b);
                self.choose(st, nan, sum, m, vec)
            }
            BinaryOp::Pow => return internal("pow not dispatched"),
        })
    }

    /// `float(index)` like the interpreter: `i64` to `f64`, then rounded to `f32`.
    pub(super) fn index_to_float(&mut self, st: &mut FnState<'_>, i: Cv) -> Cv {
        let d = st.b.ins().fcvt_from_sint(types::F64, i);
        if self.ft == types::F32 {
            st.b.ins().fdemote(types::F32, d)
        } else {
            d
        }
    }

    /// The value of `v`: a scalar, or in SIMD code (`vec`) the vector of lanes
    /// `i..i+lanes` of the innermost loop variable `i`.
    pub(super) fn value(
        &mut self,
        st: &mut FnState<'_>,
        v: &Value,
        vec: bool,
    ) -> Result<Cv, CraneliftError> {
        let key = v as *const Value;
        if vec {
            if let Some(&x) = st.inner.splats.get(&key) {
                return Ok(x);
            }
        } else if let Some(&x) = st.inner.hoisted.get(&key) {
            return Ok(x);
        }
        Ok(match v {
            Value::Load { buf, index } => {
                if let Some(&var) = st.inner.promoted.get(buf) {
                    if vec {
                        return internal("register accumulator in a SIMD loop");
                    }
                    st.b.use_var(var)
                } else if let Some(&(_, x)) = st.fwd.get(buf) {
                    x
                } else if st.fwd_bufs.contains(buf) {
                    let addr = self.element(st, *buf, index)?;
                    let x = if vec {
                        st.b.ins().load(self.vt, vector_flags(), addr, 0)
                    } else {
                        st.b.ins().load(self.ft, scalar_flags(), addr, 0)
                    };
                    st.fwd.insert(*buf, (false, x));
                    x
                } else {
                    let addr = self.element(st, *buf, index)?;
                    if vec {
                        st.b.ins().load(self.vt, vector_flags(), addr, 0)
                    } else {
                        st.b.ins().load(self.ft, scalar_flags(), addr, 0)
                    }
                }
            }
            Value::Const(x) => self.konst(st, *x, vec),
            Value::FromIndex(index) => {
                if vec {
                    // Lane by lane, with the innermost variable at i + lane.
                    let Some((var, i)) = st.simd_var else {
                        return internal("SIMD code outside a SIMD loop");
                    };
                    let mut out = None;
                    for lane in 0..self.lanes {
                        let il = st.b.ins().iadd_imm_s(i, i64::from(lane));
                        st.vars.push((var, il));
                        let r = self.index(st, index);
                        st.vars.pop();
                        let x = self.index_to_float(st, r?);
                        out = Some(match out {
                            None => st.b.ins().splat(self.vt, x),
                            Some(v) => st.b.ins().insertlane(v, x, lane),
                        });
                    }
                    match out {
                        Some(v) => v,
                        None => return internal("a vector without lanes"),
                    }
                } else {
                    let i = self.index(st, index)?;
                    self.index_to_float(st, i)
                }
            }
            Value::Unary(op, x) => {
                let x = self.value(st, x, vec)?;
                self.unary(st, *op, x, vec)?
            }
            Value::Binary(op, a, b) => {
                let a = self.value(st, a, vec)?;
                let b = self.value(st, b, vec)?;
                self.binary(st, *op, a, b, vec)?
            }
        })
    }
}
