//! loom models of the ring protocol: every interleaving (up to the
//! preemption bound) of the real core code, with loom's atomics swapped in
//! through `cuframes_core::sync`.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p cuframes-verification --test loom --release --target-dir target/loom
//! ```
//!
//! Slot payloads are `loom::cell::UnsafeCell<u64>`s: the writer stores the
//! seq it is about to commit, a reader checks it sees exactly the seq it was
//! promised. loom fails the model if a reader's access is not ordered after
//! the writer's (a torn or reused slot) or the writer's after a reader's
//! (a slot rewritten while held). Waiting goes through a futex emulated with
//! a loom mutex and condition variable, so a lost wake-up is a deadlock loom
//! reports.
//!
//! The crash-safe reclaim models (after the first five) add the record
//! locks of the std layer as loom atomics: a dead reader recovered by a
//! sweeper while the writer runs, a recovery taking over a reclaim that
//! died half-way, late sweepers against a new claimant, a withdrawn probe
//! waking the writer, two registrations racing the hold budget, and a
//! subscription shared by two threads.
#![cfg(loom)]

use cuframes_core::sync::{AtomicU32, Ordering::*};
use cuframes_core::*;
use cuframes_verification::{active_generation, request, Storage};
use loom::cell::UnsafeCell;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// `loom::model`, counting the executions it explored (printed with
/// `--nocapture`, to see that a model explores what it should).
fn model<F: Fn() + Send + Sync + 'static>(name: &'static str, f: F) {
    model_with(name, loom::model::Builder::new(), f)
}

/// [`model`] with a builder (for a model whose interleaving needs more
/// preemptions than `LOOM_MAX_PREEMPTIONS`).
fn model_with<F: Fn() + Send + Sync + 'static>(
    name: &'static str,
    builder: loom::model::Builder,
    f: F,
) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    builder.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!(
        "{name}: {} executions",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// A futex: `wait` sleeps only while the word still holds `expected`;
/// `wake` wakes every sleeper. Checked under the lock, so a wake that
/// follows a change of the word is never lost.
struct Futex {
    lock: Mutex<()>,
    cv: Condvar,
}

impl Futex {
    fn new() -> Self {
        Self {
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    fn wait(&self, word: &AtomicU32, expected: u32) {
        let guard = self.lock.lock().unwrap();
        if word.load(SeqCst) == expected {
            drop(self.cv.wait(guard).unwrap());
        }
    }

    fn wake(&self) {
        let _guard = self.lock.lock().unwrap();
        self.cv.notify_all();
    }
}

/// One ring plus what the processes share besides it: slot payloads and
/// the two futexes.
struct Shared {
    st: Storage,
    payload: Vec<UnsafeCell<u64>>,
    readers: Futex,
    writer: Futex,
    policy: LosslessPolicy,
}

impl Shared {
    fn new(slots: u32, subscribers: u32, policy: LosslessPolicy) -> Arc<Self> {
        Arc::new(Self {
            st: Storage::new(slots, subscribers),
            payload: (0..slots).map(|_| UnsafeCell::new(0)).collect(),
            readers: Futex::new(),
            writer: Futex::new(),
            policy,
        })
    }

    /// A process's view: its own `Ring` over the shared structures.
    fn handle(&self) -> Handle<'_> {
        Handle {
            ring: self.st.ring(self.policy),
            sh: self,
        }
    }
}

struct Handle<'a> {
    ring: Ring<'a>,
    sh: &'a Shared,
}

impl RingRef for Handle<'_> {
    fn ring(&self) -> &Ring<'_> {
        &self.ring
    }
    fn wake(&self, who: Wake) {
        match who {
            Wake::Readers => self.sh.readers.wake(),
            Wake::Writer => self.sh.writer.wake(),
        }
    }
}

fn register(h: &Handle<'_>, mode: Mode) -> RecordToken {
    h.ring.register(&request(mode, 1, b"m")).expect("register")
}

/// Fills the loaned slot with the seq it will carry, then commits.
fn fill_and_commit(h: &Handle<'_>, g: WriteGrant<'_, &Handle<'_>>) -> u64 {
    let seq = g.seq();
    // SAFETY: loom checks the claim: the write grant makes the writer the
    // only party touching this slot's payload (a racing read or write
    // fails the model).
    h.sh.payload[g.slot() as usize].with_mut(|p| unsafe { *p = seq });
    let done = g.commit(0, 0);
    assert_eq!(done.seq, seq);
    seq
}

/// Publishes one frame, waiting on `space` under backpressure with the
/// announce / re-check / sleep sequence the std layer uses.
fn publish(h: &Handle<'_>, w: &mut Writer<&Handle<'_>>) -> u64 {
    loop {
        let err = match w.try_loan() {
            Ok(g) => return fill_and_commit(h, g),
            Err(e) => e,
        };
        match err {
            LoanError::Full => thread::yield_now(),
            LoanError::Backpressure => {
                let v = h.ring.begin_wait_space();
                let again = match w.try_loan() {
                    Ok(g) => {
                        h.ring.end_wait_space();
                        return fill_and_commit(h, g);
                    }
                    Err(e) => e,
                };
                match again {
                    LoanError::Backpressure => h.sh.writer.wait(&h.sh.st.ctl.space, v),
                    LoanError::Full => thread::yield_now(),
                    e => panic!("loan: {e:?}"),
                }
                h.ring.end_wait_space();
            }
            e => panic!("loan: {e:?}"),
        }
    }
}

/// Loans a slot, scribbles on it, and drops the grant (abort): no reader
/// may ever see the scribble, and the seq is not consumed.
fn abort_one(h: &Handle<'_>, w: &mut Writer<&Handle<'_>>) {
    let next = w.next_seq();
    if let Ok(g) = w.try_loan() {
        // SAFETY: as in `fill_and_commit`; loom checks it.
        h.sh.payload[g.slot() as usize].with_mut(|p| unsafe { *p = u64::MAX });
        drop(g);
    }
    assert_eq!(w.next_seq(), next);
}

/// Takes the next frame, waiting on `notify`; `None` once closed and
/// drained. Checks the payload is exactly the promised seq.
fn next_frame<'h>(h: &'h Handle<'h>, token: &RecordToken) -> Option<ReadGrant<&'h Handle<'h>>> {
    let got = loop {
        match ReadGrant::acquire(h, token) {
            Err(ReadError::WouldBlock) => {}
            other => break other,
        }
        let v = h.ring.begin_wait(token.index());
        match ReadGrant::acquire(h, token) {
            Err(ReadError::WouldBlock) => {
                h.sh.readers.wait(&h.sh.st.ctl.notify, v);
                h.ring.end_wait(token.index());
            }
            other => {
                h.ring.end_wait(token.index());
                break other;
            }
        }
    };
    match got {
        Ok(f) => {
            // SAFETY: loom checks the claim: a held frame's slot is not
            // written until it is released.
            let seen = h.sh.payload[f.slot() as usize].with(|p| unsafe { *p });
            assert_eq!(seen, f.seq(), "payload of slot {} torn or reused", f.slot());
            Some(f)
        }
        Err(ReadError::Closed) => None,
        Err(e) => panic!("read: {e:?}"),
    }
}

