//! Looking at streams from outside: listing and status (for `cuframes ls`
//! and `cuframes stat`). Segments are mapped read-only.

use crate::key::{shm_dir, validate_key, PREFIX};
use crate::mapping::Shared;
use crate::Result;
use cuframes_core::{RingRef, RingStats, SegmentInfo};

/// A stream as seen from outside.
#[derive(Debug, Clone)]
pub struct StreamStatus {
    /// Key.
    pub key: String,
    /// Validated header.
    pub info: SegmentInfo,
    /// Ring snapshot.
    pub stats: RingStats,
    /// Whether the publisher process still runs.
    pub publisher_alive: bool,
    /// Bit *i* set: subscriber record *i* has a live owner (its liveness
    /// lock is held). A record listed as active whose bit is clear belongs
    /// to a dead process and is freed by the publisher's next sweep.
    pub live_records: u64,
}

impl StreamStatus {
    /// Whether subscriber record `index` has a live owner.
    pub fn record_alive(&self, index: u32) -> bool {
        index < 64 && self.live_records & (1 << index) != 0
    }
}

impl StreamStatus {
    /// Total frames dropped or skipped by subscribers.
    pub fn dropped(&self) -> u64 {
        self.stats.active().map(|s| s.dropped).sum()
    }
    /// Publish rate in frames per second; 0 once the publisher is dead
    /// (the stored figure is only its last average).
    pub fn fps(&self) -> f64 {
        if self.publisher_alive {
            self.stats.rate_mfps as f64 / 1000.0
        } else {
            0.0
        }
    }
    /// Whether the stream is open: its publisher lives and has not closed
    /// it.
    pub fn is_open(&self) -> bool {
        self.publisher_alive && self.stats.state == cuframes_core::state::OPEN
    }
}

/// Status of one stream.
///
/// ```
/// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
/// use cuframes::*;
/// let layout = FrameLayout::new(PixelFormat::Nv12, 64, 32, 64).unwrap();
/// let _p = Publisher::create("doc-stat", layout, Default::default()).unwrap();
/// let s = stream_status("doc-stat").unwrap();
/// assert!(s.publisher_alive);
/// assert_eq!(s.info.format, Some(PixelFormat::Nv12));
/// assert!(stream_status("doc-missing").is_err());
/// ```
pub fn stream_status(key: &str) -> Result<StreamStatus> {
    validate_key(key)?;
    let shared = Shared::open(key, false, true)?;
    Ok(StreamStatus {
        key: key.to_owned(),
        info: shared.info,
        stats: shared.ring().stats(),
        publisher_alive: shared.publisher_alive(),
        live_records: (0..shared.ring().subscriber_capacity())
            .filter(|&i| shared.record_locked_by_other(i))
            .fold(0, |bits, i| bits | 1 << i),
    })
}

/// Every stream in the shm directory, sorted by key; segments that fail to
/// open or validate are returned as errors beside their key.
pub fn list_streams() -> Vec<(String, Result<StreamStatus>)> {
    let mut out: Vec<_> = std::fs::read_dir(shm_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(PREFIX)
                .map(str::to_owned)
        })
        .filter(|k| validate_key(k).is_ok())
        .map(|k| {
            let s = stream_status(&k);
            (k, s)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
