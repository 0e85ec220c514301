//! proptest state machine for packet rings: random operation sequences
//! against the real core ring (in ordinary memory, `for_packets`) with a
//! simulated payload area (one `Vec<u8>` per slot), checked after every
//! step.
//!
//! ```text
//! PROPTEST_CASES=256 cargo test -p cuframes-verification --test packets --release -- --nocapture
//! ```
//!
//! Operations: commit a packet (random length up to the maximum, key flag
//! at the case's rate, the first packet usually a key; the payload is
//! derived from the seq), loan a slot and leave it pending (the writer
//! scribbles on it meanwhile), commit an oversize packet (`TooLarge`, the
//! loan stays pending; then a retry or an abort), commit without a loan,
//! register NEWEST_ONLY and QUEUE subscribers (`max_held` 1 or 2), read,
//! release held packets in any order, deregister (having released, or
//! still holding), `evict_laggards`, a read that meets a hostile `len`,
//! close.
//!
//! The properties, checked independently of the reference model:
//!
//! - every subscriber's delivered sequence is decodable: strictly
//!   increasing, the first a keyframe, and every later one a keyframe or
//!   the direct successor of the one before (across evictions too);
//! - the metadata and payload of every held packet are what the writer
//!   committed for its seq, in the grant and in the slot (no torn or
//!   rewritten data while held), and a loan never takes a held slot;
//! - a QUEUE subscriber under `Block` that was never evicted receives
//!   exactly every seq from its start keyframe on: the newest keyframe if
//!   it and every packet after it up to the head were readable at
//!   registration, else the first keyframe committed after it;
//! - a NEWEST_ONLY subscriber's first packet is the newest keyframe when
//!   that one is present;
//! - `dropped` counts exactly the skipped seqs, each once: for NEWEST_ONLY
//!   `received + dropped` spans its first to its last packet; for QUEUE
//!   `received + dropped` is how far its cursor moved from where
//!   registration pinned it, and the cursor never moves back;
//! - `received`, `last_seq`, `held` and the evictions match what the test
//!   saw; a hostile `len` reads `Corrupt` and leaves no hold behind;
//! - lease words are exactly the holds the test has (plus the writer's
//!   bit while a loan is open), and once everything is released and
//!   deregistered no lease bit and no record remains.
//!
//! A reference model (the writer's slot choice, the control block's
//! `last_key`, `gop` and `bytes`, and what each read must return, from
//! the rules in `core/src/packet.rs`) is checked too: simpler than
//! invariants for liveness, it also says when a read may answer
//! `WouldBlock` and when the writer may answer `Backpressure`. Everything
//! here is sequential, so where a QUEUE cursor is pinned (at registration,
//! and when it comes back after an eviction) is exactly predicted
//! ([`Model::packet_start`]): the newest keyframe if it is newer than the
//! subscriber's last packet and it and every packet after it up to the
//! head are still in the ring, else the head. The directed cases at the
//! end pin down the cases where the newest keyframe, or a packet after it,
//! is gone.
#![cfg(not(loom))]

use cuframes_core::sync::Ordering::SeqCst;
use cuframes_core::*;
use cuframes_verification::{request, Storage};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};

/// The rings' largest packet.
const MAX_LEN: u64 = 40;

#[derive(Debug, Clone)]
enum Op {
    /// Commit a packet of `len` bytes (the pending loan if one is open,
    /// else a new one); `roll` against the case's key rate decides the key
    /// flag.
    Commit {
        len: u64,
        roll: u8,
        disc: bool,
    },
    /// Loan a slot and leave it pending; the writer scribbles on it.
    Begin,
    /// Commit `MAX_LEN + over` bytes: `TooLarge`, the loan stays pending;
    /// then commit `retry` bytes, or abort.
    Oversize {
        over: u64,
        retry: Option<u64>,
        roll: u8,
    },
    Abort,
    /// `commit_packet` with no loan open.
    CommitNoLoan,
    Register {
        queue: bool,
        max_held: u32,
    },
    Read(usize),
    /// A streaming reader: release the oldest packet it holds, then read.
    Consume(usize),
    Release(usize, usize),
    /// Deregister, having released everything first or still holding (the
    /// grants are dropped after, as orphans).
    Deregister {
        s: usize,
        holding: bool,
    },
    Evict,
    /// A read that would take a packet whose slot header says `len > max`
    /// (hostile memory): `Corrupt`, nothing held. The subscriber then gives
    /// up (deregisters).
    CorruptRead(usize),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..=MAX_LEN, any::<u8>(), prop::bool::weighted(0.05))
            .prop_map(|(len, roll, disc)| Op::Commit { len, roll, disc }),
        1 => Just(Op::Begin),
        1 => (
            prop_oneof![1..=64u64, Just(u64::MAX - MAX_LEN)],
            prop::option::of(0..=MAX_LEN),
            any::<u8>()
        )
            .prop_map(|(over, retry, roll)| Op::Oversize { over, retry, roll }),
        1 => Just(Op::Abort),
        1 => Just(Op::CommitNoLoan),
        2 => (any::<bool>(), 1..=2u32).prop_map(|(queue, max_held)| Op::Register { queue, max_held }),
        10 => any::<usize>().prop_map(Op::Read),
        8 => any::<usize>().prop_map(Op::Consume),
        10 => (any::<usize>(), any::<usize>()).prop_map(|(s, g)| Op::Release(s, g)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(s, holding)| Op::Deregister { s, holding }),
        2 => Just(Op::Evict),
        1 => any::<usize>().prop_map(Op::CorruptRead),
        // Rare: the rest of a sequence after a close only drains.
        1 => prop_oneof![29 => Just(Op::Abort), 1 => Just(Op::Close)],
    ]
}

#[derive(Debug, Clone)]
struct Case {
    slots: u32,
    records: u32,
    policy: LosslessPolicy,
    /// A packet after the first is a key when its roll is below this.
    key_rate: u8,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        3..=6u32,
        1..=4u32,
        prop_oneof![
            Just(LosslessPolicy::Block),
            Just(LosslessPolicy::DropOldest)
        ],
        prop_oneof![Just(24u8), Just(64), Just(128)],
        prop::collection::vec(op(), 1..200),
    )
        .prop_map(|(slots, records, policy, key_rate, ops)| Case {
            slots,
            records,
            policy,
            key_rate,
            ops,
        })
}