/// After every thread joined and every grant is gone: no lease bit is left
/// and no subscriber counts a held frame.
fn assert_nothing_held(sh: &Shared) {
    for (i, s) in sh.st.slots.iter().enumerate() {
        assert_eq!(s.lease.load(SeqCst), 0, "slot {i} leaked");
    }
    for r in &sh.st.subs {
        assert_eq!(r.held.load(SeqCst), 0);
    }
}

fn record<'s>(sh: &'s Shared, token: &RecordToken) -> &'s SubscriberRecord {
    &sh.st.subs[token.index() as usize]
}

/// (i) One writer, two NEWEST_ONLY readers. Each reader sees strictly
/// increasing seqs, ends on the last frame, and accounts for every frame
/// as received or skipped. The first `WARMUP` frames are published before
/// the readers start, so that the concurrent frames reuse slots the
/// readers held; aborted loans in between must stay invisible.
#[test]
fn writer_and_two_newest_only_readers() {
    const WARMUP: u64 = 3;
    const FRAMES: u64 = WARMUP + 4;
    model("writer_and_two_newest_only_readers", || {
        // Budget: 1 + 1 held, plus the head and the writer's slot.
        let sh = Shared::new(4, 2, LosslessPolicy::Block);
        let main = sh.handle();
        let tokens = [
            register(&main, Mode::NewestOnly),
            register(&main, Mode::NewestOnly),
        ];
        let mut w = Writer::new(&main);
        for seq in 1..=WARMUP {
            assert_eq!(publish(&main, &mut w), seq);
        }

        let readers: Vec<_> = tokens
            .into_iter()
            .map(|token| {
                let sh = sh.clone();
                thread::spawn(move || {
                    let h = sh.handle();
                    let (mut first, mut last) = (0, 0);
                    while let Some(f) = next_frame(&h, &token) {
                        assert!(
                            f.seq() > last,
                            "newest-only went back: {} after {last}",
                            f.seq()
                        );
                        if first == 0 {
                            first = f.seq();
                        }
                        last = f.seq();
                    }
                    assert_eq!(last, FRAMES, "a newest-only reader gets the last frame");
                    // Skips are counted between frames received.
                    let r = record(&sh, &token);
                    let (rx, skipped) = (r.received.load(SeqCst), r.dropped.load(SeqCst));
                    assert_eq!(rx + skipped, last - first + 1);
                    h.ring.deregister(token);
                })
            })
            .collect();

        for seq in WARMUP + 1..=FRAMES {
            if seq % 2 == 0 {
                abort_one(&main, &mut w);
            }
            assert_eq!(publish(&main, &mut w), seq);
        }
        w.close();
        for r in readers {
            r.join().unwrap();
        }
        assert_nothing_held(&sh);
        assert_eq!(sh.handle().ring.stats().active().count(), 0);
    });
}

/// A lossless reader against a writer that publishes `frames` (aborting
/// one loan before the last) then closes; returns the seqs it received.
fn lossless_run(policy: LosslessPolicy, frames: u64) -> (Arc<Shared>, Vec<u64>, RecordToken) {
    let sh = Shared::new(3, 1, policy);
    let token = register(&sh.handle(), Mode::Queue);
    let writer = {
        let sh = sh.clone();
        thread::spawn(move || {
            let h = sh.handle();
            let mut w = Writer::new(&h);
            for seq in 1..=frames {
                if seq == frames {
                    // Under drop-oldest this loans the slot of the oldest
                    // unread frame, the one the reader may be reaching for.
                    abort_one(&h, &mut w);
                }
                assert_eq!(publish(&h, &mut w), seq);
            }
            w.close();
        })
    };
    let h = sh.handle();
    let mut seen = Vec::new();
    while let Some(f) = next_frame(&h, &token) {
        seen.push(f.seq());
    }
    writer.join().unwrap();
    (sh, seen, token)
}

/// (ii) Lossless reader, `Block`: every seq, in order, nothing dropped.
/// Four frames through three slots, so the writer must block at least
/// once unless the reader keeps up.
#[test]
fn lossless_reader_under_block_sees_every_frame() {
    model("lossless_reader_under_block_sees_every_frame", || {
        let (sh, seen, token) = lossless_run(LosslessPolicy::Block, 4);
        assert_eq!(seen, [1, 2, 3, 4]);
        let r = record(&sh, &token);
        assert_eq!(r.dropped.load(SeqCst), 0);
        assert_eq!(r.received.load(SeqCst), 4);
        assert_nothing_held(&sh);
        assert!(!sh.handle().ring.deregister(token));
    });
}

