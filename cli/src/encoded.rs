//! Encoded packet streams from the shell: `publish --encoded` demuxes a
//! video file with ffmpeg (`-c copy`, no decoding) into packets with their
//! timestamps and keyframe flags; `subscribe` on a packet stream reports,
//! verifies and, with `--record`, remuxes the packets into a file (ffmpeg
//! again, no re-encoding).
//!
//! ffmpeg speaks MPEG-TS to us both ways: it carries pts, dts and random
//! access points for H.264 and H.265, and our own small demuxer and muxer
//! ([`crate::mpegts`]) are all the container code we need.

use crate::latency::{human_ns, Samples};
use crate::mpegts::{self, DemuxError, Demuxer, EsPacket, Muxer, TsCodec};
use crate::publish::{probe_stream, tool_missing, Meter};
use crate::subscribe::Args as SubscribeArgs;
use crate::{invalid, stdout_is_tty};
use cuframes::{
    packet, Codec, Error, ErrorCode, Mode, PacketMeta, PacketPublisher, PacketStream,
    PacketSubscriber, PublisherOptions, Result, SubscriberOptions,
};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A 90 kHz MPEG tick is 100000/9 ns. Ticks round up to nanoseconds and
/// nanoseconds down to ticks, so every tick comes back as itself.
fn ticks_to_ns(t: i64) -> i64 {
    t.saturating_mul(100_000).saturating_add(8).div_euclid(9)
}

fn ns_to_ticks(ns: i64) -> i64 {
    ns.saturating_mul(9).div_euclid(100_000)
}

fn ts_codec(c: Codec) -> Result<TsCodec> {
    match c {
        Codec::H264 => Ok(TsCodec::H264),
        Codec::Hevc => Ok(TsCodec::Hevc),
        other => Err(invalid(format!(
            "{} packets cannot be carried through MPEG-TS here: h264 and hevc only",
            other.name()
        ))),
    }
}

/// Codec, width and height of the first video stream.
fn probe_codec(input: &Path) -> Result<(Codec, u32, u32)> {
    let fields = probe_stream(input, "codec_name,width,height")?;
    let codec = match fields[0].as_str() {
        "h264" => Codec::H264,
        "hevc" => Codec::Hevc,
        other => {
            return Err(invalid(format!(
                "{}: the video is {other}; --encoded publishes h264 and hevc",
                input.display()
            )))
        }
    };
    Ok((
        codec,
        fields[1].parse().unwrap_or(0),
        fields[2].parse().unwrap_or(0),
    ))
}

/// Publishing options of `publish --encoded`.
pub struct PublishEncoded<'a> {
    pub key: &'a str,
    pub input: &'a Path,
    pub max_packet: u64,
    pub fast: bool,
    pub loop_input: bool,
    pub quiet: bool,
}