// ------------------------------------------------------------- coverage

/// Outcomes seen across all cases, printed at the end (`--nocapture`) to
/// show the sequences reach the interesting states.
mod seen {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    macro_rules! counters {
        ($($name:ident),*) => {
            $(pub static $name: AtomicU64 = AtomicU64::new(0);)*
            pub fn report() -> String {
                let mut out = String::new();
                $(out += &format!("{}={} ", stringify!($name).to_lowercase(), $name.load(Relaxed));)*
                out
            }
        };
    }
    counters!(
        STEPS,
        COMMITS,
        KEYS,
        TOO_LARGE,
        RETRIED,
        ABORTS,
        NO_LOAN,
        BACKPRESSURE,
        FULL,
        PENDING,
        READS_NEWEST,
        READS_QUEUE,
        NEWEST_JOIN_AT_KEY,
        NEWEST_JUMPS,
        NEWEST_WAIT_FOR_KEY,
        QUEUE_SKIP_TO_KEY,
        QUEUE_WAIT_PAST_HEAD,
        QUEUE_START_AT_KEY,
        QUEUE_START_AT_HEAD,
        QUEUE_START_PAST_GONE_KEY,
        QUEUE_START_PAST_BROKEN_GOP,
        REJOIN_AT_HEAD,
        LOSSLESS_RUNS,
        WOULD_BLOCK,
        HOLD_LIMIT,
        HOLD_BUDGET,
        NO_RECORD,
        EVICTIONS,
        LAGGED,
        CORRUPT,
        DEREGISTER_HOLDING,
        HELD_CHECKS
    );
    pub fn hit(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}
use seen::hit;

// ---------------------------------------------------------------- model

/// What the writer committed for one seq.
#[derive(Debug, Clone, Copy)]
struct Sent {
    meta: PacketMeta,
    slot: u32,
}

#[derive(Debug, Clone)]
struct MSub {
    mode: Mode,
    max_held: u32,
    /// `(seq, slot)` per held packet, in the order read.
    held: Vec<(u64, u32)>,
    /// QUEUE: the cursor (without the `EVICTED` flag).
    cursor: u64,
    /// QUEUE: evicted by the writer and not yet told (`Lagged`).
    evicted: bool,
    evictions: u64,
    last: u64,
    received: u64,
    dropped: u64,
}

/// What a read must return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Packet { seq: u64, slot: u32 },
    Err(ReadError),
}

#[derive(Debug)]
struct Model {
    policy: LosslessPolicy,
    /// Seq per slot (0: empty, aborted or being written).
    slots: Vec<u64>,
    /// Lease bits of live subscribers per slot.
    holders: Vec<u64>,
    /// Seq last written to each index entry.
    index: Vec<u64>,
    /// Everything committed, by seq - 1.
    sent: Vec<Sent>,
    head: (u64, u32),
    pending: Option<u32>,
    last_key: (u64, u32),
    gop: u64,
    bytes: u64,
    closed: bool,
    recs: Vec<Option<MSub>>,
    generations: Vec<u64>,
}

impl Model {
    fn new(c: &Case) -> Self {
        Self {
            policy: c.policy,
            slots: vec![0; c.slots as usize],
            holders: vec![0; c.slots as usize],
            index: vec![0; index_len_for(c.slots) as usize],
            sent: Vec::new(),
            head: (0, 0),
            pending: None,
            last_key: (0, 0),
            gop: 0,
            bytes: 0,
            closed: false,
            recs: vec![None; c.records as usize],
            generations: vec![0; c.records as usize],
        }
    }

    fn head_slot(&self) -> Option<u32> {
        (self.head.0 != 0).then_some(self.head.1)
    }

    fn sent(&self, seq: u64) -> &Sent {
        &self.sent[seq as usize - 1]
    }

    fn is_key(&self, seq: u64) -> bool {
        self.sent(seq).meta.is_key()
    }

    /// Packet `seq` is still in its slot.
    fn holds(&self, seq: u64) -> bool {
        seq != 0 && seq <= self.sent.len() as u64 && self.slots[self.sent(seq).slot as usize] == seq
    }

    /// Packet `seq` can be looked up by seq: still in its slot, and its
    /// index entry not yet reused by a later packet.
    fn indexed(&self, seq: u64) -> bool {
        self.holds(seq) && self.index[seq as usize & (self.index.len() - 1)] == seq
    }

    /// The oldest keyframe in the ring after `after`, up to the head.
    fn next_key_after(&self, after: u64) -> Option<u64> {
        self.slots
            .iter()
            .copied()
            .filter(|&s| s > after && s <= self.head.0 && self.is_key(s))
            .min()
    }

    /// Where a lossless subscriber whose last packet is `last` is pinned
    /// (at registration, or when it comes back after an eviction;
    /// `packet_start`): the newest keyframe when [`Model::sound_key`], else
    /// the head (and its reads then wait for the next keyframe).
    fn packet_start(&self, last: u64) -> u64 {
        self.sound_key(last).unwrap_or(self.head.0.max(1))
    }

    /// The newest keyframe if a reader whose last packet is `last` can
    /// read it and every packet after it up to the head: then, and only
    /// then, a lossless start there can be lossless.
    fn sound_key(&self, last: u64) -> Option<u64> {
        let (key, _) = self.last_key;
        (key != 0
            && key <= self.head.0
            && key > last
            && (key..=self.head.0).all(|s| self.indexed(s)))
        .then_some(key)
    }

    fn min_cursor(&self) -> u64 {
        self.recs
            .iter()
            .flatten()
            .filter(|s| s.mode == Mode::Queue && !s.evicted)
            .map(|s| s.cursor)
            .min()
            .unwrap_or(NO_CURSOR)
    }

