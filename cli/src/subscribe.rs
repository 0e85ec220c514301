//! `cuframes subscribe`: read a stream, verify, report, dump.

use crate::latency::{human_ns, Samples};
use crate::stdout_is_tty;
use cuframes::{
    testsrc, Error, ErrorCode, Frame, FrameLayout, MemoryKind, Mode, PixelFormat,
    ReconnectingSubscriber, Result, SubscriberOptions,
};
use cuframes_cuda::{CudaFrame, CudaSubscriber, CudaSubscriberOptions};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Stream key.
    #[arg(long)]
    pub key: String,
    /// Subscriber name shown by `ls`/`stat`.
    #[arg(long)]
    pub name: Option<String>,
    /// newest (latest frame only) or queue (every frame, in order). Default:
    /// newest; queue when recording. Packet streams: newest joins at the
    /// newest keyframe and skips to the newest keyframe when it falls
    /// behind; queue is lossless from the newest keyframe on.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Packet streams: remux every packet into FILE (.mp4, .mkv, .ts, ...;
    /// ffmpeg -c copy, no re-encoding); starts at a keyframe.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Exit 0 after this many intact frames (packets, on a packet stream).
    #[arg(long)]
    pub frames: Option<u64>,
    /// Longest wait for one frame.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Longest wait for the stream to appear.
    #[arg(long, default_value_t = 5000)]
    pub connect_timeout_ms: u64,
    /// Write the first frame as PNG into this directory.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
    /// Check every frame's test-pattern stamp (seq and checksum).
    #[arg(long)]
    pub verify: bool,
    /// Hold each frame this long before releasing it (simulated work);
    /// with `--verify` the frame is checked again after the hold, proving
    /// nobody rewrote it meanwhile.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
    /// Reconnect when the publisher dies or restarts.
    #[arg(long)]
    pub reconnect: bool,
    /// Accept a stream whose segment another user owns (a group-shared
    /// stream published with `--mode 660`).
    #[arg(long)]
    pub allow_other_owner: bool,
    /// Machine-readable `report` lines instead of human ones.
    #[arg(long)]
    pub report: bool,
    /// Read a stream whose frames are in GPU memory (the default for such
    /// streams; `--verify` and `--dump` copy each frame to the host).
    #[arg(long)]
    pub cuda: bool,
    /// CUDA device to read on (default: the publisher's GPU, found by UUID).
    #[arg(long, requires = "cuda")]
    pub device: Option<u32>,
}

/// The frame read mode: newest unless asked otherwise.
fn mode(args: &Args) -> Mode {
    args.mode.unwrap_or(Mode::NewestOnly)
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "newest" | "newest-only" => Ok(Mode::NewestOnly),
        "queue" => Ok(Mode::Queue),
        _ => Err(format!("{s:?}: newest or queue")),
    }
}

