//! CUDA publisher calls.

use super::{export_code, handle, kept_stream, raw, uintptr_t};
use super::{CUFRAMES_CUDA_EXPORT_AUTO, CUFRAMES_CUDA_EXPORT_IPC, CUFRAMES_CUDA_EXPORT_VMM_FD};
use crate::publisher::{ms, pixel_format, publisher_abort, publisher_stats, Writer};
use crate::{
    arg_mut, byte_slice, c_str, call, create, cuframes_publisher_options_t,
    cuframes_publisher_stats_t, fill, invalid, options_init, options_or_default, put, size_t,
    take_back, with, Options, CUFRAMES_MAX_PLANES,
};
use cuframes::{PublisherOptions, Result, RingStats};
use cuframes_cuda::{
    CudaDetachedLease, CudaPublisher, CudaPublisherOptions, DevicePlane, ExportRequest,
};
use std::ffi::{c_char, c_int};
use std::time::Duration;

/// A stream published from GPU memory. Opaque; made by
/// `cuframes_cuda_publisher_create`, freed by
/// `cuframes_cuda_publisher_destroy`.
pub struct cuframes_cuda_publisher_t {
    publisher: CudaPublisher,
    /// The slot loaned by `cuframes_cuda_publisher_loan`, until commit or
    /// abort.
    lease: Option<CudaDetachedLease>,
}

/// CUDA publisher settings. Fill with
/// `cuframes_cuda_publisher_options_init` first, then change what you need.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cuframes_cuda_publisher_options_t {
    /// CUDA device ordinal (default 0).
    pub device: u32,
    /// `CUFRAMES_CUDA_EXPORT_AUTO` (default), `CUFRAMES_CUDA_EXPORT_IPC` or
    /// `CUFRAMES_CUDA_EXPORT_VMM_FD`.
    pub export_mode: u32,
    /// Row and plane alignment in device memory: a power of two from 256
    /// to 1 MiB (default 512, what NVDEC and NPP want).
    pub pitch_align: u32,
    /// Slots in the ring (2..=64; default 8).
    pub slot_count: u32,
    /// Subscriber records (1..=63; default 16).
    pub subscriber_capacity: u32,
    /// `CUFRAMES_POLICY_BLOCK` (default) or `CUFRAMES_POLICY_DROP_OLDEST`.
    pub policy: u32,
    /// How long `cuframes_cuda_publisher_loan` waits for a free slot
    /// before `CUFRAMES_ERR_TIMEOUT` (default 1000).
    pub block_timeout_ms: u32,
    /// File mode of the segment and the descriptor socket (default 0600;
    /// 0660 shares with the group).
    pub mode: u32,
    /// Heartbeat and dead-subscriber sweep period (default 100, > 0).
    pub heartbeat_ms: u32,
    /// As in `cuframes_publisher_options_t` (default 1).
    pub evict_lagging: u32,
    /// IPC mode: how long destroying the publisher waits for subscribers
    /// to finish reading and detach before it frees the memory (default
    /// 2000).
    pub close_grace_ms: u32,
}

impl From<CudaPublisherOptions> for cuframes_cuda_publisher_options_t {
    fn from(o: CudaPublisherOptions) -> Self {
        let ring = cuframes_publisher_options_t::from(o.ring);
        Self {
            device: o.device,
            export_mode: match o.export {
                ExportRequest::Auto => CUFRAMES_CUDA_EXPORT_AUTO,
                ExportRequest::Ipc => CUFRAMES_CUDA_EXPORT_IPC,
                ExportRequest::VmmFd => CUFRAMES_CUDA_EXPORT_VMM_FD,
            },
            pitch_align: o.pitch_align,
            slot_count: ring.slot_count,
            subscriber_capacity: ring.subscriber_capacity,
            policy: ring.policy,
            block_timeout_ms: ring.block_timeout_ms,
            mode: ring.mode,
            heartbeat_ms: ring.heartbeat_ms,
            evict_lagging: ring.evict_lagging,
            close_grace_ms: ms(o.close_grace),
        }
    }
}

