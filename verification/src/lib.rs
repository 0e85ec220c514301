//! Shared helpers for the ring verification models.
//!
//! - [`Storage`]: the live structures of one ring in ordinary memory, built
//!   with their `new()` constructors (so under `--cfg loom` they are loom
//!   atomics and must be created inside `loom::model`).
//! - [`fuzz`]: the bodies of the cargo-fuzz targets, shared with the stable
//!   smoke test (`tests/fuzz_smoke.rs`) so CI runs them without nightly.
//!
//! The checks themselves live in `tests/`: `loom.rs` (exhaustive
//! interleavings, `--cfg loom`), `model.rs` (proptest state machine against
//! a reference model, with operations that die at the core's crash points:
//! the tests build `cuframes-core` with its `crash-points` feature) and
//! `fuzz_smoke.rs`.

use cuframes_core::{
    index_len_for, ControlBlock, IndexEntry, LosslessPolicy, Mode, Register, Ring, SlotHeader,
    SubscriberRecord,
};

/// The live parts of a ring, owned.
pub struct Storage {
    /// Control block.
    pub ctl: ControlBlock,
    /// Slot headers.
    pub slots: Vec<SlotHeader>,
    /// Index ring (length [`index_len_for`] the slot count).
    pub index: Vec<IndexEntry>,
    /// Subscriber records.
    pub subs: Vec<SubscriberRecord>,
}

impl Storage {
    /// A fresh, all-zero ring of `slots` slots and `subscribers` records.
    pub fn new(slots: u32, subscribers: u32) -> Self {
        Self {
            ctl: ControlBlock::new(),
            slots: (0..slots).map(|_| SlotHeader::new()).collect(),
            index: (0..index_len_for(slots))
                .map(|_| IndexEntry::new(0))
                .collect(),
            subs: (0..subscribers).map(|_| SubscriberRecord::new()).collect(),
        }
    }

    /// A [`Ring`] view with the given writer policy.
    pub fn ring(&self, policy: LosslessPolicy) -> Ring<'_> {
        Ring::new(&self.ctl, &self.slots, &self.index, &self.subs, policy)
            .expect("storage sizes are valid")
    }
}

/// A registration request with fixed identity fields (pid 1, start time 0).
pub fn request(mode: Mode, max_held: u32, name: &[u8]) -> Register<'_> {
    Register {
        mode,
        max_held,
        pid: 1,
        start_time: 0,
        pid_ns: 0,
        heartbeat_ns: 0,
        name,
    }
}

/// The generation of record `index` if it is active (read through the
/// public statistics, as a liveness monitor does).
pub fn active_generation(ring: &Ring<'_>, index: u32) -> Option<u64> {
    ring.stats()
        .active()
        .find(|s| s.index == index)
        .map(|s| s.generation)
}

pub mod fuzz;
