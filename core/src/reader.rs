//! Reading: the NEWEST_ONLY and QUEUE acquire paths and the [`ReadGrant`]
//! typestate (held until released or dropped).

use crate::layout::*;
use crate::registry::RecordToken;
use crate::ring::{Ring, RingRef, Wake};
use crate::sync::Ordering::*;

/// Why no frame was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// No frame newer than the last one yet: wait on `notify`.
    WouldBlock,
    /// The publisher closed the stream and nothing is left to read.
    Closed,
    /// This subscriber already holds `max_held` frames.
    HoldLimit,
    /// The record no longer belongs to this token (it was deregistered, or
    /// recovered after its owner was found dead).
    Evicted,
    /// This lossless subscriber lagged past the writer's block timeout and
    /// was evicted from lossless duty: its cursor now starts at the newest
    /// frame and the frames skipped are counted as dropped. Not final: the
    /// next read goes on from there. Frames it holds stay intact.
    Lagged,
    /// Shared memory contradicts the protocol (hostile or corrupt).
    Corrupt,
}

/// A held frame: its slot cannot be rewritten until the grant is released
/// (by [`release`](Self::release) or by dropping it). Releasing consumes the
/// grant, so a released frame cannot be used:
///
/// ```compile_fail
/// # use cuframes_core::*;
/// # let ctl = ControlBlock::new();
/// # let slots: Vec<SlotHeader> = (0..4).map(|_| SlotHeader::new()).collect();
/// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
/// # let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
/// # let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
/// # let mut writer = Writer::new(&ring);
/// # let req = Register { mode: Mode::NewestOnly, max_held: 1, pid: 1, start_time: 0, pid_ns: 0, heartbeat_ns: 0, name: b"" };
/// # let sub = Subscription::register(&ring, &req).unwrap();
/// # writer.try_loan().unwrap().commit(0, 0);
/// let frame = sub.try_read().unwrap();
/// frame.release();
/// let _ = frame.seq(); // error: borrow of moved value
/// ```
#[must_use = "a read grant releases its frame when dropped"]
pub struct ReadGrant<H: RingRef> {
    ring: H,
    bit: u64,
    record: u32,
    generation: u64,
    slot: u32,
    seq: u64,
    pts_ns: i64,
    commit_ns: u64,
    meta: crate::PacketMeta,
}

/// A frame a read holds, before it is handed out with its handle.
struct Taken {
    meta: crate::PacketMeta,
    bit: u64,
    slot: u32,
    seq: u64,
    pts_ns: i64,
    commit_ns: u64,
}

impl Taken {
    /// The grant that keeps `ring` and releases the frame when dropped.
    fn grant<H: RingRef>(self, token: &RecordToken, ring: H) -> ReadGrant<H> {
        ReadGrant {
            meta: self.meta,
            bit: self.bit,
            record: token.index,
            generation: token.generation,
            slot: self.slot,
            seq: self.seq,
            pts_ns: self.pts_ns,
            commit_ns: self.commit_ns,
            ring,
        }
    }
}

impl<H: RingRef> ReadGrant<H> {
    /// Takes the next frame for the subscriber `token` without waiting:
    /// the newest frame (NEWEST_ONLY) or the next in sequence (QUEUE).
    /// `ring` is the handle the grant keeps; it must lead to the ring the
    /// token was registered on.
    pub fn acquire(ring: H, token: &RecordToken) -> Result<Self, ReadError> {
        let taken = Self::take(&ring, token)?;
        Ok(taken.grant(token, ring))
    }

    /// [`acquire`](Self::acquire) through a borrowed handle, cloned only
    /// when there is a frame: a busy-poll subscriber's empty polls then
    /// cost no clone of it.
    ///
    /// ```
    /// # use cuframes_core::*;
    /// # let ctl = ControlBlock::new();
    /// # let slots: Vec<SlotHeader> = (0..3).map(|_| SlotHeader::new()).collect();
    /// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
    /// # let subs: Vec<SubscriberRecord> = (0..1).map(|_| SubscriberRecord::new()).collect();
    /// let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
    /// let mut writer = Writer::new(&ring);
    /// let req = Register { mode: Mode::NewestOnly, max_held: 1, pid: 1, start_time: 0, pid_ns: 0, heartbeat_ns: 0, name: b"s" };
    /// let sub = Subscription::register(&ring, &req).unwrap();
    /// let handle = &ring;
    /// assert_eq!(ReadGrant::acquire_cloned(&handle, sub.token()).unwrap_err(), ReadError::WouldBlock);
    /// writer.try_loan().unwrap().commit(0, 0);
    /// assert_eq!(ReadGrant::acquire_cloned(&handle, sub.token()).unwrap().seq(), 1);
    /// ```
    pub fn acquire_cloned(ring: &H, token: &RecordToken) -> Result<Self, ReadError>
    where
        H: Clone,
    {
        let taken = Self::take(ring, token)?;
        Ok(taken.grant(token, ring.clone()))
    }

