//! Publisher calls.

use crate::{
    arg_mut, byte_slice, c_str, call, create, fill, fill_from, invalid, options_init,
    options_or_default, put, size_t, take_back, with, Options, CUFRAMES_MAX_PLANES,
};
use cuframes::{
    FrameLayout, LosslessPolicy, PixelFormat, Publisher, PublisherOptions, Result, RingStats,
};
use std::ffi::{c_char, c_int};
use std::time::Duration;

/// A stream being published. Opaque; made by `cuframes_publisher_create`,
/// freed by `cuframes_publisher_destroy`.
pub struct cuframes_publisher_t {
    publisher: Publisher,
}

/// Publisher settings. Fill with `cuframes_publisher_options_init` first,
/// then change what you need.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cuframes_publisher_options_t {
    /// Slots in the ring (2..=64; default 8). Must cover the frames all
    /// subscribers may hold at once plus two.
    pub slot_count: u32,
    /// Subscriber records (1..=63; default 16).
    pub subscriber_capacity: u32,
    /// `CUFRAMES_POLICY_BLOCK` (default) or `CUFRAMES_POLICY_DROP_OLDEST`.
    pub policy: u32,
    /// How long `cuframes_publisher_loan` waits for a free slot before
    /// `CUFRAMES_ERR_TIMEOUT` (default 1000).
    pub block_timeout_ms: u32,
    /// File mode of the segment (default 0600; 0660 shares with the group;
    /// world access is refused).
    pub mode: u32,
    /// Row alignment of each plane in bytes, a power of two (default 64).
    pub pitch_align: u32,
    /// Heartbeat and dead-subscriber sweep period (default 100, must be > 0).
    pub heartbeat_ms: u32,
    /// Under `CUFRAMES_POLICY_BLOCK`, once a QUEUE subscriber has held the
    /// publisher back for the whole block timeout: 1 (default) evicts it
    /// from lossless duty (it gets `CUFRAMES_ERR_LAGGED` once and goes on
    /// from the newest frame; frames it holds stay intact) and the loan
    /// goes on; 0 fails the loan with `CUFRAMES_ERR_TIMEOUT`.
    pub evict_lagging: u32,
}

/// Milliseconds of `v`, saturated to `u32`.
pub(crate) fn ms(v: Duration) -> u32 {
    v.as_millis().min(u32::MAX as u128) as u32
}

impl From<PublisherOptions> for cuframes_publisher_options_t {
    fn from(o: PublisherOptions) -> Self {
        Self {
            slot_count: o.slot_count,
            subscriber_capacity: o.subscriber_capacity,
            policy: o.policy as u32,
            block_timeout_ms: ms(o.block_timeout),
            mode: o.mode,
            pitch_align: o.pitch_align,
            heartbeat_ms: ms(o.heartbeat),
            evict_lagging: o.evict_lagging.into(),
        }
    }
}

impl Options for cuframes_publisher_options_t {
    type Rust = PublisherOptions;

    fn to_rust(self) -> Result<PublisherOptions> {
        let policy = LosslessPolicy::from_u32(self.policy)
            .ok_or_else(|| invalid(format!("policy {} is not a CUFRAMES_POLICY_*", self.policy)))?;
        if self.heartbeat_ms == 0 {
            return Err(invalid("heartbeat_ms must be > 0"));
        }
        Ok(PublisherOptions {
            slot_count: self.slot_count,
            subscriber_capacity: self.subscriber_capacity,
            policy,
            block_timeout: Duration::from_millis(self.block_timeout_ms.into()),
            mode: self.mode,
            pitch_align: self.pitch_align,
            heartbeat: Duration::from_millis(self.heartbeat_ms.into()),
            evict_lagging: self.evict_lagging != 0,
        })
    }
}

/// A loaned slot: where to write the next frame. Valid from
/// `cuframes_publisher_loan` until `cuframes_publisher_commit`,
/// `cuframes_publisher_abort` or `cuframes_publisher_destroy`; the memory
/// belongs to the stream, do not free it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cuframes_lease_t {
    /// The sequence number the frame will get.
    pub seq: u64,
    /// First byte of the slot.
    pub data: *mut u8,
    /// Bytes of the slot (all planes with their padding).
    pub size: size_t,
    /// `CUFRAMES_FORMAT_*`.
    pub format: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Planes in use (entries past it are NULL / 0).
    pub plane_count: u32,
    /// First byte of each plane.
    pub planes: [*mut u8; CUFRAMES_MAX_PLANES],
    /// Bytes from one row to the next, per plane.
    pub pitch: [u32; CUFRAMES_MAX_PLANES],
    /// Rows per plane.
    pub rows: [u32; CUFRAMES_MAX_PLANES],
    /// Meaningful bytes per row, per plane (<= pitch).
    pub row_bytes: [u32; CUFRAMES_MAX_PLANES],
}

