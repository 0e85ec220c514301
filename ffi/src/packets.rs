//! Encoded packet streams (`cuframes::PacketPublisher`,
//! `cuframes::PacketSubscriber`), for C: `cuframes_packet_*`.
//!
//! A packet stream carries the packets of one H.264, HEVC, AV1, VP9, VP8
//! or MJPEG stream, each with its timestamps and flags, and the codec
//! configuration (extradata) every subscriber gets at connect. Readers
//! always get a decodable sequence: the first packet is a keyframe, and
//! after any skip the next one is a keyframe. The rules of the frame calls
//! hold: opaque handles, NULL checks, out-pointers cleared on failure, the
//! same error codes and options, no panic across the boundary.

use crate::publisher::{
    cuframes_publisher_options_t, cuframes_publisher_stats_t, publisher_abort, publisher_stats,
    Writer,
};
use crate::subscriber::{
    connect, cuframes_subscriber_options_t, cuframes_subscriber_stats_t, subscriber_next,
    subscriber_stats, subscriber_try_next, Reader,
};
use crate::{
    arg, arg_mut, byte_slice, c_str, call, create, fill, fill_from, invalid, options_or_default,
    out_ptr, put, size_t, take_back, with,
};
use cuframes::packet::{DISCONTINUITY, KEY, MAX_EXTRADATA, MAX_PACKET_BYTES};
use cuframes::{
    Codec, Packet, PacketMeta, PacketPublisher, PacketStream, PacketSubscriber, Result, RingStats,
    SubscriberStats,
};
use std::ffi::{c_char, c_int};
use std::ptr::{null, null_mut};
use std::time::Duration;

/// Codec of a packet stream: H.264 / AVC.
pub const CUFRAMES_CODEC_H264: u32 = 1;
/// Codec of a packet stream: H.265 / HEVC.
pub const CUFRAMES_CODEC_HEVC: u32 = 2;
/// Codec of a packet stream: AV1.
pub const CUFRAMES_CODEC_AV1: u32 = 3;
/// Codec of a packet stream: VP9.
pub const CUFRAMES_CODEC_VP9: u32 = 4;
/// Codec of a packet stream: VP8.
pub const CUFRAMES_CODEC_VP8: u32 = 5;
/// Codec of a packet stream: Motion JPEG (every packet a keyframe).
pub const CUFRAMES_CODEC_MJPEG: u32 = 6;

/// Packet flag: a keyframe (a random access point: IDR, IRAP, intra).
/// Subscribers start at one, and skip only to one.
pub const CUFRAMES_PACKET_KEY: u64 = 1;
/// Packet flag: something was lost before this packet at the source (a
/// decoder should resynchronise).
pub const CUFRAMES_PACKET_DISCONTINUITY: u64 = 2;

/// Largest `max_packet` a stream may have (256 MiB).
pub const CUFRAMES_PACKET_MAX_BYTES: size_t = 256 << 20;
/// Largest codec configuration (`extradata_len`) a stream may carry (1 MiB).
pub const CUFRAMES_PACKET_MAX_EXTRADATA: size_t = 1 << 20;

// The C numbers are the Rust ones: checked at compile time.
const _: () = {
    assert!(CUFRAMES_CODEC_H264 == Codec::H264 as u32);
    assert!(CUFRAMES_CODEC_HEVC == Codec::Hevc as u32);
    assert!(CUFRAMES_CODEC_AV1 == Codec::Av1 as u32);
    assert!(CUFRAMES_CODEC_VP9 == Codec::Vp9 as u32);
    assert!(CUFRAMES_CODEC_VP8 == Codec::Vp8 as u32);
    assert!(CUFRAMES_CODEC_MJPEG == Codec::Mjpeg as u32);
    assert!(Codec::ALL.len() == 6);
    assert!(CUFRAMES_PACKET_KEY == KEY);
    assert!(CUFRAMES_PACKET_DISCONTINUITY == DISCONTINUITY);
    assert!(CUFRAMES_PACKET_MAX_BYTES as u64 == MAX_PACKET_BYTES);
    assert!(CUFRAMES_PACKET_MAX_EXTRADATA as u64 == MAX_EXTRADATA as u64);
};

// C may move these handles between threads between calls and read or
// release packets anywhere: the wrapped types must allow it.
const _: fn() = || {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<PacketPublisher>();
    send::<PacketSubscriber>();
    send_sync::<Packet>();
};

/// A packet stream being published. Opaque; made by
/// `cuframes_packet_publisher_create`, freed by
/// `cuframes_packet_publisher_destroy`.
pub struct cuframes_packet_publisher_t {
    publisher: PacketPublisher,
}

/// A connection to a packet stream. Opaque; made by
/// `cuframes_packet_subscriber_create`, freed by
/// `cuframes_packet_subscriber_destroy`.
pub struct cuframes_packet_subscriber_t {
    subscriber: PacketSubscriber,
}

/// A packet held in place in shared memory. Opaque; handed out by
/// `cuframes_packet_subscriber_next`, given back with
/// `cuframes_packet_release`. Its slot is not reused until then.
pub struct cuframes_packet_t {
    packet: Packet,
}

