//! Encoded packet streams: a [`PacketPublisher`] writes the packets of an
//! H.264/H.265/... stream with their timestamps and keyframe flags; any
//! number of [`PacketSubscriber`]s read them in place. Readers always get a
//! decodable sequence: they join at a keyframe and, when they fall behind,
//! skip to the next one (see [`cuframes_core::packet`]).
//!
//! ```
//! use cuframes::*;
//! use std::time::Duration;
//! # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
//! let stream = PacketStream::new(Codec::H264, 1 << 20).with_extradata(vec![0, 0, 0, 1, 0x67]);
//! let mut camera = PacketPublisher::create("doc-packets", &stream, Default::default())?;
//! camera.publish(b"keyframe", &PacketMeta { pts_ns: 0, flags: packet::KEY, ..Default::default() })?;
//! camera.publish(b"delta", &PacketMeta { pts_ns: 40_000_000, ..Default::default() })?;
//!
//! // A late recorder starts at the keyframe and has the codec configuration.
//! let mut recorder = PacketSubscriber::connect("doc-packets", "recorder", Mode::Queue, Default::default())?;
//! assert_eq!(recorder.extradata(), &[0, 0, 0, 1, 0x67]);
//! let first = recorder.next_packet(Duration::from_secs(1))?;
//! assert!(first.is_key());
//! assert_eq!(first.data(), b"keyframe");
//! drop(first);
//! assert_eq!(recorder.next_packet(Duration::from_secs(1))?.data(), b"delta");
//! # Ok::<(), Error>(())
//! ```

use crate::mapping::Shared;
use crate::publisher::{DetachedLease, Publisher, PublisherOptions};
use crate::subscriber::{Frame, Subscriber, SubscriberOptions, SubscriberStats};
use crate::{sys, Error, ErrorCode, Result};
use cuframes_core::packet::MAX_EXTRADATA;
use cuframes_core::{
    Codec, CommitError, Content, Mode, PacketMeta, PacketParams, RingStats, SegmentHeader,
};
use std::time::Duration;

/// What a packet stream carries: its codec, its largest packet and its
/// codec configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketStream {
    /// The codec.
    pub codec: Codec,
    /// Largest packet in bytes; a bigger one is refused at publish. Size it
    /// for the largest keyframe (a 4K H.264 keyframe can pass 1 MiB).
    pub max_packet: u64,
    /// Codec configuration every subscriber gets at connect: Annex-B
    /// parameter sets (SPS/PPS, VPS/SPS/PPS) or an avcC/hvcC record, as the
    /// stream's packets expect. Up to 1 MiB.
    pub extradata: Vec<u8>,
    /// Coded width if known (informational; 0 unknown).
    pub width: u32,
    /// Coded height if known (informational; 0 unknown).
    pub height: u32,
}

impl PacketStream {
    /// A stream of `codec` packets of at most `max_packet` bytes, without
    /// codec configuration or size.
    pub fn new(codec: Codec, max_packet: u64) -> Self {
        Self {
            codec,
            max_packet,
            extradata: Vec::new(),
            width: 0,
            height: 0,
        }
    }

    /// With this codec configuration.
    pub fn with_extradata(mut self, extradata: Vec<u8>) -> Self {
        self.extradata = extradata;
        self
    }
}

/// Writes encoded packets into a stream in host shared memory. As for
/// frames: one per key, dropping it closes the stream, and under
/// [`LosslessPolicy::Block`](crate::LosslessPolicy) a slow lossless
/// subscriber holds it back up to the block timeout.
pub struct PacketPublisher {
    inner: Publisher,
    codec: Codec,
    extradata: Vec<u8>,
}

