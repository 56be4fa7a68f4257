//! Machine code that outlives the process: a kernel program compiled to a relocatable object
//! ([`compile_object`]), and such an object linked into this process and made runnable
//! ([`load_object`]) by LLVM's ORC JIT linker (LLJIT), with every symbol the code references
//! ([`runtime::jit_symbols`]: the parallel-for runtime, the allocator, libm) defined by address.
//!
//! This is what the compile cache (`tttc::cache`) stores and loads: compiling once costs the
//! whole LLVM pipeline, loading the object back costs a link (milliseconds). Whether an object
//! fits this process (same program, same host CPU and features, same LLVM, same runtime) is
//! the caller's to know: [`host_fingerprint`] names everything about this process that the
//! code depends on.

use super::{runtime, split, Host, LlvmError, JIT_ENTRY};
use crate::native::{EntryFn, Jit, JitCode};
use inkwell::llvm_sys::core::LLVMCreateMemoryBufferWithMemoryRangeCopy;
use inkwell::llvm_sys::error::{LLVMDisposeErrorMessage, LLVMErrorRef, LLVMGetErrorMessage};
use inkwell::llvm_sys::orc2::lljit::{
    LLVMOrcCreateLLJIT, LLVMOrcDisposeLLJIT, LLVMOrcLLJITAddObjectFile,
    LLVMOrcLLJITGetMainJITDylib, LLVMOrcLLJITLookup, LLVMOrcLLJITMangleAndIntern, LLVMOrcLLJITRef,
};
use inkwell::llvm_sys::orc2::{
    LLVMJITEvaluatedSymbol, LLVMJITSymbolFlags, LLVMJITSymbolGenericFlags, LLVMOrcAbsoluteSymbols,
    LLVMOrcCSymbolMapPair, LLVMOrcDisposeMaterializationUnit, LLVMOrcExecutorAddress,
    LLVMOrcJITDylibDefine,
};
use inkwell::targets::{CodeModel, RelocMode};
use std::ffi::{CStr, CString};
use std::time::Instant;
use tttc_ir::kernel::KernelProgram;

/// A kernel program compiled to runnable code by loading an object ([`load_object`]): a
/// [`Jit`](crate::Jit) over an ORC JIT that owns the linked code ([`ObjectCode`]).
pub type ObjectJit = Jit<ObjectCode>;

/// What everything about this process that compiled code depends on is, besides the kernel
/// program: the target triple, the host CPU and its features (as the code generator sees them),
/// the LLVM version, the runtime symbols the code may call, and the switches that change code
/// generation (`TTTC_LLVM_SLP`). Two processes with the same fingerprint compile a kernel
/// program to interchangeable objects.
pub fn host_fingerprint() -> Result<String, LlvmError> {
    let host = Host::new(RelocMode::PIC, CodeModel::Default)?;
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    let symbols: Vec<&str> = runtime::jit_symbols()
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    Ok(format!(
        "triple={}\ncpu={}\nfeatures={}\nllvm={major}.{minor}.{patch}\nsymbols={}\nslp={}\nprofile={}\nfull_unroll={:?}\n",
        host.tm.get_triple().as_str().to_string_lossy(),
        host.cpu,
        host.features,
        symbols.join(","),
        std::env::var_os("TTTC_LLVM_SLP").is_some(),
        crate::native::profile::statement_profile_enabled(),
        super::full_unroll_max(),
    ))
}

/// Checks, generates and optimizes `p` as [`super::LlvmJit::compile`] does, and returns
/// position-independent relocatable objects (host format) that together define the JIT entry,
/// as one byte string ([`super::split::encode_objects`]), for [`load_object`] in this or a
/// later process with the same [`host_fingerprint`]. A large module is cut into parts compiled
/// on the host's threads ([`super::split`]; `TTTC_LLVM_PARTS`).
pub fn compile_object(p: &KernelProgram) -> Result<Vec<u8>, LlvmError> {
    let objects = split::compile_objects(p, split::parts(), split::MIN_SPLIT_INSTRUCTIONS)?;
    Ok(split::encode_objects(&objects))
}

/// [`compile_object`] with the module cut into `parts` parts whatever its size (for testing
/// the cut on small programs; `parts` 1 compiles it whole).
pub fn compile_object_in_parts(p: &KernelProgram, parts: usize) -> Result<Vec<u8>, LlvmError> {
    let objects = split::compile_objects(p, parts.max(1), 0)?;
    Ok(split::encode_objects(&objects))
}