impl Writer for cuframes_packet_publisher_t {
    fn ring_stats(&self) -> RingStats {
        self.publisher.stats()
    }
    fn abort(&mut self) -> bool {
        self.publisher.abort_detached()
    }
}

impl Reader for cuframes_packet_subscriber_t {
    type Item = cuframes_packet_t;
    const OUT: &'static str = "packet_out";
    const NOTHING: &'static str = "no new packet yet";

    fn next(&mut self, timeout: Duration) -> Result<cuframes_packet_t> {
        let packet = self.subscriber.next_packet(timeout)?;
        Ok(cuframes_packet_t { packet })
    }
    fn try_next(&mut self) -> Result<Option<cuframes_packet_t>> {
        Ok(self
            .subscriber
            .try_next()?
            .map(|packet| cuframes_packet_t { packet }))
    }
    fn stats(&self) -> SubscriberStats {
        self.subscriber.stats()
    }
}

/// What a packet stream carries: given to `cuframes_packet_publisher_create`,
/// filled by `cuframes_packet_subscriber_stream`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cuframes_packet_stream_t {
    /// `CUFRAMES_CODEC_*`.
    pub codec: u32,
    /// Coded width in pixels if known (informational; 0: unknown).
    pub width: u32,
    /// Coded height in pixels if known (informational; 0: unknown).
    pub height: u32,
    /// Largest packet in bytes (1..=`CUFRAMES_PACKET_MAX_BYTES`); a bigger
    /// one is refused at publish. Size it for the largest keyframe. Every
    /// slot of the ring has this size.
    pub max_packet: size_t,
    /// Codec configuration every subscriber gets at connect (Annex-B
    /// parameter sets, or an avcC / hvcC record, as the packets expect);
    /// NULL when `extradata_len` is 0. Copied by the create call. From a
    /// subscriber: valid until it is destroyed.
    pub extradata: *const u8,
    /// Bytes of `extradata` (at most `CUFRAMES_PACKET_MAX_EXTRADATA`).
    pub extradata_len: size_t,
}

/// One packet's metadata: what the publisher gives with it and the
/// subscriber reads back. Times are nanoseconds.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct cuframes_packet_info_t {
    /// Presentation timestamp.
    pub pts_ns: i64,
    /// Decode timestamp (equal to `pts_ns` without reordering).
    pub dts_ns: i64,
    /// Duration (0: unknown).
    pub duration_ns: u64,
    /// `CUFRAMES_PACKET_KEY`, `CUFRAMES_PACKET_DISCONTINUITY`; other bits
    /// are carried as given.
    pub flags: u64,
}

impl cuframes_packet_info_t {
    fn meta(&self, len: size_t) -> PacketMeta {
        PacketMeta {
            len: len as u64,
            pts_ns: self.pts_ns,
            dts_ns: self.dts_ns,
            duration_ns: self.duration_ns,
            flags: self.flags,
        }
    }
}

impl From<&PacketMeta> for cuframes_packet_info_t {
    fn from(m: &PacketMeta) -> Self {
        Self {
            pts_ns: m.pts_ns,
            dts_ns: m.dts_ns,
            duration_ns: m.duration_ns,
            flags: m.flags,
        }
    }
}

/// A loaned slot to write a packet into in place (a demuxer or an encoder
/// writing straight into shared memory). Valid from
/// `cuframes_packet_publisher_loan` until `cuframes_packet_publisher_commit`
/// succeeds, `cuframes_packet_publisher_abort` or
/// `cuframes_packet_publisher_destroy`; the memory belongs to the stream,
/// do not free it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cuframes_packet_lease_t {
    /// The sequence number the packet will get.
    pub seq: u64,
    /// First byte of the slot.
    pub data: *mut u8,
    /// Bytes that may be written: the stream's `max_packet`.
    pub capacity: size_t,
}

impl cuframes_packet_lease_t {
    const EMPTY: Self = Self {
        seq: 0,
        data: null_mut(),
        capacity: 0,
    };
}

impl cuframes_packet_stream_t {
    /// The stream as Rust sees it, with the extradata copied.
    ///
    /// # Safety
    /// `extradata` is NULL or readable for `extradata_len` bytes.
    // SAFETY: callers meet the `# Safety` contract above; the body assumes
    // nothing beyond it.
    unsafe fn to_rust(self) -> Result<PacketStream> {
        let codec = Codec::from_u32(self.codec)
            .ok_or_else(|| invalid(format!("codec {} is not a CUFRAMES_CODEC_*", self.codec)))?;
        // Refused before the bytes are read: no slice of a garbage length.
        if self.extradata_len > CUFRAMES_PACKET_MAX_EXTRADATA {
            return Err(invalid(format!(
                "codec configuration of {} bytes: at most {CUFRAMES_PACKET_MAX_EXTRADATA}",
                self.extradata_len
            )));
        }
        let extradata = if self.extradata_len == 0 {
            Vec::new()
        } else if self.extradata.is_null() {
            return Err(invalid(format!(
                "extradata is NULL but extradata_len is {}",
                self.extradata_len
            )));
        } else {
            // SAFETY: non-null and readable for `extradata_len` bytes per
            // the contract (at most 1 MiB, checked above).
            unsafe { std::slice::from_raw_parts(self.extradata, self.extradata_len) }.to_vec()
        };
        Ok(PacketStream {
            codec,
            max_packet: self.max_packet as u64,
            extradata,
            width: self.width,
            height: self.height,
        })
    }
}

