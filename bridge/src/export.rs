//! The exporter: reads a local stream and publishes it on Zenoh.

use crate::net::{BoxError, NetOptions};
use crate::wire::{self, Compression, Header, Keys, Kind, Meta, State, Stream};
use crate::Mode;
use cuframes::{
    ErrorCode, Frame, Mode as ReadMode, Packet, PacketSubscriber, Subscriber, SubscriberOptions,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zenoh::qos::{CongestionControl, Priority};
use zenoh::Wait;

/// What to export, and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The local stream.
    pub key: String,
    /// The name it is published as: `cuframes/<name>/...`.
    pub name: String,
    /// Newest (drop under congestion) or lossless (backpressure).
    pub mode: Mode,
    /// Compression of raw frames (packets are sent as they are).
    pub compression: Compression,
    /// How to reach the other side.
    pub net: NetOptions,
}

/// What the exporter did, for its report.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExportStats {
    /// Frames or packets sent.
    pub sent: u64,
    /// Payload bytes before compression.
    pub bytes: u64,
    /// Bytes put on the wire (headers and compressed payloads).
    pub wire_bytes: u64,
    /// Local streams followed (1 plus restarts of the local publisher).
    pub streams: u64,
}

/// The local stream being read.
enum Source {
    Frames(Subscriber),
    Packets(PacketSubscriber),
}

/// Exports until `stop` turns true. The local publisher may come and go:
/// each new stream is announced with its own epoch, its end (closed or
/// dead) too, and the exporter waits for the next one.
pub fn export(opts: &ExportOptions, stop: &AtomicBool) -> Result<ExportStats, BoxError> {
    // The name becomes key expressions: the key rule keeps out wildcards,
    // separators and the empty name.
    cuframes::validate_key(&opts.key)?;
    cuframes::validate_key(&opts.name)?;
    let session = opts.net.open()?;
    let keys = Keys::new(&opts.name);
    let data = session
        .declare_publisher(keys.data.clone())
        .congestion_control(match opts.mode {
            Mode::Lossless => CongestionControl::Block,
            Mode::Newest => CongestionControl::Drop,
        })
        .priority(Priority::DataHigh)
        .express(true)
        .wait()?;
    let meta_pub = session
        .declare_publisher(keys.meta.clone())
        .congestion_control(CongestionControl::Block)
        .wait()?;
    let current: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let answer = current.clone();
    let _meta_queryable = session
        .declare_queryable(keys.meta.clone())
        .callback(move |query| {
            let meta = answer.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(m) = meta {
                let _ = query.reply(query.key_expr().clone(), m).wait();
            }
        })
        .wait()?;
    let _alive = session.liveliness().declare_token(keys.alive).wait()?;
    let announce = |meta: &Meta| -> Result<(), BoxError> {
        let bytes = meta.to_bytes();
        *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes.clone());
        meta_pub.put(bytes).wait()?;
        tracing::info!(epoch = format_args!("{:016x}", meta.epoch), state = ?meta.state, "announced");
        Ok(())
    };
    let mut stats = ExportStats::default();
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Lossless: read the local stream only once an importer listens,
        // so it gets the stream from the first frame read.
        if opts.mode == Mode::Lossless && !data.matching_status().wait()?.matching() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let Some(mut source) = connect(&opts.key, opts.mode, stop)? else {
            break;
        };
        let mut meta = describe(&source);
        announce(&meta)?;
        stats.streams += 1;
        let ended = loop {
            if stop.load(Ordering::Relaxed) {
                break None;
            }
            let item = match &mut source {
                Source::Frames(s) => s.next_frame(Duration::from_millis(100)).map(Item::Frame),
                Source::Packets(s) => s.next_packet(Duration::from_millis(100)).map(Item::Packet),
            };
            let item = match item {
                Ok(item) => item,
                Err(e) => match e.code() {
                    ErrorCode::Timeout | ErrorCode::Lagged => continue,
                    ErrorCode::Closed => break Some(State::Closed),
                    ErrorCode::PublisherGone => break Some(State::Gone),
                    _ => {
                        tracing::warn!(error = %e, "local stream failed");
                        break Some(State::Gone);
                    }
                },
            };
            buf.clear();
            let len = item.encode(meta.epoch, opts.compression, &mut buf);
            stats.sent += 1;
            stats.bytes += len;
            stats.wire_bytes += buf.len() as u64;
            drop(item); // released before the (possibly blocking) put
            data.put(std::mem::take(&mut buf)).wait()?;
        };
        match ended {
            Some(state) => {
                // Queries answer the end from here on (before the marker:
                // an importer that ends at the marker and asks at once must
                // not hear "live").
                meta.state = state;
                *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(meta.to_bytes());
                // In order with the data: an importer publishes what came
                // before it, then ends its stream the same way.
                buf.clear();
                end_marker(meta.epoch, state).encode(&mut buf);
                data.put(std::mem::take(&mut buf)).wait()?;
                announce(&meta)?;
            }
            None => break,
        }
    }
    Ok(stats)
}

