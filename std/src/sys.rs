//! Operating-system pieces: clock, liveness, futex, randomness.

use rustix::thread::futex;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Monotonic nanoseconds (CLOCK_MONOTONIC: the same clock in every process
/// on the machine, so commit times compare across processes).
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Monotonic nanoseconds at the kernel tick's resolution (a few ms):
/// cheaper than [`now_ns`] (no TSC read), for intervals of tens of ms or
/// more checked on hot paths, such as every empty poll of a busy-poll
/// subscriber.
pub(crate) fn coarse_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The resolution of [`coarse_ns`] (a kernel tick): two readings an
/// interval apart may differ by up to this much less.
pub(crate) fn coarse_res_ns() -> u64 {
    static RES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RES.get_or_init(|| {
        let t = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    })
}

/// Wall-clock nanoseconds since the Unix epoch.
pub(crate) fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// This process's id.
pub(crate) fn pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Start time of a process, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`); `None` if there is no such process. Together with
/// the pid it names a process uniquely: a recycled pid has another start.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse
    // after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state); field 22 is 19 further on.
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None; // a zombie holds nothing any more
    }
    fields.nth(18)?.parse().ok()
}

/// Whether the process `pid` started at `start_time` still runs.
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    pid != 0 && process_start_time(pid) == Some(start_time)
}

/// This process's pid namespace: the inode of `/proc/self/ns/pid` (0 if
/// unknown). Pids mean the same process only within one namespace.
pub fn own_pid_ns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    static NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NS.get_or_init(|| {
        std::fs::metadata("/proc/self/ns/pid")
            .map(|m| m.ino())
            .unwrap_or(0)
    })
}

/// How many times this process image was forked into a child: 0 in the
/// process that started it. A handle remembers the value it was made
/// under; in a child made by `fork` without `exec` the value differs, and
/// the handle must neither release nor deregister what it shares with its
/// parent (the parent still holds those frames, records and locks: they
/// live in shared memory and in shared open file descriptions).
pub(crate) fn fork_generation() -> u64 {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        extern "C" fn child() {
            FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: registers a handler that only touches an atomic, which is
        // async-signal-safe as the child side of fork requires. Failure
        // (ENOMEM) leaves forks undetected, as before this guard existed.
        unsafe { libc::pthread_atfork(None, None, Some(child)) };
    });
    FORKS.load(std::sync::atomic::Ordering::Relaxed)
}

static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This process's start time.
pub(crate) fn own_start_time() -> u64 {
    process_start_time(pid()).unwrap_or(0)
}

/// Sleeps on a shared (cross-process) futex word while it equals
/// `expected`, for at most `timeout`. Spurious wake-ups are fine: callers
/// re-check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // Not FUTEX_PRIVATE: the word lives in memory mapped by other processes.
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&ts));
}

/// Wakes every waiter on a shared futex word.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// A random non-zero 64-bit value (publisher epochs).
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        b = (unix_ns() ^ u64::from(pid()).rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(b) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_start_time_is_stable() {
        let st = own_start_time();
        assert!(st > 0);
        assert!(is_alive(pid(), st));
        assert!(!is_alive(pid(), st + 1));
        assert!(!is_alive(0, st));
    }

    #[test]
    fn dead_child_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let st = process_start_time(pid);
        child.wait().unwrap();
        assert!(!st.is_some_and(|st| is_alive(pid, st)));
    }
}
