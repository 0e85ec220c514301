//! CUDA subscriber and frame calls.

use super::{export_code, handle, kept_stream, raw, uintptr_t};
use crate::subscriber::{
    connect, plane, subscriber_next, subscriber_stats, subscriber_try_next, Reader,
};
use crate::{
    arg, arg_mut, call, cuframes_subscriber_options_t, cuframes_subscriber_stats_t, invalid,
    options_or_default, out_ptr, size_t, take_back, with,
};
use cuframes::{Error, ErrorCode, Result, SubscriberStats};
use cuframes_cuda::{CudaFrame, CudaSubscriber, CudaSubscriberOptions};
use std::ffi::{c_char, c_int};
use std::time::Duration;

/// A connection to a stream whose frames live in GPU memory. Opaque; made
/// by `cuframes_cuda_subscriber_create`, freed by
/// `cuframes_cuda_subscriber_destroy`.
pub struct cuframes_cuda_subscriber_t {
    subscriber: CudaSubscriber,
}

/// A frame held in place in GPU memory. Opaque; handed out by
/// `cuframes_cuda_subscriber_next`, given back with
/// `cuframes_cuda_frame_release`. The publisher does not rewrite its slot
/// until the reads enqueued on its consumer stream (and on streams given
/// to `cuframes_cuda_frame_use_on`) before the release have run.
pub struct cuframes_cuda_frame_t {
    frame: CudaFrame,
}

impl Reader for cuframes_cuda_subscriber_t {
    type Item = cuframes_cuda_frame_t;
    const OUT: &'static str = "frame_out";
    const NOTHING: &'static str = "no new frame yet";

    fn next(&mut self, timeout: Duration) -> Result<cuframes_cuda_frame_t> {
        let frame = self.subscriber.next_frame(timeout)?;
        Ok(cuframes_cuda_frame_t { frame })
    }
    fn try_next(&mut self) -> Result<Option<cuframes_cuda_frame_t>> {
        Ok(self
            .subscriber
            .try_next()?
            .map(|frame| cuframes_cuda_frame_t { frame }))
    }
    fn stats(&self) -> SubscriberStats {
        self.subscriber.stats()
    }
}

/// Connects to the GPU-memory stream `key` as `name` in `mode`
/// (`CUFRAMES_MODE_*`) and opens its device memory once (CUDA IPC, or the
/// VMM descriptor from the stream's socket). `device` is the CUDA device
/// ordinal to use, or `CUFRAMES_CUDA_DEVICE_AUTO` (-1) for the GPU whose
/// UUID is the publisher's. Frames are ordered on `consumer_stream` (0:
/// the legacy default stream; change it later with
/// `cuframes_cuda_subscriber_set_consumer_stream`). `options` (the host
/// subscriber's) may be NULL for the defaults. On success `*out` is the
/// new subscriber; on failure NULL.
///
/// Errors: those of `cuframes_subscriber_create` (`NOT_FOUND`, `CLOSED`,
/// `PUBLISHER_GONE`, `CAPACITY`, `PERMISSION`, `INCOMPATIBLE`, `CORRUPT`);
/// `INVALID_ARGUMENT` also for a host-memory stream (use
/// `cuframes_subscriber_create`), a device below -1, or
/// `consumer_stream` 2 (the per-thread default stream); `CUDA` (no driver,
/// no such device, `device` is not the publisher's GPU, the publisher's GPU
/// is not visible, the import failed); `PERMISSION` also when the
/// descriptor socket refuses us.
///
/// Thread safety: any thread. Blocks up to the connect timeout.
///
/// # Safety
/// `key` and `name` are NULL or NUL-terminated strings; `consumer_stream`
/// is 0, 1 or a live stream of the device's primary context that outlives
/// its use (the subscriber and the frames taken with it); `options` is
/// NULL or valid; `out` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_subscriber_create(
    key: *const c_char,
    name: *const c_char,
    mode: u32,
    device: i32,
    consumer_stream: uintptr_t,
    options: *const cuframes_subscriber_options_t,
    out: *mut *mut cuframes_cuda_subscriber_t,
) -> c_int {
    let make = |key: &str, name: &str, mode| {
        let device = match device {
            super::CUFRAMES_CUDA_DEVICE_AUTO => None,
            d => Some(u32::try_from(d).map_err(|_| {
                invalid(format!(
                    "device {d}: a device ordinal, or -1 (CUFRAMES_CUDA_DEVICE_AUTO)"
                ))
            })?),
        };
        let stream = kept_stream(consumer_stream, "consumer_stream")?;
        // SAFETY: NULL or valid per the contract.
        let ring = unsafe { options_or_default(options) }?;
        let mut subscriber =
            CudaSubscriber::connect(key, name, mode, CudaSubscriberOptions { ring, device })?;
        // SAFETY: the caller guarantees the stream is live, of the device's
        // primary context, and outlives its use.
        unsafe { subscriber.set_consumer_stream(raw(stream)) };
        Ok(cuframes_cuda_subscriber_t { subscriber })
    };
    // SAFETY: the contract is passed through.
    unsafe { connect(key, name, mode, out, make) }
}

