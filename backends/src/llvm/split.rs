//! One kernel program compiled on several threads: its LLVM module cut into parts along
//! function boundaries, each part optimized (`default<O3>`) and emitted as its own object on
//! its own thread, the objects linked together when loaded ([`super::object::load_object`]).
//!
//! LLVM optimizes and emits one module on one thread, and a real-size model's code is one
//! module of dozens of functions: every layer function (`tttc.fn.k`), every parallel loop's
//! worker (`tttc.worker.k`, with its `tttc.wbody.k`) and every outlined part (`tttc.part.k`)
//! is compiled on its own already (they are `noinline` or only called through a pointer), so
//! nothing is lost by optimizing them in different modules.
//!
//! Every thread builds the whole module from the kernel program (the generator is
//! deterministic, and building is a small part of the time), groups its defined functions
//! ([`groups`]: a worker with its body, the entry with `tttc.body`, every other function
//! alone), deals the groups to the parts by size (instructions before optimization, the
//! largest first to the least loaded part), and keeps only its own groups' bodies: the
//! others' functions become declarations. Every group's head has external linkage, so the
//! parts' objects refer to each other's functions by name; internal helpers stay internal.

use super::{build_unoptimized, Host, LlvmError, JIT_ENTRY};
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, FileType, RelocMode};
use inkwell::values::{BasicValue, FunctionValue};
use tttc_ir::kernel::KernelProgram;

/// The most parts a module is cut into.
const MAX_PARTS: usize = 8;

/// A module smaller than this (instructions before optimization) is compiled whole by
/// [`super::compile_object`]: cutting it saves less than the second build of the module and
/// the thread cost (the 125M model's module at 16 tokens, about 6 700 instructions in 7
/// groups, compiled about as fast whole as cut in two; at 2 048 tokens it has 33 groups and
/// two parts take half the time of one).
pub(super) const MIN_SPLIT_INSTRUCTIONS: usize = 2_000;

/// How many parts to compile on: the host's threads (at most [`MAX_PARTS`]), or
/// `TTTC_LLVM_PARTS` when set to a positive number (1: one module, as before).
pub fn parts() -> usize {
    if let Some(n) = std::env::var("TTTC_LLVM_PARTS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n.min(MAX_PARTS);
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_PARTS)
}

/// `p` compiled to relocatable objects (position-independent, host format) that together
/// define the JIT entry: one per part, compiled on `parts` threads (one object when the module
/// has fewer than `min_split` instructions before optimization, or `parts` is 1).
pub(super) fn compile_objects(
    p: &KernelProgram,
    parts: usize,
    min_split: usize,
) -> Result<Vec<Vec<u8>>, LlvmError> {
    // The native target and the SLP switch, once, before any thread touches LLVM.
    Host::new(RelocMode::PIC, CodeModel::Default)?;
    if parts <= 1 {
        return Ok(vec![compile_part(p, 0, 1, min_split)?.0]);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..parts)
            .map(|part| s.spawn(move || compile_part(p, part, parts, min_split)))
            .collect();
        let mut objects = Vec::with_capacity(parts);
        for h in handles {
            let (object, whole) = h
                .join()
                .map_err(|_| LlvmError::Internal("a code generation thread panicked".into()))??;
            if whole {
                // The module was too small to cut: part 0 compiled it whole, the others did
                // nothing.
                return Ok(vec![object]);
            }
            objects.push(object);
        }
        Ok(objects)
    })
}

