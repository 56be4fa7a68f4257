//! Generated well-typed programs on every pipeline stage, every backend and streamed in
//! chunks: all agree within `checks::TOLERANCE`.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicU64, Ordering};

/// Cases compared and cases skipped (a diverging reference), reported every 50 cases; with
/// `TTTC_FUZZ_SHOW=1` every case's text and outcome is printed too.
static COMPARED: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(case) = tttc_fuzz::generate::case(&mut u) else {
        return;
    };
    let compared = tttc_fuzz::checks::differential(&case);
    if std::env::var_os("TTTC_FUZZ_SHOW").is_some() {
        let outcome = if compared { "compared" } else { "skipped" };
        eprintln!("{}--- {outcome}", case.to_text());
    }
    let counter = if compared { &COMPARED } else { &SKIPPED };
    counter.fetch_add(1, Ordering::Relaxed);
    let (c, s) = (
        COMPARED.load(Ordering::Relaxed),
        SKIPPED.load(Ordering::Relaxed),
    );
    if (c + s) % 50 == 0 {
        eprintln!("differential: {c} cases compared, {s} skipped (diverging reference)");
    }
});
