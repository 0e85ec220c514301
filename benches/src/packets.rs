//! Encoded packet workloads: a synthetic H.264-like stream (sizes and
//! keyframes shaped like an encoder's output) moved from one publisher
//! process to N subscriber processes through a cuframes packet stream and,
//! side by side, through unix sockets as a restreamer would (length-prefixed
//! packets written to each subscriber's connection); and the join time of a
//! late subscriber against the GOP length.
//!
//! Handoff latency and packets/s reuse the frame harness ([`publish`],
//! [`receive`]): paced at the stream's own rate for latency, unpaced for
//! packets/s, lossless subscribers that read every byte of every packet.
//! Join cases run one publisher at the stream's rate and one joiner process
//! whose threads connect at seeded random moments spread over a GOP, each
//! timing connect → first packet (which must be a keyframe).

use crate::output::Figures;
use crate::peers::{
    connect_socket, err, publish, ready, receive, ring_options, sent_header, socket_path,
    wait_connected, Fanout, Res, Sink, Taken,
};
use crate::proto::{get_header, now_ns, parse_kv, put_header, quantile, HEADER, PHASE_LATENCY};
use crate::spec::{Case, ChildSpec, Mode, PacketShape, Peer, Phases, Wake, Work, Workload};
use crate::{Run, Size};
use cuframes::{packet, Codec, PacketMeta, PacketPublisher, PacketStream, PacketSubscriber};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes before each packet on a socket: its length and its flags (two
/// little-endian u32).
pub const PREFIX: usize = 8;

/// P-frames vary by up to this fraction either way, keyframes by
/// [`KEY_JITTER`].
const P_JITTER: f64 = 0.25;
const KEY_JITTER: f64 = 0.10;
/// Seed of the size jitter and of the join moments.
const SEED: u64 = 0x6375_6672_616d_6573;

/// A 64-bit mix (splitmix64's finaliser): deterministic noise.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) from `x`.
fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

/// Packet sizes and keyframes of a stream: a keyframe every GOP,
/// `key_factor` times the mean P-frame, so that a GOP carries the bit
/// rate; each size jittered deterministically (a hash of its index).
#[derive(Debug, Clone, Copy)]
pub struct Model {
    shape: PacketShape,
    p_bytes: f64,
    key_bytes: f64,
}

impl Model {
    /// The model of `shape`.
    pub fn new(shape: PacketShape) -> Self {
        let mean = shape.bitrate as f64 / 8.0 / shape.fps as f64;
        let (g, k) = (shape.gop as f64, shape.key_factor as f64);
        let p = g * mean / (k + g - 1.0);
        Self {
            shape,
            p_bytes: p,
            key_bytes: k * p,
        }
    }

    /// Whether packet `index` (from 0) is a keyframe.
    pub fn is_key(&self, index: u64) -> bool {
        index.is_multiple_of(self.shape.gop as u64)
    }

    /// Bytes of packet `index`.
    pub fn size(&self, index: u64) -> usize {
        let (base, spread) = if self.is_key(index) {
            (self.key_bytes, KEY_JITTER)
        } else {
            (self.p_bytes, P_JITTER)
        };
        let u = unit(index ^ SEED);
        ((base * (1.0 + spread * (2.0 * u - 1.0))) as usize).max(HEADER)
    }

    /// The stream's largest packet: the biggest keyframe, rounded up to
    /// 64 KiB.
    pub fn max_packet(&self) -> usize {
        ((self.key_bytes * (1.0 + KEY_JITTER)) as usize + 1).next_multiple_of(64 << 10)
    }

    /// Mean P-frame and keyframe bytes (before jitter).
    pub fn p_and_key(&self) -> (f64, f64) {
        (self.p_bytes, self.key_bytes)
    }
}

/// The packets a publisher sends: sizes and keyframes from the [`Model`],
/// the bench header (seq, send time, phase) in the first bytes, the rest a
/// fixed pattern; behind a [`PREFIX`] for the socket.
pub(crate) struct Source {
    model: Model,
    buf: Vec<u8>,
    seq: u64,
    len: usize,
    key: bool,
}

impl Source {
    pub(crate) fn new(shape: PacketShape) -> Self {
        let model = Model::new(shape);
        let buf = (0..PREFIX + model.max_packet())
            .map(|i| (i as u8).wrapping_mul(151))
            .collect();
        Self {
            model,
            buf,
            seq: 0,
            len: 0,
            key: false,
        }
    }

    /// Makes packet `seq` (from 1; packet 1 is a keyframe) of `phase`,
    /// stamping its send time now.
    pub(crate) fn make(&mut self, seq: u64, phase: u64) {
        let index = seq - 1;
        (self.seq, self.len, self.key) = (seq, self.model.size(index), self.model.is_key(index));
        let flags = if self.key { packet::KEY } else { 0 };
        self.buf[..4].copy_from_slice(&(self.len as u32).to_le_bytes());
        self.buf[4..PREFIX].copy_from_slice(&(flags as u32).to_le_bytes());
        put_header(&mut self.buf[PREFIX..PREFIX + HEADER], seq, phase);
    }

    /// The packet.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.buf[PREFIX..PREFIX + self.len]
    }

    /// The packet behind its length and flags.
    pub(crate) fn framed(&self) -> &[u8] {
        &self.buf[..PREFIX + self.len]
    }

    /// Its timestamps and flags.
    pub(crate) fn meta(&self) -> PacketMeta {
        let dur = 1_000_000_000 / self.model.shape.fps as u64;
        let t = ((self.seq - 1) * dur) as i64;
        PacketMeta {
            pts_ns: t,
            dts_ns: t,
            duration_ns: dur,
            flags: if self.key { packet::KEY } else { 0 },
            ..Default::default()
        }
    }
}