/// Makes frames taken from now on wait (and release) on `stream` (0 or 1:
/// the legacy default stream). Frames already held keep theirs.
///
/// Errors: `INVALID_ARGUMENT` (NULL; `stream` 2, the per-thread default
/// stream: frames are taken, read and released on any thread, so it
/// cannot order them — read on it with `cuframes_cuda_frame_use_on`).
///
/// Thread safety: one call at a time per subscriber.
///
/// # Safety
/// `subscriber` is NULL or a live subscriber; `stream` is 0, 1 or a live
/// stream of the device's primary context that outlives its use (the
/// subscriber and the frames taken with it).
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_subscriber_set_consumer_stream(
    subscriber: *mut cuframes_cuda_subscriber_t,
    stream: uintptr_t,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        let s = &mut unsafe { arg_mut(subscriber, "subscriber") }?.subscriber;
        let stream = kept_stream(stream, "consumer_stream")?;
        // SAFETY: the caller guarantees the stream is live, of the device's
        // primary context, and outlives its use.
        unsafe { s.set_consumer_stream(raw(stream)) };
        Ok(())
    })
}

/// The consumer stream new frames are ordered on; 0 for NULL (and for the
/// legacy default stream given as 0).
///
/// Thread safety: one call at a time per subscriber.
///
/// # Safety
/// `subscriber` is NULL or a live subscriber.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_subscriber_consumer_stream(
    subscriber: *const cuframes_cuda_subscriber_t,
) -> uintptr_t {
    // SAFETY: per the contract.
    unsafe {
        with(subscriber, "subscriber", 0, |s| {
            Ok(handle(s.subscriber.consumer_stream()))
        })
    }
}

/// The CUDA device ordinal (in this process) the frames live on; -1 for
/// NULL.
///
/// Thread safety: any thread (reads immutable state).
///
/// # Safety
/// `subscriber` is NULL or a live subscriber.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_subscriber_device(
    subscriber: *const cuframes_cuda_subscriber_t,
) -> i32 {
    // SAFETY: per the contract.
    unsafe {
        with(subscriber, "subscriber", -1, |s| {
            i32::try_from(s.subscriber.device()).map_err(|_| invalid("device ordinal out of range"))
        })
    }
}

/// The export mode the publisher offers and this subscriber uses:
/// `CUFRAMES_CUDA_EXPORT_IPC` or `CUFRAMES_CUDA_EXPORT_VMM_FD`; 0 for NULL.
///
/// Thread safety: any thread (reads immutable state).
///
/// # Safety
/// `subscriber` is NULL or a live subscriber.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_subscriber_export_mode(
    subscriber: *const cuframes_cuda_subscriber_t,
) -> u32 {
    // SAFETY: per the contract.
    unsafe {
        with(subscriber, "subscriber", 0, |s| {
            Ok(export_code(s.subscriber.export_mode()))
        })
    }
}

/// Waits up to `timeout_ms` for the next frame (the newest, or the next in
/// order, per the mode) and stores it in `*frame_out` (NULL on failure).
/// Unless the publisher's writes to it are already complete, it enqueues
/// on the consumer stream a wait for them: work enqueued on that stream
/// afterwards sees the whole frame; the CPU never waits for the GPU.
/// Release it with `cuframes_cuda_frame_release`.
///
/// Errors: `TIMEOUT`, `CLOSED`, `PUBLISHER_GONE` (also for a frame the
/// publisher died before finishing on the GPU), `CAPACITY` (already
/// holding `max_held` frames), `LAGGED`, `CORRUPT`, `CUDA`,
/// `INVALID_ARGUMENT`.
///
/// Thread safety: one call at a time per subscriber (any thread).
///
/// # Safety
/// `subscriber` is NULL or a live subscriber; `frame_out` is NULL or
/// writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_subscriber_next(
    subscriber: *mut cuframes_cuda_subscriber_t,
    timeout_ms: u32,
    frame_out: *mut *mut cuframes_cuda_frame_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { subscriber_next(subscriber, timeout_ms, frame_out) }
}