    /// Slots a loan (or an eviction scan) may consider: not held, not the
    /// head, not loaned.
    fn free_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&i| {
            self.holders[i] == 0
                && self.head_slot() != Some(i as u32)
                && self.pending != Some(i as u32)
        })
    }

    fn oldest(&self, it: impl Iterator<Item = usize>) -> Option<u32> {
        it.min_by_key(|&i| (self.slots[i], i)).map(|i| i as u32)
    }

    /// The slot a loan takes now.
    fn expected_loan(&self) -> Result<u32, LoanError> {
        if self.pending.is_some() {
            return Err(LoanError::Pending);
        }
        if self.closed {
            return Err(LoanError::Closed);
        }
        let min_cursor = self.min_cursor();
        let needed = |i: &usize| self.slots[*i] != 0 && self.slots[*i] >= min_cursor;
        if let Some(i) = self.oldest(self.free_slots().filter(|i| !needed(i))) {
            return Ok(i);
        }
        match (self.oldest(self.free_slots()), self.policy) {
            (Some(i), LosslessPolicy::DropOldest) => Ok(i),
            (Some(_), LosslessPolicy::Block) => Err(LoanError::Backpressure),
            (None, _) => Err(LoanError::Full),
        }
    }

    /// The records `evict_laggards` evicts now (bit per record).
    fn expected_evict(&self) -> u64 {
        let Some(oldest) = self.oldest(self.free_slots()) else {
            return 0;
        };
        let oldest = self.slots[oldest as usize];
        self.recs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
            .filter(|(_, s)| s.mode == Mode::Queue && !s.evicted && s.cursor <= oldest)
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    fn loan(&mut self, slot: u32) {
        assert_eq!(self.holders[slot as usize], 0, "a held slot was loaned");
        assert_ne!(self.head_slot(), Some(slot), "the head slot was loaned");
        self.slots[slot as usize] = 0;
        self.pending = Some(slot);
    }

    fn commit(&mut self, slot: u32, meta: PacketMeta) -> u64 {
        assert_eq!(self.pending.take(), Some(slot));
        self.sent.push(Sent { meta, slot });
        let seq = self.sent.len() as u64;
        self.slots[slot as usize] = seq;
        let n = self.index.len();
        self.index[seq as usize & (n - 1)] = seq;
        self.head = (seq, slot);
        if meta.is_key() {
            if self.last_key.0 != 0 {
                self.gop = seq - self.last_key.0;
            }
            self.last_key = (seq, slot);
        }
        self.bytes += meta.len;
        seq
    }

    /// What a read by record `idx` returns, and the record afterwards.
    fn expected_read(&self, idx: u32) -> (Want, MSub) {
        let mut s = self.recs[idx as usize].clone().expect("live record");
        if s.held.len() as u32 >= s.max_held {
            return (Want::Err(ReadError::HoldLimit), s);
        }
        let idle = Want::Err(if self.closed {
            ReadError::Closed
        } else {
            ReadError::WouldBlock
        });
        let head = self.head.0;
        let want = match s.mode {
            Mode::NewestOnly => {
                let (key, key_slot) = self.last_key;
                let last = s.last;
                if key != 0
                    && key <= head
                    && (key > last + 1 || last == 0)
                    && self.slots[key_slot as usize] == key
                {
                    if last != 0 {
                        s.dropped += key - last - 1;
                    }
                    Want::Packet {
                        seq: key,
                        slot: key_slot,
                    }
                } else if last != 0 && last < head && self.indexed(last + 1) {
                    Want::Packet {
                        seq: last + 1,
                        slot: self.sent(last + 1).slot,
                    }
                } else {
                    idle
                }
            }
            // Back from an eviction: where it is pinned is checked (and the
            // skipped packets counted) by the caller.
            Mode::Queue if s.evicted => Want::Err(ReadError::Lagged),
            Mode::Queue => loop {
                let c = s.cursor;
                if c > head {
                    break idle;
                }
                if self.indexed(c) && (self.is_key(c) || (s.last != 0 && c == s.last + 1)) {
                    s.cursor = c + 1;
                    break Want::Packet {
                        seq: c,
                        slot: self.sent(c).slot,
                    };
                }
                let next = self.next_key_after(c).unwrap_or(head + 1);
                s.dropped += next - c;
                s.cursor = next;
            },
        };
        if let Want::Packet { seq, slot } = want {
            s.held.push((seq, slot));
            s.received += 1;
            s.last = seq;
        }
        (want, s)
    }
}

// ---------------------------------------------------------------- system

/// The payload bytes of packet `seq` (`len` of them).
fn payload_of(seq: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (seq.wrapping_mul(31) ^ i.wrapping_mul(7) ^ (seq >> 8)) as u8)
        .collect()
}

/// The metadata the writer gives packet `seq`.
fn meta_of(seq: u64, len: u64, key: bool, disc: bool) -> PacketMeta {
    let mut flags = 0;
    if key {
        flags |= packet::KEY;
    }
    if disc {
        flags |= packet::DISCONTINUITY;
    }
    PacketMeta {
        len,
        pts_ns: seq as i64 * 40_000 - 80_000,
        dts_ns: seq as i64 * 40_000 - 120_000,
        duration_ns: 40_000 + seq % 3,
        flags,
    }
}

/// What the test saw of one subscriber, for the properties that do not
/// need the model.
#[derive(Debug)]
struct Seen {
    mode: Mode,
    /// Every packet delivered, in order.
    delivered: Vec<u64>,
    /// QUEUE: the cursor registration pinned.
    start: u64,
    /// QUEUE: the lossless cursor last seen (it never moves back).
    cursor: u64,
    /// The head at registration.
    reg_head: u64,
    /// QUEUE: the newest keyframe, if it was readable at registration.
    start_key: Option<u64>,
    /// QUEUE under `Block`, never evicted: must get every seq from its
    /// start keyframe on.
    lossless: bool,
}

/// Counts which rule a read took.
fn coverage(before: &MSub, after: &MSub, want: Want, head: u64) {
    match want {
        Want::Packet { seq, .. } => {
            hit(match before.mode {
                Mode::NewestOnly => &seen::READS_NEWEST,
                Mode::Queue => &seen::READS_QUEUE,
            });
            if before.mode == Mode::NewestOnly && before.last != 0 && seq > before.last + 1 {
                hit(&seen::NEWEST_JUMPS);
            }
            if before.mode == Mode::Queue && after.dropped > before.dropped {
                hit(&seen::QUEUE_SKIP_TO_KEY);
            }
        }
        Want::Err(ReadError::WouldBlock) => {
            hit(&seen::WOULD_BLOCK);
            if before.mode == Mode::NewestOnly && before.last != 0 && before.last < head {
                // Its next packet was overwritten: it waits for a keyframe.
                hit(&seen::NEWEST_WAIT_FOR_KEY);
            }
            if before.mode == Mode::Queue && after.dropped > before.dropped {
                hit(&seen::QUEUE_WAIT_PAST_HEAD);
            }
        }
        Want::Err(ReadError::HoldLimit) => hit(&seen::HOLD_LIMIT),
        Want::Err(ReadError::Lagged) => hit(&seen::LAGGED),
        Want::Err(_) => {}
    }
}

