//! What the native backends (LLVM, Cranelift) share once their machine code exists: the
//! entry's calling convention, the buffers a compiled program expects, the input checks before
//! native code runs, the fresh output buffers and the result map — all of it in [`Jit`], which
//! each backend instantiates with the part that owns its machine code ([`JitCode`]) — the
//! parallel-for runtime ([`parallel`]), the matrix-product runtime ([`gemm`]) and the allocator
//! that keeps large blocks for the next run ([`alloc`]).
//!
//! Both backends compile a program to one entry `void entry(T** inputs, T** outputs)` (`T` the
//! program's element type): `inputs[i]` points to the `i`-th buffer of
//! [`KernelProgram::inputs`], `outputs[i]` to the `i`-th of [`KernelProgram::outputs`], each
//! with exactly its buffer's number of elements.

pub mod alloc;
pub mod gemm;
mod narrow;
pub(crate) mod parallel;
#[cfg(feature = "llvm")]
pub mod profile;

pub use gemm::{tttc_gemm_f32, tttc_gemm_f64};
pub use parallel::{as_worker, thread_count, tttc_parallel_for, WorkerFn};

use crate::backend::{BackendError, BufferList, CompiledProgram};
use crate::input::{check_inputs, elem_type, ExpectedInput, InputError};
use std::collections::BTreeMap;
use std::time::Duration;
use tttc_ir::kernel::{BufId, KernelProgram};
use tttc_ir::DType;
use tttc_runtime::{Tensor, TensorData};

/// The native entry: one pointer per program input, one per output, in program order.
pub(crate) type EntryFn = unsafe extern "C" fn(*const *const u8, *const *mut u8);

/// What a run checks a buffer against.
#[derive(Clone, Debug)]
struct BufSig {
    name: String,
    len: usize,
    shape: Vec<usize>,
}

/// The element type and the input and output buffers of a compiled program.
#[derive(Clone, Debug)]
struct Signature {
    dtype: DType,
    inputs: Vec<BufSig>,
    outputs: Vec<BufSig>,
}

impl Signature {
    /// The signature of `p`'s entry.
    fn of(p: &KernelProgram) -> Signature {
        let sig = |(id, name): (BufId, &str)| {
            let b = &p.buffers[id.0 as usize];
            BufSig {
                name: name.to_string(),
                len: b.len(),
                shape: b.layout.shape.clone(),
            }
        };
        Signature {
            dtype: p.dtype,
            inputs: p.inputs().into_iter().map(sig).collect(),
            outputs: p.outputs().into_iter().map(sig).collect(),
        }
    }
}

/// The backend-specific part of a [`Jit`]: what owns the machine code (freed when it drops),
/// and the backend's error type.
pub trait JitCode: Send + std::fmt::Debug {
    /// The backend's error.
    type Error: std::error::Error + From<InputError> + Into<BackendError>;

    /// A bug in the backend, with message `msg`.
    fn internal(msg: String) -> Self::Error;
}

/// A kernel program compiled to native code in memory, ready to run: the entry, the program's
/// signature, and the backend's machine code `C` ([`crate::llvm::LlvmJit`],
/// [`crate::cranelift::CraneliftJit`]).
///
/// Outputs start out as NaN on every run (the kernel fills them), inputs are only read, and
/// every input is checked ([`InputError`]) before native code runs.
pub struct Jit<C: JitCode> {
    entry: EntryFn,
    sig: Signature,
    compile_time: Duration,
    /// Dropped after everything above (declaration order): it owns the code `entry` points to.
    code: C,
}

impl<C: JitCode> std::fmt::Debug for Jit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jit")
            .field("dtype", &self.sig.dtype)
            .field("inputs", &self.sig.inputs)
            .field("outputs", &self.sig.outputs)
            .field("compile_time", &self.compile_time)
            .field("code", &self.code)
            .finish()
    }
}

impl<C: JitCode> Jit<C> {
    /// The program `p` compiled to `entry`, which lives in `code`.
    ///
    /// # Safety
    ///
    /// `entry` must have been compiled from `p`, with [`EntryFn`]'s calling convention, access
    /// only elements of its buffers (proven in bounds at compile time), and stay valid as long
    /// as `code` lives.
    pub(crate) unsafe fn new(
        p: &KernelProgram,
        entry: EntryFn,
        code: C,
        compile_time: Duration,
    ) -> Self {
        Jit {
            entry,
            sig: Signature::of(p),
            compile_time,
            code,
        }
    }

    /// The backend's part (machine code and what it knows about it).
    pub(crate) fn code(&self) -> &C {
        &self.code
    }