impl Writer for cuframes_cuda_publisher_t {
    fn ring_stats(&self) -> RingStats {
        self.publisher.host().stats()
    }
    fn abort(&mut self) -> bool {
        self.lease = None;
        self.publisher.abort_detached()
    }
}

impl Options for cuframes_cuda_publisher_options_t {
    type Rust = CudaPublisherOptions;

    fn to_rust(self) -> Result<CudaPublisherOptions> {
        let ring = cuframes_publisher_options_t {
            slot_count: self.slot_count,
            subscriber_capacity: self.subscriber_capacity,
            policy: self.policy,
            block_timeout_ms: self.block_timeout_ms,
            mode: self.mode,
            // Ignored by the CUDA publisher (its own `pitch_align` rules).
            pitch_align: PublisherOptions::default().pitch_align,
            heartbeat_ms: self.heartbeat_ms,
            evict_lagging: self.evict_lagging,
        }
        .to_rust()?;
        let export = match self.export_mode {
            CUFRAMES_CUDA_EXPORT_AUTO => ExportRequest::Auto,
            CUFRAMES_CUDA_EXPORT_IPC => ExportRequest::Ipc,
            CUFRAMES_CUDA_EXPORT_VMM_FD => ExportRequest::VmmFd,
            v => {
                return Err(invalid(format!(
                    "export_mode {v} is not a CUFRAMES_CUDA_EXPORT_*"
                )))
            }
        };
        Ok(CudaPublisherOptions {
            ring,
            device: self.device,
            export,
            pitch_align: self.pitch_align,
            close_grace: Duration::from_millis(self.close_grace_ms.into()),
        })
    }
}

/// A loaned slot in GPU memory: where to write the next frame and the
/// stream to write on. Valid from `cuframes_cuda_publisher_loan` until
/// `cuframes_cuda_publisher_commit`, `cuframes_cuda_publisher_abort` or
/// `cuframes_cuda_publisher_destroy`; the memory belongs to the stream.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cuframes_cuda_lease_t {
    /// The sequence number the frame will get.
    pub seq: u64,
    /// The slot index.
    pub slot: u32,
    /// `CUFRAMES_FORMAT_*`.
    pub format: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Planes in use (entries past it are 0).
    pub plane_count: u32,
    /// CUDA device ordinal of the memory (in this process).
    pub device: u32,
    /// Device address (`CUdeviceptr`) of each plane's first row.
    pub device_ptr: [u64; CUFRAMES_MAX_PLANES],
    /// Bytes from one row to the next, per plane (a multiple of
    /// `pitch_align`).
    pub pitch: [u32; CUFRAMES_MAX_PLANES],
    /// Rows per plane.
    pub rows: [u32; CUFRAMES_MAX_PLANES],
    /// Meaningful bytes per row, per plane (<= pitch).
    pub row_bytes: [u32; CUFRAMES_MAX_PLANES],
    /// The stream to write on (`CUstream`; 0: the legacy default stream):
    /// the publisher's own, or the one given to
    /// `cuframes_cuda_publisher_set_stream`. It already waits (on the GPU)
    /// for every subscriber to be done with the slot: enqueue the writes
    /// on it, or on a stream ordered after it and before the commit.
    pub stream: uintptr_t,
}

impl cuframes_cuda_lease_t {
    pub(crate) const EMPTY: Self = Self {
        seq: 0,
        slot: 0,
        format: 0,
        width: 0,
        height: 0,
        plane_count: 0,
        device: 0,
        device_ptr: [0; CUFRAMES_MAX_PLANES],
        pitch: [0; CUFRAMES_MAX_PLANES],
        rows: [0; CUFRAMES_MAX_PLANES],
        row_bytes: [0; CUFRAMES_MAX_PLANES],
        stream: 0,
    };
}

