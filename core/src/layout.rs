//! The shared-memory byte layout: every structure another process reads.
//!
//! Read-only parts (the [`SegmentHeader`]) are plain `#[repr(C)]` data that a
//! reader copies out once and validates. Live parts (control block, slot
//! headers, index ring, subscriber records) are made only of atomics, so any
//! process may touch them at any time without a data race, and any bit
//! pattern is a valid value (zerocopy's `FromBytes` proves it), so hostile
//! bytes can mislead the protocol but never cause undefined behaviour.
//! Sizes and offsets are asserted at compile time: the layout is a contract.

use crate::format::FrameLayout;
use crate::sync::{AtomicU32, AtomicU64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"CUFRAMES";
/// Protocol major version: a reader refuses any other.
pub const VERSION_MAJOR: u16 = 3;
/// Protocol minor version: additions a reader of the same major may ignore.
pub const VERSION_MINOR: u16 = 0;
/// Most slots in a ring (slot numbers are packed into 8 bits).
pub const MAX_SLOTS: u32 = 64;
/// Most subscribers in a ring (one lease bit each, bit 63 is the writer's).
pub const MAX_SUBSCRIBERS: u32 = 63;
/// Longest index ring.
pub const MAX_INDEX_LEN: u32 = 1 << 12;
/// Alignment of the backend area (page size).
pub const PAGE: u64 = 4096;
/// Cache line: the live structures are aligned to it.
pub const CACHE_LINE: u64 = 64;
/// Bytes of a subscriber name (UTF-8, NUL-padded).
pub const NAME_LEN: usize = 32;
/// Lease bit owned by the writer.
pub const WRITER: u64 = 1 << 63;
/// Highest sequence number (seqs are packed with an 8-bit slot number).
pub const MAX_SEQ: u64 = (1 << 56) - 1;

/// Where slot data lives.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Slot data in the segment's backend area (host memory).
    Host = 1,
    /// One CUDA allocation exported with `cuIpcGetMemHandle`.
    CudaIpc = 2,
    /// One CUDA VMM allocation exported as a POSIX file descriptor.
    CudaVmmFd = 3,
}

impl MemoryKind {
    /// The kind for a protocol number.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Host),
            2 => Some(Self::CudaIpc),
            3 => Some(Self::CudaVmmFd),
            _ => None,
        }
    }

    /// Lower-case name for listings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::CudaIpc => "cuda-ipc",
            Self::CudaVmmFd => "cuda-vmm-fd",
        }
    }
}

/// What the writer does when a lossless subscriber has not read the frame a
/// slot holds and no other slot is free.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LosslessPolicy {
    /// Wait (backpressure) up to the publisher's timeout.
    Block = 1,
    /// Overwrite the oldest frame; the subscriber counts it as dropped.
    DropOldest = 2,
}

impl LosslessPolicy {
    /// The policy for a protocol number.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Block),
            2 => Some(Self::DropOldest),
            _ => None,
        }
    }

    /// Lower-case name, as the command line and machine-readable output
    /// spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::DropOldest => "drop-oldest",
        }
    }
}

/// How a subscriber reads.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Always the latest frame; frames published in between are skipped.
    NewestOnly = 1,
    /// Every frame in order (lossless, subject to the writer's policy).
    Queue = 2,
}

impl Mode {
    /// The mode for a protocol number.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::NewestOnly),
            2 => Some(Self::Queue),
            _ => None,
        }
    }

    /// Lower-case name, as the command line and machine-readable output
    /// spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::NewestOnly => "newest",
            Self::Queue => "queue",
        }
    }
}

/// Stream state in the control block.
pub mod state {
    /// Being set up; not yet readable.
    pub const INIT: u32 = 0;
    /// Publishing.
    pub const OPEN: u32 = 1;
    /// Closed by the publisher; no more frames.
    pub const CLOSED: u32 = 2;
}

/// Subscriber record states. The state and the record's generation share
/// one word (`generation << 8 | state`), so every transition is a single
/// CAS that also checks whose record it is. Generations have 56 bits: at a
/// million claims a second they would wrap after two thousand years.
pub mod record {
    /// Unused.
    pub const FREE: u32 = 0;
    /// A subscriber is filling it in.
    pub const CLAIMING: u32 = 1;
    /// In use.
    pub const ACTIVE: u32 = 2;
    /// Being freed: its leases are being cleared (by its owner, or by a
    /// sweeper that proved the owner dead).
    pub const RECLAIMING: u32 = 3;
    /// Largest generation.
    pub const MAX_GENERATION: u64 = (1 << 56) - 1;

