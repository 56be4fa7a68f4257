//! Names for JIT-compiled code in `perf` profiles: with `TTTC_PERF_MAP=1` in the environment,
//! every function the LLVM JIT defines (the entry, into which the body is inlined, and each
//! parallel loop's worker,
//! `tttc.worker.K` for the K-th outermost parallel loop in program order) is appended to
//! `/tmp/perf-PID.map`, the file `perf report` reads to symbolize anonymous executable memory.
//! Sizes are the distance to the next function (the last one is given 64 KiB), which is what
//! `perf` needs to attribute samples; nothing else reads the file.

use inkwell::execution_engine::ExecutionEngine;
use inkwell::module::Module;
use std::io::Write;

/// Whether `TTTC_PERF_MAP` asks for a map.
fn enabled() -> bool {
    std::env::var_os("TTTC_PERF_MAP").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Appends the defined functions of `module`, as `engine` placed them, to `/tmp/perf-PID.map`
/// when `TTTC_PERF_MAP` is set. Failures are reported on stderr and otherwise ignored: a
/// profile's names never stop a run.
pub(super) fn write(module: &Module<'_>, engine: &ExecutionEngine<'_>) {
    if !enabled() {
        return;
    }
    let mut funcs: Vec<(usize, String)> = module
        .get_functions()
        .filter(|f| f.count_basic_blocks() > 0)
        .filter_map(|f| {
            let name = f.get_name().to_str().ok()?.to_string();
            let addr = engine.get_function_address(&name).ok()?;
            (addr != 0).then_some((addr, name))
        })
        .collect();
    funcs.sort();
    let path = format!("/tmp/perf-{}.map", std::process::id());
    let mut lines = String::new();
    for (i, (addr, name)) in funcs.iter().enumerate() {
        let size = funcs.get(i + 1).map_or(64 << 10, |(next, _)| next - addr);
        lines.push_str(&format!("{addr:x} {size:x} {name}\n"));
    }
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(lines.as_bytes()));
    if let Err(e) = result {
        eprintln!("warning: TTTC_PERF_MAP: could not write {path}: {e}");
    }
}
