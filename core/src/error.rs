//! Error codes shared by Rust, C and Python, and the core's typed errors.

use core::fmt;

/// Stable numeric error codes.
///
/// The same numbers are returned by the C ABI and carried by the Python
/// exceptions. A code is never reused for another meaning; new codes are
/// appended.
///
/// ```
/// use cuframes_core::ErrorCode;
/// assert_eq!(ErrorCode::Timeout as i32, 1);
/// assert_eq!(ErrorCode::from_i32(3), Some(ErrorCode::Closed));
/// assert_eq!(ErrorCode::from_i32(9999), None);
/// ```
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No frame (or no free slot) arrived within the timeout.
    Timeout = 1,
    /// No stream with that key exists.
    NotFound = 2,
    /// The publisher closed the stream.
    Closed = 3,
    /// The publisher died or was replaced by a new instance.
    PublisherGone = 4,
    /// An argument was out of range or malformed.
    InvalidArgument = 5,
    /// The segment speaks another protocol version or layout.
    Incompatible = 6,
    /// No free subscriber record, slot or hold budget.
    Capacity = 7,
    /// The operating system refused access.
    Permission = 8,
    /// The CUDA driver reported an error or is missing.
    Cuda = 9,
    /// Another operating-system error.
    Io = 10,
    /// Shared memory failed validation: corrupt or hostile bytes.
    Corrupt = 11,
    /// The frame was already released.
    Released = 12,
    /// Nothing is ready now; try again (non-blocking calls only).
    WouldBlock = 13,
    /// An internal fault was caught at a language boundary.
    Internal = 14,
    /// The key is already used by a live publisher.
    AlreadyExists = 15,
    /// A lossless subscriber fell so far behind that the publisher, after
    /// its block timeout, stopped waiting for it: frames were skipped (and
    /// counted as dropped); reading goes on from the newest frame.
    Lagged = 16,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 16] = [
        Self::Timeout,
        Self::NotFound,
        Self::Closed,
        Self::PublisherGone,
        Self::InvalidArgument,
        Self::Incompatible,
        Self::Capacity,
        Self::Permission,
        Self::Cuda,
        Self::Io,
        Self::Corrupt,
        Self::Released,
        Self::WouldBlock,
        Self::Internal,
        Self::AlreadyExists,
        Self::Lagged,
    ];

    /// The code for a number, if it is one.
    pub fn from_i32(code: i32) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| *c as i32 == code)
    }

    /// Short stable name, as used for the Python exception classes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Timeout => "Timeout",
            Self::NotFound => "NotFound",
            Self::Closed => "Closed",
            Self::PublisherGone => "PublisherGone",
            Self::InvalidArgument => "InvalidArgument",
            Self::Incompatible => "Incompatible",
            Self::Capacity => "Capacity",
            Self::Permission => "Permission",
            Self::Cuda => "Cuda",
            Self::Io => "Io",
            Self::Corrupt => "Corrupt",
            Self::Released => "Released",
            Self::WouldBlock => "WouldBlock",
            Self::Internal => "Internal",
            Self::AlreadyExists => "AlreadyExists",
            Self::Lagged => "Lagged",
        }
    }

    /// One-line human description.
    pub fn description(self) -> &'static str {
        match self {
            Self::Timeout => "timed out",
            Self::NotFound => "stream not found",
            Self::Closed => "stream closed by its publisher",
            Self::PublisherGone => "publisher died or restarted",
            Self::InvalidArgument => "invalid argument",
            Self::Incompatible => "incompatible protocol version or layout",
            Self::Capacity => "capacity exhausted",
            Self::Permission => "permission denied",
            Self::Cuda => "CUDA error",
            Self::Io => "I/O error",
            Self::Corrupt => "corrupt shared memory",
            Self::Released => "frame already released",
            Self::WouldBlock => "nothing ready",
            Self::Internal => "internal error",
            Self::AlreadyExists => "stream already has a live publisher",
            Self::Lagged => "lossless subscriber evicted for lagging; frames skipped",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Which part of a segment a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The fixed header.
    Header,
    /// The control block (head, notify, state).
    Control,
    /// The slot header table.
    Slots,
    /// The index ring.
    Index,
    /// The subscriber record table.
    Subscribers,
    /// The backend area (slot data or device handles).
    Backend,
    /// A packet stream's codec configuration.
    Extradata,
}