// ---- publisher ---------------------------------------------------------------

/// Creates the packet stream `key` (the rules of `cuframes_publisher_create`
/// for keys and segments) for what `*stream` says; its extradata is copied.
/// `options` may be NULL for the defaults; they are the frame publisher's
/// (`cuframes_publisher_options_init`), `pitch_align` aside, which packets
/// do not use. On success `*out` is the new publisher; on failure it is
/// set to NULL.
///
/// Errors: `INVALID_ARGUMENT` (NULL, bad key, codec, `max_packet` 0 or
/// above `CUFRAMES_PACKET_MAX_BYTES`, extradata too large, bad option),
/// `ALREADY_EXISTS` (the key has a live publisher), `PERMISSION`, `IO`.
///
/// Thread safety: any thread.
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; `stream` is NULL or valid, its
/// `extradata` NULL or readable for `extradata_len` bytes; `options` is
/// NULL or valid; `out` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_publisher_create(
    key: *const c_char,
    stream: *const cuframes_packet_stream_t,
    options: *const cuframes_publisher_options_t,
    out: *mut *mut cuframes_packet_publisher_t,
) -> c_int {
    let make = || {
        // SAFETY: per the contract (the stream struct and its extradata).
        let (key, stream, options) = unsafe {
            (
                c_str(key, "key")?,
                arg(stream, "stream")?.to_rust()?,
                options_or_default(options)?,
            )
        };
        let publisher = PacketPublisher::create(key, &stream, options)?;
        Ok(cuframes_packet_publisher_t { publisher })
    };
    // SAFETY: `out` is NULL or writable per the contract.
    unsafe { create(out, "out", make) }
}

/// Copies `len` bytes from `data` into a slot and publishes them as one
/// packet with `*info`; stores its seq in `*seq` unless `seq` is NULL (0 on
/// failure). Waits for a slot as `cuframes_publisher_loan` does. A packet
/// longer than the stream's `max_packet` is `INVALID_ARGUMENT`, and nothing
/// is published.
///
/// Errors: `INVALID_ARGUMENT` (NULL, too long, a slot is loaned),
/// `TIMEOUT`, `CAPACITY`.
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live packet publisher; `data` is NULL or
/// readable for `len` bytes; `info` is NULL or valid; `seq` is NULL or
/// writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_publisher_publish(
    publisher: *mut cuframes_packet_publisher_t,
    data: *const u8,
    len: size_t,
    info: *const cuframes_packet_info_t,
    seq: *mut u64,
) -> c_int {
    call(|| {
        // SAFETY: NULL or writable per the contract.
        unsafe { put(seq, 0) };
        // SAFETY: per the contract.
        let p = &mut unsafe { arg_mut(publisher, "publisher") }?.publisher;
        // SAFETY: per the contract.
        let info = unsafe { arg(info, "info") }?;
        // SAFETY: NULL or readable for `len` bytes per the contract.
        let packet = unsafe { byte_slice(data, len) }?;
        let s = p.publish(packet, &info.meta(len))?;
        // SAFETY: as above.
        unsafe { put(seq, s) };
        Ok(())
    })
}

/// Loans the next free slot to write a packet in place, waiting up to the
/// block timeout; fills `*lease` with where and how much may be written.
/// Finish with `cuframes_packet_publisher_commit` or
/// `cuframes_packet_publisher_abort`. On failure `*lease` is zeroed.
///
/// Errors: `INVALID_ARGUMENT` (NULL, or a slot is already loaned),
/// `TIMEOUT`, `CAPACITY`.
///
/// Thread safety: one call at a time per publisher (any thread; the lease
/// may be written from any thread until commit).
///
/// # Safety
/// `publisher` is NULL or a live packet publisher; `lease` is NULL or
/// writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_publisher_loan(
    publisher: *mut cuframes_packet_publisher_t,
    lease: *mut cuframes_packet_lease_t,
) -> c_int {
    let loan = || {
        // SAFETY: per the contract.
        let loan = unsafe { arg_mut(publisher, "publisher") }?
            .publisher
            .loan_detached()?;
        Ok(cuframes_packet_lease_t {
            seq: loan.seq,
            data: loan.data,
            capacity: loan.len,
        })
    };
    // SAFETY: `lease` is NULL or writable per the contract.
    unsafe { fill(lease, "lease", cuframes_packet_lease_t::EMPTY, loan) }
}