    /// The state word for a generation and a state.
    #[inline]
    pub const fn word(generation: u64, state: u32) -> u64 {
        (generation & MAX_GENERATION) << 8 | (state as u64 & 0xff)
    }
    /// The state part of a state word.
    #[inline]
    pub const fn state_of(word: u64) -> u32 {
        (word & 0xff) as u32
    }
    /// The generation part of a state word.
    #[inline]
    pub const fn generation_of(word: u64) -> u64 {
        word >> 8
    }
    /// The generation after `g` (wrapping within 56 bits, never 0 again
    /// after the first claim).
    #[inline]
    pub const fn next_generation(g: u64) -> u64 {
        if g >= MAX_GENERATION {
            1
        } else {
            g + 1
        }
    }
}

/// Cursor value of a subscriber that needs no frame kept.
pub const NO_CURSOR: u64 = u64::MAX;

/// Flag on the cursor of a lossless subscriber the writer evicted: the
/// cursor no longer holds the writer back, and the seq below the flag is
/// where the subscriber was (so it can count what it skipped).
pub const EVICTED: u64 = 1 << 62;

/// The seq a cursor holds the writer to, if any: `None` for [`NO_CURSOR`]
/// and for an [`EVICTED`] cursor.
#[inline]
pub const fn lossless_cursor(cursor: u64) -> Option<u64> {
    if cursor & EVICTED == 0 {
        Some(cursor)
    } else {
        None
    }
}

/// The fixed, write-once header at offset 0 (384 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SegmentHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION_MAJOR`].
    pub version_major: u16,
    /// [`VERSION_MINOR`].
    pub version_minor: u16,
    /// `size_of::<SegmentHeader>()`.
    pub header_len: u32,
    /// Total bytes of the segment.
    pub segment_len: u64,
    /// Random per publisher instance; a restart changes it.
    pub epoch: u64,
    /// Publisher process id.
    pub publisher_pid: u32,
    /// [`MemoryKind`] number.
    pub memory_kind: u32,
    /// Publisher process start time (clock ticks since boot, from /proc).
    pub publisher_start_time: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// Number of slots.
    pub slot_count: u32,
    /// Number of subscriber records.
    pub subscriber_capacity: u32,
    /// Entries in the index ring (power of two, >= 2 * slot_count).
    pub index_len: u32,
    /// [`LosslessPolicy`] number.
    pub lossless_policy: u32,
    /// How long the writer blocks under [`LosslessPolicy::Block`].
    pub block_timeout_ns: u64,
    /// Offset of the [`ControlBlock`].
    pub control_offset: u64,
    /// Offset of the [`SlotHeader`] table.
    pub slots_offset: u64,
    /// Offset of the index ring.
    pub index_offset: u64,
    /// Offset of the [`SubscriberRecord`] table.
    pub subscribers_offset: u64,
    /// Offset of the backend area (page aligned).
    pub backend_offset: u64,
    /// Bytes of the backend area.
    pub backend_len: u64,
    /// Bytes from one slot's data to the next (host: page multiple).
    pub slot_stride: u64,
    /// CUDA device UUID (zero for host memory).
    pub device_uuid: [u8; 16],
    /// CUDA device ordinal at the publisher (informational).
    pub device_ordinal: u32,
    /// Reserved flags, zero.
    pub flags: u32,
    /// Frame geometry.
    pub layout: FrameLayout,
    /// Publisher's pid namespace (inode of `/proc/self/ns/pid`; 0 unknown).
    /// Pids are compared only within one namespace; across namespaces
    /// (containers) liveness falls back to the heartbeat.
    pub publisher_pid_ns: u64,
    /// [`Content`] number: decoded frames or encoded packets.
    pub content: u32,
    /// Packet streams: [`Codec`](crate::Codec) number; zero for frames.
    pub codec: u32,
    /// Packet streams: offset of the codec configuration (extradata);
    /// zero when there is none.
    pub extradata_offset: u64,
    /// Bytes of the codec configuration.
    pub extradata_len: u32,
    /// Zero.
    pub reserved0: u32,
    /// Zero; room for minor-version additions.
    pub reserved: [u8; 72],
}

