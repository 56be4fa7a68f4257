//! The C API of a session library (the `tttc_rt_*` functions; the library's generated C shim
//! wraps them as the `tttc_session_*` functions its header documents). Every function checks
//! its pointers, returns an error code with a message for the calling thread
//! ([`tttc_rt_last_error`]) and never unwinds into C: a panic is caught and reported as
//! [`TTTC_ERR_INTERNAL`].

use crate::execute::{register, Backend, EntryFn, ExecError};
use crate::manifest::{Manifest, TensorSig};
use crate::stream::{Session, StreamError};
use crate::Precision;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use tttc_runtime::{ElemType, Elements, SharedBytes, Tensor, TensorData};

/// Success.
pub const TTTC_OK: i32 = 0;
/// A NULL pointer, a count of tokens below 1, or a library that cannot start.
pub const TTTC_ERR_ARGUMENT: i32 = 1;
/// A buffer whose length does not match its tensor's shape, or a token id out of range.
pub const TTTC_ERR_SHAPE: i32 = 2;
/// A weights file or buffer that does not fit the model: a missing tensor or a wrong shape.
pub const TTTC_ERR_WEIGHTS: i32 = 3;
/// A session state that does not belong to this model (another program or other shapes).
pub const TTTC_ERR_STATE: i32 = 4;
/// A file that cannot be read or written.
pub const TTTC_ERR_IO: i32 = 5;
/// A bug in tttc (reported, never an abort).
pub const TTTC_ERR_INTERNAL: i32 = 6;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

struct Failure(i32, String);

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure(code, message.into())
}

/// Records the outcome for [`tttc_rt_last_error`] and returns its code.
fn report(result: std::thread::Result<Result<(), Failure>>) -> i32 {
    let (code, message) = match result {
        Ok(Ok(())) => (TTTC_OK, String::new()),
        Ok(Err(Failure(code, message))) => (code, message),
        Err(_) => (
            TTTC_ERR_INTERNAL,
            "internal error: tttc panicked".to_string(),
        ),
    };
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
    code
}

fn stream_failure(e: StreamError) -> Failure {
    let code = match &e {
        StreamError::Input(_) | StreamError::Bind(_) => TTTC_ERR_SHAPE,
        StreamError::State { .. } => TTTC_ERR_STATE,
        StreamError::Io(_) => TTTC_ERR_IO,
        StreamError::Exec(ExecError::NoPiece(_)) => TTTC_ERR_SHAPE,
        _ => TTTC_ERR_INTERNAL,
    };
    fail(code, e.to_string())
}

/// The library's manifest, decoded (and its pieces registered) on first use.
static MANIFEST: OnceLock<Result<Manifest, String>> = OnceLock::new();

/// # Safety
///
/// `blob` must hold `blob_len` bytes and `entries` `n_entries` entries, for the whole run.
unsafe fn manifest(
    blob: *const u8,
    blob_len: usize,
    entries: *const EntryFn,
    n_entries: usize,
) -> Result<&'static Manifest, Failure> {
    let m = MANIFEST.get_or_init(|| {
        if blob.is_null() || entries.is_null() {
            return Err("the library's manifest is missing".into());
        }
        // SAFETY: the caller's contract (the generated shim passes its own static arrays).
        let bytes = unsafe { std::slice::from_raw_parts(blob, blob_len) };
        let entries = unsafe { std::slice::from_raw_parts(entries, n_entries) };
        let m = Manifest::from_bytes(bytes)?;
        if m.pieces.len() != entries.len() {
            return Err("the library's entry table does not match its manifest".into());
        }
        register(&m.pieces, entries, elem(&m));
        Ok(m)
    });
    m.as_ref()
        .map_err(|e| fail(TTTC_ERR_INTERNAL, format!("a broken library: {e}")))
}

fn elem(m: &Manifest) -> ElemType {
    if m.f64 {
        ElemType::F64
    } else {
        ElemType::F32
    }
}

/// A session of the library's model (opaque to C).
pub struct SessionHandle {
    inner: Mutex<Inner>,
}

struct Inner {
    session: Session,
    manifest: &'static Manifest,
    /// Rows fed side by side: one of the manifest's batch sizes.
    batch: usize,
    /// Whether a state was loaded (the batch is fixed from then on).
    loaded: bool,
}

