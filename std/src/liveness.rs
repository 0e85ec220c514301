//! Who is alive, and what happens to the records of those who are not.
//!
//! A subscriber holds a lock on byte *i* of the segment file (an
//! open-file-description lock, see `ofd`) from before it claims record *i*
//! until after the record is free again. The kernel drops the lock when the
//! process dies, however it dies, in whatever pid namespace it runs. So a
//! record whose lock can be taken has no live owner: that, and only that,
//! is proof of death. A slow, stopped or silent subscriber keeps its lock,
//! its record and every frame it holds. Heartbeats are kept for people
//! (`cuframes stat` shows their age), never to judge anyone dead.

use crate::mapping::Shared;
use crate::sys;
use crate::Result;
use cuframes_core::{record, RecordToken, Register, RegisterError, RingRef, Wake};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Claims a subscriber record on `shared`, taking its lock first. A record
/// that is taken but whose lock is free belongs to a dead process: it is
/// recovered on the spot and claimed.
pub(crate) fn register(shared: &Shared, req: &Register<'_>) -> Result<RecordToken> {
    let ring = shared.ring();
    for index in 0..ring.subscriber_capacity() {
        if !shared.try_lock_record(index)? {
            continue; // a live owner, a live claimant or a sweeper
        }
        let mut got = ring.register_at(index, req);
        if got == Err(RegisterError::Taken) {
            let _one = SWEEP.lock().unwrap_or_else(|e| e.into_inner());
            recover(shared, index);
            got = ring.register_at(index, req);
        }
        match got {
            Ok(token) => return Ok(token),
            Err(RegisterError::Taken | RegisterError::Lost) => shared.unlock_record(index),
            Err(e) => {
                shared.unlock_record(index);
                return Err(e.into());
            }
        }
    }
    Err(RegisterError::NoRecord.into())
}

/// Gives back a record claimed with [`register`]: frees it, then drops its
/// lock (in that order: a free record is nobody's to recover).
pub(crate) fn deregister(shared: &Shared, token: RecordToken) {
    let index = token.index();
    if shared.ring().deregister(token) {
        shared.wake(Wake::Writer);
    }
    shared.unlock_record(index);
}

/// One sweeper at a time per process: two sweepers of one process share
/// their open file description, so the record lock alone cannot keep them
/// apart (each would think it took it).
static SWEEP: Mutex<()> = Mutex::new(());

/// Frees the records (and lease bits) of subscribers that died, in any
/// state they died in (claiming, active, half freed). Records whose owners
/// live are never touched, however long they have been silent. Returns
/// how many records were freed.
pub(crate) fn sweep_dead_subscribers(shared: &Shared) -> usize {
    let _one = SWEEP.lock().unwrap_or_else(|e| e.into_inner());
    let ring = shared.ring();
    let mut freed = 0;
    for (index, r) in ring.subscribers().iter().enumerate() {
        let index = index as u32;
        if record::state_of(r.state.load(Ordering::Acquire)) == record::FREE {
            continue;
        }
        // Lock taken: nobody alive owns the record or is claiming it.
        if shared.try_lock_record(index).unwrap_or(false) {
            freed += usize::from(recover(shared, index));
            shared.unlock_record(index);
        }
    }
    freed
}

/// Recovers record `index`, whose lock the caller holds. True if freed.
fn recover(shared: &Shared, index: u32) -> bool {
    let ring = shared.ring();
    let word = ring.subscribers()[index as usize]
        .state
        .load(Ordering::Acquire);
    match ring.reclaim(index, record::generation_of(word)) {
        Some(writer_waits) => {
            if writer_waits {
                shared.wake(Wake::Writer);
            }
            true
        }
        None => false,
    }
}

/// Something that stamps its heartbeat from the process's heartbeat thread.
pub(crate) trait Beat: Send + Sync {
    /// Writes `now_ns` into its heartbeat word.
    fn beat(&self, now_ns: u64);
}

/// How often the heartbeat thread stamps.
pub(crate) const BEAT_PERIOD: Duration = Duration::from_millis(100);

static BEATING: Mutex<Vec<Weak<dyn Beat>>> = Mutex::new(Vec::new());

/// Stamps `who`'s heartbeat every [`BEAT_PERIOD`] from one thread per
/// process, for as long as it lives, however rarely it takes frames.
pub(crate) fn keep_beating(who: &Arc<dyn Beat>) {
    who.beat(sys::now_ns());
    let mut list = BEATING.lock().unwrap_or_else(|e| e.into_inner());
    let start = list.is_empty();
    list.push(Arc::downgrade(who));
    if start {
        let spawned = std::thread::Builder::new()
            .name("cuframes-heartbeat".into())
            .spawn(beat_loop);
        if spawned.is_err() {
            // Without the thread nobody is misjudged (heartbeats do not
            // decide liveness); only `stat` shows stale ages.
            list.clear();
        }
    }
}

fn beat_loop() {
    loop {
        std::thread::sleep(BEAT_PERIOD);
        let now = sys::now_ns();
        let mut list = BEATING.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| match w.upgrade() {
            Some(b) => {
                b.beat(now);
                true
            }
            None => false,
        });
        if list.is_empty() {
            return; // the next subscriber starts a new thread
        }
    }
}
