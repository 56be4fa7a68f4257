//! Fuzzing tttc: the checks the fuzz targets run ([`checks`], shared with the regression tests
//! in `tests/fuzz_regressions.rs`) and the grammar of random programs behind the differential
//! target ([`generate`]). See `scripts/fuzz.sh`.

pub mod checks;
pub mod generate;

/// The repository root (the parent of this crate), where the targets find the example
/// programs and resolve imports.
pub fn repository_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/ lies in the repository")
        .to_path_buf()
}