/// Reads every byte of a packet (a checksum, so that reading in place is
/// not free); returns its length.
fn touch(data: &[u8]) -> u64 {
    std::hint::black_box(crate::work::checksum(data));
    data.len() as u64
}

/// The shape of a packet case.
fn shape(c: &Case) -> Res<PacketShape> {
    c.workload
        .packets
        .ok_or_else(|| format!("{} is not a packet workload", c.workload.name))
}

// ------------------------------------------------------------------ plan

/// The packet cases of a run: both streams with 1 and 4 lossless
/// subscribers, then join time against the GOP, cuframes and the unix
/// socket side by side.
pub(crate) fn plan(size: Size) -> Vec<(Case, Option<String>)> {
    let joins: &[Workload] = match size {
        Size::Smoke => &[Workload::JOIN_15, Workload::JOIN_60_RING16],
        Size::Quick => &[
            Workload::JOIN_15,
            Workload::JOIN_60,
            Workload::JOIN_60_RING16,
        ],
        Size::Full => &[
            Workload::JOIN_15,
            Workload::JOIN_30,
            Workload::JOIN_60,
            Workload::JOIN_120,
            Workload::JOIN_60_RING16,
        ],
    };
    let peers = [Peer::Cuframes, Peer::UnixSocket];
    let case = |peer, workload: Workload, subscribers, phases| Case {
        peer,
        wake: Wake::Block,
        mode: Mode::Queue,
        workload,
        work: Work::Handoff,
        subscribers,
        phases,
    };
    let mut out = Vec::new();
    for w in [Workload::PKT_4K, Workload::PKT_1M] {
        for n in [1, 4] {
            for peer in peers {
                out.push((case(peer, w, n, phases(size, w)), None));
            }
        }
    }
    for &w in joins {
        for peer in peers {
            out.push((case(peer, w, 1, phases(size, w)), None));
        }
    }
    out
}

/// Phase lengths of a packet case: the latency phase is paced at the
/// stream's rate and spans at least a GOP (so keyframes are in it); a join
/// case's "latency frames" are its joins.
fn phases(size: Size, w: Workload) -> Phases {
    let p = w.packets.expect("a packet workload");
    let gop = p.gop as u64;
    let (latency_frames, throughput_ms) = match (size, p.join) {
        (Size::Smoke, true) => (6, 0),
        (Size::Quick, true) => (14, 0),
        (Size::Full, true) => (40, 0),
        (Size::Smoke, false) => (20, 250),
        (Size::Quick, false) => (gop + 15, 500),
        (Size::Full, false) => ((2 * gop + 30).max(120), 1500),
    };
    Phases {
        latency_frames,
        latency_interval_us: p.interval_us(),
        throughput_ms,
        throughput_interval_us: 0,
    }
}

// -------------------------------------------------------------- children