/// Publishes the first `len` bytes of the loaned slot as one packet with
/// `*info`; stores its seq in `*seq` unless `seq` is NULL (0 on failure).
/// The lease's pointer is invalid afterwards. If `len` exceeds the lease's
/// `capacity` (or `info` is NULL) nothing is published and the loan stays
/// pending: commit again or abort.
///
/// Errors: `INVALID_ARGUMENT` (NULL, `len` too large, no slot is loaned).
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live packet publisher; `info` is NULL or
/// valid; `seq` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_publisher_commit(
    publisher: *mut cuframes_packet_publisher_t,
    len: size_t,
    info: *const cuframes_packet_info_t,
    seq: *mut u64,
) -> c_int {
    call(|| {
        // SAFETY: NULL or writable per the contract.
        unsafe { put(seq, 0) };
        // SAFETY: per the contract.
        let p = &mut unsafe { arg_mut(publisher, "publisher") }?.publisher;
        // SAFETY: per the contract.
        let info = unsafe { arg(info, "info") }?;
        let s = p.commit_detached(&info.meta(len))?;
        // SAFETY: as above.
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
/// `publisher` is NULL or a live packet publisher.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_publisher_abort(
    publisher: *mut cuframes_packet_publisher_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { publisher_abort(publisher) }
}

/// The stream's largest packet in bytes (its `max_packet`); 0 if
/// `publisher` is NULL.
///
/// Thread safety: any thread (reads immutable state).
///
/// # Safety
/// `publisher` is NULL or a live packet publisher.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_publisher_max_packet(
    publisher: *const cuframes_packet_publisher_t,
) -> size_t {
    // SAFETY: per the contract.
    unsafe {
        with(publisher, "publisher", 0, |p| {
            Ok(p.publisher.max_packet() as size_t)
        })
    }
}

/// Ring-wide counters, as `cuframes_publisher_stats` (`published` counts
/// packets). On failure `*stats` is zeroed.
///
/// Thread safety: one call at a time per publisher.
///
/// # Safety
/// `publisher` is NULL or a live packet publisher; `stats` is NULL or
/// writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_publisher_stats(
    publisher: *const cuframes_packet_publisher_t,
    stats: *mut cuframes_publisher_stats_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { publisher_stats(publisher, stats) }
}

/// Closes the stream and frees the publisher: subscribers drain what is
/// left, then get `CUFRAMES_ERR_CLOSED`; the segment is removed. A loaned
/// slot is dropped unpublished. Packets subscribers hold stay valid until
/// released. NULL is ignored.
///
/// Thread safety: no other call on this publisher may run or follow.
///
/// # Safety
/// `publisher` is NULL or a live packet publisher, not used afterwards.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_publisher_destroy(
    publisher: *mut cuframes_packet_publisher_t,
) {
    // SAFETY: per the contract: made by `create`, destroyed once.
    unsafe { take_back(publisher) }
}

// ---- subscriber --------------------------------------------------------------

/// Connects to the packet stream `key` as `name` in `mode`
/// (`CUFRAMES_MODE_*`), waiting up to the connect timeout for it to exist.
/// `CUFRAMES_MODE_NEWEST_ONLY` starts at the newest keyframe and, when a
/// newer group of pictures began while it lags, jumps to its keyframe;
/// `CUFRAMES_MODE_QUEUE` is lossless from the newest keyframe at connect
/// on when the ring still holds it and every packet after it (else from
/// the next keyframe). `options` may be NULL for the defaults. On success `*out` is the
/// new subscriber; on failure NULL.
///
/// Errors: as `cuframes_subscriber_create`; `INCOMPATIBLE` for a frame
/// stream (and `cuframes_subscriber_create` gives it for a packet stream).
///
/// Thread safety: any thread. Blocks up to the connect timeout.
///
/// # Safety
/// `key` and `name` are NULL or NUL-terminated strings; `options` is NULL
/// or valid; `out` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_subscriber_create(
    key: *const c_char,
    name: *const c_char,
    mode: u32,
    options: *const cuframes_subscriber_options_t,
    out: *mut *mut cuframes_packet_subscriber_t,
) -> c_int {
    let make = |key: &str, name: &str, mode| {
        // SAFETY: NULL or valid per the contract.
        let options = unsafe { options_or_default(options) }?;
        let subscriber = PacketSubscriber::connect(key, name, mode, options)?;
        Ok(cuframes_packet_subscriber_t { subscriber })
    };
    // SAFETY: the contract is passed through.
    unsafe { connect(key, name, mode, out, make) }
}

/// The stream's `CUFRAMES_CODEC_*`; 0 for NULL.
///
/// Thread safety: any thread (reads immutable state).
///
/// # Safety
/// `subscriber` is NULL or a live packet subscriber.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_subscriber_codec(
    subscriber: *const cuframes_packet_subscriber_t,
) -> u32 {
    // SAFETY: per the contract.
    unsafe {
        with(subscriber, "subscriber", 0, |s| {
            Ok(s.subscriber.codec() as u32)
        })
    }
}

/// The stream's codec configuration, copied at connect: `*data` (NULL when
/// there is none) and `*len` bytes. The bytes belong to the subscriber and
/// stay valid until it is destroyed. On failure `*data` is NULL and `*len`
/// 0.
///
/// Errors: `INVALID_ARGUMENT` (NULL).
///
/// Thread safety: any thread (reads immutable state).
///
/// # Safety
/// `subscriber` is NULL or a live packet subscriber; `data` and `len` are
/// NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_subscriber_extradata(
    subscriber: *const cuframes_packet_subscriber_t,
    data: *mut *const u8,
    len: *mut size_t,
) -> c_int {
    call(|| {
        // SAFETY: NULL or writable per the contract.
        unsafe { put(data, null()) };
        // SAFETY: as above.
        unsafe { put(len, 0) };
        let (data, len) = (out_ptr(data, "data")?, out_ptr(len, "len")?);
        // SAFETY: per the contract.
        let s = &unsafe { arg(subscriber, "subscriber") }?.subscriber;
        let stream = stream_of(s);
        // SAFETY: both non-null, writable per the contract.
        unsafe {
            data.write(stream.extradata);
            len.write(stream.extradata_len);
        }
        Ok(())
    })
}