/// Fills `options` with the defaults.
///
/// Thread safety: any thread.
#[no_mangle]
pub extern "C" fn cuframes_cuda_publisher_options_init(
    options: *mut cuframes_cuda_publisher_options_t,
) -> c_int {
    options_init(options)
}

/// Creates the stream `key` for `width` x `height` frames of `format`
/// (`CUFRAMES_FORMAT_*`) in one allocation on GPU `options->device`,
/// exported as `options->export_mode` says, planes pitched to
/// `options->pitch_align`. `options` may be NULL for the defaults. On
/// success `*out` is the new publisher; on failure NULL, and nothing is
/// left in the shm directory.
///
/// Errors: `INVALID_ARGUMENT` (NULL, bad key, format, size or option),
/// `CUDA` (no driver, no such device, no VMM support for
/// `CUFRAMES_CUDA_EXPORT_VMM_FD`, out of memory: the message has the
/// driver's words), `ALREADY_EXISTS`, `PERMISSION`, `IO`.
///
/// Thread safety: any thread.
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; `options` is NULL or valid;
/// `out` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_create(
    key: *const c_char,
    format: u32,
    width: u32,
    height: u32,
    options: *const cuframes_cuda_publisher_options_t,
    out: *mut *mut cuframes_cuda_publisher_t,
) -> c_int {
    let make = || {
        // SAFETY: per the contract.
        let (key, options) = unsafe { (c_str(key, "key")?, options_or_default(options)?) };
        let publisher = CudaPublisher::create(key, pixel_format(format)?, width, height, options)?;
        Ok(cuframes_cuda_publisher_t {
            publisher,
            lease: None,
        })
    };
    // SAFETY: `out` is NULL or writable per the contract.
    unsafe { create(out, "out", make) }
}

/// Loans the next free slot for in-place writes (a decoder's output, a
/// kernel, a copy), waiting up to the block timeout; fills `*lease` with
/// the device address, pitch, rows and row bytes of each plane and the
/// stream to write on, which already waits (on the GPU) until every
/// subscriber's reads of the slot are complete. Enqueue the writes, then
/// `cuframes_cuda_publisher_commit`, or give the slot back with
/// `cuframes_cuda_publisher_abort`. On failure `*lease` is zeroed.
///
/// Errors: `INVALID_ARGUMENT` (NULL, or a slot is already loaned),
/// `TIMEOUT` (no free slot), `CAPACITY`, `CLOSED`, `CUDA`.
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher; `lease` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_loan(
    publisher: *mut cuframes_cuda_publisher_t,
    lease: *mut cuframes_cuda_lease_t,
) -> c_int {
    let loan = || {
        // SAFETY: per the contract.
        let h = unsafe { arg_mut(publisher, "publisher") }?;
        let loan = h.publisher.loan_detached()?;
        h.lease = Some(loan);
        let layout = h.publisher.layout();
        let mut out = cuframes_cuda_lease_t {
            seq: loan.seq,
            slot: loan.slot,
            format: layout.format,
            width: layout.width,
            height: layout.height,
            plane_count: loan.plane_count as u32,
            device: h.publisher.device(),
            stream: handle(loan.stream),
            ..cuframes_cuda_lease_t::EMPTY
        };
        for (i, p) in loan.planes.iter().take(loan.plane_count).enumerate() {
            out.device_ptr[i] = p.ptr;
            out.pitch[i] = p.pitch;
            out.rows[i] = p.rows;
            out.row_bytes[i] = p.row_bytes;
        }
        Ok(out)
    };
    // SAFETY: `lease` is NULL or writable per the contract.
    unsafe { fill(lease, "lease", cuframes_cuda_lease_t::EMPTY, loan) }
}