/// Runs a packet child: `pub`, `sub` or `join`, cuframes or unix socket.
pub(crate) fn child(spec: &ChildSpec) -> Res<String> {
    let c = &spec.case;
    let join = shape(c)?.join;
    match (c.peer, spec.role.as_str(), join) {
        (Peer::Cuframes, "pub", false) => {
            let sink = CuframesPackets::new(spec)?;
            ready();
            publish(spec, sink)
        }
        (Peer::Cuframes, "pub", true) => join_publisher(spec, CuframesPackets::new(spec)?),
        (Peer::Cuframes, "sub", _) => cuframes_sub(spec),
        (Peer::Cuframes, "join", _) => cuframes_joiner(spec),
        (Peer::UnixSocket, "pub", false) => {
            let sink = SocketPackets::new(spec, false)?;
            ready();
            publish(spec, sink)
        }
        (Peer::UnixSocket, "pub", true) => join_publisher(spec, SocketPackets::new(spec, true)?),
        (Peer::UnixSocket, "sub", _) => socket_sub(spec),
        (Peer::UnixSocket, "join", _) => socket_joiner(spec),
        (p, r, _) => Err(format!("no packet {r} child for {p}")),
    }
}

/// A cuframes packet stream (H.264, with stand-in parameter sets as its
/// codec configuration).
struct CuframesPackets {
    publisher: PacketPublisher,
    src: Source,
}

impl CuframesPackets {
    fn new(spec: &ChildSpec) -> Res<Self> {
        let c = &spec.case;
        let shape = shape(c)?;
        let src = Source::new(shape);
        let mut stream = PacketStream::new(Codec::H264, src.model.max_packet() as u64)
            .with_extradata(vec![
                0, 0, 0, 1, 0x67, 0x64, 0, 0x33, 0, 0, 0, 1, 0x68, 0xee,
            ]);
        (stream.width, stream.height) = (c.workload.width, c.workload.height);
        let options = cuframes::PublisherOptions {
            slot_count: shape.slots,
            // Join cases: joiners come and go, several at once.
            subscriber_capacity: if shape.join {
                63
            } else {
                ring_options(c).subscriber_capacity
            },
            ..ring_options(c)
        };
        let publisher =
            PacketPublisher::create(&spec.key, &stream, options).map_err(err("create"))?;
        Ok(Self { publisher, src })
    }
}

impl Sink for CuframesPackets {
    fn wait_subscribers(&mut self, n: usize) -> Res<()> {
        wait_connected(n, || self.publisher.stats().active().count())
    }

    fn publish(&mut self, seq: u64, phase: u64) -> Res<()> {
        self.src.make(seq, phase);
        self.publisher
            .publish(self.src.payload(), &self.src.meta())
            .map_err(err("publish"))?;
        Ok(())
    }
}

/// The unix-socket peer: each packet written, length-prefixed, to each
/// subscriber's connection. For join cases, connections are accepted as
/// they come and start at the next keyframe (a socket has no past to
/// replay); those that hang up are dropped.
struct SocketPackets {
    fanout: Fanout,
    src: Source,
    join: bool,
    waiting: Vec<UnixStream>,
}

impl SocketPackets {
    fn new(spec: &ChildSpec, join: bool) -> Res<Self> {
        Ok(Self {
            fanout: Fanout::bind(&spec.key)?,
            src: Source::new(shape(&spec.case)?),
            join,
            waiting: Vec::new(),
        })
    }
}

impl Sink for SocketPackets {
    fn wait_subscribers(&mut self, n: usize) -> Res<()> {
        self.fanout.accept(n)
    }

    fn publish(&mut self, seq: u64, phase: u64) -> Res<()> {
        self.src.make(seq, phase);
        if !self.join {
            return self.fanout.send_all(self.src.framed());
        }
        for s in self.fanout.accept_pending()? {
            // A joiner that stops reading must not stall the stream.
            s.set_write_timeout(Some(Duration::from_secs(1)))
                .map_err(err("socket"))?;
            self.waiting.push(s);
        }
        if self.src.key {
            self.fanout.streams.append(&mut self.waiting);
        }
        let framed = self.src.framed();
        self.fanout
            .streams
            .retain_mut(|s| std::io::Write::write_all(s, framed).is_ok());
        Ok(())
    }

    fn finish(&mut self) {
        self.waiting.clear();
        self.fanout.close();
    }
}

fn closed(e: &cuframes::Error) -> bool {
    e.code() == cuframes::ErrorCode::Closed
}