struct Sub<'r> {
    token: RecordToken,
    grants: Vec<ReadGrant<&'r Ring<'r>>>,
    seen: Seen,
}

struct Run<'r> {
    c: &'r Case,
    st: &'r Storage,
    ring: &'r Ring<'r>,
    m: Model,
    w: Writer<&'r Ring<'r>>,
    subs: Vec<Sub<'r>>,
    /// The simulated payload area: what the writer last wrote per slot.
    payload: Vec<Vec<u8>>,
}

impl<'r> Run<'r> {
    fn new(c: &'r Case, st: &'r Storage, ring: &'r Ring<'r>) -> Self {
        Self {
            c,
            st,
            ring,
            m: Model::new(c),
            w: Writer::new(ring),
            subs: Vec::new(),
            payload: vec![Vec::new(); c.slots as usize],
        }
    }

    fn step(&mut self, step: usize, op: &Op) {
        match *op {
            Op::Commit { len, roll, disc } => {
                if let Some(slot) = self.pending_or_loan(step) {
                    self.commit(step, slot, len, roll, disc);
                }
            }
            Op::Begin => {
                if self.m.pending.is_some() {
                    assert_eq!(self.w.begin(), Err(LoanError::Pending), "step {step}");
                    hit(&seen::PENDING);
                } else {
                    self.loan(step);
                }
            }
            Op::Oversize { over, retry, roll } => {
                let Some(slot) = self.pending_or_loan(step) else {
                    return;
                };
                let seq = self.w.next_seq();
                let len = MAX_LEN + over;
                // The writer fills what fits, then learns it is too large.
                self.payload[slot as usize] = payload_of(seq, MAX_LEN);
                let got = self.w.commit_packet(&meta_of(seq, len, true, false), 0);
                assert_eq!(
                    got,
                    Err(CommitError::TooLarge { len, max: MAX_LEN }),
                    "step {step}"
                );
                assert_eq!(self.w.pending(), Some(slot), "the loan stays pending");
                assert_eq!(self.w.next_seq(), seq);
                hit(&seen::TOO_LARGE);
                self.check(step);
                match retry {
                    Some(len) => {
                        hit(&seen::RETRIED);
                        self.commit(step, slot, len, roll, false);
                    }
                    None => self.abort(),
                }
            }
            Op::Abort => self.abort(),
            Op::CommitNoLoan => {
                if self.m.pending.is_none() {
                    let meta = meta_of(self.w.next_seq(), 1, true, false);
                    assert_eq!(self.w.commit_packet(&meta, 0), Err(CommitError::NoLoan));
                    hit(&seen::NO_LOAN);
                }
            }
            Op::Register { queue, max_held } => self.register(step, queue, max_held),
            Op::Read(s) => self.read(step, s, false),
            Op::Consume(s) => {
                if !self.subs.is_empty() {
                    self.release(s, 0);
                    self.read(step, s, false);
                }
            }
            Op::CorruptRead(s) => self.read(step, s, true),
            Op::Release(s, j) => self.release(s, j),
            Op::Deregister { s, holding } => {
                if !self.subs.is_empty() {
                    let si = s % self.subs.len();
                    self.deregister(si, holding);
                }
            }
            Op::Evict => {
                let want = self.m.expected_evict();
                let got = self.w.evict_laggards();
                assert_eq!(got, want, "evicted, step {step}");
                for (i, r) in self.m.recs.iter_mut().enumerate() {
                    if want & 1 << i != 0 {
                        let r = r.as_mut().expect("evicted a live record");
                        r.evicted = true;
                        r.evictions += 1;
                        hit(&seen::EVICTIONS);
                    }
                }
                for sub in &mut self.subs {
                    if want & 1 << sub.token.index() != 0 {
                        sub.seen.lossless = false;
                    }
                }
            }
            Op::Close => {
                // Closing aborts a pending loan.
                self.w.close();
                self.m.pending = None;
                self.m.closed = true;
            }
        }
    }

    /// Subscriber `s` releases its `j`-th held packet (if it holds any).
    fn release(&mut self, s: usize, j: usize) {
        if self.subs.is_empty() {
            return;
        }
        let n = self.subs.len();
        let sub = &mut self.subs[s % n];
        if sub.grants.is_empty() {
            return;
        }
        let j = j % sub.grants.len();
        let idx = sub.token.index();
        sub.grants.remove(j).release();
        let ms = self.m.recs[idx as usize].as_mut().expect("live");
        let (_, slot) = ms.held.remove(j);
        self.m.holders[slot as usize] &= !(1 << idx);
    }

    /// The pending loan, or a new one if the writer gets a slot.
    fn pending_or_loan(&mut self, step: usize) -> Option<u32> {
        self.m.pending.or_else(|| self.loan(step))
    }

    /// A loan, checked against the model; the writer scribbles on the
    /// slot at once (no reader may see it, and no held slot is loaned).
    fn loan(&mut self, step: usize) -> Option<u32> {
        let want = self.m.expected_loan();
        let got = self.w.begin();
        assert_eq!(got, want, "loan, step {step}");
        match got {
            Ok(slot) => {
                self.m.loan(slot);
                self.payload[slot as usize] = vec![0xee; MAX_LEN as usize / 2];
                Some(slot)
            }
            Err(e) => {
                hit(match e {
                    LoanError::Backpressure => &seen::BACKPRESSURE,
                    LoanError::Full => &seen::FULL,
                    _ => &seen::STEPS,
                });
                None
            }
        }
    }

