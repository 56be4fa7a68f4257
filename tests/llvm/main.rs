//! Watches the LLVM bug that keeps the SLP vectorizer off in the LLVM backend.
//!
//! `slp_poison_lane.ll` (beside this file) is the miscompile behind `tests/llvm_regression.rs`,
//! reduced with LLVM's own tools (see `docs/backends.md`, "The SLP vectorizer"): straight-line
//! code without UB whose every stored value is `+0.0`, which LLVM 19.1's `slp-vectorizer` turns
//! into code that stores `poison` in one lane. The test runs LLVM's `opt` on it: constant folding
//! alone (`instsimplify`) must store `0.0` everywhere (the reference), and after
//! `slp-vectorizer,instsimplify` a store still holding `poison` means the bug is still there. When
//! an LLVM upgrade fixes it, the test fails and says so: then check `tests/llvm_regression.rs`
//! with `TTTC_LLVM_SLP=1` and reconsider `set_llvm_options` in
//! `backends/src/llvm/mod.rs`.
//!
//! Skipped, with a message, where LLVM's `opt` is not installed, except under `CI=true`.
#![cfg(feature = "llvm")]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The reduced module.
fn case() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llvm/slp_poison_lane.ll")
}

/// LLVM's `opt` from the LLVM the backend is built against (`.cargo/config.toml` sets
/// `LLVM_SYS_191_PREFIX` for the build), if it is installed.
fn opt_tool() -> Option<PathBuf> {
    let prefix = option_env!("LLVM_SYS_191_PREFIX").unwrap_or("/usr/lib/llvm-19");
    let opt = Path::new(prefix).join("bin").join("opt");
    opt.is_file().then_some(opt)
}

/// The textual module `opt -S -passes=<passes>` makes of the reduced case.
fn run_opt(opt: &Path, passes: &str) -> String {
    let out = Command::new(opt)
        .arg("-S")
        .arg(format!("-passes={passes}"))
        .arg(case())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", opt.display()));
    assert!(
        out.status.success(),
        "opt -passes={passes} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("opt prints UTF-8")
}

/// The store instructions of a textual module, trimmed.
fn stores(module: &str) -> Vec<&str> {
    module
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("store "))
        .collect()
}

/// `opt --version`'s line naming the LLVM version.
fn version(opt: &Path) -> String {
    Command::new(opt)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.contains("version"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown LLVM version".into())
}

#[test]
fn slp_vectorizer_still_stores_poison_for_a_defined_value() {
    let Some(opt) = opt_tool() else {
        let msg = "LLVM's `opt` (llvm-19) is not installed: cannot check the SLP vectorizer bug";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg} (required under CI=true)");
        }
        eprintln!("skipped: {msg}");
        return;
    };

    // The reference: folding constants alone stores +0.0 ten times, no vectors, no poison.
    let reference = run_opt(&opt, "instsimplify");
    let reference = stores(&reference);
    assert_eq!(
        reference.len(),
        10,
        "stores after instsimplify: {reference:#?}"
    );
    for s in &reference {
        assert!(
            s.starts_with("store double 0.000000e+00,"),
            "the reduced case must store +0.0 everywhere: {s}"
        );
    }

    // What the SLP vectorizer makes of it, folded the same way.
    let vectorized = run_opt(&opt, "slp-vectorizer,instsimplify");
    let vectorized = stores(&vectorized);
    assert!(
        vectorized.iter().any(|s| s.starts_with("store <")),
        "{}: the SLP vectorizer no longer vectorizes the reduced case, so it shows nothing \
         about the bug; re-reduce it from tests/llvm_regression.rs with TTTC_LLVM_SLP=1 \
         (stores: {vectorized:#?})",
        version(&opt)
    );
    let poisoned: Vec<&&str> = vectorized.iter().filter(|s| s.contains("poison")).collect();
    assert!(
        !poisoned.is_empty(),
        "{}: the SLP vectorizer no longer stores poison for tests/llvm/slp_poison_lane.ll, so \
         this LLVM may have fixed the miscompile; run tests/llvm_regression.rs with \
         TTTC_LLVM_SLP=1 and, if it passes, turn SLP back on (set_llvm_options in \
         backends/src/llvm/mod.rs) and update docs/backends.md (stores: {vectorized:#?})",
        version(&opt)
    );
    eprintln!(
        "{}: the SLP vectorizer still miscompiles the reduced case: {poisoned:?}",
        version(&opt)
    );
}