/// What a stream carries. A frame subscriber refuses a packet stream and
/// the reverse (`Incompatible`): the slot bytes mean different things.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Content {
    /// Decoded frames laid out by the header's [`FrameLayout`].
    Frames = 1,
    /// Encoded packets, one per slot, up to `layout.slot_bytes` bytes each
    /// (see [`PacketMeta`](crate::PacketMeta)).
    Packets = 2,
}

impl Content {
    /// The content for a protocol number.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Frames),
            2 => Some(Self::Packets),
            _ => None,
        }
    }

    /// Lower-case name for listings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Frames => "frames",
            Self::Packets => "packets",
        }
    }
}

/// The live control block (two cache lines: writer-written, reader-written).
#[repr(C, align(64))]
#[cfg_attr(not(loom), derive(FromBytes, IntoBytes, KnownLayout))]
pub struct ControlBlock {
    /// Latest committed frame, packed `seq << 8 | slot`; 0 = none yet.
    pub head: AtomicU64,
    /// Bumped on every commit and on close; the futex subscribers wait on.
    pub notify: AtomicU32,
    /// Subscribers currently waiting on `notify`.
    pub waiters: AtomicU32,
    /// Stream state (see [`state`]).
    pub state: AtomicU32,
    /// Zero.
    pub reserved0: AtomicU32,
    /// Publisher heartbeat, monotonic nanoseconds.
    pub heartbeat_ns: AtomicU64,
    /// Frames committed so far.
    pub published: AtomicU64,
    /// Monotonic nanoseconds of the last commit.
    pub last_commit_ns: AtomicU64,
    /// Publish rate in milli-frames per second (moving average).
    pub rate_mfps: AtomicU64,
    /// Packet streams: payload bytes committed so far (for the bitrate).
    pub bytes: AtomicU64,
    /// Bumped by subscribers when they free space; the futex a blocked
    /// writer waits on.
    pub space: AtomicU32,
    /// 1 while the writer waits on `space`.
    pub space_waiters: AtomicU32,
    /// Packet streams: the newest keyframe, packed `seq << 8 | slot`
    /// (0: none yet). Stored before `head`, so a reader that sees a head
    /// sees every keyframe up to it here.
    pub last_key: AtomicU64,
    /// Packet streams: packets from the keyframe before `last_key` to it
    /// (the GOP length; 0 until two keyframes were seen).
    pub gop: AtomicU64,
    /// Packet streams: payload bit rate, bits per second (moving average,
    /// kept by the publisher's heartbeat).
    pub bitrate_bps: AtomicU64,
    /// Zero.
    pub reserved2: [AtomicU64; 4],
}

/// One slot's header (one cache line).
#[repr(C, align(64))]
#[cfg_attr(not(loom), derive(FromBytes, IntoBytes, KnownLayout))]
pub struct SlotHeader {
    /// Bit 63: the writer holds it. Bits 0..63: which subscribers hold it.
    pub lease: AtomicU64,
    /// Sequence number of the frame it holds; 0 = none or being rewritten.
    pub seq: AtomicU64,
    /// Presentation timestamp, nanoseconds (an `i64` stored as bits).
    pub pts_ns: AtomicU64,
    /// Monotonic nanoseconds at commit (for latency).
    pub commit_ns: AtomicU64,
    /// Packet streams: [`packet`](crate::packet) flags (keyframe,
    /// discontinuity); zero for frames.
    pub flags: AtomicU64,
    /// Packet streams: decode timestamp, nanoseconds (`i64` bits).
    pub dts_ns: AtomicU64,
    /// Packet streams: duration, nanoseconds (0: unknown).
    pub duration_ns: AtomicU64,
    /// Packet streams: payload bytes (at most `layout.slot_bytes`).
    pub len: AtomicU64,
}