/// `cuframes publish --encoded --input FILE`: the file's video packets,
/// paced at their timestamps unless `fast`.
pub fn publish(
    how: &PublishEncoded<'_>,
    options: PublisherOptions,
    done: &dyn Fn(u64) -> bool,
    meter: &mut Meter,
) -> Result<()> {
    let (codec, width, height) = probe_codec(how.input)?;
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
    if !how.fast {
        cmd.arg("-re");
    }
    if how.loop_input {
        cmd.args(["-stream_loop", "-1"]);
    }
    cmd.arg("-i").arg(how.input);
    cmd.args(["-map", "0:v:0", "-c", "copy", "-f", "mpegts", "-"]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| tool_missing("ffmpeg", e))?;
    let mut pipe = child.stdout.take().expect("piped stdout");
    let mut state = Feed {
        publisher: None,
        codec,
        dims: (width, height),
        max_packet: how.max_packet,
        options,
        key: how.key,
        skip_to_key: true,
        lost: false,
        n: 0,
        keys: 0,
    };
    // A packet far over the limit is refused while it is being read, so a
    // hostile or broken input cannot grow the buffer without bound.
    let cap = usize::try_from(how.max_packet.saturating_mul(2))
        .unwrap_or(usize::MAX)
        .max(1 << 20);
    let mut demux = Demuxer::new().with_max_pes_size(cap);
    let mut buf = vec![0u8; 1 << 16];
    let mut packets = Vec::new();
    let result = (|| loop {
        if done(state.n) {
            return Ok(());
        }
        let got = match pipe.read(&mut buf) {
            Ok(0) => {
                demux.finish(&mut packets);
                0
            }
            Ok(k) => {
                let mut more = &buf[..k];
                // A broken PES header loses that packet, not the stream:
                // go on from the next keyframe. The demuxer keeps the bytes
                // after the bad one; an empty push resumes.
                while let Err(e) = demux.push(more, &mut packets) {
                    let input = how.input.display();
                    match e {
                        DemuxError::PesHeader { .. } => {
                            tracing::warn!(input = %input, error = %e, "packet lost; going on from the next keyframe");
                            (state.skip_to_key, state.lost) = (true, true);
                            more = &[];
                        }
                        DemuxError::PesTooLarge { .. } => {
                            return Err(invalid(format!(
                                "{input}: {e}; the stream's packets are at most {} bytes: raise --max-packet",
                                how.max_packet
                            )))
                        }
                        e => return Err(invalid(format!("{input}: {e}"))),
                    }
                }
                k
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read from ffmpeg", e)),
        };
        for p in packets.drain(..) {
            if done(state.n) {
                return Ok(());
            }
            state.publish(&p, how.quiet, meter)?;
            if let Some(publisher) = &state.publisher {
                meter.tick(&|| publisher.stats(), state.n, "packets");
            }
        }
        if got == 0 {
            return Ok(());
        }
    })();
    let _ = child.kill();
    let _ = child.wait();
    meter.finish(state.n, "packets");
    if !how.quiet {
        println!("{} keyframes", state.keys);
    }
    result
}

/// The publishing side's state: the stream is created at the first
/// keyframe, whose parameter sets become the codec configuration.
struct Feed<'a> {
    publisher: Option<PacketPublisher>,
    codec: Codec,
    dims: (u32, u32),
    max_packet: u64,
    options: PublisherOptions,
    key: &'a str,
    /// After a packet could not be published, the stream goes on only
    /// from the next keyframe: never a gap a decoder cannot bridge.
    skip_to_key: bool,
    /// The next keyframe follows a loss: flag it as a discontinuity.
    lost: bool,
    n: u64,
    keys: u64,
}

impl Feed<'_> {
    fn publish(&mut self, p: &EsPacket, quiet: bool, meter: &mut Meter) -> Result<()> {
        if self.skip_to_key && !p.key {
            return Ok(());
        }
        self.skip_to_key = false;
        if self.publisher.is_none() {
            let tc = ts_codec(self.codec)?;
            let stream = PacketStream {
                width: self.dims.0,
                height: self.dims.1,
                ..PacketStream::new(self.codec, self.max_packet)
                    .with_extradata(mpegts::parameter_sets(tc, &p.data).unwrap_or_default())
            };
            let publisher = PacketPublisher::create(self.key, &stream, self.options.clone())?;
            if !quiet {
                println!(
                    "publishing {} packets ({}x{}) on {:?}: {} slots of up to {} bytes, {} bytes of codec configuration",
                    self.codec.name(),
                    self.dims.0,
                    self.dims.1,
                    self.key,
                    self.options.slot_count,
                    self.max_packet,
                    stream.extradata.len()
                );
            }
            self.publisher = Some(publisher);
        }
        let publisher = self.publisher.as_mut().expect("created above");
        let pts = p.pts.or(p.dts).unwrap_or(0);
        let mut flags = 0;
        if p.key {
            flags |= packet::KEY;
        }
        if p.discontinuity || (p.key && std::mem::take(&mut self.lost)) {
            flags |= packet::DISCONTINUITY;
        }
        let meta = PacketMeta {
            len: 0,
            pts_ns: ticks_to_ns(pts),
            dts_ns: ticks_to_ns(p.dts.unwrap_or(pts)),
            duration_ns: p.duration.map_or(0, |d| ticks_to_ns(d).max(0) as u64),
            flags,
        };
        match publisher.publish(&p.data, &meta) {
            Ok(_) => {
                self.n += 1;
                self.keys += u64::from(p.key);
                Ok(())
            }
            Err(e) if e.code() == ErrorCode::Timeout => {
                meter.stall();
                (self.skip_to_key, self.lost) = (true, true);
                Ok(())
            }
            Err(e) if e.code() == ErrorCode::InvalidArgument => Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{e}; raise --max-packet"),
            )),
            Err(e) => Err(e),
        }
    }
}