    fn commit(&mut self, step: usize, slot: u32, len: u64, roll: u8, disc: bool) {
        let seq = self.w.next_seq();
        assert_eq!(seq, self.m.sent.len() as u64 + 1);
        let key = if self.m.sent.is_empty() {
            roll < 205
        } else {
            roll < self.c.key_rate
        };
        let meta = meta_of(seq, len, key, disc);
        self.payload[slot as usize] = payload_of(seq, len);
        let done = self
            .w
            .commit_packet(&meta, seq * 10)
            .unwrap_or_else(|e| panic!("commit: {e:?}, step {step}"));
        assert_eq!((done.seq, done.slot), (seq, slot), "step {step}");
        assert_eq!(self.m.commit(slot, meta), seq);
        hit(&seen::COMMITS);
        if key {
            hit(&seen::KEYS);
        }
    }

    fn abort(&mut self) {
        let open = self.m.pending.take().is_some();
        assert_eq!(self.w.abort_pending(), open);
        if open {
            hit(&seen::ABORTS);
        }
    }

    fn register(&mut self, step: usize, queue: bool, max_held: u32) {
        let mode = if queue { Mode::Queue } else { Mode::NewestOnly };
        let got = self.ring.register(&request(mode, max_held, b"packets"));
        if self.m.closed {
            assert_eq!(got.err(), Some(RegisterError::Closed), "step {step}");
            return;
        }
        let Some(i) = self.m.recs.iter().position(Option::is_none) else {
            assert_eq!(got.err(), Some(RegisterError::NoRecord), "step {step}");
            hit(&seen::NO_RECORD);
            return;
        };
        // The record is claimed (a new generation) even when the budget
        // check then gives it back.
        self.m.generations[i] = record::next_generation(self.m.generations[i]);
        let held: u32 = self.m.recs.iter().flatten().map(|s| s.max_held).sum();
        if held + max_held + 2 > self.c.slots {
            assert_eq!(got.err(), Some(RegisterError::HoldBudget), "step {step}");
            hit(&seen::HOLD_BUDGET);
            return;
        }
        let token = got.unwrap_or_else(|e| panic!("register: {e:?}, step {step}"));
        assert_eq!(token.index(), i as u32, "first free record, step {step}");
        assert_eq!(token.generation(), self.m.generations[i]);
        let head = self.m.head.0;
        let (key, _) = self.m.last_key;
        // Where it starts: at the newest keyframe if it can read on from
        // there to the head, else at the head, waiting for the next
        // keyframe.
        let start_key = queue.then(|| self.m.sound_key(0)).flatten();
        let cursor = if queue {
            let pinned = self.st.subs[i].cursor.load(SeqCst);
            assert_eq!(
                pinned,
                self.m.packet_start(0),
                "queue registration pinned (head {head}, newest keyframe {key}), step {step}"
            );
            hit(match start_key {
                Some(_) => &seen::QUEUE_START_AT_KEY,
                None if self.m.indexed(key) => &seen::QUEUE_START_PAST_BROKEN_GOP,
                None if key != 0 => &seen::QUEUE_START_PAST_GONE_KEY,
                None => &seen::QUEUE_START_AT_HEAD,
            });
            pinned
        } else {
            NO_CURSOR
        };
        let lossless = queue && self.c.policy == LosslessPolicy::Block;
        self.m.recs[i] = Some(MSub {
            mode,
            max_held,
            held: Vec::new(),
            cursor,
            evicted: false,
            evictions: 0,
            last: 0,
            received: 0,
            dropped: 0,
        });
        let seen = Seen {
            mode,
            delivered: Vec::new(),
            start: cursor,
            cursor,
            reg_head: head,
            start_key,
            lossless,
        };
        if seen.lossless {
            hit(&seen::LOSSLESS_RUNS);
        }
        self.subs.push(Sub {
            token,
            grants: Vec::new(),
            seen,
        });
    }

    /// A read by subscriber `s`. `corrupt`: the packet it would take has
    /// a hostile `len` in its slot header.
    fn read(&mut self, step: usize, s: usize, corrupt: bool) {
        if self.subs.is_empty() {
            return;
        }
        let si = s % self.subs.len();
        let idx = self.subs[si].token.index();
        let (want, mut after) = self.m.expected_read(idx);
        if corrupt {
            if let Want::Packet { seq, slot } = want {
                return self.read_corrupt(step, si, seq, slot);
            }
        }
        let (key, key_slot) = self.m.last_key;
        let key_present = key != 0 && self.m.slots[key_slot as usize] == key;
        let sub = &mut self.subs[si];
        let got = ReadGrant::acquire(self.ring, &sub.token);
        let got_want = match &got {
            Ok(g) => Want::Packet {
                seq: g.seq(),
                slot: g.slot(),
            },
            Err(e) => Want::Err(*e),
        };
        let before = self.m.recs[idx as usize].as_ref().expect("live");
        if sub.seen.mode == Mode::NewestOnly
            && sub.seen.delivered.is_empty()
            && key_present
            && before.held.len() < before.max_held as usize
        {
            // Its first packet is the newest keyframe, when that is present.
            assert_eq!(
                got_want,
                Want::Packet {
                    seq: key,
                    slot: key_slot
                },
                "a newest-only subscriber joins at the newest keyframe, step {step}"
            );
            hit(&seen::NEWEST_JOIN_AT_KEY);
        }
        assert_eq!(got_want, want, "read by record {idx}, step {step}");
        if want == Want::Err(ReadError::Lagged) {
            // Back from an eviction, pinned again at the head (a pin at an
            // older keyframe would hand the writer back the ring it just
            // found too full); what it skipped since the first seq it did
            // not get counts as dropped.
            let evicted_at = before.cursor;
            let pinned = self.st.subs[idx as usize].cursor.load(SeqCst);
            assert_eq!(
                pinned,
                self.m.head.0.max(1),
                "rejoin pinned (evicted at {evicted_at}, last {}, head {}, newest keyframe {key}), step {step}",
                before.last,
                self.m.head.0
            );
            hit(&seen::REJOIN_AT_HEAD);
            after.cursor = pinned;
            after.evicted = false;
            after.dropped += pinned.saturating_sub(evicted_at.max(before.last + 1));
        }
        coverage(before, &after, want, self.m.head.0);
        self.m.recs[idx as usize] = Some(after);
        let Ok(g) = got else {
            return;
        };
        let seq = g.seq();
        self.m.holders[g.slot() as usize] |= 1 << idx;
        // Decodable: the first packet a keyframe, then keyframes or the
        // direct successor of the last one.
        let is_key = self.m.is_key(seq);
        let seen = &mut sub.seen;
        match seen.delivered.last() {
            None => assert!(is_key, "first packet {seq} is not a keyframe, step {step}"),
            Some(&last) => {
                assert!(seq > last, "packet {seq} after {last}, step {step}");
                assert!(
                    is_key || seq == last + 1,
                    "packet {seq} after {last} is neither a keyframe nor the next, step {step}"
                );
            }
        }
        if seen.lossless {
            // Lossless from its start keyframe on: that one first (or the
            // first keyframe after registration if the newest one was
            // gone), then every seq.
            let expected = match seen.delivered.last() {
                Some(&last) => last + 1,
                None => seen.start_key.unwrap_or_else(|| {
                    (seen.reg_head + 1..)
                        .find(|&s| self.m.is_key(s))
                        .expect("a key was delivered")
                }),
            };
            assert_eq!(seq, expected, "lossless subscriber, step {step}");
        }
        seen.delivered.push(seq);
        assert_eq!(g.packet(), &self.m.sent(seq).meta, "step {step}");
        assert_eq!(g.is_key(), is_key);
        assert_eq!(g.len(), self.m.sent(seq).meta.len);
        sub.grants.push(g);
    }

