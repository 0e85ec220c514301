//! Subscriber records: claim, release, and reclaim after a holder died.

use crate::layout::*;
use crate::ring::{Ring, RingRef, Wake};
use crate::sync::Ordering::*;

/// What a subscriber asks for when it registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register<'n> {
    /// How it reads.
    pub mode: Mode,
    /// Most frames it will hold at once (>= 1).
    pub max_held: u32,
    /// Its process id (for liveness checks by others).
    pub pid: u32,
    /// Its process start time.
    pub start_time: u64,
    /// Its pid namespace (0: unknown).
    pub pid_ns: u64,
    /// Its first heartbeat (monotonic ns): set before the record is
    /// visible, so a sweeper in another pid namespace never sees a new
    /// record as silent.
    pub heartbeat_ns: u64,
    /// A name for listings (up to 32 bytes are kept).
    pub name: &'n [u8],
}

/// Why registration failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// Every record is taken.
    NoRecord,
    /// The frames subscribers may hold would leave the writer without a
    /// slot: `slot_count >= sum(max_held) + 2` must hold.
    HoldBudget,
    /// `max_held` is zero.
    InvalidArgument,
    /// The stream is closed.
    Closed,
}

/// Proof of an active subscriber record. Not `Clone`: exactly one owner
/// reads through it and finally hands it to [`Ring::deregister`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a dropped token leaves its record taken until reclaimed"]
pub struct RecordToken {
    pub(crate) index: u32,
    pub(crate) generation: u32,
    pub(crate) mode: Mode,
    pub(crate) max_held: u32,
}

impl RecordToken {
    /// The record index, which is also the subscriber's lease bit.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// How this subscriber reads.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Most frames it may hold at once.
    pub fn max_held(&self) -> u32 {
        self.max_held
    }
}

impl Ring<'_> {
    /// Claims a free subscriber record. A new subscriber's first frame is
    /// the newest one at the time it registers.
    pub fn register(&self, req: &Register<'_>) -> Result<RecordToken, RegisterError> {
        if req.max_held == 0 || req.max_held > MAX_SLOTS {
            return Err(RegisterError::InvalidArgument);
        }
        if self.is_closed() {
            return Err(RegisterError::Closed);
        }
        // A lost CAS (another claimer, or a FREE record read stale) just
        // moves on to the next record.
        let (index, r, generation) = self
            .subs
            .iter()
            .enumerate()
            .find_map(|(i, r)| {
                let w = r.state.load(Relaxed);
                let next = record::generation_of(w).wrapping_add(1);
                let claiming = record::word(next, record::CLAIMING);
                let claimed = record::state_of(w) == record::FREE
                    && r.state
                        .compare_exchange(w, claiming, Acquire, Relaxed)
                        .is_ok();
                claimed.then_some((i, r, next))
            })
            .ok_or(RegisterError::NoRecord)?;
        r.mode.store(req.mode as u32, Relaxed);
        r.max_held.store(req.max_held, Relaxed);
        r.pid.store(req.pid, Relaxed);
        r.start_time.store(req.start_time, Relaxed);
        r.pid_ns.store(req.pid_ns, Relaxed);
        r.held.store(0, Relaxed);
        r.cursor.store(NO_CURSOR, Relaxed);
        r.last_seq.store(0, Relaxed);
        r.received.store(0, Relaxed);
        r.dropped.store(0, Relaxed);
        r.heartbeat_ns.store(req.heartbeat_ns, Relaxed);
        let mut name = [0u8; NAME_LEN];
        let n = req.name.len().min(NAME_LEN);
        name[..n].copy_from_slice(&req.name[..n]);
        for (word, chunk) in r.name.iter().zip(name.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            word.store(u64::from_le_bytes(b), Relaxed);
        }
        r.state
            .store(record::word(generation, record::ACTIVE), SeqCst);
        let token = RecordToken {
            index: index as u32,
            generation,
            mode: req.mode,
            max_held: req.max_held,
        };

        // Checked after becoming visible, so two racing registrations cannot
        // both squeeze past the budget (at worst both back out).
        let held: u64 = self
            .subs
            .iter()
            .filter(|r| record::state_of(r.state.load(SeqCst)) == record::ACTIVE)
            .map(|r| u64::from(r.max_held.load(Relaxed)))
            .sum();
        if held + 2 > self.slots.len() as u64 {
            self.deregister(token);
            return Err(RegisterError::HoldBudget);
        }
        if req.mode == Mode::Queue {
            self.pin_cursor(r);
        }
        Ok(token)
    }

    /// Sets a new lossless subscriber's cursor to the newest frame. The head
    /// is re-read after the cursor store: once it is unchanged, the writer's
    /// every later slot choice sees the cursor (SeqCst), and the newest
    /// frame's slot is never taken while it is the head.
    /// The loop is bounded: only a writer committing faster than two head
    /// loads (or hostile memory) could exhaust it, and then the cursor
    /// simply starts at a frame the reader may find already overwritten.
    fn pin_cursor(&self, r: &SubscriberRecord) {
        for _ in 0..1024 {
            let (seq, _) = self.head();
            r.cursor.store(seq.max(1), SeqCst);
            // Store-load order between our cursor store and the head
            // re-read, paired with the fence the writer issues after its
            // head store (in `bump_notify`): the same Dekker argument as the
            // futex wait, and one loom can check (it models SeqCst fences
            // but treats SeqCst loads and stores as acquire/release).
            crate::sync::fence(SeqCst);
            if self.head().0 == seq {
                return;
            }
            crate::sync::spin_hint();
        }
    }

    /// Gives a record back: clears any lease bits it still has and frees it.
    /// Returns whether the writer is waiting for the space this frees.
    pub fn deregister(&self, token: RecordToken) -> bool {
        self.free_record(token.index, token.generation, record::ACTIVE)
            .unwrap_or(false)
    }

    /// Frees the record of a holder found dead (the caller checked pid and
    /// start time): its lease bits are cleared, so no slot stays held.
    /// `generation` must be the one read when liveness was checked, so a
    /// record re-claimed meanwhile by a live subscriber is left alone.
    /// Returns `None` if this call did not free it, otherwise whether the
    /// writer is waiting for the space it freed.
    pub fn reclaim(&self, index: u32, generation: u32) -> Option<bool> {
        let state = record::state_of(self.subs.get(index as usize)?.state.load(Acquire));
        if state != record::ACTIVE && state != record::CLAIMING {
            return None;
        }
        self.free_record(index, generation, state)
    }

    fn free_record(&self, index: u32, generation: u32, from: u32) -> Option<bool> {
        let r = self.subs.get(index as usize)?;
        // Only one party frees a record: whoever moves it to RECLAIMING,
        // and only in the generation it was asked to free.
        let reclaiming = record::word(generation, record::RECLAIMING);
        r.state
            .compare_exchange(record::word(generation, from), reclaiming, AcqRel, Relaxed)
            .ok()?;
        r.cursor.store(NO_CURSOR, SeqCst);
        let bit = 1u64 << index;
        for s in self.slots {
            s.lease.fetch_and(!bit, Release);
        }
        r.held.store(0, Relaxed);
        r.state
            .store(record::word(generation, record::FREE), Release);
        Some(self.bump_space())
    }

    /// The record's name as stored (up to the first NUL).
    pub fn record_name(&self, index: u32) -> [u8; NAME_LEN] {
        let mut out = [0u8; NAME_LEN];
        if let Some(r) = self.subs.get(index as usize) {
            for (chunk, word) in out.chunks_exact_mut(8).zip(&r.name) {
                chunk.copy_from_slice(&word.load(Relaxed).to_le_bytes());
            }
        }
        out
    }
}