/// (iii) Lossless reader, `DropOldest`: seqs strictly increase, and
/// received + dropped accounts for every frame published.
#[test]
fn lossless_reader_under_drop_oldest_counts_drops() {
    model("lossless_reader_under_drop_oldest_counts_drops", || {
        let (sh, seen, token) = lossless_run(LosslessPolicy::DropOldest, 4);
        assert!(seen.windows(2).all(|p| p[0] < p[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&4), "the newest frame is never dropped");
        let r = record(&sh, &token);
        let (rx, dropped) = (r.received.load(SeqCst), r.dropped.load(SeqCst));
        assert_eq!(rx, seen.len() as u64);
        assert_eq!(rx + dropped, 4, "seen {seen:?}, dropped {dropped}");
        assert_eq!(r.cursor.load(SeqCst), 5);
        assert_nothing_held(&sh);
        sh.handle().ring.deregister(token);
    });
}

/// (iv) A lossless reader dies holding frame 1 (its grant and token are
/// forgotten); the monitor then reclaims its record while the writer,
/// blocked by the dead reader's cursor and lease, keeps publishing. The
/// reclaim must wake the writer, clear every lease bit of the dead reader
/// and free the record.
#[test]
fn reclaim_of_dead_reader_races_writer() {
    const FRAMES: u64 = 4;
    model("reclaim_of_dead_reader_races_writer", || {
        let sh = Shared::new(3, 1, LosslessPolicy::Block);
        let main = sh.handle();
        let token = register(&main, Mode::Queue);
        let generation = active_generation(&main.ring, token.index()).expect("active");
        let index = token.index();

        let writer = {
            let sh = sh.clone();
            thread::spawn(move || {
                let h = sh.handle();
                let mut w = Writer::new(&h);
                for seq in 1..=FRAMES {
                    assert_eq!(publish(&h, &mut w), seq);
                }
            })
        };

        // The reader takes frame 1 and dies: nothing it holds is ever
        // given back by it.
        let f = next_frame(&main, &token).expect("frame 1");
        assert_eq!(f.seq(), 1);
        core::mem::forget(f);
        let _never_deregistered = token;

        // The monitor (here the same thread: its liveness check happens
        // after the death) reclaims the record.
        match main.ring.reclaim(index, generation) {
            Some(true) => main.wake(Wake::Writer),
            Some(false) => {}
            None => panic!("the record was live and ours to reclaim"),
        }
        writer.join().unwrap();
        assert_nothing_held(&sh);
        assert_eq!(active_generation(&main.ring, index), None, "record freed");
        assert_eq!(sh.st.subs[index as usize].cursor.load(SeqCst), NO_CURSOR);
    });
}

/// (iv, continued) The same with a live NEWEST_ONLY reader polling once
/// meanwhile: the reclaim must clear only the dead record's bits, never
/// the live reader's hold.
#[test]
fn reclaim_races_writer_and_live_reader() {
    const FRAMES: u64 = 3;
    model("reclaim_races_writer_and_live_reader", || {
        // Budget: 1 (dead) + 1 (live) + 2.
        let sh = Shared::new(4, 2, LosslessPolicy::Block);
        let main = sh.handle();
        let dead = register(&main, Mode::Queue);
        let live = register(&main, Mode::NewestOnly);
        let generation = active_generation(&main.ring, dead.index()).expect("active");
        let index = dead.index();

        let writer = {
            let sh = sh.clone();
            thread::spawn(move || {
                let h = sh.handle();
                let mut w = Writer::new(&h);
                for seq in 1..=FRAMES {
                    assert_eq!(publish(&h, &mut w), seq);
                }
                w.close();
            })
        };
        let reader = {
            let sh = sh.clone();
            thread::spawn(move || {
                let h = sh.handle();
                let mut last = 0;
                for _ in 0..1 {
                    match ReadGrant::acquire(&h, &live) {
                        Ok(f) => {
                            // SAFETY: as in `next_frame`; loom checks it.
                            let seen = h.sh.payload[f.slot() as usize].with(|p| unsafe { *p });
                            assert_eq!(seen, f.seq());
                            assert!(f.seq() > last);
                            last = f.seq();
                        }
                        Err(ReadError::WouldBlock | ReadError::Closed) => thread::yield_now(),
                        Err(e) => panic!("read: {e:?}"),
                    }
                }
                h.ring.deregister(live);
            })
        };

        let f = next_frame(&main, &dead).expect("frame 1");
        assert_eq!(f.seq(), 1);
        core::mem::forget(f);
        let _never_deregistered = dead;
        match main.ring.reclaim(index, generation) {
            Some(true) => main.wake(Wake::Writer),
            Some(false) => {}
            None => panic!("the record was live and ours to reclaim"),
        }
        writer.join().unwrap();
        reader.join().unwrap();
        assert_nothing_held(&sh);
        assert_eq!(main.ring.stats().active().count(), 0);
    });
}

/// (v) A lossless reader registers while the writer publishes (`Block`).
/// Registration pins its cursor to the newest frame; from there it must
/// see every frame in order, with nothing dropped: the writer may not
/// recycle the pinned frame's slot after the cursor is set.
#[test]
fn lossless_registration_races_writer() {
    const FRAMES: u64 = 4;
    model("lossless_registration_races_writer", || {
        let sh = Shared::new(3, 1, LosslessPolicy::Block);
        let writer = {
            let sh = sh.clone();
            thread::spawn(move || {
                let h = sh.handle();
                let mut w = Writer::new(&h);
                for seq in 1..=FRAMES {
                    assert_eq!(publish(&h, &mut w), seq);
                }
                w.close();
            })
        };
        let h = sh.handle();
        let token = match h.ring.register(&request(Mode::Queue, 1, b"late")) {
            Ok(token) => token,
            // Registered after the close: nothing to check.
            Err(RegisterError::Closed) => {
                writer.join().unwrap();
                return;
            }
            Err(e) => panic!("register: {e:?}"),
        };
        let mut seen = Vec::new();
        while let Some(f) = next_frame(&h, &token) {
            seen.push(f.seq());
        }
        writer.join().unwrap();
        let first = seen.first().copied().unwrap_or(FRAMES + 1);
        assert_eq!(seen, (first..=FRAMES).collect::<Vec<_>>());
        assert_eq!(record(&sh, &token).dropped.load(SeqCst), 0);
        h.ring.deregister(token);
        assert_nothing_held(&sh);
    });
}

// ------------------------------------------------------ crash-safe reclaim
//
// The models below add the record locks of the std layer (kernel locks on
// byte i of the segment file, held by a subscriber for its record's whole
// life and dropped by the kernel when it dies) as loom atomics, and check
// the recovery protocol against the writer, the dead record's own last
// steps, other sweepers and new claimants.

/// A record's liveness lock. `try_lock`/`unlock` stand for the kernel's
/// open-file-description lock: taking it after its holder died (or
/// unlocked) orders everything the holder did before everything the taker
/// does next.
struct RecordLock(loom::sync::atomic::AtomicBool);

impl RecordLock {
    /// A lock its owner holds from the start (it took it before claiming).
    fn held() -> Self {
        Self(loom::sync::atomic::AtomicBool::new(true))
    }

    fn free() -> Self {
        Self(loom::sync::atomic::AtomicBool::new(false))
    }

    fn try_lock(&self) -> bool {
        self.0
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
    }

    /// Waits for the lock (the sweeper retrying until its holder is gone).
    fn lock(&self) {
        while !self.try_lock() {
            thread::yield_now();
        }
    }

    /// Unlock, or the kernel dropping the lock of a process that died.
    fn unlock(&self) {
        self.0.store(false, Release);
    }
}

/// The std layer's recovery of record `index`, whose lock the caller
/// holds: read the state word, reclaim that generation, wake the writer
/// if it waits. True if this call freed the record.
fn recover(h: &Handle<'_>, index: u32) -> bool {
    let word = h.sh.st.subs[index as usize].state.load(Acquire);
    match h.ring.reclaim(index, record::generation_of(word)) {
        Some(writer_waits) => {
            if writer_waits {
                h.wake(Wake::Writer);
            }
            true
        }
        None => false,
    }
}

/// Publishes one frame, waiting on `space` whenever no slot can be loaned
/// (`Full` or `Backpressure`), as the std publisher's `wait_for_slot`
/// does: announce, re-check, sleep while `space` is unchanged.
fn publish_waiting(h: &Handle<'_>, w: &mut Writer<&Handle<'_>>) -> u64 {
    loop {
        match w.try_loan() {
            Ok(g) => return fill_and_commit(h, g),
            Err(LoanError::Full | LoanError::Backpressure) => {}
            Err(e) => panic!("loan: {e:?}"),
        }
        let v = h.ring.begin_wait_space();
        if w.poll_loan().is_err() {
            h.sh.writer.wait(&h.sh.st.ctl.space, v);
        }
        h.ring.end_wait_space();
    }
}

/// How many slots carry record `index`'s lease bit. Each word is read
/// with a read-modify-write that changes nothing, so it is the newest
/// value (a plain load from another thread may return an older one).
fn bits_of(sh: &Shared, index: u32) -> usize {
    sh.st
        .slots
        .iter()
        .filter(|s| s.lease.fetch_or(0, Relaxed) & (1 << index) != 0)
        .count()
}

/// (a) A lossless reader reads and releases frame 1, takes frame 2 and
/// dies holding it (its grant is forgotten, the kernel drops its lock). A
/// sweeper waiting for the lock then recovers the record, while the writer,
/// blocked by the dead reader's cursor and lease, publishes on. The writer
/// never rewrites a slot the reader still holds (the payload cells: the
/// dead reader's last read is ordered before the rewrite only through the
/// lock and the reclaim), it is woken by the reclaim (no deadlock), and no
/// lease bit of the dead record survives.
#[test]
fn dead_reader_recovered_by_sweeper_races_writer() {
    // Three slots: frame 4 reuses frame 1's slot once it is released; frame
    // 5 needs frame 2's (held by the dead reader) or frame 3's (its cursor
    // needs it): only the recovery lets it through.
    const FRAMES: u64 = 5;
    model("dead_reader_recovered_by_sweeper_races_writer", || {
        let sh = Shared::new(3, 1, LosslessPolicy::Block);
        let lock = Arc::new(RecordLock::held());
        let token = register(&sh.handle(), Mode::Queue);
        let index = token.index();

        let owner = {
            let (sh, lock) = (sh.clone(), lock.clone());
            thread::spawn(move || {
                let h = sh.handle();
                let f = next_frame(&h, &token).expect("frame 1");
                assert_eq!(f.seq(), 1);
                f.release();
                let f = next_frame(&h, &token).expect("frame 2");
                assert_eq!(f.seq(), 2);
                // Dies holding frame 2: nothing is given back by it.
                core::mem::forget(f);
                let _never_deregistered = token;
                lock.unlock();
            })
        };
        let sweeper = {
            let (sh, lock) = (sh.clone(), lock.clone());
            thread::spawn(move || {
                let h = sh.handle();
                lock.lock();
                assert!(recover(&h, index), "the dead record was recovered");
                lock.unlock();
            })
        };

        let h = sh.handle();
        let mut w = Writer::new(&h);
        for seq in 1..=FRAMES {
            assert_eq!(publish_waiting(&h, &mut w), seq);
        }
        owner.join().unwrap();
        sweeper.join().unwrap();
        assert_eq!(bits_of(&sh, index), 0, "a dead record's bit survived");
        assert_nothing_held(&sh);
        let r = &sh.st.subs[index as usize];
        assert_eq!(record::state_of(r.state.load(SeqCst)), record::FREE);
        assert_eq!(w.poll_loan(), Ok(()));
    });
}

/// (b) Two registrations on two records at once, each holding its own
/// record's lock, where the hold budget (4 slots) has room for only one of
/// them (`max_held` 2 each): never both succeed; afterwards the budget
/// holds over every record that is not FREE, and a loser's record is FREE
/// again.
#[test]
fn registrations_race_the_hold_budget() {
    model("registrations_race_the_hold_budget", || {
        let sh = Shared::new(4, 2, LosslessPolicy::Block);
        // Each registrant holds its own record's lock (different records:
        // the locks never meet, so they are left out).
        let claim = |index: u32| {
            let sh = sh.clone();
            thread::spawn(move || {
                let h = sh.handle();
                match h
                    .ring
                    .register_at(index, &request(Mode::NewestOnly, 2, b"b"))
                {
                    Ok(_stays_registered) => true,
                    Err(RegisterError::HoldBudget) => false,
                    Err(e) => panic!("register_at({index}): {e:?}"),
                }
            })
        };
        let a = claim(0);
        let b = claim(1);
        let won = [a.join().unwrap(), b.join().unwrap()];
        assert!(!(won[0] && won[1]), "both registrations passed the budget");
        let mut held = 0;
        for (i, r) in sh.st.subs.iter().enumerate() {
            let st = record::state_of(r.state.load(SeqCst));
            if won[i] {
                assert_eq!(st, record::ACTIVE);
            } else {
                assert_eq!(st, record::FREE, "the loser's record {i} is not FREE");
            }
            if st != record::FREE {
                held += r.max_held.load(SeqCst);
            }
        }
        assert!(held + 2 <= 4, "budget broken: {held} held of 4 slots");
        assert_nothing_held(&sh);
    });
}

/// The first `k` steps of a reclaim of record `index` (generation
/// `generation`) by a sweeper that then died: C1 (to RECLAIMING), F1
/// (cursor), F2 per slot (its bit), F3 (held). Plain stores, as the dead
/// sweeper left them.
fn reclaim_died_after(sh: &Shared, index: u32, generation: u64, k: usize) {
    let r = &sh.st.subs[index as usize];
    let slots = sh.st.slots.len();
    for step in 0..k {
        match step {
            0 => r
                .state
                .store(record::word(generation, record::RECLAIMING), SeqCst),
            1 => r.cursor.store(NO_CURSOR, SeqCst),
            s if s < 2 + slots => {
                let lease = &sh.st.slots[s - 2].lease;
                lease.store(lease.load(SeqCst) & !(1 << index), SeqCst);
            }
            s if s == 2 + slots => r.held.store(0, SeqCst),
            _ => unreachable!("F4 would have freed it"),
        }
    }
}

/// (c) A lossless reader (`max_held` 2) holds frames 1 and 2 (slots 0
/// and 1) and dies; a first sweeper's reclaim of its record dies after `k`
/// steps (set up as the memory it left; k = 0: before its first step);
/// then, while the writer publishes five more frames (the last ones need
/// the dead reader's slots), a second sweeper takes the lock and recovers
/// the record, taking over a RECLAIMING one as it is, and wakes the writer
/// if it waits. Afterwards the record is FREE in its generation, no bit of
/// it is left, and the writer can loan.
#[test]
fn recovery_takes_over_a_reclaim_that_died() {
    // Steps: C1, F1, F2 for slots 0..4, F3. k = 5, 6 clear bits the dead
    // reader does not have, so they leave the memory of k = 4.
    for k in [0, 1, 2, 3, 4, 7] {
        let name: &'static str = Box::leak(
            format!("recovery_takes_over_a_reclaim_that_died (k = {k})").into_boxed_str(),
        );
        model(name, move || {
            // Budget: 2 held, plus the head and one for the writer.
            let sh = Shared::new(4, 1, LosslessPolicy::Block);
            let lock = Arc::new(RecordLock::free());
            let h = sh.handle();
            let token = h
                .ring
                .register(&request(Mode::Queue, 2, b"dead"))
                .expect("register");
            let (index, generation) = (token.index(), token.generation());
            let mut w = Writer::new(&h);
            for seq in 1..=2 {
                assert_eq!(publish(&h, &mut w), seq);
                let f = next_frame(&h, &token).expect("a frame");
                assert_eq!((f.seq(), f.slot()), (seq, seq as u32 - 1));
                core::mem::forget(f);
            }
            let _never_deregistered = token;
            reclaim_died_after(&sh, index, generation, k);

            let sweeper = {
                let (sh, lock) = (sh.clone(), lock.clone());
                thread::spawn(move || {
                    let h = sh.handle();
                    lock.lock();
                    assert!(recover(&h, index), "recovered");
                    lock.unlock();
                })
            };
            for seq in 3..=7 {
                assert_eq!(publish_waiting(&h, &mut w), seq);
            }
            sweeper.join().unwrap();
            assert_nothing_held(&sh);
            let r = &sh.st.subs[index as usize];
            assert_eq!(r.state.load(SeqCst), record::word(generation, record::FREE));
            assert_eq!(w.poll_loan(), Ok(()));
        });
    }
}

