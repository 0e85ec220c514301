//! The importer: subscribes on Zenoh and republishes into a local ring,
//! which local subscribers read as any other stream.

use crate::net::{BoxError, NetOptions};
use crate::wire::{self, Header, Keys, Kind, Meta, State, Stream};
use crate::Mode;
use cuframes::{
    packet, Codec, ErrorCode, FrameLayout, LosslessPolicy, PacketMeta, PacketPublisher,
    PacketStream, PixelFormat, Publisher, PublisherOptions,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use zenoh::handlers::{FifoChannel, FifoChannelHandler, RingChannel, RingChannelHandler};
use zenoh::sample::{Sample, SampleKind};
use zenoh::Wait;

/// What to import, and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The name the exporter publishes as.
    pub remote: String,
    /// The local stream to create.
    pub key: String,
    /// Newest (keep the latest) or lossless (backpressure to the exporter).
    pub mode: Mode,
    /// Slots of the local ring (default: as many as the exporter's).
    pub slots: Option<u32>,
    /// The largest local ring a stream description may ask for, bytes
    /// (slots times frame or packet size): a bound on what a peer can make
    /// this host reserve in shared memory.
    pub max_ring_bytes: u64,
    /// How to reach the other side.
    pub net: NetOptions,
}

/// What the importer did, for its report.
#[derive(Debug, Default, Clone, Copy)]
pub struct ImportStats {
    /// Frames or packets published locally.
    pub published: u64,
    /// Packets skipped while waiting for a keyframe (after a gap or at a
    /// late join), and frames that could not be published in time.
    pub skipped: u64,
    /// Seq gaps seen (frames or packets lost on the way, newest mode).
    pub gaps: u64,
    /// Local streams created (1 plus remote restarts).
    pub streams: u64,
    /// Samples refused (another wire version, bad payload).
    pub refused: u64,
    /// Sum and count of send-to-publish latency (same host only).
    pub latency_ns_sum: u64,
    /// Samples in `latency_ns_sum`.
    pub latency_samples: u64,
}

/// The local ring mirroring the remote stream.
struct Local {
    epoch: u64,
    target: Target,
    /// The seq expected next from the remote stream.
    next_seq: Option<u64>,
    /// Packets: skip to the next keyframe (start, or after a gap).
    need_key: bool,
    /// Packets: the next one published carries DISCONTINUITY.
    discontinuity: bool,
}

enum Target {
    Frames(Publisher),
    Packets(PacketPublisher),
}

impl Target {
    /// Ends the local stream: closed (subscribers drain, then `Closed`) or
    /// as dead (`PublisherGone`).
    fn end(self, state: State) {
        match (self, state) {
            (Target::Frames(p), State::Gone) => p.abandon(),
            (Target::Packets(p), State::Gone) => p.abandon(),
            (t, _) => drop(t),
        }
    }
}

/// The data subscription: every sample in order (lossless), or the latest
/// only (newest).
enum DataRx {
    Fifo(zenoh::pubsub::Subscriber<FifoChannelHandler<Sample>>),
    Ring(zenoh::pubsub::Subscriber<RingChannelHandler<Sample>>),
}

impl DataRx {
    fn recv_timeout(&self, d: Duration) -> Option<Sample> {
        match self {
            DataRx::Fifo(s) => s.recv_timeout(d).ok().flatten(),
            DataRx::Ring(s) => s.recv_timeout(d).ok().flatten(),
        }
    }
}

/// Imports until `stop` turns true.
pub fn import(opts: &ImportOptions, stop: &AtomicBool) -> Result<ImportStats, BoxError> {
    cuframes::validate_key(&opts.key)?;
    cuframes::validate_key(&opts.remote)?;
    let session = opts.net.open()?;
    let keys = Keys::new(&opts.remote);
    let sub = session.declare_subscriber(keys.data.clone());
    let data = match opts.mode {
        // A full channel blocks Zenoh's delivery: the backpressure reaches
        // the exporter's put, then its lossless reader.
        Mode::Lossless => DataRx::Fifo(sub.with(FifoChannel::new(4)).wait()?),
        Mode::Newest => DataRx::Ring(sub.with(RingChannel::new(1)).wait()?),
    };
    let metas = session
        .declare_subscriber(keys.meta.clone())
        .with(FifoChannel::new(16))
        .wait()?;
    let alive = session
        .liveliness()
        .declare_subscriber(keys.alive.clone())
        .history(true)
        .with(FifoChannel::new(16))
        .wait()?;
    let mut imp = Importer {
        opts,
        session: &session,
        keys: &keys,
        metas: &metas,
        local: None,
        stats: ImportStats::default(),
        last_query: None,
        want_meta: true,
        ending: None,
        ended: None,
    };
    while !stop.load(Ordering::Relaxed) {
        imp.read_metas();
        if let Some((epoch, state, deadline)) = imp.ending {
            if Instant::now() >= deadline {
                imp.end(Some(epoch), state);
            }
        }
        while let Ok(Some(s)) = alive.try_recv() {
            if s.kind() == SampleKind::Delete {
                tracing::warn!(remote = opts.remote.as_str(), "exporter gone");
                imp.end(None, State::Gone);
            } else {
                imp.want_meta = true; // an exporter appeared: what does it send?
            }
        }
        if imp.want_meta && imp.query_due() {
            imp.fetch_meta()?;
        }
        if let Some(sample) = data.recv_timeout(Duration::from_millis(50)) {
            imp.on_data(&sample.payload().to_bytes(), stop)?;
        }
    }
    if let Some(l) = imp.local.take() {
        l.target.end(State::Closed);
    }
    Ok(imp.stats)
}

