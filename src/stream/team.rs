//! The helper threads that run decode's grouped token steps: one persistent thread per extra
//! group, which spins for a while after each job before it sleeps.
//!
//! A token step lasts tens of microseconds and the next one follows a few microseconds later.
//! A thread pool whose workers sleep between jobs (rayon's, after a few rounds of spinning)
//! pays a wake-up, a system call and a reschedule on a virtual machine on many tokens: on a
//! 2-core machine TTT-MLP's decode (factored state) took 97–169 µs per token (median of a run;
//! three runs) on rayon's pool and 102–106 µs with these helpers. Here a helper watches a
//! counter for [`SPIN`] after its last job, so the next token's hand-off is a store the helper
//! sees within a microsecond (measured: both parts start within 1 µs of the call); only an idle
//! session lets it sleep.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper spins for the next job before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// A job: run part `i` (`1..parts`; the caller runs part 0).
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// What the caller and the helpers share.
struct Shared {
    /// Bumped for every job.
    seq: AtomicU64,
    /// The current job: a pointer to a [`Job`] on the caller's stack, valid until `remaining`
    /// reaches zero.
    job: AtomicPtr<()>,
    /// The number of parts of the current job.
    parts: AtomicUsize,
    /// Helpers that have not finished the current job.
    remaining: AtomicUsize,
    /// Helpers whose part panicked, for the current job.
    panicked: AtomicUsize,
    /// Sleeping helpers wait on this for `seq` to move.
    sleep: Mutex<()>,
    wake: Condvar,
}

/// The team: its helpers (started on first use, kept for the process) and a lock that gives
/// it to one caller at a time.
struct Team {
    shared: Arc<Shared>,
    helpers: usize,
}

fn team(helpers: usize) -> &'static Mutex<Team> {
    static TEAM: OnceLock<Mutex<Team>> = OnceLock::new();
    TEAM.get_or_init(|| {
        let shared = Arc::new(Shared {
            seq: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            parts: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            panicked: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut started = 0;
        for i in 1..=helpers {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("tttc-decode-{i}"))
                .spawn(move || helper(&shared, i));
            if spawned.is_ok() {
                started += 1;
            } else {
                break;
            }
        }
        Mutex::new(Team {
            shared,
            helpers: started,
        })
    })
}

/// A helper's life: wait for a job (spinning, then sleeping), run its part, report.
fn helper(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let start = Instant::now();
        let mut spins: u32 = 0;
        loop {
            let now = shared.seq.load(Ordering::Acquire);
            if now != seen {
                seen = now;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
                let _guard = shared
                    .wake
                    .wait_while(guard, |_| shared.seq.load(Ordering::Acquire) == seen)
                    .unwrap_or_else(|e| e.into_inner());
            } else {
                std::hint::spin_loop();
            }
        }
        if index < shared.parts.load(Ordering::Acquire) {
            let job = shared.job.load(Ordering::Acquire) as *const Job<'static>;
            // SAFETY: the caller stored a pointer to a live `Job` before bumping `seq`, and
            // keeps it alive until every helper has decremented `remaining` below.
            let run = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| run(index))).is_err() {
                shared.panicked.fetch_add(1, Ordering::AcqRel);
            }
        }
        shared.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`run`] did.
pub(super) enum Ran {
    /// Every part ran.
    All,
    /// Nothing ran: the team has too few helpers, or another caller holds it; the caller runs
    /// the parts itself.
    Nothing,
    /// A helper's part panicked.
    HelperPanicked,
}

/// Runs `job(i)` for every `i` in `0..parts`: part 0 on the calling thread, the others on the
/// team's helpers at once.
pub(super) fn run(parts: usize, job: Job<'_>) -> Ran {
    let Ok(team) = team(parts.saturating_sub(1)).try_lock() else {
        return Ran::Nothing;
    };
    if team.helpers + 1 < parts {
        return Ran::Nothing;
    }
    let shared = &team.shared;
    shared.parts.store(parts, Ordering::Release);
    shared.remaining.store(team.helpers, Ordering::Release);
    shared.panicked.store(0, Ordering::Release);
    let ptr: *const Job<'_> = &job;
    shared.job.store(ptr as *mut (), Ordering::Release);
    {
        let _guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
        shared.seq.fetch_add(1, Ordering::AcqRel);
        shared.wake.notify_all();
    }
    let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
    let mut spins: u32 = 0;
    while shared.remaining.load(Ordering::Acquire) != 0 {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    let helpers_panicked = shared.panicked.load(Ordering::Acquire) != 0;
    drop(team);
    if let Err(p) = mine {
        std::panic::resume_unwind(p);
    }
    if helpers_panicked {
        Ran::HelperPanicked
    } else {
        Ran::All
    }
}
