//! Run-time glue shared by the native backends (LLVM and Cranelift): the entry's calling
//! convention, the buffers a compiled program expects, the checks on the inputs before native
//! code runs, the fresh output buffers and the result map.
//!
//! Both backends compile a program to one entry `void entry(T** inputs, T** outputs)` (`T` the
//! program's element type) and run it through [`Signature::run`].

use std::collections::BTreeMap;
use tttc_ir::kernel::{BufId, KernelProgram};
use tttc_ir::DType;
use tttc_runtime::{ElemType, Tensor, TensorData};

/// The native entry: one pointer per program input, one per output, in program order.
pub(crate) type EntryFn = unsafe extern "C" fn(*const *const u8, *const *mut u8);

/// Names and element counts of a program's buffers, in program order.
pub type BufferList = Vec<(String, usize)>;

/// What a run checks a buffer against.
#[derive(Clone, Debug)]
pub(crate) struct BufSig {
    pub(crate) name: String,
    pub(crate) len: usize,
    pub(crate) shape: Vec<usize>,
}

/// The element type and the input and output buffers of a compiled program.
#[derive(Clone, Debug)]
pub(crate) struct Signature {
    pub(crate) dtype: DType,
    pub(crate) inputs: Vec<BufSig>,
    pub(crate) outputs: Vec<BufSig>,
}

/// Why [`Signature::run`] failed; each backend wraps it in its own error type.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The inputs do not match the program.
    Input {
        /// The input's name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// A bug in the backend.
    Internal(String),
}