impl PacketPublisher {
    /// Creates the packet stream `key`.
    pub fn create(key: &str, stream: &PacketStream, options: PublisherOptions) -> Result<Self> {
        let extradata_len = u32::try_from(stream.extradata.len())
            .ok()
            .filter(|&n| n <= MAX_EXTRADATA)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "codec configuration of {} bytes: at most {MAX_EXTRADATA}",
                        stream.extradata.len()
                    ),
                )
            })?;
        let params = PacketParams {
            codec: stream.codec,
            max_packet: stream.max_packet,
            extradata_len,
            width: stream.width,
            height: stream.height,
        };
        let inner = Publisher::create_planned(
            key,
            options,
            |ring, who| SegmentHeader::plan_packets(&params, ring, who),
            |shared: &mut Shared| shared.write_extradata(&stream.extradata),
        )?;
        Ok(Self {
            inner,
            codec: stream.codec,
            extradata: stream.extradata.clone(),
        })
    }

    /// The stream key.
    pub fn key(&self) -> &str {
        self.inner.key()
    }
    /// The codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }
    /// The codec configuration.
    pub fn extradata(&self) -> &[u8] {
        &self.extradata
    }
    /// Largest packet, bytes.
    pub fn max_packet(&self) -> u64 {
        self.inner.layout().slot_bytes
    }
    /// The validated segment header.
    pub fn segment_info(&self) -> &cuframes_core::SegmentInfo {
        self.inner.segment_info()
    }

    /// Copies `data` into a slot and publishes it with `meta` (whose `len`
    /// is taken from `data`); returns its seq. Waits for a slot as
    /// [`Publisher::loan`] does. A packet larger than the stream's maximum
    /// is `InvalidArgument`, and nothing is published.
    pub fn publish(&mut self, data: &[u8], meta: &PacketMeta) -> Result<u64> {
        self.publish_unless(data, meta, || false)
    }

    /// [`publish`](Self::publish) whose wait for a slot gives up with
    /// `WouldBlock` once `stop()` turns true (see
    /// [`Publisher::loan_detached_unless`]); nothing is published then.
    pub fn publish_unless(
        &mut self,
        data: &[u8],
        meta: &PacketMeta,
        stop: impl Fn() -> bool,
    ) -> Result<u64> {
        self.check_len(data.len() as u64)?;
        let lease = self.inner.loan_detached_unless(stop)?;
        // SAFETY: the detached loan gives us `lease.len` (= max_packet >=
        // data.len(), checked above) writable bytes until commit or abort;
        // `data` is a separate buffer of ours.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), lease.data, data.len()) };
        let meta = PacketMeta {
            len: data.len() as u64,
            ..*meta
        };
        self.commit_detached(&meta)
    }

    /// Loans a slot to write a packet of up to [`max_packet`](Self::max_packet)
    /// bytes in place (a demuxer or an encoder writing straight into shared
    /// memory). Dropping the lease publishes nothing.
    pub fn loan(&mut self) -> Result<PacketLease<'_>> {
        let lease = self.inner.loan_detached()?;
        Ok(PacketLease {
            publisher: self,
            lease,
        })
    }

    /// Loans a slot without borrowing the publisher, for language bindings
    /// (see [`Publisher::loan_detached`]); finish with
    /// [`commit_detached`](Self::commit_detached) or
    /// [`abort_detached`](Self::abort_detached).
    pub fn loan_detached(&mut self) -> Result<DetachedLease> {
        self.inner.loan_detached()
    }

    /// Publishes the detached loan's first `meta.len` bytes; returns the
    /// seq. A packet longer than the stream's maximum is `InvalidArgument`
    /// and the loan stays pending.
    pub fn commit_detached(&mut self, meta: &PacketMeta) -> Result<u64> {
        match self.inner.writer.commit_packet(meta, sys::now_ns()) {
            Ok(c) => Ok(c.seq),
            Err(CommitError::NoLoan) => {
                Err(Error::new(ErrorCode::InvalidArgument, "no slot is loaned"))
            }
            Err(CommitError::TooLarge { len, .. }) => self.check_len(len).map(|()| 0),
            Err(CommitError::NotPackets) => Err(Error::new(
                ErrorCode::Internal,
                "a packet publisher over a frame ring",
            )),
        }
    }

    /// Gives the detached loan back unpublished; false if there was none.
    pub fn abort_detached(&mut self) -> bool {
        self.inner.abort_detached()
    }

    /// Ring-wide statistics (bytes, GOP length, subscribers).
    pub fn stats(&self) -> RingStats {
        self.inner.stats()
    }

    /// Frees the records of subscribers that died; returns how many.
    pub fn sweep(&self) -> usize {
        self.inner.sweep()
    }

    /// Closes the stream: subscribers drain what is left, then get `Closed`.
    pub fn close(self) {}

    /// Ends the stream as if this publisher had died (subscribers get
    /// `PublisherGone`); see [`Publisher::abandon`].
    pub fn abandon(self) {
        self.inner.abandon();
    }

    fn check_len(&self, len: u64) -> Result<()> {
        let max = self.max_packet();
        if len > max {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("packet of {len} bytes is larger than this stream's maximum of {max} bytes (PacketStream::max_packet)"),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for PacketPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketPublisher")
            .field("key", &self.key())
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

/// A slot loaned by [`PacketPublisher::loan`]: write the packet into
/// [`data_mut`](Self::data_mut), then [`commit`](Self::commit) its length
/// and metadata. Dropping it aborts.
pub struct PacketLease<'p> {
    publisher: &'p mut PacketPublisher,
    lease: DetachedLease,
}

impl PacketLease<'_> {
    /// The whole slot: [`PacketPublisher::max_packet`] bytes.
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: the pending loan makes these `lease.len` bytes the
        // writer's alone until commit or abort (both consume or drop us);
        // `&mut self` makes the slice unique in this process.
        unsafe { std::slice::from_raw_parts_mut(self.lease.data, self.lease.len) }
    }

    /// Publishes the first `meta.len` bytes; returns the seq. On error
    /// (`meta.len` too large) nothing is published.
    pub fn commit(self, meta: &PacketMeta) -> Result<u64> {
        let mut this = std::mem::ManuallyDrop::new(self);
        let r = this.publisher.commit_detached(meta);
        if r.is_err() {
            this.publisher.abort_detached();
        }
        r
    }
}

