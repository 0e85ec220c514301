//! Physical reference points: how long one copy of a frame takes on this
//! machine, and how long a futex wake-up takes.

use crate::proto::quantile;
use rustix::thread::futex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
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
        note: format!("{:.1} GB/s", bytes as f64 / p50 as f64),
    }
}

/// Waits until `word` holds `want`, sleeping on the futex.
fn wait_for(word: &AtomicU32, want: u32) {
    loop {
        let v = word.load(Ordering::Acquire);
        if v == want || v == STOP {
            return;
        }
        let _ = futex::wait(word, futex::Flags::PRIVATE, v, None);
    }
}

const STOP: u32 = 3;

/// Futex ping-pong between two threads: each side sleeps on a futex until
/// the other sets the word and wakes it. Reports half of each round trip
/// (one wake-up, one context switch in).
pub fn futex_ping_pong(rounds: usize) -> Reference {
    let word = Arc::new(AtomicU32::new(0));
    let peer = word.clone();
    let echo = std::thread::spawn(move || loop {
        wait_for(&peer, 1);
        if peer.load(Ordering::Acquire) == STOP {
            return;
        }
        peer.store(2, Ordering::Release);
        let _ = futex::wake(&peer, futex::Flags::PRIVATE, 1);
    });
    let mut t = Vec::with_capacity(rounds);
    for i in 0..rounds + 100 {
        let start = Instant::now();
        word.store(1, Ordering::Release);
        let _ = futex::wake(&word, futex::Flags::PRIVATE, 1);
        wait_for(&word, 2);
        if i >= 100 {
            t.push(start.elapsed().as_nanos() as u64 / 2);
        }
    }
    word.store(STOP, Ordering::Release);
    let _ = futex::wake(&word, futex::Flags::PRIVATE, 1);
    let _ = echo.join();
    t.sort_unstable();
    Reference {
        name: "futex ping-pong, one way".into(),
        p50_ns: quantile(&t, 0.5),
        p99_ns: quantile(&t, 0.99),
        p999_ns: quantile(&t, 0.999),
        note: format!("{rounds} round trips between two threads"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_run() {
        let m = memcpy(4096, 10, "page");
        assert!(m.p50_ns > 0 && m.name.contains("4096"));
        let f = futex_ping_pong(20);
        assert!(f.p50_ns > 0);
    }
}
