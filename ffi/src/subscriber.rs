//! Subscriber and frame calls.

use crate::publisher::ms;
use crate::{
    arg_mut, c_str, create, fill_from, invalid, options_init, options_or_default, size_t,
    take_back, with, Options,
};
use cuframes::{
    Error, ErrorCode, Frame, FrameLayout, Mode, PlaneLayout, Result, Subscriber, SubscriberOptions,
    SubscriberStats,
};
use std::ffi::{c_char, c_int};
use std::time::Duration;

/// A connection to a stream. Opaque; made by `cuframes_subscriber_create`,
/// freed by `cuframes_subscriber_destroy`.
pub struct cuframes_subscriber_t {
    subscriber: Subscriber,
}

/// A frame held in place in shared memory. Opaque; handed out by
/// `cuframes_subscriber_next`, given back with `cuframes_frame_release`.
/// Its slot is not reused until then.
pub struct cuframes_frame_t {
    frame: Frame,
}

/// Subscriber settings. Fill with `cuframes_subscriber_options_init`
/// first, then change what you need.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cuframes_subscriber_options_t {
    /// How long `cuframes_subscriber_create` waits for the stream to appear
    /// or for a dead publisher to be replaced (default 2000).
    pub connect_timeout_ms: u32,
    /// Most frames held at once (default 1; each pins a slot).
    pub max_held: u32,
    /// Non-zero: accept a segment owned by another user (group sharing).
    pub allow_other_owner: u32,
    /// How often, while waiting, to check that the publisher lives
    /// (default 100, must be > 0).
    pub liveness_interval_ms: u32,
}

/// This subscriber's counters.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct cuframes_subscriber_stats_t {
    /// Frames handed out.
    pub frames_received: u64,
    /// `cuframes_subscriber_next` calls that timed out.
    pub timeouts: u64,
    /// Calls that failed otherwise.
    pub errors: u64,
    /// Seq of the last frame (0: none yet).
    pub last_seq: u64,
    /// Times the seq jumped by more than one.
    pub gap_count: u64,
    /// Frames lost (queue mode under drop-oldest) or skipped (newest-only),
    /// as counted in shared memory.
    pub dropped: u64,
    /// PTS of the last frame.
    pub last_frame_pts_ns: i64,
    /// Commit-to-handout latency of the last frame, nanoseconds.
    pub last_latency_ns: u64,
    /// Slots of the ring held or still needed, now.
    pub ring_occupancy: u32,
    /// Slots in the ring.
    pub slot_count: u32,
}

impl From<SubscriberOptions> for cuframes_subscriber_options_t {
    fn from(o: SubscriberOptions) -> Self {
        Self {
            connect_timeout_ms: ms(o.connect_timeout),
            max_held: o.max_held,
            allow_other_owner: o.allow_other_owner.into(),
            liveness_interval_ms: ms(o.liveness_interval),
        }
    }
}

impl From<SubscriberStats> for cuframes_subscriber_stats_t {
    fn from(s: SubscriberStats) -> Self {
        Self {
            frames_received: s.frames_received,
            timeouts: s.timeouts,
            errors: s.errors,
            last_seq: s.last_seq,
            gap_count: s.gap_count,
            dropped: s.dropped,
            last_frame_pts_ns: s.last_frame_pts_ns,
            last_latency_ns: s.last_latency_ns,
            ring_occupancy: s.ring_occupancy,
            slot_count: s.slot_count,
        }
    }
}

impl Options for cuframes_subscriber_options_t {
    type Rust = SubscriberOptions;

    fn to_rust(self) -> Result<SubscriberOptions> {
        if self.liveness_interval_ms == 0 {
            return Err(invalid("liveness_interval_ms must be > 0"));
        }
        Ok(SubscriberOptions {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.into()),
            max_held: self.max_held,
            allow_other_owner: self.allow_other_owner != 0,
            liveness_interval: Duration::from_millis(self.liveness_interval_ms.into()),
            ..SubscriberOptions::default()
        })
    }
}

