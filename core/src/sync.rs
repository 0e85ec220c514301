//! The one place atomics come from.
//!
//! Normal builds use `core::sync::atomic`; `--cfg loom` swaps in loom's
//! checked atomics so the verification models explore every interleaving of
//! the very same protocol code.
//!
//! It also holds the crash points ([`crash_point`]): the places between two
//! shared-memory steps where a process may die. They do nothing unless the
//! `crash-points` feature (a test hook, never for production) is on.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64};

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicU32, AtomicU64};

pub use core::sync::atomic::Ordering;

/// A hint that we are spinning; a yield point under loom.
#[inline]
pub fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// A point between two shared-memory steps of the protocol where the
/// process may die. Without the `crash-points` feature (and always under
/// loom) it does nothing and compiles to nothing.
#[cfg(any(loom, not(feature = "crash-points")))]
#[inline(always)]
pub fn crash_point() {}

/// A point between two shared-memory steps of the protocol where the
/// process may die: with the `crash-points` feature, a test arms a
/// per-thread countdown ([`crash::arm`], [`crash::run`]); the point that
/// brings it to zero panics with a private marker payload, which stands
/// for the death of the process right there (no later step of the
/// operation happens; shared memory stays as it is).
#[cfg(all(not(loom), feature = "crash-points"))]
#[inline]
#[track_caller]
pub fn crash_point() {
    crash::point(core::panic::Location::caller());
}

/// Test support for [`crash_point`] (feature `crash-points`; links std).
///
/// ```
/// use cuframes_core::sync::crash;
/// // Die at the second crash point reached from here on.
/// let r = crash::run(2, || {
///     cuframes_core::sync::crash_point(); // passed
///     cuframes_core::sync::crash_point(); // dies here
///     unreachable!()
/// });
/// assert_eq!(r.unwrap_err().passed, 1);
/// ```
#[cfg(all(not(loom), feature = "crash-points"))]
pub mod crash {
    extern crate std;

    use core::cell::Cell;
    use core::panic::Location;
    use std::boxed::Box;
    use std::panic::{self, AssertUnwindSafe};

    std::thread_local! {
        /// Crash points left until the death (0: disarmed).
        static COUNTDOWN: Cell<u32> = const { Cell::new(0) };
        /// Crash points passed since the countdown was armed.
        static PASSED: Cell<u32> = const { Cell::new(0) };
    }

    /// The panic payload of a crash. Private: nothing but a crash point can
    /// make one, so a real panic is never mistaken for a crash.
    struct Marker {
        at: &'static Location<'static>,
        passed: u32,
    }

    /// Where an operation died.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Crashed {
        /// The crash point that fired (file and line in the core).
        pub at: &'static Location<'static>,
        /// Crash points the operation passed before it (steps it completed).
        pub passed: u32,
    }

    #[cold]
    fn die(at: &'static Location<'static>, passed: u32) -> ! {
        panic::panic_any(Marker { at, passed })
    }

    pub(super) fn point(at: &'static Location<'static>) {
        match COUNTDOWN.with(Cell::get) {
            0 => {}
            1 => {
                // Disarm first: nothing that runs while unwinding may fire.
                COUNTDOWN.with(|c| c.set(0));
                die(at, PASSED.with(Cell::get))
            }
            n => {
                COUNTDOWN.with(|c| c.set(n - 1));
                PASSED.with(|p| p.set(p.get() + 1));
            }
        }
    }

    /// Arms this thread's countdown: the `after`-th crash point reached from
    /// now on panics with the crash marker (`0` disarms).
    pub fn arm(after: u32) {
        COUNTDOWN.with(|c| c.set(after));
        PASSED.with(|p| p.set(0));
    }

    /// Disarms this thread's countdown; returns how many crash points were
    /// passed since it was armed.
    pub fn disarm() -> u32 {
        COUNTDOWN.with(|c| c.set(0));
        PASSED.with(|p| p.replace(0))
    }

    /// The crash a caught panic payload stands for, if it is one.
    pub fn crashed(payload: &(dyn core::any::Any + Send)) -> Option<Crashed> {
        payload.downcast_ref::<Marker>().map(|m| Crashed {
            at: m.at,
            passed: m.passed,
        })
    }

    /// Runs `f`, dying at its `after`-th crash point (`0`: never). Returns
    /// `f`'s result if it got through, or where it died. Any other panic
    /// goes on unwinding. Install [`quiet_hook`] to keep crashes from
    /// printing panic messages.
    pub fn run<R>(after: u32, f: impl FnOnce() -> R) -> Result<R, Crashed> {
        arm(after);
        let got = panic::catch_unwind(AssertUnwindSafe(f));
        disarm();
        got.map_err(|payload| match crashed(&*payload) {
            Some(c) => c,
            None => panic::resume_unwind(payload),
        })
    }

    /// Installs (once per process) a panic hook that says nothing for a
    /// crash and hands every other panic to the hook that was installed
    /// before.
    pub fn quiet_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let previous = panic::take_hook();
            panic::set_hook(Box::new(move |info| {
                if info.payload().downcast_ref::<Marker>().is_none() {
                    previous(info);
                }
            }));
        });
    }
}
