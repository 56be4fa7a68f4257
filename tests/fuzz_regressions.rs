//! The fuzzers' findings, replayed in the ordinary test suite: every input under
//! `tests/fuzz_regressions/<target>/` once made its target (fuzz/fuzz_targets, run by
//! scripts/fuzz.sh) panic, abort, hang or disagree. Each runs through the same check the fuzz
//! target runs (`fuzz/src/checks.rs`, included here), which panics on the bug; a hang is a
//! failure after [`TIME_LIMIT`]. The file `tests/fuzz_regressions/README.md` lists every
//! finding and its cause.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// A check that takes longer than this hangs (each takes well under a second when fixed).
const TIME_LIMIT: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The saved inputs of one target, sorted (the directory must exist).
fn findings(target: &str) -> Vec<PathBuf> {
    let dir = root().join("tests/fuzz_regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on the bytes of `file` in a thread, failing the test if it panics or does not
/// return within [`TIME_LIMIT`].
fn replay(file: &Path, check: fn(Vec<u8>)) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let (done, finished) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        check(bytes);
        let _ = done.send(());
    });
    match finished.recv_timeout(TIME_LIMIT) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{}: still running after {TIME_LIMIT:?}", file.display())
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = worker.join();
            panic!("{}: the check panicked (see above)", file.display());
        }
    }
}

#[test]
fn parse_lower_findings_compile_or_fail_cleanly() {
    for file in findings("parse_lower") {
        replay(&file, |bytes| checks::parse_lower(&bytes));
    }
}

#[test]
fn safetensors_bind_findings_bind_or_fail_cleanly() {
    for file in findings("safetensors_bind") {
        replay(&file, |bytes| checks::safetensors_bind(&root(), &bytes));
    }
}

#[test]
fn differential_findings_agree_everywhere() {
    let files = findings("differential");
    assert!(!files.is_empty(), "at least the sample case is there");
    for file in files {
        replay(&file, |bytes| {
            let text = String::from_utf8(bytes).expect("a case is text");
            let case = checks::DiffCase::from_text(&text).expect("a well-formed case");
            assert_eq!(
                checks::DiffCase::from_text(&case.to_text()),
                Ok(case.clone())
            );
            assert!(
                checks::differential(&case),
                "the case must be compared, not skipped\n{text}"
            );
        });
    }
}
