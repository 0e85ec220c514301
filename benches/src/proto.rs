//! What every peer shares: the frame header, the child-process spec, the
//! `result` lines, and per-process CPU and memory readings.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Bytes of the header at the start of every payload: seq, send time
/// (CLOCK_MONOTONIC ns, written just before commit/send), phase.
pub const HEADER: usize = 24;

/// Warm-up frames (faults in the slots; not measured).
pub const PHASE_WARMUP: u64 = 0;
/// Paced frames whose handoff latency is measured.
pub const PHASE_LATENCY: u64 = 1;
/// Unpaced frames for frames/s and CPU per frame.
pub const PHASE_THROUGHPUT: u64 = 2;
/// The last frame: subscribers report and exit.
pub const PHASE_END: u64 = 3;

/// Monotonic nanoseconds, the clock every process and Python's
/// `time.monotonic_ns()` share.
pub fn now_ns() -> u64 {
    cuframes::now_ns()
}

/// Writes the header into the first [`HEADER`] bytes of `buf`, stamping the
/// send time now.
pub fn put_header(buf: &mut [u8], seq: u64, phase: u64) {
    buf[0..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&now_ns().to_le_bytes());
    buf[16..24].copy_from_slice(&phase.to_le_bytes());
}

/// Reads `(seq, send_ns, phase)` from the start of `buf`.
pub fn get_header(buf: &[u8]) -> (u64, u64, u64) {
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(b)
    };
    (word(0), word(8), word(16))
}

/// CPU time (user + system) of this process so far, nanoseconds.
pub fn cpu_ns() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer, which
    // points at one (zeroed) of our own; RUSAGE_SELF needs nothing else.
    let ru = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) != 0 {
            return 0;
        }
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `(VmRSS, RssShmem)` of this process in KiB, from `/proc/self/status`.
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssShmem:"))
}

/// Parses `k=v k=v ...` into a map.
pub fn parse_kv(s: &str) -> BTreeMap<String, String> {
    s.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The `q` quantile of sorted samples (0 when empty).
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// What a subscriber process counts, the same in every peer.
#[derive(Default)]
pub struct Recorder {
    latency: Vec<u64>,
    frames: u64,
    first_ns: u64,
    last_ns: u64,
    end_ns: u64,
    first_cpu: u64,
    last_seq: u64,
    last_phase: u64,
    lost: u64,
    damaged: u64,
    bytes: u64,
}

impl Recorder {
    /// Records one frame received at `now`, `latency_ns` after its commit;
    /// true for the end marker.
    /// Frames missed between measured frames count as lost (not those of
    /// the warm-up, nor those a newest-only reader skips before the end
    /// marker).
    pub fn observe(&mut self, seq: u64, phase: u64, latency_ns: u64, now: u64) -> bool {
        let measured = |p| p == PHASE_LATENCY || p == PHASE_THROUGHPUT;
        if self.last_seq != 0
            && seq > self.last_seq + 1
            && measured(phase)
            && measured(self.last_phase)
        {
            self.lost += seq - self.last_seq - 1;
        }
        self.last_seq = seq;
        self.last_phase = phase;
        match phase {
            PHASE_LATENCY => self.latency.push(latency_ns),
            PHASE_THROUGHPUT => {
                if self.frames == 0 {
                    self.first_ns = now;
                    self.first_cpu = cpu_ns();
                }
                self.frames += 1;
                self.last_ns = now;
            }
            PHASE_END => {
                self.end_ns = now;
                return true;
            }
            _ => {}
        }
        false
    }

    /// Counts the payload bytes of a frame or packet of `phase` (only the
    /// unpaced phase's are reported).
    pub fn count_bytes(&mut self, phase: u64, bytes: u64) {
        if phase == PHASE_THROUGHPUT {
            self.bytes += bytes;
        }
    }

    /// Counts a frame that did not hold what its publisher wrote.
    pub fn count_damaged(&mut self) {
        self.damaged += 1;
    }

    /// The `result` line of subscriber `idx`.
    pub fn report(mut self, idx: usize) -> String {
        let cpu = cpu_ns().saturating_sub(self.first_cpu);
        self.latency.sort_unstable();
        let lat = &self.latency;
        // From the first throughput frame to the end marker: the frames
        // this subscriber took while the publisher ran flat out.
        let end = self.end_ns.max(self.last_ns);
        let fps = if self.frames > 0 && end > self.first_ns {
            self.frames as f64 * 1e9 / (end - self.first_ns) as f64
        } else {
            0.0
        };
        let (rss, shmem) = rss_kib();
        let mut s = String::new();
        let _ = write!(
            s,
            "result role=sub idx={idx} p50={} p99={} p999={} max={} samples={} frames={} fps={fps:.3} cpu_ns={} rss_kib={rss} shmem_kib={shmem} lost={} damaged={} bytes={}",
            quantile(lat, 0.5),
            quantile(lat, 0.99),
            quantile(lat, 0.999),
            lat.last().copied().unwrap_or(0),
            lat.len(),
            self.frames,
            cpu / self.frames.max(1),
            self.lost,
            self.damaged,
            self.bytes
        );
        s
    }
}

/// The publisher's throughput-phase counters.
pub struct PubMeter {
    start_ns: u64,
    start_cpu: u64,
}

impl PubMeter {
    /// Starts the throughput phase now.
    pub fn start() -> Self {
        Self {
            start_ns: now_ns(),
            start_cpu: cpu_ns(),
        }
    }

    /// The publisher's `result` line after `frames` throughput frames.
    pub fn report(&self, frames: u64) -> String {
        let dt = now_ns().saturating_sub(self.start_ns).max(1);
        let cpu = cpu_ns().saturating_sub(self.start_cpu);
        let (rss, shmem) = rss_kib();
        format!(
            "result role=pub frames={frames} fps={:.3} cpu_ns={} rss_kib={rss} shmem_kib={shmem}",
            frames as f64 * 1e9 / dt as f64,
            cpu / frames.max(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut b = [0u8; 32];
        put_header(&mut b, 7, PHASE_END);
        let (seq, t, phase) = get_header(&b);
        assert_eq!((seq, phase), (7, PHASE_END));
        assert!(t > 0);
    }

    #[test]
    fn recorder_counts_phases_and_gaps() {
        let mut r = Recorder::default();
        assert!(!r.observe(1, PHASE_WARMUP, 0, 50));
        assert!(!r.observe(3, PHASE_LATENCY, 10, 100));
        assert!(!r.observe(4, PHASE_LATENCY, 30, 200));
        assert!(!r.observe(7, PHASE_THROUGHPUT, 0, 300));
        assert!(!r.observe(8, PHASE_THROUGHPUT, 0, 400));
        r.count_damaged();
        assert!(r.observe(11, PHASE_END, 0, 500));
        let line = r.report(3);
        let kv = parse_kv(line.strip_prefix("result ").unwrap());
        assert_eq!(kv["idx"], "3");
        assert_eq!(kv["samples"], "2");
        assert_eq!(kv["frames"], "2");
        assert_eq!(
            kv["lost"], "2",
            "only gaps between measured frames are losses"
        );
        assert_eq!(kv["damaged"], "1");
        assert_eq!(kv["p50"], "30");
        assert_eq!(kv["max"], "30");
    }

    #[test]
    fn quantiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 501);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