/// (d) A dead NEWEST_ONLY reader holds the head frame. Two sweepers (each
/// checks the state, tries the lock once, recovers under it, as the std
/// sweep does) race a registrant that takes the lock (waiting for it),
/// recovers the record itself if it is still taken, claims it and reads
/// the very frame the dead reader held (same slot, same bit). Whatever the
/// order, the new owner's bit and held count are never cleared: a late
/// sweeper either finds the lock taken or the record FREE.
#[test]
fn late_sweepers_leave_a_reclaimed_record_alone() {
    model("late_sweepers_leave_a_reclaimed_record_alone", || {
        let sh = Shared::new(3, 1, LosslessPolicy::Block);
        let lock = Arc::new(RecordLock::held());
        {
            let h = sh.handle();
            let token = register(&h, Mode::NewestOnly);
            let mut w = Writer::new(&h);
            assert_eq!(publish(&h, &mut w), 1);
            let f = next_frame(&h, &token).expect("frame 1");
            core::mem::forget(f);
            let _never_deregistered = token;
        }
        lock.unlock(); // the reader died

        let sweeper = || {
            let (sh, lock) = (sh.clone(), lock.clone());
            thread::spawn(move || {
                let h = sh.handle();
                let r = &sh.st.subs[0];
                if record::state_of(r.state.load(Acquire)) == record::FREE {
                    return;
                }
                if lock.try_lock() {
                    recover(&h, 0);
                    lock.unlock();
                }
            })
        };
        let sweepers = [sweeper(), sweeper()];

        let h = sh.handle();
        lock.lock();
        let req = request(Mode::NewestOnly, 1, b"new");
        let token = match h.ring.register_at(0, &req) {
            Err(RegisterError::Taken) => {
                assert!(recover(&h, 0), "the lock holder recovers it");
                h.ring.register_at(0, &req)
            }
            other => other,
        }
        .expect("claimed after recovery");
        let f = ReadGrant::acquire(&h, &token).expect("frame 1");
        assert_eq!((f.seq(), f.slot()), (1, 0));
        for s in sweepers {
            s.join().unwrap();
        }
        let r = &sh.st.subs[0];
        assert_eq!(
            sh.st.slots[0].lease.load(SeqCst),
            1,
            "the new owner's bit was cleared"
        );
        assert_eq!(r.held.load(SeqCst), 1, "the new owner's held count");
        assert_eq!(
            r.state.load(SeqCst),
            record::word(token.generation(), record::ACTIVE)
        );
        f.release();
        h.ring.deregister(token);
        lock.unlock();
        assert_nothing_held(&sh);
    });
}