/// The stream at `key`, waiting up to `wait` for it to appear.
fn probe(key: &str, wait: Duration) -> Option<cuframes::StreamStatus> {
    let deadline = Instant::now() + wait;
    loop {
        match cuframes::stream_status(key) {
            Ok(s) => return Some(s),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
}

/// Where frames come from: a host-memory stream, or one in GPU memory.
enum Source {
    Host(ReconnectingSubscriber),
    Cuda {
        sub: Option<CudaSubscriber>,
        options: CudaSubscriberOptions,
    },
}

/// A frame of either kind.
enum Taken {
    Host(Frame),
    Cuda(CudaFrame),
}

impl Taken {
    fn host(&self) -> &Frame {
        match self {
            Taken::Host(f) => f,
            Taken::Cuda(f) => f.as_ref(),
        }
    }

    /// The picture in its slot layout, in host memory (copied from the GPU
    /// for device frames).
    fn image(&self) -> Result<Cow<'_, [u8]>> {
        match self {
            Taken::Host(f) => Ok(Cow::Borrowed(f.data())),
            Taken::Cuda(f) => {
                let layout = f.layout();
                let packed = f.copy_to_host()?;
                let mut image = vec![0u8; layout.slot_bytes as usize];
                for (slot, p, len) in layout.packed_rows() {
                    let (slot, p, len) = (slot as usize, p as usize, len as usize);
                    image[slot..slot + len].copy_from_slice(&packed[p..p + len]);
                }
                Ok(Cow::Owned(image))
            }
        }
    }
}

impl Source {
    /// Connects; `on_gpu` is what a probe found (`None`: no stream yet).
    /// A stream in GPU memory is read with the CUDA backend, asked for or
    /// not.
    fn open(
        args: &Args,
        name: &str,
        options: &SubscriberOptions,
        on_gpu: Option<bool>,
    ) -> Result<Self> {
        let on_gpu = args.cuda || on_gpu.unwrap_or(false);
        if !on_gpu {
            let mut sub = ReconnectingSubscriber::new(&args.key, name, mode(args), options.clone());
            sub.ensure_connected(options.connect_timeout)?;
            return Ok(Source::Host(sub));
        }
        let options = CudaSubscriberOptions {
            ring: options.clone(),
            device: args.device,
        };
        let sub = CudaSubscriber::connect(&args.key, name, mode(args), options.clone())?;
        Ok(Source::Cuda {
            sub: Some(sub),
            options,
        })
    }

    fn stats(&self) -> cuframes::SubscriberStats {
        match self {
            Source::Host(s) => s.subscriber().map(|s| s.stats()).unwrap_or_default(),
            Source::Cuda { sub, .. } => sub.as_ref().map(|s| s.stats()).unwrap_or_default(),
        }
    }

    /// One wait of at most `slice`; with `reconnect`, a CUDA stream whose
    /// publisher went away is connected again on the next call.
    fn next(&mut self, args: &Args, name: &str, slice: Duration) -> Result<Taken> {
        match self {
            Source::Host(sub) => {
                let got = if args.reconnect {
                    sub.next_frame(slice)
                } else {
                    sub.ensure_connected(slice)
                        .and_then(|s| s.next_frame(slice))
                };
                got.map(Taken::Host)
            }
            Source::Cuda { sub, options } => {
                if sub.is_none() {
                    let mut o = options.clone();
                    o.ring.connect_timeout = slice;
                    *sub = Some(CudaSubscriber::connect(&args.key, name, mode(args), o)?);
                }
                let got = sub.as_mut().expect("connected").next_frame(slice);
                if got.as_ref().is_err_and(|e| {
                    args.reconnect
                        && matches!(e.code(), ErrorCode::Closed | ErrorCode::PublisherGone)
                }) {
                    *sub = None;
                }
                got.map(Taken::Cuda)
            }
        }
    }
}

/// Running totals, printed per second and at the end.
#[derive(Default)]
struct Tally {
    frames: u64,
    bad: u64,
    lagged: u64,
    window_frames: u64,
    window: Samples,
    all: Samples,
}

pub fn run(args: Args) -> Result<()> {
    let stop = crate::stop_flag()?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("cli-{}", std::process::id()));
    let options = SubscriberOptions {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        allow_other_owner: args.allow_other_owner,
        ..Default::default()
    };
    // One wait for the stream serves the probe and the connect: a missing
    // stream costs one connect timeout (a reconnecting reader waits on).
    let started = Instant::now();
    let status = probe(&args.key, options.connect_timeout);
    let packets = status
        .as_ref()
        .is_some_and(|s| s.info.content == cuframes::Content::Packets);
    let mut options = options;
    if !args.reconnect {
        options.connect_timeout = options.connect_timeout.saturating_sub(started.elapsed());
    }
    if args.record.is_some() || packets {
        if args.reconnect {
            return Err(crate::invalid(
                "--reconnect is for frame streams: a packet subscriber ends when its publisher does",
            ));
        }
        return crate::encoded::subscribe(&args, &name, options, &stop);
    }
    let on_gpu = status.map(|s| s.info.memory != MemoryKind::Host);
    let mut sub = Source::open(&args, &name, &options, on_gpu)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let tty = stdout_is_tty() && !args.report;
    let mut t = Tally::default();
    let mut last_print = Instant::now();
    let mut last_seq = 0u64;
    let mut dumped = args.dump.is_none();
    let outcome = loop {
        if stop.load(Ordering::Relaxed) || args.frames.is_some_and(|n| t.frames >= n) {
            break Ok(());
        }
        let got = next_frame(&mut sub, &args, &name, timeout, &stop);
        match got {
            Ok(taken) => {
                let frame = taken.host();
                let latency = cuframes::now_ns().saturating_sub(frame.commit_ns());
                if args.mode == Some(Mode::Queue)
                    && last_seq != 0
                    && frame.seq() <= last_seq
                    && !args.reconnect
                {
                    t.bad += 1;
                    eprintln!("frame {} after {}: out of order", frame.seq(), last_seq);
                }
                last_seq = frame.seq();
                let layout = *frame.layout();
                if args.verify {
                    if let Err(d) = testsrc::verify(&layout, &taken.image()?, frame.seq()) {
                        t.bad += 1;
                        eprintln!("frame {}: damaged: {d:?}", frame.seq());
                    }
                }
                if !dumped {
                    let dir = args.dump.as_deref().expect("dump dir");
                    let path = dump_png(&layout, &taken.image()?, frame.seq(), dir, &args.key)?;
                    if !args.report {
                        println!("wrote {}", path.display());
                    }
                    dumped = true;
                }
                if args.hold_ms > 0 {
                    std::thread::sleep(Duration::from_millis(args.hold_ms));
                    if args.verify {
                        if let Err(d) = testsrc::verify(&layout, &taken.image()?, frame.seq()) {
                            t.bad += 1;
                            eprintln!("frame {}: rewritten while held: {d:?}", frame.seq());
                        }
                    }
                }
                drop(taken);
                t.frames += 1;
                t.window_frames += 1;
                t.window.push(latency);
                t.all.push(latency);
            }
            Err(e) if e.code() == ErrorCode::Closed && args.frames.is_none() => break Ok(()),
            // Evicted from lossless duty after lagging: the gap is counted
            // (dropped) and reading goes on from the newest frame.
            Err(e) if e.code() == ErrorCode::Lagged => {
                t.lagged += 1;
                last_seq = 0;
                eprintln!("{e}");
            }
            // Interrupted by SIGINT/SIGTERM while waiting: a clean stop.
            Err(_) if stop.load(Ordering::Relaxed) => break Ok(()),
            Err(e) => break Err(e),
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let stats = sub.stats();
            print_line(
                &name,
                &mut t,
                last_print.elapsed(),
                stats,
                tty,
                args.report,
                false,
            );
            last_print = Instant::now();
            t.window.clear();
            t.window_frames = 0;
        }
    };
    let stats = sub.stats();
    if tty {
        println!();
    }
    t.window = t.all.clone();
    t.window_frames = t.frames;
    print_line(
        &name,
        &mut t,
        Duration::ZERO,
        stats,
        false,
        args.report,
        true,
    );
    outcome?;
    if t.bad > 0 {
        return Err(Error::new(
            ErrorCode::Corrupt,
            format!("{} damaged or misordered frames", t.bad),
        ));
    }
    Ok(())
}

