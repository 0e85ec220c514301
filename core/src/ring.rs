//! [`Ring`]: a checked view of a segment's live structures, and [`RingRef`],
//! the handle the typestate grants keep.

use crate::error::ValidateError;
use crate::layout::*;
#[cfg(not(loom))]
use crate::segment::SegmentInfo;
use crate::sync::{fence, Ordering::*};
use core::ops::Deref;

/// The live parts of one segment: control block, slot headers, index ring
/// and subscriber records, plus the writer policy. Every protocol operation
/// goes through it; all indices it reads from shared memory are
/// bounds-checked against the lengths fixed here.
///
/// ```
/// use cuframes_core::{ControlBlock, IndexEntry, LosslessPolicy, Ring, SlotHeader, SubscriberRecord};
/// let ctl = ControlBlock::new();
/// let slots: Vec<SlotHeader> = (0..4).map(|_| SlotHeader::new()).collect();
/// let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
/// let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
/// let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
/// assert_eq!(ring.slot_count(), 4);
/// ```
pub struct Ring<'a> {
    pub(crate) ctl: &'a ControlBlock,
    pub(crate) slots: &'a [SlotHeader],
    pub(crate) index: &'a [IndexEntry],
    pub(crate) subs: &'a [SubscriberRecord],
    pub(crate) policy: LosslessPolicy,
    /// Packet rings: the largest packet (`layout.slot_bytes`).
    pub(crate) packet_max: Option<u64>,
}

impl<'a> Ring<'a> {
    /// Builds a ring over live structures held in ordinary memory (tests and
    /// models) or cut from a validated segment.
    pub fn new(
        ctl: &'a ControlBlock,
        slots: &'a [SlotHeader],
        index: &'a [IndexEntry],
        subs: &'a [SubscriberRecord],
        policy: LosslessPolicy,
    ) -> Result<Self, ValidateError> {
        if !(2..=MAX_SLOTS as usize).contains(&slots.len()) {
            return Err(ValidateError::Count("slot_count"));
        }
        if !(1..=MAX_SUBSCRIBERS as usize).contains(&subs.len()) {
            return Err(ValidateError::Count("subscriber_capacity"));
        }
        if index.len() < 2 * slots.len() || !index.len().is_power_of_two() {
            return Err(ValidateError::Count("index_len"));
        }
        Ok(Self {
            ctl,
            slots,
            index,
            subs,
            policy,
            packet_max: None,
        })
    }

    /// Makes this a packet ring whose packets are at most `max_len` bytes
    /// (see [`packet`](crate::packet)).
    pub fn for_packets(mut self, max_len: u64) -> Self {
        self.packet_max = Some(max_len);
        self
    }

    /// Cuts the live structures out of a mapped segment.
    ///
    /// # Safety
    /// `base` must point to a mapping of `info.header.segment_len` bytes,
    /// aligned to at least 64 bytes, that stays mapped for `'a`, and `info`
    /// must be the result of validating that mapping's header. No `&mut` and
    /// no `&[u8]` may be formed over the control, slot, index or subscriber
    /// regions for `'a` (other processes change them through atomics).
    // SAFETY: callers meet the `# Safety` contract above; the body assumes
    // nothing beyond it.
    #[cfg(not(loom))]
    pub unsafe fn from_segment(base: *const u8, info: &SegmentInfo) -> Self {
        let h = &info.header;
        // SAFETY: validation proved each region in bounds, aligned to its
        // type (64 bytes for the tables, 8 for the index) and non-overlapping;
        // every type here consists only of atomics, for which any bit pattern
        // is valid (zerocopy `FromBytes`) and shared mutation is sound; the
        // caller guarantees the mapping outlives 'a and no conflicting
        // references exist.
        unsafe {
            let at = |off: u64| base.add(off as usize);
            Self {
                ctl: &*at(h.control_offset).cast::<ControlBlock>(),
                slots: core::slice::from_raw_parts(
                    at(h.slots_offset).cast::<SlotHeader>(),
                    h.slot_count as usize,
                ),
                index: core::slice::from_raw_parts(
                    at(h.index_offset).cast::<IndexEntry>(),
                    h.index_len as usize,
                ),
                subs: core::slice::from_raw_parts(
                    at(h.subscribers_offset).cast::<SubscriberRecord>(),
                    h.subscriber_capacity as usize,
                ),
                policy: info.policy,
                packet_max: (info.content == Content::Packets).then_some(h.layout.slot_bytes),
            }
        }
    }

    /// Number of slots.
    pub fn slot_count(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Number of subscriber records.
    pub fn subscriber_capacity(&self) -> u32 {
        self.subs.len() as u32
    }

    /// The writer's policy towards lagging lossless subscribers.
    pub fn policy(&self) -> LosslessPolicy {
        self.policy
    }

    /// The control block.
    pub fn control(&self) -> &'a ControlBlock {
        self.ctl
    }