    /// The read of packet `seq` in `slot` meets `len > max` in the slot
    /// header: `Corrupt`, and the hold is given back. The subscriber then
    /// deregisters (what it did to its counters on the way is its own).
    fn read_corrupt(&mut self, step: usize, si: usize, seq: u64, slot: u32) {
        let sub = &self.subs[si];
        let idx = sub.token.index();
        let header = &self.st.slots[slot as usize];
        assert_eq!(header.seq.load(SeqCst), seq);
        header.len.store(MAX_LEN + 1 + seq, SeqCst);
        let got = ReadGrant::acquire(self.ring, &sub.token);
        header.len.store(self.m.sent(seq).meta.len, SeqCst);
        assert_eq!(got.err(), Some(ReadError::Corrupt), "step {step}");
        hit(&seen::CORRUPT);
        let held = self.m.recs[idx as usize].as_ref().expect("live").held.len();
        assert_eq!(
            self.st.subs[idx as usize].held.load(SeqCst),
            held as u32,
            "a corrupt read left a hold counted, step {step}"
        );
        assert_eq!(
            header.lease.load(SeqCst) & 1 << idx,
            0,
            "a corrupt read left its lease bit, step {step}"
        );
        self.deregister(si, false);
    }

    fn deregister(&mut self, si: usize, holding: bool) {
        let Sub { token, grants, .. } = self.subs.remove(si);
        let idx = token.index();
        let orphans = if holding {
            if !grants.is_empty() {
                hit(&seen::DEREGISTER_HOLDING);
            }
            grants
        } else {
            drop(grants);
            Vec::new()
        };
        assert!(!self.ring.deregister(token), "no writer waits here");
        drop(orphans);
        for h in &mut self.m.holders {
            *h &= !(1 << idx);
        }
        self.m.recs[idx as usize] = None;
    }

    /// Everything observable, after every step.
    fn check(&mut self, step: usize) {
        let ctx = || format!("after step {step}");
        let (st, m) = (self.st, &self.m);
        for (i, s) in st.slots.iter().enumerate() {
            let writer = if m.pending == Some(i as u32) {
                WRITER
            } else {
                0
            };
            assert_eq!(
                s.lease.load(SeqCst),
                m.holders[i] | writer,
                "slot {i} lease, {}",
                ctx()
            );
            assert_eq!(s.seq.load(SeqCst), m.slots[i], "slot {i} seq, {}", ctx());
        }
        assert_eq!(self.ring.head(), m.head, "head, {}", ctx());
        assert_eq!(self.ring.last_key(), m.last_key, "last_key, {}", ctx());
        assert_eq!(st.ctl.gop.load(SeqCst), m.gop, "gop, {}", ctx());
        assert_eq!(st.ctl.bytes.load(SeqCst), m.bytes, "bytes, {}", ctx());
        assert_eq!(st.ctl.published.load(SeqCst), m.sent.len() as u64);

        for (i, (r, mr)) in st.subs.iter().zip(&m.recs).enumerate() {
            let state = r.state.load(SeqCst);
            let Some(ms) = mr else {
                assert_eq!(
                    state,
                    record::word(m.generations[i], record::FREE),
                    "record {i} free, {}",
                    ctx()
                );
                for s in &st.slots {
                    assert_eq!(s.lease.load(SeqCst) & 1 << i, 0, "free record {i} holds");
                }
                continue;
            };
            assert_eq!(state, record::word(m.generations[i], record::ACTIVE));
            assert_eq!(
                (
                    r.held.load(SeqCst),
                    r.received.load(SeqCst),
                    r.dropped.load(SeqCst),
                    r.last_seq.load(SeqCst),
                    r.evictions.load(SeqCst),
                ),
                (
                    ms.held.len() as u32,
                    ms.received,
                    ms.dropped,
                    ms.last,
                    ms.evictions
                ),
                "record {i} held/received/dropped/last/evictions, {}",
                ctx()
            );
            let cursor = match (ms.mode, ms.evicted) {
                (Mode::NewestOnly, _) => NO_CURSOR,
                (Mode::Queue, false) => ms.cursor,
                (Mode::Queue, true) => ms.cursor | EVICTED,
            };
            assert_eq!(
                r.cursor.load(SeqCst),
                cursor,
                "record {i} cursor, {}",
                ctx()
            );
        }

        for sub in &mut self.subs {
            let idx = sub.token.index() as usize;
            let r = &st.subs[idx];
            let ms = m.recs[idx].as_ref().expect("live");
            let seen = &mut sub.seen;
            // Counters match what the test saw; every skipped seq counted
            // once.
            let (received, dropped) = (r.received.load(SeqCst), r.dropped.load(SeqCst));
            assert_eq!(received, seen.delivered.len() as u64, "record {idx}");
            assert_eq!(
                r.last_seq.load(SeqCst),
                seen.delivered.last().copied().unwrap_or(0)
            );
            match seen.mode {
                Mode::NewestOnly => {
                    let span = match (seen.delivered.first(), seen.delivered.last()) {
                        (Some(first), Some(last)) => last - first + 1,
                        _ => 0,
                    };
                    assert_eq!(
                        received + dropped,
                        span,
                        "newest-only record {idx}: dropped must count the seqs skipped, {}",
                        ctx()
                    );
                }
                Mode::Queue => {
                    let cursor = r.cursor.load(SeqCst) & !EVICTED;
                    assert!(
                        cursor >= seen.cursor,
                        "queue record {idx}: cursor moved back from {} to {cursor}, {}",
                        seen.cursor,
                        ctx()
                    );
                    seen.cursor = cursor;
                    assert_eq!(
                        received + dropped,
                        cursor - seen.start,
                        "queue record {idx} (started at {}): dropped must count the seqs skipped, once, {}",
                        seen.start,
                        ctx()
                    );
                }
            }
            // Every held packet: the grant, the slot header and the
            // payload are what was committed for its seq.
            assert_eq!(sub.grants.len(), ms.held.len());
            for (g, &(seq, slot)) in sub.grants.iter().zip(&ms.held) {
                assert_eq!((g.seq(), g.slot()), (seq, slot));
                let sent = m.sent(seq);
                assert_eq!(g.packet(), &sent.meta, "held packet {seq}, {}", ctx());
                let h = &st.slots[slot as usize];
                assert_eq!(h.seq.load(SeqCst), seq, "held packet {seq}, {}", ctx());
                let meta = PacketMeta {
                    len: h.len.load(SeqCst),
                    pts_ns: h.pts_ns.load(SeqCst) as i64,
                    dts_ns: h.dts_ns.load(SeqCst) as i64,
                    duration_ns: h.duration_ns.load(SeqCst),
                    flags: h.flags.load(SeqCst),
                };
                assert_eq!(meta, sent.meta, "held packet {seq} header, {}", ctx());
                assert_eq!(
                    self.payload[slot as usize],
                    payload_of(seq, sent.meta.len),
                    "held packet {seq} payload, {}",
                    ctx()
                );
                hit(&seen::HELD_CHECKS);
            }
        }
    }

