//! # cuframes
//!
//! Zero-copy video frame sharing between processes on one machine. A
//! [`Publisher`] writes frames into a ring of slots in shared memory; any
//! number of [`Subscriber`]s read the same bytes in place.
//!
//! ```
//! use cuframes::*;
//! use std::time::Duration;
//! # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
//! let layout = FrameLayout::new(PixelFormat::Nv12, 1280, 720, 64)?;
//! let mut publisher = Publisher::create("doc-camera", layout, PublisherOptions::default())?;
//! let mut detector = Subscriber::connect("doc-camera", "detector", Mode::NewestOnly, Default::default())?;
//!
//! let mut lease = publisher.loan()?;
//! lease.plane_mut(0).fill(16); // Y
//! lease.plane_mut(1).fill(128); // interleaved UV
//! lease.commit(/* pts_ns */ 0)?;
//!
//! let frame = detector.next_frame(Duration::from_millis(100))?;
//! assert_eq!(frame.pitch(0), 1280);
//! assert_eq!(frame.plane(1)[0], 128);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Segments live in `/dev/shm/cuframes.<key>` (or `$CUFRAMES_SHM_DIR`),
//! mode 0600 by default. The ring protocol itself is in [`cuframes_core`].
#![deny(missing_docs)]

mod error;
mod guard;
mod key;
mod liveness;
mod mapping;
mod ofd;
mod packets;
mod publisher;
mod reconnect;
mod streams;
mod subscriber;
mod sys;
pub mod testsrc;

pub use cuframes_core as core;
pub use cuframes_core::{
    packet, Codec, Content, ErrorCode, FrameLayout, LosslessPolicy, MemoryKind, Mode, PacketMeta,
    PixelFormat, PlaneLayout, RingStats, SubscriberStats as RecordStats,
};
pub use error::{Error, Result};
pub use key::{shm_dir, validate_key, MAX_KEY_LEN};
pub use packets::{Packet, PacketLease, PacketPublisher, PacketStream, PacketSubscriber};
pub use publisher::{
    DetachedLease, MappingGuard, Publisher, PublisherOptions, Retention, WriteLease,
};
pub use reconnect::ReconnectingSubscriber;
pub use streams::{list_streams, stream_status, StreamStatus};
pub use subscriber::{Frame, Frames, Monitor, Subscriber, SubscriberOptions, SubscriberStats};
pub use sys::{is_alive, now_ns, own_pid_ns, process_start_time};

impl From<cuframes_core::LayoutError> for Error {
    fn from(e: cuframes_core::LayoutError) -> Self {
        Error::new(ErrorCode::InvalidArgument, e.to_string())
    }
}
