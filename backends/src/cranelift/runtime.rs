//! What Cranelift-compiled kernels call: the parallel-for runtime, the C library's memory
//! functions, and Rust wrappers for the elementwise functions Cranelift has no instruction for.
//!
//! The parallel-for runtime is shared with the LLVM backend (`crate::native`).
//! The math wrappers call exactly the Rust methods the reference interpreter uses
//! (`f32::exp`, `f64::tanh`, `f32::powf`, ...), so a compiled kernel computes them bit for bit
//! like the oracle.

use cranelift_codegen::ir::types;
use cranelift_codegen::ir::Type;
use tttc_ir::{BinaryOp, UnaryOp};

pub use crate::native::{as_worker, thread_count, tttc_parallel_for, WorkerFn};

extern "C" {
    fn memset(p: *mut u8, c: i32, n: usize) -> *mut u8;
    fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8;
    fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8;
}

macro_rules! unary_wrappers {
    ($($name:ident: $t:ty => $method:ident;)*) => {
        $(
            extern "C" fn $name(x: $t) -> $t {
                x.$method()
            }
        )*
    };
}

unary_wrappers! {
    cl_exp_f32: f32 => exp;
    cl_exp_f64: f64 => exp;
    cl_log_f32: f32 => ln;
    cl_log_f64: f64 => ln;
    cl_tanh_f32: f32 => tanh;
    cl_tanh_f64: f64 => tanh;
    cl_sin_f32: f32 => sin;
    cl_sin_f64: f64 => sin;
    cl_cos_f32: f32 => cos;
    cl_cos_f64: f64 => cos;
    cl_floor_f32: f32 => floor;
    cl_floor_f64: f64 => floor;
}

macro_rules! vector_wrappers {
    ($($name:ident: $t:ty, $lanes:literal => $method:ident;)*) => {
        $(
            /// Applies the function to the `LANES` values at `p`, in place (one call per SIMD
            /// vector instead of one per lane).
            ///
            /// # Safety
            ///
            /// `p` must point to `LANES` writable, initialized values.
            unsafe extern "C" fn $name(p: *mut $t) {
                // SAFETY: the caller's contract.
                let v = unsafe { std::slice::from_raw_parts_mut(p, $lanes) };
                for x in v {
                    *x = x.$method();
                }
            }
        )*
    };
}

vector_wrappers! {
    cl_exp_f32x4: f32, 4 => exp;
    cl_exp_f64x2: f64, 2 => exp;
    cl_log_f32x4: f32, 4 => ln;
    cl_log_f64x2: f64, 2 => ln;
    cl_tanh_f32x4: f32, 4 => tanh;
    cl_tanh_f64x2: f64, 2 => tanh;
    cl_sin_f32x4: f32, 4 => sin;
    cl_sin_f64x2: f64, 2 => sin;
    cl_cos_f32x4: f32, 4 => cos;
    cl_cos_f64x2: f64, 2 => cos;
}

/// `pow` lane by lane: bases at `p[0..4]`, exponents at `p[4..8]`, results to `p[0..4]`.
///
/// # Safety
///
/// `p` must point to 8 writable, initialized values.
unsafe extern "C" fn cl_pow_f32x4(p: *mut f32) {
    // SAFETY: the caller's contract.
    let v = unsafe { std::slice::from_raw_parts_mut(p, 8) };
    for i in 0..4 {
        v[i] = v[i].powf(v[i + 4]);
    }
}

/// `pow` lane by lane: bases at `p[0..2]`, exponents at `p[2..4]`, results to `p[0..2]`.
///
/// # Safety
///
/// `p` must point to 4 writable, initialized values.
unsafe extern "C" fn cl_pow_f64x2(p: *mut f64) {
    // SAFETY: the caller's contract.
    let v = unsafe { std::slice::from_raw_parts_mut(p, 4) };
    for i in 0..2 {
        v[i] = v[i].powf(v[i + 2]);
    }
}

extern "C" fn cl_pow_f32(a: f32, b: f32) -> f32 {
    a.powf(b)
}

extern "C" fn cl_pow_f64(a: f64, b: f64) -> f64 {
    a.powf(b)
}

/// An elementwise function a kernel calls instead of computing it inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum MathFn {
    Exp,
    Log,
    Tanh,
    Sin,
    Cos,
    Pow,
}

impl MathFn {
    /// The call for a unary op, if it needs one.
    pub(crate) fn of_unary(op: UnaryOp) -> Option<MathFn> {
        Some(match op {
            UnaryOp::Exp => MathFn::Exp,
            UnaryOp::Log => MathFn::Log,
            UnaryOp::Tanh => MathFn::Tanh,
            UnaryOp::Sin => MathFn::Sin,
            UnaryOp::Cos => MathFn::Cos,
            _ => return None,
        })
    }

    /// The call for a binary op, if it needs one.
    pub(crate) fn of_binary(op: BinaryOp) -> Option<MathFn> {
        (op == BinaryOp::Pow).then_some(MathFn::Pow)
    }

    /// Number of arguments.
    pub(crate) fn arity(self) -> usize {
        if self == MathFn::Pow {
            2
        } else {
            1
        }
    }