/// (e) A NEWEST_ONLY reader reads the head (frame 4, slot 3) and is slow to
/// probe it; meanwhile the writer publishes three frames a lossless reader
/// needs, then loans slot 3 and aborts it (the slot is empty now, and the
/// only one that is not needed). The reader's probe lands on the aborted
/// slot; the writer, seeing it leased and every other slot needed, waits
/// for `space`; the reader withdraws the probe (seq mismatch). The
/// withdrawal must wake the writer: a lost wake-up is a deadlock, as the
/// reader, having then taken a later frame, keeps it until the writer is
/// done. (If the reader wins slot 3 instead, it releases it at once.) The
/// interleaving takes three preemptions (reader, writer, reader, writer),
/// so this model runs with a bound of at least 3.
#[test]
fn withdrawn_probe_wakes_the_writer() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.unwrap_or(3).max(3));
    model_with("withdrawn_probe_wakes_the_writer", builder, || {
        // Budget: 1 + 1 held, plus the head and one for the writer.
        let sh = Shared::new(4, 2, LosslessPolicy::Block);
        // The reader says it has started (so both start together without
        // spending a preemption on it); the writer says it is done.
        let started = Arc::new((AtomicU32::new(0), Futex::new()));
        let done = Arc::new((AtomicU32::new(0), Futex::new()));
        let writer = {
            let sh = sh.clone();
            thread::spawn(move || {
                let h = sh.handle();
                let newest = register(&h, Mode::NewestOnly);
                let mut w = Writer::new(&h);
                for seq in 1..=4 {
                    assert_eq!(publish(&h, &mut w), seq);
                }
                // A lossless reader read frame 4: its cursor is 5, so
                // frames 5.. are needed and 1..=4 are not.
                let queue = register(&h, Mode::Queue);
                next_frame(&h, &queue).expect("frame 4").release();

                let reader = {
                    let (sh, started, done) = (sh.clone(), started.clone(), done.clone());
                    thread::spawn(move || {
                        started.0.store(1, SeqCst);
                        started.1.wake();
                        let h = sh.handle();
                        let f = ReadGrant::acquire(&h, &newest).expect("a frame");
                        // SAFETY: as in `next_frame`; loom checks it.
                        let seen = h.sh.payload[f.slot() as usize].with(|p| unsafe { *p });
                        assert_eq!(seen, f.seq());
                        if f.slot() != 3 {
                            // Keep it until the writer is done: then only the
                            // withdrawal (if there was one) can wake it.
                            while done.0.load(SeqCst) == 0 {
                                done.1.wait(&done.0, 0);
                            }
                        }
                    })
                };
                while started.0.load(SeqCst) == 0 {
                    started.1.wait(&started.0, 0);
                }
                for seq in 5..=7 {
                    assert_eq!(publish_waiting(&h, &mut w), seq);
                }
                abort_one(&h, &mut w);
                assert_eq!(publish_waiting(&h, &mut w), 8);
                done.0.store(1, SeqCst);
                done.1.wake();
                reader.join().unwrap();
            })
        };
        writer.join().unwrap();
    });
}