/// `cuframes subscribe` on a packet stream: statistics, `--verify` (every
/// sequence decodable), `--record FILE` (remuxed by ffmpeg).
pub fn subscribe(
    args: &SubscribeArgs,
    name: &str,
    options: SubscriberOptions,
    stop: &AtomicBool,
) -> Result<()> {
    let mode = args.mode.unwrap_or(if args.record.is_some() {
        Mode::Queue
    } else {
        Mode::NewestOnly
    });
    let mut sub = PacketSubscriber::connect(&args.key, name, mode, options)?;
    let mut recorder = match &args.record {
        Some(path) => Some(Recorder::start(path, &sub)?),
        None => None,
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let tty = stdout_is_tty() && !args.report;
    let mut t = Tally::default();
    let mut last_print = Instant::now();
    let mut last_seq = 0u64;
    let outcome = loop {
        if stop.load(Ordering::Relaxed) || args.frames.is_some_and(|n| t.packets >= n) {
            break Ok(());
        }
        match sub.next_packet_unless(timeout, || stop.load(Ordering::Relaxed)) {
            Ok(p) => {
                let latency = cuframes::now_ns().saturating_sub(p.commit_ns());
                // Decodable: a keyframe first, and after any gap.
                let continues = last_seq != 0 && p.seq() == last_seq + 1;
                if args.verify && !p.is_key() && !continues {
                    t.bad += 1;
                    eprintln!(
                        "packet {} after {last_seq}: not decodable from here",
                        p.seq()
                    );
                }
                if t.packets == 0 {
                    t.first_key = p.is_key();
                }
                last_seq = p.seq();
                if let Some(r) = &mut recorder {
                    r.write(&p)?;
                }
                if args.hold_ms > 0 {
                    std::thread::sleep(Duration::from_millis(args.hold_ms));
                }
                t.packets += 1;
                t.keys += u64::from(p.is_key());
                t.bytes += p.data().len() as u64;
                t.window.push(latency);
                t.all.push(latency);
            }
            Err(e) if e.code() == ErrorCode::Closed && args.frames.is_none() => break Ok(()),
            Err(e) if e.code() == ErrorCode::Lagged => {
                t.lagged += 1;
                eprintln!("{e}");
            }
            Err(_) if stop.load(Ordering::Relaxed) => break Ok(()),
            Err(e) => break Err(e),
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            t.print(name, &sub, last_print.elapsed(), tty, args.report, false);
            last_print = Instant::now();
            t.window.clear();
            t.window_packets = t.packets;
        }
    };
    if tty {
        println!();
    }
    t.window = t.all.clone();
    t.window_packets = 0;
    t.print(name, &sub, Duration::ZERO, false, args.report, true);
    if let Some(r) = recorder {
        let path = r.finish()?;
        if !args.report {
            println!(
                "recorded {} packets ({} keyframes) to {}",
                t.packets,
                t.keys,
                path.display()
            );
        }
    }
    outcome?;
    if t.bad > 0 {
        return Err(Error::new(
            ErrorCode::Corrupt,
            format!("{} packets not decodable where they came", t.bad),
        ));
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    packets: u64,
    keys: u64,
    bytes: u64,
    bad: u64,
    lagged: u64,
    first_key: bool,
    window_packets: u64,
    window: Samples,
    all: Samples,
}

impl Tally {
    fn print(
        &mut self,
        name: &str,
        sub: &PacketSubscriber,
        window: Duration,
        tty: bool,
        report: bool,
        last: bool,
    ) {
        let stats = sub.stats();
        let pps = if window.is_zero() {
            0.0
        } else {
            (self.packets - self.window_packets) as f64 / window.as_secs_f64()
        };
        let (p50, p99) = (self.window.quantile(0.5), self.window.quantile(0.99));
        if report {
            println!(
                "report name={name} packets={} keyframes={} bytes={} pps={pps:.2} p50_ns={p50} p99_ns={p99} dropped={} bad={} lagged={} first_key={} final={}",
                self.packets, self.keys, self.bytes, stats.dropped, self.bad, self.lagged, self.first_key as u8, last as u8
            );
            return;
        }
        let line = format!(
            "{name}: {} packets ({} keyframes, {:.2} MB){} latency p50 {} p99 {}, skipped {}, undecodable {}",
            self.packets,
            self.keys,
            self.bytes as f64 / 1e6,
            if last {
                String::new()
            } else {
                format!(", {pps:.1}/s")
            },
            human_ns(p50),
            human_ns(p99),
            stats.dropped,
            self.bad
        );
        crate::live::status_line(tty, &line);
    }
}

/// Remuxes packets into a file: our MPEG-TS into ffmpeg's stdin, `-c copy`
/// into whatever container the file name asks for.
struct Recorder {
    child: Child,
    mux: Option<Muxer<std::process::ChildStdin>>,
    /// ffmpeg's stderr, read to the end on a thread of its own from the
    /// start: ffmpeg never blocks on a full pipe, and a failure's message
    /// is there once ffmpeg exits.
    stderr: Option<std::thread::JoinHandle<String>>,
    codec: TsCodec,
    /// NAL length size when packets are length-prefixed (avcC/hvcC).
    nal_len: Option<usize>,
    path: std::path::PathBuf,
}

impl Recorder {
    fn start(path: &Path, sub: &PacketSubscriber) -> Result<Self> {
        let codec = ts_codec(sub.codec())?;
        let extradata = sub.extradata();
        let (params, nal_len) = match mpegts::avcc_parameter_sets(codec, extradata) {
            Some((ps, n)) => (ps, Some(n)),
            None => (extradata.to_vec(), None),
        };
        let mut child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
            .args(["-f", "mpegts", "-i", "pipe:0", "-map", "0", "-c", "copy"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| tool_missing("ffmpeg", e))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        // Keyframes without parameter sets of their own (a source that keeps
        // them out of band) get the stream's in front.
        let mut mux = Muxer::new(stdin, codec);
        mux.set_parameter_sets((!params.is_empty()).then_some(params));
        Ok(Self {
            child,
            mux: Some(mux),
            stderr: Some(stderr),
            codec,
            nal_len,
            path: path.to_owned(),
        })
    }

    fn write(&mut self, p: &cuframes::Packet) -> Result<()> {
        if p.data().is_empty() {
            return Ok(()); // nothing a file could hold
        }
        let annexb;
        let mut data = p.data();
        if let Some(n) = self.nal_len {
            annexb = mpegts::length_prefixed_to_annexb(data, n)
                .map_err(|e| invalid(format!("packet {}: {e}", p.seq())))?;
            data = &annexb;
        }
        let mux = self.mux.as_mut().expect("open until finish");
        let written = mux.write(
            data,
            ns_to_ticks(p.pts_ns()),
            Some(ns_to_ticks(p.dts_ns())),
            p.is_key(),
        );
        match written {
            Ok(()) => Ok(()),
            // Refused before anything reached ffmpeg: not ffmpeg's fault.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(invalid(format!(
                "packet {}: {e} (a stream without codec configuration must carry Annex B packets)",
                p.seq()
            ))),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Ends the file; ffmpeg's verdict is the result.
    fn finish(mut self) -> Result<std::path::PathBuf> {
        if let Some(mux) = self.mux.take() {
            match mux.finish() {
                Ok(stdin) => drop(stdin),
                Err(e) => return Err(self.failed(e)),
            }
        }
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io("wait for ffmpeg", e))?;
        if !status.success() {
            let why = self.stderr_text();
            return Err(Error::new(
                ErrorCode::Io,
                format!(
                    "ffmpeg could not write {}: {}",
                    self.path.display(),
                    why.trim()
                ),
            ));
        }
        Ok(self.path.clone())
    }

    /// Closes ffmpeg's input (it then exits) and says what it printed.
    fn failed(&mut self, e: std::io::Error) -> Error {
        drop(self.mux.take());
        let _ = self.child.wait();
        let why = self.stderr_text();
        let what = format!(
            "ffmpeg writing {} to {}",
            self.codec.name(),
            self.path.display()
        );
        Error::io(format!("{what} ({})", why.trim()), e)
    }

    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mux) = self.mux.take() {
            let _ = mux.finish().map(|mut w| w.flush());
        }
        let _ = self.child.wait();
        self.stderr_text();
    }
}
