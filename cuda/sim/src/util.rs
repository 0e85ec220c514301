//! Small shared pieces: the error type of the entry points, the violation
//! log, process liveness, a seeded RNG.

use crate::sys::CUresult;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) const SUCCESS: CUresult = CUresult::CUDA_SUCCESS;
pub(crate) const INVALID_VALUE: CUresult = CUresult::CUDA_ERROR_INVALID_VALUE;
pub(crate) const OUT_OF_MEMORY: CUresult = CUresult::CUDA_ERROR_OUT_OF_MEMORY;
pub(crate) const NOT_INITIALIZED: CUresult = CUresult::CUDA_ERROR_NOT_INITIALIZED;
pub(crate) const INVALID_DEVICE: CUresult = CUresult::CUDA_ERROR_INVALID_DEVICE;
pub(crate) const INVALID_CONTEXT: CUresult = CUresult::CUDA_ERROR_INVALID_CONTEXT;
pub(crate) const ALREADY_MAPPED: CUresult = CUresult::CUDA_ERROR_ALREADY_MAPPED;
pub(crate) const INVALID_HANDLE: CUresult = CUresult::CUDA_ERROR_INVALID_HANDLE;
pub(crate) const NOT_READY: CUresult = CUresult::CUDA_ERROR_NOT_READY;
pub(crate) const ILLEGAL_ADDRESS: CUresult = CUresult::CUDA_ERROR_ILLEGAL_ADDRESS;
pub(crate) const ALREADY_REGISTERED: CUresult = CUresult::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
pub(crate) const NOT_REGISTERED: CUresult = CUresult::CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
pub(crate) const NOT_SUPPORTED: CUresult = CUresult::CUDA_ERROR_NOT_SUPPORTED;
pub(crate) const UNKNOWN: CUresult = CUresult::CUDA_ERROR_UNKNOWN;

/// Why an entry point failed: the code it returns and, when the caller
/// broke a rule of the API (not a failure correct code may probe for), the
/// explanation that goes to the violation log.
#[derive(Debug)]
pub(crate) struct Fail {
    pub code: CUresult,
    pub why: Option<String>,
}

pub(crate) type R<T = ()> = Result<T, Fail>;

/// A plain documented failure: no violation.
pub(crate) fn fail(code: CUresult) -> Fail {
    Fail { code, why: None }
}

/// A failure that is the caller's bug: logged as a violation.
pub(crate) fn viol(code: CUresult, why: impl Into<String>) -> Fail {
    Fail {
        code,
        why: Some(why.into()),
    }
}

/// A raw pointer that travels to a stream's worker thread. The entry point
/// that builds it checked that the bytes stay valid until the op ran (the
/// API contract for host memory; an `Arc` kept next to it for sim memory).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendPtr(pub *mut u8);

// SAFETY: the pointer is only dereferenced by the op that owns it, while the
// memory is kept alive (see above); it carries no thread affinity.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

pub(crate) fn pid() -> u32 {
    std::process::id()
}

/// The state directory: `$CUFRAMES_SIM_DIR`, or `/dev/shm/cuframes-sim-<uid>`.
pub(crate) fn state_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match std::env::var_os("CUFRAMES_SIM_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => {
                // SAFETY: getuid has no preconditions.
                let uid = unsafe { libc::getuid() };
                PathBuf::from(format!("/dev/shm/cuframes-sim-{uid}"))
            }
        };
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir);
        dir
    })
}

/// Appends one line to `violations.log` in the state directory and says so
/// on stderr.
pub(crate) fn report_violation(call: &str, why: &str) {
    let line = format!("pid={} {call}: {why}\n", pid());
    eprint!("cuframes-sim: VIOLATION {line}");
    let path = state_dir().join("violations.log");
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        // One write of the whole line: O_APPEND keeps lines of concurrent
        // writers (threads or processes) whole.
        Ok(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        Err(e) => eprintln!("cuframes-sim: cannot append to {}: {e}", path.display()),
    }
}

/// This process's pid namespace (inode of /proc/self/ns/pid).
pub(crate) fn pid_namespace() -> u64 {
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0)
}

fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    // Field 22 of stat is the start time; `rest` begins at field 3.
    let start = f.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Start time (clock ticks since boot) of this process.
pub(crate) fn self_start_time() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t))
        .map(|s| s.1)
        .unwrap_or(0)
}

/// This process's start time, read once per process.
pub(crate) fn my_start_time() -> u64 {
    static CACHE: parking_lot::Mutex<(u32, u64)> = parking_lot::Mutex::new((0, 0));
    let mut c = CACHE.lock();
    if c.0 != pid() {
        *c = (pid(), self_start_time());
    }
    c.1
}

/// Whether /proc shows this process's pid namespace (not so in a child
/// namespace without its own /proc mount): only then do pids read from
/// shared state name the processes /proc shows.
fn proc_is_ours() -> bool {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
        == Some(pid())
}

/// Whether `pid` names a live (not zombie) process that started at `start`
/// (0: any start time); `None` when this process cannot tell.
pub(crate) fn pid_alive(pid: u32, start: u64) -> Option<bool> {
    if pid == 0 {
        return Some(false);
    }
    if !proc_is_ours() {
        return None;
    }
    Some(
        match std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            None => false,
            Some((state, st)) => !matches!(state, 'Z' | 'X' | 'x') && (start == 0 || st == start),
        },
    )
}

/// SplitMix64: small, seedable, good enough for delays.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in `0..=max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            self.next() % (max + 1)
        }
    }
}

/// A random u64 that differs between processes and calls (ids, seeds).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(pid());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Nanoseconds on a process-local monotonic clock.
pub(crate) fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One poll interval of a waiting op: 20-50 us.
pub(crate) fn poll_sleep(rng: &mut Rng) {
    std::thread::sleep(Duration::from_micros(20 + rng.upto(30)));
}

/// Seconds after which a wait that never ends is reported
/// (`CUFRAMES_SIM_HANG_S`, default 60).
pub(crate) fn hang_after() -> Duration {
    static S: OnceLock<Duration> = OnceLock::new();
    *S.get_or_init(|| {
        Duration::from_secs_f64(
            std::env::var("CUFRAMES_SIM_HANG_S")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| *v > 0.0)
                .unwrap_or(60.0),
        )
    })
}

pub(crate) fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}
