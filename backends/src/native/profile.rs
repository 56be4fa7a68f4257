//! A statement-level profile of native code (`tttc bench --profile`): when enabled before a
//! program is compiled, the LLVM code generator brackets every top-level statement of the
//! kernel program with calls to [`tttc_profile_enter`] and [`tttc_profile_exit`], which add the
//! statement's *self* time (nested bracketed statements subtracted) to its slot. The counters
//! are process-wide; [`take_statement_profile`] reads and clears them.
//!
//! It costs two clock reads per statement execution, so it is off unless asked for and never
//! part of code that is not being profiled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// What the brackets have recorded so far.
struct State {
    /// Self time and executions per statement id.
    totals: Vec<(Duration, u64)>,
    /// Open brackets: statement id, start, time spent in nested brackets.
    open: Vec<(usize, Instant, Duration)>,
}

static STATE: Mutex<State> = Mutex::new(State {
    totals: Vec::new(),
    open: Vec::new(),
});

/// Whether programs compiled from now on carry the profile brackets.
pub fn set_statement_profile(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether code generators should emit the profile brackets.
pub fn statement_profile_enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// The self time and number of executions of every statement id recorded since the last call
/// (index = statement id), clearing the counters.
pub fn take_statement_profile() -> Vec<(Duration, u64)> {
    let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
    s.open.clear();
    std::mem::take(&mut s.totals)
}

/// Opens the bracket of statement `id` (called by generated code).
pub extern "C" fn tttc_profile_enter(id: i64) {
    let Ok(id) = usize::try_from(id) else { return };
    let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
    s.open.push((id, Instant::now(), Duration::ZERO));
}

/// Closes the innermost open bracket (called by generated code after statement `id`).
pub extern "C" fn tttc_profile_exit(id: i64) {
    let now = Instant::now();
    let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let Some((open_id, start, nested)) = s.open.pop() else {
        return;
    };
    if usize::try_from(id).ok() != Some(open_id) {
        // Unbalanced brackets cannot come from the code generator; drop the sample.
        return;
    }
    let elapsed = now - start;
    if s.totals.len() <= open_id {
        s.totals.resize(open_id + 1, (Duration::ZERO, 0));
    }
    let slot = &mut s.totals[open_id];
    slot.0 += elapsed.saturating_sub(nested);
    slot.1 += 1;
    if let Some(parent) = s.open.last_mut() {
        parent.2 += elapsed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_brackets_count_self_time() {
        take_statement_profile();
        tttc_profile_enter(1);
        std::thread::sleep(Duration::from_millis(5));
        tttc_profile_enter(0);
        std::thread::sleep(Duration::from_millis(20));
        tttc_profile_exit(0);
        tttc_profile_exit(1);
        let p = take_statement_profile();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].1, p[1].1), (1, 1));
        // The outer statement's self time excludes the nested 20 ms.
        assert!(p[0].0 >= Duration::from_millis(20), "{p:?}");
        assert!(p[1].0 < p[0].0, "{p:?}");
        assert!(take_statement_profile().is_empty());
    }
}
