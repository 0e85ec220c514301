//! The writer role and its typestate grant: loan a slot, then commit it or
//! let it drop (abort).

use crate::layout::*;
use crate::packet::{CommitError, PacketMeta};
use crate::ring::{RingRef, Wake};
use crate::sync::Ordering::*;

/// Why no slot could be loaned right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoanError {
    /// Every slot is held by subscribers or is the newest frame.
    Full,
    /// Free slots exist, but each holds a frame a lossless subscriber has not
    /// read, and the policy is [`LosslessPolicy::Block`]: wait for `space`.
    Backpressure,
    /// The sequence space is exhausted (2^56 frames).
    SeqExhausted,
    /// The stream is closed.
    Closed,
    /// A slot is already loaned ([`Writer::begin`] without commit or abort).
    Pending,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The frame's sequence number (1, 2, 3, ...).
    pub seq: u64,
    /// The slot it lives in.
    pub slot: u32,
}

/// The single writer of a ring. Holds the next sequence number; at most one
/// [`WriteGrant`] exists at a time because a grant borrows the writer
/// mutably.
///
/// ```
/// # use cuframes_core::*;
/// # let ctl = ControlBlock::new();
/// # let slots: Vec<SlotHeader> = (0..4).map(|_| SlotHeader::new()).collect();
/// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
/// # let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
/// let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
/// let mut writer = Writer::new(&ring);
/// let grant = writer.try_loan().unwrap();
/// assert_eq!(grant.commit(0, 0).seq, 1);
/// drop(writer.try_loan().unwrap()); // dropped: aborted, nothing published
/// assert_eq!(ring.head().0, 1);
/// ```
pub struct Writer<H: RingRef> {
    ring: H,
    next_seq: u64,
    head_slot: Option<u32>,
    pending: Option<u32>,
    /// A published slot kept out of the picks (see [`Writer::retain_head`]).
    retained: Option<u32>,
}

impl<H: RingRef> Writer<H> {
    /// Takes the writer role over a freshly initialised ring and opens it.
    pub fn new(ring: H) -> Self {
        ring.ring().open();
        Self {
            ring,
            next_seq: 1,
            head_slot: None,
            pending: None,
            retained: None,
        }
    }

    /// The ring handle.
    pub fn handle(&self) -> &H {
        &self.ring
    }

