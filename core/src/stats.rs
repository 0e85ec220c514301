//! Ring-wide statistics any process can read: occupancy, lag, drops.

use crate::layout::*;
use crate::ring::Ring;
use crate::sync::Ordering::*;

/// One subscriber as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Record index (its lease bit).
    pub index: u32,
    /// Record generation.
    pub generation: u64,
    /// Read mode, if the stored number is valid.
    pub mode: Option<Mode>,
    /// Holder's process id.
    pub pid: u32,
    /// Holder's process start time.
    pub start_time: u64,
    /// Holder's pid namespace.
    pub pid_ns: u64,
    /// Name bytes (NUL padded).
    pub name: [u8; NAME_LEN],
    /// Frames held now.
    pub held: u32,
    /// Frames received.
    pub received: u64,
    /// Frames lost (queue) or skipped (newest-only).
    pub dropped: u64,
    /// Last seq received.
    pub last_seq: u64,
    /// Frames published that it has not read yet.
    pub lag: u64,
    /// Heartbeat, monotonic nanoseconds.
    pub heartbeat_ns: u64,
    /// Times the writer evicted it from lossless duty.
    pub evictions: u64,
}

impl SubscriberStats {
    /// The name as text (lossy: invalid UTF-8 yields `"?"`).
    pub fn name_str(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

/// A snapshot of a ring. Fields are read one by one without stopping the
/// writer, so they are each exact but not mutually atomic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingStats {
    /// Newest committed seq (0: none).
    pub head_seq: u64,
    /// Frames committed.
    pub published: u64,
    /// Stream state (see [`state`]).
    pub state: u32,
    /// Slots held by subscribers or still needed by a lossless subscriber.
    pub occupancy: u32,
    /// Slots in the ring.
    pub slot_count: u32,
    /// Whether the writer holds a slot now.
    pub writing: bool,
    /// Publish rate, milli-frames per second.
    pub rate_mfps: u64,
    /// Publisher heartbeat, monotonic nanoseconds.
    pub heartbeat_ns: u64,
    /// Monotonic nanoseconds of the last commit.
    pub last_commit_ns: u64,
    /// Packet streams: payload bytes committed.
    pub bytes: u64,
    /// Packet streams: payload bit rate (moving average), bits per second.
    pub bitrate_bps: u64,
    /// Packet streams: packets from one keyframe to the next (0 until two
    /// were seen).
    pub gop: u64,
    /// Packet streams: seq of the newest keyframe (0: none yet).
    pub last_key_seq: u64,
    /// Active subscribers.
    pub subscribers: [Option<SubscriberStats>; MAX_SUBSCRIBERS as usize],
}

impl RingStats {
    /// The active subscribers.
    pub fn active(&self) -> impl Iterator<Item = &SubscriberStats> {
        self.subscribers.iter().flatten()
    }
}

impl Ring<'_> {
    /// Reads a statistics snapshot.
    ///
    /// ```
    /// # use cuframes_core::*;
    /// # let ctl = ControlBlock::new();
    /// # let slots: Vec<SlotHeader> = (0..4).map(|_| SlotHeader::new()).collect();
    /// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
    /// # let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
    /// let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
    /// let mut writer = Writer::new(&ring);
    /// let req = Register { mode: Mode::NewestOnly, max_held: 1, pid: 7, start_time: 0, pid_ns: 0, heartbeat_ns: 0, name: b"viewer" };
    /// let sub = Subscription::register(&ring, &req).unwrap();
    /// writer.try_loan().unwrap().commit(0, 0);
    /// writer.try_loan().unwrap().commit(0, 0);
    /// let frame = sub.try_read().unwrap();
    /// let stats = ring.stats();
    /// assert_eq!(stats.occupancy, 1);
    /// let me = stats.active().next().unwrap();
    /// assert_eq!((me.name_str(), me.held, me.lag), ("viewer", 1, 0));
    /// ```
    pub fn stats(&self) -> RingStats {
        let (head_seq, _) = self.head();
        let mut subscribers = [None; MAX_SUBSCRIBERS as usize];
        let mut min_cursor = NO_CURSOR;
        for (i, r) in self.subs.iter().enumerate() {
            let word = r.state.load(Acquire);
            if record::state_of(word) != record::ACTIVE {
                continue;
            }
            let mode = Mode::from_u32(r.mode.load(Relaxed));
            let last_seq = r.last_seq.load(Relaxed);
            let cursor = r.cursor.load(Relaxed);
            let lag = match mode {
                Some(Mode::Queue) if lossless_cursor(cursor).is_some() => {
                    min_cursor = min_cursor.min(cursor);
                    (head_seq + 1).saturating_sub(cursor)
                }
                _ => head_seq.saturating_sub(last_seq),
            };
            subscribers[i] = Some(SubscriberStats {
                index: i as u32,
                generation: record::generation_of(word),
                mode,
                pid: r.pid.load(Relaxed),
                start_time: r.start_time.load(Relaxed),
                pid_ns: r.pid_ns.load(Relaxed),
                name: self.record_name(i as u32),
                held: r.held.load(Relaxed),
                received: r.received.load(Relaxed),
                dropped: r.dropped.load(Relaxed),
                last_seq,
                lag,
                heartbeat_ns: r.heartbeat_ns.load(Relaxed),
                evictions: r.evictions.load(Relaxed),
            });
        }
        let mut occupancy = 0;
        let mut writing = false;
        for s in self.slots {
            let lease = s.lease.load(Relaxed);
            writing |= lease & WRITER != 0;
            let seq = s.seq.load(Relaxed);
            if lease & !WRITER != 0 || (seq != 0 && seq >= min_cursor) {
                occupancy += 1;
            }
        }
        RingStats {
            head_seq,
            published: self.ctl.published.load(Relaxed),
            state: self.ctl.state.load(Relaxed),
            occupancy,
            slot_count: self.slot_count(),
            writing,
            rate_mfps: self.ctl.rate_mfps.load(Relaxed),
            heartbeat_ns: self.ctl.heartbeat_ns.load(Relaxed),
            last_commit_ns: self.ctl.last_commit_ns.load(Relaxed),
            bytes: self.ctl.bytes.load(Relaxed),
            bitrate_bps: self.ctl.bitrate_bps.load(Relaxed),
            gop: self.ctl.gop.load(Relaxed),
            last_key_seq: self.last_key().0,
            subscribers,
        }
    }
}