fn path_arg(path: *const c_char, what: &str) -> Result<PathBuf, Failure> {
    if path.is_null() {
        return Err(fail(TTTC_ERR_ARGUMENT, format!("the {what} path is NULL")));
    }
    // SAFETY: a NUL-terminated string (the C API's contract).
    let s = unsafe { CStr::from_ptr(path) };
    let s = s
        .to_str()
        .map_err(|_| fail(TTTC_ERR_ARGUMENT, format!("the {what} path is not UTF-8")))?;
    Ok(PathBuf::from(s))
}

/// Checks `weights` against the manifest and starts a session.
fn start(
    m: &'static Manifest,
    mut weights: BTreeMap<String, Tensor>,
    source: &str,
) -> Result<*mut SessionHandle, Failure> {
    let mut chosen = BTreeMap::new();
    for (name, shape) in &m.weights {
        let t = weights.remove(name).ok_or_else(|| {
            fail(
                TTTC_ERR_WEIGHTS,
                format!("{source}: the weight `{name}` is missing"),
            )
        })?;
        if t.shape() != shape.as_slice() {
            return Err(fail(
                TTTC_ERR_WEIGHTS,
                format!(
                    "{source}: the weight `{name}` has shape {:?}, this library was compiled for {shape:?}",
                    t.shape()
                ),
            ));
        }
        chosen.insert(name.clone(), t);
    }
    let precision = if m.f64 {
        Precision::F64
    } else {
        Precision::F32
    };
    let mut session = Session::new(
        Backend::Aot,
        m.program.clone(),
        chosen,
        m.settings.clone(),
        precision,
    )
    .map_err(stream_failure)?;
    session.set_final_outputs(false);
    Ok(Box::into_raw(Box::new(SessionHandle {
        inner: Mutex::new(Inner {
            session,
            manifest: m,
            batch: m.batch_sizes.first().copied().unwrap_or(1),
            loaded: false,
        }),
    })))
}

/// Runs a session constructor: catches a panic, records the outcome for
/// [`tttc_rt_last_error`], writes its code to `*error` (when `error` is not NULL) and returns
/// the session, or NULL on failure.
fn construct(
    error: *mut i32,
    make: impl FnOnce() -> Result<*mut SessionHandle, Failure>,
) -> *mut SessionHandle {
    let mut handle = std::ptr::null_mut();
    let code = report(catch_unwind(AssertUnwindSafe(|| {
        handle = make()?;
        Ok(())
    })));
    if !error.is_null() {
        // SAFETY: the caller's pointer to one int.
        unsafe { *error = code };
    }
    handle
}

/// Creates a session from a safetensors weights file (memory-mapped, read in place). Returns
/// NULL on failure with the code in `*error` (when `error` is not NULL).
///
/// # Safety
///
/// `blob`/`entries` as the generated shim passes them; `weights_path` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_session_new(
    blob: *const u8,
    blob_len: usize,
    entries: *const EntryFn,
    n_entries: usize,
    weights_path: *const c_char,
    error: *mut i32,
) -> *mut SessionHandle {
    construct(error, || {
        // SAFETY: the caller's contract.
        let m = unsafe { manifest(blob, blob_len, entries, n_entries) }?;
        let path = path_arg(weights_path, "weights")?;
        // Integer tensors (token ids saved beside the weights) are not weights: left out.
        let weights = tttc_runtime::read_safetensors_with_ints(&path)
            .map_err(|e| fail(TTTC_ERR_IO, format!("{}: {e}", path.display())))?
            .floats;
        start(m, weights, &path.display().to_string())
    })
}