fn cuframes_sub(spec: &ChildSpec) -> Res<String> {
    let options = cuframes::SubscriberOptions {
        connect_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let name = format!("bench{}", spec.idx);
    let mode = spec.case.mode.cuframes();
    let mut sub =
        PacketSubscriber::connect(&spec.key, &name, mode, options).map_err(err("connect"))?;
    receive(spec.idx, || {
        let p = match sub.next_packet(Duration::from_secs(20)) {
            Ok(p) => p,
            Err(e) if closed(&e) => return Ok(None),
            Err(e) => return Err(format!("next_packet: {e}")),
        };
        let now = now_ns();
        let (seq, _, phase) = get_header(p.data());
        let mut taken = Taken::new(seq, phase, now.saturating_sub(p.commit_ns()), now);
        taken.bytes = touch(p.data());
        Ok(Some(taken))
    })
}

/// Reads one length-prefixed packet into `buf`: its length and flags, or
/// `None` when the publisher hung up.
fn read_packet(stream: &mut UnixStream, buf: &mut [u8]) -> Res<Option<(usize, u64)>> {
    let mut prefix = [0u8; PREFIX];
    match stream.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("read: {e}")),
    }
    let word = |i: usize| u32::from_le_bytes(prefix[i..i + 4].try_into().expect("4 bytes"));
    let len = word(0) as usize;
    if !(HEADER..=buf.len()).contains(&len) {
        return Err(format!("a packet of {len} bytes on the socket"));
    }
    stream.read_exact(&mut buf[..len]).map_err(err("read"))?;
    Ok(Some((len, word(4) as u64)))
}

fn socket_sub(spec: &ChildSpec) -> Res<String> {
    let mut stream = connect_socket(&spec.key)?;
    let mut buf = vec![0u8; Model::new(shape(&spec.case)?).max_packet()];
    receive(spec.idx, || {
        let Some((len, _)) = read_packet(&mut stream, &mut buf)? else {
            return Ok(None);
        };
        let mut taken = sent_header(&buf[..len]);
        taken.bytes = touch(&buf[..len]);
        Ok(Some(taken))
    })
}

// ------------------------------------------------------------ join time

/// The publisher of a join case: fills the ring at once (a stream that has
/// been running), then publishes at the stream's rate until the joiner
/// leaves its stop file.
fn join_publisher(spec: &ChildSpec, mut sink: impl Sink) -> Res<String> {
    let shape = shape(&spec.case)?;
    let mut seq = 0;
    for _ in 0..shape.slots.max(shape.gop) + 1 {
        seq += 1;
        sink.publish(seq, PHASE_LATENCY)?;
    }
    let stop = socket_path(&spec.key, "stop");
    ready();
    let interval = Duration::from_micros(shape.interval_us());
    let start = Instant::now();
    let limit = start + Duration::from_secs(60) + Duration::from_nanos(4 * shape.gop_ns());
    let mut paced = 0u32;
    while !stop.exists() {
        if Instant::now() > limit {
            return Err("the joiner did not finish".into());
        }
        if let Some(d) = (start + interval * paced).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        seq += 1;
        paced += 1;
        sink.publish(seq, PHASE_LATENCY)?;
    }
    let _ = std::fs::remove_file(&stop);
    sink.finish();
    Ok(format!("result role=pub packets={paced}"))
}

/// One join: connect → first packet.
struct Joined {
    /// From just before connecting to holding the first packet.
    join_ns: u64,
    /// How old that packet was then (from its commit or send).
    age_ns: u64,
    /// Whether it is a keyframe.
    key: bool,
}

/// Leaves the stop file for the publisher when dropped (the joiner is done,
/// or failed).
struct StopFile<'a>(&'a Path);

impl Drop for StopFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, b"");
    }
}

