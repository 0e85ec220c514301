//! Pieces shared by the long-running commands: the status line, pacing,
//! and publishing one test-pattern frame.

use cuframes::{testsrc, Publisher, Result};
use std::time::{Duration, Instant};

/// Prints a status line: rewritten in place on a terminal, one plain line
/// each otherwise (logs, pipes).
pub fn status_line(tty: bool, line: &str) {
    if tty {
        print!("\r{line}\x1b[K");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    } else {
        println!("{line}");
    }
}

/// Paces frame `n` to `start + n * interval` (no pacing at rate 0).
pub struct Pacer {
    start: Instant,
    interval: Duration,
}

impl Pacer {
    /// A pacer for `fps` frames per second (0: as fast as possible).
    pub fn new(fps: f64) -> Self {
        let interval = if fps > 0.0 {
            Duration::from_secs_f64(1.0 / fps)
        } else {
            Duration::ZERO
        };
        Self {
            start: Instant::now(),
            interval,
        }
    }

    /// Presentation time of frame `n`.
    pub fn pts_ns(&self, n: u64) -> i64 {
        (self.interval.as_nanos() as u64).saturating_mul(n) as i64
    }

    /// Sleeps until frame `n` is due.
    pub fn wait(&self, n: u64) {
        if self.interval.is_zero() {
            return;
        }
        let due = self.start + self.interval.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Loans a slot, fills it with the stamped test pattern and commits it as
/// frame `n`.
pub fn publish_pattern(publisher: &mut Publisher, pacer: &Pacer, n: u64) -> Result<u64> {
    let layout = *publisher.layout();
    let mut lease = publisher.loan()?;
    let seq = lease.seq();
    testsrc::fill(&layout, lease.data_mut(), seq);
    lease.commit(pacer.pts_ns(n))
}