    /// The read itself: holds a frame for `token` and says which.
    fn take(ring: &H, token: &RecordToken) -> Result<Taken, ReadError> {
        let r = ring.ring();
        let rec = r.subs.get(token.index as usize).ok_or(ReadError::Corrupt)?;
        if rec.state.load(Acquire) != record::word(token.generation, record::ACTIVE) {
            return Err(ReadError::Evicted);
        }
        if r.nothing_new(rec, token) {
            return Err(ReadError::WouldBlock);
        }
        // Reserve the hold before probing, in one step (threads may share a
        // subscription): a probe in flight counts against `max_held`, so no
        // record ever has more lease bits set than its `max_held`, which is
        // what the hold budget leaves the writer room for.
        rec.held
            .fetch_update(Relaxed, Relaxed, |h| (h < token.max_held).then_some(h + 1))
            .map_err(|_| ReadError::HoldLimit)?;
        crate::sync::crash_point(); // A1 done
        let bit = 1u64 << token.index;
        let mut withdrew = false;
        let got = match (token.mode, r.is_packets()) {
            (Mode::NewestOnly, false) => r.acquire_newest(rec, bit, &mut withdrew),
            (Mode::NewestOnly, true) => r.acquire_packet_newest(rec, bit, &mut withdrew),
            (Mode::Queue, _) => r.acquire_queue(rec, bit, &mut withdrew),
        };
        // The length is read once, under the hold: the value checked is the
        // value handed out.
        let got = got.and_then(|(slot, seq)| {
            let len = r.slots[slot as usize].len.load(Relaxed);
            if r.packet_max.is_some_and(|max| len > max) {
                // Hostile memory: give it back. A queue cursor already
                // stepped past it, so it counts as lost.
                r.withdraw(slot, bit, &mut withdrew);
                if token.mode == Mode::Queue {
                    rec.dropped.fetch_add(1, Relaxed);
                }
                return Err(ReadError::Corrupt);
            }
            Ok((slot, seq, len))
        });
        // A withdrawn probe may have made the writer's CAS fail: tell a
        // waiting writer, so it rescans now rather than after its nap.
        if withdrew && r.bump_space() {
            ring.wake(Wake::Writer);
        }
        let (slot, seq, len) = match got {
            Ok(v) => v,
            Err(e) => {
                let _ = rec
                    .held
                    .fetch_update(Relaxed, Relaxed, |h| h.checked_sub(1));
                return Err(e);
            }
        };
        rec.received.fetch_add(1, Relaxed);
        rec.last_seq.store(seq, Relaxed);
        let s = &r.slots[slot as usize];
        let (pts_ns, commit_ns) = (s.pts_ns.load(Relaxed) as i64, s.commit_ns.load(Relaxed));
        let meta = crate::PacketMeta {
            len,
            pts_ns,
            dts_ns: s.dts_ns.load(Relaxed) as i64,
            duration_ns: s.duration_ns.load(Relaxed),
            flags: s.flags.load(Relaxed),
        };
        Ok(Taken {
            meta,
            bit,
            slot,
            seq,
            pts_ns,
            commit_ns,
        })
    }

    /// The frame's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The slot holding it.
    pub fn slot(&self) -> u32 {
        self.slot
    }
    /// Presentation timestamp given at commit.
    pub fn pts_ns(&self) -> i64 {
        self.pts_ns
    }
    /// Monotonic commit time given at commit.
    pub fn commit_ns(&self) -> u64 {
        self.commit_ns
    }
    /// The ring handle.
    pub fn handle(&self) -> &H {
        &self.ring
    }
    /// Packet rings: the packet's metadata as committed (zero for frames).
    pub fn packet(&self) -> &crate::PacketMeta {
        &self.meta
    }
    /// Packet rings: payload bytes.
    pub fn len(&self) -> u64 {
        self.meta.len
    }
    /// Packet rings: whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.meta.len == 0
    }
    /// Packet rings: whether the packet is a keyframe.
    pub fn is_key(&self) -> bool {
        self.meta.is_key()
    }

    /// Releases the frame; its slot may be reused.
    pub fn release(self) {
        drop(self)
    }
}