/// Runs the joins of a case, one thread each, starting at seeded random
/// moments spread evenly over one GOP (one in each of its equal parts),
/// and reports their times. At most `slots - 2` joiners are connected at
/// once (a cuframes ring has room for that many subscribers holding a
/// packet each): more joins go in further rounds, each after the last
/// one's joins are done. Both peers get the same schedule.
fn joiner(spec: &ChildSpec, join: impl Fn(usize) -> Res<Joined> + Sync) -> Res<String> {
    let shape = shape(&spec.case)?;
    let stop = socket_path(&spec.key, "stop");
    let _stop = StopFile(&stop);
    let joins = spec.case.phases.latency_frames.max(1) as usize;
    let per_round = joins.min(shape.slots.saturating_sub(2).max(1) as usize);
    let gop_ns = shape.gop_ns() as f64;
    let mut results: Vec<Res<Joined>> = Vec::new();
    for first in (0..joins).step_by(per_round) {
        let round = first..joins.min(first + per_round);
        let n = round.len() as f64;
        let start = Instant::now() + Duration::from_millis(20);
        std::thread::scope(|s| {
            let handles: Vec<_> = round
                .map(|i| {
                    let join = &join;
                    let part = (i - first) as f64 + unit(SEED ^ ((i as u64 + 1) << 32));
                    let due = start + Duration::from_nanos((part / n * gop_ns) as u64);
                    s.spawn(move || {
                        if let Some(d) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(d);
                        }
                        join(i)
                    })
                })
                .collect();
            results.extend(
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("a join panicked".into()))),
            );
        });
    }
    let (mut times, mut ages) = (Vec::new(), Vec::new());
    for (i, r) in results.into_iter().enumerate() {
        let j = r.map_err(|e| format!("join {i}: {e}"))?;
        if !j.key {
            return Err(format!("join {i}: the first packet is not a keyframe"));
        }
        times.push(j.join_ns);
        ages.push(j.age_ns);
    }
    times.sort_unstable();
    ages.sort_unstable();
    Ok(format!(
        "result role=sub idx=0 p50={} p99={} p999={} max={} samples={} age_p50={} age_max={}",
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        quantile(&times, 0.999),
        times.last().copied().unwrap_or(0),
        times.len(),
        quantile(&ages, 0.5),
        ages.last().copied().unwrap_or(0),
    ))
}