/// The data sample that says a stream ended.
fn end_marker(epoch: u64, state: State) -> Header {
    Header {
        kind: Kind::End,
        compression: Compression::None,
        epoch,
        seq: 0,
        pts_ns: 0,
        dts_ns: 0,
        duration_ns: 0,
        flags: wire::end_flags(state),
        len: 0,
        sent_ns: cuframes::now_ns(),
    }
}

/// Waits for the local stream; `None` when stopped first.
fn connect(key: &str, mode: Mode, stop: &AtomicBool) -> Result<Option<Source>, BoxError> {
    let read = match mode {
        Mode::Newest => ReadMode::NewestOnly,
        Mode::Lossless => ReadMode::Queue,
    };
    let options = SubscriberOptions {
        connect_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let name = "bridge-export";
    while !stop.load(Ordering::Relaxed) {
        // A frame reader first; a packet stream refuses it as Incompatible
        // (and says so in its header), a GPU-memory one too (and then the
        // frame reader's error is the one to report).
        let connected = match Subscriber::connect(key, name, read, options.clone()) {
            Err(e)
                if e.code() == ErrorCode::Incompatible
                    && cuframes::stream_status(key)
                        .is_ok_and(|s| s.info.content == cuframes::Content::Packets) =>
            {
                PacketSubscriber::connect(key, name, read, options.clone()).map(Source::Packets)
            }
            r => r.map(Source::Frames),
        };
        let e = match connected {
            Ok(source) => return Ok(Some(source)),
            Err(e) => e,
        };
        match e.code() {
            ErrorCode::NotFound
            | ErrorCode::Timeout
            | ErrorCode::PublisherGone
            | ErrorCode::Closed => {}
            _ => return Err(e.into()),
        }
    }
    Ok(None)
}

fn describe(source: &Source) -> Meta {
    let (info, stream) = match source {
        Source::Frames(s) => {
            let l = s.layout();
            (
                s.segment_info(),
                Stream::Frames {
                    format: l.pixel_format().map_or("unknown", |f| f.name()).into(),
                    width: l.width,
                    height: l.height,
                },
            )
        }
        Source::Packets(s) => {
            let (width, height) = s.dimensions();
            (
                s.segment_info(),
                Stream::Packets {
                    codec: s.codec().name().into(),
                    max_packet: s.max_packet(),
                    extradata: wire::hex(s.extradata()),
                    width,
                    height,
                },
            )
        }
    };
    Meta {
        version: wire::WIRE_VERSION,
        epoch: info.header.epoch,
        state: State::Live,
        slots: info.header.slot_count,
        stream,
    }
}

/// A frame or packet held from the local ring.
enum Item {
    Frame(Frame),
    Packet(Packet),
}

impl Item {
    /// Appends header and payload to `out`; returns the payload's length
    /// before compression.
    fn encode(&self, epoch: u64, compression: Compression, out: &mut Vec<u8>) -> u64 {
        let now = cuframes::now_ns();
        match self {
            Item::Frame(f) => {
                let len = f.layout().packed_bytes();
                let header = Header {
                    kind: Kind::Frame,
                    compression,
                    epoch,
                    seq: f.seq(),
                    pts_ns: f.pts_ns(),
                    dts_ns: f.pts_ns(),
                    duration_ns: 0,
                    flags: 0,
                    len,
                    sent_ns: now,
                };
                out.reserve(wire::HEADER_LEN + len as usize);
                header.encode(out);
                match compression {
                    // Rows straight from the slot into the sample.
                    Compression::None => f.pack_into(out),
                    Compression::Lz4 => wire::append_payload(out, &f.to_packed(), compression),
                }
                len
            }
            Item::Packet(p) => {
                let header = Header {
                    kind: Kind::Packet,
                    compression: Compression::None,
                    epoch,
                    seq: p.seq(),
                    pts_ns: p.pts_ns(),
                    dts_ns: p.dts_ns(),
                    duration_ns: p.duration_ns(),
                    flags: p.flags(),
                    len: p.data().len() as u64,
                    sent_ns: now,
                };
                out.reserve(wire::HEADER_LEN + p.data().len());
                header.encode(out);
                out.extend_from_slice(p.data());
                p.data().len() as u64
            }
        }
    }
}
