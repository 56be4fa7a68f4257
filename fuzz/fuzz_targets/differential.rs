//! Generated well-typed programs on every pipeline stage, every backend and streamed in
//! chunks: all agree within `checks::TOLERANCE`.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicU64, Ordering};

/// Cases compared and cases skipped (a diverging reference), reported now and then.
static COMPARED: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(case) = tttc_fuzz::generate::case(&mut u) else {
        return;
    };
    let counter = match tttc_fuzz::checks::differential(&case) {
        true => &COMPARED,
        false => &SKIPPED,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let (c, s) = (
        COMPARED.load(Ordering::Relaxed),
        SKIPPED.load(Ordering::Relaxed),
    );
    if (c + s) % 500 == 0 {
        eprintln!("differential: {c} cases compared, {s} skipped (diverging reference)");
    }
});
