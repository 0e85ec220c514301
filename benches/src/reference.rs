//! Physical reference points: how long one copy of a frame, and one read
//! of every byte of it, take on this machine (the handoff floors are in
//! [`floor`](crate::floor)).

use crate::proto::quantile;
use std::time::Instant;

/// One reference measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// What was measured.
    pub name: String,
    /// Median, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: u64,
    /// 99.9th percentile, nanoseconds.
    pub p999_ns: u64,
    /// A derived figure for the table (bandwidth, say).
    pub note: String,
}

/// Prefix of the note of a reference that could not be measured here.
const SKIPPED: &str = "skipped: ";

impl Reference {
    /// A reference that could not be measured here, and why: listed,
    /// never left out (`p50_ns` 0).
    pub fn skipped(name: impl Into<String>, why: &str) -> Self {
        Self {
            name: name.into(),
            p50_ns: 0,
            p99_ns: 0,
            p999_ns: 0,
            note: format!("{SKIPPED}{why}"),
        }
    }

    /// Why it was not measured, if it was not.
    pub fn skip_reason(&self) -> Option<&str> {
        self.note.strip_prefix(SKIPPED).filter(|_| self.p50_ns == 0)
    }
}

/// Times `rounds` copies of a `bytes`-long buffer (`memcpy` through
/// `copy_from_slice`), each on its own, after a few untimed ones.
pub fn memcpy(bytes: usize, rounds: usize, label: &str) -> Reference {
    let src = vec![0x5au8; bytes];
    let mut dst = vec![0u8; bytes];
    for _ in 0..3 {
        dst.copy_from_slice(std::hint::black_box(&src));
    }
    let mut t: Vec<u64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            start.elapsed().as_nanos() as u64
        })
        .collect();
    t.sort_unstable();
    let p50 = quantile(&t, 0.5).max(1);
    Reference {
        name: format!("memcpy {label} ({bytes} B)"),
        p50_ns: p50,
        p99_ns: quantile(&t, 0.99),
        p999_ns: quantile(&t, 0.999),
        note: format!("{:.1} GB/s", gbps(bytes, p50)),
    }
}

/// Times reading every byte (a [`checksum`](crate::work::checksum)) of
/// frames of `bytes`, `rounds` of them, going round `frames` distinct
/// buffers as a subscriber goes round a ring (more than the last-level
/// cache holds, so that reads come from memory): the read bandwidth one
/// core gets, the ceiling of a consumer that reads each frame once.
pub fn read(bytes: usize, frames: usize, rounds: usize, label: &str) -> Reference {
    let bufs: Vec<Vec<u8>> = (0..frames).map(|i| vec![i as u8; bytes]).collect();
    for b in &bufs {
        std::hint::black_box(crate::work::checksum(b));
    }
    let mut t: Vec<u64> = (0..rounds)
        .map(|i| {
            let b = &bufs[i % frames];
            let start = Instant::now();
            std::hint::black_box(crate::work::checksum(std::hint::black_box(b)));
            start.elapsed().as_nanos() as u64
        })
        .collect();
    t.sort_unstable();
    let p50 = quantile(&t, 0.5).max(1);
    Reference {
        name: format!("read {label} ({bytes} B)"),
        p50_ns: p50,
        p99_ns: quantile(&t, 0.99),
        p999_ns: quantile(&t, 0.999),
        note: format!(
            "{:.1} GB/s, one core, {frames} frames in turn",
            gbps(bytes, p50)
        ),
    }
}

/// Bytes per nanosecond is gigabytes per second.
pub fn gbps(bytes: usize, ns: u64) -> f64 {
    bytes as f64 / ns.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_run() {
        let m = memcpy(4096, 10, "page");
        assert!(m.p50_ns > 0 && m.name.contains("4096"));
        let r = read(1 << 16, 4, 20, "64 KiB");
        assert!(r.p50_ns > 0 && r.note.contains("GB/s"));
    }
}