    /// Slot headers.
    pub fn slots(&self) -> &'a [SlotHeader] {
        self.slots
    }

    /// Subscriber records.
    pub fn subscribers(&self) -> &'a [SubscriberRecord] {
        self.subs
    }

    /// `(seq, slot)` of the index-ring entry for `seq`: the frame with
    /// that seq if it is still indexed, else whichever reused the entry.
    pub(crate) fn indexed(&self, seq: u64) -> (u64, u32) {
        unpack(self.index[(seq as usize) & (self.index.len() - 1)].load(Acquire))
    }

    /// `(seq, slot)` of the newest committed frame (seq 0: none yet).
    pub fn head(&self) -> (u64, u32) {
        unpack(self.ctl.head.load(SeqCst))
    }

    /// True once the publisher closed the stream.
    pub fn is_closed(&self) -> bool {
        self.ctl.state.load(Acquire) == state::CLOSED
    }

    /// Marks the stream open (publisher, once the segment is initialised).
    pub fn open(&self) {
        self.ctl.state.store(state::OPEN, Release);
    }

    /// Marks the stream closed and bumps `notify` so waiting subscribers
    /// wake and see it. Returns whether anyone is waiting.
    pub fn close(&self) -> bool {
        self.ctl.state.store(state::CLOSED, SeqCst);
        self.bump_notify()
    }

    pub(crate) fn bump_notify(&self) -> bool {
        self.ctl.notify.fetch_add(1, Release);
        fence(SeqCst);
        self.ctl.waiters.load(Relaxed) != 0
    }

    /// Announces that subscriber record `index` is about to wait for a
    /// commit; returns the `notify` value to pass to the futex wait. Must
    /// be paired with [`Ring::end_wait`]. Re-check for a frame after this
    /// call and before sleeping: a commit that raced the announcement
    /// changes `notify`, so the wait returns at once rather than sleeping
    /// through it. The record counts its own announced waits, so a sweeper
    /// that frees the record of a subscriber that died asleep can take them
    /// back out of the ring-wide count.
    pub fn begin_wait(&self, index: u32) -> u32 {
        // Ring-wide count first and record count second (and the reverse
        // on the way out): a death in between leaves one wait too many
        // counted (a spurious wake-up per commit), never one too few (a
        // sleeper nobody wakes).
        self.ctl.waiters.fetch_add(1, Relaxed);
        if let Some(r) = self.subs.get(index as usize) {
            r.waiting.fetch_add(1, Relaxed);
        }
        fence(SeqCst);
        self.ctl.notify.load(Acquire)
    }

    /// Ends a wait begun with [`Ring::begin_wait`]. If the record was freed
    /// meanwhile (its waits already taken back), the ring-wide count is
    /// left alone.
    pub fn end_wait(&self, index: u32) {
        let mine = self.subs.get(index as usize).is_some_and(|r| {
            r.waiting
                .fetch_update(Relaxed, Relaxed, |w| w.checked_sub(1))
                .is_ok()
        });
        if mine {
            let _ = self
                .ctl
                .waiters
                .fetch_update(Relaxed, Relaxed, |w| w.checked_sub(1));
        }
    }

    /// Writer side of [`Ring::begin_wait`]: announces the writer waits for
    /// space and returns the `space` value for the futex wait.
    pub fn begin_wait_space(&self) -> u32 {
        self.ctl.space_waiters.store(1, Relaxed);
        fence(SeqCst);
        self.ctl.space.load(Acquire)
    }

    /// Ends a wait begun with [`Ring::begin_wait_space`].
    pub fn end_wait_space(&self) {
        self.ctl.space_waiters.store(0, Relaxed);
    }

    /// Called after freeing space (release, deregistration, reclaim, or a
    /// writer's own retained slot let go): bumps `space`; returns whether
    /// the writer is waiting for it (then wake it with [`Wake::Writer`]).
    pub fn bump_space(&self) -> bool {
        fence(SeqCst);
        if self.ctl.space_waiters.load(Relaxed) != 0 {
            self.ctl.space.fetch_add(1, Release);
            true
        } else {
            false
        }
    }
}

/// Which side a wake-up is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Subscribers waiting on `notify` (a commit or close happened).
    Readers,
    /// The writer waiting on `space` (a slot was freed).
    Writer,
}

/// A handle to a [`Ring`] that grants keep: `&Ring`, or any smart pointer to
/// a type that implements it (the std layer's mapped segment). It also
/// carries the platform's wake-up: the core decides *when* to wake, the
/// handle knows *how* (futex, condition variable, nothing).
pub trait RingRef {
    /// The ring.
    fn ring(&self) -> &Ring<'_>;
    /// Wakes the waiters of one side. The default does nothing (polling).
    fn wake(&self, _who: Wake) {}
}

impl RingRef for Ring<'_> {
    fn ring(&self) -> &Ring<'_> {
        self
    }
}

impl<P: Deref> RingRef for P
where
    P::Target: RingRef,
{
    fn ring(&self) -> &Ring<'_> {
        (**self).ring()
    }
    fn wake(&self, who: Wake) {
        (**self).wake(who)
    }
}