/// Creates a session from caller-owned weight buffers, one per weight in the header's order,
/// each with its element count. With `borrow == 0` the elements are copied (the buffers may be
/// freed after the call); otherwise they are read in place (zero-copy: the buffers must stay
/// valid and unchanged until [`tttc_rt_session_free`]), except a buffer not aligned for the
/// library's element type, which is copied. The shim's `tttc_session_new_from_buffers` and
/// `tttc_session_new_borrowing_buffers` are this with 0 and 1.
///
/// # Safety
///
/// `blob`/`entries` as the generated shim passes them; `weights` and `lens` hold one entry per
/// weight, each buffer at least its length long and, when borrowed, alive and unchanged as
/// long as the session.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tttc_rt_session_new_from_buffers(
    blob: *const u8,
    blob_len: usize,
    entries: *const EntryFn,
    n_entries: usize,
    weights: *const *const u8,
    lens: *const i64,
    borrow: i32,
    error: *mut i32,
) -> *mut SessionHandle {
    construct(error, || {
        // SAFETY: the caller's contract.
        let m = unsafe { manifest(blob, blob_len, entries, n_entries) }?;
        if weights.is_null() || lens.is_null() {
            return Err(fail(TTTC_ERR_ARGUMENT, "the weights or lens array is NULL"));
        }
        let mut map = BTreeMap::new();
        for (i, (name, shape)) in m.weights.iter().enumerate() {
            // SAFETY: one entry per weight (the caller's contract).
            let (p, len) = unsafe { (*weights.add(i), *lens.add(i)) };
            let want: usize = shape.iter().product();
            if p.is_null() {
                return Err(fail(
                    TTTC_ERR_ARGUMENT,
                    format!("the weight `{name}` is NULL"),
                ));
            }
            if len != want as i64 {
                return Err(fail(
                    TTTC_ERR_WEIGHTS,
                    format!("the weight `{name}` holds {len} elements, its shape {shape:?} needs {want}"),
                ));
            }
            // SAFETY: `len` elements of the library's type at `p` (the caller's contract), and
            // when borrowed they outlive the session unchanged.
            let t = unsafe { tensor_from(p, shape.clone(), elem(m), borrow != 0) };
            map.insert(name.clone(), t);
        }
        start(m, map, "weight buffers")
    })
}

/// A caller's buffer that a borrowing session reads in place: its bytes stay valid and
/// unchanged as long as the session (the contract of [`tttc_rt_session_new_from_buffers`]
/// with `borrow`).
struct CallerBuffer {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes are only read, and the caller keeps them valid and unchanged while any
// session (on any thread) holds them.
unsafe impl Send for CallerBuffer {}
// SAFETY: as above.
unsafe impl Sync for CallerBuffer {}

impl AsRef<[u8]> for CallerBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `ptr` (the constructor's contract).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A tensor of the elements at `p` (its shape's number of elements of type `elem`): with
/// `borrow`, a view of them when `p` is aligned for `elem`; else a copy.
///
/// # Safety
///
/// `p` must hold that many elements; with `borrow`, valid and unchanged as long as the tensor
/// and its clones live.
unsafe fn tensor_from(p: *const u8, shape: Vec<usize>, elem: ElemType, borrow: bool) -> Tensor {
    let n: usize = shape.iter().product();
    let size = elem.size_bytes();
    if borrow {
        let bytes: SharedBytes = Arc::new(CallerBuffer {
            ptr: p,
            len: n * size,
        });
        // `None` when `p` is not aligned for the element type: copied below.
        let view = match elem {
            ElemType::F32 => Elements::mapped(&bytes, 0..n * size).map(TensorData::F32),
            ElemType::F64 => Elements::mapped(&bytes, 0..n * size).map(TensorData::F64),
        };
        if let Some(data) = view {
            return Tensor::new(shape, data).unwrap_or_else(|_| Tensor::zeros(vec![0], elem));
        }
    }
    let data = match elem {
        // SAFETY: the caller's contract; read unaligned-safe by copying element by element.
        ElemType::F32 => TensorData::F32(
            (0..n)
                .map(|i| unsafe { p.cast::<f32>().add(i).read_unaligned() })
                .collect(),
        ),
        ElemType::F64 => TensorData::F64(
            (0..n)
                .map(|i| unsafe { p.cast::<f64>().add(i).read_unaligned() })
                .collect(),
        ),
    };
    Tensor::new(shape, data).unwrap_or_else(|_| Tensor::zeros(vec![0], elem))
}

fn lock(s: *mut SessionHandle) -> Result<std::sync::MutexGuard<'static, Inner>, Failure> {
    if s.is_null() {
        return Err(fail(TTTC_ERR_ARGUMENT, "the session is NULL"));
    }
    // SAFETY: a handle made by `start` and not yet freed (the C API's contract).
    let h: &'static SessionHandle = unsafe { &*s };
    h.inner.lock().map_err(|_| {
        fail(
            TTTC_ERR_INTERNAL,
            "the session was poisoned by an earlier panic",
        )
    })
}