    /// The sequence number the next commit will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Loans a free slot without waiting. The choice: a slot no subscriber
    /// holds, that is not the newest frame, and (unless the policy is
    /// drop-oldest and nothing else is left) whose frame no lossless
    /// subscriber still needs; among those the one with the oldest frame.
    pub fn try_loan(&mut self) -> Result<WriteGrant<'_, H>, LoanError> {
        let slot = self.begin()?;
        Ok(WriteGrant { writer: self, slot })
    }

    /// The runtime-checked form of [`try_loan`](Self::try_loan), for
    /// language bindings that cannot hold a borrow: takes a slot and
    /// remembers it until [`commit_pending`](Self::commit_pending) or
    /// [`abort_pending`](Self::abort_pending). A second `begin` before
    /// either fails with [`LoanError::Pending`].
    ///
    /// ```
    /// # use cuframes_core::*;
    /// # let ctl = ControlBlock::new();
    /// # let slots: Vec<SlotHeader> = (0..4).map(|_| SlotHeader::new()).collect();
    /// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
    /// # let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
    /// # let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
    /// let mut writer = Writer::new(&ring);
    /// let slot = writer.begin().unwrap();
    /// assert_eq!(writer.begin(), Err(LoanError::Pending));
    /// assert_eq!(writer.commit_pending(0, 0).map(|c| (c.seq, c.slot)), Some((1, slot)));
    /// assert_eq!(writer.commit_pending(0, 0), None);
    /// ```
    pub fn begin(&mut self) -> Result<u32, LoanError> {
        if self.pending.is_some() {
            return Err(LoanError::Pending);
        }
        // A reader's transient bit (set, then withdrawn on a seq mismatch)
        // can make the CAS fail; rescan a bounded number of times.
        let ring = self.ring.ring();
        for _ in 0..ring.slots.len() * 4 {
            let pick = self.pick()?;
            let slot = &ring.slots[pick as usize];
            if slot
                .lease
                .compare_exchange(0, WRITER, Acquire, Relaxed)
                .is_ok()
            {
                if self.pinned_meanwhile(slot) {
                    slot.lease.fetch_and(!WRITER, Release);
                    // A reader that found the slot busy waits for this.
                    if ring.bump_notify() {
                        self.ring.wake(Wake::Readers);
                    }
                    continue;
                }
                // The old frame is gone from here on: readers that still look
                // it up by seq find 0 and back off.
                slot.seq.store(0, Relaxed);
                self.pending = Some(pick);
                return Ok(pick);
            }
        }
        Err(LoanError::Full)
    }

    /// Packet rings under Block: whether a lossless reader pinned the
    /// packet in `slot` (registering behind the head, at a keyframe) after
    /// this loan chose it. Fence to fence with the pin (`pin_cursor`): one
    /// of the two sees the other, and a pin is never silently overwritten.
    /// Frame pins are at the head, which no loan takes.
    fn pinned_meanwhile(&self, slot: &SlotHeader) -> bool {
        let ring = self.ring.ring();
        if !ring.is_packets() || ring.policy != LosslessPolicy::Block {
            return false;
        }
        crate::sync::fence(SeqCst);
        let seq = slot.seq.load(Relaxed);
        seq != 0 && seq >= min_lossless_cursor(ring.subs)
    }

    /// The slot loaned by [`begin`](Self::begin) as a typestate grant
    /// (commit it, or drop it to abort); `None` if no slot is loaned.
    pub fn grant_pending(&mut self) -> Option<WriteGrant<'_, H>> {
        let slot = self.pending?;
        Some(WriteGrant { writer: self, slot })
    }

    /// The slot loaned by [`begin`](Self::begin), if any.
    pub fn pending(&self) -> Option<u32> {
        self.pending
    }

    /// Publishes the slot loaned by [`begin`](Self::begin); `None` if none is.
    pub fn commit_pending(&mut self, pts_ns: i64, now_ns: u64) -> Option<Committed> {
        let slot = self.pending.take()?;
        let frame = PacketMeta {
            pts_ns,
            ..PacketMeta::default()
        };
        Some(self.publish(slot, &frame, now_ns))
    }

    /// Publishes the slot loaned by [`begin`](Self::begin) as a packet of
    /// a packet ring (see [`packet`](crate::packet)). On error the loan
    /// stays pending.
    ///
    /// ```
    /// # use cuframes_core::*;
    /// # let ctl = ControlBlock::new();
    /// # let slots: Vec<SlotHeader> = (0..4).map(|_| SlotHeader::new()).collect();
    /// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
    /// # let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
    /// let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap().for_packets(1000);
    /// let mut writer = Writer::new(&ring);
    /// writer.begin().unwrap();
    /// let big = PacketMeta { len: 1001, ..Default::default() };
    /// assert_eq!(writer.commit_packet(&big, 0), Err(CommitError::TooLarge { len: 1001, max: 1000 }));
    /// let key = PacketMeta { len: 1000, flags: packet::KEY, ..Default::default() };
    /// assert_eq!(writer.commit_packet(&key, 0).unwrap().seq, 1);
    /// assert_eq!(ring.last_key().0, 1);
    /// ```
    pub fn commit_packet(
        &mut self,
        meta: &PacketMeta,
        now_ns: u64,
    ) -> Result<Committed, CommitError> {
        let max = self.ring.ring().packet_max.ok_or(CommitError::NotPackets)?;
        if meta.len > max {
            return Err(CommitError::TooLarge { len: meta.len, max });
        }
        let slot = self.pending.take().ok_or(CommitError::NoLoan)?;
        Ok(self.publish(slot, meta, now_ns))
    }

    /// Gives back the slot loaned by [`begin`](Self::begin) unpublished;
    /// false if none is.
    pub fn abort_pending(&mut self) -> bool {
        let Some(slot) = self.pending.take() else {
            return false;
        };
        // Abort: seq stays 0 (set at loan), so the slot holds no frame.
        self.ring.ring().slots[slot as usize]
            .lease
            .fetch_and(!WRITER, Release);
        true
    }

    /// Keeps the newest frame's slot out of this writer's picks until
    /// [`release_retained`](Self::release_retained): the frame stays intact
    /// (and readable) while newer ones are written elsewhere. For a writer
    /// whose own process still refers to bytes it published in place, such
    /// as a media buffer that outlives its hand-off. One slot at a time (a
    /// second call moves the hold to the new head); `None` before the
    /// first commit. Writer-local: nothing in shared memory changes.
    ///
    /// ```
    /// # use cuframes_core::*;
    /// # let ctl = ControlBlock::new();
    /// # let slots: Vec<SlotHeader> = (0..3).map(|_| SlotHeader::new()).collect();
    /// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
    /// # let subs: Vec<SubscriberRecord> = (0..1).map(|_| SubscriberRecord::new()).collect();
    /// let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
    /// let mut writer = Writer::new(&ring);
    /// let kept = writer.try_loan().unwrap().commit(0, 0).slot;
    /// assert_eq!(writer.retain_head(), Some(kept));
    /// for _ in 0..5 {
    ///     assert_ne!(writer.try_loan().unwrap().commit(0, 0).slot, kept);
    /// }
    /// assert!(writer.release_retained());
    /// // Its frame is the oldest now: the next loan takes it.
    /// assert_eq!(writer.try_loan().unwrap().commit(0, 0).slot, kept);
    /// ```
    pub fn retain_head(&mut self) -> Option<u32> {
        self.retained = self.head_slot;
        self.retained
    }

    /// Ends [`retain_head`](Self::retain_head); false if nothing was retained.
    pub fn release_retained(&mut self) -> bool {
        self.retained.take().is_some()
    }

    /// Whether [`try_loan`](Self::try_loan) would find a slot now, without
    /// taking it (for waiting loops).
    pub fn poll_loan(&self) -> Result<(), LoanError> {
        self.pick().map(drop)
    }

    fn pick(&self) -> Result<u32, LoanError> {
        let ring = self.ring.ring();
        if self.next_seq > MAX_SEQ {
            return Err(LoanError::SeqExhausted);
        }
        if ring.is_closed() {
            return Err(LoanError::Closed);
        }
        // Dropping a frame a lossless subscriber needs is a last resort: if
        // an unneeded slot is leased, the lease may be a reader's probe in
        // flight (set and withdrawn within a few instructions), so look
        // again a few times before giving that frame up.
        let mut rescans = 0;
        loop {
            let c = self.candidates(ring);
            return match (c.oldest_unneeded, c.oldest_any, ring.policy) {
                (Some((_, i)), _, _) => Ok(i),
                (None, Some(_), LosslessPolicy::DropOldest)
                    if c.probed_unneeded && rescans < PROBE_RESCANS =>
                {
                    rescans += 1;
                    crate::sync::spin_hint();
                    continue;
                }
                (None, Some((_, i)), LosslessPolicy::DropOldest) => Ok(i),
                (None, Some(_), LosslessPolicy::Block) => Err(LoanError::Backpressure),
                // The scan is not atomic: a reader may release one slot and
                // probe another behind it, so a pass can see every slot
                // leased although the hold budget leaves one free. Look
                // again before believing it.
                (None, None, _) if rescans < PROBE_RESCANS => {
                    rescans += 1;
                    crate::sync::spin_hint();
                    continue;
                }
                (None, None, _) => Err(LoanError::Full),
            };
        }
    }

    /// One pass over the slots: the oldest free slot that no lossless
    /// subscriber needs, the oldest free slot at all, and whether some
    /// unneeded slot is leased.
    fn candidates(&self, ring: &crate::ring::Ring<'_>) -> Candidates {
        let min_cursor = min_lossless_cursor(ring.subs);
        let mut c = Candidates::default();
        for (i, s) in ring.slots.iter().enumerate() {
            let i = i as u32;
            if Some(i) == self.head_slot || Some(i) == self.retained {
                continue;
            }
            let seq = s.seq.load(Relaxed);
            let needed = seq != 0 && seq >= min_cursor;
            if s.lease.load(Relaxed) != 0 {
                c.probed_unneeded |= !needed;
                continue;
            }
            let better = |best: Option<(u64, u32)>| best.is_none_or(|(b, _)| seq < b);
            if better(c.oldest_any) {
                c.oldest_any = Some((seq, i));
            }
            if !needed && better(c.oldest_unneeded) {
                c.oldest_unneeded = Some((seq, i));
            }
        }
        c
    }

    /// Evicts the lossless subscribers that keep every free slot needed
    /// (the std layer calls this once the block timeout ran out with the
    /// loan still refused with [`LoanError::Backpressure`]): their cursors
    /// no longer hold the writer back. Lease bits are not touched: the
    /// frames they hold stay intact. Each evicted subscriber's next read
    /// reports [`ReadError::Lagged`](crate::ReadError::Lagged) and goes on
    /// from the newest frame. Returns which were evicted: bit *i* set for
    /// record *i* (its lease bit), so a caller can say who.
    ///
    /// ```
    /// # use cuframes_core::*;
    /// # let ctl = ControlBlock::new();
    /// # let slots: Vec<SlotHeader> = (0..3).map(|_| SlotHeader::new()).collect();
    /// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
    /// # let subs: Vec<SubscriberRecord> = (0..1).map(|_| SubscriberRecord::new()).collect();
    /// let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
    /// let mut writer = Writer::new(&ring);
    /// let req = Register { mode: Mode::Queue, max_held: 1, pid: 1, start_time: 0, pid_ns: 0, heartbeat_ns: 0, name: b"slow" };
    /// let sub = Subscription::register(&ring, &req).unwrap();
    /// for _ in 0..3 {
    ///     writer.try_loan().unwrap().commit(0, 0); // seqs 1..=3, none read
    /// }
    /// assert_eq!(writer.try_loan().unwrap_err(), LoanError::Backpressure);
    /// assert_eq!(writer.evict_laggards(), 1 << sub.token().index());
    /// writer.try_loan().unwrap().commit(0, 0); // seq 4 overwrites seq 1
    /// assert_eq!(sub.try_read().unwrap_err(), ReadError::Lagged);
    /// assert_eq!(sub.try_read().unwrap().seq(), 4);
    /// assert_eq!(ring.stats().active().next().unwrap().dropped, 3); // seqs 1..=3
    /// ```
    pub fn evict_laggards(&self) -> u64 {
        let ring = self.ring.ring();
        let Some((oldest, _)) = self.candidates(ring).oldest_any else {
            return 0;
        };
        let mut evicted = 0;
        for (i, r) in ring.subs.iter().enumerate() {
            if record::state_of(r.state.load(SeqCst)) != record::ACTIVE {
                continue;
            }
            let c = r.cursor.load(SeqCst);
            if lossless_cursor(c).is_some_and(|c| c <= oldest)
                && r.cursor
                    .compare_exchange(c, c | EVICTED, SeqCst, Relaxed)
                    .is_ok()
            {
                r.evictions.fetch_add(1, Relaxed);
                evicted |= 1 << i;
            }
        }
        evicted
    }

    /// Closes the stream: no more loans; subscribers get `Closed` once they
    /// have read what is left. A slot loaned with [`begin`](Self::begin)
    /// and not yet committed is aborted, so nothing is published after the
    /// close.
    pub fn close(&mut self) {
        self.abort_pending();
        if self.ring.ring().close() {
            self.ring.wake(Wake::Readers);
        }
    }
}