/// What the subscriber's stream carries.
fn stream_of(s: &PacketSubscriber) -> cuframes_packet_stream_t {
    let extradata = s.extradata();
    let (width, height) = s.dimensions();
    cuframes_packet_stream_t {
        codec: s.codec() as u32,
        width,
        height,
        max_packet: s.max_packet() as size_t,
        extradata: if extradata.is_empty() {
            null()
        } else {
            extradata.as_ptr()
        },
        extradata_len: extradata.len(),
    }
}

/// Fills `*stream` with what the stream carries: codec, coded size,
/// `max_packet` and the codec configuration (whose bytes belong to the
/// subscriber and stay valid until it is destroyed). On failure `*stream`
/// is zeroed.
///
/// Errors: `INVALID_ARGUMENT` (NULL).
///
/// Thread safety: any thread (reads immutable state).
///
/// # Safety
/// `subscriber` is NULL or a live packet subscriber; `stream` is NULL or
/// writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_subscriber_stream(
    subscriber: *const cuframes_packet_subscriber_t,
    stream: *mut cuframes_packet_stream_t,
) -> c_int {
    let empty = cuframes_packet_stream_t {
        codec: 0,
        width: 0,
        height: 0,
        max_packet: 0,
        extradata: null(),
        extradata_len: 0,
    };
    // SAFETY: the contract is passed through.
    unsafe {
        fill_from(subscriber, "subscriber", stream, "stream", empty, |s| {
            Ok(stream_of(&s.subscriber))
        })
    }
}

/// Waits up to `timeout_ms` for the next packet and stores it in
/// `*packet_out` (NULL on failure). Release it with
/// `cuframes_packet_release`. The first packet a subscriber gets is a
/// keyframe, and so is the next one after any skip.
///
/// Errors: as `cuframes_subscriber_next`.
///
/// Thread safety: one call at a time per subscriber (any thread).
///
/// # Safety
/// `subscriber` is NULL or a live packet subscriber; `packet_out` is NULL
/// or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_subscriber_next(
    subscriber: *mut cuframes_packet_subscriber_t,
    timeout_ms: u32,
    packet_out: *mut *mut cuframes_packet_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { subscriber_next(subscriber, timeout_ms, packet_out) }
}

/// Takes a packet if one is ready, without waiting:
/// `CUFRAMES_ERR_WOULD_BLOCK` when none is. Otherwise as
/// `cuframes_packet_subscriber_next`.
///
/// Thread safety: one call at a time per subscriber (any thread).
///
/// # Safety
/// As for `cuframes_packet_subscriber_next`.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_subscriber_try_next(
    subscriber: *mut cuframes_packet_subscriber_t,
    packet_out: *mut *mut cuframes_packet_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { subscriber_try_next(subscriber, packet_out) }
}

/// This subscriber's counters, as `cuframes_subscriber_stats` (`dropped`
/// counts packets skipped to reach a keyframe). On failure `*stats` is
/// zeroed.
///
/// Thread safety: one call at a time per subscriber (not concurrently with
/// `cuframes_packet_subscriber_next`).
///
/// # Safety
/// `subscriber` is NULL or a live packet subscriber; `stats` is NULL or
/// writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_subscriber_stats(
    subscriber: *const cuframes_packet_subscriber_t,
    stats: *mut cuframes_subscriber_stats_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe { subscriber_stats(subscriber, stats) }
}

/// Disconnects and frees the subscriber. Packets still held stay valid
/// until released; the extradata pointer it gave is invalid. NULL is
/// ignored.
///
/// Thread safety: no other call on this subscriber may run or follow.
///
/// # Safety
/// `subscriber` is NULL or a live packet subscriber, not used afterwards.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_subscriber_destroy(
    subscriber: *mut cuframes_packet_subscriber_t,
) {
    // SAFETY: per the contract: made by `create`, destroyed once.
    unsafe { take_back(subscriber) }
}

// ---- packets -----------------------------------------------------------------

/// Packet accessors: `fallback` (and `INVALID_ARGUMENT` recorded) for NULL.
///
/// # Safety
/// `packet` is NULL or a live packet.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
unsafe fn with_packet<T: Copy>(
    packet: *const cuframes_packet_t,
    fallback: T,
    get: impl FnOnce(&Packet) -> T,
) -> T {
    // SAFETY: the contract is passed through.
    unsafe { with(packet, "packet", fallback, |p| Ok(get(&p.packet))) }
}