    /// How long compiling took (checks, code generation, optimization and machine code).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Runs the kernel on `inputs` (by name) and returns the outputs (by name, shaped like
    /// their buffers).
    ///
    /// Every program input must be given, with the program's element type and exactly its
    /// buffer's number of elements (the shape itself is not compared); names the program does
    /// not have are errors too ([`InputError`]). All of this is checked before native code
    /// runs.
    pub fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, C::Error> {
        self.run_reusing(inputs, &mut BTreeMap::new())
    }

    /// Like [`run`](Self::run), but an output whose name is in `spare` with the program's
    /// element type and size is written into that tensor's storage (taken out of `spare`; no
    /// allocation, no zeroing) instead of a fresh allocation.
    pub fn run_reusing(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        spare: &mut BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, C::Error> {
        let expected = self.sig.inputs.iter().map(|s| ExpectedInput {
            name: &s.name,
            len: s.len,
            shape: &s.shape,
        });
        let tensors = check_inputs(inputs, self.sig.dtype, expected)?;
        let ptrs: Vec<*const u8> = tensors
            .iter()
            .map(|t| match t.data() {
                TensorData::F32(v) => v.as_ptr().cast(),
                TensorData::F64(v) => v.as_ptr().cast(),
            })
            .collect();
        let want = elem_type(self.sig.dtype);
        let mut outs: Vec<TensorData> = self
            .sig
            .outputs
            .iter()
            .map(|s| {
                let reused = spare
                    .remove(&s.name)
                    .map(|t| t.into_parts().1)
                    .filter(|d| d.len() == s.len && d.elem_type() == want);
                reused.unwrap_or_else(|| match self.sig.dtype {
                    DType::F32 => TensorData::F32(vec![0.0; s.len].into()),
                    DType::F64 => TensorData::F64(vec![0.0; s.len].into()),
                })
            })
            .collect();
        let out_ptrs: Vec<*mut u8> = outs
            .iter_mut()
            .map(|d| match d {
                TensorData::F32(v) => v.as_mut_ptr().cast(),
                TensorData::F64(v) => v.as_mut_ptr().cast(),
            })
            .collect();
        // SAFETY: one pointer per program input and output, in the entry's order, each to
        // exactly the buffer's number of elements of the program's type (checked above); the
        // outputs are distinct allocations of their own; the kernel only accesses elements
        // proven in bounds (`Jit::new`'s contract).
        unsafe { (self.entry)(ptrs.as_ptr(), out_ptrs.as_ptr()) };
        let mut result = BTreeMap::new();
        for (s, data) in self.sig.outputs.iter().zip(outs) {
            let t = Tensor::new(s.shape.clone(), data)
                .map_err(|e| C::internal(format!("output {}: {e}", s.name)))?;
            result.insert(s.name.clone(), t);
        }
        Ok(result)
    }

    /// Names and element counts of the program's inputs, then outputs, in program order: the
    /// buffers [`Self::run_raw`] takes.
    pub fn buffers(&self) -> (BufferList, BufferList) {
        let list = |b: &[BufSig]| b.iter().map(|s| (s.name.clone(), s.len)).collect();
        (list(&self.sig.inputs), list(&self.sig.outputs))
    }

    /// Runs the kernel on caller-provided storage, one pointer per input and output buffer in
    /// the order of [`Self::buffers`] (only the counts are checked).
    ///
    /// # Safety
    ///
    /// Every pointer must be valid for its buffer's number of elements of the program's type;
    /// outputs must not overlap each other or any input, and nothing else may access them
    /// during the call.
    pub unsafe fn run_raw(
        &self,
        inputs: &[*const u8],
        outputs: &[*mut u8],
    ) -> Result<(), C::Error> {
        if inputs.len() != self.sig.inputs.len() || outputs.len() != self.sig.outputs.len() {
            return Err(C::internal(format!(
                "{} input and {} output pointer(s) for a program of {} and {}",
                inputs.len(),
                outputs.len(),
                self.sig.inputs.len(),
                self.sig.outputs.len()
            )));
        }
        // SAFETY: the caller's contract, and `Jit::new`'s.
        unsafe { (self.entry)(inputs.as_ptr(), outputs.as_ptr()) };
        Ok(())
    }
}

impl<C: JitCode> CompiledProgram for Jit<C> {
    fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, BackendError> {
        Jit::run(self, inputs).map_err(Into::into)
    }

    fn run_reusing(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        spare: &mut BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, BackendError> {
        Jit::run_reusing(self, inputs, spare).map_err(Into::into)
    }

    fn compile_time(&self) -> Duration {
        self.compile_time
    }

    fn buffers(&self) -> Option<(BufferList, BufferList)> {
        Some(Jit::buffers(self))
    }

    unsafe fn run_raw(
        &self,
        inputs: &[*const u8],
        outputs: &[*mut u8],
    ) -> Result<(), BackendError> {
        // SAFETY: the caller's contract (the trait's, the same as the inherent method's).
        unsafe { Jit::run_raw(self, inputs, outputs) }.map_err(Into::into)
    }
}
