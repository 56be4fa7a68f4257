//! The compile cache on disk: native code for a kernel program and optimized programs, kept
//! between runs so that the second run of the same model skips code generation and the graph
//! stages (see `docs/cache.md`).
//!
//! An entry is keyed by a SHA-256 over everything that determines its machine code: the kernel
//! program (an exact binary encoding: it holds the bound shapes, the element type, every
//! constant), the backend, the host as the code generator sees it
//! ([`tttc_backends::llvm::host_fingerprint`]: triple, CPU, features, LLVM version, runtime
//! symbols), whether the code poisons fresh memory ([`tttc_backends::poison`]) and this tttc
//! ([`FORMAT_VERSION`] and the crate version). Nothing else can change
//! the code, so an entry is never stale: a different config value, shape, program text,
//! backend or precision gives a different kernel program or backend, hence a different key.
//!
//! A second kind of entry skips the graph stages (the dual form's equality saturation is the
//! slowest part of a start once the code is cached): the optimized program, keyed by the
//! lowered program (source, imports and settings folded in), `<dir>/graph-<key>.obj`. Every key
//! also covers the running executable ([`build_id`]), so a rebuilt tttc never reads entries a
//! different build wrote.
//!
//! Each entry is one file `<dir>/KIND-<key>.obj` (`llvm` or `graph`): a header (magic, key, SHA-256 and length of
//! the payload) and the relocatable object. A file whose header or checksum does not match is
//! reported (a warning) and recompiled over. Files are written to a temporary file in the same
//! directory and renamed into place, so a reader sees a whole entry or none, and concurrent runs
//! are safe (the last rename wins; both wrote the same bytes).
//!
//! The cache is off in the library until [`enable`] is called (the CLI does, unless
//! `--no-cache`), so library users and tests never touch the user's folders by accident.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use tttc_ir::kernel::KernelProgram;
use tttc_ir::Program;

/// Changes whenever the compiler's output for a kernel program may change without the program
/// changing (a code generator change, the entry format): entries of another version are never
/// looked at (their keys differ).
pub const FORMAT_VERSION: u32 = 2;

/// First bytes of every entry file.
const MAGIC: &[u8; 8] = b"TTTCOBJ1";

/// Why the cache could not be used (user errors: the directory is the user's to fix).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache directory cannot be created or written.
    #[error(
        "cannot write to the compile cache directory {path}: {source} \
         (set TTTC_CACHE_DIR to a writable directory, or pass --no-cache)"
    )]
    Unwritable {
        /// The directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No cache directory can be derived (no `TTTC_CACHE_DIR`, `XDG_CACHE_HOME` or `HOME`).
    #[error(
        "no compile cache directory: set TTTC_CACHE_DIR (or XDG_CACHE_HOME or HOME), or pass \
         --no-cache"
    )]
    NoDirectory,
    /// The kernel program cannot be encoded for its key (a bug).
    #[error("internal error: cannot encode the kernel program for the cache key: {0}")]
    Encode(String),
}

impl CacheError {
    /// Whether the user can fix it (exit code 2).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, CacheError::Encode(_))
    }
}

/// The directory the cache uses when enabled: `TTTC_CACHE_DIR`, else `$XDG_CACHE_HOME/tttc`,
/// else `$HOME/.cache/tttc` (empty variables count as unset).
pub fn default_dir() -> Result<PathBuf, CacheError> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("TTTC_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(xdg).join("tttc"));
    }
    if let Some(home) = var("HOME") {
        return Ok(PathBuf::from(home).join(".cache").join("tttc"));
    }
    Err(CacheError::NoDirectory)
}

static DIRECTORY: RwLock<Option<PathBuf>> = RwLock::new(None);
static LOADED: AtomicUsize = AtomicUsize::new(0);
static STORED: AtomicUsize = AtomicUsize::new(0);
static PROGRAMS_LOADED: AtomicUsize = AtomicUsize::new(0);
static PROGRAMS_STORED: AtomicUsize = AtomicUsize::new(0);
static REJECTED: AtomicUsize = AtomicUsize::new(0);
static KERNELS_LOADED: AtomicUsize = AtomicUsize::new(0);
static KERNELS_STORED: AtomicUsize = AtomicUsize::new(0);

/// Turns the cache on for this process, in `dir` (created when the first entry is stored).
pub fn enable(dir: PathBuf) {
    *DIRECTORY.write().unwrap_or_else(|e| e.into_inner()) = Some(dir);
}