/// Sequence number (consecutive packets have consecutive seqs); 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same packet.
///
/// # Safety
/// `packet` is NULL or a live (unreleased) packet.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_seq(packet: *const cuframes_packet_t) -> u64 {
    // SAFETY: per the contract.
    unsafe { with_packet(packet, 0, Packet::seq) }
}

/// Bytes of the packet; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same packet.
///
/// # Safety
/// `packet` is NULL or a live (unreleased) packet.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_size(packet: *const cuframes_packet_t) -> size_t {
    // SAFETY: per the contract.
    unsafe { with_packet(packet, 0, |p| p.data().len()) }
}

/// The packet's first byte (read-only, `cuframes_packet_size` bytes, in
/// shared memory), valid until the packet is released; NULL for NULL.
///
/// Thread safety: any thread, concurrently with other accessors.
///
/// # Safety
/// `packet` is NULL or a live (unreleased) packet.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_data(packet: *const cuframes_packet_t) -> *const u8 {
    // SAFETY: per the contract.
    unsafe { with_packet(packet, null(), |p| p.data().as_ptr()) }
}

/// Monotonic (CLOCK_MONOTONIC) nanoseconds of the commit; 0 for NULL.
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same packet.
///
/// # Safety
/// `packet` is NULL or a live (unreleased) packet.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_commit_ns(packet: *const cuframes_packet_t) -> u64 {
    // SAFETY: per the contract.
    unsafe { with_packet(packet, 0, Packet::commit_ns) }
}

/// Fills `*info` with the packet's timestamps and flags as published. On
/// failure `*info` is zeroed.
///
/// Errors: `INVALID_ARGUMENT` (NULL).
///
/// Thread safety: any thread, concurrently with other accessors of the
/// same packet.
///
/// # Safety
/// `packet` is NULL or a live (unreleased) packet; `info` is NULL or
/// writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_info(
    packet: *const cuframes_packet_t,
    info: *mut cuframes_packet_info_t,
) -> c_int {
    // SAFETY: the contract is passed through.
    unsafe {
        fill_from(packet, "packet", info, "info", Default::default(), |p| {
            Ok(p.packet.meta().into())
        })
    }
}

/// Releases the packet: its slot may be reused, and its data pointer is
/// invalid. NULL is ignored. Releasing twice is undefined, like `free`.
///
/// Thread safety: any thread, once, after every accessor call on this
/// packet has returned. It may outlive its subscriber and the publisher.
///
/// # Safety
/// `packet` is NULL or a live packet, not used afterwards.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_packet_release(packet: *mut cuframes_packet_t) {
    // SAFETY: per the contract: handed out by `next`, released once.
    unsafe { take_back(packet) }
}

#[cfg(test)]
mod tests {
    //! Argument checks and an in-process round trip through the C entry
    //! points; `ffi/tests/c/test_packets.c` runs the rest from C.

    use super::*;
    use crate::tests::{last_error, BAD};
    use crate::{
        cuframes_publisher_create, cuframes_publisher_destroy, CUFRAMES_ERR_INCOMPATIBLE,
        CUFRAMES_ERR_WOULD_BLOCK, CUFRAMES_OK,
    };
    use std::ffi::CString;

    fn key(what: &str) -> CString {
        std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
        CString::new(format!("ffi-packets-{what}-{}", std::process::id())).unwrap()
    }

    fn h264(max_packet: size_t, extradata: &[u8]) -> cuframes_packet_stream_t {
        cuframes_packet_stream_t {
            codec: CUFRAMES_CODEC_H264,
            width: 64,
            height: 48,
            max_packet,
            extradata: extradata.as_ptr(),
            extradata_len: extradata.len(),
        }
    }