    /// Releases everything and deregisters everyone: no lease bit, no
    /// record, no counted hold may remain.
    fn teardown(mut self) {
        if self.m.pending.take().is_some() {
            assert!(self.w.abort_pending());
        }
        for sub in std::mem::take(&mut self.subs) {
            let idx = sub.token.index();
            drop(sub.grants);
            assert_eq!(self.st.subs[idx as usize].held.load(SeqCst), 0);
            self.ring.deregister(sub.token);
        }
        for (i, s) in self.st.slots.iter().enumerate() {
            assert_eq!(s.lease.load(SeqCst), 0, "slot {i} leaked at teardown");
        }
        for (i, r) in self.st.subs.iter().enumerate() {
            assert_eq!(
                record::state_of(r.state.load(SeqCst)),
                record::FREE,
                "record {i} not free at teardown"
            );
            assert_eq!(r.held.load(SeqCst), 0, "record {i} counts holds");
        }
        assert_eq!(self.ring.stats().active().count(), 0);
    }
}

fn run(c: &Case) {
    let st = Storage::new(c.slots, c.records);
    let ring = st.ring(c.policy).for_packets(MAX_LEN);
    let mut r = Run::new(c, &st, &ring);
    for (step, op) in c.ops.iter().enumerate() {
        r.step(step, op);
        r.check(step);
        hit(&seen::STEPS);
    }
    r.teardown();
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

#[test]
fn packet_ring_keeps_every_reader_decodable() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    // Shrinking re-runs failing cases many times: keep their panics quiet,
    // then replay the minimal case loudly.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = runner.run(&case(), |c| {
        run(&c);
        Ok(())
    });
    std::panic::set_hook(hook);
    match result {
        Ok(()) => eprintln!("{} cases: {}", cases(), seen::report()),
        Err(TestError::Fail(_, c)) => {
            eprintln!("minimal failing case: {c:#?}");
            run(&c);
            panic!("the minimal case passed on replay");
        }
        Err(e) => panic!("{e}"),
    }
}

// ------------------------------------------------------ directed cases

/// Loans and commits one packet of 8 bytes; returns its seq.
fn commit_one(w: &mut Writer<&Ring<'_>>, key: bool) -> u64 {
    w.begin().expect("loan");
    let seq = w.next_seq();
    let done = w
        .commit_packet(&meta_of(seq, 8, key, false), 0)
        .expect("commit");
    assert_eq!(done.seq, seq);
    seq
}

/// The seqs `sub` reads (releasing each at once) until it would block;
/// panics on any other error.
fn read_all_released(sub: &Subscription<&Ring<'_>>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match sub.try_read() {
            Ok(p) => got.push(p.seq()),
            Err(ReadError::WouldBlock) => return got,
            Err(e) => panic!("read: {e:?}"),
        }
    }
}

/// A QUEUE subscriber that registers once the newest keyframe was
/// overwritten (the usual case once a GOP is longer than the ring) is
/// pinned at the head: the packets in the ring follow a keyframe that is
/// gone, so they do not hold the writer back, and only the head (where it
/// was pinned) counts as dropped when it moves on to wait for the next
/// keyframe, which it then gets.
#[test]
fn registration_after_the_keyframe_is_gone_pins_at_the_head() {
    let st = Storage::new(3, 1);
    let ring = st.ring(LosslessPolicy::Block).for_packets(MAX_LEN);
    let mut w = Writer::new(&ring);
    for key in [true, false, false, false] {
        commit_one(&mut w, key);
    }
    // Keyframe 1 was overwritten by packet 4.
    let (key, key_slot) = ring.last_key();
    assert_eq!(key, 1);
    assert_eq!(st.slots[key_slot as usize].seq.load(SeqCst), 4);
    let sub = Subscription::register(&ring, &request(Mode::Queue, 1, b"late")).expect("register");
    let cursor = || st.subs[0].cursor.load(SeqCst);
    assert_eq!(cursor(), 4, "pinned at the head");
    assert_eq!(w.poll_loan(), Ok(()), "the writer is not held back");
    assert_eq!(sub.try_read().unwrap_err(), ReadError::WouldBlock);
    assert_eq!(cursor(), 5, "waits past the head for the next keyframe");
    let stats = || *ring.stats().active().next().expect("active");
    assert_eq!((stats().received, stats().dropped), (0, 1));
    commit_one(&mut w, false); // 5
    commit_one(&mut w, true); // 6
    commit_one(&mut w, false); // 7
    assert_eq!(read_all_released(&sub), [6, 7]);
    assert_eq!((stats().received, stats().dropped), (2, 2));
}