/// Turns the cache off for this process (the default).
pub fn disable() {
    *DIRECTORY.write().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The cache directory when the cache is on.
pub fn directory() -> Option<PathBuf> {
    DIRECTORY.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// What the cache did in this process so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Machine code entries found and loaded (code generation skipped).
    pub loaded: usize,
    /// Machine code entries compiled and stored.
    pub stored: usize,
    /// Optimized programs found and loaded (the graph stages skipped).
    pub programs_loaded: usize,
    /// Optimized programs computed and stored.
    pub programs_stored: usize,
    /// Kernel programs found and loaded (the kernel stages skipped).
    pub kernels_loaded: usize,
    /// Kernel programs computed and stored.
    pub kernels_stored: usize,
    /// Entries of any kind found damaged (ignored, computed and stored again).
    pub rejected: usize,
}

/// What the cache did in this process so far.
pub fn stats() -> Stats {
    Stats {
        loaded: LOADED.load(Ordering::Relaxed),
        stored: STORED.load(Ordering::Relaxed),
        programs_loaded: PROGRAMS_LOADED.load(Ordering::Relaxed),
        programs_stored: PROGRAMS_STORED.load(Ordering::Relaxed),
        kernels_loaded: KERNELS_LOADED.load(Ordering::Relaxed),
        kernels_stored: KERNELS_STORED.load(Ordering::Relaxed),
        rejected: REJECTED.load(Ordering::Relaxed),
    }
}

/// The key of `program`'s code from `backend` on a host with `fingerprint`: 64 hex digits.
/// Whether the code poisons fresh memory ([`tttc_backends::poison`]) is part of it.
pub fn key(
    backend: &str,
    fingerprint: &str,
    program: &KernelProgram,
) -> Result<String, CacheError> {
    let poison = tttc_backends::poison::poison_enabled();
    key_of(backend, &format!("{fingerprint}\npoison={poison}"), program)
}

/// The key of the optimized program (every graph stage run) of the lowered program `lowered`:
/// 64 hex digits. The lowered program holds everything the graph stages read (the source and
/// its imports, the settings folded in, the precision).
pub fn program_key(lowered: &Program) -> Result<String, CacheError> {
    key_of("graph", "", lowered)
}

/// SHA-256 over this tttc's identity, `kind`, `fingerprint` and the CBOR encoding of `value`.
fn key_of<T: serde::Serialize>(
    kind: &str,
    fingerprint: &str,
    value: &T,
) -> Result<String, CacheError> {
    let mut encoded = Vec::new();
    ciborium::into_writer(value, &mut encoded).map_err(|e| CacheError::Encode(e.to_string()))?;
    let mut h = Sha256::new();
    let build = build_id();
    h.update(
        format!(
            "tttc compile cache\nformat={FORMAT_VERSION}\ntttc={}\nkind={kind}\n",
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    );
    for part in [build.as_bytes(), fingerprint.as_bytes(), &encoded] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Ok(hex(&h.finalize()))
}

/// The running executable's path, size and modification time: a rebuilt or replaced `tttc`
/// (a changed pass or code generator, even at the same version) never reads an older build's
/// entries. Empty when the executable cannot be found (then the versions alone separate).
pub fn build_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let Ok(exe) = std::env::current_exe() else {
            return String::new();
        };
        let Ok(meta) = std::fs::metadata(&exe) else {
            return String::new();
        };
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("{}|{}|{mtime}", exe.display(), meta.len())
    })
    .clone()
}

/// The key of the kernel program of the bound (fully specialized), optimized program `bound`
/// for CPU targets: 64 hex digits. The kernel stages are a function of the bound program, the
/// settings they read from the environment
/// ([`tttc_passes::pipeline::kernel_stage_settings`]) and this tttc.
pub fn kernel_key(bound: &Program) -> Result<String, CacheError> {
    key_of(
        "kernel",
        &tttc_passes::pipeline::kernel_stage_settings(),
        bound,
    )
}

/// The kernel program stored as entry `key` at `path`, when there is a usable one (a damaged
/// one is reported, as by [`load`]).
pub fn load_kernel(path: &Path, key: &str) -> Option<KernelProgram> {
    let payload = load(path, key)?;
    match ciborium::from_reader::<KernelProgram, _>(payload.as_slice()) {
        Ok(k) => {
            KERNELS_LOADED.fetch_add(1, Ordering::Relaxed);
            Some(k)
        }
        Err(e) => {
            reject(path, &format!("cannot decode the kernel program: {e}"));
            None
        }
    }
}

