//! The floors a handoff is measured against, between two real processes
//! sharing one page of shared memory, each measured the way the cases
//! measure a handoff: the publisher (this process) stamps the time into
//! the page and publishes at the cases' own cadence; the reader (a child
//! process) takes the time when it sees the publication.
//!
//! - busy-poll floor: the reader spins on a cache line, as a busy-poll
//!   subscriber spins on the ring's head;
//! - blocking floor: the reader sleeps on a shared futex word that the
//!   publisher bumps and wakes, as a blocking subscriber sleeps on the
//!   ring's `notify` word;
//! - and the classic cache-line ping-pong, both processes spinning, for
//!   the raw line transfer without clocks.
//!
//! Nothing else is in the reader's path: no ring, no slot, no checks. What
//! a case takes above its floor is the cost of the transport.

use crate::proto::{now_ns, parse_kv, quantile};
use crate::reference::Reference;
use crate::spec::Wake;
use rustix::thread::futex;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The child-spec prefix of a floor reader.
pub const CHILD: &str = "floor";

/// How the reader waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Spins on the publication's cache line (the busy-poll floor).
    Spin,
    /// Sleeps on a shared futex word (the blocking floor).
    Futex,
    /// Echoes every publication back, both sides spinning: half the
    /// round trip is one cache-line transfer.
    PingPong,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Spin => "spin",
            Kind::Futex => "futex",
            Kind::PingPong => "ping-pong",
        }
    }

    /// The floor of subscribers that wait with `wake`.
    pub fn of(wake: Wake) -> Self {
        match wake {
            Wake::Spin => Kind::Spin,
            Wake::Block => Kind::Futex,
        }
    }
}

/// The page both processes map: each word on its own cache line.
#[repr(C, align(64))]
struct Line<T>(T);

#[repr(C)]
struct Page {
    /// Publication number (spin, ping-pong).
    seq: Line<AtomicU64>,
    /// The reader's echo (ping-pong).
    echo: Line<AtomicU64>,
    /// Publication number as a futex word (futex).
    word: Line<AtomicU32>,
    /// When the current publication was made (spin, futex).
    sent: Line<AtomicU64>,
}

/// Publication number that tells the reader to report and leave.
const STOP: u64 = u64::MAX;

/// A shared mapping of [`Page`] over a file.
struct Shared {
    ptr: *mut Page,
}

impl Shared {
    fn map(path: &Path, create: bool) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        if create {
            file.set_len(4096)
                .map_err(|e| format!("size {}: {e}", path.display()))?;
        }
        // SAFETY: a new shared mapping of one page of a file we opened read
        // and write and that is at least a page long (we sized it, or its
        // creator did before starting us); no address hint, so it
        // overlaps nothing. The kernel zero-fills a new file, and every
        // field of `Page` is an atomic integer, valid at zero.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                4096,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| format!("mmap {}: {e}", path.display()))?;
        Ok(Self { ptr: ptr.cast() })
    }

    fn page(&self) -> &Page {
        // SAFETY: `ptr` is a live, page-aligned mapping of a whole `Page`
        // (below 4096 bytes) until drop; all access is through atomics.
        unsafe { &*self.ptr }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference
        // from `page()` outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), 4096) };
    }
}

/// The environment variable that tells a floor reader its page.
const PAGE_ENV: &str = "CUFRAMES_FLOOR_PAGE";

/// Tells the reader to report and leave, whichever way it waits.
fn stop(p: &Page) {
    p.seq.0.store(STOP, Ordering::Release);
    p.word.0.store(u32::MAX, Ordering::Release);
    wake_all(&p.word.0);
}

fn wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// Measures floor `kind` with publications every `interval` (ping-pong:
/// back to back), `rounds` of them, against a reader started as
/// `exe child_prefix "floor ..."`. The page lives in `dir`. A floor that
/// could not be measured is a skipped reference with the reason.
pub fn measure(
    kind: Kind,
    interval: Duration,
    rounds: usize,
    exe: &Path,
    child_prefix: &[String],
    dir: &Path,
) -> Reference {
    try_measure(kind, interval, rounds, exe, child_prefix, dir).unwrap_or_else(|e| {
        Reference::skipped(name_note(kind, interval, rounds).0, &format!("failed: {e}"))
    })
}