fn cuframes_joiner(spec: &ChildSpec) -> Res<String> {
    let wait = Duration::from_nanos(shape(&spec.case)?.gop_ns()) + Duration::from_secs(10);
    let mode = spec.case.mode.cuframes();
    joiner(spec, |i| {
        let options = cuframes::SubscriberOptions {
            connect_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let t0 = now_ns();
        let mut sub = PacketSubscriber::connect(&spec.key, &format!("join{i}"), mode, options)
            .map_err(err("connect"))?;
        let p = sub.next_packet(wait).map_err(err("next_packet"))?;
        let t1 = now_ns();
        touch(p.data());
        Ok(Joined {
            join_ns: t1 - t0,
            age_ns: t1.saturating_sub(p.commit_ns()),
            key: p.is_key(),
        })
    })
}

fn socket_joiner(spec: &ChildSpec) -> Res<String> {
    let max = Model::new(shape(&spec.case)?).max_packet();
    let path = socket_path(&spec.key, "sock");
    joiner(spec, |_| {
        let mut buf = vec![0u8; max];
        let t0 = now_ns();
        let mut stream = UnixStream::connect(&path).map_err(err("connect"))?;
        let (len, flags) =
            read_packet(&mut stream, &mut buf)?.ok_or("the publisher hung up before a keyframe")?;
        let t1 = now_ns();
        let (_, sent, _) = get_header(&buf[..len]);
        touch(&buf[..len]);
        Ok(Joined {
            join_ns: t1 - t0,
            age_ns: t1.saturating_sub(sent),
            key: flags & packet::KEY != 0,
        })
    })
}

// ---------------------------------------------------------------- parent

fn num(kv: &BTreeMap<String, String>, k: &str) -> u64 {
    kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Measures a join case: the publisher, then the joiner once the ring is
/// full; the figures are the join times and a note with their max, the
/// GOP's duration and how far behind live the first packet was.
pub(crate) fn measure_join(
    run: &mut Run,
    case: &Case,
    child: impl Fn(&str) -> std::process::Command,
) -> Result<(Figures, String), String> {
    let shape = shape(case)?;
    let deadline =
        Instant::now() + Duration::from_secs(30) + Duration::from_nanos(3 * shape.gop_ns());
    run.spawn("publisher", child("pub"))?;
    run.wait_line(deadline, |l| l == "ready")?;
    run.spawn("joiner", child("join"))?;
    let (mut publisher, mut joiner) = (None, None);
    run.wait_line(deadline, |l| {
        if let Some(rest) = l.strip_prefix("result ") {
            let kv = parse_kv(rest);
            match kv.get("role").map(String::as_str) {
                Some("pub") => publisher = Some(kv),
                Some("sub") => joiner = Some(kv),
                _ => {}
            }
        }
        publisher.is_some() && joiner.is_some()
    })?;
    let j = joiner.expect("joiner result");
    let figures = Figures {
        p50_ns: num(&j, "p50"),
        p99_ns: num(&j, "p99"),
        p999_ns: num(&j, "p999"),
        max_ns: num(&j, "max"),
        samples: num(&j, "samples"),
        ..Default::default()
    };
    if figures.samples == 0 {
        return Err("no joins measured".into());
    }
    let ring = match case.peer {
        Peer::Cuframes => format!(", {}-slot ring", shape.slots),
        _ => String::new(),
    };
    let note = format!(
        "max {}; GOP {} ({} packets{ring}); first packet {} old (p50); {} joins",
        crate::output::human_ns(figures.max_ns),
        crate::output::human_ns(shape.gop_ns()),
        shape.gop,
        crate::output::human_ns(num(&j, "age_p50")),
        figures.samples,
    );
    Ok((figures, note))
}

/// The note of a packet row: the size mix and the bytes each subscriber
/// read per second in the unpaced phase.
pub(crate) fn rate_note(shape: PacketShape, sub_fps: f64, bytes: f64, packets: f64) -> String {
    let (p, key) = Model::new(shape).p_and_key();
    let per_packet = if packets > 0.0 { bytes / packets } else { 0.0 };
    format!(
        "packets/s; P {:.1} KiB, key {:.0} KiB; {:.0} MB/s per subscriber",
        p / 1024.0,
        key / 1024.0,
        sub_fps * per_packet / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_carry_their_bit_rate() {
        for w in [Workload::PKT_4K, Workload::PKT_1M, Workload::JOIN_120] {
            let shape = w.packets.unwrap();
            let m = Model::new(shape);
            let n = shape.gop as u64 * 200;
            let bytes: usize = (0..n).map(|i| m.size(i)).sum();
            let secs = n as f64 / shape.fps as f64;
            let rate = bytes as f64 * 8.0 / secs;
            let want = shape.bitrate as f64;
            assert!((rate - want).abs() < want * 0.02, "{}: {rate}", w.name);
            let (p, key) = m.p_and_key();
            assert!((key / p - 8.0).abs() < 1e-9);
            assert!((0..n).all(|i| m.size(i) <= m.max_packet()));
            assert!((0..n).all(|i| m.is_key(i) == (i % shape.gop as u64 == 0)));
            // Deterministic.
            assert_eq!(m.size(7), Model::new(shape).size(7));
        }
        let m = Model::new(Workload::PKT_4K.packets.unwrap());
        let (p, key) = m.p_and_key();
        assert!((60_000.0..80_000.0).contains(&p), "{p}");
        assert!((500_000.0..600_000.0).contains(&key), "{key}");
    }

    #[test]
    fn source_frames_packets() {
        let mut s = Source::new(Workload::PKT_1M.packets.unwrap());
        s.make(1, PHASE_LATENCY);
        let framed = s.framed();
        let len = u32::from_le_bytes(framed[..4].try_into().unwrap()) as usize;
        assert_eq!(len, s.payload().len());
        assert_eq!(framed.len(), PREFIX + len);
        assert_eq!(
            u32::from_le_bytes(framed[4..8].try_into().unwrap()) as u64,
            packet::KEY
        );
        assert_eq!(get_header(s.payload()).0, 1);
        assert!(s.meta().is_key());
        s.make(2, PHASE_LATENCY);
        assert!(!s.meta().is_key());
        assert_eq!(s.meta().pts_ns, 33_333_333);
    }

    #[test]
    fn plans_pair_the_peers() {
        for size in [Size::Smoke, Size::Quick, Size::Full] {
            let p = plan(size);
            assert!(p
                .iter()
                .all(|(c, skip)| skip.is_none() && c.mode == Mode::Queue));
            for pair in p.chunks(2) {
                assert_eq!(pair[0].0.workload, pair[1].0.workload);
                assert_eq!(
                    (pair[0].0.peer, pair[1].0.peer),
                    (Peer::Cuframes, Peer::UnixSocket)
                );
            }
            assert!(p
                .iter()
                .any(|(c, _)| c.workload == Workload::JOIN_60_RING16));
            assert!(p.iter().any(|(c, _)| c.subscribers == 4));
        }
    }
}