/// Stores the kernel program `kernel` as entry `key` at `path` ([`store`]).
pub fn store_kernel(path: &Path, key: &str, kernel: &KernelProgram) -> Result<(), CacheError> {
    let mut encoded = Vec::new();
    ciborium::into_writer(kernel, &mut encoded).map_err(|e| CacheError::Encode(e.to_string()))?;
    write_entry(path, key, &encoded)?;
    KERNELS_STORED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The optimized program stored as entry `key` at `path`, when there is a usable one (a damaged
/// one is reported, as by [`load`]).
pub fn load_program(path: &Path, key: &str) -> Option<Program> {
    let payload = load(path, key)?;
    match ciborium::from_reader::<Program, _>(payload.as_slice()) {
        Ok(p) => {
            PROGRAMS_LOADED.fetch_add(1, Ordering::Relaxed);
            Some(p)
        }
        Err(e) => {
            reject(path, &format!("cannot decode the program: {e}"));
            None
        }
    }
}

/// Stores the optimized `program` as entry `key` at `path` ([`store`]).
pub fn store_program(path: &Path, key: &str, program: &Program) -> Result<(), CacheError> {
    let mut encoded = Vec::new();
    ciborium::into_writer(program, &mut encoded).map_err(|e| CacheError::Encode(e.to_string()))?;
    write_entry(path, key, &encoded)?;
    PROGRAMS_STORED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file of entry `key` from `backend` in `dir`.
pub fn entry_path(dir: &Path, backend: &str, key: &str) -> PathBuf {
    dir.join(format!("{backend}-{key}.obj"))
}

/// The payload of the entry at `path` for `key`: `None` when there is none; a warning (and
/// `None`) when the file is damaged — truncated, another key's, a checksum that does not match.
pub fn load(path: &Path, key: &str) -> Option<Vec<u8>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            reject(path, &e.to_string());
            return None;
        }
    };
    match decode(&bytes, key) {
        Ok(payload) => Some(payload.to_vec()),
        Err(why) => {
            reject(path, why);
            None
        }
    }
}

/// Counts and reports a damaged entry.
pub fn reject(path: &Path, why: &str) {
    REJECTED.fetch_add(1, Ordering::Relaxed);
    eprintln!(
        "warning: ignoring the damaged compile cache entry {} ({why}); compiling again",
        path.display()
    );
}

/// Counts a loaded machine code entry.
pub fn count_loaded() {
    LOADED.fetch_add(1, Ordering::Relaxed);
}

/// The payload of an entry file's bytes, checked against `key`.
fn decode<'a>(bytes: &'a [u8], key: &str) -> Result<&'a [u8], &'static str> {
    let header = MAGIC.len() + key.len() + 32 + 8;
    if bytes.len() < header {
        return Err("truncated header");
    }
    let (magic, rest) = bytes.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err("not a tttc cache entry");
    }
    let (stored_key, rest) = rest.split_at(key.len());
    if stored_key != key.as_bytes() {
        return Err("another entry's key");
    }
    let (sum, rest) = rest.split_at(32);
    let (len, payload) = rest.split_at(8);
    let len = u64::from_le_bytes(len.try_into().map_err(|_| "truncated header")?);
    if payload.len() as u64 != len {
        return Err("truncated");
    }
    if Sha256::digest(payload).as_slice() != sum {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

/// Creates the cache directory `dir` if needed.
pub fn create_dir(dir: &Path) -> Result<(), CacheError> {
    std::fs::create_dir_all(dir).map_err(|source| CacheError::Unwritable {
        path: dir.display().to_string(),
        source,
    })
}

/// Stores the machine code `payload` as entry `key` at `path` atomically (a temporary file in
/// the same directory, renamed into place), creating the directory if needed.
pub fn store(path: &Path, key: &str, payload: &[u8]) -> Result<(), CacheError> {
    write_entry(path, key, payload)?;
    STORED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// [`store`] without counting.
fn write_entry(path: &Path, key: &str, payload: &[u8]) -> Result<(), CacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let unwritable = |source| CacheError::Unwritable {
        path: dir.display().to_string(),
        source,
    };
    create_dir(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(unwritable)?;
    let sum = Sha256::digest(payload);
    let file = tmp.as_file_mut();
    file.write_all(MAGIC)
        .and_then(|()| file.write_all(key.as_bytes()))
        .and_then(|()| file.write_all(&sum))
        .and_then(|()| file.write_all(&(payload.len() as u64).to_le_bytes()))
        .and_then(|()| file.write_all(payload))
        .and_then(|()| file.sync_all())
        .map_err(unwritable)?;
    tmp.persist(path).map_err(|e| unwritable(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let key = "ab".repeat(32);
        let path = entry_path(dir.path(), "llvm", &key);
        assert_eq!(load(&path, &key), None);
        store(&path, &key, b"object bytes").unwrap();
        assert_eq!(load(&path, &key).as_deref(), Some(&b"object bytes"[..]));
        // Another key's entry under this name is not taken.
        assert_eq!(load(&path, &"cd".repeat(32)), None);
        let bytes = std::fs::read(&path).unwrap();
        // Truncated.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(load(&path, &key), None);
        // One payload byte flipped.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(load(&path, &key), None);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn keys_separate_backend_host_and_program() {
        let p = KernelProgram {
            name: "p".into(),
            dtype: tttc_ir::DType::F32,
            buffers: vec![],
            vars: 0,
            functions: Vec::new(),
            memory: None,
            body: vec![],
        };
        let mut q = p.clone();
        q.dtype = tttc_ir::DType::F64;
        let k = key("llvm", "host", &p).unwrap();
        assert_eq!(k.len(), 64);
        assert_eq!(k, key("llvm", "host", &p).unwrap());
        assert_ne!(k, key("cranelift", "host", &p).unwrap());
        assert_ne!(k, key("llvm", "other host", &p).unwrap());
        assert_ne!(k, key("llvm", "host", &q).unwrap());
    }
}