/// Element `t..t+len` rows along `sig`'s axis of a buffer holding `n` tokens, copied into a
/// tensor (or, with `into`, copied back from one).
struct Rows<'a> {
    sig: &'a TensorSig,
    batch: usize,
    n: usize,
}

impl Rows<'_> {
    fn outer_inner(&self) -> (usize, usize) {
        let shape = self.sig.shape_for(self.batch, 1);
        let outer = shape[..self.sig.axis].iter().product();
        let inner = shape[self.sig.axis + 1..].iter().product();
        (outer, inner)
    }

    /// # Safety
    ///
    /// `p` holds the tensor for `n` tokens.
    unsafe fn read(&self, p: *const u8, t: usize, len: usize, elem: ElemType) -> Tensor {
        let (outer, inner) = self.outer_inner();
        let mut index = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let base = o * self.n * inner + t * inner;
            index.extend(base..base + len * inner);
        }
        let data = match elem {
            // SAFETY: every index is below outer * n * inner.
            ElemType::F32 => TensorData::F32(
                index
                    .iter()
                    .map(|&i| unsafe { p.cast::<f32>().add(i).read_unaligned() })
                    .collect(),
            ),
            ElemType::F64 => TensorData::F64(
                index
                    .iter()
                    .map(|&i| unsafe { p.cast::<f64>().add(i).read_unaligned() })
                    .collect(),
            ),
        };
        Tensor::new(self.sig.shape_for(self.batch, len), data)
            .unwrap_or_else(|_| Tensor::zeros(vec![0], elem))
    }

    /// # Safety
    ///
    /// `p` holds the tensor for `n` tokens; `v` holds `len` tokens.
    unsafe fn write(&self, p: *mut u8, t: usize, v: &Tensor) -> Result<(), Failure> {
        let (outer, inner) = self.outer_inner();
        let len = v.shape().get(self.sig.axis).copied().unwrap_or(0);
        if v.shape() != self.sig.shape_for(self.batch, len).as_slice() {
            return Err(fail(
                TTTC_ERR_INTERNAL,
                format!("output `{}` has shape {:?}", self.sig.name, v.shape()),
            ));
        }
        for o in 0..outer {
            let dst = o * self.n * inner + t * inner;
            let src = o * len * inner;
            let count = len * inner;
            // SAFETY: dst + count <= outer * n * inner; the source is `v`'s own storage.
            unsafe {
                match v.data() {
                    TensorData::F32(d) => std::ptr::copy_nonoverlapping(
                        d[src..src + count].as_ptr(),
                        p.cast::<f32>().add(dst),
                        count,
                    ),
                    TensorData::F64(d) => std::ptr::copy_nonoverlapping(
                        d[src..src + count].as_ptr(),
                        p.cast::<f64>().add(dst),
                        count,
                    ),
                }
            }
        }
        Ok(())
    }
}

/// Checks one pointer array of the C API against its tensors for `n` tokens of `batch` rows.
///
/// # Safety
///
/// `ptrs` and `lens` hold one entry per tensor (the C API's contract), or are NULL.
unsafe fn check_buffers<T>(
    what: &str,
    sigs: &[TensorSig],
    ptrs: *const *mut T,
    lens: *const i64,
    batch: usize,
    n: usize,
) -> Result<Vec<*mut T>, Failure> {
    if ptrs.is_null() || lens.is_null() {
        return Err(fail(TTTC_ERR_ARGUMENT, format!("the {what} array is NULL")));
    }
    let mut out = Vec::with_capacity(sigs.len());
    for (i, sig) in sigs.iter().enumerate() {
        // SAFETY: one entry per tensor.
        let (p, len) = unsafe { (*ptrs.add(i), *lens.add(i)) };
        if p.is_null() {
            return Err(fail(
                TTTC_ERR_ARGUMENT,
                format!("the {what} `{}` is NULL", sig.name),
            ));
        }
        let shape = sig.shape_for(batch, n);
        let want: usize = shape.iter().product();
        if len != want as i64 {
            return Err(fail(
                TTTC_ERR_SHAPE,
                format!(
                    "the {what} `{}` holds {len} elements; for {n} token(s) at batch {batch} its shape is {shape:?}, {want} elements",
                    sig.name
                ),
            ));
        }
        out.push(p);
    }
    Ok(out)
}