/// Waits for the next frame in short slices, so SIGINT/SIGTERM end a long
/// wait promptly; with `--reconnect`, a vanished publisher is waited out
/// within the same timeout.
fn next_frame(
    sub: &mut Source,
    args: &Args,
    name: &str,
    timeout: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Taken> {
    let started = Instant::now();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let slice = left.min(Duration::from_millis(100));
        let got = sub.next(args, name, slice);
        let waitable = |code| {
            code == ErrorCode::Timeout
                || (args.reconnect
                    && matches!(
                        code,
                        ErrorCode::NotFound | ErrorCode::Closed | ErrorCode::PublisherGone
                    ))
        };
        match got {
            Err(e) if waitable(e.code()) && !stop.load(Ordering::Relaxed) && !left.is_zero() => {
                continue
            }
            Err(e) if e.code() == ErrorCode::Timeout => {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!("no frame within {timeout:?}"),
                ))
            }
            r => return r,
        }
    }
}

fn print_line(
    name: &str,
    t: &mut Tally,
    window: Duration,
    stats: cuframes::SubscriberStats,
    tty: bool,
    report: bool,
    last: bool,
) {
    let fps = if window.is_zero() {
        0.0
    } else {
        t.window_frames as f64 / window.as_secs_f64()
    };
    let (p50, p99) = (t.window.quantile(0.5), t.window.quantile(0.99));
    if report {
        println!(
            "report name={name} frames={} window_frames={} fps={fps:.2} p50_ns={p50} p99_ns={p99} dropped={} gaps={} bad={} lagged={} final={}",
            t.frames, t.window_frames, stats.dropped, stats.gap_count, t.bad, t.lagged, last as u8
        );
        return;
    }
    let line = format!(
        "{name}: {} frames{} latency p50 {} p99 {}, dropped {}, damaged {}",
        t.frames,
        if last {
            String::new()
        } else {
            format!(", {fps:.1} fps")
        },
        human_ns(p50),
        human_ns(p99),
        stats.dropped,
        t.bad
    );
    crate::live::status_line(tty, &line);
}