impl<H: RingRef> Drop for ReadGrant<H> {
    fn drop(&mut self) {
        let ring = self.ring.ring();
        let Some(rec) = ring.subs.get(self.record as usize) else {
            return;
        };
        // Only while the record is still the one that took the frame. Once
        // it was deregistered or reclaimed its bits were cleared already,
        // and after a re-claim the bit (and `held`) belong to the new
        // owner, who may hold this very slot.
        if rec.state.load(Acquire) != record::word(self.generation, record::ACTIVE) {
            return;
        }
        ring.slots[self.slot as usize]
            .lease
            .fetch_and(!self.bit, Release);
        crate::sync::crash_point(); // L2 done
                                    // Saturating: hostile memory may have zeroed it.
        let _ = rec
            .held
            .fetch_update(Relaxed, Relaxed, |h| h.checked_sub(1));
        crate::sync::crash_point(); // L3 done
        if ring.bump_space() {
            self.ring.wake(Wake::Writer);
        }
    }
}

impl<H: RingRef> core::fmt::Debug for ReadGrant<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadGrant")
            .field("seq", &self.seq)
            .field("slot", &self.slot)
            .field("pts_ns", &self.pts_ns)
            .finish()
    }
}

/// Bound on retries when the writer keeps overtaking a reader; past it the
/// reader waits for the next commit like any other.
pub(crate) const MAX_RETRIES: usize = 64;