/// (f) Two threads share one subscription with `max_held` 1 and read at
/// once while the writer publishes: the hold is reserved before the probe,
/// so never more than one frame is held, `held` never exceeds 1 and at
/// most one lease bit of the record is set; afterwards nothing is held.
#[test]
fn shared_subscription_holds_at_most_max_held() {
    for mode in [Mode::NewestOnly, Mode::Queue] {
        let name: &'static str = Box::leak(
            format!("shared_subscription_holds_at_most_max_held ({mode:?})").into_boxed_str(),
        );
        model(name, move || {
            let sh = Shared::new(3, 1, LosslessPolicy::Block);
            let h = sh.handle();
            let token = Arc::new(register(&h, mode));
            let mut w = Writer::new(&h);
            assert_eq!(publish(&h, &mut w), 1);
            let holding = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let (sh, token, holding) = (sh.clone(), token.clone(), holding.clone());
                    thread::spawn(move || {
                        let h = sh.handle();
                        match ReadGrant::acquire(&h, &token) {
                            Ok(f) => {
                                assert_eq!(holding.fetch_add(1, SeqCst), 0, "two frames held");
                                let r = &sh.st.subs[token.index() as usize];
                                assert_eq!(r.held.fetch_add(0, Relaxed), 1);
                                assert_eq!(bits_of(&sh, token.index()), 1);
                                // SAFETY: as in `next_frame`; loom checks it.
                                let seen = sh.payload[f.slot() as usize].with(|p| unsafe { *p });
                                assert_eq!(seen, f.seq());
                                holding.fetch_sub(1, SeqCst);
                            }
                            Err(ReadError::HoldLimit | ReadError::WouldBlock) => {}
                            Err(e) => panic!("read: {e:?}"),
                        }
                        let r = &sh.st.subs[token.index() as usize];
                        assert!(r.held.fetch_add(0, Relaxed) <= 1);
                    })
                })
                .collect();
            assert_eq!(publish(&h, &mut w), 2);
            for r in readers {
                r.join().unwrap();
            }
            assert_nothing_held(&sh);
        });
    }
}

/// (f, continued) The same with `max_held` 2: both threads may probe the
/// same frame with the record's one bit. The second `fetch_or` then finds
/// the bit already set: a miss (the frame is held once per subscriber), not
/// `Corrupt`, and the sibling's bit is left alone.
#[test]
fn shared_subscription_with_room_for_two_never_reads_corrupt() {
    model(
        "shared_subscription_with_room_for_two_never_reads_corrupt",
        || {
            // Budget: 2 held, plus the head and one for the writer.
            let sh = Shared::new(4, 1, LosslessPolicy::Block);
            let h = sh.handle();
            let token = Arc::new(
                h.ring
                    .register(&request(Mode::NewestOnly, 2, b"shared"))
                    .expect("register"),
            );
            let mut w = Writer::new(&h);
            assert_eq!(publish(&h, &mut w), 1);
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let (sh, token) = (sh.clone(), token.clone());
                    thread::spawn(move || {
                        let h = sh.handle();
                        let got = ReadGrant::acquire(&h, &token).map(|f| f.seq());
                        assert!(
                            matches!(got, Ok(1) | Err(ReadError::WouldBlock)),
                            "read: {got:?}"
                        );
                    })
                })
                .collect();
            for r in readers {
                r.join().unwrap();
            }
            assert_nothing_held(&sh);
        },
    );
}

// ----------------------------------------------------------------- packets
//
// Packet rings (`Ring::for_packets`): one encoded packet per slot, its
// metadata in the slot header, and reads that keep every subscriber
// decodable (a keyframe first, then keyframes or the direct successor of
// the last packet). The writer commits K, P, P, K, P through three slots;
// the slot's payload cell carries the seq (checked by `next_frame` under
// the hold) and the slot header the packet's metadata.

/// The largest packet of the packet models.
const PACKET_MAX: u64 = 64;
/// The writer's packets, seq 1 to 5: whether each is a keyframe.
const GOP: [bool; 5] = [true, false, false, true, false];

/// What the writer commits as packet `seq`.
fn packet_meta(seq: u64) -> PacketMeta {
    packet_meta_in(&GOP, seq)
}

/// What the writer commits as packet `seq` of a stream whose keyframes
/// are `gop`.
fn packet_meta_in(gop: &[bool], seq: u64) -> PacketMeta {
    PacketMeta {
        len: seq * 10,
        pts_ns: seq as i64 * 1_000,
        dts_ns: seq as i64 * 1_000 - 500,
        duration_ns: 1_000 + seq,
        flags: if gop[seq as usize - 1] {
            packet::KEY
        } else {
            0
        },
    }
}

impl Shared {
    /// A process's view of the ring as a packet ring.
    fn packet_handle(&self) -> Handle<'_> {
        Handle {
            ring: self.st.ring(self.policy).for_packets(PACKET_MAX),
            sh: self,
        }
    }
}

/// Commits the next packet (payload cell: its seq), waiting on `space`
/// when no slot can be loaned, as `publish_waiting` does.
fn publish_packet(h: &Handle<'_>, w: &mut Writer<&Handle<'_>>) -> u64 {
    publish_packet_in(&GOP, h, w)
}

/// [`publish_packet`] for a stream whose keyframes are `gop`.
fn publish_packet_in(gop: &[bool], h: &Handle<'_>, w: &mut Writer<&Handle<'_>>) -> u64 {
    loop {
        match w.begin() {
            Ok(slot) => {
                let seq = w.next_seq();
                // SAFETY: as in `fill_and_commit`; loom checks it.
                h.sh.payload[slot as usize].with_mut(|p| unsafe { *p = seq });
                let done = w.commit_packet(&packet_meta_in(gop, seq), 0).expect("fits");
                assert_eq!((done.seq, done.slot), (seq, slot));
                return seq;
            }
            Err(LoanError::Full | LoanError::Backpressure) => {}
            Err(e) => panic!("loan: {e:?}"),
        }
        let v = h.ring.begin_wait_space();
        if w.poll_loan().is_err() {
            h.sh.writer.wait(&h.sh.st.ctl.space, v);
        }
        h.ring.end_wait_space();
    }
}