/// Feeds `n_tokens` tokens: runs them as whole mini-batches (from a mini-batch boundary) and
/// single tokens, and writes every per-token output for them.
///
/// # Safety
///
/// `s` from `tttc_rt_session_new*`; `inputs`/`input_lens` one entry per per-token input,
/// `outputs`/`output_lens` one per per-token output, each buffer at least its length long.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_session_feed(
    s: *mut SessionHandle,
    n_tokens: i64,
    inputs: *const *const u8,
    input_lens: *const i64,
    outputs: *const *mut u8,
    output_lens: *const i64,
) -> i32 {
    report(catch_unwind(AssertUnwindSafe(|| {
        let mut inner = lock(s)?;
        let m = inner.manifest;
        if n_tokens < 1 {
            return Err(fail(
                TTTC_ERR_ARGUMENT,
                format!("a chunk needs at least one token, got {n_tokens}"),
            ));
        }
        let n = n_tokens as usize;
        let batch = inner.batch;
        // SAFETY: the caller's contract.
        let ins = unsafe {
            check_buffers(
                "input",
                &m.token_inputs,
                inputs.cast::<*mut u8>(),
                input_lens,
                batch,
                n,
            )
        }?;
        let outs = unsafe { check_buffers("output", &m.outputs, outputs, output_lens, batch, n) }?;
        let k = m.mini_batch.max(1);
        let el = elem(m);
        // Every value is checked before any token is fed (ids in their declared range), so a
        // refused chunk leaves the session as it was.
        let mut whole = BTreeMap::new();
        for (sig, &p) in m.token_inputs.iter().zip(&ins) {
            // SAFETY: checked above: `p` holds `n` tokens.
            whole.insert(sig.name.clone(), unsafe {
                Rows { sig, batch, n }.read(p, 0, n, el)
            });
        }
        let mut dims = m.program.int_configs();
        for (name, v) in &m.settings {
            if let Some(v) = v.number() {
                dims.entry(name.clone()).or_insert(v as usize);
            }
        }
        crate::bind::check_values(&m.program, &m.program, &whole, &dims)
            .map_err(|e| fail(TTTC_ERR_SHAPE, e.to_string()))?;
        let mut t = 0;
        while t < n {
            let position = inner.session.position();
            let len = if position % k == 0 && n - t >= k {
                k
            } else {
                1
            };
            let mut chunk = BTreeMap::new();
            for (sig, &p) in m.token_inputs.iter().zip(&ins) {
                let rows = Rows { sig, batch, n };
                // SAFETY: checked above: `p` holds `n` tokens.
                chunk.insert(sig.name.clone(), unsafe { rows.read(p, t, len, el) });
            }
            let out = inner.session.feed(&chunk).map_err(stream_failure)?;
            for (sig, &p) in m.outputs.iter().zip(&outs) {
                let v = out
                    .get(&sig.name)
                    .ok_or_else(|| fail(TTTC_ERR_INTERNAL, format!("no output `{}`", sig.name)))?;
                let rows = Rows { sig, batch, n };
                // SAFETY: checked above: `p` holds `n` tokens.
                unsafe { rows.write(p, t, v) }?;
            }
            t += len;
        }
        Ok(())
    })))
}

/// Tokens fed so far (or -1 for a NULL session).
///
/// # Safety
///
/// `s` from `tttc_rt_session_new*`.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_session_position(s: *mut SessionHandle) -> i64 {
    match lock(s) {
        Ok(inner) => inner.session.position() as i64,
        Err(_) => -1,
    }
}