/// Rescans before a needed frame is dropped because an unneeded slot was
/// leased (a probe in flight, most likely), or before `Full` is reported
/// from a scan that raced readers.
const PROBE_RESCANS: usize = 16;

#[derive(Default)]
struct Candidates {
    oldest_unneeded: Option<(u64, u32)>,
    oldest_any: Option<(u64, u32)>,
    probed_unneeded: bool,
}

impl<H: RingRef> Writer<H> {
    fn publish(&mut self, slot: u32, meta: &PacketMeta, now_ns: u64) -> Committed {
        let seq = self.next_seq;
        let ring = self.ring.ring();
        let s = &ring.slots[slot as usize];
        s.pts_ns.store(meta.pts_ns as u64, Relaxed);
        s.commit_ns.store(now_ns, Relaxed);
        s.flags.store(meta.flags, Relaxed);
        s.dts_ns.store(meta.dts_ns as u64, Relaxed);
        s.duration_ns.store(meta.duration_ns, Relaxed);
        s.len.store(meta.len, Relaxed);
        s.seq.store(seq, Relaxed);
        let word = pack(seq, slot);
        ring.index[(seq as usize) & (ring.index.len() - 1)].store(word, Release);
        if meta.is_key() {
            let (prev, _) = unpack(ring.ctl.last_key.swap(word, Release));
            if prev != 0 {
                // Saturating: another process may have scribbled on it.
                ring.ctl.gop.store(seq.saturating_sub(prev), Relaxed);
            }
        }
        if meta.len != 0 {
            ring.ctl.bytes.fetch_add(meta.len, Relaxed);
        }
        // Release: the frame's bytes and header happen-before any reader
        // whose acquiring fetch_or sees WRITER clear.
        s.lease.fetch_and(!WRITER, Release);
        ring.ctl.head.store(word, SeqCst);
        ring.ctl.published.fetch_add(1, Relaxed);
        ring.ctl.last_commit_ns.store(now_ns, Relaxed);
        self.next_seq += 1;
        self.head_slot = Some(slot);
        if ring.bump_notify() {
            self.ring.wake(Wake::Readers);
        }
        Committed { seq, slot }
    }
}