impl Drop for PacketLease<'_> {
    fn drop(&mut self) {
        self.publisher.abort_detached();
    }
}

/// Reads encoded packets from a stream; every sequence it returns is
/// decodable from its first packet on (which is a keyframe). One thread at
/// a time; packets may be held on any thread.
pub struct PacketSubscriber {
    inner: Subscriber,
    codec: Codec,
    extradata: Vec<u8>,
}

impl PacketSubscriber {
    /// Connects to the packet stream `key` as `name`. A frame stream is
    /// `Incompatible`. NEWEST_ONLY joins at the newest keyframe and skips
    /// to the newest keyframe when it falls behind; QUEUE is lossless from
    /// the newest keyframe on (drop-oldest streams skip to the next
    /// keyframe after a loss).
    pub fn connect(key: &str, name: &str, mode: Mode, options: SubscriberOptions) -> Result<Self> {
        let inner = Subscriber::connect_to(key, name, mode, options, Content::Packets)?;
        let info = inner.segment_info();
        let codec = info
            .codec
            .ok_or_else(|| Error::new(ErrorCode::Corrupt, "a packet stream without a codec"))?;
        let extradata = inner.shared().extradata();
        Ok(Self {
            inner,
            codec,
            extradata,
        })
    }

    /// The stream key.
    pub fn key(&self) -> &str {
        self.inner.key()
    }
    /// The codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }
    /// The codec configuration, copied at connect.
    pub fn extradata(&self) -> &[u8] {
        &self.extradata
    }
    /// Largest packet, bytes.
    pub fn max_packet(&self) -> u64 {
        self.inner.layout().slot_bytes
    }
    /// Coded `(width, height)` as the publisher gave them (0: unknown).
    pub fn dimensions(&self) -> (u32, u32) {
        let l = self.inner.layout();
        (l.width, l.height)
    }
    /// The validated segment header.
    pub fn segment_info(&self) -> &cuframes_core::SegmentInfo {
        self.inner.segment_info()
    }

    /// Waits up to `timeout` for the next packet. Errors as
    /// [`Subscriber::next_frame`].
    pub fn next_packet(&mut self, timeout: Duration) -> Result<Packet> {
        self.inner.next_frame(timeout).map(Packet)
    }

    /// [`next_packet`](Self::next_packet) that gives up with `Closed` once
    /// `stop()` is true (see [`Subscriber::next_frame_unless`]).
    pub fn next_packet_unless(
        &mut self,
        timeout: Duration,
        stop: impl Fn() -> bool,
    ) -> Result<Packet> {
        self.inner.next_frame_unless(timeout, stop).map(Packet)
    }

    /// Takes a packet if one is ready, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Packet>> {
        Ok(self.inner.try_next()?.map(Packet))
    }

    /// This subscriber's counters (`dropped` counts packets skipped to
    /// reach a keyframe).
    pub fn stats(&self) -> SubscriberStats {
        self.inner.stats()
    }

    /// Ring-wide statistics of the stream.
    pub fn ring_stats(&self) -> RingStats {
        self.inner.ring_stats()
    }

    /// Whether the publisher's process is alive.
    pub fn publisher_alive(&self) -> bool {
        self.inner.publisher_alive()
    }
}

impl std::fmt::Debug for PacketSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketSubscriber")
            .field("key", &self.key())
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

/// A packet held in place in shared memory; its slot is not reused until
/// it is dropped.
pub struct Packet(Frame);

impl Packet {
    /// The packet's bytes.
    pub fn data(&self) -> &[u8] {
        // `len` was checked against the slot size when the packet was taken.
        &self.0.data()[..self.meta().len as usize]
    }
    /// The packet's metadata as published.
    pub fn meta(&self) -> &PacketMeta {
        self.0.packet_meta()
    }
    /// Sequence number (consecutive packets have consecutive seqs).
    pub fn seq(&self) -> u64 {
        self.0.seq()
    }
    /// Presentation timestamp, nanoseconds.
    pub fn pts_ns(&self) -> i64 {
        self.meta().pts_ns
    }
    /// Decode timestamp, nanoseconds.
    pub fn dts_ns(&self) -> i64 {
        self.meta().dts_ns
    }
    /// Duration, nanoseconds (0: unknown).
    pub fn duration_ns(&self) -> u64 {
        self.meta().duration_ns
    }
    /// Raw flags ([`packet::KEY`](cuframes_core::packet::KEY), ...).
    pub fn flags(&self) -> u64 {
        self.meta().flags
    }
    /// Whether it is a keyframe.
    pub fn is_key(&self) -> bool {
        self.meta().is_key()
    }
    /// Monotonic nanoseconds at commit (for latency).
    pub fn commit_ns(&self) -> u64 {
        self.0.commit_ns()
    }
    /// Releases the packet (as dropping it does).
    pub fn release(self) {}
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packet")
            .field("seq", &self.seq())
            .field("len", &self.meta().len)
            .field("key", &self.is_key())
            .field("pts_ns", &self.pts_ns())
            .finish()
    }
}
