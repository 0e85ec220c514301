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
    /// [`Ring::register_at`]: that record is not free. If the caller holds
    /// the record's liveness lock, its previous owner is dead: recover it
    /// with [`Ring::reclaim`] and try again.
    Taken,
    /// The record was recovered by a sweeper while this registration filled
    /// it in (the sweeper judged the registrant dead); nothing is held.
    Lost,
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
    pub(crate) generation: u64,
    pub(crate) mode: Mode,
    pub(crate) max_held: u32,
}

impl RecordToken {
    /// The record index, which is also the subscriber's lease bit.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// The record generation this token owns.
    pub fn generation(&self) -> u64 {
        self.generation
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
    /// Claims the first free subscriber record. For rings without a
    /// liveness layer (tests, single-process use); processes claim a
    /// record whose liveness lock they hold with [`Ring::register_at`].
    pub fn register(&self, req: &Register<'_>) -> Result<RecordToken, RegisterError> {
        for index in 0..self.subs.len() as u32 {
            match self.register_at(index, req) {
                Err(RegisterError::Taken | RegisterError::Lost) => continue,
                r => return r,
            }
        }
        Err(RegisterError::NoRecord)
    }

    /// Claims record `index` if it is free. A new subscriber's first frame
    /// is the newest one at the time it registers.
    ///
    /// The caller is expected to hold the record's liveness lock (one that
    /// the kernel drops when the process dies): then nobody but a dead
    /// process can be half-way through this record, and a sweeper that
    /// finds the lock free may recover it.
    pub fn register_at(
        &self,
        index: u32,
        req: &Register<'_>,
    ) -> Result<RecordToken, RegisterError> {
        if req.max_held == 0 || req.max_held > MAX_SLOTS {
            return Err(RegisterError::InvalidArgument);
        }
        if self.is_closed() {
            return Err(RegisterError::Closed);
        }
        let r = self
            .subs
            .get(index as usize)
            .ok_or(RegisterError::NoRecord)?;
        let w = r.state.load(Relaxed);
        if record::state_of(w) != record::FREE {
            return Err(RegisterError::Taken);
        }
        let generation = record::next_generation(record::generation_of(w));
        let claiming = record::word(generation, record::CLAIMING);
        r.state
            .compare_exchange(w, claiming, Acquire, Relaxed)
            .map_err(|_| RegisterError::Taken)?;
        crate::sync::crash_point(); // R2 done
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
        r.evictions.store(0, Relaxed);
        r.waiting.store(0, Relaxed);
        r.heartbeat_ns.store(req.heartbeat_ns, Relaxed);
        let mut name = [0u8; NAME_LEN];
        let n = req.name.len().min(NAME_LEN);
        name[..n].copy_from_slice(&req.name[..n]);
        for (word, chunk) in r.name.iter().zip(name.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            word.store(u64::from_le_bytes(b), Relaxed);
        }
        crate::sync::crash_point(); // R3 done
                                    // A CAS, not a store: a sweeper that recovered the record meanwhile
                                    // (it found our liveness lock free, so it judged us dead) must not
                                    // be overruled, or two parties would own one lease bit.
        r.state
            .compare_exchange(
                claiming,
                record::word(generation, record::ACTIVE),
                SeqCst,
                Relaxed,
            )
            .map_err(|_| RegisterError::Lost)?;
        crate::sync::crash_point(); // R4 done
        let token = RecordToken {
            index,
            generation,
            mode: req.mode,
            max_held: req.max_held,
        };

        // Checked after becoming visible, so two racing registrations cannot
        // both squeeze past the budget (at worst both back out). Every record
        // that is not FREE counts: a CLAIMING one is about to hold frames, a
        // RECLAIMING one may still have lease bits set. The fence orders our
        // ACTIVE store before the loads below against the other
        // registrant's (store-load, as in `pin_cursor`): SeqCst accesses
        // alone already do in C++20, the fence makes it one loom can check.
        crate::sync::fence(SeqCst);
        let held: u64 = self
            .subs
            .iter()
            .filter(|r| record::state_of(r.state.load(SeqCst)) != record::FREE)
            .map(|r| u64::from(r.max_held.load(Relaxed)))
            .sum();
        if held + 2 > self.slots.len() as u64 {
            self.deregister(token);
            return Err(RegisterError::HoldBudget);
        }
        crate::sync::crash_point(); // R5 done
        if req.mode == Mode::Queue {
            self.pin_cursor(r, true);
        }
        Ok(token)
    }

    /// Sets a lossless subscriber's cursor to the newest frame (at
    /// registration, and again after an eviction). The head is re-read
    /// after the cursor store: once it is unchanged, the writer's every
    /// later slot choice sees the cursor (SeqCst), and the newest frame's
    /// slot is never taken while it is the head. Returns the cursor.
    /// The loop is bounded: only a writer committing faster than two head
    /// loads (or hostile memory) could exhaust it, and then the cursor
    /// simply starts at a frame the reader may find already overwritten.
    pub(crate) fn pin_cursor(&self, r: &SubscriberRecord, at_key: bool) -> u64 {
        let mut pinned = None;
        for _ in 0..1024 {
            let (seq, _) = self.head();
            let want = if self.is_packets() && at_key {
                self.packet_start(r, seq)
            } else {
                seq.max(1)
            };
            match pinned {
                None => r.cursor.store(want, SeqCst),
                // Later rounds move only our own pin: an eviction flagged
                // in between stays (the next read reports it).
                Some(p) => {
                    if r.cursor.compare_exchange(p, want, SeqCst, Relaxed).is_err() {
                        break;
                    }
                }
            }
            pinned = Some(want);
            crate::sync::crash_point(); // R6 cursor stored
                                        // Store-load order between our cursor store and the head
                                        // re-read, paired with the fence the writer issues after its
                                        // head store (in `bump_notify`): the same Dekker argument as the
                                        // futex wait, and one loom can check (it models SeqCst fences
                                        // but treats SeqCst loads and stores as acquire/release).
            crate::sync::fence(SeqCst);
            // A packet pin behind the head holds only if no loan took one
            // of its packets before it saw the pin; the writer re-checks
            // the pins after its CAS (fence to fence), so one side sees
            // the other.
            let held = want == seq.max(1) || self.run_present(want, seq);
            if self.head().0 == seq && held {
                break;
            }
            crate::sync::spin_hint();
        }
        pinned.unwrap_or(1)
    }

    /// Gives a record back: clears any lease bits it still has and frees it.
    /// Returns whether the writer is waiting for the space this frees.
    ///
    /// Every grant taken with this token must be released first: a release
    /// racing the deregistration and a re-claim of the record could clear
    /// the new owner's bit. [`Subscription`] enforces this by borrowing.
    pub fn deregister(&self, token: RecordToken) -> bool {
        let Some(r) = self.subs.get(token.index as usize) else {
            return false;
        };
        let active = record::word(token.generation, record::ACTIVE);
        let reclaiming = record::word(token.generation, record::RECLAIMING);
        if r.state
            .compare_exchange(active, reclaiming, AcqRel, Relaxed)
            .is_err()
        {
            return false;
        }
        crate::sync::crash_point(); // D1 done
        self.free_record(token.index, token.generation)
    }

    /// Recovers record `index` of generation `generation` whose holder is
    /// proven dead, whatever step it died at: a claim half made (CLAIMING),
    /// a live record (ACTIVE), or a free half done by a party that died in
    /// turn (RECLAIMING, taken over as it is). Its lease bits are cleared,
    /// so no slot stays held, and the waits it announced are taken back.
    ///
    /// The caller must have proof that no live process owns the record and
    /// that no other party is recovering it: in the std layer, it holds the
    /// record's liveness lock, which the owner holds for the record's whole
    /// life and the kernel drops only when the owner dies. A record
    /// re-claimed since `generation` was read is left alone. Returns `None`
    /// if this call freed nothing, otherwise whether the writer waits for
    /// the space it freed.
    pub fn reclaim(&self, index: u32, generation: u64) -> Option<bool> {
        let r = self.subs.get(index as usize)?;
        let w = r.state.load(Acquire);
        if record::generation_of(w) != generation {
            return None;
        }
        match record::state_of(w) {
            record::CLAIMING | record::ACTIVE => {
                let reclaiming = record::word(generation, record::RECLAIMING);
                r.state
                    .compare_exchange(w, reclaiming, AcqRel, Relaxed)
                    .ok()?;
                crate::sync::crash_point(); // C1 done
            }
            record::RECLAIMING => {}
            _ => return None,
        }
        Some(self.free_record(index, generation))
    }

    /// The free path shared by deregistration and recovery, from
    /// RECLAIMING (which the caller owns) to FREE. Each step is idempotent,
    /// so a recovery may take over a free that died half-way.
    fn free_record(&self, index: u32, generation: u64) -> bool {
        let r = &self.subs[index as usize];
        r.cursor.store(NO_CURSOR, SeqCst);
        crate::sync::crash_point(); // F1 done
        let bit = 1u64 << index;
        for s in self.slots {
            s.lease.fetch_and(!bit, Release);
            crate::sync::crash_point(); // F2 done for this slot
        }
        r.held.store(0, Relaxed);
        crate::sync::crash_point(); // F3: held cleared
                                    // Waits the holder announced and never ended (it died asleep): take
                                    // them out of the ring-wide count, so commits stop issuing wake-ups
                                    // for nobody.
        let waiting = r.waiting.swap(0, Relaxed);
        if waiting != 0 {
            let _ = self
                .ctl
                .waiters
                .fetch_update(Relaxed, Relaxed, |w| Some(w.saturating_sub(waiting)));
        }
        crate::sync::crash_point(); // F3 done: waits taken back
        let _ = r.state.compare_exchange(
            record::word(generation, record::RECLAIMING),
            record::word(generation, record::FREE),
            Release,
            Relaxed,
        );
        crate::sync::crash_point(); // F4 done
        self.bump_space()
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