/// Takes a frame if one is ready, without waiting:
/// `CUFRAMES_ERR_WOULD_BLOCK` when none is. Otherwise as
/// `cuframes_cuda_subscriber_next`.
///
/// Thread safety: one call at a time per subscriber (any thread).
///
/// # Safety
/// As for `cuframes_cuda_subscriber_next`.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_subscriber_try_next(
    subscriber: *mut cuframes_cuda_subscriber_t,
    frame_out: *mut *mut cuframes_cuda_frame_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { subscriber_try_next(subscriber, frame_out) }
}

/// This subscriber's counters, as `cuframes_subscriber_stats`. On failure
/// `*stats` is zeroed.
///
/// Thread safety: one call at a time per subscriber (not concurrently with
/// `cuframes_cuda_subscriber_next`).
///
/// # Safety
/// `subscriber` is NULL or a live subscriber; `stats` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_subscriber_stats(
    subscriber: *const cuframes_cuda_subscriber_t,
    stats: *mut cuframes_subscriber_stats_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { subscriber_stats(subscriber, stats) }
}

/// Synchronises the consumer stream (released frames' reads may still be
/// running), disconnects and frees the subscriber. Frames still held stay
/// valid until released (they keep the GPU memory open). NULL is ignored.
///
/// Thread safety: no other call on this subscriber may run or follow.
///
/// # Safety
/// `subscriber` is NULL or a live subscriber, not used afterwards.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_subscriber_destroy(
    subscriber: *mut cuframes_cuda_subscriber_t,
) {
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
    frame: *const cuframes_cuda_frame_t,
    fallback: T,
    get: impl FnOnce(&CudaFrame) -> Result<T>,
) -> T {
    // SAFETY: the contract is passed through.
    unsafe { with(frame, "frame", fallback, |f| get(&f.frame)) }
}

/// Sequence number (1, 2, ...); 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_seq(frame: *const cuframes_cuda_frame_t) -> u64 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.seq())) }
}

/// Presentation timestamp given by the publisher; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_pts_ns(frame: *const cuframes_cuda_frame_t) -> i64 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.pts_ns())) }
}

/// Monotonic (CLOCK_MONOTONIC) nanoseconds of the host-side commit (the
/// GPU writes may complete later); 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_commit_ns(frame: *const cuframes_cuda_frame_t) -> u64 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.as_ref().commit_ns())) }
}

/// Width in pixels; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_width(frame: *const cuframes_cuda_frame_t) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.width())) }
}

/// Height in pixels; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_height(frame: *const cuframes_cuda_frame_t) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.height())) }
}

/// `CUFRAMES_FORMAT_*`; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_format(frame: *const cuframes_cuda_frame_t) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.format() as u32)) }
}

/// Number of planes; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_plane_count(
    frame: *const cuframes_cuda_frame_t,
) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(f.plane_count() as u32)) }
}

/// CUDA device ordinal (in this process) of the frame's memory; -1 for
/// NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_device(frame: *const cuframes_cuda_frame_t) -> i32 {
    // SAFETY: per the contract.
    unsafe {
        with_frame(frame, -1, |f| {
            i32::try_from(f.device()).map_err(|_| invalid("device ordinal out of range"))
        })
    }
}

/// The consumer stream the frame is ordered on (the subscriber's when it
/// was taken); 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_consumer_stream(
    frame: *const cuframes_cuda_frame_t,
) -> uintptr_t {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(handle(f.consumer_stream()))) }
}

/// Device address (`CUdeviceptr`) of plane `plane_index`'s first row: row
/// `r` starts `r * cuframes_cuda_frame_pitch(frame, plane_index)` bytes
/// further. Read-only (in VMM mode the mapping is read-only: a write
/// faults), valid until the frame is released, for work ordered after the
/// consumer stream's wait. 0 for a NULL frame or a plane the format lacks
/// (then `cuframes_last_error_message` says which).
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_device_ptr(
    frame: *const cuframes_cuda_frame_t,
    plane_index: u32,
) -> u64 {
    // SAFETY: per the contract.
    unsafe {
        with_frame(frame, 0, |f| {
            plane(f.layout(), plane_index)?;
            Ok(f.device_ptr(plane_index as usize))
        })
    }
}