/// Part `part` of `parts` of `p`'s module, optimized and emitted, and whether it is the whole
/// module (too small to cut: part 0 compiles everything, the others return nothing).
fn compile_part(
    p: &KernelProgram,
    part: usize,
    parts: usize,
    min_split: usize,
) -> Result<(Vec<u8>, bool), LlvmError> {
    let host = Host::new(RelocMode::PIC, CodeModel::Default)?;
    let ctx = Context::create();
    let t0 = std::time::Instant::now();
    let module = build_unoptimized(&ctx, p, JIT_ENTRY, &host)?;
    let groups = groups(&module)?;
    let whole = parts <= 1 || groups.iter().map(|g| g.size).sum::<usize>() < min_split;
    if whole && part > 0 {
        return Ok((Vec::new(), true));
    }
    let mut size: usize = groups.iter().map(|g| g.size).sum();
    if !whole {
        let owner = deal(&groups, parts);
        size = groups
            .iter()
            .zip(&owner)
            .filter(|(_, &o)| o == part)
            .map(|(g, _)| g.size)
            .sum();
        keep_only(&module, &groups, &owner, part)?;
    }
    let t1 = std::time::Instant::now();
    module
        .run_passes("default<O3>", &host.tm, PassBuilderOptions::create())
        .map_err(|e| LlvmError::Llvm(format!("optimization: {e}")))?;
    let t2 = std::time::Instant::now();
    let buf = host
        .tm
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| LlvmError::Llvm(format!("emitting the object: {e}")))?;
    // `TTTC_LLVM_TIMINGS=1`: where a compile's time goes, per part, on stderr.
    if std::env::var_os("TTTC_LLVM_TIMINGS").is_some() {
        let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e3;
        eprintln!(
            "llvm part {part}/{parts}: {size} instructions in {} groups; generate {:.0} ms, \
             optimize (O3) {:.0} ms, emit {:.0} ms",
            groups.len(),
            ms(t0, t1),
            ms(t1, t2),
            ms(t2, std::time::Instant::now())
        );
    }
    Ok((buf.as_slice().to_vec(), whole))
}

/// Functions that go to the same part: the head (called or referenced from elsewhere) and the
/// internal functions only it calls.
struct Group<'ctx> {
    head: FunctionValue<'ctx>,
    members: Vec<FunctionValue<'ctx>>,
    /// Instructions of all its functions, before optimization.
    size: usize,
}

/// The defined functions of `module` in groups: `tttc.wbody.k` with `tttc.worker.k`,
/// `tttc.body` with the entry, every other defined function alone, in module order.
fn groups<'ctx>(module: &Module<'ctx>) -> Result<Vec<Group<'ctx>>, LlvmError> {
    let defined: Vec<FunctionValue<'ctx>> = module
        .get_functions()
        .filter(|f| f.count_basic_blocks() > 0)
        .collect();
    let name = |f: &FunctionValue<'ctx>| f.get_name().to_string_lossy().into_owned();
    let mut out: Vec<Group<'ctx>> = Vec::new();
    for f in &defined {
        let n = name(f);
        if n == "tttc.body" || n.starts_with("tttc.wbody.") {
            continue;
        }
        let member = if n == JIT_ENTRY {
            Some("tttc.body".to_string())
        } else {
            n.strip_prefix("tttc.worker.")
                .map(|k| format!("tttc.wbody.{k}"))
        };
        let members: Vec<FunctionValue<'ctx>> = member
            .iter()
            .filter_map(|m| module.get_function(m))
            .filter(|m| m.count_basic_blocks() > 0)
            .collect();
        let size = std::iter::once(*f)
            .chain(members.iter().copied())
            .map(instructions)
            .sum();
        out.push(Group {
            head: *f,
            members,
            size,
        });
    }
    let grouped: usize = out.iter().map(|g| 1 + g.members.len()).sum();
    if grouped != defined.len() {
        return Err(LlvmError::Internal(format!(
            "splitting the module: {} of its {} functions are in no group",
            defined.len() - grouped,
            defined.len()
        )));
    }
    Ok(out)
}

/// Number of instructions in `f`.
fn instructions(f: FunctionValue<'_>) -> usize {
    f.get_basic_block_iter()
        .map(|b| b.get_instructions().count())
        .sum()
}

