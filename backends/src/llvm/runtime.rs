//! What compiled kernels call: the parallel-for runtime and the C library functions the JIT
//! maps by address.

use crate::native::alloc::{tttc_calloc, tttc_free, tttc_malloc};
pub use crate::native::{
    as_worker, thread_count, tttc_gemm_f32, tttc_gemm_f64, tttc_parallel_for, WorkerFn,
};

#[cfg_attr(target_os = "linux", link(name = "m"))]
extern "C" {
    fn expf(x: f32) -> f32;
    fn exp(x: f64) -> f64;
    fn exp2f(x: f32) -> f32;
    fn exp2(x: f64) -> f64;
    fn logf(x: f32) -> f32;
    fn log(x: f64) -> f64;
    fn powf(x: f32, y: f32) -> f32;
    fn pow(x: f64, y: f64) -> f64;
    fn sinf(x: f32) -> f32;
    fn sin(x: f64) -> f64;
    fn cosf(x: f32) -> f32;
    fn cos(x: f64) -> f64;
    fn tanhf(x: f32) -> f32;
    fn tanh(x: f64) -> f64;
    fn floorf(x: f32) -> f32;
    fn floor(x: f64) -> f64;
    fn sqrtf(x: f32) -> f32;
    fn sqrt(x: f64) -> f64;
    fn fmaf(x: f32, y: f32, z: f32) -> f32;
    fn fma(x: f64, y: f64, z: f64) -> f64;
    fn ldexpf(x: f32, e: i32) -> f32;
    fn ldexp(x: f64, e: i32) -> f64;
    fn memset(p: *mut u8, c: i32, n: usize) -> *mut u8;
    fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8;
    fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8;
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[link(name = "m")]
extern "C" {
    fn sincosf(x: f32, s: *mut f32, c: *mut f32);
    fn sincos(x: f64, s: *mut f64, c: *mut f64);
    fn exp10f(x: f32) -> f32;
    fn exp10(x: f64) -> f64;
}

/// The C type of a symbol the JIT maps, to declare it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sig {
    /// `float f(float)`.
    F32Unary,
    /// `double f(double)`.
    F64Unary,
    /// `float f(float, float)`.
    F32Binary,
    /// `double f(double, double)`.
    F64Binary,
    /// `float f(float, float, float)`.
    F32Ternary,
    /// `double f(double, double, double)`.
    F64Ternary,
    /// `float f(float, int)`.
    F32Int,
    /// `double f(double, int)`.
    F64Int,
    /// `void f(float, float*, float*)`.
    F32SinCos,
    /// `void f(double, double*, double*)`.
    F64SinCos,
    /// `void *f(size_t)`.
    Malloc,
    /// `void *f(size_t, size_t)`.
    Calloc,
    /// `void f(void*)`.
    Free,
    /// `void *f(void*, int, size_t)`.
    Memset,
    /// `void *f(void*, const void*, size_t)`.
    Memcpy,
    /// `void f(worker, void*, int64_t)`.
    ParallelFor,
    /// `void f(int64_t)`.
    VoidI64,
    /// `void f(const int64_t*, const T*, const T*, T*)`.
    Gemm,
}

/// Every external symbol compiled code may reference, with its address in this process: the
/// parallel-for runtime, the allocator, and the C library functions LLVM lowers math
/// intrinsics to (or turns calls into). Mapping them explicitly means the JIT never depends on
/// what the dynamic linker happens to have loaded, and computes with exactly the `libm` that
/// Rust's `f32::exp` and friends use.
pub(crate) fn jit_symbols() -> Vec<(&'static str, Sig, usize)> {
    use Sig::*;
    let pfor: unsafe extern "C" fn(Option<WorkerFn>, *mut u8, i64) = tttc_parallel_for;
    let profile_enter: extern "C" fn(i64) = crate::native::profile::tttc_profile_enter;
    let profile_exit: extern "C" fn(i64) = crate::native::profile::tttc_profile_exit;
    let gemm32: unsafe extern "C" fn(*const i64, *const f32, *const f32, *mut f32) = tttc_gemm_f32;
    let gemm64: unsafe extern "C" fn(*const i64, *const f64, *const f64, *mut f64) = tttc_gemm_f64;
    let mut v: Vec<(&'static str, Sig, usize)> = vec![
        (
            super::codegen::PARALLEL_FOR,
            ParallelFor,
            pfor as *const () as usize,
        ),
        (
            "tttc_profile_enter",
            VoidI64,
            profile_enter as *const () as usize,
        ),
        (
            "tttc_profile_exit",
            VoidI64,
            profile_exit as *const () as usize,
        ),
        (
            crate::native::gemm::GEMM_F32,
            Gemm,
            gemm32 as *const () as usize,
        ),
        (
            crate::native::gemm::GEMM_F64,
            Gemm,
            gemm64 as *const () as usize,
        ),
        ("malloc", Malloc, tttc_malloc as *const () as usize),
        ("calloc", Calloc, tttc_calloc as *const () as usize),
        ("free", Free, tttc_free as *const () as usize),
        ("memset", Memset, memset as *const () as usize),
        ("memcpy", Memcpy, memcpy as *const () as usize),
        ("memmove", Memcpy, memmove as *const () as usize),
        ("expf", F32Unary, expf as *const () as usize),
        ("exp", F64Unary, exp as *const () as usize),
        ("exp2f", F32Unary, exp2f as *const () as usize),
        ("exp2", F64Unary, exp2 as *const () as usize),
        ("logf", F32Unary, logf as *const () as usize),
        ("log", F64Unary, log as *const () as usize),
        ("powf", F32Binary, powf as *const () as usize),
        ("pow", F64Binary, pow as *const () as usize),
        ("sinf", F32Unary, sinf as *const () as usize),
        ("sin", F64Unary, sin as *const () as usize),
        ("cosf", F32Unary, cosf as *const () as usize),
        ("cos", F64Unary, cos as *const () as usize),
        ("tanhf", F32Unary, tanhf as *const () as usize),
        ("tanh", F64Unary, tanh as *const () as usize),
        ("floorf", F32Unary, floorf as *const () as usize),
        ("floor", F64Unary, floor as *const () as usize),
        ("sqrtf", F32Unary, sqrtf as *const () as usize),
        ("sqrt", F64Unary, sqrt as *const () as usize),
        ("fmaf", F32Ternary, fmaf as *const () as usize),
        ("fma", F64Ternary, fma as *const () as usize),
        ("ldexpf", F32Int, ldexpf as *const () as usize),
        ("ldexp", F64Int, ldexp as *const () as usize),
    ];
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    v.extend([
        ("sincosf", F32SinCos, sincosf as *const () as usize),
        ("sincos", F64SinCos, sincos as *const () as usize),
        ("exp10f", F32Unary, exp10f as *const () as usize),
        ("exp10", F64Unary, exp10 as *const () as usize),
    ]);
    v
}