/// A packet ring of three slots: a writer thread commits `GOP` and closes
/// while this thread reads with a `mode` subscriber registered before,
/// releasing each packet at once. Each packet is checked while held: it
/// continues the reader's sequence (a keyframe first, then a keyframe or
/// the direct successor), and the grant's metadata, the slot header and
/// the payload are what the writer committed for that seq. Returns the
/// seqs received.
fn packet_run(policy: LosslessPolicy, mode: Mode) -> (Arc<Shared>, Vec<u64>, RecordToken) {
    let sh = Shared::new(3, 1, policy);
    let token = register(&sh.packet_handle(), mode);
    let writer = {
        let sh = sh.clone();
        thread::spawn(move || {
            let h = sh.packet_handle();
            let mut w = Writer::new(&h);
            for seq in 1..=GOP.len() as u64 {
                assert_eq!(publish_packet(&h, &mut w), seq);
            }
            w.close();
        })
    };
    let h = sh.packet_handle();
    let mut got: Vec<u64> = Vec::new();
    while let Some(p) = next_frame(&h, &token) {
        let (seq, meta) = (p.seq(), packet_meta(p.seq()));
        match got.last() {
            None => assert!(meta.is_key(), "first packet {seq} is not a keyframe"),
            Some(&last) => assert!(
                seq > last && (meta.is_key() || seq == last + 1),
                "packet {seq} after {last}: neither a keyframe nor the next"
            ),
        }
        assert_eq!(p.packet(), &meta, "packet {seq} metadata");
        let s = &sh.st.slots[p.slot() as usize];
        let header = PacketMeta {
            len: s.len.load(Relaxed),
            pts_ns: s.pts_ns.load(Relaxed) as i64,
            dts_ns: s.dts_ns.load(Relaxed) as i64,
            duration_ns: s.duration_ns.load(Relaxed),
            flags: s.flags.load(Relaxed),
        };
        assert_eq!(
            (s.seq.load(Relaxed), header),
            (seq, meta),
            "slot header of held packet {seq}"
        );
        got.push(seq);
    }
    writer.join().unwrap();
    (sh, got, token)
}

/// (g) A NEWEST_ONLY packet reader against the writer: decodable, ends
/// on the last GOP (keyframe 4 is never overwritten: three slots, one
/// more commit after it), and `dropped` counts exactly the packets it
/// jumped over.
#[test]
fn newest_only_packet_reader_stays_decodable() {
    model("newest_only_packet_reader_stays_decodable", || {
        let (sh, got, token) = packet_run(LosslessPolicy::Block, Mode::NewestOnly);
        assert!(got.ends_with(&[4, 5]), "{got:?}");
        let r = record(&sh, &token);
        let (rx, dropped) = (r.received.load(SeqCst), r.dropped.load(SeqCst));
        assert_eq!(rx, got.len() as u64);
        assert_eq!(
            rx + dropped,
            5 - got[0] + 1,
            "got {got:?}, dropped {dropped}"
        );
        assert_nothing_held(&sh);
        sh.packet_handle().ring.deregister(token);
    });
}

/// (h) A QUEUE packet reader under drop-oldest: decodable (after a packet
/// it needed was overwritten it goes on at the next keyframe), ends on the
/// last GOP, and received + dropped accounts for every packet, each once.
#[test]
fn queue_packet_reader_under_drop_oldest_stays_decodable() {
    model(
        "queue_packet_reader_under_drop_oldest_stays_decodable",
        || {
            let (sh, got, token) = packet_run(LosslessPolicy::DropOldest, Mode::Queue);
            assert!(got.ends_with(&[4, 5]), "{got:?}");
            let r = record(&sh, &token);
            let (rx, dropped) = (r.received.load(SeqCst), r.dropped.load(SeqCst));
            assert_eq!(rx, got.len() as u64);
            assert_eq!(rx + dropped, 5, "got {got:?}, dropped {dropped}");
            assert_eq!(r.cursor.load(SeqCst), 6);
            assert_nothing_held(&sh);
            sh.packet_handle().ring.deregister(token);
        },
    );
}

/// (i) A QUEUE packet subscriber registers under `Block` while the writer
/// commits (the pin reads the newest keyframe and the head as they
/// change): it starts at a keyframe and from there is lossless, every seq
/// to the last, in order.
#[test]
fn queue_packet_registration_races_writer() {
    model("queue_packet_registration_races_writer", || {
        let sh = Shared::new(3, 1, LosslessPolicy::Block);
        let writer = {
            let sh = sh.clone();
            thread::spawn(move || {
                let h = sh.packet_handle();
                let mut w = Writer::new(&h);
                for seq in 1..=GOP.len() as u64 {
                    assert_eq!(publish_packet(&h, &mut w), seq);
                }
                w.close();
            })
        };
        let h = sh.packet_handle();
        let token = match h.ring.register(&request(Mode::Queue, 1, b"late")) {
            Ok(token) => token,
            // Registered after the close: nothing to check.
            Err(RegisterError::Closed) => {
                writer.join().unwrap();
                return;
            }
            Err(e) => panic!("register: {e:?}"),
        };
        let mut got = Vec::new();
        while let Some(p) = next_frame(&h, &token) {
            assert_eq!(p.packet(), &packet_meta(p.seq()));
            got.push(p.seq());
        }
        writer.join().unwrap();
        if let Some(&first) = got.first() {
            assert!(
                GOP[first as usize - 1],
                "first packet {first} is not a keyframe"
            );
            assert_eq!(got, (first..=5).collect::<Vec<_>>(), "not lossless");
        }
        h.ring.deregister(token);
        assert_nothing_held(&sh);
    });
}

/// Takes the next packet like `next_frame`, but a `Lagged` (the writer
/// evicted this subscriber) is counted and the read goes on.
fn next_packet_after_lag<'h>(
    h: &'h Handle<'h>,
    token: &RecordToken,
    lagged: &mut u32,
) -> Option<ReadGrant<&'h Handle<'h>>> {
    loop {
        let got = match ReadGrant::acquire(h, token) {
            Err(ReadError::WouldBlock) => {
                let v = h.ring.begin_wait(token.index());
                let again = ReadGrant::acquire(h, token);
                if again.as_ref().err() == Some(&ReadError::WouldBlock) {
                    h.sh.readers.wait(&h.sh.st.ctl.notify, v);
                }
                h.ring.end_wait(token.index());
                again
            }
            other => other,
        };
        match got {
            Ok(p) => {
                // SAFETY: as in `next_frame`; loom checks it.
                let seen = h.sh.payload[p.slot() as usize].with(|c| unsafe { *c });
                assert_eq!(seen, p.seq(), "payload of slot {} torn or reused", p.slot());
                return Some(p);
            }
            Err(ReadError::Lagged) => *lagged += 1,
            Err(ReadError::WouldBlock) => {}
            Err(ReadError::Closed) => return None,
            Err(e) => panic!("read: {e:?}"),
        }
    }
}