/// Publishes the loaned slot with presentation time `pts_ns`: enqueues on
/// the lease's stream the write of the slot's publish counter (after the
/// writes enqueued there so far; subscribers' consumer streams wait for
/// it) and publishes the frame on the host ring at once, without waiting
/// for the GPU. Stores the seq in `*seq` unless `seq` is NULL. The lease
/// is invalid afterwards, also when the call fails (the slot then goes
/// back unpublished).
///
/// Errors: `INVALID_ARGUMENT` (NULL publisher, or no slot is loaned),
/// `CUDA`.
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher; `seq` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_commit(
    publisher: *mut cuframes_cuda_publisher_t,
    pts_ns: i64,
    seq: *mut u64,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        let h = unsafe { arg_mut(publisher, "publisher") }?;
        h.lease = None;
        let s = h.publisher.commit_detached(pts_ns)?;
        // SAFETY: NULL or writable per the contract.
        unsafe { put(seq, s) };
        Ok(())
    })
}

/// Gives the loaned slot back unpublished. Writes already enqueued to it
/// are harmless: the slot's next frame is written on the publisher's
/// stream after them (when the stream is the same).
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
pub unsafe extern "C" fn cuframes_cuda_publisher_abort(
    publisher: *mut cuframes_cuda_publisher_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { publisher_abort(publisher) }
}

/// Source planes for the copy-from-device calls: plane `i` at `ptrs[i]`
/// with `pitches[i]`, rows and row bytes as the loaned slot's.
///
/// # Safety
/// `ptrs` and `pitches` are NULL or readable for `count` elements.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
unsafe fn source_planes(
    lease: &CudaDetachedLease,
    ptrs: *const u64,
    pitches: *const u32,
    count: u32,
) -> Result<Vec<DevicePlane>> {
    if ptrs.is_null() || pitches.is_null() {
        return Err(invalid("src_ptr or src_pitch is NULL"));
    }
    if count as usize != lease.plane_count {
        return Err(invalid(format!(
            "plane_count {count}: the frame has {} plane(s)",
            lease.plane_count
        )));
    }
    // SAFETY: non-null and readable for `count` elements per the contract.
    let (ptrs, pitches) = unsafe {
        (
            std::slice::from_raw_parts(ptrs, lease.plane_count),
            std::slice::from_raw_parts(pitches, lease.plane_count),
        )
    };
    let mut planes = Vec::with_capacity(lease.plane_count);
    for (i, ((&ptr, &pitch), dst)) in ptrs.iter().zip(pitches).zip(&lease.planes).enumerate() {
        if ptr == 0 {
            return Err(invalid(format!("src_ptr[{i}] is 0")));
        }
        planes.push(DevicePlane {
            ptr,
            pitch,
            row_bytes: dst.row_bytes,
            rows: dst.rows,
        });
    }
    Ok(planes)
}

/// Enqueues copies of a picture already in device memory (a decoder's
/// surface, a tensor) into the loaned slot: plane `i` from `src_ptr[i]`
/// with row pitch `src_pitch[i]` (>= the plane's row bytes), rows and row
/// bytes as in the lease. The copies run on the lease's stream after the
/// work enqueued so far on `src_stream` (the stream that produced the
/// source; any stream of the device's primary context). Returns without
/// waiting for the GPU; commit as usual.
///
/// Errors: `INVALID_ARGUMENT` (NULL, no slot is loaned, `plane_count` is
/// not the frame's, a 0 address, a pitch below the row bytes), `CUDA`
/// (the driver refused the copy, e.g. memory of another device).
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher; `src_ptr` and `src_pitch` are
/// NULL or readable for `plane_count` elements; each source plane is
/// `src_pitch[i] * (rows - 1) + row_bytes` readable bytes of device memory
/// of the publisher's device (primary context), unchanged until the copy
/// has run (order later writes after the lease's stream); `src_stream` is
/// 0 or a live stream of that context.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_copy_from_device(
    publisher: *mut cuframes_cuda_publisher_t,
    src_ptr: *const u64,
    src_pitch: *const u32,
    plane_count: u32,
    src_stream: uintptr_t,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        let h = unsafe { arg_mut(publisher, "publisher") }?;
        let lease = h
            .lease
            .ok_or_else(|| invalid("no slot is loaned: call cuframes_cuda_publisher_loan"))?;
        // SAFETY: per the contract.
        let src = unsafe { source_planes(&lease, src_ptr, src_pitch, plane_count) }?;
        // SAFETY: the caller guarantees the source ranges and the stream;
        // `lease` is the pending loan.
        unsafe {
            h.publisher
                .copy_from_device_detached(&lease, &src, raw(src_stream))
        }
    })
}