/// A subscriber handle of the C ABI (frames, GPU frames, packets): what
/// the calls they share need of it.
pub(crate) trait Reader {
    /// The handle `next` hands out (a frame, a GPU frame, a packet).
    type Item;
    /// The name of `next`'s out-pointer, for the NULL message.
    const OUT: &'static str;
    /// What `try_next` says when nothing is ready.
    const NOTHING: &'static str;
    /// Waits up to `timeout` for the next item.
    fn next(&mut self, timeout: Duration) -> Result<Self::Item>;
    /// The next item if one is ready.
    fn try_next(&mut self) -> Result<Option<Self::Item>>;
    /// The subscriber's counters.
    fn stats(&self) -> SubscriberStats;
}

impl Reader for cuframes_subscriber_t {
    type Item = cuframes_frame_t;
    const OUT: &'static str = "frame_out";
    const NOTHING: &'static str = "no new frame yet";

    fn next(&mut self, timeout: Duration) -> Result<cuframes_frame_t> {
        let frame = self.subscriber.next_frame(timeout)?;
        Ok(cuframes_frame_t { frame })
    }
    fn try_next(&mut self) -> Result<Option<cuframes_frame_t>> {
        Ok(self
            .subscriber
            .try_next()?
            .map(|frame| cuframes_frame_t { frame }))
    }
    fn stats(&self) -> SubscriberStats {
        self.subscriber.stats()
    }
}

/// The subscriber create calls: clears `*out`, checks `key`, `name` and
/// `mode`, then hands out what `connect` makes of them.
///
/// # Safety
/// `key` and `name` are NULL or NUL-terminated strings; `out` is NULL or
/// writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn connect<T>(
    key: *const c_char,
    name: *const c_char,
    mode: u32,
    out: *mut *mut T,
    connect: impl FnOnce(&str, &str, Mode) -> Result<T>,
) -> c_int {
    let make = || {
        // SAFETY: per the contract.
        let (key, name) = unsafe { (c_str(key, "key")?, c_str(name, "name")?) };
        let mode = Mode::from_u32(mode)
            .ok_or_else(|| invalid(format!("mode {mode} is not a CUFRAMES_MODE_*")))?;
        connect(key, name, mode)
    };
    // SAFETY: per the contract.
    unsafe { create(out, "out", make) }
}

/// The `*_subscriber_next` calls.
///
/// # Safety
/// `subscriber` is NULL or a live subscriber not otherwise accessed during
/// the call; `out` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn subscriber_next<R: Reader>(
    subscriber: *mut R,
    timeout_ms: u32,
    out: *mut *mut R::Item,
) -> c_int {
    let timeout = Duration::from_millis(timeout_ms.into());
    let next = || {
        // SAFETY: per the contract.
        unsafe { arg_mut(subscriber, "subscriber") }?.next(timeout)
    };
    // SAFETY: per the contract.
    unsafe { create(out, R::OUT, next) }
}

/// The `*_subscriber_try_next` calls: `CUFRAMES_ERR_WOULD_BLOCK` when
/// nothing is ready.
///
/// # Safety
/// As for [`subscriber_next`].
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn subscriber_try_next<R: Reader>(
    subscriber: *mut R,
    out: *mut *mut R::Item,
) -> c_int {
    let next = || {
        // SAFETY: per the contract.
        unsafe { arg_mut(subscriber, "subscriber") }?
            .try_next()?
            .ok_or_else(|| Error::new(ErrorCode::WouldBlock, R::NOTHING))
    };
    // SAFETY: per the contract.
    unsafe { create(out, R::OUT, next) }
}

/// The `*_subscriber_stats` calls: `*stats` (zeroed on failure).
///
/// # Safety
/// `subscriber` is NULL or a live subscriber; `stats` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn subscriber_stats<R: Reader>(
    subscriber: *const R,
    stats: *mut cuframes_subscriber_stats_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe {
        fill_from(
            subscriber,
            "subscriber",
            stats,
            "stats",
            Default::default(),
            |s| Ok(s.stats().into()),
        )
    }
}