/// (j) A QUEUE packet reader under `Block` against a writer that, when a
/// loan meets backpressure, evicts the laggard at once (the std
/// publisher's block timeout run out) and goes on. The reader, told
/// `Lagged`, is pinned again at the head while the writer commits: it
/// stays decodable across the eviction, is lossless if never evicted,
/// received + dropped accounts for every packet once, and every eviction
/// is reported to it (`Lagged`) once.
///
/// It found two races in the core, both fixed: `pin_cursor` stored the
/// cursor again on each round of its loop, overwriting an eviction made in
/// between (`evictions` 2, `Lagged` seen once); and an eviction between a
/// successful hold and the cursor's CAS made the rejoin count the packet
/// just delivered as dropped (frame rings too). Re-pins are CASes now, and
/// a rejoin counts from past the reader's last packet.
#[test]
fn evicted_queue_packet_reader_stays_decodable() {
    model("evicted_queue_packet_reader_stays_decodable", || {
        let sh = Shared::new(3, 1, LosslessPolicy::Block);
        let token = register(&sh.packet_handle(), Mode::Queue);
        let writer = {
            let sh = sh.clone();
            thread::spawn(move || {
                let h = sh.packet_handle();
                let mut w = Writer::new(&h);
                for seq in 1..=GOP.len() as u64 {
                    while w.poll_loan() == Err(LoanError::Backpressure) {
                        if w.evict_laggards() == 0 {
                            // The reader moved on meanwhile.
                            thread::yield_now();
                        }
                    }
                    assert_eq!(publish_packet(&h, &mut w), seq);
                }
                w.close();
            })
        };
        let h = sh.packet_handle();
        let (mut got, mut lagged) = (Vec::<u64>::new(), 0);
        while let Some(p) = next_packet_after_lag(&h, &token, &mut lagged) {
            let (seq, meta) = (p.seq(), packet_meta(p.seq()));
            match got.last() {
                None => assert!(meta.is_key(), "first packet {seq} is not a keyframe"),
                Some(&last) => assert!(
                    seq > last && (meta.is_key() || seq == last + 1),
                    "packet {seq} after {last}: neither a keyframe nor the next"
                ),
            }
            assert_eq!(p.packet(), &meta);
            got.push(seq);
        }
        writer.join().unwrap();
        // Never evicted: lossless. Evicted: back at the head, it may have
        // had nothing decodable left (the head not a keyframe).
        if lagged == 0 {
            assert_eq!(got, [1, 2, 3, 4, 5]);
        }
        let r = record(&sh, &token);
        let (rx, dropped) = (r.received.load(SeqCst), r.dropped.load(SeqCst));
        assert_eq!(rx, got.len() as u64);
        assert_eq!(
            rx + dropped,
            5,
            "got {got:?}, dropped {dropped}, lagged {lagged}"
        );
        assert_eq!(
            r.evictions.load(SeqCst),
            u64::from(lagged),
            "evictions the writer made vs `Lagged` the reader was told; got {got:?}"
        );
        assert_nothing_held(&sh);
        h.ring.deregister(token);
    });
}

/// (k) A QUEUE packet subscriber registers under `Block` while the writer
/// loans a slot. The pin lands on keyframe 1, behind the head (a
/// NEWEST_ONLY viewer holds 1, so every packet of the GOP is still there
/// when the pin starts): from there it must be lossless, or, if the pin
/// saw the GOP broken, move on to wait for the next keyframe.
///
/// It found the race it is named for, fixed since: a loan whose slot choice
/// read the cursors before the pin took packet 2's slot after the pin was
/// published (the subscriber got `[1]`, then skipped 2..=5). Now the pin
/// re-checks its run after a fence, and the loan re-checks the cursors
/// after its CAS (fence to fence) and gives a pinned packet back.
#[test]
fn queue_packet_pin_behind_the_head_races_a_loan() {
    const ONE_GOP: [bool; 5] = [true, false, false, false, false];
    // The lossless outcome reads five packets past a writer blocked on
    // the reader: a long execution, not a spin.
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 20_000;
    model_with(
        "queue_packet_pin_behind_the_head_races_a_loan",
        builder,
        || {
            // Budget: 1 + 1 held, plus the head and one for the writer.
            let sh = Shared::new(4, 2, LosslessPolicy::Block);
            let viewer = register(&sh.packet_handle(), Mode::NewestOnly);
            let ready = Arc::new((AtomicU32::new(0), Futex::new()));
            let writer = {
                let (sh, ready) = (sh.clone(), ready.clone());
                thread::spawn(move || {
                    let h = sh.packet_handle();
                    let mut w = Writer::new(&h);
                    assert_eq!(publish_packet_in(&ONE_GOP, &h, &mut w), 1);
                    let held = ReadGrant::acquire(&h, &viewer).expect("keyframe 1");
                    for seq in 2..=4 {
                        assert_eq!(publish_packet_in(&ONE_GOP, &h, &mut w), seq);
                    }
                    ready.0.store(1, SeqCst);
                    ready.1.wake();
                    // Its slot choice may read the cursors before the pin.
                    assert_eq!(publish_packet_in(&ONE_GOP, &h, &mut w), 5);
                    w.close();
                    drop(held);
                    h.ring.deregister(viewer);
                })
            };
            while ready.0.load(SeqCst) == 0 {
                ready.1.wait(&ready.0, 0);
            }
            let h = sh.packet_handle();
            let token = match h.ring.register(&request(Mode::Queue, 1, b"late")) {
                Ok(token) => token,
                // Registered after the close: nothing to check.
                Err(RegisterError::Closed) => {
                    writer.join().unwrap();
                    return;
                }
                Err(e) => panic!("register: {e:?}"),
            };
            let mut got = Vec::new();
            while let Some(p) = next_frame(&h, &token) {
                assert_eq!(p.packet(), &packet_meta_in(&ONE_GOP, p.seq()));
                got.push(p.seq());
            }
            writer.join().unwrap();
            // Pinned at keyframe 1, it gets every packet; or the pin saw a
            // packet after 1 taken and moved on to wait for the next keyframe
            // (there is none).
            assert!(
                got.is_empty() || got == [1, 2, 3, 4, 5],
                "not lossless from keyframe 1: {got:?}"
            );
            h.ring.deregister(token);
            assert_nothing_held(&sh);
        },
    );
}

/// (l) Under `Block`, a QUEUE packet subscriber that joined mid-GOP skips
/// the packets it cannot decode, moving its cursor without keeping any of
/// them: that frees the slots a writer may be waiting for, so it must wake
/// the writer (today through the withdrawal of its probe of each skipped
/// packet). Packets 1..=3 are not keyframes, 4 is.
#[test]
fn queue_packet_skip_wakes_the_writer() {
    const LATE_KEY: [bool; 5] = [false, false, false, true, false];
    model("queue_packet_skip_wakes_the_writer", || {
        let sh = Shared::new(3, 1, LosslessPolicy::Block);
        let h = sh.packet_handle();
        let token = register(&h, Mode::Queue);
        let writer = {
            let sh = sh.clone();
            thread::spawn(move || {
                let h = sh.packet_handle();
                let mut w = Writer::new(&h);
                for seq in 1..=5 {
                    assert_eq!(publish_packet_in(&LATE_KEY, &h, &mut w), seq);
                }
                w.close();
            })
        };
        let mut got = Vec::new();
        while let Some(p) = next_frame(&h, &token) {
            assert_eq!(p.packet(), &packet_meta_in(&LATE_KEY, p.seq()));
            got.push(p.seq());
        }
        writer.join().unwrap();
        assert_eq!(got, [4, 5]);
        let r = record(&sh, &token);
        assert_eq!(r.dropped.load(SeqCst), 3);
        h.ring.deregister(token);
        assert_nothing_held(&sh);
    });
}
