//! Carries cuframes streams between hosts over [Zenoh](https://zenoh.io).
//!
//! cuframes stays a local zero-copy layer: an [exporter](export::export)
//! reads a local stream (frames or packets) as any subscriber does and
//! publishes it under `cuframes/<name>`; an [importer](import::import)
//! subscribes there and republishes into a local ring, which local
//! subscribers (Rust, C, Python, the CLI, GStreamer) read as any other
//! stream. Zenoh does discovery, routing, reliability and congestion
//! control; see `docs/multi-host.md`.
//!
//! Two modes: [`Mode::Newest`] drops under congestion and keeps the
//! latest; [`Mode::Lossless`] blocks end to end, from the importer's local
//! lossless readers back to the exporter's lossless reader.

pub mod export;
pub mod import;
pub mod net;
pub mod wire;

/// How a bridge treats congestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Drop under congestion; the importer keeps the latest.
    Newest,
    /// Reliable with backpressure, end to end.
    Lossless,
}

impl Mode {
    /// `newest` or `lossless`.
    ///
    /// ```
    /// use cuframes_bridge::Mode;
    /// assert_eq!(Mode::from_name("lossless"), Some(Mode::Lossless));
    /// assert_eq!(Mode::from_name("fast"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "newest" => Some(Self::Newest),
            "lossless" => Some(Self::Lossless),
            _ => None,
        }
    }
}