    #[test]
    fn null_arguments_are_refused() {
        let mut publisher = 1usize as *mut cuframes_packet_publisher_t;
        let mut subscriber = 1usize as *mut cuframes_packet_subscriber_t;
        let mut packet = 1usize as *mut cuframes_packet_t;
        let mut lease = cuframes_packet_lease_t {
            seq: 9,
            data: 1usize as *mut u8,
            capacity: 9,
        };
        let (mut seq, mut len, mut data) = (9u64, 9usize, 1usize as *const u8);
        let mut info = cuframes_packet_info_t {
            flags: 9,
            ..Default::default()
        };
        let stream = h264(16, &[]);
        let k = c"ffi-packets-null".as_ptr();
        // SAFETY: every pointer is valid or NULL; the non-null handles above
        // are never dereferenced (each call fails on a NULL first) and are
        // overwritten with NULL.
        unsafe {
            let rc = cuframes_packet_publisher_create(null(), &stream, null(), &mut publisher);
            assert_eq!((rc, publisher), (BAD, null_mut()));
            assert_eq!(last_error(), "invalid argument: key is NULL");
            let rc = cuframes_packet_publisher_create(k, null(), null(), &mut publisher);
            assert_eq!(
                (rc, last_error().as_str()),
                (BAD, "invalid argument: stream is NULL")
            );
            assert_eq!(
                cuframes_packet_publisher_create(k, &stream, null(), null_mut()),
                BAD
            );
            let rc =
                cuframes_packet_publisher_publish(null_mut(), [1u8].as_ptr(), 1, &info, &mut seq);
            assert_eq!((rc, seq), (BAD, 0));
            assert_eq!(cuframes_packet_publisher_loan(null_mut(), &mut lease), BAD);
            assert_eq!((lease.seq, lease.data, lease.capacity), (0, null_mut(), 0));
            assert_eq!(cuframes_packet_publisher_loan(null_mut(), null_mut()), BAD);
            seq = 9;
            let rc = cuframes_packet_publisher_commit(null_mut(), 0, &info, &mut seq);
            assert_eq!((rc, seq), (BAD, 0));
            assert_eq!(cuframes_packet_publisher_abort(null_mut()), BAD);
            assert_eq!(cuframes_packet_publisher_max_packet(null()), 0);
            assert_eq!(cuframes_packet_publisher_stats(null(), null_mut()), BAD);
            cuframes_packet_publisher_destroy(null_mut());

            let rc = cuframes_packet_subscriber_create(k, null(), 1, null(), &mut subscriber);
            assert_eq!((rc, subscriber), (BAD, null_mut()));
            assert_eq!(
                cuframes_packet_subscriber_create(k, k, 1, null(), null_mut()),
                BAD
            );
            assert_eq!(cuframes_packet_subscriber_codec(null()), 0);
            let rc = cuframes_packet_subscriber_extradata(null(), &mut data, &mut len);
            assert_eq!((rc, data, len), (BAD, null(), 0));
            assert_eq!(cuframes_packet_subscriber_stream(null(), null_mut()), BAD);
            let rc = cuframes_packet_subscriber_next(null_mut(), 0, &mut packet);
            assert_eq!((rc, packet), (BAD, null_mut()));
            assert_eq!(last_error(), "invalid argument: subscriber is NULL");
            packet = 1usize as *mut cuframes_packet_t;
            assert_eq!(
                cuframes_packet_subscriber_try_next(null_mut(), &mut packet),
                BAD
            );
            assert!(packet.is_null());
            assert_eq!(
                cuframes_packet_subscriber_next(null_mut(), 0, null_mut()),
                BAD
            );
            assert_eq!(last_error(), "invalid argument: packet_out is NULL");
            assert_eq!(cuframes_packet_subscriber_stats(null(), null_mut()), BAD);
            cuframes_packet_subscriber_destroy(null_mut());

            assert_eq!(cuframes_packet_seq(null()), 0);
            assert_eq!(cuframes_packet_size(null()), 0);
            assert!(cuframes_packet_data(null()).is_null());
            assert_eq!(cuframes_packet_commit_ns(null()), 0);
            assert_eq!(last_error(), "invalid argument: packet is NULL");
            assert_eq!(cuframes_packet_info(null(), &mut info), BAD);
            assert_eq!(info, cuframes_packet_info_t::default());
            cuframes_packet_release(null_mut());
        }
    }

    #[test]
    fn bad_streams_are_refused() {
        let k = key("bad");
        let extradata = [0u8, 0, 0, 1, 0x67];
        let cases = [
            (
                cuframes_packet_stream_t {
                    codec: 0,
                    ..h264(16, &[])
                },
                "codec 0",
            ),
            (
                cuframes_packet_stream_t {
                    codec: 7,
                    ..h264(16, &[])
                },
                "codec 7",
            ),
            (h264(0, &[]), ""),
            (h264(CUFRAMES_PACKET_MAX_BYTES + 1, &[]), ""),
            (
                cuframes_packet_stream_t {
                    extradata: null(),
                    ..h264(16, &extradata)
                },
                "extradata is NULL",
            ),
            (
                // A length that would be undefined behaviour to slice: refused first.
                cuframes_packet_stream_t {
                    extradata_len: usize::MAX,
                    ..h264(16, &extradata)
                },
                "at most 1048576",
            ),
        ];
        for (stream, message) in cases {
            let mut publisher = 1usize as *mut cuframes_packet_publisher_t;
            // SAFETY: valid key, stream (its extradata readable for the
            // length, or refused before it is read) and out-pointer.
            let rc = unsafe {
                cuframes_packet_publisher_create(k.as_ptr(), &stream, null(), &mut publisher)
            };
            assert_eq!((rc, publisher), (BAD, null_mut()), "{stream:?}");
            assert!(last_error().contains(message), "{}", last_error());
        }
    }