fn min_lossless_cursor(subs: &[SubscriberRecord]) -> u64 {
    subs.iter()
        .filter(|r| record::state_of(r.state.load(SeqCst)) == record::ACTIVE)
        .filter_map(|r| lossless_cursor(r.cursor.load(SeqCst)))
        .min()
        .unwrap_or(NO_CURSOR)
}

/// A loaned slot: the writer alone may fill it. [`commit`](Self::commit)
/// publishes it; dropping it aborts (the slot returns empty and nothing is
/// published). Committing consumes the grant, so committing twice does not
/// compile:
///
/// ```compile_fail
/// # use cuframes_core::*;
/// # let ctl = ControlBlock::new();
/// # let slots: Vec<SlotHeader> = (0..4).map(|_| SlotHeader::new()).collect();
/// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
/// # let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
/// # let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
/// let mut writer = Writer::new(&ring);
/// let grant = writer.try_loan().unwrap();
/// grant.commit(0, 0);
/// grant.commit(0, 0); // error: use of moved value
/// ```
///
/// Nor can a second slot be loaned while one is out:
///
/// ```compile_fail
/// # use cuframes_core::*;
/// # let ctl = ControlBlock::new();
/// # let slots: Vec<SlotHeader> = (0..4).map(|_| SlotHeader::new()).collect();
/// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
/// # let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
/// # let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
/// let mut writer = Writer::new(&ring);
/// let a = writer.try_loan().unwrap();
/// let b = writer.try_loan().unwrap(); // error: writer already borrowed
/// a.commit(0, 0);
/// ```
#[must_use = "dropping a write grant aborts it; call commit to publish"]
pub struct WriteGrant<'w, H: RingRef> {
    writer: &'w mut Writer<H>,
    slot: u32,
}

impl<H: RingRef> WriteGrant<'_, H> {
    /// The slot being written (index into the slot data).
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The sequence number this frame will get.
    pub fn seq(&self) -> u64 {
        self.writer.next_seq
    }

    /// Publishes the frame with its presentation timestamp and the commit
    /// time (monotonic nanoseconds, for latency), wakes waiting subscribers,
    /// and returns its sequence number.
    pub fn commit(self, pts_ns: i64, now_ns: u64) -> Committed {
        let committed = self.writer.commit_pending(pts_ns, now_ns);
        // Published: the abort in Drop must not run.
        core::mem::forget(self);
        committed.expect("a live grant is the pending loan")
    }
}

impl<H: RingRef> core::fmt::Debug for WriteGrant<'_, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WriteGrant")
            .field("slot", &self.slot)
            .field("seq", &self.seq())
            .finish()
    }
}

impl<H: RingRef> Drop for WriteGrant<'_, H> {
    fn drop(&mut self) {
        self.writer.abort_pending();
    }
}