fn try_measure(
    kind: Kind,
    interval: Duration,
    rounds: usize,
    exe: &Path,
    child_prefix: &[String],
    dir: &Path,
) -> Result<Reference, String> {
    let path = dir.join(format!("floor-{}-{}", kind.name(), std::process::id()));
    let shared = Shared::map(&path, true)?;
    let p = shared.page();
    // The page's path goes by the environment: a spec is split on spaces.
    let spawned = Command::new(exe)
        .args(child_prefix)
        .arg(format!("{CHILD} kind={}", kind.name()))
        .env(PAGE_ENV, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let run = |child: &mut std::process::Child| -> Result<(Vec<u64>, String), String> {
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut line = || -> Result<String, String> {
            lines
                .next()
                .ok_or("the floor reader exited")?
                .map_err(|e| e.to_string())
        };
        if line()? != "ready" {
            return Err("the floor reader did not start".into());
        }
        let mut round_trips = Vec::new();
        let start = Instant::now();
        for i in 1..=rounds as u64 {
            if kind == Kind::PingPong {
                let t = Instant::now();
                p.seq.0.store(i, Ordering::Release);
                let mut spins = 0u32;
                while p.echo.0.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(65_536) && t.elapsed() > Duration::from_secs(5) {
                        return Err("the floor reader stopped echoing".into());
                    }
                }
                round_trips.push(t.elapsed().as_nanos() as u64 / 2);
                continue;
            }
            let due = start + interval.mul_f64(i as f64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            p.sent.0.store(now_ns(), Ordering::Relaxed);
            match kind {
                Kind::Spin => p.seq.0.store(i, Ordering::Release),
                _ => {
                    p.word.0.store(i as u32, Ordering::Release);
                    wake_all(&p.word.0);
                }
            }
        }
        stop(p);
        let result = line()?;
        if kind == Kind::PingPong {
            round_trips.sort_unstable();
            return Ok((round_trips, String::new()));
        }
        Ok((Vec::new(), result))
    };
    let run = spawned
        .map_err(|e| format!("spawn the floor reader: {e}"))
        .and_then(|mut child| {
            let got = run(&mut child);
            // However it went: tell the reader to stop, give it a moment,
            // then make sure it is gone before its page is.
            stop(p);
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
            got
        });
    drop(shared);
    let _ = std::fs::remove_file(&path);
    let (mut t, result) = run?;
    if t.is_empty() {
        let kv = parse_kv(result.strip_prefix("result ").unwrap_or(""));
        let get = |k: &str| kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(0u64);
        t = vec![get("p50"), get("p99"), get("p999")];
        if get("samples") == 0 {
            return Err(format!("the floor reader measured nothing: {result}"));
        }
        return Ok(reference(kind, interval, rounds, t[0], t[1], t[2]));
    }
    t.sort_unstable();
    Ok(reference(
        kind,
        interval,
        rounds,
        quantile(&t, 0.5),
        quantile(&t, 0.99),
        quantile(&t, 0.999),
    ))
}

/// A floor's row name and note.
fn name_note(kind: Kind, interval: Duration, rounds: usize) -> (String, String) {
    let every = format!(
        "every {}",
        crate::output::human_ns(interval.as_nanos() as u64)
    );
    match kind {
        Kind::Spin => (
            format!("busy-poll floor, {every}"),
            "a cache line between 2 processes, stamped and spun on".into(),
        ),
        Kind::Futex => (
            format!("blocking floor, {every}"),
            "a shared futex wake between 2 processes, stamped".into(),
        ),
        Kind::PingPong => (
            "cache-line ping-pong, one way".into(),
            format!("half of {rounds} round trips, 2 processes spinning"),
        ),
    }
}

fn reference(
    kind: Kind,
    interval: Duration,
    rounds: usize,
    p50: u64,
    p99: u64,
    p999: u64,
) -> Reference {
    let (name, note) = name_note(kind, interval, rounds);
    Reference {
        name,
        p50_ns: p50,
        p99_ns: p99,
        p999_ns: p999,
        note,
    }
}

/// The reader process of a floor (`spec`: what follows [`CHILD`]; the
/// page's path in the environment): maps the page, says `ready`, reads publications until told to stop, prints
/// `result p50=.. p99=.. p999=.. samples=..` (none for ping-pong).
pub fn child(spec: &str) -> Result<(), String> {
    let kv = parse_kv(spec);
    let path = std::env::var_os(PAGE_ENV).ok_or("the floor reader was not given its page")?;
    let kind = [Kind::Spin, Kind::Futex, Kind::PingPong]
        .into_iter()
        .find(|k| kv.get("kind").map(String::as_str) == Some(k.name()))
        .ok_or("floor spec: unknown kind")?;
    let shared = Shared::map(Path::new(&path), false)?;
    let p = shared.page();
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut t = Vec::new();
    match kind {
        Kind::PingPong => {
            let mut last = 0;
            loop {
                let s = p.seq.0.load(Ordering::Acquire);
                if s == STOP {
                    break;
                }
                if s != last {
                    last = s;
                    p.echo.0.store(s, Ordering::Release);
                }
                std::hint::spin_loop();
            }
        }
        Kind::Spin => {
            let mut last = 0;
            loop {
                let s = p.seq.0.load(Ordering::Acquire);
                if s == last {
                    std::hint::spin_loop();
                    continue;
                }
                let now = now_ns();
                if s == STOP {
                    break;
                }
                last = s;
                t.push(now.saturating_sub(p.sent.0.load(Ordering::Relaxed)));
            }
        }
        Kind::Futex => {
            let mut last = 0;
            loop {
                let w = p.word.0.load(Ordering::Acquire);
                if w == last {
                    let _ = futex::wait(
                        &p.word.0,
                        futex::Flags::empty(),
                        w,
                        Some(&rustix::time::Timespec {
                            tv_sec: 1,
                            tv_nsec: 0,
                        }),
                    );
                    continue;
                }
                let now = now_ns();
                if w == u32::MAX {
                    break;
                }
                last = w;
                t.push(now.saturating_sub(p.sent.0.load(Ordering::Relaxed)));
            }
        }
    }
    t.sort_unstable();
    println!(
        "result p50={} p99={} p999={} samples={}",
        quantile(&t, 0.5),
        quantile(&t, 0.99),
        quantile(&t, 0.999),
        t.len()
    );
    std::io::stdout().flush().map_err(|e| e.to_string())
}