    #[test]
    fn round_trip_through_the_c_entry_points() {
        let k = key("round");
        let extradata = [0u8, 0, 0, 1, 0x67, 0x42];
        let stream = h264(64, &extradata);
        let (mut publisher, mut subscriber, mut packet) = (null_mut(), null_mut(), null_mut());
        let key_info = cuframes_packet_info_t {
            pts_ns: 10,
            dts_ns: 5,
            duration_ns: 40,
            flags: CUFRAMES_PACKET_KEY,
        };
        // SAFETY: every pointer passed is valid or deliberately NULL; the
        // lease is written within its capacity before commit; each handle
        // is destroyed once, after its last use.
        unsafe {
            let rc = cuframes_packet_publisher_create(k.as_ptr(), &stream, null(), &mut publisher);
            assert_eq!(rc, CUFRAMES_OK, "{}", last_error());
            assert_eq!(cuframes_packet_publisher_max_packet(publisher), 64);
            let rc = cuframes_packet_subscriber_create(
                k.as_ptr(),
                c"unit".as_ptr(),
                2,
                null(),
                &mut subscriber,
            );
            assert_eq!(rc, CUFRAMES_OK, "{}", last_error());
            assert_eq!(
                cuframes_packet_subscriber_codec(subscriber),
                CUFRAMES_CODEC_H264
            );
            let mut got = h264(0, &[]);
            assert_eq!(
                cuframes_packet_subscriber_stream(subscriber, &mut got),
                CUFRAMES_OK
            );
            assert_eq!(
                (got.codec, got.width, got.height, got.max_packet),
                (1, 64, 48, 64)
            );
            let got = std::slice::from_raw_parts(got.extradata, got.extradata_len);
            assert_eq!(got, extradata);
            assert_eq!(
                cuframes_packet_subscriber_try_next(subscriber, &mut packet),
                CUFRAMES_ERR_WOULD_BLOCK
            );

            let mut seq = 0;
            let rc = cuframes_packet_publisher_publish(
                publisher,
                b"key".as_ptr(),
                3,
                &key_info,
                &mut seq,
            );
            assert_eq!((rc, seq), (CUFRAMES_OK, 1));
            let mut lease = cuframes_packet_lease_t::EMPTY;
            assert_eq!(
                cuframes_packet_publisher_loan(publisher, &mut lease),
                CUFRAMES_OK
            );
            assert_eq!((lease.seq, lease.capacity), (2, 64));
            lease.data.copy_from_nonoverlapping(b"delta".as_ptr(), 5);
            let info = cuframes_packet_info_t::default();
            assert_eq!(
                cuframes_packet_publisher_commit(publisher, 65, &info, &mut seq),
                BAD
            );
            assert_eq!(seq, 0);
            assert_eq!(
                cuframes_packet_publisher_commit(publisher, 5, &info, &mut seq),
                CUFRAMES_OK
            );
            assert_eq!(seq, 2);

            for (want, data) in [(key_info, &b"key"[..]), (info, b"delta")] {
                let rc = cuframes_packet_subscriber_next(subscriber, 1000, &mut packet);
                assert_eq!(rc, CUFRAMES_OK, "{}", last_error());
                let bytes = std::slice::from_raw_parts(
                    cuframes_packet_data(packet),
                    cuframes_packet_size(packet),
                );
                assert_eq!(bytes, data);
                let mut got = cuframes_packet_info_t::default();
                assert_eq!(cuframes_packet_info(packet, &mut got), CUFRAMES_OK);
                assert_eq!(got, want);
                assert!(cuframes_packet_commit_ns(packet) > 0);
                cuframes_packet_release(packet);
            }
            // An empty packet needs no buffer; bytes without one are refused.
            let rc = cuframes_packet_publisher_publish(publisher, null(), 0, &info, &mut seq);
            assert_eq!((rc, seq), (CUFRAMES_OK, 3));
            let rc = cuframes_packet_publisher_publish(publisher, null(), 1, &info, &mut seq);
            assert_eq!(rc, BAD);
            let rc = cuframes_packet_subscriber_next(subscriber, 1000, &mut packet);
            assert_eq!(rc, CUFRAMES_OK, "{}", last_error());
            assert_eq!(cuframes_packet_size(packet), 0);
            cuframes_packet_release(packet);
            cuframes_packet_subscriber_destroy(subscriber);
            cuframes_packet_publisher_destroy(publisher);
        }
    }

    #[test]
    fn frame_and_packet_streams_do_not_mix() {
        let (frames, packets) = (key("frames"), key("packets"));
        let (mut fp, mut pp) = (null_mut(), null_mut());
        let mut so = std::mem::MaybeUninit::uninit();
        // SAFETY: valid keys, names, options and out-pointers; each handle
        // is destroyed once.
        unsafe {
            assert_eq!(
                crate::cuframes_subscriber_options_init(so.as_mut_ptr()),
                CUFRAMES_OK
            );
            let mut so = so.assume_init();
            so.connect_timeout_ms = 100;
            assert_eq!(
                cuframes_publisher_create(frames.as_ptr(), 3, 64, 48, null(), &mut fp),
                CUFRAMES_OK
            );
            let stream = h264(64, &[]);
            let rc = cuframes_packet_publisher_create(packets.as_ptr(), &stream, null(), &mut pp);
            assert_eq!(rc, CUFRAMES_OK);
            let mut ps = 1usize as *mut cuframes_packet_subscriber_t;
            let rc =
                cuframes_packet_subscriber_create(frames.as_ptr(), c"p".as_ptr(), 1, &so, &mut ps);
            assert_eq!((rc, ps), (CUFRAMES_ERR_INCOMPATIBLE, null_mut()));
            let mut fs = 1usize as *mut crate::cuframes_subscriber_t;
            let rc =
                crate::cuframes_subscriber_create(packets.as_ptr(), c"f".as_ptr(), 1, &so, &mut fs);
            assert_eq!((rc, fs), (CUFRAMES_ERR_INCOMPATIBLE, null_mut()));
            cuframes_packet_publisher_destroy(pp);
            cuframes_publisher_destroy(fp);
        }
    }
}