struct Importer<'o> {
    opts: &'o ImportOptions,
    session: &'o zenoh::Session,
    keys: &'o Keys,
    metas: &'o zenoh::pubsub::Subscriber<FifoChannelHandler<Sample>>,
    /// Lossless: the stream's end was announced; it ends when its end
    /// marker arrives after the last data (or at the deadline).
    ending: Option<(u64, State, Instant)>,
    local: Option<Local>,
    stats: ImportStats,
    last_query: Option<Instant>,
    /// Data of a stream not described yet arrived: query its description.
    want_meta: bool,
    /// The last stream the exporter said ended.
    ended: Option<u64>,
}

impl Importer<'_> {
    /// At most two meta queries a second while no stream is known.
    fn query_due(&mut self) -> bool {
        let due = self
            .last_query
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(500));
        if due {
            self.last_query = Some(Instant::now());
        }
        due
    }

    /// Takes the descriptions that arrived.
    fn read_metas(&mut self) {
        while let Ok(Some(s)) = self.metas.try_recv() {
            self.on_meta(&s.payload().to_bytes());
        }
    }

    /// Asks the exporter for its stream's description.
    fn fetch_meta(&mut self) -> Result<(), BoxError> {
        self.want_meta = false;
        let replies = self
            .session
            .get(self.keys.meta.clone())
            .timeout(Duration::from_millis(500))
            .wait()?;
        for reply in replies {
            if let Ok(s) = reply.result() {
                self.on_meta(&s.payload().to_bytes());
            }
        }
        Ok(())
    }

    fn on_meta(&mut self, bytes: &[u8]) {
        let meta = match Meta::from_bytes(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.refused += 1;
                tracing::error!(error = %e, "stream description refused");
                return;
            }
        };
        match meta.state {
            State::Live => {
                if self.local.as_ref().is_some_and(|l| l.epoch == meta.epoch)
                    || self.ended == Some(meta.epoch)
                {
                    // Ours already, or one that ended (a reply to a query
                    // sent before the end can arrive after it).
                    return;
                }
                // A new remote stream: the old one ended unannounced.
                self.end(None, State::Gone);
                match self.create(&meta) {
                    Ok(target) => {
                        self.stats.streams += 1;
                        self.local = Some(Local {
                            epoch: meta.epoch,
                            target,
                            next_seq: None,
                            need_key: true,
                            discontinuity: false,
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "cannot create the local stream"),
                }
            }
            state => {
                let current = self.local.as_ref().is_some_and(|l| l.epoch == meta.epoch);
                if current && self.opts.mode == Mode::Lossless {
                    // The description may overtake the last samples: end
                    // at the end marker that follows them.
                    let deadline = Instant::now() + Duration::from_secs(2);
                    self.ending.get_or_insert((meta.epoch, state, deadline));
                } else {
                    self.end(Some(meta.epoch), state);
                }
            }
        }
    }

    /// Ends the local stream (of `epoch`, or whichever there is). An
    /// `epoch` named by the exporter (its end marker or description) is
    /// over for good: a stale description of it is not followed again.
    fn end(&mut self, epoch: Option<u64>, state: State) {
        if epoch.is_some() {
            self.ended = epoch;
        }
        if self
            .local
            .as_ref()
            .is_some_and(|l| epoch.is_none_or(|e| e == l.epoch))
        {
            let l = self.local.take().expect("checked");
            self.want_meta = true;
            self.ending = None;
            tracing::info!(key = self.opts.key.as_str(), ?state, "local stream ended");
            l.target.end(state);
        }
    }

    fn create(&self, meta: &Meta) -> Result<Target, BoxError> {
        let lossless = self.opts.mode == Mode::Lossless;
        let options = PublisherOptions {
            slot_count: self.opts.slots.unwrap_or(meta.slots).clamp(2, 64),
            policy: if lossless {
                LosslessPolicy::Block
            } else {
                LosslessPolicy::DropOldest
            },
            // Lossless: a lagging local reader is waited for, not evicted,
            // so the wait reaches the exporter (up to LOSSLESS_STALL).
            evict_lagging: !lossless,
            ..Default::default()
        };
        let slots = u64::from(options.slot_count);
        let too_big = |bytes: u64| -> Result<(), BoxError> {
            if bytes.saturating_mul(slots) > self.opts.max_ring_bytes {
                return Err(format!(
                    "the stream needs {slots} slots of {bytes} bytes, more than the {} bytes allowed (--max-ring-mb)",
                    self.opts.max_ring_bytes
                )
                .into());
            }
            Ok(())
        };
        let key = &self.opts.key;
        let target = match &meta.stream {
            Stream::Frames {
                format,
                width,
                height,
            } => {
                let format = PixelFormat::from_name(format)
                    .ok_or_else(|| format!("unknown pixel format {format:?}"))?;
                let layout = FrameLayout::new(format, *width, *height, 64)?;
                too_big(layout.slot_bytes)?;
                Target::Frames(Publisher::create(key, layout, options)?)
            }
            Stream::Packets {
                codec,
                max_packet,
                extradata,
                width,
                height,
            } => {
                too_big(*max_packet)?;
                let stream = PacketStream {
                    codec: Codec::from_name(codec)
                        .ok_or_else(|| format!("unknown codec {codec:?}"))?,
                    max_packet: *max_packet,
                    extradata: wire::unhex(extradata).ok_or("extradata is not hex")?,
                    width: *width,
                    height: *height,
                };
                Target::Packets(PacketPublisher::create(key, &stream, options)?)
            }
        };
        tracing::info!(
            key = key.as_str(),
            remote_epoch = format_args!("{:016x}", meta.epoch),
            "local stream created"
        );
        Ok(target)
    }

    fn on_data(&mut self, sample: &[u8], stop: &AtomicBool) -> Result<(), BoxError> {
        let (h, bytes) = match Header::decode(sample) {
            Ok(x) => x,
            Err(e) => {
                self.stats.refused += 1;
                tracing::error!(error = %e, "sample refused");
                return Ok(());
            }
        };
        if self.local.as_ref().is_none_or(|l| l.epoch != h.epoch) {
            // A stream not described yet (a late join, or its description
            // is still on the way: it travels apart from the data).
            self.read_metas();
            if self.local.as_ref().is_none_or(|l| l.epoch != h.epoch) && self.query_due() {
                self.fetch_meta()?;
            }
        }
        if h.kind == Kind::End {
            self.end(Some(h.epoch), wire::end_state(h.flags));
            return Ok(());
        }
        let Some(local) = self.local.as_mut().filter(|l| l.epoch == h.epoch) else {
            self.stats.skipped += 1;
            return Ok(());
        };
        // The size the local ring takes, checked before anything is
        // decompressed or allocated for it.
        let fits = match &local.target {
            Target::Frames(p) => h.len == p.layout().packed_bytes(),
            Target::Packets(p) => h.len <= p.max_packet(),
        };
        if !fits {
            self.stats.refused += 1;
            tracing::error!(
                seq = h.seq,
                len = h.len,
                "sample of the wrong size for the stream"
            );
            return Ok(());
        }
        let payload = match wire::payload(bytes, h.compression, h.len) {
            Ok(p) => p,
            Err(e) => {
                self.stats.refused += 1;
                tracing::error!(error = %e, seq = h.seq, "sample refused");
                return Ok(());
            }
        };
        if local.next_seq.is_some_and(|n| n != h.seq) {
            self.stats.gaps += 1;
            local.need_key = true;
            local.discontinuity = true;
        }
        local.next_seq = Some(h.seq.wrapping_add(1));
        let lossless = self.opts.mode == Mode::Lossless;
        let result = match (&mut local.target, h.kind) {
            (Target::Frames(p), Kind::Frame) => {
                retry(lossless, stop, || p.publish_from(&payload, h.pts_ns))
            }
            (Target::Packets(p), Kind::Packet) => {
                let key = h.flags & packet::KEY != 0;
                if local.need_key && !key {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let mut flags = h.flags;
                if local.discontinuity {
                    flags |= packet::DISCONTINUITY;
                }
                let meta = PacketMeta {
                    len: payload.len() as u64,
                    pts_ns: h.pts_ns,
                    dts_ns: h.dts_ns,
                    duration_ns: h.duration_ns,
                    flags,
                };
                let r = retry(lossless, stop, || p.publish(&payload, &meta));
                if r.is_ok() {
                    local.need_key = false;
                    local.discontinuity = false;
                }
                r
            }
            _ => {
                self.stats.refused += 1;
                tracing::error!(seq = h.seq, "sample of the wrong kind for the stream");
                return Ok(());
            }
        };
        match result {
            Ok(_) => {
                self.stats.published += 1;
                let now = cuframes::now_ns();
                if now >= h.sent_ns {
                    self.stats.latency_ns_sum += now - h.sent_ns;
                    self.stats.latency_samples += 1;
                }
            }
            Err(e) => {
                self.stats.skipped += 1;
                if let Some(l) = self.local.as_mut() {
                    l.need_key = true;
                    l.discontinuity = true;
                }
                tracing::warn!(error = %e, seq = h.seq, "not published");
            }
        }
        Ok(())
    }
}

/// Publishes; in lossless mode a publish that timed out (local readers
/// holding every slot) is tried again, so the wait reaches the exporter.
fn retry(
    lossless: bool,
    stop: &AtomicBool,
    mut publish: impl FnMut() -> cuframes::Result<u64>,
) -> cuframes::Result<u64> {
    loop {
        match publish() {
            Err(e)
                if lossless && e.code() == ErrorCode::Timeout && !stop.load(Ordering::Relaxed) => {}
            r => return r,
        }
    }
}
