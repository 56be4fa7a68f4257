//! The parallel-for runtime of compiled kernels, shared by the native backends: a persistent
//! worker pool behind the C-ABI function `tttc_parallel_for` that generated code calls.

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
pub(crate) fn pool() -> Option<&'static rayon::ThreadPool> {
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

/// Whether the calling thread is already a worker of a thread pool (this one, or rayon's global
/// pool that decode's grouped token steps run on): a parallel loop there runs on the calling
/// thread, since every core is busy with a sibling and a nested hand-off only adds waiting
/// (measured: a TTT-MLP decode token took 1.8x longer with nested hand-offs).
pub(crate) fn on_a_worker_thread() -> bool {
    rayon::current_thread_index().is_some() || AS_WORKER.with(std::cell::Cell::get)
}

thread_local! {
    /// Whether the thread runs [`as_worker`]'s closure now.
    static AS_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on the calling thread as a worker of a team that keeps every core busy (decode's
/// grouped token steps): parallel loops of kernels it calls run on the calling thread, as on
/// a pool worker ([`on_a_worker_thread`]).
pub fn as_worker<R>(f: impl FnOnce() -> R) -> R {
    let outer = AS_WORKER.with(|w| w.replace(true));
    let r = f();
    AS_WORKER.with(|w| w.set(outer));
    r
}

/// The parallel-for runtime of compiled kernels: runs `worker(ctx, begin, end)` over contiguous
/// chunks covering `0..n`, one chunk per thread (at most [`thread_count`] threads of a
/// persistent pool), and returns when all chunks are done. Nothing happens for `n <= 0` or a
/// null worker. If the pool cannot be started, or the caller is itself a pool worker
/// ([`on_a_worker_thread`]), the whole range runs on the calling thread.
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
        Some(p) if threads > 1 && !on_a_worker_thread() => p,
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