impl Signature {
    /// The signature of `p`'s entry.
    pub(crate) fn of(p: &KernelProgram) -> Signature {
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

    /// Checks `inputs` (every program input given, by name, with the program's element type
    /// and exactly its buffer's number of elements; no unknown names), allocates the outputs,
    /// calls `entry` and returns the outputs by name, shaped like their buffers. Nothing native
    /// runs unless every check passes.
    ///
    /// # Safety
    ///
    /// `entry` must have been compiled from the program this signature was taken from, with
    /// [`EntryFn`]'s calling convention, and access only elements of its buffers (proven in
    /// bounds at compile time).
    pub(crate) unsafe fn run(
        &self,
        entry: EntryFn,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, RunError> {
        // SAFETY: the caller's contract.
        unsafe { self.run_reusing(entry, inputs, &mut BTreeMap::new()) }
    }

    /// Calls `entry` on caller-provided storage: `inputs[i]` and `outputs[i]` point at the
    /// program's `i`-th input and output buffer (program order, [`Signature::inputs`] and
    /// [`Signature::outputs`]). Only the counts are checked.
    ///
    /// # Safety
    ///
    /// As for [`Signature::run`]; besides, every pointer must be valid for the buffer's number
    /// of elements of the program's type, outputs must not overlap each other or any input,
    /// and nothing else may access the outputs during the call.
    pub(crate) unsafe fn run_raw(
        &self,
        entry: EntryFn,
        inputs: &[*const u8],
        outputs: &[*mut u8],
    ) -> Result<(), RunError> {
        if inputs.len() != self.inputs.len() || outputs.len() != self.outputs.len() {
            return Err(RunError::Internal(format!(
                "{} input and {} output pointer(s) for a program of {} and {}",
                inputs.len(),
                outputs.len(),
                self.inputs.len(),
                self.outputs.len()
            )));
        }
        // SAFETY: the caller's contract.
        unsafe { entry(inputs.as_ptr(), outputs.as_ptr()) };
        Ok(())
    }

    /// Names and element counts of the inputs, then of the outputs, in program order.
    pub(crate) fn buffers(&self) -> (BufferList, BufferList) {
        let list = |b: &[BufSig]| b.iter().map(|s| (s.name.clone(), s.len)).collect();
        (list(&self.inputs), list(&self.outputs))
    }

    /// Like [`Signature::run`], but an output whose name is in `spare` with the program's
    /// element type and size is written into that tensor's storage (taken out of `spare`)
    /// instead of a fresh allocation.
    ///
    /// # Safety
    ///
    /// As for [`Signature::run`].
    pub(crate) unsafe fn run_reusing(
        &self,
        entry: EntryFn,
        inputs: &BTreeMap<String, Tensor>,
        spare: &mut BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, RunError> {
        let bad = |name: &str, msg: String| RunError::Input {
            name: name.to_string(),
            msg,
        };
        for name in inputs.keys() {
            if !self.inputs.iter().any(|s| &s.name == name) {
                return Err(bad(name, "the program has no such input".into()));
            }
        }
        let want = match self.dtype {
            DType::F32 => ElemType::F32,
            DType::F64 => ElemType::F64,
        };
        let mut ptrs: Vec<*const u8> = Vec::with_capacity(self.inputs.len());
        for s in &self.inputs {
            let Some(t) = inputs.get(&s.name) else {
                return Err(bad(&s.name, "missing".into()));
            };
            if t.elem_type() != want {
                return Err(bad(
                    &s.name,
                    format!(
                        "element type {} but the program computes in {want}",
                        t.elem_type()
                    ),
                ));
            }
            if t.len() != s.len {
                return Err(bad(
                    &s.name,
                    format!(
                        "{} element(s) (shape {:?}) but the program's buffer has {} (shape {:?})",
                        t.len(),
                        t.shape(),
                        s.len,
                        s.shape
                    ),
                ));
            }
            ptrs.push(match t.data() {
                TensorData::F32(v) => v.as_ptr().cast(),
                TensorData::F64(v) => v.as_ptr().cast(),
            });
        }
        let mut outs: Vec<TensorData> = self
            .outputs
            .iter()
            .map(|s| {
                let reused = spare
                    .remove(&s.name)
                    .map(|t| t.into_parts().1)
                    .filter(|d| d.len() == s.len && d.elem_type() == want);
                reused.unwrap_or_else(|| match self.dtype {
                    DType::F32 => TensorData::F32(vec![0.0; s.len]),
                    DType::F64 => TensorData::F64(vec![0.0; s.len]),
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
        // outputs are fresh, distinct allocations; the kernel only accesses elements proven in
        // bounds (the caller's contract).
        unsafe { entry(ptrs.as_ptr(), out_ptrs.as_ptr()) };
        let mut result = BTreeMap::new();
        for (s, data) in self.outputs.iter().zip(outs) {
            let t = Tensor::new(s.shape.clone(), data)
                .map_err(|e| RunError::Internal(format!("output {}: {e}", s.name)))?;
            result.insert(s.name.clone(), t);
        }
        Ok(result)
    }
}

// ---- the parallel-for runtime shared by the native backends ----------------------------

use std::sync::OnceLock;

/// A parallel loop's outlined body: runs iterations `begin..end` with the loop's context.
pub type WorkerFn = unsafe extern "C" fn(ctx: *mut u8, begin: i64, end: i64);

/// Number of threads [`tttc_parallel_for`] splits a loop over: `TTTC_NUM_THREADS` if set to a
/// positive integer, else [`std::thread::available_parallelism`] (read once per process).
pub fn thread_count() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("TTTC_NUM_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// A pointer that may cross threads (the worker's context; workers only read it).
#[derive(Clone, Copy)]
struct SendPtr(*mut u8);

// SAFETY: the context is only read by the workers, and it outlives them (the pool's scope).
unsafe impl Send for SendPtr {}
// SAFETY: as above; sharing the pointer value itself is harmless.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    fn get(self) -> *mut u8 {
        self.0
    }
}

/// The worker pool of compiled kernels' parallel loops ([`thread_count`] threads, started on
/// first use and kept for the process, so a loop costs a hand-off, not a thread start).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(thread_count())
            .thread_name(|i| format!("tttc-worker-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// The parallel-for runtime of compiled kernels: runs `worker(ctx, begin, end)` over contiguous
/// chunks covering `0..n`, one chunk per thread (at most [`thread_count`] threads of a
/// persistent pool), and returns when all chunks are done. Nothing happens for `n <= 0` or a
/// null worker. If the pool cannot be started the whole range runs on the calling thread.
///
/// Kernels compiled by either JIT get this function mapped to the symbol `tttc_parallel_for`; an
/// object file from the LLVM backend's `emit_object` expects the program it is linked into to
/// define that symbol with this C signature:
///
/// ```c
/// void tttc_parallel_for(void (*worker)(void *ctx, int64_t begin, int64_t end),
///                        void *ctx, int64_t n);
/// ```
///
/// # Safety
///
/// `worker` must be safe to call concurrently from several threads with `ctx` and disjoint
/// ranges within `0..n` (compiled kernels' workers are).
pub unsafe extern "C" fn tttc_parallel_for(worker: Option<WorkerFn>, ctx: *mut u8, n: i64) {
    let Some(worker) = worker else { return };
    if n <= 0 {
        return;
    }
    let threads = thread_count()
        .min(usize::try_from(n).unwrap_or(usize::MAX))
        .max(1);
    let pool = match pool() {
        Some(p) if threads > 1 => p,
        _ => {
            // SAFETY: the caller's contract.
            unsafe { worker(ctx, 0, n) };
            return;
        }
    };
    let t = threads as i128;
    let bound = |k: i128| (i128::from(n) * k / t) as i64;
    let ctx = SendPtr(ctx);
    pool.scope(|s| {
        for k in 1..t {
            let (begin, end) = (bound(k), bound(k + 1));
            s.spawn(move |_| {
                // SAFETY: the caller's contract; `ctx` outlives the scope.
                unsafe { worker(ctx.get(), begin, end) }
            });
        }
        // SAFETY: as above.
        unsafe { worker(ctx.get(), 0, bound(1)) };
    });
}