/// Sets the session's batch to one of the library's batch sizes: only before the first token
/// and before a state is loaded.
///
/// # Safety
///
/// `s` from `tttc_rt_session_new*`.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_session_set_batch(s: *mut SessionHandle, batch: i64) -> i32 {
    report(catch_unwind(AssertUnwindSafe(|| {
        let mut inner = lock(s)?;
        let sizes = &inner.manifest.batch_sizes;
        if batch < 1 || !sizes.contains(&(batch as usize)) {
            let list: Vec<String> = sizes.iter().map(|b| b.to_string()).collect();
            return Err(fail(
                TTTC_ERR_SHAPE,
                format!(
                    "batch {batch}: this library was compiled for batch {} (tttc compile --session --batch ...)",
                    list.join(", ")
                ),
            ));
        }
        if inner.session.position() > 0 || inner.loaded {
            return Err(fail(
                TTTC_ERR_ARGUMENT,
                format!(
                    "the batch is set before the first token and before a state is loaded (this session is at token {}{})",
                    inner.session.position(),
                    if inner.loaded { ", with a loaded state" } else { "" }
                ),
            ));
        }
        inner.batch = batch as usize;
        Ok(())
    })))
}

/// The session's batch (or -1 for a NULL session).
///
/// # Safety
///
/// `s` from `tttc_rt_session_new*`.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_session_batch(s: *mut SessionHandle) -> i64 {
    match lock(s) {
        Ok(inner) => inner.batch as i64,
        Err(_) => -1,
    }
}

/// Saves the session's state to `path` (the file `tttc run --save-state` writes).
///
/// # Safety
///
/// `s` from `tttc_rt_session_new*`; `path` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_session_save(s: *mut SessionHandle, path: *const c_char) -> i32 {
    report(catch_unwind(AssertUnwindSafe(|| {
        let inner = lock(s)?;
        let path = path_arg(path, "state")?;
        inner.session.save(&path).map_err(stream_failure)
    })))
}

/// Continues from the state in `path` (written by `tttc_rt_session_save` or `tttc run
/// --save-state` for the same program and shapes).
///
/// # Safety
///
/// `s` from `tttc_rt_session_new*`; `path` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_session_load(s: *mut SessionHandle, path: *const c_char) -> i32 {
    report(catch_unwind(AssertUnwindSafe(|| {
        let mut inner = lock(s)?;
        let path = path_arg(path, "state")?;
        inner.session.load(&path).map_err(stream_failure)?;
        inner.loaded = true;
        Ok(())
    })))
}

/// Frees a session (NULL is allowed).
///
/// # Safety
///
/// `s` from `tttc_rt_session_new*`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_session_free(s: *mut SessionHandle) {
    if !s.is_null() {
        // SAFETY: made by `Box::into_raw` in `start`.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(s) })));
    }
}

/// The message of the calling thread's last call ("" after a success); valid until its next
/// call.
#[no_mangle]
pub extern "C" fn tttc_rt_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The worker pool the pieces' parallel loops call (`tttc_parallel_for`, as in the JIT).
///
/// # Safety
///
/// `worker` must be safe to call with `ctx` on disjoint ranges of `0..n` from several threads.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_parallel_for(
    worker: Option<crate::native::parallel::WorkerFn>,
    ctx: *mut u8,
    n: i64,
) {
    // SAFETY: the caller's contract.
    unsafe { crate::native::parallel::tttc_parallel_for(worker, ctx, n) }
}

/// The matrix library the pieces' matrix products call (`tttc_gemm_f32`, as in the JIT).
///
/// # Safety
///
/// As `tttc_gemm_f32`: a descriptor made by the code generator for these operands.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_gemm_f32(
    desc: *const i64,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
) {
    // SAFETY: the caller's contract.
    unsafe { crate::native::gemm::tttc_gemm_f32(desc, a, b, c) }
}

/// `tttc_gemm_f64`, as [`tttc_rt_gemm_f32`].
///
/// # Safety
///
/// As `tttc_gemm_f64`.
#[no_mangle]
pub unsafe extern "C" fn tttc_rt_gemm_f64(
    desc: *const i64,
    a: *const f64,
    b: *const f64,
    c: *mut f64,
) {
    // SAFETY: the caller's contract.
    unsafe { crate::native::gemm::tttc_gemm_f64(desc, a, b, c) }
}