/// Loans a slot, copies a picture in device memory into it as
/// `cuframes_cuda_publisher_copy_from_device` does, and commits it with
/// `pts_ns`; stores the seq in `*seq` unless `seq` is NULL. On failure
/// nothing is published.
///
/// Errors: those of `cuframes_cuda_publisher_loan` (a slot already loaned
/// is `INVALID_ARGUMENT`) and `cuframes_cuda_publisher_copy_from_device`.
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// As for `cuframes_cuda_publisher_copy_from_device`; `seq` is NULL or
/// writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_publish_from_device(
    publisher: *mut cuframes_cuda_publisher_t,
    src_ptr: *const u64,
    src_pitch: *const u32,
    plane_count: u32,
    src_stream: uintptr_t,
    pts_ns: i64,
    seq: *mut u64,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        let h = unsafe { arg_mut(publisher, "publisher") }?;
        if src_ptr.is_null() || src_pitch.is_null() {
            return Err(invalid("src_ptr or src_pitch is NULL"));
        }
        let lease = h.publisher.loan_detached()?;
        // SAFETY: per the contract.
        let copied = unsafe { source_planes(&lease, src_ptr, src_pitch, plane_count) }.and_then(
            // SAFETY: the caller guarantees the source ranges and the
            // stream; `lease` is the pending loan.
            |src| unsafe {
                h.publisher
                    .copy_from_device_detached(&lease, &src, raw(src_stream))
            },
        );
        if let Err(e) = copied {
            h.publisher.abort_detached();
            return Err(e);
        }
        let s = h.publisher.commit_detached(pts_ns)?;
        // SAFETY: NULL or writable per the contract.
        unsafe { put(seq, s) };
        Ok(())
    })
}

/// Copies a tightly packed frame in host memory (each plane's rows back to
/// back, planes in order: `cuframes_cuda_publisher_packed_size` bytes)
/// into a free slot on the publisher's stream and publishes it with
/// `pts_ns`; stores the seq in `*seq` unless `seq` is NULL. Returns once
/// the copy has read `data` (the buffer may be reused then; at once for
/// ordinary memory, which the driver stages).
///
/// Errors: `INVALID_ARGUMENT` (NULL, wrong `len`, a slot is loaned),
/// `TIMEOUT`, `CAPACITY`, `CLOSED`, `CUDA`.
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher; `data` is NULL or readable for
/// `len` bytes; `seq` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_publish_from_host(
    publisher: *mut cuframes_cuda_publisher_t,
    data: *const u8,
    len: size_t,
    pts_ns: i64,
    seq: *mut u64,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        let h = unsafe { arg_mut(publisher, "publisher") }?;
        // SAFETY: NULL or readable for `len` bytes per the contract.
        let packed = unsafe { byte_slice(data, len) }?;
        if h.lease.is_some() {
            return Err(invalid(
                "a slot is already loaned: commit or abort it first",
            ));
        }
        let s = h.publisher.publish_from_host(packed, pts_ns)?;
        // SAFETY: NULL or writable per the contract.
        unsafe { put(seq, s) };
        Ok(())
    })
}

