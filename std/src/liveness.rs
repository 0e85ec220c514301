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

use crate::key::PREFIX;
use crate::mapping::Shared;
use crate::sys;
use crate::Result;
use cuframes_core::{record, RecordToken, Register, RegisterError, RingRef, Wake, NAME_LEN};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        let mut recovered = None;
        if got == Err(RegisterError::Taken) {
            let _one = SWEEP.lock().unwrap_or_else(|e| e.into_inner());
            recovered = recover(shared, index, "register");
            got = ring.register_at(index, req);
        }
        // Logged with no lock held (see `sweep_dead_subscribers`).
        if let Some(r) = &recovered {
            r.log(shared);
        }
        match got {
            Ok(token) => {
                if recovered.is_some() {
                    tracing::info!(
                        key = key_of(shared),
                        index,
                        name = String::from_utf8_lossy(req.name).as_ref(),
                        "subscriber registered on a record recovered from a dead process"
                    );
                }
                return Ok(token);
            }
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
    tracing::info!(key = key_of(shared), index, "subscriber record freed");
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
    // What to log, logged once the sweep lock is dropped: a log consumer
    // may block (pyo3-log takes the GIL) and must not hold up the other
    // sweepers of this process meanwhile. No allocation unless something
    // was freed.
    let mut reclaimed = Vec::new();
    let mut lock_error = None;
    {
        let _one = SWEEP.lock().unwrap_or_else(|e| e.into_inner());
        let ring = shared.ring();
        for (index, r) in ring.subscribers().iter().enumerate() {
            let index = index as u32;
            if record::state_of(r.state.load(Ordering::Acquire)) == record::FREE {
                continue;
            }
            // Lock taken: nobody alive owns the record or is claiming it.
            match shared.try_lock_record(index) {
                Ok(true) => {
                    reclaimed.extend(recover(shared, index, "sweep"));
                    shared.unlock_record(index);
                }
                Ok(false) => {}
                Err(e) => {
                    lock_error.get_or_insert((index, e));
                }
            }
        }
    }
    for r in &reclaimed {
        r.log(shared);
    }
    if let Some((index, e)) = lock_error {
        lock_failed(shared, index, &e);
    }
    reclaimed.len()
}

/// A dead subscriber's record just freed, as the log line tells it.
struct Reclaimed {
    index: u32,
    generation: u64,
    /// The state it died in.
    state: u32,
    name: [u8; NAME_LEN],
    pid: u32,
    /// Frames it held (their slots came back).
    held: u32,
    /// Who freed it: `"sweep"` or `"register"`.
    by: &'static str,
}

impl Reclaimed {
    fn log(&self, shared: &Shared) {
        tracing::warn!(
            key = key_of(shared),
            index = self.index,
            generation = self.generation,
            state = state_name(self.state),
            name = name_of(&self.name).as_str(),
            pid = self.pid,
            held = self.held,
            by = self.by,
            "reclaimed the record of a dead subscriber"
        );
    }
}

/// Recovers record `index`, whose lock the caller holds: what was freed,
/// if anything. `by` names who recovered it, for the log.
fn recover(shared: &Shared, index: u32, by: &'static str) -> Option<Reclaimed> {
    let ring = shared.ring();
    let r = &ring.subscribers()[index as usize];
    let word = r.state.load(Ordering::Acquire);
    // Read for the log line before the record is freed: the dead owner's
    // name, pid and frames in hand.
    let (pid, held) = (
        r.pid.load(Ordering::Relaxed),
        r.held.load(Ordering::Relaxed),
    );
    let name = ring.record_name(index);
    let generation = record::generation_of(word);
    let writer_waits = ring.reclaim(index, generation)?;
    if writer_waits {
        shared.wake(Wake::Writer);
    }
    Some(Reclaimed {
        index,
        generation,
        state: record::state_of(word),
        name,
        pid,
        held,
        by,
    })
}

/// The key of the stream a handle maps (from its segment's file name), for
/// log lines.
pub(crate) fn key_of(shared: &Shared) -> &str {
    shared
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(PREFIX))
        .unwrap_or("?")
}

/// A record state's name, for log lines.
fn state_name(state: u32) -> &'static str {
    match state {
        record::FREE => "free",
        record::CLAIMING => "claiming",
        record::ACTIVE => "active",
        record::RECLAIMING => "reclaiming",
        _ => "invalid",
    }
}

/// A stored record name as text (up to the first NUL, lossy).
pub(crate) fn name_of(name: &[u8; NAME_LEN]) -> String {
    let end = name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    String::from_utf8_lossy(&name[..end]).into_owned()
}

/// A record lock that could not even be tested: dead subscribers cannot be
/// told from live ones, so their slots would stay held. Warned once per
/// process (the sweep runs every heartbeat), then at debug level.
fn lock_failed(shared: &Shared, index: u32, e: &crate::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(key = key_of(shared), index, error = %e, "cannot test a subscriber record's liveness lock; dead subscribers are not reclaimed");
    } else {
        tracing::debug!(key = key_of(shared), index, error = %e, "cannot test a subscriber record's liveness lock");
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

/// [`sys::fork_generation`] of the process the heartbeat thread runs in:
/// a forked child inherits the list but not the thread.
static BEAT_THREAD_FORKS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Stamps `who`'s heartbeat every [`BEAT_PERIOD`] from one thread per
/// process, for as long as it lives, however rarely it takes frames.
pub(crate) fn keep_beating(who: &Arc<dyn Beat>) {
    who.beat(sys::now_ns());
    let mut list = BEATING.lock().unwrap_or_else(|e| e.into_inner());
    let forks = sys::fork_generation();
    if BEAT_THREAD_FORKS.load(Ordering::Relaxed) != forks {
        // A forked child: the parent's subscribers are not ours to stamp,
        // and no thread runs here yet.
        list.clear();
    }
    let start = list.is_empty();
    list.push(Arc::downgrade(who));
    if start {
        BEAT_THREAD_FORKS.store(forks, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("cuframes-heartbeat".into())
            .spawn(beat_loop);
        if let Err(e) = spawned {
            // Without the thread nobody is misjudged (heartbeats do not
            // decide liveness); only `stat` shows stale ages.
            list.clear();
            drop(list); // log with no lock held
            tracing::warn!(error = %e, "cannot start the heartbeat thread; subscriber heartbeats will look stale");
        }
    }
}

fn beat_loop() {
    loop {
        std::thread::sleep(BEAT_PERIOD);
        let now = sys::now_ns();
        // Stamped with the list unlocked: the last owner of a subscriber
        // may drop it here (deregistering, logging), which must not hold up
        // new subscribers waiting for the list.
        let live: Vec<Arc<dyn Beat>> = {
            let mut list = BEATING.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|w| w.strong_count() > 0);
            if list.is_empty() {
                return; // the next subscriber starts a new thread
            }
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for b in &live {
            b.beat(now);
        }
    }
}