    /// The symbol of the in-place vector version (`void f(T* lanes)`; for `pow` the
    /// exponents follow the bases) for element type `ty`.
    pub(crate) fn vector_symbol(self, ty: Type) -> &'static str {
        let f32 = ty == types::F32;
        match (self, f32) {
            (MathFn::Exp, true) => "tttc_cl_expf_x4",
            (MathFn::Exp, false) => "tttc_cl_exp_x2",
            (MathFn::Log, true) => "tttc_cl_logf_x4",
            (MathFn::Log, false) => "tttc_cl_log_x2",
            (MathFn::Tanh, true) => "tttc_cl_tanhf_x4",
            (MathFn::Tanh, false) => "tttc_cl_tanh_x2",
            (MathFn::Sin, true) => "tttc_cl_sinf_x4",
            (MathFn::Sin, false) => "tttc_cl_sin_x2",
            (MathFn::Cos, true) => "tttc_cl_cosf_x4",
            (MathFn::Cos, false) => "tttc_cl_cos_x2",
            (MathFn::Pow, true) => "tttc_cl_powf_x4",
            (MathFn::Pow, false) => "tttc_cl_pow_x2",
        }
    }

    /// The symbol the kernel imports for this function in element type `ty`.
    pub(crate) fn symbol(self, ty: Type) -> &'static str {
        let f32 = ty == types::F32;
        match (self, f32) {
            (MathFn::Exp, true) => "tttc_cl_expf",
            (MathFn::Exp, false) => "tttc_cl_exp",
            (MathFn::Log, true) => "tttc_cl_logf",
            (MathFn::Log, false) => "tttc_cl_log",
            (MathFn::Tanh, true) => "tttc_cl_tanhf",
            (MathFn::Tanh, false) => "tttc_cl_tanh",
            (MathFn::Sin, true) => "tttc_cl_sinf",
            (MathFn::Sin, false) => "tttc_cl_sin",
            (MathFn::Cos, true) => "tttc_cl_cosf",
            (MathFn::Cos, false) => "tttc_cl_cos",
            (MathFn::Pow, true) => "tttc_cl_powf",
            (MathFn::Pow, false) => "tttc_cl_pow",
        }
    }
}

/// Name of the parallel-for runtime function as kernels import it.
pub(crate) const PARALLEL_FOR: &str = "tttc_parallel_for";

/// Every symbol compiled code may reference, with its address in this process: the
/// parallel-for and matrix-product runtimes, the allocator and memory functions (also what Cranelift's own libcalls
/// resolve to: `memset`, `floorf`, ...), and the math wrappers. Mapping them explicitly means
/// the JIT never depends on what the dynamic linker happens to have loaded.
pub(crate) fn jit_symbols() -> Vec<(&'static str, *const u8)> {
    let pfor: unsafe extern "C" fn(Option<WorkerFn>, *mut u8, i64) = tttc_parallel_for;
    let f32u = |f: extern "C" fn(f32) -> f32| f as *const u8;
    let f64u = |f: extern "C" fn(f64) -> f64| f as *const u8;
    let v32 = |f: unsafe extern "C" fn(*mut f32)| f as *const u8;
    let v64 = |f: unsafe extern "C" fn(*mut f64)| f as *const u8;
    let gemm32: unsafe extern "C" fn(*const i64, *const f32, *const f32, *mut f32) =
        crate::native::tttc_gemm_f32;
    let gemm64: unsafe extern "C" fn(*const i64, *const f64, *const f64, *mut f64) =
        crate::native::tttc_gemm_f64;
    vec![
        (PARALLEL_FOR, pfor as *const u8),
        (crate::native::gemm::GEMM_F32, gemm32 as *const u8),
        (crate::native::gemm::GEMM_F64, gemm64 as *const u8),
        ("malloc", crate::native::alloc::tttc_malloc as *const u8),
        ("calloc", crate::native::alloc::tttc_calloc as *const u8),
        ("free", crate::native::alloc::tttc_free as *const u8),
        ("memset", memset as *const u8),
        ("memcpy", memcpy as *const u8),
        ("memmove", memmove as *const u8),
        ("tttc_cl_expf", f32u(cl_exp_f32)),
        ("tttc_cl_exp", f64u(cl_exp_f64)),
        ("tttc_cl_logf", f32u(cl_log_f32)),
        ("tttc_cl_log", f64u(cl_log_f64)),
        ("tttc_cl_tanhf", f32u(cl_tanh_f32)),
        ("tttc_cl_tanh", f64u(cl_tanh_f64)),
        ("tttc_cl_sinf", f32u(cl_sin_f32)),
        ("tttc_cl_sin", f64u(cl_sin_f64)),
        ("tttc_cl_cosf", f32u(cl_cos_f32)),
        ("tttc_cl_cos", f64u(cl_cos_f64)),
        (
            "tttc_cl_powf",
            cl_pow_f32 as extern "C" fn(f32, f32) -> f32 as *const u8,
        ),
        (
            "tttc_cl_pow",
            cl_pow_f64 as extern "C" fn(f64, f64) -> f64 as *const u8,
        ),
        ("tttc_cl_expf_x4", v32(cl_exp_f32x4)),
        ("tttc_cl_exp_x2", v64(cl_exp_f64x2)),
        ("tttc_cl_logf_x4", v32(cl_log_f32x4)),
        ("tttc_cl_log_x2", v64(cl_log_f64x2)),
        ("tttc_cl_tanhf_x4", v32(cl_tanh_f32x4)),
        ("tttc_cl_tanh_x2", v64(cl_tanh_f64x2)),
        ("tttc_cl_sinf_x4", v32(cl_sin_f32x4)),
        ("tttc_cl_sin_x2", v64(cl_sin_f64x2)),
        ("tttc_cl_cosf_x4", v32(cl_cos_f32x4)),
        ("tttc_cl_cos_x2", v64(cl_cos_f64x2)),
        ("tttc_cl_powf_x4", v32(cl_pow_f32x4)),
        ("tttc_cl_pow_x2", v64(cl_pow_f64x2)),
        // Cranelift's libcalls for `floor` on CPUs without SSE4.1.
        ("floorf", f32u(cl_floor_f32)),
        ("floor", f64u(cl_floor_f64)),
    ]
}
