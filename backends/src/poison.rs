//! Poison: whether the native code generators fill fresh memory with NaN (all bits set) — the
//! program's outputs before it runs, its temporaries (the whole memory-plan arena) and scratch
//! buffers at the start of every iteration they are fresh for — so that reading an element
//! before writing it shows as NaN in the results, as it does in the kernel interpreter (which
//! always poisons).
//!
//! The fills cost time and touch every page of every temporary on every run, so they are a
//! checking mode: on in debug builds (every `cargo test`), off in release builds, and
//! `TTTC_POISON=1` / `TTTC_POISON=0` in the environment overrides either; [`set_poison`]
//! overrides all of them for the code compiled afterwards. The setting is part of the compile
//! cache's key (`src/cache.rs`), so an entry compiled with poison is never served without.

use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable that turns poison on (`1`) or off (`0`).
pub const POISON_ENV: &str = "TTTC_POISON";

/// 0: not decided yet; 1: off; 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether code compiled from now on poisons fresh memory (see the module documentation).
pub fn poison_enabled() -> bool {
    match STATE.load(Ordering::SeqCst) {
        1 => false,
        2 => true,
        _ => {
            let on = match std::env::var(POISON_ENV).as_deref() {
                Ok("1") => true,
                Ok("0") => false,
                _ => cfg!(debug_assertions),
            };
            // A concurrent `set_poison` wins.
            let _ = STATE.compare_exchange(
                0,
                if on { 2 } else { 1 },
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            STATE.load(Ordering::SeqCst) == 2
        }
    }
}

/// Turns poison on or off for the code compiled from now on, whatever the build and the
/// environment say.
pub fn set_poison(on: bool) {
    STATE.store(if on { 2 } else { 1 }, Ordering::SeqCst);
}
