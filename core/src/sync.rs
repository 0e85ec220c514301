//! The one place atomics come from.
//!
//! Normal builds use `core::sync::atomic`; `--cfg loom` swaps in loom's
//! checked atomics so the verification models explore every interleaving of
//! the very same protocol code.

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