/// Why a frame layout was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// The pixel format number is unknown.
    UnknownFormat(u32),
    /// Width or height is zero, too large, or not allowed for the format
    /// (NV12 and P010 need even dimensions).
    Dimensions {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Plane count differs from what the format needs.
    PlaneCount(u32),
    /// A plane's pitch is smaller than its row bytes, or its row count or
    /// row bytes differ from what the format needs.
    Plane(u8),
    /// A plane lies outside the slot or overlaps another plane.
    PlaneBounds(u8),
    /// Arithmetic on sizes overflowed.
    Overflow,
    /// A packet stream's layout is not the packet form: format, planes and
    /// pitches zero, `slot_bytes` (the largest packet) in
    /// 1..=[`MAX_PACKET_BYTES`](crate::packet::MAX_PACKET_BYTES).
    Packets,
}

/// Why a segment header was rejected. Every malformed byte pattern maps to
/// one of these; validation never panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateError {
    /// Fewer bytes than a header.
    TooSmall {
        /// Bytes available.
        len: u64,
    },
    /// The magic bytes are not `CUFRAMES`.
    BadMagic,
    /// A major version this build does not speak.
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// `header_len` does not match the header structure.
    HeaderLen(u32),
    /// `segment_len` disagrees with the mapped size.
    SegmentLen {
        /// Length recorded in the header.
        recorded: u64,
        /// Length actually mapped.
        actual: u64,
    },
    /// A count (slots, subscribers, index length) is zero or over its limit.
    Count(&'static str),
    /// An enumerated field holds an unknown value.
    UnknownValue(&'static str),
    /// A region is misaligned or out of bounds.
    OutOfBounds(Region),
    /// Two regions overlap.
    Overlap(Region, Region),
    /// The frame layout is inconsistent.
    Layout(LayoutError),
}

impl ValidateError {
    /// The shared error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedVersion { .. } => ErrorCode::Incompatible,
            _ => ErrorCode::Corrupt,
        }
    }
}

impl From<LayoutError> for ValidateError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(e)
    }
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFormat(v) => write!(f, "unknown pixel format {v}"),
            Self::Dimensions { width, height } => {
                write!(f, "dimensions {width}x{height} not allowed for this format")
            }
            Self::PlaneCount(n) => write!(f, "wrong plane count {n}"),
            Self::Plane(i) => write!(f, "plane {i}: pitch, rows or row bytes inconsistent"),
            Self::PlaneBounds(i) => write!(f, "plane {i} outside the slot or overlapping"),
            Self::Overflow => f.write_str("size arithmetic overflowed"),
            Self::Packets => f.write_str("not a packet layout (or packet size out of range)"),
        }
    }
}

impl fmt::Display for ValidateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooSmall { len } => write!(f, "segment too small ({len} bytes)"),
            Self::BadMagic => f.write_str("bad magic: not a cuframes segment"),
            Self::UnsupportedVersion { major, minor } => write!(
                f,
                "protocol version {major}.{minor} not supported (this build speaks {}.{})",
                crate::layout::VERSION_MAJOR,
                crate::layout::VERSION_MINOR
            ),
            Self::HeaderLen(n) => write!(f, "header length {n} unexpected"),
            Self::SegmentLen { recorded, actual } => {
                write!(f, "segment length {recorded} recorded but {actual} mapped")
            }
            Self::Count(what) => write!(f, "{what} out of range"),
            Self::UnknownValue(what) => write!(f, "unknown {what}"),
            Self::OutOfBounds(r) => write!(f, "{r:?} region misaligned or out of bounds"),
            Self::Overlap(a, b) => write!(f, "{a:?} and {b:?} regions overlap"),
            Self::Layout(e) => write!(f, "frame layout: {e}"),
        }
    }
}

impl core::error::Error for LayoutError {}
impl core::error::Error for ValidateError {}