/// The part of each group: the largest first, each to the part with the fewest instructions
/// so far (ties: the lowest part; deterministic, so every thread deals the same).
fn deal(groups: &[Group<'_>], parts: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(groups[i].size), i));
    let mut load = vec![0usize; parts];
    let mut owner = vec![0usize; groups.len()];
    for i in order {
        let part = (0..parts).min_by_key(|&q| (load[q], q)).unwrap_or(0);
        load[part] += groups[i].size;
        owner[i] = part;
    }
    owner
}

/// Turns `module` into part `part`: every group's head gets external linkage (the other parts
/// call it by name); the groups of other parts lose their bodies (heads become declarations,
/// members, then unused, are deleted).
fn keep_only<'ctx>(
    module: &Module<'ctx>,
    groups: &[Group<'ctx>],
    owner: &[usize],
    part: usize,
) -> Result<(), LlvmError> {
    for (g, &o) in groups.iter().zip(owner) {
        if o == part {
            g.head.as_global_value().set_linkage(Linkage::External);
            continue;
        }
        let name = g.head.get_name().to_string_lossy().into_owned();
        let decl = module.add_function(
            &format!("{name}.decl"),
            g.head.get_type(),
            Some(Linkage::External),
        );
        g.head.replace_all_uses_with(decl);
        // SAFETY: every use of the old function now refers to `decl`; nothing holds it.
        unsafe { g.head.delete() };
        decl.as_global_value().set_name(&name);
        for m in &g.members {
            if m.as_global_value()
                .as_pointer_value()
                .get_first_use()
                .is_some()
            {
                return Err(LlvmError::Internal(format!(
                    "splitting the module: {} is used outside its group",
                    m.get_name().to_string_lossy()
                )));
            }
            // SAFETY: unused (checked above).
            unsafe { m.delete() };
        }
    }
    Ok(())
}

/// Several objects as one byte string (what the compile cache stores): `TTTCOBJS`, the count
/// (u32, little-endian), then each object's length (u64, little-endian) and bytes.
pub fn encode_objects(objects: &[Vec<u8>]) -> Vec<u8> {
    let total: usize = objects.iter().map(|o| o.len() + 8).sum();
    let mut out = Vec::with_capacity(12 + total);
    out.extend_from_slice(BUNDLE_MAGIC);
    out.extend_from_slice(&(objects.len() as u32).to_le_bytes());
    for o in objects {
        out.extend_from_slice(&(o.len() as u64).to_le_bytes());
        out.extend_from_slice(o);
    }
    out
}

const BUNDLE_MAGIC: &[u8; 8] = b"TTTCOBJS";

/// The objects of [`encode_objects`]' byte string; an error if it is not one (truncated,
/// trailing bytes, another format).
pub fn decode_objects(bytes: &[u8]) -> Result<Vec<&[u8]>, LlvmError> {
    let bad = |why: &str| Err(LlvmError::Llvm(format!("not an object bundle: {why}")));
    let Some(rest) = bytes.strip_prefix(BUNDLE_MAGIC.as_slice()) else {
        return bad("no magic");
    };
    let Some((count, mut rest)) = rest.split_first_chunk::<4>() else {
        return bad("truncated count");
    };
    let count = u32::from_le_bytes(*count) as usize;
    let mut out = Vec::with_capacity(count.min(MAX_PARTS));
    for _ in 0..count {
        let Some((len, tail)) = rest.split_first_chunk::<8>() else {
            return bad("truncated length");
        };
        let len = u64::from_le_bytes(*len);
        let Some(len) = usize::try_from(len).ok().filter(|&n| n <= tail.len()) else {
            return bad("an object runs past the end");
        };
        let (object, tail) = tail.split_at(len);
        out.push(object);
        rest = tail;
    }
    if !rest.is_empty() || out.is_empty() {
        return bad(if out.is_empty() {
            "no object"
        } else {
            "trailing bytes"
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_round_trip_and_reject_damage() {
        let objects = vec![vec![1u8, 2, 3], vec![], vec![9u8; 17]];
        let bytes = encode_objects(&objects);
        let back = decode_objects(&bytes).unwrap();
        assert_eq!(back, objects.iter().map(Vec::as_slice).collect::<Vec<_>>());
        for cut in 0..bytes.len() {
            assert!(decode_objects(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_objects(&longer).is_err());
        assert!(decode_objects(b"\x7fELF....").is_err());
    }
}
