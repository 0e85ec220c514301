//! # cuframes-core
//!
//! The shared-memory frame ring of [cuframes], with no operating system in
//! it: `#![no_std]`, no allocation. It defines
//!
//! - the byte layout every process agrees on ([`SegmentHeader`],
//!   [`ControlBlock`], [`SlotHeader`], [`SubscriberRecord`]), checked with
//!   zerocopy and compile-time size assertions;
//! - validation of untrusted segments ([`SegmentInfo::validate`]), which
//!   maps every malformed byte pattern to a typed [`ValidateError`];
//! - the lease protocol as typestate handles: a [`Writer`] loans a
//!   [`WriteGrant`] that is committed or aborted on drop; a subscriber's
//!   [`ReadGrant`] holds a frame until released or dropped;
//! - registration ([`Ring::register`]), dead-holder reclaim
//!   ([`Ring::reclaim`]) and ring-wide [`RingStats`].
//!
//! The std layer maps segments and sleeps on futexes; this crate decides
//! what is safe to read and when to wake. Atomics come from one shim
//! (`sync`), so loom checks this exact code.
//!
//! ```
//! use cuframes_core::*;
//! let ctl = ControlBlock::new();
//! let slots: Vec<SlotHeader> = (0..4).map(|_| SlotHeader::new()).collect();
//! let index: Vec<IndexEntry> = (0..8).map(|_| IndexEntry::new(0)).collect();
//! let subs: Vec<SubscriberRecord> = (0..2).map(|_| SubscriberRecord::new()).collect();
//! let ring = Ring::new(&ctl, &slots, &index, &subs, LosslessPolicy::Block).unwrap();
//!
//! let mut writer = Writer::new(&ring);
//! let req = Register { mode: Mode::NewestOnly, max_held: 1, pid: 1, start_time: 0, pid_ns: 0, heartbeat_ns: 0, name: b"viewer" };
//! let sub = Subscription::register(&ring, &req).unwrap();
//!
//! let grant = writer.try_loan().unwrap();
//! // ... fill slot `grant.slot()` ...
//! let done = grant.commit(/* pts */ 40_000_000, /* now */ 0);
//!
//! let frame = sub.try_read().unwrap();
//! assert_eq!(frame.seq(), done.seq);
//! frame.release();
//! ```
//!
//! [cuframes]: https://github.com/cuframes/cuframes
#![no_std]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

mod error;
mod format;
mod layout;
pub mod packet;
mod reader;
mod registry;
mod ring;
mod segment;
mod stats;
pub mod sync;
mod writer;

#[cfg(test)]
mod tests;

pub use error::{ErrorCode, LayoutError, Region, ValidateError};
pub use format::{FrameLayout, PixelFormat, PlaneLayout, MAX_DIMENSION, MAX_PLANES};
pub use layout::{
    lossless_cursor, pack, record, state, unpack, Content, ControlBlock, IndexEntry,
    LosslessPolicy, MemoryKind, Mode, SegmentHeader, SlotHeader, SubscriberRecord, CACHE_LINE,
    EVICTED, MAGIC, MAX_SEQ, MAX_SLOTS, MAX_SUBSCRIBERS, NAME_LEN, NO_CURSOR, PAGE, VERSION_MAJOR,
    VERSION_MINOR, WRITER,
};
pub use packet::{Codec, CommitError, PacketMeta};
pub use reader::{ReadError, ReadGrant};
pub use registry::{RecordToken, Register, RegisterError, Subscription};
pub use ring::{Ring, RingRef, Wake};
pub use segment::{index_len_for, Backend, Identity, PacketParams, RingParams, SegmentInfo};
pub use stats::{RingStats, SubscriberStats};
pub use writer::{Committed, LoanError, WriteGrant, Writer};