impl cuframes_lease_t {
    const EMPTY: Self = Self {
        seq: 0,
        data: std::ptr::null_mut(),
        size: 0,
        format: 0,
        width: 0,
        height: 0,
        plane_count: 0,
        planes: [std::ptr::null_mut(); CUFRAMES_MAX_PLANES],
        pitch: [0; CUFRAMES_MAX_PLANES],
        rows: [0; CUFRAMES_MAX_PLANES],
        row_bytes: [0; CUFRAMES_MAX_PLANES],
    };
}

/// Ring-wide counters seen by the publisher.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct cuframes_publisher_stats_t {
    /// Newest committed seq (0: none yet).
    pub head_seq: u64,
    /// Frames committed.
    pub published: u64,
    /// Publish rate, milli-frames per second (moving average).
    pub rate_mfps: u64,
    /// Connected subscribers.
    pub subscribers: u32,
    /// Slots held by subscribers or still needed by a queue subscriber.
    pub occupancy: u32,
    /// Slots in the ring.
    pub slot_count: u32,
    /// 1 while a slot is loaned.
    pub writing: u32,
}

impl From<RingStats> for cuframes_publisher_stats_t {
    fn from(s: RingStats) -> Self {
        Self {
            head_seq: s.head_seq,
            published: s.published,
            rate_mfps: s.rate_mfps,
            subscribers: s.active().count() as u32,
            occupancy: s.occupancy,
            slot_count: s.slot_count,
            writing: s.writing.into(),
        }
    }
}

/// A publisher handle of the C ABI (frames, GPU frames, packets): what
/// the calls they share need of it.
pub(crate) trait Writer {
    /// The ring's counters.
    fn ring_stats(&self) -> RingStats;
    /// Gives the loaned slot back unpublished; false if none is loaned.
    fn abort(&mut self) -> bool;
}

impl Writer for cuframes_publisher_t {
    fn ring_stats(&self) -> RingStats {
        self.publisher.stats()
    }
    fn abort(&mut self) -> bool {
        self.publisher.abort_detached()
    }
}

/// The `*_publisher_abort` calls.
///
/// # Safety
/// `publisher` is NULL or a live publisher not otherwise accessed during
/// the call.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn publisher_abort<W: Writer>(publisher: *mut W) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        if unsafe { arg_mut(publisher, "publisher") }?.abort() {
            Ok(())
        } else {
            Err(invalid("no slot is loaned"))
        }
    })
}

/// The `*_publisher_stats` calls: `*stats` (zeroed on failure).
///
/// # Safety
/// `publisher` is NULL or a live publisher; `stats` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn publisher_stats<W: Writer>(
    publisher: *const W,
    stats: *mut cuframes_publisher_stats_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe {
        fill_from(
            publisher,
            "publisher",
            stats,
            "stats",
            Default::default(),
            |p| Ok(p.ring_stats().into()),
        )
    }
}

/// `format` as a pixel format, for the frame publishers' create calls.
pub(crate) fn pixel_format(format: u32) -> Result<PixelFormat> {
    PixelFormat::from_u32(format)
        .ok_or_else(|| invalid(format!("format {format} is not a CUFRAMES_FORMAT_*")))
}

/// Fills `options` with the defaults.
///
/// Thread safety: any thread.
#[no_mangle]
pub extern "C" fn cuframes_publisher_options_init(
    options: *mut cuframes_publisher_options_t,
) -> c_int {
    options_init(options)
}

/// Creates the stream `key` (ASCII letters, digits, `-`, `_`, `.`, at most
/// 64 characters; the segment is `/dev/shm/cuframes.<key>` or under
/// `$CUFRAMES_SHM_DIR`) for `width` x `height` frames of `format`
/// (`CUFRAMES_FORMAT_*`). `options` may be NULL for the defaults. On
/// success `*out` is the new publisher; on failure it is set to NULL.
///
/// Errors: `INVALID_ARGUMENT` (NULL, bad key, size or option),
/// `ALREADY_EXISTS` (the key has a live publisher), `PERMISSION`, `IO`.
///
/// Thread safety: any thread.
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; `options` is NULL or valid;
/// `out` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_publisher_create(
    key: *const c_char,
    format: u32,
    width: u32,
    height: u32,
    options: *const cuframes_publisher_options_t,
    out: *mut *mut cuframes_publisher_t,
) -> c_int {
    let make = || {
        // SAFETY: per the contract.
        let (key, options) = unsafe { (c_str(key, "key")?, options_or_default(options)?) };
        let layout = FrameLayout::new(pixel_format(format)?, width, height, options.pitch_align)?;
        let publisher = Publisher::create(key, layout, options)?;
        Ok(cuframes_publisher_t { publisher })
    };
    // SAFETY: `out` is NULL or writable per the contract.
    unsafe { create(out, "out", make) }
}