impl Ring<'_> {
    /// True when a read by `token`, whose record `rec` was found active,
    /// would find nothing and report nothing: the stream is open, the
    /// subscriber is below its hold limit, and no frame is newer than its
    /// last (NEWEST_ONLY) or at its cursor (QUEUE). Loads only: a
    /// busy-poll subscriber polls millions of times a second, and a read
    /// goes on with two read-modify-writes. Packet rings, an evicted cursor
    /// and every other case say false and take the full read, which
    /// reports them.
    fn nothing_new(&self, rec: &SubscriberRecord, token: &RecordToken) -> bool {
        if self.is_packets() || rec.held.load(Relaxed) >= token.max_held || self.is_closed() {
            return false;
        }
        let (head, _) = self.head();
        match token.mode {
            Mode::NewestOnly => head <= rec.last_seq.load(Relaxed),
            Mode::Queue => {
                let want = rec.cursor.load(SeqCst);
                want & EVICTED == 0 && want > head
            }
        }
    }

    /// Sets `bit` on `slot` and keeps it only if the slot is not being
    /// written and still holds `seq`. A slot that visibly fails either test
    /// is skipped without setting the bit, so a stale lookup rarely costs
    /// the writer a failed CAS; `withdrew` tells the caller when a bit was
    /// set and taken back.
    pub(crate) fn try_hold(
        &self,
        slot: u32,
        seq: u64,
        bit: u64,
        withdrew: &mut bool,
    ) -> Result<bool, ReadError> {
        let s = self.slots.get(slot as usize).ok_or(ReadError::Corrupt)?;
        if s.lease.load(Relaxed) & WRITER != 0 || s.seq.load(Relaxed) != seq {
            return Ok(false);
        }
        let prev = s.lease.fetch_or(bit, AcqRel);
        crate::sync::crash_point(); // T1 done
        if prev & bit != 0 {
            // Our bit is already there: another thread of this subscription
            // holds this very frame (one bit per subscriber, so a frame is
            // held at most once per subscriber), or hostile memory set it.
            // Either way it is not ours to set or withdraw: a miss.
            return Ok(false);
        }
        if prev & WRITER == 0 && s.seq.load(Acquire) == seq {
            crate::sync::crash_point(); // T2: held
            return Ok(true);
        }
        self.withdraw(slot, bit, withdrew);
        Ok(false)
    }

    /// Takes back a reader's bit set by [`try_hold`](Self::try_hold).
    pub(crate) fn withdraw(&self, slot: u32, bit: u64, withdrew: &mut bool) {
        self.slots[slot as usize].lease.fetch_and(!bit, Release);
        crate::sync::crash_point(); // T3 done: withdrawn
        *withdrew = true;
    }

    fn acquire_newest(
        &self,
        rec: &SubscriberRecord,
        bit: u64,
        withdrew: &mut bool,
    ) -> Result<(u32, u64), ReadError> {
        let last = rec.last_seq.load(Relaxed);
        for _ in 0..MAX_RETRIES {
            let closed = self.is_closed();
            let (seq, slot) = self.head();
            if seq == 0 || seq <= last {
                return Err(if closed {
                    ReadError::Closed
                } else {
                    ReadError::WouldBlock
                });
            }
            if self.try_hold(slot, seq, bit, withdrew)? {
                if last != 0 {
                    rec.dropped.fetch_add(seq - last - 1, Relaxed);
                }
                return Ok((slot, seq));
            }
            crate::sync::spin_hint();
        }
        Err(ReadError::WouldBlock)
    }

    fn acquire_queue(
        &self,
        rec: &SubscriberRecord,
        bit: u64,
        withdrew: &mut bool,
    ) -> Result<(u32, u64), ReadError> {
        for _ in 0..MAX_RETRIES {
            // Re-read every round: the writer may evict us (flag the
            // cursor EVICTED) at any time, and every cursor move below is a
            // CAS so an eviction is never overwritten.
            let want = rec.cursor.load(SeqCst);
            if want & EVICTED != 0 {
                return Err(self.rejoin(rec, want));
            }
            if want == 0 {
                return Err(ReadError::Corrupt);
            }
            let closed = self.is_closed();
            let (head, _) = self.head();
            if want > head {
                return Err(if closed {
                    ReadError::Closed
                } else {
                    ReadError::WouldBlock
                });
            }
            let (seq, slot) = self.indexed(want);
            // A packet is taken only where a decoder can go on from.
            let last = rec.last_seq.load(Relaxed);
            let packets = self.is_packets();
            let ok = |flags| !packets || Self::continues(last, want, flags);
            if seq == want {
                if let Some(got) = self.hold_if(slot, want, bit, withdrew, ok)? {
                    // If this fails we were evicted after reading the cursor:
                    // the frame is held all the same; the next read reports it.
                    let _ = rec.cursor.compare_exchange(want, want + 1, SeqCst, Relaxed);
                    crate::sync::crash_point(); // Q4 done
                    return Ok(got);
                }
                // A packet busy, not gone: the slot still holds `want` (a
                // loan that found it pinned gives it back, and wakes us).
                let s = &self.slots[slot as usize];
                if packets && s.seq.load(Acquire) == want && ok(s.flags.load(Relaxed)) {
                    return Err(ReadError::WouldBlock);
                }
            }
            // Frame `want` was overwritten (drop-oldest): skip to the oldest
            // frame still present, counting what was lost. Packets skip to
            // the oldest keyframe present, or past the head to wait for one.
            let oldest = if packets {
                self.next_key_after(want, head).unwrap_or(head + 1)
            } else {
                self.slots
                    .iter()
                    .map(|s| s.seq.load(Acquire))
                    .filter(|&s| s > want && s <= head)
                    .min()
                    .unwrap_or(head)
            };
            if rec
                .cursor
                .compare_exchange(want, oldest, SeqCst, Relaxed)
                .is_ok()
            {
                crate::sync::crash_point(); // frame gone: cursor moved on
                rec.dropped.fetch_add(oldest - want, Relaxed);
                // A packet reader skipping forward may free a writer that
                // waits under Block: tell it.
                *withdrew |= packets;
            }
            crate::sync::spin_hint();
        }
        Err(ReadError::WouldBlock)
    }

    /// A lossless subscriber the writer evicted starts again at the newest
    /// frame, counting the frames it skipped.
    fn rejoin(&self, rec: &SubscriberRecord, evicted: u64) -> ReadError {
        // Back at the head, packets too: a pin at an older keyframe would
        // hand the writer back a ring it has just found too full.
        let pinned = self.pin_cursor(rec, false);
        if evicted != NO_CURSOR {
            // From the first seq it did not get: an eviction that raced the
            // cursor step of its last read left the cursor on that one.
            let from = (evicted & !EVICTED).max(rec.last_seq.load(Relaxed).saturating_add(1));
            rec.dropped.fetch_add(pinned.saturating_sub(from), Relaxed);
        }
        ReadError::Lagged
    }
}