/// A QUEUE subscriber evicted after it moved past the (overwritten) newest
/// keyframe comes back (`Lagged`) pinned at the head, not at that
/// keyframe: its cursor never moves back, the writer that just evicted it
/// is not held back again, and each packet it missed counts as dropped
/// once.
#[test]
fn rejoin_after_the_keyframe_is_gone_pins_at_the_head() {
    let st = Storage::new(3, 1);
    let ring = st.ring(LosslessPolicy::Block).for_packets(MAX_LEN);
    let mut w = Writer::new(&ring);
    for key in [true, false, false, false] {
        commit_one(&mut w, key); // 1 (key) .. 4; 4 overwrites 1
    }
    let sub = Subscription::register(&ring, &request(Mode::Queue, 1, b"slow")).expect("register");
    let cursor = || st.subs[0].cursor.load(SeqCst) & !EVICTED;
    let dropped = || ring.stats().active().next().expect("active").dropped;
    assert_eq!(cursor(), 4, "pinned at the head");
    // Nothing to read: it waits past the head for the next keyframe.
    assert_eq!(sub.try_read().unwrap_err(), ReadError::WouldBlock);
    assert_eq!((cursor(), dropped()), (5, 1));
    for _ in 5..=7 {
        commit_one(&mut w, false);
    }
    // It needs 5 and 6 and does not read: the writer evicts it.
    assert_eq!(w.poll_loan(), Err(LoanError::Backpressure));
    assert_eq!(w.evict_laggards(), 1);
    commit_one(&mut w, false); // 8
    assert_eq!(sub.try_read().unwrap_err(), ReadError::Lagged);
    assert_eq!(cursor(), 8, "pinned again at the head");
    assert_eq!(dropped(), 4, "4..=7 dropped, each once");
    assert_eq!(w.poll_loan(), Ok(()), "the writer is not held back again");
    assert_eq!(sub.try_read().unwrap_err(), ReadError::WouldBlock);
    assert_eq!((cursor(), dropped()), (9, 5));
    commit_one(&mut w, true); // 9
    commit_one(&mut w, false); // 10
    assert_eq!(read_all_released(&sub), [9, 10]);
    assert_eq!(dropped(), 5, "of the 10 published, 4..=8 dropped");
}

/// The newest keyframe is still there (a NEWEST_ONLY reader holds it,
/// and the packet before it) but a packet after it was overwritten, the
/// run from it to the head no longer than the ring. A QUEUE subscriber
/// under `Block` registered now is pinned at the head, not at that
/// keyframe (it could not read on from it), and is lossless from the next
/// keyframe on.
#[test]
fn registration_after_the_gop_is_broken_is_lossless_from_the_next_keyframe() {
    let st = Storage::new(5, 2);
    let ring = st.ring(LosslessPolicy::Block).for_packets(MAX_LEN);
    let mut w = Writer::new(&ring);
    let viewer =
        Subscription::register(&ring, &request(Mode::NewestOnly, 2, b"viewer")).expect("register");
    commit_one(&mut w, true);
    let first = viewer.try_read().expect("keyframe 1");
    commit_one(&mut w, true);
    let second = viewer.try_read().expect("keyframe 2");
    assert_eq!((first.seq(), second.seq()), (1, 2));
    for _ in 3..=6 {
        commit_one(&mut w, false); // 6 overwrites 3
    }
    let (key, _) = ring.last_key();
    assert_eq!(key, 2);
    let resident = || -> Vec<u64> {
        let mut s: Vec<u64> = st.slots.iter().map(|s| s.seq.load(SeqCst)).collect();
        s.sort_unstable();
        s
    };
    assert_eq!(resident(), [1, 2, 4, 5, 6], "keyframe 2 is there, 3 is not");
    let rec =
        Subscription::register(&ring, &request(Mode::Queue, 1, b"recorder")).expect("register");
    let rec_index = rec.token().index() as usize;
    assert_eq!(
        st.subs[rec_index].cursor.load(SeqCst),
        6,
        "pinned at the head, not at keyframe 2"
    );
    let mut got = Vec::new();
    for key in [false, true, false] {
        // Reads everything it can, then the writer commits the next packet.
        got.extend(read_all_released(&rec));
        commit_one(&mut w, key); // 7, 8 (key), 9
    }
    drop((first, second));
    got.extend(read_all_released(&rec));
    assert_eq!(got, [8, 9], "lossless from the next keyframe on");
    let stats = ring.stats();
    let recorder = stats
        .active()
        .find(|r| r.name_str() == "recorder")
        .expect("active");
    assert_eq!(
        (recorder.received, recorder.dropped),
        (2, 2),
        "6 and 7 (no keyframe before them) dropped"
    );
}

/// A lossless reader the writer evicted comes back at the head even when
/// the newest keyframe and the run after it are still in the ring: pinned
/// there, it would hand the writer back the full ring it was evicted for.
#[test]
fn rejoin_pins_at_the_head_not_at_an_older_keyframe() {
    let st = Storage::new(8, 1);
    let ring = st.ring(LosslessPolicy::Block).for_packets(MAX_LEN);
    let mut w = Writer::new(&ring);
    commit_one(&mut w, true); // 1
    let sub = Subscription::register(&ring, &request(Mode::Queue, 1, b"slow")).expect("register");
    for key in [false, true, false, false, false, false, false] {
        commit_one(&mut w, key); // 2..=8, keyframe 3
    }
    assert_eq!(w.poll_loan(), Err(LoanError::Backpressure));
    assert_eq!(w.evict_laggards(), 1);
    commit_one(&mut w, false); // 9 overwrites 1
    assert_eq!(sub.try_read().unwrap_err(), ReadError::Lagged);
    assert_eq!(
        st.subs[0].cursor.load(SeqCst),
        9,
        "at the head, not keyframe 3"
    );
    // The writer has the ring again: every slot but the head's is free.
    for _ in 0..6 {
        commit_one(&mut w, false);
    }
    assert_eq!(w.poll_loan(), Ok(()));
}