/// Loans the next free slot for writing, waiting up to the block timeout;
/// fills `*lease` with its plane pointers and pitches. Finish it with
/// `cuframes_publisher_commit` or `cuframes_publisher_abort`. On failure
/// `*lease` is zeroed.
///
/// Errors: `INVALID_ARGUMENT` (NULL, or a slot is already loaned),
/// `TIMEOUT` (every slot held, or a queue subscriber lags under
/// `CUFRAMES_POLICY_BLOCK`), `CAPACITY` (sequence numbers exhausted).
///
/// Thread safety: one call at a time per publisher (any thread; the lease
/// may be written from any thread until commit).
///
/// # Safety
/// `publisher` is NULL or a live publisher; `lease` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_publisher_loan(
    publisher: *mut cuframes_publisher_t,
    lease: *mut cuframes_lease_t,
) -> c_int {
    let loan = || {
        // SAFETY: per the contract.
        let p = &mut unsafe { arg_mut(publisher, "publisher") }?.publisher;
        let loan = p.loan_detached()?;
        let layout = p.layout();
        let mut out = cuframes_lease_t {
            seq: loan.seq,
            data: loan.data,
            size: loan.len,
            format: layout.format,
            width: layout.width,
            height: layout.height,
            plane_count: layout.plane_count,
            ..cuframes_lease_t::EMPTY
        };
        for (i, plane) in layout.planes().iter().enumerate() {
            // The layout was validated to lie within the slot's `len` bytes.
            out.planes[i] = loan.data.wrapping_add(plane.offset as usize);
            out.pitch[i] = plane.pitch;
            out.rows[i] = plane.rows;
            out.row_bytes[i] = plane.row_bytes;
        }
        Ok(out)
    };
    // SAFETY: `lease` is NULL or writable per the contract.
    unsafe { fill(lease, "lease", cuframes_lease_t::EMPTY, loan) }
}

/// Publishes the loaned slot with presentation time `pts_ns`; stores its
/// seq in `*seq` unless `seq` is NULL. The lease's pointers are invalid
/// afterwards.
///
/// Errors: `INVALID_ARGUMENT` (NULL publisher, or no slot is loaned).
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher; `seq` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_publisher_commit(
    publisher: *mut cuframes_publisher_t,
    pts_ns: i64,
    seq: *mut u64,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        let p = &mut unsafe { arg_mut(publisher, "publisher") }?.publisher;
        let s = p.commit_detached(pts_ns)?;
        // SAFETY: NULL or writable per the contract.
        unsafe { put(seq, s) };
        Ok(())
    })
}

/// Gives the loaned slot back unpublished.
///
/// Errors: `INVALID_ARGUMENT` (NULL, or no slot is loaned).
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_publisher_abort(publisher: *mut cuframes_publisher_t) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { publisher_abort(publisher) }
}

/// Copies a tightly packed frame (each plane's rows back to back without
/// padding, planes in order: `cuframes_publisher_packed_size` bytes) into
/// a slot and publishes it.
///
/// Errors: `INVALID_ARGUMENT` (NULL, wrong `len`, a slot is loaned),
/// `TIMEOUT`, `CAPACITY`.
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher; `data` is NULL or readable for
/// `len` bytes.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_publisher_publish(
    publisher: *mut cuframes_publisher_t,
    data: *const u8,
    len: size_t,
    pts_ns: i64,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        let p = &mut unsafe { arg_mut(publisher, "publisher") }?.publisher;
        // SAFETY: NULL or readable for `len` bytes per the contract.
        let packed = unsafe { byte_slice(data, len) }?;
        p.publish_from(packed, pts_ns).map(drop)
    })
}

/// Bytes of a tightly packed frame for `cuframes_publisher_publish`; 0 if
/// `publisher` is NULL.
///
/// Thread safety: any thread (reads immutable state).
///
/// # Safety
/// `publisher` is NULL or a live publisher.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_publisher_packed_size(
    publisher: *const cuframes_publisher_t,
) -> size_t {
    // SAFETY: per the contract.
    unsafe {
        with(publisher, "publisher", 0, |p| {
            Ok(p.publisher.layout().packed_bytes() as usize)
        })
    }
}

/// Ring-wide counters: frames published, connected subscribers, occupancy.
/// On failure `*stats` is zeroed.
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher; `stats` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_publisher_stats(
    publisher: *const cuframes_publisher_t,
    stats: *mut cuframes_publisher_stats_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { publisher_stats(publisher, stats) }
}

/// Closes the stream and frees the publisher: subscribers drain what is
/// left, then get `CUFRAMES_ERR_CLOSED`; the segment is removed. A loaned
/// slot is dropped unpublished. NULL is ignored.
///
/// Thread safety: no other call on this publisher may run or follow.
///
/// # Safety
/// `publisher` is NULL or a live publisher, not used afterwards.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_publisher_destroy(publisher: *mut cuframes_publisher_t) {
    // SAFETY: per the contract: made by `create`, destroyed once.
    unsafe { take_back(publisher) }
}