/// Checks a plane index against a frame's layout (host or GPU frames).
pub(crate) fn plane(layout: &FrameLayout, plane: u32) -> Result<&PlaneLayout> {
    let planes = layout.planes();
    planes.get(plane as usize).ok_or_else(|| {
        invalid(format!(
            "plane {plane}: the frame has {} plane(s)",
            planes.len()
        ))
    })
}

/// Fills `options` with the defaults.
///
/// Thread safety: any thread.
#[no_mangle]
pub extern "C" fn cuframes_subscriber_options_init(
    options: *mut cuframes_subscriber_options_t,
) -> c_int {
    options_init(options)
}

/// Connects to the stream `key` as `name` (shown by `cuframes stat`; at
/// most 32 bytes are kept) in `mode` (`CUFRAMES_MODE_*`), waiting up to
/// the connect timeout for the stream to exist. `options` may be NULL for
/// the defaults. On success `*out` is the new subscriber; on failure NULL.
///
/// Errors: `INVALID_ARGUMENT`, `NOT_FOUND` (no such stream within the
/// connect timeout), `CLOSED`, `PUBLISHER_GONE`, `CAPACITY` (every record
/// taken, or not enough slots for `max_held`), `PERMISSION`,
/// `INCOMPATIBLE`, `CORRUPT`.
///
/// Thread safety: any thread. Blocks up to the connect timeout.
///
/// # Safety
/// `key` and `name` are NULL or NUL-terminated strings; `options` is NULL
/// or valid; `out` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_subscriber_create(
    key: *const c_char,
    name: *const c_char,
    mode: u32,
    options: *const cuframes_subscriber_options_t,
    out: *mut *mut cuframes_subscriber_t,
) -> c_int {
    let make = |key: &str, name: &str, mode| {
        // SAFETY: NULL or valid per the contract.
        let options = unsafe { options_or_default(options) }?;
        let subscriber = Subscriber::connect(key, name, mode, options)?;
        Ok(cuframes_subscriber_t { subscriber })
    };
    // SAFETY: the contract is passed through.
    unsafe { connect(key, name, mode, out, make) }
}

/// Waits up to `timeout_ms` for the next frame — the newest
/// (`CUFRAMES_MODE_NEWEST_ONLY`) or the next in order
/// (`CUFRAMES_MODE_QUEUE`) — and stores it in `*frame_out` (NULL on
/// failure). Release it with `cuframes_frame_release`.
///
/// Errors: `TIMEOUT`, `CLOSED` (the publisher closed and the queue is
/// drained), `PUBLISHER_GONE` (reconnect), `CAPACITY` (already holding
/// `max_held` frames), `CORRUPT`, `INVALID_ARGUMENT`.
///
/// Thread safety: one call at a time per subscriber (any thread).
///
/// # Safety
/// `subscriber` is NULL or a live subscriber; `frame_out` is NULL or
/// writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_subscriber_next(
    subscriber: *mut cuframes_subscriber_t,
    timeout_ms: u32,
    frame_out: *mut *mut cuframes_frame_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { subscriber_next(subscriber, timeout_ms, frame_out) }
}

/// Takes a frame if one is ready, without waiting: `CUFRAMES_ERR_WOULD_BLOCK`
/// when none is. Otherwise as `cuframes_subscriber_next`.
///
/// Thread safety: one call at a time per subscriber (any thread).
///
/// # Safety
/// As for `cuframes_subscriber_next`.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_subscriber_try_next(
    subscriber: *mut cuframes_subscriber_t,
    frame_out: *mut *mut cuframes_frame_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { subscriber_try_next(subscriber, frame_out) }
}

/// This subscriber's counters, including the drop count and ring occupancy
/// from shared memory. On failure `*stats` is zeroed.
///
/// Thread safety: one call at a time per subscriber (not concurrently with
/// `cuframes_subscriber_next`).
///
/// # Safety
/// `subscriber` is NULL or a live subscriber; `stats` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_subscriber_stats(
    subscriber: *const cuframes_subscriber_t,
    stats: *mut cuframes_subscriber_stats_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { subscriber_stats(subscriber, stats) }
}