/// Writes a frame (its slot-shaped `image`) as an 8-bit PNG (RGB, or grey
/// for GRAY8).
fn dump_png(
    layout: &FrameLayout,
    image: &[u8],
    seq: u64,
    dir: &Path,
    key: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let path = dir.join(format!("{key}-{seq}.png"));
    let (w, h) = (layout.width as usize, layout.height as usize);
    let (color, pixels) = to_rgb(layout, image, w, h);
    let file = std::fs::File::create(&path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .and_then(|mut wr| wr.write_image_data(&pixels))
        .map_err(|e| Error::new(ErrorCode::Io, format!("write {}: {e}", path.display())))?;
    Ok(path)
}

fn to_rgb(layout: &FrameLayout, image: &[u8], w: usize, h: usize) -> (png::ColorType, Vec<u8>) {
    let planes = layout.planes();
    let row = |plane: usize, r: usize| {
        let p = &planes[plane];
        &image[p.offset as usize + r * p.pitch as usize..]
    };
    let mut out = Vec::with_capacity(w * h * 3);
    // A validated layout (the subscriber checked it) names a format.
    match layout.pixel_format().unwrap_or(PixelFormat::Gray8) {
        PixelFormat::Gray8 => {
            (0..h).for_each(|r| out.extend_from_slice(&row(0, r)[..w]));
            return (png::ColorType::Grayscale, out);
        }
        PixelFormat::Rgba8 => {
            (0..h).for_each(|r| out.extend_from_slice(&row(0, r)[..w * 4]));
            return (png::ColorType::Rgba, out);
        }
        PixelFormat::Rgb24 => (0..h).for_each(|r| out.extend_from_slice(&row(0, r)[..w * 3])),
        PixelFormat::Bgr24 => (0..h).for_each(|r| {
            row(0, r)[..w * 3]
                .chunks_exact(3)
                .for_each(|p| out.extend_from_slice(&[p[2], p[1], p[0]]))
        }),
        f @ (PixelFormat::Nv12 | PixelFormat::P010) => {
            // 8-bit samples: NV12 bytes, or the high byte of P010's words.
            let bps = if f == PixelFormat::P010 { 2 } else { 1 };
            let sample = |s: &[u8], i: usize| s[i * bps + bps - 1] as f32;
            for r in 0..h {
                let (y, uv) = (row(0, r), row(1, r / 2));
                for c in 0..w {
                    let yy = 1.164 * (sample(y, c) - 16.0);
                    let (u, v) = (sample(uv, c & !1) - 128.0, sample(uv, (c & !1) + 1) - 128.0);
                    let px = [yy + 1.596 * v, yy - 0.392 * u - 0.813 * v, yy + 2.017 * u];
                    out.extend(px.map(|x| x.clamp(0.0, 255.0) as u8));
                }
            }
        }
    }
    (png::ColorType::Rgb, out)
}