/// Bytes from one row of plane `plane_index` to the next in device memory.
/// 0 for a NULL frame or a plane the format lacks.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_pitch(
    frame: *const cuframes_cuda_frame_t,
    plane_index: u32,
) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(plane(f.layout(), plane_index)?.pitch)) }
}

/// Rows of plane `plane_index`. 0 for a NULL frame or a plane the format
/// lacks.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_rows(
    frame: *const cuframes_cuda_frame_t,
    plane_index: u32,
) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(plane(f.layout(), plane_index)?.rows)) }
}

/// Meaningful bytes per row of plane `plane_index` (<= pitch). 0 for a
/// NULL frame or a plane the format lacks.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `frame` is NULL or a live (unreleased) frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_row_bytes(
    frame: *const cuframes_cuda_frame_t,
    plane_index: u32,
) -> u32 {
    // SAFETY: per the contract.
    unsafe { with_frame(frame, 0, |f| Ok(plane(f.layout(), plane_index)?.row_bytes)) }
}

/// Lets `stream` read the frame too: enqueues on `stream` a wait for the
/// frame to be ready on the consumer stream, and makes the release wait
/// for the work enqueued on `stream` by then. The consumer stream itself
/// (and 0/1 when that is the legacy default stream) does nothing. 2 (the
/// per-thread default stream) names the calling thread's; if the frame is
/// released on another thread, the release synchronises the context.
///
/// Errors: `INVALID_ARGUMENT` (NULL frame), `CUDA`.
///
/// Thread safety: any thread, concurrently with accessors (not with the
/// release).
///
/// # Safety
/// `frame` is NULL or a live frame; `stream` is 0, 1, 2 or a live stream
/// of the frame's device's primary context that outlives the frame.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_use_on(
    frame: *const cuframes_cuda_frame_t,
    stream: uintptr_t,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        let f = &unsafe { arg(frame, "frame") }?.frame;
        f.use_on(raw(stream))
    })
}

/// Copies the picture to host memory, tightly packed (each plane's rows
/// back to back, planes in order), on the consumer stream, and waits for
/// the copy (it synchronises the CPU with the GPU: for checks, tests and
/// debugging, not for a pipeline). `len` must be the packed size (NV12:
/// width * height * 3 / 2; `cuframes_cuda_publisher_packed_size` on the
/// publisher's side).
///
/// Errors: `INVALID_ARGUMENT` (NULL, wrong `len`), `CUDA`.
///
/// Thread safety: any thread, concurrently with accessors (not with the
/// release).
///
/// # Safety
/// `frame` is NULL or a live frame; `dst` is NULL or writable for `len`
/// bytes.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_copy_to_host(
    frame: *const cuframes_cuda_frame_t,
    dst: *mut u8,
    len: size_t,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        let f = &unsafe { arg(frame, "frame") }?.frame;
        let dst = out_ptr(dst, "dst")?;
        let need = f.layout().packed_bytes();
        if len as u64 != need {
            return Err(invalid(format!(
                "dst has {len} bytes; the packed frame has {need}"
            )));
        }
        let bytes = f.copy_to_host()?;
        if bytes.len() != len {
            return Err(Error::new(
                ErrorCode::Internal,
                format!("copied {} bytes, expected {len}", bytes.len()),
            ));
        }
        // SAFETY: `dst` is writable for `len` bytes per the contract and
        // `bytes` holds exactly `len`; they cannot overlap (`bytes` was
        // just allocated).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, len) };
        Ok(())
    })
}

/// Releases the frame: the consumer stream waits for the streams given to
/// `cuframes_cuda_frame_use_on`, then counts this subscriber's release of
/// the slot (a stream memory write) after the reads enqueued before; the
/// publisher's next write to the slot waits for that. Returns without
/// waiting for the GPU (unless the subscriber is already destroyed: then
/// it synchronises the consumer stream). Device pointers from the frame
/// must not be used by work enqueued afterwards. NULL is ignored;
/// releasing twice is undefined, like `free`.
///
/// Thread safety: any thread, once, after every other call on this frame
/// has returned. It may outlive its subscriber.
///
/// # Safety
/// `frame` is NULL or a live frame, not used afterwards.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_frame_release(frame: *mut cuframes_cuda_frame_t) {
    // SAFETY: per the contract: handed out by `next`, released once.
    unsafe { take_back(frame) }
}