/// Disconnects and frees the subscriber. Frames still held stay valid
/// until released (they keep the mapping alive). NULL is ignored.
///
/// Thread safety: no other call on this subscriber may run or follow.
///
/// # Safety
/// `subscriber` is NULL or a live subscriber, not used afterwards.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_subscriber_destroy(subscriber: *mut cuframes_subscriber_t) {
    // SAFETY: per the contract: made by `create`, destroyed once.
    unsafe { take_back(subscriber) }
}

/// Frame accessors: `fallback` (and `INVALID_ARGUMENT` recorded) for NULL.
///
/// # Safety
/// `frame` is NULL or a live frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
unsafe fn with_frame<T: Copy>(
    frame: *const cuframes_frame_t,
    fallback: T,
    get: impl FnOnce(&Frame) -> Result<T>,
) -> T {
    // SAFETY: the contract is passed through.
    unsafe { with(frame, "frame", fallback, |f| get(&f.frame)) }
}

/// Sequence number (1, 2, ...); 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_seq(frame: *const cuframes_frame_t) -> u64 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.seq())) }
}

/// Presentation timestamp given by the publisher; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_pts_ns(frame: *const cuframes_frame_t) -> i64 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.pts_ns())) }
}

/// Monotonic (CLOCK_MONOTONIC) nanoseconds of the commit; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_commit_ns(frame: *const cuframes_frame_t) -> u64 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.commit_ns())) }
}

/// Width in pixels; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_width(frame: *const cuframes_frame_t) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.width())) }
}

/// Height in pixels; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_height(frame: *const cuframes_frame_t) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.height())) }
}

/// `CUFRAMES_FORMAT_*`; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_format(frame: *const cuframes_frame_t) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.format() as u32)) }
}

/// Number of planes; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_plane_count(frame: *const cuframes_frame_t) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.plane_count() as u32)) }
}

/// Bytes of the whole slot (all planes with their padding); 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_size(frame: *const cuframes_frame_t) -> size_t {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.data().len())) }
}

/// The slot's first byte (read-only), valid until the frame is released;
/// NULL for NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_data(frame: *const cuframes_frame_t) -> *const u8 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, std::ptr::null(), |f| Ok(f.data().as_ptr())) }
}

/// Bytes from one row of plane `plane_index` to the next.
/// 0 for a NULL frame or a plane the format lacks (then
/// `cuframes_last_error_message` says which).
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_pitch(
    frame: *const cuframes_frame_t,
    plane_index: u32,
) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(plane(f.layout(), plane_index)?.pitch)) }
}

/// Rows of plane `plane_index`.
/// 0 for a NULL frame or a plane the format lacks (then
/// `cuframes_last_error_message` says which).
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_rows(
    frame: *const cuframes_frame_t,
    plane_index: u32,
) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(plane(f.layout(), plane_index)?.rows)) }
}

/// Meaningful bytes per row of plane `plane_index` (<= pitch).
/// 0 for a NULL frame or a plane the format lacks (then
/// `cuframes_last_error_message` says which).
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same frame.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_row_bytes(
    frame: *const cuframes_frame_t,
    plane_index: u32,
) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(plane(f.layout(), plane_index)?.row_bytes)) }
}

/// First byte (read-only) of plane `plane_index`: row `r` starts at
/// `r * cuframes_frame_pitch(frame, plane_index)`. Valid until the frame
/// is released. NULL for a NULL frame or a plane the format lacks.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_plane_data(
    frame: *const cuframes_frame_t,
    plane_index: u32,
) -> *const u8 {
    // SAFETY: per the contract.
    unsafe {
        with_frame(frame, std::ptr::null(), |f| {
            plane(f.layout(), plane_index)?;
            Ok(f.plane(plane_index as usize).as_ptr())
        })
    }
}

/// Releases the frame: its slot may be reused, and every pointer from it is
/// invalid. NULL is ignored. Releasing twice is undefined, like `free`.
///
/// Thread safety: any thread, once, after every accessor call on this
/// frame has returned. It may outlive its subscriber.
///
/// # Safety
/// `frame` is NULL or a live frame, not used afterwards.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_frame_release(frame: *mut cuframes_frame_t) {
    // SAFETY: per the contract: handed out by `next`, released once.
    unsafe { take_back(frame) }
}