/// Makes the publisher write on `stream` (a decoder's stream, say) instead
/// of its own: later loans make it wait for subscribers' reads and hand it
/// out as `lease.stream`; commits mark frames complete on it; destroy
/// waits for it. 0 (or 1) selects the legacy default stream. To go back,
/// pass the value `cuframes_cuda_publisher_stream` returned before. Work
/// already enqueued on the previous stream is not ordered before the new
/// one.
///
/// Errors: `INVALID_ARGUMENT` (NULL publisher; a slot is loaned: its
/// ordering was set up on the old stream; `stream` is 2, the per-thread
/// default stream, which names another stream on every thread).
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher; `stream` is 0, 1 or a live
/// stream of the publisher's device's primary context that outlives its
/// use by this publisher (until another `set_stream` or `destroy`).
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_set_stream(
    publisher: *mut cuframes_cuda_publisher_t,
    stream: uintptr_t,
) -> c_int {
    call(|| {
        // SAFETY: per the contract.
        let h = unsafe { arg_mut(publisher, "publisher") }?;
        if h.lease.is_some() {
            return Err(invalid(
                "a slot is loaned: commit or abort it before changing the stream",
            ));
        }
        let stream = kept_stream(stream, "stream")?;
        // SAFETY: the caller guarantees the stream is live, of this
        // device's primary context, and outlives its use.
        unsafe { h.publisher.set_stream(raw(stream)) };
        Ok(())
    })
}

/// The stream the publisher writes on now (its own until
/// `cuframes_cuda_publisher_set_stream`); 0 for NULL.
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_stream(
    publisher: *const cuframes_cuda_publisher_t,
) -> uintptr_t {
    // SAFETY: per the contract.
    unsafe {
        with(publisher, "publisher", 0, |h| {
            Ok(handle(h.publisher.stream()))
        })
    }
}

/// The export mode in use: `CUFRAMES_CUDA_EXPORT_IPC` or
/// `CUFRAMES_CUDA_EXPORT_VMM_FD` (what `AUTO` chose); 0 for NULL.
///
/// Thread safety: any thread (reads immutable state).
///
/// # Safety
/// `publisher` is NULL or a live publisher.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_export_mode(
    publisher: *const cuframes_cuda_publisher_t,
) -> u32 {
    // SAFETY: per the contract.
    unsafe {
        with(publisher, "publisher", 0, |h| {
            Ok(export_code(h.publisher.export_mode()))
        })
    }
}

/// Bytes of a tightly packed frame for
/// `cuframes_cuda_publisher_publish_from_host`; 0 for NULL.
///
/// Thread safety: any thread (reads immutable state).
///
/// # Safety
/// `publisher` is NULL or a live publisher.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_packed_size(
    publisher: *const cuframes_cuda_publisher_t,
) -> size_t {
    // SAFETY: per the contract.
    unsafe {
        with(publisher, "publisher", 0, |h| {
            Ok(h.publisher.layout().packed_bytes() as usize)
        })
    }
}

/// Ring-wide counters, as `cuframes_publisher_stats`. On failure `*stats`
/// is zeroed.
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live publisher; `stats` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_stats(
    publisher: *const cuframes_cuda_publisher_t,
    stats: *mut cuframes_publisher_stats_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { publisher_stats(publisher, stats) }
}

/// Finishes the publisher's stream, closes the ring (subscribers drain
/// what is left, then get `CUFRAMES_ERR_CLOSED`) and frees the publisher
/// and its GPU memory — in IPC mode after waiting up to `close_grace_ms`
/// for subscribers to finish reading and detach (memory still mapped by
/// live subscribers after that is left to the driver's cleanup at process
/// exit). A loaned slot is dropped unpublished. NULL is ignored.
///
/// Thread safety: no other call on this publisher may run or follow.
///
/// # Safety
/// `publisher` is NULL or a live publisher, not used afterwards.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_publisher_destroy(
    publisher: *mut cuframes_cuda_publisher_t,
) {
    // SAFETY: per the contract: made by `create`, destroyed once.
    unsafe { take_back(publisher) }
}