/// One subscriber's record (two cache lines).
#[repr(C, align(64))]
#[cfg_attr(not(loom), derive(FromBytes, IntoBytes, KnownLayout))]
pub struct SubscriberRecord {
    /// `generation << 8 | state` (see [`record`]); the generation is
    /// bumped each time the record is claimed.
    pub state: AtomicU64,
    /// [`Mode`] number.
    pub mode: AtomicU32,
    /// Most frames it may hold at once.
    pub max_held: AtomicU32,
    /// Process id of the holder.
    pub pid: AtomicU32,
    /// Frames held now.
    pub held: AtomicU32,
    /// Holder's process start time.
    pub start_time: AtomicU64,
    /// Holder's heartbeat, monotonic nanoseconds.
    pub heartbeat_ns: AtomicU64,
    /// Queue mode: next seq wanted ([`NO_CURSOR`] = nothing needed; with
    /// [`EVICTED`] set: evicted by the writer, not yet rejoined).
    pub cursor: AtomicU64,
    /// Last seq received.
    pub last_seq: AtomicU64,
    /// Frames received.
    pub received: AtomicU64,
    /// Frames lost (queue, drop-oldest) or skipped (newest-only).
    pub dropped: AtomicU64,
    /// UTF-8 name, NUL padded.
    pub name: [AtomicU64; NAME_LEN / 8],
    /// Holder's pid namespace (see [`SegmentHeader::publisher_pid_ns`]).
    pub pid_ns: AtomicU64,
    /// Times the writer evicted this QUEUE subscriber from lossless duty.
    pub evictions: AtomicU64,
    /// Waits on `notify` this subscriber has announced and not ended; a
    /// sweeper that frees the record of a holder that died while waiting
    /// takes them back out of [`ControlBlock::waiters`].
    pub waiting: AtomicU32,
    /// Zero.
    pub reserved: AtomicU32,
}

/// An index-ring entry: `seq << 8 | slot` of the frame with that seq.
pub type IndexEntry = AtomicU64;

const _: () = assert!(core::mem::size_of::<SegmentHeader>() == 384);
const _: () = assert!(core::mem::offset_of!(SegmentHeader, layout) == 160);
const _: () = assert!(core::mem::offset_of!(SegmentHeader, publisher_pid_ns) == 280);
const _: () = assert!(core::mem::offset_of!(SegmentHeader, content) == 288);
const _: () = assert!(core::mem::offset_of!(SegmentHeader, extradata_offset) == 296);
const _: () = assert!(core::mem::offset_of!(SegmentHeader, reserved) == 312);
#[cfg(not(loom))]
const _: () = {
    assert!(core::mem::size_of::<ControlBlock>() == 128);
    assert!(core::mem::offset_of!(ControlBlock, space) == 64);
    assert!(core::mem::offset_of!(ControlBlock, last_key) == 72);
    assert!(core::mem::offset_of!(SlotHeader, dts_ns) == 40);
    assert!(core::mem::size_of::<SlotHeader>() == 64);
    assert!(core::mem::size_of::<SubscriberRecord>() == 128);
    assert!(core::mem::offset_of!(SubscriberRecord, name) == 72);
    assert!(core::mem::offset_of!(SubscriberRecord, pid_ns) == 104);
    assert!(core::mem::offset_of!(SubscriberRecord, evictions) == 112);
    assert!(core::mem::offset_of!(SubscriberRecord, waiting) == 120);
    assert!(core::mem::size_of::<IndexEntry>() == 8);
};

/// Packs a seq and a slot number into one word.
#[inline]
pub const fn pack(seq: u64, slot: u32) -> u64 {
    (seq << 8) | (slot as u64 & 0xff)
}

/// Splits a packed word into `(seq, slot)`.
#[inline]
pub const fn unpack(word: u64) -> (u64, u32) {
    (word >> 8, (word & 0xff) as u32)
}

macro_rules! zeroed_atomics {
    ($ty:ident { $($field:ident),* ; $($arr:ident),* }) => {
        impl $ty {
            /// All zero, as in a fresh segment.
            pub fn new() -> Self {
                Self {
                    $($field: Default::default(),)*
                    $($arr: core::array::from_fn(|_| Default::default()),)*
                }
            }
        }
        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

zeroed_atomics!(ControlBlock {
    head, notify, waiters, state, reserved0, heartbeat_ns, published, last_commit_ns,
    rate_mfps, bytes, space, space_waiters, last_key, gop, bitrate_bps; reserved2
});
zeroed_atomics!(SlotHeader { lease, seq, pts_ns, commit_ns, flags, dts_ns, duration_ns, len; });
zeroed_atomics!(SubscriberRecord {
    state, mode, max_held, pid, held, start_time, heartbeat_ns, cursor,
    last_seq, received, dropped, pid_ns, evictions, waiting, reserved; name
});

impl core::fmt::Debug for SlotHeader {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use crate::sync::Ordering::Relaxed;
        f.debug_struct("SlotHeader")
            .field("lease", &self.lease.load(Relaxed))
            .field("seq", &self.seq.load(Relaxed))
            .finish_non_exhaustive()
    }
}