/// Links `object` — made by [`compile_object`] from `p` in a process with the same
/// [`host_fingerprint`]: one or more objects — into this process and returns it ready to run.
///
/// # Safety
///
/// `object` must be [`compile_object`]'s output for exactly `p` (the code is run as it is:
/// nothing can check what an object computes); a caller that stores objects must make sure that
/// what it loads is what it stored for `p` (a key over `p` and the fingerprint, a checksum
/// over the bytes).
pub unsafe fn load_object(p: &KernelProgram, object: &[u8]) -> Result<ObjectJit, LlvmError> {
    let start = Instant::now();
    // The native target (and the SLP switch, harmless here) as for compiling.
    Host::new(RelocMode::PIC, CodeModel::Default)?;
    let mut jit: LLVMOrcLLJITRef = std::ptr::null_mut();
    // SAFETY: a null builder asks for the default LLJIT for the host; on success `jit` owns it
    // and `ObjectCode` disposes of it (below, also on every error path).
    check(
        unsafe { LLVMOrcCreateLLJIT(&mut jit, std::ptr::null_mut()) },
        "creating the JIT",
    )?;
    let code = ObjectCode { jit };
    // SAFETY: `jit` is a live LLJIT; its main dylib lives as long as it.
    let dylib = unsafe { LLVMOrcLLJITGetMainJITDylib(jit) };

    // Every runtime symbol by address, as the MCJIT path maps them.
    let symbols = runtime::jit_symbols();
    let mut pairs = Vec::with_capacity(symbols.len());
    for (name, _, addr) in &symbols {
        let cname = CString::new(*name).map_err(|e| LlvmError::Internal(e.to_string()))?;
        pairs.push(LLVMOrcCSymbolMapPair {
            // SAFETY: a live LLJIT and a NUL-terminated name; the returned entry is retained
            // once, and that reference passes to `LLVMOrcAbsoluteSymbols` below.
            Name: unsafe { LLVMOrcLLJITMangleAndIntern(jit, cname.as_ptr()) },
            Sym: LLVMJITEvaluatedSymbol {
                Address: *addr as LLVMOrcExecutorAddress,
                Flags: LLVMJITSymbolFlags {
                    GenericFlags: LLVMJITSymbolGenericFlags::LLVMJITSymbolGenericFlagsExported
                        as u8
                        | LLVMJITSymbolGenericFlags::LLVMJITSymbolGenericFlagsCallable as u8,
                    TargetFlags: 0,
                },
            },
        });
    }
    // SAFETY: `pairs` holds `pairs.len()` valid pairs; the call takes the names' references.
    let unit = unsafe { LLVMOrcAbsoluteSymbols(pairs.as_mut_ptr(), pairs.len()) };
    // SAFETY: a live dylib and a fresh unit; on success the dylib owns the unit, on failure we
    // still do and dispose of it.
    let defined = unsafe { LLVMOrcJITDylibDefine(dylib, unit) };
    if !defined.is_null() {
        // SAFETY: ownership stayed with us (see above).
        unsafe { LLVMOrcDisposeMaterializationUnit(unit) };
    }
    check(defined, "defining the runtime symbols")?;

    for object in split::decode_objects(object)? {
        // SAFETY: the range is valid for `object.len()` bytes and is copied; the name is
        // NUL-terminated. `LLVMOrcLLJITAddObjectFile` takes ownership of the buffer.
        let buffer = unsafe {
            LLVMCreateMemoryBufferWithMemoryRangeCopy(
                object.as_ptr().cast(),
                object.len(),
                c"tttc-cached-object".as_ptr(),
            )
        };
        // SAFETY: a live LLJIT, its own dylib and a buffer it now owns.
        check(
            unsafe { LLVMOrcLLJITAddObjectFile(jit, dylib, buffer) },
            "adding the object",
        )?;
    }
    let entry_name = CString::new(JIT_ENTRY).map_err(|e| LlvmError::Internal(e.to_string()))?;
    let mut addr: LLVMOrcExecutorAddress = 0;
    // SAFETY: a live LLJIT and a NUL-terminated name; linking happens here (it fails if the
    // object references a symbol nobody defines).
    check(
        unsafe { LLVMOrcLLJITLookup(jit, &mut addr, entry_name.as_ptr()) },
        "linking the object",
    )?;
    if addr == 0 {
        return Err(LlvmError::Llvm("the entry has a null address".into()));
    }
    // SAFETY: the caller guarantees the object is `compile_object(p)`, whose `JIT_ENTRY` has
    // exactly this signature; `addr` is its address in code owned by `code`'s LLJIT.
    let entry: EntryFn = unsafe { std::mem::transmute::<usize, EntryFn>(addr as usize) };
    // SAFETY: as above; every access of the entry was proven in bounds when it was compiled.
    Ok(unsafe { Jit::new(p, entry, code, start.elapsed()) })
}

/// An LLVM error as [`LlvmError::Llvm`] (consuming it), prefixed by what was being done.
fn check(err: LLVMErrorRef, doing: &str) -> Result<(), LlvmError> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: `err` is a live error; getting its message consumes it, and the message is
    // disposed of after being copied.
    let message = unsafe {
        let raw = LLVMGetErrorMessage(err);
        let text = CStr::from_ptr(raw).to_string_lossy().into_owned();
        LLVMDisposeErrorMessage(raw);
        text
    };
    Err(LlvmError::Llvm(format!("{doing}: {message}")))
}

/// What owns an [`ObjectJit`]'s machine code: the ORC JIT the object was linked into.
pub struct ObjectCode {
    jit: LLVMOrcLLJITRef,
}

// SAFETY: the LLJIT is owned by this value alone and moves with it; running only uses the
// entry pointer, and ORC has no thread affinity.
unsafe impl Send for ObjectCode {}

impl Drop for ObjectCode {
    fn drop(&mut self) {
        // SAFETY: `jit` is a live LLJIT owned by this value; nothing uses its code afterwards
        // (the `Jit` holding this drops its entry pointer first).
        let err = unsafe { LLVMOrcDisposeLLJIT(self.jit) };
        let _ = check(err, "disposing of the JIT");
    }
}

impl std::fmt::Debug for ObjectCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCode").finish_non_exhaustive()
    }
}

impl JitCode for ObjectCode {
    type Error = LlvmError;

    fn internal(msg: String) -> LlvmError {
        LlvmError::Internal(msg)
    }
}