/// A registered subscriber bundled with its ring handle: deregisters on
/// drop. Reads with [`Subscription::try_read`].
///
/// ```
/// # use cuframes_core::*;
/// # let ctl = ControlBlock::new();
/// # let slots: Vec<SlotHeader> = (0..4).map(|_| SlotHeader::new()).collect();
/// # let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
/// # let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
/// let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
/// let mut writer = Writer::new(&ring);
/// let req = Register { mode: Mode::Queue, max_held: 1, pid: 1, start_time: 0, pid_ns: 0, heartbeat_ns: 0, name: b"rec" };
/// let sub = Subscription::register(&ring, &req).unwrap();
/// writer.try_loan().unwrap().commit(0, 0);
/// let frame = sub.try_read().unwrap();
/// assert_eq!(frame.seq(), 1);
/// frame.release();
/// assert_eq!(sub.try_read().unwrap_err(), ReadError::WouldBlock);
/// ```
pub struct Subscription<H: RingRef> {
    ring: H,
    token: Option<RecordToken>,
}

impl<H: RingRef> Subscription<H> {
    /// Registers on the ring behind `ring`.
    pub fn register(ring: H, req: &Register<'_>) -> Result<Self, RegisterError> {
        let token = ring.ring().register(req)?;
        Ok(Self {
            ring,
            token: Some(token),
        })
    }

    /// The record token.
    pub fn token(&self) -> &RecordToken {
        self.token.as_ref().expect("token present until drop")
    }

    /// Takes the next frame without waiting (see [`ReadGrant::acquire`]).
    /// The frame borrows the subscription, so it cannot outlive it.
    ///
    /// [`ReadGrant::acquire`]: crate::ReadGrant::acquire
    pub fn try_read(&self) -> Result<crate::ReadGrant<&Self>, crate::ReadError> {
        crate::ReadGrant::acquire(self, self.token())
    }
}

impl<H: RingRef> RingRef for Subscription<H> {
    fn ring(&self) -> &Ring<'_> {
        self.ring.ring()
    }
    fn wake(&self, who: Wake) {
        self.ring.wake(who)
    }
}

impl<H: RingRef> Drop for Subscription<H> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            if self.ring.ring().deregister(token) {
                self.ring.wake(Wake::Writer);
            }
        }
    }
}
